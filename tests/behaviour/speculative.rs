//! `#[paid(speculative = true)]`: the handler runs while the payment is verified, and its
//! answer is released only once verified. Against a facilitator 250 ms away and a
//! handler that works 250 ms, a speculative call answers in about one of the two, a
//! plain one in both; a refused payment gets its 402 and the handler's answer is
//! dropped, unsettled; an unpaid request and a keyed one are verified first, as any.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, post, web};
use nvm_runtime::local::LocalFacilitator;
use nvm_runtime::{DeferredSettlement, PendingSettlements};
use nvm_tests::{CONTENT, DEMO_AGENT_ID, DEMO_PLAN_ID, http, mint, payments_for, serve};

/// The facilitator's latency and the handler's work.
const LATENCY: Duration = Duration::from_millis(250);

static SPECULATIVE_RUNS: AtomicUsize = AtomicUsize::new(0);
static PLAIN_RUNS: AtomicUsize = AtomicUsize::new(0);

#[post("/speculative")]
#[nvm_runtime::paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2, settle = "deferred", speculative = true)]
async fn speculative(body: web::Bytes) -> HttpResponse {
    SPECULATIVE_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(LATENCY).await;
    HttpResponse::Ok().body(format!("{CONTENT} ({} bytes asked)", body.len()))
}

#[post("/verified-first")]
#[nvm_runtime::paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2, settle = "deferred")]
async fn verified_first(body: web::Bytes) -> HttpResponse {
    PLAIN_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(LATENCY).await;
    HttpResponse::Ok().body(format!("{CONTENT} ({} bytes asked)", body.len()))
}

/// A file journal of its own (deferred settlement needs one), removed when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn post(url: &str, token: Option<&str>, key: Option<&str>) -> (u16, String, Duration) {
    let mut request = http().post(url).body("question");
    if let Some(token) = token {
        request = request.header("payment-signature", token);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let started = Instant::now();
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    (status, body, started.elapsed())
}

#[actix_web::test]
async fn a_speculative_handler_runs_while_its_payment_is_verified() {
    let local = LocalFacilitator::start().unwrap();
    local.set_latency(LATENCY);
    let scratch = Scratch(std::env::temp_dir().join(format!("nvm-speculative-{}.jsonl", std::process::id())));
    let payments = payments_for(&local)
        .pending_settlements(PendingSettlements::file(&scratch.0).unwrap())
        .deferred_settlement(DeferredSettlement::new().max_exposure(100))
        .build()
        .unwrap();
    let server = serve(Some(payments.clone()), |cfg: &mut web::ServiceConfig| {
        cfg.service(speculative).service(verified_first);
    });
    let token = mint(&local).await;
    // Warm: the plan's metadata.
    let _ = post(&server.at("/verified-first"), Some(&token), None).await;

    let (status, body, speculated) = post(&server.at("/speculative"), Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with(CONTENT), "the handler's answer, with its body: {body}");
    let (status, _, waited) = post(&server.at("/verified-first"), Some(&token), None).await;
    assert_eq!(status, 200);
    assert!(waited >= LATENCY * 2, "verified, then run: {waited:?}");
    assert!(speculated < LATENCY * 2, "verified while it ran: {speculated:?} (verified first: {waited:?})");

    // A refused payment: the handler ran, its answer is dropped, nothing is settled.
    local.set_balance(DEMO_PLAN_ID, local.subscriber_address(), 0);
    let runs = SPECULATIVE_RUNS.load(Ordering::SeqCst);
    assert_eq!(payments.drain(Duration::from_secs(10)).await, 0);
    let burned = local.total_burned();
    let (status, body, _) = post(&server.at("/speculative"), Some(&token), None).await;
    assert_eq!(status, 402, "{body}");
    assert!(!body.contains(CONTENT), "the handler's answer never reaches a refused buyer: {body}");
    assert_eq!(SPECULATIVE_RUNS.load(Ordering::SeqCst), runs + 1, "it ran, speculatively");
    local.set_balance(DEMO_PLAN_ID, local.subscriber_address(), 100);

    // No token: refused before anything runs or is read. A keyed call: verified first.
    let runs = SPECULATIVE_RUNS.load(Ordering::SeqCst);
    let (status, _, _) = post(&server.at("/speculative"), None, None).await;
    assert_eq!(status, 402);
    assert_eq!(SPECULATIVE_RUNS.load(Ordering::SeqCst), runs, "an unpaid request runs nothing");
    let (status, _, keyed) = post(&server.at("/speculative"), Some(&token), Some("spec-1")).await;
    assert_eq!(status, 200);
    assert!(keyed >= LATENCY * 2, "a keyed call is verified first: {keyed:?}");

    assert_eq!(payments.drain(Duration::from_secs(10)).await, 0);
    assert_eq!(
        local.total_burned(),
        burned + 2,
        "the keyed call, once; the refused and unpaid ones, nothing"
    );
}
