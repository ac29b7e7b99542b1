//! What only the routes-table form has: route matching (exact, `:param`, method and
//! segment-count mismatches, trailing slash, query string), refused keys, and a
//! streamed response that arrives chunk by chunk with its receipt.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use nvm_runtime::local::LocalFacilitator;
use nvm_runtime::{PaymentMiddleware, RouteConfig};
use nvm_tests::{Calls, DEMO_PLAN_ID, Runs, http, mint, payments_for, receipt, serve};

async fn echo(runs: web::Data<Runs>, req: actix_web::HttpRequest) -> HttpResponse {
    runs.hit();
    HttpResponse::Ok().body(req.path().to_owned())
}

/// Three server-sent events, 100 ms apart.
struct Events {
    sent: u32,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl futures_core::Stream for Events {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.sent == 3 {
            return Poll::Ready(None);
        }
        let sleep =
            self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
        if std::future::Future::poll(sleep.as_mut(), cx).is_pending() {
            return Poll::Pending;
        }
        self.sleep = None;
        self.sent += 1;
        Poll::Ready(Some(Ok(Bytes::from(format!("data: {}\n\n", self.sent)))))
    }
}

async fn events(runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    HttpResponse::Ok().content_type("text/event-stream").streaming(Events { sent: 0, sleep: None })
}

fn setup() -> (Arc<LocalFacilitator>, nvm_tests::TestServer) {
    let local = Arc::new(LocalFacilitator::start().unwrap());
    let table = PaymentMiddleware::new(payments_for(&local).build().unwrap())
        .route("POST /items/special", RouteConfig::new(DEMO_PLAN_ID).credits(7))
        .route("POST /items/:id", RouteConfig::new(DEMO_PLAN_ID).credits(2))
        .route("GET /users/:user/reports/:report", RouteConfig::new(DEMO_PLAN_ID).credits(3))
        .route("get /stream", RouteConfig::new(DEMO_PLAN_ID).credits(4));
    table.check().unwrap();
    let server = serve(None, move |cfg: &mut web::ServiceConfig| {
        cfg.service(
            web::scope("")
                .wrap(table.clone())
                .route("/items/{id}", web::post().to(echo))
                .route("/items/{id}", web::get().to(echo))
                .route("/items/{id}/", web::post().to(echo))
                .route("/items/{id}/extra", web::post().to(echo))
                .route("/users/{user}/reports/{report}", web::get().to(echo))
                .route("/stream", web::get().to(events))
                .route("/free", web::get().to(echo)),
        );
    });
    (local, server)
}

#[actix_web::test]
async fn routes_match_exact_first_then_patterns_by_method_and_segment_count() {
    let (local, server) = setup();
    let token = mint(&local).await;
    let paid = |path: &'static str, method: reqwest::Method| {
        let request = http().request(method, server.at(path)).header("payment-signature", token.clone());
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                receipt(&response).map(|r| r.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0)),
            )
        }
    };
    // Exact key wins over the pattern.
    assert_eq!(paid("/items/special", reqwest::Method::POST).await, (200, Some(7)));
    // `:param` pattern.
    assert_eq!(paid("/items/42", reqwest::Method::POST).await, (200, Some(2)));
    // Query string ignored.
    assert_eq!(paid("/items/42?x=1&y=2", reqwest::Method::POST).await, (200, Some(2)));
    // A trailing slash is its own resource here (`/items/{id}/`), not in the table: free,
    // as the router serves it (behaviour/middleware_paths.rs covers `NormalizePath`).
    assert_eq!(paid("/items/42/", reqwest::Method::POST).await, (200, None));
    // Two params.
    assert_eq!(paid("/users/ann/reports/9", reqwest::Method::GET).await, (200, Some(3)));
    // Method mismatch: passes through untouched, free.
    assert_eq!(paid("/items/42", reqwest::Method::GET).await, (200, None));
    // Segment-count mismatch: passes through.
    assert_eq!(paid("/items/42/extra", reqwest::Method::POST).await, (200, None));
    // Unlisted route: passes through, no token needed.
    let response = http().get(server.at("/free")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // A listed route without a token: 402.
    let response = http().post(server.at("/items/1")).send().await.unwrap();
    assert_eq!(response.status(), 402);
    assert_eq!(Calls::of(&local).settle, 4);
}

#[actix_web::test]
async fn a_streamed_response_arrives_chunk_by_chunk_and_ends_with_its_receipt() {
    let (local, server) = setup();
    let before = local.balance(DEMO_PLAN_ID, local.subscriber_address());
    let token = mint(&local).await;
    let started = Instant::now();
    let mut response =
        http().get(server.at("/stream")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // Streamed bodies settle after their end: no receipt in the head, which comes at once.
    assert!(receipt(&response).is_none(), "a streamed head carries no receipt");
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "headers came after the stream: {:?}",
        started.elapsed()
    );
    let mut chunks = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        chunks.push((started.elapsed(), chunk));
    }
    let text: String = chunks.iter().map(|(_, c)| String::from_utf8_lossy(c)).collect();
    // The receipt is the last event.
    let receipt =
        nvm_runtime::__private::wire::event_stream_receipt(&text).expect("a payment-response event");
    assert_eq!(receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), 4);
    let last = format!("event: payment-response\ndata: {}\n\n", receipt.to_header());
    assert_eq!(text, format!("data: 1\n\ndata: 2\n\ndata: 3\n\n{last}"));
    assert!(chunks.len() >= 3, "the body came in one piece: {chunks:?}");
    assert!(
        chunks[0].0 + Duration::from_millis(150) < chunks[chunks.len() - 1].0,
        "not streamed: {chunks:?}"
    );
    assert_eq!(local.balance(DEMO_PLAN_ID, local.subscriber_address()), before - 4);
}

#[nvm_runtime::paid(plan = DEMO_PLAN_ID, credits = 9)]
async fn annotated(runs: web::Data<Runs>) -> &'static str {
    runs.hit();
    "annotated"
}

#[actix_web::test]
async fn a_paid_handler_behind_a_middleware_route_is_charged_once() {
    let local = Arc::new(LocalFacilitator::start().unwrap());
    let payments = payments_for(&local).build().unwrap();
    let table = PaymentMiddleware::new(payments.clone())
        .route("POST /both", RouteConfig::new(DEMO_PLAN_ID).credits(2));
    let server = serve(Some(payments), move |cfg: &mut web::ServiceConfig| {
        cfg.service(web::scope("").wrap(table.clone()).route("/both", web::post().to(annotated)));
    });
    let before = local.balance(DEMO_PLAN_ID, local.subscriber_address());
    let token = mint(&local).await;
    let response = http().post(server.at("/both")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        receipt(&response).unwrap().credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
        2
    );
    assert_eq!(local.balance(DEMO_PLAN_ID, local.subscriber_address()), before - 2);
    let calls = Calls::of(&local);
    assert_eq!((calls.verify, calls.settle), (1, 1));
    assert_eq!(server.runs.count(), 1);
}

#[test]
fn a_key_without_a_method_is_refused_with_the_right_form() {
    let local = LocalFacilitator::start().unwrap();
    let payments = payments_for(&local).build().unwrap();
    for key in ["/ask", "POST", "POST ask", "PO ST /ask", ""] {
        let middleware = PaymentMiddleware::new(payments.clone()).route(key, RouteConfig::new("1"));
        let error = middleware.check().unwrap_err();
        assert!(error.to_string().contains("\"POST /ask\""), "{key}: {error}");
        // The first refusal is kept; a valid route after it does not hide it.
        let later = middleware.route("GET /fine", RouteConfig::new("1"));
        assert_eq!(later.check().unwrap_err().to_string(), error.to_string(), "{key}");
    }
    let fine = PaymentMiddleware::new(payments).route("delete /items/:id", RouteConfig::new("1"));
    assert!(fine.check().is_ok());
}

#[actix_web::test]
async fn an_app_with_a_bad_key_does_not_start() {
    let local = LocalFacilitator::start().unwrap();
    let table =
        PaymentMiddleware::new(payments_for(&local).build().unwrap()).route("/ask", RouteConfig::new("1"));
    let started = actix_web::dev::Transform::new_transform(&table, actix_web::test::ok_service()).await;
    assert!(started.is_err(), "the middleware must refuse to start");
}

#[actix_web::test]
async fn a_key_that_matches_no_route_of_the_app_stops_the_middleware_with_its_name() {
    let local = Arc::new(LocalFacilitator::start().unwrap());
    // Written relative to the scope: the app serves `/v1/models/{id}`, not `/models/{id}`.
    let table = PaymentMiddleware::new(payments_for(&local).build().unwrap())
        .route("GET /models/{id}", RouteConfig::new(DEMO_PLAN_ID).credits(2))
        .route("GET /status", RouteConfig::new(DEMO_PLAN_ID).credits(1));
    let server = serve(None, move |cfg: &mut web::ServiceConfig| {
        cfg.service(
            web::scope("")
                .wrap(table.clone())
                .service(web::scope("/v1").route("/models/{id}", web::get().to(echo)))
                .route("/status", web::get().to(echo)),
        );
    });
    for path in ["/v1/models/3", "/status", "/elsewhere"] {
        let response = http().get(server.at(path)).send().await.unwrap();
        assert_eq!(response.status(), 500, "{path}");
        let body = response.text().await.unwrap();
        assert!(body.contains("GET /models/{id}") && body.contains("full path"), "{body}");
        assert!(!body.contains("GET /status"), "a live key is not named: {body}");
    }
    assert_eq!(server.runs.count(), 0, "nothing is served by a table that does not fit the app");
}

#[actix_web::test]
async fn a_table_wrapped_on_a_scope_takes_full_paths() {
    let local = Arc::new(LocalFacilitator::start().unwrap());
    let table = PaymentMiddleware::new(payments_for(&local).build().unwrap())
        .route("GET /v1/models/{id}", RouteConfig::new(DEMO_PLAN_ID).credits(2));
    let server = serve(None, move |cfg: &mut web::ServiceConfig| {
        cfg.service(
            web::scope("/v1")
                .wrap(table.clone())
                .route("/models/{id}", web::get().to(echo))
                .route("/health", web::get().to(echo)),
        );
    });
    let response = http().get(server.at("/v1/m%6Fdels/3")).send().await.unwrap();
    assert_eq!(response.status(), 402);
    let response = http().get(server.at("/v1/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
