//! The `#[paid]` attribute of `nvm-runtime`. Depend on `nvm-runtime` and use it as
//! `nvm_runtime::paid`: the code it generates calls into the runtime.
//!
//! This file is the entry point only: the `args` module parses the attribute's
//! arguments, `handler` checks the function, `context` tells whether it stands in an
//! `impl` block, and `expand` writes the code.

mod args;
mod context;
mod expand;
mod handler;
#[cfg(test)]
mod tests;
mod tool;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;

/// Charges for an actix-web handler with a Nevermined x402 payment.
///
/// ```text
/// #[paid(plan = env("NVM_PLAN_ID"), credits = 1)]
/// #[post("/ask")]
/// async fn ask(q: web::Json<Query>, payment: PaymentContext) -> impl Responder { … }
/// ```
///
/// A request without a payment token gets a 402 with the `payment-required` envelope and
/// the handler does not run. A request with a token is verified with the facilitator
/// before the handler runs; when the handler answers with a success, the credits are
/// settled and the receipt goes out in the `payment-response` header. The handler may
/// take a `PaymentContext` to read what was verified or to settle a different amount.
///
/// # Arguments
///
/// Comma-separated `key = value` pairs, in any order:
///
/// - `plan` (required): the plan the caller pays with.
///   - a string literal: `plan = "1234…"` (not empty);
///   - `env("VAR")`: the id is read from the environment variable `VAR` once, at run
///     time, and checked at start-up (`plan = env("NVM_PLAN_ID")`); `env` must be written
///     bare, with one string literal;
///   - any other expression yielding `&str` or `String`, evaluated for each request
///     (`plan = config::plan_id()`, `plan = PLAN`).
/// - `agent`: the agent id sent as `extra.agentId`, in the same three forms as `plan`.
/// - `credits` (default `1`): what a request costs.
///   - an integer literal, checked at compile time to be a `u64` (`credits = 5`);
///     `credits = 0` makes the route free: no token needed, nothing verified or settled;
///   - a closure of the request returning `u64`: `|req: &HttpRequest| -> u64 { … }`, or
///     an async closure `async |req: &HttpRequest| -> u64 { … }` (a closure returning an
///     `async` block is refused: write the async closure instead);
///   - any other expression: a `u64` const (`credits = PRICE`) or the path of a `fn` or
///     `async fn` taking `&HttpRequest` and returning `u64` (`credits = pricing::by_size`).
/// - `scheme`: a string literal, `"nvm:erc4337"` or `"nvm:card-delegation"`; by default
///   the scheme is detected from the plan.
/// - `network`: a string literal (`"eip155:84532"`, `"stripe"`…); by default detected.
/// - `description`, `mime_type`, `resource`: string literals for the `resource` fields of
///   the payment-required envelope (`resource` defaults to the request's URL).
/// - `settle`: `"before_body"`, `"after_body"` or `"deferred"`: when the payment is
///   settled; by default after the body for a streamed answer and before it otherwise;
///   `"deferred"` answers at once and settles in the background (the configuration's
///   `DeferredSettlement` sets the bound per payer).
/// - `speculative = true`: the handler runs while the payment is verified, and its answer
///   is released only once verified (a refused payment gets its 402, the answer dropped):
///   for a handler without side effects. Such a handler takes no `PaymentContext`, and its
///   route is not priced by its body (both checked at compile time); a request without a
///   token, or with an `Idempotency-Key`, is verified first as usual.
/// - `cache_control`: a string literal, the `Cache-Control` of paid answers instead of
///   `private, no-store` (`cache_control = "private, max-age=60"`); it must keep them out
///   of shared caches (`private`, never `public` or `s-maxage`), checked at compile time.
/// - `crate = path`: where the runtime crate is, when it is renamed in `Cargo.toml`
///   (`crate = my_nvm`); the default is `::nvm_runtime`.
///
/// # The handler
///
/// An `async fn` with at most 15 arguments (actix-web accepts 16 extractors and `#[paid]`
/// adds one), without generics, `self`, `const`, `unsafe` or `extern`, returning any
/// actix-web `Responder`. Its arguments, patterns, attributes and body are kept as
/// written. Write `#[paid]` first, above the routing attribute (`#[get("/p")]`, `#[post]`,
/// `#[route]`…), as the README and every example do: its method, path and resource name
/// are then recorded in the route table at compile time. Below it works too: the
/// pricing manifest then finds the resource by the function's name and learns the
/// method from the first request. In an `impl` block, an associated function without
/// `self` can be paid and registered by hand (`web::post().to(Agent::ask)`), but
/// actix-web's routing attributes cannot be used there (they declare a type next to the
/// function): `#[paid]` above one inside an `impl` is one compile error that says to
/// write a free function.
///
/// # What it generates
///
/// The handler stays as written, nested inside an outer `async fn` of the same name,
/// visibility, docs and routing attributes. The outer function takes one hidden payment
/// extractor (holding the request body, unread), prices and verifies the payment, then
/// runs the original extractors and only builds the inner future once the payment is
/// verified. A `static` inside it holds the route's description (plan, agent, credits,
/// and the method, path and resource name of each routing attribute below `#[paid]`),
/// which is also registered in a table the runtime reads at start-up (to check that
/// `env` plans are set and fetch the plans) and for its pricing manifest. A credits
/// expression is compiled, never kept as text: the pricing logic is not in the binary's
/// strings nor in the manifest.
///
/// Mistakes are compile errors pointing at the offending token and showing the correct
/// form; the handler is then left as written, so other errors stay meaningful.
#[proc_macro_attribute]
pub fn paid(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_paid(args.into(), item.into(), context::Context::of_call_site).into()
}

/// `#[paid]` on `proc_macro2` tokens: parse, check, expand. On any error, the item is
/// returned as written followed by every error as `compile_error!`, with one exception:
/// a function missing `async` comes back with the `async` the error asks for, so that a
/// routing attribute on it (`#[post]`, which needs an async handler) does not add a
/// second, unrelated error to ours, and a function in an `impl` block loses its routing
/// attributes (actix-web's expansion cannot stand there and would add two more).
fn expand_paid(args: TokenStream2, item: TokenStream2, context: fn() -> context::Context) -> TokenStream2 {
    match try_expand(args, item.clone(), context) {
        Ok(expanded) => expanded,
        Err(error) => {
            let mut tokens = as_reported(item, context);
            tokens.extend(error.to_compile_error());
            tokens
        }
    }
}

/// `item` as it is left next to our errors: with `async` added when it is a function
/// without it, and without routing attributes when it is associated; any other item as
/// is.
fn as_reported(item: TokenStream2, context: fn() -> context::Context) -> TokenStream2 {
    let Ok(mut function) = syn::parse2::<handler::Function>(item.clone()) else {
        return item;
    };
    let routed_here = function.attrs.iter().any(handler::is_routing) && context().is_associated();
    if function.sig.asyncness.is_some() && !routed_here {
        return item;
    }
    function.sig.asyncness = Some(syn::Token![async](function.sig.fn_token.span));
    if routed_here {
        function.attrs.retain(|attr| !handler::is_routing(attr));
    }
    quote::ToTokens::into_token_stream(function)
}

/// The expansion, or all the errors of the arguments and of the handler together.
fn try_expand(
    args: TokenStream2,
    item: TokenStream2,
    context: fn() -> context::Context,
) -> syn::Result<TokenStream2> {
    let args = syn::parse2::<args::Args>(args);
    // Above rmcp's `#[tool]`: a paid MCP tool method.
    if let Ok(function) = syn::parse2::<handler::Function>(item.clone())
        && function.attrs.iter().any(tool::is_tool)
    {
        return tool::expand(&args?, function);
    }
    let handler = handler::Handler::parse(item, context);
    match (args, handler) {
        (Ok(args), Ok(handler)) => {
            expand::check_speculative(&args, &handler)?;
            Ok(expand::expand(&args, &handler))
        }
        (Err(mut error), Err(more)) => {
            error.combine(more);
            Err(error)
        }
        (Err(error), Ok(_)) | (Ok(_), Err(error)) => Err(error),
    }
}
