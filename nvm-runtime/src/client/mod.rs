//! The buyer's side (the [`wire`](crate::wire) docs, §5–6): mint access tokens with the subscriber's key, and
//! an HTTP client that pays a 402 by itself (decode → mint → retry → receipt).

#[cfg(feature = "mcp")]
pub mod mcp;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::wire::AccessTokenExt as _;
use crate::wire::codec::DecodeError;
use std::time::Duration;

use crate::backend::{ApiKey, BackendSettings, Connection, Environment, Facilitator};
use crate::error::ConfigError;
use crate::error::FacilitatorError;
use crate::wire::AccessToken;
use crate::wire::{Accepted, PaymentRequired};
use crate::wire::{
    CODE_SPENT, DelegationConfig, PermissionsRequest, ResourceBinding, SETTLEMENT_PENDING,
    SETTLEMENT_UNKNOWN, SettleResponse,
};
use crate::wire::{
    IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE,
};

/// The `reqwest` this crate is built with (0.12), re-exported so that your requests,
/// responses and errors are the very types [`PayingClient`] takes and returns, whatever
/// `reqwest` your own crate depends on (two major versions are two different crates to
/// the compiler: a `reqwest` 0.13 `RequestBuilder` is not accepted here). Name its types
/// through this path, or build requests with [`PayingClient::http`]:
///
/// ```
/// use nvm_runtime::client::reqwest::{self, header::CONTENT_TYPE};
///
/// let http = reqwest::Client::new();
/// let request = http
///     .post("http://127.0.0.1:3000/ask")
///     .header(CONTENT_TYPE, "application/json")
///     .body(r#"{"query":"hi"}"#)
///     .build()
///     .unwrap();
/// assert_eq!(request.headers()[CONTENT_TYPE], "application/json");
/// ```
pub use reqwest;

/// Options of a token the [`Subscriber`] mints.
///
/// ```
/// let mut options = nvm_runtime::client::TokenOptions::default();
/// options.token_version = Some(3);
/// options.resource = Some("/ask".to_owned());
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenOptions {
    /// `2` (reusable, the default) or `3` (single-use, bound to `resource`).
    pub token_version: Option<u8>,
    /// The card delegation to pay with (`nvm:card-delegation` plans).
    pub delegation_id: Option<String>,
    /// The resource URL (path) a single-use token is bound to.
    pub resource: Option<String>,
}

/// What went wrong while paying, by step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request could not be sent or its answer read. The error is a
    /// [`reqwest::Error`] of the re-exported
    /// [`reqwest`].
    #[error("sending the request failed")]
    Send(#[from] Box<reqwest::Error>),
    /// The request has a streaming body and cannot be sent twice.
    #[error("the request cannot be retried with a token: its body is a stream; use a buffered body")]
    NotRetryable,
    /// The request's own `Idempotency-Key` header is not visible ASCII.
    #[error("the request's Idempotency-Key header is not visible ASCII: use a UUID or another ASCII key")]
    InvalidIdempotencyKey,
    /// The 402 carried no `payment-required` header, or one that is not ASCII.
    #[error("the 402 carried no readable payment-required header; the seller is not speaking x402")]
    NoEnvelope,
    /// The 402's `payment-required` header is not a base64 JSON envelope.
    #[error("the 402's payment-required envelope is unreadable")]
    Envelope(#[source] DecodeError),
    /// The envelope accepts no payment: its `accepts` list is empty.
    #[error("the 402's payment-required envelope accepts no payment (its `accepts` list is empty)")]
    NothingAccepted,
    /// The minted token cannot be sent in a header.
    #[error("the minted token is not a valid header value; mint a new one")]
    TokenNotSendable,
    /// An MCP tool call could not be sent or its answer read (feature `mcp`).
    #[cfg(feature = "mcp")]
    #[error("the MCP call failed")]
    Mcp(#[source] Box<rmcp::ServiceError>),
    /// Minting the access token failed.
    #[error("minting an access token for plan {plan_id} failed: {error}")]
    Mint {
        /// The plan the token was for.
        plan_id: String,
        /// The facilitator's answer.
        error: Box<FacilitatorError>,
    },
}

/// Mints access tokens with a subscriber's key, caching one reusable token per plan and
/// agent. Built from the subscriber's API key, like the seller's configuration is built
/// from the seller's: [`Subscriber::from_env`] reads the same variables.
///
/// ```
/// use nvm_runtime::client::Subscriber;
///
/// let subscriber = Subscriber::builder()
///     .api_key("local:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.")
///     .backend_url("http://127.0.0.1:3001")
///     .build()
///     .unwrap();
/// assert_eq!(subscriber.account(), "0xabc");
/// ```
#[derive(Debug)]
pub struct Subscriber {
    api_key: ApiKey,
    facilitator: Facilitator,
    tokens: Mutex<HashMap<(String, Option<String>), AccessToken>>,
}

/// Builds a [`Subscriber`]: the subscriber's API key, and where the backend is.
#[derive(Debug, Default)]
#[must_use]
pub struct SubscriberBuilder {
    backend: BackendSettings,
}

impl SubscriberBuilder {
    /// The subscriber's NVM API key, `<prefix>:<JWT>`; its prefix picks the environment.
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

    /// The bound on each backend call (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.backend.timeout = Some(timeout);
        self
    }

    /// Checks the key and builds the subscriber.
    pub fn build(self) -> Result<Subscriber, ConfigError> {
        let Connection { api_key, facilitator, .. } = self.backend.connect()?;
        Ok(Subscriber { api_key, facilitator, tokens: Mutex::new(HashMap::new()) })
    }
}

impl Subscriber {
    /// Starts a subscriber.
    pub fn builder() -> SubscriberBuilder {
        SubscriberBuilder::default()
    }

    /// A subscriber from `NVM_API_KEY` (the subscriber's key, required),
    /// `NVM_ENVIRONMENT` and `NVM_BACKEND_URL` (used by the `custom` environment).
    ///
    /// ```
    /// match nvm_runtime::client::Subscriber::from_env() {
    ///     Ok(subscriber) => println!("paying as {}", subscriber.account()),
    ///     // Without NVM_API_KEY, the error says what to set.
    ///     Err(error) => assert!(error.to_string().contains("NVM_API_KEY")),
    /// }
    /// ```
    pub fn from_env() -> Result<Subscriber, ConfigError> {
        SubscriberBuilder { backend: BackendSettings::from_env()? }.build()
    }

    /// The subscriber's account address.
    pub fn account(&self) -> &str {
        self.api_key.account()
    }

    /// Mints a new access token for `accepted` (`POST /api/v1/x402/permissions`).
    pub async fn mint(
        &self,
        accepted: &Accepted,
        options: &TokenOptions,
    ) -> Result<AccessToken, ClientError> {
        let request = PermissionsRequest {
            accepted: accepted.clone(),
            delegation_config: options
                .delegation_id
                .as_ref()
                .map(|id| DelegationConfig { delegation_id: id.clone() }),
            token_version: options.token_version,
            resource: options.resource.as_ref().map(|url| ResourceBinding { url: url.clone() }),
        };
        let response = self.facilitator.mint(&request).await.map_err(|error| ClientError::Mint {
            plan_id: accepted.plan_id.clone(),
            error: Box::new(error),
        })?;
        Ok(AccessToken::new(response.access_token))
    }

    /// A reusable token for `accepted`: the cached one, or a newly minted one.
    pub async fn token_for(&self, accepted: &Accepted) -> Result<AccessToken, ClientError> {
        Ok(self.cached_or_minted(accepted).await?.0)
    }

    /// The token for `accepted` and whether it came from the cache.
    pub(crate) async fn cached_or_minted(
        &self,
        accepted: &Accepted,
    ) -> Result<(AccessToken, bool), ClientError> {
        let key = (accepted.plan_id.clone(), accepted.extra.agent_id.clone());
        if let Some(token) = self.tokens.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok((token.clone(), true));
        }
        let token = self.mint(accepted, &TokenOptions::default()).await?;
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner).insert(key, token.clone());
        Ok((token, false))
    }

    /// Drops the cached token for `accepted` (after the server reported it spent).
    pub(crate) fn forget(&self, accepted: &Accepted) {
        let key = (accepted.plan_id.clone(), accepted.extra.agent_id.clone());
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
    }
}

/// What became of the payment of one [`PayingClient::send`].
///
/// The rule behind it: a 402 **without** a `payment-response` header came before the
/// seller's handler ran (no token, or the token was refused at verify), so paying again
/// is safe and the client does it once. A 402 **with** a `payment-response` header means
/// the handler ran and the seller attempted settlement: paying again could charge twice,
/// so the client never does; it reports [`SettlementFailed`](Self::SettlementFailed).
///
/// ```
/// use nvm_runtime::client::PaymentOutcome;
///
/// fn advice(outcome: &PaymentOutcome) -> &'static str {
///     match outcome {
///         PaymentOutcome::NotRequired | PaymentOutcome::Settled(_) => "done",
///         PaymentOutcome::SettlementFailed(_) | PaymentOutcome::OutcomeUnknown(_) => {
///             "do not pay again: reconcile with the seller"
///         }
///         PaymentOutcome::Refused(_) => "top up the plan or fix the token, then retry",
///         PaymentOutcome::Unsettled => "the handler did not succeed; nothing was charged",
///         _ => "unknown outcome",
///     }
/// }
/// assert_eq!(advice(&PaymentOutcome::NotRequired), "done");
/// assert!(!PaymentOutcome::Unsettled.must_not_pay_again());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PaymentOutcome {
    /// The server did not ask for payment: its answer to the request as given was not a
    /// 402, and the request carried no token.
    NotRequired,
    /// The handler ran and the payment was settled: the answer carries a successful
    /// `payment-response` receipt (credits burned, transaction).
    Settled(SettleResponse),
    /// The handler ran and the seller attempted settlement, which failed or whose
    /// outcome is unknown (the facilitator's answer was lost or late). The answer is
    /// usually a 402 with the content withheld (or the content itself, when the seller
    /// delivers on settle failure). **Do not pay again**: the credits may have been
    /// burned. The failed receipt says why in `error_reason`, and may carry an
    /// `agentRequestId` (in its JSON form) to reconcile with the seller or the
    /// facilitator. When the seller's `payment-response` header could not be read, this
    /// receipt is built by the client (`success: false`, the decoding error in
    /// `error_reason`) and [`PaidResponse::receipt`] is `None`.
    SettlementFailed(SettleResponse),
    /// The server still answered 402 before its handler ran, after the client paid (and,
    /// for a cached or spent token, minted a fresh one once): nothing was charged. The
    /// reason is the envelope's `error` (the facilitator's `invalidReason`, such as an
    /// insufficient balance).
    Refused(String),
    /// A paid request was answered without a receipt and without a 402: the handler
    /// failed (a non-2xx answer) or charged nothing, so nothing was settled.
    Unsettled,
    /// A paid answer whose body streams and is settled when it ends (a
    /// `text/event-stream` without a receipt in its head): read it with
    /// [`PaidResponse::into_stream`], whose [`PaidStream::receipt`] is the receipt of
    /// its last `payment-response` event once it ended.
    SettlesAfterBody,
    /// The handler ran and the seller sent the settlement, but its answer was lost: the
    /// credits may have been burned, and the seller recorded the call as a pending
    /// settlement to reconcile (a 402 with this receipt and no envelope, the content withheld, or the content itself
    /// when the seller delivers on settle failure). **Do not pay again**; quote the
    /// seller's record id, [`SettleResponse::pending_id`], to the seller. The receipt
    /// is the seller's (`errorReason: "settlement_outcome_unknown"`).
    OutcomeUnknown(SettleResponse),
    /// A retry of a call whose settlement is still pending: the seller has not resolved
    /// it yet (a 409 with `Retry-After`, no envelope). **Do not pay again**: retry with
    /// the same `Idempotency-Key` after `retry_after` ([`PayingClient::collect`] does),
    /// to get the answer once the seller finds the credits burned, or to run the call
    /// afresh if they were not. The record's id: [`SettleResponse::pending_id`].
    Pending {
        /// How long the seller asks to wait before the next retry.
        retry_after: Duration,
        /// The seller's receipt (`errorReason: "settlement_pending"`).
        receipt: SettleResponse,
    },
    /// The handler ran and the answer was delivered; the seller settles it in the
    /// background (deferred settlement): the receipt says `settlement: "deferred"`,
    /// `errorReason: "settlement_pending"`, the `amount` to be burned and the ids to
    /// reconcile with ([`SettleResponse::pending_id`]). **Do not pay again**: this call
    /// is paid for.
    Deferred(SettleResponse),
}

impl PaymentOutcome {
    /// Whether the seller may have charged for this request although it did not
    /// deliver a settled answer: true for [`SettlementFailed`](Self::SettlementFailed)
    /// [`OutcomeUnknown`](Self::OutcomeUnknown) and [`Pending`](Self::Pending).
    /// Sending the same request again without its `Idempotency-Key` could then charge
    /// twice.
    pub fn must_not_pay_again(&self) -> bool {
        matches!(
            self,
            PaymentOutcome::SettlementFailed(_)
                | PaymentOutcome::OutcomeUnknown(_)
                | PaymentOutcome::Pending { .. }
        )
    }
}

/// A response that may have been paid for.
#[derive(Debug)]
#[non_exhaustive]
pub struct PaidResponse {
    /// The server's final response, a [`reqwest::Response`]
    /// of the re-exported [`reqwest`] (not of the `reqwest` your
    /// crate may depend on).
    pub response: reqwest::Response,
    /// The decoded `payment-response` receipt, when the server sent one.
    pub receipt: Option<SettleResponse>,
    /// What became of the payment; see [`PaymentOutcome`].
    pub outcome: PaymentOutcome,
    /// The `Idempotency-Key` the call was sent with (yours, or the one
    /// [`PayingClient::send`] made): send the same request again with this key and a
    /// seller that remembers keys answers with this call's response, without charging
    /// again.
    pub idempotency_key: String,
}

impl PaidResponse {
    /// Whether the seller answered with the stored response of an earlier call with the
    /// same `Idempotency-Key` (`idempotent-replayed: true`): not run, not charged again.
    pub fn replayed(&self) -> bool {
        self.response.headers().get(IDEMPOTENT_REPLAYED).is_some_and(|v| v.as_bytes() == b"true")
    }
}

/// An HTTP client that pays 402 answers by itself: it decodes the envelope, mints (or
/// reuses) a token for `accepts[0]`, retries with `payment-signature`, and returns the
/// response with its decoded receipt and [`PaymentOutcome`].
///
/// It sends a fresh token only after a 402 that came before the handler ran (one
/// without a `payment-response` header), at most once more after a cached or spent
/// token is refused; a 402 with a `payment-response` (settlement attempted) is returned
/// as [`PaymentOutcome::SettlementFailed`] and never retried, so one `send` never pays
/// twice.
///
/// Every call carries an `Idempotency-Key` (a fresh one per `send`, the same on its own
/// retries; set the header yourself to choose it), returned as
/// [`PaidResponse::idempotency_key`]. After a lost response, send the same request again
/// with that key: a seller that remembers keys (this crate's does by default) answers
/// with the first response and its receipt, and does not charge again
/// ([`PaidResponse::replayed`]).
///
/// ```no_run
/// # async fn demo(subscriber: nvm_runtime::client::Subscriber) -> Result<(), nvm_runtime::client::ClientError> {
/// use nvm_runtime::client::{PayingClient, PaymentOutcome};
///
/// let client = PayingClient::new(subscriber);
/// let paid = client
///     .send(client.http().post("http://127.0.0.1:3000/ask").body(r#"{"query":"hi"}"#))
///     .await?;
/// match &paid.outcome {
///     PaymentOutcome::Settled(receipt) => println!("paid {} credits", receipt.credits_redeemed.clone().unwrap_or_default()),
///     PaymentOutcome::SettlementFailed(receipt) => {
///         eprintln!("settlement failed ({:?}): do not resend, reconcile", receipt.error_reason)
///     }
///     other => println!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PayingClient {
    http: reqwest::Client,
    subscriber: Subscriber,
}

impl PayingClient {
    /// A client paying with `subscriber`.
    pub fn new(subscriber: Subscriber) -> Self {
        PayingClient { http: reqwest::Client::new(), subscriber }
    }

    /// The underlying HTTP client, to build requests with: a
    /// [`reqwest::Client`] of the re-exported
    /// [`reqwest`], so the requests it builds are the ones
    /// [`send`](Self::send) takes, whatever `reqwest` your crate depends on.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The subscriber paying.
    pub fn subscriber(&self) -> &Subscriber {
        &self.subscriber
    }

    /// Sends `request`, paying a 402 if one comes (see [`PayingClient`] for when it pays
    /// again and when it never does).
    ///
    /// `request` is a [`reqwest::RequestBuilder`]
    /// of the re-exported [`reqwest`]: build it with
    /// [`http`](Self::http) (or a `nvm_runtime::client::reqwest::Client`); one from
    /// another `reqwest` version in your crate is a different type and is refused.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<PaidResponse, ClientError> {
        let mut request = request.build().map_err(Box::new)?;
        let key = match request.headers().get(IDEMPOTENCY_KEY) {
            Some(key) => key.to_str().map_err(|_| ClientError::InvalidIdempotencyKey)?.to_owned(),
            None => {
                let key = crate::wire::codec::unique_id();
                let value = reqwest::header::HeaderValue::try_from(key.as_str())
                    .map_err(|_| ClientError::InvalidIdempotencyKey)?;
                request.headers_mut().insert(IDEMPOTENCY_KEY, value);
                key
            }
        };
        self.send_keyed(request, key).await
    }

    /// Collects the answer of a call whose settlement's outcome was unknown
    /// ([`PaymentOutcome::OutcomeUnknown`]) or still pending: sends `request` again with
    /// the call's `key` ([`PaidResponse::idempotency_key`]), waiting as the seller asks
    /// between tries while the settlement stays pending, for at most `max_wait`. The
    /// seller answers with the call's answer once it finds the credits burned (a
    /// [`PaymentOutcome::Settled`] receipt marked `confirmedAfterUnknown`, not charged
    /// again), or runs the call afresh, paid anew, if they were not; still
    /// [`PaymentOutcome::Pending`] when `max_wait` ran out.
    ///
    /// ```no_run
    /// # async fn demo(client: nvm_runtime::client::PayingClient) -> Result<(), nvm_runtime::client::ClientError> {
    /// use std::time::Duration;
    /// use nvm_runtime::client::PaymentOutcome;
    ///
    /// let ask = || client.http().post("http://127.0.0.1:3000/ask").body(r#"{"query":"hi"}"#);
    /// let paid = client.send(ask()).await?;
    /// if let PaymentOutcome::OutcomeUnknown(_) = paid.outcome {
    ///     let collected = client.collect(ask(), &paid.idempotency_key, Duration::from_secs(120)).await?;
    ///     println!("{:?}", collected.outcome);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn collect(
        &self,
        request: reqwest::RequestBuilder,
        key: &str,
        max_wait: Duration,
    ) -> Result<PaidResponse, ClientError> {
        let mut request = request.build().map_err(Box::new)?;
        let value =
            reqwest::header::HeaderValue::try_from(key).map_err(|_| ClientError::InvalidIdempotencyKey)?;
        request.headers_mut().insert(IDEMPOTENCY_KEY, value);
        let deadline = std::time::Instant::now() + max_wait;
        loop {
            let attempt = request.try_clone().ok_or(ClientError::NotRetryable)?;
            let paid = self.send_keyed(attempt, key.to_owned()).await?;
            let PaymentOutcome::Pending { retry_after, .. } = &paid.outcome else { return Ok(paid) };
            let now = std::time::Instant::now();
            if now + *retry_after > deadline {
                return Ok(paid);
            }
            tracing::info!(key, wait = ?retry_after, "the call's settlement is still pending; retrying");
            tokio::time::sleep(*retry_after).await;
        }
    }

    async fn send_keyed(&self, request: reqwest::Request, key: String) -> Result<PaidResponse, ClientError> {
        let first = request.try_clone().ok_or(ClientError::NotRetryable)?;
        let sent_token = first.headers().contains_key(PAYMENT_SIGNATURE);
        let response = self.http.execute(first).await.map_err(Box::new)?;
        if response.status().as_u16() != 402 || settlement_attempted(&response) {
            return Ok(finish(response, sent_token, key));
        }
        let envelope = read_envelope(&response)?;
        let accepted = envelope.first().cloned().ok_or(ClientError::NothingAccepted)?;
        let mut reminted = false;
        loop {
            let (token, cached) = self.subscriber.cached_or_minted(&accepted).await?;
            let mut retry = request.try_clone().ok_or(ClientError::NotRetryable)?;
            let value = reqwest::header::HeaderValue::try_from(token.as_str())
                .map_err(|_| ClientError::TokenNotSendable)?;
            retry.headers_mut().insert(PAYMENT_SIGNATURE, value);
            let response = self.http.execute(retry).await.map_err(Box::new)?;
            let refused_before_handler =
                response.status().as_u16() == 402 && !settlement_attempted(&response);
            if refused_before_handler && !reminted && (cached || reports_spent(&response)) {
                tracing::info!(token = %token.hash(), "token refused at verify; minting a fresh one");
                self.subscriber.forget(&accepted);
                reminted = true;
                continue;
            }
            if settlement_attempted(&response) && !response.status().is_success() {
                tracing::warn!(token = %token.hash(), status = response.status().as_u16(), "settlement failed or its outcome is unknown after the handler ran; not paying again");
            }
            return Ok(finish(response, true, key));
        }
    }
}

fn read_envelope(response: &reqwest::Response) -> Result<PaymentRequired, ClientError> {
    let header = response.headers().get(PAYMENT_REQUIRED).ok_or(ClientError::NoEnvelope)?;
    let text = header.to_str().map_err(|_| ClientError::NoEnvelope)?;
    PaymentRequired::from_header(text).map_err(ClientError::Envelope)
}

/// Whether the server attempted settlement: it sent a `payment-response` header (even
/// an unreadable one), so its handler ran.
fn settlement_attempted(response: &reqwest::Response) -> bool {
    response.headers().contains_key(PAYMENT_RESPONSE)
}

/// Whether a 402 refused before the handler ran reports the token spent.
fn reports_spent(response: &reqwest::Response) -> bool {
    read_envelope(response).ok().and_then(|e| e.error).is_some_and(|error| error.contains(CODE_SPENT))
}

/// The `payment-response` receipt: `None` without the header, `Some(Err(why))` when it
/// cannot be read.
fn receipt_of(response: &reqwest::Response) -> Option<Result<SettleResponse, String>> {
    let value = response.headers().get(PAYMENT_RESPONSE)?;
    let text = match value.to_str() {
        Ok(text) => text,
        Err(_) => return Some(Err("the header is not ASCII".to_owned())),
    };
    Some(SettleResponse::from_header(text).map_err(|e| e.to_string()))
}

fn finish(response: reqwest::Response, paid: bool, idempotency_key: String) -> PaidResponse {
    let status = response.status();
    let decoded = receipt_of(&response);
    let outcome = match &decoded {
        Some(Ok(receipt)) if receipt.success => PaymentOutcome::Settled(receipt.clone()),
        Some(Ok(receipt)) if receipt.error_reason.as_deref() == Some(SETTLEMENT_UNKNOWN) => {
            PaymentOutcome::OutcomeUnknown(receipt.clone())
        }
        Some(Ok(receipt))
            if status.is_success()
                && receipt.other.get("settlement").and_then(|v| v.as_str()) == Some("deferred") =>
        {
            PaymentOutcome::Deferred(receipt.clone())
        }
        Some(Ok(receipt)) if receipt.error_reason.as_deref() == Some(SETTLEMENT_PENDING) => {
            let seconds = receipt.other.get("retryAfter").and_then(serde_json::Value::as_u64).unwrap_or(30);
            PaymentOutcome::Pending { retry_after: Duration::from_secs(seconds), receipt: receipt.clone() }
        }
        Some(Ok(receipt)) => PaymentOutcome::SettlementFailed(receipt.clone()),
        Some(Err(why)) => PaymentOutcome::SettlementFailed(SettleResponse {
            success: false,
            error_reason: Some(format!(
                "the payment-response header could not be read ({why}); settlement was attempted: \
                 reconcile with the seller before paying again"
            )),
            ..SettleResponse::default()
        }),
        None if status.as_u16() == 402 && paid => PaymentOutcome::Refused(refusal_reason(&response)),
        None if paid && status.is_success() && is_event_stream(&response) => PaymentOutcome::SettlesAfterBody,
        None if paid => PaymentOutcome::Unsettled,
        None => PaymentOutcome::NotRequired,
    };
    PaidResponse { response, receipt: decoded.and_then(Result::ok), outcome, idempotency_key }
}

fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

impl PaidResponse {
    /// The body as a stream of chunks, as they arrive (nothing buffered), with the
    /// receipt of a stream settled after its body read from its last
    /// `payment-response` event.
    pub fn into_stream(self) -> PaidStream {
        PaidStream { response: self.response, receipt: self.receipt, event: String::new() }
    }
}

/// A paid answer read chunk by chunk; see [`PaidResponse::into_stream`].
///
/// ```no_run
/// # async fn demo(client: nvm_runtime::client::PayingClient) -> Result<(), nvm_runtime::client::ClientError> {
/// let paid = client.send(client.http().post("http://127.0.0.1:8080/chat")).await?;
/// let mut stream = paid.into_stream();
/// while let Some(chunk) = stream.next().await? {
///     print!("{}", String::from_utf8_lossy(&chunk));
/// }
/// if let Some(credits) = stream.receipt().and_then(|receipt| receipt.credits_redeemed.as_ref()) {
///     println!("paid {credits} credits");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PaidStream {
    response: reqwest::Response,
    receipt: Option<SettleResponse>,
    /// The event being received (SSE), up to its blank line.
    event: String,
}

/// The longest SSE event kept while looking for the receipt.
const MAX_EVENT: usize = 64 * 1024;

impl PaidStream {
    /// The next chunk of the body, `None` at its end.
    pub async fn next(&mut self) -> Result<Option<bytes::Bytes>, ClientError> {
        let chunk = self.response.chunk().await.map_err(Box::new)?;
        if let Some(chunk) = &chunk {
            self.event.push_str(&String::from_utf8_lossy(chunk));
            while let Some(end) = self.event.find("\n\n") {
                if let Some(receipt) = event_stream_receipt(&self.event[..end + 2]) {
                    self.receipt = Some(receipt);
                }
                self.event.drain(..end + 2);
            }
            if self.event.len() > MAX_EVENT {
                self.event.clear();
            }
        }
        Ok(chunk)
    }

    /// The receipt: the head's `payment-response`, or the last `payment-response` event
    /// of the stream read so far (a stream settled after its body sends it last).
    pub fn receipt(&self) -> Option<&SettleResponse> {
        self.receipt.as_ref()
    }
}

/// The receipt of the last `payment-response` event in `text` (server-sent events): what
/// a paid stream settled after its body ends with.
pub(crate) fn event_stream_receipt(text: &str) -> Option<SettleResponse> {
    let mut found = None;
    for event in text.split("\n\n") {
        let mut name = None;
        let mut data = String::new();
        for line in event.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                name = Some(value.trim());
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim());
            }
        }
        if name == Some(PAYMENT_RESPONSE)
            && let Ok(receipt) = SettleResponse::from_header(&data)
        {
            found = Some(receipt);
        }
    }
    found
}

/// Why a 402 refused the token: the envelope's `error`, or a generic reason.
fn refusal_reason(response: &reqwest::Response) -> String {
    read_envelope(response).ok().and_then(|e| e.error).unwrap_or_else(|| {
        "the server answered 402 without a reason; check the plan's balance and the token".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stream_ends_with_its_receipt() {
        let receipt = SettleResponse { success: true, ..SettleResponse::default() };
        let text = format!("data: hello\n\nevent: payment-response\ndata: {}\n\n", receipt.to_header());
        assert_eq!(event_stream_receipt(&text), Some(receipt));
        assert_eq!(event_stream_receipt("data: hello\n\nevent: payment-response\ndata: %%\n\n"), None);
    }
}
