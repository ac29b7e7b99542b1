//! The payment state of one request, shared by the flow and the handler's view of it.

use std::cell::{Cell, OnceCell};

use super::cache::CacheKey;
use crate::wire::{AccessToken, PaymentRequired, VerifyResponse};

/// A verified payment, before settlement.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) token: AccessToken,
    pub(crate) envelope: PaymentRequired,
    pub(crate) credits: u64,
    pub(crate) verification: VerifyResponse,
    /// Set when the verification cache is on.
    pub(crate) cache_key: Option<CacheKey>,
    /// Whether `verification` came from the cache (its request id belongs to an
    /// earlier request and must not be settled again).
    pub(crate) from_cache: bool,
}

/// The payment state of one request.
#[derive(Debug, Default)]
pub(crate) struct PaymentState {
    pub(crate) verified: OnceCell<Verified>,
    pub(crate) charge: Cell<Option<u64>>,
    pub(crate) settled: Cell<bool>,
}
