//! Unpaid requests are refused before any body byte is read, on a cold server and on a
//! prepared one, for both forms; `Payments::prepare` fetches every plan at start-up and
//! refuses an unknown plan or an unreachable backend.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, post, web};
use nvm_runtime::error::ConfigErrorKind;
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::{PaymentMiddleware, RouteConfig, paid};
use nvm_tests::{Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, Runs, TestServer, payments_for, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[post("/upload")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1)]
async fn upload(body: web::Bytes, runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    HttpResponse::Ok().body(format!("{} bytes", body.len()))
}

async fn plain_upload(body: web::Bytes, runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    HttpResponse::Ok().body(format!("{} bytes", body.len()))
}

const DECLARED: usize = 5_000_000;

/// Sends the head of a 5 MB POST and 1 KiB of its body, then waits for the answer
/// without sending the rest: an answer proves the body was not waited for.
async fn unpaid_big_post(server: &TestServer, path: &str) -> (u16, Duration) {
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {DECLARED}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'x'; 1024]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await;
    let read = read.expect("an answer without the body").unwrap();
    let text = String::from_utf8_lossy(&answer[..read]);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, started.elapsed())
}

fn macro_server(local: &LocalFacilitator, payments: nvm_runtime::Payments) -> TestServer {
    let _ = local;
    serve(Some(payments), |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::PayloadConfig::new(64 * 1024)).service(upload);
    })
}

fn middleware_server(payments: nvm_runtime::Payments) -> TestServer {
    let table = PaymentMiddleware::new(payments)
        .route("POST /upload", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(1));
    serve(None, move |cfg: &mut web::ServiceConfig| {
        cfg.service(
            web::scope("")
                .wrap(table.clone())
                .app_data(web::PayloadConfig::new(64 * 1024))
                .route("/upload", web::post().to(plain_upload)),
        );
    })
}

#[actix_web::test]
async fn a_cold_server_refuses_an_unpaid_5_mb_post_with_402_before_reading_it() {
    for form in ["#[paid]", "middleware"] {
        let local = Arc::new(LocalFacilitator::start().unwrap());
        // The plan fetch of a cold server is slow: the body must not be read meanwhile.
        local.inject_times(Endpoint::Plans, Fault::Delay(Duration::from_millis(300)), 1);
        let payments = payments_for(&local).build().unwrap();
        let server =
            if form == "#[paid]" { macro_server(&local, payments) } else { middleware_server(payments) };
        let (status, elapsed) = unpaid_big_post(&server, "/upload").await;
        assert_eq!(status, 402, "{form}: an unpaid request is a 402, not a 413");
        assert!(elapsed < Duration::from_secs(2), "{form}: {elapsed:?}");
        assert_eq!(server.runs.count(), 0);
        assert_eq!(Calls::of(&local).verify, 0);
    }
}

#[actix_web::test]
async fn a_prepared_server_answers_at_once_and_never_fetches_a_plan_on_a_request() {
    for form in ["#[paid]", "middleware"] {
        let local = Arc::new(LocalFacilitator::start().unwrap());
        let payments = payments_for(&local).build().unwrap();
        let server = if form == "#[paid]" {
            payments.prepare().await.unwrap();
            macro_server(&local, payments)
        } else {
            let server = middleware_server(payments.clone());
            // The table registered its plan with the configuration it was built from.
            payments.prepare().await.unwrap();
            server
        };
        let fetched = Calls::of(&local).plans;
        assert!(fetched >= 1, "{form}: prepare fetched the plan");
        // Any fetch now would take 2 s.
        local.inject(Endpoint::Plans, Fault::Delay(Duration::from_secs(2)));
        for _ in 0..3 {
            let (status, elapsed) = unpaid_big_post(&server, "/upload").await;
            assert_eq!(status, 402, "{form}");
            assert!(elapsed < Duration::from_millis(500), "{form}: waited {elapsed:?}");
        }
        assert_eq!(Calls::of(&local).plans, fetched, "{form}: no fetch on a request");
    }
}

#[actix_web::test]
async fn prepare_refuses_an_unknown_plan_and_an_unreachable_backend_by_name() {
    let local = LocalFacilitator::start().unwrap();
    let payments = payments_for(&local).build().unwrap();
    let _table = PaymentMiddleware::new(payments.clone()).route("POST /x", RouteConfig::new("4242"));
    let error = payments.prepare().await.unwrap_err();
    assert_eq!(error.kind(), ConfigErrorKind::PlanUnavailable, "{error}");
    assert!(error.to_string().starts_with("plan 4242 could not be prepared"), "{error}");
    // A closed port: nothing listens there any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let unreachable = nvm_runtime::Payments::builder()
        .api_key(local.builder_api_key())
        .backend_url(format!("http://{closed}"))
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let error = unreachable.prepare().await.unwrap_err();
    let message = error.to_string();
    assert_eq!(error.kind(), ConfigErrorKind::PlanUnavailable, "{message}");
    assert!(message.contains(DEMO_PLAN_ID) && message.contains(&closed.to_string()), "{message}");
}
