//! The arguments of `#[paid(…)]`: `key = value` pairs separated by commas, each key
//! read by name and each value checked as it is read.
//!
//! Parsing keeps going after a bad value so that one compilation reports every mistake;
//! only a syntax error (a missing `=` or `,`) stops it. Every error is spanned at the
//! user's tokens (the key, or the value) and shows the correct form.

use proc_macro2::{Ident, Span};
use syn::ext::IdentExt;
use syn::parse::discouraged::Speculative;
use syn::parse::{Parse, ParseStream};
use syn::{Expr, ExprClosure, Lit, LitBool, LitStr, Path, Token, UnOp};

/// The schemes the runtime knows (its `wire` module docs, §3): `scheme = …` must be one of them.
const SCHEMES: [&str; 2] = ["nvm:erc4337", "nvm:card-delegation"];

/// The settlement points the runtime knows: `settle = …` must be one of them.
const SETTLE_POINTS: [&str; 3] = ["before_body", "after_body", "deferred"];

/// One of the arguments `#[paid]` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// `plan = …`
    Plan,
    /// `agent = …`
    Agent,
    /// `credits = …`
    Credits,
    /// `scheme = "…"`
    Scheme,
    /// `network = "…"`
    Network,
    /// `description = "…"`
    Description,
    /// `mime_type = "…"`
    MimeType,
    /// `resource = "…"`
    Resource,
    /// `settle = "before_body" | "after_body" | "deferred"`
    Settle,
    /// `cache_control = "private, max-age=60"`
    CacheControl,
    /// `speculative = true`
    Speculative,
    /// `crate = path`
    Crate,
}

impl Key {
    /// Every key, in the order the documentation lists them.
    const ALL: [Key; 12] = [
        Key::Plan,
        Key::Agent,
        Key::Credits,
        Key::Scheme,
        Key::Network,
        Key::Description,
        Key::MimeType,
        Key::Resource,
        Key::Settle,
        Key::CacheControl,
        Key::Speculative,
        Key::Crate,
    ];

    /// The key as written.
    fn name(self) -> &'static str {
        match self {
            Key::Plan => "plan",
            Key::Agent => "agent",
            Key::Credits => "credits",
            Key::Scheme => "scheme",
            Key::Network => "network",
            Key::Description => "description",
            Key::MimeType => "mime_type",
            Key::Resource => "resource",
            Key::Settle => "settle",
            Key::CacheControl => "cache_control",
            Key::Speculative => "speculative",
            Key::Crate => "crate",
        }
    }

    /// A correct use of the key, shown in error messages.
    fn example(self) -> &'static str {
        match self {
            Key::Plan => "`plan = \"1234…\"` or `plan = env(\"NVM_PLAN_ID\")`",
            Key::Agent => "`agent = \"5678…\"` or `agent = env(\"NVM_AGENT_ID\")`",
            Key::Credits => "`credits = 1`",
            Key::Scheme => "`scheme = \"nvm:erc4337\"` or `scheme = \"nvm:card-delegation\"`",
            Key::Network => "`network = \"eip155:84532\"`",
            Key::Description => "`description = \"What the caller pays for\"`",
            Key::MimeType => "`mime_type = \"application/json\"`",
            Key::Resource => "`resource = \"https://api.example.com/ask\"`",
            Key::Settle => "`settle = \"after_body\"`, `settle = \"before_body\"` or `settle = \"deferred\"`",
            Key::CacheControl => "`cache_control = \"private, max-age=60\"`",
            Key::Speculative => "`speculative = true`",
            Key::Crate => "`crate = my_nvm`",
        }
    }
}

/// The list of accepted keys, for error messages.
fn known_keys() -> String {
    let names: Vec<String> = Key::ALL.iter().map(|k| format!("`{}`", k.name())).collect();
    let (last, rest) = names.split_last().map_or((String::new(), &[][..]), |(l, r)| (l.clone(), r));
    format!("{} and {last}", rest.join(", "))
}

/// Where a plan or agent id comes from.
pub(crate) enum Value {
    /// A non-empty string literal.
    Literal(LitStr),
    /// `env("VAR")`: the literal holds the variable's name.
    Env(LitStr),
    /// Any other expression, evaluated per request.
    Expr(Box<Expr>),
}

/// How `credits = …` prices a request.
pub(crate) enum Credits {
    /// An integer literal, checked to fit a `u64` (the default is 1).
    Fixed {
        /// The amount.
        value: u64,
        /// The literal's span (the attribute's for the default).
        span: Span,
    },
    /// `|req| …`: a synchronous closure of the request.
    SyncClosure(Box<ExprClosure>),
    /// `async |req| …`: an async closure of the request.
    AsyncClosure(Box<ExprClosure>),
    /// Any other expression: a `u64` const or the path of a `fn`/`async fn`.
    Expr(Box<Expr>),
}

/// The validated arguments of one `#[paid(…)]`.
pub(crate) struct Args {
    /// `plan = …` (required).
    pub(crate) plan: Value,
    /// `agent = …`.
    pub(crate) agent: Option<Value>,
    /// `credits = …` (default `1`).
    pub(crate) credits: Credits,
    /// `scheme = "…"`.
    pub(crate) scheme: Option<LitStr>,
    /// `network = "…"`.
    pub(crate) network: Option<LitStr>,
    /// `description = "…"`.
    pub(crate) description: Option<LitStr>,
    /// `mime_type = "…"`.
    pub(crate) mime_type: Option<LitStr>,
    /// `resource = "…"`.
    pub(crate) resource: Option<LitStr>,
    /// `settle = "…"`: `after_body`, `before_body` or `deferred`.
    pub(crate) settle: Option<LitStr>,
    /// `cache_control = "…"`: a paid answer's `Cache-Control` (checked by the runtime
    /// when the route's `static` is built, at compile time).
    pub(crate) cache_control: Option<LitStr>,
    /// `speculative = true`: the handler runs while the payment is verified.
    pub(crate) speculative: Option<LitBool>,
    /// `crate = path`, default `::nvm_runtime`.
    pub(crate) krate: Path,
}

/// Collects errors so that one compilation reports all of them.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Records an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Records the error of `result`, if any, and returns its value.
    pub(crate) fn check<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|error| self.push(error)).ok()
    }

    /// `Err` with every recorded error, or `Ok(value)` when there was none.
    pub(crate) fn finish<T>(self, value: impl FnOnce() -> T) -> syn::Result<T> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(value()),
        }
    }
}

/// What has been read so far.
#[derive(Default)]
struct Slots {
    plan: Option<Value>,
    agent: Option<Value>,
    credits: Option<Credits>,
    scheme: Option<LitStr>,
    network: Option<LitStr>,
    description: Option<LitStr>,
    mime_type: Option<LitStr>,
    resource: Option<LitStr>,
    settle: Option<LitStr>,
    cache_control: Option<LitStr>,
    speculative: Option<LitBool>,
    krate: Option<Path>,
    /// The keys seen, to report duplicates.
    seen: Vec<Key>,
}

impl Slots {
    /// Validates `value` as the argument `key` and stores it.
    fn set(&mut self, key: Key, key_span: Span, value: Expr, errors: &mut Errors) {
        if self.seen.contains(&key) {
            errors.push(syn::Error::new(
                key_span,
                format!("duplicate argument `{0}`: #[paid] takes `{0}` once; remove this one", key.name()),
            ));
            return;
        }
        self.seen.push(key);
        match key {
            Key::Plan => self.plan = errors.check(parse_value(key, value)),
            Key::Agent => self.agent = errors.check(parse_value(key, value)),
            Key::Credits => self.credits = errors.check(parse_credits(value)),
            Key::Scheme => self.scheme = errors.check(parse_scheme(value)),
            Key::Network => self.network = errors.check(parse_string(key, value, false)),
            Key::Description => self.description = errors.check(parse_string(key, value, true)),
            Key::MimeType => self.mime_type = errors.check(parse_string(key, value, false)),
            Key::Resource => self.resource = errors.check(parse_string(key, value, false)),
            Key::Settle => self.settle = errors.check(parse_settle(value)),
            Key::CacheControl => self.cache_control = errors.check(parse_string(key, value, false)),
            Key::Speculative => self.speculative = errors.check(parse_bool(key, value)),
            Key::Crate => self.krate = errors.check(parse_crate(value)),
        }
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut slots = Slots::default();
        let mut errors = Errors::default();
        loop {
            if input.is_empty() {
                break;
            }
            let (key, key_span) = match parse_key(input) {
                Ok(key) => key,
                Err(error) => return Err(with(errors, error)),
            };
            if let Err(error) = parse_value_start(input, &key, key_span) {
                return Err(with(errors, error));
            }
            let value: Expr = match parse_expr(input) {
                Ok(value) => value,
                Err(error) => return Err(with(errors, error)),
            };
            match key {
                Ok(key) => slots.set(key, key_span, value, &mut errors),
                Err(unknown) => errors.push(unknown),
            }
            if input.is_empty() {
                break;
            }
            if !input.peek(Token![,]) {
                let error = syn::Error::new(
                    input.span(),
                    "expected `,` after the argument's value: #[paid] takes `key = value` pairs \
                     separated by commas, e.g. `#[paid(plan = \"…\", credits = 1)]`",
                );
                return Err(with(errors, error));
            }
            input.parse::<Token![,]>()?;
        }
        if slots.plan.is_none() && !slots.seen.contains(&Key::Plan) {
            errors.push(syn::Error::new(
                Span::call_site(),
                "#[paid] needs the plan the caller pays with: write \
                 `#[paid(plan = \"…\", credits = 1)]` or `#[paid(plan = env(\"NVM_PLAN_ID\"))]`",
            ));
        }
        let Slots {
            plan,
            agent,
            credits,
            scheme,
            network,
            description,
            mime_type,
            resource,
            settle,
            cache_control,
            speculative,
            krate,
            ..
        } = slots;
        match plan {
            Some(plan) => errors.finish(|| Args {
                plan,
                agent,
                credits: credits.unwrap_or(Credits::Fixed { value: 1, span: Span::call_site() }),
                scheme,
                network,
                description,
                mime_type,
                resource,
                settle,
                cache_control,
                speculative,
                krate: krate.unwrap_or_else(default_crate),
            }),
            // `plan` was given but invalid, or missing: both are in `errors` already.
            None => Err(errors.0.unwrap_or_else(|| syn::Error::new(Span::call_site(), "invalid `plan`"))),
        }
    }
}

/// `errors` followed by `last`.
fn with(mut errors: Errors, last: syn::Error) -> syn::Error {
    errors.push(last);
    errors.0.unwrap_or_else(|| syn::Error::new(Span::call_site(), "invalid #[paid] arguments"))
}

/// `::nvm_runtime`.
fn default_crate() -> Path {
    let mut path = Path::from(Ident::new("nvm_runtime", Span::call_site()));
    path.leading_colon = Some(Token![::](Span::call_site()));
    path
}

/// Reads a key: `Ok(Ok(key))` when known, `Ok(Err(error))` when unknown (the caller
/// still reads its value, to report later mistakes too), `Err` on a syntax error.
fn parse_key(input: ParseStream<'_>) -> syn::Result<(Result<Key, syn::Error>, Span)> {
    // One identifier read and compared by name (not one peek per keyword: each peek
    // renders the identifier again, and this runs for every argument of every handler).
    if input.peek(Ident::peek_any) {
        let ident = input.call(Ident::parse_any)?;
        let name = ident.to_string();
        if let Some(key) = Key::ALL.iter().copied().find(|key| key.name() == name) {
            return Ok((Ok(key), ident.span()));
        }
        let name = ident.unraw().to_string();
        let hint = suggest(&name).map(|k| format!("did you mean `{}`? ", k.name())).unwrap_or_default();
        let message = format!("unknown argument `{name}`: {hint}#[paid] accepts {}", known_keys());
        return Ok((Err(syn::Error::new(ident.span(), message)), ident.span()));
    }
    Err(syn::Error::new(
        input.span(),
        format!(
            "expected an argument name: #[paid] takes `key = value` pairs, e.g. \
             `#[paid(plan = \"…\", credits = 1)]`; it accepts {}",
            known_keys()
        ),
    ))
}

/// An argument's value: a lone literal directly (most values are one), anything else
/// through the expression parser.
fn parse_expr(input: ParseStream<'_>) -> syn::Result<Expr> {
    if input.peek(Lit) {
        let fork = input.fork();
        let lit: Lit = fork.parse()?;
        // A negative number (one literal token outside the compiler) goes the long way,
        // to the error it gets there.
        let negative = match &lit {
            Lit::Int(int) => int.base10_digits().starts_with('-'),
            Lit::Float(float) => float.base10_digits().starts_with('-'),
            _ => false,
        };
        if !negative && (fork.is_empty() || fork.peek(Token![,])) {
            input.advance_to(&fork);
            return Ok(Expr::Lit(syn::ExprLit { attrs: Vec::new(), lit }));
        }
    }
    input.parse()
}

/// Checks that `= value` follows the key.
fn parse_value_start(
    input: ParseStream<'_>,
    key: &Result<Key, syn::Error>,
    key_span: Span,
) -> syn::Result<()> {
    let example = match key {
        Ok(key) => key.example().to_owned(),
        Err(_) => "`key = value`".to_owned(),
    };
    if !input.peek(Token![=]) {
        let message = match key {
            Ok(key) => format!("expected `=` after `{}`: write {example}", key.name()),
            Err(error) => error.to_string(),
        };
        return Err(syn::Error::new(key_span, message));
    }
    input.parse::<Token![=]>()?;
    if input.is_empty() || input.peek(Token![,]) {
        return Err(syn::Error::new(key_span, format!("this argument needs a value: write {example}")));
    }
    Ok(())
}

/// The key closest to an unknown one, if any is close.
fn suggest(name: &str) -> Option<Key> {
    let normal: String = name.to_ascii_lowercase().chars().filter(|c| *c != '_' && *c != '-').collect();
    let alias = match normal.as_str() {
        "planid" | "plans" => Some(Key::Plan),
        "agentid" | "agents" => Some(Key::Agent),
        "credit" | "price" | "cost" | "amount" | "charge" => Some(Key::Credits),
        "mimetype" | "mime" | "contenttype" => Some(Key::MimeType),
        "url" | "resourceurl" => Some(Key::Resource),
        "desc" => Some(Key::Description),
        "krate" | "cratepath" => Some(Key::Crate),
        _ => None,
    };
    alias.or_else(|| {
        Key::ALL
            .into_iter()
            .map(|key| (edit_distance(&normal, &key.name().replace('_', "")), key))
            .filter(|(distance, _)| *distance <= 2)
            .min_by_key(|(distance, _)| *distance)
            .map(|(_, key)| key)
    })
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `plan` / `agent`: a string literal, `env("VAR")`, or any other expression.
fn parse_value(key: Key, value: Expr) -> syn::Result<Value> {
    let name = key.name();
    let what = if key == Key::Plan { "plan" } else { "agent" };
    match value {
        Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => {
            let text = lit.value();
            if text.trim().is_empty() {
                let message = if key == Key::Plan {
                    "`plan` cannot be empty: write the plan id, e.g. `plan = \"1234…\"` or \
                     `plan = env(\"NVM_PLAN_ID\")`"
                        .to_owned()
                } else {
                    "`agent` cannot be empty: write the agent id, e.g. `agent = \"5678…\"` or \
                     `agent = env(\"NVM_AGENT_ID\")`, or remove `agent`"
                        .to_owned()
                };
                return Err(syn::Error::new(lit.span(), message));
            }
            if text.trim() != text {
                return Err(syn::Error::new(
                    lit.span(),
                    format!("the {what} id has spaces around it: write `{name} = \"{}\"`", text.trim()),
                ));
            }
            Ok(Value::Literal(lit))
        }
        Expr::Lit(syn::ExprLit { lit: Lit::Int(int), .. }) => Err(syn::Error::new(
            int.span(),
            format!("{what} ids are strings: write `{name} = \"{}\"`", int.base10_digits()),
        )),
        Expr::Lit(lit) => Err(syn::Error::new_spanned(
            lit,
            format!(
                "`{name}` takes a string: write {}, or an expression yielding `&str` or `String`",
                key.example()
            ),
        )),
        Expr::Call(call) if is_env(&call.func) => {
            let var_example = if key == Key::Plan { "NVM_PLAN_ID" } else { "NVM_AGENT_ID" };
            let usage = format!(
                "`env` takes the name of one environment variable as a string literal: \
                 write `{name} = env(\"{var_example}\")`"
            );
            let mut args = call.args.iter();
            match (args.next(), args.next()) {
                (Some(Expr::Lit(syn::ExprLit { lit: Lit::Str(var), .. })), None) => {
                    let text = var.value();
                    if text.trim().is_empty() {
                        Err(syn::Error::new(
                            var.span(),
                            format!("the variable name cannot be empty: {usage}"),
                        ))
                    } else if text.contains(['=', '\0']) || text.trim() != text {
                        Err(syn::Error::new(
                            var.span(),
                            format!(
                                "`{text}` is not an environment variable name (no `=`, NUL or \
                                 surrounding spaces): write `{name} = env(\"{var_example}\")`"
                            ),
                        ))
                    } else {
                        Ok(Value::Env(var.clone()))
                    }
                }
                (None, _) => Err(syn::Error::new_spanned(&call, usage)),
                (Some(_), _) => Err(syn::Error::new_spanned(&call.args, usage)),
            }
        }
        other => Ok(Value::Expr(Box::new(other))),
    }
}

/// `env`, as a bare identifier (so `self::env(…)` still calls the user's function).
fn is_env(func: &Expr) -> bool {
    matches!(func, Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() && path.path.is_ident("env"))
}

/// `credits`: an integer literal, a closure of the request, or any other expression.
fn parse_credits(value: Expr) -> syn::Result<Credits> {
    const FORMS: &str = "write `credits = 1` (a whole number, 0 for free), a `u64` const, \
                         `|req: &HttpRequest| -> u64 { … }`, `async |req: &HttpRequest| -> u64 { … }`, \
                         or the name of a `fn`/`async fn` of `&HttpRequest`";
    match value {
        Expr::Lit(syn::ExprLit { lit: Lit::Int(int), .. }) => {
            let suffix = int.suffix();
            if !suffix.is_empty() && suffix != "u64" {
                let message = if suffix.starts_with('i') {
                    format!(
                        "`credits` is a `u64`: write `credits = {}` (no `{suffix}` suffix)",
                        int.base10_digits()
                    )
                } else {
                    format!("`credits` is a `u64`: write `credits = {}`, not `{suffix}`", int.base10_digits())
                };
                return Err(syn::Error::new(int.span(), message));
            }
            match int.base10_parse::<u64>() {
                Ok(value) => Ok(Credits::Fixed { value, span: int.span() }),
                Err(_) => Err(syn::Error::new(
                    int.span(),
                    format!(
                        "`credits = {}` does not fit in a `u64`: write at most `credits = {}`",
                        int.base10_digits(),
                        u64::MAX
                    ),
                )),
            }
        }
        Expr::Lit(syn::ExprLit { lit: Lit::Float(float), .. }) => {
            let digits = float.base10_digits();
            let whole = digits
                .split_once('.')
                .filter(|(_, fraction)| fraction.chars().all(|c| c == '0'))
                .and_then(|(whole, _)| whole.parse::<u64>().ok());
            let message = match whole {
                Some(whole) => format!("credits are whole numbers: write `credits = {whole}`"),
                None => format!("credits are whole numbers: write `credits = 1`, not `{digits}`"),
            };
            Err(syn::Error::new(float.span(), message))
        }
        Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => {
            let message = match lit.value().trim().parse::<u64>() {
                Ok(n) => format!("`credits` is a number, not a string: write `credits = {n}`"),
                Err(_) => format!("`credits` cannot be a string: {FORMS}"),
            };
            Err(syn::Error::new(lit.span(), message))
        }
        Expr::Lit(lit) => Err(syn::Error::new_spanned(lit, format!("invalid `credits`: {FORMS}"))),
        Expr::Unary(unary)
            if matches!(unary.op, UnOp::Neg(_))
                && matches!(
                    &*unary.expr,
                    Expr::Lit(syn::ExprLit { lit: Lit::Int(_) | Lit::Float(_), .. })
                ) =>
        {
            Err(syn::Error::new_spanned(
                unary,
                "credits cannot be negative: write a positive number, e.g. `credits = 1`, or \
                 `credits = 0` for a free route",
            ))
        }
        Expr::Paren(paren) if matches!(&*paren.expr, Expr::Lit(_) | Expr::Unary(_) | Expr::Paren(_)) => {
            parse_credits(*paren.expr)
        }
        Expr::Async(block) => Err(syn::Error::new(
            block.async_token.span,
            "`credits` cannot be an `async` block: write an async closure of the request, \
             `async |req: &HttpRequest| { … }`",
        )),
        Expr::Closure(closure) => parse_closure(closure),
        other => Ok(Credits::Expr(Box::new(other))),
    }
}

/// A `credits` closure: one argument (the request), no `async` block for a body.
fn parse_closure(closure: ExprClosure) -> syn::Result<Credits> {
    if let Some(async_block) = returned_async_block(&closure.body) {
        return Err(syn::Error::new(
            async_block.async_token.span,
            "a closure returning an `async` block cannot be used as `credits`: write an async \
             closure instead, `async |req: &HttpRequest| { … }`",
        ));
    }
    if closure.inputs.len() != 1 {
        let form = if closure.asyncness.is_some() {
            "`async |req: &HttpRequest| -> u64 { … }`"
        } else {
            "`|req: &HttpRequest| -> u64 { … }`"
        };
        let message = format!(
            "a `credits` closure takes the request, and only it: write {form}{}",
            if closure.inputs.is_empty() { " (or `credits = N` for a fixed amount)" } else { "" }
        );
        return Err(syn::Error::new(closure.or1_token.span, message));
    }
    if closure.asyncness.is_some() {
        Ok(Credits::AsyncClosure(Box::new(closure)))
    } else {
        Ok(Credits::SyncClosure(Box::new(closure)))
    }
}

/// The `async` block a closure body is or ends with, if any.
fn returned_async_block(body: &Expr) -> Option<&syn::ExprAsync> {
    match body {
        Expr::Async(block) => Some(block),
        Expr::Block(block) if block.block.stmts.len() == 1 => match &block.block.stmts[0] {
            syn::Stmt::Expr(expr, None) => returned_async_block(expr),
            _ => None,
        },
        Expr::Paren(paren) => returned_async_block(&paren.expr),
        _ => None,
    }
}

/// `scheme`: one of the known schemes.
fn parse_scheme(value: Expr) -> syn::Result<LitStr> {
    parse_choice(Key::Scheme, value, &SCHEMES, "scheme", " (or remove `scheme` to detect it from the plan)")
}

/// `settle`: one of the known settlement points.
fn parse_settle(value: Expr) -> syn::Result<LitStr> {
    parse_choice(Key::Settle, value, &SETTLE_POINTS, "settlement point", "")
}

/// A string literal that must be one of `allowed` (`what` names them in the error,
/// `advice` follows the example).
fn parse_choice(key: Key, value: Expr, allowed: &[&str], what: &str, advice: &str) -> syn::Result<LitStr> {
    let lit = parse_string(key, value, false)?;
    let text = lit.value();
    if allowed.contains(&text.as_str()) {
        Ok(lit)
    } else {
        Err(syn::Error::new(lit.span(), format!("unknown {what} `{text}`: write {}{advice}", key.example())))
    }
}

/// A string-literal-only argument.
fn parse_string(key: Key, value: Expr, may_be_empty: bool) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => {
            if !may_be_empty && lit.value().trim().is_empty() {
                Err(syn::Error::new(
                    lit.span(),
                    format!("`{}` cannot be empty: write {}, or remove it", key.name(), key.example()),
                ))
            } else {
                Ok(lit)
            }
        }
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{}` takes a string literal: write {}", key.name(), key.example()),
        )),
    }
}

/// A `bool` literal.
fn parse_bool(key: Key, value: Expr) -> syn::Result<LitBool> {
    match value {
        Expr::Lit(syn::ExprLit { lit: Lit::Bool(lit), .. }) => Ok(lit),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{}` takes `true` or `false`: write {}", key.name(), key.example()),
        )),
    }
}

/// `crate`: a plain path such as `my_nvm` or `::my_nvm` or `crate::reexports::nvm`.
fn parse_crate(value: Expr) -> syn::Result<Path> {
    match value {
        Expr::Path(path)
            if path.qself.is_none()
                && path.attrs.is_empty()
                && path.path.segments.iter().all(|s| s.arguments.is_none()) =>
        {
            Ok(path.path)
        }
        Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => Err(syn::Error::new(
            lit.span(),
            format!("`crate` takes a path, not a string: write `crate = {}`", lit.value().trim()),
        )),
        other => Err(syn::Error::new_spanned(
            other,
            "`crate` takes the path of the runtime crate as renamed in Cargo.toml: write `crate = my_nvm`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::ToTokens;

    fn parse(args: &str) -> syn::Result<Args> {
        syn::parse_str::<Args>(args)
    }

    fn error(args: &str) -> String {
        match parse(args) {
            Ok(_) => panic!("expected an error for `{args}`"),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"),
        }
    }

    fn tokens(t: &impl ToTokens) -> String {
        t.to_token_stream().to_string()
    }

    #[test]
    fn literal_plan_default_credits() {
        let args = parse(r#"plan = "123""#).expect("valid");
        assert!(matches!(&args.plan, Value::Literal(lit) if lit.value() == "123"));
        assert!(matches!(args.credits, Credits::Fixed { value: 1, .. }));
        assert!(args.agent.is_none());
        assert_eq!(tokens(&args.krate), ":: nvm_runtime");
    }

    #[test]
    fn trailing_comma() {
        assert!(parse(r#"plan = "123", credits = 3,"#).is_ok());
    }

    #[test]
    fn env_plan_and_agent() {
        let args = parse(r#"plan = env("NVM_PLAN_ID"), agent = env("NVM_AGENT_ID")"#).expect("valid");
        assert!(matches!(&args.plan, Value::Env(var) if var.value() == "NVM_PLAN_ID"));
        assert!(matches!(&args.agent, Some(Value::Env(var)) if var.value() == "NVM_AGENT_ID"));
    }

    #[test]
    fn expression_plan() {
        let args = parse(r#"plan = config::plan_id(), agent = AGENT"#).expect("valid");
        assert!(matches!(&args.plan, Value::Expr(e) if tokens(e) == "config :: plan_id ()"));
        assert!(matches!(&args.agent, Some(Value::Expr(e)) if tokens(e) == "AGENT"));
        // A path to `env` is the user's own function.
        let args = parse(r#"plan = self::env("X")"#).expect("valid");
        assert!(matches!(&args.plan, Value::Expr(_)));
        // `env!` is a macro yielding `&'static str`.
        let args = parse(r#"plan = env!("X")"#).expect("valid");
        assert!(matches!(&args.plan, Value::Expr(_)));
    }

    #[test]
    fn credits_forms() {
        let fixed = |s: &str| match parse(&format!(r#"plan = "p", credits = {s}"#)).expect("valid").credits {
            Credits::Fixed { value, .. } => value,
            _ => panic!("not fixed: {s}"),
        };
        assert_eq!(fixed("0"), 0);
        assert_eq!(fixed("5"), 5);
        assert_eq!(fixed("5u64"), 5);
        assert_eq!(fixed("1_000"), 1000);
        assert_eq!(fixed("0x10"), 16);
        assert_eq!(fixed("(7)"), 7);
        assert_eq!(fixed("18446744073709551615"), u64::MAX);

        let credits = |s: &str| parse(&format!(r#"plan = "p", credits = {s}"#)).expect("valid").credits;
        assert!(matches!(credits("PRICE"), Credits::Expr(_)));
        assert!(matches!(credits("pricing::by_length"), Credits::Expr(_)));
        assert!(matches!(credits("|req| req.path().len() as u64"), Credits::SyncClosure(_)));
        assert!(matches!(credits("move |req: &HttpRequest| -> u64 { 2 }"), Credits::SyncClosure(_)));
        assert!(matches!(credits("async |req: &HttpRequest| { 2 }"), Credits::AsyncClosure(_)));
        assert!(matches!(credits("async move |req| 2"), Credits::AsyncClosure(_)));
    }

    #[test]
    fn string_arguments() {
        let args = parse(
            r#"plan = "p", scheme = "nvm:card-delegation", network = "stripe", description = "d",
               mime_type = "application/json", resource = "https://x/y""#,
        )
        .expect("valid");
        assert_eq!(args.scheme.map(|s| s.value()).as_deref(), Some("nvm:card-delegation"));
        assert_eq!(args.network.map(|s| s.value()).as_deref(), Some("stripe"));
        assert_eq!(args.description.map(|s| s.value()).as_deref(), Some("d"));
        assert_eq!(args.mime_type.map(|s| s.value()).as_deref(), Some("application/json"));
        assert_eq!(args.resource.map(|s| s.value()).as_deref(), Some("https://x/y"));
        // An empty description is allowed.
        assert!(parse(r#"plan = "p", description = """#).is_ok());
    }

    #[test]
    fn crate_path() {
        let args = parse(r#"plan = "p", crate = my_nvm"#).expect("valid");
        assert_eq!(tokens(&args.krate), "my_nvm");
        let args = parse(r#"crate = crate::reexports::nvm, plan = "p""#).expect("valid");
        assert_eq!(tokens(&args.krate), "crate :: reexports :: nvm");
        assert!(error(r#"plan = "p", crate = "my_nvm""#).contains("write `crate = my_nvm`"));
        assert!(error(r#"plan = "p", crate = a::<b>"#).contains("`crate` takes the path"));
    }

    #[test]
    fn plan_errors() {
        assert_eq!(
            error(r#"plan = """#),
            "`plan` cannot be empty: write the plan id, e.g. `plan = \"1234…\"` or `plan = env(\"NVM_PLAN_ID\")`"
        );
        assert!(error(r#"plan = "  ""#).starts_with("`plan` cannot be empty"));
        assert_eq!(error(r#"plan = " 12 ""#), "the plan id has spaces around it: write `plan = \"12\"`");
        assert_eq!(error("plan = 1234"), "plan ids are strings: write `plan = \"1234\"`");
        assert!(error("plan = true").starts_with("`plan` takes a string"));
        assert!(error(r#"plan = "p", agent = """#).starts_with("`agent` cannot be empty"));
        assert!(error(r#"plan = env()"#).contains("write `plan = env(\"NVM_PLAN_ID\")`"));
        assert!(error(r#"plan = env("A", "B")"#).contains("takes the name of one environment variable"));
        assert!(error(r#"plan = env(VAR)"#).contains("as a string literal"));
        assert!(error(r#"plan = env("")"#).starts_with("the variable name cannot be empty"));
        assert!(error(r#"plan = env("A=B")"#).contains("is not an environment variable name"));
        assert!(error(r#"plan = "p", agent = env(1)"#).contains("write `agent = env(\"NVM_AGENT_ID\")`"));
    }

    #[test]
    fn credits_errors() {
        let e = |s: &str| error(&format!(r#"plan = "p", credits = {s}"#));
        assert_eq!(
            e("-1"),
            "credits cannot be negative: write a positive number, e.g. `credits = 1`, or `credits = 0` for a free route"
        );
        assert!(e("-1.5").starts_with("credits cannot be negative"));
        assert_eq!(e("1.5"), "credits are whole numbers: write `credits = 1`, not `1.5`");
        assert_eq!(e("2.0"), "credits are whole numbers: write `credits = 2`");
        assert_eq!(e("2.00f64"), "credits are whole numbers: write `credits = 2`");
        assert_eq!(e("1e3"), "credits are whole numbers: write `credits = 1`, not `1e3`");
        assert_eq!(
            e("18446744073709551616"),
            "`credits = 18446744073709551616` does not fit in a `u64`: write at most `credits = 18446744073709551615`"
        );
        assert_eq!(e("5u32"), "`credits` is a `u64`: write `credits = 5`, not `u32`");
        assert_eq!(e("5i64"), "`credits` is a `u64`: write `credits = 5` (no `i64` suffix)");
        assert_eq!(e(r#""5""#), "`credits` is a number, not a string: write `credits = 5`");
        assert!(e("true").starts_with("invalid `credits`: write `credits = 1`"));
        assert_eq!(
            e("|req| async move { 1 }"),
            "a closure returning an `async` block cannot be used as `credits`: write an async closure instead, \
             `async |req: &HttpRequest| { … }`"
        );
        assert!(e("|req| { async { 1 } }").starts_with("a closure returning an `async` block"));
        assert!(e("async { 1 }").starts_with("`credits` cannot be an `async` block"));
        assert!(e("|| 1").starts_with("a `credits` closure takes the request, and only it"));
        assert!(e("|a, b| 1").contains("`|req: &HttpRequest| -> u64 { … }`"));
        assert!(e("async |a, b| 1").contains("`async |req: &HttpRequest| -> u64 { … }`"));
    }

    #[test]
    fn string_argument_errors() {
        assert_eq!(
            error(r#"plan = "p", scheme = erc4337"#),
            "`scheme` takes a string literal: write `scheme = \"nvm:erc4337\"` or `scheme = \"nvm:card-delegation\"`"
        );
        assert!(error(r#"plan = "p", scheme = "evm""#).starts_with("unknown scheme `evm`"));
        assert_eq!(
            error(r#"plan = "p", settle = "later""#),
            "unknown settlement point `later`: write `settle = \"after_body\"`, `settle = \"before_body\"` or `settle = \"deferred\"`"
        );
        assert!(error(r#"plan = "p", settle = after_body"#).starts_with("`settle` takes a string literal"));
        assert!(error(r#"plan = "p", network = """#).starts_with("`network` cannot be empty"));
        assert!(error(r#"plan = "p", mime_type = JSON"#).starts_with("`mime_type` takes a string literal"));
        assert!(error(r#"plan = "p", resource = 1"#).starts_with("`resource` takes a string literal"));
        assert!(error(r#"plan = "p", description = d"#).starts_with("`description` takes a string literal"));
        assert!(error(r#"plan = "p", speculative = 1"#).starts_with("`speculative` takes `true` or `false`"));
    }

    #[test]
    fn key_errors() {
        assert_eq!(
            error(r#"plan = "p", price = 2"#),
            "unknown argument `price`: did you mean `credits`? #[paid] accepts `plan`, `agent`, `credits`, \
             `scheme`, `network`, `description`, `mime_type`, `resource`, `settle`, `cache_control`, \
             `speculative` and `crate`"
        );
        assert!(error(r#"plna = "p""#).contains("unknown argument `plna`: did you mean `plan`?"));
        assert!(error(r#"plan = "p", mimeType = "x""#).contains("did you mean `mime_type`?"));
        assert!(error(r#"plan = "p", zzzzzz = 1"#).starts_with("unknown argument `zzzzzz`: #[paid] accepts"));
        assert_eq!(
            error(r#"plan = "a", plan = "b""#),
            "duplicate argument `plan`: #[paid] takes `plan` once; remove this one"
        );
        assert!(error(r#"plan = "a", credits = 1, credits = 2"#).starts_with("duplicate argument `credits`"));
        assert!(error("").starts_with(
            "#[paid] needs the plan the caller pays with: write `#[paid(plan = \"…\", credits = 1)]`"
        ));
        assert!(error("credits = 2").starts_with("#[paid] needs the plan"));
        assert_eq!(
            error("plan"),
            "expected `=` after `plan`: write `plan = \"1234…\"` or `plan = env(\"NVM_PLAN_ID\")`"
        );
        assert!(error("plan =").starts_with("this argument needs a value"));
        assert!(error("plan = , credits = 1").starts_with("this argument needs a value"));
        assert!(error(r#"plan = "p" credits = 1"#).starts_with("expected `,` after the argument's value"));
        assert!(error(r#""p""#).starts_with("expected an argument name"));
    }

    #[test]
    fn every_error_is_reported() {
        let all = error(r#"plan = "", credits = -1, foo = 1, scheme = 3"#);
        assert!(all.contains("`plan` cannot be empty"), "{all}");
        assert!(all.contains("credits cannot be negative"), "{all}");
        assert!(all.contains("unknown argument `foo`"), "{all}");
        assert!(all.contains("`scheme` takes a string literal"), "{all}");
        // An invalid plan is not also reported as missing.
        assert!(!all.contains("needs the plan"), "{all}");
    }

    /// The column where the first error starts (spans carry locations in tests, through
    /// proc-macro2's `span-locations`).
    fn error_column(args: &str) -> usize {
        let Err(error) = parse(args) else { panic!("expected an error for `{args}`") };
        error.span().start().column
    }

    #[test]
    fn errors_point_at_the_user_tokens() {
        let args = r#"plan = "p", credits = -1"#;
        assert_eq!(error_column(args), args.find("-1").expect("in args"));
        let args = r#"plan = "a", plan = "b""#;
        assert_eq!(error_column(args), args.rfind("plan").expect("in args"));
        let args = r#"plan = "a", cost = 1"#;
        assert_eq!(error_column(args), args.find("cost").expect("in args"));
        let args = r#"plan = "a", credits = |r| async move { 1 }"#;
        assert_eq!(error_column(args), args.find("async").expect("in args"));
        let args = r#"plan = env("A", "B")"#;
        assert_eq!(error_column(args), args.find("\"A\"").expect("in args"));
        let args = r#"plan = "", agent = "x""#;
        assert_eq!(error_column(args), args.find("\"\"").expect("in args"));
    }
}
