//! Code generation: the outer handler, with the route's `static` and its registration in
//! the route table inside it (no type or impl per handler: coherence checking stays
//! flat however many handlers a crate has).
//!
//! Every path goes through the runtime's hidden `__private` module, spelled absolutely
//! (`::nvm_runtime::__private::…`, or the `crate = …` path), and every identifier the
//! expansion introduces has `Span::mixed_site()` so the user's code cannot see it.

use proc_macro2::{Delimiter, Group, Ident, Literal, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote};
use syn::LitStr;
use syn::ext::IdentExt;

use crate::args::{Args, Credits, Value};
use crate::handler::Handler;

/// The full expansion of `#[paid(args)]` on `handler`.
pub(crate) fn expand(args: &Args, handler: &Handler) -> TokenStream {
    let krate = &args.krate;
    // Every path of the expansion goes through this alias of `__private`, declared once
    // at the top of the outer function: short paths keep the expansion small.
    let alias = Ident::new("__nvm", Span::mixed_site());
    let private = alias.to_token_stream();
    let ident = &handler.ident;
    let name = ident.unraw().to_string();
    let vis = &handler.vis;
    let route_name = Ident::new("ROUTE", Span::mixed_site());
    let paid = Ident::new("__nvm_paid", Span::mixed_site());
    let arg_names: Vec<Ident> = (0..handler.arg_types.len())
        .map(|i| format_ident!("__arg{}", i, span = Span::mixed_site()))
        .collect();
    let arg_types = &handler.arg_types;
    let outer_attrs = &handler.outer_attrs;
    let inner = &handler.inner;

    // Located at the user's return type (hygiene unchanged): "`X` is not a `Responder`"
    // points there.
    let run = located_at(
        quote! {
            #private::serve(
                #paid,
                &#route_name,
                |(#(#arg_names,)*): (#(#arg_types,)*)| #ident(#(#arg_names),*),
            )
        },
        handler.output_span,
    );

    let route = route_static(args, handler, &private, &name, &route_name);

    quote! {
        #(#outer_attrs)*
        // The user's function may have many arguments, and actix-web futures are not
        // `Send`: neither is the user's to fix. (Lint levels are inherited, so these
        // also apply to the nested user function.)
        #[allow(clippy::too_many_arguments, clippy::future_not_send)]
        #vis fn #ident(
            #paid: #krate::__private::Paid,
        ) -> impl ::core::future::Future<Output = #krate::__private::HttpResponse> {
            // One macro call holding the whole body, written back as is: a routing
            // attribute above reads (and copies) one call instead of every token of the
            // handler.
            #krate::__private::body! {
                use #krate::__private as #alias;
                #inner
                #route
                #private::inventory::submit! { #private::RouteEntry(&#route_name) }
                // Priced and verified first; the handler's own extractors run only then
                // (an unpaid request is refused before any byte of its body is read),
                // then the handler, then the settlement. One call, and no `async` block
                // of its own: nothing of the flow is type-checked again per handler.
                #run
            }
        }
    }
}

/// The checks of `speculative = true`: the handler runs before its payment is verified,
/// so it cannot take a `PaymentContext` (there is none yet), and its route cannot be
/// priced by its body (the handler's extractors take the body).
pub(crate) fn check_speculative(args: &Args, handler: &Handler) -> syn::Result<()> {
    if !args.speculative.as_ref().is_some_and(|flag| flag.value) {
        return Ok(());
    }
    let mut errors: Option<syn::Error> = None;
    let mut push = |error: syn::Error| match &mut errors {
        Some(first) => first.combine(error),
        None => errors = Some(error),
    };
    for ty in &handler.arg_types {
        let named = match ty {
            syn::Type::Path(path) => path.path.segments.last().is_some_and(|s| s.ident == "PaymentContext"),
            _ => false,
        };
        if named {
            push(syn::Error::new_spanned(
                ty,
                "a `speculative = true` handler runs while its payment is verified: it cannot take a `PaymentContext`; remove the argument, or `speculative = true`",
            ));
        }
    }
    if let Credits::Expr(expr) = &args.credits
        && prices_by_body(expr)
    {
        push(syn::Error::new_spanned(
            expr,
            "a `speculative = true` route cannot be priced by its body (its handler's extractors take the body while the payment is verified); remove `speculative = true`",
        ));
    }
    match errors {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Whether `expr` is `by_body(…)`, a path ending in it, or a method called on one.
fn prices_by_body(expr: &syn::Expr) -> bool {
    match expr {
        syn::Expr::Call(call) => match &*call.func {
            syn::Expr::Path(path) => path.path.segments.last().is_some_and(|s| s.ident == "by_body"),
            _ => false,
        },
        syn::Expr::MethodCall(call) => prices_by_body(&call.receiver),
        syn::Expr::Paren(inner) => prices_by_body(&inner.expr),
        _ => false,
    }
}

/// `tokens` shown at `location`: each token keeps its hygiene, only its place changes.
fn located_at(tokens: TokenStream, location: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|token| match token {
            TokenTree::Group(group) => {
                let mut new = Group::new(group.delimiter(), located_at(group.stream(), location));
                new.set_span(group.span().located_at(location));
                TokenTree::Group(new)
            }
            mut other => {
                other.set_span(other.span().located_at(location));
                other
            }
        })
        .collect()
}

/// `static ROUTE: Route`, with the helpers it needs.
fn route_static(
    args: &Args,
    handler: &Handler,
    private: &TokenStream,
    name: &str,
    route: &Ident,
) -> TokenStream {
    let mut helpers = TokenStream::new();
    let terms = terms(args, private, &mut helpers);
    let credits = credits(&args.credits, private, &mut helpers);
    let mounts = handler.mounts.iter().map(|mount| {
        let [methods, path, name] =
            [&mount.methods, &mount.path, &mount.name].map(|text| LitStr::new(text, Span::call_site()));
        quote!((#methods, #path, #name))
    });
    quote! {
        #helpers
        static #route: #private::Route =
            #private::Route::new(#name, ::core::module_path!(), &[#(#mounts),*], #credits, #terms);
    }
}

/// The route's `Terms` (plan, agent, envelope fields, settlement point, caching), with
/// the helper functions they need.
pub(crate) fn terms(args: &Args, private: &TokenStream, helpers: &mut TokenStream) -> TokenStream {
    let plan = value(&args.plan, "__plan", private, helpers);
    let fields = [&args.scheme, &args.network, &args.description, &args.mime_type, &args.resource];
    let terms = if args.agent.is_none() && fields.iter().all(|field| field.is_none()) {
        quote!(#private::Terms::new(#plan))
    } else {
        let agent = match &args.agent {
            Some(agent) => some(value(agent, "__agent", private, helpers), private),
            None => none(private),
        };
        let fields = fields.map(|lit| {
            lit.as_ref().map_or_else(|| none(private), |lit| some(lit.to_token_stream(), private))
        });
        quote!(#private::Terms::from_parts(#plan, #agent, [#(#fields),*]))
    };
    let terms = match &args.speculative {
        Some(flag) if flag.value => quote!(#terms.speculative()),
        _ => terms,
    };
    let terms = match args.settle.as_ref().map(LitStr::value).as_deref() {
        Some("after_body") => quote!(#terms.settle(#private::SettlePoint::AfterBody)),
        Some("before_body") => quote!(#terms.settle(#private::SettlePoint::BeforeBody)),
        Some("deferred") => quote!(#terms.settle(#private::SettlePoint::Deferred)),
        _ => terms,
    };
    match &args.cache_control {
        Some(value) => quote!(#terms.cache_control(#value)),
        None => terms,
    }
}

/// An `Id::…` for `plan` or `agent`; an expression gets a helper function `helper`.
fn value(value: &Value, helper: &str, private: &TokenStream, helpers: &mut TokenStream) -> TokenStream {
    match value {
        Value::Literal(lit) => quote!(#private::Id::literal(#lit)),
        Value::Env(var) => quote!(#private::Id::Env(#var)),
        Value::Expr(expr) => {
            let helper = Ident::new(helper, Span::mixed_site());
            let source = source_text(expr.to_token_stream());
            helpers.extend(quote! {
                fn #helper() -> ::std::string::String {
                    #private::plan_value(#expr)
                }
            });
            quote!(#private::Id::Expr(#source, #helper))
        }
    }
}

/// The `Credits::…` of the route; anything but a literal gets helper functions. The
/// expression's source text is not written anywhere: a seller's pricing logic is
/// compiled in, never kept as text in the binary.
fn credits(credits: &Credits, private: &TokenStream, helpers: &mut TokenStream) -> TokenStream {
    let (expr, fixed) = match credits {
        Credits::Fixed { value, span } => {
            let mut lit = Literal::u64_unsuffixed(*value);
            lit.set_span(*span);
            return quote!(#private::Credits::Fixed(#lit));
        }
        // A closure never prices every request the same: `fixed` is `None` without
        // writing the closure twice (which would report its errors twice).
        Credits::SyncClosure(closure) => {
            (quote!(#private::sync_credits(#closure)), quote!(::core::option::Option::None))
        }
        Credits::AsyncClosure(closure) => {
            (quote!(#private::async_credits(#closure)), quote!(::core::option::Option::None))
        }
        Credits::Expr(expr) => (expr.to_token_stream(), quote!(#private::fixed_credits(#expr))),
    };
    let resolve = Ident::new("__credits", Span::mixed_site());
    let fixed_fn = Ident::new("__credits_fixed", Span::mixed_site());
    let req = Ident::new("req", Span::mixed_site());
    helpers.extend(quote! {
        fn #resolve(#req: &#private::HttpRequest) -> #private::CreditsFuture<'_> {
            #private::resolve_credits(#expr, #req)
        }
        fn #fixed_fn() -> #private::Option<::core::primitive::u64> {
            #fixed
        }
    });
    quote! {
        #private::Credits::Source {
            resolve: #resolve,
            fixed: #fixed_fn,
        }
    }
}

/// `Some(tokens)`, through the runtime's re-export.
fn some(tokens: TokenStream, private: &TokenStream) -> TokenStream {
    quote!(#private::Some(#tokens))
}

/// `None`, through the runtime's re-export.
fn none(private: &TokenStream) -> TokenStream {
    quote!(#private::None)
}

/// Compact source text of a plan or agent expression (`config::plan_id()`), for the
/// error naming it when it yields an empty id; the same in every build: the compiler's
/// own rendering of tokens spaces them out (`config :: plan_id ()`). Never used for
/// credits (pricing logic is not kept as text).
pub(crate) fn source_text(tokens: TokenStream) -> String {
    let mut out = String::new();
    Printer::default().print(tokens, &mut out);
    out
}

/// What the previous token was, for spacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prev {
    /// Nothing yet, or an opening delimiter.
    Start,
    /// An identifier that may be followed directly by `(`, `[`, `!` or `::`.
    Name,
    /// A keyword (`move`, `as`, `return`…): a space follows it.
    Keyword,
    /// A literal or a closed group: a value.
    Value,
    /// An operator after which the next token is written tightly (`::`, `.`, a unary
    /// `&`, `-`, `*` or `!`, an opening closure `|` or generic `<`, `#`).
    Tight,
    /// A closing generic `>`: a value-like end that `::` and `(` attach to.
    CloseGeneric,
    /// Any other operator (`=`, `+`, `->`, `,`, closing `|`…): a space follows it.
    Operator,
}

/// Renders tokens with Rust's usual spacing, well enough for short expressions.
#[derive(Default)]
struct Printer {
    /// Inside `|…|` closure parameters.
    closure_params: bool,
    /// Depth of `<…>` generic arguments.
    generics: usize,
}

/// Operators of more than one character, longest first.
const OPERATORS: [&str; 25] = [
    "..=", "...", "<<=", ">>=", "::", "->", "=>", "==", "!=", "<=", ">=", "&&", "||", "+=", "-=", "*=", "/=",
    "%=", "^=", "&=", "|=", "<<", ">>", "..", "<-",
];

/// Keywords that a `(`, `[` or `::` does not attach to.
const KEYWORDS: [&str; 27] = [
    "as", "async", "await", "break", "const", "continue", "dyn", "else", "enum", "for", "if", "impl", "in",
    "let", "loop", "match", "mod", "move", "mut", "ref", "return", "static", "struct", "unsafe", "where",
    "while", "yield",
];

impl Printer {
    /// Prints a token stream (one delimiter level) into `out`.
    fn print(&mut self, tokens: TokenStream, out: &mut String) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut prev = Prev::Start;
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Ident(ident) => {
                    let text = ident.to_string();
                    if !matches!(prev, Prev::Start | Prev::Tight) {
                        out.push(' ');
                    }
                    out.push_str(&text);
                    prev = if KEYWORDS.contains(&text.as_str()) { Prev::Keyword } else { Prev::Name };
                    i += 1;
                }
                TokenTree::Literal(literal) => {
                    if !matches!(prev, Prev::Start | Prev::Tight) {
                        out.push(' ');
                    }
                    out.push_str(&literal.to_string());
                    prev = Prev::Value;
                    i += 1;
                }
                TokenTree::Group(group) => {
                    let delimiter = group.delimiter();
                    let attaches = matches!(delimiter, Delimiter::Parenthesis | Delimiter::Bracket)
                        && matches!(prev, Prev::Name | Prev::Value | Prev::CloseGeneric);
                    if !attaches && !matches!(prev, Prev::Start | Prev::Tight) {
                        out.push(' ');
                    }
                    let mut inner = String::new();
                    Printer::default().print(group.stream(), &mut inner);
                    match delimiter {
                        Delimiter::Parenthesis => {
                            out.push('(');
                            out.push_str(&inner);
                            out.push(')');
                        }
                        Delimiter::Bracket => {
                            out.push('[');
                            out.push_str(&inner);
                            out.push(']');
                        }
                        Delimiter::Brace if inner.is_empty() => out.push_str("{}"),
                        Delimiter::Brace => {
                            out.push_str("{ ");
                            out.push_str(&inner);
                            out.push_str(" }");
                        }
                        Delimiter::None => out.push_str(&inner),
                    }
                    prev = Prev::Value;
                    i += 1;
                }
                TokenTree::Punct(_) => {
                    // A run of joint punctuation (`::<`, `->`, `&&`) splits into operators.
                    let mut run = String::new();
                    while let Some(TokenTree::Punct(punct)) = tokens.get(i) {
                        run.push(punct.as_char());
                        i += 1;
                        if punct.spacing() == proc_macro2::Spacing::Alone {
                            break;
                        }
                    }
                    // A lifetime is `'` joint with its name: `&'static`.
                    let lifetime = run.ends_with('\'') && matches!(tokens.get(i), Some(TokenTree::Ident(_)));
                    if lifetime {
                        run.pop();
                    }
                    let mut rest = run.as_str();
                    while !rest.is_empty() {
                        let op = OPERATORS
                            .iter()
                            .find(|op| rest.starts_with(**op))
                            .copied()
                            .unwrap_or_else(|| &rest[..rest.chars().next().map_or(1, char::len_utf8)]);
                        rest = &rest[op.len()..];
                        prev = self.operator(op, prev, out);
                    }
                    if let (true, Some(TokenTree::Ident(name))) = (lifetime, tokens.get(i)) {
                        if !matches!(prev, Prev::Start | Prev::Tight) {
                            out.push(' ');
                        }
                        out.push('\'');
                        out.push_str(&name.to_string());
                        prev = Prev::Keyword;
                        i += 1;
                    }
                }
            }
        }
    }

    /// Prints an operator and says how the next token attaches to it.
    fn operator(&mut self, op: &str, prev: Prev, out: &mut String) -> Prev {
        let after_value = matches!(prev, Prev::Name | Prev::Value | Prev::CloseGeneric);
        let unary_position = matches!(prev, Prev::Start | Prev::Tight | Prev::Keyword | Prev::Operator);
        let space_before = |out: &mut String| {
            if !matches!(prev, Prev::Start | Prev::Tight) {
                out.push(' ');
            }
        };
        match op {
            "," | ";" => {
                out.push_str(op);
                Prev::Operator
            }
            "." | ".." | "..=" | "::" if after_value => {
                out.push_str(op);
                Prev::Tight
            }
            "." | ".." | "..=" | "::" => {
                space_before(out);
                out.push_str(op);
                Prev::Tight
            }
            "?" | ":" => {
                out.push_str(op);
                if op == "?" { Prev::Value } else { Prev::Operator }
            }
            "!" if prev == Prev::Name => {
                // A macro call: `env!(…)`.
                out.push('!');
                Prev::Tight
            }
            "&" | "&&" | "*" | "-" | "!" if unary_position => {
                space_before(out);
                out.push_str(op);
                Prev::Tight
            }
            "|" if self.closure_params => {
                self.closure_params = false;
                out.push('|');
                Prev::Operator
            }
            "|" if unary_position => {
                self.closure_params = true;
                space_before(out);
                out.push('|');
                Prev::Tight
            }
            "<" if matches!(prev, Prev::Start | Prev::Tight)
                || (prev == Prev::Name && after_type_name(out)) =>
            {
                self.generics += 1;
                out.push('<');
                Prev::Tight
            }
            ">" | ">>" if self.generics >= op.len() => {
                self.generics -= op.len();
                out.push_str(op);
                Prev::CloseGeneric
            }
            "#" => {
                space_before(out);
                out.push('#');
                Prev::Tight
            }
            _ => {
                space_before(out);
                out.push_str(op);
                Prev::Operator
            }
        }
    }
}

/// Whether a `<` after the name just printed opens generic arguments: it does after a
/// type name (`Option<u64>`), which by convention starts with an upper-case letter; after
/// a lower-case name it is a comparison (`a < b`).
fn after_type_name(out: &str) -> bool {
    let name = out.rsplit(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or_default();
    name.chars().next().is_some_and(char::is_uppercase)
}

#[cfg(test)]
mod tests {
    use super::source_text;

    fn render(source: &str) -> String {
        source_text(source.parse().expect("tokens"))
    }

    #[test]
    fn source_text_is_compact() {
        let same = [
            "config::plan_id()",
            "::std::env::var(\"X\").unwrap_or_default()",
            "PRICE",
            "pricing::by_length",
            "|req| req.path().len() as u64",
            "|req: &HttpRequest| -> u64 { 2 }",
            "async |req: &HttpRequest| { price(req).await }",
            "move |req: &HttpRequest| req.query_string().len() as u64 * 2",
            "|_| 3",
            "|req: &actix_web::HttpRequest| if req.method() == Method::POST { 2 } else { 1 }",
            "Option::<u64>::None.unwrap_or(1)",
            "env!(\"PLAN\")",
            "a && !b",
            "-x + 1",
            "&CONFIG.plan",
            "x.as_ref().map(|s| s.len()).unwrap_or(0) as u64",
            "std::cmp::max(1, 2)",
            "f::<Vec<u8>>()",
            "vec![1, 2][0]",
            "|req| { let n = req.path().len(); n as u64 }",
            "|r: &'static str| r",
            "0..10",
            "x?",
            "a | b",
            "1 << 4",
            "a < b",
            "Box::<str>::from(\"x\")",
            "<T as Default>::default()",
            "{}",
        ];
        for source in same {
            assert_eq!(render(source), source);
        }
        assert_eq!(render("config :: plan_id ( )"), "config::plan_id()");
    }
}
