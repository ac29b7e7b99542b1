//! The actix-web side: the configuration registered with the `App`, the `#[paid]`
//! extractor, [`PaymentContext`](crate::PaymentContext),
//! [`PaymentMiddleware`](crate::PaymentMiddleware), the responses. The only room
//! that knows actix-web.

pub(crate) mod context;
pub mod cors;
pub mod credits;
mod exchange;
mod hooks;
pub(crate) mod middleware;
pub(crate) mod paid;
pub(crate) mod payments;
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

// The configuration, the middleware and the extractor are named at the crate root
// (`nvm_runtime::Payments`, …), not here; the extractor's error (`context::NotPaid`) and
// the middleware's service (`middleware::PaymentService`) are named by no user: they
// have no public path.
#[cfg(feature = "mcp")]
pub(crate) use hooks::Hooks;
pub(crate) use payments::Payments;
