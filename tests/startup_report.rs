//! The start-up report: `Payments::prepare()` logs one line per paid route (method, path,
//! plan, price, settlement point), for `#[paid]` handlers and `PaymentMiddleware` tables
//! alike, and one summary line, before any traffic.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use actix_web::{HttpRequest, HttpResponse, get, post};
use nvm_runtime::local::LocalFacilitator;
use nvm_runtime::{PaymentMiddleware, RouteConfig, paid};
use nvm_tests::{DEMO_AGENT_ID, DEMO_PLAN_ID, payments_for};

#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 3, description = "Ask")]
#[post("/ask")]
async fn ask() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[paid(plan = DEMO_PLAN_ID, credits = |req: &HttpRequest| req.path().len() as u64, settle = "after_body")]
#[get("/stream")]
async fn stream() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[test]
fn prepare_reports_every_paid_route_and_a_summary() {
    let logs = nvm_tests::CapturedLogs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).init();
    actix_web::rt::System::new().block_on(async {
        let local = LocalFacilitator::start().unwrap();
        let payments = payments_for(&local).build().unwrap();
        let _table = PaymentMiddleware::new(payments.clone())
            .route("POST /mw/fixed", RouteConfig::new(DEMO_PLAN_ID).credits(7))
            .route("GET /mw/dynamic", RouteConfig::new(DEMO_PLAN_ID).credits(|_: &HttpRequest| 1));
        payments.prepare().await.unwrap();
    });
    let logs = logs.text();
    let routes: Vec<&str> =
        logs.lines().filter(|l| l.contains("paid route") && l.contains("method=")).collect();
    // Every #[paid] handler linked into the program (the support crate's `paid_content`
    // too, below its routing attribute: its method and path come with its first request),
    // and the middleware table's routes.
    assert_eq!(routes.len(), 5, "{logs}");
    assert!(
        routes.iter().any(|l| l.contains("handler=paid_content") && l.contains("(first request)")),
        "{logs}"
    );
    let line = |method: &str, path: &str| {
        *routes
            .iter()
            .find(|l| l.contains(&format!("method=\"{method}\"")) && l.contains(&format!("path=\"{path}\"")))
            .unwrap_or_else(|| panic!("no line for {method} {path}: {logs}"))
    };
    let asked = line("POST", "/ask");
    for field in [&format!("plan={DEMO_PLAN_ID}"), "price=3", "settle=\"default\"", "handler=ask"] {
        assert!(asked.contains(field), "{field} in {asked}");
    }
    assert!(
        line("GET", "/stream").contains("price=dynamic") && line("GET", "/stream").contains("after_body")
    );
    assert!(line("POST", "/mw/fixed").contains("price=7"));
    assert!(line("GET", "/mw/dynamic").contains("price=dynamic"));
    let summary =
        logs.lines().find(|l| l.contains("routes=5")).unwrap_or_else(|| panic!("no summary: {logs}"));
    assert!(summary.contains("plans=1") && summary.contains("5 paid route(s) on 1 plan(s)"), "{summary}");
    // Reported before the plans were fetched: before any traffic.
    let report_at = logs.find("paid route").unwrap();
    let prepared_at = logs.find("plan prepared").unwrap();
    assert!(report_at < prepared_at, "{logs}");
}
