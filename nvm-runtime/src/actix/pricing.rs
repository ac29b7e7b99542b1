//! The pricing table: every `#[paid]` handler, recorded at compile time, readable at
//! run time. From it come a ready JSON manifest handler ([`manifest_handler`]), the
//! start-up check of `Payments::prepare` and, with the `utoipa` feature, the paid
//! operations of an OpenAPI document (`openapi`).
//!
//! The table holds each handler's terms (plan, agent, credits, settle point,
//! description) and the routing attributes below its `#[paid]`: the path *as written*
//! (`/models`), which is not the path it is served at once registered inside
//! `web::scope("/v1")`. The manifest handler runs inside the app, so it reads the app's
//! router and lists every paid route at its full path (`/v1/models`), once per place it
//! is mounted: see [`app_manifest`] for the rule.
//!
//! The source text of a credits expression is never kept (a seller's pricing logic is
//! not public): dynamic credits are listed as `"dynamic"`.

use actix_web::{HttpRequest, HttpResponse};
use serde::{Serialize, Serializer};

use crate::actix::resource_map::{self, Registered};
use crate::actix::route::{Mount, Route, RouteEntry};
use crate::error::ConfigError;
use crate::flow::{Id, SettlePoint, Terms};

/// Every `#[paid]` handler linked into this program, sorted by module and name.
pub(crate) fn routes() -> Vec<&'static Route> {
    let mut routes: Vec<&'static Route> =
        inventory::iter::<RouteEntry>.into_iter().map(|entry| entry.0).collect();
    routes.sort_by_key(|r| (r.spec().module, r.spec().handler));
    routes
}

/// A plan or agent id as the manifest shows it: the id when it can be read now, else
/// where it comes from. Never an expression's source text.
///
/// In JSON: `"1234…"`, `{"env": "NVM_PLAN_ID"}` or `{"expr": "empty"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ValueSource {
    /// The id: a literal, a set `env("VAR")`, or an expression's current value.
    Id(String),
    /// An `env("VAR")` whose variable is not set (or empty): the variable's name.
    Env(String),
    /// An expression that yields no id now (an empty string).
    Expr,
}

impl ValueSource {
    /// The plan of `terms`, as shown.
    pub(crate) fn plan(terms: &Terms, handler: &str) -> Self {
        match terms.plan_id(handler) {
            Ok(id) => ValueSource::Id(id.into_owned()),
            Err(_) => Self::unread(&terms.plan),
        }
    }

    /// The agent of `terms`, if it has one, as shown.
    pub(crate) fn agent(terms: &Terms, handler: &str) -> Option<Self> {
        let agent = terms.agent.as_ref()?;
        Some(match terms.agent_id(handler) {
            Ok(Some(id)) => ValueSource::Id(id.into_owned()),
            Ok(None) | Err(_) => Self::unread(agent),
        })
    }

    fn unread(id: &Id) -> Self {
        match id {
            Id::Literal(id) => ValueSource::Id(id.to_string()),
            Id::Env(var) => ValueSource::Env((*var).to_owned()),
            Id::Expr(..) => ValueSource::Expr,
        }
    }
}

impl Serialize for ValueSource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            ValueSource::Id(id) => serializer.serialize_str(id),
            ValueSource::Env(var) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("env", var)?;
                map.end()
            }
            ValueSource::Expr => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("expr", "empty")?;
                map.end()
            }
        }
    }
}

/// One paid route of the manifest: a method and path with the terms of the `#[paid]`
/// handler serving it. Published as JSON only (see [`manifest`]; `module` is not
/// published).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PricedRoute {
    /// The HTTP method; `None` when not known yet (a handler whose routing attribute
    /// sits above `#[paid]`, not served yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) method: Option<String>,
    /// The path pattern, as actix-web routes it (`/v1/models/{id}`). In [`manifest`],
    /// the routing attribute's path as written (no scope prefix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<String>,
    /// The handler's name.
    pub(crate) handler: String,
    /// The handler's module (not serialized: the app's layout is not the buyer's
    /// business).
    #[serde(skip)]
    pub(crate) module: String,
    /// The plan a request pays with.
    pub(crate) plan: ValueSource,
    /// The agent sent with the plan, when the route has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) agent: Option<ValueSource>,
    /// The credits of a request: a number, or `"dynamic"` when they depend on the
    /// request (a closure, a function, `by_body`).
    pub(crate) credits: serde_json::Value,
    /// When the payment is settled: `"before_body"`, `"after_body"`, or `"default"`
    /// (`None`: before the body for a buffered answer, after it for a streamed one).
    #[serde(serialize_with = "settle_name")]
    pub(crate) settle: Option<SettlePoint>,
    /// The forced scheme (`scheme = …`), else detected from the plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scheme: Option<String>,
    /// The forced network (`network = …`), else detected from the plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) network: Option<String>,
    /// The resource's description (`description = …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
}

/// `"before_body"`, `"after_body"`, `"deferred"` or `"default"`.
pub(crate) fn settle_label(settle: Option<SettlePoint>) -> &'static str {
    match settle {
        Some(SettlePoint::BeforeBody) => "before_body",
        Some(SettlePoint::AfterBody) => "after_body",
        Some(SettlePoint::Deferred) => "deferred",
        None => "default",
    }
}

fn settle_name<S: Serializer>(settle: &Option<SettlePoint>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(settle_label(*settle))
}

impl PricedRoute {
    fn of(route: &Route, method: Option<&str>, path: Option<&str>) -> Self {
        let spec = route.spec();
        let terms = &spec.terms;
        let credits = route.fixed_credits().map_or_else(|| "dynamic".into(), serde_json::Value::from);
        PricedRoute {
            method: method.map(str::to_owned),
            path: path.map(str::to_owned),
            handler: spec.handler.to_owned(),
            module: spec.module.to_owned(),
            plan: ValueSource::plan(terms, spec.handler),
            agent: ValueSource::agent(terms, spec.handler),
            credits,
            settle: terms.settle,
            scheme: terms.scheme.as_deref().map(str::to_owned),
            network: terms.network.as_deref().map(str::to_owned),
            description: terms.description.as_deref().map(str::to_owned),
        }
    }

    /// The same terms (what a buyer pays), whatever the handler.
    fn same_terms(&self, other: &Self) -> bool {
        (&self.plan, &self.agent, &self.credits, self.settle, &self.scheme, &self.network, &self.description)
            == (
                &other.plan,
                &other.agent,
                &other.credits,
                other.settle,
                &other.scheme,
                &other.network,
                &other.description,
            )
    }
}

/// The pricing table itself: every `#[paid]` handler linked into this program, one
/// entry per method of each routing attribute below its `#[paid]`, with the path as
/// that attribute writes it (no scope prefix: the table is built before any app).
/// A handler without such an attribute has the method and full path of the first
/// request it served, or none. For the routes an app serves, at their full paths,
/// use [`app_manifest`].
///
/// Each entry is a JSON object, absent fields omitted:
///
/// ```json
/// {"method": "GET", "path": "/models/{id}", "handler": "model", "plan": "1234",
///  "agent": "5678", "credits": 2, "settle": "default", "description": "A model card"}
/// ```
///
/// - `plan`, `agent`: the id when it can be read now, else where it comes from:
///   `{"env": "NVM_PLAN_ID"}` (a variable not set) or `{"expr": "empty"}` (an
///   expression that yields no id now). Never an expression's source text;
/// - `credits`: a number, or `"dynamic"` when they depend on the request (a closure, a
///   function, `by_body`);
/// - `settle`: `"before_body"`, `"after_body"`, `"deferred"` or `"default"` (before the
///   body for a buffered answer, after it for a streamed one);
/// - `method`, `path`: absent when not known yet (a handler whose routing attribute
///   sits above `#[paid]`, not served yet); `scheme`, `network`, `description`: present
///   when the handler forces them.
///
/// ```
/// for route in nvm_runtime::actix::pricing::manifest() {
///     println!("{} {} {}: {}", route["handler"], route["method"], route["path"], route["credits"]);
/// }
/// ```
pub fn manifest() -> Vec<serde_json::Value> {
    to_json(&table())
}

/// The routes of [`manifest`], typed.
pub(crate) fn table() -> Vec<PricedRoute> {
    let mut entries = Vec::new();
    for route in routes() {
        let before = entries.len();
        for mount in route.mounts() {
            let path = Some(mount.path);
            let mut methods = mount.methods().peekable();
            if methods.peek().is_none() {
                entries.push(PricedRoute::of(route, None, path));
            }
            entries.extend(methods.map(|method| PricedRoute::of(route, Some(method), path)));
        }
        if entries.len() == before {
            let served = route.served();
            if served.is_empty() {
                entries.push(PricedRoute::of(route, None, None));
            }
            for served in &served {
                entries.push(PricedRoute::of(route, Some(served.method), Some(&served.pattern)));
            }
        }
    }
    entries
}

/// The paid routes of the app serving `req`, at the full paths its router matches
/// (scope prefixes included), sorted by path and method: what [`manifest_handler`]
/// serves. Each is a JSON object as in [`manifest`].
///
/// How a `#[paid]` handler is found among the app's resources:
///
/// - a routing attribute below `#[paid]` (`#[get("/models")]`) registers a resource
///   named after the function (or its `name = "…"`): every resource of the app with
///   that name whose full pattern ends with the attribute's path is the handler's, with
///   the attribute's method(s). Mounted in two scopes, it is listed twice;
/// - a routing attribute above `#[paid]` names the resource after the function too: the
///   resources of that name are listed, with the method of the first request served
///   (no method until then);
/// - a handler registered by hand (`web::post().to(handler)`) names no resource: it is
///   listed at the method and pattern of each request it served (each of its mounts,
///   once that mount has served).
///
/// Two `#[paid]` handlers of the same name and path in different modules cannot be
/// told apart this way: a resource they could both be is listed when their terms are
/// the same, or once one of them has served it; otherwise it is left out (and logged).
/// Give one of them a distinct resource name (`#[get("/models", name = "models_v2")]`).
/// An unpaid handler with the same name and path as a paid one would be listed too.
///
/// ```
/// use actix_web::{HttpRequest, HttpResponse};
///
/// // The manifest as plain text, one route per line.
/// async fn prices(req: HttpRequest) -> HttpResponse {
///     let lines: Vec<String> = nvm_runtime::actix::pricing::app_manifest(&req)
///         .iter()
///         .map(|r| format!("{} {} {}", r["method"], r["path"], r["credits"]))
///         .collect();
///     HttpResponse::Ok().body(lines.join("\n"))
/// }
/// # let _ = prices;
/// ```
pub fn app_manifest(req: &HttpRequest) -> Vec<serde_json::Value> {
    to_json(&app_table(req))
}

/// The routes of [`app_manifest`], typed.
pub(crate) fn app_table(req: &HttpRequest) -> Vec<PricedRoute> {
    let rmap = req.resource_map();
    let resources = resource_map::resources(rmap);
    let mut entries: Vec<(PricedRoute, bool)> = Vec::new();
    for route in routes() {
        let served = route.served();
        let first = served.first();
        let mut found: Vec<(Option<&'static str>, String)> = Vec::new();
        let mut add = |method: Option<&'static str>, path: String| {
            if let Some(known) = found.iter_mut().find(|(m, p)| *p == path && (m.is_none() || *m == method)) {
                known.0 = known.0.or(method);
            } else {
                found.push((method, path));
            }
        };
        let mounts: Vec<Mount> = route.mounts().collect();
        // Each resource goes to the attribute(s) whose path is the longest end of its
        // pattern: `#[get("/p")]` does not claim the resource of `#[put("/x/p")]`.
        let mut claimed: Vec<(String, usize, Mount)> = Vec::new();
        for mount in &mounts {
            let suffix = leading_slash(mount.path);
            for path in full_patterns(req, resources.as_deref(), mount.name, &suffix) {
                claimed.push((path, suffix.len(), *mount));
            }
        }
        for (path, length, mount) in &claimed {
            if claimed.iter().any(|(other, longer, _)| other == path && longer > length) {
                continue;
            }
            let mut methods = mount.methods().peekable();
            if methods.peek().is_none() {
                add(None, path.clone());
            }
            for method in methods {
                add(Some(method), path.clone());
            }
        }
        if mounts.is_empty() {
            let handler = route.spec().handler;
            for name in [handler.to_owned(), format!("r#{handler}")] {
                for path in full_patterns(req, resources.as_deref(), &name, "") {
                    let method = first.filter(|s| s.pattern == path).map(|s| s.method);
                    add(method, path);
                }
            }
        }
        // What the handler served: the only trace of a handler registered by hand (at
        // each path it is mounted at), and a second mount when the router could not be
        // read.
        if mounts.is_empty() || resources.is_none() {
            for served in &served {
                if resource_map::is_served(rmap, resources.as_deref(), &served.pattern) {
                    add(Some(served.method), served.pattern.clone());
                }
            }
        }
        for (method, path) in found {
            let was_served = served.iter().any(|s| s.pattern == path && method.is_none_or(|m| m == s.method));
            entries.push((PricedRoute::of(route, method, Some(&path)), was_served));
        }
    }
    let mut manifest = resolve_conflicts(entries);
    manifest.sort_by(|a, b| (&a.path, &a.method, &a.handler).cmp(&(&b.path, &b.method, &b.handler)));
    manifest
}

/// Entries as published.
pub(crate) fn to_json<T: Serialize>(entries: &[T]) -> Vec<serde_json::Value> {
    entries.iter().filter_map(|entry| serde_json::to_value(entry).ok()).collect()
}

/// A routing attribute's path as actix-web registers it: with a leading `/`.
fn leading_slash(path: &str) -> String {
    if path.is_empty() || path.starts_with('/') { path.to_owned() } else { format!("/{path}") }
}

/// The full patterns of the app's resources named `name` whose pattern ends with
/// `suffix`, each once.
fn full_patterns(
    req: &HttpRequest,
    resources: Option<&[Registered]>,
    name: &str,
    suffix: &str,
) -> Vec<String> {
    let found: Vec<String> = match resources {
        Some(resources) => resources
            .iter()
            .filter(|r| r.name.as_deref() == Some(name) && r.pattern.ends_with(suffix))
            .map(|r| r.pattern.clone())
            .collect(),
        None => resource_map::named_pattern(req, name).filter(|p| p.ends_with(suffix)).into_iter().collect(),
    };
    let mut patterns = Vec::with_capacity(found.len());
    for pattern in found {
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    patterns
}

/// One entry per method and path: entries of the same terms are merged; of different
/// terms, the one whose handler served that route wins, else none is listed.
fn resolve_conflicts(entries: Vec<(PricedRoute, bool)>) -> Vec<PricedRoute> {
    let mut groups: Vec<Vec<(PricedRoute, bool)>> = Vec::new();
    for entry in entries {
        match groups.iter_mut().find(|g| g[0].0.method == entry.0.method && g[0].0.path == entry.0.path) {
            Some(group) => group.push(entry),
            None => groups.push(vec![entry]),
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for group in groups {
        let agree = |candidates: &[&(PricedRoute, bool)]| {
            candidates.iter().all(|(route, _)| route.same_terms(&candidates[0].0))
        };
        let all: Vec<&(PricedRoute, bool)> = group.iter().collect();
        let served: Vec<&(PricedRoute, bool)> = group.iter().filter(|(_, served)| *served).collect();
        let chosen = if agree(&all) {
            Some(served.first().unwrap_or(&all[0]))
        } else if !served.is_empty() && agree(&served) {
            served.first()
        } else {
            None
        };
        match chosen {
            Some((route, _)) => out.push(route.clone()),
            None => {
                let handlers: Vec<String> =
                    group.iter().map(|(r, _)| format!("{}::{}", r.module, r.handler)).collect();
                tracing::warn!(
                    path = group[0].0.path.as_deref().unwrap_or_default(),
                    ?handlers,
                    "left out of the pricing manifest: #[paid] handlers of the same resource name and path, with different terms; give each a distinct `name = \"…\"` in its routing attribute"
                );
            }
        }
    }
    out
}

/// A ready handler serving [`app_manifest`] as JSON `{"routes": […]}`: every paid
/// route of the app that serves it, at its full path.
///
/// ```
/// use actix_web::{web, App};
/// let _app = App::new().route("/pricing", web::get().to(nvm_runtime::actix::pricing::manifest_handler));
/// ```
///
/// An answer:
///
/// ```json
/// {"routes": [
///   {"method": "POST", "path": "/ask", "handler": "ask", "plan": "1234", "credits": 1, "settle": "default"},
///   {"method": "GET", "path": "/v1/models/{id}", "handler": "model", "plan": {"env": "NVM_PLAN_ID"},
///    "credits": "dynamic", "settle": "after_body"}
/// ]}
/// ```
pub async fn manifest_handler(req: HttpRequest) -> HttpResponse {
    /// The answer, its fields in their declared order.
    #[derive(Serialize)]
    struct Manifest {
        routes: Vec<PricedRoute>,
        /// The paid MCP tools, when there are any.
        #[cfg(feature = "mcp")]
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tools: Vec<crate::mcp::PricedTool>,
    }
    HttpResponse::Ok().json(Manifest {
        routes: app_table(&req),
        #[cfg(feature = "mcp")]
        tools: crate::mcp::tool_table(),
    })
}

/// Checks at start-up that every `env("VAR")` plan and agent of every `#[paid]`
/// handler is set, naming the variable and handler when one is not
/// (`Payments::prepare` runs it first).
pub(crate) fn check_startup() -> Result<(), ConfigError> {
    for route in routes() {
        let spec = route.spec();
        check_env(&spec.terms, spec.handler)?;
    }
    #[cfg(feature = "mcp")]
    for (tool, terms) in crate::mcp::terms() {
        check_env(&terms, &format!("the MCP tool `{tool}`"))?;
    }
    Ok(())
}

/// Reads the `env("VAR")` plan and agent of `terms`, if they are.
fn check_env(terms: &Terms, what: &str) -> Result<(), ConfigError> {
    if matches!(terms.plan, Id::Env(_)) {
        terms.plan_id(what)?;
    }
    if matches!(terms.agent, Some(Id::Env(_))) {
        terms.agent_id(what)?;
    }
    Ok(())
}

#[cfg(feature = "utoipa")]
pub use openapi_doc::{PaidOperations, openapi};

/// The `utoipa` crate this crate is built with (version 5): name the OpenAPI types
/// [`openapi`] takes through it when your crate has no `utoipa` of its own, or check
/// that yours is the same.
#[cfg(feature = "utoipa")]
pub use utoipa;

#[cfg(feature = "utoipa")]
mod openapi_doc;
