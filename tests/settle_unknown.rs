//! Unknown settlement outcomes: the settle call was sent and its answer was lost (a
//! timeout, a broken connection, a 5xx, an unreadable body), or it was refused.
//!
//! Every cause is injected with the local facilitator's faults, for a reusable (v2)
//! and a single-use (v3) token, on both forms (`#[paid]`, `PaymentMiddleware`), with and
//! without the verification cache; the ledger, what the buyer got and the seller's
//! pending-settlement journal must agree:
//!
//! - the buyer gets the content exactly when the credits were burned, burned once;
//! - credits burned without the content always leave a record naming the request;
//! - a refusal burns nothing, delivers nothing and records nothing;
//! - a single-use token's unknown outcome is resolved by settling once more (the content
//!   is delivered), a reusable token is never settled twice (recorded instead).
//!
//! A scripted facilitator covers the answers the local one does not give on a second
//! settle: `BCK.X402.0059` (the first settle went through) and a third, different answer.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::wire::SettleResponse;
use nvm_runtime::{
    PaymentMiddleware, Payments, PaymentsBuilder, PendingSettlement, PendingSettlements, Resolution,
    RouteConfig, SettlementStatus,
};
use nvm_tests::{
    CONTENT, CREDITS, Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, Form, TestServer, envelope, http,
    middleware_content, paid_content, payments_for, receipt, receipt_field, serve,
};

/// The bound on each facilitator call.
const TIMEOUT: Duration = Duration::from_millis(300);
/// A settle answered after the seller gave up.
const LATE: Duration = Duration::from_millis(700);
fn routes(payments: Payments) -> impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static {
    move |cfg: &mut web::ServiceConfig| {
        let table = PaymentMiddleware::new(payments.clone())
            .route("POST /mw/content", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(CREDITS));
        let scope = web::scope("/mw").wrap(table).route("/content", web::post().to(middleware_content));
        cfg.service(paid_content).service(scope);
    }
}

/// What a fault does to a settle call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The facilitator answered a refusal: nothing burned.
    Refused,
    /// The answer did not come back; the call was not carried out.
    UnknownNotBurned,
    /// The answer did not come back; the call was carried out (burned).
    UnknownBurned,
}

fn causes() -> Vec<(&'static str, Fault, Kind)> {
    vec![
        ("success:false", Fault::SettleFailure("insufficient_balance".into()), Kind::Refused),
        ("409 with a code", Fault::Status(409), Kind::Refused),
        ("no answer (hang)", Fault::Hang, Kind::UnknownNotBurned),
        ("500", Fault::Status(500), Kind::UnknownNotBurned),
        ("502 html", Fault::Html502, Kind::UnknownNotBurned),
        ("503", Fault::Status(503), Kind::UnknownNotBurned),
        ("504", Fault::Status(504), Kind::UnknownNotBurned),
        ("truncated JSON", Fault::TruncatedJson, Kind::UnknownNotBurned),
        ("connection closed", Fault::Disconnect, Kind::UnknownNotBurned),
        ("answer lost after the burn", Fault::LoseAnswer, Kind::UnknownBurned),
        ("answer after the timeout", Fault::Delay(LATE), Kind::UnknownBurned),
    ]
}

/// One row of the closing table.
struct Row {
    label: String,
    burned: u64,
    delivered: bool,
    recorded: usize,
}

/// Runs one case on a fresh rig and checks that ledger, buyer and journal agree.
async fn run(cause: &str, fault: &Fault, kind: Kind, single_use: bool, form: Form, cache: bool) -> Row {
    let label = format!(
        "{cause} | {} | {form:?} | cache {}",
        if single_use { "v3 single-use" } else { "v2 reusable" },
        if cache { "on" } else { "off" }
    );
    let local = LocalFacilitator::start().unwrap();
    let journal = PendingSettlements::in_memory();
    let hooked = Arc::new(Mutex::new(Vec::<PendingSettlement>::new()));
    let seen = hooked.clone();
    let mut builder = payments_for(&local)
        .timeout(TIMEOUT)
        .pending_settlements(journal.clone())
        .on_settlement_unknown(move |_, record| seen.lock().unwrap().push(record.clone()));
    if cache {
        builder = builder.verification_cache(Duration::from_secs(10));
    }
    let payments = builder.build().unwrap();
    let server = serve(Some(payments.clone()), routes(payments));
    let address = local.subscriber_address().to_owned();
    let balance = || local.balance(DEMO_PLAN_ID, &address);

    let token = if single_use {
        local.mint_token(MintOptions::new().single_use().resource(form.path()).http_verb("POST"))
    } else {
        local.mint_token(MintOptions::new())
    };
    if cache && !single_use {
        // Warm the cache: the faulted request's verification then comes from it (and its
        // settle carries no agent request id).
        let warm = send(&server, form, &token).await;
        assert_eq!(warm.0, 200, "{label}: warm-up");
    }
    let (before, calls_before, runs_before) = (balance(), Calls::of(&local), server.runs.count());
    local.inject_times(Endpoint::Settle, fault.clone(), 1);
    let (status, body, got_receipt, got_envelope) = send(&server, form, &token).await;
    if matches!(fault, Fault::Delay(_)) {
        tokio::time::sleep(LATE + Duration::from_millis(300)).await;
    }
    let burned = before - balance();
    let settles = Calls::of(&local).settle - calls_before.settle;
    let runs = server.runs.count() - runs_before;
    let delivered = status == 200 && body == CONTENT;
    let records = journal.list(SettlementStatus::Unknown).await.unwrap();
    let recorded = records.len();

    // The invariants, whatever the cause.
    assert_eq!(runs, 1, "{label}: the handler ran once");
    assert!(burned == 0 || burned == CREDITS, "{label}: burned {burned}");
    if delivered {
        assert_eq!(burned, CREDITS, "{label}: delivered, so burned once");
        assert!(got_receipt.as_ref().is_some_and(|r| r.success), "{label}: a successful receipt");
    } else {
        assert!(!body.contains(CONTENT), "{label}: the content leaked");
    }
    if burned > 0 && !delivered {
        assert_eq!(recorded, 1, "{label}: burned without the content, so recorded");
    }
    assert_eq!(*hooked.lock().unwrap(), records, "{label}: the hook saw every record");

    // What each kind of cause gives.
    match (kind, single_use) {
        (Kind::Refused, _) => {
            assert_eq!((status, burned, recorded, settles), (402, 0, 0, 1), "{label}: {body}");
            assert!(got_envelope, "{label}: nothing was burned: the envelope to pay again");
        }
        (Kind::UnknownNotBurned | Kind::UnknownBurned, true) => {
            assert!(delivered, "{label}: resolved by a second settle: {status} {body}");
            assert_eq!((settles, recorded), (2, 0), "{label}: settled once more, nothing to record");
        }
        (_, false) => {
            let want_burn = if kind == Kind::UnknownBurned { CREDITS } else { 0 };
            assert_eq!((status, burned, recorded, settles), (402, want_burn, 1, 1), "{label}: {body}");
            assert!(!got_envelope, "{label}: no envelope to pay again with");
            let receipt = got_receipt.expect("a receipt");
            assert_eq!(receipt.error_reason.as_deref(), Some("settlement_outcome_unknown"), "{label}");
            let record = &records[0];
            assert!(body.contains(&record.id), "{label}: the buyer gets the record's id: {body}");
            assert_eq!(
                (
                    record.plan_id.as_str(),
                    record.method.as_str(),
                    record.path.as_str(),
                    record.amount.as_str()
                ),
                (DEMO_PLAN_ID, "POST", form.path(), "2"),
                "{label}"
            );
            assert_eq!(record.payer.as_deref(), Some(address.as_str()), "{label}");
            assert_eq!(record.agent_request_id.is_some(), !cache, "{label}: a cached verification has none");
            let line = serde_json::to_string(record).unwrap();
            assert!(!line.contains(&token), "{label}: the record holds the token");
        }
    }
    Row { label, burned, delivered, recorded }
}

async fn send(server: &TestServer, form: Form, token: &str) -> (u16, String, Option<SettleResponse>, bool) {
    let response =
        http().post(server.at(form.path())).header("payment-signature", token).send().await.unwrap();
    let (status, got_receipt, got_envelope) =
        (response.status().as_u16(), receipt(&response), envelope(&response).is_some());
    (status, response.text().await.unwrap(), got_receipt, got_envelope)
}

#[actix_web::test]
async fn ledger_buyer_and_records_agree_for_every_cause() {
    let mut rows = Vec::new();
    for (cause, fault, kind) in causes() {
        for single_use in [false, true] {
            for form in Form::BOTH {
                for cache in [false, true] {
                    rows.push(run(cause, &fault, kind, single_use, form, cache).await);
                }
            }
        }
    }
    eprintln!("cause | token | form | cache: burned, delivered, recorded");
    for row in &rows {
        eprintln!(
            "{}: burned {}, delivered {}, recorded {}",
            row.label, row.burned, row.delivered, row.recorded
        );
    }
    assert_eq!(rows.len(), 11 * 8);
}

/// A journal file survives the server: records are listed after a restart and closed
/// by the seller once reconciled.
#[actix_web::test]
async fn a_file_journal_keeps_records_for_the_seller_to_close() {
    let path = std::env::temp_dir().join(format!(
        "nvm-pending-{}-{:?}.jsonl",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_file(&path);
    let local = LocalFacilitator::start().unwrap();
    let payments = payments_for(&local)
        .timeout(TIMEOUT)
        .pending_settlements(PendingSettlements::file(&path).unwrap())
        .build()
        .unwrap();
    let server = serve(Some(payments.clone()), routes(payments.clone()));
    let token = local.mint_token(MintOptions::new());
    local.inject_times(Endpoint::Settle, Fault::LoseAnswer, 1);
    let (status, body, _, _) = send(&server, Form::Macro, &token).await;
    assert_eq!(status, 402, "{body}");
    drop(server);

    let reopened = PendingSettlements::file(&path).unwrap();
    let open = reopened.list(SettlementStatus::Unknown).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(payments.pending_settlements().list(SettlementStatus::Unknown).await.unwrap(), open);
    // The seller looks the request up with the facilitator (the ledger burned it), then
    // closes the record.
    assert_eq!(local.total_burned(), CREDITS);
    assert!(reopened.close(&open[0].id, Resolution::Burned).await.unwrap());
    assert!(
        PendingSettlements::file(&path).unwrap().list(SettlementStatus::Unknown).await.unwrap().is_empty()
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&token), "the journal holds the token");
    std::fs::remove_file(&path).unwrap();
}

/// A facilitator whose settle answers follow a script, for the second-settle answers
/// the local facilitator never gives.
struct Scripted {
    url: String,
    settles: Arc<AtomicUsize>,
    _server: actix_web::dev::ServerHandle,
}

#[derive(Clone)]
struct Script(Arc<Vec<(u16, &'static str)>>, Arc<AtomicUsize>);

async fn scripted_verify() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "isValid": true, "payer": "0xpayer", "agentRequestId": "req-1",
        "agentRequest": {"agentRequestId": "req-1"}
    }))
}

async fn scripted_settle(script: web::Data<Script>) -> HttpResponse {
    let call = script.1.fetch_add(1, Ordering::SeqCst);
    let (status, body) = script.0.get(call).copied().unwrap_or((500, "{}"));
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .content_type("application/json")
        .body(body)
}

fn scripted(answers: Vec<(u16, &'static str)>) -> Scripted {
    let settles = Arc::new(AtomicUsize::new(0));
    let script = Script(Arc::new(answers), settles.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(script.clone()))
            .route("/api/v1/x402/verify", web::post().to(scripted_verify))
            .route("/api/v1/x402/settle", web::post().to(scripted_settle))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Scripted { url, settles, _server: handle }
}

fn scripted_payments(facilitator: &Scripted, local: &LocalFacilitator) -> PaymentsBuilder {
    payments_for(local).backend_url(facilitator.url.clone()).timeout(TIMEOUT)
}

/// Both forms, paid through the scripted facilitator (its plan lookups fail: the
/// default scheme is advertised).
fn scripted_server(builder: PaymentsBuilder) -> TestServer {
    let payments = builder.build().unwrap();
    serve(Some(payments.clone()), routes(payments))
}

const SPENT: &str = r#"{"code":"BCK.X402.0059","message":"access token already used","httpStatus":400}"#;
const DECLINED: &str = r#"{"success":false,"errorReason":"insufficient_balance","transaction":""}"#;

#[actix_web::test]
async fn a_second_settle_answering_spent_confirms_the_first_and_a_third_answer_withholds() {
    // The token's shape is all the scripted facilitator needs: a real single-use token.
    let local = LocalFacilitator::start().unwrap();
    for form in Form::BOTH {
        let single_use =
            local.mint_token(MintOptions::new().single_use().resource(form.path()).http_verb("POST"));
        let reusable = local.mint_token(MintOptions::new());
        // Unknown, then spent: the first settle went through; delivered, marked confirmed.
        let facilitator = scripted(vec![(504, "{}"), (400, SPENT)]);
        let server = scripted_server(scripted_payments(&facilitator, &local));
        let (status, body, got, _) = send(&server, form, &single_use).await;
        assert_eq!((status, body.as_str()), (200, CONTENT), "{form:?}");
        let got = got.expect("receipt");
        assert!(got.success, "{form:?}: {got:?}");
        assert_eq!(receipt_field(&got, "confirmedAfterUnknown"), true, "{form:?}");
        assert_eq!(got.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), CREDITS, "{form:?}");
        assert_eq!(facilitator.settles.load(Ordering::SeqCst), 2, "{form:?}");

        // Unknown, then declined: a third, different answer withholds (402, envelope).
        let facilitator = scripted(vec![(503, "{}"), (200, DECLINED)]);
        let server = scripted_server(scripted_payments(&facilitator, &local));
        let (status, body, got, got_envelope) = send(&server, form, &single_use).await;
        assert_eq!(status, 402, "{form:?}: {body}");
        assert!(got_envelope && !got.expect("receipt").success, "{form:?}");
        assert_eq!(facilitator.settles.load(Ordering::SeqCst), 2, "{form:?}");

        // Unknown twice: recorded.
        let facilitator = scripted(vec![(503, "{}"), (502, "<html>")]);
        let journal = PendingSettlements::in_memory();
        let server =
            scripted_server(scripted_payments(&facilitator, &local).pending_settlements(journal.clone()));
        let (status, body, _, got_envelope) = send(&server, form, &single_use).await;
        assert_eq!((status, got_envelope), (402, false), "{form:?}: {body}");
        assert_eq!(journal.list(SettlementStatus::Unknown).await.unwrap().len(), 1, "{form:?}");
        assert_eq!(
            journal.list(SettlementStatus::Unknown).await.unwrap()[0].agent_request_id.as_deref(),
            Some("req-1")
        );

        // A reusable token is never settled twice.
        let facilitator = scripted(vec![(503, "{}"), (200, DECLINED)]);
        let server = scripted_server(scripted_payments(&facilitator, &local));
        let (status, body, _, _) = send(&server, form, &reusable).await;
        assert_eq!(status, 402, "{form:?}: {body}");
        assert_eq!(facilitator.settles.load(Ordering::SeqCst), 1, "{form:?}: settled once");
    }
}

/// At start-up, the journal's records left open are counted, and a line cut short by a
/// crash (or damaged) is reported with its file and line, the records around it kept.
#[actix_web::test]
async fn the_start_up_report_counts_open_records_and_names_a_cut_line() {
    use std::io::Write as _;
    let local = LocalFacilitator::start().unwrap();
    let path = std::env::temp_dir().join(format!("nvm-startup-journal-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let record = r#"{"event":"pending","id":"p-1","planId":"7","method":"POST","path":"/ask","amount":"2","recordedAt":1,"tokenHash":"0a0b0c0d0e0f"}"#;
    let mut file = std::fs::File::create(&path).unwrap();
    write!(file, "{record}\n{}", &record[..40]).unwrap();
    drop(file);
    let journal = PendingSettlements::file(&path).unwrap();
    let payments = payments_for(&local).pending_settlements(journal).build().unwrap();

    let logs = nvm_tests::CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let guard = tracing::subscriber::set_default(subscriber);
    payments.prepare().await.unwrap();
    drop(guard);
    let logs = logs.text();
    assert!(logs.contains(&format!("{}:2: not a pending-settlement record", path.display())), "{logs}");
    assert!(logs.contains("1 settlement(s) of unknown outcome to resolve"), "{logs}");
    assert_eq!(payments.pending_settlements().list(SettlementStatus::Unknown).await.unwrap().len(), 1);
    std::fs::remove_file(&path).unwrap();
}

/// With the idempotency store on Redis and no journal of its own, the instances share
/// one journal there: a settlement of unknown outcome on one instance is listed, and
/// closed, from another; a record never holds the token.
#[actix_web::test]
async fn two_instances_on_one_redis_share_the_pending_settlements() {
    use nvm_runtime::Idempotency;
    use nvm_runtime::store::RedisStore;
    let redis = nvm_tests::RedisServer::start();
    let local = LocalFacilitator::start().unwrap();
    let instance = || {
        let store = RedisStore::open(&redis.url()).unwrap();
        payments_for(&local).timeout(TIMEOUT).idempotency(Idempotency::with_store(store)).build().unwrap()
    };
    let (a, b) = (instance(), instance());
    let journal = format!("{:?}", a.pending_settlements());
    assert!(journal.contains("redis at "), "the store's journal, on Redis: {journal}");
    let server = serve(Some(a.clone()), routes(a.clone()));
    let token = local.mint_token(MintOptions::new());
    local.inject_times(Endpoint::Settle, Fault::LoseAnswer, 1);
    let (status, body, _, _) = send(&server, Form::Macro, &token).await;
    assert_eq!(status, 402, "{body}");

    let seen_from_b = b.pending_settlements().list(SettlementStatus::Unknown).await.unwrap();
    assert_eq!(seen_from_b.len(), 1, "{seen_from_b:?}");
    assert_eq!(seen_from_b, a.pending_settlements().list(SettlementStatus::Unknown).await.unwrap());
    assert_eq!(seen_from_b[0].amount, CREDITS.to_string());
    assert!(!format!("{seen_from_b:?}").contains(&token), "a record never holds the token");
    assert!(b.pending_settlements().close(&seen_from_b[0].id, Resolution::Burned).await.unwrap());
    assert!(
        !a.pending_settlements().close(&seen_from_b[0].id, Resolution::Burned).await.unwrap(),
        "closed once"
    );
    assert!(a.pending_settlements().list(SettlementStatus::Unknown).await.unwrap().is_empty());
}

/// Where the journal (and the idempotency records) of a resolution case live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Journal {
    Memory,
    File,
    Redis,
}

/// A paid call with an `Idempotency-Key`, as the buyer's client sends it.
async fn keyed(
    server: &TestServer,
    form: Form,
    token: &str,
    key: &str,
) -> (u16, String, Option<SettleResponse>, bool, bool) {
    let response = http()
        .post(server.at(form.path()))
        .header("payment-signature", token)
        .header("idempotency-key", key)
        .send()
        .await
        .unwrap();
    let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    let retry_after = response.headers().get("retry-after").is_some();
    let (status, got_receipt, got_envelope) =
        (response.status().as_u16(), receipt(&response), envelope(&response).is_some());
    assert!(!(got_envelope && status != 402), "an envelope on a {status}");
    (status, response.text().await.unwrap(), got_receipt, replayed, retry_after && !got_envelope)
}

/// The seller of one resolution case: its configuration on `journal`.
fn resolution_seller(
    local: &LocalFacilitator,
    journal: Journal,
    redis: Option<&nvm_tests::RedisServer>,
    prefix: &str,
    path: &std::path::Path,
) -> Payments {
    let builder = payments_for(local).timeout(TIMEOUT).pending_retry_after(Duration::from_secs(7));
    match journal {
        Journal::Memory => builder.pending_settlements(PendingSettlements::in_memory()),
        Journal::File => builder.pending_settlements(PendingSettlements::file(path).unwrap()),
        Journal::Redis => {
            let store = nvm_runtime::store::RedisStore::open(&redis.unwrap().url()).unwrap().prefix(prefix);
            builder.idempotency(nvm_runtime::Idempotency::with_store(store))
        }
    }
    .build()
    .unwrap()
}

/// One case: a reusable token's settle answer lost (or late) on a keyed call; the buyer
/// retries, is told to wait, the seller resolves the record from the ledger, and the
/// buyer's next retry ends with the answer, the price burned once.
async fn resolve_case(
    journal: Journal,
    form: Form,
    cause: &'static str,
    fault: Fault,
    kind: Kind,
    redis: Option<Arc<nvm_tests::RedisServer>>,
) {
    let label = format!("{journal:?} | {form:?} | {cause}");
    let local = LocalFacilitator::start().unwrap();
    let prefix = format!("case-{}:", nvm_runtime_id());
    let path = std::env::temp_dir().join(format!("nvm-resolve-{}.jsonl", nvm_runtime_id()));
    let payments = resolution_seller(&local, journal, redis.as_deref(), &prefix, &path);
    let server = serve(Some(payments.clone()), routes(payments.clone()));
    let address = local.subscriber_address().to_owned();
    let balance = || local.balance(DEMO_PLAN_ID, &address);
    let token = local.mint_token(MintOptions::new());
    let start = balance();

    local.inject_times(Endpoint::Settle, fault.clone(), 1);
    let (status, body, first_receipt, _, _) = keyed(&server, form, &token, "call-1").await;
    assert_eq!(status, 402, "{label}: {body}");
    let first_receipt = first_receipt.expect("a receipt");
    let id = first_receipt.pending_id().unwrap().to_owned();
    if matches!(fault, Fault::Delay(_)) {
        tokio::time::sleep(LATE + Duration::from_millis(300)).await;
    }
    let burned = start - balance();
    assert_eq!(burned, if kind == Kind::UnknownBurned { CREDITS } else { 0 }, "{label}");

    // Retried while open: told to wait, with the record's id; nothing runs, nothing burns.
    let runs = server.runs.count();
    let (status, body, pending, replayed, retry_after) = keyed(&server, form, &token, "call-1").await;
    assert_eq!((status, replayed, retry_after), (409, false, true), "{label}: {body}");
    let pending = pending.expect("a receipt");
    assert_eq!(pending.error_reason.as_deref(), Some("settlement_pending"), "{label}");
    assert_eq!(
        (pending.pending_id(), receipt_field(&pending, "retryAfter").as_u64()),
        (Some(id.as_str()), Some(7))
    );
    assert!(body.contains(&id) && !body.contains(CONTENT), "{label}: {body}");
    assert_eq!((server.runs.count(), start - balance()), (runs, burned), "{label}");

    // The seller resolves it from the ledger; with Redis, from another instance.
    let other = match journal {
        Journal::Redis => resolution_seller(&local, journal, redis.as_deref(), &prefix, &path),
        _ => payments.clone(),
    };
    let (record, status) = other.pending_settlements().get(&id).await.unwrap().expect("the record");
    assert_eq!(status, nvm_runtime::SettlementStatus::Unknown, "{label}: visible to the seller");
    let agent_request = record.agent_request_id.clone().expect("an agent request id");
    let resolution = match local.burned_for(&agent_request) {
        Some(_) => Resolution::Burned,
        None => Resolution::NotBurned,
    };
    assert_eq!(resolution == Resolution::Burned, burned > 0, "{label}: the ledger's word");
    assert!(other.pending_settlements().close(&id, resolution).await.unwrap(), "{label}");
    assert!(!other.pending_settlements().close(&id, resolution).await.unwrap(), "{label}: closed once");

    // The buyer's next retry: the answer, burned exactly once in all.
    let (status, body, got, replayed, _) = keyed(&server, form, &token, "call-1").await;
    assert_eq!((status, body.as_str()), (200, CONTENT), "{label}");
    let got = got.expect("a receipt");
    assert!(got.success, "{label}: {got:?}");
    assert_eq!(start - balance(), CREDITS, "{label}: the price, burned once");
    if resolution == Resolution::Burned {
        assert!(
            replayed && receipt_field(&got, "confirmedAfterUnknown") == true,
            "{label}: the held answer, confirmed"
        );
        assert_eq!(server.runs.count(), runs, "{label}: the handler did not run again");
    } else {
        assert!(!replayed, "{label}: ran afresh, paid afresh");
        assert_eq!(server.runs.count(), runs + 1, "{label}");
    }
    // And again: the same answer, nothing more burned.
    let (status, body, _, replayed, _) = keyed(&server, form, &token, "call-1").await;
    assert_eq!((status, body.as_str(), replayed), (200, CONTENT, true), "{label}");
    assert_eq!(start - balance(), CREDITS, "{label}");
    let _ = std::fs::remove_file(&path);
}

/// A unique id for file names and key prefixes in this process.
fn nvm_runtime_id() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[actix_web::test]
async fn unknown_outcomes_end_with_the_answer_exactly_when_the_ledger_burned_it() {
    let redis = Arc::new(nvm_tests::RedisServer::start());
    let causes = [
        ("answer lost after the burn", Fault::LoseAnswer, Kind::UnknownBurned),
        ("answer after the timeout", Fault::Delay(LATE), Kind::UnknownBurned),
        ("503", Fault::Status(503), Kind::UnknownNotBurned),
        ("connection closed", Fault::Disconnect, Kind::UnknownNotBurned),
    ];
    let mut cases = Vec::new();
    for journal in [Journal::Memory, Journal::File, Journal::Redis] {
        for form in Form::BOTH {
            for (cause, fault, kind) in causes.clone() {
                let redis = (journal == Journal::Redis).then(|| Arc::clone(&redis));
                cases.push(actix_web::rt::spawn(resolve_case(journal, form, cause, fault, kind, redis)));
            }
        }
    }
    for case in cases {
        case.await.unwrap();
    }
}

/// With a resolver, the buyer's retry is resolved on the spot: no waiting.
#[actix_web::test]
async fn a_resolver_resolves_a_retry_on_the_spot() {
    for form in Form::BOTH {
        for (fault, kind) in
            [(Fault::LoseAnswer, Kind::UnknownBurned), (Fault::Status(503), Kind::UnknownNotBurned)]
        {
            let local = Arc::new(LocalFacilitator::start().unwrap());
            let ledger = Arc::clone(&local);
            let payments = payments_for(&local)
                .timeout(TIMEOUT)
                .settlement_resolver(move |record: PendingSettlement| {
                    let ledger = Arc::clone(&ledger);
                    async move {
                        let id = record.agent_request_id?;
                        Some(if ledger.burned_for(&id).is_some() {
                            Resolution::Burned
                        } else {
                            Resolution::NotBurned
                        })
                    }
                })
                .build()
                .unwrap();
            let server = serve(Some(payments.clone()), routes(payments.clone()));
            let token = local.mint_token(MintOptions::new());
            local.inject_times(Endpoint::Settle, fault, 1);
            assert_eq!(keyed(&server, form, &token, "k").await.0, 402);
            let (status, body, got, replayed, _) = keyed(&server, form, &token, "k").await;
            assert_eq!((status, body.as_str()), (200, CONTENT), "{form:?} {kind:?}");
            assert!(got.unwrap().success);
            assert_eq!(replayed, kind == Kind::UnknownBurned, "{form:?} {kind:?}");
            assert_eq!(local.total_burned(), CREDITS, "{form:?} {kind:?}: burned once");
            assert!(
                payments.pending_settlements().list(SettlementStatus::Unknown).await.unwrap().is_empty(),
                "closed by the resolver"
            );
        }
    }
}

/// A durable journal holds every settlement while its settle call is in flight, and
/// forgets it once answered; a journal that cannot be written stops the settlement
/// before any settle call (nothing burned, the answer withheld).
#[actix_web::test]
async fn settlements_are_written_ahead_and_an_unwritable_journal_settles_nothing() {
    for form in Form::BOTH {
        let local = LocalFacilitator::start().unwrap();
        let path = std::env::temp_dir().join(format!("nvm-ahead-{}.jsonl", nvm_runtime_id()));
        let journal = PendingSettlements::file(&path).unwrap();
        let payments =
            payments_for(&local).timeout(TIMEOUT).pending_settlements(journal.clone()).build().unwrap();
        let server = serve(Some(payments.clone()), routes(payments));
        let token = local.mint_token(MintOptions::new());
        local.inject_times(Endpoint::Settle, Fault::Delay(Duration::from_millis(200)), 1);
        let call = send(&server, form, &token);
        let watch = async {
            tokio::time::sleep(Duration::from_millis(120)).await;
            journal.list(SettlementStatus::Settling).await.unwrap()
        };
        let ((status, ..), in_flight) = tokio::join!(call, watch);
        assert_eq!(status, 200, "{form:?}");
        assert_eq!(in_flight.len(), 1, "{form:?}: written ahead of the settle call");
        assert_eq!((in_flight[0].amount.as_str(), in_flight[0].path.as_str()), ("2", form.path()));
        // Forgotten once answered (written without holding the answer back: soon after).
        let mut left = journal.list(SettlementStatus::Settling).await.unwrap();
        for _ in 0..50 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = journal.list(SettlementStatus::Settling).await.unwrap();
        }
        assert!(left.is_empty(), "{form:?}: forgotten once answered");
        assert!(journal.list(SettlementStatus::Unknown).await.unwrap().is_empty());
        let _ = std::fs::remove_file(&path);

        // /dev/full: every write fails (ENOSPC).
        let full = PendingSettlements::file("/dev/full").unwrap();
        let payments = payments_for(&local).pending_settlements(full).build().unwrap();
        let server = serve(Some(payments.clone()), routes(payments));
        let (before, settles) = (local.total_burned(), Calls::of(&local).settle);
        let (status, body, got, got_envelope) = send(&server, form, &token).await;
        assert_eq!((status, got_envelope), (402, true), "{form:?}: {body}");
        assert!(!body.contains(CONTENT));
        let reason = got.unwrap().error_reason.unwrap();
        assert!(reason.starts_with("settlement_not_attempted"), "{reason}");
        assert_eq!(
            (local.total_burned(), Calls::of(&local).settle),
            (before, settles),
            "{form:?}: no settle call"
        );
    }
}

/// The seller of the crash test, as a child process, killed when dropped.
struct Seller {
    child: std::process::Child,
    url: String,
}

impl Seller {
    /// Starts `nvm-test-seller` on `local` and the journal at `path`, and waits for it to
    /// listen (it recovers the journal first); `deferred`: every settlement deferred.
    fn start(local: &LocalFacilitator, path: &std::path::Path, deferred: bool) -> Self {
        use std::io::BufRead as _;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_nvm-test-seller"));
        if deferred {
            command.env("NVM_TEST_SELLER_DEFERRED", "1");
        }
        let mut child = command
            .env("NVM_API_KEY", local.builder_api_key())
            .env("NVM_ENVIRONMENT", "custom")
            .env("NVM_BACKEND_URL", local.backend_url())
            .env("NVM_PENDING_SETTLEMENTS", path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("nvm-test-seller starts");
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("the seller did not start: {line:?}"))
            .to_owned();
        Seller { child, url }
    }

    /// `SIGKILL`, and waits for it to be gone.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Seller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One paid call of the crash test, and whether its buyer holds the answer.
struct CrashCall {
    key: String,
    form: Form,
    token: String,
    answered: bool,
}

/// What one attempt of a call got: `Some(true)` the answer, `Some(false)` a refusal that
/// is not a request to pay (outcome unknown, still pending, in flight), `None` no answer.
async fn attempt(url: &str, call: &CrashCall) -> Option<bool> {
    let response = http()
        .post(format!("{url}{}", call.form.path()))
        .header("payment-signature", &call.token)
        .header("idempotency-key", &call.key)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let asks_payment = envelope(&response).is_some();
    let body = response.text().await.ok()?;
    match status {
        200 => {
            assert_eq!(body, CONTENT, "{}", call.key);
            Some(true)
        }
        402 | 409 if !asks_payment => Some(false),
        _ => panic!("{}: {status} {body} (a buyer of a paid call is never asked to pay again)", call.key),
    }
}

/// The seller killed (`SIGKILL`) at random moments, 100 times, while several buyers'
/// calls (reusable and single-use tokens, both forms) are verified, run and settled
/// (settle calls slowed so that kills land while they are in flight), and restarted on
/// the same journal each time. At the end, the operator resolves what the journal holds
/// from the ledger, the buyers retry what they did not get, and: every call is answered,
/// the ledger burned each call's price exactly once, and no record is left open.
#[actix_web::test]
async fn a_seller_killed_at_random_moments_loses_no_record_and_every_burn_is_delivered() {
    crash_test(100, false).await;
}

/// The same with every settlement deferred: the answers go out at once and the kills
/// land while settlements wait in the background or are in flight. The restarted seller
/// sends what was never sent, what was in flight is resolved as any unknown outcome, and
/// each call's price is burned exactly once, every call answered.
#[actix_web::test]
async fn a_deferring_seller_killed_at_random_moments_settles_or_records_every_deferred_call() {
    crash_test(60, true).await;
}

async fn crash_test(rounds: usize, deferred: bool) {
    let local = LocalFacilitator::start().unwrap();
    local.inject(Endpoint::Settle, Fault::Delay(Duration::from_millis(120)));
    let path = std::env::temp_dir().join(format!("nvm-crash-{}.jsonl", nvm_runtime_id()));
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let buyers: Vec<String> = (0..4).map(|_| local.add_subscriber(DEMO_PLAN_ID, 1_000_000).1).collect();
    let reusable: Vec<String> =
        buyers[..3].iter().map(|address| local.mint_token(MintOptions::new().subscriber(address))).collect();
    let mut calls: Vec<CrashCall> = Vec::new();
    let mut kills_in_settle = 0;
    for round in 0..rounds {
        let seller = Seller::start(&local, &path, deferred);
        // Three new calls, and up to three the buyers did not get yet.
        for n in 0..3 {
            let form = Form::BOTH[(round + n) % 2];
            let buyer = random(4) as usize;
            let token = match reusable.get(buyer) {
                Some(token) => token.clone(),
                None => local.mint_token(
                    MintOptions::new()
                        .subscriber(&buyers[buyer])
                        .single_use()
                        .resource(form.path())
                        .http_verb("POST"),
                ),
            };
            calls.push(CrashCall { key: format!("call-{round}-{n}"), form, token, answered: false });
        }
        let mut waiting: Vec<usize> = (calls.len() - 3..calls.len()).collect();
        let older: Vec<usize> = (0..calls.len() - 3).filter(|&i| !calls[i].answered).collect();
        for _ in 0..3.min(older.len()) {
            let pick = older[random(older.len() as u64) as usize];
            if !waiting.contains(&pick) {
                waiting.push(pick);
            }
        }
        let attempts: Vec<_> = waiting
            .iter()
            .map(|&i| {
                let (url, call) = (seller.url.clone(), CrashCall { ..clone_call(&calls[i]) });
                actix_web::rt::spawn(async move { attempt(&url, &call).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(random(250))).await;
        seller.kill();
        // Settlements written ahead and not answered: the kill landed while they were in flight.
        let in_settle = !PendingSettlements::file(&path)
            .unwrap()
            .list(SettlementStatus::Settling)
            .await
            .unwrap()
            .is_empty();
        for (&i, attempt) in waiting.iter().zip(attempts) {
            if attempt.await.unwrap() == Some(true) {
                calls[i].answered = true;
            }
        }
        kills_in_settle += usize::from(in_settle);
        if round % 10 == 9 {
            resolve_from_ledger(&local, &path, deferred).await;
        }
    }
    eprintln!(
        "crash test (deferred: {deferred}): {rounds} kills, {kills_in_settle} while settle calls were in flight, {} calls",
        calls.len()
    );
    assert!(
        kills_in_settle >= rounds / 5,
        "only {kills_in_settle} kills landed while settle calls were in flight"
    );

    // Restarted on the same journal: what was in flight is now of unknown outcome (or
    // resolved, for a single-use token); the operator resolves the rest from the ledger.
    let seller = Seller::start(&local, &path, deferred);
    let journal = PendingSettlements::file(&path).unwrap();
    assert!(journal.list(SettlementStatus::Settling).await.unwrap().is_empty(), "recovered at start-up");
    assert!(journal.unreadable_lines().await.unwrap().is_empty());
    resolve_from_ledger(&local, &path, deferred).await;
    for call in calls.iter_mut().filter(|call| !call.answered) {
        call.answered = attempt(&seller.url, call).await == Some(true);
        assert!(call.answered, "{}: resolved, so answered on retry", call.key);
    }
    let expected = CREDITS * calls.len() as u64;
    // Deferred settlements of the retried calls run after their answers: wait for them.
    let waited = std::time::Instant::now();
    while deferred && local.total_burned() < expected && waited.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(local.total_burned(), expected, "each call's price, burned exactly once");
    assert!(
        journal.list(SettlementStatus::Unknown).await.unwrap().is_empty()
            && journal.list(SettlementStatus::Settling).await.unwrap().is_empty()
    );
    drop(seller);
    let _ = std::fs::remove_file(&path);
}

/// The operator's resolution of every record of unknown outcome, from the ledger: closed
/// in the journal; for a deferring seller, through a resolver (a deferred call found not
/// burned was delivered: it is settled once more, not written off).
async fn resolve_from_ledger(local: &LocalFacilitator, path: &std::path::Path, deferred: bool) {
    if deferred {
        // What the ledger says of each open record, looked up now.
        let burned: std::collections::HashMap<String, bool> = PendingSettlements::file(path)
            .unwrap()
            .list(SettlementStatus::Unknown)
            .await
            .unwrap()
            .into_iter()
            .map(|record| {
                let id = record.agent_request_id.expect("an agent request id names the settlement");
                let burned = local.burned_for(&id).is_some();
                (record.id, burned)
            })
            .collect();
        let payments = payments_for(local)
            .pending_settlements(PendingSettlements::file(path).unwrap())
            .settlement_resolver(move |record: nvm_runtime::PendingSettlement| {
                let resolution = burned.get(&record.id).map(|&burned| match burned {
                    true => Resolution::Burned,
                    false => Resolution::NotBurned,
                });
                async move { resolution }
            })
            .build()
            .unwrap();
        let report = payments.resolve_pending().await.unwrap();
        assert_eq!(report.unknown, 0, "every record resolved: {report:?}");
        return;
    }
    let journal = PendingSettlements::file(path).unwrap();
    for record in journal.list(SettlementStatus::Unknown).await.unwrap() {
        let id = record.agent_request_id.as_deref().expect("an agent request id names the settlement");
        let resolution =
            if local.burned_for(id).is_some() { Resolution::Burned } else { Resolution::NotBurned };
        assert!(journal.close(&record.id, resolution).await.unwrap());
    }
}

fn clone_call(call: &CrashCall) -> CrashCall {
    CrashCall { key: call.key.clone(), form: call.form, token: call.token.clone(), answered: call.answered }
}

/// The buyer's side: `PayingClient` reports an unknown outcome, then collects the
/// answer with the call's key, waiting as told while the settlement is pending, once
/// the seller resolves it; paid once in all, for both forms.
#[actix_web::test]
async fn the_paying_client_collects_the_answer_once_the_seller_resolves() {
    use nvm_runtime::client::{PayingClient, PaymentOutcome, Subscriber};
    for form in Form::BOTH {
        let local = LocalFacilitator::start().unwrap();
        let payments = payments_for(&local)
            .timeout(TIMEOUT)
            .pending_retry_after(Duration::from_secs(1))
            .build()
            .unwrap();
        let server = serve(Some(payments.clone()), routes(payments.clone()));
        let subscriber = Subscriber::builder()
            .api_key(local.subscriber_api_key())
            .backend_url(local.backend_url())
            .build()
            .unwrap();
        let client = PayingClient::new(subscriber);
        let url = server.at(form.path());
        local.inject_times(Endpoint::Settle, Fault::LoseAnswer, 1);
        let paid = client.send(client.http().post(&url)).await.unwrap();
        let PaymentOutcome::OutcomeUnknown(receipt) = &paid.outcome else {
            panic!("{form:?}: {:?}", paid.outcome)
        };
        let pending_id = receipt.pending_id().expect("the record's id").to_owned();
        assert!(paid.outcome.must_not_pay_again());
        // Pending while the seller has not resolved it.
        let still =
            client.collect(client.http().post(&url), &paid.idempotency_key, Duration::ZERO).await.unwrap();
        assert!(
            matches!(&still.outcome, PaymentOutcome::Pending { receipt, retry_after }
                if receipt.pending_id() == Some(pending_id.as_str()) && *retry_after == Duration::from_secs(1)),
            "{form:?}: {:?}",
            still.outcome
        );
        let (journal, id) = (payments.pending_settlements().clone(), pending_id.clone());
        actix_web::rt::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            journal.close(&id, Resolution::Burned).await.unwrap();
        });
        let collected = client
            .collect(client.http().post(&url), &paid.idempotency_key, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(collected.replayed(), "{form:?}");
        let PaymentOutcome::Settled(receipt) = &collected.outcome else {
            panic!("{form:?}: {:?}", collected.outcome)
        };
        assert_eq!(receipt_field(receipt, "confirmedAfterUnknown"), true);
        assert_eq!(collected.response.text().await.unwrap(), CONTENT);
        assert_eq!(local.total_burned(), CREDITS, "{form:?}: paid once");
    }
}
