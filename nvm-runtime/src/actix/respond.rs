//! The responses of the payment flow: a [`Refusal`] rendered as a 402 or 500 (unless
//! the `on_payment_error` hook replaces it), receipts on responses, and [`Rejection`],
//! the `#[paid]` extractor's error.

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, ResponseError};

use super::payments::Payments;
use crate::error::{FacilitatorError, PaymentError, Refusal};
use crate::wire::{PAYMENT_REQUIRED, PAYMENT_RESPONSE, SettleResponse};

/// The answer to `refusal`: the hook's, or a JSON body with the envelope (402) and the
/// failed receipt when there is one.
pub(crate) fn render(payments: &Payments, req: &HttpRequest, refusal: &Refusal) -> HttpResponse {
    if let Some(response) = payments.hooks().on_payment_error(req, refusal.error()) {
        return response;
    }
    render_plain(refusal)
}

/// The answer to `refusal`, without the hooks. A 402 is never stored by a cache: it is
/// an answer to one request's payment, not the resource.
pub(crate) fn render_plain(refusal: &Refusal) -> HttpResponse {
    let mut response = render_refusal(refusal);
    if response.status() == StatusCode::PAYMENT_REQUIRED {
        response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn render_refusal(refusal: &Refusal) -> HttpResponse {
    match refusal {
        Refusal::PaymentRequired { envelope, error, receipt } => {
            let mut response =
                json_error(StatusCode::PAYMENT_REQUIRED, "Payment Required", &error.to_string());
            insert_header(&mut response, PAYMENT_REQUIRED, envelope.to_header());
            if let Some(receipt) = receipt {
                attach_receipt(&mut response, receipt);
            }
            response
        }
        Refusal::OutcomeUnknown { error, receipt } => {
            let mut body = serde_json::json!({
                "error": "Payment Outcome Unknown",
                "message": error.to_string(),
            });
            for field in ["pendingSettlementId", "agentRequestId"] {
                if let Some(value) = receipt.other.get(field) {
                    body[field] = value.clone();
                }
            }
            let mut response = HttpResponse::build(StatusCode::PAYMENT_REQUIRED)
                .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
                .body(body.to_string());
            attach_receipt(&mut response, receipt);
            response
        }
        Refusal::Failed(error) => {
            let message = match error {
                PaymentError::Facilitator(FacilitatorError::Unavailable(why)) => format!(
                    "the payment could not be verified: the facilitator is unavailable ({why}); try again later"
                ),
                other => other.to_string(),
            };
            let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let title = if status == StatusCode::INTERNAL_SERVER_ERROR {
                "Payment verification failed"
            } else {
                status.canonical_reason().unwrap_or("Bad Request")
            };
            json_error(status, title, &message)
        }
    }
}

/// The 500 answer when `Payments` is not registered with the app serving the `#[paid]`
/// handler `handler`: the message names the handler and the line to add, and goes to the
/// log too, where the app's developer sees it.
pub(crate) fn unconfigured(req: &HttpRequest, handler: &str) -> HttpResponse {
    let message = format!(
        "the #[paid] handler `{handler}` ({method} {path}) is served by an App without a Payments \
         configuration: add `.app_data(payments.clone())` to the `App::new()` that registers it, \
         with `let payments = nvm_runtime::Payments::from_env()?;` before `HttpServer::new`",
        method = req.method(),
        path = req.path(),
    );
    tracing::error!(handler, "{message}");
    json_error(StatusCode::INTERNAL_SERVER_ERROR, "Payment configuration missing", &message)
}

/// The response to a handler that panicked: a 500, never settled.
pub(crate) fn handler_panicked(path: &str) -> HttpResponse {
    tracing::error!(path, "the handler panicked; nothing is settled");
    json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", "the handler failed")
}

/// Every JSON error body of the crate: `{"error": …, "message": …}`.
pub(crate) fn json_error(status: StatusCode, error: &str, message: &str) -> HttpResponse {
    let body = serde_json::json!({ "error": error, "message": message });
    HttpResponse::build(status)
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(body.to_string())
}

/// Puts `receipt` in the `payment-response` header.
pub(crate) fn attach_receipt(response: &mut HttpResponse, receipt: &SettleResponse) {
    insert_header(response, PAYMENT_RESPONSE, receipt.to_header());
}

/// Marks a paid answer `Cache-Control: private, no-store`, whatever the handler set: a
/// shared cache must never serve it to someone who did not pay.
pub(crate) fn not_for_caches(response: &mut HttpResponse) {
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
}

fn insert_header(response: &mut HttpResponse, name: &'static str, value: String) {
    // Base64 is always a valid header value; from a `String`, its bytes are not copied.
    if let Ok(value) = HeaderValue::try_from(value) {
        response.headers_mut().insert(HeaderName::from_static(name), value);
    }
}

/// Why a `#[paid]` handler did not run, as its extractor's error: the typed
/// [`Refusal`] (when the flow refused the payment) and the response it renders to, which
/// [`ResponseError::error_response`] rebuilds on every call.
///
/// ```
/// use actix_web::ResponseError;
/// use nvm_runtime::actix::Rejection;
///
/// fn log(rejection: &Rejection) {
///     match rejection.refusal() {
///         Some(refusal) => eprintln!("refused ({}): {}", refusal.status(), refusal.error()),
///         None => eprintln!("not served: {}", rejection.status_code()),
///     }
///     // As often as needed: each call builds the same response.
///     assert_eq!(rejection.error_response().status(), rejection.error_response().status());
/// }
/// ```
pub struct Rejection {
    refusal: Option<Refusal>,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Rejection {
    /// A rejection answered by `response`; its body is kept as bytes (a hook's
    /// replacement response must have a buffered body).
    pub(crate) fn new(refusal: Option<Refusal>, response: HttpResponse) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let body = actix_web::body::MessageBody::try_into_bytes(response.into_body()).unwrap_or_else(|_| {
            tracing::warn!("a payment error response with a streaming body is sent without its body");
            Bytes::new()
        });
        Rejection { refusal, status, headers, body }
    }

    /// The flow's refusal, or `None` when the request never reached it (no `Payments`
    /// registered with the app).
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }
}

impl std::fmt::Debug for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejection").field("status", &self.status).field("refusal", &self.refusal).finish()
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.refusal {
            Some(refusal) => write!(f, "payment not accepted ({}): {}", self.status, refusal.error()),
            None => write!(f, "payment not accepted ({})", self.status),
        }
    }
}

impl ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::with_body(self.status, self.body.clone());
        *response.headers_mut() = self.headers.clone();
        response.map_into_boxed_body()
    }
}
