// The README is the front page when every feature is on (as on docs.rs): its snippets
// are doctests that use them all.
#![cfg_attr(
    all(
        feature = "local",
        feature = "redis",
        feature = "metrics",
        feature = "cors",
        feature = "utoipa",
        feature = "mcp",
        feature = "openai"
    ),
    doc = include_str!("../README.md")
)]
#![cfg_attr(
    not(all(
        feature = "local",
        feature = "redis",
        feature = "metrics",
        feature = "cors",
        feature = "utoipa",
        feature = "mcp",
        feature = "openai"
    )),
    doc = "Charge for actix-web endpoints with Nevermined x402 payments: `#[paid]`, `PaymentContext`, \
           the facilitator client and the local facilitator. The guide (the README) is this page when \
           every feature is on, as on docs.rs: `cargo doc --all-features`."
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The layers, lowest first: each module imports only from those above it.
pub mod actix;
mod backend;
pub mod error;
mod flow;
pub mod observability;
pub mod store;
pub mod wire;

// On `wire` and `backend` only.
pub mod client;
#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "mcp")]
pub mod mcp;
// On `actix`, `client` and `local`: what a user's integration tests start.
#[cfg(feature = "local")]
pub mod testing;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use actix::{ChargeError, PaymentContext, PaymentMiddleware, Payments, PaymentsBuilder, RouteConfig};
pub use backend::Environment;
pub use error::{ConfigError, FacilitatorError, PaymentError};
pub use flow::{
    Idempotency, Meter, MeterFull, MeteredStream, PendingSettlement, PendingSettlements, Recovery,
    Resolution, ResolveFuture, SettlePoint, SettlementResolver, SettlementStatus,
};
pub use nvm_macros::paid;
