//! Clients that hang up, and `Expect: 100-continue`, over raw TCP, for both forms; the
//! ledger must agree with the README's policy:
//!
//! - gone in the middle of its body: the extractor fails, nothing is settled;
//! - gone with an orderly close (FIN) after sending its whole request (during
//!   verification or while the handler runs): actix-web allows half-closed connections,
//!   runs the request to its end and gives the app no sign, so a 2xx is settled once,
//!   as for a buyer who stayed (a reset connection drops the request instead: see
//!   `hangup.rs`);
//! - `Expect: 100-continue` without a token: actix-web's server writes `100 Continue`
//!   before the app sees the request, then the 402 comes without the body being sent.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, post, web};
use nvm_runtime::actix::{PaymentMiddleware, RouteConfig};
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::paid;
use nvm_tests::{DEMO_AGENT_ID, DEMO_PLAN_ID, Runs, TestServer, mint, payments_for, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PRICE: u64 = 3;

#[post("/slow")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 3)]
async fn slow(body: web::Bytes, runs: web::Data<Runs>) -> HttpResponse {
    tokio::time::sleep(Duration::from_millis(300)).await;
    runs.hit();
    HttpResponse::Ok().body(format!("{} bytes", body.len()))
}

async fn plain_slow(body: web::Bytes, runs: web::Data<Runs>) -> HttpResponse {
    tokio::time::sleep(Duration::from_millis(300)).await;
    runs.hit();
    HttpResponse::Ok().body(format!("{} bytes", body.len()))
}

fn server(local: &LocalFacilitator, form: &str) -> TestServer {
    let payments = payments_for(local).build().unwrap();
    if form == "#[paid]" {
        return serve(Some(payments), |cfg: &mut web::ServiceConfig| {
            cfg.service(slow);
        });
    }
    let table = PaymentMiddleware::new(payments)
        .route("POST /slow", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(PRICE));
    serve(None, move |cfg: &mut web::ServiceConfig| {
        cfg.service(web::scope("").wrap(table.clone()).route("/slow", web::post().to(plain_slow)));
    })
}

/// Writes a POST head (with `token`) declaring `declared` body bytes, then `sent` bytes
/// of it, waits `hold`, and drops the connection.
async fn post_and_hang_up(server: &TestServer, token: &str, declared: usize, sent: usize, hold: Duration) {
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /slow HTTP/1.1\r\nHost: {addr}\r\npayment-signature: {token}\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; sent]).await.unwrap();
    tokio::time::sleep(hold).await;
    drop(stream);
}

fn balance(local: &LocalFacilitator) -> u64 {
    local.balance(DEMO_PLAN_ID, local.subscriber_address())
}

#[actix_web::test]
async fn the_ledger_agrees_with_the_hang_up_policy() {
    for form in ["#[paid]", "middleware"] {
        let local = Arc::new(LocalFacilitator::start().unwrap());
        let server = server(&local, form);
        let token = mint(&local).await;
        let start = balance(&local);

        let settled_before = local.calls().settle;

        // Gone in the middle of the body: the extractor never completes.
        post_and_hang_up(&server, &token, 1000, 10, Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(balance(&local), start, "{form}: gone mid-body, nothing burned");
        assert_eq!(local.calls().settle, settled_before, "{form}: no settle for a broken body");
        assert_eq!(server.runs.count(), 0, "{form}: the handler never ran");

        // Gone while verification is in flight, then while the handler runs: each runs to
        // its end and is settled once.
        local.inject_times(Endpoint::Verify, Fault::Delay(Duration::from_millis(300)), 1);
        post_and_hang_up(&server, &token, 4, 4, Duration::from_millis(50)).await;
        post_and_hang_up(&server, &token, 4, 4, Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(server.runs.count(), 2, "{form}: the handlers ran to their end");
        assert_eq!(balance(&local), start - 2 * PRICE, "{form}: each settled once, at the route's price");
        assert_eq!(local.calls().settle, settled_before + 2, "{form}");
    }
}

#[actix_web::test]
async fn expect_100_continue_gets_continue_then_402_without_the_body() {
    for form in ["#[paid]", "middleware"] {
        let local = Arc::new(LocalFacilitator::start().unwrap());
        let server = server(&local, form);
        let addr = server.url.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /slow HTTP/1.1\r\nHost: {addr}\r\nExpect: 100-continue\r\nContent-Length: 5000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        let read = async {
            loop {
                let n = stream.read(&mut buffer).await.unwrap();
                answer.extend_from_slice(&buffer[..n]);
                if n == 0 || String::from_utf8_lossy(&answer).contains("HTTP/1.1 402") {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(2), read).await.expect("a 402 without the body");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 402"), "{form}: {text}");
        assert_eq!(server.runs.count(), 0);
        assert_eq!(local.calls().verify, 0);
    }
}
