//! What a paid request reports: one `tracing` span per request, and (feature
//! `metrics`) counters and histograms through the `metrics` facade. No exporter here:
//! the seller installs the one they use.
//!
//! The span, `nvm_paid_request`, carries `method`, `route` (the resource pattern, not
//! the raw path), `plan`, `credits_asked`, `credits_settled`, `outcome`, `verify_ms`,
//! `settle_ms` and `agent_request_id`; never the token. Every log line of the flow is
//! inside it, so a `tracing-opentelemetry` layer turns each paid request into one trace
//! with no code of the seller's.
//!
//! The metrics:
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `nvm_paid_requests_total` | counter | `route`, `outcome` |
//! | `nvm_paid_credits_settled_total` | counter (credits) | `plan`, `route` |
//! | `nvm_paid_verify_seconds` | histogram | `route` |
//! | `nvm_paid_settle_seconds` | histogram | `route` |
//!
//! The outcomes are those of [`Outcome`].

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::Span;
use tracing::field::Empty;

use crate::error::{PaymentError, PaymentProblem, Refusal};

/// How a paid route's request ended, as the `outcome` field and label say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Credits resolved to 0: served without payment.
    Free,
    /// 402: no token.
    NoToken,
    /// 402: the token is malformed, refused at verify, or spent.
    Invalid,
    /// The facilitator could not be asked at verify (500).
    FacilitatorError,
    /// Refused before the handler for another reason: a misconfigured route, a body
    /// too long, an idempotency conflict, the store down.
    Refused,
    /// An idempotent retry answered from the store.
    Replayed,
    /// The handler (or its stream) failed: nothing settled.
    HandlerFailed,
    /// Served and settled (or charged 0).
    Paid,
    /// The settlement failed.
    SettleFailed,
    /// The settlement's outcome is unknown (recorded as pending).
    Unknown,
    /// The request was dropped (the client left) before it was answered.
    Abandoned,
    /// A retry of a call whose settlement is still pending: told to retry later.
    Pending,
    /// Served, its settlement deferred to the background.
    Deferred,
}

impl Outcome {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Free => "free",
            Outcome::NoToken => "no_token",
            Outcome::Invalid => "invalid",
            Outcome::FacilitatorError => "facilitator_error",
            Outcome::Refused => "refused",
            Outcome::Replayed => "replayed",
            Outcome::HandlerFailed => "handler_failed",
            Outcome::Paid => "paid",
            Outcome::SettleFailed => "settle_failed",
            Outcome::Unknown => "outcome_unknown",
            Outcome::Abandoned => "abandoned",
            Outcome::Pending => "settlement_pending",
            Outcome::Deferred => "deferred",
        }
    }

    /// The outcome of a request refused with `refusal`.
    pub(crate) fn of(refusal: &Refusal) -> Self {
        match refusal {
            Refusal::PaymentRequired { error: PaymentError(PaymentProblem::MissingToken { .. }), .. } => {
                Outcome::NoToken
            }
            Refusal::PaymentRequired {
                error: PaymentError(PaymentProblem::SettlementFailed { .. }), ..
            } => Outcome::SettleFailed,
            Refusal::PaymentRequired { .. } => Outcome::Invalid,
            Refusal::OutcomeUnknown { .. } => Outcome::Unknown,
            Refusal::StillPending(_) => Outcome::Pending,
            Refusal::Failed(PaymentError(PaymentProblem::Facilitator(_))) => Outcome::FacilitatorError,
            Refusal::Failed(_) => Outcome::Refused,
        }
    }
}

/// The telemetry of one paid request: its span and what the metrics need.
#[derive(Debug)]
pub(crate) struct Telemetry {
    span: Span,
    /// The resource pattern: the span's field, the metrics' label, an idempotency
    /// record's scope (shared: each metric label is a count increment, not a copy).
    route: Arc<str>,
    /// The metrics' `plan` label.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    plan: Mutex<Option<Arc<str>>>,
    finished: AtomicBool,
}

impl Telemetry {
    /// Opens the span of a request to `route` (its resource pattern).
    pub(crate) fn start(method: &str, route: String) -> Self {
        let span = tracing::info_span!(
            "nvm_paid_request",
            method,
            route = %route,
            plan = Empty,
            credits_asked = Empty,
            credits_settled = Empty,
            outcome = Empty,
            verify_ms = Empty,
            settle_ms = Empty,
            agent_request_id = Empty,
        );
        Telemetry { span, route: route.into(), plan: Mutex::default(), finished: AtomicBool::new(false) }
    }

    /// Records fields on the span, when a subscriber listens to it (a span nobody
    /// listens to is not written to at all).
    fn record(&self, write: impl FnOnce(&Span)) {
        if !self.span.is_disabled() {
            write(&self.span);
        }
    }

    /// The route: the resource pattern the request matched (its path when none).
    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    /// The request's span.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// The plan and the credits the request is asked.
    pub(crate) fn asked(&self, plan: &str, credits: u64) {
        self.record(|span| {
            span.record("plan", plan).record("credits_asked", credits);
        });
        #[cfg(feature = "metrics")]
        {
            let mut kept = self.plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if kept.as_deref() != Some(plan) {
                *kept = Some(plan.into());
            }
        }
    }

    /// A verification by the facilitator took `took`.
    pub(crate) fn verified(&self, took: Duration, agent_request_id: Option<&str>) {
        self.record(|span| {
            span.record("verify_ms", millis(took));
            if let Some(id) = agent_request_id {
                span.record("agent_request_id", id);
            }
        });
        #[cfg(feature = "metrics")]
        metrics::histogram!("nvm_paid_verify_seconds", "route" => self.route.clone())
            .record(took.as_secs_f64());
    }

    /// A settle call took `took`.
    pub(crate) fn settle_took(&self, took: Duration) {
        self.record(|span| {
            span.record("settle_ms", millis(took));
        });
        #[cfg(feature = "metrics")]
        metrics::histogram!("nvm_paid_settle_seconds", "route" => self.route.clone())
            .record(took.as_secs_f64());
    }

    /// The request ended as `outcome`, `settled` credits burned; only the first call
    /// counts.
    pub(crate) fn finish(&self, outcome: Outcome, settled: u64) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        self.record(|span| {
            span.record("outcome", outcome.as_str()).record("credits_settled", settled);
        });
        tracing::debug!(parent: &self.span, outcome = outcome.as_str(), settled, "paid request ended");
        #[cfg(feature = "metrics")]
        {
            let route = self.route.clone();
            metrics::counter!("nvm_paid_requests_total", "route" => route.clone(), "outcome" => outcome.as_str())
                .increment(1);
            if settled > 0 {
                let plan = self
                    .plan
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
                    .unwrap_or_else(|| Arc::from(""));
                metrics::counter!("nvm_paid_credits_settled_total", "plan" => plan, "route" => route)
                    .increment(settled);
            }
        }
    }
}

/// `took` in milliseconds, to the microsecond.
fn millis(took: Duration) -> f64 {
    (took.as_secs_f64() * 1e6).round() / 1e3
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.finish(Outcome::Abandoned, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_have_distinct_labels() {
        let all = [
            Outcome::Free,
            Outcome::NoToken,
            Outcome::Invalid,
            Outcome::FacilitatorError,
            Outcome::Refused,
            Outcome::Replayed,
            Outcome::HandlerFailed,
            Outcome::Paid,
            Outcome::SettleFailed,
            Outcome::Unknown,
            Outcome::Abandoned,
            Outcome::Pending,
            Outcome::Deferred,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels.len(), all.len());
    }
}
