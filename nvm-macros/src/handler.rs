//! The function under `#[paid]`: its shape is checked, its attributes sorted between the
//! outer (generated) function and the inner one (the user's, kept verbatim), and the
//! route of an actix-web routing attribute below `#[paid]` is read.

use proc_macro2::{Delimiter, Group, Span, TokenStream};
use quote::{ToTokens, TokenStreamExt};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, FnArg, Ident, Lit, Signature, Token, Type, Visibility};

use crate::args::Errors;
use crate::context::Context;

/// actix-web extracts tuples of up to 16 extractors; `#[paid]` extracts the handler's
/// arguments as one tuple, after the payment is verified.
const MAX_ARGS: usize = 16;

/// The actix-web attributes that register a handler for one HTTP method.
const METHODS: [&str; 9] = ["get", "post", "put", "delete", "patch", "head", "options", "trace", "connect"];

/// A checked `#[paid]` handler.
pub(crate) struct Handler {
    /// The function's name.
    pub(crate) ident: Ident,
    /// The function's visibility, given to the outer function.
    pub(crate) vis: Visibility,
    /// Attributes for the outer function: docs, routing attributes, `#[deprecated]` and
    /// `#[allow(…)]`, in their original order.
    pub(crate) outer_attrs: Vec<Attribute>,
    /// The user's function, private, without the outer attributes (an `#[allow(…)]` is kept
    /// on both).
    pub(crate) inner: Function,
    /// The type of each argument.
    pub(crate) arg_types: Vec<Type>,
    /// Where an error about the handler's output belongs: its return type, or its name.
    pub(crate) output_span: Span,
    /// The resources the routing attributes below `#[paid]` register, in order.
    pub(crate) mounts: Vec<Mount>,
}

/// A function whose body is kept as tokens, unparsed: the body is the user's, written
/// back verbatim, and only the compiler needs to read it (parsing it here would cost
/// compile time for every handler, more for long ones).
#[derive(Clone)]
pub(crate) struct Function {
    /// Its outer attributes (inner ones stay in the body).
    pub(crate) attrs: Vec<Attribute>,
    /// Its visibility.
    pub(crate) vis: Visibility,
    /// Its signature.
    pub(crate) sig: Signature,
    /// Its body, `{ … }`.
    pub(crate) body: Group,
}

impl Parse for Function {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        let body: Group = input.parse()?;
        if body.delimiter() != Delimiter::Brace {
            return Err(syn::Error::new(body.span(), "expected the function's body, `{ … }`"));
        }
        Ok(Function { attrs, vis, sig, body })
    }
}

impl ToTokens for Function {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.append_all(&self.attrs);
        self.vis.to_tokens(tokens);
        self.sig.to_tokens(tokens);
        self.body.to_tokens(tokens);
    }
}

/// One routing attribute below `#[paid]`: one resource actix-web registers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The method(s), upper case, comma-separated (`"GET,POST"`); empty when the
    /// attribute names none (actix-web reports that).
    pub(crate) methods: String,
    /// The path, as written.
    pub(crate) path: String,
    /// The resource's name: the attribute's `name = "…"`, else the function's name as
    /// actix-web spells it (`r#type` for a raw identifier).
    pub(crate) name: String,
}

/// Where an attribute of the handler goes.
enum Place {
    /// On the outer function only.
    Outer,
    /// On both functions.
    Both,
    /// On the user's (inner) function only.
    Inner,
}

impl Handler {
    /// Parses the item under `#[paid]` and checks it can be a paid actix-web handler.
    /// `context` tells where the function stands (asked only when it has a routing
    /// attribute): in an `impl` or `trait` block, a routing attribute is an error of its
    /// own.
    pub(crate) fn parse(item: TokenStream, context: fn() -> Context) -> syn::Result<Handler> {
        let function = parse_fn(item)?;
        let mut errors = Errors::default();
        check_signature(&function, &mut errors);
        check_unrouted(&function, context, &mut errors);

        let mut outer_attrs = Vec::new();
        let mut inner_attrs = Vec::new();
        for attr in &function.attrs {
            if last_segment(attr).is_some_and(|name| name == "paid") {
                errors.push(syn::Error::new_spanned(
                    attr,
                    "#[paid] is applied twice: remove one of them (a handler has one price)",
                ));
                continue;
            }
            match place(attr) {
                Place::Outer => outer_attrs.push(attr.clone()),
                Place::Both => {
                    outer_attrs.push(attr.clone());
                    inner_attrs.push(attr.clone());
                }
                Place::Inner => inner_attrs.push(attr.clone()),
            }
        }
        let mounts = mounts(&function.attrs, &function.sig.ident);

        let arg_types = function
            .sig
            .inputs
            .iter()
            .filter_map(|arg| match arg {
                FnArg::Typed(typed) => Some((*typed.ty).clone()),
                FnArg::Receiver(_) => None,
            })
            .collect();
        let output_span = match &function.sig.output {
            syn::ReturnType::Type(_, ty) => ty.span(),
            syn::ReturnType::Default => function.sig.ident.span(),
        };
        let mut inner = function.clone();
        inner.attrs = inner_attrs;
        inner.vis = Visibility::Inherited;

        errors.finish(|| Handler {
            ident: function.sig.ident,
            vis: function.vis,
            outer_attrs,
            inner,
            arg_types,
            output_span,
            mounts,
        })
    }
}

/// The item as a function, or an error saying what `#[paid]` applies to.
fn parse_fn(item: TokenStream) -> syn::Result<Function> {
    match syn::parse2::<Function>(item.clone()) {
        Ok(function) => Ok(function),
        Err(error) => match syn::parse2::<syn::Item>(item) {
            Ok(other) => Err(syn::Error::new(
                item_keyword_span(&other).unwrap_or_else(Span::call_site),
                "#[paid] applies to an actix-web handler: an `async fn` taking extractors and \
                 returning a `Responder`",
            )),
            Err(_) => Err(error),
        },
    }
}

/// The span of the keyword of an item that is not a function, if it has one.
fn item_keyword_span(item: &syn::Item) -> Option<Span> {
    Some(match item {
        syn::Item::Struct(i) => i.struct_token.span,
        syn::Item::Enum(i) => i.enum_token.span,
        syn::Item::Impl(i) => i.impl_token.span,
        syn::Item::Mod(i) => i.mod_token.span,
        syn::Item::Trait(i) => i.trait_token.span,
        syn::Item::Const(i) => i.const_token.span,
        syn::Item::Static(i) => i.static_token.span,
        syn::Item::Type(i) => i.type_token.span,
        syn::Item::Use(i) => i.use_token.span,
        _ => return None,
    })
}

/// Every check on the signature, each error naming the fix and spanned at the culprit.
fn check_signature(function: &Function, errors: &mut Errors) {
    let sig = &function.sig;
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new(constness.span, "#[paid] handlers cannot be `const`: remove `const`"));
    }
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(sig.fn_token.span, "#[paid] handlers must be `async fn`: add `async`"));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new(
            unsafety.span,
            "#[paid] handlers cannot be `unsafe`: remove `unsafe` (actix-web calls handlers as safe functions)",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(abi, "#[paid] handlers cannot be `extern`: remove the ABI"));
    }
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "#[paid] handlers cannot be generic: actix-web registers one concrete function; \
             remove the generic parameters and name the types",
        ));
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(
            where_clause,
            "#[paid] handlers cannot be generic: remove the `where` clause",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(variadic, "#[paid] handlers cannot be variadic: remove `...`"));
    }
    for (index, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(receiver) => errors.push(syn::Error::new_spanned(
                receiver,
                "#[paid] handlers cannot take `self`; make it a free function",
            )),
            FnArg::Typed(typed) => {
                if let Type::ImplTrait(ty) = &*typed.ty {
                    errors.push(syn::Error::new_spanned(
                        ty,
                        "#[paid] handlers cannot take `impl Trait` arguments: name the extractor's type",
                    ));
                }
                for attr in &typed.attrs {
                    if attr.path().is_ident("cfg") || attr.path().is_ident("cfg_attr") {
                        errors.push(syn::Error::new_spanned(
                            attr,
                            "#[paid] handlers cannot have `#[cfg]` on an argument: put `#[cfg]` on \
                             whole handlers instead",
                        ));
                    }
                }
            }
        }
        if index == MAX_ARGS {
            errors.push(syn::Error::new_spanned(
                arg,
                format!(
                    "#[paid] handlers take at most {MAX_ARGS} arguments (actix-web extracts at \
                     most 16): group some extractors into a tuple, e.g. \
                     `(a, b): (web::Query<A>, web::Json<B>)`"
                ),
            ));
        }
    }
}

/// The last segment of an attribute's path (`post` for `#[actix_web::post(…)]`).
fn last_segment(attr: &Attribute) -> Option<String> {
    attr.path().segments.last().map(|segment| segment.ident.to_string())
}

/// An associated function cannot carry an actix-web routing attribute: the attribute
/// declares a type named after the function next to it, which an `impl` or `trait` block
/// cannot hold. One error, at the routing attribute, with both ways out.
fn check_unrouted(function: &Function, context: fn() -> Context, errors: &mut Errors) {
    let Some(routing) = function.attrs.iter().find(|attr| is_routing(attr)) else {
        return;
    };
    let context = context();
    if !context.is_associated() {
        return;
    }
    let name = &function.sig.ident;
    let attribute = last_segment(routing).unwrap_or_default();
    let method = if attribute == "route" || attribute == "routes" { "get" } else { attribute.as_str() };
    let block = context.block();
    errors.push(syn::Error::new_spanned(
        routing,
        format!(
            "#[paid] with `#[{attribute}]` inside {block}: actix-web's routing attributes need a \
             free function. Move `async fn {name}` out of the block, or remove `#[{attribute}]` and \
             register it by hand: `.route(\"/path\", web::{method}().to(Type::{name}))`"
        ),
    ));
}

/// Is this an actix-web routing attribute (`#[get]`, `#[route]`, `#[routes]`…)?
pub(crate) fn is_routing(attr: &Attribute) -> bool {
    last_segment(attr)
        .is_some_and(|name| METHODS.contains(&name.as_str()) || name == "route" || name == "routes")
}

/// Where an attribute of the handler goes.
fn place(attr: &Attribute) -> Place {
    let path = attr.path();
    if path.is_ident("doc") || path.is_ident("deprecated") || is_routing(attr) {
        // Routing attributes must see the outer function (the one actix-web calls); docs
        // and deprecation describe what users call. A deprecated inner function would
        // warn in the generated call.
        Place::Outer
    } else if path.is_ident("allow") {
        // A lint allowed by the user may fire on either function (`dead_code`,
        // `non_snake_case` on the name).
        Place::Both
    } else {
        Place::Inner
    }
}

/// Reads the resources of the routing attributes (`#[get]`…, `#[route]`, each under
/// `#[routes]`). Attributes that do not parse are left to actix-web to report; they just
/// give no information.
fn mounts(attrs: &[Attribute], ident: &Ident) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for attr in attrs {
        let Some(name) = last_segment(attr) else { continue };
        let is_method = METHODS.contains(&name.as_str());
        if !is_method && name != "route" {
            continue;
        }
        let Ok(args) = attr.parse_args_with(Punctuated::<Expr, Token![,]>::parse_terminated) else {
            continue;
        };
        let Some(path) = args.iter().find_map(string_literal) else { continue };
        let option = |key: &'static str| {
            args.iter().filter_map(move |arg| match arg {
                Expr::Assign(assign) if matches!(&*assign.left, Expr::Path(p) if p.path.is_ident(key)) => {
                    string_literal(&assign.right)
                }
                _ => None,
            })
        };
        let mut methods: Vec<String> = Vec::new();
        let named = if is_method { vec![name.to_ascii_uppercase()] } else { option("method").collect() };
        for method in named {
            let method = method.to_ascii_uppercase();
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        let resource = option("name").next().unwrap_or_else(|| ident.to_string());
        mounts.push(Mount { methods: methods.join(","), path, name: resource });
    }
    mounts
}

/// The value of a string literal expression.
fn string_literal(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => Some(lit.value()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::ToTokens;

    fn handler(item: &str) -> syn::Result<Handler> {
        Handler::parse(syn::parse_str(item).expect("tokens"), || Context::Free)
    }

    fn error(item: &str) -> String {
        match handler(item) {
            Ok(_) => panic!("expected an error for `{item}`"),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"),
        }
    }

    fn error_column(item: &str) -> usize {
        let Err(error) = handler(item) else { panic!("expected an error for `{item}`") };
        error.span().start().column
    }

    fn attrs(attrs: &[Attribute]) -> Vec<String> {
        attrs.iter().map(|a| a.to_token_stream().to_string()).collect()
    }

    #[test]
    fn attributes_are_sorted() {
        let h = handler(
            r#"
            /// Docs.
            #[actix_web::post("/ask")]
            #[allow(clippy::too_many_lines)]
            #[tracing::instrument(skip_all)]
            #[deprecated = "use ask2"]
            #[must_use]
            pub async fn ask() -> impl Responder { "" }
            "#,
        )
        .expect("valid");
        assert_eq!(
            attrs(&h.outer_attrs),
            [
                "# [doc = \" Docs.\"]",
                "# [actix_web :: post (\"/ask\")]",
                "# [allow (clippy :: too_many_lines)]",
                "# [deprecated = \"use ask2\"]"
            ]
        );
        assert_eq!(
            attrs(&h.inner.attrs),
            ["# [allow (clippy :: too_many_lines)]", "# [tracing :: instrument (skip_all)]", "# [must_use]"]
        );
        assert!(matches!(h.inner.vis, Visibility::Inherited));
        assert!(matches!(h.vis, Visibility::Public(_)));
        assert_eq!(h.mounts, [mount("POST", "/ask", "ask")]);
    }

    fn mount(methods: &str, path: &str, name: &str) -> Mount {
        Mount { methods: methods.into(), path: path.into(), name: name.into() }
    }

    #[test]
    fn routes_are_read() {
        let mounts = |attrs: &str| handler(&format!("{attrs} async fn f() {{}}")).expect("valid").mounts;
        assert_eq!(mounts(""), []);
        assert_eq!(mounts(r#"#[get("/a")]"#), [mount("GET", "/a", "f")]);
        assert_eq!(
            mounts(r#"#[web::delete("/a/{id}", name = "del", wrap = "Logger::default()")]"#),
            [mount("DELETE", "/a/{id}", "del")]
        );
        assert_eq!(
            mounts(r#"#[route("/p", method = "GET", method = "post", method = "GET")]"#),
            [mount("GET,POST", "/p", "f")]
        );
        assert_eq!(
            mounts(r#"#[routes] #[get("/p")] #[post("/p", name = "p2")] #[put("/q")]"#),
            [mount("GET", "/p", "f"), mount("POST", "/p", "p2"), mount("PUT", "/q", "f")]
        );
        for method in METHODS {
            assert_eq!(mounts(&format!(r#"#[{method}("/x")]"#))[0].methods, method.to_ascii_uppercase());
        }
        // actix-web names a resource after the identifier as written.
        let raw = handler(r#"#[get("/t")] async fn r#type() {}"#).expect("valid").mounts;
        assert_eq!(raw, [mount("GET", "/t", "r#type")]);
        // Malformed routing attributes are actix-web's to report.
        assert_eq!(mounts("#[get]"), []);
        assert_eq!(mounts("#[get(name = \"x\")]"), []);
    }

    #[test]
    fn shape_errors() {
        assert_eq!(error("fn f() {}"), "#[paid] handlers must be `async fn`: add `async`");
        assert_eq!(error_column("pub fn f() {}"), 4);
        assert_eq!(
            error("async fn f<T>(t: T) {}"),
            "#[paid] handlers cannot be generic: actix-web registers one concrete function; remove the generic parameters and name the types"
        );
        assert_eq!(error_column("async fn f<T>(t: T) {}"), 10);
        assert_eq!(
            error("async fn f() where String: Clone {}"),
            "#[paid] handlers cannot be generic: remove the `where` clause"
        );
        assert_eq!(
            error("async fn f(&self) {}"),
            "#[paid] handlers cannot take `self`; make it a free function"
        );
        assert_eq!(error_column("async fn f(&self) {}"), 11);
        assert!(error("async fn f(self: Box<Self>) {}").contains("cannot take `self`"));
        assert_eq!(error("const async fn f() {}"), "#[paid] handlers cannot be `const`: remove `const`");
        assert!(
            error("async unsafe fn f() {}")
                .starts_with("#[paid] handlers cannot be `unsafe`: remove `unsafe`")
        );
        assert!(error(r#"async extern "C" fn f() {}"#).starts_with("#[paid] handlers cannot be `extern`"));
        assert!(
            error("async fn f(x: impl FromRequest) {}")
                .starts_with("#[paid] handlers cannot take `impl Trait` arguments")
        );
        assert!(
            error("async fn f(#[cfg(test)] x: A) {}")
                .starts_with("#[paid] handlers cannot have `#[cfg]` on an argument")
        );
        assert_eq!(
            error(r#"#[paid(plan = "p")] async fn f() {}"#),
            "#[paid] is applied twice: remove one of them (a handler has one price)"
        );
        assert!(
            error(r#"#[nvm_runtime::paid(plan = "p")] async fn f() {}"#)
                .starts_with("#[paid] is applied twice")
        );
        assert!(error("struct S;").starts_with("#[paid] applies to an actix-web handler"));
        assert_eq!(error_column("pub struct S;"), 4);
        // All errors at once.
        let all = error("const fn f<T>(&self) {}");
        assert_eq!(all.lines().count(), 4, "{all}");
    }

    #[test]
    fn variadic_is_an_error() {
        // `...` only parses in foreign functions for rustc, but syn accepts it anywhere.
        assert!(error("async fn f(x: u8, ...) {}").contains("cannot be variadic"));
    }

    #[test]
    fn at_most_sixteen_arguments() {
        let args = |n: usize| (0..n).map(|i| format!("a{i}: A{i}")).collect::<Vec<_>>().join(", ");
        assert!(handler(&format!("async fn f({}) {{}}", args(16))).is_ok());
        let seventeen = format!("async fn f({}) {{}}", args(17));
        assert!(
            error(&seventeen)
                .starts_with("#[paid] handlers take at most 16 arguments (actix-web extracts at most 16)")
        );
        assert_eq!(error_column(&seventeen), seventeen.find("a16").expect("17th"));
        assert_eq!(error(&format!("async fn f({}) {{}}", args(18))).lines().count(), 1);
    }
}
