//! The `#[paid]` extractor: the hidden first argument of a `#[paid]` handler, which
//! prices and verifies the request before any of the handler's own extractors run, and
//! the call that runs the handler's body and settles.

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, Responder};

use super::context::{attach, attached};
use super::payments::Payments;
use super::paywall::{self, Exchange, catch_unwind};
use super::respond::{Rejection, handler_panicked, unconfigured};
use super::route::Route;
use crate::error::ConfigError;
use crate::flow::{Offer, PaymentState};

/// A `#[paid]` handler's link to its [`Route`]; implemented by a marker type the macro
/// generates next to the handler.
pub trait PaidRoute: 'static {
    /// The handler's route.
    fn route() -> &'static Route;
}

/// The hidden first argument of a `#[paid]` handler: extracting it verifies the
/// payment, so the handler's body runs only on a verified (or free) request.
pub struct Paid<R> {
    req: HttpRequest,
    /// `None` when a `PaymentMiddleware` route already protects the request: it
    /// verified, and it settles, so the handler's own payment is not taken twice.
    settle_with: Option<Payments>,
    state: Rc<PaymentState>,
    /// The request body, taken unread: the handler's extractors get it after the
    /// payment decision.
    payload: Payload,
    route: PhantomData<R>,
}

impl<R> std::fmt::Debug for Paid<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paid").field("path", &self.req.path()).finish_non_exhaustive()
    }
}

impl<R: PaidRoute> FromRequest for Paid<R> {
    type Error = Rejection;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Rejection>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let payload = payload.take();
        if let Some(state) = attached(req) {
            tracing::warn!(
                path = req.path(),
                handler = R::route().spec().handler,
                "a PaymentMiddleware route already protects this #[paid] handler; charging once, on the middleware's terms"
            );
            let paid = Paid { req: req.clone(), settle_with: None, state, payload, route: PhantomData };
            return Box::pin(std::future::ready(Ok(paid)));
        }
        // Attached synchronously, before any other extractor of the handler runs, so
        // `PaymentContext` finds it.
        let state = attach(req);
        let req = req.clone();
        Box::pin(async move {
            let Some(payments) = Payments::from_request(&req).cloned() else {
                return Err(Rejection::new(None, unconfigured(&req)));
            };
            let route = R::route();
            route.observe(&req);
            let spec = route.spec();
            let exchange = Exchange { payments: &payments, req: &req };
            let refused = |(refusal, response)| Rejection::new(Some(refusal), response);
            let ids = spec
                .terms
                .plan_id(spec.handler)
                .and_then(|plan| Ok((plan, spec.terms.agent_id(spec.handler)?)));
            let (plan_id, agent_id) = ids.map_err(|error| refused(exchange.misconfigured(error)))?;
            let offer = Offer { plan_id: &plan_id, agent_id: agent_id.as_deref(), terms: &spec.terms };
            let mut payload = payload;
            let priced = match std::panic::catch_unwind(AssertUnwindSafe(|| route.credits(&req))) {
                Ok(source) => paywall::price(&exchange, &offer, source, &mut payload, spec.handler).await,
                Err(_) => Err(exchange.misconfigured(ConfigError::CreditsPanicked(spec.handler.to_owned()))),
            };
            let credits = priced.map_err(refused)?;
            paywall::admit(&exchange, &offer, credits, &state).await.map_err(refused)?;
            Ok(Paid { req, settle_with: Some(payments), state, payload, route: PhantomData })
        })
    }
}

impl<R> Paid<R> {
    /// Runs the handler's own extractors (a tuple of them) on the request and its
    /// body; a failed extractor gives the response actix-web would have sent.
    pub async fn extract<T: FromRequest>(&mut self) -> Result<T, HttpResponse> {
        T::from_request(&self.req, &mut self.payload).await.map_err(|error| {
            let error: actix_web::Error = error.into();
            error.error_response()
        })
    }
}

/// Runs a `#[paid]` handler's body after its payment was verified, then settles on
/// success.
pub async fn run_paid<R, F>(paid: Paid<R>, handler: F) -> HttpResponse
where
    R: PaidRoute,
    F: Future,
    F::Output: Responder,
{
    let response = match catch_unwind(handler).await {
        Ok(output) => output.respond_to(&paid.req).map_into_boxed_body(),
        Err(_) => handler_panicked(paid.req.path()),
    };
    match &paid.settle_with {
        Some(payments) => {
            let exchange = Exchange { payments, req: &paid.req };
            paywall::settle(&exchange, &paid.state, response).await
        }
        None => response,
    }
}
