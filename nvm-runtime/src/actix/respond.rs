//! The responses of the payment flow: a [`Refusal`] rendered as a 402 or 500 (unless
//! the `on_payment_error` hook replaces it), and receipts on responses.
//!
//! A 402 that advertises an envelope is JSON, except for a browser's navigation: a
//! request whose `Accept` header prefers `text/html` to `application/json` (a browser
//! opening the URL sends `text/html,…,*/*;q=0.8`; `fetch`, curl and the SDKs send `*/*`
//! or `application/json`) gets a small self-contained HTML page instead, which says what
//! the endpoint costs and links to the plan's checkout page in the Nevermined app
//! (`page::checkout_url`). Both carry the same `payment-required` header (machine clients
//! read only that), `Cache-Control: no-store` and `Vary: Accept`.

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, VARY};
use actix_web::{HttpRequest, HttpResponse};

mod page;

use super::payments::Payments;
use crate::error::{FacilitatorError, Failure, PaymentProblem, Refusal};
use crate::wire::{PAYMENT_REQUIRED, PAYMENT_RESPONSE, SettleResponse};
use page::{asked, payment_page, prefers_html};

/// The answer to `refusal`: the hook's; else, for a 402 with an envelope asked for by a
/// browser's navigation, the HTML page; else a JSON body. The envelope (402) and the
/// failed receipt, when there is one, go in their headers either way.
pub(crate) fn render(payments: &Payments, req: &HttpRequest, refusal: &Refusal) -> HttpResponse {
    if let Some(mut response) = payments.hooks().on_payment_error(req, refusal.error()) {
        // A hook's 402 is no more cacheable than ours.
        if response.status() == StatusCode::PAYMENT_REQUIRED {
            response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        return response;
    }
    let Refusal::PaymentRequired { envelope, receipt, .. } = refusal else {
        return render_plain(refusal);
    };
    let mut response = if prefers_html(req.headers()) {
        let mut page = HttpResponse::build(StatusCode::PAYMENT_REQUIRED)
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")))
            .body(payment_page(envelope, payments.environment(), asked(req)));
        insert_header(&mut page, PAYMENT_REQUIRED, envelope.to_header());
        if let Some(receipt) = receipt {
            attach_receipt(&mut page, receipt);
        }
        page.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        page
    } else {
        render_plain(refusal)
    };
    // The same URL answers HTML or JSON by the request's `Accept`.
    response.headers_mut().insert(VARY, HeaderValue::from_static("Accept"));
    response
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
                json_error(StatusCode::PAYMENT_REQUIRED, "Payment Required", &crate::error::chain(error));
            insert_header(&mut response, PAYMENT_REQUIRED, envelope.to_header());
            if let Some(receipt) = receipt {
                attach_receipt(&mut response, receipt);
            }
            response
        }
        Refusal::OutcomeUnknown { error, receipt } => {
            let mut body = serde_json::json!({
                "error": "Payment Outcome Unknown",
                "message": crate::error::chain(error),
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
        Refusal::StillPending(error) => {
            let receipt = crate::flow::pending_receipt(refusal);
            let mut body =
                serde_json::json!({ "error": "Settlement Pending", "message": crate::error::chain(error) });
            for field in ["pendingSettlementId", "retryAfter"] {
                if let Some(value) = receipt.as_ref().and_then(|r| r.other.get(field)) {
                    body[field] = value.clone();
                }
            }
            let mut response = HttpResponse::build(StatusCode::CONFLICT)
                .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
                .insert_header((CACHE_CONTROL, HeaderValue::from_static("no-store")))
                .body(body.to_string());
            if let Some(seconds) = body["retryAfter"].as_u64() {
                insert_header(&mut response, "retry-after", seconds.to_string());
            }
            if let Some(receipt) = &receipt {
                attach_receipt(&mut response, receipt);
            }
            response
        }
        Refusal::Failed(error) => {
            let message = match &error.0 {
                PaymentProblem::Facilitator(FacilitatorError(Failure::Unavailable(why))) => format!(
                    "the payment could not be verified: the facilitator is unavailable ({}); try again later",
                    crate::error::chain(why)
                ),
                other => crate::error::chain(other),
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

/// Marks a paid answer `Cache-Control: private, no-store`, or the route's own `private`
/// value (`route`, checked when the route was declared), whatever the handler set: a
/// shared cache must never serve it to someone who did not pay.
pub(crate) fn not_for_caches(response: &mut HttpResponse, route: Option<&str>) {
    let value = route
        .and_then(|value| HeaderValue::try_from(value).ok())
        .unwrap_or(HeaderValue::from_static("private, no-store"));
    response.headers_mut().insert(CACHE_CONTROL, value);
}

fn insert_header(response: &mut HttpResponse, name: &'static str, value: String) {
    // Base64 is always a valid header value; from a `String`, its bytes are not copied.
    if let Ok(value) = HeaderValue::try_from(value) {
        response.headers_mut().insert(HeaderName::from_static(name), value);
    }
}
