//! One paid tool call: what it carries (the hidden [`PaidCall`] argument of a `#[paid]`
//! tool), the call as the flow's [`Host`], and [`serve`]: price, verify, run the tool,
//! settle a completed result, answer with the receipt or the `PaymentRequired` result.

use std::future::Future;
use std::sync::Arc;

use base64::Engine as _;
use rmcp::ErrorData;
use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{CallToolResponse, CallToolResult, JsonObject};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::render;
use crate::actix::Payments;
use crate::actix::paywall::catch_unwind;
use crate::error::{ConfigError, IdempotencyError, PaymentError, PaymentProblem, Refusal};
use crate::flow::idempotency::{self, KeyedRequest, StoredResponse};
use crate::flow::telemetry::{Outcome, Telemetry};
use crate::flow::{self, Admission, Host, Kept, Offer, PaymentState, PendingSettlement, Settlement, Terms};
use crate::wire::{IDEMPOTENCY_KEY, PaymentRequired, SettleResponse, VerifyResponse};

/// The `_meta` key of the buyer's payment: the decoded x402 `PaymentPayload`.
pub(crate) const PAYMENT_META: &str = "x402/payment";
/// The most bytes of a `_meta["x402/payment"]` value, as compact JSON: 64 KiB.
pub(crate) const MAX_PAYMENT_META_LEN: usize = 64 * 1024;
/// The x402 extension whose `info.id` is an idempotency key.
const PAYMENT_IDENTIFIER: &str = "payment-identifier";

/// The settings of an MCP endpoint, carried to each call by the bridge.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `mcp://<server_name>/tools/<tool>`.
    pub(crate) server_name: String,
    /// Lower-case HTTP headers a token may come in (`Bearer ` removed).
    pub(crate) token_headers: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { server_name: "mcp-server".to_owned(), token_headers: vec!["authorization".to_owned()] }
    }
}

/// The payment side of one tool call, taken from rmcp's call context before the tool's
/// own arguments are parsed: the hidden argument of a `#[paid]` tool. Not a public API.
pub struct PaidCall {
    payments: Option<Payments>,
    settings: Arc<Settings>,
    name: String,
    arguments: JsonObject,
    /// `_meta["x402/payment"]`, as sent.
    payment: Option<Value>,
    /// The token of the first configured HTTP header that has one.
    header_token: Option<Vec<u8>>,
    /// The `Idempotency-Key` header, or the payment's `payment-identifier` id.
    idempotency_key: Option<Result<String, IdempotencyError>>,
    cancelled: CancellationToken,
    state: Arc<PaymentState>,
    /// The path and headers of the HTTP request that carried the call, kept when the
    /// configuration has hooks (they are shown that request).
    hooked: Option<(String, http::HeaderMap)>,
}

/// What a hook of the `Payments` configuration is told of a paid MCP tool call: the
/// hooks take the HTTP request that carried the call (`POST /mcp` and its headers), and
/// find this in its extensions.
///
/// ```
/// use actix_web::HttpMessage;
/// use nvm_runtime::Payments;
/// use nvm_runtime::mcp::ToolCall;
///
/// let builder = Payments::builder().after_settle(|req, credits, _receipt| {
///     if let Some(call) = req.extensions().get::<ToolCall>() {
///         println!("tool {} settled {credits} credits", call.name());
///     }
/// });
/// # let _ = builder;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    name: String,
    resource: String,
}

impl ToolCall {
    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The logical resource URL paid for, `mcp://<server>/tools/<name>`.
    pub fn resource(&self) -> &str {
        &self.resource
    }
}

impl std::fmt::Debug for PaidCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaidCall").field("tool", &self.name).finish_non_exhaustive()
    }
}

impl<S> FromContextPart<ToolCallContext<'_, S>> for PaidCall {
    fn from_context_part(context: &mut ToolCallContext<'_, S>) -> Result<Self, ErrorData> {
        Ok(PaidCall::of(context))
    }
}

impl PaidCall {
    /// Reads the call's payment and attaches a fresh payment state to the call's
    /// extensions, where the tool's `PaymentContext` finds it.
    pub(crate) fn of<S>(context: &mut ToolCallContext<'_, S>) -> Self {
        let request = &mut context.request_context;
        let parts = request.extensions.get::<http::request::Parts>();
        let payments = parts.and_then(|p| p.extensions.get::<Payments>()).cloned();
        let settings = parts.and_then(|p| p.extensions.get::<Arc<Settings>>()).cloned().unwrap_or_default();
        let header_token = parts.and_then(|parts| {
            settings.token_headers.iter().find_map(|name| {
                let value = parts.headers.get(name.as_str())?.as_bytes();
                let value = value
                    .strip_prefix(b"Bearer ")
                    .or_else(|| value.strip_prefix(b"bearer "))
                    .unwrap_or(value);
                (!value.is_empty()).then(|| value.to_vec())
            })
        });
        let payment = request.meta.get(PAYMENT_META).cloned();
        let header_key = parts.map(|parts| {
            let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
            match (values.next(), values.next()) {
                (None, _) => None,
                (Some(value), None) => Some(idempotency::parse_key(value.as_bytes()).map(str::to_owned)),
                (Some(_), Some(_)) => Some(Err(IdempotencyError::InvalidKey(
                    "send exactly one Idempotency-Key header".to_owned(),
                ))),
            }
        });
        let idempotency_key = header_key.flatten().or_else(|| payment_identifier(payment.as_ref()));
        let hooked = parts
            .filter(|_| payments.as_ref().is_some_and(|p| p.hooks().any_for_tools()))
            .map(|parts| (parts.uri.path().to_owned(), parts.headers.clone()));
        let state = Arc::new(PaymentState::default());
        request.extensions.insert(Arc::clone(&state));
        PaidCall {
            payments,
            settings,
            name: context.name.to_string(),
            arguments: context.arguments.clone().unwrap_or_default(),
            payment,
            header_token,
            idempotency_key,
            cancelled: request.ct.clone(),
            state,
            hooked,
        }
    }

    /// The tool's arguments.
    pub(crate) fn arguments(&self) -> &JsonObject {
        &self.arguments
    }

    /// The tool's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// `payment.extensions["payment-identifier"].info.id`, x402's idempotency key.
fn payment_identifier(payment: Option<&Value>) -> Option<Result<String, IdempotencyError>> {
    let id = payment?.get("extensions")?.get(PAYMENT_IDENTIFIER)?.get("info")?.get("id")?;
    Some(match id.as_str() {
        Some(id) => idempotency::parse_key(id.as_bytes()).map(str::to_owned),
        None => Err(IdempotencyError::InvalidKey("the payment-identifier id is not a string".to_owned())),
    })
}

/// A tool call as the flow sees it: `POST mcp://<server>/tools/<name>`, its token
/// from `_meta` (re-encoded as the token string the facilitator reads) or a header;
/// the configuration's hooks are run with the HTTP request that carried it.
struct ToolHost<'a> {
    url: String,
    token: Option<&'a [u8]>,
    payments: &'a Payments,
    call: &'a PaidCall,
}

impl ToolHost<'_> {
    /// Runs `hook` with the request the hooks are shown, when they are set.
    fn hook(&self, hook: impl FnOnce(&crate::actix::Hooks, &actix_web::HttpRequest)) {
        let Some((path, headers)) = &self.call.hooked else { return };
        let mut request = actix_web::test::TestRequest::post().uri(path);
        for (name, value) in headers {
            request = request.insert_header((name.as_str(), value.as_bytes()));
        }
        let request = request.to_http_request();
        actix_web::HttpMessage::extensions_mut(&request)
            .insert(ToolCall { name: self.call.name.clone(), resource: self.url.clone() });
        hook(self.payments.hooks(), &request);
    }
}

impl Host for ToolHost<'_> {
    fn method(&self) -> &str {
        "POST"
    }

    fn path(&self) -> &str {
        &self.url
    }

    fn token_header(&self, index: usize) -> impl Iterator<Item = &[u8]> {
        self.token.filter(|_| index == 0).into_iter()
    }

    fn before_verify(&self, envelope: &PaymentRequired) {
        self.hook(|hooks, req| hooks.before_verify(req, envelope));
    }

    fn after_verify(&self, verification: &VerifyResponse) {
        self.hook(|hooks, req| hooks.after_verify(req, verification));
    }

    fn after_settle(&self, credits: u64, receipt: &SettleResponse) {
        self.hook(|hooks, req| hooks.after_settle(req, credits, receipt));
    }

    fn settlement_unknown(&self, record: &PendingSettlement) {
        self.hook(|hooks, req| hooks.settlement_unknown(req, record));
    }
}

/// The token of `_meta["x402/payment"]`: the payload as compact JSON in unpadded
/// base64url (what Nevermined's SDKs send the facilitator); refused when it is not an
/// object or longer than 64 KiB.
fn meta_token(payment: &Value) -> Result<String, PaymentError> {
    if !payment.is_object() {
        return Err(PaymentProblem::MalformedToken(format!(
            "`_meta[\"{PAYMENT_META}\"]` must be the x402 payment payload, a JSON object"
        ))
        .into());
    }
    let json = serde_json::to_vec(payment).unwrap_or_default();
    if json.len() > MAX_PAYMENT_META_LEN {
        return Err(PaymentProblem::MalformedToken(format!(
            "`_meta[\"{PAYMENT_META}\"]` is {} bytes long; at most {MAX_PAYMENT_META_LEN} are accepted",
            json.len()
        ))
        .into());
    }
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
}

/// Serves one paid tool call on `terms` for `credits` (or the route's misconfiguration):
/// verifies before `tool` runs, settles a completed result that is not `isError`
/// before it is sent, answers a refusal as the `PaymentRequired` tool result.
pub(crate) async fn serve<F>(
    call: PaidCall,
    terms: &Terms,
    credits: Result<u64, ConfigError>,
    tool: F,
) -> Result<CallToolResponse, ErrorData>
where
    F: Future<Output = Result<CallToolResponse, ErrorData>> + Send,
{
    let Some(payments) = call.payments.clone() else {
        tracing::error!(tool = %call.name, "a paid MCP tool was called without Payments: serve the MCP endpoint with nvm_runtime::mcp::McpService in an App that has .app_data(payments)");
        return Err(ErrorData::internal_error(
            "this paid tool is misconfigured: the server has no payment configuration",
            None,
        ));
    };
    let url = format!("mcp://{}/tools/{}", call.settings.server_name, call.name);
    let (payments, call, url) = (&payments, &call, url.as_str());
    let seller = payments.seller();
    let state = &call.state;
    let telemetry = state.telemetry.get_or_init(|| Telemetry::start("POST", url.to_owned()));
    let ids = terms.plan_id(&call.name).and_then(|plan| Ok((plan, terms.agent_id(&call.name)?)));
    let credits = credits.and_then(|credits| ids.map(|ids| (ids, credits)));
    let ((plan_id, agent_id), credits) = match credits {
        Ok(priced) => priced,
        Err(error) => return refused(state, telemetry, &flow::misconfigured(url, error)),
    };
    let offer = Offer { plan_id: &plan_id, agent_id: agent_id.as_deref(), terms };
    let token = match call.payment.as_ref().map(meta_token) {
        Some(Ok(token)) => Some(token.into_bytes()),
        Some(Err(error)) if credits > 0 => {
            let host = ToolHost { url: url.to_owned(), token: None, payments, call };
            let envelope = flow::envelope(seller, &host, &offer).await;
            return refused(state, telemetry, &Refusal::payment_required(envelope, error));
        }
        Some(Err(_)) => None,
        None => call.header_token.clone(),
    };
    let host = ToolHost { url: url.to_owned(), token: token.as_deref(), payments, call };
    let keyed = match keyed(payments, call, url, credits, &host) {
        Ok(keyed) => keyed,
        Err(error) => {
            return refused(state, telemetry, &Refusal::Failed(PaymentProblem::Idempotency(error).into()));
        }
    };
    match flow::admit(seller, &host, &offer, credits, state, keyed.as_ref()).await {
        Ok(Admission::Run) => {}
        Ok(Admission::Replay(stored)) => {
            telemetry.finish(Outcome::Replayed, 0);
            return Ok(render::replay(&stored, offer.plan_id).into());
        }
        Err(refusal) => return refused(state, telemetry, &refusal),
    }
    // Cancelled (`notifications/cancelled`, or the client left): the tool's future is
    // dropped where it waits, nothing is settled, as for an HTTP client that resets.
    let ran = {
        let mut cancelled = std::pin::pin!(call.cancelled.cancelled());
        let mut tool = std::pin::pin!(catch_unwind(tool));
        std::future::poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(None);
            }
            tool.as_mut().poll(cx).map(Some)
        })
        .await
    };
    let finish = |outcome, settled| telemetry.finish(outcome, settled);
    let result = match ran {
        None => {
            tracing::info!(tool = %call.name, "tool call cancelled: nothing settled");
            finish(Outcome::Abandoned, 0);
            release(state).await;
            return Err(ErrorData::internal_error("the tool call was cancelled", None));
        }
        Some(Err(_panic)) => {
            tracing::error!(tool = %call.name, "the paid tool panicked: nothing settled");
            finish(Outcome::HandlerFailed, 0);
            release(state).await;
            return Err(ErrorData::internal_error("the tool failed", None));
        }
        Some(Ok(Ok(CallToolResponse::Complete(result)))) if result.is_error != Some(true) => result,
        Some(Ok(other)) => {
            if state.verified.get().is_some() {
                tracing::info!(tool = %call.name, "the tool did not complete successfully: nothing settled");
            }
            finish(if state.verified.get().is_some() { Outcome::HandlerFailed } else { Outcome::Free }, 0);
            release(state).await;
            return other;
        }
    };
    let max = seller.idempotency.max_response_body_len();
    let mut claim = state.take_claim();
    let kept = claim.as_mut().map(|claim| Kept { claim, answer: stored(&result, max) });
    let settlement = flow::settle(seller, &host, state, 200, kept, false).await;
    let (outcome, settled) = match &settlement {
        Settlement::None => (if state.verified.get().is_some() { Outcome::Paid } else { Outcome::Free }, 0),
        Settlement::Settled(receipt) => (Outcome::Paid, receipt.credits_redeemed_u64()),
        Settlement::Deferred(_) => (Outcome::Deferred, 0),
        Settlement::FailedDelivered(_) => (Outcome::SettleFailed, 0),
        Settlement::Refused(refusal) => (Outcome::of(refusal), 0),
    };
    finish(outcome, settled);
    let keep = crate::actix::settlement::keeps_answer(&settlement, actix_web::http::StatusCode::OK);
    let plan = offer.plan_id;
    let answer = match settlement {
        Settlement::None => result,
        Settlement::Settled(receipt)
        | Settlement::Deferred(receipt)
        | Settlement::FailedDelivered(receipt) => render::with_receipt(result, &receipt, plan),
        Settlement::Refused(refusal) => render::refusal(&refusal, plan),
    };
    if let Some(claim) = claim {
        if keep {
            idempotency::complete(&seller.idempotency, claim, stored(&answer, max)).await;
        } else {
            idempotency::release(claim).await;
        }
    }
    Ok(answer.into())
}

/// A tool result as kept for replay: its JSON, when at most `max` bytes long.
fn stored(result: &CallToolResult, max: usize) -> StoredResponse {
    let body = serde_json::to_vec(result).unwrap_or_default();
    StoredResponse {
        status: 200,
        headers: Vec::new(),
        body: (body.len() <= max).then(|| base64::engine::general_purpose::STANDARD.encode(&body)),
        receipt: None,
    }
}

/// A refusal before the tool ran, as its tool result: the claim (if any) released, the
/// outcome reported.
fn refused(
    state: &PaymentState,
    telemetry: &Telemetry,
    refusal: &Refusal,
) -> Result<CallToolResponse, ErrorData> {
    drop(state.take_claim());
    telemetry.finish(Outcome::of(refusal), 0);
    Ok(render::refusal(refusal, "").into())
}

/// Releases the call's idempotency claim: nothing was charged, a retry runs afresh.
async fn release(state: &PaymentState) {
    if let Some(claim) = state.take_claim() {
        idempotency::release(claim).await;
    }
}

/// The call's idempotency key and fingerprint (tool and arguments), when it has one,
/// the configuration remembers keys, and the call is paid with a token.
fn keyed(
    payments: &Payments,
    call: &PaidCall,
    url: &str,
    credits: u64,
    host: &ToolHost<'_>,
) -> Result<Option<KeyedRequest>, IdempotencyError> {
    let config = &payments.seller().idempotency;
    let Some(key) = &call.idempotency_key else { return Ok(None) };
    if credits == 0 || !config.is_enabled() || host.token.is_none() {
        return Ok(None);
    }
    let key = key.clone()?;
    let arguments = serde_json::to_vec(&call.arguments).unwrap_or_default();
    Ok(Some(KeyedRequest::new(&key, url, "POST", url, &arguments)))
}
