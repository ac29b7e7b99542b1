//! Idempotent paid calls: a request with an `Idempotency-Key` runs, settles and is
//! remembered with its response; a retry with the same key gets that response and
//! receipt back, with no handler, no settlement and no charge. The records live in a
//! [`Store`], shared by every instance when it is Redis; the same store keeps the guard
//! that refuses a single-use token already settled.
//!
//! A record is scoped by payer, plan and route (the resource pattern the router
//! matched) and the idempotency key; it is told apart from another request by its
//! fingerprint (method, path and query, SHA-256 of the body). Its life:
//!
//! | store holds | a request with the key gets |
//! |---|---|
//! | nothing | verified, claimed (`SET NX`), run, settled, stored |
//! | a claim, same fingerprint | 409 (or waits for it, opt-in) |
//! | anything, other fingerprint | 422 |
//! | a stored response | the response and its receipt, `idempotent-replayed: true` |
//! | an answer held for a pending settlement | what its resolution says (see `flow::admit`) |
//!
//! A handler that fails or a settlement refused stores nothing (the claim is released,
//! a retry runs afresh). A successful answer is held, with the id of its settlement's
//! journal record, before the settle call is sent: when the outcome is unknown (or the
//! process dies), it waits there for the settlement's resolution, so a retry is never
//! charged twice and gets the answer once the credits are known to be burned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::PendingSettlements;
use crate::error::IdempotencyError;
use crate::store::{MemoryStore, Store, StoreError};
use crate::wire::AccessTokenExt as _;
use crate::wire::codec::{hex, unique_id};
use crate::wire::{AccessToken, PaymentPayload};
pub(crate) use crate::wire::{IDEMPOTENCY_KEY as KEY_HEADER, IDEMPOTENT_REPLAYED as REPLAYED_HEADER};

/// The longest key accepted.
const MAX_KEY_LEN: usize = 255;
/// How often a waiting duplicate looks at the store.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// How paid calls with an `Idempotency-Key` header are made safe to retry, and where
/// they are remembered.
///
/// On by default, in memory ([`Idempotency::in_memory`]); with several instances, give
/// them one shared store ([`Idempotency::with_store`] of a
/// `store::RedisStore`, feature `redis`).
///
/// ```
/// use std::time::Duration;
/// use nvm_runtime::{Idempotency, Payments};
///
/// let idempotency = Idempotency::in_memory()
///     .ttl(Duration::from_secs(6 * 3600))
///     .max_response_body(256 << 10)
///     .wait_for_first(Duration::from_secs(30));
/// let payments = Payments::builder()
///     .api_key("sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.")
///     .idempotency(idempotency)
///     .build()
///     .unwrap();
/// ```
#[derive(Clone)]
pub struct Idempotency {
    store: Option<Arc<dyn Store>>,
    ttl: Duration,
    claim_ttl: Duration,
    max_response_body: usize,
    max_request_body: usize,
    wait: Option<Duration>,
    /// The pending-settlement journal the store keeps for every instance sharing it.
    journal: Option<super::PendingSettlements>,
}

/// The journal a store shared by every instance keeps for them all: a `RedisStore`'s.
fn shared_journal(store: &dyn std::any::Any) -> Option<super::PendingSettlements> {
    #[cfg(feature = "redis")]
    if let Some(redis) = store.downcast_ref::<crate::store::RedisStore>() {
        return Some(super::PendingSettlements::redis(redis));
    }
    let _ = store;
    None
}

impl Idempotency {
    /// Records kept in this process ([`MemoryStore::default`]): right for one instance.
    pub fn in_memory() -> Self {
        Self::with_store(MemoryStore::default())
    }

    /// Records kept in `store`: a `store::RedisStore` (feature `redis`) to share them
    /// between instances, or a store of your own.
    pub fn with_store(store: impl Store) -> Self {
        let journal = shared_journal(&store);
        Idempotency { journal, ..Self::kept_in(Some(Arc::new(store))) }
    }

    /// No records: the `Idempotency-Key` header is ignored (every request runs and is
    /// charged) and single-use tokens are guarded by the facilitator alone.
    ///
    /// ```
    /// let payments = nvm_runtime::Payments::builder()
    ///     .api_key("sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.")
    ///     .idempotency(nvm_runtime::Idempotency::disabled())
    ///     .build()?;
    /// # drop(payments);
    /// # Ok::<(), nvm_runtime::error::ConfigError>(())
    /// ```
    pub fn disabled() -> Self {
        Self::kept_in(None)
    }

    /// The defaults, with records kept in `store`.
    fn kept_in(store: Option<Arc<dyn Store>>) -> Self {
        Idempotency {
            store,
            ttl: Duration::from_secs(24 * 3600),
            claim_ttl: Duration::from_secs(300),
            max_response_body: 1 << 20,
            max_request_body: 1 << 20,
            wait: None,
            journal: None,
        }
    }

    /// How long a response is kept for retries (default 24 hours).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a call that is still running holds its key (default 5 minutes): set it
    /// above your slowest handler, so a claim never expires while its call runs.
    #[must_use]
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        self.claim_ttl = ttl;
        self
    }

    /// The largest response body kept for replay (default 1 MiB). A larger (or
    /// streamed-and-cut) response is still charged once: its retries get a 409 that
    /// says it was served and is not replayable, with its receipt.
    #[must_use]
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.max_response_body = bytes;
        self
    }

    /// The largest request body of a request with a key (default 1 MiB): the body is
    /// read before the handler to fingerprint the request; a longer one is answered 413.
    #[must_use]
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_request_body = bytes;
        self
    }

    /// A duplicate that arrives while the first request with its key is still running
    /// waits up to `wait` for it and gets its response, instead of an immediate 409.
    #[must_use]
    pub fn wait_for_first(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// When a duplicate stops waiting for the first call, if it waits at all.
    pub(crate) fn wait_deadline(&self) -> Option<Instant> {
        self.wait.map(|wait| Instant::now() + wait)
    }

    /// Whether requests with a key are remembered.
    pub(crate) fn is_enabled(&self) -> bool {
        self.store.is_some()
    }

    pub(crate) fn store(&self) -> Option<&dyn Store> {
        self.store.as_deref()
    }

    /// The journal its store keeps for every instance sharing it (a `RedisStore`'s).
    pub(crate) fn shared_journal(&self) -> Option<super::PendingSettlements> {
        self.journal.clone()
    }

    pub(crate) fn max_request_body_len(&self) -> usize {
        self.max_request_body
    }

    pub(crate) fn max_response_body_len(&self) -> usize {
        self.max_response_body
    }
}

impl Default for Idempotency {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("enabled", &self.is_enabled())
            .field("ttl", &self.ttl)
            .field("claim_ttl", &self.claim_ttl)
            .field("max_response_body", &self.max_response_body)
            .field("max_request_body", &self.max_request_body)
            .field("wait", &self.wait)
            .finish()
    }
}

/// The `Idempotency-Key` of a request: 1 to 255 visible ASCII characters, as a bare
/// token or a quoted string (`"…"`, the draft's structured-field form).
pub(crate) fn parse_key(value: &[u8]) -> Result<&str, IdempotencyError> {
    let text = std::str::from_utf8(value).map_err(|_| invalid("it is not ASCII"))?.trim();
    let key = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    if key.is_empty() {
        return Err(invalid("it is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid("it is longer than 255 characters"));
    }
    if !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(invalid("it has spaces, control or non-ASCII characters"));
    }
    Ok(key)
}

fn invalid(why: &str) -> IdempotencyError {
    IdempotencyError::InvalidKey(format!(
        "the Idempotency-Key header is invalid ({why}): send 1 to 255 visible ASCII characters, such as a UUID"
    ))
}

/// What identifies one idempotent request, before its payer is known.
#[derive(Debug)]
pub(crate) struct KeyedRequest {
    /// The client's key.
    pub(crate) key: String,
    /// The route (the resource pattern the router matched).
    pub(crate) route: String,
    /// SHA-256 (hex) of method, path and query, and the body's SHA-256.
    pub(crate) fingerprint: String,
}

impl KeyedRequest {
    pub(crate) fn new(key: &str, route: &str, method: &str, path_and_query: &str, body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        for part in [method.as_bytes(), b"\n", path_and_query.as_bytes(), b"\n", &Sha256::digest(body)] {
            hasher.update(part);
        }
        KeyedRequest { key: key.to_owned(), route: route.to_owned(), fingerprint: hex(&hasher.finalize()) }
    }
}

/// A response as remembered for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StoredResponse {
    pub(crate) status: u16,
    /// Its headers, `payment-response` (the receipt) included.
    pub(crate) headers: Vec<(String, String)>,
    /// Base64 of the body; `None` when it was too long (or streamed and cut) to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) body: Option<String>,
    /// A receipt to attach when replaying (header form): that of a pending settlement
    /// resolved as burned. The other stored answers carry theirs already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) receipt: Option<String>,
}

/// A record of the store.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
enum Record {
    /// The first request with the key runs.
    #[serde(rename_all = "camelCase")]
    Running { owner: String, fingerprint: String },
    /// It ran and was settled (or its settlement's outcome is unknown).
    #[serde(rename_all = "camelCase")]
    Done {
        fingerprint: String,
        /// SHA-256 (hex) of the token that paid.
        token: String,
        payer: Option<String>,
        response: StoredResponse,
    },
    /// It ran, its answer is held, and its settlement (journal record `pending`) is in
    /// flight or of unknown outcome.
    #[serde(rename_all = "camelCase")]
    Held {
        fingerprint: String,
        token: String,
        payer: Option<String>,
        pending: String,
        response: StoredResponse,
    },
}

/// The running claim of a request on its key, to complete or release. A claim dropped
/// unfinished (the handler's extractors failed, the request was dropped with its
/// connection) releases itself: nothing was charged, a retry runs afresh.
pub(crate) struct Claim {
    store: Option<Arc<dyn Store>>,
    store_key: String,
    /// What the store holds for this claim now (compared before it is replaced).
    running: Vec<u8>,
    fingerprint: String,
    token: String,
    payer: Option<String>,
    /// Once its answer is held: the journal record written ahead of the settle call,
    /// forgotten once the store no longer holds the answer for it.
    journal: Option<(PendingSettlements, String)>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("key", &self.store_key).finish_non_exhaustive()
    }
}

impl Claim {
    /// Leaves the held answer in the store, and the journal record, for the
    /// settlement's resolution (its outcome is unknown): completing or releasing the
    /// claim then does nothing.
    pub(crate) fn keep_held(&mut self) {
        if self.journal.take().is_some() {
            self.store = None;
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else { return };
        let (key, running) = (std::mem::take(&mut self.store_key), std::mem::take(&mut self.running));
        if let Some((_, pending)) = self.journal.take() {
            // Dropped while its settle call may be in flight: its answer stays held and
            // its record open, for the settlement's resolution.
            tracing::warn!(%key, %pending, "a call was dropped while its settlement was in flight: its answer stays held until the record is resolved");
            return;
        }
        tracing::debug!(%key, "idempotency claim abandoned before settlement: released");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = store.remove(&key, &running).await {
                    tracing::warn!(%key, error = %crate::error::Report(&error), "an abandoned idempotency claim could not be released: retries get 409 until it expires");
                }
            });
        }
    }
}

/// Forgets the journal record of a claim whose store record is settled for good
/// (`burned`: its answer stored; or released, nothing burned).
fn forget(journal: Option<(PendingSettlements, String)>, burned: bool) {
    let Some((journal, id)) = journal else { return };
    if burned { journal.settled(&id) } else { journal.done(&id) }
}

/// What the store says of a request with a key, before it is verified.
#[derive(Debug)]
pub(crate) enum Found {
    /// Never seen (or released): verify, then [`claim`].
    Absent { store_key: String },
    /// Done and paid with this very token: replay it.
    Replay(StoredResponse),
    /// Done, paid with another token: replay it once this token is verified to be the
    /// same payer's.
    ReplayIfPayer { payer: Option<String>, response: StoredResponse },
    /// Its answer is held for the settlement recorded as `pending`: what happens depends
    /// on that settlement's resolution.
    Held(Held),
}

/// An answer held in the store for a pending settlement.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) store_key: String,
    /// The store's value, to forget it by.
    value: Vec<u8>,
    /// The journal record of the settlement.
    pub(crate) pending: String,
    /// Whether it was paid with the asking token.
    pub(crate) same_token: bool,
    pub(crate) payer: Option<String>,
    pub(crate) response: StoredResponse,
}

/// Forgets an answer held for a settlement resolved as not burned: the key is free, a
/// retry runs (and pays) afresh.
pub(crate) async fn drop_held(store: &dyn Store, held: &Held) -> Result<(), IdempotencyError> {
    store.remove(&held.store_key, &held.value).await.map_err(unavailable)?;
    Ok(())
}

/// The store key of a request: payer, plan, route and client key, hashed (fixed
/// length, nothing personal in the store's key space).
fn store_key(payer: &str, plan_id: &str, request: &KeyedRequest) -> String {
    let mut hasher = Sha256::new();
    for part in [payer, plan_id, &request.route, &request.key] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    format!("idem:{}", hex(&hasher.finalize()))
}

/// Who asks, read off the token once: the SHA-256 of the token (hex), and the payer it
/// claims (its `authorization.from`, or the token's own digest for a payload shape
/// this crate does not read). Records are scoped by the claimed payer before the token
/// is verified; a replay to another token checks it against the verification.
#[derive(Debug)]
pub(crate) struct Caller {
    digest: String,
    payer: String,
}

impl Caller {
    /// The caller of `token`, whose decoded payload is `payload` (when it decodes).
    pub(crate) fn of(token: &AccessToken, payload: Option<&PaymentPayload>) -> Self {
        let digest = token_digest(token);
        let payer = match payload {
            Some(payload) => payload.payload.authorization.from.to_ascii_lowercase(),
            None => format!("token:{digest}"),
        };
        Caller { digest, payer }
    }
}

fn token_digest(token: &AccessToken) -> String {
    hex(&Sha256::digest(token.as_str().as_bytes()))
}

fn unavailable(error: StoreError) -> IdempotencyError {
    tracing::error!(error = %crate::error::Report(&error), "the idempotency store is unavailable: paid requests with a key fail closed");
    IdempotencyError::StoreUnavailable(Arc::new(error))
}

/// Looks the request up: replay, refuse (409, 422, 503), or go on. A call still running
/// is waited for until `deadline` ([`Idempotency::wait_deadline`]), if any.
pub(crate) async fn find(
    store: &dyn Store,
    caller: &Caller,
    plan_id: &str,
    request: &KeyedRequest,
    deadline: Option<Instant>,
) -> Result<Found, IdempotencyError> {
    look(store, store_key(&caller.payer, plan_id, request), caller, request, deadline).await
}

/// [`find`] at a known store key.
async fn look(
    store: &dyn Store,
    store_key: String,
    caller: &Caller,
    request: &KeyedRequest,
    deadline: Option<Instant>,
) -> Result<Found, IdempotencyError> {
    loop {
        let value = store.get(&store_key).await.map_err(unavailable)?;
        let Some(value) = value else { return Ok(Found::Absent { store_key }) };
        match serde_json::from_slice::<Record>(&value) {
            Ok(Record::Done { fingerprint, .. })
            | Ok(Record::Running { fingerprint, .. })
            | Ok(Record::Held { fingerprint, .. })
                if fingerprint != request.fingerprint =>
            {
                return Err(IdempotencyError::KeyReused);
            }
            Ok(Record::Done { token: paid_with, payer, response, .. }) => {
                return Ok(if paid_with == caller.digest {
                    Found::Replay(response)
                } else {
                    Found::ReplayIfPayer { payer, response }
                });
            }
            Ok(Record::Held { token: paid_with, payer, pending, response, .. }) => {
                let same_token = paid_with == caller.digest;
                return Ok(Found::Held(Held { store_key, value, pending, same_token, payer, response }));
            }
            Ok(Record::Running { .. }) => match deadline {
                Some(deadline) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                _ => return Err(IdempotencyError::InFlight),
            },
            Err(error) => {
                tracing::error!(key = %store_key, error = %crate::error::Report(&error), "an idempotency record could not be read; refusing the request");
                return Err(IdempotencyError::StoreUnavailable(Arc::new(StoreError::new(
                    "idempotency record",
                    error,
                ))));
            }
        }
    }
}

/// What became of a claim.
#[derive(Debug)]
pub(crate) enum Claimed {
    /// This request holds the key: run it, then [`complete`] or [`release`].
    Won(Claim),
    /// Another request took the key between the look-up and the claim, and finished
    /// (or was released) since: what the store now says.
    Lost(Found),
}

/// Claims the key for this request, once it is verified (`SET NX`): `Err(InFlight)`
/// when another request holds it (after waiting, when configured).
pub(crate) async fn claim(
    config: &Idempotency,
    store: &dyn Store,
    store_key: String,
    request: &KeyedRequest,
    caller: &Caller,
    payer: Option<String>,
) -> Result<Claimed, IdempotencyError> {
    let running = Record::Running { owner: unique_id(), fingerprint: request.fingerprint.clone() };
    let running = serde_json::to_vec(&running).unwrap_or_default();
    if store.insert_new(&store_key, running.clone(), config.claim_ttl).await.map_err(unavailable)? {
        let (fingerprint, token) = (request.fingerprint.clone(), caller.digest.clone());
        let store = config.store.clone();
        let journal = None;
        return Ok(Claimed::Won(Claim { store, store_key, running, fingerprint, token, payer, journal }));
    }
    match look(store, store_key, caller, request, config.wait_deadline()).await? {
        Found::Absent { .. } => Err(IdempotencyError::InFlight),
        found => Ok(Claimed::Lost(found)),
    }
}

/// The store record that holds `response`, the answer of the claim's call, for its
/// settlement (journal record `pending`): its key and value.
pub(crate) fn held(claim: &Claim, pending: &str, response: StoredResponse) -> (String, Vec<u8>) {
    let held = Record::Held {
        fingerprint: claim.fingerprint.clone(),
        token: claim.token.clone(),
        payer: claim.payer.clone(),
        pending: pending.to_owned(),
        response,
    };
    (claim.store_key.clone(), serde_json::to_vec(&held).unwrap_or_default())
}

/// Holds the claim's answer (`held`, from [`held`]) for its settlement (journal
/// record `pending` of `journal`), before the settle call is sent: kept for the buyer's
/// retry should the outcome be unknown. `false` when the store could not hold it (the
/// call goes on; an unknown outcome then keeps the answer that says so).
pub(crate) async fn hold(
    config: &Idempotency,
    claim: &mut Claim,
    journal: &PendingSettlements,
    pending: &str,
    held: Vec<u8>,
) -> bool {
    let Some(store) = claim.store.clone() else { return false };
    match store.replace(&claim.store_key, &claim.running, held.clone(), config.ttl).await {
        Ok(true) => {
            claim.running = held;
            claim.journal = Some((journal.clone(), pending.to_owned()));
            true
        }
        Ok(false) => {
            tracing::error!(key = %claim.store_key, "the idempotency claim expired before its call finished (raise Idempotency::claim_ttl): its answer is not held");
            false
        }
        Err(error) => {
            tracing::error!(key = %claim.store_key, error = %crate::error::Report(&error), "the answer could not be held for its settlement: an unknown outcome will not deliver it");
            false
        }
    }
}

/// Puts back a held answer copied into a journal record (a store in memory lost it in a
/// crash); nothing when the store still has the key.
pub(crate) async fn restore(config: &Idempotency, key: &str, value: Vec<u8>) -> Result<bool, StoreError> {
    match config.store() {
        Some(store) => store.insert_new(key, value, config.ttl).await,
        None => Ok(false),
    }
}

/// How long a held answer is kept.
pub(crate) fn ttl(config: &Idempotency) -> Duration {
    config.ttl
}

/// Remembers `response` as the answer to the claim's key.
pub(crate) async fn complete(config: &Idempotency, mut claim: Claim, response: StoredResponse) {
    let journal = claim.journal.take();
    let Some(store) = claim.store.take() else { return };
    let (fingerprint, token, payer) =
        (std::mem::take(&mut claim.fingerprint), std::mem::take(&mut claim.token), claim.payer.take());
    let done = Record::Done { fingerprint, token, payer, response };
    let done = serde_json::to_vec(&done).unwrap_or_default();
    match store.replace(&claim.store_key, &claim.running, done, config.ttl).await {
        Ok(true) => {
            tracing::debug!(key = %claim.store_key, "idempotent call stored for replay");
            // The store no longer holds the answer for the settlement: its record goes.
            forget(journal, true);
        }
        Ok(false) => tracing::error!(
            key = %claim.store_key,
            "the idempotency claim expired before its call finished (raise Idempotency::claim_ttl): a retry may run again"
        ),
        Err(error) => tracing::error!(
            key = %claim.store_key, error = %crate::error::Report(&error),
            "the settled call could not be stored for replay: a retry after the claim expires runs again"
        ),
    }
}

/// Forgets the claim: nothing was charged, a retry runs afresh.
pub(crate) async fn release(mut claim: Claim) {
    let journal = claim.journal.take();
    let Some(store) = claim.store.take() else { return };
    match store.remove(&claim.store_key, &claim.running).await {
        Ok(_) => forget(journal, false),
        Err(error) => tracing::warn!(
            key = %claim.store_key, error = %crate::error::Report(&error),
            "an idempotency claim could not be released: retries get 409 until it expires"
        ),
    }
}

/// The store key of the single-use guard of a token of SHA-256 `digest`.
fn spent_key(digest: &str) -> String {
    format!("spent:{digest}")
}

/// Whether the caller's single-use token was already settled by any instance sharing
/// the store.
pub(crate) async fn is_spent(store: &dyn Store, caller: &Caller) -> Result<bool, IdempotencyError> {
    Ok(store.get(&spent_key(&caller.digest)).await.map_err(unavailable)?.is_some())
}

/// Marks a single-use token settled, for every instance sharing the store.
pub(crate) async fn mark_spent(config: &Idempotency, token: &AccessToken) {
    let Some(store) = config.store() else { return };
    if let Err(error) = store.insert_new(&spent_key(&token_digest(token)), b"1".to_vec(), config.ttl).await {
        tracing::warn!(token = %token.hash(), error = %crate::error::Report(&error), "a settled single-use token could not be marked spent in the store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bare_or_quoted_visible_ascii() {
        assert_eq!(parse_key(b"abc-123").ok(), Some("abc-123"));
        assert_eq!(parse_key(b"\"8e03978e-40d5\"").ok(), Some("8e03978e-40d5"));
        for bad in [&b""[..], b"\"\"", b"a b", b"caf\xc3\xa9", &[b'x'; 256][..]] {
            assert!(matches!(parse_key(bad), Err(IdempotencyError::InvalidKey(_))), "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_tell_method_path_and_body_apart() {
        let base = KeyedRequest::new("k", "/ask", "POST", "/ask", b"{}");
        for other in [
            KeyedRequest::new("k", "/ask", "PUT", "/ask", b"{}"),
            KeyedRequest::new("k", "/ask", "POST", "/ask?x=1", b"{}"),
            KeyedRequest::new("k", "/ask", "POST", "/ask", b"{ }"),
        ] {
            assert_ne!(base.fingerprint, other.fingerprint);
        }
        assert_eq!(base.fingerprint, KeyedRequest::new("k", "/ask", "POST", "/ask", b"{}").fingerprint);
    }

    #[test]
    fn scope_is_payer_plan_route_and_key() {
        let request = KeyedRequest::new("k", "/ask", "POST", "/ask", b"");
        let key = store_key("0xa", "1", &request);
        assert_ne!(key, store_key("0xb", "1", &request));
        assert_ne!(key, store_key("0xa", "2", &request));
        assert_ne!(key, store_key("0xa", "1", &KeyedRequest::new("k", "/other", "POST", "/ask", b"")));
        assert_ne!(key, store_key("0xa", "1", &KeyedRequest::new("j", "/ask", "POST", "/ask", b"")));
        // Lengths are part of the hash: no two splits of one string collide.
        assert_ne!(store_key("0xa1", "", &request), store_key("0xa", "1", &request));
    }
}
