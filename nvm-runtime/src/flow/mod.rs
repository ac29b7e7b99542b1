//! The payment flow shared by both forms (`#[paid]` and `PaymentMiddleware`): admit,
//! verify, settle, the verification cache. Knows nothing of the macro or the
//! middleware.

pub(crate) mod cache;
