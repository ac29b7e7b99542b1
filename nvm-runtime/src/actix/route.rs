//! What `#[paid]` records about a handler: its terms and credits, its name and route.
//! The macro builds one [`Route`] per handler in a `static`.

use std::sync::OnceLock;

use actix_web::HttpRequest;
use serde::Serialize;

use super::credits::CreditsFuture;
use crate::flow::{Id, Terms};

/// How a route prices a request.
#[derive(Debug, Clone, Copy)]
pub enum Credits {
    /// An integer literal.
    Fixed(u64),
    /// Any other [`CreditsSource`](super::credits::CreditsSource): a const, a function
    /// or a closure of the request.
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
#[derive(Debug)]
pub struct RouteSpec {
    /// The handler's name.
    pub handler: &'static str,
    /// `module_path!()` of the handler.
    pub module: &'static str,
    /// The HTTP method(s) of the routing attribute below `#[paid]`, if any (`"POST"`).
    pub method: Option<&'static str>,
    /// The path of the routing attribute below `#[paid]`, if any.
    pub path: Option<&'static str>,
    /// The credits.
    pub credits: Credits,
    /// Plan, agent and envelope fields.
    pub terms: Terms,
}

/// A handler's [`RouteSpec`] plus what is learnt at run time.
#[derive(Debug)]
pub struct Route {
    spec: RouteSpec,
    /// Method and path pattern seen on the first request, for handlers whose routing
    /// attribute sits above `#[paid]` (expanded first, so the macro never sees it).
    served: OnceLock<(String, String)>,
}

impl Route {
    /// A handler's route, from what `#[paid]` read; `const` so it can live in a
    /// `static`.
    pub const fn new(
        handler: &'static str,
        module: &'static str,
        method: Option<&'static str>,
        path: Option<&'static str>,
        credits: Credits,
        terms: Terms,
    ) -> Self {
        Route { spec: RouteSpec { handler, module, method, path, credits, terms }, served: OnceLock::new() }
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

    /// The credits of this request.
    pub(crate) fn credits<'a>(&self, req: &'a HttpRequest) -> CreditsFuture<'a> {
        match self.spec.credits {
            Credits::Fixed(n) => CreditsFuture::Ready(n),
            Credits::Source { resolve, .. } => resolve(req),
        }
    }
}

/// A plan or agent id as the pricing manifest shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", content = "value", rename_all = "camelCase")]
#[non_exhaustive]
pub enum ValueSource {
    /// A literal id.
    Literal(String),
    /// The name of the environment variable.
    Env(String),
    /// The source text of the expression.
    Expr(String),
}

impl ValueSource {
    pub(crate) fn of(id: &Id) -> Self {
        match id {
            Id::Literal(s) => ValueSource::Literal(s.to_string()),
            Id::Env(s) => ValueSource::Env((*s).to_owned()),
            Id::Expr(s, _) => ValueSource::Expr((*s).to_owned()),
        }
    }
}
