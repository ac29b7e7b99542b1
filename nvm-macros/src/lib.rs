//! The `#[paid]` attribute. Use it through `nvm_runtime::paid`.
use proc_macro::TokenStream;

/// Protects an actix-web handler with a Nevermined x402 payment.
#[proc_macro_attribute]
pub fn paid(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
