//! The in-process store: bounded in entries and bytes, with expiry.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Store, StoreFuture};

/// A [`Store`] in this process's memory, bounded in entries and bytes: the default of
/// a seller that runs one instance. When full, the entries closest to expiry go first
/// (with a warning: a forgotten idempotency record lets a retry run again).
///
/// ```
/// use nvm_runtime::store::MemoryStore;
///
/// // At most 50 000 records and 32 MiB of them.
/// let store = MemoryStore::new(50_000, 32 << 20);
/// let _idempotency = nvm_runtime::Idempotency::with_store(store);
/// ```
pub struct MemoryStore {
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Entry>,
    /// Keys by expiry (and a sequence number, for equal instants).
    by_expiry: BTreeMap<(Instant, u64), String>,
    bytes: usize,
    next: u64,
}

struct Entry {
    value: Vec<u8>,
    expires: (Instant, u64),
}

impl MemoryStore {
    /// The default's entries (see [`MemoryStore::default`]).
    const DEFAULT_MAX_ENTRIES: usize = 100_000;
    /// The default's bytes.
    const DEFAULT_MAX_BYTES: usize = 64 << 20;

    /// A store of at most `max_entries` entries and `max_bytes` bytes of keys and values.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        MemoryStore { max_entries: max_entries.max(1), max_bytes, inner: Mutex::default() }
    }

    /// How many entries are kept now (expired ones included until they are swept).
    fn len(&self) -> usize {
        self.lock().map.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn live<'m>(entries: &'m Entries, key: &str, now: Instant) -> Option<&'m Entry> {
        entries.map.get(key).filter(|e| e.expires.0 > now)
    }

    fn put(&self, entries: &mut Entries, key: &str, value: Vec<u8>, ttl: Duration, now: Instant) {
        entries.remove(key);
        let size = key.len() + value.len();
        // Expired first, then the nearest to expiry, until the new entry fits.
        while !entries.map.is_empty()
            && (entries.map.len() >= self.max_entries || entries.bytes + size > self.max_bytes)
        {
            let Some((&(at, seq), _)) = entries.by_expiry.iter().next() else { break };
            if let Some(evicted) = entries.by_expiry.remove(&(at, seq)) {
                if at > now {
                    tracing::warn!(
                        max_entries = self.max_entries,
                        max_bytes = self.max_bytes,
                        "the in-memory store is full: an unexpired record was dropped (a retry of its call would run again); give it more room or use a shared store"
                    );
                }
                if let Some(entry) = entries.map.remove(&evicted) {
                    entries.bytes -= evicted.len() + entry.value.len();
                }
            }
        }
        let expires = (now + ttl, entries.next);
        entries.next += 1;
        entries.bytes += size;
        entries.by_expiry.insert(expires, key.to_owned());
        entries.map.insert(key.to_owned(), Entry { value, expires });
    }
}

impl Entries {
    fn remove(&mut self, key: &str) {
        if let Some(entry) = self.map.remove(key) {
            self.by_expiry.remove(&entry.expires);
            self.bytes -= key.len() + entry.value.len();
        }
    }
}

/// 100 000 entries and 64 MiB: what [`Idempotency::in_memory`](crate::Idempotency::in_memory)
/// uses.
impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(Self::DEFAULT_MAX_ENTRIES, Self::DEFAULT_MAX_BYTES)
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.len())
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        let value = Self::live(&self.lock(), key, Instant::now()).map(|e| e.value.clone());
        Box::pin(std::future::ready(Ok(value)))
    }

    fn insert_new<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Duration) -> StoreFuture<'a, bool> {
        let now = Instant::now();
        let mut entries = self.lock();
        let inserted = Self::live(&entries, key, now).is_none();
        if inserted {
            self.put(&mut entries, key, value, ttl, now);
        }
        Box::pin(std::future::ready(Ok(inserted)))
    }

    fn replace<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: Vec<u8>,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let now = Instant::now();
        let mut entries = self.lock();
        let replaced = Self::live(&entries, key, now).is_some_and(|e| e.value == expected);
        if replaced {
            self.put(&mut entries, key, value, ttl, now);
        }
        Box::pin(std::future::ready(Ok(replaced)))
    }

    fn remove<'a>(&'a self, key: &'a str, expected: &'a [u8]) -> StoreFuture<'a, bool> {
        let mut entries = self.lock();
        let removed = Self::live(&entries, key, Instant::now()).is_some_and(|e| e.value == expected);
        if removed {
            entries.remove(key);
        }
        Box::pin(std::future::ready(Ok(removed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory store's futures are ready at once.
    fn block<T>(mut future: StoreFuture<'_, T>) -> T {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(result) => result.expect("memory store"),
            std::task::Poll::Pending => panic!("a memory store future was pending"),
        }
    }

    #[test]
    fn claims_are_exclusive_and_compare_before_changing() {
        let store = MemoryStore::default();
        let ttl = Duration::from_secs(60);
        assert!(block(store.insert_new("k", b"a".to_vec(), ttl)));
        assert!(!block(store.insert_new("k", b"b".to_vec(), ttl)));
        assert!(!block(store.replace("k", b"x", b"c".to_vec(), ttl)));
        assert!(block(store.replace("k", b"a", b"c".to_vec(), ttl)));
        assert_eq!(block(store.get("k")), Some(b"c".to_vec()));
        assert!(!block(store.remove("k", b"a")));
        assert!(block(store.remove("k", b"c")));
        assert_eq!(block(store.get("k")), None);
    }

    #[test]
    fn expired_entries_are_absent_and_claimable() {
        let store = MemoryStore::default();
        assert!(block(store.insert_new("k", b"a".to_vec(), Duration::from_millis(1))));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(block(store.get("k")), None);
        assert!(block(store.insert_new("k", b"b".to_vec(), Duration::from_secs(5))));
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let store = MemoryStore::new(3, 1_000);
        for i in 0..10 {
            assert!(block(store.insert_new(&format!("k{i}"), vec![0; 10], Duration::from_secs(60 + i))));
        }
        assert_eq!(store.len(), 3);
        // The latest stay.
        assert!(block(store.get("k9")).is_some());
        assert!(block(store.get("k0")).is_none());
        let store = MemoryStore::new(100, 100);
        for i in 0..10 {
            assert!(block(store.insert_new(&format!("k{i}"), vec![0; 40], Duration::from_secs(60))));
            assert!(store.lock().bytes <= 100);
        }
        assert_eq!(store.len(), 2);
    }
}
