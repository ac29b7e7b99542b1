//! The stand-in LLM observability gateway: the two endpoints of Nevermined's Helicone
//! gateway a seller calls, on the local facilitator's address, recording what they
//! receive.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header::{CONTENT_TYPE, HeaderValue};
use actix_web::web::{Bytes, Data};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{Value, json};

use super::faults::{Endpoint as Slot, Fault, Faults};

/// The answer of the stand-in's `chat/completions`, whatever was asked.
pub const CANNED_COMPLETION: &str = "This is the local gateway's answer.";

/// An endpoint of the stand-in gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GatewayEndpoint {
    /// `POST /jawn/v1/gateway/oai/v1/chat/completions`: OpenAI's chat completions, plain
    /// or streamed (`"stream": true`, server-sent events).
    ChatCompletions,
    /// `POST /jawn/v1/trace/custom/v1/log`: a manual log.
    Log,
}

impl GatewayEndpoint {
    /// The path.
    pub(crate) const fn path(self) -> &'static str {
        match self {
            GatewayEndpoint::ChatCompletions => "/jawn/v1/gateway/oai/v1/chat/completions",
            GatewayEndpoint::Log => "/jawn/v1/trace/custom/v1/log",
        }
    }

    /// The fault slot this endpoint uses in the gateway's own fault table.
    fn slot(self) -> Slot {
        match self {
            GatewayEndpoint::ChatCompletions => Slot::Verify,
            GatewayEndpoint::Log => Slot::Settle,
        }
    }
}

/// One call the stand-in gateway received: its endpoint, headers and JSON body
/// (`LocalFacilitatorExt::gateway_calls`; lent by `__private::local`).
///
/// `Debug` redacts `Authorization` and `Helicone-Auth`.
#[derive(Clone)]
#[non_exhaustive]
pub struct GatewayCall {
    /// The endpoint called.
    pub endpoint: GatewayEndpoint,
    /// Every header, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, as JSON (`null` if it was not JSON).
    pub body: Value,
}

impl GatewayCall {
    /// The value of header `name` (any case), when it was sent once or more (the first).
    ///
    /// ```
    /// use nvm_runtime::__private::local::{GatewayEndpoint, LocalFacilitatorExt as _};
    /// use nvm_runtime::local::LocalFacilitator;
    ///
    /// fn plans_logged(local: &LocalFacilitator) -> Vec<String> {
    ///     let calls = local.gateway_calls();
    ///     let logs = calls.iter().filter(|call| call.endpoint == GatewayEndpoint::Log);
    ///     logs.filter_map(|call| call.header("Helicone-Property-planId").map(str::to_owned)).collect()
    /// }
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for GatewayCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                let secret = n == "authorization" || n == "helicone-auth";
                (n.as_str(), if secret { "<redacted>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("GatewayCall")
            .field("endpoint", &self.endpoint)
            .field("headers", &headers)
            .finish_non_exhaustive()
    }
}

/// The gateway's state: what it received, and its faults.
#[derive(Debug, Default)]
pub(crate) struct Gateway {
    calls: Mutex<Vec<GatewayCall>>,
    serial: AtomicU64,
    pub(crate) faults: Faults,
}

impl Gateway {
    pub(crate) fn calls(&self) -> Vec<GatewayCall> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn inject(&self, endpoint: GatewayEndpoint, fault: Fault) {
        self.faults.inject_slot(endpoint.slot(), fault);
    }

    pub(crate) fn clear(&self) {
        self.faults.clear_all();
    }

    fn record(&self, endpoint: GatewayEndpoint, req: &HttpRequest, body: &[u8]) -> Value {
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let call = GatewayCall { endpoint, headers, body: body.clone() };
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(call);
        body
    }
}

/// The gateway's key check: `Helicone-Auth: Bearer local-o11y-…` (the `o11y` claim of a
/// key this facilitator issued), as Helicone refuses a call without its key: the 401 to
/// answer, if refused.
fn gateway_key(req: &HttpRequest, header: &str) -> Option<HttpResponse> {
    let value = req.headers().get(header).and_then(|v| v.to_str().ok()).unwrap_or("");
    match value.strip_prefix("Bearer ") {
        Some(key) if key.starts_with("local-o11y-") => None,
        _ => Some(HttpResponse::Unauthorized().json(json!({
            "error": format!("missing or unknown {header}: send `{header}: Bearer <the o11y claim of your NVM API key>` (nvm_runtime's Observability headers do)"),
        }))),
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// "Tokens" of the messages: their words (deterministic, enough to charge by).
fn prompt_tokens(body: &Value) -> u64 {
    body["messages"]
        .as_array()
        .map(|messages| messages.iter().map(|m| m["content"].as_str().map_or(0, words)).sum())
        .unwrap_or(0)
}

pub(crate) async fn chat_completions(gateway: Data<Gateway>, req: HttpRequest, body: Bytes) -> HttpResponse {
    let endpoint = GatewayEndpoint::ChatCompletions;
    let request = gateway.record(endpoint, &req, &body);
    let answer = || {
        if let Some(refused) = gateway_key(&req, "helicone-auth") {
            return refused;
        }
        if request["model"].as_str().is_none() || request["messages"].as_array().is_none() {
            return HttpResponse::BadRequest().json(json!({
                "error": {"message": "send an OpenAI chat completion request: {\"model\": \"…\", \"messages\": [{\"role\": \"user\", \"content\": \"…\"}]}", "type": "invalid_request_error"}
            }));
        }
        let n = gateway.serial.fetch_add(1, Ordering::Relaxed);
        let model = request["model"].as_str().unwrap_or_default();
        let id = format!("chatcmpl-local-{n}");
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let prompt = prompt_tokens(&request);
        let completion = words(CANNED_COMPLETION);
        let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
        if request["stream"].as_bool() == Some(true) {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            };
            let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
            let mut first = true;
            for word in CANNED_COMPLETION.split(' ') {
                let text = if first { word.to_owned() } else { format!(" {word}") };
                first = false;
                events.push(chunk(json!({"content": text}), Value::Null));
            }
            events.push(chunk(json!({}), json!("stop")));
            if request["stream_options"]["include_usage"].as_bool() == Some(true) {
                events.push(json!({"id": id, "object": "chat.completion.chunk", "created": created,
                                   "model": model, "choices": [], "usage": usage}));
            }
            let mut sse = String::new();
            for event in events {
                sse.push_str(&format!("data: {event}\n\n"));
            }
            sse.push_str("data: [DONE]\n\n");
            return HttpResponse::Ok()
                .insert_header((CONTENT_TYPE, HeaderValue::from_static("text/event-stream")))
                .body(sse);
        }
        HttpResponse::Ok().json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": CANNED_COMPLETION, "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        }))
    };
    gateway.faults.around(endpoint.slot(), answer).await
}

pub(crate) async fn log(gateway: Data<Gateway>, req: HttpRequest, body: Bytes) -> HttpResponse {
    let endpoint = GatewayEndpoint::Log;
    gateway.record(endpoint, &req, &body);
    let answer = || gateway_key(&req, "authorization").unwrap_or_else(|| HttpResponse::Ok().json(json!({})));
    gateway.faults.around(endpoint.slot(), answer).await
}
