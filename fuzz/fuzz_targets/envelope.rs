//! The `payment-required` envelope and the `payment-response` receipt, as headers and
//! as the facilitator's JSON bodies: never panic, and whatever decodes is stable under
//! re-encoding (unknown receipt fields included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvm_runtime::__private::wire::BackendError;
use nvm_runtime::wire::{PaymentRequired, SettleResponse, VerifyResponse};

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    if let Ok(envelope) = PaymentRequired::from_header(&input) {
        let again = PaymentRequired::from_header(&envelope.to_header()).expect("own header decodes");
        assert_eq!(PaymentRequired::from_header(&again.to_header()).ok(), Some(again));
    }
    if let Ok(receipt) = SettleResponse::from_header(&input) {
        let again = SettleResponse::from_header(&receipt.to_header()).expect("own header decodes");
        assert_eq!(SettleResponse::from_header(&again.to_header()).ok(), Some(again));
        let _ = receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0);
    }
    // The same bytes as facilitator bodies.
    let _ = serde_json::from_slice::<VerifyResponse>(data).map(|v| v.request_id().map(str::len));
    let _ = serde_json::from_slice::<SettleResponse>(data);
    let _ = serde_json::from_slice::<BackendError>(data);
    let _ = serde_json::from_slice::<PaymentRequired>(data);
});
