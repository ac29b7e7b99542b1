//! What `#[paid]` expansions call. Not a public API: names and shapes change without
//! notice.

pub use core::option::Option::{self, None, Some};

pub use actix_web::{HttpRequest, HttpResponse};
pub use inventory;

pub use crate::actix::credits::future::CreditsFuture;
pub use crate::actix::paid::{Paid, serve};
pub use crate::actix::route::{Credits, Route, RouteEntry, RouteSpec};
pub use crate::flow::{Id, SettlePoint, Terms, cache_control_problem};

pub use crate::__nvm_paid_body as body;

/// What `#[paid]` expansions on MCP tools call.
#[cfg(feature = "mcp")]
pub mod mcp {
    pub use rmcp::model::JsonObject;

    pub use crate::mcp::call::PaidCall;
    pub use crate::mcp::tools::{
        PaidTool, ToolAnswer, ToolCredits, ToolEntry, by_arguments, resolve_credits, serve,
    };
}

/// The body of a `#[paid]` outer function, written back as is, in a block: a routing
/// attribute above `#[paid]` then parses and copies one macro call, not every token of
/// the handler.
#[doc(hidden)]
#[macro_export]
macro_rules! __nvm_paid_body {
    ($($body:tt)*) => {{ $($body)* }};
}

use std::any::Any;

use crate::actix::credits::CreditsSource;

/// Computes a request's credits from any [`CreditsSource`].
pub fn resolve_credits<'a, M, S: CreditsSource<M> + 'a>(
    source: S,
    req: &'a HttpRequest,
) -> CreditsFuture<'a> {
    source.resolve(req)
}

/// The fixed amount of a credits expression: `Some` for a `u64` const, `None` for a
/// function. Deliberately free of the [`CreditsSource`] bound, so a wrong type is
/// reported once (by [`resolve_credits`]), not twice.
pub fn fixed_credits<S: Any>(source: S) -> Option<u64> {
    (&source as &dyn Any).downcast_ref::<u64>().copied()
}

/// Gives a synchronous credits closure its argument type.
pub fn sync_credits<F: Fn(&HttpRequest) -> u64>(f: F) -> F {
    f
}

/// Gives an async credits closure its argument type.
pub fn async_credits<F: std::ops::AsyncFn(&HttpRequest) -> u64>(f: F) -> F {
    f
}

/// What `plan = …` and `agent = …` expressions may yield.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a plan or agent id",
    label = "expected a `&str` or a `String`",
    note = "write `plan = \"1234…\"`, `plan = env(\"NVM_PLAN_ID\")`, or an expression yielding `&str` or `String`"
)]
pub trait PlanId {
    /// The id as a `String`.
    fn into_id(self) -> String;
}

impl PlanId for &str {
    fn into_id(self) -> String {
        self.to_owned()
    }
}

impl PlanId for String {
    fn into_id(self) -> String {
        self
    }
}

impl PlanId for &String {
    fn into_id(self) -> String {
        self.clone()
    }
}

/// Turns a plan or agent expression into its id.
pub fn plan_value<P: PlanId>(p: P) -> String {
    p.into_id()
}

/// The protocol's inner parts, for this repository's own tests, fuzzers and benchmarks
/// (which build tokens and facilitator calls by hand). Not a public API.
pub mod wire {
    pub use crate::wire::envelope::EnvelopeBuilder;
    pub use crate::wire::messages::{
        BackendError, CODE_FORGED, CODE_SPENT, CODE_WRONG_RESOURCE, FacilitatorRequest, PermissionsRequest,
        PermissionsResponse,
    };
    pub use crate::wire::token::{
        AccessTokenExt, Authorization, PaymentPayload, ResourceBinding, SignedPayload, TokenHash,
    };

    /// The receipt of the last `payment-response` event of a text of server-sent
    /// events, as `PaidStream` reads it.
    pub fn event_stream_receipt(text: &str) -> Option<crate::wire::SettleResponse> {
        crate::client::event_stream_receipt(text)
    }

    /// The base64 JSON header codec.
    pub mod codec {
        pub use crate::wire::codec::{
            MAX_HEADER_LEN, Malformed, decode_base64, decode_json_header, encode_json_header,
            encode_url_safe, hex,
        };
    }
}

/// The facilitator client and the backend's settings, for this repository's own tests and
/// benchmarks (which call the facilitator directly). Not a public API.
pub mod backend {
    pub use crate::backend::{ApiKey, DEFAULT_TIMEOUT, Facilitator, PlanScheme, SettleOutcome};
}

/// The local facilitator's controls beyond a user's test, for this repository's own
/// tests, benchmarks and the `nvm-local-facilitator` binary (a fixed port, more plans and accounts, tokens minted in-process, the stand-in gateway's calls
/// and faults). Not a public API.
#[cfg(feature = "local")]
pub mod local {
    pub use crate::local::gateway::{CANNED_COMPLETION, GatewayCall, GatewayEndpoint};
    pub use crate::local::kit::{
        DEFAULT_CREDITS, LocalFacilitatorExt, LocalInfo, LocalPlan, MintOptions, PlanSpec, start_on,
    };
}

/// The observability gateway's headers, for this repository's tests (which compare them
/// with payments-py's). Not a public API.
pub mod observability {
    use reqwest::header::HeaderMap;

    use crate::Environment;
    use crate::observability::ObservabilityError;

    /// The headers payments-py's `get_default_helicone_headers` builds for a verify
    /// answer's `agentRequest` object (JSON): what
    /// [`PaymentContext::observability`](crate::PaymentContext::observability) sends.
    ///
    /// ```
    /// use nvm_runtime::Environment;
    /// use nvm_runtime::__private::observability::helicone_headers;
    ///
    /// let agent_request = serde_json::json!({
    ///     "agentRequestId": "r-1", "agentName": "Echo", "agentId": "42", "batch": false,
    ///     "balance": {"planId": "7", "planName": "Pro", "planType": "credits",
    ///                 "holderAddress": "0xbuyer", "pricePerCredit": 0.00001}
    /// });
    /// let headers = helicone_headers("o11y-key", "0xseller", Environment::Sandbox, &agent_request)?;
    /// assert_eq!(headers["helicone-auth"], "Bearer o11y-key");
    /// assert_eq!(headers["helicone-property-consumeraddress"], "0xbuyer");
    /// assert_eq!(headers["helicone-property-pricepercredit"], "1e-05");
    /// assert_eq!(headers["helicone-property-environmentname"], "sandbox");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn helicone_headers(
        gateway_key: &str,
        account: &str,
        environment: Environment,
        agent_request: &serde_json::Value,
    ) -> Result<HeaderMap, ObservabilityError> {
        let agent_request = serde_json::from_value(agent_request.clone()).map_err(|_| {
            crate::observability::ObservabilityProblem::IncompleteAgentRequest("agentRequest")
        })?;
        crate::observability::helicone::helicone_headers(gateway_key, account, environment, &agent_request)
    }

    /// The facilitator's verify answer of a paid request, as JSON (its `agentRequest`
    /// is what the observability headers are built from).
    pub fn verification(payment: &crate::PaymentContext) -> serde_json::Value {
        serde_json::to_value(payment.verification()).unwrap_or_default()
    }
}
