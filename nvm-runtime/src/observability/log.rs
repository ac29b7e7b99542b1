//! Manual logging: an LLM call that did not go through the gateway, recorded against the
//! paid request (payments-py's `with_manual_logging`), off the response path.

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use super::Observability;

/// Tokens an LLM call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// One LLM call to log with [`Observability::log`]: the model, what was asked, what it
/// answered and the tokens it used, timed from [`LlmCall::new`] to
/// [`LlmCall::output`].
///
/// ```
/// use nvm_runtime::observability::LlmCall;
///
/// let call = LlmCall::new("llama-3-8b", serde_json::json!({"query": "hi"}));
/// // … run the model …
/// let call = call.output(serde_json::json!("hello")).usage(3, 1);
/// # let _ = call;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct LlmCall {
    model: String,
    input: Value,
    output: Value,
    usage: Usage,
    started: SystemTime,
    ended: Option<SystemTime>,
    id_prefix: String,
}

impl LlmCall {
    /// A call to `model` with `input` (the SDK's `input_data`), started now.
    pub fn new(model: impl Into<String>, input: Value) -> Self {
        LlmCall {
            model: model.into(),
            input,
            output: Value::Null,
            usage: Usage::default(),
            started: SystemTime::now(),
            ended: None,
            id_prefix: "nvm".to_owned(),
        }
    }

    /// What the model answered; the call ends now.
    pub fn output(mut self, output: Value) -> Self {
        self.output = output;
        self.ended = Some(SystemTime::now());
        self
    }

    /// The tokens it used: `prompt_tokens` in, `completion_tokens` out (their sum is
    /// logged as `total_tokens`).
    pub fn usage(mut self, prompt_tokens: u64, completion_tokens: u64) -> Self {
        self.usage = Usage { prompt_tokens, completion_tokens };
        self
    }

    /// When it started, if not when [`LlmCall::new`] was called.
    pub fn started_at(mut self, started: SystemTime) -> Self {
        self.started = started;
        self
    }

    /// The prefix of the logged response id (`<prefix>-<ms>`; the SDK's
    /// `response_id_prefix`), `nvm` by default.
    pub fn id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.id_prefix = prefix.into();
        self
    }

    /// The body Helicone's custom log endpoint takes (the shape of payments-py's
    /// `create_helicone_payload` and `create_helicone_response`, sent as
    /// `HeliconeManualLogger.send_log` sends them). `headers` are the properties, the
    /// gateway key left out.
    fn body(&self, properties: Value) -> Value {
        let ended = self.ended.unwrap_or_else(SystemTime::now);
        let millis = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let end_ms = millis(ended);
        let timing = |t: SystemTime| {
            let ms = millis(t);
            json!({"seconds": ms / 1000, "milliseconds": ms % 1000})
        };
        let dumps = |v: &Value| serde_json::to_string(v).unwrap_or_default();
        json!({
            "providerRequest": {
                "url": "custom-model-nopath",
                "json": {
                    "model": self.model,
                    "temperature": 1.0,
                    "top_p": 1.0,
                    "frequency_penalty": 0.0,
                    "presence_penalty": 0.0,
                    "n": 1,
                    "stream": false,
                    "messages": [{"role": "user", "content": dumps(&self.input)}],
                },
                "meta": {},
            },
            "providerResponse": {
                "headers": properties,
                "status": 200,
                "json": {
                    "id": format!("{}-{end_ms}", self.id_prefix),
                    "object": "chat.completion",
                    "created": end_ms / 1000,
                    "model": self.model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": dumps(&self.output), "refusal": null, "annotations": []},
                        "logprobs": null,
                        "finish_reason": "stop",
                    }],
                    "usage": {
                        "prompt_tokens": self.usage.prompt_tokens,
                        "completion_tokens": self.usage.completion_tokens,
                        "total_tokens": self.usage.prompt_tokens.saturating_add(self.usage.completion_tokens),
                        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                        "completion_tokens_details": {
                            "reasoning_tokens": 0, "audio_tokens": 0,
                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
                        },
                    },
                    "service_tier": "default",
                    "system_fingerprint": format!("fp_{end_ms}"),
                    "_type": "unknown",
                    "toolName": "unknown",
                },
                "textBody": null,
            },
            "timing": {"startTime": timing(self.started), "endTime": timing(ended), "timeToFirstToken": null},
        })
    }
}

/// What became of a manual log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogOutcome {
    /// The gateway answered 2xx.
    Sent,
    /// The gateway answered another status, timed out or could not be reached.
    Failed,
    /// Not sent: no Tokio runtime to run it on, or no HTTP client could be built.
    NotSent,
}

impl LogOutcome {
    fn as_str(self) -> &'static str {
        match self {
            LogOutcome::Sent => "sent",
            LogOutcome::Failed => "failed",
            LogOutcome::NotSent => "not_sent",
        }
    }
}

/// The outcome of a manual log: `NotSent` when it never started, else what its task
/// (which runs whether or not this is awaited) ended with.
async fn outcome_of(handle: Option<tokio::task::JoinHandle<LogOutcome>>) -> LogOutcome {
    match handle {
        None => LogOutcome::NotSent,
        Some(handle) => handle.await.unwrap_or(LogOutcome::Failed),
    }
}

fn count(outcome: LogOutcome) -> LogOutcome {
    #[cfg(feature = "metrics")]
    metrics::counter!("nvm_llm_logs_total", "outcome" => outcome.as_str()).increment(1);
    match outcome {
        LogOutcome::Sent => tracing::debug!(outcome = outcome.as_str(), "LLM call logged"),
        _ => tracing::warn!(
            outcome = outcome.as_str(),
            "an LLM call could not be logged (the paid answer is not affected)"
        ),
    }
    outcome
}

impl Observability {
    /// Logs `call` against this paid request at the gateway's manual logging endpoint
    /// (`{helicone}/jawn/v1/trace/custom/v1/log`), on a task of its own: the paid answer
    /// never waits for it, and a gateway that is down, slow or failing changes nothing
    /// for the buyer. The task starts before this returns and runs whether or not the
    /// returned future is awaited (dropping it does not cancel the log): await it only
    /// to learn the [`LogOutcome`].
    /// Every outcome is counted (`nvm_llm_logs_total{outcome}` with the feature
    /// `metrics`: `sent`, `failed`, `not_sent`); a failure is a warning in the logs
    /// (without the key or the call's content).
    ///
    /// ```
    /// use actix_web::{post, HttpResponse};
    /// use nvm_runtime::observability::LlmCall;
    /// use nvm_runtime::{paid, PaymentContext};
    ///
    /// #[paid(plan = "1234", credits = 5)]
    /// #[post("/local-model")]
    /// async fn local_model(payment: PaymentContext) -> HttpResponse {
    ///     let call = LlmCall::new("llama-3-8b", serde_json::json!({"query": "hi"}));
    ///     let answer = "hello"; // your model's answer
    ///     let call = call.output(serde_json::json!(answer)).usage(3, 1);
    ///     if let Ok(gateway) = payment.observability() {
    ///         drop(gateway.log(call)); // sent in the background
    ///     }
    ///     HttpResponse::Ok().body(answer)
    /// }
    /// ```
    pub fn log(&self, call: LlmCall) -> impl Future<Output = LogOutcome> + Send + 'static {
        outcome_of(self.spawn_log(call))
    }

    /// Starts the task sending `call`; `None` (counted as not sent) when it cannot start.
    fn spawn_log(&self, call: LlmCall) -> Option<tokio::task::JoinHandle<LogOutcome>> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            count(LogOutcome::NotSent);
            return None;
        };
        let Some(http) = self.gateway.http().cloned() else {
            count(LogOutcome::NotSent);
            return None;
        };
        let properties: serde_json::Map<String, Value> = self
            .headers
            .iter()
            .filter(|(name, _)| *name != "helicone-auth")
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), Value::from(value.to_str().ok()?))))
            .collect();
        let body = call.body(Value::Object(properties));
        let mut headers = self.headers.clone();
        // Helicone's log endpoint takes the gateway key as `Authorization` too.
        if let Some(mut auth) = headers.get("helicone-auth").cloned() {
            auth.set_sensitive(true);
            headers.insert(AUTHORIZATION, auth);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let url = self.log_url().to_owned();
        let handle = runtime.spawn(async move {
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let sent = http.post(&url).headers(headers).body(body).send().await;
            let outcome = match sent {
                Ok(response) if response.status().is_success() => LogOutcome::Sent,
                Ok(response) => {
                    tracing::debug!(
                        status = response.status().as_u16(),
                        "the LLM log endpoint refused the log"
                    );
                    LogOutcome::Failed
                }
                Err(error) => {
                    tracing::debug!(
                        timeout = error.is_timeout(),
                        connect = error.is_connect(),
                        "the LLM log endpoint is unreachable"
                    );
                    LogOutcome::Failed
                }
            };
            count(outcome)
        });
        Some(handle)
    }
}
