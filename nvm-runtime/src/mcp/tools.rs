//! What a paid tool charges: [`PaidTool`] (built by a `#[paid]` expansion in a
//! `static`), [`ToolConfig`] (an entry of the [`PaidTools`] table), and the table that
//! wraps a router's tools.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use rmcp::ErrorData;
use rmcp::handler::server::tool::{IntoCallToolResult, ToolCallContext, ToolRoute, ToolRouter};
use rmcp::model::{CallToolResponse, JsonObject, MetaObject};
use serde_json::{Value, json};

use super::call::{self, PaidCall};
use crate::actix::pricing::ValueSource;
use crate::error::{ConfigError, ConfigProblem};
use crate::flow::{Id, Terms};

/// The `_meta` key under which `tools/list` shows a paid tool's price.
pub(crate) const PRICE_META: &str = "nevermined/price";

/// What a tool call costs.
#[derive(Clone)]
enum Price {
    /// The same for every call.
    Fixed(u64),
    /// A function of the call's arguments (a `#[paid]` expansion's helpers).
    Fn { resolve: fn(&JsonObject) -> u64, fixed: fn() -> Option<u64> },
    /// A closure of the call's arguments (a [`ToolConfig`]).
    Closure(Arc<dyn Fn(&JsonObject) -> u64 + Send + Sync>),
}

impl Price {
    /// The credits of a call with `arguments`; a panicking price function is the
    /// tool's misconfiguration.
    fn of(&self, arguments: &JsonObject, tool: &str) -> Result<u64, ConfigError> {
        let priced = match self {
            Price::Fixed(credits) => return Ok(*credits),
            Price::Fn { resolve, .. } => std::panic::catch_unwind(AssertUnwindSafe(|| resolve(arguments))),
            Price::Closure(price) => std::panic::catch_unwind(AssertUnwindSafe(|| price(arguments))),
        };
        priced.map_err(|_| ConfigProblem::CreditsPanicked(format!("the MCP tool `{tool}`")).into())
    }

    /// The price when it is the same for every call.
    fn fixed(&self) -> Option<u64> {
        match self {
            Price::Fixed(credits) => Some(*credits),
            Price::Fn { fixed, .. } => fixed(),
            Price::Closure(_) => None,
        }
    }
}

/// The price of a `#[paid]` tool, in a `static` of its expansion. Not a public API.
pub struct PaidTool {
    /// The tool's name (its `#[tool(name = …)]`, else the method's).
    name: &'static str,
    price: Price,
    terms: Terms,
}

impl PaidTool {
    /// A tool at a fixed price.
    pub const fn fixed(name: &'static str, credits: u64, terms: Terms) -> Self {
        PaidTool { name, price: Price::Fixed(credits), terms }
    }

    /// A tool priced by a function of its arguments (`fixed` says whether it is the
    /// same for every call: a `u64` const).
    pub const fn priced(
        name: &'static str,
        resolve: fn(&JsonObject) -> u64,
        fixed: fn() -> Option<u64>,
        terms: Terms,
    ) -> Self {
        PaidTool { name, price: Price::Fn { resolve, fixed }, terms }
    }

    /// The tool's price for `tools/list`: its `_meta`.
    pub fn meta(&self) -> MetaObject {
        price_meta(&self.terms, &self.price, self.name)
    }
}

/// A `#[paid]` tool linked into the program (its expansion submits it). Not a public
/// API.
pub struct ToolEntry(pub &'static PaidTool);

inventory::collect!(ToolEntry);

/// The tools of the `PaidTools` tables wrapped so far, by name.
static TABLED: Mutex<Vec<(String, ToolConfig)>> = Mutex::new(Vec::new());

/// One paid tool of the pricing manifest (published as JSON only, see [`manifest`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct PricedTool {
    /// The tool's name, as `tools/list` shows it.
    pub(crate) tool: String,
    /// The plan a call pays with.
    pub(crate) plan: ValueSource,
    /// The agent sent with the plan, when the tool has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) agent: Option<ValueSource>,
    /// The credits of a call: a number, or `"dynamic"`.
    pub(crate) credits: Value,
    /// `"attribute"` or `"table"`.
    pub(crate) form: &'static str,
}

impl PricedTool {
    fn of(name: &str, terms: &Terms, price: &Price, form: &'static str) -> Self {
        PricedTool {
            tool: name.to_owned(),
            plan: ValueSource::plan(terms, name),
            agent: ValueSource::agent(terms, name),
            credits: price.fixed().map_or_else(|| "dynamic".into(), Value::from),
            form,
        }
    }
}

/// Every paid tool of this program: each `#[paid]` tool linked in, and each tool of a
/// `PaidTools` table wrapped so far, sorted by name, each a JSON object:
///
/// ```json
/// {"tool": "search", "plan": "1234", "agent": "5678", "credits": 2, "form": "attribute"}
/// ```
///
/// `plan` and `agent` are as in the routes' manifest
/// ([`app_manifest`](crate::actix::pricing::app_manifest)); `credits` is `"dynamic"`
/// when priced by the arguments; `form` is `"attribute"` for `#[paid]`, `"table"` for
/// a `PaidTools` entry.
///
/// ```
/// for tool in nvm_runtime::mcp::manifest() {
///     println!("{}: {} credits on {}", tool["tool"], tool["credits"], tool["plan"]);
/// }
/// ```
pub fn manifest() -> Vec<Value> {
    crate::actix::pricing::to_json(&tool_table())
}

/// The tools of [`manifest`], typed.
pub(crate) fn tool_table() -> Vec<PricedTool> {
    let mut tools: Vec<PricedTool> = inventory::iter::<ToolEntry>
        .into_iter()
        .map(|t| PricedTool::of(t.0.name, &t.0.terms, &t.0.price, "attribute"))
        .collect();
    let tabled = TABLED.lock().unwrap_or_else(PoisonError::into_inner);
    tools.extend(
        tabled.iter().map(|(name, config)| PricedTool::of(name, &config.terms, &config.price, "table")),
    );
    tools.sort_by(|a, b| a.tool.cmp(&b.tool).then(a.form.cmp(b.form)));
    tools
}

/// The terms of every paid tool, with its name: what the start-up step checks and
/// prefetches.
pub(crate) fn terms() -> Vec<(String, Terms)> {
    let mut all: Vec<(String, Terms)> =
        inventory::iter::<ToolEntry>.into_iter().map(|t| (t.0.name.to_owned(), t.0.terms.clone())).collect();
    let tabled = TABLED.lock().unwrap_or_else(PoisonError::into_inner);
    all.extend(tabled.iter().map(|(name, config)| (name.clone(), config.terms.clone())));
    all
}

/// `{"nevermined/price": {"planId", "agentId", "credits"}}`: credits as a decimal
/// string, or `"dynamic"` when they depend on the arguments.
fn price_meta(terms: &Terms, price: &Price, name: &str) -> MetaObject {
    let mut meta = MetaObject::default();
    let credits = price.fixed().map_or_else(|| "dynamic".to_owned(), |c| c.to_string());
    let mut entry = json!({
        "planId": terms.plan_id(name).ok().map(|p| p.into_owned()),
        "credits": credits,
    });
    if let (Ok(Some(agent)), Some(object)) = (terms.agent_id(name), entry.as_object_mut()) {
        object.insert("agentId".to_owned(), Value::String(agent.into_owned()));
    }
    meta.insert(PRICE_META.to_owned(), entry);
    meta
}

/// What a `#[paid]` tool method answers. Not a public API.
pub type ToolAnswer = Result<CallToolResponse, ErrorData>;

/// Gives a credits closure of a tool its argument type. Not a public API.
pub fn by_arguments<F: Fn(&JsonObject) -> u64>(price: F) -> F {
    price
}

/// Marks the `u64` form of [`ToolCredits`]: the same price per call.
#[derive(Debug)]
pub enum PerCall {}
/// Marks the function form of [`ToolCredits`].
#[derive(Debug)]
pub enum ByArguments {}

/// What `credits = …` accepts on an MCP tool: a `u64`, or a function of the call's
/// arguments. The marker `M` keeps the forms apart; it is inferred.
///
/// ```
/// use nvm_runtime::__private::mcp::ToolCredits;
/// use rmcp::model::JsonObject;
///
/// fn by_pages(args: &JsonObject) -> u64 { args.get("pages").and_then(|p| p.as_u64()).unwrap_or(1) }
///
/// fn accepts<M>(_credits: impl ToolCredits<M>) {}
/// accepts(5u64);
/// accepts(by_pages);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as the `credits` of an MCP tool",
    label = "expected a `u64`, or a function of the tool's arguments (`&JsonObject`) returning `u64`",
    note = "write `credits = 3`, `credits = PRICE` (a `const PRICE: u64`), `credits = |args: &JsonObject| -> u64 {{ … }}`, or the name of a `fn` taking `&JsonObject` (rmcp::model::JsonObject) and returning `u64`"
)]
pub trait ToolCredits<M> {
    /// The credits of a call with `arguments` (called by the flow; not a public API).
    fn credits(&self, arguments: &JsonObject) -> u64;
}

impl ToolCredits<PerCall> for u64 {
    fn credits(&self, _arguments: &JsonObject) -> u64 {
        *self
    }
}

impl<F: Fn(&JsonObject) -> u64> ToolCredits<ByArguments> for F {
    fn credits(&self, arguments: &JsonObject) -> u64 {
        self(arguments)
    }
}

/// The credits of a call from any [`ToolCredits`]. Not a public API.
pub fn resolve_credits<M, C: ToolCredits<M>>(credits: C, arguments: &JsonObject) -> u64 {
    credits.credits(arguments)
}

/// Serves a call of a `#[paid]` tool: verified before the tool's body (`run`, not
/// polled until then), settled when it completes without `isError`.
pub async fn serve<F, R>(call: PaidCall, tool: &'static PaidTool, run: F) -> ToolAnswer
where
    F: Future<Output = R> + Send,
    R: IntoCallToolResult,
{
    let credits = tool.price.of(call.arguments(), tool.name);
    call::serve(call, &tool.terms, credits, async move { run.await.into_call_tool_result() }).await
}

/// The terms and price of one tool of a [`PaidTools`] table: the MCP counterpart of
/// `RouteConfig`.
///
/// ```
/// use nvm_runtime::mcp::ToolConfig;
///
/// // 1 credit per 1,000 characters of the `text` argument, at least 1.
/// let summarize = ToolConfig::new("1234").credits_by(|args| {
///     let chars = args.get("text").and_then(|t| t.as_str()).map_or(0, str::len) as u64;
///     chars.div_ceil(1000).max(1)
/// });
/// # let _ = summarize;
/// ```
#[derive(Clone)]
pub struct ToolConfig {
    terms: Terms,
    price: Price,
}

impl std::fmt::Debug for ToolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolConfig")
            .field("terms", &self.terms)
            .field("credits", &self.price.fixed())
            .finish()
    }
}

impl ToolConfig {
    /// A tool paid with `plan`, 1 credit a call.
    pub fn new(plan: impl Into<String>) -> Self {
        ToolConfig { terms: Terms::new(Id::Literal(plan.into().into())), price: Price::Fixed(1) }
    }

    /// The same price for every call; 0 makes the tool free.
    pub fn credits(mut self, credits: u64) -> Self {
        self.price = Price::Fixed(credits);
        self
    }

    /// A price computed from the call's arguments, before the tool runs (it may then
    /// charge less from inside, with `PaymentContext::charge`).
    pub fn credits_by(mut self, price: impl Fn(&JsonObject) -> u64 + Send + Sync + 'static) -> Self {
        self.price = Price::Closure(Arc::new(price));
        self
    }

    /// The agent sent as `extra.agentId`.
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.terms.agent = Some(Id::Literal(agent.into().into()));
        self
    }

    /// The description of the tool's resource in its `PaymentRequired`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.terms.description = Some(description.into().into());
        self
    }
}

/// Prices the tools of an rmcp `ToolRouter` that carry no `#[paid]`, by name: the
/// MCP counterpart of `PaymentMiddleware`, on the same flow.
///
/// ```
/// use nvm_runtime::mcp::{PaidTools, ToolConfig};
/// use rmcp::handler::server::tool::ToolRouter;
///
/// # fn demo<S: Send + Sync + 'static>(router: ToolRouter<S>) -> Result<(), nvm_runtime::error::ConfigError> {
/// let router = PaidTools::new()
///     .tool("search", ToolConfig::new("1234").credits(2))
///     .wrap(router)?; // an entry naming no tool of the router is an error
/// # let _ = router;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct PaidTools {
    tools: Vec<(String, ToolConfig)>,
}

impl PaidTools {
    /// An empty table.
    pub fn new() -> Self {
        PaidTools::default()
    }

    /// Charges for the tool `name` on `config`'s terms.
    pub fn tool(mut self, name: impl Into<String>, config: ToolConfig) -> Self {
        self.tools.push((name.into(), config));
        self
    }

    /// `router` with each tool of the table paid (its `tools/list` entry showing the
    /// price in `_meta`); refused when an entry names no tool of the router.
    pub fn wrap<S: Send + Sync + 'static>(
        self,
        mut router: ToolRouter<S>,
    ) -> Result<ToolRouter<S>, ConfigError> {
        let unknown: Vec<String> = self
            .tools
            .iter()
            .filter(|(name, _)| !router.map.contains_key(name.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        if !unknown.is_empty() {
            let mut known: Vec<String> = router.map.keys().map(|k| k.to_string()).collect();
            known.sort();
            return Err(ConfigProblem::UnknownTools { unknown, known }.into());
        }
        for (name, config) in self.tools {
            let Some(route) = router.map.remove(name.as_str()) else { continue };
            let mut attr = route.attr.clone();
            let meta = attr.meta.get_or_insert_with(MetaObject::default);
            meta.extend(price_meta(&config.terms, &config.price, &name));
            let original = route.call.clone();
            let mut tabled = TABLED.lock().unwrap_or_else(PoisonError::into_inner);
            tabled.retain(|(known, _)| *known != name);
            tabled.push((name.clone(), config.clone()));
            drop(tabled);
            let config = Arc::new(config);
            let paid = ToolRoute::new_dyn(attr, move |mut context: ToolCallContext<'_, S>| {
                let call = PaidCall::of(&mut context);
                let credits = config.price.of(call.arguments(), call.name());
                let config = Arc::clone(&config);
                // Built now, polled only once the payment is verified.
                let tool = original(context);
                Box::pin(async move { call::serve(call, &config.terms, credits, tool).await })
            });
            router.add_route(paid);
        }
        Ok(router)
    }
}
