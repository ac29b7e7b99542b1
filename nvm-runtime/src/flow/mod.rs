//! The payment flow shared by both forms (`#[paid]` and `PaymentMiddleware`), line for
//! line: [`admit`] before the handler (token → verify), [`settle`] after it (settle on
//! success only, exactly once, fail closed). Knows nothing of the macro, the middleware
//! or the web framework: the request is seen through [`Host`], and the answers are
//! typed values ([`Refusal`], [`Settlement`]) that the web layer renders.

pub(crate) mod cache;
pub(crate) mod deferred;
pub(crate) mod idempotency;
pub(crate) mod pending;
pub(crate) mod recovery;
mod state;
pub(crate) mod telemetry;
mod terms;

use cache::{CacheKey, VerifyCache, WellFormed};
pub use deferred::DeferredSettlement;
pub use idempotency::Idempotency;
use idempotency::{Caller, Claim, Claimed, Found, Held, KeyedRequest, StoredResponse};
pub(crate) use pending::Resolver;
pub use pending::{PendingSettlement, PendingSettlements, Resolution, SettlementStatus};
pub use recovery::Recovery;
pub use state::{Meter, MeterFull, MeteredStream};
pub(crate) use state::{PaymentState, Verified};
pub(crate) use terms::Offer;
pub use terms::{Id, SettlePoint, Terms, cache_control_problem};

use crate::backend::{Facilitator, PlanCatalog, RequestRef, SettleOutcome};
use crate::error::{
    ConfigError, FacilitatorError, Failure, IdempotencyError, PaymentError, PaymentProblem, Refusal,
};
use crate::wire::AccessTokenExt as _;
use crate::wire::codec::{JsonShape, MAX_HEADER_LEN, decode_json_header};
use crate::wire::envelope::EnvelopeBuilder;
use crate::wire::{
    AccessToken, Amount, CODE_SPENT, NETWORK_STRIPE, PaymentRequired, SCHEME_CARD_DELEGATION,
    SETTLEMENT_PENDING, SETTLEMENT_UNKNOWN, SettleResponse, VerifyResponse,
};

/// The seller's side of the flow: the facilitator, the plan catalogue, the cache, the
/// token headers and the settlement policy.
pub(crate) struct Seller {
    pub(crate) facilitator: Facilitator,
    pub(crate) plans: PlanCatalog,
    pub(crate) cache: Option<VerifyCache>,
    /// Tokens that passed the check before the facilitator call.
    pub(crate) well_formed: WellFormed,
    /// Lower-case header names, first non-empty wins.
    pub(crate) token_headers: Vec<String>,
    pub(crate) deliver_on_settle_failure: bool,
    /// Where settlements in flight (with a durable journal) and of unknown outcome are
    /// written down.
    pub(crate) pending: PendingSettlements,
    /// What resolves pending settlements, when the seller plugged one in.
    pub(crate) resolver: Option<Resolver>,
    /// What a retry of a call whose settlement is still pending is told to wait.
    pub(crate) retry_after: std::time::Duration,
    /// Where idempotent calls and settled single-use tokens are remembered.
    pub(crate) idempotency: Idempotency,
    /// Deferred settlement, when the seller turned it on.
    pub(crate) deferred: Option<deferred::Deferrer>,
}

/// What the flow reads of a request and tells about it: the web layer implements it
/// (and runs the seller's hooks from it).
pub(crate) trait Host {
    /// The request's method, `"GET"`.
    fn method(&self) -> &str;
    /// The request's path.
    fn path(&self) -> &str;
    /// The values, in order, of the `index`-th token header of the configuration.
    fn token_header(&self, index: usize) -> impl Iterator<Item = &[u8]>;
    /// Before a verification, with the envelope about to be verified.
    fn before_verify(&self, envelope: &PaymentRequired);
    /// After a successful verification (cached or not).
    fn after_verify(&self, verification: &VerifyResponse);
    /// After a successful settlement.
    fn after_settle(&self, credits: u64, receipt: &SettleResponse);
    /// After a settlement of unknown outcome was recorded.
    fn settlement_unknown(&self, record: &PendingSettlement);
}

/// What became of a settlement, for the web layer to put on the response.
#[derive(Debug)]
pub(crate) enum Settlement {
    /// Nothing to settle (not verified, the handler failed, 0 credits): pass the
    /// response through untouched.
    None,
    /// Settled: attach the receipt.
    Settled(SettleResponse),
    /// Deferred: the settlement runs in the background; attach its pending receipt.
    Deferred(SettleResponse),
    /// The settlement failed but the policy delivers: attach the failed receipt.
    FailedDelivered(SettleResponse),
    /// The settlement failed: withhold the response.
    Refused(Refusal),
}

/// What the handler's side does after [`admit`].
#[derive(Debug)]
pub(crate) enum Admission {
    /// Verified (or free): run the handler, then [`settle`].
    Run,
    /// An idempotent retry of a call already served and charged: answer with its
    /// stored response; no handler, no settlement.
    Replay(StoredResponse),
}

/// Verifies the request's payment for `credits` and records it in `state`.
///
/// `Ok(Run)` lets the handler run (verified, or free when `credits` is 0);
/// `Ok(Replay)` answers a retry of an idempotent call; `Err` is the refusal to answer
/// instead: the handler never runs. `keyed` is the request's `Idempotency-Key`, when it
/// has one and the configuration remembers them.
pub(crate) async fn admit(
    seller: &Seller,
    host: &impl Host,
    offer: &Offer<'_>,
    credits: u64,
    state: &PaymentState,
    keyed: Option<&KeyedRequest>,
) -> Result<Admission, Refusal> {
    state.set_asked(credits);
    let telemetry = state.telemetry.get();
    if let Some(telemetry) = telemetry {
        telemetry.asked(offer.plan_id, credits);
    }
    if credits == 0 {
        tracing::debug!(path = host.path(), "free request: credits resolved to 0");
        return Ok(Admission::Run);
    }
    let envelope = envelope(seller, host, offer).await;
    let (token, may_be_single_use) = match read_token(seller, host) {
        Ok(read) => read,
        Err(error) => return Err(Refusal::payment_required(envelope, error)),
    };
    let store = seller.idempotency.store();
    // Decoded once, and only when needed: a keyed request is scoped by its payer, and a
    // single-use token is guarded by the store and resolved after an unknown settlement
    // (`may_be_single_use` never misses one, and spares reusable tokens the decode).
    let payload = (keyed.is_some() || may_be_single_use).then(|| token.decode().ok()).flatten();
    let single_use = payload.as_ref().is_some_and(|payload| payload.is_single_use());
    let caller =
        (store.is_some() && (single_use || keyed.is_some())).then(|| Caller::of(&token, payload.as_ref()));
    let found = match (store, keyed, &caller) {
        (Some(store), Some(keyed), Some(caller)) => {
            match find_keyed(seller, store, caller, offer.plan_id, keyed).await {
                Ok(Found::Replay(response)) => {
                    tracing::info!(token = %token.hash(), "idempotent retry: replaying the stored response");
                    return Ok(Admission::Replay(response));
                }
                Ok(found) => Some((store, keyed, caller, found)),
                Err(refusal) => return Err(refusal),
            }
        }
        _ => None,
    };
    // After the look-up: a retry of a call paid with a single-use token gets its answer,
    // though the token is spent.
    if let (Some(store), Some(caller), true) = (store, &caller, single_use) {
        match idempotency::is_spent(store, caller).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(token = %token.hash(), "single-use token already settled (seen in the store); refused");
                let reason =
                    format!("{CODE_SPENT}: this single-use token was already settled; mint a new one");
                return Err(Refusal::payment_required(envelope, PaymentProblem::Rejected { reason }.into()));
            }
            Err(error) => return Err(Refusal::Failed(PaymentProblem::Idempotency(error).into())),
        }
    }
    let started = std::time::Instant::now();
    let verified = verify(seller, host, offer, credits, envelope, token, single_use).await?;
    if let (Some(telemetry), false) = (telemetry, verified.from_cache) {
        telemetry.verified(started.elapsed(), verified.verification.request_id());
    }
    if let Some((store, keyed, caller, found)) = found {
        let refuse = |error| Refusal::Failed(PaymentProblem::Idempotency(error).into());
        let store_key = match keyed_next(found, &verified).map_err(refuse)? {
            Next::Replay(response) => return Ok(Admission::Replay(response)),
            Next::Claim(store_key) => store_key,
        };
        let payer = verified.verification.payer.clone();
        let claimed = idempotency::claim(&seller.idempotency, store, store_key, keyed, caller, payer)
            .await
            .map_err(refuse)?;
        match claimed {
            Claimed::Won(claim) => state.keep_claim(claim),
            Claimed::Lost(found) => match keyed_next(found, &verified).map_err(refuse)? {
                Next::Replay(response) => return Ok(Admission::Replay(response)),
                Next::Claim(_) => return Err(refuse(IdempotencyError::InFlight)),
            },
        }
    }
    keep(state, verified);
    Ok(Admission::Run)
}

/// What a verified request with a key does next, from what the store said.
enum Next {
    Claim(String),
    Replay(StoredResponse),
}

fn keyed_next(found: Found, verified: &Verified) -> Result<Next, IdempotencyError> {
    match found {
        Found::Absent { store_key } => Ok(Next::Claim(store_key)),
        Found::Replay(response) => Ok(Next::Replay(response)),
        // Taken between the look-up and the claim by a call now waiting for its
        // settlement: as for a call still running.
        Found::Held(_) => Err(IdempotencyError::InFlight),
        Found::ReplayIfPayer { payer, response } => {
            let same = payer
                .as_deref()
                .zip(verified.verification.payer.as_deref())
                .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b));
            if same {
                tracing::info!(token = %verified.token.hash(), "idempotent retry with another token of the same payer: replaying");
                Ok(Next::Replay(response))
            } else {
                Err(IdempotencyError::KeyReused)
            }
        }
    }
}

/// Looks a keyed request up. A call whose answer is held while its settle call is in
/// flight is waited for as a running one is (when the seller waits for first calls):
/// its settlement is not pending, only not over.
async fn find_keyed(
    seller: &Seller,
    store: &dyn crate::store::Store,
    caller: &Caller,
    plan_id: &str,
    keyed: &KeyedRequest,
) -> Result<Found, Refusal> {
    // One deadline for both waits: a running call, then its settle call.
    let deadline = seller.idempotency.wait_deadline();
    loop {
        match idempotency::find(store, caller, plan_id, keyed, deadline).await {
            Ok(Found::Held(held)) => {
                let waiting = deadline.is_some_and(|deadline| std::time::Instant::now() < deadline);
                if waiting && settling(seller, &held.pending).await {
                    tokio::time::sleep(idempotency::POLL).await;
                    continue;
                }
                return resolve_held(seller, store, held).await;
            }
            found => {
                return found.map_err(|error| Refusal::Failed(PaymentProblem::Idempotency(error).into()));
            }
        }
    }
}

/// Whether the journal's record `id` may be a settle call still in flight: marked so, or
/// not in the journal at all (a journal in memory keeps only unknown outcomes, so a
/// held answer without a record is most likely one whose settle call is under way).
async fn settling(seller: &Seller, id: &str) -> bool {
    matches!(seller.pending.get(id).await, Ok(Some((_, SettlementStatus::Settling))) | Ok(None))
}

/// What a retry of a call whose answer is held for its settlement gets, by the
/// settlement's standing: still open (asking the seller's resolver first), a "still
/// pending, retry after" refusal; burned, the held answer with a confirmed receipt (to
/// the same payer); not burned, the held answer dropped and the call run afresh.
async fn resolve_held(
    seller: &Seller,
    store: &dyn crate::store::Store,
    held: Held,
) -> Result<Found, Refusal> {
    let standing = standing(seller, &held.pending).await;
    match standing {
        Some((record, Resolution::Burned)) => {
            tracing::info!(pending = %held.pending, "retry of a call whose settlement was resolved as burned: delivering its held answer");
            let mut response = held.response;
            response.receipt = Some(confirmed_receipt(&record).to_header());
            Ok(if held.same_token {
                Found::Replay(response)
            } else {
                Found::ReplayIfPayer { payer: held.payer, response }
            })
        }
        Some((_, Resolution::NotBurned)) => {
            tracing::info!(pending = %held.pending, "retry of a call whose settlement was resolved as not burned: running it afresh");
            idempotency::drop_held(store, &held)
                .await
                .map_err(|error| Refusal::Failed(PaymentProblem::Idempotency(error).into()))?;
            Ok(Found::Absent { store_key: held.store_key })
        }
        None => Err(Refusal::StillPending(
            PaymentProblem::SettlementPending {
                pending_id: held.pending,
                retry_after: seller.retry_after.as_secs().max(1),
            }
            .into(),
        )),
    }
}

/// The resolution of the journal's record `id`, asking the seller's resolver when it
/// is still open (and closing it with the answer); `None` while it stays open, or when
/// the journal has no such record (a journal that lost it: it stays pending).
pub(crate) async fn standing(seller: &Seller, id: &str) -> Option<(PendingSettlement, Resolution)> {
    let (record, status) = match seller.pending.get(id).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            tracing::error!(pending = %id, journal = %seller.pending.name(), "an answer is held for a settlement the journal does not hold (a journal in memory restarted?): it stays pending until its idempotency record expires");
            return None;
        }
        Err(error) => {
            tracing::error!(pending = %id, error = %crate::error::Report(&error), "the pending-settlement journal could not be read");
            return None;
        }
    };
    match status {
        SettlementStatus::Resolved(resolution) => Some((record, resolution)),
        _ => {
            let resolution = seller.resolver.as_ref()?(record.clone()).await?;
            let resolution = close(seller, &record, resolution, "the resolver").await?;
            Some((record, resolution))
        }
    }
}

/// Closes `record` with `resolution` (found by `who`), with the log line, and returns
/// where it ends. A deferred record found not burned is not closed but settled now: its
/// buyer has the answer, the first settle burned nothing, and the seller is owed; it ends
/// as that settlement does (`None` while its outcome is unknown again).
pub(crate) async fn close(
    seller: &Seller,
    record: &PendingSettlement,
    resolution: Resolution,
    who: &str,
) -> Option<Resolution> {
    if resolution == Resolution::NotBurned && record.deferred {
        tracing::info!(pending = %record.id, "a deferred settlement resolved as not burned by {who}: settling it now");
        return deferred::recover(seller, record.clone()).await;
    }
    match seller.pending.close(&record.id, resolution).await {
        Ok(_) => tracing::info!(pending = %record.id, %resolution, "pending settlement resolved by {who}"),
        Err(error) => {
            tracing::error!(pending = %record.id, %resolution, error = %crate::error::Report(&error), "a pending settlement was resolved by {who} but the journal could not be written")
        }
    }
    Some(resolution)
}

/// The receipt answering a retry of a call whose settlement is still pending:
/// `success: false`, `errorReason: "settlement_pending"`, the record's id and the
/// seconds to wait; `None` for any other refusal.
pub(crate) fn pending_receipt(refusal: &Refusal) -> Option<SettleResponse> {
    let Refusal::StillPending(PaymentError(PaymentProblem::SettlementPending { pending_id, retry_after })) =
        refusal
    else {
        return None;
    };
    let mut receipt = SettleResponse {
        success: false,
        error_reason: Some(SETTLEMENT_PENDING.to_owned()),
        ..SettleResponse::default()
    };
    receipt.other.insert("pendingSettlementId".to_owned(), pending_id.clone().into());
    receipt.other.insert("retryAfter".to_owned(), (*retry_after).into());
    Some(receipt)
}

/// The receipt of a pending settlement resolved as burned: the record's request, marked
/// `confirmedAfterUnknown`.
fn confirmed_receipt(record: &PendingSettlement) -> SettleResponse {
    let mut receipt = SettleResponse {
        success: true,
        payer: record.payer.clone(),
        credits_redeemed: record.amount.parse::<u64>().ok().map(Amount::from),
        ..SettleResponse::default()
    };
    receipt.other.insert("pendingSettlementId".to_owned(), record.id.clone().into());
    if let Some(id) = &record.agent_request_id {
        receipt.other.insert("agentRequestId".to_owned(), id.clone().into());
    }
    receipt.other.insert("confirmedAfterUnknown".to_owned(), true.into());
    receipt
}

/// Verifies `token` for `credits` (from the cache when it holds the verification).
async fn verify(
    seller: &Seller,
    host: &impl Host,
    offer: &Offer<'_>,
    credits: u64,
    envelope: PaymentRequired,
    token: AccessToken,
    single_use: bool,
) -> Result<Verified, Refusal> {
    // `token.hash()` (a SHA-256) is written inside the log macros: computed only for the
    // lines that are enabled.
    let cache_key = seller.cache.as_ref().map(|_| {
        CacheKey::new(token.as_str(), offer.plan_id, credits, &envelope.resource.url, host.method())
    });
    if let (Some(cache), Some(key)) = (&seller.cache, &cache_key)
        && let Some(verification) = cache.get(key)
    {
        tracing::debug!(token = %token.hash(), "verification served from cache");
        host.after_verify(&verification);
        return Ok(Verified {
            token,
            envelope,
            credits,
            verification,
            cache_key,
            from_cache: true,
            single_use,
        });
    }

    host.before_verify(&envelope);
    let amount = Amount::from(credits);
    let request = RequestRef {
        payment_required: &envelope,
        x402_access_token: token.as_str(),
        max_amount: Some(&amount),
        agent_request_id: None,
    };
    let verification = match seller.facilitator.verify_ref(&request).await {
        Ok(v) if v.is_valid => v,
        Ok(v) => {
            let reason = v.invalid_reason.unwrap_or_else(|| "invalid_token".to_owned());
            tracing::info!(token = %token.hash(), %reason, "payment refused by the facilitator");
            return Err(Refusal::payment_required(envelope, PaymentProblem::Rejected { reason }.into()));
        }
        Err(FacilitatorError(Failure::Refused { error, .. })) => {
            let reason = if error.code.is_empty() {
                error.message
            } else {
                format!("{}: {}", error.code, error.message)
            };
            tracing::info!(token = %token.hash(), %reason, "verify refused");
            return Err(Refusal::payment_required(envelope, PaymentProblem::Rejected { reason }.into()));
        }
        Err(error) => {
            tracing::error!(token = %token.hash(), error = %crate::error::Report(&error), "verification failed; the handler does not run");
            return Err(Refusal::Failed(PaymentProblem::Facilitator(error).into()));
        }
    };
    tracing::debug!(token = %token.hash(), payer = ?verification.payer, credits, "payment verified");
    host.after_verify(&verification);
    if let (Some(cache), Some(key)) = (&seller.cache, &cache_key) {
        cache.insert(key.clone(), verification.clone());
    }
    Ok(Verified { token, envelope, credits, verification, cache_key, from_cache: false, single_use })
}

fn keep(state: &PaymentState, verified: Verified) {
    // A state is admitted once per request; a second admission keeps the first.
    let _ = state.verified.set(verified);
}

/// The answer of a call with an idempotency key, held in the store with the request's
/// claim before its settle call is sent (see [`idempotency::hold`]).
pub(crate) struct Kept<'a> {
    pub(crate) claim: &'a mut Claim,
    pub(crate) answer: StoredResponse,
}

/// Settles the verified payment of `state` when the handler answered `status` (a
/// success), exactly once.
///
/// With a durable journal the settlement is written down before its settle call is
/// sent (and forgotten once its outcome is known); `kept`, the answer of a call with an
/// idempotency key, is held in the store for it first. An unknown outcome leaves both
/// for the settlement's resolution. `defer`: the route's settlement is deferred (see
/// [`deferred`]) when the payer's exposure allows it.
pub(crate) async fn settle(
    seller: &Seller,
    host: &impl Host,
    state: &PaymentState,
    status: u16,
    mut kept: Option<Kept<'_>>,
    defer: bool,
) -> Settlement {
    let Some(verified) = state.verified.get() else {
        return Settlement::None;
    };
    if !(200..300).contains(&status) {
        tracing::info!(token = %verified.token.hash(), status, "handler did not succeed; nothing settled");
        return Settlement::None;
    }
    if state.mark_settled() {
        tracing::error!(token = %verified.token.hash(), "settlement attempted twice for one request; refused");
        return Settlement::None;
    }
    let amount = state.amount_due();
    if amount == 0 {
        tracing::debug!(token = %verified.token.hash(), "charged 0 credits; nothing settled");
        return Settlement::None;
    }
    let max_amount = Amount::from(amount);
    let request = RequestRef {
        payment_required: &verified.envelope,
        x402_access_token: verified.token.as_str(),
        max_amount: Some(&max_amount),
        agent_request_id: if verified.from_cache { None } else { verified.verification.request_id() },
    };
    let mut record = record_of(host, verified, amount, &request);
    if defer
        && let Some(deferrer) = &seller.deferred
        && let Some(receipt) =
            defer_settlement(seller, deferrer, verified, &record, amount, kept.as_ref()).await
    {
        return Settlement::Deferred(receipt);
    }
    let held_answer =
        kept.as_ref().map(|kept| idempotency::held(kept.claim, &record.id, kept.answer.clone()));
    if let Some((key, value)) = held_answer.as_ref().filter(|_| seller.pending.copies_held_answers()) {
        use base64::Engine as _;
        let value = base64::engine::general_purpose::STANDARD.encode(value);
        record.held = Some(pending::HeldAnswer { key: key.clone(), value });
    }
    // Written ahead, in this order: the journal's record, then the answer held with it
    // (a held answer always has its record). A record's settle call is sent only once it
    // is written down.
    let ahead = seller.pending.is_durable();
    if ahead && let Err(error) = seller.pending.begin(&record).await {
        tracing::error!(token = %verified.token.hash(), credits = amount, error = %crate::error::Report(&error), "the pending-settlement journal could not be written: nothing settled, the answer withheld");
        let reason = format!(
            "settlement_not_attempted: the seller's settlement journal could not be written ({error}); nothing was charged, retry later"
        );
        return refuse_settlement(seller, verified, &request, reason, None);
    }
    let held = match (kept.as_mut(), held_answer) {
        (Some(kept), Some((_, value))) => {
            idempotency::hold(&seller.idempotency, kept.claim, &seller.pending, &record.id, value).await
        }
        _ => false,
    };
    // `token.hash()` (a SHA-256) is written inside the log macros: computed only for
    // the lines that are enabled.
    let started = std::time::Instant::now();
    let first = seller.facilitator.settle_outcome_ref(&request).await;
    if let Some(telemetry) = state.telemetry.get() {
        telemetry.settle_took(started.elapsed());
    }
    let outcome = match first {
        SettleOutcome::Unknown(error) => {
            tracing::warn!(token = %verified.token.hash(), credits = amount, error = %crate::error::Report(&error), "settlement outcome unknown: its answer was lost");
            resolve_unknown(seller, verified, &request, error).await
        }
        answered => answered,
    };
    if let SettleOutcome::Unknown(error) = outcome {
        if let Some(kept) = kept.as_mut().filter(|_| held) {
            kept.claim.keep_held();
        }
        return unknown(seller, host, verified, record, held, error).await;
    }
    // Known: the record goes (once the store no longer holds the answer for it, when
    // it does: the claim's completion or release forgets it).
    if ahead && !held {
        seller.pending.done(&record.id);
    }
    let (receipt, reason, source) = match outcome {
        SettleOutcome::Settled(receipt) => {
            if verified.single_use {
                idempotency::mark_spent(&seller.idempotency, &verified.token).await;
            }
            return settled(host, amount, receipt);
        }
        SettleOutcome::Declined(receipt) => {
            let reason = receipt.error_reason.clone().unwrap_or_else(|| "settlement failed".to_owned());
            (completed(receipt, verified, &request), reason, None)
        }
        SettleOutcome::Refused(error) => {
            let reason = match &error.0 {
                Failure::Refused { error, .. } => format!("{}: {}", error.code, error.message),
                Failure::Unavailable(why) => format!("settlement_unavailable: {}", crate::error::chain(why)),
            };
            return refuse_settlement(seller, verified, &request, reason, Some(Box::new(error)));
        }
        SettleOutcome::Unknown(_) => unreachable!("answered above"),
    };
    finish_refused(seller, verified, receipt, reason, source)
}

/// Defers the settlement of `record` when its payer's exposure allows it: reserved,
/// written down as deferred (durably, before the answer goes out), then handed to the
/// background; returns the answer's pending receipt. `None` settles synchronously: no
/// payer, a payer past the bound or suspended, the store or the journal unavailable.
///
/// The answer of a call with an idempotency key (`kept`) is copied into a file
/// journal's record, with its receipt: a crash that takes a store in memory before the
/// buyer got it leaves it for the buyer's retry, once the next start-up settled it. A
/// single-use token is marked spent now: it cannot pay a second call while its
/// settlement waits.
async fn defer_settlement(
    seller: &Seller,
    deferrer: &deferred::Deferrer,
    verified: &Verified,
    record: &PendingSettlement,
    amount: u64,
    kept: Option<&Kept<'_>>,
) -> Option<SettleResponse> {
    let payer = verified.verification.payer.as_deref()?;
    match deferrer.reserve(payer, amount).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(
                payer,
                credits = amount,
                "deferred settlement not granted (exposure bound reached, or payer suspended): settling now"
            );
            return None;
        }
        Err(error) => {
            tracing::warn!(payer, error = %crate::error::Report(&error), "the deferred-settlement store is unavailable: settling now");
            return None;
        }
    }
    let mut record = record.clone();
    record.deferred = true;
    record.resume = Some(pending::Resume {
        token: verified.token.as_str().to_owned(),
        envelope: verified.envelope.to_header(),
        reusable: !verified.single_use,
    });
    let receipt = deferred::receipt(&record, verified.envelope.first().map(|a| a.network.clone()));
    if let Some(kept) = kept.filter(|_| seller.pending.copies_held_answers()) {
        use base64::Engine as _;
        let mut answer = kept.answer.clone();
        answer.receipt = Some(receipt.to_header());
        let (key, value) = idempotency::held(kept.claim, &record.id, answer);
        let value = base64::engine::general_purpose::STANDARD.encode(value);
        record.held = Some(pending::HeldAnswer { key, value });
    }
    if let Err(error) = seller.pending.defer(&record).await {
        tracing::error!(pending = %record.id, error = %crate::error::Report(&error), "a deferred settlement could not be written down: settling now");
        deferrer.release(payer, amount).await;
        return None;
    }
    if verified.single_use {
        idempotency::mark_spent(&seller.idempotency, &verified.token).await;
    }
    let job = deferred::Job::new(
        record,
        verified.token.clone(),
        verified.envelope.clone(),
        amount,
        verified.single_use,
    );
    deferrer.spawn(job, payer.to_owned());
    Some(receipt)
}

/// A settlement that failed with nothing burned and no facilitator receipt.
fn refuse_settlement(
    seller: &Seller,
    verified: &Verified,
    request: &RequestRef<'_>,
    reason: String,
    source: Option<Box<FacilitatorError>>,
) -> Settlement {
    let receipt = failed_receipt(verified, request, &reason);
    finish_refused(seller, verified, receipt, reason, source)
}

/// A failed settlement: logged, its verification forgotten, the answer delivered with
/// the failed receipt or withheld, as the policy says.
fn finish_refused(
    seller: &Seller,
    verified: &Verified,
    receipt: SettleResponse,
    reason: String,
    source: Option<Box<FacilitatorError>>,
) -> Settlement {
    tracing::error!(token = %verified.token.hash(), %reason, "settlement failed");
    if let (Some(cache), Some(key)) = (&seller.cache, &verified.cache_key) {
        cache.remove(key);
    }
    if seller.deliver_on_settle_failure {
        return Settlement::FailedDelivered(receipt);
    }
    let refusal = Refusal::payment_required(
        verified.envelope.clone(),
        PaymentProblem::SettlementFailed { reason, source }.into(),
    );
    Settlement::Refused(refusal.with_receipt(receipt))
}

/// The journal record of the settlement of `request`: its id is the agent request id
/// when the verification gave one. A single-use token's record keeps what settling it
/// once more takes.
fn record_of(
    host: &impl Host,
    verified: &Verified,
    amount: u64,
    request: &RequestRef<'_>,
) -> PendingSettlement {
    let agent_request_id = request.agent_request_id.map(str::to_owned);
    PendingSettlement {
        id: agent_request_id.clone().unwrap_or_else(pending::local_id),
        agent_request_id,
        payer: verified.verification.payer.clone(),
        plan_id: verified.envelope.first().map(|a| a.plan_id.clone()).unwrap_or_default(),
        method: host.method().to_owned(),
        path: host.path().to_owned(),
        amount: amount.to_string(),
        recorded_at: pending::unix_now(),
        token_hash: verified.token.hash().to_string(),
        deferred: false,
        resume: verified.single_use.then(|| pending::Resume {
            token: verified.token.as_str().to_owned(),
            envelope: verified.envelope.to_header(),
            reusable: false,
        }),
        held: None,
    }
}

fn settled(host: &impl Host, amount: u64, receipt: SettleResponse) -> Settlement {
    host.after_settle(amount, &receipt);
    Settlement::Settled(receipt)
}

/// The receipt of a settlement that failed without a facilitator receipt: who and where
/// from the verification, and the request id to reconcile with.
fn failed_receipt(verified: &Verified, request: &RequestRef<'_>, reason: &str) -> SettleResponse {
    let mut receipt = SettleResponse {
        success: false,
        error_reason: Some(reason.to_owned()),
        payer: verified.verification.payer.clone(),
        network: verified.envelope.first().map(|a| a.network.clone()),
        ..SettleResponse::default()
    };
    if let Some(id) = request.agent_request_id {
        receipt.other.insert("agentRequestId".to_owned(), id.into());
    }
    receipt
}

/// A facilitator's failed receipt with what it left out filled in from the
/// verification (payer, network, the request id), so it names the request to reconcile.
fn completed(mut receipt: SettleResponse, verified: &Verified, request: &RequestRef<'_>) -> SettleResponse {
    let known = failed_receipt(verified, request, "");
    receipt.payer = receipt.payer.or(known.payer);
    receipt.network = receipt.network.or(known.network);
    for (field, value) in known.other {
        receipt.other.entry(field).or_insert(value);
    }
    receipt
}

/// Resolves an unknown settlement outcome where that is safe: a single-use token is
/// consumed by the first settlement that goes through, so one more settle with the same
/// token and request id either settles it now (the first had not happened) or answers
/// `BCK.X402.0059` (the first went through: settled, with a receipt marked
/// `confirmedAfterUnknown`). A reusable token is never settled twice (it could burn
/// twice): its outcome stays unknown. Any other answer is returned as it is.
async fn resolve_unknown(
    seller: &Seller,
    verified: &Verified,
    request: &RequestRef<'_>,
    first: FacilitatorError,
) -> SettleOutcome {
    if !verified.single_use {
        return SettleOutcome::Unknown(first);
    }
    match seller.facilitator.settle_outcome_ref(request).await {
        SettleOutcome::Refused(error) if error.code() == Some(CODE_SPENT) => {
            tracing::info!(token = %verified.token.hash(), "settlement resolved: the single-use token was spent by the first settle");
            let mut receipt = failed_receipt(verified, request, "");
            receipt.success = true;
            receipt.error_reason = None;
            receipt.credits_redeemed = request.max_amount.cloned();
            receipt.other.insert("confirmedAfterUnknown".to_owned(), true.into());
            SettleOutcome::Settled(receipt)
        }
        outcome => {
            if matches!(outcome, SettleOutcome::Settled(_)) {
                tracing::info!(token = %verified.token.hash(), "settlement resolved: the second settle of the single-use token went through");
            }
            outcome
        }
    }
}

/// An outcome that could not be resolved: written to the seller's journal (with the
/// hook told), and answered "outcome unknown, do not pay again" with the record's id;
/// the answer, when `held`, waits in the store for the record's resolution.
async fn unknown(
    seller: &Seller,
    host: &impl Host,
    verified: &Verified,
    record: PendingSettlement,
    held: bool,
    error: FacilitatorError,
) -> Settlement {
    let credits = &record.amount;
    match seller.pending.record(&record).await {
        Ok(()) => tracing::error!(
            pending = %record.id, payer = ?record.payer, plan = %record.plan_id, path = %record.path,
            %credits, token = %record.token_hash, held,
            "settlement outcome unknown: recorded as a pending settlement to resolve"
        ),
        Err(io) => tracing::error!(
            pending = %record.id, payer = ?record.payer, plan = %record.plan_id, path = %record.path,
            %credits, token = %record.token_hash, error = %io,
            "settlement outcome unknown and the pending-settlement journal could not be written: this log line is the record"
        ),
    }
    host.settlement_unknown(&record);
    if let (Some(cache), Some(key)) = (&seller.cache, &verified.cache_key) {
        cache.remove(key);
    }
    let network = verified.envelope.first().map(|a| a.network.clone());
    let receipt = record_receipt(&record, network, SETTLEMENT_UNKNOWN);
    tracing::debug!(pending = %record.id, "answered: settlement outcome unknown");
    if seller.deliver_on_settle_failure {
        return Settlement::FailedDelivered(receipt);
    }
    let error = PaymentProblem::SettlementUnknown { pending_id: record.id, source: Box::new(error) };
    Settlement::Refused(Refusal::OutcomeUnknown { error: error.into(), receipt: Box::new(receipt) })
}

/// The receipt of a settlement the journal holds (`record`), not settled (yet): `success:
/// false`, `reason`, the payer and network, and the ids to reconcile with
/// (`pendingSettlementId`, `agentRequestId`).
pub(crate) fn record_receipt(
    record: &PendingSettlement,
    network: Option<String>,
    reason: &str,
) -> SettleResponse {
    let mut receipt = SettleResponse {
        success: false,
        error_reason: Some(reason.to_owned()),
        payer: record.payer.clone(),
        network,
        ..SettleResponse::default()
    };
    if let Some(id) = &record.agent_request_id {
        receipt.other.insert("agentRequestId".to_owned(), id.clone().into());
    }
    receipt.other.insert("pendingSettlementId".to_owned(), record.id.clone().into());
    receipt
}

/// The envelope of this request: the route's terms, the plan's scheme (forced or
/// auto-detected) and the request's path and method.
pub(crate) async fn envelope(seller: &Seller, host: &impl Host, offer: &Offer<'_>) -> PaymentRequired {
    let terms = offer.terms;
    let (scheme, network) = match &terms.scheme {
        Some(scheme) => {
            let network = terms.network.as_deref().map(str::to_owned).unwrap_or_else(|| {
                if scheme == SCHEME_CARD_DELEGATION {
                    NETWORK_STRIPE.to_owned()
                } else {
                    seller.plans.default_network().to_owned()
                }
            });
            (scheme.to_string(), network)
        }
        None => {
            let resolved = seller.plans.resolve(&seller.facilitator, offer.plan_id).await;
            let network =
                terms.network.as_deref().map_or_else(|| resolved.network.to_string(), str::to_owned);
            (resolved.scheme.to_string(), network)
        }
    };
    let mut builder = EnvelopeBuilder::new(offer.plan_id, network)
        .scheme(scheme)
        .url(terms.resource.as_deref().unwrap_or(host.path()))
        .http_verb(host.method());
    if let Some(agent) = offer.agent_id {
        builder = builder.agent_id(agent);
    }
    if let Some(description) = &terms.description {
        builder = builder.description(description.as_ref());
    }
    if let Some(mime_type) = &terms.mime_type {
        builder = builder.mime_type(mime_type.as_ref());
    }
    builder.build()
}

/// The access token of the request: the first configured header with a value,
/// checked before any facilitator call (size, characters, base64 JSON shape), and
/// whether it may be single-use (see [`AccessToken::may_be_single_use`]). A token found
/// well-formed before is taken from the [`WellFormed`] cache without checking it again.
pub(crate) fn read_token(seller: &Seller, host: &impl Host) -> Result<(AccessToken, bool), PaymentError> {
    for (index, name) in seller.token_headers.iter().enumerate() {
        let mut values = host.token_header(index);
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err(PaymentProblem::MalformedToken(format!(
                "more than one `{name}` header; send exactly one"
            ))
            .into());
        }
        if value.is_empty() {
            continue;
        }
        if value.len() > MAX_HEADER_LEN {
            return Err(PaymentProblem::MalformedToken(format!(
                "the token is {} bytes long; at most {MAX_HEADER_LEN} are accepted",
                value.len()
            ))
            .into());
        }
        if let Some(known) = seller.well_formed.get(value) {
            return Ok(known);
        }
        let raw = std::str::from_utf8(value)
            .ok()
            .filter(|s| s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
            .ok_or_else(|| {
                PaymentProblem::MalformedToken("the token contains non-ASCII or control characters".into())
            })?
            .trim();
        if raw.is_empty() {
            continue;
        }
        // Only the outer form is checked here (base64 of a JSON object); the facilitator
        // judges the rest, so a payload shape this crate does not know is never refused.
        // `JsonShape` reads the JSON as `serde_json::Value` does (same errors) without
        // building it.
        let decoded: JsonShape = decode_json_header(raw)
            .map_err(|e| PaymentProblem::MalformedToken(format!("the token is not base64 JSON ({e})")))?;
        if !decoded.is_object() {
            return Err(
                PaymentProblem::MalformedToken("the token is not an x402 payment payload".into()).into()
            );
        }
        let token = AccessToken::new(raw);
        let may_be_single_use = token.may_be_single_use();
        seller.well_formed.insert(raw, may_be_single_use);
        return Ok((token, may_be_single_use));
    }
    let header = seller.token_headers.first().map_or("payment-signature", String::as_str);
    Err(PaymentProblem::MissingToken { header: header.to_owned() }.into())
}

/// Refuses a misconfigured route (an unset `env("VAR")`, a credits function that
/// panicked), with the log line.
pub(crate) fn misconfigured(path: &str, error: ConfigError) -> Refusal {
    tracing::error!(path, error = %crate::error::Report(&error), "paid route misconfigured");
    Refusal::Failed(PaymentProblem::Config(error).into())
}
