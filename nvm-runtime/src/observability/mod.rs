//! LLM observability: the LLM calls a paid request makes, logged against that request,
//! as the official SDKs do it (payments-py's `observability_api`, the TypeScript SDK's
//! `observability-api`).
//!
//! Nevermined runs a Helicone gateway per environment
//! (`https://helicone.nevermined.dev`, [`Payments::helicone_url`](crate::Payments::helicone_url);
//! `HELICONE_URL` for a `custom` backend; a local facilitator serves a stand-in). A handler sends its LLM calls
//! through the gateway's OpenAI-compatible API, `{helicone}/jawn/v1/gateway/oai/v1`, with
//! `Helicone-Auth: Bearer <the o11y claim of the seller's API key>` and one
//! `Helicone-Property-*` header per fact of the paid request (seller, payer, agent, plan,
//! agent request id, price per credit…): the seller then sees, in Nevermined's dashboard,
//! what each paid call cost in LLM tokens.
//!
//! [`PaymentContext::observability`](crate::PaymentContext::observability) gives those
//! settings for the request being served, as an [`Observability`]: a base URL and a
//! `reqwest` [`HeaderMap`] for any HTTP client; with the
//! feature `openai`, a ready `async-openai` configuration
//! (`Observability::openai_config`). Calls that do not go through the gateway (other
//! providers, local models) are logged with [`Observability::log`], off the response
//! path.
//!
//! | header | value (payments-py 1.18 `get_default_helicone_headers`) |
//! |---|---|
//! | `Helicone-Auth` | `Bearer <o11y claim>` |
//! | `Helicone-Property-accountAddress` | the seller's account (`sub` claim) |
//! | `Helicone-Property-consumerAddress` | `agentRequest.balance.holderAddress` |
//! | `Helicone-Property-agentId`, `-agentName`, `-agentRequestId` | from `agentRequest` |
//! | `Helicone-Property-planId`, `-planType`, `-planName` | from `agentRequest.balance` |
//! | `Helicone-Property-pricePerCredit` | `agentRequest.balance.pricePerCredit`, as Python prints a float (`0.0`, `1e-05`) |
//! | `Helicone-Property-environmentName` | `sandbox`, `live`, `staging_sandbox`, `staging_live` or `custom` |
//! | `Helicone-Property-batch` | `true` or `false` |
//! | `Helicone-Property-ismarginBased`, `-marginPercent` | `false`, `0` |
//! | `Helicone-Property-<name>` | the seller's own properties ([`Observability::property`]) |

pub(crate) mod helicone;
mod log;
#[cfg(feature = "openai")]
mod openai;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use self::helicone::helicone_headers;
use crate::backend::ApiKey;
use crate::backend::Environment;
use crate::wire::AgentRequest;

pub use self::log::{LlmCall, LogOutcome};
/// The `async-openai` this crate is built with (0.43), re-exported so that the
/// configuration [`Observability::openai_config`] returns is the one your client takes.
///
/// ```
/// use actix_web::{post, HttpResponse};
/// use nvm_runtime::observability::async_openai::Client;
/// use nvm_runtime::{paid, PaymentContext};
///
/// #[paid(plan = "1234", credits = 10)]
/// #[post("/ask")]
/// async fn ask(payment: PaymentContext) -> HttpResponse {
///     let key = std::env::var("OPENAI_API_KEY").unwrap_or_default();
///     let Ok(config) = payment.observability().and_then(|gateway| gateway.openai_config(&key)) else {
///         return HttpResponse::InternalServerError().finish();
///     };
///     let openai = Client::with_config(config);
///     // openai.chat().create(request).await …
///     # let _ = openai;
///     HttpResponse::Ok().finish()
/// }
/// ```
#[cfg(feature = "openai")]
pub use async_openai;

/// The path of the gateway's OpenAI-compatible API, under the Helicone URL.
pub(crate) const GATEWAY_PATH: &str = "jawn/v1/gateway/oai/v1";

/// The path of the manual logging endpoint, under the Helicone URL.
pub(crate) const LOG_PATH: &str = "jawn/v1/trace/custom/v1/log";

/// The bound on one manual log call.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the gateway settings of a request cannot be given, or a property set: the
/// seller's key has no gateway claim, the request has no verified payment (free, or no
/// `Payments` registered), the facilitator's verification lacks a field the headers
/// need, or a property cannot be a header. Its message says which, and what to do.
///
/// ```
/// use nvm_runtime::PaymentContext;
///
/// fn gateway(payment: &PaymentContext) -> Result<String, actix_web::Error> {
///     let observability = payment.observability().map_err(actix_web::error::ErrorInternalServerError)?;
///     Ok(observability.chat_completions_url())
/// }
/// # let _ = gateway;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct ObservabilityError(#[from] ObservabilityProblem);

/// The cases of an [`ObservabilityError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ObservabilityProblem {
    /// The seller's API key has no `o11y` claim (the gateway's key).
    #[error(
        "the seller's NVM API key has no `o11y` claim, the observability gateway's key: use a key issued by the Nevermined app (or a local facilitator's), as the official SDKs require"
    )]
    NoGatewayKey,
    /// The request is free, or `Payments` is not registered with the app: there is no
    /// verified `agentRequest` to log against.
    #[error(
        "this request has no verified payment to log LLM calls against: call `observability()` in a handler whose credits are not 0, with `App::new().app_data(payments.clone())`"
    )]
    NotPaid,
    /// The facilitator's verification carried no `agentRequest`, or it lacks a field the
    /// headers need.
    #[error(
        "the facilitator's verification lacks `{0}`, which the observability headers need (payments-py refuses it too); check the backend URL points at a Nevermined backend"
    )]
    IncompleteAgentRequest(&'static str),
    /// A custom property's name or value cannot be an HTTP header.
    #[error(
        "the observability property `{0}` cannot be sent as the header `Helicone-Property-{0}`: use letters, digits and `-`/`_` in names, and visible ASCII in values"
    )]
    InvalidProperty(String),
}

/// The seller's side of the gateway: its URLs and key, shared by every request.
#[derive(Clone)]
pub(crate) struct Gateway {
    inner: Arc<GatewayInner>,
}

struct GatewayInner {
    helicone_url: String,
    base_url: String,
    log_url: String,
    /// The `o11y` claim (a secret).
    key: Option<String>,
    account: String,
    environment: Environment,
    http: OnceLock<Option<reqwest::Client>>,
}

/// `urljoin(base, path)` as the SDKs compute it (RFC 3986 reference resolution).
fn join(base: &str, path: &str) -> String {
    reqwest::Url::parse(base)
        .and_then(|b| b.join(path))
        .map_or_else(|_| format!("{}/{path}", base.trim_end_matches('/')), String::from)
}

impl Gateway {
    pub(crate) fn new(helicone_url: &str, api_key: &ApiKey, environment: Environment) -> Self {
        Gateway {
            inner: Arc::new(GatewayInner {
                helicone_url: helicone_url.to_owned(),
                base_url: join(helicone_url, GATEWAY_PATH),
                log_url: join(helicone_url, LOG_PATH),
                key: api_key.observability_key().map(str::to_owned),
                account: api_key.account().to_owned(),
                environment,
                http: OnceLock::new(),
            }),
        }
    }

    pub(crate) fn helicone_url(&self) -> &str {
        &self.inner.helicone_url
    }

    /// The client of the manual logs, built on first use (`None` if it cannot be).
    fn http(&self) -> Option<&reqwest::Client> {
        self.inner.http.get_or_init(|| reqwest::Client::builder().timeout(LOG_TIMEOUT).build().ok()).as_ref()
    }

    /// The settings for one verified request.
    pub(crate) fn for_request(
        &self,
        agent_request: Option<&AgentRequest>,
    ) -> Result<Observability, ObservabilityError> {
        let key = self.inner.key.as_deref().ok_or(ObservabilityProblem::NoGatewayKey)?;
        let agent_request =
            agent_request.ok_or(ObservabilityProblem::IncompleteAgentRequest("agentRequest"))?;
        let headers = helicone_headers(key, &self.inner.account, self.inner.environment, agent_request)?;
        Ok(Observability { gateway: self.clone(), headers })
    }
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("helicone_url", &self.inner.helicone_url)
            .field("key", &self.inner.key.as_ref().map(|_| "<redacted>"))
            .field("account", &self.inner.account)
            .finish_non_exhaustive()
    }
}

/// The gateway settings of one paid request: where to send its LLM calls and the
/// headers that log them against it.
///
/// Get it from the handler's
/// [`PaymentContext::observability`](crate::PaymentContext::observability). It is cheap
/// to clone, `Send + 'static` (move it into a stream or a task), and its `Debug` never
/// shows the gateway key.
///
/// ```
/// use actix_web::{post, web, HttpResponse};
/// use nvm_runtime::client::reqwest;
/// use nvm_runtime::{paid, PaymentContext};
///
/// #[paid(plan = "1234", credits = 10)]
/// #[post("/ask")]
/// async fn ask(q: web::Json<serde_json::Value>, payment: PaymentContext) -> HttpResponse {
///     let Ok(gateway) = payment.observability() else {
///         return HttpResponse::InternalServerError().body("no observability gateway");
///     };
///     let gateway = gateway.property("sessionId", "abc-123").expect("a valid header");
///     let request = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": q["query"]}]});
///     let answer = reqwest::Client::new()
///         .post(gateway.chat_completions_url())
///         .headers(gateway.headers().clone())
///         .bearer_auth(std::env::var("OPENAI_API_KEY").unwrap_or_default())
///         .header("content-type", "application/json")
///         .body(request.to_string())
///         .send()
///         .await;
///     match answer {
///         Ok(answer) => HttpResponse::Ok().body(answer.text().await.unwrap_or_default()),
///         Err(_) => HttpResponse::BadGateway().finish(),
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Observability {
    gateway: Gateway,
    headers: HeaderMap,
}

impl Observability {
    /// The gateway's OpenAI-compatible base URL, `{helicone}/jawn/v1/gateway/oai/v1`: the
    /// `base_url` of an OpenAI client.
    pub fn base_url(&self) -> &str {
        &self.gateway.inner.base_url
    }

    /// `{base_url}/chat/completions`.
    pub fn chat_completions_url(&self) -> String {
        format!("{}/chat/completions", self.base_url())
    }

    /// The manual logging endpoint, `{helicone}/jawn/v1/trace/custom/v1/log`.
    fn log_url(&self) -> &str {
        &self.gateway.inner.log_url
    }

    /// `Helicone-Auth` and the `Helicone-Property-*` headers: add them to every LLM call
    /// (an OpenAI client's default headers). `Helicone-Auth` carries the gateway key:
    /// never log these headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Adds a custom property, sent as `Helicone-Property-<name>: <value>` (a session
    /// id, a customer tier…); it replaces a property of the same name, the SDKs' own
    /// included.
    ///
    /// ```
    /// # fn demo(gateway: nvm_runtime::observability::Observability) -> Result<(), nvm_runtime::observability::ObservabilityError> {
    /// let gateway = gateway.property("sessionId", "abc-123")?;
    /// assert_eq!(gateway.headers()["helicone-property-sessionid"], "abc-123");
    /// # Ok(()) }
    /// ```
    pub fn property(mut self, name: &str, value: impl fmt::Display) -> Result<Self, ObservabilityError> {
        let value = value.to_string();
        let invalid = || ObservabilityProblem::InvalidProperty(name.to_owned());
        let header = HeaderName::try_from(format!("Helicone-Property-{name}")).map_err(|_| invalid())?;
        let value = HeaderValue::try_from(value).map_err(|_| invalid())?;
        self.headers.insert(header, value);
        Ok(self)
    }
}

impl fmt::Debug for Observability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown =
                    if name == "helicone-auth" { "<redacted>" } else { value.to_str().unwrap_or("<binary>") };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("Observability")
            .field("base_url", &self.base_url())
            .field("headers", &headers)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_is_urljoin() {
        assert_eq!(
            join("https://helicone.nevermined.dev", GATEWAY_PATH),
            "https://helicone.nevermined.dev/jawn/v1/gateway/oai/v1"
        );
        assert_eq!(join("http://127.0.0.1:9/", LOG_PATH), "http://127.0.0.1:9/jawn/v1/trace/custom/v1/log");
        // urljoin replaces the last segment of a base without a trailing slash.
        assert_eq!(join("http://h/x/y", GATEWAY_PATH), "http://h/x/jawn/v1/gateway/oai/v1");
    }
}

#[cfg(test)]
mod environment_tests {
    use crate::backend::BackendSettings;
    use crate::error::{ConfigError, ConfigProblem};

    // header {"alg":"none"}, payload {"sub":"0xabc","o11y":"k"}
    const JWT: &str = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.";

    fn helicone(prefix: &str, edit: impl FnOnce(&mut BackendSettings)) -> Result<String, ConfigError> {
        let mut settings = BackendSettings { api_key: Some(format!("{prefix}:{JWT}")), ..Default::default() };
        edit(&mut settings);
        settings.connect().map(|c| c.helicone_url)
    }

    #[test]
    fn each_environment_has_its_gateway() {
        for prefix in ["sandbox", "live", "sandbox-staging", "live-staging"] {
            assert_eq!(helicone(prefix, |_| ()).unwrap(), "https://helicone.nevermined.dev");
            // HELICONE_URL is the custom environment's only, as in the SDKs.
            let ignored = helicone(prefix, |s| s.custom_helicone_url = Some("http://elsewhere:1".into()));
            assert_eq!(ignored.unwrap(), "https://helicone.nevermined.dev");
        }
        // An unknown prefix: custom, HELICONE_URL when set, else the SDKs' default.
        assert_eq!(helicone("acme", |_| ()).unwrap(), "http://localhost:8585");
        let set = helicone("acme", |s| s.custom_helicone_url = Some("http://127.0.0.1:9/".into()));
        assert_eq!(set.unwrap(), "http://127.0.0.1:9/");
        // A local facilitator's key: its stand-in, at the backend's URL.
        let local = helicone("local", |s| s.backend_url = Some("http://127.0.0.1:7".into()));
        assert_eq!(local.unwrap(), "http://127.0.0.1:7");
        let local = helicone("local", |s| s.custom_backend_url = Some("http://127.0.0.1:8".into()));
        assert_eq!(local.unwrap(), "http://127.0.0.1:8");
        // The builder's setting wins everywhere.
        let explicit = helicone("live", |s| s.helicone_url = Some("https://gw.example".into()));
        assert_eq!(explicit.unwrap(), "https://gw.example");
        let bad = helicone("acme", |s| s.custom_helicone_url = Some("ftp://x".into()));
        assert!(matches!(bad, Err(ConfigError(ConfigProblem::InvalidHeliconeUrl(_)))), "{bad:?}");
    }

    #[test]
    fn a_key_without_o11y_gives_no_gateway_settings() {
        // payload {"sub":"0xabc"}
        let key: crate::backend::ApiKey =
            "sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyJ9.".parse().unwrap();
        let gateway =
            super::Gateway::new("https://helicone.nevermined.dev", &key, crate::Environment::Sandbox);
        let error = gateway.for_request(Some(&crate::wire::AgentRequest::default())).unwrap_err();
        assert_eq!(error, super::ObservabilityProblem::NoGatewayKey.into());
        assert!(error.to_string().contains("o11y"));
        let key: crate::backend::ApiKey = format!("sandbox:{JWT}").parse().unwrap();
        let gateway =
            super::Gateway::new("https://helicone.nevermined.dev", &key, crate::Environment::Sandbox);
        let error = gateway.for_request(Some(&crate::wire::AgentRequest::default())).unwrap_err();
        assert_eq!(error, super::ObservabilityProblem::IncompleteAgentRequest("agentRequest.balance").into());
        assert!(!format!("{gateway:?}").contains("\"k\""), "{gateway:?}");
    }
}
