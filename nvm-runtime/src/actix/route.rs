//! What `#[paid]` records about a handler: its plan, agent, credits and envelope
//! fields. The macro builds one [`Route`] per handler in a `static`.

use std::sync::OnceLock;

use actix_web::HttpRequest;
use serde::Serialize;

use crate::actix::credits::CreditsFuture;
use crate::error::ConfigError;

/// Where a plan or agent id comes from.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    /// A string literal.
    Literal(&'static str),
    /// `env("VAR")`: read once, at run time.
    Env(&'static str),
    /// Any expression yielding `&str` or `String`, evaluated per request; the first
    /// field is its source text.
    Expr(&'static str, fn() -> String),
}

/// How a route prices a request.
#[derive(Debug, Clone, Copy)]
pub enum Credits {
    /// An integer literal.
    Fixed(u64),
    /// Any other [`CreditsSource`](crate::actix::credits::CreditsSource): a const, a function or
    /// a closure of the request.
    Source {
        /// The expression's source text.
        source: &'static str,
        /// Computes the credits of a request.
        resolve: for<'a> fn(&'a HttpRequest) -> CreditsFuture<'a>,
        /// The amount when it does not depend on the request (a const).
        fixed: fn() -> Option<u64>,
    },
}

/// Everything `#[paid]` knows about a handler at compile time.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// The handler's name.
    pub handler: &'static str,
    /// `module_path!()` of the handler.
    pub module: &'static str,
    /// The HTTP method(s) of the routing attribute below `#[paid]`, if any (`"POST"`).
    pub method: Option<&'static str>,
    /// The path of the routing attribute below `#[paid]`, if any.
    pub path: Option<&'static str>,
    /// The plan id.
    pub plan: Value,
    /// The agent id.
    pub agent: Option<Value>,
    /// The credits.
    pub credits: Credits,
    /// Forced scheme.
    pub scheme: Option<&'static str>,
    /// Forced network.
    pub network: Option<&'static str>,
    /// `resource.description`.
    pub description: Option<&'static str>,
    /// `resource.mimeType`.
    pub mime_type: Option<&'static str>,
    /// `resource.url` (default: the request path).
    pub resource: Option<&'static str>,
}

/// A handler's [`RouteSpec`] plus what is read once at run time.
#[derive(Debug)]
pub struct Route {
    spec: RouteSpec,
    plan: OnceLock<Result<String, ConfigError>>,
    agent: OnceLock<Result<Option<String>, ConfigError>>,
    /// Method and path pattern seen on the first request, for handlers whose routing
    /// attribute sits above `#[paid]` (expanded first, so the macro never sees it).
    served: OnceLock<(String, String)>,
}

impl Route {
    /// Wraps a spec; `const` so it can live in a `static`.
    pub const fn new(spec: RouteSpec) -> Self {
        Route { spec, plan: OnceLock::new(), agent: OnceLock::new(), served: OnceLock::new() }
    }

    /// The compile-time description.
    pub fn spec(&self) -> &RouteSpec {
        &self.spec
    }

    /// Records the method and route pattern of a request, once.
    pub(crate) fn observe(&self, req: &HttpRequest) {
        if self.served.get().is_none() && self.spec.path.is_none() {
            let pattern = req.match_pattern().unwrap_or_else(|| req.path().to_owned());
            let _ = self.served.set((req.method().as_str().to_owned(), pattern));
        }
    }

    /// The method and path: from the routing attribute, else as first served.
    pub fn method_and_path(&self) -> (Option<&str>, Option<&str>) {
        match (self.spec.method, self.spec.path, self.served.get()) {
            (None, None, Some((method, path))) => (Some(method), Some(path)),
            (method, path, _) => (method, path),
        }
    }

    /// The plan id of this request.
    pub(crate) fn plan_id(&self) -> Result<String, ConfigError> {
        match self.spec.plan {
            Value::Expr(source, f) => {
                let plan = f();
                if plan.trim().is_empty() {
                    return Err(ConfigError::EmptyPlan {
                        expr: source.to_owned(),
                        handler: self.spec.handler.to_owned(),
                    });
                }
                Ok(plan)
            }
            value => self.plan.get_or_init(|| read_value(value, "plan id", self.spec.handler)).clone(),
        }
    }

    /// The agent id of this request, if the route has one.
    pub(crate) fn agent_id(&self) -> Result<Option<String>, ConfigError> {
        match self.spec.agent {
            None => Ok(None),
            // An expression yielding "" means "no agent".
            Some(Value::Expr(_, f)) => Ok(Some(f()).filter(|agent| !agent.trim().is_empty())),
            Some(value) => {
                self.agent.get_or_init(|| read_value(value, "agent id", self.spec.handler).map(Some)).clone()
            }
        }
    }

    /// The credits of this request.
    pub(crate) fn credits<'a>(&self, req: &'a HttpRequest) -> CreditsFuture<'a> {
        match self.spec.credits {
            Credits::Fixed(n) => CreditsFuture::Ready(n),
            Credits::Source { resolve, .. } => resolve(req),
        }
    }
}

fn read_value(value: Value, what: &'static str, handler: &str) -> Result<String, ConfigError> {
    match value {
        Value::Literal(s) => Ok(s.to_owned()),
        Value::Expr(_, f) => Ok(f()),
        Value::Env(var) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
            _ => Err(ConfigError::MissingEnvVar { var: var.to_owned(), what, handler: handler.to_owned() }),
        },
    }
}

/// A [`Value`] as the pricing manifest shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", content = "value", rename_all = "camelCase")]
pub enum ValueSource {
    /// A literal id.
    Literal(String),
    /// The name of the environment variable.
    Env(String),
    /// The source text of the expression.
    Expr(String),
}

impl From<Value> for ValueSource {
    fn from(value: Value) -> Self {
        match value {
            Value::Literal(s) => ValueSource::Literal(s.to_owned()),
            Value::Env(s) => ValueSource::Env(s.to_owned()),
            Value::Expr(s, _) => ValueSource::Expr(s.to_owned()),
        }
    }
}
