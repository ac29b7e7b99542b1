//! Access tokens (the [`wire`](crate::wire) docs, §5): the raw header value, its short hash for logs, and the
//! x402 `PaymentPayload` it decodes to.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::wire::Accepted;
use crate::wire::codec::{self, DecodeError};

/// An x402 access token exactly as the client sent it.
///
/// `Debug` and `Display` show only its short hash, so a token never reaches a log.
///
/// ```
/// use nvm_runtime::wire::AccessToken;
/// let token = AccessToken::new("secret-token-value");
/// assert!(!format!("{token:?}").contains("secret"));
/// assert_eq!(token.as_str(), "secret-token-value");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AccessToken(String);

impl AccessToken {
    /// Wraps a raw token.
    pub fn new(raw: impl Into<String>) -> Self {
        AccessToken(raw.into())
    }

    /// The raw token, to send to the facilitator. Never log it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the token may be a single-use one: a check of its base64 text for the
    /// JSON key `"nonce"` at each of the three byte alignments, in either alphabet,
    /// without decoding it. `false` is certain; `true` is confirmed by
    /// [`AccessTokenExt::decode`].
    pub(crate) fn may_be_single_use(&self) -> bool {
        static PATTERNS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        let patterns = PATTERNS.get_or_init(|| base64_fragments(b"\"nonce\""));
        patterns.iter().any(|pattern| self.0.contains(pattern.as_str()))
    }
}

/// What the crate (and this repository's tests and fuzzers, through
/// `__private::wire`) does with a token besides sending it: its short hash for logs, its
/// decoded payload. Not a public API: a seller never needs to decode a token.
pub trait AccessTokenExt {
    /// The short hash that stands for the token in logs and cache keys.
    ///
    /// ```
    /// use nvm_runtime::__private::wire::{AccessTokenExt as _, TokenHash};
    /// use nvm_runtime::wire::AccessToken;
    /// assert_eq!(AccessToken::new("abc").hash(), TokenHash::of("abc"));
    /// ```
    fn hash(&self) -> TokenHash;

    /// Decodes the x402 payment payload inside the token.
    ///
    /// ```
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::wire::AccessToken;
    /// assert!(AccessToken::new("not base64 JSON").decode().is_err());
    /// ```
    fn decode(&self) -> Result<PaymentPayload, DecodeError>;
}

impl AccessTokenExt for AccessToken {
    fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }

    fn decode(&self) -> Result<PaymentPayload, DecodeError> {
        Ok(codec::decode_json_header(&self.0)?)
    }
}

/// The base64 text that `needle` leaves in any base64 encoding that contains it: for
/// each of the three alignments of its first byte in a 3-byte group, the characters
/// made of its bits only, in the standard and the URL-safe alphabets.
fn base64_fragments(needle: &[u8]) -> Vec<String> {
    use base64::Engine as _;
    let mut fragments = Vec::new();
    for alignment in 0..3usize {
        let mut bytes = vec![0u8; alignment];
        bytes.extend_from_slice(needle);
        let (first, last) = ((alignment * 8).div_ceil(6), bytes.len() * 8 / 6);
        for engine in [
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            let encoded = engine.encode(&bytes);
            if let Some(fragment) = encoded.get(first..last) {
                fragments.push(fragment.to_owned());
            }
        }
    }
    fragments.sort();
    fragments.dedup();
    fragments
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken({})", self.hash())
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.hash(), f)
    }
}

/// The first 12 hex digits of a token's SHA-256: enough to correlate log lines, useless
/// to an attacker.
///
/// ```
/// use nvm_runtime::__private::wire::TokenHash;
/// assert_eq!(TokenHash::of("abc").to_string(), "tok:ba7816bf8f01");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 6]);

impl TokenHash {
    /// Hashes a raw token.
    pub fn of(raw: &str) -> Self {
        let digest = Sha256::digest(raw.as_bytes());
        let mut short = [0u8; 6];
        short.copy_from_slice(&digest[..6]);
        TokenHash(short)
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tok:{}", codec::hex(&self.0))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The x402 `PaymentPayload` a token carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    /// Always 2.
    pub x402_version: u32,
    /// What the token was minted for.
    pub accepted: Accepted,
    /// The signature and authorization.
    pub payload: SignedPayload,
    /// The resource a single-use token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceBinding>,
    /// Always `{}`.
    #[serde(default)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

/// The `payload` of a [`PaymentPayload`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedPayload {
    /// `0x…` signature over the authorization.
    pub signature: String,
    /// Who pays, and how.
    pub authorization: Authorization,
}

impl fmt::Debug for SignedPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPayload")
            .field("signature", &"<redacted>")
            .field("authorization", &self.authorization)
            .finish()
    }
}

/// The `authorization` of a [`SignedPayload`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// The subscriber's address.
    pub from: String,
    /// Who provides the session keys.
    #[serde(default)]
    pub session_keys_provider: String,
    /// The session keys.
    #[serde(default)]
    pub session_keys: Vec<serde_json::Value>,
    /// Present and non-empty on single-use (version 3) tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Unix time (seconds) after which the token is expired, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_before: Option<u64>,
}

impl PaymentPayload {
    /// Whether this is a single-use (version 3) token.
    pub fn is_single_use(&self) -> bool {
        self.payload.authorization.nonce.as_deref().is_some_and(|n| !n.is_empty())
    }

    /// The payload as a token: standard padded base64 of compact JSON.
    pub fn to_token(&self) -> AccessToken {
        AccessToken(codec::encode_json_header(self))
    }
}

/// The `resource` a single-use token is bound to (in a permissions request and in the
/// token itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceBinding {
    /// The URL (path) the token is bound to.
    pub url: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every JSON text with and without a `"nonce"` key, at every offset: the base64
    /// check never misses one.
    #[test]
    fn the_nonce_check_never_misses_a_single_use_token() {
        use base64::Engine as _;
        for prefix in 0..9 {
            for single_use in [true, false] {
                let key = if single_use { "nonce" } else { "nonceX" };
                let json = format!("{{{}\"a\":1,\"{key}\":\"n\"}}", " ".repeat(prefix));
                for engine in
                    [base64::engine::general_purpose::STANDARD, base64::engine::general_purpose::URL_SAFE]
                {
                    let token = AccessToken::new(engine.encode(&json));
                    if single_use {
                        assert!(token.may_be_single_use(), "{json}");
                    }
                }
            }
            let plain = AccessToken::new(
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{{{}\"from\":\"0xabc\",\"sessionKeys\":[]}}", " ".repeat(prefix))),
            );
            assert!(!plain.may_be_single_use());
        }
    }
}
