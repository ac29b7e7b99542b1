//! What `#[paid]` expansions call. Not a public API: names and shapes change without
//! notice.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, Responder, ResponseError};

pub use actix_web::{HttpRequest, HttpResponse};
pub use inventory;

pub use crate::actix::credits::{CreditsFuture, CreditsSource};
pub use crate::actix::pricing::RouteEntry;
pub use crate::actix::route::{Credits, Route, RouteSpec, Value};

use crate::actix::context::PaymentState;
use crate::actix::payments::Payments;
use crate::actix::paywall::{self, Terms};

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
        if let Some(state) = PaymentState::attached(req) {
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
        let state = PaymentState::attach(req);
        let req = req.clone();
        Box::pin(async move {
            let Some(payments) = Payments::from_request(&req).cloned() else {
                return Err(Rejection::new(paywall::unconfigured(&req)));
            };
            let route = R::route();
            route.observe(&req);
            let spec = route.spec();
            let ids = route.plan_id().and_then(|plan| Ok((plan, route.agent_id()?)));
            let (plan_id, agent_id) = match ids {
                Ok(ids) => ids,
                Err(error) => return Err(Rejection::new(paywall::misconfigured(&payments, &req, error))),
            };
            let terms = Terms {
                plan_id: &plan_id,
                agent_id: agent_id.as_deref(),
                scheme: spec.scheme,
                network: spec.network,
                description: spec.description,
                mime_type: spec.mime_type,
                resource: spec.resource,
            };
            let mut payload = payload;
            let priced = match std::panic::catch_unwind(AssertUnwindSafe(|| route.credits(&req))) {
                Ok(source) => {
                    paywall::price(&payments, &req, &terms, source, &mut payload, spec.handler).await
                }
                Err(_) => {
                    let error = crate::error::ConfigError::CreditsPanicked(spec.handler.to_owned());
                    Err(paywall::misconfigured(&payments, &req, error))
                }
            };
            let credits = priced.map_err(Rejection::new)?;
            paywall::admit(&payments, &req, &terms, credits, &state).await.map_err(Rejection::new)?;
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
        Some(payments) => paywall::settle(payments, &paid.req, &paid.state, response).await,
        None => response,
    }
}

/// The response to a handler that panicked: a 500, never settled.
pub(crate) fn handler_panicked(path: &str) -> HttpResponse {
    tracing::error!(path, "the handler panicked; nothing is settled");
    HttpResponse::InternalServerError()
        .json(serde_json::json!({"error": "Internal Server Error", "message": "the handler failed"}))
}

/// Polls `future`, turning a panic into an `Err`.
pub(crate) async fn catch_unwind<F: Future>(future: F) -> Result<F::Output, Box<dyn Any + Send>> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    })
    .await
}

/// A payment refusal as an extractor error: carries the finished response.
pub struct Rejection {
    status: StatusCode,
    response: RefCell<Option<HttpResponse>>,
}

impl Rejection {
    fn new(response: HttpResponse) -> Self {
        Rejection { status: response.status(), response: RefCell::new(Some(response)) }
    }
}

impl std::fmt::Debug for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rejection({})", self.status)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "payment not accepted ({})", self.status)
    }
}

impl ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        self.response.borrow_mut().take().unwrap_or_else(|| HttpResponse::new(self.status))
    }
}

/// Computes a request's credits from any [`CreditsSource`].
pub fn resolve_credits<'a, M, S: CreditsSource<M> + 'a>(
    source: S,
    req: &'a HttpRequest,
) -> CreditsFuture<'a> {
    source.resolve(req)
}

/// The fixed amount of a credits expression: `Some` for a `u64` const, `None` for a
/// function. Deliberately free of the [`CreditsSource`] bound, so a wrong type is
/// reported once (by [`resolve_credits`]), not twice.
pub fn fixed_credits<S: Any>(source: S) -> Option<u64> {
    (&source as &dyn Any).downcast_ref::<u64>().copied()
}

/// Gives a synchronous credits closure its argument type.
pub fn sync_credits<F: Fn(&HttpRequest) -> u64>(f: F) -> F {
    f
}

/// Gives an async credits closure its argument type.
pub fn async_credits<F: std::ops::AsyncFn(&HttpRequest) -> u64>(f: F) -> F {
    f
}

/// What `plan = …` and `agent = …` expressions may yield.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a plan or agent id",
    label = "expected a `&str` or a `String`",
    note = "write `plan = \"1234…\"`, `plan = env(\"NVM_PLAN_ID\")`, or an expression yielding `&str` or `String`"
)]
pub trait PlanId {
    /// The id as a `String`.
    fn into_id(self) -> String;
}

impl PlanId for &str {
    fn into_id(self) -> String {
        self.to_owned()
    }
}

impl PlanId for String {
    fn into_id(self) -> String {
        self
    }
}

impl PlanId for &String {
    fn into_id(self) -> String {
        self.clone()
    }
}

/// Turns a plan or agent expression into its id.
pub fn plan_value<P: PlanId>(p: P) -> String {
    p.into_id()
}
