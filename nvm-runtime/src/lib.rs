//! Charge for actix-web endpoints with Nevermined x402 payments.
//!
//! Annotate a handler with [`paid`]; register a [`Payments`] configuration with the
//! `App`; read what was paid through [`PaymentContext`].
//!
//! The crate is built in layers, each a module, and imports point one way:
//! [`wire`] ← [`backend`] ← `flow` ← [`actix`]; [`client`] and `local` sit on
//! [`wire`] and [`backend`].
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod error;
pub mod wire;

pub mod backend;

mod flow;

pub mod actix;

pub mod client;

#[cfg(feature = "local")]
pub mod local;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use actix::{ChargeError, PaymentContext, PaymentMiddleware, Payments, PaymentsBuilder, RouteConfig};
pub use backend::Environment;
pub use error::{ConfigError, FacilitatorError, PaymentError};
pub use nvm_macros::paid;

/// The README's snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
