//! Deferred settlement: a verified 2xx answer goes out at once, and its settlement runs
//! in the background, exactly once, written ahead in the journal (a crash or a shutdown
//! loses none), within a bound on the credits each payer may have delivered but not yet
//! settled.
//!
//! The steps of a deferred call:
//!
//! 1. the payer's exposure is reserved (the call's credits, if the payer stays within the
//!    bound and is not suspended; otherwise the call settles synchronously, as any);
//! 2. the settlement is written to the journal as deferred (durably: a file or Redis);
//! 3. the answer goes out with a receipt saying the settlement is pending;
//! 4. in the background: written again as settling, the settle call, then the outcome:
//!    settled (the record forgotten), failed (the record closed as not burned, the payer
//!    suspended from deferred service until the seller clears it, the hook told) or
//!    unknown (recorded for the resolver); the exposure is released.
//!
//! Records still deferred after a crash were never sent: `Payments::prepare()` settles
//! them. Records left settling are unknown outcomes, as for any settlement.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::Seller;
use super::pending::{PendingSettlement, PendingSettlements, Resolution};
use crate::backend::{Facilitator, RequestRef, SettleOutcome};
use crate::store::{MemoryStore, Store, StoreError};
use crate::wire::{AccessToken, Amount, PaymentRequired, SETTLEMENT_PENDING, SettleResponse};

/// How long a payer stays suspended from deferred service when the seller does not
/// clear it (the store needs a time-to-live).
const SUSPENSION_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// How many times a settle call that could not be sent (the facilitator unreachable) is
/// tried, with a doubling pause from [`RETRY_PAUSE`].
const ATTEMPTS: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Deferred settlement, for the routes that opt in (`#[paid(settle = "deferred")]`,
/// `RouteConfig::settle(SettlePoint::Deferred)`), or for every route that names no
/// settlement point ([`DeferredSettlement::everywhere`]).
///
/// A deferred call's answer goes out at once, its receipt saying the settlement is
/// pending; the settle call runs in the background, written ahead in the journal (so a
/// durable journal is required: `PendingSettlements::file` or a `RedisStore`'s). What the
/// seller risks is bounded: a payer may have at most
/// [`max_exposure`](DeferredSettlement::max_exposure) credits delivered and not yet
/// settled (a call past it settles synchronously), and a payer whose deferred settlement
/// failed is served synchronously until the seller clears it
/// (`Payments::resume_deferred`). Several instances share the bound through one store
/// ([`DeferredSettlement::shared`]).
///
/// ```
/// use std::time::Duration;
/// use nvm_runtime::{DeferredSettlement, PendingSettlements, Payments};
///
/// # let dir = std::env::temp_dir().join(format!("nvm-doc-deferred-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let payments = Payments::builder()
///     .api_key("sandbox:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
///     .pending_settlements(PendingSettlements::file(dir.join("pending.jsonl")).unwrap())
///     .deferred_settlement(DeferredSettlement::new().max_exposure(50))
///     .build()
///     .unwrap();
/// # drop(payments);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Clone)]
pub struct DeferredSettlement {
    max_exposure: u64,
    max_in_flight: usize,
    store: Option<Arc<dyn Store>>,
    everywhere: bool,
}

impl DeferredSettlement {
    /// The credits a payer may have delivered and not yet settled, unless set.
    const DEFAULT_MAX_EXPOSURE: u64 = 10;
    /// The settle calls in flight at once, unless set.
    const DEFAULT_MAX_IN_FLIGHT: usize = 256;

    /// Deferred settlement for the routes that opt in, with a bound of 10 credits per
    /// payer ([`max_exposure`](Self::max_exposure)), kept in memory
    /// ([`shared`](Self::shared)), and at most 256 settle calls in flight
    /// ([`max_in_flight`](Self::max_in_flight)).
    ///
    /// ```
    /// let deferred = nvm_runtime::DeferredSettlement::new();
    /// # let _ = deferred;
    /// ```
    pub fn new() -> Self {
        DeferredSettlement {
            max_exposure: Self::DEFAULT_MAX_EXPOSURE,
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
            store: None,
            everywhere: false,
        }
    }

    /// The credits a payer may have delivered and not yet settled; a call that would pass
    /// it settles synchronously (default 10). `0` defers nothing.
    ///
    /// ```
    /// let deferred = nvm_runtime::DeferredSettlement::new().max_exposure(100);
    /// # let _ = deferred;
    /// ```
    pub fn max_exposure(mut self, credits: u64) -> Self {
        self.max_exposure = credits;
        self
    }

    /// How many deferred settle calls may be in flight at once (default 256); the others wait their turn in the
    /// background, their payers' exposure still counted. At a sustained rate R with the
    /// facilitator L away, R x L are in flight: raise it (and the bound) to defer more.
    ///
    /// ```
    /// let deferred = nvm_runtime::DeferredSettlement::new().max_in_flight(1024);
    /// # let _ = deferred;
    /// ```
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.max_in_flight = calls.max(1);
        self
    }

    /// Keeps the exposure of each payer, and the suspended payers, in `store`: give every
    /// instance the same `RedisStore` and the bound holds across them.
    ///
    /// ```
    /// use nvm_runtime::store::MemoryStore;
    /// let deferred = nvm_runtime::DeferredSettlement::new().shared(MemoryStore::default());
    /// # let _ = deferred;
    /// ```
    pub fn shared(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Defers the settlement of every route that names no settlement point (a streamed
    /// body is still settled when it ends; a route that says `before_body` is not
    /// deferred).
    ///
    /// ```
    /// let deferred = nvm_runtime::DeferredSettlement::new().everywhere();
    /// # let _ = deferred;
    /// ```
    pub fn everywhere(mut self) -> Self {
        self.everywhere = true;
        self
    }
}

impl Default for DeferredSettlement {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for DeferredSettlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredSettlement")
            .field("max_exposure", &self.max_exposure)
            .field("max_in_flight", &self.max_in_flight)
            .field("shared", &self.store.is_some())
            .field("everywhere", &self.everywhere)
            .finish()
    }
}

/// What the seller is told of a deferred settlement that failed: its record and why.
pub(crate) type FailureHook = Arc<dyn Fn(&PendingSettlement, &str) + Send + Sync>;

/// The running side of [`DeferredSettlement`]: the bound, the background worker and the
/// settlements in flight.
pub(crate) struct Deferrer {
    pub(crate) everywhere: bool,
    work: Arc<Work>,
    worker: Worker,
}

/// What a settlement in the background needs (shared with its task).
struct Work {
    exposure: Exposure,
    facilitator: Facilitator,
    journal: PendingSettlements,
    idempotency: super::Idempotency,
    on_failure: Option<FailureHook>,
    /// Deferred settlements handed over and not over yet (queued or in flight).
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
    /// Permits for the settle calls in flight at once.
    calls: tokio::sync::Semaphore,
}

/// A deferred settlement: its record, the token and the envelope to settle, its credits,
/// and whether its token is single-use.
pub(crate) struct Job {
    pub(crate) record: PendingSettlement,
    pub(crate) token: AccessToken,
    pub(crate) envelope: PaymentRequired,
    pub(crate) credits: u64,
    pub(crate) single_use: bool,
}

impl Deferrer {
    /// Starts the background worker (its own thread, so that the settlements in flight
    /// outlive the web server's workers at shutdown).
    pub(crate) fn start(
        config: DeferredSettlement,
        facilitator: Facilitator,
        journal: PendingSettlements,
        idempotency: super::Idempotency,
        on_failure: Option<FailureHook>,
    ) -> std::io::Result<Self> {
        let ttl = facilitator.timeout() * 2 + Duration::from_secs(60);
        let store = config.store.unwrap_or_else(|| Arc::new(MemoryStore::default()));
        let work = Work {
            exposure: Exposure { store, bound: config.max_exposure, ttl },
            facilitator,
            journal,
            idempotency,
            on_failure,
            in_flight: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            calls: tokio::sync::Semaphore::new(config.max_in_flight),
        };
        Ok(Deferrer { everywhere: config.everywhere, work: Arc::new(work), worker: Worker::start()? })
    }

    /// Reserves `credits` of `payer`'s exposure: `Ok(true)` when granted; `Ok(false)`
    /// when the payer is suspended or would pass the bound.
    pub(crate) async fn reserve(&self, payer: &str, credits: u64) -> Result<bool, StoreError> {
        self.work.exposure.reserve(payer, credits).await
    }

    /// Releases a reservation that will not be used.
    pub(crate) async fn release(&self, payer: &str, credits: u64) {
        self.work.exposure.release(payer, credits).await;
    }

    /// Hands `job` to the background, `payer`'s exposure reserved for it.
    pub(crate) fn spawn(&self, job: Job, payer: String) {
        self.work.in_flight.fetch_add(1, Ordering::AcqRel);
        let work = Arc::clone(&self.work);
        self.worker.spawn(async move {
            run(&work, job, &payer).await;
            if work.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
                work.idle.notify_waiters();
            }
        });
    }

    /// Waits until no settlement is in flight, for at most `limit`; returns how many
    /// still are (written down: the next start-up settles or records them).
    pub(crate) async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.work.idle.notified();
            let left = self.work.in_flight.load(Ordering::Acquire);
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.work.in_flight.load(Ordering::Acquire);
            }
        }
    }

    /// Serves `payer` deferred again after a failure; whether it was suspended.
    pub(crate) async fn resume(&self, payer: &str) -> Result<bool, StoreError> {
        self.work.exposure.resume(payer).await
    }

    /// Why `payer` is suspended from deferred service, if it is.
    pub(crate) async fn suspension(&self, payer: &str) -> Result<Option<String>, StoreError> {
        self.work.exposure.suspension(payer).await
    }
}

impl Job {
    /// The job settling `record` for `credits` with `token` on `envelope`.
    pub(crate) fn new(
        record: PendingSettlement,
        token: AccessToken,
        envelope: PaymentRequired,
        credits: u64,
        single_use: bool,
    ) -> Self {
        Job { record, token, envelope, credits, single_use }
    }
}

/// What settling a deferred record takes: the facilitator and the journal, and, for a
/// seller that defers, the bound (to suspend a payer that failed) and the hook.
struct Ctx<'a> {
    facilitator: &'a Facilitator,
    journal: &'a PendingSettlements,
    idempotency: &'a super::Idempotency,
    exposure: Option<&'a Exposure>,
    on_failure: Option<&'a FailureHook>,
}

impl Work {
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            facilitator: &self.facilitator,
            journal: &self.journal,
            idempotency: &self.idempotency,
            exposure: Some(&self.exposure),
            on_failure: self.on_failure.as_ref(),
        }
    }
}

/// Settles `job` in the background (once a settle call may start), then releases its
/// payer's exposure.
async fn run(work: &Work, job: Job, payer: &str) {
    {
        // The semaphore is never closed: a permit always comes.
        let _permit = work.calls.acquire().await.ok();
        settle(&work.ctx(), &job).await;
    }
    work.exposure.release(payer, job.credits).await;
}

/// Settles a record found deferred in the journal at start-up (its process died before
/// sending it): with the seller's deferred settlement when it has one (a failure
/// suspends the payer), or without it (the seller turned it off since).
pub(crate) async fn recover(seller: &Seller, record: PendingSettlement) -> Option<Resolution> {
    let resume = record.resume.as_ref()?;
    let envelope = PaymentRequired::from_header(&resume.envelope).ok()?;
    let credits = record.amount.parse::<u64>().ok()?;
    let token = AccessToken::new(&resume.token);
    let single_use = !resume.reusable;
    let job = Job::new(record, token, envelope, credits, single_use);
    let ctx = match &seller.deferred {
        Some(deferrer) => deferrer.work.ctx(),
        None => Ctx {
            facilitator: &seller.facilitator,
            journal: &seller.pending,
            idempotency: &seller.idempotency,
            exposure: None,
            on_failure: None,
        },
    };
    settle(&ctx, &job).await
}

/// Settles `job`: written ahead as settling, the settle call (tried again while the
/// facilitator cannot be reached), and its outcome written down.
async fn settle(work: &Ctx<'_>, job: &Job) -> Option<Resolution> {
    let record = &job.record;
    if let Err(error) = work.journal.begin(record).await {
        // Still deferred in the journal: the next start-up sends it.
        tracing::error!(pending = %record.id, error = %crate::error::Report(&error), "a deferred settlement could not be written as settling: not sent now; the next start-up settles it");
        return None;
    }
    let amount = Amount::from(job.credits);
    let request = RequestRef {
        payment_required: &job.envelope,
        x402_access_token: job.token.as_str(),
        max_amount: Some(&amount),
        agent_request_id: record.agent_request_id.as_deref(),
    };
    let mut pause = RETRY_PAUSE;
    let mut attempt = 1;
    let outcome = loop {
        let outcome = work.facilitator.settle_outcome_ref(&request).await;
        match outcome {
            SettleOutcome::Refused(error) if error.is_unavailable() && attempt < ATTEMPTS => {
                tracing::warn!(pending = %record.id, attempt, error = %crate::error::Report(&error), "a deferred settle call could not be sent; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            outcome => break outcome,
        }
    };
    match outcome {
        SettleOutcome::Settled(receipt) => {
            // A record holding a copy of its answer stays, resolved, for a retry after a
            // crash; the others are forgotten.
            if record.held.is_some() {
                work.journal.settled(&record.id);
            } else {
                work.journal.done(&record.id);
            }
            if job.single_use {
                super::idempotency::mark_spent(work.idempotency, &job.token).await;
            }
            tracing::debug!(pending = %record.id, credits = receipt.credits_redeemed_u64(), "deferred settlement settled");
            count("settled", record, receipt.credits_redeemed_u64());
            Some(Resolution::Burned)
        }
        SettleOutcome::Declined(receipt) => {
            let reason = receipt.error_reason.unwrap_or_else(|| "settlement failed".to_owned());
            failed(work, record, &reason).await;
            Some(Resolution::NotBurned)
        }
        SettleOutcome::Refused(error) => {
            let reason = match error.code() {
                Some(code) => format!("{code}: {}", crate::error::chain(&error)),
                None => crate::error::chain(&error),
            };
            failed(work, record, &reason).await;
            Some(Resolution::NotBurned)
        }
        SettleOutcome::Unknown(error) => {
            match work.journal.record(record).await {
                Ok(()) => {
                    tracing::error!(pending = %record.id, payer = ?record.payer, credits = %record.amount, error = %crate::error::Report(&error), "deferred settlement outcome unknown: recorded as a pending settlement to resolve")
                }
                Err(io) => {
                    tracing::error!(pending = %record.id, payer = ?record.payer, credits = %record.amount, error = %crate::error::Report(&error), journal_error = %io, "deferred settlement outcome unknown and the journal could not be written: this log line is the record")
                }
            }
            count("unknown", record, 0);
            None
        }
    }
}

/// A deferred settlement that burned nothing: closed as not burned in the journal, its
/// payer suspended from deferred service, the seller's hook told.
async fn failed(work: &Ctx<'_>, record: &PendingSettlement, reason: &str) {
    tracing::error!(pending = %record.id, payer = ?record.payer, credits = %record.amount, %reason, "deferred settlement failed: the answer was delivered unpaid; the payer is served with synchronous settlement until cleared");
    if let Err(error) = work.journal.close(&record.id, Resolution::NotBurned).await {
        tracing::error!(pending = %record.id, error = %crate::error::Report(&error), "a failed deferred settlement could not be closed in the journal");
    }
    if let (Some(payer), Some(exposure)) = (&record.payer, work.exposure)
        && let Err(error) = exposure.suspend(payer, &record.id, reason).await
    {
        tracing::error!(pending = %record.id, error = %crate::error::Report(&error), "a payer whose deferred settlement failed could not be suspended in the store");
    }
    if let Some(hook) = work.on_failure {
        hook(record, reason);
    }
    count("failed", record, 0);
}

/// Counts a deferred settlement's outcome (and the credits it burned) in the metrics.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
fn count(outcome: &'static str, record: &PendingSettlement, settled: u64) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("nvm_deferred_settlements_total", "outcome" => outcome).increment(1);
        if settled > 0 {
            metrics::counter!("nvm_paid_credits_settled_total", "plan" => record.plan_id.clone(), "route" => record.path.clone())
                .increment(settled);
        }
    }
}

/// The receipt of a deferred call's answer: not settled yet (`success: false`,
/// `errorReason: "settlement_pending"`, `settlement: "deferred"`), with the amount, the
/// payer and the ids to reconcile with.
pub(crate) fn receipt(record: &PendingSettlement, network: Option<String>) -> SettleResponse {
    let mut receipt = super::record_receipt(record, network, SETTLEMENT_PENDING);
    receipt.other.insert("settlement".to_owned(), "deferred".into());
    receipt.other.insert("amount".to_owned(), record.amount.clone().into());
    receipt
}

/// Whether a seller's deferred settlement applies to a route settled at `point`.
pub(crate) fn applies(seller: &Seller, point: Option<super::SettlePoint>) -> bool {
    match (&seller.deferred, point) {
        (Some(_), Some(super::SettlePoint::Deferred)) => true,
        (Some(deferrer), None) => deferrer.everywhere,
        _ => false,
    }
}

/// The bound on each payer's credits delivered and not yet settled, and the suspended
/// payers, in a store (compare-and-set: it holds across instances sharing the store).
struct Exposure {
    store: Arc<dyn Store>,
    bound: u64,
    /// How long a reservation outlives its last change (a process that died keeps none
    /// for longer).
    ttl: Duration,
}

fn exposure_key(payer: &str) -> String {
    format!("deferred:exposure:{}", payer.to_ascii_lowercase())
}

fn suspension_key(payer: &str) -> String {
    format!("deferred:suspended:{}", payer.to_ascii_lowercase())
}

impl Exposure {
    async fn reserve(&self, payer: &str, credits: u64) -> Result<bool, StoreError> {
        if credits > self.bound || self.store.get(&suspension_key(payer)).await?.is_some() {
            return Ok(false);
        }
        let key = exposure_key(payer);
        loop {
            let granted = match self.store.get(&key).await? {
                None => self.store.insert_new(&key, credits.to_string().into_bytes(), self.ttl).await?,
                Some(value) => {
                    let held = parse(&value);
                    if held.saturating_add(credits) > self.bound {
                        return Ok(false);
                    }
                    let next = (held + credits).to_string().into_bytes();
                    self.store.replace(&key, &value, next, self.ttl).await?
                }
            };
            if granted {
                return Ok(true);
            }
        }
    }

    async fn release(&self, payer: &str, credits: u64) {
        let key = exposure_key(payer);
        let released = async {
            loop {
                let Some(value) = self.store.get(&key).await? else { return Ok(()) };
                let left = parse(&value).saturating_sub(credits);
                let done = if left == 0 {
                    self.store.remove(&key, &value).await?
                } else {
                    self.store.replace(&key, &value, left.to_string().into_bytes(), self.ttl).await?
                };
                if done {
                    return Ok::<(), StoreError>(());
                }
            }
        };
        if let Err(error) = released.await {
            tracing::warn!(error = %crate::error::Report(&error), "a payer's deferred exposure could not be released: it expires with the store's time-to-live");
        }
    }

    async fn suspend(&self, payer: &str, id: &str, reason: &str) -> Result<(), StoreError> {
        let value = serde_json::json!({ "pendingSettlementId": id, "reason": reason }).to_string();
        self.store.insert_new(&suspension_key(payer), value.into_bytes(), SUSPENSION_TTL).await.map(drop)
    }

    async fn resume(&self, payer: &str) -> Result<bool, StoreError> {
        let key = suspension_key(payer);
        match self.store.get(&key).await? {
            Some(value) => self.store.remove(&key, &value).await,
            None => Ok(false),
        }
    }

    async fn suspension(&self, payer: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .get(&suspension_key(payer))
            .await?
            .map(|value| String::from_utf8_lossy(&value).into_owned()))
    }
}

/// A reservation's value: its decimal credits (0 for anything else).
fn parse(value: &[u8]) -> u64 {
    std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The background worker: a thread running its own runtime until dropped.
struct Worker {
    handle: tokio::runtime::Handle,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Worker {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("nvm-deferred".to_owned()).spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
        Ok(Worker { handle, stop: Mutex::new(Some(stop)) })
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.handle.spawn(task);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposure(bound: u64) -> Exposure {
        Exposure { store: Arc::new(MemoryStore::default()), bound, ttl: Duration::from_secs(60) }
    }

    #[tokio::test]
    async fn the_bound_holds_and_releases() {
        let exposure = exposure(10);
        assert!(exposure.reserve("0xA", 6).await.unwrap());
        assert!(!exposure.reserve("0xa", 5).await.unwrap(), "payers are case-insensitive");
        assert!(exposure.reserve("0xB", 10).await.unwrap(), "each payer has its own bound");
        assert!(exposure.reserve("0xA", 4).await.unwrap());
        exposure.release("0xA", 6).await;
        assert!(exposure.reserve("0xA", 6).await.unwrap());
        assert!(!exposure.reserve("0xC", 11).await.unwrap(), "a call over the bound alone");
    }

    #[tokio::test]
    async fn a_suspended_payer_is_refused_until_resumed() {
        let exposure = exposure(10);
        exposure.suspend("0xA", "rec-1", "insufficient balance").await.unwrap();
        assert!(!exposure.reserve("0xA", 1).await.unwrap());
        assert!(exposure.suspension("0xa").await.unwrap().unwrap().contains("rec-1"));
        assert!(exposure.resume("0xA").await.unwrap());
        assert!(!exposure.resume("0xA").await.unwrap());
        assert!(exposure.reserve("0xA", 1).await.unwrap());
    }
}
