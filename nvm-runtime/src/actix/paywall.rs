//! The flow, seen from actix-web: the request as the flow's [`Host`], the body read for
//! body-priced routes, and the flow's answers turned into responses. Both forms call
//! these three steps: [`price`], [`admit`], [`settle`].

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;

use actix_web::dev::Payload;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_core::Stream;

use super::credits::CreditsFuture;
use super::payments::Payments;
use super::respond::{attach_receipt, not_for_caches, render, render_plain};
use crate::error::{ConfigError, PaymentError, Refusal};
use crate::flow::{self, Host, Offer, PaymentState, PendingSettlement, SettlePoint, Settlement};
use crate::wire::{PaymentRequired, SettleResponse, VerifyResponse};

/// A request and its configuration, as the flow sees them.
pub(crate) struct Exchange<'a> {
    pub(crate) payments: &'a Payments,
    pub(crate) req: &'a HttpRequest,
}

impl Host for Exchange<'_> {
    fn method(&self) -> &str {
        self.req.method().as_str()
    }

    fn path(&self) -> &str {
        self.req.path()
    }

    fn token_header(&self, index: usize) -> impl Iterator<Item = &[u8]> {
        let names = self.payments.token_headers();
        names.get(index).into_iter().flat_map(|name| self.req.headers().get_all(name)).map(|v| v.as_bytes())
    }

    fn before_verify(&self, envelope: &PaymentRequired) {
        self.payments.hooks().before_verify(self.req, envelope);
    }

    fn after_verify(&self, verification: &VerifyResponse) {
        self.payments.hooks().after_verify(self.req, verification);
    }

    fn after_settle(&self, credits: u64, receipt: &SettleResponse) {
        self.payments.hooks().after_settle(self.req, credits, receipt);
    }

    fn settlement_unknown(&self, record: &PendingSettlement) {
        self.payments.hooks().settlement_unknown(self.req, record);
    }
}

impl Exchange<'_> {
    /// `refusal` as the response to send.
    pub(crate) fn refuse(&self, refusal: Refusal) -> (Refusal, HttpResponse) {
        let response = render(self.payments, self.req, &refusal);
        (refusal, response)
    }

    /// The refusal of a misconfigured route.
    pub(crate) fn misconfigured(&self, error: ConfigError) -> (Refusal, HttpResponse) {
        self.refuse(flow::misconfigured(self.req.path(), error))
    }
}

/// Refused: the flow's reason and the response that says it.
pub(crate) type Refused = (Refusal, HttpResponse);

/// The credits of this request from its route's source. A body-priced source reads
/// the body here, and only once the request carries a well-formed token (an unpaid
/// request gets its 402 before any body byte is read); `payload` then holds the same
/// bytes again for the handler. `what` names the route in errors.
pub(crate) async fn price(
    exchange: &Exchange<'_>,
    offer: &Offer<'_>,
    source: CreditsFuture<'_>,
    payload: &mut Payload,
    what: &str,
) -> Result<u64, Refused> {
    let panicked = || exchange.misconfigured(ConfigError::CreditsPanicked(what.to_owned()));
    let (limit, price) = match source {
        CreditsFuture::Ready(n) => return Ok(n),
        CreditsFuture::Pending(future) => return catch_unwind(future).await.map_err(|_| panicked()),
        CreditsFuture::Body { limit, price } => (limit, price),
    };
    if let Err(error) = flow::read_token(exchange.payments.seller(), exchange) {
        let envelope = flow::envelope(exchange.payments.seller(), exchange, offer).await;
        return Err(exchange.refuse(Refusal::payment_required(envelope, error)));
    }
    let body = read_body(payload, limit).await?;
    let credits = std::panic::catch_unwind(AssertUnwindSafe(|| price(&body))).map_err(|_| panicked())?;
    *payload = Payload::from(body);
    Ok(credits)
}

/// Reads the whole body, refusing one longer than `limit` (413) or broken (400).
async fn read_body(payload: &mut Payload, limit: usize) -> Result<Bytes, Refused> {
    let mut body = BytesMut::new();
    while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut *payload).poll_next(cx)).await {
        let chunk = chunk.map_err(|error| body_refusal(PaymentError::BodyUnreadable(error.to_string())))?;
        if body.len() + chunk.len() > limit {
            return Err(body_refusal(PaymentError::BodyTooLarge { limit }));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A body error, answered without the hooks: it is not a payment matter.
fn body_refusal(error: PaymentError) -> Refused {
    let refusal = Refusal::Failed(error);
    let response = render_plain(&refusal);
    (refusal, response)
}

/// Verifies the request's payment for `credits` and records it in `state`; `Err` is
/// the answer to send instead (402 or 500): the handler never runs.
pub(crate) async fn admit(
    exchange: &Exchange<'_>,
    offer: &Offer<'_>,
    credits: u64,
    state: &PaymentState,
) -> Result<(), Refused> {
    let seller = exchange.payments.seller();
    flow::admit(seller, exchange, offer, credits, state).await.map_err(|refusal| exchange.refuse(refusal))
}

/// Settles the verified payment of `state` if `response` is a success, exactly once,
/// and attaches the receipt; otherwise passes `response` through untouched. A failed
/// settlement withholds the response (402 with the failed receipt) unless the
/// configuration delivers on settle failure.
///
/// A route settled after its body (`point`, or a streamed body when the route says
/// nothing) answers at once and settles when the body ends (see [`super::stream`]).
pub(crate) async fn settle(
    exchange: &Exchange<'_>,
    state: &Rc<PaymentState>,
    point: Option<SettlePoint>,
    mut response: HttpResponse,
) -> HttpResponse {
    let seller = exchange.payments.seller();
    if state.verified.get().is_some()
        && response.status().is_success()
        && super::stream::after_body(point, &response)
    {
        let (payments, req) = (exchange.payments.clone(), exchange.req.clone());
        not_for_caches(&mut response);
        return super::stream::settle_after_body(payments, req, Rc::clone(state), response);
    }
    match flow::settle(seller, exchange, state, response.status().as_u16()).await {
        Settlement::None => response,
        Settlement::Settled(receipt) | Settlement::FailedDelivered(receipt) => {
            attach_receipt(&mut response, &receipt);
            not_for_caches(&mut response);
            response
        }
        Settlement::Refused(refusal) => exchange.refuse(refusal).1,
    }
}

/// Polls `future`, turning a panic into an `Err`.
pub(crate) async fn catch_unwind<F: std::future::Future>(
    future: F,
) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Ok(output)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    })
    .await
}
