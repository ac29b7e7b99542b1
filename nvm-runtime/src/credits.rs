//! Credits sources: a fixed amount, or a function of the request, sync or async.
//!
//! `#[paid(credits = …)]` accepts any [`CreditsSource`]: an integer literal or `u64`
//! const, `|req: &HttpRequest| -> u64`, an `async |req: &HttpRequest| -> u64` closure,
//! or the path of a `fn`/`async fn` of `&HttpRequest` returning `u64`. 0 means free.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::HttpRequest;

/// The credits of one request, ready now or after an `await`.
pub enum CreditsFuture<'a> {
    /// Known already.
    Ready(u64),
    /// Computed by an async function of the request.
    Pending(Pin<Box<dyn Future<Output = u64> + 'a>>),
}

impl Future for CreditsFuture<'_> {
    type Output = u64;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        match self.get_mut() {
            CreditsFuture::Ready(n) => Poll::Ready(*n),
            CreditsFuture::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl std::fmt::Debug for CreditsFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreditsFuture::Ready(n) => write!(f, "CreditsFuture::Ready({n})"),
            CreditsFuture::Pending(_) => f.write_str("CreditsFuture::Pending"),
        }
    }
}

/// Marks the `u64` form of [`CreditsSource`].
#[derive(Debug)]
pub enum Fixed {}
/// Marks the synchronous-function form of [`CreditsSource`].
#[derive(Debug)]
pub enum SyncFn {}
/// Marks the async-function form of [`CreditsSource`].
#[derive(Debug)]
pub enum AsyncFn {}

/// What `credits = …` accepts. The marker `M` keeps the three forms apart; it is
/// inferred.
///
/// ```
/// use actix_web::HttpRequest;
/// use nvm_runtime::credits::CreditsSource;
///
/// fn by_length(req: &HttpRequest) -> u64 { req.path().len() as u64 }
/// async fn by_query(req: &HttpRequest) -> u64 { if req.query_string().is_empty() { 1 } else { 2 } }
///
/// fn accepts<M>(source: impl CreditsSource<M>) -> Option<u64> { source.fixed() }
/// assert_eq!(accepts(5u64), Some(5));
/// assert_eq!(accepts(by_length), None);
/// assert_eq!(accepts(by_query), None);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as `credits`",
    label = "expected a `u64`, or a function of `&HttpRequest` returning `u64`",
    note = "write `credits = 3`, `credits = PRICE` (a `const PRICE: u64`), `credits = |req: &HttpRequest| -> u64 {{ … }}`, `credits = async |req: &HttpRequest| -> u64 {{ … }}`, or the name of a `fn`/`async fn` taking `&HttpRequest` and returning `u64`"
)]
pub trait CreditsSource<M> {
    /// The credits for this request.
    fn resolve<'a>(self, req: &'a HttpRequest) -> CreditsFuture<'a>
    where
        Self: 'a;

    /// The amount, when it does not depend on the request.
    fn fixed(&self) -> Option<u64>;
}

impl CreditsSource<Fixed> for u64 {
    fn resolve<'a>(self, _req: &'a HttpRequest) -> CreditsFuture<'a>
    where
        Self: 'a,
    {
        CreditsFuture::Ready(self)
    }

    fn fixed(&self) -> Option<u64> {
        Some(*self)
    }
}

impl<F> CreditsSource<SyncFn> for F
where
    F: Fn(&HttpRequest) -> u64,
{
    fn resolve<'a>(self, req: &'a HttpRequest) -> CreditsFuture<'a>
    where
        Self: 'a,
    {
        CreditsFuture::Ready(self(req))
    }

    fn fixed(&self) -> Option<u64> {
        None
    }
}

impl<F> CreditsSource<AsyncFn> for F
where
    F: std::ops::AsyncFn(&HttpRequest) -> u64,
{
    fn resolve<'a>(self, req: &'a HttpRequest) -> CreditsFuture<'a>
    where
        Self: 'a,
    {
        CreditsFuture::Pending(Box::pin(async move { self(req).await }))
    }

    fn fixed(&self) -> Option<u64> {
        None
    }
}
