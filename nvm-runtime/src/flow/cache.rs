//! The opt-in verification cache: a successful verification is reused for a few
//! seconds for the same token, plan, credits and resource. Safe because settlement
//! re-checks the balance; the cached request id is never reused for a settle.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::wire::{AccessToken, VerifyResponse};

/// At most this many verifications are kept; older ones are dropped first.
const CAPACITY: usize = 10_000;

/// What a cached verification is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    token: [u8; 32],
    plan_id: String,
    credits: u64,
    resource: String,
    verb: String,
}

impl CacheKey {
    pub(crate) fn new(token: &str, plan_id: &str, credits: u64, resource: &str, verb: &str) -> Self {
        CacheKey {
            token: Sha256::digest(token.as_bytes()).into(),
            plan_id: plan_id.to_owned(),
            credits,
            resource: resource.to_owned(),
            verb: verb.to_owned(),
        }
    }
}

/// Successful verifications by [`CacheKey`], each for the cache's TTL.
pub(crate) struct VerifyCache {
    ttl: Duration,
    entries: Mutex<HashMap<CacheKey, (Instant, VerifyResponse)>>,
}

impl VerifyCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        VerifyCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Option<VerifyResponse> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(key).filter(|(expires, _)| *expires > Instant::now()).map(|(_, v)| v.clone())
    }

    pub(crate) fn insert(&self, key: CacheKey, verification: VerifyResponse) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CAPACITY {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, (now + self.ttl, verification));
    }

    /// Forgets a token's verification (after its settlement failed).
    pub(crate) fn remove(&self, key: &CacheKey) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}

/// At most this many bytes of tokens are remembered as well-formed.
const WELL_FORMED_BYTES: usize = 4 << 20;

/// Tokens already found well-formed by the check before the facilitator call (printable
/// ASCII, base64 of a JSON object), with whether each may be single-use, so that a reused
/// token (the common case: a buyer's client reuses its token for a plan) is neither
/// scanned, decoded nor searched again on every request. Keyed by the exact header text,
/// hashed with a fast seeded hasher (tokens are kilobytes long). Bounded in bytes;
/// forgotten all at once when full. It only ever skips work: a token not in it is
/// checked in full.
#[derive(Default)]
pub(crate) struct WellFormed {
    tokens: Mutex<(HashMap<Checked, bool, foldhash::fast::RandomState>, usize)>,
}

/// A token found well-formed, looked up by the header's bytes (so a hit needs no UTF-8
/// check of them).
#[derive(PartialEq, Eq)]
struct Checked(Box<str>);

impl std::hash::Hash for Checked {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for Checked {
    fn borrow(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl WellFormed {
    /// The token whose header value is exactly `value`, and whether it may be
    /// single-use, when it was found well-formed before.
    pub(crate) fn get(&self, value: &[u8]) -> Option<(AccessToken, bool)> {
        let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens
            .0
            .get_key_value(value)
            .map(|(token, may_be_single_use)| (AccessToken::new(&*token.0), *may_be_single_use))
    }

    /// Remembers `raw` as well-formed, and whether it may be single-use.
    pub(crate) fn insert(&self, raw: &str, may_be_single_use: bool) {
        let mut guard = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, bytes) = &mut *guard;
        if *bytes + raw.len() > WELL_FORMED_BYTES {
            tokens.clear();
            *bytes = 0;
        }
        if tokens.insert(Checked(raw.into()), may_be_single_use).is_none() {
            *bytes += raw.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_tokens_are_bounded_in_bytes() {
        let well_formed = WellFormed::default();
        well_formed.insert("eyJhIjoxfQ", true);
        let (token, may_be_single_use) = well_formed.get(b"eyJhIjoxfQ").expect("remembered");
        assert!(token.as_str() == "eyJhIjoxfQ" && may_be_single_use);
        assert!(well_formed.get(b"eyJhIjoyfQ").is_none());
        let big = "x".repeat(WELL_FORMED_BYTES / 2 + 1);
        well_formed.insert(&big, false);
        well_formed.insert(&format!("{big}y"), false);
        let (tokens, bytes) = &*well_formed.tokens.lock().unwrap();
        assert!(*bytes <= WELL_FORMED_BYTES && tokens.len() == 1, "{bytes}");
    }
}
