//! Settlement after the body: a paid response whose body streams goes out at once,
//! unbuffered, and is settled when its body ends, for what was metered.
//!
//! The rules, for a successful (2xx) paid response settled after its body:
//!
//! | the body | settled |
//! |---|---|
//! | ends normally | the metered amount (the route's price when nothing was metered), once |
//! | yields an error | nothing: the buyer got a broken answer |
//! | is dropped before its end (the client hung up) | what was metered so far (the price when nothing was metered) |
//! | metered 0 | nothing: no settle call at all |
//!
//! A `text/event-stream` body ends with a `payment-response` event carrying the receipt
//! (settled or failed), the same base64 the header carries on plain responses.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::rt::task::JoinHandle;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};

use super::exchange::Exchange;
use super::payments::Payments;
use crate::error::Refusal;
use crate::flow::idempotency::Claim;
use crate::flow::telemetry::Outcome;
use crate::flow::{self, PaymentState, SettlePoint, Settlement};
use crate::wire::{PAYMENT_RESPONSE, SettleResponse};

/// Whether `response` is settled after its body: the route says so, or says nothing
/// (or defers) and the body streams.
pub(crate) fn after_body(point: Option<SettlePoint>, response: &HttpResponse) -> bool {
    match point {
        Some(SettlePoint::AfterBody) => true,
        Some(SettlePoint::BeforeBody) => false,
        // A deferred route's streamed body is settled when it ends (its amount is
        // known then, and the answer is not waiting for it anyway).
        None | Some(SettlePoint::Deferred) => matches!(response.body().size(), BodySize::Stream),
    }
}

/// `response` with its body settled at its end (see the module docs). With an
/// idempotency `claim`, the body is also kept (up to the configured size) and stored
/// for replay once settled.
pub(crate) fn settle_after_body(
    payments: Payments,
    req: HttpRequest,
    state: Arc<PaymentState>,
    response: HttpResponse,
    claim: Option<Claim>,
) -> HttpResponse {
    let sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let kept = claim.map(|claim| {
        let mut head = HttpResponse::with_body(response.status(), ()).map_into_boxed_body();
        for (name, value) in response.headers() {
            head.headers_mut().append(name.clone(), value.clone());
        }
        let max = payments.seller().idempotency.max_response_body_len();
        Box::new(Kept { claim, head, body: Some(BytesMut::new()), max })
    });
    let (response, body) = response.into_parts();
    let pending = Pending { payments, req, state, sse, kept };
    let body = SettledBody { body, phase: Phase::Streaming(Some(pending)) };
    response.set_body(BoxBody::new(body))
}

/// What a settlement needs once the body ends.
struct Pending {
    payments: Payments,
    req: HttpRequest,
    state: Arc<PaymentState>,
    sse: bool,
    /// The idempotency claim and the body kept for its replay.
    kept: Option<Box<Kept>>,
}

/// A streamed answer kept for an idempotent replay.
struct Kept {
    claim: Claim,
    /// The status and headers sent.
    head: HttpResponse,
    /// The body so far; `None` once longer than `max`, or cut.
    body: Option<BytesMut>,
    max: usize,
}

impl Kept {
    fn push(&mut self, chunk: &Bytes) {
        if self.body.as_ref().is_some_and(|body| body.len() + chunk.len() > self.max) {
            self.body = None;
        }
        if let Some(body) = &mut self.body {
            body.extend_from_slice(chunk);
        }
    }
}

impl Pending {
    /// Starts the settlement on its own task (so a client that leaves while it runs
    /// cannot cancel it half-way), answering the final event of an SSE body. `whole`
    /// says whether the body was sent to its end.
    fn start(self, whole: bool) -> JoinHandle<Option<Bytes>> {
        actix_web::rt::spawn(async move {
            let exchange = Exchange { payments: &self.payments, req: &self.req };
            let amount = self.state.amount_due();
            let settlement =
                flow::settle(self.payments.seller(), &exchange, &self.state, 200, None, false).await;
            super::settlement::report(&self.state, actix_web::http::StatusCode::OK, &settlement);
            let keep = super::settlement::keeps_answer(&settlement, actix_web::http::StatusCode::OK);
            let receipt = receipt_of(&exchange, amount, settlement);
            let last = match (&receipt, self.sse) {
                (Some(receipt), true) => {
                    Some(Bytes::from(format!("event: {PAYMENT_RESPONSE}\ndata: {}\n\n", receipt.to_header())))
                }
                _ => None,
            };
            if let Some(mut kept) = self.kept {
                if let Some(receipt) = &receipt
                    && let Ok(value) = HeaderValue::try_from(receipt.to_header())
                {
                    kept.head.headers_mut().insert(HeaderName::from_static(PAYMENT_RESPONSE), value);
                }
                if let Some(last) = &last {
                    kept.push(last);
                }
                let body = kept.body.filter(|_| whole).map(BytesMut::freeze).unwrap_or_default();
                let head = kept.head.set_body(BoxBody::new(body));
                let max = if whole { kept.max } else { 0 };
                let _ = super::settlement::finish_claim(&exchange, kept.claim, head, keep, max).await;
            }
            last
        })
    }
}

/// The receipt of a settlement after the body (which cannot be taken back): a failed
/// one goes to the `on_settle_failed` hook and the logs.
fn receipt_of(exchange: &Exchange<'_>, amount: u64, settlement: Settlement) -> Option<SettleResponse> {
    let failed = match settlement {
        Settlement::None => return None,
        Settlement::Settled(receipt) | Settlement::Deferred(receipt) => return Some(receipt),
        Settlement::FailedDelivered(receipt) => receipt,
        Settlement::Refused(Refusal::PaymentRequired { receipt: Some(receipt), .. })
        | Settlement::Refused(Refusal::OutcomeUnknown { receipt, .. }) => *receipt,
        Settlement::Refused(refusal) => {
            tracing::error!(error = %refusal.error(), "settlement after the body failed without a receipt");
            return None;
        }
    };
    tracing::error!(
        path = exchange.req.path(),
        payer = ?failed.payer,
        agent_request_id = ?failed.other.get("agentRequestId"),
        credits = amount,
        reason = ?failed.error_reason,
        "settlement after a delivered body failed: the content cannot be taken back; reconcile"
    );
    exchange.payments.hooks().settle_failed(exchange.req, amount, &failed);
    Some(failed)
}

enum Phase {
    /// The handler's body flows; `Some` until it ends, fails or is dropped.
    Streaming(Option<Pending>),
    /// The body ended; the settlement runs.
    Settling(JoinHandle<Option<Bytes>>),
    Done,
}

/// The handler's body, settled at its end.
struct SettledBody {
    body: BoxBody,
    phase: Phase,
}

impl MessageBody for SettledBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        // An SSE body may get a final event: never announce a length.
        BodySize::Stream
    }

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        loop {
            match &mut this.phase {
                Phase::Streaming(pending) => match Pin::new(&mut this.body).poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(chunk))) => {
                        if let Some(kept) = pending.as_mut().and_then(|p| p.kept.as_mut()) {
                            kept.push(&chunk);
                        }
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    Poll::Ready(Some(Err(error))) => {
                        if let Some(pending) = pending.take() {
                            // Dropped: its idempotency claim releases itself.
                            tracing::warn!(path = pending.req.path(), error = %crate::error::Report(&*error), "the paid stream failed: nothing settled");
                            if let Some(telemetry) = pending.state.telemetry.get() {
                                telemetry.finish(Outcome::HandlerFailed, 0);
                            }
                        }
                        this.phase = Phase::Done;
                        return Poll::Ready(Some(Err(error)));
                    }
                    Poll::Ready(None) => match pending.take() {
                        Some(pending) => this.phase = Phase::Settling(pending.start(true)),
                        None => this.phase = Phase::Done,
                    },
                },
                Phase::Settling(task) => {
                    let last = match Pin::new(task).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(result) => result.ok().flatten(),
                    };
                    this.phase = Phase::Done;
                    if let Some(event) = last {
                        return Poll::Ready(Some(Ok(event)));
                    }
                }
                Phase::Done => return Poll::Ready(None),
            }
        }
    }
}

impl Drop for SettledBody {
    fn drop(&mut self) {
        // Dropped while the body still flowed: the client hung up. Settle what was
        // delivered so far (the settlement task outlives the connection).
        if let Phase::Streaming(Some(pending)) = std::mem::replace(&mut self.phase, Phase::Done) {
            tracing::info!(
                path = pending.req.path(),
                "the client left during the paid stream: settling what was delivered"
            );
            drop(pending.start(false));
        }
    }
}
