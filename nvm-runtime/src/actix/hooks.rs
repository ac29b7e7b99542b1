//! Hooks around the payment flow, set once on the configuration (the options of the
//! official FastAPI middleware): before verify, after verify, after settle, and on a
//! payment error, which may replace the response.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse};

use crate::error::PaymentError;
use crate::flow::PendingSettlement;
use crate::wire::PaymentRequired;
use crate::wire::{SettleResponse, VerifyResponse};

type BeforeVerify = dyn Fn(&HttpRequest, &PaymentRequired) + Send + Sync;
type AfterVerify = dyn Fn(&HttpRequest, &VerifyResponse) + Send + Sync;
type AfterSettle = dyn Fn(&HttpRequest, u64, &SettleResponse) + Send + Sync;
type OnSettleFailed = dyn Fn(&HttpRequest, u64, &SettleResponse) + Send + Sync;
type OnSettlementUnknown = dyn Fn(&HttpRequest, &PendingSettlement) + Send + Sync;
type OnPaymentError = dyn Fn(&HttpRequest, &PaymentError) -> Option<HttpResponse> + Send + Sync;

/// The hooks of a [`Payments`](crate::Payments) configuration; set them through its
/// builder.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) before_verify: Option<Arc<BeforeVerify>>,
    pub(crate) after_verify: Option<Arc<AfterVerify>>,
    pub(crate) after_settle: Option<Arc<AfterSettle>>,
    pub(crate) on_payment_error: Option<Arc<OnPaymentError>>,
    pub(crate) on_settlement_unknown: Option<Arc<OnSettlementUnknown>>,
    pub(crate) on_settle_failed: Option<Arc<OnSettleFailed>>,
}

impl Hooks {
    pub(crate) fn set_before_verify(
        &mut self,
        f: impl Fn(&HttpRequest, &PaymentRequired) + Send + Sync + 'static,
    ) {
        self.before_verify = Some(Arc::new(f));
    }

    pub(crate) fn set_after_verify(
        &mut self,
        f: impl Fn(&HttpRequest, &VerifyResponse) + Send + Sync + 'static,
    ) {
        self.after_verify = Some(Arc::new(f));
    }

    pub(crate) fn set_after_settle(
        &mut self,
        f: impl Fn(&HttpRequest, u64, &SettleResponse) + Send + Sync + 'static,
    ) {
        self.after_settle = Some(Arc::new(f));
    }

    pub(crate) fn set_on_settlement_unknown(
        &mut self,
        f: impl Fn(&HttpRequest, &PendingSettlement) + Send + Sync + 'static,
    ) {
        self.on_settlement_unknown = Some(Arc::new(f));
    }

    pub(crate) fn set_on_settle_failed(
        &mut self,
        f: impl Fn(&HttpRequest, u64, &SettleResponse) + Send + Sync + 'static,
    ) {
        self.on_settle_failed = Some(Arc::new(f));
    }

    pub(crate) fn set_on_payment_error(
        &mut self,
        f: impl Fn(&HttpRequest, &PaymentError) -> Option<HttpResponse> + Send + Sync + 'static,
    ) {
        self.on_payment_error = Some(Arc::new(f));
    }

    /// Whether any hook a paid MCP tool call runs is set (before or after verify, after
    /// settle, on an unknown settlement outcome).
    #[cfg(feature = "mcp")]
    pub(crate) fn any_for_tools(&self) -> bool {
        self.before_verify.is_some()
            || self.after_verify.is_some()
            || self.after_settle.is_some()
            || self.on_settlement_unknown.is_some()
    }

    pub(crate) fn before_verify(&self, req: &HttpRequest, envelope: &PaymentRequired) {
        if let Some(hook) = &self.before_verify {
            hook(req, envelope);
        }
    }

    pub(crate) fn after_verify(&self, req: &HttpRequest, verification: &VerifyResponse) {
        if let Some(hook) = &self.after_verify {
            hook(req, verification);
        }
    }

    pub(crate) fn after_settle(&self, req: &HttpRequest, credits: u64, receipt: &SettleResponse) {
        if let Some(hook) = &self.after_settle {
            hook(req, credits, receipt);
        }
    }

    pub(crate) fn settlement_unknown(&self, req: &HttpRequest, record: &PendingSettlement) {
        if let Some(hook) = &self.on_settlement_unknown {
            hook(req, record);
        }
    }

    pub(crate) fn settle_failed(&self, req: &HttpRequest, credits: u64, receipt: &SettleResponse) {
        if let Some(hook) = &self.on_settle_failed {
            hook(req, credits, receipt);
        }
    }

    /// The hook's replacement response, if it gives one.
    pub(crate) fn on_payment_error(&self, req: &HttpRequest, error: &PaymentError) -> Option<HttpResponse> {
        self.on_payment_error.as_ref().and_then(|hook| hook(req, error))
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("before_verify", &self.before_verify.is_some())
            .field("after_verify", &self.after_verify.is_some())
            .field("after_settle", &self.after_settle.is_some())
            .field("on_payment_error", &self.on_payment_error.is_some())
            .field("on_settlement_unknown", &self.on_settlement_unknown.is_some())
            .field("on_settle_failed", &self.on_settle_failed.is_some())
            .finish()
    }
}
