//! Prices computed from the body see the real body: the same text sent with
//! `Content-Length`, chunked in pieces of every size, or chunked in one piece costs the
//! same, for both forms; an unpaid request is refused before its body is read; a body
//! over the limit is a 413 with nothing verified.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, post, web};
use nvm_runtime::actix::credits::by_body;
use nvm_runtime::local::LocalFacilitator;
use nvm_runtime::{PaymentContext, PaymentMiddleware, RouteConfig, paid};
use nvm_tests::{Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, RawAnswer, Runs, TestServer, mint, payments_for, serve};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

/// 1 credit per 10 words, at least 1.
fn per_words(_req: &HttpRequest, body: &[u8]) -> u64 {
    (String::from_utf8_lossy(body).split_whitespace().count() as u64).div_ceil(10).max(1)
}

#[post("/translate")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = by_body(per_words).limit(4096))]
async fn translate(text: String, payment: PaymentContext, runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    HttpResponse::Ok().body(format!("{} {}", payment.credits(), text.len()))
}

async fn plain_translate(text: String, runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    HttpResponse::Ok().body(format!("{}", text.len()))
}

fn server(local: &LocalFacilitator, form: &str) -> TestServer {
    let payments = payments_for(local).build().unwrap();
    if form == "#[paid]" {
        return serve(Some(payments), |cfg: &mut web::ServiceConfig| {
            cfg.service(translate);
        });
    }
    let table = PaymentMiddleware::new(payments).route(
        "POST /translate",
        RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(by_body(per_words).limit(4096)),
    );
    serve(None, move |cfg: &mut web::ServiceConfig| {
        cfg.service(web::scope("").wrap(table.clone()).route("/translate", web::post().to(plain_translate)));
    })
}

/// Sends `text` to `/translate` over raw TCP: with `Content-Length` when `chunks` is
/// empty, else chunked in pieces of those sizes. Returns the status and the receipt's
/// credits.
async fn send(server: &TestServer, token: Option<&str>, text: &str, chunks: &[usize]) -> (u16, Option<u64>) {
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut head = format!("POST /translate HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("payment-signature: {token}\r\n"));
    }
    let mut body = Vec::new();
    if chunks.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", text.len()));
        body.extend_from_slice(text.as_bytes());
    } else {
        head.push_str("Transfer-Encoding: chunked\r\n");
        let mut rest = text.as_bytes();
        for size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*size).clamp(1, rest.len()));
            body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            body.extend_from_slice(piece);
            body.extend_from_slice(b"\r\n");
            rest = tail;
        }
        body.extend_from_slice(b"0\r\n\r\n");
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    let answer = RawAnswer::exchange(&addr, &request).await;
    let receipt = answer
        .header("payment-response")
        .and_then(|value| nvm_runtime::wire::SettleResponse::from_header(value.trim()).ok())
        .map(|r| r.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0));
    let status = answer.status();
    (status, receipt)
}

fn cases(count: u32) -> Vec<(String, Vec<usize>)> {
    let strategy = (
        prop::collection::vec("[a-z]{1,8}", 0..120).prop_map(|words| words.join(" ")),
        prop::collection::vec(1usize..64, 1..6),
    );
    let mut runner = TestRunner::new(Config { cases: count, ..Config::default() });
    (0..count).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect()
}

#[actix_web::test]
async fn the_same_text_costs_the_same_with_and_without_chunked_encoding() {
    let mut ran = 0;
    let mut burned = 0;
    for form in ["#[paid]", "middleware"] {
        let local = Arc::new(LocalFacilitator::start().unwrap());
        local.set_balance(local.plan_id(), local.subscriber_address(), 100_000);
        let server = server(&local, form);
        let token = mint(&local).await;
        for (text, chunks) in cases(24) {
            let price =
                per_words(&actix_web::test::TestRequest::default().to_http_request(), text.as_bytes());
            let plain = send(&server, Some(&token), &text, &[]).await;
            let chunked = send(&server, Some(&token), &text, &chunks).await;
            let one_piece = send(&server, Some(&token), &text, &[usize::MAX]).await;
            assert_eq!(plain, (200, Some(price)), "{form} {text:?}");
            assert_eq!(chunked, plain, "{form} chunked {chunks:?}: {text:?}");
            assert_eq!(one_piece, plain, "{form} one chunk: {text:?}");
            ran += 3;
            burned += 3 * price;
        }
        assert_eq!(local.total_burned(), burned, "{form}: the ledger agrees with the receipts");
        burned = 0;
        assert_eq!(server.runs.count(), 72, "{form}");
    }
    assert_eq!(ran, 144);
}

#[actix_web::test]
async fn unpaid_is_refused_before_the_body_and_an_oversized_body_is_413_unverified() {
    for form in ["#[paid]", "middleware"] {
        let local = Arc::new(LocalFacilitator::start().unwrap());
        let server = server(&local, form);
        assert_eq!(send(&server, None, "a few words", &[]).await.0, 402, "{form}");
        let token = mint(&local).await;
        let long = "word ".repeat(1000);
        assert_eq!(send(&server, Some(&token), &long, &[]).await.0, 413, "{form}");
        assert_eq!(send(&server, Some(&token), &long, &[100]).await.0, 413, "{form} chunked");
        assert_eq!(Calls::of(&local).verify, 0, "{form}");
        assert_eq!(server.runs.count(), 0, "{form}");
    }
}
