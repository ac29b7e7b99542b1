//! Credits sources: a fixed amount, a function of the request (sync or async), or a
//! function of the request and its body ([`by_body`]).
//!
//! `#[paid(credits = …)]` accepts any [`CreditsSource`]: an integer literal or `u64`
//! const, `|req: &HttpRequest| -> u64`, an `async |req: &HttpRequest| -> u64` closure,
//! the path of a `fn`/`async fn` of `&HttpRequest` returning `u64`, or
//! `by_body(|req: &HttpRequest, body: &[u8]| -> u64)`. 0 means free.
//!
//! Price by the body with [`by_body`], never by `Content-Length`: a chunked upload has
//! none, so a price read from it is wrong for the same text sent another way.

pub(crate) mod future;

use actix_web::HttpRequest;

pub(crate) use self::future::CreditsFuture;

/// How many body bytes [`by_body`] reads by default: 256 KiB.
pub(crate) const DEFAULT_BODY_LIMIT: usize = 256 * 1024;

/// Prices a request by its body: `price` gets the request and the body's bytes, read
/// in full (up to [`ByBody::limit`], 256 KiB by default; longer is a 413) after the
/// token is checked and before verification. The handler's own extractors then read
/// the same bytes. A request without a token gets its 402 before its body is read,
/// so a body-priced route needs a token even when it would price the body at 0.
///
/// ```
/// use actix_web::HttpRequest;
/// use nvm_runtime::actix::credits::by_body;
/// use nvm_runtime::RouteConfig;
///
/// // 1 credit per 100 words, at least 1; chunked or not, the same text costs the same.
/// let per_words = by_body(|_req: &HttpRequest, body: &[u8]| {
///     let words = String::from_utf8_lossy(body).split_whitespace().count() as u64;
///     words.div_ceil(100).max(1)
/// })
/// .limit(1024 * 1024);
/// let _route = RouteConfig::new("1234").credits(per_words);
/// ```
pub fn by_body<F>(price: F) -> ByBody<F>
where
    F: Fn(&HttpRequest, &[u8]) -> u64,
{
    ByBody { price, limit: DEFAULT_BODY_LIMIT }
}

/// A credits source priced by the request's body; see [`by_body`].
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct ByBody<F> {
    price: F,
    limit: usize,
}

impl<F> ByBody<F> {
    /// Reads at most `bytes` of the body (default 256 KiB); a longer body is a 413.
    pub fn limit(self, bytes: usize) -> Self {
        ByBody { limit: bytes, ..self }
    }
}

impl<F> Sealed<BodyFn> for ByBody<F>
where
    F: Fn(&HttpRequest, &[u8]) -> u64,
{
    fn resolve<'a>(self, req: &'a HttpRequest) -> CreditsFuture<'a>
    where
        Self: 'a,
    {
        let price = self.price;
        CreditsFuture::Body { limit: self.limit, price: Box::new(move |body| price(req, body)) }
    }
}

pub(crate) use self::sealed::Sealed;
use self::sealed::{AsyncFn, BodyFn, Fixed, SyncFn};

/// The forms `credits = …` takes, closed to this crate: a new form is a new release, never
/// an impl elsewhere.
pub(crate) mod sealed {
    use super::CreditsFuture;

    /// Implemented exactly where [`CreditsSource`](super::CreditsSource) is.
    pub trait Sealed<M> {
        /// The credits for this request (called by the flow).
        fn resolve<'a>(self, req: &'a actix_web::HttpRequest) -> CreditsFuture<'a>
        where
            Self: 'a;
    }

    /// Marks the `u64` form.
    #[derive(Debug)]
    pub enum Fixed {}
    /// Marks the synchronous-function form.
    #[derive(Debug)]
    pub enum SyncFn {}
    /// Marks the async-function form.
    #[derive(Debug)]
    pub enum AsyncFn {}
    /// Marks the body-priced form.
    #[derive(Debug)]
    pub enum BodyFn {}
}

/// What `credits = …` accepts: a `u64`, a function of the request (sync or async), or
/// [`by_body`]. The marker `M` keeps the forms apart; it is inferred. Sealed: the forms
/// are this crate's.
///
/// ```
/// use actix_web::HttpRequest;
/// use nvm_runtime::actix::credits::CreditsSource;
///
/// fn by_length(req: &HttpRequest) -> u64 { req.path().len() as u64 }
/// async fn by_query(req: &HttpRequest) -> u64 { if req.query_string().is_empty() { 1 } else { 2 } }
///
/// fn accepts<M>(_source: impl CreditsSource<M>) {}
/// accepts(5u64);
/// accepts(by_length);
/// accepts(by_query);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as `credits`",
    label = "expected a `u64`, or a function of `&HttpRequest` returning `u64`",
    note = "write `credits = 3`, `credits = PRICE` (a `const PRICE: u64`), `credits = |req: &HttpRequest| -> u64 {{ … }}`, `credits = async |req: &HttpRequest| -> u64 {{ … }}`, or the name of a `fn`/`async fn` taking `&HttpRequest` and returning `u64`"
)]
pub trait CreditsSource<M>: Sealed<M> {}

impl CreditsSource<Fixed> for u64 {}
impl<F: Fn(&HttpRequest) -> u64> CreditsSource<SyncFn> for F {}
impl<F: std::ops::AsyncFn(&HttpRequest) -> u64> CreditsSource<AsyncFn> for F {}
impl<F: Fn(&HttpRequest, &[u8]) -> u64> CreditsSource<BodyFn> for ByBody<F> {}

impl Sealed<Fixed> for u64 {
    fn resolve<'a>(self, _req: &'a HttpRequest) -> CreditsFuture<'a>
    where
        Self: 'a,
    {
        CreditsFuture::Ready(self)
    }
}

impl<F> Sealed<SyncFn> for F
where
    F: Fn(&HttpRequest) -> u64,
{
    fn resolve<'a>(self, req: &'a HttpRequest) -> CreditsFuture<'a>
    where
        Self: 'a,
    {
        CreditsFuture::Ready(self(req))
    }
}

impl<F> Sealed<AsyncFn> for F
where
    F: std::ops::AsyncFn(&HttpRequest) -> u64,
{
    fn resolve<'a>(self, req: &'a HttpRequest) -> CreditsFuture<'a>
    where
        Self: 'a,
    {
        CreditsFuture::Pending(Box::pin(async move { self(req).await }))
    }
}
