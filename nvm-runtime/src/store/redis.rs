//! The shared store on Redis (feature `redis`).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Store, StoreError, StoreFuture};

/// Compare-and-set: `SET key new PX ttl` only if `key` holds `expected`.
const REPLACE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// Compare-and-delete: `DEL key` only if `key` holds `expected`.
const REMOVE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// A [`Store`] on Redis, shared by every instance of a seller: one instance's records
/// are every instance's. Claims are `SET NX PX`; replacements and removals are
/// compare-and-set scripts, so no two requests ever both win a key.
///
/// The connection is made on first use and remade by itself after Redis goes away
/// (redis-rs's `ConnectionManager`); while Redis does not answer, every operation fails
/// within the timeout of [`RedisStore::open_with_timeout`] and paid routes answer 503, and the server stays up.
///
/// ```no_run
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use nvm_runtime::{Idempotency, Payments};
/// use nvm_runtime::store::RedisStore;
///
/// let store = RedisStore::open("redis://127.0.0.1:6379")?;
/// let payments = Payments::builder_from_env()?
///     .idempotency(Idempotency::with_store(store))
///     .build()?;
/// # Ok(()) }
/// ```
pub struct RedisStore {
    manager: ConnectionManager,
    prefix: String,
    /// Where it is, for errors and logs (no password).
    name: String,
    replace: redis::Script,
    remove: redis::Script,
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`, `rediss://` for TLS when
    /// the `redis` crate has it), with the default timeout of 1 s. No connection is made
    /// until the first operation: a seller starts even while Redis is down, and its paid
    /// routes answer 503 until Redis is back.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with_timeout(url, Duration::from_secs(1))
    }

    /// [`RedisStore::open`] with operations and connection attempts bounded by `timeout`.
    pub fn open_with_timeout(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::new("redis", e))?;
        let info = client.get_connection_info();
        let name = format!("redis at {}", info.addr());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let manager =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| StoreError::new(&name, e))?;
        Ok(RedisStore {
            manager,
            prefix: "nvm:".to_owned(),
            name,
            replace: redis::Script::new(REPLACE),
            remove: redis::Script::new(REMOVE),
        })
    }

    /// Prefixes every key with `prefix` (default `nvm:`), to share one Redis between
    /// sellers or environments.
    ///
    /// ```no_run
    /// let store = nvm_runtime::store::RedisStore::open("redis://127.0.0.1:6379").unwrap().prefix("shop-a:");
    /// ```
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn error(&self, error: redis::RedisError) -> StoreError {
        StoreError::new(&self.name, error)
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("at", &self.name).field("prefix", &self.prefix).finish()
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Store for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        let mut connection = self.manager.clone();
        Box::pin(async move {
            redis::cmd("GET").arg(self.key(key)).query_async(&mut connection).await.map_err(|e| self.error(e))
        })
    }

    fn insert_new<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Duration) -> StoreFuture<'a, bool> {
        let mut connection = self.manager.clone();
        Box::pin(async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(self.key(key))
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl))
                .query_async(&mut connection)
                .await
                .map_err(|e| self.error(e))?;
            Ok(set.is_some())
        })
    }

    fn replace<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: Vec<u8>,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let mut connection = self.manager.clone();
        Box::pin(async move {
            let done: i64 = self
                .replace
                .key(self.key(key))
                .arg(expected)
                .arg(value)
                .arg(millis(ttl))
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.error(e))?;
            Ok(done == 1)
        })
    }

    fn remove<'a>(&'a self, key: &'a str, expected: &'a [u8]) -> StoreFuture<'a, bool> {
        let mut connection = self.manager.clone();
        Box::pin(async move {
            let done: i64 = self
                .remove
                .key(self.key(key))
                .arg(expected)
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.error(e))?;
            Ok(done == 1)
        })
    }
}
