//! Where paid calls are remembered across requests and instances: the idempotency
//! records of [`Idempotency`](crate::Idempotency) and the guard that refuses a
//! single-use token already settled. A [`Store`] is a small key-value store with
//! expiry and atomic claims; [`MemoryStore`] serves one process, `RedisStore` (feature
//! `redis`) every instance of a seller.
//!
//! Sits on nothing but the standard library (and the `redis` crate for
//! `RedisStore`): the flow decides what to keep, a store only keeps it.

mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;

/// The future a [`Store`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A key-value store with expiry and atomic claims, shared by every instance that must
/// agree on what was paid.
///
/// Each method is one atomic step: an implementation must never let two callers both
/// win [`insert_new`](Store::insert_new) for one key, nor
/// [`replace`](Store::replace) or [`remove`](Store::remove) a value other than the one
/// expected. Values are opaque bytes; keys are short ASCII strings.
///
/// An implementation for another database is a struct with these four methods:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::Duration;
/// use nvm_runtime::store::{Store, StoreFuture};
///
/// /// A store without expiry, for illustration.
/// #[derive(Default)]
/// struct Plain(Mutex<HashMap<String, Vec<u8>>>);
///
/// impl Store for Plain {
///     fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
///         let value = self.0.lock().unwrap().get(key).cloned();
///         Box::pin(async move { Ok(value) })
///     }
///     fn insert_new<'a>(&'a self, key: &'a str, value: Vec<u8>, _ttl: Duration) -> StoreFuture<'a, bool> {
///         let mut map = self.0.lock().unwrap();
///         let inserted = !map.contains_key(key);
///         if inserted {
///             map.insert(key.to_owned(), value);
///         }
///         Box::pin(async move { Ok(inserted) })
///     }
///     fn replace<'a>(&'a self, key: &'a str, expected: &'a [u8], value: Vec<u8>, _ttl: Duration) -> StoreFuture<'a, bool> {
///         let mut map = self.0.lock().unwrap();
///         let replaced = map.get(key).is_some_and(|v| v == expected);
///         if replaced {
///             map.insert(key.to_owned(), value);
///         }
///         Box::pin(async move { Ok(replaced) })
///     }
///     fn remove<'a>(&'a self, key: &'a str, expected: &'a [u8]) -> StoreFuture<'a, bool> {
///         let mut map = self.0.lock().unwrap();
///         let removed = map.get(key).is_some_and(|v| v == expected);
///         if removed {
///             map.remove(key);
///         }
///         Box::pin(async move { Ok(removed) })
///     }
/// }
///
/// let _idempotency = nvm_runtime::Idempotency::with_store(Plain::default());
/// ```
pub trait Store: Send + Sync + 'static {
    /// The value of `key`, `None` when absent or expired.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;

    /// Sets `key` to `value` for `ttl` only if it is absent (Redis `SET NX PX`); `true`
    /// when this call set it.
    fn insert_new<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Duration) -> StoreFuture<'a, bool>;

    /// Sets `key` to `value` for `ttl` only if it holds exactly `expected`; `true` when
    /// replaced.
    fn replace<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: Vec<u8>,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Deletes `key` only if it holds exactly `expected`; `true` when deleted.
    fn remove<'a>(&'a self, key: &'a str, expected: &'a [u8]) -> StoreFuture<'a, bool>;
}

/// A store could not be reached or did not answer in time. Paid routes that need the
/// store fail closed on it (503) until it answers again.
///
/// ```
/// use nvm_runtime::store::StoreError;
///
/// let error = StoreError::new("redis at 127.0.0.1:6379", std::io::Error::other("connection refused"));
/// assert!(error.to_string().contains("redis at 127.0.0.1:6379"));
/// assert!(std::error::Error::source(&error).is_some());
/// ```
#[derive(Debug, thiserror::Error)]
#[error("the store ({store}) is unavailable")]
pub struct StoreError {
    store: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    /// An error of the store `store` (a name for the logs, never a password), caused by
    /// `source`.
    pub fn new(
        store: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError { store: store.into(), source: source.into() }
    }
}
