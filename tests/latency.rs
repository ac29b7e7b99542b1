//! The local facilitator's latency (`LocalFacilitator::set_latency`, the binary's
//! `--latency-ms`): every answer of every endpoint waits it,
//! concurrent calls wait side by side (a timer, not a blocked server thread), and a
//! paid request pays it once per facilitator round trip: twice without the verification
//! cache (verify + settle), once with it (settle only).

use std::time::{Duration, Instant};

use actix_web::{HttpResponse, get};
use nvm_runtime::__private::backend::ApiKey;
use nvm_runtime::__private::backend::Facilitator;
use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
use nvm_runtime::__private::wire::EnvelopeBuilder;
use nvm_runtime::__private::wire::FacilitatorRequest;
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::paid;
use nvm_tests::{Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, http, mint, payments_for, receipt, serve};

const LATENCY: Duration = Duration::from_millis(50);
/// How many calls are sent at once in the concurrency test (more than the facilitator's
/// 2 server threads).
const CONCURRENT: u32 = 8;

fn builder_client(local: &LocalFacilitator) -> Facilitator {
    let key: ApiKey = local.builder_api_key().parse().expect("the builder's key parses");
    Facilitator::new(local.backend_url(), &key, Duration::from_secs(10)).expect("a client")
}

fn verify_request(local: &LocalFacilitator) -> FacilitatorRequest {
    let envelope = EnvelopeBuilder::new(DEMO_PLAN_ID, "eip155:84532")
        .url("/ask")
        .agent_id(DEMO_AGENT_ID)
        .http_verb("GET")
        .build();
    FacilitatorRequest {
        payment_required: envelope,
        x402_access_token: local.mint_token(MintOptions::new()),
        max_amount: Some(1.into()),
        agent_request_id: None,
    }
}

#[actix_web::test]
async fn every_endpoint_answers_after_the_latency() {
    let local = LocalFacilitator::start().expect("starts");
    local.set_latency(LATENCY);
    let facilitator = builder_client(&local);
    let request = verify_request(&local);

    let started = Instant::now();
    let verification = facilitator.verify(&request).await.expect("verify answers");
    assert!(verification.is_valid, "{verification:?}");
    assert!(started.elapsed() >= LATENCY, "verify took {:?}", started.elapsed());

    let settle = FacilitatorRequest {
        agent_request_id: verification.request_id().map(str::to_owned),
        ..request.clone()
    };
    let started = Instant::now();
    let receipt = facilitator.settle(&settle).await.expect("settle answers");
    assert!(receipt.success, "{receipt:?}");
    assert!(started.elapsed() >= LATENCY, "settle took {:?}", started.elapsed());
    assert_eq!(local.total_burned(), 1);

    let started = Instant::now();
    facilitator.plan_metadata(DEMO_PLAN_ID).await.expect("plan metadata answers");
    assert!(started.elapsed() >= LATENCY, "plan metadata took {:?}", started.elapsed());

    let started = Instant::now();
    let token = mint(&local).await;
    assert!(!token.is_empty());
    assert!(started.elapsed() >= LATENCY, "permissions took {:?}", started.elapsed());

    let calls = Calls::of(&local);
    assert_eq!((calls.verify, calls.settle, calls.permissions, calls.plans), (1, 1, 1, 1));
}

#[actix_web::test]
async fn concurrent_calls_wait_side_by_side() {
    let local = LocalFacilitator::start().expect("starts");
    local.set_latency(LATENCY);
    let facilitator = builder_client(&local);
    let request = verify_request(&local);
    // One call first, so the timing below is not of the first connection's set-up.
    facilitator.verify(&request).await.expect("verify answers");

    let started = Instant::now();
    let calls: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (facilitator, request) = (facilitator.clone(), request.clone());
            actix_web::rt::spawn(async move {
                let started = Instant::now();
                let verification = facilitator.verify(&request).await.expect("verify answers");
                (verification.is_valid, started.elapsed())
            })
        })
        .collect();
    for call in calls {
        let (valid, took) = call.await.expect("the call's task ran");
        assert!(valid);
        assert!(took >= LATENCY, "one call took {took:?}");
    }
    let all = started.elapsed();
    // Serialised, they would take CONCURRENT x LATENCY (400 ms); side by side, one
    // latency plus the loopback work of a debug build. Half of the serial time leaves a
    // loaded 2-core machine room and still tells the two apart.
    assert!(all < LATENCY * CONCURRENT / 2, "{CONCURRENT} concurrent calls took {all:?}");
    assert_eq!(Calls::of(&local).verify, u64::from(CONCURRENT) + 1);
}

#[actix_web::test]
async fn the_latency_changes_while_running_and_adds_to_a_delay_fault() {
    let local = LocalFacilitator::start().expect("starts");
    let facilitator = builder_client(&local);
    facilitator.plan_metadata(DEMO_PLAN_ID).await.expect("answers");

    let slow = Duration::from_millis(300);
    local.set_latency(slow);
    let started = Instant::now();
    facilitator.plan_metadata(DEMO_PLAN_ID).await.expect("answers");
    assert!(started.elapsed() >= slow, "took {:?}", started.elapsed());

    // A fault's delay comes on top; clearing the faults leaves the latency.
    local.set_latency(LATENCY);
    local.inject_times(Endpoint::Plans, Fault::Delay(LATENCY), 1);
    let started = Instant::now();
    facilitator.plan_metadata(DEMO_PLAN_ID).await.expect("answers");
    assert!(started.elapsed() >= LATENCY * 2, "took {:?}", started.elapsed());
    local.clear_faults();
    let started = Instant::now();
    facilitator.plan_metadata(DEMO_PLAN_ID).await.expect("answers");
    assert!(started.elapsed() >= LATENCY, "the latency outlives the faults: took {:?}", started.elapsed());

    local.set_latency(Duration::ZERO);
    let started = Instant::now();
    facilitator.plan_metadata(DEMO_PLAN_ID).await.expect("answers");
    assert!(started.elapsed() < slow / 2, "took {:?} with no latency", started.elapsed());
}

#[get("/work")]
#[paid(plan = DEMO_PLAN_ID, credits = 1)]
async fn paid_work() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

/// What the bench's limits rest on: a paid request makes two facilitator round trips
/// (verify, settle), one with the verification cache (settle only).
#[actix_web::test]
async fn a_paid_request_pays_the_latency_once_per_round_trip() {
    let local = LocalFacilitator::start().expect("starts");
    local.set_latency(LATENCY);
    let token = local.mint_token(MintOptions::new());
    let client = http();
    for cache in [false, true] {
        let mut payments = payments_for(&local);
        if cache {
            payments = payments.verification_cache(Duration::from_secs(30));
        }
        let payments = payments.build().expect("a configuration");
        payments.prepare().await.expect("the plan's metadata");
        let server = serve(Some(payments), |cfg| {
            cfg.service(paid_work);
        });
        for request in 0..2 {
            let before = Calls::of(&local);
            let started = Instant::now();
            let response = client
                .get(server.at("/work"))
                .header("payment-signature", &token)
                .send()
                .await
                .expect("sent");
            let took = started.elapsed();
            assert_eq!(response.status(), 200);
            assert!(receipt(&response).is_some_and(|r| r.success));
            let after = Calls::of(&local);
            let (verify, settle) = (after.verify - before.verify, after.settle - before.settle);
            // Only the cache's second request skips verify.
            let round_trips = if cache && request > 0 { 1 } else { 2 };
            assert_eq!((verify, settle), (round_trips - 1, 1), "cache {cache}, request {request}");
            assert!(took >= LATENCY * round_trips as u32, "cache {cache}, request {request}: {took:?}");
        }
    }
}
