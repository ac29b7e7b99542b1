//! Pending settlements: paid requests whose settlement outcome the seller could not
//! learn (the facilitator's answer was lost and could not be resolved). Each is written
//! down, with everything needed to reconcile it and never the token, to a journal the
//! seller can list and close.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One paid request whose settlement outcome is unknown: the handler succeeded, the
/// settle call was sent, and its answer never came back (nor could it be resolved).
/// The credits may have been burned; the buyer was told not to pay again.
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
}

/// The journal of [`PendingSettlement`]s: where unresolved settlements are written, and
/// where the seller lists and closes them.
///
/// [`PendingSettlements::file`] appends JSON lines to a file (durable: the default a
/// seller should choose); [`PendingSettlements::in_memory`] keeps them in this process
/// only (what a configuration without a journal uses, with a warning at start-up). Cheap
/// to clone: clones share the journal.
///
/// ```
/// use nvm_runtime::PendingSettlements;
///
/// let path = std::env::temp_dir().join(format!("pending-doc-{}.jsonl", std::process::id()));
/// # actix_web::rt::System::new().block_on(async {
/// let journal = PendingSettlements::file(&path).unwrap();
/// assert!(journal.list().await.unwrap().is_empty());
/// // Payments::builder().pending_settlements(journal.clone()) writes to it; the seller
/// // reconciles each record with the facilitator, then closes it:
/// assert!(!journal.close("no-such-id", "settled").await.unwrap());
/// # });
/// # std::fs::remove_file(&path).unwrap();
/// ```
#[derive(Clone)]
pub struct PendingSettlements {
    inner: Arc<Journal>,
}

enum Journal {
    Memory(Mutex<Vec<PendingSettlement>>),
    File {
        path: PathBuf,
        file: Mutex<File>,
    },
    #[cfg(feature = "redis")]
    Redis(crate::store::redis::RedisJournal),
}

/// A line of the journal file: a record, or the closing of one.
#[derive(Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
enum Line {
    Pending(PendingSettlement),
    #[serde(rename_all = "camelCase")]
    Closed {
        id: String,
        resolution: String,
        closed_at: u64,
    },
}

impl std::fmt::Debug for PendingSettlements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.inner {
            Journal::Memory(_) => f.write_str("PendingSettlements(in memory)"),
            Journal::File { path, .. } => write!(f, "PendingSettlements({})", path.display()),
            #[cfg(feature = "redis")]
            Journal::Redis(journal) => write!(f, "PendingSettlements({})", journal.name()),
        }
    }
}

impl Default for PendingSettlements {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl PendingSettlements {
    /// A journal kept in this process only: lost when it stops.
    pub fn in_memory() -> Self {
        PendingSettlements { inner: Arc::new(Journal::Memory(Mutex::new(Vec::new()))) }
    }

    /// A journal appended to `path` as JSON lines (created if missing; existing records
    /// are kept). Each record is flushed to disk before the buyer is answered. A last line
    /// cut short (a crash in the middle of a write) is ended here, so that the next record
    /// starts a line of its own: the cut line is skipped when the journal is read, and
    /// reported by [`PendingSettlements::unreadable_lines`].
    pub fn file(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        if ends_mid_line(&mut file)? {
            file.write_all(b"\n")?;
            file.sync_data()?;
        }
        Ok(PendingSettlements { inner: Arc::new(Journal::File { path, file: Mutex::new(file) }) })
    }

    /// A journal on Redis (feature `redis`), shared by every instance using `store`:
    /// any of them lists and closes the records all of them wrote. A configuration whose
    /// idempotency store is a `RedisStore` and that sets no journal of its own uses it.
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

    /// Whether records survive a restart (a file or Redis journal).
    pub fn is_durable(&self) -> bool {
        !matches!(&*self.inner, Journal::Memory(_))
    }

    /// Writes `record` down.
    pub(crate) async fn record(&self, record: &PendingSettlement) -> std::io::Result<()> {
        match &*self.inner {
            Journal::Memory(records) => {
                records.lock().unwrap_or_else(PoisonError::into_inner).push(record.clone());
                Ok(())
            }
            Journal::File { file, .. } => append(file, &Line::Pending(record.clone())),
            #[cfg(feature = "redis")]
            Journal::Redis(journal) => {
                let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
                journal.record(&record.id, json).await.map_err(std::io::Error::other)
            }
        }
    }

    /// The records not closed yet, oldest first. A line of a file journal that is not a
    /// record (cut short by a crash, or damaged) is skipped, the records around it kept;
    /// [`PendingSettlements::unreadable_lines`] says which.
    pub async fn list(&self) -> std::io::Result<Vec<PendingSettlement>> {
        Ok(self.read().await?.0)
    }

    /// The lines of a file journal that are not records, as `path:line: why` (what
    /// `Payments::prepare()` reports at start-up); none for a journal in memory.
    pub async fn unreadable_lines(&self) -> std::io::Result<Vec<String>> {
        Ok(self.read().await?.1)
    }

    /// The open records, and the unreadable lines.
    async fn read(&self) -> std::io::Result<(Vec<PendingSettlement>, Vec<String>)> {
        match &*self.inner {
            #[cfg(feature = "redis")]
            Journal::Redis(journal) => {
                let mut open = Vec::new();
                let mut unreadable = Vec::new();
                for (id, json) in journal.list().await.map_err(std::io::Error::other)? {
                    match serde_json::from_slice::<PendingSettlement>(&json) {
                        Ok(record) => open.push(record),
                        Err(error) => unreadable.push(format!(
                            "{} {id}: not a pending-settlement record ({error}); skipped",
                            journal.name()
                        )),
                    }
                }
                open.sort_by(|a, b| a.recorded_at.cmp(&b.recorded_at).then_with(|| a.id.cmp(&b.id)));
                Ok((open, unreadable))
            }
            Journal::Memory(records) => {
                Ok((records.lock().unwrap_or_else(PoisonError::into_inner).clone(), Vec::new()))
            }
            Journal::File { path, file } => {
                // Holding the writer's lock: no half-written line is read.
                let _writer = file.lock().unwrap_or_else(PoisonError::into_inner);
                let mut open: Vec<PendingSettlement> = Vec::new();
                let mut unreadable = Vec::new();
                for (number, line) in BufReader::new(File::open(path)?).split(b'\n').enumerate() {
                    let line = line?;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<Line>(&line) {
                        Ok(Line::Pending(record)) => open.push(record),
                        Ok(Line::Closed { id, .. }) => open.retain(|r| r.id != id),
                        Err(error) => unreadable.push(format!(
                            "{}:{}: not a pending-settlement record ({error}); skipped",
                            path.display(),
                            number + 1
                        )),
                    }
                }
                Ok((open, unreadable))
            }
        }
    }

    /// Closes the open record `id` once it is reconciled, noting how (`resolution`, such
    /// as `"settled"` or `"refunded"`). Returns whether such an open record existed.
    pub async fn close(&self, id: &str, resolution: &str) -> std::io::Result<bool> {
        let line =
            Line::Closed { id: id.to_owned(), resolution: resolution.to_owned(), closed_at: unix_now() };
        match &*self.inner {
            #[cfg(feature = "redis")]
            Journal::Redis(journal) => {
                let json = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
                journal.close(id, json).await.map_err(std::io::Error::other)
            }
            Journal::Memory(records) => {
                let mut records = records.lock().unwrap_or_else(PoisonError::into_inner);
                let before = records.len();
                records.retain(|r| r.id != id);
                Ok(records.len() < before)
            }
            Journal::File { file, .. } => {
                if !self.list().await?.iter().any(|r| r.id == id) {
                    return Ok(false);
                }
                append(file, &line)?;
                Ok(true)
            }
        }
    }
}

/// Whether `file` is not empty and does not end with a newline.
fn ends_mid_line(file: &mut File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

fn append(file: &Mutex<File>, line: &Line) -> std::io::Result<()> {
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
    file.write_all(text.as_bytes())?;
    file.sync_data()
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
        }
    }

    #[actix_web::test]
    async fn a_file_journal_lists_what_is_open_across_reopenings() {
        let path = std::env::temp_dir().join(format!("nvm-pending-unit-{}.jsonl", local_id()));
        let journal = PendingSettlements::file(&path).expect("opens");
        for id in ["a", "b", "c"] {
            journal.record(&record(id)).await.expect("records");
        }
        assert!(journal.close("b", "settled").await.expect("closes"));
        assert!(!journal.close("b", "settled").await.expect("closes"), "closed twice");
        let reopened = PendingSettlements::file(&path).expect("reopens");
        let ids: Vec<String> = reopened.list().await.expect("lists").into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a", "c"]);
        assert!(reopened.is_durable());
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
        let mut file = OpenOptions::new().append(true).open(&path).expect("opens");
        file.write_all(b"\x00\xffnot json\n").expect("writes");
        drop(file);
        journal.record(&record("last")).await.expect("records");

        let ids: Vec<String> = journal.list().await.expect("lists").into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["before", "after", "last"]);
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
        assert_eq!(journal.list().await.expect("lists").len(), 1);
        assert!(journal.close("x", "refunded").await.expect("closes"));
        assert!(journal.list().await.expect("lists").is_empty());
        assert!(!journal.is_durable());
    }
}
