//! Recovery of the journal at start-up and on demand: settlements left in flight by a
//! process that died become unknown outcomes (a single-use token's is settled once more,
//! which tells), and unknown outcomes are put to the seller's resolver.

use std::time::Duration;

use super::pending::{PendingSettlement, Resolution, SettlementStatus, unix_now};
use super::{Seller, close, idempotency};
use crate::backend::{RequestRef, SettleOutcome};
use crate::wire::{AccessToken, Amount, CODE_SPENT, PaymentRequired};

/// How long a record of a shared journal may stay in flight before it is taken for one
/// whose process died, beyond the facilitator's timeout (a live instance is answered, or
/// gives up, within that timeout; twice it, for a single-use token's second settle).
const SHARED_GRACE: Duration = Duration::from_secs(60);

/// What a recovery or a resolution pass did, for the start-up report and the seller.
///
/// ```
/// let report = nvm_runtime::Recovery::default();
/// assert_eq!(report.burned + report.not_burned, 0); // resolved, burned or not
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// Settlements found in flight, left by a process that died.
    pub orphans: usize,
    /// Records resolved as burned.
    pub burned: usize,
    /// Records resolved as not burned.
    pub not_burned: usize,
    /// Records still of unknown outcome after the pass.
    pub unknown: usize,
    /// Deferred settlements found not sent, left by a process that died: sent now (their
    /// outcomes counted as burned, not burned or unknown).
    pub deferred: usize,
}

impl Recovery {
    /// The records resolved, burned or not.
    pub(crate) fn resolved(&self) -> usize {
        self.burned + self.not_burned
    }

    fn count(&mut self, resolution: Resolution) {
        match resolution {
            Resolution::Burned => self.burned += 1,
            Resolution::NotBurned => self.not_burned += 1,
        }
    }

    /// Counts where a record ended: resolved, or still of unknown outcome.
    fn tally(&mut self, ended: Option<Resolution>) {
        match ended {
            Some(resolution) => self.count(resolution),
            None => self.unknown += 1,
        }
    }
}

/// Turns the settlements left in flight by a process that died into unknown outcomes
/// (every one in a file journal, read before this process settles anything; those in
/// flight for longer than the facilitator's timeout can explain in a shared one), then
/// resolves what it can: a single-use token by settling it once more, the others with
/// the seller's resolver.
pub(crate) async fn recover(seller: &Seller) -> std::io::Result<Recovery> {
    let mut report = Recovery::default();
    let journal = &seller.pending;
    restore_held_answers(seller).await?;
    let now = unix_now();
    let grace =
        if journal.is_shared() { seller.facilitator.timeout() * 2 + SHARED_GRACE } else { Duration::ZERO };
    for record in journal.list(SettlementStatus::Settling).await? {
        if now.saturating_sub(record.recorded_at) < grace.as_secs() {
            continue;
        }
        report.orphans += 1;
        tracing::warn!(pending = %record.id, payer = ?record.payer, credits = %record.amount, "a settlement was in flight when its process stopped");
        match settle_again(seller, &record).await {
            Some(resolution) => {
                // Recorded unknown first, so that the closing applies to an open record.
                journal.record(&record).await?;
                report.tally(
                    close(seller, &record, resolution, "settling its single-use token once more").await,
                );
            }
            None => journal.record(&record).await?,
        }
    }
    for record in journal.list(SettlementStatus::Deferred).await? {
        if now.saturating_sub(record.recorded_at) < grace.as_secs() {
            continue;
        }
        report.deferred += 1;
        tracing::warn!(pending = %record.id, payer = ?record.payer, credits = %record.amount, "a deferred settlement was not sent when its process stopped: sending it");
        if let Some(resolution) = super::deferred::recover(seller, record).await {
            report.count(resolution);
        }
    }
    let resolved = resolve(seller).await?;
    report.burned += resolved.burned;
    report.not_burned += resolved.not_burned;
    report.unknown = resolved.unknown;
    Ok(report)
}

/// Puts back into the idempotency store the answers held for settlements a file
/// journal still names (open, or resolved as burned and still within the store's
/// time-to-live): a store in memory lost them with the process.
async fn restore_held_answers(seller: &Seller) -> std::io::Result<()> {
    use base64::Engine as _;
    let ttl = idempotency::ttl(&seller.idempotency).as_secs();
    let now = unix_now();
    for (record, status) in seller.pending.with_held_answers().await? {
        let wanted = status.is_open() || status == SettlementStatus::Resolved(Resolution::Burned);
        let Some(held) = record.held.filter(|_| wanted && now.saturating_sub(record.recorded_at) < ttl)
        else {
            continue;
        };
        let Ok(value) = base64::engine::general_purpose::STANDARD.decode(&held.value) else { continue };
        match idempotency::restore(&seller.idempotency, &held.key, value).await {
            Ok(true) => {
                tracing::info!(pending = %record.id, "an answer held for a pending settlement was put back in the idempotency store")
            }
            Ok(false) => {}
            Err(error) => {
                tracing::error!(pending = %record.id, error = %crate::error::Report(&error), "an answer held for a pending settlement could not be put back in the idempotency store")
            }
        }
    }
    Ok(())
}

/// Puts every settlement of unknown outcome to the seller's resolver (a single-use
/// token's is settled once more first), closing those it resolves.
pub(crate) async fn resolve(seller: &Seller) -> std::io::Result<Recovery> {
    let mut report = Recovery::default();
    for record in seller.pending.list(SettlementStatus::Unknown).await? {
        let mut resolution = settle_again(seller, &record).await;
        let mut who = "settling its single-use token once more";
        if resolution.is_none()
            && let Some(resolver) = &seller.resolver
        {
            resolution = resolver(record.clone()).await;
            who = "the resolver";
        }
        match resolution {
            Some(resolution) => report.tally(close(seller, &record, resolution, who).await),
            None => report.unknown += 1,
        }
    }
    Ok(report)
}

/// Settles a single-use token's record once more: the token is spent by the first
/// settle that goes through, so the answer tells whether the credits are burned (now or
/// before). `None` for a reusable token (never settled twice), or when the answer is
/// lost again.
async fn settle_again(seller: &Seller, record: &PendingSettlement) -> Option<Resolution> {
    let resume = record.resume.as_ref().filter(|resume| !resume.reusable)?;
    let envelope = PaymentRequired::from_header(&resume.envelope).ok()?;
    let amount = Amount::from(record.amount.parse::<u64>().ok()?);
    let request = RequestRef {
        payment_required: &envelope,
        x402_access_token: &resume.token,
        max_amount: Some(&amount),
        agent_request_id: record.agent_request_id.as_deref(),
    };
    let token = AccessToken::new(&resume.token);
    let resolution = match seller.facilitator.settle_outcome_ref(&request).await {
        SettleOutcome::Settled(_) => Resolution::Burned,
        SettleOutcome::Refused(error) if error.code() == Some(CODE_SPENT) => Resolution::Burned,
        SettleOutcome::Refused(error) if error.is_unavailable() => return None,
        SettleOutcome::Unknown(_) => return None,
        SettleOutcome::Declined(_) | SettleOutcome::Refused(_) => Resolution::NotBurned,
    };
    if resolution == Resolution::Burned {
        super::idempotency::mark_spent(&seller.idempotency, &token).await;
    }
    Some(resolution)
}
