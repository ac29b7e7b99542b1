//! The `#[paid]` extractor: the hidden argument of a `#[paid]` handler. Extracting it
//! only takes the request's body, unread; [`Paid::admit`] then prices and verifies the
//! request before any of the handler's own extractors run, and [`run_paid`] runs the
//! handler's body and settles. Nothing here is generic over the handler: one copy of
//! the flow serves every `#[paid]` handler of a program.

use std::future::{Future, Ready, ready};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, Responder, ResponseError};
use tracing::Instrument as _;

use super::credits::CreditsFuture;
use super::exchange::Exchange;
use super::payments::Payments;
use super::paywall::{self, catch_unwind};
use super::rejection::Rejection;
use super::respond::{handler_panicked, unconfigured};
use super::route::Route;
use super::state::{attach, attached};
use crate::error::ConfigProblem;
use crate::flow::idempotency::KEY_HEADER;
use crate::flow::{Offer, PaymentState, Terms};

/// The hidden argument of a `#[paid]` handler.
pub struct Paid {
    req: HttpRequest,
    /// `None` until admitted, and when a `PaymentMiddleware` route already protects the
    /// request: it verified, and it settles, so the handler's own payment is not taken
    /// twice.
    settle_with: Option<Payments>,
    /// Whether a `PaymentMiddleware` route attached the state.
    under_middleware: bool,
    state: Arc<PaymentState>,
    /// The request body, taken unread: the handler's extractors get it after the
    /// payment decision.
    payload: Payload,
    /// When the route settles (set when admitted).
    terms: Option<&'static Terms>,
    /// Whether the handler runs while the payment is verified (its extractors took the
    /// body already).
    speculating: bool,
}

impl std::fmt::Debug for Paid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paid").field("path", &self.req.path()).finish_non_exhaustive()
    }
}

impl FromRequest for Paid {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let payload = payload.take();
        let (state, under_middleware) = match attached(req) {
            Some(state) => (state, true),
            // Attached before the handler's own extractors run, so `PaymentContext`
            // finds it.
            None => (attach(req), false),
        };
        ready(Ok(Paid {
            req: req.clone(),
            settle_with: None,
            under_middleware,
            state,
            payload,
            terms: None,
            speculating: false,
        }))
    }
}

impl Paid {
    /// Prices and verifies the request for `route`: `Ok(None)` runs the handler;
    /// `Ok(Some(response))` answers an idempotent retry with its stored response; `Err`
    /// is the answer to send instead (402, 409, 413, 422, 500, 503): the handler never
    /// runs.
    pub(crate) async fn admit(&mut self, route: &'static Route) -> Result<Option<HttpResponse>, Rejection> {
        let spec = route.spec();
        if self.under_middleware {
            tracing::warn!(
                path = self.req.path(),
                handler = spec.handler,
                "a PaymentMiddleware route already protects this #[paid] handler; charging once, on the middleware's terms"
            );
            return Ok(None);
        }
        let req = &self.req;
        let Some(payments) = Payments::from_request(req).cloned() else {
            return Err(Rejection::new(None, unconfigured(req, spec.handler)));
        };
        route.observe(req.method().as_str(), &paywall::route_of(req, &self.state));
        let exchange = Exchange { payments: &payments, req };
        let refused = |(refusal, response)| Rejection::new(Some(refusal), response);
        let ids =
            spec.terms.plan_id(spec.handler).and_then(|plan| Ok((plan, spec.terms.agent_id(spec.handler)?)));
        let (plan_id, agent_id) = match ids {
            Ok(ids) => ids,
            Err(error) => {
                let refusal = exchange.misconfigured(error);
                let offer = Offer { plan_id: "", agent_id: None, terms: &spec.terms };
                let answer = paywall::admit(&exchange, &offer, Err(refusal), &self.state, &mut self.payload);
                return answer.await.map_err(refused);
            }
        };
        let offer = Offer { plan_id: &plan_id, agent_id: agent_id.as_deref(), terms: &spec.terms };
        let priced = match std::panic::catch_unwind(AssertUnwindSafe(|| route.credits(req))) {
            // The handler's extractors took the body: it cannot be priced.
            Ok(CreditsFuture::Body { .. }) if self.speculating => {
                Err(exchange
                    .misconfigured(ConfigProblem::SpeculativeBodyPrice(spec.handler.to_owned()).into()))
            }
            Ok(source) => paywall::price(&exchange, &offer, source, &mut self.payload, spec.handler).await,
            Err(_) => {
                Err(exchange.misconfigured(ConfigProblem::CreditsPanicked(spec.handler.to_owned()).into()))
            }
        };
        let replay = paywall::admit(&exchange, &offer, priced, &self.state, &mut self.payload).await;
        if let Some(response) = replay.map_err(refused)? {
            return Ok(Some(response));
        }
        self.settle_with = Some(payments);
        self.terms = Some(&spec.terms);
        Ok(None)
    }

    /// Whether the handler runs while the payment is verified: the route says so
    /// (`speculative = true`), and the request carries a well-formed token and no
    /// `Idempotency-Key` (an unpaid request is refused before its body is read, and a keyed
    /// one is looked up before it runs).
    fn speculates(&self, route: &Route) -> bool {
        if !route.spec().terms.speculative
            || self.under_middleware
            || self.req.headers().contains_key(KEY_HEADER)
        {
            return false;
        }
        let Some(payments) = Payments::from_request(&self.req) else { return false };
        let exchange = Exchange { payments, req: &self.req };
        crate::flow::read_token(payments.seller(), &exchange).is_ok()
    }

    /// Runs the handler's own extractors (a tuple of them) on the request and its
    /// body; a failed extractor gives the response actix-web would have sent.
    pub async fn extract<T: FromRequest>(&mut self) -> Result<T, HttpResponse> {
        T::from_request(&self.req, &mut self.payload).await.map_err(|error| {
            let error: actix_web::Error = error.into();
            error.error_response()
        })
    }
}

/// Serves a `#[paid]` request: admits it for `route`, runs the handler's own
/// extractors (`T`, a tuple) and then `handler`, and settles on success.
pub async fn serve<T, H, F>(mut paid: Paid, route: &'static Route, handler: H) -> HttpResponse
where
    T: FromRequest,
    H: FnOnce(T) -> F,
    F: Future,
    F::Output: Responder,
{
    let span = paywall::telemetry_span(&paid.req, &paid.state);
    let served = async move {
        if paid.speculates(route) {
            return speculate(paid, route, handler).await;
        }
        match paid.admit(route).await {
            Ok(None) => {}
            Ok(Some(replayed)) => return replayed,
            Err(rejection) => return rejection.error_response(),
        }
        let args = match paid.extract::<T>().await {
            Ok(args) => args,
            Err(response) => return response,
        };
        run(paid, handler(args)).await
    };
    // A span nobody listens to is not entered and left at every poll.
    if span.is_disabled() { served.await } else { served.instrument(span).await }
}

/// Serves a `#[paid(speculative = true)]` request: its extractors, then its handler
/// while its payment is priced and verified; the answer is released only once verified
/// (a refused payment gets its refusal, the handler's answer dropped), then settled.
async fn speculate<T, H, F>(mut paid: Paid, route: &'static Route, handler: H) -> HttpResponse
where
    T: FromRequest,
    H: FnOnce(T) -> F,
    F: Future,
    F::Output: Responder,
{
    paid.speculating = true;
    let args = match paid.extract::<T>().await {
        Ok(args) => args,
        Err(response) => return response,
    };
    let running = catch_unwind(handler(args));
    let (admitted, output) = both(paid.admit(route), running).await;
    match admitted {
        Ok(None) => finish(paid, output).await,
        Ok(Some(replayed)) => replayed,
        Err(rejection) => {
            tracing::debug!(
                path = paid.req.path(),
                "speculative handler's answer dropped: the payment was refused"
            );
            rejection.error_response()
        }
    }
}

/// Polls `a` and `b` together until both are done.
async fn both<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut first, mut second) = (None, None);
    std::future::poll_fn(|cx| {
        if first.is_none()
            && let std::task::Poll::Ready(done) = a.as_mut().poll(cx)
        {
            first = Some(done);
        }
        if second.is_none()
            && let std::task::Poll::Ready(done) = b.as_mut().poll(cx)
        {
            second = Some(done);
        }
        if first.is_some() && second.is_some() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    match (first, second) {
        (Some(first), Some(second)) => (first, second),
        _ => unreachable!("both futures are done"),
    }
}

/// Runs a `#[paid]` handler's body after its payment was admitted, then settles on
/// success.
async fn run<F>(paid: Paid, handler: F) -> HttpResponse
where
    F: Future,
    F::Output: Responder,
{
    finish(paid, catch_unwind(handler).await).await
}

/// The handler's `output` (or its panic) as a response, settled on success.
async fn finish<O: Responder>(paid: Paid, output: Result<O, Box<dyn std::any::Any + Send>>) -> HttpResponse {
    let response = match output {
        Ok(output) => output.respond_to(&paid.req).map_into_boxed_body(),
        Err(_) => handler_panicked(paid.req.path()),
    };
    match (&paid.settle_with, paid.terms) {
        (Some(payments), Some(terms)) => {
            let exchange = Exchange { payments, req: &paid.req };
            paywall::settle(&exchange, &paid.state, terms, response).await
        }
        _ => response,
    }
}
