//! Header codecs: JSON values carried as base64 in HTTP headers (the [`wire`](crate::wire) docs, §2).
//!
//! Writers use standard padded base64 of compact JSON; readers accept both base64
//! alphabets (standard and URL-safe), padded or not, because the official SDKs and
//! the backend are not consistent about it.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest header value the decoders look at (16 KiB); anything longer is refused
/// before it is decoded.
pub const MAX_HEADER_LEN: usize = 16 * 1024;

const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// A header value (`payment-required`, `payment-response`) that could not be decoded:
/// its message says what is wrong with it (too long, empty, not base64, not the
/// expected JSON).
///
/// ```
/// use nvm_runtime::wire::PaymentRequired;
///
/// let error = PaymentRequired::from_header("!!!").unwrap_err();
/// assert_eq!(error.to_string(), "the value is not base64");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct DecodeError(#[from] Malformed);

/// Why a header value could not be decoded: what a [`DecodeError`] is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The value is longer than [`MAX_HEADER_LEN`].
    #[error("the value is {0} bytes long; at most {MAX_HEADER_LEN} are accepted")]
    TooLong(usize),
    /// The value is empty.
    #[error("the value is empty")]
    Empty,
    /// The value is neither standard nor URL-safe base64.
    #[error("the value is not base64")]
    NotBase64,
    /// The base64 decodes to something that is not the expected JSON.
    #[error("the decoded value is not the expected JSON: {0}")]
    NotJson(String),
}

/// Encodes `value` as compact JSON in standard padded base64, the form of the
/// `payment-required` and `payment-response` headers.
///
/// ```
/// let header = nvm_runtime::__private::wire::codec::encode_json_header(&serde_json::json!({"a": 1}));
/// assert_eq!(header, "eyJhIjoxfQ==");
/// ```
pub fn encode_json_header<T: Serialize + ?Sized>(value: &T) -> String {
    // Serializing our own wire types to a Vec cannot fail: they hold no maps with
    // non-string keys and no fallible `Serialize` impls.
    let json = serde_json::to_vec(value).unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(json)
}

/// Decodes base64 in either alphabet, padded or not.
///
/// ```
/// use nvm_runtime::__private::wire::codec::decode_base64;
/// assert_eq!(decode_base64("eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
/// assert_eq!(decode_base64("-_8=").unwrap(), vec![0xfb, 0xff]);
/// ```
pub fn decode_base64(value: &str) -> Result<Vec<u8>, Malformed> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Malformed::Empty);
    }
    if value.len() > MAX_HEADER_LEN {
        return Err(Malformed::TooLong(value.len()));
    }
    STANDARD_LENIENT
        .decode(value)
        .or_else(|_| URL_SAFE_LENIENT.decode(value))
        .map_err(|_| Malformed::NotBase64)
}

/// Decodes a base64 JSON header value (either alphabet, padded or not) into `T`.
///
/// ```
/// let v: serde_json::Value = nvm_runtime::__private::wire::codec::decode_json_header("eyJhIjoxfQ").unwrap();
/// assert_eq!(v["a"], 1);
/// ```
pub fn decode_json_header<T: DeserializeOwned>(value: &str) -> Result<T, Malformed> {
    let bytes = decode_base64(value)?;
    serde_json::from_slice(&bytes).map_err(|e| Malformed::NotJson(e.to_string()))
}

/// Whether a JSON document is an object, read exactly as `serde_json::Value` reads it
/// (the same syntax, UTF-8, escape, number and depth checks, so the same errors) without
/// building the value: `decode_json_header::<JsonShape>` is the cheap form of
/// `decode_json_header::<serde_json::Value>(…)?.is_object()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JsonShape {
    object: bool,
}

impl JsonShape {
    /// Whether the document is a JSON object.
    pub(crate) fn is_object(self) -> bool {
        self.object
    }
}

impl<'de> serde::Deserialize<'de> for JsonShape {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor).map(|object| JsonShape { object })
    }
}

/// Any JSON value, checked as `serde_json::Value` checks it and then dropped.
struct AnyValue;

impl<'de> serde::Deserialize<'de> for AnyValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor).map(|_| AnyValue)
    }
}

/// Accepts every JSON value (as `Value`'s visitor does: `deserialize_any`, never
/// `deserialize_ignored_any`, which skips strings without checking them); `true` for an
/// object.
struct ShapeVisitor;

impl<'de> serde::de::Visitor<'de> for ShapeVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_none<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        <AnyValue as serde::Deserialize>::deserialize(deserializer).map(|_| false)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<AnyValue>()?.is_some() {}
        Ok(false)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<AnyValue, AnyValue>()?.is_some() {}
        Ok(true)
    }
}

/// Encodes bytes as URL-safe base64 without padding (JWT segments).
///
/// ```
/// assert_eq!(nvm_runtime::__private::wire::codec::encode_url_safe(&[0xfb, 0xff]), "-_8");
/// ```
pub fn encode_url_safe(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A 128-bit id, as 32 hex digits, unique to this call: from the standard library's
/// per-process random hash keys, the clock and a counter. For idempotency keys and
/// claims, not for secrets.
pub(crate) fn unique_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let count = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    for half in bytes.chunks_mut(8) {
        let mut hasher = std::hash::RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u64(count);
        hasher.write_u32(std::process::id());
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    hex(&bytes)
}

/// Lower-case hex of `bytes` (addresses, hashes).
///
/// ```
/// assert_eq!(nvm_runtime::__private::wire::codec::hex(&[0x0a, 0xff]), "0aff");
/// ```
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_accepts_both_alphabets() {
        let value = serde_json::json!({"k": "~~~???>>>"});
        let std = encode_json_header(&value);
        let url = std.replace('+', "-").replace('/', "_").trim_end_matches('=').to_owned();
        assert_eq!(decode_json_header::<serde_json::Value>(&std).unwrap(), value);
        assert_eq!(decode_json_header::<serde_json::Value>(&url).unwrap(), value);
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        assert_eq!(decode_base64(""), Err(Malformed::Empty));
        assert_eq!(decode_base64("!!!"), Err(Malformed::NotBase64));
        let huge = "A".repeat(MAX_HEADER_LEN + 1);
        assert_eq!(decode_base64(&huge), Err(Malformed::TooLong(MAX_HEADER_LEN + 1)));
        assert!(matches!(decode_json_header::<serde_json::Value>("bm90IGpzb24"), Err(Malformed::NotJson(_))));
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }

    #[test]
    fn json_shape_reads_exactly_as_value_does() {
        let deep_ok = format!("{}{}", "[".repeat(127), "]".repeat(127));
        let too_deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let documents: Vec<Vec<u8>> = vec![
            br#"{"a":1,"b":[true,null,{"c":"d"}],"e":-1.5e3}"#.to_vec(),
            br#"{}"#.to_vec(),
            br#"{"a":1,"a":2}"#.to_vec(),
            br#"[1,2]"#.to_vec(),
            br#""text""#.to_vec(),
            b"42".to_vec(),
            b"null".to_vec(),
            b"  {\"a\":1}  ".to_vec(),
            br#"{"a":1} x"#.to_vec(),
            br#"{"a":1"#.to_vec(),
            br#"{"a":1,}"#.to_vec(),
            br#"{a:1}"#.to_vec(),
            br#"{"a":"\ud800"}"#.to_vec(),
            br#"{"a":"\x"}"#.to_vec(),
            b"{\"a\":\"\x01\"}".to_vec(),
            b"{\"a\":\"\xff\xfe\"}".to_vec(),
            b"{\"\xff\":1}".to_vec(),
            br#"{"a":1e400}"#.to_vec(),
            br#"{"a":123456789012345678901234567890}"#.to_vec(),
            br#"{"a":01}"#.to_vec(),
            deep_ok.into_bytes(),
            too_deep.into_bytes(),
            Vec::new(),
        ];
        for document in documents {
            let header = base64::engine::general_purpose::STANDARD.encode(&document);
            let shape = decode_json_header::<JsonShape>(&header).map(JsonShape::is_object);
            let value = decode_json_header::<serde_json::Value>(&header).map(|v| v.is_object());
            assert_eq!(shape, value, "{}", String::from_utf8_lossy(&document));
        }
    }
}
