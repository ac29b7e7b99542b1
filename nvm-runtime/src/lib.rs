#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The layers, lowest first: each module imports only from those above it.
pub mod actix;
pub mod backend;
pub mod error;
mod flow;
pub mod store;
pub mod wire;

// On `wire` and `backend` only.
pub mod client;
#[cfg(feature = "local")]
pub mod local;
// On `actix`, `client` and `local`: what a user's integration tests start.
#[cfg(feature = "local")]
pub mod testing;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use actix::{ChargeError, PaymentContext, PaymentMiddleware, Payments, PaymentsBuilder, RouteConfig};
pub use backend::Environment;
pub use error::{ConfigError, FacilitatorError, PaymentError};
pub use flow::{Idempotency, Meter, MeterFull, PendingSettlement, PendingSettlements, SettlePoint};
pub use nvm_macros::paid;
