//! The payment state of one request, shared by the flow and the handler's view of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::cache::CacheKey;
use super::idempotency::Claim;
use super::telemetry::Telemetry;
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
    /// Whether the token is single-use: marked spent in the store once settled, and
    /// settled once more to resolve an unknown outcome.
    pub(crate) single_use: bool,
}

/// The payment state of one request. Shared between threads where a surface needs it
/// (an MCP tool's future is `Send`): every field is thread-safe, and uncontended (one
/// request touches it at a time).
#[derive(Debug, Default)]
pub(crate) struct PaymentState {
    pub(crate) verified: OnceLock<Verified>,
    /// The handler's `charge(n)`, the last one wins.
    charge: Mutex<Option<u64>>,
    /// The credits the request was asked, once priced (for the pages that say it).
    asked: Mutex<Option<u64>>,
    settled: AtomicBool,
    /// The request's claim on its idempotency key, until completed or released.
    claim: Mutex<Option<Claim>>,
    /// Its span and metrics, opened by the web layer when the request reaches a paid
    /// route.
    pub(crate) telemetry: OnceLock<Telemetry>,
    /// The usage metered by the handler or its stream (shared with its [`Meter`]s);
    /// made by the first meter, so an unmetered request allocates nothing for it.
    meter: OnceLock<Arc<Metered>>,
}

/// The value in `cell`, whatever a panicking holder left (every value here is whole).
fn lock<T>(cell: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    cell.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PaymentState {
    /// Records the handler's usage-based charge (checked by the caller).
    pub(crate) fn set_charge(&self, credits: u64) {
        *lock(&self.charge) = Some(credits);
    }

    /// The handler's charge, if it made one.
    pub(crate) fn charge(&self) -> Option<u64> {
        *lock(&self.charge)
    }

    /// Records the credits the request was asked.
    pub(crate) fn set_asked(&self, credits: u64) {
        *lock(&self.asked) = Some(credits);
    }

    /// The credits the request was asked, once priced.
    pub(crate) fn asked(&self) -> Option<u64> {
        *lock(&self.asked)
    }

    /// Marks the request settled; `true` when it already was.
    pub(crate) fn mark_settled(&self) -> bool {
        self.settled.swap(true, Ordering::AcqRel)
    }

    /// Keeps the request's claim on its idempotency key.
    pub(crate) fn keep_claim(&self, claim: Claim) {
        *lock(&self.claim) = Some(claim);
    }

    /// Takes the request's claim on its idempotency key, once.
    pub(crate) fn take_claim(&self) -> Option<Claim> {
        lock(&self.claim).take()
    }

    /// The metered amount, when a meter was taken.
    pub(crate) fn metered(&self) -> Option<u64> {
        self.meter.get().map(|m| m.total.load(Ordering::Acquire))
    }

    /// A meter of this request, capped at `cap`.
    pub(crate) fn meter(&self, cap: u64) -> Meter {
        let shared = self.meter.get_or_init(|| Arc::new(Metered { total: AtomicU64::new(0), cap }));
        Meter { shared: Arc::clone(shared) }
    }

    /// What a settlement asks for now: the metered amount, else the handler's
    /// `charge`, else the verified credits (0 when nothing was verified).
    pub(crate) fn amount_due(&self) -> u64 {
        let verified = self.verified.get().map_or(0, |v| v.credits);
        self.metered().or(self.charge()).unwrap_or(verified)
    }
}

/// What the meters of one request count.
#[derive(Debug)]
pub(crate) struct Metered {
    total: AtomicU64,
    /// The credits verified: the most that can be metered.
    cap: u64,
}

/// Counts what a handler or its stream delivered, for usage-based billing: the settled
/// amount is what was metered, capped at the credits verified for the request. Cheap to
/// clone, `Send + 'static`: move it into the stream's generator and [`add`](Meter::add)
/// as it produces. Get one from `PaymentContext::meter`.
///
/// ```
/// # fn demo(payment: nvm_runtime::PaymentContext) {
/// let meter = payment.meter();
/// std::thread::spawn(move || {
///     for _word in ["a", "generated", "answer"] {
///         // 1 credit per word; refused past the verified cap: stop producing.
///         if meter.add(1).is_err() {
///             break;
///         }
///     }
/// });
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Meter {
    shared: Arc<Metered>,
}

/// [`Meter::add`] refused an amount: it would pass the verified cap. Its message gives
/// the amount, what was metered before and the cap ([`Meter::total`] and
/// [`Meter::cap`] read the last two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot meter {requested} more credits: {metered} of the {cap} verified are metered already")]
pub struct MeterFull {
    requested: u64,
    metered: u64,
    cap: u64,
}

impl Meter {
    /// Adds `credits` to the metered amount, and returns the new total; refused (and
    /// nothing added) when it would pass the verified cap.
    pub fn add(&self, credits: u64) -> Result<u64, MeterFull> {
        let cap = self.shared.cap;
        let mut metered = self.shared.total.load(Ordering::Acquire);
        loop {
            let total = metered.checked_add(credits).filter(|t| *t <= cap);
            let Some(total) = total else {
                return Err(MeterFull { requested: credits, metered, cap });
            };
            match self.shared.total.compare_exchange(metered, total, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(total),
                Err(now) => metered = now,
            }
        }
    }

    /// The metered amount so far.
    pub fn total(&self) -> u64 {
        self.shared.total.load(Ordering::Acquire)
    }

    /// The most that can be metered: the credits verified.
    pub fn cap(&self) -> u64 {
        self.shared.cap
    }

    /// `inner`, metered: each item is added at the price `cost` gives it before it is
    /// passed on, and the stream ends cleanly (settling what was metered) at the first
    /// item that would pass the verified cap. The right way to bill a streamed answer
    /// (`cost` sees an `Err` item too: price it 0; a body that fails settles nothing).
    ///
    /// ```
    /// # async fn demo(payment: nvm_runtime::PaymentContext) {
    /// use actix_web::{HttpResponse, web::Bytes};
    ///
    /// let words = ["a ", "streamed ", "answer"].map(|w| Ok::<_, std::io::Error>(Bytes::from(w)));
    /// // 1 credit per word: the buyer pays for what was sent, at most what was verified.
    /// let body = payment.meter().stream(futures_util::stream::iter(words), |_word| 1);
    /// let response = HttpResponse::Ok().content_type("text/event-stream").streaming(body);
    /// # let _ = response;
    /// # }
    /// ```
    pub fn stream<S, F>(self, inner: S, cost: F) -> MeteredStream<S, F>
    where
        S: futures_core::Stream,
        F: FnMut(&S::Item) -> u64,
    {
        MeteredStream { inner: Box::pin(inner), cost, meter: self, full: false }
    }
}

/// A stream whose items are metered as they pass ([`Meter::stream`]).
pub struct MeteredStream<S, F> {
    inner: std::pin::Pin<Box<S>>,
    cost: F,
    meter: Meter,
    full: bool,
}

impl<S, F> std::fmt::Debug for MeteredStream<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStream").field("meter", &self.meter).field("full", &self.full).finish()
    }
}

impl<S, F> futures_core::Stream for MeteredStream<S, F>
where
    S: futures_core::Stream,
    F: FnMut(&S::Item) -> u64 + Unpin,
{
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        let this = &mut *self;
        if this.full {
            return std::task::Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            std::task::Poll::Ready(Some(item)) => {
                let price = (this.cost)(&item);
                if this.meter.add(price).is_err() {
                    this.full = true;
                    return std::task::Poll::Ready(None);
                }
                std::task::Poll::Ready(Some(item))
            }
            other => other,
        }
    }
}
