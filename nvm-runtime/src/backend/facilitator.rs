//! The facilitator client: `verify`, `settle`, plan metadata and token minting over
//! one pooled HTTP client (the [`wire`](crate::wire) docs, §4, §5).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use bytes::Bytes;
use reqwest::Url;

use crate::backend::ApiKey;
use crate::error::{ConfigError, ConfigProblem, FacilitatorError, Failure, Unavailable};
use crate::wire::{
    Amount, BackendError, FacilitatorRequest, PermissionsRequest, PermissionsResponse, SettleResponse,
    VerifyResponse,
};
use crate::wire::{Endpoint, PaymentRequired};

/// The `Nevermined-Version` header value the backend expects.
pub(crate) const NEVERMINED_VERSION: &str = "1.1";

/// How many times `verify` is tried on a transient failure (it burns nothing, so a
/// retry is safe). `settle` is tried exactly once.
const VERIFY_ATTEMPTS: u32 = 2;

/// How long an idle pooled connection to the facilitator is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A client of the Nevermined backend's x402 endpoints.
///
/// Cheap to clone: clones share one connection pool. Every call is bounded by the
/// timeout as a whole (connect, send, read and any retry).
///
/// ```
/// use std::time::Duration;
/// use nvm_runtime::__private::backend::Facilitator;
///
/// let key = "local:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.".parse().unwrap();
/// let facilitator = Facilitator::new("http://127.0.0.1:3001", &key, Duration::from_secs(5)).unwrap();
/// assert_eq!(facilitator.backend_url(), "http://127.0.0.1:3001");
/// ```
#[derive(Clone)]
pub struct Facilitator {
    http: reqwest::Client,
    base: Arc<str>,
    /// The verify and settle URLs, parsed once (`None` when the base does not parse: the
    /// call then fails as it always did, from the text).
    urls: Arc<Option<(Url, Url)>>,
    auth: HeaderValue,
    timeout: Duration,
}

/// A verify or settle body borrowed from the paywall's state: serializes exactly as
/// [`FacilitatorRequest`] (same fields, names, order and omissions) without cloning the
/// envelope and the token for each call.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RequestRef<'a> {
    pub(crate) payment_required: &'a PaymentRequired,
    pub(crate) x402_access_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_amount: Option<&'a Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) agent_request_id: Option<&'a str>,
}

impl std::fmt::Debug for Facilitator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facilitator")
            .field("backend_url", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Facilitator {
    /// A client of the backend at `backend_url` that authenticates with `api_key`.
    pub fn new(backend_url: &str, api_key: &ApiKey, timeout: Duration) -> Result<Self, ConfigError> {
        Self::with_version(backend_url, api_key, timeout, NEVERMINED_VERSION)
    }

    /// Like [`Facilitator::new`], with another `Nevermined-Version` header value.
    pub fn with_version(
        backend_url: &str,
        api_key: &ApiKey,
        timeout: Duration,
        version: &str,
    ) -> Result<Self, ConfigError> {
        let base = backend_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ConfigProblem::InvalidBackendUrl(backend_url.to_owned()).into());
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let mut auth = HeaderValue::try_from(format!("Bearer {}", api_key.expose())).map_err(|_| {
            ConfigProblem::MalformedApiKey("it contains characters not allowed in a header".into())
        })?;
        auth.set_sensitive(true);
        headers.insert(
            "nevermined-version",
            HeaderValue::try_from(version)
                .map_err(|_| ConfigProblem::InvalidHeaderName(version.to_owned()))?,
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            // Below the 5 s keep-alive of Node's and actix-web's servers: a pooled
            // connection is dropped before its server closes it, never reused as it does
            // (a request sent on it would fail as "connection closed before message
            // completed", an unknown outcome for a settle call).
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| ConfigProblem::HttpClient(Arc::new(e)))?;
        let url = |path: &str| Url::parse(&format!("{base}{path}")).ok();
        let urls = url(Endpoint::Verify.path()).zip(url(Endpoint::Settle.path()));
        Ok(Facilitator { http, base: base.into(), urls: Arc::new(urls), auth, timeout })
    }

    /// The backend base URL, without a trailing slash.
    pub fn backend_url(&self) -> &str {
        &self.base
    }

    /// The bound on each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `POST /api/v1/x402/verify`. Retried once on a transient failure, within the
    /// timeout.
    pub async fn verify(&self, request: &FacilitatorRequest) -> Result<VerifyResponse, FacilitatorError> {
        self.verify_body(to_body(request)).await
    }

    /// [`Facilitator::verify`] of a borrowed body.
    pub(crate) async fn verify_ref(
        &self,
        request: &RequestRef<'_>,
    ) -> Result<VerifyResponse, FacilitatorError> {
        self.verify_body(to_body(request)).await
    }

    async fn verify_body(&self, body: Bytes) -> Result<VerifyResponse, FacilitatorError> {
        let url = self.urls.as_ref().as_ref().map(|(verify, _)| verify);
        self.bounded(async {
            let mut attempt = 1;
            loop {
                // `Bytes`: a retry shares the body, it does not copy it.
                let result = self.post_once(Endpoint::Verify.path(), url, body.clone()).await;
                match result {
                    Err(ref error)
                        if attempt < VERIFY_ATTEMPTS && error.why_unavailable().is_some_and(is_transient) =>
                    {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    other => return other,
                }
            }
        })
        .await
    }

    /// `POST /api/v1/x402/settle`, exactly once: a settle is never retried (single-use
    /// tokens, double burning). A 200 with `success:false` comes back as `Ok`; look at
    /// [`SettleResponse::success`].
    pub async fn settle(&self, request: &FacilitatorRequest) -> Result<SettleResponse, FacilitatorError> {
        self.settle_body(to_body(request)).await
    }

    /// [`Facilitator::settle`] of a borrowed body.
    pub(crate) async fn settle_ref(
        &self,
        request: &RequestRef<'_>,
    ) -> Result<SettleResponse, FacilitatorError> {
        self.settle_body(to_body(request)).await
    }

    /// [`Facilitator::settle`], with its result sorted into what the seller can know:
    /// settled, refused (nothing was burned), or unknown (the call may have been carried
    /// out; its answer did not come back). See [`SettleOutcome`].
    pub async fn settle_outcome(&self, request: &FacilitatorRequest) -> SettleOutcome {
        SettleOutcome::of(self.settle(request).await)
    }

    /// [`Facilitator::settle_outcome`] of a borrowed body.
    pub(crate) async fn settle_outcome_ref(&self, request: &RequestRef<'_>) -> SettleOutcome {
        SettleOutcome::of(self.settle_ref(request).await)
    }

    async fn settle_body(&self, body: Bytes) -> Result<SettleResponse, FacilitatorError> {
        let url = self.urls.as_ref().as_ref().map(|(_, settle)| settle);
        self.bounded(self.post_once(Endpoint::Settle.path(), url, body)).await
    }

    /// `POST /api/v1/x402/permissions`: mints an access token. The client's API key must
    /// be the subscriber's.
    pub async fn mint(&self, request: &PermissionsRequest) -> Result<PermissionsResponse, FacilitatorError> {
        let body = to_body(request);
        self.bounded(self.post_once(Endpoint::Permissions.path(), None, body)).await
    }

    /// `GET /api/v1/protocol/plans/{planId}`: the plan's public metadata (sent without
    /// the `Authorization` header).
    pub async fn plan_metadata(&self, plan_id: &str) -> Result<serde_json::Value, FacilitatorError> {
        let path = Endpoint::Plans.path().replace("{plan_id}", &encode_path_segment(plan_id));
        let url = format!("{}{path}", self.base);
        self.bounded(async {
            // A public call: no Authorization header.
            let response = self.http.get(&url).send().await.map_err(|e| self.unsent(e))?;
            self.read_json(response).await
        })
        .await
    }

    /// One POST of `body` to `path`, at `url` when it was parsed once already.
    async fn post_once<T: DeserializeOwned>(
        &self,
        path: &str,
        url: Option<&Url>,
        body: Bytes,
    ) -> Result<T, FacilitatorError> {
        let request = match url {
            Some(url) => self.http.post(url.clone()),
            None => self.http.post(format!("{}{path}", self.base)),
        };
        let response = request
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .send()
            .await
            .map_err(|e| self.unsent(e))?;
        self.read_json(response).await
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, FacilitatorError>>,
    ) -> Result<T, FacilitatorError> {
        match tokio::time::timeout(self.timeout, call).await {
            // reqwest's own bound (the same duration) may fire first.
            Ok(Err(FacilitatorError(Failure::Unavailable(Unavailable::Timeout(_))))) | Err(_) => {
                Err(FacilitatorError::unavailable(Unavailable::Timeout(self.timeout)))
            }
            Ok(result) => result,
        }
    }
}

/// What a settle call tells the seller: the three cases it must treat apart.
///
/// ```
/// use nvm_runtime::__private::backend::SettleOutcome;
/// use nvm_runtime::wire::SettleResponse;
///
/// let mut answered = SettleResponse::default();
/// answered.error_reason = Some("insufficient_balance".into());
/// assert!(matches!(SettleOutcome::of(Ok(answered.clone())), SettleOutcome::Declined(_)));
/// answered.success = true;
/// assert!(matches!(SettleOutcome::of(Ok(answered)), SettleOutcome::Settled(_)));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SettleOutcome {
    /// `success: true`: the credits were burned; the receipt says how many.
    Settled(SettleResponse),
    /// A 200 with `success: false`: the facilitator declined; nothing was burned.
    Declined(SettleResponse),
    /// The facilitator refused the call (a 4xx with its error envelope, or our API key),
    /// or the request never left (the connection was refused): nothing can have been
    /// burned.
    Refused(FacilitatorError),
    /// The request may have reached the facilitator but its answer did not come back
    /// whole: a timeout, a connection that broke after the request was written, a
    /// gateway's or server's 5xx, a truncated or unreadable body. The credits may or
    /// may not have been burned.
    Unknown(FacilitatorError),
}

impl SettleOutcome {
    /// Sorts the result of [`Facilitator::settle`].
    pub fn of(result: Result<SettleResponse, FacilitatorError>) -> Self {
        match result {
            Ok(receipt) if receipt.success => SettleOutcome::Settled(receipt),
            Ok(receipt) => SettleOutcome::Declined(receipt),
            Err(error) if error.may_have_been_carried_out() => SettleOutcome::Unknown(error),
            Err(error) => SettleOutcome::Refused(error),
        }
    }
}

fn to_body<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn is_transient(why: &Unavailable) -> bool {
    matches!(
        why,
        Unavailable::Connect(_) | Unavailable::Interrupted(_) | Unavailable::Status { status: 502..=504, .. }
    )
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Facilitator {
    /// A request that could not be sent.
    fn unsent(&self, error: reqwest::Error) -> FacilitatorError {
        FacilitatorError::unavailable(if error.is_timeout() {
            // reqwest's own bound is ours: report it as ours.
            Unavailable::Timeout(self.timeout)
        } else {
            Unavailable::Connect(Arc::new(error))
        })
    }

    /// An answer whose body could not be read.
    fn interrupted(&self, error: reqwest::Error) -> FacilitatorError {
        FacilitatorError::unavailable(if error.is_timeout() {
            Unavailable::Timeout(self.timeout)
        } else {
            Unavailable::Interrupted(Arc::new(error))
        })
    }

    async fn read_json<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, FacilitatorError> {
        read_json(response.status().as_u16(), response.bytes().await.map_err(|e| self.interrupted(e))?)
    }
}

fn read_json<T: DeserializeOwned>(status: u16, body: Bytes) -> Result<T, FacilitatorError> {
    match status {
        200..=299 => serde_json::from_slice(&body).map_err(|e| {
            FacilitatorError::unavailable(Unavailable::Garbage {
                status,
                reason: e.to_string(),
                snippet: snippet(&body),
            })
        }),
        401 | 403 => {
            let message = serde_json::from_slice::<BackendError>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| snippet(&body));
            Err(FacilitatorError::unavailable(Unavailable::Unauthorized { status, message }))
        }
        400..=499 => match serde_json::from_slice::<BackendError>(&body) {
            Ok(error) if !error.code.is_empty() || !error.message.is_empty() => {
                Err(FacilitatorError::refused(status, error))
            }
            _ => Err(FacilitatorError::unavailable(Unavailable::Garbage {
                status,
                reason: "not the backend's error envelope".into(),
                snippet: snippet(&body),
            })),
        },
        _ => Err(FacilitatorError::unavailable(Unavailable::Status { status, snippet: snippet(&body) })),
    }
}

/// Percent-encodes what a path segment cannot hold verbatim (plan ids are decimal, but
/// configuration is user input).
fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::envelope::EnvelopeBuilder;

    #[test]
    fn borrowed_bodies_serialize_exactly_as_facilitator_requests() {
        let envelope = EnvelopeBuilder::new("7", "eip155:84532").url("/ask").http_verb("POST").build();
        for (amount, request_id) in
            [(None, None), (Some(3), None), (Some(1), Some("r-1")), (None, Some("r-2"))]
        {
            let owned = FacilitatorRequest {
                payment_required: envelope.clone(),
                x402_access_token: "dG9rZW4=".to_owned(),
                max_amount: amount.map(Amount::from),
                agent_request_id: request_id.map(str::to_owned),
            };
            let amount = owned.max_amount.clone();
            let borrowed = RequestRef {
                payment_required: &envelope,
                x402_access_token: "dG9rZW4=",
                max_amount: amount.as_ref(),
                agent_request_id: request_id,
            };
            assert_eq!(to_body(&owned), to_body(&borrowed));
        }
    }
}
