//! The buyer's MCP side (feature `mcp`): [`PayingTools`] pays a paid tool's
//! `PaymentRequired` result by itself (read → mint → retry with
//! `_meta["x402/payment"]` → receipt), by the same rules as
//! [`PayingClient`](super::PayingClient); [`McpHttpClient`] is rmcp's streamable HTTP
//! client transport on this crate's `reqwest`, so a buyer's tree has one `reqwest`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use futures_core::stream::BoxStream;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientJsonRpcMessage, RequestMetaObject};
use rmcp::service::{Peer, RoleClient};
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
};
use serde_json::{Value, json};
use sse_stream::{Sse, SseStream};

use super::{ClientError, PaymentOutcome, Subscriber};
use crate::wire::AccessTokenExt as _;
use crate::wire::{CODE_SPENT, PaymentRequired, SETTLEMENT_UNKNOWN, SettleResponse};

/// The `_meta` key of the buyer's payment.
const PAYMENT_META: &str = "x402/payment";
/// The `_meta` key of the settlement's receipt.
const PAYMENT_RESPONSE_META: &str = "x402/payment-response";
/// The `_meta` key marking a replayed result.
const REPLAYED_META: &str = "nevermined/idempotent-replayed";
const SESSION_HEADER: &str = "mcp-session-id";
const LAST_EVENT_HEADER: &str = "last-event-id";
const EVENT_STREAM: &str = "text/event-stream";
const JSON: &str = "application/json";

/// Calls paid MCP tools through an rmcp client, paying a `PaymentRequired` result by
/// itself.
///
/// A call is sent unpaid first; a `PaymentRequired` result without a receipt came before
/// the tool ran (nothing was charged), so the client mints a token for the first accepted
/// plan (reusing one cached per plan and agent), sends the call again with the token's
/// payload in `_meta["x402/payment"]` and an x402 `payment-identifier` (one per call: a
/// retry of the call is replayed, never charged twice), and returns the result with its
/// receipt. A result that carries a receipt (`_meta["x402/payment-response"]`) means the
/// tool ran and settlement was attempted: it is never sent again.
///
/// ```no_run
/// use nvm_runtime::client::mcp::{McpHttpClient, PayingTools};
/// use nvm_runtime::client::{PaymentOutcome, Subscriber};
/// use rmcp::model::CallToolRequestParams;
/// use rmcp::transport::StreamableHttpClientTransport;
/// use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
/// use rmcp::ServiceExt;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let config = StreamableHttpClientTransportConfig::with_uri("http://127.0.0.1:3000/mcp");
/// let transport = StreamableHttpClientTransport::with_client(McpHttpClient::default(), config);
/// let session = ().serve(transport).await?;
/// let tools = PayingTools::new(Subscriber::from_env()?);
/// let mut call = CallToolRequestParams::new("ask");
/// call.arguments = serde_json::json!({"query": "hi"}).as_object().cloned();
/// let paid = tools.call(session.peer(), call).await?;
/// if let PaymentOutcome::Settled(receipt) = &paid.outcome
///     && let Some(credits) = &receipt.credits_redeemed
/// {
///     println!("{credits} credits redeemed");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PayingTools {
    subscriber: Arc<Subscriber>,
}

/// A tool call that may have been paid for: the result, what became of the payment,
/// and the call's idempotency key.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PaidToolCall {
    /// The tool's result, as the server sent it (its `_meta` holds the receipts).
    pub result: CallToolResult,
    /// What became of the payment (the same outcomes as an HTTP call).
    pub outcome: PaymentOutcome,
    /// The x402 `payment-identifier` the paid call was sent with.
    pub idempotency_key: String,
}

impl PaidToolCall {
    /// Whether the server answered with the stored result of an earlier call with the
    /// same key (charged once, then).
    pub fn replayed(&self) -> bool {
        self.result.meta.as_ref().and_then(|m| m.get(REPLAYED_META)).and_then(Value::as_bool) == Some(true)
    }
}

impl PayingTools {
    /// A client paying with `subscriber`'s tokens.
    pub fn new(subscriber: Subscriber) -> Self {
        PayingTools { subscriber: Arc::new(subscriber) }
    }

    /// The subscriber paying.
    pub fn subscriber(&self) -> &Subscriber {
        &self.subscriber
    }

    /// Calls the tool of `params` through `peer`, paying a `PaymentRequired` result
    /// once (and minting a fresh token once more when the first was refused as spent or
    /// came from the cache).
    pub async fn call(
        &self,
        peer: &Peer<RoleClient>,
        params: CallToolRequestParams,
    ) -> Result<PaidToolCall, ClientError> {
        let key = crate::wire::codec::unique_id();
        let sent_payment = params.meta.as_ref().is_some_and(|meta| meta.contains_key(PAYMENT_META));
        let first = call(peer, params.clone()).await?;
        let required = match read(&first, sent_payment) {
            Read::Done(outcome) => return Ok(PaidToolCall { result: first, outcome, idempotency_key: key }),
            Read::PaymentRequired(required) => required,
        };
        let accepted = required.first().cloned().ok_or(ClientError::NothingAccepted)?;
        let mut reminted = false;
        loop {
            let (token, cached) = self.subscriber.cached_or_minted(&accepted).await?;
            let mut payload = serde_json::to_value(token.decode().map_err(ClientError::Envelope)?)
                .map_err(|_| ClientError::TokenNotSendable)?;
            if let Some(payload) = payload.as_object_mut() {
                let extensions = payload.entry("extensions").or_insert_with(|| json!({}));
                if let Some(extensions) = extensions.as_object_mut() {
                    extensions.insert("payment-identifier".to_owned(), json!({"info": {"id": key}}));
                }
            }
            let mut paid = params.clone();
            paid.meta.get_or_insert_with(RequestMetaObject::default).insert(PAYMENT_META.to_owned(), payload);
            let result = call(peer, paid).await?;
            let outcome = match read(&result, true) {
                Read::Done(outcome) => outcome,
                Read::PaymentRequired(required) => {
                    let reason = required.error.unwrap_or_default();
                    if !reminted && (cached || reason.contains(CODE_SPENT)) {
                        tracing::info!(token = %token.hash(), "token refused before the tool ran; minting a fresh one");
                        self.subscriber.forget(&accepted);
                        reminted = true;
                        continue;
                    }
                    PaymentOutcome::Refused(reason)
                }
            };
            if outcome.must_not_pay_again() {
                tracing::warn!(token = %token.hash(), "settlement failed or its outcome is unknown after the tool ran; not paying again");
            }
            return Ok(PaidToolCall { result, outcome, idempotency_key: key });
        }
    }
}

async fn call(peer: &Peer<RoleClient>, params: CallToolRequestParams) -> Result<CallToolResult, ClientError> {
    peer.call_tool(params).await.map_err(|error| ClientError::Mcp(Box::new(error)))
}

/// What a tool result says of its payment.
enum Read {
    /// Nothing more to do: the outcome.
    Done(PaymentOutcome),
    /// Refused before the tool ran: pay (or pay again) for this.
    PaymentRequired(PaymentRequired),
}

/// Reads a tool result: a receipt (settlement attempted), a `PaymentRequired` without a
/// receipt (the tool did not run), or neither.
fn read(result: &CallToolResult, paid: bool) -> Read {
    let receipt = result.meta.as_ref().and_then(|meta| meta.get(PAYMENT_RESPONSE_META));
    if let Some(receipt) = receipt {
        let receipt = serde_json::from_value::<SettleResponse>(receipt.clone()).unwrap_or_else(|error| {
            SettleResponse {
                error_reason: Some(format!("unreadable receipt: {error}")),
                ..SettleResponse::default()
            }
        });
        return Read::Done(match receipt {
            receipt if receipt.success => PaymentOutcome::Settled(receipt),
            receipt if receipt.error_reason.as_deref() == Some(SETTLEMENT_UNKNOWN) => {
                PaymentOutcome::OutcomeUnknown(receipt)
            }
            receipt => PaymentOutcome::SettlementFailed(receipt),
        });
    }
    if result.is_error == Some(true)
        && let Some(required) = payment_required(result)
    {
        return Read::PaymentRequired(required);
    }
    Read::Done(if paid { PaymentOutcome::Unsettled } else { PaymentOutcome::NotRequired })
}

/// The `PaymentRequired` of a refused result: its `structuredContent`, else the JSON of
/// its first text content; one with no `accepts` is not a payment request.
fn payment_required(result: &CallToolResult) -> Option<PaymentRequired> {
    let structured = result
        .structured_content
        .as_ref()
        .and_then(|v| serde_json::from_value::<PaymentRequired>(v.clone()).ok());
    let required = structured.or_else(|| {
        let text = result.content.first()?.as_text()?.text.clone();
        serde_json::from_str::<PaymentRequired>(&text).ok()
    })?;
    (!required.accepts.is_empty()).then_some(required)
}

/// rmcp's streamable HTTP client transport on this crate's `reqwest` (0.12): use it with
/// `StreamableHttpClientTransport::with_client`, so that a buyer depends on one
/// `reqwest` (rmcp's own HTTP client is built on another major version).
#[derive(Debug, Clone, Default)]
pub struct McpHttpClient {
    http: reqwest::Client,
}

impl McpHttpClient {
    /// A transport client sending with `http` (its timeouts, proxies, TLS).
    pub fn new(http: reqwest::Client) -> Self {
        McpHttpClient { http }
    }
}

type Failure = StreamableHttpError<reqwest::Error>;

/// Adds the session, bearer token and custom headers to `request`.
fn with_headers(
    mut request: reqwest::RequestBuilder,
    session: Option<&str>,
    auth: Option<String>,
    custom: HashMap<http::HeaderName, http::HeaderValue>,
) -> reqwest::RequestBuilder {
    if let Some(session) = session {
        request = request.header(SESSION_HEADER, session);
    }
    if let Some(token) = auth {
        request = request.bearer_auth(token);
    }
    for (name, value) in custom {
        request = request.header(name, value);
    }
    request
}

fn media_type(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get(reqwest::header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

fn event_stream(response: reqwest::Response) -> BoxStream<'static, Result<Sse, SseError>> {
    Box::pin(SseStream::from_bytes_stream(response.bytes_stream()))
}

impl StreamableHttpClient for McpHttpClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, Failure> {
        let body = serde_json::to_vec(&message)?;
        let request = self
            .http
            .post(uri.as_ref())
            .header(reqwest::header::ACCEPT, format!("{EVENT_STREAM}, {JSON}"))
            .header(reqwest::header::CONTENT_TYPE, JSON)
            .body(body);
        let request = with_headers(request, session_id.as_deref(), auth_header, custom_headers);
        let response = request.send().await.map_err(StreamableHttpError::Client)?;
        let status = response.status();
        if status == reqwest::StatusCode::ACCEPTED || status == reqwest::StatusCode::NO_CONTENT {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == reqwest::StatusCode::NOT_FOUND && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        let session = response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let kind = media_type(&response);
        match kind.as_deref() {
            Some(EVENT_STREAM) if status.is_success() => {
                Ok(StreamableHttpPostResponse::Sse(event_stream(response), session))
            }
            Some(JSON) => {
                let bytes = response.bytes().await.map_err(StreamableHttpError::Client)?;
                if bytes.is_empty() && status.is_success() {
                    return Ok(StreamableHttpPostResponse::Accepted);
                }
                match serde_json::from_slice(&bytes) {
                    Ok(message) => Ok(StreamableHttpPostResponse::Json(message, session)),
                    Err(_) if !status.is_success() => Err(StreamableHttpError::UnexpectedServerResponse(
                        Cow::Owned(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes))),
                    )),
                    Err(error) => Err(error.into()),
                }
            }
            _ if !status.is_success() => {
                let text = response.text().await.unwrap_or_default();
                Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(format!(
                    "HTTP {status}: {text}"
                ))))
            }
            _ if matches!(message, ClientJsonRpcMessage::Notification(_)) => {
                Ok(StreamableHttpPostResponse::Accepted)
            }
            other => Err(StreamableHttpError::UnexpectedContentType(other.map(str::to_owned))),
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
    ) -> Result<(), Failure> {
        let request =
            with_headers(self.http.delete(uri.as_ref()), Some(&session_id), auth_header, custom_headers);
        let response = request.send().await.map_err(StreamableHttpError::Client)?;
        if response.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED {
            return Ok(());
        }
        response.error_for_status().map_err(StreamableHttpError::Client)?;
        Ok(())
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, Failure> {
        let mut request =
            self.http.get(uri.as_ref()).header(reqwest::header::ACCEPT, format!("{EVENT_STREAM}, {JSON}"));
        if let Some(last) = last_event_id {
            request = request.header(LAST_EVENT_HEADER, last);
        }
        let request = with_headers(request, session_id.as_deref(), auth_header, custom_headers);
        let response = request.send().await.map_err(StreamableHttpError::Client)?;
        if response.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportSse);
        }
        let response = response.error_for_status().map_err(StreamableHttpError::Client)?;
        match media_type(&response).as_deref() {
            Some(EVENT_STREAM) | Some(JSON) => Ok(event_stream(response)),
            other => Err(StreamableHttpError::UnexpectedContentType(other.map(str::to_owned))),
        }
    }
}
