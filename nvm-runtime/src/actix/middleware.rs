//! `PaymentMiddleware`: protect routes from a table (`"POST /ask"`), for routes you do
//! not annotate. Every line of the payment flow is shared with `#[paid]`.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::error::InternalError;
use actix_web::{Error, HttpMessage, HttpRequest};
use tracing::Instrument as _;

use super::credits::{CreditsFuture, CreditsSource};
use super::exchange::Exchange;
use super::payments::{DeclaredRoute, Payments};
use super::paywall::{self, catch_unwind};
use super::respond::handler_panicked;
use super::route_table::{Anchors, Lookup, RouteKey};
use super::state::attach;
use crate::error::{ConfigError, ConfigProblem};
use crate::flow::{Id, Offer, SettlePoint, Terms, cache_control_problem};

type CreditsFn = dyn for<'a> Fn(&'a HttpRequest) -> CreditsFuture<'a> + Send + Sync;

/// What one route of a [`PaymentMiddleware`] charges.
///
/// ```
/// use actix_web::HttpRequest;
/// use nvm_runtime::RouteConfig;
///
/// let fixed = RouteConfig::new("1234").credits(2).agent("77");
/// let dynamic = RouteConfig::new("1234").credits(|req: &HttpRequest| req.path().len() as u64);
/// let remote = RouteConfig::new("1234").credits(async |_req: &HttpRequest| 3);
/// # let _ = (fixed, dynamic, remote);
/// ```
#[derive(Clone)]
#[must_use]
pub struct RouteConfig {
    terms: Terms,
    credits: Arc<CreditsFn>,
    /// The credits when they are a fixed number (for the start-up report).
    fixed: Option<u64>,
}

impl std::fmt::Debug for RouteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteConfig").field("terms", &self.terms).finish_non_exhaustive()
    }
}

impl RouteConfig {
    /// A route paid with `plan_id`, 1 credit per request.
    pub fn new(plan_id: impl Into<String>) -> Self {
        RouteConfig {
            terms: Terms::new(Id::Literal(Cow::Owned(plan_id.into()))),
            credits: Arc::new(|_| CreditsFuture::Ready(1)),
            fixed: Some(1),
        }
    }

    /// The credits: a `u64`, or a sync or async function of the request (0 = free).
    pub fn credits<M, S>(mut self, source: S) -> Self
    where
        S: CreditsSource<M> + Clone + Send + Sync + 'static,
    {
        self.fixed = (&source as &dyn std::any::Any).downcast_ref::<u64>().copied();
        self.credits = Arc::new(move |req| source.clone().resolve(req));
        self
    }

    /// The agent (`extra.agentId`).
    pub fn agent(mut self, agent_id: impl Into<String>) -> Self {
        self.terms.agent = Some(Id::Literal(Cow::Owned(agent_id.into())));
        self
    }

    /// Forces the scheme instead of auto-detecting it.
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.terms.scheme = Some(Cow::Owned(scheme.into()));
        self
    }

    /// Forces the network.
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.terms.network = Some(Cow::Owned(network.into()));
        self
    }

    /// `resource.description`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.terms.description = Some(Cow::Owned(description.into()));
        self
    }

    /// `resource.mimeType`.
    pub fn mime_type(mut self, mime_type: impl Into<String>) -> Self {
        self.terms.mime_type = Some(Cow::Owned(mime_type.into()));
        self
    }

    /// `resource.url` instead of the request path.
    pub fn resource(mut self, url: impl Into<String>) -> Self {
        self.terms.resource = Some(Cow::Owned(url.into()));
        self
    }

    /// When to settle: [`SettlePoint::AfterBody`] streams the response at once and
    /// settles when its body ends, for what was metered; [`SettlePoint::BeforeBody`]
    /// holds the head until settled. Default: after the body for streamed bodies,
    /// before it otherwise.
    pub fn settle(mut self, point: SettlePoint) -> Self {
        self.terms.settle = Some(point);
        self
    }

    /// Paid answers of this route carry `Cache-Control: value` instead of
    /// `private, no-store`, so the buyer's own cache may keep them. It must keep them
    /// out of shared caches: `private`, and neither `public` nor `s-maxage`
    /// ([`PaymentMiddleware::check`] reports the route otherwise).
    ///
    /// ```
    /// use nvm_runtime::{PaymentMiddleware, RouteConfig};
    /// # let payments = nvm_runtime::Payments::builder()
    /// #     .api_key("sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.").build().unwrap();
    ///
    /// let report = RouteConfig::new("1234").credits(5).cache_control("private, max-age=300");
    /// assert!(PaymentMiddleware::new(payments.clone()).route("GET /report", report).check().is_ok());
    /// let leaky = RouteConfig::new("1234").cache_control("public, max-age=300");
    /// let error = PaymentMiddleware::new(payments).route("GET /report", leaky).check().unwrap_err();
    /// assert!(error.to_string().contains("private"));
    /// ```
    pub fn cache_control(mut self, value: impl Into<String>) -> Self {
        self.terms.cache_control = Some(Cow::Owned(value.into()));
        self
    }

    /// The plan id (a literal: never an error).
    fn plan_id(&self) -> Cow<'_, str> {
        self.terms.plan_id("a PaymentMiddleware route").unwrap_or_default()
    }

    /// The terms of a request.
    fn offer<'a>(&'a self, plan_id: &'a str) -> Offer<'a> {
        let agent_id = match &self.terms.agent {
            Some(Id::Literal(id)) => Some(id.as_ref()),
            _ => None,
        };
        Offer { plan_id, agent_id, terms: &self.terms }
    }
}

/// Protects the routes of a table with Nevermined payments, as the official FastAPI and
/// Express middlewares do, matched with the router's own rules.
///
/// A key is `"METHOD /path"` where the path is an actix-web resource pattern
/// (`/reports/{id}`, `/files/{tail}*`, `/orders/{id:\d+}`; `:id` is an alias of
/// `{id}`), written in full, scope prefixes included. A request is matched on the
/// percent-decoded path the router matches, so `/%61sk` is `/ask`. An entry protects the
/// resource registered with the same pattern (up to parameter names); an entry
/// without dynamic segments protects that one path; an entry whose pattern names no
/// registered resource protects every path it matches. `HEAD` is charged as `GET`
/// unless a `HEAD` entry exists, and a path that only a `NormalizePath` inside the
/// middleware would route (`/ask/`, `//ask`) is matched in its normalized form.
/// Unmatched requests pass through untouched.
///
/// ```
/// use actix_web::{web, App, HttpResponse};
/// use nvm_runtime::{PaymentMiddleware, Payments, RouteConfig};
///
/// let payments = Payments::builder()
///     .api_key("sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.")
///     .build()
///     .unwrap();
/// let app = App::new()
///     .wrap(
///         PaymentMiddleware::new(payments)
///             .route("POST /ask", RouteConfig::new("1234").credits(1))
///             .route("GET /reports/:id", RouteConfig::new("1234").credits(5)),
///     )
///     .route("/ask", web::post().to(|| async { HttpResponse::Ok().body("paid answer") }));
/// ```
///
/// A key without a method (`"/ask"`) is refused: [`PaymentMiddleware::check`] says
/// so, and the app fails to start. A key that
/// matches no route of the app is found when the first request shows the middleware the
/// app's routes (actix-web builds them only then): it is logged as an error and every
/// request through the middleware is answered 500 with a message naming the key, so a
/// typo never leaves a route unprotected.
#[derive(Clone)]
pub struct PaymentMiddleware {
    payments: Payments,
    keys: Arc<Vec<RouteKey>>,
    configs: Arc<Vec<RouteConfig>>,
    error: Option<ConfigError>,
}

impl std::fmt::Debug for PaymentMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentMiddleware")
            .field("routes", &self.keys.iter().map(|k| k.text.as_str()).collect::<Vec<_>>())
            .field("error", &self.error)
            .finish()
    }
}

impl PaymentMiddleware {
    /// A middleware with no routes yet.
    pub fn new(payments: Payments) -> Self {
        PaymentMiddleware { payments, keys: Arc::default(), configs: Arc::default(), error: None }
    }

    /// Adds a route; an invalid key (or a `cache_control` a shared cache could keep) is
    /// kept as an error that stops the app from starting: [`PaymentMiddleware::check`]
    /// says which.
    pub fn route(self, key: &str, config: RouteConfig) -> Self {
        match self.clone().try_route(key, config) {
            Ok(middleware) => middleware,
            Err(error) => {
                tracing::error!(error = %crate::error::Report(&error), "PaymentMiddleware route refused");
                PaymentMiddleware { error: self.error.or(Some(error)), ..self }
            }
        }
    }

    /// Adds a route, or says why it is refused.
    fn try_route(mut self, key: &str, config: RouteConfig) -> Result<Self, ConfigError> {
        let key = RouteKey::parse(key)?;
        if let Some(value) = &config.terms.cache_control
            && let Some(why) = cache_control_problem(value)
        {
            return Err(ConfigProblem::CacheControl { route: key.text, value: value.to_string(), why }.into());
        }
        if !config.terms.forces_scheme() {
            // Fetched by `Payments::prepare`.
            self.payments.plans().want(&config.plan_id());
        }
        // Reported by `Payments::prepare`.
        self.payments.declare(DeclaredRoute {
            route: key.text.clone(),
            plan: config.plan_id().into_owned(),
            credits: config.fixed,
            settle: config.terms.settle,
        });
        Arc::make_mut(&mut self.keys).push(key);
        Arc::make_mut(&mut self.configs).push(config);
        Ok(self)
    }

    /// The first refused route, if any, with what to write instead.
    ///
    /// ```
    /// use nvm_runtime::{PaymentMiddleware, RouteConfig};
    /// # let payments = nvm_runtime::Payments::builder()
    /// #     .api_key("sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.").build().unwrap();
    ///
    /// let middleware = PaymentMiddleware::new(payments).route("/ask", RouteConfig::new("1234"));
    /// let error = middleware.check().unwrap_err();
    /// assert!(error.to_string().contains("\"POST /ask\""), "{error}");
    /// ```
    pub fn check(&self) -> Result<(), ConfigError> {
        self.error.clone().map_or(Ok(()), Err)
    }
}

impl<S, B> Transform<S, ServiceRequest> for PaymentMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Transform = PaymentService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        if let Err(error) = self.check() {
            tracing::error!(error = %crate::error::Report(&error), "PaymentMiddleware not started");
            return ready(Err(()));
        }
        ready(Ok(PaymentService {
            service: Rc::new(service),
            middleware: self.clone(),
            anchors: OnceCell::new(),
        }))
    }
}

/// The service [`PaymentMiddleware`] wraps around an app.
pub struct PaymentService<S> {
    service: Rc<S>,
    middleware: PaymentMiddleware,
    /// The table checked against the app's routes, on the first request.
    anchors: OnceCell<Result<Anchors, ConfigError>>,
}

impl<S> PaymentService<S> {
    /// The route config for `req`, `Ok(None)` when the table does not cover it, or the
    /// error of a table that does not fit the app.
    fn config_for(&self, req: &ServiceRequest) -> Result<Option<RouteConfig>, ConfigError> {
        let keys = &self.middleware.keys;
        let anchors = self.anchors.get_or_init(|| {
            Anchors::learn(keys, req.resource_map()).inspect_err(|error| {
                tracing::error!(error = %crate::error::Report(&error), "PaymentMiddleware routes do not fit the app; refusing every request");
            })
        });
        let anchors = anchors.as_ref().map_err(Clone::clone)?;
        let path = req.match_info().as_str();
        let lookup = Lookup { keys, anchors, rmap: req.resource_map() };
        let found = lookup.find(req.method().as_str(), path);
        Ok(found.map(|i| self.middleware.configs[i].clone()))
    }
}

impl<S, B> Service<ServiceRequest> for PaymentService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<ServiceResponse<BoxBody>, Error>>>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let payments = self.middleware.payments.clone();
        let config = match self.config_for(&req) {
            Ok(Some(config)) => config,
            Ok(None) => return Box::pin(async move { Ok(service.call(req).await?.map_into_boxed_body()) }),
            Err(error) => {
                let (_, response) = Exchange { payments: &payments, req: req.request() }.misconfigured(error);
                return Box::pin(std::future::ready(Ok(req.into_response(response))));
            }
        };
        let state = attach(req.request());
        let span = paywall::telemetry_span(req.request(), &state);
        let served = async move {
            // The request is only borrowed here: a clone kept across `service.call` would
            // make the routing below (scopes, resources) panic on its `Rc::get_mut`.
            let mut payload = req.take_payload();
            let admitted = {
                let http = req.request();
                let exchange = Exchange { payments: &payments, req: http };
                let plan_id = config.plan_id();
                let offer = config.offer(&plan_id);
                let what = format!("the {} {} route", http.method(), http.path());
                let priced =
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (config.credits)(http))) {
                        Ok(source) => paywall::price(&exchange, &offer, source, &mut payload, &what).await,
                        Err(_) => Err(exchange.misconfigured(ConfigProblem::CreditsPanicked(what).into())),
                    };
                paywall::admit(&exchange, &offer, priced, &state, &mut payload).await
            };
            match admitted {
                Ok(None) => {}
                Ok(Some(replayed)) => return Ok(req.into_response(replayed)),
                Err((_, refusal)) => return Ok(req.into_response(refusal)),
            }
            req.set_payload(payload);
            let path = req.path().to_owned();
            let response = match catch_unwind(service.call(req)).await {
                Ok(result) => result?.map_into_boxed_body(),
                Err(_) => {
                    // The request went down with the handler: answer through an error.
                    let response = handler_panicked(&path);
                    return Err(InternalError::from_response("the handler panicked", response).into());
                }
            };
            let (http, response) = response.into_parts();
            let exchange = Exchange { payments: &payments, req: &http };
            let response = paywall::settle(&exchange, &state, &config.terms, response).await;
            Ok(ServiceResponse::new(http, response))
        };
        // A span nobody listens to is not entered and left at every poll.
        if span.is_disabled() { Box::pin(served) } else { Box::pin(served.instrument(span)) }
    }
}
