//! Errors: configuration mistakes (fixed by the developer) and facilitator failures
//! (split into "the facilitator said no", which is 402 material, and "the facilitator
//! is unavailable", which is 500 material).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::store::StoreError;
use crate::wire::{BackendError, PaymentRequired, SettleResponse};

/// A configuration mistake, found at start-up (or by the first request of a route whose
/// configuration is read then). Its message says what to set instead; its
/// [`kind`](Self::kind) says which part of the configuration is at fault, and its
/// `source()` the error behind it, when there is one.
///
/// ```
/// use nvm_runtime::Payments;
/// use nvm_runtime::error::ConfigErrorKind;
///
/// let error = Payments::builder().api_key("sandbox:not-a-jwt").build().unwrap_err();
/// assert_eq!(error.kind(), ConfigErrorKind::Settings);
/// assert!(error.to_string().contains("copy it again from the Nevermined app"), "{error}");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct ConfigError(#[from] pub(crate) ConfigProblem);

/// Which part of the configuration a [`ConfigError`] is about, to branch on; the error's
/// message says what to set instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The settings of [`Payments`](crate::Payments) or a
    /// [`Subscriber`](crate::client::Subscriber): the API key (missing or malformed),
    /// the environment, the backend or observability gateway URL, the access-token
    /// header names, the verification cache's time-to-live.
    Settings,
    /// A paid route, handler or MCP tool: its `Cache-Control`, its route key, a plan or
    /// agent id that is empty or names an unset variable, routes or tools that match
    /// nothing, a speculative route priced by its body, a credits function that panicked.
    Route,
    /// A plan's metadata could not be fetched at start-up
    /// ([`Payments::prepare`](crate::Payments::prepare)): the plan id is wrong, or the
    /// backend is unreachable (see the `source()`).
    PlanUnavailable,
    /// The pending-settlement journal: it could not be opened, or deferred settlement
    /// was turned on without a durable one.
    Journal,
    /// Something the runtime starts could not be: the HTTP client, the
    /// deferred-settlement thread (see the `source()`).
    Runtime,
}

impl ConfigError {
    /// Which part of the configuration is at fault.
    pub fn kind(&self) -> ConfigErrorKind {
        use ConfigProblem as P;
        match &self.0 {
            P::MissingApiKey
            | P::MalformedApiKey(_)
            | P::UnknownEnvironment(_)
            | P::InvalidBackendUrl(_)
            | P::InvalidHeliconeUrl(_)
            | P::InvalidHeaderName(_)
            | P::CacheTtl(_) => ConfigErrorKind::Settings,
            P::CacheControl { .. }
            | P::MissingEnvVar { .. }
            | P::EmptyPlan { .. }
            | P::CreditsPanicked(_)
            | P::InvalidRouteKey { .. }
            | P::UnmatchedRoutes(_)
            | P::UnknownTools { .. }
            | P::SpeculativeBodyPrice(_) => ConfigErrorKind::Route,
            P::PlanUnavailable { .. } => ConfigErrorKind::PlanUnavailable,
            P::PendingJournal { .. } | P::DeferredNeedsJournal => ConfigErrorKind::Journal,
            P::DeferredWorker(_) | P::HttpClient(_) => ConfigErrorKind::Runtime,
        }
    }
}

/// What a [`ConfigError`] is. Each message says what to set instead. A new variant goes
/// in the test `every_error_says_each_cause_once` too.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ConfigProblem {
    /// No API key was given.
    #[error(
        "no Nevermined API key: set NVM_API_KEY to your key (`sandbox:eyJ…`), or call `Payments::builder().api_key(…)`"
    )]
    MissingApiKey,
    /// The API key is not `<prefix>:<JWT>`.
    #[error(
        "the Nevermined API key is malformed: {0}; copy it again from the Nevermined app (it looks like `sandbox:eyJ…`)"
    )]
    MalformedApiKey(String),
    /// `NVM_ENVIRONMENT` names no environment.
    #[error(
        "unknown Nevermined environment `{0}`: use sandbox, live, staging_sandbox, staging_live or custom"
    )]
    UnknownEnvironment(String),
    /// The backend URL is not an http(s) URL.
    #[error("the backend URL `{0}` is not an http:// or https:// URL")]
    InvalidBackendUrl(String),
    /// The observability gateway URL (`HELICONE_URL`, `.helicone_url(..)`) is not an
    /// http(s) URL.
    #[error(
        "the observability gateway URL `{0}` is not an http:// or https:// URL: set HELICONE_URL (or `.helicone_url(..)`) to one, e.g. `http://localhost:8585`"
    )]
    InvalidHeliconeUrl(String),
    /// A header name is not valid.
    #[error("`{0}` is not a valid HTTP header name for the access token")]
    InvalidHeaderName(String),
    /// The verification cache TTL is outside 5–30 s.
    #[error("the verification cache TTL must be between 5 and 30 seconds, got {0:?}")]
    CacheTtl(Duration),
    /// A route's `Cache-Control` for paid answers could let a shared cache serve them to
    /// callers who did not pay.
    #[error("the Cache-Control `{value}` of the route {route} is refused: {why}")]
    CacheControl {
        /// The route (`"GET /report"`).
        route: String,
        /// The value given.
        value: String,
        /// Why, and what to write instead.
        why: &'static str,
    },
    /// An `env("VAR")` plan or agent names a variable that is not set.
    #[error(
        "environment variable {var} is not set; it gives the {what} of {handler}: set it (export {var}=…) before starting"
    )]
    MissingEnvVar {
        /// The variable.
        var: String,
        /// `plan id` or `agent id`.
        what: &'static str,
        /// The handler that needs it.
        handler: String,
    },
    /// A plan expression yielded an empty id.
    #[error("the plan of {handler} is empty: `{expr}` yielded \"\"; make it return the plan id")]
    EmptyPlan {
        /// The expression's source text.
        expr: String,
        /// The handler.
        handler: String,
    },
    /// The credits function of a handler panicked.
    #[error("the credits function of {0} panicked; make it return a u64 for every request")]
    CreditsPanicked(String),
    /// A `PaymentMiddleware` route key is not `"METHOD /path"`.
    #[error(
        "invalid route key `{key}` ({why}): write the method, a space and the path as actix-web patterns it, e.g. \"POST /ask\" or \"GET /reports/{{id}}\""
    )]
    InvalidRouteKey {
        /// The key as written.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// `PaymentMiddleware` route keys that match no route the app serves: a typo, or a
    /// key written relative to a scope (keys are full paths, `/v1/models`, not `/models`).
    #[error(
        "these PaymentMiddleware routes match no route of the app, so they would protect nothing: {}; write each key as the full path the app serves (scope prefix included), e.g. \"GET /v1/models/{{id}}\"",
        .0.join(", ")
    )]
    UnmatchedRoutes(Vec<String>),
    /// `PaidTools` entries that name no tool of the router they wrap: a typo would leave
    /// the tool unpaid.
    #[error(
        "these PaidTools entries name no tool of the router, so they would charge for nothing: {}; the router's tools are: {}",
        .unknown.join(", "), .known.join(", ")
    )]
    #[cfg_attr(not(feature = "mcp"), allow(dead_code))] // built by `PaidTools::wrap` (feature `mcp`)
    UnknownTools {
        /// The names that match no tool.
        unknown: Vec<String>,
        /// The router's tools.
        known: Vec<String>,
    },
    /// A plan's metadata could not be fetched at start-up (`Payments::prepare`).
    #[error(
        "plan {plan_id} could not be prepared (check the plan id and that the backend ({backend}) is reachable, or skip `prepare()` to fetch plans on the first request)"
    )]
    PlanUnavailable {
        /// The plan.
        plan_id: String,
        /// The backend's answer, or why there was none.
        #[source]
        source: Box<FacilitatorError>,
        /// The backend URL.
        backend: String,
    },
    /// The pending-settlement journal named by `NVM_PENDING_SETTLEMENTS` could not be
    /// opened.
    #[error(
        "the pending-settlement journal {path} (NVM_PENDING_SETTLEMENTS) could not be opened (set it to a writable file path)"
    )]
    PendingJournal {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A `speculative = true` route whose credits turned out to be priced by the body
    /// (the handler's extractors take the body while the payment is verified).
    #[error(
        "the #[paid] handler `{0}` is speculative and priced by its body: remove `speculative = true`, or price it without the body"
    )]
    SpeculativeBodyPrice(String),
    /// Deferred settlement was turned on with a journal in memory: a crash would lose
    /// the settlements not sent yet.
    #[error(
        "deferred settlement needs a durable journal: add `.pending_settlements(PendingSettlements::file(\"pending-settlements.jsonl\")?)`, or use a `RedisStore` as the idempotency store"
    )]
    DeferredNeedsJournal,
    /// The deferred-settlement thread could not be started.
    #[error("the deferred-settlement thread could not be started")]
    DeferredWorker(#[source] Arc<std::io::Error>),
    /// The HTTP client could not be built (no TLS backend, for instance). The source is
    /// a [`reqwest::Error`] of the re-exported
    /// [`nvm_runtime::client::reqwest`](crate::client::reqwest).
    #[error("the HTTP client could not be built")]
    HttpClient(#[source] Arc<reqwest::Error>),
}

/// A facilitator call that did not give an answer to act on: the facilitator refused
/// it (the payment is at fault: a 402), or it is unavailable (unreachable, slow, broken
/// or answering garbage: a 500). Ask which with [`is_unavailable`](Self::is_unavailable);
/// the backend's [`code`](Self::code), [`status`](Self::status) and
/// [`message`](Self::message) say more, and the error's `source()` chain says why it is
/// unavailable.
///
/// ```
/// # async fn demo(subscriber: nvm_runtime::client::Subscriber, accepted: nvm_runtime::wire::Accepted) {
/// use nvm_runtime::client::{ClientError, TokenOptions};
///
/// match subscriber.mint(&accepted, &TokenOptions::default()).await {
///     Ok(token) => println!("minted {token}"),
///     Err(ClientError::Mint { error, .. }) if error.is_unavailable() => println!("try again later: {error}"),
///     Err(ClientError::Mint { error, .. }) => {
///         println!("refused ({:?}, HTTP {:?}): {:?}", error.code(), error.status(), error.message())
///     }
///     Err(other) => println!("{other}"),
/// }
/// # }
/// ```
#[derive(Clone, thiserror::Error)]
#[error(transparent)]
pub struct FacilitatorError(pub(crate) Failure);

/// What a [`FacilitatorError`] is.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Failure {
    /// The facilitator refused the call (4xx with its error envelope): the payment is at
    /// fault, answer 402.
    #[error("the facilitator refused the call (HTTP {status}, {}): {}", .error.code, .error.message)]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The backend's error envelope.
        error: BackendError,
    },
    /// The facilitator is unreachable, slow, broken or answered garbage: answer 500.
    #[error("the facilitator is unavailable")]
    Unavailable(#[source] Unavailable),
}

impl fmt::Debug for FacilitatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FacilitatorError {
    /// The facilitator refused the call with its error envelope.
    pub(crate) fn refused(status: u16, error: BackendError) -> Self {
        FacilitatorError(Failure::Refused { status, error })
    }

    /// The facilitator is unavailable.
    pub(crate) fn unavailable(why: Unavailable) -> Self {
        FacilitatorError(Failure::Unavailable(why))
    }

    /// Why the facilitator is unavailable, when it is.
    pub(crate) fn why_unavailable(&self) -> Option<&Unavailable> {
        match &self.0 {
            Failure::Unavailable(why) => Some(why),
            Failure::Refused { .. } => None,
        }
    }

    /// The backend error code, when the facilitator refused the call.
    ///
    /// ```
    /// # fn demo(error: &nvm_runtime::error::FacilitatorError) {
    /// if error.code() == Some("BCK.X402.0059") {
    ///     println!("the single-use token was spent: mint a new one");
    /// }
    /// # }
    /// ```
    pub fn code(&self) -> Option<&str> {
        match &self.0 {
            Failure::Refused { error, .. } => Some(&error.code),
            Failure::Unavailable(_) => None,
        }
    }

    /// Whether this failure is the facilitator's (or the network's), not the payment's.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.0, Failure::Unavailable(_))
    }

    /// The HTTP status the backend answered, if it answered: the refusal's 4xx, a 401 or
    /// 403 for a refused API key, a 5xx, or the status of an answer that was not the
    /// expected JSON. `None` when no answer came (a timeout, a failed or broken
    /// connection).
    ///
    /// ```
    /// # fn demo(error: &nvm_runtime::error::FacilitatorError) {
    /// if let Some(status @ (401 | 403)) = error.status() {
    ///     println!("HTTP {status}: check NVM_API_KEY and NVM_ENVIRONMENT");
    /// }
    /// # }
    /// ```
    pub fn status(&self) -> Option<u16> {
        match &self.0 {
            Failure::Refused { status, .. } => Some(*status),
            Failure::Unavailable(why) => match why {
                Unavailable::Status { status, .. }
                | Unavailable::Garbage { status, .. }
                | Unavailable::Unauthorized { status, .. } => Some(*status),
                Unavailable::Timeout(_) | Unavailable::Connect(_) | Unavailable::Interrupted(_) => None,
            },
        }
    }

    /// The backend's message when it refused the call (the payment, or the API key).
    ///
    /// ```
    /// # fn demo(error: &nvm_runtime::error::FacilitatorError) {
    /// if let Some(message) = error.message() {
    ///     println!("the backend said: {message}");
    /// }
    /// # }
    /// ```
    pub fn message(&self) -> Option<&str> {
        match &self.0 {
            Failure::Refused { error, .. } => Some(&error.message),
            Failure::Unavailable(Unavailable::Unauthorized { message, .. }) => Some(message),
            Failure::Unavailable(_) => None,
        }
    }

    /// Whether the call may have been carried out although it failed: the request may
    /// have reached the facilitator and only its answer was lost (a timeout, a broken
    /// connection after the request was written, a 5xx, an unreadable body). False when
    /// the facilitator answered a refusal, or the request never left (connection
    /// refused).
    ///
    /// ```
    /// # fn demo(error: &nvm_runtime::error::FacilitatorError) {
    /// if error.may_have_been_carried_out() {
    ///     println!("the outcome is unknown: do not pay again before checking");
    /// }
    /// # }
    /// ```
    pub fn may_have_been_carried_out(&self) -> bool {
        match &self.0 {
            Failure::Refused { .. } => false,
            Failure::Unavailable(why) => match why {
                Unavailable::Unauthorized { .. } => false,
                // Refused before anything was sent: nothing can have happened.
                Unavailable::Connect(error) => !error.is_connect(),
                Unavailable::Timeout(_)
                | Unavailable::Interrupted(_)
                | Unavailable::Status { .. }
                | Unavailable::Garbage { .. } => true,
            },
        }
    }
}

/// Why the facilitator is unavailable.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Unavailable {
    /// No answer within the configured bound.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be sent: no connection, or it broke while sending. The
    /// source is a [`reqwest::Error`] of the re-exported
    /// [`nvm_runtime::client::reqwest`](crate::client::reqwest).
    #[error("connection failed")]
    Connect(#[source] Arc<reqwest::Error>),
    /// The request was sent but its answer could not be read to the end. The source is
    /// a [`reqwest::Error`] of the re-exported
    /// [`nvm_runtime::client::reqwest`](crate::client::reqwest).
    #[error("the answer was interrupted")]
    Interrupted(#[source] Arc<reqwest::Error>),
    /// The answer was a server error.
    #[error("it answered HTTP {status}: {snippet}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the body, for the log.
        snippet: String,
    },
    /// The answer was not the expected JSON.
    #[error("it answered HTTP {status} with a body that is not the expected JSON ({reason}): {snippet}")]
    Garbage {
        /// The HTTP status.
        status: u16,
        /// What was wrong with it.
        reason: String,
        /// The start of the body, for the log.
        snippet: String,
    },
    /// The facilitator refused our API key: the server is misconfigured.
    #[error("it refused the API key (HTTP {status}): {message}; check NVM_API_KEY and NVM_ENVIRONMENT")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The backend's message.
        message: String,
    },
}

/// Why a paid request was not served as paid; given to the
/// [`on_payment_error`](crate::PaymentsBuilder::on_payment_error) hook. Its message
/// says what the caller should do; its [`kind`](Self::kind) says what went wrong, its
/// [`status`](Self::status) the HTTP status it answers with, and its `source()` the
/// error behind it, when there is one.
///
/// ```
/// use actix_web::HttpResponse;
/// use nvm_runtime::Payments;
/// use nvm_runtime::error::PaymentErrorKind;
///
/// let builder = Payments::builder().on_payment_error(|_req, error| match error.kind() {
///     PaymentErrorKind::MissingToken => Some(HttpResponse::PaymentRequired().body("pay first")),
///     PaymentErrorKind::SettlementUnknown => Some(HttpResponse::PaymentRequired().body(format!(
///         "do not pay again: quote {} to the seller",
///         error.pending_id().unwrap_or_default()
///     ))),
///     _ => None,
/// });
/// # drop(builder);
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct PaymentError(#[from] pub(crate) PaymentProblem);

/// What went wrong with a paid request, as a [`PaymentError`] says; its
/// [`status`](PaymentError::status) is the HTTP status it answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PaymentErrorKind {
    /// No access token came with the request (402).
    MissingToken,
    /// The token is malformed: too long, not ASCII, not base64 JSON (402).
    MalformedToken,
    /// The facilitator found the token invalid (402); the message is its
    /// `invalidReason` (`invalid_token`, `expired_token`, `insufficient_balance`, …).
    Rejected,
    /// The facilitator could not be asked (500), or refused the call (402).
    Facilitator,
    /// The handler succeeded but the settlement failed (402 unless configured to
    /// deliver anyway).
    SettlementFailed,
    /// The settle call's answer was lost (402 without an envelope to pay): the credits
    /// may have been burned; the request is recorded as a pending settlement
    /// ([`pending_id`](PaymentError::pending_id)) and the buyer must not pay again.
    SettlementUnknown,
    /// A retry of a call whose settlement's outcome is still unknown (409, with
    /// `Retry-After`): nothing was charged and nothing is to be paid.
    SettlementPending,
    /// The route is misconfigured (500).
    Config,
    /// A body-priced route could not read the request's body (400).
    BodyUnreadable,
    /// A body-priced route got a body longer than it reads (413).
    BodyTooLarge,
    /// A request with an `Idempotency-Key` could not be run or replayed: the key is not
    /// usable (400), its first request is still running or its response was not kept
    /// (409), its body is too long (413), the key was used for another request (422),
    /// or the store of idempotency records is unavailable (503).
    Idempotency,
}

impl PaymentError {
    /// What went wrong.
    pub fn kind(&self) -> PaymentErrorKind {
        use PaymentProblem as P;
        match &self.0 {
            P::MissingToken { .. } => PaymentErrorKind::MissingToken,
            P::MalformedToken(_) => PaymentErrorKind::MalformedToken,
            P::Rejected { .. } => PaymentErrorKind::Rejected,
            P::Facilitator(_) => PaymentErrorKind::Facilitator,
            P::SettlementFailed { .. } => PaymentErrorKind::SettlementFailed,
            P::SettlementUnknown { .. } => PaymentErrorKind::SettlementUnknown,
            P::SettlementPending { .. } => PaymentErrorKind::SettlementPending,
            P::Config(_) => PaymentErrorKind::Config,
            P::BodyUnreadable(_) => PaymentErrorKind::BodyUnreadable,
            P::BodyTooLarge { .. } => PaymentErrorKind::BodyTooLarge,
            P::Idempotency(_) => PaymentErrorKind::Idempotency,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        use PaymentProblem as P;
        match &self.0 {
            P::Facilitator(error) if error.is_unavailable() => 500,
            P::Config(_) => 500,
            P::BodyUnreadable(_) => 400,
            P::SettlementUnknown { .. } => 402,
            P::SettlementPending { .. } => 409,
            P::BodyTooLarge { .. } => 413,
            P::Idempotency(error) => error.status(),
            _ => 402,
        }
    }

    /// The id of the pending settlement the request is recorded as, for an unknown
    /// settlement outcome and a retry of it (the
    /// [`PendingSettlement::id`](crate::PendingSettlement::id) of the seller's journal):
    /// the reference the buyer quotes to the seller.
    pub fn pending_id(&self) -> Option<&str> {
        match &self.0 {
            PaymentProblem::SettlementUnknown { pending_id, .. }
            | PaymentProblem::SettlementPending { pending_id, .. } => Some(pending_id),
            _ => None,
        }
    }
}

/// What a [`PaymentError`] is. A new variant goes in the test
/// `every_error_says_each_cause_once` too.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PaymentProblem {
    /// No access token came with the request (402).
    #[error("payment required: send an x402 access token in the `{header}` header")]
    MissingToken {
        /// The header the token is expected in.
        header: String,
    },
    /// The token is malformed: too long, not ASCII, not base64 JSON (402).
    #[error("invalid_token: {0}")]
    MalformedToken(String),
    /// The facilitator found the token invalid (402); the reason is `invalidReason`.
    #[error("{reason}")]
    Rejected {
        /// `invalid_token`, `expired_token`, `insufficient_balance`, … (an open string).
        reason: String,
    },
    /// The facilitator could not be asked (500).
    #[error(transparent)]
    Facilitator(FacilitatorError),
    /// The handler succeeded but the settlement failed (402 unless configured to
    /// deliver anyway).
    #[error("settlement failed{}", own_reason(.reason, .source.is_some()))]
    SettlementFailed {
        /// `errorReason`, the backend's error code, or why the call failed.
        reason: String,
        /// The failed call, when the facilitator did not answer `success: false`.
        #[source]
        source: Option<Box<FacilitatorError>>,
    },
    /// The handler succeeded and the settle call was sent, but its answer was lost and
    /// could not be resolved (402 without an envelope to pay): the credits may have been
    /// burned. The request is
    /// recorded as a pending settlement for the seller to reconcile; the buyer must not
    /// pay again.
    #[error(
        "the settlement's outcome is unknown, recorded as pending settlement {pending_id}: do not pay again, the seller reconciles it; its answer was lost"
    )]
    SettlementUnknown {
        /// The id of the record written to the seller's journal
        /// ([`PendingSettlement::id`](crate::PendingSettlement::id)).
        pending_id: String,
        /// The failed call.
        #[source]
        source: Box<FacilitatorError>,
    },
    /// A retry of a call whose settlement's outcome is still unknown (409, with
    /// `Retry-After`): nothing was charged for this retry and nothing is to be paid; the
    /// call's answer is delivered to a retry once the seller finds the credits burned
    /// (or the call runs afresh, paid anew, if they were not).
    #[error(
        "this call's settlement is still pending (record {pending_id}): do not pay again; retry with the same Idempotency-Key in {retry_after} s"
    )]
    SettlementPending {
        /// The id of the record in the seller's journal.
        pending_id: String,
        /// The seconds to wait before retrying.
        retry_after: u64,
    },
    /// The route is misconfigured (500).
    #[error(transparent)]
    Config(ConfigError),
    /// A body-priced route could not read the request's body (400).
    #[error("the request body could not be read: {0}")]
    BodyUnreadable(String),
    /// A body-priced route got a body longer than it reads (413).
    #[error("this route is priced by its body and reads at most {limit} bytes of it; send a smaller body")]
    BodyTooLarge {
        /// The most bytes the route reads.
        limit: usize,
    },
    /// A request with an `Idempotency-Key` could not be run or replayed (400, 409,
    /// 413, 422, 503: see [`IdempotencyError`]).
    #[error(transparent)]
    Idempotency(IdempotencyError),
}

/// Why a paid request with an `Idempotency-Key` was neither run nor replayed
/// ([`PaymentErrorKind::Idempotency`]).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum IdempotencyError {
    /// The header is not a usable key (400).
    #[error("{0}")]
    InvalidKey(String),
    /// The first request with this key is still running (409): retry after it ends.
    #[error(
        "a request with this Idempotency-Key is still running: retry after it ends to get its response (you will not be charged twice)"
    )]
    InFlight,
    /// The key was used for another request (other method, path, query or body) (422).
    #[error(
        "this Idempotency-Key was used for a different request (method, path, query or body): use a new key for a new request"
    )]
    KeyReused,
    /// The first request with this key was served and charged, but its response was too
    /// long (or streamed and cut) to keep for replay (409, with its receipt).
    #[error(
        "the request with this Idempotency-Key was served and charged once, but its response was not kept for replay (too long, or a stream that was cut): it is not run or charged again; use a new key to buy it again"
    )]
    NotReplayable,
    /// A request with a key has a body longer than is read to fingerprint it (413).
    #[error(
        "a request with an Idempotency-Key may have a body of at most {limit} bytes (Idempotency::max_request_body); send a smaller body or no key"
    )]
    BodyTooLarge {
        /// The most bytes read.
        limit: usize,
    },
    /// The store of idempotency records could not be reached (503): nothing ran, nothing
    /// was charged; retry later.
    #[error("paid requests are paused (nothing was charged, retry later): the idempotency store failed")]
    StoreUnavailable(#[source] Arc<StoreError>),
}

impl IdempotencyError {
    /// The HTTP status this error answers with.
    pub(crate) fn status(&self) -> u16 {
        match self {
            IdempotencyError::InvalidKey(_) => 400,
            IdempotencyError::InFlight | IdempotencyError::NotReplayable => 409,
            IdempotencyError::BodyTooLarge { .. } => 413,
            IdempotencyError::KeyReused => 422,
            IdempotencyError::StoreUnavailable(_) => 503,
        }
    }
}

/// Why a request is not served as paid, as a value the web layer renders.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub(crate) enum Refusal {
    /// 402: the payment is missing or at fault; the envelope says what to pay, and a
    /// failed settlement's receipt goes with it.
    PaymentRequired {
        /// The envelope to advertise (its `error` already set).
        envelope: Box<PaymentRequired>,
        /// Why.
        error: PaymentError,
        /// The receipt of a failed settlement.
        receipt: Option<Box<SettleResponse>>,
    },
    /// 402 with the receipt and **without** a `payment-required` envelope (nothing to
    /// pay again with): the settlement's outcome is unknown and recorded; the content is
    /// withheld and the buyer is told not to pay again ([`PaymentProblem::SettlementUnknown`]).
    OutcomeUnknown {
        /// Why, with the record.
        error: PaymentError,
        /// The receipt: `success: false`, `errorReason: "settlement_outcome_unknown"`,
        /// and the record's id as `pendingSettlementId`.
        receipt: Box<SettleResponse>,
    },
    /// 409 with `Retry-After` and **without** an envelope: a retry of a call whose
    /// settlement is still pending ([`PaymentProblem::SettlementPending`]).
    StillPending(PaymentError),
    /// Not a payment matter: the facilitator could not be asked or the route is
    /// misconfigured (500), or a body-priced request's body is unreadable (400) or too
    /// long (413).
    Failed(PaymentError),
}

impl Refusal {
    /// The 402 of `error` for `envelope`.
    pub(crate) fn payment_required(mut envelope: PaymentRequired, error: PaymentError) -> Self {
        if !matches!(error.0, PaymentProblem::MissingToken { .. }) {
            envelope.error = Some(chain(&error));
        }
        Refusal::PaymentRequired { envelope: Box::new(envelope), error, receipt: None }
    }

    /// The same refusal, carrying a failed settlement's receipt.
    pub(crate) fn with_receipt(self, receipt: SettleResponse) -> Self {
        match self {
            Refusal::PaymentRequired { envelope, error, .. } => {
                Refusal::PaymentRequired { envelope, error, receipt: Some(Box::new(receipt)) }
            }
            failed => failed,
        }
    }

    /// The error behind the refusal.
    pub(crate) fn error(&self) -> &PaymentError {
        match self {
            Refusal::PaymentRequired { error, .. }
            | Refusal::OutcomeUnknown { error, .. }
            | Refusal::StillPending(error)
            | Refusal::Failed(error) => error,
        }
    }
}

/// `": reason"`, unless the cause (the error's source, printed after it) already says it.
fn own_reason(reason: &str, has_source: bool) -> String {
    if has_source { String::new() } else { format!(": {reason}") }
}

/// An error and its causes, `"a: b: c"`: how the crate's messages (answers and log
/// lines) show an error, each level's `Display` saying its own part once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Report<'a>(pub(crate) &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&chain(self.0))
    }
}

/// An error and its causes, `"a: b: c"`, for messages that name the root cause.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use proptest::prelude::*;

    use super::*;
    use crate::client::ClientError;
    use crate::store::StoreError;
    use crate::wire::codec::{MAX_HEADER_LEN, Malformed};

    /// The texts of `error`'s chain, outermost first.
    fn levels(error: &dyn std::error::Error) -> Vec<String> {
        let mut levels = vec![error.to_string()];
        let mut source = error.source();
        while let Some(cause) = source {
            levels.push(cause.to_string());
            source = cause.source();
        }
        levels
    }

    /// Fails when a level's text repeats a deeper level's: each `Display` says its own part.
    fn says_each_cause_once(error: &dyn std::error::Error) -> Result<(), TestCaseError> {
        let levels = levels(error);
        for (i, outer) in levels.iter().enumerate() {
            for inner in &levels[i + 1..] {
                prop_assert!(
                    inner.trim().is_empty() || !outer.contains(inner.as_str()),
                    "`{outer}` repeats its cause `{inner}` (chain: {levels:?})"
                );
            }
        }
        Ok(())
    }

    /// A reqwest error of each kind a facilitator call gives: refused connection.
    fn reqwest_error() -> Arc<reqwest::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let sent = runtime.block_on(reqwest::Client::new().get("http://127.0.0.1:9/").send());
        Arc::new(sent.expect_err("nothing listens on port 9"))
    }

    /// Every facilitator failure, with `text` in its free fields.
    fn facilitator_errors(text: &str, reqwest: &Arc<reqwest::Error>) -> Vec<FacilitatorError> {
        let backend = BackendError {
            code: "BCK.X402.0059".to_owned(),
            message: text.to_owned(),
            http_status: Some(400),
            hint: None,
            details: None,
        };
        let unavailable = [
            Unavailable::Timeout(Duration::from_millis(300)),
            Unavailable::Connect(Arc::clone(reqwest)),
            Unavailable::Interrupted(Arc::clone(reqwest)),
            Unavailable::Status { status: 502, snippet: text.to_owned() },
            Unavailable::Garbage {
                status: 200,
                reason: "missing field".to_owned(),
                snippet: text.to_owned(),
            },
            Unavailable::Unauthorized { status: 401, message: text.to_owned() },
        ];
        std::iter::once(FacilitatorError::refused(400, backend))
            .chain(unavailable.into_iter().map(FacilitatorError::unavailable))
            .collect()
    }

    /// One of every [`ConfigProblem`], with `text` in its free fields; `facilitator`
    /// is the cause of the one that has a facilitator failure as its cause.
    fn config_problems(
        text: &str,
        facilitator: &FacilitatorError,
        reqwest: &Arc<reqwest::Error>,
    ) -> Vec<ConfigProblem> {
        let io = || Arc::new(std::io::Error::other(text.to_owned()));
        vec![
            ConfigProblem::MissingApiKey,
            ConfigProblem::MalformedApiKey(text.to_owned()),
            ConfigProblem::UnknownEnvironment(text.to_owned()),
            ConfigProblem::InvalidBackendUrl(text.to_owned()),
            ConfigProblem::InvalidHeliconeUrl(text.to_owned()),
            ConfigProblem::InvalidHeaderName(text.to_owned()),
            ConfigProblem::CacheTtl(Duration::from_secs(60)),
            ConfigProblem::CacheControl {
                route: "GET /report".to_owned(),
                value: text.to_owned(),
                why: "it is public",
            },
            ConfigProblem::MissingEnvVar {
                var: "PLAN".to_owned(),
                what: "plan id",
                handler: text.to_owned(),
            },
            ConfigProblem::EmptyPlan { expr: text.to_owned(), handler: "ask".to_owned() },
            ConfigProblem::CreditsPanicked(text.to_owned()),
            ConfigProblem::InvalidRouteKey { key: text.to_owned(), why: "no space".to_owned() },
            ConfigProblem::UnmatchedRoutes(vec![text.to_owned(), "GET /b".to_owned()]),
            ConfigProblem::UnknownTools { unknown: vec![text.to_owned()], known: vec!["search".to_owned()] },
            ConfigProblem::PlanUnavailable {
                plan_id: "7".to_owned(),
                source: Box::new(facilitator.clone()),
                backend: "http://127.0.0.1:1".to_owned(),
            },
            ConfigProblem::PendingJournal { path: "/var/lib/seller/pending.jsonl".to_owned(), source: io() },
            ConfigProblem::SpeculativeBodyPrice(text.to_owned()),
            ConfigProblem::DeferredNeedsJournal,
            ConfigProblem::DeferredWorker(io()),
            ConfigProblem::HttpClient(Arc::clone(reqwest)),
        ]
    }

    /// One of every [`IdempotencyError`], with `text` in its free fields.
    fn idempotency_errors(text: &str) -> Vec<IdempotencyError> {
        let store = StoreError::new("redis at 127.0.0.1:6379", std::io::Error::other(text.to_owned()));
        vec![
            IdempotencyError::InvalidKey(text.to_owned()),
            IdempotencyError::InFlight,
            IdempotencyError::KeyReused,
            IdempotencyError::NotReplayable,
            IdempotencyError::BodyTooLarge { limit: 1024 },
            IdempotencyError::StoreUnavailable(Arc::new(store)),
        ]
    }

    /// One of every [`PaymentProblem`] (each wrapped error, and each cause, of every
    /// kind), with `text` in its free fields.
    fn payment_problems(text: &str, reqwest: &Arc<reqwest::Error>) -> Vec<PaymentProblem> {
        let mut all = vec![
            PaymentProblem::MissingToken { header: "payment-signature".to_owned() },
            PaymentProblem::MalformedToken(text.to_owned()),
            PaymentProblem::Rejected { reason: text.to_owned() },
            PaymentProblem::SettlementFailed { reason: text.to_owned(), source: None },
            PaymentProblem::SettlementPending { pending_id: "p-1".to_owned(), retry_after: 2 },
            PaymentProblem::BodyUnreadable(text.to_owned()),
            PaymentProblem::BodyTooLarge { limit: 1024 },
        ];
        for facilitator in facilitator_errors(text, reqwest) {
            let boxed = Box::new(facilitator.clone());
            all.push(PaymentProblem::Facilitator(facilitator.clone()));
            all.push(PaymentProblem::SettlementFailed {
                reason: format!("settlement_unavailable: {}", chain(&facilitator)),
                source: Some(boxed.clone()),
            });
            all.push(PaymentProblem::SettlementUnknown { pending_id: "p-1".to_owned(), source: boxed });
        }
        let facilitator = &facilitator_errors(text, reqwest)[1];
        all.extend(
            config_problems(text, facilitator, reqwest).into_iter().map(|p| PaymentProblem::Config(p.into())),
        );
        all.extend(idempotency_errors(text).into_iter().map(PaymentProblem::Idempotency));
        all
    }

    /// Every error of the crate, each variant of each, wrapped every way it is.
    fn errors(text: &str) -> Vec<Box<dyn std::error::Error>> {
        let reqwest = reqwest_error();
        let mut all: Vec<Box<dyn std::error::Error>> = Vec::new();
        for facilitator in facilitator_errors(text, &reqwest) {
            for problem in config_problems(text, &facilitator, &reqwest) {
                all.push(Box::new(ConfigError::from(problem)));
            }
            all.push(Box::new(ClientError::Mint {
                plan_id: "7".to_owned(),
                error: Box::new(facilitator.clone()),
            }));
            all.push(Box::new(facilitator));
        }
        for problem in payment_problems(text, &reqwest) {
            all.push(Box::new(PaymentError::from(problem)));
        }
        all.push(Box::new(StoreError::new("redis", std::io::Error::other(text.to_owned()))));
        let malformed = [
            Malformed::TooLong(MAX_HEADER_LEN + 1),
            Malformed::Empty,
            Malformed::NotBase64,
            Malformed::NotJson(text.to_owned()),
        ];
        for malformed in malformed {
            all.push(Box::new(ClientError::Envelope(malformed.into())));
        }
        all
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Rendered as `{:#}` renders a chain (each level, then its causes), no cause's
        /// text appears twice, whatever the texts the facilitator and the store give.
        #[test]
        fn every_error_says_each_cause_once(text in "[a-z]{3,12}( [a-z]{2,8}){0,3}") {
            for error in errors(&text) {
                says_each_cause_once(error.as_ref())?;
                let report = Report(error.as_ref()).to_string();
                prop_assert!(report.contains(&error.to_string()), "{report}");
            }
        }
    }

    #[test]
    fn the_report_names_the_root_cause_once() {
        let store = StoreError::new("redis", std::io::Error::other("connection refused"));
        assert_eq!(Report(&store).to_string(), "the store (redis) is unavailable: connection refused");
        let error = PaymentError::from(PaymentProblem::Idempotency(IdempotencyError::StoreUnavailable(
            Arc::new(store),
        )));
        let report = Report(&error).to_string();
        assert_eq!(report.matches("connection refused").count(), 1, "{report}");
        assert!(report.starts_with("paid requests are paused"), "{report}");
        assert!(error.source().is_some());
        assert_eq!((error.kind(), error.status()), (PaymentErrorKind::Idempotency, 503));
    }

    /// Each kind says what the configuration is at fault in; each error answers with its
    /// status, and the pending-settlement ones name their record.
    #[test]
    fn kinds_statuses_and_pending_ids() {
        let reqwest = reqwest_error();
        let facilitator = facilitator_errors("x", &reqwest).remove(0);
        let kinds: Vec<_> = config_problems("x", &facilitator, &reqwest)
            .into_iter()
            .map(|p| ConfigError::from(p).kind())
            .collect();
        use ConfigErrorKind::*;
        assert_eq!(kinds[..7], [Settings; 7]);
        assert_eq!(kinds[7..14], [Route; 7]);
        assert_eq!(kinds[14..], [PlanUnavailable, Journal, Route, Journal, Runtime, Runtime]);

        let answers: Vec<_> = payment_problems("x", &reqwest)
            .into_iter()
            .take(7)
            .map(|p| {
                let error = PaymentError::from(p);
                (error.kind(), error.status(), error.pending_id().map(str::to_owned))
            })
            .collect();
        assert_eq!(
            answers,
            [
                (PaymentErrorKind::MissingToken, 402, None),
                (PaymentErrorKind::MalformedToken, 402, None),
                (PaymentErrorKind::Rejected, 402, None),
                (PaymentErrorKind::SettlementFailed, 402, None),
                (PaymentErrorKind::SettlementPending, 409, Some("p-1".to_owned())),
                (PaymentErrorKind::BodyUnreadable, 400, None),
                (PaymentErrorKind::BodyTooLarge, 413, None),
            ]
        );
        let unknown = PaymentError::from(PaymentProblem::SettlementUnknown {
            pending_id: "p-2".to_owned(),
            source: Box::new(facilitator.clone()),
        });
        assert_eq!(
            (unknown.kind(), unknown.status(), unknown.pending_id()),
            (PaymentErrorKind::SettlementUnknown, 402, Some("p-2"))
        );
        let refused = PaymentError::from(PaymentProblem::Facilitator(facilitator));
        assert_eq!((refused.kind(), refused.status()), (PaymentErrorKind::Facilitator, 402));
        let timeout = FacilitatorError::unavailable(Unavailable::Timeout(Duration::from_secs(1)));
        assert_eq!(PaymentError::from(PaymentProblem::Facilitator(timeout)).status(), 500);
        let config = PaymentError::from(PaymentProblem::Config(ConfigProblem::DeferredNeedsJournal.into()));
        assert_eq!((config.kind(), config.status()), (PaymentErrorKind::Config, 500));
        let statuses: Vec<_> = idempotency_errors("x")
            .into_iter()
            .map(|e| PaymentError::from(PaymentProblem::Idempotency(e)).status())
            .collect();
        assert_eq!(statuses, [400, 409, 422, 409, 413, 503]);
    }
}
