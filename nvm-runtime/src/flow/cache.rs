//! The opt-in verification cache: a successful verification is reused for a few
//! seconds for the same token, plan, credits and resource. Safe because settlement
//! re-checks the balance; the cached request id is never reused for a settle.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::wire::VerifyResponse;

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

/// Tokens already found well-formed by the check before the facilitator call (base64 of
/// a JSON object), so that a reused token (the common case: a buyer's client reuses its
/// token for a plan) is not decoded and parsed again on every request. Bounded in bytes;
/// forgotten all at once when full. It only ever skips work: a token not in it is
/// checked in full.
#[derive(Default)]
pub(crate) struct WellFormed {
    tokens: Mutex<(HashSet<Box<str>>, usize)>,
}

impl WellFormed {
    /// Whether `raw` was found well-formed before.
    pub(crate) fn contains(&self, raw: &str) -> bool {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner).0.contains(raw)
    }

    /// Remembers `raw` as well-formed.
    pub(crate) fn insert(&self, raw: &str) {
        let mut guard = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, bytes) = &mut *guard;
        if *bytes + raw.len() > WELL_FORMED_BYTES {
            tokens.clear();
            *bytes = 0;
        }
        if tokens.insert(raw.into()) {
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
        well_formed.insert("eyJhIjoxfQ");
        assert!(well_formed.contains("eyJhIjoxfQ") && !well_formed.contains("eyJhIjoyfQ"));
        let big = "x".repeat(WELL_FORMED_BYTES / 2 + 1);
        well_formed.insert(&big);
        well_formed.insert(&format!("{big}y"));
        let (tokens, bytes) = &*well_formed.tokens.lock().unwrap();
        assert!(*bytes <= WELL_FORMED_BYTES && tokens.len() == 1, "{bytes}");
    }
}
