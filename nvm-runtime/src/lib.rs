// The front page is the README, the same guide with any feature set (build.rs writes it:
// the repository-only parts left out, a snippet that needs a feature that is off shown
// but not compiled). Its snippets are doctests.
#![doc = include_str!(concat!(env!("OUT_DIR"), "/front_page.md"))]
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

pub use actix::context::{ChargeError, PaymentContext};
pub use actix::middleware::{PaymentMiddleware, RouteConfig};
pub use actix::payments::{Payments, PaymentsBuilder};
pub use backend::Environment;
pub use flow::{
    DeferredSettlement, Idempotency, Meter, MeterFull, MeteredStream, PendingSettlement, PendingSettlements,
    Recovery, Resolution, SettlePoint, SettlementStatus,
};
pub use nvm_macros::paid;
