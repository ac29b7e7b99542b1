//! `PaymentMiddleware`: protect routes from a table (`"POST /ask"`), for routes you do
//! not annotate. Every line of the payment flow is shared with `#[paid]`.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::error::InternalError;
use actix_web::{Error, HttpRequest};

use crate::config::Payments;
use crate::context::PaymentState;
use crate::credits::{CreditsFuture, CreditsSource};
use crate::error::ConfigError;
use crate::paywall::{self, Terms};

type CreditsFn = dyn for<'a> Fn(&'a HttpRequest) -> CreditsFuture<'a> + Send + Sync;

/// What one route of a [`PaymentMiddleware`] charges.
///
/// ```
/// use actix_web::HttpRequest;
/// use nvm_runtime::middleware::RouteConfig;
///
/// let fixed = RouteConfig::new("1234").credits(2).agent("77");
/// let dynamic = RouteConfig::new("1234").credits(|req: &HttpRequest| req.path().len() as u64);
/// let remote = RouteConfig::new("1234").credits(async |_req: &HttpRequest| 3);
/// # let _ = (fixed, dynamic, remote);
/// ```
#[derive(Clone)]
#[must_use]
pub struct RouteConfig {
    plan_id: String,
    agent_id: Option<String>,
    credits: Arc<CreditsFn>,
    scheme: Option<String>,
    network: Option<String>,
    description: Option<String>,
    mime_type: Option<String>,
    resource: Option<String>,
}

impl std::fmt::Debug for RouteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteConfig")
            .field("plan_id", &self.plan_id)
            .field("agent_id", &self.agent_id)
            .field("scheme", &self.scheme)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl RouteConfig {
    /// A route paid with `plan_id`, 1 credit per request.
    pub fn new(plan_id: impl Into<String>) -> Self {
        RouteConfig {
            plan_id: plan_id.into(),
            agent_id: None,
            credits: Arc::new(|_| CreditsFuture::Ready(1)),
            scheme: None,
            network: None,
            description: None,
            mime_type: None,
            resource: None,
        }
    }

    /// The credits: a `u64`, or a sync or async function of the request (0 = free).
    pub fn credits<M, S>(mut self, source: S) -> Self
    where
        S: CreditsSource<M> + Clone + Send + Sync + 'static,
    {
        self.credits = Arc::new(move |req| source.clone().resolve(req));
        self
    }

    /// The agent (`extra.agentId`).
    pub fn agent(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(agent_id.into());
        self
    }

    /// Forces the scheme instead of auto-detecting it.
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = Some(scheme.into());
        self
    }

    /// Forces the network.
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = Some(network.into());
        self
    }

    /// `resource.description`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// `resource.mimeType`.
    pub fn mime_type(mut self, mime_type: impl Into<String>) -> Self {
        self.mime_type = Some(mime_type.into());
        self
    }

    /// `resource.url` instead of the request path.
    pub fn resource(mut self, url: impl Into<String>) -> Self {
        self.resource = Some(url.into());
        self
    }

    fn terms(&self) -> Terms<'_> {
        Terms {
            plan_id: &self.plan_id,
            agent_id: self.agent_id.as_deref(),
            scheme: self.scheme.as_deref(),
            network: self.network.as_deref(),
            description: self.description.as_deref(),
            mime_type: self.mime_type.as_deref(),
            resource: self.resource.as_deref(),
        }
    }
}

/// A `"METHOD /path/:param"` route key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteKey {
    method: String,
    segments: Vec<String>,
}

impl RouteKey {
    fn parse(key: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::InvalidRouteKey(key.to_owned());
        let (method, path) = key.trim().split_once(char::is_whitespace).ok_or_else(bad)?;
        let path = path.trim();
        let valid_method = !method.is_empty() && method.bytes().all(|b| b.is_ascii_alphabetic());
        if !valid_method || !path.starts_with('/') {
            return Err(bad());
        }
        Ok(RouteKey { method: method.to_ascii_uppercase(), segments: segments(path) })
    }

    fn is_pattern(&self) -> bool {
        self.segments.iter().any(|s| s.starts_with(':'))
    }

    fn matches(&self, method: &str, path: &[&str]) -> bool {
        self.method == method
            && self.segments.len() == path.len()
            && self
                .segments
                .iter()
                .zip(path)
                .all(|(pattern, actual)| pattern.starts_with(':') || pattern == actual)
    }
}

/// Path segments, ignoring empty ones (so a trailing slash matches too: fail closed).
fn segments(path: &str) -> Vec<String> {
    path.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Protects the routes of a table with Nevermined payments, as the official FastAPI and
/// Express middlewares do. Route keys are `"METHOD /path"` with `:param` segments; an
/// exact key wins over a pattern, then the first pattern with the same method and
/// number of segments; unmatched requests pass through untouched.
///
/// ```
/// use actix_web::{web, App, HttpResponse};
/// use nvm_runtime::Payments;
/// use nvm_runtime::middleware::{PaymentMiddleware, RouteConfig};
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
/// A key without a method (`"/ask"`) is refused: [`PaymentMiddleware::check`] and
/// [`PaymentMiddleware::try_route`] say so, and the app fails to start.
#[derive(Clone)]
pub struct PaymentMiddleware {
    payments: Payments,
    routes: Arc<Vec<(RouteKey, RouteConfig)>>,
    error: Option<ConfigError>,
}

impl std::fmt::Debug for PaymentMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentMiddleware")
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|(k, _)| format!("{} /{}", k.method, k.segments.join("/")))
                    .collect::<Vec<_>>(),
            )
            .field("error", &self.error)
            .finish()
    }
}

impl PaymentMiddleware {
    /// A middleware with no routes yet.
    pub fn new(payments: Payments) -> Self {
        PaymentMiddleware { payments, routes: Arc::new(Vec::new()), error: None }
    }

    /// Adds a route; an invalid key is kept as an error that stops the app from
    /// starting (see [`PaymentMiddleware::check`]).
    pub fn route(self, key: &str, config: RouteConfig) -> Self {
        match self.clone().try_route(key, config) {
            Ok(middleware) => middleware,
            Err(error) => {
                tracing::error!(%error, "PaymentMiddleware route refused");
                PaymentMiddleware { error: self.error.or(Some(error)), ..self }
            }
        }
    }

    /// Adds a route, or says why its key is invalid.
    pub fn try_route(mut self, key: &str, config: RouteConfig) -> Result<Self, ConfigError> {
        let key = RouteKey::parse(key)?;
        Arc::make_mut(&mut self.routes).push((key, config));
        Ok(self)
    }

    /// The first invalid route key, if any.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.error.clone().map_or(Ok(()), Err)
    }

    fn find(&self, method: &str, path: &str) -> Option<&RouteConfig> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let exact = self.routes.iter().find(|(key, _)| !key.is_pattern() && key.matches(method, &parts));
        exact
            .or_else(|| self.routes.iter().find(|(key, _)| key.is_pattern() && key.matches(method, &parts)))
            .map(|(_, config)| config)
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
            tracing::error!(%error, "PaymentMiddleware not started");
            return ready(Err(()));
        }
        ready(Ok(PaymentService { service: Rc::new(service), middleware: self.clone() }))
    }
}

/// The service [`PaymentMiddleware`] wraps around an app.
pub struct PaymentService<S> {
    service: Rc<S>,
    middleware: PaymentMiddleware,
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

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let Some(config) = self.middleware.find(req.method().as_str(), req.path()).cloned() else {
            return Box::pin(async move { Ok(service.call(req).await?.map_into_boxed_body()) });
        };
        let payments = self.middleware.payments.clone();
        Box::pin(async move {
            // The request is only borrowed here: a clone kept across `service.call` would
            // make the routing below (scopes, resources) panic on its `Rc::get_mut`.
            let state = PaymentState::attach(req.request());
            let Ok(credits) =
                crate::__private::catch_unwind(async { (config.credits)(req.request()).await }).await
            else {
                let http = req.request();
                let error =
                    ConfigError::CreditsPanicked(format!("the {} {} route", http.method(), http.path()));
                let response = paywall::misconfigured(&payments, http, error);
                return Ok(req.into_response(response));
            };
            if let Err(refusal) =
                paywall::admit(&payments, req.request(), &config.terms(), credits, &state).await
            {
                return Ok(req.into_response(refusal));
            }
            let path = req.path().to_owned();
            let response = match crate::__private::catch_unwind(service.call(req)).await {
                Ok(result) => result?.map_into_boxed_body(),
                Err(_) => {
                    // The request went down with the handler: answer through an error.
                    let response = crate::__private::handler_panicked(&path);
                    return Err(InternalError::from_response("the handler panicked", response).into());
                }
            };
            let (http, response) = response.into_parts();
            let response = paywall::settle(&payments, &http, &state, response).await;
            Ok(ServiceResponse::new(http, response))
        })
    }
}
