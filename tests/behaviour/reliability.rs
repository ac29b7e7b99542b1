//! Facilitator faults over real HTTP: the local facilitator is told to hang, answer
//! slowly, answer 4xx/5xx, an HTML gateway page, truncated JSON, a refusal, or to drop
//! the connection, on one endpoint at a time. Each case runs against a `#[paid]`
//! handler and a `PaymentMiddleware` route (one shared table, both forms) and checks
//! the behaviour contract (the README's behaviour table):
//!
//! - the status and body the table promises (500 when verification is impossible, 402
//!   with the reason when the payment is refused, 402 with a failed receipt when the
//!   settlement fails, the paid content withheld);
//! - fail closed: no 2xx without a successful settlement and its burn in the ledger;
//! - the handler never runs without a successful verification (counted by a hook);
//! - the exact number of verify and settle calls (verify may be retried once on a
//!   transient failure, settle never);
//! - every request ends within the configured facilitator timeout plus a margin;
//! - while a call hangs, the server keeps serving other requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
use nvm_runtime::client::{ClientError, PayingClient, Subscriber};
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::{PaymentMiddleware, Payments, PaymentsBuilder, RouteConfig, SettlementStatus};
use nvm_tests::{
    CONTENT, CREDITS, Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, Form, Runs, TestServer, envelope, http,
    middleware_content, paid_content, payments_for, receipt, serve,
};

/// The bound on each facilitator call in these tests.
const TIMEOUT: Duration = Duration::from_millis(300);
/// What a request may take beyond one facilitator timeout: the other, healthy calls
/// of the flow and the scheduling of a debug build on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_millis(700);

const PANIC_MESSAGE: &str = "reliability: deliberate panic behind the middleware";

async fn middleware_panic(runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    panic!("{PANIC_MESSAGE}")
}

/// Keeps the deliberate panic out of the output; any other panic is reported as usual.
fn silence_deliberate_panic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info.payload().downcast_ref::<String>().map_or("", String::as_str);
            if !message.contains(PANIC_MESSAGE) {
                default(info);
            }
        }));
    });
}

fn routes(payments: Payments) -> impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static {
    move |cfg: &mut web::ServiceConfig| {
        let table = PaymentMiddleware::new(payments.clone())
            .route("POST /mw/content", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(CREDITS))
            .route("POST /mw/panic", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(CREDITS));
        let scope = web::scope("/mw")
            .wrap(table)
            .route("/content", web::post().to(middleware_content))
            .route("/panic", web::post().to(middleware_panic));
        cfg.service(paid_content).service(scope).route("/free", web::get().to(|| async { "free" }));
    }
}

/// A local facilitator and a server with both forms, counting successful verifications.
struct Rig {
    local: LocalFacilitator,
    server: TestServer,
    verified: Arc<AtomicUsize>,
}

impl Rig {
    fn new(configure: impl FnOnce(PaymentsBuilder) -> PaymentsBuilder) -> Rig {
        let local = LocalFacilitator::start().expect("local facilitator");
        Self::aimed_at(local, configure)
    }

    fn aimed_at(local: LocalFacilitator, configure: impl FnOnce(PaymentsBuilder) -> PaymentsBuilder) -> Rig {
        let verified = Arc::new(AtomicUsize::new(0));
        let counter = verified.clone();
        let builder = payments_for(&local).timeout(TIMEOUT).after_verify(move |_, verification| {
            assert!(verification.is_valid, "after_verify sees only valid verifications");
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let payments = configure(builder).build().expect("payments");
        let server = serve(Some(payments.clone()), routes(payments));
        Rig { local, server, verified }
    }

    fn balance(&self) -> u64 {
        self.local.balance(DEMO_PLAN_ID, self.local.subscriber_address())
    }

    fn token(&self) -> String {
        // Minted in-process: the permissions counter stays at 0.
        self.local.mint_token(MintOptions::new())
    }
}

/// What the contract promises for a case.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 200 with the content and a successful receipt; `verify_calls` verify calls.
    Served { verify_calls: u64 },
    /// 500 "Payment verification failed" whose message contains `message`; the handler
    /// does not run; `verify_calls` verify calls, no settle.
    VerifyFailed { verify_calls: u64, message: &'static str },
    /// 402 whose message (and envelope `error`) is `reason`; the handler does not run.
    Refused { reason: &'static str },
    /// The handler ran, the settlement failed: 402 with the envelope and a failed
    /// receipt whose `errorReason` contains `reason`, the content withheld, one settle
    /// call, nothing burned.
    SettleFailed { reason: &'static str },
    /// The handler ran, the settle call's answer did not come back (a reusable token is
    /// never settled twice): 402 without an envelope, with an "outcome unknown" receipt naming the pending
    /// settlement, the content withheld, one settle call, nothing burned (the local
    /// facilitator's faults carry nothing out but a lost answer).
    SettleUnknown,
}

/// One row of the table: a fault on one endpoint (for `times` calls, or until cleared).
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    endpoint: Endpoint,
    fault: Fault,
    times: Option<u64>,
    expect: Expect,
}

fn case(name: &'static str, endpoint: Endpoint, fault: Fault, expect: Expect) -> Case {
    Case { name, endpoint, fault, times: None, expect }
}

const UNAVAILABLE: &str = "the facilitator is unavailable";

/// The shared table of cases, for both forms.
fn cases() -> Vec<Case> {
    use Endpoint::{Plans, Settle, Verify};
    use Expect::*;
    let ms = Duration::from_millis;
    vec![
        // Verify: the handler must not run unless a verification succeeded.
        case(
            "verify hangs",
            Verify,
            Fault::Hang,
            VerifyFailed { verify_calls: 1, message: "no answer within" },
        ),
        case("verify slow", Verify, Fault::Delay(ms(100)), Served { verify_calls: 1 }),
        case("verify 500", Verify, Fault::Status(500), VerifyFailed { verify_calls: 1, message: "HTTP 500" }),
        case("verify 503", Verify, Fault::Status(503), VerifyFailed { verify_calls: 2, message: "HTTP 503" }),
        case(
            "verify html 502",
            Verify,
            Fault::Html502,
            VerifyFailed { verify_calls: 2, message: "502 Bad Gateway" },
        ),
        case(
            "verify truncated json",
            Verify,
            Fault::TruncatedJson,
            VerifyFailed { verify_calls: 1, message: "not the expected JSON" },
        ),
        case(
            "verify disconnects",
            Verify,
            Fault::Disconnect,
            VerifyFailed { verify_calls: 2, message: UNAVAILABLE },
        ),
        case(
            "verify 401 (our key refused)",
            Verify,
            Fault::Status(401),
            VerifyFailed { verify_calls: 1, message: "refused the API key" },
        ),
        case(
            "verify 400 (payment refused)",
            Verify,
            Fault::Status(400),
            Refused { reason: "BCK.FAULT.0400: injected fault: HTTP 400" },
        ),
        case(
            "verify isValid:false",
            Verify,
            Fault::SettleFailure("insufficient_balance".into()),
            Refused { reason: "insufficient_balance" },
        ),
        Case {
            times: Some(1),
            ..case("verify 502 once: retried", Verify, Fault::Html502, Served { verify_calls: 2 })
        },
        Case {
            times: Some(1),
            ..case("verify disconnects once: retried", Verify, Fault::Disconnect, Served { verify_calls: 2 })
        },
        // Settle: the handler ran; the content is withheld, the settle never retried.
        case("settle hangs", Settle, Fault::Hang, SettleUnknown),
        case("settle slow", Settle, Fault::Delay(ms(100)), Served { verify_calls: 1 }),
        case("settle 500", Settle, Fault::Status(500), SettleUnknown),
        case("settle html 502", Settle, Fault::Html502, SettleUnknown),
        case("settle truncated json", Settle, Fault::TruncatedJson, SettleUnknown),
        case("settle disconnects", Settle, Fault::Disconnect, SettleUnknown),
        case("settle 409 (refused)", Settle, Fault::Status(409), SettleFailed { reason: "BCK.FAULT.0409" }),
        case(
            "settle success:false",
            Settle,
            Fault::SettleFailure("insufficient_balance".into()),
            SettleFailed { reason: "insufficient_balance" },
        ),
        // Plan metadata: any failure advertises the default scheme; payments go on.
        case("plans hang", Plans, Fault::Hang, Served { verify_calls: 1 }),
        case("plans slow", Plans, Fault::Delay(ms(100)), Served { verify_calls: 1 }),
        case("plans 500", Plans, Fault::Status(500), Served { verify_calls: 1 }),
        case("plans html 502", Plans, Fault::Html502, Served { verify_calls: 1 }),
        case("plans truncated json", Plans, Fault::TruncatedJson, Served { verify_calls: 1 }),
        case("plans disconnects", Plans, Fault::Disconnect, Served { verify_calls: 1 }),
    ]
}

/// Waits (at most 2 s) until `endpoint` received a call.
async fn until_called(local: &LocalFacilitator, endpoint: Endpoint) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while local.calls(endpoint) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What one request of a case gave.
struct Outcome {
    status: u16,
    elapsed: Duration,
    receipt: Option<nvm_runtime::wire::SettleResponse>,
    envelope: Option<nvm_runtime::wire::PaymentRequired>,
    body: String,
}

async fn send(url: String, token: String) -> Outcome {
    let started = Instant::now();
    let response =
        http().post(url).header("payment-signature", token).send().await.expect("the server answers");
    let (status, receipt, envelope) = (response.status().as_u16(), receipt(&response), envelope(&response));
    let body = response.text().await.expect("a body");
    Outcome { status, elapsed: started.elapsed(), receipt, envelope, body }
}

/// Runs one case against one form on a fresh rig and checks every promise.
async fn run(case: &Case, form: Form) -> Duration {
    let label = format!("{} [{form:?}]", case.name);
    let rig = Rig::new(|b| b);
    let before = rig.balance();
    match case.times {
        Some(times) => rig.local.inject_times(case.endpoint, case.fault.clone(), times),
        None => rig.local.inject(case.endpoint, case.fault.clone()),
    }
    let request = actix_web::rt::spawn(send(rig.server.at(form.path()), rig.token()));
    if case.fault == Fault::Hang {
        // While the call hangs, the server serves other requests.
        until_called(&rig.local, case.endpoint).await;
        let started = Instant::now();
        let free = http().get(rig.server.at("/free")).send().await.expect("free route");
        assert_eq!(free.status(), 200, "{label}: the free route answers during the hang");
        assert!(!request.is_finished(), "{label}: the faulted request is still pending");
        assert!(started.elapsed() < TIMEOUT, "{label}: the free route answered in {:?}", started.elapsed());
    }
    let outcome = request.await.expect("request task");
    let calls = Calls::of(&rig.local);
    let runs = rig.server.runs.count();
    let verified = rig.verified.load(Ordering::SeqCst);
    let burned = rig.local.total_burned();

    // Every request ends within one facilitator timeout (plus the healthy calls).
    assert!(outcome.elapsed < TIMEOUT + MARGIN, "{label}: took {:?}", outcome.elapsed);
    // The handler never runs without a successful verification.
    assert!(runs <= verified, "{label}: {runs} runs for {verified} successful verifications");
    // Fail closed: a 2xx always comes with a successful settlement and its burn.
    if (200..300).contains(&outcome.status) {
        let receipt = outcome.receipt.as_ref().unwrap_or_else(|| panic!("{label}: a 2xx without a receipt"));
        assert!(receipt.success, "{label}: a 2xx with a failed receipt: {receipt:?}");
        assert_eq!(
            burned,
            receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
            "{label}: burn and receipt disagree"
        );
    }
    assert_eq!(before - rig.balance(), burned, "{label}: the balance moved by the burn only");

    match case.expect {
        Expect::Served { verify_calls } => {
            assert_eq!(outcome.status, 200, "{label}: {}", outcome.body);
            assert_eq!(outcome.body, CONTENT, "{label}");
            assert_eq!(
                outcome.receipt.as_ref().map(|r| r
                    .credits_redeemed
                    .as_ref()
                    .and_then(|c| c.as_u64())
                    .unwrap_or(0)),
                Some(CREDITS),
                "{label}"
            );
            assert_eq!((calls.verify, calls.settle), (verify_calls, 1), "{label}: calls");
            assert_eq!((runs, burned), (1, CREDITS), "{label}: runs and burn");
        }
        Expect::VerifyFailed { verify_calls, message } => {
            assert_eq!(outcome.status, 500, "{label}: {}", outcome.body);
            let body: serde_json::Value = serde_json::from_str(&outcome.body).expect("a JSON error");
            assert_eq!(body["error"], "Payment verification failed", "{label}");
            let text = body["message"].as_str().unwrap_or_default();
            assert!(text.contains(message), "{label}: {text:?} lacks {message:?}");
            assert!(outcome.receipt.is_none(), "{label}: no receipt");
            assert_eq!((calls.verify, calls.settle), (verify_calls, 0), "{label}: calls");
            assert_eq!((runs, burned), (0, 0), "{label}: runs and burn");
        }
        Expect::Refused { reason } => {
            assert_eq!(outcome.status, 402, "{label}: {}", outcome.body);
            let body: serde_json::Value = serde_json::from_str(&outcome.body).expect("a JSON error");
            assert_eq!(body["message"], reason, "{label}");
            let envelope = outcome.envelope.as_ref().expect("the envelope comes with the 402");
            assert_eq!(envelope.error.as_deref(), Some(reason), "{label}");
            assert_eq!((calls.verify, calls.settle), (1, 0), "{label}: calls");
            assert_eq!((runs, burned), (0, 0), "{label}: runs and burn");
        }
        Expect::SettleFailed { reason } => {
            assert_eq!(outcome.status, 402, "{label}: {}", outcome.body);
            assert!(!outcome.body.contains(CONTENT), "{label}: the content leaked");
            assert!(outcome.body.contains("settlement failed"), "{label}: {}", outcome.body);
            let receipt = outcome.receipt.as_ref().expect("the failed receipt comes with the 402");
            assert!(!receipt.success, "{label}");
            let why = receipt.error_reason.as_deref().unwrap_or_default();
            assert!(why.contains(reason), "{label}: errorReason {why:?} lacks {reason:?}");
            assert!(outcome.envelope.is_some(), "{label}: the envelope comes with the 402");
            assert_eq!((calls.verify, calls.settle), (1, 1), "{label}: calls (settle never retried)");
            assert_eq!((runs, burned), (1, 0), "{label}: runs and burn");
        }
        Expect::SettleUnknown => assert_unknown(&label, &outcome, calls, runs, burned),
    }
    outcome.elapsed
}

/// The "outcome unknown" answer: 402 without an envelope to pay again with, the content withheld, a receipt naming the
/// pending settlement; the handler ran once, settle was called once.
fn assert_unknown(label: &str, outcome: &Outcome, calls: Calls, runs: usize, burned: u64) {
    assert_eq!(outcome.status, 402, "{label}: {}", outcome.body);
    assert!(outcome.envelope.is_none(), "{label}: no envelope to pay again with");
    assert!(!outcome.body.contains(CONTENT), "{label}: the content leaked");
    assert!(outcome.body.contains("do not pay again"), "{label}: {}", outcome.body);
    let receipt = outcome.receipt.as_ref().expect("the receipt comes with the 402");
    assert_eq!(receipt.error_reason.as_deref(), Some("settlement_outcome_unknown"), "{label}");
    let id = receipt.pending_id().unwrap_or_default();
    assert!(!id.is_empty() && outcome.body.contains(id), "{label}: the record's id is named");
    assert_eq!((calls.verify, calls.settle), (1, 1), "{label}: calls (a reusable token is settled once)");
    assert_eq!((runs, burned), (1, 0), "{label}: runs and burn");
}

/// Runs every case of `endpoint` in both forms, and prints the slowest request.
async fn run_table(endpoint: Endpoint) {
    let mut slowest = (Duration::ZERO, String::new());
    let mut count = 0;
    for case in cases().iter().filter(|c| c.endpoint == endpoint) {
        for form in Form::BOTH {
            let elapsed = run(case, form).await;
            count += 1;
            if elapsed > slowest.0 {
                slowest = (elapsed, format!("{} [{form:?}]", case.name));
            }
        }
    }
    assert!(count > 0);
    eprintln!("{endpoint:?} faults: {count} requests, slowest {:?} ({})", slowest.0, slowest.1);
}

#[actix_web::test]
async fn verify_faults_fail_closed_in_both_forms() {
    run_table(Endpoint::Verify).await;
}

#[actix_web::test]
async fn settle_faults_withhold_the_content_in_both_forms() {
    run_table(Endpoint::Settle).await;
}

#[actix_web::test]
async fn plan_metadata_faults_fall_back_to_the_default_scheme() {
    run_table(Endpoint::Plans).await;
}

#[actix_web::test]
async fn a_facilitator_that_refuses_connections_gives_500_in_both_forms() {
    let local = LocalFacilitator::start().expect("local facilitator");
    let token = local.mint_token(MintOptions::new());
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let rig = Rig::aimed_at(local, |b| b.backend_url(dead_url));
    for form in Form::BOTH {
        let outcome = send(rig.server.at(form.path()), token.clone()).await;
        assert_eq!(outcome.status, 500, "{form:?}: {}", outcome.body);
        assert!(outcome.body.contains(UNAVAILABLE), "{form:?}: {}", outcome.body);
        assert!(outcome.elapsed < TIMEOUT + MARGIN, "{form:?}: took {:?}", outcome.elapsed);
    }
    assert_eq!(rig.server.runs.count(), 0);
    assert_eq!(Calls::of(&rig.local), Calls::default(), "nothing reached the real facilitator");
}

/// The one failure the seller cannot see through: the facilitator burned the credits
/// and the answer was lost on the way back. With a reusable token the seller does not
/// settle again (it could burn twice): it records a pending settlement, answers 402
/// "outcome unknown, do not pay again" and withholds the content. The ledger shows the
/// burn, which is what the reconciliation of the record finds.
#[actix_web::test]
async fn an_answer_lost_after_the_burn_is_a_failed_settlement_never_retried() {
    for form in Form::BOTH {
        let rig = Rig::new(|b| b);
        rig.local.inject(Endpoint::Settle, Fault::LoseAnswer);
        let outcome = send(rig.server.at(form.path()), rig.token()).await;
        let label = format!("{form:?}");
        assert_unknown(&label, &outcome, Calls::of(&rig.local), rig.server.runs.count(), 0);
        assert_eq!(rig.local.total_burned(), CREDITS, "{form:?}: the facilitator did burn");
    }
}

/// A settle answered after the timeout: the seller gave up (402, outcome unknown,
/// recorded) and never retried. The local facilitator (actix-web) keeps working on a
/// request whose client closed the connection, so the late settle burns: the ledger
/// shows the price burned once, and the seller's record names exactly that settlement
/// (its agent request id is the one the ledger burned for). Both forms.
#[actix_web::test]
async fn a_settle_answered_after_the_timeout_is_a_failed_settlement() {
    for form in Form::BOTH {
        let journal = nvm_runtime::PendingSettlements::in_memory();
        let rig = Rig::new(|b| b.pending_settlements(journal.clone()));
        let delay = TIMEOUT * 2;
        rig.local.inject(Endpoint::Settle, Fault::Delay(delay));
        let outcome = send(rig.server.at(form.path()), rig.token()).await;
        assert_eq!(outcome.status, 402, "{form:?}: {}", outcome.body);
        assert!(outcome.elapsed < TIMEOUT + MARGIN, "{form:?}: took {:?}", outcome.elapsed);
        assert!(outcome.body.contains("no answer within"), "{form:?}: {}", outcome.body);
        let receipt = outcome.receipt.expect("receipt");
        assert_eq!(receipt.error_reason.as_deref(), Some("settlement_outcome_unknown"));
        // The late settle burns on the facilitator once its delay is over.
        let deadline = Instant::now() + delay + Duration::from_secs(2);
        while rig.local.total_burned() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(rig.local.total_burned(), CREDITS, "{form:?}: the late settle burned the price once");
        assert_eq!(Calls::of(&rig.local).settle, 1, "{form:?}: never retried");
        let records = journal.list(SettlementStatus::Unknown).await.unwrap();
        assert_eq!(records.len(), 1, "{form:?}: recorded");
        let id = records[0].agent_request_id.as_deref().expect("the agent request id");
        assert_eq!(rig.local.burned_for(id), Some(CREDITS), "{form:?}: the record names the burn");
        assert_eq!(receipt.pending_id(), Some(records[0].id.as_str()), "{form:?}");
    }
}

#[actix_web::test]
async fn delivering_on_settle_failure_is_the_only_way_to_a_2xx_without_a_settlement() {
    for form in Form::BOTH {
        let rig = Rig::new(|b| b.deliver_on_settle_failure(true));
        rig.local.inject(Endpoint::Settle, Fault::Status(500));
        let outcome = send(rig.server.at(form.path()), rig.token()).await;
        assert_eq!(outcome.status, 200, "{form:?}");
        assert_eq!(outcome.body, CONTENT);
        let receipt = outcome.receipt.expect("the failed receipt goes with the content");
        assert!(!receipt.success);
        assert_eq!(rig.local.total_burned(), 0);
    }
}

#[actix_web::test]
async fn a_cleared_fault_releases_the_hang_and_the_flow_recovers() {
    let rig = Rig::new(|b| b);
    rig.local.inject(Endpoint::Verify, Fault::Hang);
    let hung = actix_web::rt::spawn(send(rig.server.at("/paid"), rig.token()));
    until_called(&rig.local, Endpoint::Verify).await;
    rig.local.clear_faults();
    let outcome = hung.await.expect("task");
    // The released call answers 504 (nothing done), which the seller treats as a
    // transient failure: its one verify retry then succeeds, well within the timeout.
    assert_eq!(outcome.status, 200, "{}", outcome.body);
    assert!(outcome.receipt.is_some_and(|r| r.success));
    assert_eq!(Calls::of(&rig.local).verify, 2);
    for form in Form::BOTH {
        let outcome = send(rig.server.at(form.path()), rig.token()).await;
        assert_eq!(outcome.status, 200, "{form:?}: {}", outcome.body);
    }
    assert_eq!(rig.local.total_burned(), 3 * CREDITS);
    assert_eq!(rig.server.runs.count(), 3);
}

/// The buyer's side: minting fails within the subscriber's timeout, whatever the
/// permissions endpoint does, and the paid route is never reached with a token.
#[actix_web::test]
async fn permissions_faults_fail_the_paying_client_within_its_timeout() {
    let faults = [
        Fault::Hang,
        Fault::Status(500),
        Fault::Html502,
        Fault::TruncatedJson,
        Fault::Disconnect,
        Fault::SettleFailure("no".into()),
    ];
    for fault in faults {
        let rig = Rig::new(|b| b);
        rig.local.inject(Endpoint::Permissions, fault.clone());
        let subscriber = Subscriber::builder()
            .api_key(rig.local.subscriber_api_key())
            .backend_url(rig.local.backend_url())
            .timeout(TIMEOUT)
            .build()
            .expect("subscriber config");
        let client = PayingClient::new(subscriber);
        let started = Instant::now();
        let result = client.send(client.http().post(rig.server.at("/paid"))).await;
        let elapsed = started.elapsed();
        assert!(matches!(result, Err(ClientError::Mint { .. })), "{fault:?}: {result:?}");
        assert!(elapsed < TIMEOUT + MARGIN, "{fault:?}: took {elapsed:?}");
        let calls = Calls::of(&rig.local);
        assert_eq!((calls.permissions, calls.verify, calls.settle), (1, 0, 0), "{fault:?}");
        assert_eq!(rig.server.runs.count(), 0);
    }
}

/// `Fault::Disconnect` is a connection closed with no answer at all (not a status, not
/// a partial head), as a crashed backend or a reset by a proxy looks.
#[test]
fn a_disconnect_closes_the_connection_without_a_byte() {
    use std::io::{Read, Write};
    let local = LocalFacilitator::start().expect("local facilitator");
    for endpoint in [Endpoint::Verify, Endpoint::Settle, Endpoint::Permissions, Endpoint::Plans] {
        local.inject(endpoint, Fault::Disconnect);
    }
    let addr = local.backend_url().trim_start_matches("http://").to_owned();
    let requests = [
        "POST /api/v1/x402/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        "POST /api/v1/x402/settle HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        "POST /api/v1/x402/permissions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        "GET /api/v1/protocol/plans/1 HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for request in requests {
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        stream.write_all(request.as_bytes()).expect("write");
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        assert!(read.is_ok() || answer.is_empty(), "{request}: {read:?}");
        assert!(answer.is_empty(), "{request}: got {:?}", String::from_utf8_lossy(&answer));
    }
    let calls = Calls::of(&local);
    assert_eq!((calls.verify, calls.settle, calls.permissions, calls.plans), (1, 1, 1, 1));
}

/// A handler behind `PaymentMiddleware` (in a scope, where routing needs the request
/// to itself) that panics: a 500 in the JSON form, nothing settled, and the server
/// goes on serving.
#[actix_web::test]
async fn a_panic_behind_the_middleware_is_a_500_and_nothing_is_settled() {
    silence_deliberate_panic();
    let rig = Rig::new(|b| b);
    let outcome = send(rig.server.at("/mw/panic"), rig.token()).await;
    assert_eq!(outcome.status, 500, "{}", outcome.body);
    let body: serde_json::Value = serde_json::from_str(&outcome.body).expect("a JSON error");
    assert_eq!(body["message"], "the handler failed");
    assert!(outcome.receipt.is_none());
    let calls = Calls::of(&rig.local);
    assert_eq!((calls.verify, calls.settle, rig.local.total_burned()), (1, 0, 0));
    let outcome = send(rig.server.at("/mw/content"), rig.token()).await;
    assert_eq!(outcome.status, 200, "{}", outcome.body);
    assert_eq!(rig.server.runs.count(), 2);
}
