//! The payment flow, shared line for line by `#[paid]` and `PaymentMiddleware`:
//! [`admit`] before the handler (token → verify), [`settle`] after it (settle on 2xx
//! only, exactly once, receipt on the response, fail closed).

use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderValue};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_core::Stream;

use crate::__private::catch_unwind;
use crate::actix::context::{PaymentState, Verified};
use crate::actix::credits::CreditsFuture;
use crate::actix::payments::Payments;
use crate::backend::RequestRef;
use crate::error::{ConfigError, FacilitatorError, PaymentError};
use crate::flow::cache::CacheKey;
use crate::wire::AccessToken;
use crate::wire::codec::MAX_HEADER_LEN;
use crate::wire::{Amount, SettleResponse};
use crate::wire::{NETWORK_STRIPE, PaymentRequired, SCHEME_CARD_DELEGATION};
use crate::wire::{PAYMENT_REQUIRED, PAYMENT_RESPONSE};

/// What a route charges for, resolved for one request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Terms<'a> {
    pub(crate) plan_id: &'a str,
    pub(crate) agent_id: Option<&'a str>,
    pub(crate) scheme: Option<&'a str>,
    pub(crate) network: Option<&'a str>,
    pub(crate) description: Option<&'a str>,
    pub(crate) mime_type: Option<&'a str>,
    pub(crate) resource: Option<&'a str>,
}

/// The credits of this request from its route's source. A body-priced source reads
/// the body here, and only once the request carries a well-formed token (an unpaid
/// request gets its 402 before any body byte is read); `payload` then holds the same
/// bytes again for the handler. `what` names the route in errors.
pub(crate) async fn price(
    payments: &Payments,
    req: &HttpRequest,
    terms: &Terms<'_>,
    source: CreditsFuture<'_>,
    payload: &mut Payload,
    what: &str,
) -> Result<u64, HttpResponse> {
    let panicked = || misconfigured(payments, req, ConfigError::CreditsPanicked(what.to_owned()));
    let (limit, price) = match source {
        CreditsFuture::Ready(n) => return Ok(n),
        CreditsFuture::Pending(future) => return catch_unwind(future).await.map_err(|_| panicked()),
        CreditsFuture::Body { limit, price } => (limit, price),
    };
    if let Err(error) = read_token(payments, req) {
        return Err(reject(payments, req, envelope(payments, req, terms).await, error));
    }
    let body = match read_body(payload, limit).await {
        Ok(body) => body,
        Err(response) => return Err(response),
    };
    let credits = std::panic::catch_unwind(AssertUnwindSafe(|| price(&body))).map_err(|_| panicked())?;
    *payload = Payload::from(body);
    Ok(credits)
}

/// Reads the whole body, refusing one longer than `limit` (413) or broken (400).
async fn read_body(payload: &mut Payload, limit: usize) -> Result<Bytes, HttpResponse> {
    let mut body = BytesMut::new();
    while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut *payload).poll_next(cx)).await {
        let chunk = chunk.map_err(|error| {
            json_error(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                &format!("the request body could not be read: {error}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large",
                &format!(
                    "this route is priced by its body and reads at most {limit} bytes of it; send a smaller body"
                ),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Verifies the request's payment for `credits` and records it in `state`.
///
/// `Ok` lets the handler run (verified, or free when `credits` is 0); `Err` is the
/// response to send instead (402 or 500), the handler never runs.
pub(crate) async fn admit(
    payments: &Payments,
    req: &HttpRequest,
    terms: &Terms<'_>,
    credits: u64,
    state: &PaymentState,
) -> Result<(), HttpResponse> {
    if credits == 0 {
        tracing::debug!(path = req.path(), "free request: credits resolved to 0");
        return Ok(());
    }
    let envelope = envelope(payments, req, terms).await;
    let token = match read_token(payments, req) {
        Ok(token) => token,
        Err(error) => return Err(reject(payments, req, envelope, error)),
    };
    // `token.hash()` (a SHA-256) is written inside the log macros: computed only for the
    // lines that are enabled.
    let cache_key = payments.verify_cache().map(|_| {
        CacheKey::new(token.as_str(), terms.plan_id, credits, &envelope.resource.url, req.method().as_str())
    });
    if let (Some(cache), Some(key)) = (payments.verify_cache(), &cache_key)
        && let Some(verification) = cache.get(key)
    {
        tracing::debug!(token = %token.hash(), "verification served from cache");
        payments.hooks().after_verify(req, &verification);
        store(state, Verified { token, envelope, credits, verification, cache_key, from_cache: true });
        return Ok(());
    }

    payments.hooks().before_verify(req, &envelope);
    let amount = Amount::from(credits);
    let request = RequestRef {
        payment_required: &envelope,
        x402_access_token: token.as_str(),
        max_amount: Some(&amount),
        agent_request_id: None,
    };
    let verification = match payments.facilitator().verify_ref(&request).await {
        Ok(v) if v.is_valid => v,
        Ok(v) => {
            let reason = v.invalid_reason.unwrap_or_else(|| "invalid_token".to_owned());
            tracing::info!(token = %token.hash(), %reason, "payment refused by the facilitator");
            return Err(reject(payments, req, envelope, PaymentError::Rejected { reason }));
        }
        Err(FacilitatorError::Refused { error, .. }) => {
            let reason = if error.code.is_empty() {
                error.message
            } else {
                format!("{}: {}", error.code, error.message)
            };
            tracing::info!(token = %token.hash(), %reason, "verify refused");
            return Err(reject(payments, req, envelope, PaymentError::Rejected { reason }));
        }
        Err(error) => {
            tracing::error!(token = %token.hash(), %error, "verification failed; the handler does not run");
            return Err(fail(payments, req, PaymentError::Facilitator(error)));
        }
    };
    tracing::debug!(token = %token.hash(), payer = ?verification.payer, credits, "payment verified");
    payments.hooks().after_verify(req, &verification);
    if let (Some(cache), Some(key)) = (payments.verify_cache(), &cache_key) {
        cache.insert(key.clone(), verification.clone());
    }
    store(state, Verified { token, envelope, credits, verification, cache_key, from_cache: false });
    Ok(())
}

fn store(state: &PaymentState, verified: Verified) {
    // A state is admitted once per request; a second admission keeps the first.
    let _ = state.verified.set(verified);
}

/// Settles the verified payment of `state` if `response` is a success, exactly once,
/// and attaches the receipt; otherwise passes `response` through untouched.
///
/// A failed settlement withholds the response (402 with the failed receipt) unless the
/// configuration delivers on settle failure.
pub(crate) async fn settle(
    payments: &Payments,
    req: &HttpRequest,
    state: &PaymentState,
    mut response: HttpResponse,
) -> HttpResponse {
    let Some(verified) = state.verified.get() else {
        return response;
    };
    if !response.status().is_success() {
        tracing::info!(token = %verified.token.hash(), status = response.status().as_u16(), "handler did not succeed; nothing settled");
        return response;
    }
    if state.settled.replace(true) {
        tracing::error!(token = %verified.token.hash(), "settlement attempted twice for one request; refused");
        return response;
    }
    let amount = state.charge.get().unwrap_or(verified.credits);
    if amount == 0 {
        tracing::debug!(token = %verified.token.hash(), "charged 0 credits; nothing settled");
        return response;
    }
    let max_amount = Amount::from(amount);
    let request = RequestRef {
        payment_required: &verified.envelope,
        x402_access_token: verified.token.as_str(),
        max_amount: Some(&max_amount),
        agent_request_id: if verified.from_cache { None } else { verified.verification.request_id() },
    };
    let (receipt, reason) = match payments.facilitator().settle_ref(&request).await {
        Ok(receipt) if receipt.success => {
            tracing::info!(token = %verified.token.hash(), credits = amount, transaction = %receipt.transaction, "settled");
            payments.hooks().after_settle(req, amount, &receipt);
            insert_header(&mut response, PAYMENT_RESPONSE, receipt.to_header());
            return response;
        }
        Ok(receipt) => {
            let reason = receipt.error_reason.clone().unwrap_or_else(|| "settlement failed".to_owned());
            (receipt, reason)
        }
        Err(error) => {
            let reason = match &error {
                FacilitatorError::Refused { error, .. } => format!("{}: {}", error.code, error.message),
                FacilitatorError::Unavailable(why) => format!("settlement_unavailable: {why}"),
            };
            let mut receipt = SettleResponse {
                success: false,
                error_reason: Some(reason.clone()),
                payer: verified.verification.payer.clone(),
                network: verified.envelope.first().map(|a| a.network.clone()),
                ..SettleResponse::default()
            };
            // The outcome is unknown when the call failed in flight: the request id lets
            // buyer and seller reconcile it with the facilitator later.
            if let Some(id) = request.agent_request_id {
                receipt.other.insert("agentRequestId".to_owned(), id.into());
            }
            (receipt, reason)
        }
    };
    tracing::error!(token = %verified.token.hash(), credits = amount, %reason, "settlement failed");
    if let (Some(cache), Some(key)) = (payments.verify_cache(), &verified.cache_key) {
        cache.remove(key);
    }
    let receipt_header = receipt.to_header();
    if payments.delivers_on_settle_failure() {
        insert_header(&mut response, PAYMENT_RESPONSE, receipt_header);
        return response;
    }
    let error = PaymentError::SettlementFailed { reason };
    let mut refusal = reject(payments, req, verified.envelope.clone(), error);
    insert_header(&mut refusal, PAYMENT_RESPONSE, receipt_header);
    refusal
}

/// The envelope of this request: the route's terms, the plan's scheme (forced or
/// auto-detected) and the request's path and method.
pub(crate) async fn envelope(payments: &Payments, req: &HttpRequest, terms: &Terms<'_>) -> PaymentRequired {
    let (scheme, network) = match terms.scheme {
        Some(scheme) => {
            let network = terms.network.map(str::to_owned).unwrap_or_else(|| {
                if scheme == SCHEME_CARD_DELEGATION {
                    NETWORK_STRIPE.to_owned()
                } else {
                    payments.plans().default_network().to_owned()
                }
            });
            (scheme.to_owned(), network)
        }
        None => {
            let resolved = payments.plans().resolve(payments.facilitator(), terms.plan_id).await;
            let network = terms.network.map_or_else(|| resolved.network.to_string(), str::to_owned);
            (resolved.scheme.to_string(), network)
        }
    };
    let mut builder = PaymentRequired::builder(terms.plan_id, network)
        .scheme(scheme)
        .url(terms.resource.unwrap_or(req.path()))
        .http_verb(req.method().as_str());
    if let Some(agent) = terms.agent_id {
        builder = builder.agent_id(agent);
    }
    if let Some(description) = terms.description {
        builder = builder.description(description);
    }
    if let Some(mime_type) = terms.mime_type {
        builder = builder.mime_type(mime_type);
    }
    builder.build()
}

/// The access token of the request: the first configured header with a value,
/// checked before any facilitator call (size, characters, base64 JSON shape).
fn read_token(payments: &Payments, req: &HttpRequest) -> Result<AccessToken, PaymentError> {
    for name in payments.token_headers() {
        let mut values = req.headers().get_all(name);
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err(PaymentError::MalformedToken(format!(
                "more than one `{name}` header; send exactly one"
            )));
        }
        if value.is_empty() {
            continue;
        }
        if value.len() > MAX_HEADER_LEN {
            return Err(PaymentError::MalformedToken(format!(
                "the token is {} bytes long; at most {MAX_HEADER_LEN} are accepted",
                value.len()
            )));
        }
        let raw = value
            .to_str()
            .map_err(|_| {
                PaymentError::MalformedToken("the token contains non-ASCII or control characters".into())
            })?
            .trim();
        if raw.is_empty() {
            continue;
        }
        // Only the outer form is checked here (base64 of a JSON object); the facilitator
        // judges the rest, so a payload shape this crate does not know is never refused.
        // `JsonShape` reads the JSON as `serde_json::Value` does (same errors) without
        // building it.
        let decoded: crate::wire::codec::JsonShape = crate::wire::codec::decode_json_header(raw)
            .map_err(|e| PaymentError::MalformedToken(format!("the token is not base64 JSON ({e})")))?;
        if !decoded.is_object() {
            return Err(PaymentError::MalformedToken("the token is not an x402 payment payload".into()));
        }
        return Ok(AccessToken::new(raw));
    }
    let header = payments.token_headers().first().map_or("payment-signature", |h| h.as_str());
    Err(PaymentError::MissingToken { header: header.to_owned() })
}

/// The 402 answer: `payment-required` envelope and JSON body, unless the
/// `on_payment_error` hook replaces it.
pub(crate) fn reject(
    payments: &Payments,
    req: &HttpRequest,
    mut envelope: PaymentRequired,
    error: PaymentError,
) -> HttpResponse {
    if let Some(response) = payments.hooks().on_payment_error(req, &error) {
        return response;
    }
    if !matches!(error, PaymentError::MissingToken { .. }) {
        envelope.error = Some(error.to_string());
    }
    let mut response = json_error(StatusCode::PAYMENT_REQUIRED, "Payment Required", &error.to_string());
    insert_header(&mut response, PAYMENT_REQUIRED, envelope.to_header());
    response
}

/// The 500 answer for a facilitator or configuration failure, unless the
/// `on_payment_error` hook replaces it.
pub(crate) fn fail(payments: &Payments, req: &HttpRequest, error: PaymentError) -> HttpResponse {
    if let Some(response) = payments.hooks().on_payment_error(req, &error) {
        return response;
    }
    let message = match &error {
        PaymentError::Facilitator(FacilitatorError::Unavailable(why)) => {
            format!(
                "the payment could not be verified: the facilitator is unavailable ({why}); try again later"
            )
        }
        other => other.to_string(),
    };
    json_error(StatusCode::INTERNAL_SERVER_ERROR, "Payment verification failed", &message)
}

/// The 500 answer when `Payments` is not registered with the app.
pub(crate) fn unconfigured(req: &HttpRequest) -> HttpResponse {
    tracing::error!(path = req.path(), "no Payments configuration registered");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Payment configuration missing",
        "this route is paid but no Payments configuration is registered: add `.app_data(payments.clone())` to the App",
    )
}

/// The 500 answer for a misconfigured route (an unset `env("VAR")`).
pub(crate) fn misconfigured(payments: &Payments, req: &HttpRequest, error: ConfigError) -> HttpResponse {
    tracing::error!(path = req.path(), %error, "paid route misconfigured");
    fail(payments, req, PaymentError::Config(error))
}

fn json_error(status: StatusCode, error: &str, message: &str) -> HttpResponse {
    let body = serde_json::json!({ "error": error, "message": message });
    HttpResponse::build(status)
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(body.to_string())
}

fn insert_header(response: &mut HttpResponse, name: &'static str, value: String) {
    // Base64 is always a valid header value; from a `String`, its bytes are not copied.
    if let Ok(value) = HeaderValue::try_from(value) {
        response.headers_mut().insert(actix_web::http::header::HeaderName::from_static(name), value);
    }
}
