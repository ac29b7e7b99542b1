//! The x402 header names (the [`wire`](crate::wire) docs, §2). HTTP header names are case-insensitive; these
//! are the lower-case forms.

/// Client → server: the x402 access token, verbatim.
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
/// Server → client on a 402: base64 JSON `PaymentRequired` envelope.
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// Server → client: base64 JSON settlement receipt.
pub const PAYMENT_RESPONSE: &str = "payment-response";
/// Client → server: the key of one logical call (the IETF httpapi
/// `Idempotency-Key` draft), the same on each of its retries, so a seller that
/// remembers keys answers a retry with the first answer and never charges it twice.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Server → client: `true` on an answer replayed for a retried `Idempotency-Key` (not
/// run, not charged again).
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
