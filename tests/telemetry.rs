//! Telemetry: after a scripted mix of outcomes over real HTTP (both forms), the
//! `metrics` counters say exactly what happened (requests by route and outcome, credits
//! settled by plan and route, a verify and settle latency per facilitator call), and the
//! `nvm_paid_request` span of each request carries its fields, never the token. LLM
//! calls logged by hand are counted by outcome.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use actix_web::{HttpResponse, get, post, web};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use nvm_runtime::__private::local::GatewayEndpoint;
use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::observability::LlmCall;
use nvm_runtime::{DeferredSettlement, PaymentMiddleware, PendingSettlements, RouteConfig, paid};
use nvm_tests::{
    CREDITS, DEMO_AGENT_ID, DEMO_PLAN_ID, http, middleware_content, paid_content, payments_for, serve,
};

#[get("/maybe")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = |req: &actix_web::HttpRequest| u64::from(!req.query_string().contains("free")))]
async fn maybe() -> &'static str {
    "maybe paid"
}

#[post("/broken")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2)]
async fn broken() -> HttpResponse {
    HttpResponse::InternalServerError().body("model down")
}

/// An LLM call logged by hand, off the response path.
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1)]
#[post("/llm")]
async fn llm_log(payment: nvm_runtime::PaymentContext) -> HttpResponse {
    let call = LlmCall::new("m", serde_json::json!("hi")).output(serde_json::json!("hello")).usage(1, 1);
    match payment.observability() {
        Ok(gateway) => drop(gateway.log(call)),
        Err(error) => return HttpResponse::InternalServerError().body(error.to_string()),
    }
    HttpResponse::Ok().body("hello")
}

/// `(name, labels) -> value` of every metric recorded.
type Metrics = BTreeMap<(String, Vec<(String, String)>), DebugValue>;

#[test]
fn counters_and_spans_tell_what_happened() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let logs = nvm_tests::CapturedLogs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .init();

    actix_web::rt::System::new().block_on(async {
        let local = LocalFacilitator::start().unwrap();
        let payments = payments_for(&local).build().unwrap();
        let table = payments.clone();
        let server = serve(Some(payments), move |cfg| {
            let middleware = PaymentMiddleware::new(table.clone()).route(
                "POST /mw/content",
                RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(CREDITS),
            );
            let scope =
                web::scope("/mw").wrap(middleware).route("/content", web::post().to(middleware_content));
            cfg.service(paid_content).service(maybe).service(broken).service(llm_log).service(scope);
        });
        let token = local.mint_token(MintOptions::new());
        let post = |path: &str, token: Option<&str>, key: Option<&str>| {
            let mut request = http().post(server.at(path));
            if let Some(token) = token {
                request = request.header("payment-signature", token);
            }
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            async move { request.send().await.unwrap().status().as_u16() }
        };
        // The script: every outcome, on both forms where it applies.
        assert_eq!(http().get(server.at("/maybe?free")).send().await.unwrap().status(), 200);
        assert_eq!(post("/paid", None, None).await, 402);
        assert_eq!(post("/mw/content", None, None).await, 402);
        assert_eq!(post("/paid", Some("not-a-token"), None).await, 402);
        for _ in 0..3 {
            assert_eq!(post("/paid", Some(&token), None).await, 200);
        }
        assert_eq!(post("/mw/content", Some(&token), Some("k1")).await, 200);
        assert_eq!(post("/mw/content", Some(&token), Some("k1")).await, 200, "replayed");
        assert_eq!(post("/broken", Some(&token), None).await, 500);
        local.inject_times(Endpoint::Settle, Fault::SettleFailure("insufficient_balance".into()), 1);
        assert_eq!(post("/paid", Some(&token), None).await, 402);
        local.inject_times(Endpoint::Verify, Fault::Status(500), 10);
        assert_eq!(post("/paid", Some(&token), None).await, 500);
        local.clear_faults();
        assert_eq!(local.total_burned(), 4 * CREDITS);
        // Two LLM calls logged by hand: one log accepted, one refused (500).
        let logs_received = |n: usize| {
            let local = &local;
            async move {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while local.gateway_calls().len() < n && std::time::Instant::now() < deadline {
                    actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        };
        assert_eq!(post("/llm", Some(&token), None).await, 200);
        // The first log reaches the gateway before the fault is armed.
        logs_received(1).await;
        local.inject_gateway(GatewayEndpoint::Log, Fault::Status(500));
        assert_eq!(post("/llm", Some(&token), None).await, 200);
        logs_received(2).await;
        // Their outcomes are counted as soon as the gateway's answers arrive.
        actix_web::rt::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(server);

        // Deferred settlement (every route of another server): one settled, one failed.
        let journal = std::env::temp_dir().join(format!("nvm-telemetry-{}.jsonl", std::process::id()));
        let deferring = payments_for(&local)
            .pending_settlements(PendingSettlements::file(&journal).unwrap())
            .deferred_settlement(DeferredSettlement::new().everywhere())
            .build()
            .unwrap();
        let server = serve(Some(deferring.clone()), |cfg| {
            cfg.service(paid_content);
        });
        let post = |token: &str| {
            let request = http().post(server.at("/paid")).header("payment-signature", token);
            async move { request.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(post(&token).await, 200);
        assert_eq!(deferring.drain(std::time::Duration::from_secs(10)).await, 0);
        local.inject_times(Endpoint::Settle, Fault::SettleFailure("insufficient_balance".into()), 1);
        assert_eq!(post(&token).await, 200, "delivered before its settlement failed");
        assert_eq!(deferring.drain(std::time::Duration::from_secs(10)).await, 0);
        drop(server);
        let _ = std::fs::remove_file(&journal);
    });

    let metrics: Metrics = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            ((key.name().to_owned(), labels), value)
        })
        .collect();
    let counter = |name: &str, labels: &[(&str, &str)]| {
        let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        match metrics.get(&(name.to_owned(), labels)) {
            Some(DebugValue::Counter(n)) => *n,
            _ => 0,
        }
    };
    let requests = |route: &str, outcome: &str| {
        counter("nvm_paid_requests_total", &[("route", route), ("outcome", outcome)])
    };
    let table: Vec<_> = metrics.keys().collect();
    assert_eq!(requests("/maybe", "free"), 1, "{table:#?}");
    assert_eq!(requests("/paid", "no_token"), 1);
    assert_eq!(requests("/mw/content", "no_token"), 1);
    assert_eq!(requests("/paid", "invalid"), 1);
    assert_eq!(requests("/paid", "paid"), 3);
    assert_eq!(requests("/mw/content", "paid"), 1);
    assert_eq!(requests("/mw/content", "replayed"), 1);
    assert_eq!(requests("/broken", "handler_failed"), 1);
    assert_eq!(requests("/paid", "settle_failed"), 1);
    assert_eq!(requests("/paid", "facilitator_error"), 1);
    let settled =
        |route: &str| counter("nvm_paid_credits_settled_total", &[("plan", DEMO_PLAN_ID), ("route", route)]);
    // /paid: 3 settled before their answers, 1 deferred.
    assert_eq!((settled("/paid"), settled("/mw/content")), (4 * CREDITS, CREDITS));
    assert_eq!(requests("/paid", "deferred"), 2, "{table:#?}");
    let deferred = |outcome: &str| counter("nvm_deferred_settlements_total", &[("outcome", outcome)]);
    assert_eq!((deferred("settled"), deferred("failed"), deferred("unknown")), (1, 1, 0), "{table:#?}");
    let samples = |name: &str, route: &str| match metrics
        .get(&(name.to_owned(), vec![("route".into(), route.into())]))
    {
        Some(DebugValue::Histogram(values)) => values.len(),
        _ => 0,
    };
    // /paid: 3 paid + 1 settle failed verified; the facilitator error's verify failed.
    assert!(samples("nvm_paid_verify_seconds", "/paid") >= 4, "{table:#?}");
    assert_eq!(samples("nvm_paid_settle_seconds", "/paid"), 4);
    assert_eq!(samples("nvm_paid_settle_seconds", "/mw/content"), 1);
    let llm_logs = |outcome: &str| counter("nvm_llm_logs_total", &[("outcome", outcome)]);
    assert_eq!((llm_logs("sent"), llm_logs("failed"), llm_logs("not_sent")), (1, 1, 0), "{table:#?}");

    let logs = logs.text();
    let closed: Vec<&str> =
        logs.lines().filter(|l| l.contains("nvm_paid_request{") && l.contains("close")).collect();
    assert!(closed.len() >= 12, "{logs}");
    let paid = closed
        .iter()
        .find(|l| l.contains("outcome=\"paid\"") && l.contains("route=/paid"))
        .expect("a paid span");
    for field in
        ["method=\"POST\"", "plan=", "credits_asked=2", "credits_settled=2", "verify_ms=", "settle_ms="]
    {
        assert!(paid.contains(field), "{field} missing in {paid}");
    }
    assert!(!logs.contains(&local_token_prefix()), "a token reached the logs");
}

/// Tokens are base64 JSON of an x402 payload: they start with this.
fn local_token_prefix() -> String {
    "eyJ4NDAyVmVyc2lvbiI".to_owned()
}
