//! Charge for actix-web endpoints with Nevermined x402 payments.
//!
//! Annotate a handler with [`paid`]; register a [`Payments`] configuration with the
//! `App`; read what was paid through [`PaymentContext`].
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod codec;
pub mod credits;
pub mod envelope;
pub mod environment;
pub mod error;
pub mod facilitator;
pub mod messages;
pub mod route;
pub mod token;

#[cfg(feature = "local")]
pub mod local;

pub use environment::Environment;
pub use nvm_macros::paid;
