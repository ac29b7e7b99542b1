//! Idempotent paid calls, through real HTTP, with the local facilitator's ledger
//! reconciled exactly (burns == distinct successful keys), in memory and on a real
//! `redis-server` started by the test:
//!
//! - a retry with the same key is replayed (same body, same receipt), with no verify,
//!   no handler and no settle, on both forms;
//! - the same key with another request is 422; a duplicate while the first runs is
//!   409, or waits for it (opt-in); a failed handler stores nothing;
//! - a response too long to keep, a streamed answer, an outcome unknown;
//! - two instances on one Redis: the retry goes to the other instance and is replayed;
//!   a single-use token settled on one is refused on the other;
//! - Redis killed mid-test: paid routes with a key fail closed (503), the server stays
//!   up, and it recovers by itself when Redis is back;
//! - `PayingClient` sends a key per call and a retry with it is free;
//! - a property test over random sequences of keys, bodies and failures.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::{HttpResponse, post, web};
use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::store::RedisStore;
use nvm_runtime::wire::SettleResponse;
use nvm_runtime::{
    Idempotency, PaymentContext, PaymentMiddleware, Payments, Resolution, RouteConfig, SettlementStatus, paid,
};
use nvm_tests::{
    CONTENT, CREDITS, Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, Form, RedisServer, Runs, TestServer, http,
    middleware_content, paid_content, payments_for, receipt_field, serve,
};

/// Fails the next `n` runs of the flaky handlers with a 500.
#[derive(Clone, Default)]
struct Failures(Arc<AtomicUsize>);

impl Failures {
    fn fail_next(&self, n: usize) {
        self.0.store(n, Ordering::SeqCst);
    }

    fn take(&self) -> bool {
        self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

async fn flaky_answer(runs: &Runs, failures: &Failures) -> HttpResponse {
    runs.hit();
    tokio::time::sleep(Duration::from_millis(5)).await;
    if failures.take() {
        HttpResponse::InternalServerError().body("model down")
    } else {
        HttpResponse::Ok().body(CONTENT)
    }
}

#[post("/flaky")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2)]
async fn flaky(runs: web::Data<Runs>, failures: web::Data<Failures>) -> HttpResponse {
    flaky_answer(&runs, &failures).await
}

async fn middleware_flaky(runs: web::Data<Runs>, failures: web::Data<Failures>) -> HttpResponse {
    flaky_answer(&runs, &failures).await
}

#[post("/slow")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2)]
async fn slow(runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    tokio::time::sleep(Duration::from_millis(400)).await;
    HttpResponse::Ok().body(CONTENT)
}

#[post("/large")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2)]
async fn large(runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    HttpResponse::Ok().body(vec![b'x'; 2 << 20])
}

#[post("/words")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 5, settle = "after_body")]
async fn words(runs: web::Data<Runs>, payment: PaymentContext) -> HttpResponse {
    runs.hit();
    let meter = payment.meter();
    let chunks = (0..3).map(move |i| {
        let _ = meter.add(1);
        Ok::<_, std::io::Error>(web::Bytes::from(format!("data: word{i}\n\n")))
    });
    HttpResponse::Ok().content_type("text/event-stream").streaming(nvm_tests::ready_stream(chunks))
}

fn app(payments: Payments, failures: Failures) -> impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static {
    move |cfg: &mut web::ServiceConfig| {
        let table = PaymentMiddleware::new(payments.clone())
            .route("POST /mw/content", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(CREDITS))
            .route("POST /mw/flaky", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(CREDITS));
        let scope = web::scope("/mw")
            .wrap(table)
            .route("/content", web::post().to(middleware_content))
            .route("/flaky", web::post().to(middleware_flaky));
        cfg.app_data(web::Data::new(failures.clone()))
            .service(paid_content)
            .service(flaky)
            .service(slow)
            .service(large)
            .service(words)
            .service(scope)
            .route("/free", web::get().to(|| async { HttpResponse::Ok().body("free") }));
    }
}

/// Where the records are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    Memory,
    Redis,
}

struct Rig {
    local: LocalFacilitator,
    server: TestServer,
    failures: Failures,
    token: String,
    payments: Payments,
    _redis: Option<RedisServer>,
}

fn rig_with(kept: Kept, idempotency: impl Fn(Idempotency) -> Idempotency) -> Rig {
    let local = LocalFacilitator::start().unwrap();
    let redis = (kept == Kept::Redis).then(RedisServer::start);
    let config = match &redis {
        Some(redis) => Idempotency::with_store(RedisStore::open(&redis.url()).unwrap()),
        None => Idempotency::in_memory(),
    };
    let payments = payments_for(&local).idempotency(idempotency(config)).build().unwrap();
    let failures = Failures::default();
    let server = serve(Some(payments.clone()), app(payments.clone(), failures.clone()));
    let token = local.mint_token(MintOptions::new());
    Rig { local, server, failures, token, payments, _redis: redis }
}

fn rig(kept: Kept) -> Rig {
    rig_with(kept, |i| i)
}

/// What a paid call got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    receipt: Option<String>,
    replayed: bool,
}

async fn call(url: &str, token: &str, key: Option<&str>, body: &str) -> Answer {
    let mut request = http().post(url).header("payment-signature", token).body(body.to_owned());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        receipt: response.headers().get("payment-response").map(|v| v.to_str().unwrap().to_owned()),
        replayed: response.headers().get("idempotent-replayed").is_some_and(|v| v == "true"),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

const KEPT: [Kept; 2] = [Kept::Memory, Kept::Redis];

#[actix_web::test]
async fn a_retry_with_the_same_key_is_replayed_and_not_charged_again() {
    for kept in KEPT {
        for form in Form::BOTH {
            let rig = rig(kept);
            let url = rig.server.at(form.path());
            let first = call(&url, &rig.token, Some("key-1"), "{\"q\":1}").await;
            assert_eq!((first.status, first.body.as_slice()), (200, CONTENT.as_bytes()), "{kept:?} {form:?}");
            assert!(first.receipt.is_some() && !first.replayed);
            let before = Calls::of(&rig.local);
            for _ in 0..3 {
                let retry = call(&url, &rig.token, Some("key-1"), "{\"q\":1}").await;
                assert_eq!(retry.status, 200, "{kept:?} {form:?}");
                assert_eq!(retry.body, first.body);
                assert_eq!(retry.receipt, first.receipt, "the original receipt comes back");
                assert!(retry.replayed, "marked idempotent-replayed");
            }
            let after = Calls::of(&rig.local);
            assert_eq!(
                (after.verify, after.settle),
                (before.verify, before.settle),
                "a replay calls no facilitator"
            );
            assert_eq!(rig.server.runs.count(), 1, "{kept:?} {form:?}: the handler ran once");
            assert_eq!(rig.local.total_burned(), CREDITS, "{kept:?} {form:?}: burned once");
            // Another key is another call.
            let other = call(&url, &rig.token, Some("key-2"), "{\"q\":1}").await;
            assert!(other.status == 200 && !other.replayed);
            assert_eq!(rig.local.total_burned(), 2 * CREDITS);
            // No key: every call runs and is charged.
            call(&url, &rig.token, None, "").await;
            call(&url, &rig.token, None, "").await;
            assert_eq!(rig.local.total_burned(), 4 * CREDITS, "{kept:?} {form:?}");
        }
    }
}

#[actix_web::test]
async fn the_same_key_for_another_request_is_422_and_a_failed_handler_stores_nothing() {
    for kept in KEPT {
        for (paid, flaky_path) in [("/paid", "/flaky"), ("/mw/content", "/mw/flaky")] {
            let rig = rig(kept);
            let url = rig.server.at(paid);
            assert_eq!(call(&url, &rig.token, Some("k"), "a").await.status, 200);
            let reused = call(&url, &rig.token, Some("k"), "b").await;
            assert_eq!(reused.status, 422, "{kept:?} {paid}: another body");
            assert!(String::from_utf8_lossy(&reused.body).contains("use a new key"));
            let query = call(&format!("{url}?x=1"), &rig.token, Some("k"), "a").await;
            assert_ne!(query.status, 200, "{kept:?} {paid}: another query is another request");
            assert_eq!(rig.local.total_burned(), CREDITS);

            // A failed handler: nothing charged, nothing stored; the retry runs afresh.
            let url = rig.server.at(flaky_path);
            rig.failures.fail_next(1);
            let runs = rig.server.runs.count();
            assert_eq!(call(&url, &rig.token, Some("f"), "").await.status, 500);
            let retry = call(&url, &rig.token, Some("f"), "").await;
            assert_eq!((retry.status, retry.replayed), (200, false), "{kept:?} {flaky_path}");
            assert_eq!(rig.server.runs.count(), runs + 2);
            let again = call(&url, &rig.token, Some("f"), "").await;
            assert!(again.replayed);
            assert_eq!(rig.local.total_burned(), 2 * CREDITS, "{kept:?} {flaky_path}");
        }
    }
}

/// A duplicate that comes while the first call's settle call is in flight (the answer
/// held for it, on Redis, written ahead): its settlement is not pending, only not over.
/// A seller who waits for first calls makes it wait, then replays; one who does not
/// answers 409; never a second run or charge, never a 2xx before the first is settled.
#[actix_web::test]
async fn a_duplicate_while_the_first_settles_waits_for_it_or_gets_409() {
    for kept in KEPT {
        for wait in [true, false] {
            let rig =
                if wait { rig_with(kept, |i| i.wait_for_first(Duration::from_secs(5))) } else { rig(kept) };
            rig.local.inject(Endpoint::Settle, Fault::Delay(Duration::from_millis(600)));
            let url = rig.server.at("/flaky");
            let (a, b) = tokio::join!(call(&url, &rig.token, Some("s"), ""), async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                call(&url, &rig.token, Some("s"), "").await
            });
            assert_eq!(a.status, 200, "{kept:?} wait={wait}");
            if wait {
                assert_eq!(
                    (b.status, b.replayed),
                    (200, true),
                    "{kept:?}: the duplicate waited for the settlement: {}",
                    String::from_utf8_lossy(&b.body)
                );
                assert_eq!(a.receipt, b.receipt, "{kept:?}");
            } else {
                assert_eq!(b.status, 409, "{kept:?}: {}", String::from_utf8_lossy(&b.body));
                assert_ne!(b.receipt, a.receipt, "{kept:?}: a 409 carries no settled receipt");
            }
            assert_eq!(
                (rig.server.runs.count(), rig.local.total_burned()),
                (1, CREDITS),
                "{kept:?} wait={wait}"
            );
            rig.local.clear_faults();
            let again = call(&url, &rig.token, Some("s"), "").await;
            assert_eq!((again.status, again.replayed), (200, true), "{kept:?} wait={wait}: after it ended");
            assert_eq!(rig.local.total_burned(), CREDITS);
        }
    }
}

#[actix_web::test]
async fn a_duplicate_while_the_first_runs_gets_409_or_waits_for_it() {
    for kept in KEPT {
        let rig = rig(kept);
        let url = rig.server.at("/slow");
        let (a, b) = tokio::join!(call(&url, &rig.token, Some("d"), ""), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            call(&url, &rig.token, Some("d"), "").await
        });
        assert_eq!((a.status, b.status), (200, 409), "{kept:?}");
        assert!(String::from_utf8_lossy(&b.body).contains("still running"));
        assert_eq!((rig.server.runs.count(), rig.local.total_burned()), (1, CREDITS));
        assert!(call(&url, &rig.token, Some("d"), "").await.replayed, "after it ended: replayed");

        let rig = rig_with(kept, |i| i.wait_for_first(Duration::from_secs(5)));
        let url = rig.server.at("/slow");
        let (a, b) = tokio::join!(call(&url, &rig.token, Some("w"), ""), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            call(&url, &rig.token, Some("w"), "").await
        });
        assert_eq!((a.status, b.status, b.replayed), (200, 200, true), "{kept:?}: the duplicate waited");
        assert_eq!(a.receipt, b.receipt);
        assert_eq!((rig.server.runs.count(), rig.local.total_burned()), (1, CREDITS));
    }
}

#[actix_web::test]
async fn long_streamed_and_unknown_answers_are_never_charged_twice() {
    let rig = rig(Kept::Memory);
    // Longer than the 1 MiB kept: charged once, then 409 with the receipt.
    let url = rig.server.at("/large");
    let first = call(&url, &rig.token, Some("l"), "").await;
    assert_eq!((first.status, first.body.len()), (200, 2 << 20));
    let retry = call(&url, &rig.token, Some("l"), "").await;
    assert_eq!(retry.status, 409);
    assert!(String::from_utf8_lossy(&retry.body).contains("not kept for replay"));
    assert_eq!(retry.receipt, first.receipt, "the receipt of the charge");
    assert_eq!((rig.server.runs.count(), rig.local.total_burned()), (1, CREDITS));

    // A streamed answer settled after its body: kept whole, with its last event.
    let url = rig.server.at("/words");
    let first = call(&url, &rig.token, Some("s"), "").await;
    let text = String::from_utf8(first.body.clone()).unwrap();
    assert!(text.contains("word2") && text.contains("event: payment-response"), "{text}");
    let mut retry = call(&url, &rig.token, Some("s"), "").await;
    for _ in 0..50 {
        if retry.replayed {
            break;
        }
        // The first stream's record is stored by its settlement task, after the body.
        assert_eq!(retry.status, 409, "until stored, the duplicate is in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
        retry = call(&url, &rig.token, Some("s"), "").await;
    }
    assert!(retry.replayed && retry.status == 200);
    assert_eq!(retry.body, first.body, "the whole stream, last event included");
    assert_eq!(rig.local.total_burned(), CREDITS + 3, "3 words metered, once");

    // A settlement whose answer was lost: its answer is held, so no retry pays again;
    // retries are told to wait until the seller resolves it, then get the answer.
    rig.local.inject(Endpoint::Settle, Fault::LoseAnswer);
    let url = rig.server.at("/paid");
    let first = call(&url, &rig.token, Some("u"), "").await;
    assert_eq!(first.status, 402);
    let burned = rig.local.total_burned();
    rig.local.clear_faults();
    let retry = call(&url, &rig.token, Some("u"), "").await;
    assert_eq!(retry.status, 409, "{}", String::from_utf8_lossy(&retry.body));
    assert!(String::from_utf8_lossy(&retry.body).contains("still pending"));
    assert_eq!(rig.local.total_burned(), burned, "the retry burned nothing");
    let pending = rig.payments.pending_settlements().list(SettlementStatus::Unknown).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(rig.payments.pending_settlements().close(&pending[0].id, Resolution::Burned).await.unwrap());
    let collected = call(&url, &rig.token, Some("u"), "").await;
    assert_eq!(
        (collected.status, collected.body.as_slice(), collected.replayed),
        (200, CONTENT.as_bytes(), true)
    );
    let receipt = SettleResponse::from_header(collected.receipt.as_deref().unwrap()).unwrap();
    assert!(receipt.success && receipt_field(&receipt, "confirmedAfterUnknown") == true, "{receipt:?}");
    assert_eq!(rig.local.total_burned(), burned, "collected without paying again");
}

#[actix_web::test]
async fn two_instances_on_one_redis_replay_each_others_calls() {
    let redis = RedisServer::start();
    let local = LocalFacilitator::start().unwrap();
    let instance = || {
        let store = RedisStore::open(&redis.url()).unwrap();
        let payments = payments_for(&local).idempotency(Idempotency::with_store(store)).build().unwrap();
        serve(Some(payments.clone()), app(payments, Failures::default()))
    };
    let (a, b) = (instance(), instance());
    let token = local.mint_token(MintOptions::new());
    for form in Form::BOTH {
        let key = format!("across-{form:?}");
        let first = call(&a.at(form.path()), &token, Some(&key), "{}").await;
        assert_eq!(first.status, 200);
        let verifies = Calls::of(&local).verify;
        let retry = call(&b.at(form.path()), &token, Some(&key), "{}").await;
        assert_eq!((retry.status, retry.replayed, &retry.receipt), (200, true, &first.receipt), "{form:?}");
        assert_eq!(Calls::of(&local).verify, verifies, "B replayed without asking the facilitator");
    }
    assert_eq!((a.runs.count(), b.runs.count()), (2, 0));
    assert_eq!(local.total_burned(), 2 * CREDITS);

    // A single-use token settled on A is refused on B before any facilitator call.
    let single = local.mint_token(MintOptions::new().single_use().resource("/paid"));
    assert_eq!(call(&a.at("/paid"), &single, None, "").await.status, 200);
    let verifies = Calls::of(&local).verify;
    let response = http().post(b.at("/paid")).header("payment-signature", &single).send().await.unwrap();
    assert_eq!(response.status(), 402);
    let envelope = nvm_tests::envelope(&response).unwrap();
    assert!(envelope.error.unwrap_or_default().contains("BCK.X402.0059"));
    assert_eq!(Calls::of(&local).verify, verifies, "refused from the store, not by the facilitator");
    assert_eq!(b.runs.count(), 0);
}

#[actix_web::test]
async fn redis_down_fails_closed_and_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let local = LocalFacilitator::start().unwrap();
    let store = RedisStore::open_with_timeout(&redis.url(), Duration::from_millis(300)).unwrap();
    let payments = payments_for(&local).idempotency(Idempotency::with_store(store)).build().unwrap();
    let server = serve(Some(payments.clone()), app(payments, Failures::default()));
    let token = local.mint_token(MintOptions::new());
    let url = server.at("/paid");
    assert_eq!(call(&url, &token, Some("before"), "").await.status, 200);

    redis.stop();
    for key in ["during-1", "during-2"] {
        let down = call(&url, &token, Some(key), "").await;
        assert_eq!(down.status, 503, "fail closed: {}", String::from_utf8_lossy(&down.body));
        assert!(String::from_utf8_lossy(&down.body).contains("nothing was charged"));
    }
    let free = http().get(server.at("/free")).send().await.unwrap();
    assert_eq!(free.status(), 200, "the server stays up");
    assert_eq!((server.runs.count(), local.total_burned()), (1, CREDITS), "nothing ran, nothing burned");

    // Back: the very first keyed call works (a connection broken while Redis was down is
    // remade within the call), through several outages.
    let mut redis = RedisServer::start_on(port);
    for cycle in 0..3 {
        assert!(redis.answers_ping(), "redis is back");
        let key = format!("after-{cycle}");
        let back = call(&url, &token, Some(&key), "").await;
        assert_eq!(back.status, 200, "cycle {cycle}: {}", String::from_utf8_lossy(&back.body));
        assert!(call(&url, &token, Some(&key), "").await.replayed);
        redis.stop();
        assert_eq!(call(&url, &token, Some("while-down"), "").await.status, 503);
        // Long enough for the store's own reconnection attempts to have failed.
        tokio::time::sleep(Duration::from_millis(200 * (cycle + 1))).await;
        redis = RedisServer::start_on(port);
    }
    assert_eq!(local.total_burned(), 4 * CREDITS);
}

#[actix_web::test]
async fn the_paying_client_sends_a_key_per_call_and_its_retry_is_free() {
    let rig = rig(Kept::Memory);
    let client = nvm_tests::paying_client(&rig.local);
    let url = rig.server.at("/paid");
    let first = client.send(client.http().post(&url).body("{}")).await.unwrap();
    assert_eq!(first.response.status(), 200);
    assert_eq!(first.idempotency_key.len(), 32);
    let second = client.send(client.http().post(&url).body("{}")).await.unwrap();
    assert_ne!(second.idempotency_key, first.idempotency_key, "a key per call");
    assert!(!second.replayed());
    assert_eq!(rig.local.total_burned(), 2 * CREDITS);
    // The response was lost: send it again with its key.
    let retry = client
        .send(client.http().post(&url).header("idempotency-key", &first.idempotency_key).body("{}"))
        .await
        .unwrap();
    assert!(retry.replayed());
    assert_eq!(retry.idempotency_key, first.idempotency_key);
    assert_eq!(retry.receipt, first.receipt);
    assert_eq!(rig.local.total_burned(), 2 * CREDITS, "the retry was free");
}

#[actix_web::test]
async fn invalid_keys_and_long_bodies_are_refused_before_anything_runs() {
    let rig = rig_with(Kept::Memory, |i| i.max_request_body(16));
    let url = rig.server.at("/paid");
    for key in ["", "a b", &"x".repeat(256)] {
        assert_eq!(call(&url, &rig.token, Some(key), "").await.status, 400, "{key:?}");
    }
    let long = call(&url, &rig.token, Some("k"), &"y".repeat(17)).await;
    assert_eq!(long.status, 413);
    assert!(String::from_utf8_lossy(&long.body).contains("max_request_body"));
    // Without a token the key is not looked at: the 402 comes first.
    let unpaid = http().post(&url).header("idempotency-key", "a b").send().await.unwrap();
    assert_eq!(unpaid.status(), 402);
    assert_eq!((rig.server.runs.count(), rig.local.total_burned()), (0, 0));
}

mod property {
    use super::*;
    use proptest::prelude::*;

    /// One request of a generated sequence.
    #[derive(Debug, Clone)]
    struct Step {
        /// Which instance serves it (modulo the instances running).
        instance: usize,
        form: usize,
        key: Option<u8>,
        body: u8,
        /// The handler fails (500) when it runs.
        fail: bool,
        /// Sent to every instance at once (a retry racing its first attempt).
        together: bool,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            0..2usize,
            0..2usize,
            prop::option::of(0..3u8),
            0..2u8,
            prop::bool::weighted(0.25),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(instance, form, key, body, fail, together)| Step {
                instance,
                form,
                key,
                body,
                // A failure is switched on one instance: not for a step sent to all.
                fail: fail && !together,
                together: together && key.is_some(),
            })
    }

    /// What the model says a keyed request gets.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Want {
        /// Run and charged: a fresh 200.
        Fresh,
        /// The handler fails: 500, nothing charged or kept.
        Failed,
        /// The first answer again: a replayed 200, nothing charged.
        Replayed,
        /// Another request under a used key: 422.
        Reused,
    }

    /// Sends `steps` to `instances` (each server with its handlers' failure switch) and
    /// checks every answer against a model of the store written from the rules alone
    /// (never from what was observed): a key runs once, its successful answer is kept
    /// and replayed to the same request, refused (422) to another; a failed run keeps
    /// nothing. Requests sent together to every instance: one runs, the others get 409
    /// or the replay. At the end the ledger burned exactly what the model charged.
    async fn run(
        instances: &[(&TestServer, &Failures)],
        local: &LocalFacilitator,
        token: &str,
        steps: Vec<Step>,
    ) {
        let mut kept: std::collections::HashMap<(usize, u8), u8> = Default::default();
        let mut charged = 0u64;
        for step in steps {
            let path = ["/flaky", "/mw/flaky"][step.form];
            let key = step.key.map(|k| format!("key{k}"));
            let body = step.body.to_string();
            let want = match step.key.map(|k| kept.get(&(step.form, k))) {
                None | Some(None) if step.fail => Want::Failed,
                None | Some(None) => Want::Fresh,
                Some(Some(first)) if *first == step.body => Want::Replayed,
                Some(Some(_)) => Want::Reused,
            };
            if step.together {
                let calls = instances
                    .iter()
                    .map(|(server, _)| call_owned(server.at(path), token, key.clone(), &body));
                let answers = join_all(calls).await;
                let fresh = answers.iter().filter(|a| a.status == 200 && !a.replayed).count();
                let others_ok = answers
                    .iter()
                    .all(|a| (a.status == 200 && a.body == CONTENT.as_bytes()) || a.status == 409);
                match want {
                    Want::Fresh => {
                        assert_eq!(fresh, 1, "{step:?}: exactly one runs: {answers:?}");
                        assert!(others_ok, "{step:?}: the others wait or replay: {answers:?}");
                    }
                    Want::Replayed => {
                        assert!(
                            answers.iter().all(|a| a.status == 200 && a.replayed),
                            "{step:?}: {answers:?}"
                        )
                    }
                    Want::Reused => assert!(answers.iter().all(|a| a.status == 422), "{step:?}: {answers:?}"),
                    Want::Failed => unreachable!("no failure is switched on for a step sent to all"),
                }
            } else {
                let (server, failures) = instances[step.instance % instances.len()];
                failures.fail_next(usize::from(step.fail));
                let answer = call(&server.at(path), token, key.as_deref(), &body).await;
                failures.fail_next(0);
                let got = match (answer.status, answer.replayed) {
                    (200, false) => Want::Fresh,
                    (200, true) => Want::Replayed,
                    (500, false) => Want::Failed,
                    (422, false) => Want::Reused,
                    _ => panic!("{step:?}: {answer:?}"),
                };
                assert_eq!(got, want, "{step:?}: {answer:?}");
            }
            if want == Want::Fresh {
                charged += CREDITS;
                if let Some(k) = step.key {
                    kept.insert((step.form, k), step.body);
                }
            }
        }
        assert_eq!(local.total_burned(), charged, "the ledger burned what the model charged");
    }

    /// [`call`] with owned arguments, to send several at once.
    async fn call_owned(url: String, token: &str, key: Option<String>, body: &str) -> Answer {
        call(&url, token, key.as_deref(), body).await
    }

    /// Awaits every future, concurrently.
    async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut pending: Vec<_> = futures.map(Box::pin).collect();
        let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut done = true;
            for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
                if output.is_none() {
                    match future.as_mut().poll(cx) {
                        std::task::Poll::Ready(value) => *output = Some(value),
                        std::task::Poll::Pending => done = false,
                    }
                }
            }
            if done { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
        })
        .await;
        outputs.into_iter().map(|o| o.expect("every future finished")).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// Whatever the order of keys, bodies and failures, on one instance in memory.
        #[test]
        fn burns_match_distinct_successful_keys(steps in prop::collection::vec(step(), 1..10)) {
            actix_web::rt::System::new().block_on(async move {
                let rig = rig(Kept::Memory);
                run(&[(&rig.server, &rig.failures)], &rig.local, &rig.token, steps).await;
            });
        }

        /// The same sequences spread over two instances sharing one real Redis: each
        /// request goes to either, so a retry often lands on the other one.
        #[test]
        fn burns_match_across_two_instances_on_redis(steps in prop::collection::vec(step(), 1..10)) {
            actix_web::rt::System::new().block_on(async move {
                let redis = RedisServer::start();
                let local = LocalFacilitator::start().unwrap();
                let instance = || {
                    let store = RedisStore::open(&redis.url()).unwrap();
                    let payments = payments_for(&local).idempotency(Idempotency::with_store(store)).build().unwrap();
                    let failures = Failures::default();
                    (serve(Some(payments.clone()), app(payments, failures.clone())), failures)
                };
                let ((a, a_failures), (b, b_failures)) = (instance(), instance());
                let token = local.mint_token(MintOptions::new());
                run(&[(&a, &a_failures), (&b, &b_failures)], &local, &token, steps).await;
            });
        }
    }
}
