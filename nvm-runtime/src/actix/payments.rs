//! The payments configuration: API key, environment, backend, timeouts, token headers,
//! settlement policy, hooks and caches. Built once, registered with the `App`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::http::header::HeaderName;
use actix_web::{HttpRequest, HttpResponse};

use crate::actix::hooks::Hooks;
use crate::actix::pricing::{ValueSource, settle_label};
use crate::backend::Facilitator;
use crate::backend::PlanCatalog;
use crate::backend::{ApiKey, BackendSettings, Connection, Environment};
use crate::error::{ConfigError, ConfigProblem, PaymentError};
use crate::flow::cache::{VerifyCache, WellFormed};
use crate::flow::deferred::{Deferrer, FailureHook};
use crate::flow::{
    DeferredSettlement, Idempotency, PendingSettlement, PendingSettlements, Recovery, Resolution, Resolver,
    Seller, SettlePoint, SettlementStatus,
};
use crate::observability::Gateway;
use crate::store::StoreError;
use crate::wire::PaymentRequired;
use crate::wire::{SettleResponse, VerifyResponse};

/// A route a `PaymentMiddleware` table charges, as the start-up report shows it.
#[derive(Debug)]
pub(crate) struct DeclaredRoute {
    /// The table's key, `"POST /ask"`.
    pub(crate) route: String,
    pub(crate) plan: String,
    /// `None`: computed per request.
    pub(crate) credits: Option<u64>,
    pub(crate) settle: Option<SettlePoint>,
}

/// The default token header.
pub(crate) const DEFAULT_TOKEN_HEADER: &str = "payment-signature";

/// What a retry of a call whose settlement is still pending is told to wait, by default.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The payments configuration shared by every paid route.
///
/// Build it once (from the environment or with [`Payments::builder`]) and register it
/// with `App::app_data`. Cloning is cheap (an `Arc`); clones share the connection pool
/// and the caches. `Debug` never shows the API key.
///
/// ```
/// use actix_web::App;
/// use nvm_runtime::Payments;
///
/// // header {"alg":"none"}, payload {"sub":"0xabc","o11y":"k"}: a sandbox key
/// let payments = Payments::builder()
///     .api_key("sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.")
///     .build()
///     .unwrap();
/// assert_eq!(payments.backend_url(), "https://api.sandbox.nevermined.app");
/// assert!(!format!("{payments:?}").contains("eyJ"));
/// let _app = App::new().app_data(payments.clone());
/// ```
#[derive(Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

struct Inner {
    /// The routes `PaymentMiddleware` tables built with this configuration charge.
    declared: Mutex<Vec<DeclaredRoute>>,
    api_key: ApiKey,
    environment: Environment,
    seller: Seller,
    /// The seller's token headers, parsed once for header lookups.
    token_headers: Vec<HeaderName>,
    hooks: Hooks,
    /// The LLM observability gateway.
    gateway: Gateway,
}

impl Payments {
    /// Reads `NVM_API_KEY` (required), `NVM_ENVIRONMENT` and `NVM_BACKEND_URL` (used by
    /// the `custom` environment), and `NVM_PENDING_SETTLEMENTS`: the path of the
    /// pending-settlement journal file (see [`PendingSettlements::file`]), when set.
    ///
    /// ```
    /// match nvm_runtime::Payments::from_env() {
    ///     Ok(payments) => println!("using {}", payments.backend_url()),
    ///     // Without NVM_API_KEY, the error says what to set.
    ///     Err(error) => assert!(error.to_string().contains("NVM_API_KEY")),
    /// }
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::builder_from_env()?.build()
    }

    /// A builder seeded from the environment, as [`Payments::from_env`] reads it, to
    /// add hooks or settings before building.
    pub fn builder_from_env() -> Result<PaymentsBuilder, ConfigError> {
        let backend = BackendSettings::from_env()?;
        let pending = match std::env::var("NVM_PENDING_SETTLEMENTS") {
            Ok(path) if !path.trim().is_empty() => {
                let journal = PendingSettlements::file(path.trim()).map_err(|source| {
                    ConfigProblem::PendingJournal { path: path.trim().to_owned(), source: Arc::new(source) }
                })?;
                Some(journal)
            }
            _ => None,
        };
        Ok(PaymentsBuilder { backend, pending, ..PaymentsBuilder::default() })
    }

    /// Starts a configuration.
    pub fn builder() -> PaymentsBuilder {
        PaymentsBuilder::default()
    }

    /// The environment in use.
    pub(crate) fn environment(&self) -> Environment {
        self.inner.environment
    }

    /// The backend base URL in use.
    pub fn backend_url(&self) -> &str {
        self.inner.seller.facilitator.backend_url()
    }

    /// The base URL of the LLM observability gateway (Helicone): the environment's, or
    /// `HELICONE_URL` for a `custom` backend, or the local facilitator's stand-in for its
    /// keys, or [`PaymentsBuilder::helicone_url`].
    ///
    /// ```
    /// let payments = nvm_runtime::Payments::builder()
    ///     .api_key("sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.")
    ///     .build()?;
    /// assert_eq!(payments.helicone_url(), "https://helicone.nevermined.dev");
    /// # Ok::<(), nvm_runtime::error::ConfigError>(())
    /// ```
    pub fn helicone_url(&self) -> &str {
        self.inner.gateway.helicone_url()
    }

    pub(crate) fn gateway(&self) -> &Gateway {
        &self.inner.gateway
    }

    pub(crate) fn facilitator(&self) -> &Facilitator {
        &self.inner.seller.facilitator
    }

    pub(crate) fn seller(&self) -> &Seller {
        &self.inner.seller
    }

    pub(crate) fn token_headers(&self) -> &[HeaderName] {
        &self.inner.token_headers
    }

    pub(crate) fn hooks(&self) -> &Hooks {
        &self.inner.hooks
    }

    /// The journal of settlements whose outcome is unknown, to list and close them once
    /// reconciled (see [`PaymentsBuilder::pending_settlements`]).
    ///
    /// ```
    /// # async fn demo(payments: &nvm_runtime::Payments) -> std::io::Result<()> {
    /// for record in payments.pending_settlements().list(nvm_runtime::SettlementStatus::Unknown).await? {
    ///     println!("reconcile {} ({} credits from {:?})", record.id, record.amount, record.payer);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn pending_settlements(&self) -> &PendingSettlements {
        &self.inner.seller.pending
    }

    /// Resolves what it can of the settlements of unknown outcome: a single-use token's by
    /// settling it once more, the others with the resolver set by
    /// [`PaymentsBuilder::settlement_resolver`]. Run it on a schedule if you have a
    /// resolver; [`Payments::prepare`] runs it at start-up.
    ///
    /// ```
    /// # async fn demo(payments: &nvm_runtime::Payments) -> std::io::Result<()> {
    /// let report = payments.resolve_pending().await?;
    /// println!("{} resolved, {} still unknown", report.burned + report.not_burned, report.unknown);
    /// # Ok(()) }
    /// ```
    pub async fn resolve_pending(&self) -> std::io::Result<Recovery> {
        crate::flow::recovery::resolve(&self.inner.seller).await
    }

    /// Waits, for at most `limit`, until every deferred settlement in flight is over
    /// (see [`DeferredSettlement`]); returns how many still are. Call it at shutdown,
    /// after the server stopped: what it leaves is written down, and the next start-up
    /// ([`Payments::prepare`]) settles or records it. `0` at once without deferred
    /// settlement.
    ///
    /// ```
    /// # async fn demo(payments: nvm_runtime::Payments) -> std::io::Result<()> {
    /// // HttpServer::new(…).run().await?;
    /// let left = payments.drain(std::time::Duration::from_secs(10)).await;
    /// if left > 0 {
    ///     eprintln!("{left} deferred settlement(s) left to the next start-up");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn drain(&self, limit: Duration) -> usize {
        match &self.inner.seller.deferred {
            Some(deferrer) => deferrer.drain(limit).await,
            None => 0,
        }
    }

    /// Serves `payer` with deferred settlement again, after one of its deferred
    /// settlements failed (see [`PaymentsBuilder::on_deferred_failure`]); returns whether
    /// it was suspended.
    ///
    /// ```
    /// # async fn demo(payments: nvm_runtime::Payments) -> Result<(), nvm_runtime::store::StoreError> {
    /// if payments.resume_deferred("0x5dd8…").await? {
    ///     println!("deferred settlement resumed");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn resume_deferred(&self, payer: &str) -> Result<bool, StoreError> {
        match &self.inner.seller.deferred {
            Some(deferrer) => deferrer.resume(payer).await,
            None => Ok(false),
        }
    }

    /// Why `payer` is served with synchronous settlement after a failed deferred one (the
    /// record's id and the reason, as JSON), or `None` when it is not suspended.
    ///
    /// ```
    /// # async fn demo(payments: nvm_runtime::Payments) -> Result<(), nvm_runtime::store::StoreError> {
    /// if let Some(why) = payments.deferred_suspension("0x5dd8…").await? {
    ///     println!("suspended: {why}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn deferred_suspension(&self, payer: &str) -> Result<Option<String>, StoreError> {
        match &self.inner.seller.deferred {
            Some(deferrer) => deferrer.suspension(payer).await,
            None => Ok(None),
        }
    }

    /// The start-up step of a paid server: checks that every `env("VAR")` plan and
    /// agent of every `#[paid]` handler is set, fetches the metadata of every plan that
    /// a `#[paid]` handler or a `PaymentMiddleware` built with this configuration
    /// names, and keeps it fresh in the background (every 240 s), so that no request
    /// ever waits on a plan fetch. An unknown plan or an unreachable backend is an error
    /// here, before any traffic. Call it inside the actix runtime (in `main`, before
    /// `HttpServer::new`), after building your `PaymentMiddleware` tables. A server that
    /// skips it fetches each plan on its first request instead.
    ///
    /// ```no_run
    /// # async fn start() -> Result<(), nvm_runtime::error::ConfigError> {
    /// let payments = nvm_runtime::Payments::from_env()?;
    /// payments.prepare().await?; // e.g. "plan 1234 could not be prepared: …"
    /// # Ok(()) }
    /// ```
    pub async fn prepare(&self) -> Result<(), ConfigError> {
        crate::actix::pricing::check_startup()?;
        self.report_routes();
        let mut plans = self.plans().wanted();
        for route in crate::actix::pricing::routes() {
            let spec = route.spec();
            if !spec.terms.forces_scheme() {
                plans.insert(spec.terms.plan_id(spec.handler)?.into_owned());
            }
        }
        #[cfg(feature = "mcp")]
        for (tool, terms) in crate::mcp::terms() {
            if !terms.forces_scheme() {
                plans.insert(terms.plan_id(&tool)?.into_owned());
            }
        }
        self.report_pending().await;
        if !self.pending_settlements().is_durable() {
            tracing::warn!(
                "no pending-settlement journal configured: settlements whose answer is lost are kept in memory only; set `Payments::builder().pending_settlements(PendingSettlements::file(\"pending-settlements.jsonl\")?)`"
            );
        }
        for plan_id in plans {
            if let Err(error) = self.plans().fetch_and_keep(self.facilitator(), &plan_id).await {
                return Err(ConfigProblem::PlanUnavailable {
                    plan_id,
                    source: Box::new(error),
                    backend: self.backend_url().to_owned(),
                }
                .into());
            }
            tracing::info!(plan_id, "plan prepared");
        }
        if self.plans().start_refreshing() {
            let weak = Arc::downgrade(&self.inner);
            actix_web::rt::spawn(async move {
                loop {
                    tokio::time::sleep(crate::backend::PLAN_REFRESH).await;
                    let Some(inner) = weak.upgrade() else { break };
                    inner.seller.plans.refresh(&inner.seller.facilitator).await;
                }
            });
        }
        Ok(())
    }

    /// Logs, before any traffic, the settlements left pending to reconcile, and each
    /// line of the journal that is not a record (cut short by a crash, or damaged:
    /// skipped, the records around it kept).
    async fn report_pending(&self) {
        let journal = self.pending_settlements();
        match crate::flow::recovery::recover(&self.inner.seller).await {
            Ok(report) if report.orphans > 0 || report.deferred > 0 || report.resolved() > 0 => {
                tracing::warn!(
                    orphans = report.orphans,
                    deferred = report.deferred,
                    burned = report.burned,
                    not_burned = report.not_burned,
                    "pending-settlement journal {}: {} settlement(s) were in flight and {} deferred one(s) not sent when their process stopped; {} resolved as burned, {} as not burned",
                    journal.name(),
                    report.orphans,
                    report.deferred,
                    report.burned,
                    report.not_burned
                )
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(error = %crate::error::Report(&error), "the pending-settlement journal could not be recovered")
            }
        }
        match (journal.list(SettlementStatus::Unknown).await, journal.unreadable_lines().await) {
            (Ok(open), Ok(unreadable)) => {
                for line in &unreadable {
                    tracing::warn!("pending-settlement journal: {line}");
                }
                if !open.is_empty() {
                    tracing::warn!(
                        pending = open.len(),
                        "{} settlement(s) of unknown outcome to resolve: payments.pending_settlements().list(SettlementStatus::Unknown), then close(id, Resolution::Burned | NotBurned)",
                        open.len()
                    );
                }
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(error = %crate::error::Report(&error), "the pending-settlement journal could not be read");
            }
        }
    }

    /// Records a route a `PaymentMiddleware` table charges, for the start-up report.
    pub(crate) fn declare(&self, route: DeclaredRoute) {
        self.inner.declared.lock().unwrap_or_else(PoisonError::into_inner).push(route);
    }

    /// Logs what this server charges, before any traffic: one line per paid route
    /// (method, path, plan, price, settlement point) and one summary line.
    fn report_routes(&self) {
        let mut plans = std::collections::BTreeSet::new();
        let mut count = 0usize;
        for route in crate::actix::pricing::table() {
            let (plan, price) = (plan_label(&route.plan), price_label(&route.credits));
            tracing::info!(
                method = route.method.as_deref().unwrap_or("(first request)"),
                path = route.path.as_deref().unwrap_or("(first request)"),
                plan = %plan,
                price = %price,
                settle = settle_label(route.settle),
                handler = %route.handler,
                "paid route"
            );
            plans.insert(plan);
            count += 1;
        }
        for route in self.inner.declared.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let (method, path) = route.route.split_once(' ').unwrap_or(("", &route.route));
            let price = route.credits.map_or_else(|| "dynamic".to_owned(), |n| n.to_string());
            tracing::info!(
                method,
                path,
                plan = %route.plan,
                price = %price,
                settle = settle_label(route.settle),
                handler = "PaymentMiddleware",
                "paid route"
            );
            plans.insert(route.plan.clone());
            count += 1;
        }
        #[cfg(feature = "mcp")]
        let tools = {
            let tools = crate::mcp::tool_table();
            for tool in &tools {
                let (plan, price) = (plan_label(&tool.plan), price_label(&tool.credits));
                tracing::info!(tool = %tool.tool, plan = %plan, price = %price, form = tool.form, "paid MCP tool");
                plans.insert(plan);
            }
            tools.len()
        };
        #[cfg(not(feature = "mcp"))]
        let tools = 0usize;
        tracing::info!(
            routes = count,
            tools,
            plans = plans.len(),
            environment = ?self.environment(),
            backend = self.backend_url(),
            "{count} paid route(s){} on {} plan(s), settled by {}",
            if tools > 0 { format!(" and {tools} paid MCP tool(s)") } else { String::new() },
            plans.len(),
            self.backend_url()
        );
    }

    pub(crate) fn plans(&self) -> &PlanCatalog {
        &self.inner.seller.plans
    }

    /// The configuration registered with the app of `req`, as `Payments` or
    /// `web::Data<Payments>`.
    pub(crate) fn from_request(req: &HttpRequest) -> Option<&Payments> {
        req.app_data::<Payments>()
            .or_else(|| req.app_data::<actix_web::web::Data<Payments>>().map(|d| d.get_ref()))
    }
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments")
            .field("api_key", &self.inner.api_key)
            .field("environment", &self.inner.environment)
            .field("facilitator", &self.inner.seller.facilitator)
            .field("token_headers", &self.inner.token_headers)
            .field("deliver_on_settle_failure", &self.inner.seller.deliver_on_settle_failure)
            .field("hooks", &self.inner.hooks)
            .field("gateway", &self.inner.gateway)
            .field("verify_cache", &self.inner.seller.cache.as_ref().map(VerifyCache::ttl))
            .field("idempotency", &self.inner.seller.idempotency)
            .finish()
    }
}

/// Builds a [`Payments`] configuration.
#[derive(Default)]
#[must_use]
pub struct PaymentsBuilder {
    backend: BackendSettings,
    token_headers: Option<Vec<String>>,
    deliver_on_settle_failure: bool,
    cache_ttl: Option<Duration>,
    pending: Option<PendingSettlements>,
    resolver: Option<Resolver>,
    retry_after: Option<Duration>,
    idempotency: Option<Idempotency>,
    deferred: Option<DeferredSettlement>,
    on_deferred_failure: Option<FailureHook>,
    hooks: Hooks,
}

impl std::fmt::Debug for PaymentsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentsBuilder")
            .field("backend", &self.backend)
            .field("token_headers", &self.token_headers)
            .field("deliver_on_settle_failure", &self.deliver_on_settle_failure)
            .field("cache_ttl", &self.cache_ttl)
            .field("pending", &self.pending)
            .field("resolver", &self.resolver.is_some())
            .field("retry_after", &self.retry_after)
            .field("idempotency", &self.idempotency)
            .field("deferred", &self.deferred)
            .field("on_deferred_failure", &self.on_deferred_failure.is_some())
            .field("hooks", &self.hooks)
            .finish()
    }
}

impl PaymentsBuilder {
    /// The NVM API key, `<prefix>:<JWT>`; its prefix picks the environment.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.backend.api_key = Some(key.into());
        self
    }

    /// The environment, used when the key's prefix names none.
    pub fn environment(mut self, environment: Environment) -> Self {
        self.backend.environment = Some(environment);
        self
    }

    /// Overrides the backend base URL, whatever the environment.
    pub fn backend_url(mut self, url: impl Into<String>) -> Self {
        self.backend.backend_url = Some(url.into());
        self
    }

    /// Overrides the LLM observability gateway's base URL (Helicone), whatever the
    /// environment (otherwise: the environment's; `HELICONE_URL` for a `custom` backend;
    /// a local facilitator's stand-in for its `local:` keys).
    ///
    /// ```
    /// let payments = nvm_runtime::Payments::builder()
    ///     .api_key("sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.")
    ///     .helicone_url("http://127.0.0.1:8585")
    ///     .build()?;
    /// assert_eq!(payments.helicone_url(), "http://127.0.0.1:8585");
    /// # Ok::<(), nvm_runtime::error::ConfigError>(())
    /// ```
    pub fn helicone_url(mut self, url: impl Into<String>) -> Self {
        self.backend.helicone_url = Some(url.into());
        self
    }

    /// The bound on each facilitator call as a whole, retries included (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.backend.timeout = Some(timeout);
        self
    }

    /// The `Nevermined-Version` header value (default `1.1`).
    pub fn nevermined_version(mut self, version: impl Into<String>) -> Self {
        self.backend.version = Some(version.into());
        self
    }

    /// The headers an access token is read from; the first non-empty one wins (default
    /// `["payment-signature"]`).
    pub fn token_headers<I, S>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.token_headers = Some(headers.into_iter().map(Into::into).collect());
        self
    }

    /// Delivers the handler's response even when its settlement fails (the official
    /// SDKs' behaviour). Off by default: a failed settlement answers 402 and withholds
    /// the paid content.
    pub fn deliver_on_settle_failure(mut self, deliver: bool) -> Self {
        self.deliver_on_settle_failure = deliver;
        self
    }

    /// Caches successful verifications for `ttl` (5 to 30 seconds), keyed by token,
    /// plan, credits and resource. Settlement still re-checks the balance.
    pub fn verification_cache(mut self, ttl: Duration) -> Self {
        self.cache_ttl = Some(ttl);
        self
    }

    /// Where settlements of unknown outcome are written down: a request whose settle
    /// call was sent but whose answer was lost, and which could not be resolved (a
    /// reusable token is never settled twice; a single-use one is settled once more to
    /// learn the outcome). The buyer gets a 402 with the receipt and no envelope to pay
    /// again with, that says not to pay again, with the
    /// record's id. Default: in memory only (a warning at [`Payments::prepare`]); give a
    /// file journal in production.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use nvm_runtime::{Payments, PendingSettlements};
    ///
    /// let payments = Payments::builder()
    ///     .api_key("sandbox:eyJ…")
    ///     .pending_settlements(PendingSettlements::file("pending-settlements.jsonl")?)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn pending_settlements(mut self, journal: PendingSettlements) -> Self {
        self.pending = Some(journal);
        self
    }

    /// What resolves pending settlements for you: given a record, it asks whatever knows
    /// (the backend, your books) whether its credits were burned, and answers the
    /// [`Resolution`], or `None` when it cannot tell yet (the record stays pending). It is
    /// consulted at [`Payments::prepare`], by [`Payments::resolve_pending`], and when a
    /// buyer retries a call whose settlement is still unknown; what it resolves is closed
    /// in the journal. Without one, the seller closes records
    /// ([`PendingSettlements::close`], or the `nvm-pending` command).
    ///
    /// ```
    /// use nvm_runtime::{Payments, PendingSettlement, Resolution};
    ///
    /// let payments = Payments::builder()
    ///     .api_key("sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.")
    ///     .settlement_resolver(|record: PendingSettlement| async move {
    ///         // Ask your books; `None` leaves the record pending.
    ///         (record.amount == "0").then_some(Resolution::NotBurned)
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = payments;
    /// ```
    ///
    /// A resolver with state of its own (a client of your books) is moved into the
    /// closure, cloned for each record:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use nvm_runtime::{Payments, PendingSettlement, Resolution};
    ///
    /// struct Books { billed: Vec<String> }
    ///
    /// impl Books {
    ///     async fn resolve(&self, record: &PendingSettlement) -> Option<Resolution> {
    ///         let id = record.agent_request_id.as_deref()?; // cannot tell: stays pending
    ///         Some(if self.billed.iter().any(|b| b == id) { Resolution::Burned } else { Resolution::NotBurned })
    ///     }
    /// }
    ///
    /// let books = Arc::new(Books { billed: vec!["req-9".to_owned()] });
    /// let payments = Payments::builder()
    ///     .api_key("sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.")
    ///     .settlement_resolver(move |record: PendingSettlement| {
    ///         let books = Arc::clone(&books);
    ///         async move { books.resolve(&record).await }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = payments;
    /// ```
    pub fn settlement_resolver<F, Fut>(mut self, resolver: F) -> Self
    where
        F: Fn(PendingSettlement) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<Resolution>> + Send + 'static,
    {
        self.resolver = Some(Arc::new(move |record| Box::pin(resolver(record))));
        self
    }

    /// Turns on deferred settlement (see [`DeferredSettlement`]) for the routes that opt
    /// in (`settle = "deferred"`, [`SettlePoint::Deferred`]), or for every route that
    /// names no settlement point ([`DeferredSettlement::everywhere`]). It needs a durable
    /// journal ([`PaymentsBuilder::pending_settlements`] with a file, or a `RedisStore`
    /// as the idempotency store): [`PaymentsBuilder::build`] refuses one in memory.
    /// Call [`Payments::drain`] at shutdown.
    ///
    /// ```
    /// use nvm_runtime::{DeferredSettlement, Payments, PendingSettlements};
    ///
    /// # let path = std::env::temp_dir().join(format!("nvm-doc-defer-{}.jsonl", std::process::id()));
    /// let payments = Payments::builder()
    ///     .api_key("sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.")
    ///     .pending_settlements(PendingSettlements::file(&path).unwrap())
    ///     .deferred_settlement(DeferredSettlement::new().max_exposure(20))
    ///     .build()
    ///     .unwrap();
    /// # drop(payments);
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    pub fn deferred_settlement(mut self, deferred: DeferredSettlement) -> Self {
        self.deferred = Some(deferred);
        self
    }

    /// Called when a deferred settlement burned nothing (declined, refused, or the
    /// facilitator unreachable after three tries): its answer was delivered unpaid, its
    /// record is closed as not burned, and its payer is served with synchronous settlement
    /// until [`Payments::resume_deferred`]. Given the record and the reason. Runs on the
    /// deferred-settlement thread: keep it short.
    ///
    /// ```
    /// let builder = nvm_runtime::Payments::builder().on_deferred_failure(|record, reason| {
    ///     eprintln!("unpaid: {} credits from {:?} ({reason})", record.amount, record.payer);
    /// });
    /// # let _ = builder;
    /// ```
    pub fn on_deferred_failure(
        mut self,
        hook: impl Fn(&PendingSettlement, &str) + Send + Sync + 'static,
    ) -> Self {
        self.on_deferred_failure = Some(Arc::new(hook));
        self
    }

    /// How long a buyer retrying a call whose settlement is still pending is told to
    /// wait (its `Retry-After`, default 30 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = nvm_runtime::Payments::builder().pending_retry_after(Duration::from_secs(5));
    /// # let _ = builder;
    /// ```
    pub fn pending_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// How paid calls with an `Idempotency-Key` are made safe to retry: the first runs,
    /// settles and is remembered; a retry with the same key gets the same response and
    /// receipt, and is not charged again. Default: [`Idempotency::in_memory`] (one
    /// instance); give several instances one shared store (a
    /// `RedisStore` with the `redis` feature).
    ///
    /// ```
    /// use nvm_runtime::{Idempotency, Payments};
    ///
    /// let payments = Payments::builder()
    ///     .api_key("sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.")
    ///     .idempotency(Idempotency::disabled())
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn idempotency(mut self, idempotency: Idempotency) -> Self {
        self.idempotency = Some(idempotency);
        self
    }

    /// Called when a settlement of unknown outcome was recorded (see
    /// [`PaymentsBuilder::pending_settlements`]), with the record: to alert, or to copy
    /// it to a place of your own.
    pub fn on_settlement_unknown(
        mut self,
        hook: impl Fn(&HttpRequest, &PendingSettlement) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.set_on_settlement_unknown(hook);
        self
    }

    /// Called when the settlement of a response that was already delivered failed (a
    /// route settled after its body: a stream cannot be taken back), with the credits
    /// asked for and the failed receipt (its `payer`, its `agentRequestId` in `other`,
    /// its `error_reason`): what is needed to reconcile with the buyer.
    pub fn on_settle_failed(
        mut self,
        hook: impl Fn(&HttpRequest, u64, &SettleResponse) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.set_on_settle_failed(hook);
        self
    }

    /// Called before each verification with the envelope about to be verified.
    pub fn before_verify(
        mut self,
        hook: impl Fn(&HttpRequest, &PaymentRequired) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.set_before_verify(hook);
        self
    }

    /// Called after each successful verification.
    pub fn after_verify(
        mut self,
        hook: impl Fn(&HttpRequest, &VerifyResponse) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.set_after_verify(hook);
        self
    }

    /// Called after each successful settlement with the credits burned and the receipt.
    pub fn after_settle(
        mut self,
        hook: impl Fn(&HttpRequest, u64, &SettleResponse) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.set_after_settle(hook);
        self
    }

    /// Called on every payment error; a returned response replaces the default one.
    pub fn on_payment_error(
        mut self,
        hook: impl Fn(&HttpRequest, &PaymentError) -> Option<HttpResponse> + Send + Sync + 'static,
    ) -> Self {
        self.hooks.set_on_payment_error(hook);
        self
    }

    /// Checks everything and builds the configuration.
    pub fn build(self) -> Result<Payments, ConfigError> {
        let Connection { api_key, environment, facilitator, helicone_url } = self.backend.connect()?;
        let gateway = Gateway::new(&helicone_url, &api_key, environment);
        let token_headers = self
            .token_headers
            .unwrap_or_else(|| vec![DEFAULT_TOKEN_HEADER.to_owned()])
            .into_iter()
            .map(|h| HeaderName::try_from(h.trim()).map_err(|_| ConfigProblem::InvalidHeaderName(h.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        if token_headers.is_empty() {
            return Err(ConfigProblem::InvalidHeaderName(String::new()).into());
        }
        let verify_cache = match self.cache_ttl {
            None => None,
            Some(ttl) if (Duration::from_secs(5)..=Duration::from_secs(30)).contains(&ttl) => {
                Some(VerifyCache::new(ttl))
            }
            Some(ttl) => return Err(ConfigProblem::CacheTtl(ttl).into()),
        };
        let idempotency = self.idempotency.unwrap_or_default();
        // A store shared by every instance keeps their one journal, unless one is set.
        let journal = self
            .pending
            .or_else(|| idempotency.shared_journal())
            .unwrap_or_else(PendingSettlements::in_memory);
        let deferred = match self.deferred {
            None => None,
            Some(_) if !journal.is_durable() => return Err(ConfigProblem::DeferredNeedsJournal.into()),
            Some(config) => Some(
                Deferrer::start(
                    config,
                    facilitator.clone(),
                    journal.clone(),
                    idempotency.clone(),
                    self.on_deferred_failure,
                )
                .map_err(|error| ConfigProblem::DeferredWorker(Arc::new(error)))?,
            ),
        };
        let seller = Seller {
            plans: PlanCatalog::new(environment.default_network()),
            facilitator,
            cache: verify_cache,
            well_formed: WellFormed::default(),
            token_headers: token_headers.iter().map(|h| h.as_str().to_owned()).collect(),
            deliver_on_settle_failure: self.deliver_on_settle_failure,
            pending: journal,
            resolver: self.resolver,
            retry_after: self.retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            idempotency,
            deferred,
        };
        Ok(Payments {
            inner: Arc::new(Inner {
                declared: Mutex::default(),
                api_key,
                environment,
                seller,
                token_headers,
                hooks: self.hooks,
                gateway,
            }),
        })
    }
}

/// A plan as the start-up report shows it.
fn plan_label(plan: &ValueSource) -> String {
    match plan {
        ValueSource::Id(id) => id.clone(),
        ValueSource::Env(var) => format!("env {var} (unset)"),
        _ => "(an expression)".to_owned(),
    }
}

/// A price as the start-up report shows it: `2`, `dynamic`.
fn price_label(credits: &serde_json::Value) -> String {
    match credits {
        serde_json::Value::String(price) => price.clone(),
        price => price.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.";

    #[test]
    fn prefix_wins_then_option_then_custom() {
        let p = Payments::builder()
            .api_key(format!("live:{KEY}"))
            .environment(Environment::Sandbox)
            .build()
            .unwrap();
        assert_eq!(p.environment(), Environment::Live);
        let p = Payments::builder()
            .api_key(format!("local:{KEY}"))
            .environment(Environment::Sandbox)
            .build()
            .unwrap();
        assert_eq!(p.environment(), Environment::Sandbox);
        let p = Payments::builder().api_key(format!("local:{KEY}")).build().unwrap();
        assert_eq!(p.environment(), Environment::Custom);
        assert_eq!(p.backend_url(), "http://localhost:3001");
        let p = Payments::builder()
            .api_key(format!("sandbox:{KEY}"))
            .backend_url("http://127.0.0.1:9/")
            .build()
            .unwrap();
        assert_eq!(p.backend_url(), "http://127.0.0.1:9");
    }

    #[test]
    fn refuses_bad_settings_with_what_to_write() {
        let err = Payments::builder().build().unwrap_err();
        assert!(err.to_string().contains("NVM_API_KEY"), "{err}");
        let err = Payments::builder()
            .api_key(format!("local:{KEY}"))
            .verification_cache(Duration::from_secs(60))
            .build();
        assert!(matches!(err, Err(ConfigError(ConfigProblem::CacheTtl(_)))));
        let err = Payments::builder().api_key(format!("local:{KEY}")).token_headers(["bad header"]).build();
        assert!(matches!(err, Err(ConfigError(ConfigProblem::InvalidHeaderName(_)))));
        let err = Payments::builder().api_key(format!("local:{KEY}")).backend_url("ftp://x").build();
        assert!(matches!(err, Err(ConfigError(ConfigProblem::InvalidBackendUrl(_)))));
    }
}
