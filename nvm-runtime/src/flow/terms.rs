//! What a route charges for: plan, agent and the envelope's fields. One type, used by
//! `#[paid]` (built in a `static` by the macro), by `PaymentMiddleware` routes (built by
//! `RouteConfig`) and by the pricing manifest.

use std::borrow::Cow;
use std::sync::OnceLock;

use crate::error::{ConfigError, ConfigProblem};

/// Where a plan or agent id comes from.
#[derive(Debug, Clone)]
pub enum Id {
    /// A literal id (a string literal of `#[paid]`, or a `RouteConfig`'s id).
    Literal(Cow<'static, str>),
    /// `env("VAR")`: read once, at run time.
    Env(&'static str),
    /// Any expression yielding `&str` or `String`, evaluated per request; the first
    /// field is its source text.
    Expr(&'static str, fn() -> String),
}

impl Id {
    /// A literal id; `const`.
    pub const fn literal(id: &'static str) -> Self {
        Id::Literal(Cow::Borrowed(id))
    }
}

/// When a route settles its payment.
///
/// ```
/// use nvm_runtime::RouteConfig;
/// use nvm_runtime::SettlePoint;
///
/// // A streamed answer: the head and the chunks go out at once, settled when it ends.
/// let route = RouteConfig::new("1234").settle(SettlePoint::AfterBody);
/// # let _ = route;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettlePoint {
    /// The response head waits for the settlement; a failed settlement withholds the
    /// content (402). The default for plain bodies.
    BeforeBody,
    /// Head and body flow to the client at once, unbuffered; the settlement runs when
    /// the body ends, for the metered amount (see `PaymentContext::meter`). The default
    /// for streamed bodies.
    AfterBody,
    /// The answer goes out at once with a receipt saying its settlement is pending; the
    /// settlement runs in the background, written ahead in the journal, within the
    /// payer's exposure bound (see `DeferredSettlement`, which the configuration must
    /// set: `PaymentsBuilder::deferred_settlement`). A call past the bound, or from a
    /// payer suspended after a failed deferred settlement, settles before its body; a
    /// streamed body settles when it ends.
    Deferred,
}

/// The terms of a route: what its `payment-required` envelope advertises, besides the
/// credits (which are the web layer's: a function of the request).
#[derive(Debug)]
pub struct Terms {
    pub(crate) plan: Id,
    pub(crate) agent: Option<Id>,
    pub(crate) scheme: Option<Cow<'static, str>>,
    pub(crate) network: Option<Cow<'static, str>>,
    pub(crate) description: Option<Cow<'static, str>>,
    pub(crate) mime_type: Option<Cow<'static, str>>,
    pub(crate) resource: Option<Cow<'static, str>>,
    /// When to settle; `None`: after the body for streamed bodies, before otherwise.
    pub(crate) settle: Option<SettlePoint>,
    /// The `Cache-Control` of a paid answer, when the route allows private caching
    /// (checked by [`cache_control_problem`]); `None`: `private, no-store`.
    pub(crate) cache_control: Option<Cow<'static, str>>,
    /// Whether the handler runs while the payment is verified (`#[paid(speculative =
    /// true)]`).
    pub(crate) speculative: bool,
    /// `env("VAR")` ids, read once.
    read: [OnceLock<Result<String, ConfigError>>; 2],
}

impl Clone for Terms {
    fn clone(&self) -> Self {
        Terms {
            plan: self.plan.clone(),
            agent: self.agent.clone(),
            scheme: self.scheme.clone(),
            network: self.network.clone(),
            description: self.description.clone(),
            mime_type: self.mime_type.clone(),
            resource: self.resource.clone(),
            settle: self.settle,
            cache_control: self.cache_control.clone(),
            speculative: self.speculative,
            read: Default::default(),
        }
    }
}

/// The terms of one request: ids resolved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer<'a> {
    pub(crate) plan_id: &'a str,
    pub(crate) agent_id: Option<&'a str>,
    pub(crate) terms: &'a Terms,
}

impl Terms {
    /// Terms for `plan`, nothing else set; `const`, so the macro can build them in a
    /// `static`.
    pub const fn new(plan: Id) -> Self {
        Terms {
            plan,
            agent: None,
            scheme: None,
            network: None,
            description: None,
            mime_type: None,
            resource: None,
            settle: None,
            cache_control: None,
            speculative: false,
            read: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// The same terms, settled at `point`; `const`, for `#[paid(settle = "…")]`.
    pub const fn settle(mut self, point: SettlePoint) -> Self {
        self.settle = Some(point);
        self
    }

    /// The same terms, the handler run while the payment is verified; `const`, for
    /// `#[paid(speculative = true)]`.
    pub const fn speculative(mut self) -> Self {
        self.speculative = true;
        self
    }

    /// The same terms, with paid answers marked `Cache-Control: value` instead of
    /// `private, no-store`; `const`, for `#[paid(cache_control = "…")]`: a value
    /// [`cache_control_problem`] refuses panics, which in the expansion's `static` is a
    /// compile error with the reason.
    pub const fn cache_control(mut self, value: &'static str) -> Self {
        // In a `static`, a refused value stops the build with this message.
        if let Some(why) = cache_control_problem(value) {
            panic!("{}", why);
        }
        // A `const fn` cannot drop the old value (a `None` here, or a borrowed `Cow`).
        std::mem::forget(self.cache_control.replace(Cow::Borrowed(value)));
        self
    }

    /// Terms with every field, in one `const` step (what a `#[paid]` expansion
    /// builds): `fields` are scheme, network, description, mime type and resource.
    pub const fn from_parts(plan: Id, agent: Option<Id>, fields: [Option<&'static str>; 5]) -> Self {
        const fn borrowed(s: Option<&'static str>) -> Option<Cow<'static, str>> {
            match s {
                Some(s) => Some(Cow::Borrowed(s)),
                None => None,
            }
        }
        let [scheme, network, description, mime_type, resource] = fields;
        Terms {
            plan,
            agent,
            scheme: borrowed(scheme),
            network: borrowed(network),
            description: borrowed(description),
            mime_type: borrowed(mime_type),
            resource: borrowed(resource),
            settle: None,
            cache_control: None,
            speculative: false,
            read: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// Whether the scheme is forced (no plan metadata needed).
    pub(crate) fn forces_scheme(&self) -> bool {
        self.scheme.is_some()
    }

    /// The plan id of this request; `handler` names the route in errors.
    pub(crate) fn plan_id(&self, handler: &str) -> Result<Cow<'_, str>, ConfigError> {
        match &self.plan {
            Id::Literal(id) => Ok(Cow::Borrowed(id)),
            Id::Env(var) => read_env(&self.read[0], var, "plan id", handler).map(Cow::Borrowed),
            Id::Expr(source, f) => {
                let plan = f();
                if plan.trim().is_empty() {
                    return Err(ConfigProblem::EmptyPlan {
                        expr: (*source).to_owned(),
                        handler: handler.to_owned(),
                    }
                    .into());
                }
                Ok(Cow::Owned(plan))
            }
        }
    }

    /// The agent id of this request, if the route has one (an expression yielding ""
    /// means none).
    pub(crate) fn agent_id(&self, handler: &str) -> Result<Option<Cow<'_, str>>, ConfigError> {
        match &self.agent {
            None => Ok(None),
            Some(Id::Literal(id)) => Ok(Some(Cow::Borrowed(id))),
            Some(Id::Env(var)) => {
                read_env(&self.read[1], var, "agent id", handler).map(|id| Some(Cow::Borrowed(id)))
            }
            Some(Id::Expr(_, f)) => Ok(Some(f()).filter(|agent| !agent.trim().is_empty()).map(Cow::Owned)),
        }
    }
}

fn read_env<'a>(
    cell: &'a OnceLock<Result<String, ConfigError>>,
    var: &str,
    what: &'static str,
    handler: &str,
) -> Result<&'a str, ConfigError> {
    let read = cell.get_or_init(|| match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        _ => {
            let (var, handler) = (var.to_owned(), handler.to_owned());
            Err(ConfigProblem::MissingEnvVar { var, what, handler }.into())
        }
    });
    read.as_deref().map_err(Clone::clone)
}

/// Why `value` cannot be the `Cache-Control` of a paid answer, or `None` when it can: it
/// must keep the answer out of shared caches (`private`, and neither `public` nor
/// `s-maxage`), and be a header value (visible ASCII and spaces). A `const fn`, so
/// `#[paid(cache_control = "…")]` is checked when it compiles.
pub const fn cache_control_problem(value: &str) -> Option<&'static str> {
    let bytes = value.as_bytes();
    let mut private = false;
    let mut start = 0;
    let mut i = 0;
    while i <= bytes.len() {
        if i < bytes.len()
            && !(bytes[i] == b' ' || bytes[i] == b'\t' || (bytes[i] >= 0x21 && bytes[i] < 0x7f))
        {
            return Some("it is not a header value: write visible ASCII, e.g. \"private, max-age=60\"");
        }
        if i == bytes.len() || bytes[i] == b',' {
            if directive_is(bytes, start, i, b"private") {
                private = true;
            }
            if directive_is(bytes, start, i, b"public") || directive_is(bytes, start, i, b"s-maxage") {
                return Some(
                    "a shared cache would serve the paid answer to callers who did not pay: use `private`, e.g. \"private, max-age=60\", never `public` or `s-maxage`",
                );
            }
            start = i + 1;
        }
        i += 1;
    }
    if private {
        None
    } else {
        Some("a paid answer must stay out of shared caches: include `private`, e.g. \"private, max-age=60\"")
    }
}

/// Whether the directive in `bytes[start..end]` (trimmed, its `=value` ignored) is
/// `name`, case-insensitively.
const fn directive_is(bytes: &[u8], mut start: usize, mut end: usize, name: &[u8]) -> bool {
    while start < end && (bytes[start] == b' ' || bytes[start] == b'\t') {
        start += 1;
    }
    let mut j = start;
    while j < end && bytes[j] != b'=' {
        j += 1;
    }
    end = j;
    while end > start && (bytes[end - 1] == b' ' || bytes[end - 1] == b'\t') {
        end -= 1;
    }
    if end - start != name.len() {
        return false;
    }
    let mut k = 0;
    while k < name.len() {
        if bytes[start + k].to_ascii_lowercase() != name[k] {
            return false;
        }
        k += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_cache_controls_are_accepted() {
        for ok in ["private, max-age=60", "max-age=60,private", " Private ; ", "private", "PRIVATE, no-cache"]
        {
            // `Private ;` is one directive named `private ;`? No: `;` is part of the name.
            if ok.contains(';') {
                continue;
            }
            assert_eq!(cache_control_problem(ok), None, "{ok}");
        }
        for bad in [
            "public, max-age=60",
            "private, public",
            "private, s-maxage=60",
            "max-age=60",
            "",
            "privately",
            "private\u{7f}",
            "private, max-age=6\u{e9}",
        ] {
            assert!(cache_control_problem(bad).is_some(), "{bad:?}");
        }
    }
}
