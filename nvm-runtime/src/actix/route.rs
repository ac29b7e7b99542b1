//! What `#[paid]` records about a handler: its terms and credits, its name and the
//! resources its routing attributes register. The macro builds one [`Route`] per handler
//! in a `static`.
//!
//! Nothing here holds the source text of a credits expression: a seller's pricing logic
//! is compiled in, never stored as text (so it is neither in the manifest nor among the
//! binary's strings).

use std::sync::{Mutex, PoisonError};

use actix_web::HttpRequest;

use super::credits::CreditsFuture;
use crate::flow::Terms;

/// One `#[paid]` handler in the table of the program's paid routes; the macro submits
/// one per handler (lent by `__private`; not a public API).
#[derive(Debug)]
pub struct RouteEntry(pub &'static Route);

inventory::collect!(RouteEntry);

/// How a route prices a request.
#[derive(Debug, Clone, Copy)]
pub enum Credits {
    /// An integer literal.
    Fixed(u64),
    /// Any other [`CreditsSource`](super::credits::CreditsSource): a const, a function
    /// or a closure of the request.
    Source {
        /// Computes the credits of a request.
        resolve: for<'a> fn(&'a HttpRequest) -> CreditsFuture<'a>,
        /// The amount when it does not depend on the request (a const).
        fixed: fn() -> Option<u64>,
    },
}

/// One routing attribute below `#[paid]`, as the macro writes it: the method(s), upper
/// case and comma-separated (`"GET,POST"`, `""` when none is named), the path as written
/// (no scope prefix), and the name actix-web gives the resource (`name = "…"`, else the
/// function's name).
pub(crate) type MountSpec = (&'static str, &'static str, &'static str);

/// Everything `#[paid]` knows about a handler at compile time.
#[derive(Debug)]
pub struct RouteSpec {
    /// The handler's name.
    pub handler: &'static str,
    /// `module_path!()` of the handler.
    pub module: &'static str,
    /// The routing attributes below `#[paid]`, if any.
    pub mounts: &'static [MountSpec],
    /// The credits.
    pub credits: Credits,
    /// Plan, agent and envelope fields.
    pub terms: Terms,
}

/// A routing attribute of a handler, read from its [`MountSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The method(s): `"GET"`, `"GET,POST"`, or `""`.
    pub(crate) methods: &'static str,
    /// The path of the attribute, as written.
    pub(crate) path: &'static str,
    /// The resource's name.
    pub(crate) name: &'static str,
}

impl Mount {
    /// Each method of the attribute (none when it names none).
    pub(crate) fn methods(&self) -> impl Iterator<Item = &'static str> {
        self.methods.split(',').map(str::trim).filter(|m| !m.is_empty())
    }
}

/// The method and full route pattern of a request a handler served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Served {
    pub(crate) method: &'static str,
    pub(crate) pattern: String,
}

/// A handler's [`RouteSpec`] plus what is learnt at run time.
#[derive(Debug)]
pub struct Route {
    spec: RouteSpec,
    /// Method and full route pattern of each request served, the first first (up to
    /// [`MAX_SERVED`] of them): what the pricing table knows of a handler registered by
    /// hand (`web::post().to(handler)`, at one path or several), or whose routing
    /// attribute sits above `#[paid]` (expanded first, so the macro never sees it).
    served: Mutex<Vec<Served>>,
}

/// `method` as a `'static` name: one of HTTP's, or, for an extension method, a copy kept
/// for the process (at most [`MAX_SERVED`] per handler).
fn static_method(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE"];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or_else(|| Box::leak(method.to_owned().into_boxed_str()))
}

/// The most mounts (method and pattern) remembered of one handler.
const MAX_SERVED: usize = 64;

impl Route {
    /// A handler's route, from what `#[paid]` read; `const` so it can live in a
    /// `static`.
    pub const fn new(
        handler: &'static str,
        module: &'static str,
        mounts: &'static [MountSpec],
        credits: Credits,
        terms: Terms,
    ) -> Self {
        Route { spec: RouteSpec { handler, module, mounts, credits, terms }, served: Mutex::new(Vec::new()) }
    }

    /// The compile-time description.
    pub fn spec(&self) -> &RouteSpec {
        &self.spec
    }

    /// The routing attributes below `#[paid]`.
    pub(crate) fn mounts(&self) -> impl Iterator<Item = Mount> + '_ {
        self.spec.mounts.iter().map(|&(methods, path, name)| Mount { methods, path, name })
    }

    /// Records the method and full route `pattern` of a request, once per pair.
    pub(crate) fn observe(&self, method: &str, pattern: &str) {
        let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        if served.len() < MAX_SERVED && !served.iter().any(|s| s.method == method && s.pattern == pattern) {
            served.push(Served { method: static_method(method), pattern: pattern.to_owned() });
        }
    }

    /// The method and full pattern of each request served, the first first.
    pub(crate) fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The credits of this request.
    pub(crate) fn credits<'a>(&self, req: &'a HttpRequest) -> CreditsFuture<'a> {
        match self.spec.credits {
            Credits::Fixed(n) => CreditsFuture::Ready(n),
            Credits::Source { resolve, .. } => resolve(req),
        }
    }

    /// The credits of every request (`Some`), or `None` when they depend on the request.
    pub(crate) fn fixed_credits(&self) -> Option<u64> {
        match self.spec.credits {
            Credits::Fixed(n) => Some(n),
            Credits::Source { fixed, .. } => fixed(),
        }
    }
}
