//! Pending settlements: paid requests whose settlement outcome the seller could not
//! learn (the facilitator's answer was lost and could not be resolved), and, with a
//! durable journal, every settlement while its settle call is in flight (written ahead,
//! so that a crash loses none). Each is written down, with everything needed to
//! reconcile it and never a reusable token, to a journal the seller can list, resolve
//! and close.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};

/// One paid request whose settlement is not known to be over: its settle call is in
/// flight ([`SettlementStatus::Settling`]), or was sent and its answer never came back
/// ([`SettlementStatus::Unknown`]: the credits may have been burned; the buyer was told
/// not to pay again), or it was resolved ([`SettlementStatus::Resolved`]).
///
/// ```
/// use nvm_runtime::PendingSettlement;
///
/// let line = r#"{"id":"p-1","agentRequestId":"req-9","payer":"0xabc","planId":"42",
///     "method":"POST","path":"/ask","amount":"3","recordedAt":1764750000,"tokenHash":"0a1b2c3d4e5f"}"#;
/// let record: PendingSettlement = serde_json::from_str(line).unwrap();
/// assert_eq!((record.amount.as_str(), record.agent_request_id.as_deref()), ("3", Some("req-9")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PendingSettlement {
    /// This record's id: the agent request id when the facilitator gave one, else one
    /// made here. The buyer gets it in the answer.
    pub id: String,
    /// The facilitator's `agentRequestId` of the verification, when known: the key to
    /// look the settlement up with the facilitator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_request_id: Option<String>,
    /// The payer's address, when the verification named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// The plan charged.
    pub plan_id: String,
    /// The request's method.
    pub method: String,
    /// The request's path.
    pub path: String,
    /// The credits the settle call asked for, as a decimal string.
    pub amount: String,
    /// When it was recorded, in seconds since the Unix epoch.
    pub recorded_at: u64,
    /// A short hash of the access token (never the token itself).
    pub token_hash: String,
    /// Whether its answer went out before its settlement (deferred settlement): the
    /// buyer has it. Resolved as not burned by the seller's resolver (or
    /// `Payments::resolve_pending`), it is settled once more: the first settle burned
    /// nothing, and the seller is owed. Closed as not burned through the journal alone
    /// (`PendingSettlements::close`, `nvm-pending close`), it is written off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferred: bool,
    /// What settling once more takes: kept for a single-use token, which a second
    /// settle resolves (the token is spent by the first settle that goes through), and
    /// for a deferred settlement, sent after a crash when it was never sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) resume: Option<Resume>,
    /// The idempotency record holding the call's answer, copied here by a file journal
    /// so that a store kept in memory gets it back after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) held: Option<HeldAnswer>,
}

/// An idempotency store's record holding a call's answer: its key, and its value in
/// base64.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeldAnswer {
    pub(crate) key: String,
    pub(crate) value: String,
}

impl std::fmt::Debug for HeldAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldAnswer").field("key", &self.key).finish_non_exhaustive()
    }
}

/// The settle request of a single-use token, kept to resolve its outcome by settling
/// once more (after a crash, or once the facilitator answers again).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Resume {
    /// The single-use access token.
    pub(crate) token: String,
    /// The envelope it paid, in its header form (base64 JSON).
    pub(crate) envelope: String,
    /// Set for a reusable token's deferred settlement: sent once after a crash when it
    /// was never sent, never settled twice. Unset (the default, as earlier versions
    /// wrote it): a single-use token, settled once more to resolve an unknown outcome.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) reusable: bool,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume").finish_non_exhaustive()
    }
}

/// How a pending settlement was resolved: whether the credits were burned.
///
/// ```
/// use nvm_runtime::Resolution;
///
/// assert_eq!(serde_json::to_string(&Resolution::NotBurned).unwrap(), r#""notBurned""#);
/// assert_eq!("burned".parse::<Resolution>().unwrap(), Resolution::Burned);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Resolution {
    /// The credits were burned: the buyer's retry gets the answer kept for it, with a
    /// receipt marked confirmed.
    Burned,
    /// Nothing was burned: the buyer's retry is an ordinary call, paid afresh.
    NotBurned,
}

impl<'de> Deserialize<'de> for Resolution {
    /// `"burned"` or `"notBurned"`; the free text an earlier journal wrote reads as
    /// burned unless it says not burned or refunded (the buyer then gets the answer).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(text.parse().unwrap_or_else(|_| {
            let lower = text.to_ascii_lowercase();
            if lower.contains("not") || lower.contains("refund") {
                Resolution::NotBurned
            } else {
                Resolution::Burned
            }
        }))
    }
}

impl std::str::FromStr for Resolution {
    type Err = String;

    /// `burned`, or `not-burned` (also `notBurned`, `not_burned`).
    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "burned" => Ok(Resolution::Burned),
            "notburned" => Ok(Resolution::NotBurned),
            _ => Err(format!("`{text}` is not a resolution: write `burned` or `not-burned`")),
        }
    }
}

impl std::fmt::Display for Resolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resolution::Burned => "burned",
            Resolution::NotBurned => "not-burned",
        })
    }
}

/// Where a settlement of the journal stands.
///
/// ```
/// # actix_web::rt::System::new().block_on(async {
/// use nvm_runtime::{PendingSettlements, SettlementStatus};
///
/// let journal = PendingSettlements::in_memory();
/// // The records to reconcile: settle calls of unknown outcome.
/// assert!(journal.list(SettlementStatus::Unknown).await.unwrap().is_empty());
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettlementStatus {
    /// Its settle call is in flight (written ahead of it). One left so by a process that
    /// died is turned into [`SettlementStatus::Unknown`] (or resolved) by
    /// `Payments::prepare()`.
    Settling,
    /// A deferred settlement: the answer went out, the settle call is not sent yet. One
    /// left so by a process that died is settled by `Payments::prepare()`.
    Deferred,
    /// The settle call was sent and its outcome is unknown: to resolve.
    Unknown,
    /// Resolved, by the seller or a resolver.
    Resolved(Resolution),
}

impl SettlementStatus {
    /// Whether it still waits for its outcome (settling, deferred, or unknown).
    pub(crate) fn is_open(&self) -> bool {
        !matches!(self, SettlementStatus::Resolved(_))
    }
}

/// The seller's resolver of pending settlements (`PaymentsBuilder::settlement_resolver`):
/// given a record, the resolution, or `None` when it cannot tell yet.
pub(crate) type Resolver =
    Arc<dyn Fn(PendingSettlement) -> Pin<Box<dyn Future<Output = Option<Resolution>> + Send>> + Send + Sync>;

/// The journal of [`PendingSettlement`]s: where settlements in flight and those of
/// unknown outcome are written, and where the seller lists, resolves and closes them.
///
/// [`PendingSettlements::file`] appends JSON lines to a file (durable: the default a
/// seller should choose); `PendingSettlements::redis` (feature `redis`) keeps them on Redis, shared by
/// every instance; [`PendingSettlements::in_memory`] keeps them in this process only
/// (what a configuration without a journal uses, with a warning at start-up). With a
/// durable journal every settlement is written down before its settle call is sent, and
/// closed when its outcome is known, so a process killed in between leaves a record.
/// Cheap to clone: clones share the journal.
///
/// ```
/// use nvm_runtime::{PendingSettlements, Resolution, SettlementStatus};
///
/// let path = std::env::temp_dir().join(format!("pending-doc-{}.jsonl", std::process::id()));
/// # actix_web::rt::System::new().block_on(async {
/// let journal = PendingSettlements::file(&path).unwrap();
/// assert!(journal.list(SettlementStatus::Unknown).await.unwrap().is_empty());
/// // Payments::builder().pending_settlements(journal.clone()) writes to it; the seller
/// // reconciles each record with the facilitator, then closes it:
/// assert!(!journal.close("no-such-id", Resolution::Burned).await.unwrap());
/// # });
/// # std::fs::remove_file(&path).unwrap();
/// ```
#[derive(Clone)]
pub struct PendingSettlements {
    inner: Arc<Journal>,
}

enum Journal {
    Memory(Mutex<Entries>),
    File(FileJournal),
    #[cfg(feature = "redis")]
    Redis(crate::store::redis::RedisJournal),
}

/// A line of the journal file (and a value of the Redis journal).
#[derive(Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
enum Line {
    /// Written ahead of a settle call.
    Settling(PendingSettlement),
    /// Written ahead of a deferred settlement's answer.
    Deferred(PendingSettlement),
    /// A settle call of unknown outcome.
    Pending(PendingSettlement),
    /// A settlement written ahead whose outcome came back: forgotten.
    Done { id: String },
    /// A pending settlement resolved.
    #[serde(rename_all = "camelCase")]
    Closed { id: String, resolution: Resolution, closed_at: u64 },
}

/// The records of a journal, by id, in the order written.
#[derive(Default)]
struct Entries {
    order: Vec<String>,
    by_id: HashMap<String, (PendingSettlement, SettlementStatus)>,
}

impl Entries {
    /// Applies one line; `false` when it closes a record that is not open.
    fn apply(&mut self, line: Line) -> bool {
        match line {
            Line::Settling(record) => self.insert(record, SettlementStatus::Settling),
            Line::Deferred(record) => self.insert(record, SettlementStatus::Deferred),
            Line::Pending(record) => self.insert(record, SettlementStatus::Unknown),
            Line::Done { id } => {
                if self.by_id.remove(&id).is_none() {
                    return false;
                }
                self.order.retain(|known| *known != id);
            }
            Line::Closed { id, resolution, .. } => match self.by_id.get_mut(&id) {
                Some((_, status)) if status.is_open() => *status = SettlementStatus::Resolved(resolution),
                _ => return false,
            },
        }
        true
    }

    fn insert(&mut self, record: PendingSettlement, status: SettlementStatus) {
        if !self.by_id.contains_key(&record.id) {
            self.order.push(record.id.clone());
        }
        self.by_id.insert(record.id.clone(), (record, status));
    }

    fn get(&self, id: &str) -> Option<(PendingSettlement, SettlementStatus)> {
        self.by_id.get(id).cloned()
    }

    /// The records of `status`, in the order written.
    fn with_status(&self, wanted: SettlementStatus) -> Vec<PendingSettlement> {
        self.order
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .filter(|(_, status)| *status == wanted)
            .map(|(record, _)| record.clone())
            .collect()
    }
}

impl std::fmt::Debug for PendingSettlements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingSettlements({})", self.name())
    }
}

impl PendingSettlements {
    /// A journal kept in this process only: lost when it stops. Nothing is written ahead
    /// of a settle call (a crash loses the journal anyway); settlements of unknown
    /// outcome are kept.
    pub fn in_memory() -> Self {
        PendingSettlements { inner: Arc::new(Journal::Memory(Mutex::new(Entries::default()))) }
    }

    /// A journal appended to `path` as JSON lines (created if missing, readable by its
    /// owner only; existing records are kept). Every line is on disk before the call
    /// that wrote it goes on: concurrent writes share one `fdatasync`. A last line cut
    /// short (a crash in the middle of a write) is ended here, so that the next record
    /// starts a line of its own: the cut line is skipped when the journal is read, and
    /// reported by [`PendingSettlements::unreadable_lines`].
    ///
    /// One process writes a file journal; an operator's command (such as `nvm-pending`)
    /// may close its records meanwhile.
    pub fn file(path: impl AsRef<Path>) -> std::io::Result<Self> {
        Ok(PendingSettlements { inner: Arc::new(Journal::File(FileJournal::open(path.as_ref())?)) })
    }

    /// A journal on Redis (feature `redis`), shared by every instance using `store`:
    /// any of them lists, resolves and closes the records all of them wrote. A
    /// configuration whose idempotency store is a `RedisStore` and that sets no journal
    /// of its own uses it.
    ///
    /// ```no_run
    /// use nvm_runtime::store::RedisStore;
    /// use nvm_runtime::{Idempotency, Payments, PendingSettlements};
    ///
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisStore::open("redis://127.0.0.1:6379")?;
    /// let payments = Payments::builder_from_env()?
    ///     .pending_settlements(PendingSettlements::redis(&store))
    ///     .idempotency(Idempotency::with_store(store))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(store: &crate::store::RedisStore) -> Self {
        PendingSettlements { inner: Arc::new(Journal::Redis(store.journal())) }
    }

    /// Whether records survive a restart (a file or Redis journal): then every
    /// settlement is written down before its settle call.
    pub(crate) fn is_durable(&self) -> bool {
        !matches!(&*self.inner, Journal::Memory(_))
    }

    /// Whether several processes write it (Redis): a record in flight may be another
    /// live instance's.
    pub(crate) fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        if matches!(&*self.inner, Journal::Redis(_)) {
            return true;
        }
        false
    }

    /// Where it is: `in memory`, the file's path, or the Redis server and key.
    pub(crate) fn name(&self) -> String {
        match &*self.inner {
            Journal::Memory(_) => "in memory".to_owned(),
            Journal::File(file) => file.path.display().to_string(),
            #[cfg(feature = "redis")]
            Journal::Redis(journal) => journal.name(),
        }
    }

    /// Writes `line` down (on disk, or on Redis, before it returns).
    async fn write(&self, line: Line) -> std::io::Result<()> {
        match &*self.inner {
            Journal::Memory(entries) => {
                entries.lock().unwrap_or_else(PoisonError::into_inner).apply(line);
                Ok(())
            }
            Journal::File(file) => file.append(&line).await,
            #[cfg(feature = "redis")]
            Journal::Redis(journal) => redis_write(journal, line).await,
        }
    }

    /// Writes `record` down ahead of its settle call (durable journals only).
    pub(crate) async fn begin(&self, record: &PendingSettlement) -> std::io::Result<()> {
        self.write(Line::Settling(record.clone())).await
    }

    /// Writes `record` down as a deferred settlement, before its answer goes out
    /// (durable journals only).
    pub(crate) async fn defer(&self, record: &PendingSettlement) -> std::io::Result<()> {
        self.write(Line::Deferred(record.clone())).await
    }

    /// Forgets the record `id` written ahead: its settle call was answered. Not waited
    /// for (the call goes on at once): a line lost in a crash leaves the record open,
    /// and the next start-up takes it for a settlement of unknown outcome to resolve,
    /// never for a lost one.
    pub(crate) fn done(&self, id: &str) {
        self.detach(Line::Done { id: id.to_owned() });
    }

    /// Notes that the record `id` written ahead was settled: forgotten, or, in a journal
    /// that copies held answers, kept as resolved (burned) with its answer, so that the
    /// buyer's retry gets it even after a crash took a store in memory. Not waited for,
    /// as [`PendingSettlements::done`].
    pub(crate) fn settled(&self, id: &str) {
        if self.copies_held_answers() {
            self.detach(Line::Closed {
                id: id.to_owned(),
                resolution: Resolution::Burned,
                closed_at: unix_now(),
            });
        } else {
            self.done(id);
        }
    }

    /// Writes `line` down without waiting for it.
    fn detach(&self, line: Line) {
        match &*self.inner {
            Journal::Memory(entries) => {
                entries.lock().unwrap_or_else(PoisonError::into_inner).apply(line);
            }
            Journal::File(file) => {
                if file.send(&line).is_none() {
                    tracing::warn!(journal = %file.path.display(), "a settled call's journal record could not be closed: the journal's writer stopped");
                }
            }
            #[cfg(feature = "redis")]
            Journal::Redis(journal) => {
                let journal = journal.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        if let Err(error) = redis_write(&journal, line).await {
                            tracing::warn!(error = %crate::error::Report(&error), "a settled call's journal record could not be closed: it is taken for an unknown outcome at the next start-up");
                        }
                    });
                }
            }
        }
    }

    /// Writes `record` down as a settlement of unknown outcome.
    pub(crate) async fn record(&self, record: &PendingSettlement) -> std::io::Result<()> {
        self.write(Line::Pending(record.clone())).await
    }

    /// Everything the journal holds, and its unreadable lines.
    async fn read(&self) -> std::io::Result<(Entries, Vec<String>)> {
        match &*self.inner {
            Journal::Memory(entries) => {
                let entries = entries.lock().unwrap_or_else(PoisonError::into_inner);
                let copy = Entries { order: entries.order.clone(), by_id: entries.by_id.clone() };
                Ok((copy, Vec::new()))
            }
            Journal::File(file) => file.read(),
            #[cfg(feature = "redis")]
            Journal::Redis(journal) => redis_read(journal).await,
        }
    }

    /// The records where `status` stands, oldest first:
    ///
    /// - [`SettlementStatus::Unknown`]: the settlements of unknown outcome not resolved
    ///   yet, the ones to reconcile (and [`close`](Self::close));
    /// - [`SettlementStatus::Settling`]: those whose settle call is in flight (written
    ///   ahead): none once their calls are answered, and those of a process that died
    ///   until `Payments::prepare()` turns them into unknown outcomes;
    /// - [`SettlementStatus::Deferred`]: the deferred settlements not sent yet (their
    ///   answers delivered): none once sent, and those of a process that died until
    ///   `Payments::prepare()` sends them;
    /// - [`SettlementStatus::Resolved`]: those closed so, while the journal keeps them.
    ///
    /// A line of a file journal that is not a record (cut short by a crash, or damaged)
    /// is skipped, the records around it kept; [`PendingSettlements::unreadable_lines`]
    /// says which.
    ///
    /// ```
    /// # actix_web::rt::System::new().block_on(async {
    /// use nvm_runtime::{PendingSettlements, SettlementStatus};
    ///
    /// let journal = PendingSettlements::in_memory();
    /// assert!(journal.list(SettlementStatus::Deferred).await.unwrap().is_empty());
    /// # });
    /// ```
    pub async fn list(&self, status: SettlementStatus) -> std::io::Result<Vec<PendingSettlement>> {
        Ok(self.read().await?.0.with_status(status))
    }

    /// Every record (open or resolved) that copies a held answer.
    pub(crate) async fn with_held_answers(
        &self,
    ) -> std::io::Result<Vec<(PendingSettlement, SettlementStatus)>> {
        let entries = self.read().await?.0;
        Ok(entries
            .order
            .iter()
            .filter_map(|id| entries.by_id.get(id))
            .filter(|(record, _)| record.held.is_some())
            .cloned()
            .collect())
    }

    /// Whether a held answer is copied into its record (a file journal: the idempotency
    /// store may be in memory, and lose it in a crash).
    pub(crate) fn copies_held_answers(&self) -> bool {
        matches!(&*self.inner, Journal::File(_))
    }

    /// The record `id` and where it stands; `None` when the journal holds no such record
    /// (never written, or settled normally and forgotten).
    pub async fn get(&self, id: &str) -> std::io::Result<Option<(PendingSettlement, SettlementStatus)>> {
        match &*self.inner {
            #[cfg(feature = "redis")]
            Journal::Redis(journal) => match journal.get(id).await.map_err(std::io::Error::other)? {
                Some((value, closed)) => redis_entry(&value, closed).map(Some).map_err(std::io::Error::other),
                None => Ok(None),
            },
            _ => Ok(self.read().await?.0.get(id)),
        }
    }

    /// The lines of the journal that are not records, as `path:line: why` (what
    /// `Payments::prepare()` reports at start-up); none for a journal in memory.
    pub async fn unreadable_lines(&self) -> std::io::Result<Vec<String>> {
        Ok(self.read().await?.1)
    }

    /// Resolves the open record `id` (settling or unknown) once it is reconciled:
    /// [`Resolution::Burned`] when the facilitator burned its credits (the buyer's retry
    /// then gets the answer kept for it), [`Resolution::NotBurned`] when it did not (the
    /// buyer's retry pays afresh). Returns whether such an open record existed: a record
    /// is closed once.
    pub async fn close(&self, id: &str, resolution: Resolution) -> std::io::Result<bool> {
        let line = Line::Closed { id: id.to_owned(), resolution, closed_at: unix_now() };
        match &*self.inner {
            #[cfg(feature = "redis")]
            Journal::Redis(journal) => redis_close(journal, id, &line).await,
            Journal::Memory(entries) => {
                Ok(entries.lock().unwrap_or_else(PoisonError::into_inner).apply(line))
            }
            Journal::File(file) => file.close(id, line).await,
        }
    }
}

/// A line to append, and who to tell once it is on disk.
type Append = (Vec<u8>, tokio::sync::oneshot::Sender<std::io::Result<()>>);

/// Writes `line` to a Redis journal: a record (settling or unknown) is set in the open
/// hash; `Done` removes one from it; a closing resolves one.
#[cfg(feature = "redis")]
async fn redis_write(journal: &crate::store::redis::RedisJournal, line: Line) -> std::io::Result<()> {
    match &line {
        Line::Settling(record) | Line::Deferred(record) | Line::Pending(record) => {
            let value = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
            journal.set(&record.id, value).await.map_err(std::io::Error::other)
        }
        Line::Done { id } => journal.remove(id).await.map_err(std::io::Error::other),
        Line::Closed { id, .. } => redis_close(journal, id, &line).await.map(drop),
    }
}

/// Resolves the open record `id` of a Redis journal with `line` (a closing).
#[cfg(feature = "redis")]
async fn redis_close(
    journal: &crate::store::redis::RedisJournal,
    id: &str,
    line: &Line,
) -> std::io::Result<bool> {
    let mut closing = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    if closing.pop() != Some(b'}') {
        return Err(std::io::Error::other("a closing is a JSON object"));
    }
    journal.close(id, closing).await.map_err(std::io::Error::other)
}

/// Every record of a Redis journal, oldest first, and the values that are not records.
#[cfg(feature = "redis")]
async fn redis_read(journal: &crate::store::redis::RedisJournal) -> std::io::Result<(Entries, Vec<String>)> {
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    for (id, value, closed) in journal.all().await.map_err(std::io::Error::other)? {
        match redis_entry(&value, closed) {
            Ok(read) => found.push(read),
            Err(error) => unreadable
                .push(format!("{} {id}: not a pending-settlement record ({error}); skipped", journal.name())),
        }
    }
    found.sort_by(|(a, _), (b, _)| a.recorded_at.cmp(&b.recorded_at).then_with(|| a.id.cmp(&b.id)));
    let mut entries = Entries::default();
    for (record, status) in found {
        entries.insert(record, status);
    }
    Ok((entries, unreadable))
}

/// A value of a Redis journal: an open record (a line, or a bare record as an earlier
/// version wrote it: unknown), or a closing with its record.
#[cfg(feature = "redis")]
fn redis_entry(
    value: &[u8],
    closed: bool,
) -> Result<(PendingSettlement, SettlementStatus), serde_json::Error> {
    #[derive(Deserialize)]
    struct Closing {
        resolution: Resolution,
        record: serde_json::Value,
    }
    let (record, resolution) = if closed {
        let closing: Closing = serde_json::from_slice(value)?;
        (closing.record, Some(closing.resolution))
    } else {
        (serde_json::from_slice(value)?, None)
    };
    let (record, status) = match serde_json::from_value::<Line>(record.clone()) {
        Ok(Line::Settling(record)) => (record, SettlementStatus::Settling),
        Ok(Line::Deferred(record)) => (record, SettlementStatus::Deferred),
        Ok(Line::Pending(record)) => (record, SettlementStatus::Unknown),
        _ => (serde_json::from_value(record)?, SettlementStatus::Unknown),
    };
    Ok((record, resolution.map_or(status, SettlementStatus::Resolved)))
}

/// A journal file: one writer thread appends the lines sent to it, several per
/// `fdatasync` when they come together (group commit), and tells each sender once its
/// line is on disk.
struct FileJournal {
    path: PathBuf,
    lines: Mutex<mpsc::Sender<Append>>,
    /// Serializes closings, so that a record is closed once.
    closing: tokio::sync::Mutex<()>,
}

impl FileJournal {
    fn open(path: &Path) -> std::io::Result<Self> {
        let mut options = OpenOptions::new();
        options.create(true).read(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        if ends_mid_line(&mut file)? {
            file.write_all(b"\n")?;
            file.sync_data()?;
        }
        let mut compacted = 0;
        if file.metadata()?.len() > COMPACT_AT {
            drop(file);
            compacted = compact(path)?;
            file = options.open(path)?;
        }
        let (sender, receiver) = mpsc::channel();
        let at = path.to_path_buf();
        std::thread::Builder::new()
            .name("nvm-journal".to_owned())
            .spawn(move || write_lines(file, &receiver, &at, options, compacted))?;
        Ok(FileJournal {
            path: path.to_path_buf(),
            lines: Mutex::new(sender),
            closing: tokio::sync::Mutex::new(()),
        })
    }

    async fn append(&self, line: &Line) -> std::io::Result<()> {
        let on_disk = self.send(line).ok_or_else(|| std::io::Error::other("the journal's writer stopped"))?;
        on_disk.await.map_err(|_| std::io::Error::other("the journal's writer stopped"))?
    }

    /// Hands `line` to the writer thread; what tells once it is on disk (`None` when
    /// the writer stopped).
    fn send(&self, line: &Line) -> Option<tokio::sync::oneshot::Receiver<std::io::Result<()>>> {
        let mut text = serde_json::to_vec(line).ok()?;
        text.push(b'\n');
        let (done, on_disk) = tokio::sync::oneshot::channel();
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).send((text, done)).ok()?;
        Some(on_disk)
    }

    fn read(&self) -> std::io::Result<(Entries, Vec<String>)> {
        read_file(&self.path)
    }

    async fn close(&self, id: &str, line: Line) -> std::io::Result<bool> {
        let _one_at_a_time = self.closing.lock().await;
        let open = self.read()?.0.get(id).is_some_and(|(_, status)| status.is_open());
        if open {
            self.append(&line).await?;
        }
        Ok(open)
    }
}

/// A journal file longer than this (and than twice what its last compaction left) is
/// rewritten with only what it still holds, at opening and as it grows.
const COMPACT_AT: u64 = 32 << 20;

/// How long a resolved record is kept: as long as the idempotency records whose held
/// answers it resolves (24 hours by default).
const KEEP_RESOLVED: u64 = 24 * 3600;

/// Rewrites the journal at `path` with what it still holds (the open records, and those
/// resolved within [`KEEP_RESOLVED`]), through a file renamed over it; returns its new
/// length. Its unreadable lines are reported before they go.
fn compact(path: &Path) -> std::io::Result<u64> {
    let (entries, unreadable) = read_file(path)?;
    for line in &unreadable {
        tracing::warn!("pending-settlement journal, compacted: {line}");
    }
    let now = unix_now();
    let mut text = Vec::new();
    for id in &entries.order {
        let Some((record, status)) = entries.by_id.get(id) else { continue };
        if !status.is_open() && now.saturating_sub(record.recorded_at) > KEEP_RESOLVED {
            continue;
        }
        let first = match status {
            SettlementStatus::Settling => Line::Settling(record.clone()),
            SettlementStatus::Deferred => Line::Deferred(record.clone()),
            _ => Line::Pending(record.clone()),
        };
        for line in std::iter::once(first).chain(match status {
            SettlementStatus::Resolved(resolution) => {
                Some(Line::Closed { id: id.clone(), resolution: *resolution, closed_at: unix_now() })
            }
            _ => None,
        }) {
            serde_json::to_writer(&mut text, &line).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
    }
    let fresh = path.with_extension("compacting");
    let mut options = OpenOptions::new();
    options.create(true).write(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&fresh)?;
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&fresh, path)?;
    if let Some(directory) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(directory)?.sync_all()?;
    }
    Ok(text.len() as u64)
}

/// Reads a journal file. A last line without its newline is being written (or was cut
/// by a crash, and is ended and reported at the next opening): not read.
fn read_file(path: &Path) -> std::io::Result<(Entries, Vec<String>)> {
    let mut entries = Entries::default();
    let mut unreadable = Vec::new();
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            break;
        }
        number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Line>(&line) {
            Ok(line) => {
                entries.apply(line);
            }
            Err(error) => unreadable.push(format!(
                "{}:{number}: not a pending-settlement record ({error}); skipped",
                path.display(),
            )),
        }
    }
    Ok((entries, unreadable))
}

/// The writer thread of a journal file: until every sender is gone, takes the lines
/// waiting, writes them, syncs once, and answers each.
fn write_lines(
    mut file: File,
    lines: &mpsc::Receiver<Append>,
    path: &Path,
    reopen: OpenOptions,
    mut compacted: u64,
) {
    while let Ok(first) = lines.recv() {
        let mut batch = vec![first];
        batch.extend(lines.try_iter());
        let bytes: Vec<u8> = batch.iter().flat_map(|(line, _)| line.iter().copied()).collect();
        let result = file.write_all(&bytes).and_then(|()| file.sync_data());
        if let Err(error) = &result {
            tracing::error!(journal = %path.display(), error = %crate::error::Report(&error), "the pending-settlement journal could not be written");
            // What was written of the batch ends with a newline, so the next batch starts
            // a line of its own; readers skip the cut one.
            if ends_mid_line(&mut file).unwrap_or(false) {
                let _ = file.write_all(b"\n");
            }
        }
        for (_, done) in batch {
            let _ =
                done.send(result.as_ref().copied().map_err(|e| std::io::Error::new(e.kind(), e.to_string())));
        }
        if file.metadata().is_ok_and(|m| m.len() > COMPACT_AT.max(2 * compacted)) {
            match compact(path).and_then(|length| Ok((length, reopen.open(path)?))) {
                Ok((length, fresh)) => (compacted, file) = (length, fresh),
                Err(error) => {
                    tracing::warn!(journal = %path.display(), error = %crate::error::Report(&error), "the pending-settlement journal could not be compacted");
                }
            }
        }
    }
}

/// Whether `file` is not empty and does not end with a newline.
fn ends_mid_line(file: &mut File) -> std::io::Result<bool> {
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An id for a record that has no agent request id: unique in this process, and
/// unlikely to collide across processes.
pub(crate) fn local_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("pending-{:x}-{:x}-{}", nanos, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> PendingSettlement {
        PendingSettlement {
            id: id.to_owned(),
            agent_request_id: None,
            payer: Some("0xabc".into()),
            plan_id: "7".into(),
            method: "POST".into(),
            path: "/ask".into(),
            amount: "2".into(),
            recorded_at: 1,
            token_hash: "0a0b0c0d0e0f".into(),
            deferred: false,
            resume: None,
            held: None,
        }
    }

    fn ids(records: Vec<PendingSettlement>) -> Vec<String> {
        records.into_iter().map(|r| r.id).collect()
    }

    #[actix_web::test]
    async fn a_file_journal_lists_what_is_open_across_reopenings() {
        let path = std::env::temp_dir().join(format!("nvm-pending-unit-{}.jsonl", local_id()));
        let journal = PendingSettlements::file(&path).expect("opens");
        for id in ["a", "b", "c"] {
            journal.record(&record(id)).await.expect("records");
        }
        journal.begin(&record("in-flight")).await.expect("writes ahead");
        journal.begin(&record("answered")).await.expect("writes ahead");
        journal.done("answered");
        assert!(journal.close("b", Resolution::Burned).await.expect("closes"));
        assert!(!journal.close("b", Resolution::NotBurned).await.expect("closes"), "closed twice");
        let reopened = PendingSettlements::file(&path).expect("reopens");
        assert_eq!(ids(reopened.list(SettlementStatus::Unknown).await.expect("lists")), ["a", "c"]);
        assert_eq!(ids(reopened.list(SettlementStatus::Settling).await.expect("lists")), ["in-flight"]);
        let (_, status) = reopened.get("b").await.expect("reads").expect("kept");
        assert_eq!(status, SettlementStatus::Resolved(Resolution::Burned));
        assert!(reopened.get("answered").await.expect("reads").is_none());
        assert!(reopened.is_durable());
        std::fs::remove_file(&path).expect("removes");
    }

    #[actix_web::test]
    async fn concurrent_writes_share_syncs_and_all_land() {
        let path = std::env::temp_dir().join(format!("nvm-pending-group-{}.jsonl", local_id()));
        let journal = PendingSettlements::file(&path).expect("opens");
        let writes: Vec<_> = (0..200)
            .map(|n| {
                let journal = journal.clone();
                actix_web::rt::spawn(async move { journal.record(&record(&format!("r{n}"))).await })
            })
            .collect();
        for write in writes {
            write.await.expect("joins").expect("written");
        }
        assert_eq!(journal.list(SettlementStatus::Unknown).await.expect("lists").len(), 200);
        std::fs::remove_file(&path).expect("removes");
    }

    #[actix_web::test]
    async fn a_line_cut_by_a_crash_or_damaged_is_skipped_and_reported_and_the_others_kept() {
        let path = std::env::temp_dir().join(format!("nvm-pending-cut-{}.jsonl", local_id()));
        let journal = PendingSettlements::file(&path).expect("opens");
        journal.record(&record("before")).await.expect("records");
        drop(journal);
        // A crash in the middle of a write: half a line, no newline; then a damaged one.
        let whole = serde_json::to_string(&Line::Pending(record("cut"))).expect("json");
        let mut file = OpenOptions::new().append(true).open(&path).expect("opens");
        file.write_all(&whole.as_bytes()[..whole.len() / 2]).expect("writes");
        drop(file);
        let journal = PendingSettlements::file(&path).expect("reopens after the crash");
        journal.record(&record("after")).await.expect("records");
        drop(journal);
        let mut file = OpenOptions::new().append(true).open(&path).expect("opens");
        file.write_all(b"\x00\xffnot json\n").expect("writes");
        drop(file);
        let journal = PendingSettlements::file(&path).expect("reopens");
        journal.record(&record("last")).await.expect("records");

        assert_eq!(
            ids(journal.list(SettlementStatus::Unknown).await.expect("lists")),
            ["before", "after", "last"]
        );
        let unreadable = journal.unreadable_lines().await.expect("reads");
        assert_eq!(unreadable.len(), 2, "{unreadable:?}");
        assert!(unreadable[0].contains(&format!("{}:2:", path.display())), "{unreadable:?}");
        assert!(unreadable[1].contains(&format!("{}:4:", path.display())), "{unreadable:?}");
        std::fs::remove_file(&path).expect("removes");
    }

    #[actix_web::test]
    async fn a_memory_journal_closes_by_id() {
        let journal = PendingSettlements::in_memory();
        journal.record(&record("x")).await.expect("records");
        assert_eq!(journal.list(SettlementStatus::Unknown).await.expect("lists").len(), 1);
        assert!(journal.close("x", Resolution::NotBurned).await.expect("closes"));
        assert!(journal.list(SettlementStatus::Unknown).await.expect("lists").is_empty());
        let (_, status) = journal.get("x").await.expect("reads").expect("kept");
        assert_eq!(status, SettlementStatus::Resolved(Resolution::NotBurned));
        assert!(!journal.is_durable());
    }

    #[test]
    fn resolutions_read_from_their_names_and_from_an_earlier_journal_free_text() {
        for (text, resolution) in [
            ("burned", Resolution::Burned),
            ("not-burned", Resolution::NotBurned),
            ("notBurned", Resolution::NotBurned),
            ("NOT_BURNED", Resolution::NotBurned),
        ] {
            assert_eq!(text.parse::<Resolution>(), Ok(resolution));
        }
        assert!("maybe".parse::<Resolution>().unwrap_err().contains("not-burned"));
        let read = |text: &str| serde_json::from_value::<Resolution>(text.into()).expect("reads");
        assert_eq!(read("settled: burned by the facilitator"), Resolution::Burned);
        assert_eq!(read("refunded"), Resolution::NotBurned);
    }

    #[test]
    fn a_single_use_resume_never_shows_its_token() {
        let resume = Resume { token: "secret-token".into(), envelope: "e30".into(), reusable: false };
        assert!(!format!("{resume:?}").contains("secret"));
        let mut with = record("s");
        with.resume = Some(resume);
        assert!(!format!("{with:?}").contains("secret"));
    }
}
