//! The flow, seen from actix-web: the request as the flow's [`Host`], the body read for
//! body-priced routes, and the flow's answers turned into responses. Both forms call
//! these three steps: [`price`], [`admit`], [`settle`].

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine as _;
use futures_core::Stream;

use super::credits::CreditsFuture;
use super::exchange::{Exchange, Refused};
use super::respond::{attach_receipt, not_for_caches, render_plain};
use super::settlement::{capture, finish_claim, keeps_answer, report};
use crate::error::{ConfigProblem, IdempotencyError, PaymentError, PaymentProblem, Refusal};
use crate::flow::idempotency::{self, KeyedRequest, StoredResponse};
use crate::flow::telemetry::{Outcome, Telemetry};
use crate::flow::{self, Admission, Kept, Offer, PaymentState, Settlement, Terms};
use crate::wire::PAYMENT_RESPONSE;

/// The credits of this request from its route's source. A body-priced source reads
/// the body here, and only once the request carries a well-formed token (an unpaid
/// request gets its 402 before any body byte is read); `payload` then holds the same
/// bytes again for the handler. `what` names the route in errors.
pub(crate) async fn price(
    exchange: &Exchange<'_>,
    offer: &Offer<'_>,
    source: CreditsFuture<'_>,
    payload: &mut Payload,
    what: &str,
) -> Result<u64, Refused> {
    let panicked = || exchange.misconfigured(ConfigProblem::CreditsPanicked(what.to_owned()).into());
    let (limit, price) = match source {
        CreditsFuture::Ready(n) => return Ok(n),
        CreditsFuture::Pending(future) => return catch_unwind(future).await.map_err(|_| panicked()),
        CreditsFuture::Body { limit, price } => (limit, price),
    };
    if let Err(error) = flow::read_token(exchange.payments.seller(), exchange) {
        let envelope = flow::envelope(exchange.payments.seller(), exchange, offer).await;
        return Err(exchange.refuse(Refusal::payment_required(envelope, error)));
    }
    let body = read_body(payload, limit, PaymentProblem::BodyTooLarge { limit }.into()).await?;
    let credits = std::panic::catch_unwind(AssertUnwindSafe(|| price(&body))).map_err(|_| panicked())?;
    *payload = Payload::from(body);
    Ok(credits)
}

/// Reads the whole body, refusing one longer than `limit` (`too_long`, a 413) or
/// broken (400).
async fn read_body(payload: &mut Payload, limit: usize, too_long: PaymentError) -> Result<Bytes, Refused> {
    let mut body = BytesMut::new();
    while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut *payload).poll_next(cx)).await {
        let chunk =
            chunk.map_err(|error| body_refusal(PaymentProblem::BodyUnreadable(error.to_string()).into()))?;
        if body.len() + chunk.len() > limit {
            return Err(body_refusal(too_long));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A body error, answered without the hooks: it is not a payment matter.
fn body_refusal(error: PaymentError) -> Refused {
    let refusal = Refusal::Failed(error);
    let response = render_plain(&refusal);
    (refusal, response)
}

/// Verifies the request's payment for `credits` and records it in `state`: `Ok(None)`
/// runs the handler; `Ok(Some(response))` answers an idempotent retry with the stored
/// response; `Err` is the answer to send instead (402, 409, 422, 500, 503): the
/// handler never runs. A request with an `Idempotency-Key` has its body read (and put
/// back in `payload`) to fingerprint it.
pub(crate) async fn admit(
    exchange: &Exchange<'_>,
    offer: &Offer<'_>,
    priced: Result<u64, Refused>,
    state: &PaymentState,
    payload: &mut Payload,
) -> Result<Option<HttpResponse>, Refused> {
    let admitted = match priced {
        Ok(credits) => admit_priced(exchange, offer, credits, state, payload).await,
        Err(refused) => Err(refused),
    };
    if let Some(telemetry) = state.telemetry.get() {
        match &admitted {
            Ok(None) if state.verified.get().is_none() => telemetry.finish(Outcome::Free, 0),
            Ok(None) => {}
            Ok(Some(_)) => telemetry.finish(Outcome::Replayed, 0),
            Err((refusal, _)) => telemetry.finish(Outcome::of(refusal), 0),
        }
    }
    admitted
}

async fn admit_priced(
    exchange: &Exchange<'_>,
    offer: &Offer<'_>,
    credits: u64,
    state: &PaymentState,
    payload: &mut Payload,
) -> Result<Option<HttpResponse>, Refused> {
    let seller = exchange.payments.seller();
    let keyed = keyed_request(exchange, credits, state, payload).await?;
    match flow::admit(seller, exchange, offer, credits, state, keyed.as_ref()).await {
        Ok(Admission::Run) => Ok(None),
        Ok(Admission::Replay(stored)) => Ok(Some(replay(exchange, stored))),
        Err(refusal) => Err(exchange.refuse(refusal)),
    }
}

/// Opens the telemetry of a request that reached a paid route (once: a `#[paid]`
/// handler under a `PaymentMiddleware` route shares it) and gives its span, for the
/// request's future to run in.
pub(crate) fn telemetry_span(req: &HttpRequest, state: &PaymentState) -> tracing::Span {
    let telemetry = state
        .telemetry
        .get_or_init(|| Telemetry::start(req.method().as_str(), route_of(req, state).into_owned()));
    telemetry.span().clone()
}

/// The route of `req`: the resource pattern it matched (its path when none), as its
/// telemetry already holds it, so the router's map is walked once per request.
pub(crate) fn route_of<'a>(req: &HttpRequest, state: &'a PaymentState) -> std::borrow::Cow<'a, str> {
    match state.telemetry.get() {
        Some(telemetry) => std::borrow::Cow::Borrowed(telemetry.route()),
        None => std::borrow::Cow::Owned(req.match_pattern().unwrap_or_else(|| req.path().to_owned())),
    }
}

/// The request's `Idempotency-Key` and fingerprint, when it has a key, the
/// configuration remembers keys, the request is paid and carries a well-formed token
/// (an unpaid request gets its 402 before any body byte is read).
async fn keyed_request(
    exchange: &Exchange<'_>,
    credits: u64,
    state: &PaymentState,
    payload: &mut Payload,
) -> Result<Option<KeyedRequest>, Refused> {
    let config = &exchange.payments.seller().idempotency;
    let req = exchange.req;
    let mut values = req.headers().get_all(idempotency::KEY_HEADER);
    let Some(value) = values.next() else { return Ok(None) };
    if credits == 0 || !config.is_enabled() || flow::read_token(exchange.payments.seller(), exchange).is_err()
    {
        return Ok(None);
    }
    let key = match (values.next(), idempotency::parse_key(value.as_bytes())) {
        (None, Ok(key)) => key,
        (Some(_), _) => {
            let error = IdempotencyError::InvalidKey("send exactly one Idempotency-Key header".to_owned());
            return Err(exchange.refuse(Refusal::Failed(PaymentProblem::Idempotency(error).into())));
        }
        (None, Err(error)) => {
            return Err(exchange.refuse(Refusal::Failed(PaymentProblem::Idempotency(error).into())));
        }
    };
    let limit = config.max_request_body_len();
    let body = read_body(
        payload,
        limit,
        PaymentProblem::Idempotency(IdempotencyError::BodyTooLarge { limit }).into(),
    )
    .await?;
    let path = req.uri().path_and_query().map_or(req.path(), |p| p.as_str());
    let route = route_of(req, state);
    let keyed = KeyedRequest::new(key, &route, req.method().as_str(), path, &body);
    *payload = Payload::from(body);
    Ok(Some(keyed))
}

/// The stored answer of an idempotent call, marked `idempotent-replayed: true`; one not
/// kept (too long) is answered 409 with its receipt.
fn replay(exchange: &Exchange<'_>, stored: StoredResponse) -> HttpResponse {
    let body = stored.body.as_deref().map(|b| base64::engine::general_purpose::STANDARD.decode(b));
    let mut response = match body {
        Some(Ok(body)) => {
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            let mut response = HttpResponse::with_body(status, BoxBody::new(body));
            for (name, value) in &stored.headers {
                if let (Ok(name), Ok(value)) =
                    (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str()))
                {
                    response.headers_mut().append(name, value);
                }
            }
            if let Some(receipt) = stored.receipt.as_deref().and_then(|r| HeaderValue::try_from(r).ok()) {
                response.headers_mut().insert(HeaderName::from_static(PAYMENT_RESPONSE), receipt);
            }
            response
        }
        _ => {
            let error = PaymentProblem::Idempotency(IdempotencyError::NotReplayable);
            let mut response = exchange.refuse(Refusal::Failed(error.into())).1;
            if let Some((_, receipt)) = stored.headers.iter().find(|(name, _)| name == PAYMENT_RESPONSE)
                && let Ok(receipt) = HeaderValue::try_from(receipt.as_str())
            {
                response.headers_mut().insert(HeaderName::from_static(PAYMENT_RESPONSE), receipt);
            }
            response
        }
    };
    response
        .headers_mut()
        .insert(HeaderName::from_static(idempotency::REPLAYED_HEADER), HeaderValue::from_static("true"));
    not_for_caches(&mut response, None);
    response
}

/// Settles the verified payment of `state` if `response` is a success, exactly once,
/// and attaches the receipt; otherwise passes `response` through untouched. A failed
/// settlement withholds the response (402 with the failed receipt) unless the
/// configuration delivers on settle failure.
///
/// A route settled after its body (its `terms` say so, or say nothing and the body
/// streams) answers at once and settles when the body ends (see [`super::stream`]). A
/// paid answer is marked for caches as its `terms` allow ([`not_for_caches`]).
pub(crate) async fn settle(
    exchange: &Exchange<'_>,
    state: &Arc<PaymentState>,
    terms: &Terms,
    mut response: HttpResponse,
) -> HttpResponse {
    let seller = exchange.payments.seller();
    let (point, cache_control) = (terms.settle, terms.cache_control.as_deref());
    let claim = state.take_claim();
    if state.verified.get().is_some()
        && response.status().is_success()
        && super::stream::after_body(point, &response)
    {
        let (payments, req) = (exchange.payments.clone(), exchange.req.clone());
        not_for_caches(&mut response, cache_control);
        return super::stream::settle_after_body(payments, req, Arc::clone(state), response, claim);
    }
    let max = seller.idempotency.max_response_body_len();
    let defer = crate::flow::deferred::applies(seller, point);
    // Run to its end even if the request is dropped meanwhile (the client reset the
    // connection): a settle call sent is always followed by its outcome's bookkeeping.
    let (payments, req, state, cache_control) = (
        exchange.payments.clone(),
        exchange.req.clone(),
        Arc::clone(state),
        cache_control.map(str::to_owned),
    );
    let settling = actix_web::rt::spawn(async move {
        let exchange = Exchange { payments: &payments, req: &req };
        let seller = payments.seller();
        let status = response.status();
        let mut claim = claim;
        let (mut response, kept) = match &mut claim {
            Some(claim) if status.is_success() => {
                let (response, answer) = capture(response, max);
                (response, Some(Kept { claim, answer }))
            }
            _ => (response, None),
        };
        let settlement = flow::settle(seller, &exchange, &state, status.as_u16(), kept, defer).await;
        report(&state, status, &settlement);
        let keep = keeps_answer(&settlement, status);
        let response = match settlement {
            Settlement::None => response,
            Settlement::Settled(receipt)
            | Settlement::Deferred(receipt)
            | Settlement::FailedDelivered(receipt) => {
                attach_receipt(&mut response, &receipt);
                not_for_caches(&mut response, cache_control.as_deref());
                response
            }
            Settlement::Refused(refusal) => exchange.refuse(refusal).1,
        };
        match claim {
            Some(claim) => finish_claim(&exchange, claim, response, keep, max).await,
            None => response,
        }
    });
    settling.await.unwrap_or_else(|_| {
        tracing::error!("the settlement task panicked");
        HttpResponse::InternalServerError().finish()
    })
}

/// Polls `future`, turning a panic into an `Err`.
pub(crate) async fn catch_unwind<F: std::future::Future>(
    future: F,
) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Ok(output)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    })
    .await
}
