//! The credits of one request as a credits source yields them: what `#[paid]`
//! expansions and the flow exchange, not a public API.

use std::future::Future;
use std::pin::Pin;

/// The credits of one request: ready now, after an `await`, or once the body is read.
/// What expansions and the flow exchange (lent by `__private`); not a public API.
pub enum CreditsFuture<'a> {
    /// Known already.
    Ready(u64),
    /// Computed by an async function of the request.
    Pending(Pin<Box<dyn Future<Output = u64> + 'a>>),
    /// Computed from the request's body, read first (at most `limit` bytes).
    Body {
        /// The most bytes read; a longer body is refused with 413.
        limit: usize,
        /// Prices the body.
        price: BodyPrice<'a>,
    },
}

impl std::fmt::Debug for CreditsFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreditsFuture::Ready(n) => write!(f, "CreditsFuture::Ready({n})"),
            CreditsFuture::Pending(_) => f.write_str("CreditsFuture::Pending"),
            CreditsFuture::Body { limit, .. } => write!(f, "CreditsFuture::Body {{ limit: {limit} }}"),
        }
    }
}

/// Prices a body that was read in full.
pub(crate) type BodyPrice<'a> = Box<dyn FnOnce(&[u8]) -> u64 + 'a>;
