//! The actix-web side: the configuration registered with the `App`, the `#[paid]`
//! extractor, [`PaymentContext`], [`PaymentMiddleware`], the responses. The only room
//! that knows actix-web.

pub(crate) mod context;
pub mod credits;
pub(crate) mod hooks;
pub(crate) mod middleware;
pub(crate) mod payments;
pub(crate) mod paywall;
pub mod pricing;
pub(crate) mod route;
pub(crate) mod route_table;

pub use context::{ChargeError, NotPaid, PaymentContext};
pub use hooks::Hooks;
pub use middleware::{PaymentMiddleware, PaymentService, RouteConfig};
pub use payments::{DEFAULT_TOKEN_HEADER, Payments, PaymentsBuilder};
