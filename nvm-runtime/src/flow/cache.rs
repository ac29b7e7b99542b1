//! The opt-in verification cache: a successful verification is reused for a few
//! seconds for the same token, plan, credits and resource. Safe because settlement
//! re-checks the balance; the cached request id is never reused for a settle.

use std::collections::HashMap;
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
