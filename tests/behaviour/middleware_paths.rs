//! The routes table protects exactly what the router serves: generated path variants
//! (percent-encoding of any character in any segment, upper and lower hex, doubled and
//! trailing slashes, `HEAD` for `GET`, scoped routes, regex and tail segments), sent as
//! raw bytes to an app with the table and to its twin without it, under three
//! `NormalizePath` placements. Every variant the twin routes to a protected handler
//! must be 402 without a token; every other variant must get exactly the twin's answer.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use actix_web::middleware::{Condition, NormalizePath};
use actix_web::{App, HttpResponse, HttpServer, web};
use nvm_runtime::local::LocalFacilitator;
use nvm_runtime::{PaymentMiddleware, Payments, RouteConfig};
use nvm_tests::{Calls, DEMO_PLAN_ID, RawAnswer, payments_for};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

/// Handlers answer with their name in `x-handler` (HEAD answers have no body).
fn named(name: &'static str) -> impl Fn() -> std::future::Ready<HttpResponse> + Clone + 'static {
    move || std::future::ready(HttpResponse::Ok().insert_header(("x-handler", name)).body(name))
}

/// The app's routes. Order matters to the router: `/reports/free` before
/// `/reports/{rid}`, `/orders/{id:\d+}` before `/orders/{name}`.
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("/v1").route("/models/{id}", web::get().to(named("models"))))
        .route("/ask", web::post().to(named("ask")))
        .route("/ask", web::get().to(named("ask-get")))
        .route("/asking", web::post().to(named("asking")))
        .route("/reports/free", web::get().to(named("reports-free")))
        .route("/reports/{rid}", web::get().to(named("reports")))
        .route("/files/{tail}*", web::get().to(named("files")))
        .route(r"/orders/{id:\d+}", web::get().to(named("orders")))
        .route("/orders/{name}", web::get().to(named("orders-named")))
        .route("/any", web::route().to(named("any")))
        .route("/health", web::get().to(named("health")));
}

/// The table, keyed in every accepted form; `(handler, method)` pairs it protects.
fn table(payments: Payments) -> PaymentMiddleware {
    let plan = || RouteConfig::new(DEMO_PLAN_ID).credits(2);
    PaymentMiddleware::new(payments)
        .route("GET /v1/models/{id}", plan())
        .route("POST /ask", plan())
        .route("GET /reports/:id", plan())
        .route("GET /files/{path}*", plan())
        .route(r"GET /orders/{n:\d+}", plan())
        .route("GET /any", plan())
}

const PROTECTED: [(&str, &str); 6] = [
    ("models", "GET"),
    ("ask", "POST"),
    ("reports", "GET"),
    ("files", "GET"),
    ("orders", "GET"),
    ("any", "GET"),
];

fn is_protected(handler: &str, method: &str) -> bool {
    let method = if method == "HEAD" { "GET" } else { method };
    PROTECTED.contains(&(handler, method))
}

const BASES: [(&str, &str); 13] = [
    ("POST", "/ask"),
    ("GET", "/ask"),
    ("POST", "/asking"),
    ("GET", "/v1/models/3"),
    ("GET", "/reports/7"),
    ("GET", "/reports/free"),
    ("GET", "/files/a/b.txt"),
    ("GET", "/orders/12"),
    ("GET", "/orders/abc"),
    ("GET", "/any"),
    ("POST", "/any"),
    ("DELETE", "/any"),
    ("GET", "/health"),
];

/// Where `NormalizePath` sits relative to the table.
#[derive(Debug, Clone, Copy)]
enum Normalize {
    None,
    Outside,
    Inside,
}

fn start(payments: Payments, guarded: bool, normalize: Normalize) -> (String, actix_web::dev::ServerHandle) {
    let server = HttpServer::new(move || {
        // `wrap` order: the last one wraps the others (runs first).
        App::new()
            .configure(routes)
            .wrap(Condition::new(matches!(normalize, Normalize::Inside), NormalizePath::trim()))
            .wrap(Condition::new(guarded, table(payments.clone())))
            .wrap(Condition::new(matches!(normalize, Normalize::Outside), NormalizePath::trim()))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (addr.to_string(), handle)
}

/// Sends `method path` as raw bytes; returns the status and `x-handler`.
async fn raw(addr: &str, method: &str, path: &str) -> (u16, Option<String>) {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let answer = RawAnswer::exchange(addr, request.as_bytes()).await;
    (answer.status(), answer.header("x-handler").map(str::to_owned))
}

/// A variant of a base path: some characters percent-encoded (either hex case), one
/// slash doubled, a trailing slash, `HEAD` instead of `GET`.
fn variant() -> impl Strategy<Value = (String, String)> {
    (
        0..BASES.len(),
        prop::collection::vec((any::<bool>(), any::<bool>()), 16),
        prop::option::of(0usize..8),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(base, encode, doubled, trailing, head)| {
            let (method, path) = BASES[base];
            let method = if head && method == "GET" { "HEAD" } else { method };
            let mut out = String::new();
            let mut slashes = 0;
            for (i, c) in path.chars().enumerate() {
                let (encoded, upper) = encode.get(i).copied().unwrap_or((false, false));
                if c == '/' {
                    out.push('/');
                    if doubled == Some(slashes) {
                        out.push('/');
                    }
                    slashes += 1;
                } else if encoded {
                    let hex = if upper { format!("%{:02X}", c as u32) } else { format!("%{:02x}", c as u32) };
                    out.push_str(&hex);
                } else {
                    out.push(c);
                }
            }
            if trailing {
                out.push('/');
            }
            (method.to_owned(), out)
        })
}

fn variants(count: u32) -> Vec<(String, String)> {
    let mut runner = TestRunner::new(Config { cases: count, ..Config::default() });
    let strategy = variant();
    let mut out: Vec<(String, String)> =
        (0..count).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect();
    // Every base as it is, too.
    out.extend(BASES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())));
    out
}

#[actix_web::test]
async fn every_variant_routed_to_a_protected_handler_is_402_and_nothing_else_is_charged() {
    let local = Arc::new(LocalFacilitator::start().unwrap());
    let payments = payments_for(&local).build().unwrap();
    let cases = variants(256);
    let mut protected = 0;
    let mut passed_through = 0;
    let mut unrouted = 0;
    for normalize in [Normalize::None, Normalize::Outside, Normalize::Inside] {
        let (twin, twin_handle) = start(payments.clone(), false, normalize);
        let (guarded, guarded_handle) = start(payments.clone(), true, normalize);
        for (method, path) in &cases {
            let expected = raw(&twin, method, path).await;
            let got = raw(&guarded, method, path).await;
            let routed_to_paid =
                expected.0 == 200 && expected.1.as_deref().is_some_and(|h| is_protected(h, method));
            if routed_to_paid {
                protected += 1;
                assert_eq!(
                    got.0, 402,
                    "{normalize:?} {method} {path}: the twin serves {expected:?} for free"
                );
            } else if expected.1.is_none() && got.0 == 402 {
                // Nothing serves it (404, 405): asking a payment for it charges no route
                // (`HEAD` is asked as `GET`, for apps that route every method).
                unrouted += 1;
            } else {
                passed_through += 1;
                assert_eq!(got, expected, "{normalize:?} {method} {path}: not protected, must pass through");
            }
        }
        twin_handle.stop(false).await;
        guarded_handle.stop(false).await;
    }
    // Both outcomes were exercised in volume.
    assert!(protected > 100 && passed_through > 200, "protected {protected}, passed {passed_through}");
    println!(
        "{} variants: {protected} protected, {passed_through} passed through, {unrouted} unrouted asked to pay",
        cases.len() * 3
    );
    assert_eq!(Calls::of(&local).verify, 0);
}
