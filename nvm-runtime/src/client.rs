//! The buyer's side (WIRE.md §5–6): mint access tokens with the subscriber's key, and
//! an HTTP client that pays a 402 by itself (decode → mint → retry → receipt).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::codec::DecodeError;
use crate::config::Payments;
use crate::envelope::{Accepted, PaymentRequired};
use crate::error::FacilitatorError;
use crate::headers::{PAYMENT_REQUIRED, PAYMENT_SIGNATURE};
use crate::messages::{CODE_SPENT, DelegationConfig, PermissionsRequest, ResourceBinding, SettleResponse};
use crate::token::AccessToken;

/// Options of a minted token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MintOptions {
    /// `2` (reusable, the default) or `3` (single-use, bound to `resource`).
    pub token_version: Option<u8>,
    /// The card delegation to pay with (`nvm:card-delegation` plans).
    pub delegation_id: Option<String>,
    /// The resource URL (path) a single-use token is bound to.
    pub resource: Option<String>,
}

/// What went wrong while paying, by step.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request could not be sent or its answer read.
    #[error("sending the request failed: {0}")]
    Send(#[from] Box<reqwest::Error>),
    /// The request has a streaming body and cannot be sent twice.
    #[error("the request cannot be retried with a token: its body is a stream; use a buffered body")]
    NotRetryable,
    /// The 402 carried no readable `payment-required` envelope.
    #[error("the 402 carried no readable payment-required envelope: {0}")]
    Envelope(String),
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
/// agent.
///
/// ```
/// use nvm_runtime::Payments;
/// use nvm_runtime::client::Subscriber;
///
/// let subscriber_config = Payments::builder()
///     .api_key("local:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.")
///     .backend_url("http://127.0.0.1:3001")
///     .build()
///     .unwrap();
/// let subscriber = Subscriber::new(subscriber_config);
/// assert_eq!(subscriber.account(), "0xabc");
/// ```
#[derive(Debug)]
pub struct Subscriber {
    config: Payments,
    tokens: Mutex<HashMap<(String, Option<String>), AccessToken>>,
}

impl Subscriber {
    /// A subscriber using the key, environment and backend of `config`.
    pub fn new(config: Payments) -> Self {
        Subscriber { config, tokens: Mutex::new(HashMap::new()) }
    }

    /// The subscriber's account address.
    pub fn account(&self) -> &str {
        self.config.account()
    }

    /// Mints a new access token for `accepted` (`POST /api/v1/x402/permissions`).
    pub async fn mint(&self, accepted: &Accepted, options: &MintOptions) -> Result<AccessToken, ClientError> {
        let request = PermissionsRequest {
            accepted: accepted.clone(),
            delegation_config: options
                .delegation_id
                .as_ref()
                .map(|id| DelegationConfig { delegation_id: id.clone() }),
            token_version: options.token_version,
            resource: options.resource.as_ref().map(|url| ResourceBinding { url: url.clone() }),
        };
        let response = self.config.facilitator().mint(&request).await.map_err(|error| ClientError::Mint {
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
    async fn cached_or_minted(&self, accepted: &Accepted) -> Result<(AccessToken, bool), ClientError> {
        let key = (accepted.plan_id.clone(), accepted.extra.agent_id.clone());
        if let Some(token) = self.tokens.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok((token.clone(), true));
        }
        let token = self.mint(accepted, &MintOptions::default()).await?;
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner).insert(key, token.clone());
        Ok((token, false))
    }

    /// Drops the cached token for `accepted` (after the server reported it spent).
    pub fn forget(&self, accepted: &Accepted) {
        let key = (accepted.plan_id.clone(), accepted.extra.agent_id.clone());
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
    }
}

/// A response that may have been paid for.
#[derive(Debug)]
pub struct PaidResponse {
    /// The server's final response.
    pub response: reqwest::Response,
    /// The decoded `payment-response` receipt, when the server sent one.
    pub receipt: Option<SettleResponse>,
    /// Whether a token was sent.
    pub paid: bool,
}

/// An HTTP client that pays 402 answers by itself: it decodes the envelope, mints (or
/// reuses) a token for `accepts[0]`, retries once with `payment-signature`, and returns
/// the response with its decoded receipt. A cached token that is refused (spent with
/// `BCK.X402.0059`, expired, drained) is replaced by a freshly minted one, once.
///
/// ```no_run
/// # async fn demo(subscriber: nvm_runtime::client::Subscriber) -> Result<(), nvm_runtime::client::ClientError> {
/// use nvm_runtime::client::PayingClient;
///
/// let client = PayingClient::new(subscriber);
/// let paid = client
///     .send(client.http().post("http://127.0.0.1:3000/ask").body(r#"{"query":"hi"}"#))
///     .await?;
/// if let Some(receipt) = paid.receipt {
///     println!("paid {} credits", receipt.credits_redeemed_u64());
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

    /// The underlying HTTP client, to build requests with.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The subscriber paying.
    pub fn subscriber(&self) -> &Subscriber {
        &self.subscriber
    }

    /// Sends `request`, paying a 402 if one comes.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<PaidResponse, ClientError> {
        let request = request.build().map_err(Box::new)?;
        let first = request.try_clone().ok_or(ClientError::NotRetryable)?;
        let response = self.http.execute(first).await.map_err(Box::new)?;
        if response.status().as_u16() != 402 {
            return Ok(finish(response, false));
        }
        let envelope = read_envelope(&response)?;
        let accepted = envelope
            .first()
            .cloned()
            .ok_or_else(|| ClientError::Envelope("its `accepts` list is empty".into()))?;
        let mut reminted = false;
        loop {
            let (token, cached) = self.subscriber.cached_or_minted(&accepted).await?;
            let mut retry = request.try_clone().ok_or(ClientError::NotRetryable)?;
            let value = reqwest::header::HeaderValue::try_from(token.as_str())
                .map_err(|_| ClientError::Envelope("the minted token is not a valid header value".into()))?;
            retry.headers_mut().insert(PAYMENT_SIGNATURE, value);
            let response = self.http.execute(retry).await.map_err(Box::new)?;
            if response.status().as_u16() == 402 && !reminted && (cached || reports_spent(&response)) {
                tracing::info!(token = %token.hash(), "token refused; minting a fresh one");
                self.subscriber.forget(&accepted);
                reminted = true;
                continue;
            }
            return Ok(finish(response, true));
        }
    }
}

fn read_envelope(response: &reqwest::Response) -> Result<PaymentRequired, ClientError> {
    let header = response
        .headers()
        .get(PAYMENT_REQUIRED)
        .ok_or_else(|| ClientError::Envelope("no payment-required header".into()))?;
    let text = header.to_str().map_err(|_| ClientError::Envelope("the header is not ASCII".into()))?;
    PaymentRequired::from_header(text).map_err(|e: DecodeError| ClientError::Envelope(e.to_string()))
}

fn reports_spent(response: &reqwest::Response) -> bool {
    let receipt_spent =
        receipt_of(response).and_then(|r| r.error_reason).is_some_and(|reason| reason.contains(CODE_SPENT));
    let envelope_spent =
        read_envelope(response).ok().and_then(|e| e.error).is_some_and(|error| error.contains(CODE_SPENT));
    receipt_spent || envelope_spent
}

fn receipt_of(response: &reqwest::Response) -> Option<SettleResponse> {
    let value = response.headers().get(crate::headers::PAYMENT_RESPONSE)?.to_str().ok()?;
    SettleResponse::from_header(value).ok()
}

fn finish(response: reqwest::Response, paid: bool) -> PaidResponse {
    let receipt = receipt_of(&response);
    PaidResponse { response, receipt, paid }
}
