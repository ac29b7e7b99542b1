//! What actix-web (actix-http 3.x, h1 dispatcher) does to a paid request whose client
//! goes away after sending the whole request, and to `Expect: 100-continue`, over raw
//! TCP, for both forms (`#[paid]` and `PaymentMiddleware`). The ledger is reconciled
//! exactly: credits burned == price × settle calls.
//!
//! - **Orderly close (FIN)** — `shutdown()` then drop, as a client that times out or is
//!   killed normally does: the dispatcher reads EOF, marks only the read half closed
//!   and, since `h1_allow_half_closed` defaults to `true`, keeps polling the service
//!   future. Verification finishes, the handler runs to its end and the request is
//!   settled once, as if the client had stayed.
//! - **Abortive close (RST)** — `SO_LINGER` 0 then drop: the dispatcher's read fails
//!   with `ConnectionReset`, the error ends the connection task and the service future
//!   is dropped at its current `.await`: the handler (if started) never finishes and
//!   nothing is settled, whether the client left during verification or while the
//!   handler ran.
//! - **`Expect: 100-continue` without a token**: actix-http's default expect handler
//!   answers `HTTP/1.1 100 Continue` before the app sees the request; the 402 follows
//!   without the body being sent.
//! - **Gone in the middle of the body**: the body's extractor fails, the handler never
//!   runs, nothing is settled.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, post, web};
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::{PaymentMiddleware, RouteConfig, paid};
use nvm_tests::{Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, Runs, TestServer, mint, payments_for, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The price of `POST /work`, in both forms.
const PRICE: u64 = 5;

/// How long the handler works.
const WORK: Duration = Duration::from_millis(300);

/// `Runs` counts twice per request here: once when the body starts, once when it ends.
/// A count of 1 is a handler that started and was dropped at its `.await`.
async fn work(body: web::Bytes, runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    tokio::time::sleep(WORK).await;
    runs.hit();
    HttpResponse::Ok().body(format!("{} bytes", body.len()))
}

#[post("/work")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 5)]
async fn paid_work(body: web::Bytes, runs: web::Data<Runs>) -> HttpResponse {
    work(body, runs).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Paid,
    Middleware,
}

const FORMS: [Form; 2] = [Form::Paid, Form::Middleware];

fn server(local: &LocalFacilitator, form: Form) -> TestServer {
    let payments = payments_for(local).build().unwrap();
    match form {
        Form::Paid => serve(Some(payments), |cfg: &mut web::ServiceConfig| {
            cfg.service(paid_work);
        }),
        Form::Middleware => {
            let table = PaymentMiddleware::new(payments)
                .route("POST /work", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(PRICE));
            serve(None, move |cfg: &mut web::ServiceConfig| {
                cfg.service(web::scope("").wrap(table.clone()).route("/work", web::post().to(work)));
            })
        }
    }
}

/// How the client leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// `shutdown()` (FIN), then drop.
    Orderly,
    /// `SO_LINGER` 0, then drop: the kernel sends RST.
    Abortive,
}

/// When the client leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// While the facilitator holds verification (an injected 300 ms delay).
    DuringVerify,
    /// While the handler sleeps its 300 ms.
    DuringHandler,
}

/// What the ledger and the counters say ~1 s after the client left.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Handler body entries + exits (see [`work`]).
    runs: usize,
    verify: u64,
    settle: u64,
    burned: u64,
}

fn balance(local: &LocalFacilitator) -> u64 {
    local.balance(DEMO_PLAN_ID, local.subscriber_address())
}

/// Sends a complete paid POST over raw TCP, leaves at `moment` by `close`, waits 1 s and
/// reads the ledger.
async fn hang_up(form: Form, moment: Moment, close: Close) -> Outcome {
    let local = Arc::new(LocalFacilitator::start().unwrap());
    let server = server(&local, form);
    let token = mint(&local).await;
    let start = balance(&local);
    let before = Calls::of(&local);
    if moment == Moment::DuringVerify {
        local.inject_times(Endpoint::Verify, Fault::Delay(Duration::from_millis(300)), 1);
    }

    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /work HTTP/1.1\r\nHost: {addr}\r\npayment-signature: {token}\r\nContent-Length: 4\r\n\r\nping"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The client leaves at the moment named, not before or after it.
    let verify_so_far = Calls::of(&local).verify - before.verify;
    match moment {
        Moment::DuringVerify => {
            assert_eq!((verify_so_far, server.runs.count()), (1, 0), "{form:?}: verify in flight");
        }
        Moment::DuringHandler => {
            assert_eq!((verify_so_far, server.runs.count()), (1, 1), "{form:?}: handler running");
        }
    }
    assert_eq!(Calls::of(&local).settle, before.settle, "{form:?}: nothing settled yet");
    match close {
        Close::Orderly => stream.shutdown().await.unwrap(),
        Close::Abortive => stream.set_zero_linger().unwrap(),
    }
    drop(stream);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = Calls::of(&local);
    let outcome = Outcome {
        runs: server.runs.count(),
        verify: after.verify - before.verify,
        settle: after.settle - before.settle,
        burned: start - balance(&local),
    };
    // Exact reconciliation, whatever the outcome: each settle burned the price once.
    assert_eq!(outcome.burned, PRICE * outcome.settle, "{form:?} {moment:?} {close:?}: {outcome:?}");
    outcome
}

/// Served and settled once, as if the client had stayed.
const SERVED: Outcome = Outcome { runs: 2, verify: 1, settle: 1, burned: PRICE };

#[actix_web::test]
async fn orderly_close_during_verification_is_served_and_settled_once() {
    for form in FORMS {
        assert_eq!(hang_up(form, Moment::DuringVerify, Close::Orderly).await, SERVED, "{form:?}");
    }
}

#[actix_web::test]
async fn orderly_close_while_the_handler_runs_is_served_and_settled_once() {
    for form in FORMS {
        assert_eq!(hang_up(form, Moment::DuringHandler, Close::Orderly).await, SERVED, "{form:?}");
    }
}

#[actix_web::test]
async fn reset_during_verification_drops_the_request_before_the_handler_nothing_burned() {
    for form in FORMS {
        let dropped = Outcome { runs: 0, verify: 1, settle: 0, burned: 0 };
        assert_eq!(hang_up(form, Moment::DuringVerify, Close::Abortive).await, dropped, "{form:?}");
    }
}

#[actix_web::test]
async fn reset_while_the_handler_runs_drops_the_handler_mid_await_nothing_burned() {
    for form in FORMS {
        // Entered once, never finished; no settle.
        let dropped = Outcome { runs: 1, verify: 1, settle: 0, burned: 0 };
        assert_eq!(hang_up(form, Moment::DuringHandler, Close::Abortive).await, dropped, "{form:?}");
    }
}

/// Gone in the middle of its body (an orderly close after 10 of 1000 declared bytes): the
/// body's extractor fails and the handler never runs; nothing is settled. Waited on the
/// server's answer to the broken request (it ends its handling), not on a fixed pause.
#[actix_web::test]
async fn gone_in_the_middle_of_the_body_nothing_is_settled() {
    for form in FORMS {
        let local = Arc::new(LocalFacilitator::start().unwrap());
        let server = server(&local, form);
        let token = mint(&local).await;
        let start = balance(&local);
        let addr = server.url.trim_start_matches("http://").to_owned();
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /work HTTP/1.1\r\nHost: {addr}\r\npayment-signature: {token}\r\nContent-Length: 1000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&[b'x'; 10]).await.unwrap();
        stream.shutdown().await.unwrap();
        // The server is done with the request once it answers or closes the connection.
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the server ends the broken request")
            .ok();
        let calls = Calls::of(&local);
        assert_eq!(server.runs.count(), 0, "{form:?}: the handler never ran");
        assert_eq!((calls.settle, start - balance(&local)), (0, 0), "{form:?}: nothing settled");
        assert!(calls.verify <= 1, "{form:?}");
    }
}

#[actix_web::test]
async fn expect_100_continue_without_a_token_gets_100_continue_then_402_without_the_body() {
    for form in FORMS {
        let local = Arc::new(LocalFacilitator::start().unwrap());
        let server = server(&local, form);
        let addr = server.url.trim_start_matches("http://").to_owned();
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /work HTTP/1.1\r\nHost: {addr}\r\nExpect: 100-continue\r\nContent-Length: 5000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // No body is ever sent; read until the 402's head is complete.
        let mut answer = Vec::new();
        let read = async {
            let mut buffer = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&answer);
                if text.find("HTTP/1.1 402").is_some_and(|at| text[at..].contains("\r\n\r\n")) {
                    return;
                }
                let n = stream.read(&mut buffer).await.unwrap();
                assert!(n > 0, "{form:?}: closed before a 402: {text}");
                answer.extend_from_slice(&buffer[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(2), read).await.expect("a 402 without the body, within 2 s");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 402 "), "{form:?}: {text}");
        assert!(text.to_ascii_lowercase().contains("\r\npayment-required: "), "{form:?}: {text}");
        assert_eq!(server.runs.count(), 0, "{form:?}: the handler never ran");
        assert_eq!(Calls::of(&local).verify, 0, "{form:?}");
        assert_eq!(Calls::of(&local).settle, 0, "{form:?}");
    }
}
