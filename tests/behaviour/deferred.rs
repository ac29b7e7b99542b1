//! Deferred settlement over real HTTP, both forms: the answer goes out with a pending
//! receipt and the settlement runs in the background, exactly once (the ledger
//! reconciled call by call over thousands of calls from many buyers); a failed one
//! suspends its payer from deferred service, recorded in the journal and told to the
//! hook; the bound on each payer's unsettled credits holds at every step of generated
//! schedules, on one instance and on two sharing Redis; `drain` waits for what is in
//! flight and says what it left.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::future::join_all;
use nvm_runtime::client::PaymentOutcome;
use nvm_runtime::error::ConfigErrorKind;
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::store::RedisStore;
use nvm_runtime::wire::SettleResponse;
use nvm_runtime::{
    DeferredSettlement, PaymentMiddleware, Payments, PaymentsBuilder, PendingSettlement, PendingSettlements,
    Resolution, RouteConfig, SettlePoint, SettlementStatus,
};
use nvm_tests::{
    CONTENT, Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, Form, RedisServer, TestServer, http, payments_for,
    receipt_field, serve,
};
use proptest::prelude::*;

/// `POST /deferred`: the `#[paid]` form, settled in the background.
#[actix_web::post("/deferred")]
#[nvm_runtime::paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2, settle = "deferred")]
async fn deferred_content() -> HttpResponse {
    HttpResponse::Ok().body(CONTENT)
}

/// The credits a request asks for in its `x-credits` header (1 without one).
fn asked(req: &HttpRequest) -> u64 {
    req.headers().get("x-credits").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1)
}

/// Both forms: `POST /deferred` (`#[paid]`, 2 credits) and `POST /mw/deferred` (a
/// middleware route priced by `x-credits`).
fn routes(payments: Payments) -> impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static {
    move |cfg: &mut web::ServiceConfig| {
        let table = PaymentMiddleware::new(payments.clone()).route(
            "POST /mw/deferred",
            RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(asked).settle(SettlePoint::Deferred),
        );
        let scope = web::scope("/mw")
            .wrap(table)
            .route("/deferred", web::post().to(|| async { HttpResponse::Ok().body(CONTENT) }));
        cfg.service(deferred_content).service(scope);
    }
}

/// A deferring seller on `local` with both forms' routes: its journal at `journal`,
/// `deferred` on, and whatever else `configure` sets.
fn seller(
    local: &LocalFacilitator,
    journal: &Journal,
    deferred: DeferredSettlement,
    configure: impl FnOnce(PaymentsBuilder) -> PaymentsBuilder,
) -> (TestServer, Payments) {
    let builder = payments_for(local).pending_settlements(journal.open()).deferred_settlement(deferred);
    let payments = configure(builder).build().expect("a deferring seller's configuration");
    (serve(Some(payments.clone()), routes(payments.clone())), payments)
}

fn path(form: Form) -> &'static str {
    match form {
        Form::Macro => "/deferred",
        Form::Middleware => "/mw/deferred",
    }
}

/// A journal file of its own, removed when dropped.
struct Journal(PathBuf);

impl Journal {
    fn new(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("nvm-deferred-{}-{name}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Journal(dir.join("pending.jsonl"))
    }

    fn open(&self) -> PendingSettlements {
        PendingSettlements::file(&self.0).expect("journal")
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A buyer: its key, address and (reusable) token.
struct Buyer {
    address: String,
    token: String,
}

async fn buyer(local: &LocalFacilitator, credits: u64) -> Buyer {
    let (key, address) = local.add_subscriber(DEMO_PLAN_ID, credits);
    let token = nvm_tests::mint_with(local, &key, DEMO_PLAN_ID, Some(DEMO_AGENT_ID), None).await;
    Buyer { address, token }
}

/// One paid call: its status, receipt and body.
struct Answer {
    status: u16,
    receipt: Option<SettleResponse>,
    body: String,
}

impl Answer {
    fn deferred(&self) -> bool {
        self.receipt.as_ref().is_some_and(|r| receipt_field(r, "settlement") == "deferred")
    }

    /// The agent request id the receipt names.
    fn request_id(&self) -> String {
        let receipt = self.receipt.as_ref().expect("a receipt");
        receipt_field(receipt, "agentRequestId").as_str().expect("agentRequestId").to_owned()
    }
}

async fn call(server: &TestServer, form: Form, token: &str, credits: u64) -> Answer {
    let response = http()
        .post(server.at(path(form)))
        .header("payment-signature", token)
        .header("x-credits", credits.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let receipt = nvm_tests::receipt(&response);
    let body = response.text().await.expect("body");
    Answer { status, receipt, body }
}

#[actix_web::test]
async fn deferred_calls_are_settled_exactly_once_over_thousands_of_calls_both_forms() {
    let local = LocalFacilitator::start().unwrap();
    let journal = Journal::new("exactly-once");
    let (server, payments) =
        seller(&local, &journal, DeferredSettlement::new().max_exposure(u64::MAX), |builder| builder);
    const BUYERS: usize = 20;
    const CALLS: usize = 50;
    let mut buyers = Vec::new();
    for _ in 0..BUYERS {
        buyers.push(buyer(&local, 10_000).await);
    }
    let before = local.total_burned();
    let mut answers = Vec::new();
    for form in Form::BOTH {
        // Every buyer at once, each sending its calls one after the other.
        let rounds = buyers.iter().map(|buyer| {
            let server = &server;
            async move {
                let mut answers = Vec::new();
                for _ in 0..CALLS {
                    answers.push(call(server, form, &buyer.token, 2).await);
                }
                answers
            }
        });
        for (buyer, mine) in buyers.iter().zip(join_all(rounds).await) {
            for answer in mine {
                assert_eq!(answer.status, 200, "{form:?}: {}", answer.body);
                assert_eq!(answer.body, CONTENT);
                assert!(answer.deferred(), "{form:?}: every answer is deferred within an unbounded exposure");
                let receipt = answer.receipt.as_ref().unwrap();
                assert!(!receipt.success, "a deferred receipt does not claim a settlement");
                assert_eq!(receipt.error_reason.as_deref(), Some("settlement_pending"));
                assert_eq!(receipt_field(receipt, "amount"), "2");
                assert!(receipt.payer.as_deref().unwrap().eq_ignore_ascii_case(&buyer.address));
                answers.push((buyer.address.clone(), answer.request_id()));
            }
        }
    }
    assert_eq!(payments.drain(Duration::from_secs(30)).await, 0, "every deferred settlement ends");
    let calls = 2 * BUYERS * CALLS;
    assert_eq!(answers.len(), calls);
    let mut ids = std::collections::HashSet::new();
    for (_, id) in &answers {
        assert!(ids.insert(id.clone()), "one request id per call");
        assert_eq!(local.burned_for(id), Some(2), "call {id} burned its price exactly once");
    }
    assert_eq!(local.total_burned() - before, 2 * calls as u64, "nothing else was burned");
    for buyer in &buyers {
        assert_eq!(local.balance(DEMO_PLAN_ID, &buyer.address), 10_000 - 4 * CALLS as u64);
    }
    assert!(journal.open().list(SettlementStatus::Unknown).await.unwrap().is_empty(), "no unknown outcome");
    assert_eq!(Calls::of(&local).settle, calls as u64, "one settle call per call, never a second");
}

#[actix_web::test]
async fn a_deferred_call_retried_with_its_key_is_replayed_not_settled_again() {
    let local = LocalFacilitator::start().unwrap();
    let journal = Journal::new("replay");
    let (server, payments) = seller(&local, &journal, DeferredSettlement::new(), |builder| builder);
    let buyer = buyer(&local, 100).await;
    let send = || {
        http()
            .post(server.at("/deferred"))
            .header("payment-signature", &buyer.token)
            .header("idempotency-key", "deferred-once")
            .send()
    };
    let first = send().await.unwrap();
    let first_receipt = nvm_tests::receipt(&first).unwrap();
    assert_eq!(receipt_field(&first_receipt, "settlement"), "deferred");
    assert_eq!(payments.drain(Duration::from_secs(10)).await, 0);
    let again = send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(nvm_tests::receipt(&again).unwrap(), first_receipt, "the same receipt, replayed");
    assert_eq!(payments.drain(Duration::from_secs(10)).await, 0);
    assert_eq!(local.balance(DEMO_PLAN_ID, &buyer.address), 98, "charged once");
    assert_eq!(Calls::of(&local).settle, 1);
}

#[actix_web::test]
async fn the_paying_client_reports_a_deferred_settlement() {
    let local = LocalFacilitator::start().unwrap();
    let journal = Journal::new("client");
    let (server, payments) = seller(&local, &journal, DeferredSettlement::new(), |builder| builder);
    let client = nvm_tests::paying_client(&local);
    let paid = client.send(client.http().post(server.at("/deferred"))).await.unwrap();
    let PaymentOutcome::Deferred(receipt) = &paid.outcome else {
        panic!("expected a deferred outcome, got {:?}", paid.outcome);
    };
    let pending_id = receipt.pending_id().expect("the record's id");
    assert_eq!(receipt_field(receipt, "pendingSettlementId"), pending_id);
    assert!(!paid.outcome.must_not_pay_again(), "the answer was delivered");
    assert_eq!(paid.response.text().await.unwrap(), CONTENT);
    assert_eq!(payments.drain(Duration::from_secs(10)).await, 0);
    assert_eq!(local.burned_for(pending_id), Some(2));
}

#[actix_web::test]
async fn a_failed_deferred_settlement_suspends_its_payer_until_resumed_both_forms() {
    for form in Form::BOTH {
        let local = LocalFacilitator::start().unwrap();
        let journal = Journal::new("failed");
        let failures: Arc<Mutex<Vec<(PendingSettlement, String)>>> = Arc::default();
        let told = Arc::clone(&failures);
        let (server, payments) = seller(&local, &journal, DeferredSettlement::new(), |builder| {
            builder.on_deferred_failure(move |record, reason| {
                told.lock().unwrap().push((record.clone(), reason.to_owned()));
            })
        });
        let buyer = buyer(&local, 100).await;
        let other = buyer_for_other(&local).await;
        local.inject_times(Endpoint::Settle, Fault::SettleFailure("insufficient_balance".into()), 1);

        let first = call(&server, form, &buyer.token, 2).await;
        assert_eq!(first.status, 200);
        assert!(first.deferred(), "{form:?}: served deferred before anything failed");
        assert_eq!(payments.drain(Duration::from_secs(10)).await, 0);
        let id = first.receipt.as_ref().unwrap().pending_id().unwrap().to_owned();
        assert_eq!(local.burned_for(&first.request_id()), None, "the failed settlement burned nothing");

        // Recorded: the hook, the journal, the suspension.
        let told = failures.lock().unwrap().clone();
        assert_eq!(told.len(), 1, "{form:?}: the hook is told once");
        assert_eq!(told[0].0.id, id);
        assert!(told[0].1.contains("insufficient_balance"), "{}", told[0].1);
        let (_, status) = journal.open().get(&id).await.unwrap().expect("the record stays in the journal");
        assert_eq!(status, SettlementStatus::Resolved(Resolution::NotBurned));
        let why = payments.deferred_suspension(&buyer.address).await.unwrap().expect("suspended");
        assert!(why.contains(&id) && why.contains("insufficient_balance"), "{why}");

        // Suspended: settled before the answer, with a real receipt.
        let second = call(&server, form, &buyer.token, 2).await;
        assert_eq!(second.status, 200);
        assert!(!second.deferred(), "{form:?}: a suspended payer is settled synchronously");
        assert!(second.receipt.as_ref().unwrap().success);
        assert_eq!(local.balance(DEMO_PLAN_ID, &buyer.address), 98, "burned before the answer");
        // Another payer is still served deferred.
        assert!(call(&server, form, &other.token, 2).await.deferred());

        // Resumed by the seller: deferred again.
        assert!(payments.resume_deferred(&buyer.address).await.unwrap());
        assert!(!payments.resume_deferred(&buyer.address).await.unwrap());
        let third = call(&server, form, &buyer.token, 2).await;
        assert!(third.deferred(), "{form:?}: served deferred once resumed");
        assert_eq!(payments.drain(Duration::from_secs(10)).await, 0);
        assert_eq!(local.balance(DEMO_PLAN_ID, &buyer.address), 96);
    }
}

async fn buyer_for_other(local: &LocalFacilitator) -> Buyer {
    buyer(local, 100).await
}

#[actix_web::test]
async fn drain_waits_for_settlements_in_flight_and_says_what_it_left() {
    let local = LocalFacilitator::start().unwrap();
    let journal = Journal::new("drain");
    let (server, payments) =
        seller(&local, &journal, DeferredSettlement::new().max_exposure(100), |builder| builder);
    let buyer = buyer(&local, 100).await;
    local.inject(Endpoint::Settle, Fault::Delay(Duration::from_millis(400)));
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let answer = call(&server, Form::Macro, &buyer.token, 2).await;
        assert!(answer.deferred());
    }
    assert!(started.elapsed() < Duration::from_millis(400), "the answers did not wait for their settlements");
    assert_eq!(local.balance(DEMO_PLAN_ID, &buyer.address), 100, "nothing settled yet");
    assert_eq!(payments.drain(Duration::from_secs(10)).await, 0);
    assert_eq!(local.balance(DEMO_PLAN_ID, &buyer.address), 94, "drained: all three settled");

    // A settlement that hangs past the drain's limit is left, written down as settling.
    local.clear_faults();
    local.inject(Endpoint::Settle, Fault::Delay(Duration::from_secs(2)));
    let answer = call(&server, Form::Macro, &buyer.token, 2).await;
    assert!(answer.deferred());
    assert_eq!(payments.drain(Duration::from_millis(200)).await, 1, "one left in flight");
    let id = answer.receipt.as_ref().unwrap().pending_id().unwrap().to_owned();
    let (_, status) = journal.open().get(&id).await.unwrap().expect("written down");
    assert_eq!(status, SettlementStatus::Settling);
    assert_eq!(payments.drain(Duration::from_secs(10)).await, 0);
    assert_eq!(local.burned_for(&answer.request_id()), Some(2));
}

#[actix_web::test]
async fn deferred_settlement_needs_a_durable_journal() {
    let local = LocalFacilitator::start().unwrap();
    let error = payments_for(&local).deferred_settlement(DeferredSettlement::new()).build().unwrap_err();
    assert_eq!(error.kind(), ConfigErrorKind::Journal, "{error}");
    assert!(error.to_string().contains("PendingSettlements::file"), "says what to write: {error}");
}

/// One step of a schedule: a batch of calls sent at once, each `(instance, payer,
/// credits)`; a call of 2 credits goes to the `#[paid]` route, the others to the
/// middleware's (priced by `x-credits`).
type Batch = Vec<(usize, usize, u64)>;

fn batches(instances: usize) -> impl Strategy<Value = Vec<Batch>> {
    prop::collection::vec(prop::collection::vec((0..instances, 0..3usize, 1..=4u64), 1..6), 1..5)
}

/// The form a call of `credits` is sent to.
fn form_for(credits: u64) -> Form {
    if credits == 2 { Form::Macro } else { Form::Middleware }
}

/// The bound each schedule runs under.
const BOUND: u64 = 6;

/// Runs `schedule` against `servers` (one or two instances of one seller), the
/// facilitator's settle slowed so that settlements overlap the calls, and checks after
/// every answer that no payer has more than [`BOUND`] credits delivered and not burned
/// (from the ledger); at the end, after draining, every call burned its price once.
async fn exposure_schedule(
    local: &LocalFacilitator,
    servers: &[(TestServer, Payments)],
    schedule: Vec<Batch>,
) {
    let mut buyers = Vec::new();
    for _ in 0..3 {
        buyers.push(buyer(local, 10_000).await);
    }
    local.inject(Endpoint::Settle, Fault::Delay(Duration::from_millis(150)));
    // Per payer: the deferred calls answered (request id, credits).
    let mut delivered: HashMap<usize, Vec<(String, u64)>> = HashMap::new();
    let mut charged = 0;
    for (step, batch) in schedule.into_iter().enumerate() {
        let payers: std::collections::HashSet<usize> = batch.iter().map(|&(_, payer, _)| payer).collect();
        let calls = batch.iter().map(|&(instance, payer, credits)| {
            let server = &servers[instance % servers.len()].0;
            let token = buyers[payer].token.clone();
            async move { (payer, credits, call(server, form_for(credits), &token, credits).await) }
        });
        for (payer, credits, answer) in join_all(calls).await {
            assert_eq!(answer.status, 200, "{}", answer.body);
            charged += credits;
            if answer.deferred() {
                delivered.entry(payer).or_default().push((answer.request_id(), credits));
            }
            let unsettled: u64 = delivered
                .get(&payer)
                .into_iter()
                .flatten()
                .filter(|(id, _)| local.burned_for(id).is_none())
                .map(|(_, credits)| credits)
                .sum::<u64>();
            assert!(
                unsettled <= BOUND,
                "payer {payer} has {unsettled} credits delivered unsettled (bound {BOUND})"
            );
        }
        if step == 0 {
            // Nothing outstanding yet: each payer of the first batch got at least one
            // call deferred (every price is within the bound).
            for payer in payers {
                assert!(
                    delivered.contains_key(&payer),
                    "payer {payer}'s first calls were all settled synchronously"
                );
            }
        }
    }
    for (_, payments) in servers {
        assert_eq!(payments.drain(Duration::from_secs(10)).await, 0);
    }
    for calls in delivered.values() {
        for (id, credits) in calls {
            assert_eq!(local.burned_for(id), Some(*credits), "deferred call {id} burned once");
        }
    }
    let spent: u64 = buyers.iter().map(|b| 10_000 - local.balance(DEMO_PLAN_ID, &b.address)).sum();
    assert_eq!(spent, charged, "every call, deferred or not, burned its price once");
    local.clear_faults();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// One instance, its bound in memory.
    #[test]
    fn the_exposure_bound_holds_on_one_instance(schedule in batches(1)) {
        actix_web::rt::System::new().block_on(async move {
            let local = LocalFacilitator::start().unwrap();
            let journal = Journal::new("bound-memory");
            let instance = seller(&local, &journal, DeferredSettlement::new().max_exposure(BOUND), |builder| builder);
            exposure_schedule(&local, &[instance], schedule).await;
        });
    }

    /// Two instances sharing the bound on one real Redis, each call sent to either.
    #[test]
    fn the_exposure_bound_holds_across_two_instances_on_redis(schedule in batches(2)) {
        actix_web::rt::System::new().block_on(async move {
            let redis = RedisServer::start();
            let local = LocalFacilitator::start().unwrap();
            let journals = [Journal::new("bound-redis-a"), Journal::new("bound-redis-b")];
            let instances = journals
                .iter()
                .map(|journal| {
                    let shared = RedisStore::open(&redis.url()).unwrap();
                    let deferred = DeferredSettlement::new().max_exposure(BOUND).shared(shared);
                    seller(&local, journal, deferred, |builder| builder)
                })
                .collect::<Vec<_>>();
            exposure_schedule(&local, &instances, schedule).await;
        });
    }
}

/// With the verification cache and deferred settlement together, a returning buyer's
/// call makes no facilitator call before its answer: with the facilitator 300 ms away,
/// the first call waits for one round trip (verify), the next ones for none, and each is
/// settled afterwards, once.
#[actix_web::test]
async fn a_returning_buyer_waits_for_no_facilitator_call_with_the_cache_and_deferred_settlement() {
    const LATENCY: Duration = Duration::from_millis(300);
    let local = LocalFacilitator::start().unwrap();
    local.set_latency(LATENCY);
    let journal = Journal::new("returning");
    let (server, payments) =
        seller(&local, &journal, DeferredSettlement::new().max_exposure(100), |builder| {
            builder.verification_cache(Duration::from_secs(30))
        });
    let buyer = buyer(&local, 100).await;
    for form in Form::BOTH {
        // The first call verifies (the plan's metadata is fetched once, too).
        let first = call(&server, form, &buyer.token, 2).await;
        assert!(first.deferred(), "{form:?}");
        for n in 0..3 {
            let verifies = Calls::of(&local).verify;
            let started = std::time::Instant::now();
            let answer = call(&server, form, &buyer.token, 2).await;
            let took = started.elapsed();
            assert!(answer.deferred(), "{form:?} #{n}: {}", answer.body);
            assert_eq!(Calls::of(&local).verify, verifies, "{form:?} #{n}: served from the cache");
            assert!(
                took < LATENCY,
                "{form:?} #{n}: {took:?}: the answer waited for a facilitator round trip"
            );
        }
    }
    assert_eq!(payments.drain(Duration::from_secs(10)).await, 0);
    assert_eq!(local.balance(DEMO_PLAN_ID, &buyer.address), 100 - 2 * 8, "every call settled once");
}
