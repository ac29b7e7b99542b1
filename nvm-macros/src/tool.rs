//! `#[paid]` above rmcp's `#[tool]`: a paid MCP tool method.
//!
//! The method is kept as written under a hidden name (`__nvm_tool_<name>`), and the
//! method of the tool's name becomes the one rmcp registers: it takes one hidden
//! argument first (the call's payment, read from rmcp's call context before the tool's
//! own arguments are parsed), then the tool's arguments under generated names, and
//! returns the future of one runtime call that verifies, runs the hidden method and
//! settles. The tool's price sits in a `static` inside a hidden associated function,
//! which the `#[tool(meta = …)]` added for `tools/list` reads too.

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{ToTokens, format_ident, quote};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, Meta, ReturnType, Type};

use crate::args::{Args, Credits};
use crate::expand::terms;
use crate::handler::Function;

/// Whether `attr` is rmcp's `#[tool]` (`#[tool(…)]`, `#[rmcp::tool(…)]`).
pub(crate) fn is_tool(attr: &Attribute) -> bool {
    attr.path().segments.last().is_some_and(|segment| segment.ident == "tool")
}

/// The expansion of `#[paid(args)]` on the tool method `function`.
pub(crate) fn expand(args: &Args, function: Function) -> syn::Result<TokenStream> {
    check(args, &function)?;
    let krate = &args.krate;
    let private = quote!(#krate::__private::mcp);
    let ident = &function.sig.ident;
    let name = ident.unraw().to_string();
    // The name rmcp lists the tool under: its `#[tool(name = "…")]`, else the method's.
    let tool_name =
        function.attrs.iter().find(|attr| is_tool(attr)).and_then(named).unwrap_or_else(|| name.clone());
    let hidden = format_ident!("__nvm_tool_{}", name);
    let priced = format_ident!("__nvm_paid_{}", name);
    let call = Ident::new("__nvm_call", Span::mixed_site());

    // The arguments after `&self`, under generated names.
    let typed: Vec<&Type> = function
        .sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(typed) => Some(&*typed.ty),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let names: Vec<Ident> =
        (0..typed.len()).map(|i| format_ident!("__arg{}", i, span = Span::mixed_site())).collect();
    let receiver = function.sig.receiver().map(|receiver| receiver.to_token_stream());
    let receiver_arg = receiver.as_ref().map(|r| quote!(#r,));
    let callee = if receiver.is_some() { quote!(self.#hidden) } else { quote!(Self::#hidden) };

    // The outer method: the attributes (docs, `#[tool]` with the price for `tools/list`
    // and the output schema of the user's return type), the tool's name and visibility.
    let mut outer_attrs = Vec::new();
    for attr in &function.attrs {
        if is_tool(attr) {
            outer_attrs.push(with_price(attr, &priced, &function.sig.output)?);
        } else {
            outer_attrs.push(attr.clone());
        }
    }
    let vis = &function.vis;
    let asyncness = &function.sig.asyncness;
    let fn_token = &function.sig.fn_token;
    let generics = &function.sig.generics;
    let where_clause = &function.sig.generics.where_clause;

    let mut inner = function.clone();
    inner.sig.ident = hidden.clone();
    inner.vis = syn::Visibility::Inherited;
    inner.attrs.retain(|attr| !is_tool(attr) && !attr.path().is_ident("doc"));

    let mut helpers = TokenStream::new();
    let terms = terms(args, &quote!(#krate::__private), &mut helpers);
    let tool = credits(args, &private, &tool_name, terms, &mut helpers);
    let route = Ident::new("TOOL", Span::mixed_site());

    Ok(quote! {
        #(#outer_attrs)*
        #[allow(clippy::too_many_arguments)]
        #vis #asyncness #fn_token #ident #generics (
            #receiver_arg
            #call: #private::PaidCall,
            #(#names: #typed),*
        ) -> #private::ToolAnswer #where_clause {
            #private::serve(#call, Self::#priced(), #callee(#(#names),*)).await
        }

        #[doc(hidden)]
        fn #priced() -> &'static #private::PaidTool {
            use #krate::__private as __nvm;
            #helpers
            static #route: #private::PaidTool = #tool;
            __nvm::inventory::submit! { #private::ToolEntry(&#route) }
            &#route
        }

        #[doc(hidden)]
        #[allow(clippy::too_many_arguments)]
        #inner
    })
}

/// `#[tool(…)]` with `meta = Self::__nvm_paid_x().meta()` added (the price in
/// `tools/list`), and `output_schema` of the user's `Json<T>` return type (the outer
/// method returns the runtime's answer type, which rmcp cannot read it from).
fn with_price(attr: &Attribute, priced: &Ident, output: &ReturnType) -> syn::Result<Attribute> {
    let existing = match &attr.meta {
        Meta::Path(_) => TokenStream::new(),
        Meta::List(list) => list.tokens.clone(),
        Meta::NameValue(value) => {
            return Err(syn::Error::new(value.span(), "write `#[tool]` or `#[tool(…)]` below `#[paid]`"));
        }
    };
    let keys = keys(&existing);
    if keys.iter().any(|key| key == "meta") {
        return Err(syn::Error::new_spanned(
            attr,
            "#[paid] writes the tool's `meta` (its price in tools/list): remove `meta = …` from #[tool], or price the tool with a PaidTools table",
        ));
    }
    let mut added = quote!(meta = Self::#priced().meta());
    if !keys.iter().any(|key| key == "output_schema")
        && let Some(inner) = json_output(output)
    {
        added.extend(quote!(, output_schema = rmcp::handler::server::tool::schema_for_output::<#inner>()));
    }
    let path = attr.path();
    let tokens = if existing.is_empty() { added } else { quote!(#existing, #added) };
    Ok(syn::parse_quote_spanned!(attr.span()=> #[#path(#tokens)]))
}

/// The `name = "…"` of `#[tool(…)]`, if it has one.
fn named(attr: &Attribute) -> Option<String> {
    let Meta::List(list) = &attr.meta else { return None };
    let mut tokens = list.tokens.clone().into_iter();
    while let Some(token) = tokens.next() {
        if let proc_macro2::TokenTree::Ident(ident) = &token
            && ident == "name"
            && matches!(tokens.next(), Some(proc_macro2::TokenTree::Punct(p)) if p.as_char() == '=')
            && let Some(proc_macro2::TokenTree::Literal(literal)) = tokens.next()
            && let Ok(syn::Lit::Str(name)) = syn::parse_str::<syn::Lit>(&literal.to_string())
        {
            return Some(name.value());
        }
    }
    None
}

/// The `key`s of `key = value` pairs at the top level of `#[tool(…)]`.
fn keys(tokens: &TokenStream) -> Vec<String> {
    let mut keys = Vec::new();
    let mut start = true;
    for token in tokens.clone() {
        match token {
            proc_macro2::TokenTree::Ident(ident) if start => {
                keys.push(ident.to_string());
                start = false;
            }
            proc_macro2::TokenTree::Punct(punct) if punct.as_char() == ',' => start = true,
            _ => start = false,
        }
    }
    keys
}

/// `T` of a `Json<T>` or `Result<Json<T>, E>` return type (what rmcp reads an output
/// schema from).
fn json_output(output: &ReturnType) -> Option<Type> {
    let ReturnType::Type(_, ty) = output else { return None };
    let json_of = |ty: &Type| -> Option<Type> {
        let Type::Path(path) = ty else { return None };
        let last = path.path.segments.last()?;
        let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return None };
        match (last.ident == "Json", args.args.first()?) {
            (true, syn::GenericArgument::Type(inner)) => Some(inner.clone()),
            _ => None,
        }
    };
    json_of(ty).or_else(|| {
        let Type::Path(path) = &**ty else { return None };
        let last = path.path.segments.last()?;
        let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return None };
        match (last.ident == "Result", args.args.first()?) {
            (true, syn::GenericArgument::Type(ok)) => json_of(ok),
            _ => None,
        }
    })
}

/// The `PaidTool` of the tool: its price and terms.
fn credits(
    args: &Args,
    private: &TokenStream,
    name: &str,
    terms: TokenStream,
    helpers: &mut TokenStream,
) -> TokenStream {
    let (expr, fixed) = match &args.credits {
        Credits::Fixed { value, span } => {
            let mut lit = Literal::u64_unsuffixed(*value);
            lit.set_span(*span);
            return quote!(#private::PaidTool::fixed(#name, #lit, #terms));
        }
        Credits::SyncClosure(closure) => {
            (quote!(#private::by_arguments(#closure)), quote!(::core::option::Option::None))
        }
        // Refused by `check` before any expansion: never written.
        Credits::AsyncClosure(_) => (quote!(0u64), quote!(::core::option::Option::None)),
        Credits::Expr(expr) => (expr.to_token_stream(), quote!(__nvm::fixed_credits(#expr))),
    };
    let resolve = Ident::new("__credits", Span::mixed_site());
    let fixed_fn = Ident::new("__credits_fixed", Span::mixed_site());
    let arguments = Ident::new("arguments", Span::mixed_site());
    helpers.extend(quote! {
        fn #resolve(#arguments: &#private::JsonObject) -> ::core::primitive::u64 {
            #private::resolve_credits(#expr, #arguments)
        }
        fn #fixed_fn() -> ::core::option::Option<::core::primitive::u64> {
            #fixed
        }
    });
    quote!(#private::PaidTool::priced(#name, #resolve, #fixed_fn, #terms))
}

/// The checks that apply to a tool and not to an HTTP handler.
fn check(args: &Args, function: &Function) -> syn::Result<()> {
    let mut errors: Option<syn::Error> = None;
    let mut push = |error: syn::Error| match &mut errors {
        Some(first) => first.combine(error),
        None => errors = Some(error),
    };
    if function.sig.asyncness.is_none() {
        push(syn::Error::new(
            function.sig.fn_token.span,
            "a #[paid] MCP tool must be `async fn`: add `async`",
        ));
    }
    if let Some(settle) = &args.settle {
        push(syn::Error::new(
            settle.span(),
            "`settle` applies to HTTP routes: an MCP tool's result is settled before it is sent; remove `settle = …`",
        ));
    }
    if let Some(flag) = &args.speculative {
        push(syn::Error::new(
            flag.span(),
            "`speculative` applies to HTTP routes: an MCP tool runs once its payment is verified; remove it",
        ));
    }
    if let Some(cache) = &args.cache_control {
        push(syn::Error::new(
            cache.span(),
            "`cache_control` applies to HTTP routes; remove it from an MCP tool",
        ));
    }
    if let Some(mime) = &args.mime_type {
        push(syn::Error::new(mime.span(), "`mime_type` applies to HTTP routes; remove it from an MCP tool"));
    }
    if let Credits::AsyncClosure(closure) = &args.credits {
        push(syn::Error::new(
            closure.span(),
            "an MCP tool's credits are a `u64` or a function of its arguments, `|args: &JsonObject| -> u64`: price asynchronous work inside the tool with `payment.charge(n)`",
        ));
    }
    if let Some(paid) =
        function.attrs.iter().find(|attr| attr.path().segments.last().is_some_and(|s| s.ident == "paid"))
    {
        push(syn::Error::new_spanned(
            paid,
            "#[paid] is applied twice: remove one of them (a tool has one price)",
        ));
    }
    match errors {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
