//! Charge for actix-web endpoints with Nevermined x402 payments.
//!
//! Annotate a handler with [`paid`]; register a [`Payments`] configuration with the
//! `App`; read what was paid through [`PaymentContext`].
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
pub mod client;
pub mod codec;
pub mod config;
pub mod context;
pub mod credits;
pub mod envelope;
pub mod environment;
pub mod error;
pub mod facilitator;
pub mod headers;
mod hooks;
pub mod messages;
pub mod middleware;
mod paywall;
pub mod plans;
pub mod pricing;
pub mod route;
mod route_table;
pub mod token;

#[cfg(feature = "local")]
pub mod local;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use config::{Payments, PaymentsBuilder};
pub use context::{ChargeError, PaymentContext};
pub use environment::Environment;
pub use error::{ConfigError, FacilitatorError, PaymentError};
pub use hooks::Hooks;
pub use nvm_macros::paid;

/// The README's snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
