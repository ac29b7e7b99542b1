//! The end of a paid request that ran its handler, shared by the plain answer
//! (`paywall::settle`) and the answer settled after its body (`stream`): its outcome
//! reported, whether its answer is kept for idempotent retries, and its claim on its
//! `Idempotency-Key` completed (the answer kept) or released.

use actix_web::HttpResponse;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::http::StatusCode;
use base64::Engine as _;

use super::exchange::Exchange;
use crate::error::Refusal;
use crate::flow::idempotency::{self, Claim, StoredResponse};
use crate::flow::telemetry::Outcome;
use crate::flow::{PaymentState, Settlement};

/// Reports how a request that ran its handler ended: `settlement` for `status`.
pub(crate) fn report(state: &PaymentState, status: StatusCode, settlement: &Settlement) {
    let Some(telemetry) = state.telemetry.get() else { return };
    let (outcome, settled) = match settlement {
        Settlement::None if !status.is_success() => (Outcome::HandlerFailed, 0),
        Settlement::None => (Outcome::Paid, 0),
        Settlement::Settled(receipt) => (Outcome::Paid, receipt.credits_redeemed_u64()),
        Settlement::Deferred(_) => (Outcome::Deferred, 0),
        Settlement::FailedDelivered(_) => (Outcome::SettleFailed, 0),
        Settlement::Refused(refusal) => (Outcome::of(refusal), 0),
    };
    telemetry.finish(outcome, settled);
}

/// Whether the answer of a request that ended in `settlement` (its handler answered
/// `status`) is kept for its idempotent retries: a delivered answer (settled, deferred,
/// charged nothing, or delivered on settle failure), and an outcome unknown (it may have been
/// charged: its retries must not be charged again); not a failed handler nor a refused
/// settlement (nothing was charged: a retry runs afresh).
pub(crate) fn keeps_answer(settlement: &Settlement, status: StatusCode) -> bool {
    match settlement {
        Settlement::None => status.is_success(),
        Settlement::Settled(_) | Settlement::Deferred(_) | Settlement::FailedDelivered(_) => true,
        Settlement::Refused(refusal) => matches!(refusal, Refusal::OutcomeUnknown { .. }),
    }
}

/// `response` as it is kept for replay: its status, headers and body when the body is
/// in memory and at most `max` bytes long (a streamed or longer one is not kept).
pub(crate) fn capture(response: HttpResponse, max: usize) -> (HttpResponse, StoredResponse) {
    const NOT_KEPT: [&str; 4] = ["content-length", "transfer-encoding", "connection", "date"];
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| !NOT_KEPT.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    let status = response.status().as_u16();
    let (response, body) = response.into_parts();
    let (body, kept) = match body.try_into_bytes() {
        Ok(bytes) if bytes.len() <= max => {
            let kept = base64::engine::general_purpose::STANDARD.encode(&bytes);
            (BoxBody::new(bytes), Some(kept))
        }
        Ok(bytes) => (BoxBody::new(bytes), None),
        Err(body) => (body, None),
    };
    (response.set_body(body), StoredResponse { status, headers, body: kept, receipt: None })
}

/// Completes the request's idempotency claim with `response`, kept for replay when its
/// body is at most `max` bytes (`keep`), or releases it (nothing was charged: a retry
/// runs afresh).
pub(crate) async fn finish_claim(
    exchange: &Exchange<'_>,
    claim: Claim,
    response: HttpResponse,
    keep: bool,
    max: usize,
) -> HttpResponse {
    let config = &exchange.payments.seller().idempotency;
    if !keep {
        idempotency::release(claim).await;
        return response;
    }
    let (response, stored) = capture(response, max);
    idempotency::complete(config, claim, stored).await;
    response
}
