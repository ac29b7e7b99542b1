//! The actix-web side: the configuration registered with the `App`, the `#[paid]`
//! extractor, [`PaymentContext`], [`PaymentMiddleware`], the responses. The only room
//! that knows actix-web.

mod context;
pub mod cors;
pub mod credits;
mod exchange;
mod hooks;
mod middleware;
pub(crate) mod paid;
mod payments;
pub(crate) mod paywall;
pub mod pricing;
mod rejection;
mod resource_map;
mod respond;
pub(crate) mod route;
mod route_table;
pub(crate) mod settlement;
mod state;
mod stream;

pub use context::{ChargeError, NotPaid, PaymentContext};
#[cfg(feature = "mcp")]
pub(crate) use hooks::Hooks;
pub use middleware::{PaymentMiddleware, PaymentService, RouteConfig};
pub use payments::{Payments, PaymentsBuilder};
pub use rejection::Rejection;
