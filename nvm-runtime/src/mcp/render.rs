//! The flow's answers as MCP tool results: the `PaymentRequired` result (what x402's MCP
//! clients parse), the receipts in the result's `_meta`, an idempotent call replayed.

use base64::Engine as _;
use rmcp::model::{CallToolResult, ContentBlock, MetaObject};
use serde_json::{Value, json};

use crate::error::{PaymentProblem, Refusal};
use crate::flow::idempotency::StoredResponse;
use crate::wire::SettleResponse;

/// The `_meta` key of the settlement's receipt (x402's MCP transport).
pub(crate) const PAYMENT_RESPONSE_META: &str = "x402/payment-response";
/// The `_meta` key of Nevermined's credits receipt (what Nevermined's MCP buyers read).
pub(crate) const CREDITS_META: &str = "nevermined/credits";
/// The `_meta` key marking a result replayed for an idempotent retry.
pub(crate) const REPLAYED_META: &str = "nevermined/idempotent-replayed";

/// The tool result of a refusal: the `PaymentRequired` object (its `error` says why) in
/// `structuredContent` and as the text of `content[0]`, `isError: true`; a failed
/// settlement's receipt in `_meta`. An unknown settlement outcome carries no
/// `PaymentRequired` (nothing to pay again with), and a refusal that is not a payment
/// matter (the facilitator could not be asked) says so in text. `plan_id` is the plan
/// the call was priced on, for the receipt of an unknown outcome.
pub(crate) fn refusal(refusal: &Refusal, plan_id: &str) -> CallToolResult {
    match refusal {
        Refusal::PaymentRequired { envelope, error, receipt } => {
            let mut envelope = (**envelope).clone();
            if envelope.error.is_none() {
                envelope.error = Some(match &error.0 {
                    PaymentProblem::MissingToken { .. } => "payment required".to_owned(),
                    other => crate::error::chain(other),
                });
            }
            let value = serde_json::to_value(&envelope).unwrap_or(Value::Null);
            let result = CallToolResult::structured_error(value);
            match receipt {
                Some(receipt) => {
                    with_receipt(result, receipt, envelope.first().map_or("", |a| a.plan_id.as_str()))
                }
                None => result,
            }
        }
        Refusal::OutcomeUnknown { error, receipt } => {
            let value = json!({
                "error": crate::error::chain(error),
                PAYMENT_RESPONSE_META: receipt,
            });
            with_receipt(CallToolResult::structured_error(value), receipt, plan_id)
        }
        Refusal::StillPending(error) => {
            let receipt = crate::flow::pending_receipt(refusal).unwrap_or_default();
            let value = json!({
                "error": crate::error::chain(error),
                PAYMENT_RESPONSE_META: receipt,
            });
            with_receipt(CallToolResult::structured_error(value), &receipt, plan_id)
        }
        Refusal::Failed(error) => CallToolResult::error(vec![ContentBlock::text(crate::error::chain(error))]),
    }
}

/// `result` with the settlement's receipt in its `_meta`: x402's
/// `x402/payment-response` and Nevermined's `nevermined/credits`.
pub(crate) fn with_receipt(
    mut result: CallToolResult,
    receipt: &SettleResponse,
    plan_id: &str,
) -> CallToolResult {
    let meta = result.meta.get_or_insert_with(MetaObject::default);
    meta.insert(PAYMENT_RESPONSE_META.to_owned(), serde_json::to_value(receipt).unwrap_or(Value::Null));
    let mut credits = json!({
        "txHash": receipt.transaction,
        "creditsRedeemed": receipt.credits_redeemed.as_ref().map_or_else(|| "0".to_owned(), ToString::to_string),
        "remainingBalance": receipt.remaining_balance.as_ref().map(ToString::to_string),
        "planId": plan_id,
        "subscriberAddress": receipt.payer,
        "success": receipt.success,
    });
    if let (Some(reason), Some(object)) = (&receipt.error_reason, credits.as_object_mut()) {
        object.insert("errorReason".to_owned(), reason.clone().into());
    }
    meta.insert(CREDITS_META.to_owned(), credits);
    result
}

/// The stored result of an idempotent call, marked replayed (with the confirmed
/// receipt of a settlement resolved as burned, when it is one); one too long to keep is
/// an error result that says so (it was charged: do not pay again).
pub(crate) fn replay(stored: &StoredResponse, plan_id: &str) -> CallToolResult {
    let body = stored.body.as_deref().and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
    let mut result = match body.and_then(|body| serde_json::from_slice::<CallToolResult>(&body).ok()) {
        Some(result) => result,
        None => CallToolResult::error(vec![ContentBlock::text(
            "this call was served and charged already, but its result was too long to keep for replay: do not pay again",
        )]),
    };
    if let Some(receipt) = stored.receipt.as_deref().and_then(|r| SettleResponse::from_header(r).ok()) {
        result = with_receipt(result, &receipt, plan_id);
    }
    result.meta.get_or_insert_with(MetaObject::default).insert(REPLAYED_META.to_owned(), Value::Bool(true));
    result
}
