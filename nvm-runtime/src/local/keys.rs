//! Secrets, identifiers, API keys and token signatures of a local facilitator.
//!
//! Everything is derived from one 32-byte instance secret: account addresses, plan and
//! agent ids, request ids, transaction hashes and nonces (SHA-256 of the secret and a
//! label), API keys (HS256 JWTs) and token signatures (HMAC-SHA256 over a canonical
//! serialization of the signed fields).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::wire::PaymentPayload;
use crate::wire::codec;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of the API keys a local facilitator issues. No environment uses it, so
/// the official SDKs fall back to the `custom` environment (`NVM_BACKEND_URL`).
pub(crate) const KEY_PREFIX: &str = "local";

/// The `sessionKeysProvider` of the tokens a local facilitator mints.
pub(crate) const SESSION_KEYS_PROVIDER: &str = "local";

/// The instance secret. `Debug` never shows it.
pub(crate) struct Secret([u8; 32]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A fresh secret: SHA-256 over the OS-seeded hasher keys of the standard library,
    /// the time, the process id, a counter and a few addresses.
    pub(crate) fn generate() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        let heap = Box::new(count);
        let mut hasher = Sha256::new();
        hasher.update(b"nvm-local-facilitator/secret/v1");
        // `RandomState` keys come from the OS's random source: two of them are 128
        // bits of entropy without a `rand` dependency.
        for salt in 0..2u64 {
            hasher.update(RandomState::new().hash_one((count, salt)).to_le_bytes());
        }
        hasher.update(now.to_le_bytes());
        hasher.update(std::process::id().to_le_bytes());
        hasher.update(count.to_le_bytes());
        hasher.update((&raw const *heap as usize).to_le_bytes());
        hasher.update((&raw const count as usize).to_le_bytes());
        hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
        Secret(hasher.finalize().into())
    }

    /// The one HMAC-SHA256 of this module, keyed with the secret: separated by
    /// `domain` (`domain\0data`), or plain (`None`: a JWT's HS256 signature).
    fn hmac(&self, domain: Option<&str>, data: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        if let Some(domain) = domain {
            mac.update(domain.as_bytes());
            mac.update(&[0]);
        }
        mac.update(data);
        mac
    }

    /// HMAC-SHA256 of `data` under the secret, separated by `domain`.
    pub(crate) fn mac(&self, domain: &str, data: &[u8]) -> [u8; 32] {
        self.hmac(Some(domain), data).finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `data` (constant-time comparison).
    pub(crate) fn check(&self, domain: &str, data: &[u8], tag: &[u8]) -> bool {
        self.hmac(Some(domain), data).verify_slice(tag).is_ok()
    }

    /// 32 bytes derived from the secret, a label and a number: ids, hashes, nonces.
    pub(crate) fn derive(&self, label: &str, n: u64) -> [u8; 32] {
        let mut data = Vec::with_capacity(label.len() + 8);
        data.extend_from_slice(label.as_bytes());
        data.extend_from_slice(&n.to_be_bytes());
        self.mac("derive", &data)
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// `0x` + 40 lower-case hex digits: an account address.
pub(crate) fn address(bytes: &[u8; 32]) -> String {
    format!("0x{}", codec::hex(&bytes[..20]))
}

/// `0x` + 64 lower-case hex digits: a transaction hash or a nonce.
pub(crate) fn hash_hex(bytes: &[u8; 32]) -> String {
    format!("0x{}", codec::hex(bytes))
}

/// The bytes as an unsigned big-endian integer written in decimal: a 256-bit id.
pub(crate) fn decimal(bytes: &[u8]) -> String {
    let mut number = bytes.to_vec();
    let mut digits = Vec::new();
    while number.iter().any(|&b| b != 0) {
        let mut remainder = 0u32;
        for byte in &mut number {
            let value = (remainder << 8) | u32::from(*byte);
            // value < 10 * 256, so the quotient fits a byte.
            *byte = u8::try_from(value / 10).unwrap_or(u8::MAX);
            remainder = value % 10;
        }
        digits.push(b'0' + u8::try_from(remainder).unwrap_or(0));
    }
    if digits.is_empty() {
        return "0".to_owned();
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// A request id shaped like a UUID (version 4 bits set).
pub(crate) fn uuid(bytes: &[u8; 32]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = codec::hex(&b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

/// Issues `local:<JWT>` for `address`: an HS256 JWT signed with the instance secret,
/// carrying the claims the official SDKs read (`sub`, `o11y`).
pub(crate) fn issue_api_key(secret: &Secret, address: &str, serial: u64) -> String {
    let header = codec::encode_url_safe(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": "nvm-local-facilitator",
        "sub": address,
        "o11y": format!("local-o11y-{}", &codec::hex(&secret.derive("o11y", serial))[..16]),
        "iat": unix_now(),
        "jti": uuid(&secret.derive("jti", serial)),
    });
    let payload = codec::encode_url_safe(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let signature = codec::encode_url_safe(&jwt_mac(secret, &signing_input));
    format!("{KEY_PREFIX}:{signing_input}.{signature}")
}

fn jwt_mac(secret: &Secret, signing_input: &str) -> [u8; 32] {
    // A plain HS256 signature (the secret is the HMAC key), so standard JWT libraries
    // can verify it given the secret.
    secret.hmac(None, signing_input.as_bytes()).finalize().into_bytes().into()
}

/// Why an `Authorization` header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// Not `<prefix>:<header>.<payload>.<signature>`.
    Malformed,
    /// Not signed by this facilitator.
    Forged,
}

impl KeyError {
    pub(crate) fn message(self) -> &'static str {
        match self {
            KeyError::Missing => "missing API key: send `Authorization: Bearer <NVM API key>`",
            KeyError::Malformed => "malformed API key: expected `local:<JWT>`",
            KeyError::Forged => "unknown API key: it was not issued by this local facilitator",
        }
    }
}

/// Checks an `Authorization` header value and returns the key's account (lower case).
pub(crate) fn check_bearer(secret: &Secret, header: Option<&str>) -> Result<String, KeyError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(KeyError::Missing)?;
    let key = match header.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => return Err(KeyError::Missing),
    };
    let jwt = key.split_once(':').map_or(key, |(_, jwt)| jwt);
    let mut parts = jwt.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(KeyError::Malformed);
    };
    let signature = codec::decode_base64(signature_b64).map_err(|_| KeyError::Malformed)?;
    let signing_input = &jwt[..header_b64.len() + 1 + payload_b64.len()];
    if secret.hmac(None, signing_input.as_bytes()).verify_slice(&signature).is_err() {
        return Err(KeyError::Forged);
    }
    let claims: serde_json::Value = codec::decode_base64(payload_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(KeyError::Malformed)?;
    claims
        .get("sub")
        .and_then(serde_json::Value::as_str)
        .filter(|sub| !sub.is_empty())
        .map(str::to_ascii_lowercase)
        .ok_or(KeyError::Malformed)
}

/// Appends one field to a canonical serialization: presence tag, length, bytes.
fn field(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            out.extend_from_slice(&(value.len() as u64).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
    }
}

/// The signed fields of a token, serialized without ambiguity: the version, the whole
/// `accepted` object, the `authorization` and the bound resource.
fn canonical(payload: &PaymentPayload) -> Vec<u8> {
    let accepted = &payload.accepted;
    let authorization = &payload.payload.authorization;
    let session_keys = serde_json::to_string(&authorization.session_keys).unwrap_or_default();
    let valid_before = authorization.valid_before.map(|v| v.to_string());
    let mut out = Vec::with_capacity(256);
    field(&mut out, Some(&payload.x402_version.to_string()));
    field(&mut out, Some(&accepted.scheme));
    field(&mut out, Some(&accepted.network));
    field(&mut out, Some(&accepted.plan_id));
    field(&mut out, Some(&accepted.extra.version));
    field(&mut out, accepted.extra.agent_id.as_deref());
    field(&mut out, accepted.extra.http_verb.as_deref());
    field(&mut out, Some(&authorization.from));
    field(&mut out, Some(&authorization.session_keys_provider));
    field(&mut out, Some(&session_keys));
    field(&mut out, authorization.nonce.as_deref());
    field(&mut out, valid_before.as_deref());
    field(&mut out, payload.resource.as_ref().map(|r| r.url.as_str()));
    out
}

const TOKEN_DOMAIN: &str = "x402-token/v1";

/// Signs `payload` in place: `payload.signature = 0x + hex(HMAC(canonical))`.
pub(crate) fn sign_token(secret: &Secret, payload: &mut PaymentPayload) {
    let tag = secret.mac(TOKEN_DOMAIN, &canonical(payload));
    payload.payload.signature = format!("0x{}", codec::hex(&tag));
}

/// Whether the token's signature covers exactly its signed fields.
pub(crate) fn token_signature_ok(secret: &Secret, payload: &PaymentPayload) -> bool {
    let signature = payload.payload.signature.trim();
    let hex = signature.strip_prefix("0x").unwrap_or(signature);
    match hex_decode(hex) {
        Some(tag) => secret.check(TOKEN_DOMAIN, &canonical(payload), &tag),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_of_bytes() {
        assert_eq!(decimal(&[0]), "0");
        assert_eq!(decimal(&[1, 0]), "256");
        assert_eq!(
            decimal(&[0xff; 32]),
            "115792089237316195423570985008687907853269984665640564039457584007913129639935"
        );
    }

    #[test]
    fn keys_round_trip_and_forgeries_fail() {
        let secret = Secret::generate();
        let other = Secret::generate();
        let key = issue_api_key(&secret, "0xAbC0000000000000000000000000000000000001", 1);
        let bearer = format!("Bearer {key}");
        assert_eq!(
            check_bearer(&secret, Some(&bearer)),
            Ok("0xabc0000000000000000000000000000000000001".to_owned())
        );
        assert_eq!(check_bearer(&other, Some(&bearer)), Err(KeyError::Forged));
        assert_eq!(check_bearer(&secret, None), Err(KeyError::Missing));
        assert_eq!(check_bearer(&secret, Some("Bearer local:abc")), Err(KeyError::Malformed));
        let parsed: crate::backend::ApiKey = key.parse().expect("parses");
        assert!(parsed.has_o11y());
    }

    #[test]
    fn uuid_shape() {
        let id = uuid(&[7; 32]);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
