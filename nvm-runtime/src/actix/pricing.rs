//! The pricing table: every `#[paid]` handler, recorded at compile time, readable at
//! run time. A ready JSON manifest handler and a start-up check come from it.

use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;

pub use crate::actix::route::ValueSource;
use crate::actix::route::{Credits, Route};
use crate::error::ConfigError;
use crate::flow::Id;

/// One `#[paid]` handler in the table; the macro submits one per handler.
#[doc(hidden)]
#[derive(Debug)]
pub struct RouteEntry(pub &'static Route);

inventory::collect!(RouteEntry);

/// Every `#[paid]` handler linked into this program, sorted by module and name.
pub(crate) fn routes() -> Vec<&'static Route> {
    let mut routes: Vec<&'static Route> =
        inventory::iter::<RouteEntry>.into_iter().map(|entry| entry.0).collect();
    routes.sort_by_key(|r| (r.spec().module, r.spec().handler));
    routes
}

/// A route's price, as the manifest shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PricedRoute {
    /// The handler's name.
    pub handler: String,
    /// The handler's module.
    pub module: String,
    /// The method(s) of its routing attribute when `#[paid]` sits above it, else the
    /// method of the first request served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The path of its routing attribute when `#[paid]` sits above it, else the route
    /// pattern of the first request served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The plan id, when it can be read now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    /// Where the plan id comes from.
    pub plan: ValueSource,
    /// The agent id, when the route has one and it can be read now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The credits: a number, or `"dynamic"`.
    pub credits: serde_json::Value,
    /// The expression of dynamic credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits_source: Option<String>,
    /// Forced scheme.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Forced network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Resource description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl PricedRoute {
    fn of(route: &Route) -> Self {
        let spec = route.spec();
        let (credits, credits_source) = match spec.credits {
            Credits::Fixed(n) => (n.into(), None),
            Credits::Source { source, fixed, .. } => match fixed() {
                Some(n) => (n.into(), Some(source.to_owned())),
                None => ("dynamic".into(), Some(source.to_owned())),
            },
        };
        let (method, path) = route.method_and_path();
        let terms = &spec.terms;
        PricedRoute {
            handler: spec.handler.to_owned(),
            module: spec.module.to_owned(),
            method: method.map(str::to_owned),
            path: path.map(str::to_owned),
            plan_id: terms.plan_id(spec.handler).ok().map(String::from),
            plan: ValueSource::of(&terms.plan),
            agent_id: terms.agent_id(spec.handler).ok().flatten().map(String::from),
            credits,
            credits_source,
            scheme: terms.scheme.as_deref().map(str::to_owned),
            network: terms.network.as_deref().map(str::to_owned),
            description: terms.description.as_deref().map(str::to_owned),
        }
    }
}

/// The pricing manifest: every paid route with its plan and credits.
pub fn manifest() -> Vec<PricedRoute> {
    routes().into_iter().map(PricedRoute::of).collect()
}

/// A ready handler serving [`manifest`] as JSON `{"routes": […]}`.
///
/// ```
/// use actix_web::{web, App};
/// let _app = App::new().route("/pricing", web::get().to(nvm_runtime::actix::pricing::manifest_handler));
/// ```
pub async fn manifest_handler(_req: HttpRequest) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "routes": manifest() }))
}

/// Checks at start-up that every `env("VAR")` plan and agent of every `#[paid]`
/// handler is set, naming the variable and handler when one is not.
///
/// ```
/// if let Err(error) = nvm_runtime::actix::pricing::check_startup() {
///     // e.g. "environment variable NVM_PLAN_ID is not set; it gives the plan id of ask: …"
///     eprintln!("{error}");
/// #   return;
///     std::process::exit(2);
/// }
/// ```
pub fn check_startup() -> Result<(), ConfigError> {
    for route in routes() {
        let spec = route.spec();
        if matches!(spec.terms.plan, Id::Env(_)) {
            spec.terms.plan_id(spec.handler)?;
        }
        if matches!(spec.terms.agent, Some(Id::Env(_))) {
            spec.terms.agent_id(spec.handler)?;
        }
    }
    Ok(())
}
