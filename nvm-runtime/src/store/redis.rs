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

/// Resolves an open record: `HDEL open id`, and when it was open, `HSET closed id` to the
/// closing (`ARGV[2]`, a JSON object missing its last `}`) with the record added as
/// `"record"`.
const CLOSE: &str = r#"local record = redis.call('HGET', KEYS[1], ARGV[1])
if record then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ',"record":' .. record .. '}')
  return 1
end
return 0"#;

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

    /// Runs `op` on the shared connection; once more, on a fresh one, when the first
    /// attempt failed on a connection that broke before it was sent (Redis went away and
    /// came back: the manager reconnects when a command fails, so the first command after
    /// Redis is back would fail with the old connection's error). A timeout is not tried
    /// again: the command may have been carried out.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match op(self.manager.clone()).await {
            Err(error) if sent_nothing(&error) => {
                tracing::debug!(store = %self.name, error = %crate::error::Report(&error), "redis connection broken; trying once more on a fresh one");
                op(self.manager.clone()).await.map_err(|e| self.error(e))
            }
            done => done.map_err(|e| self.error(e)),
        }
    }
}

/// Whether `error` says the connection was broken or refused (so the command was not
/// carried out), and not that it timed out.
fn sent_nothing(error: &redis::RedisError) -> bool {
    !error.is_timeout()
        && (error.is_connection_dropped() || error.is_connection_refusal() || error.is_io_error())
}

impl RedisStore {
    /// The pending-settlement journal on this Redis, shared by every instance.
    pub(crate) fn journal(&self) -> RedisJournal {
        RedisJournal {
            manager: self.manager.clone(),
            open: self.key("pending"),
            closed: self.key("pending:closed"),
            name: self.name.clone(),
            close: redis::Script::new(CLOSE),
        }
    }
}

/// The pending-settlement journal on Redis: the open records in one hash (id → JSON),
/// the closed ones in another (id → how), so every instance lists and closes the same.
#[derive(Clone)]
pub(crate) struct RedisJournal {
    manager: ConnectionManager,
    open: String,
    closed: String,
    name: String,
    close: redis::Script,
}

impl RedisJournal {
    /// Where it is (`redis at host:port`, key), for reports.
    pub(crate) fn name(&self) -> String {
        format!("{} ({})", self.name, self.open)
    }

    fn error(&self, error: redis::RedisError) -> StoreError {
        StoreError::new(&self.name, error)
    }

    /// Sets the open record `id` to `value`.
    pub(crate) async fn set(&self, id: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let mut connection = self.manager.clone();
        redis::cmd("HSET")
            .arg(&self.open)
            .arg(id)
            .arg(value)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| self.error(e))
    }

    /// Forgets the open record `id`.
    pub(crate) async fn remove(&self, id: &str) -> Result<(), StoreError> {
        let mut connection = self.manager.clone();
        redis::cmd("HDEL")
            .arg(&self.open)
            .arg(id)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| self.error(e))
    }

    /// Every record: its id, value, and whether it is closed (open ones first).
    pub(crate) async fn all(&self) -> Result<Vec<(String, Vec<u8>, bool)>, StoreError> {
        let mut connection = self.manager.clone();
        let mut all = Vec::new();
        for (hash, closed) in [(&self.open, false), (&self.closed, true)] {
            let values: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(hash)
                .query_async(&mut connection)
                .await
                .map_err(|e| self.error(e))?;
            all.extend(values.into_iter().map(|(id, value)| (id, value, closed)));
        }
        Ok(all)
    }

    /// The record `id`: its value, and whether it is closed.
    pub(crate) async fn get(&self, id: &str) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        let mut connection = self.manager.clone();
        for (hash, closed) in [(&self.open, false), (&self.closed, true)] {
            let value: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(hash)
                .arg(id)
                .query_async(&mut connection)
                .await
                .map_err(|e| self.error(e))?;
            if let Some(value) = value {
                return Ok(Some((value, closed)));
            }
        }
        Ok(None)
    }

    /// Closes the open record `id`, once: `closing` (a JSON object without its last `}`)
    /// is stored with the record added as `"record"`. `true` when it was open.
    pub(crate) async fn close(&self, id: &str, closing: Vec<u8>) -> Result<bool, StoreError> {
        let mut connection = self.manager.clone();
        let mut invocation = self.close.key(&self.open);
        invocation.key(&self.closed).arg(id).arg(closing);
        let closed: i64 = invocation.invoke_async(&mut connection).await.map_err(|e| self.error(e))?;
        Ok(closed == 1)
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
        let key = self.key(key);
        Box::pin(self.run(move |mut connection| {
            let command = redis::cmd("GET").arg(&key).clone();
            async move { command.query_async(&mut connection).await }
        }))
    }

    fn insert_new<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Duration) -> StoreFuture<'a, bool> {
        let key = self.key(key);
        Box::pin(async move {
            let set: Option<String> = self
                .run(|mut connection| {
                    let command =
                        redis::cmd("SET").arg(&key).arg(&value).arg("NX").arg("PX").arg(millis(ttl)).clone();
                    async move { command.query_async(&mut connection).await }
                })
                .await?;
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
        let key = self.key(key);
        Box::pin(async move {
            let done: i64 = self
                .run(|mut connection| {
                    let mut invocation = self.replace.key(&key);
                    invocation.arg(expected).arg(&value).arg(millis(ttl));
                    async move { invocation.invoke_async(&mut connection).await }
                })
                .await?;
            Ok(done == 1)
        })
    }

    fn remove<'a>(&'a self, key: &'a str, expected: &'a [u8]) -> StoreFuture<'a, bool> {
        let key = self.key(key);
        Box::pin(async move {
            let done: i64 = self
                .run(|mut connection| {
                    let mut invocation = self.remove.key(&key);
                    invocation.arg(expected);
                    async move { invocation.invoke_async(&mut connection).await }
                })
                .await?;
            Ok(done == 1)
        })
    }
}
