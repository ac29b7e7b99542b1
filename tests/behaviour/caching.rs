//! Caches never serve paid content to someone who did not pay: every 402 carries
//! `Cache-Control: no-store`, and every paid answer `private, no-store`, whatever the
//! handler set, or the route's own `private` value when it opts into caching; on both
//! forms, for plain and streamed bodies.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use actix_web::{HttpResponse, web};
use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
use nvm_runtime::local::LocalFacilitator;
use nvm_runtime::{PaymentMiddleware, Payments, RouteConfig, paid};
use nvm_tests::{CREDITS, DEMO_AGENT_ID, DEMO_PLAN_ID, TestServer, http, payments_for, serve};

/// A paid answer that asks shared caches to keep it for an hour.
async fn cacheable() -> HttpResponse {
    HttpResponse::Ok().insert_header(("cache-control", "public, max-age=3600")).body("paid, cacheable?")
}

/// The same, streamed.
async fn streamed() -> HttpResponse {
    let chunks = [Ok::<_, std::io::Error>(web::Bytes::from_static(b"data: a\n\n"))];
    HttpResponse::Ok()
        .insert_header(("cache-control", "public, max-age=3600"))
        .content_type("text/event-stream")
        .streaming(nvm_tests::ready_stream(chunks))
}

#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2)]
#[actix_web::get("/macro/plain")]
async fn macro_plain() -> HttpResponse {
    cacheable().await
}

#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2)]
#[actix_web::get("/macro/stream")]
async fn macro_stream() -> HttpResponse {
    streamed().await
}

#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2, cache_control = "private, max-age=300")]
#[actix_web::get("/macro/kept")]
async fn macro_kept() -> HttpResponse {
    cacheable().await
}

fn app(payments: Payments) -> impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static {
    move |cfg: &mut web::ServiceConfig| {
        let route = || RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(CREDITS);
        let table = PaymentMiddleware::new(payments.clone())
            .route("GET /mw/plain", route())
            .route("GET /mw/stream", route())
            .route("GET /mw/kept", route().cache_control("private, max-age=300"));
        cfg.service(macro_plain).service(macro_stream).service(macro_kept).service(
            web::scope("/mw")
                .wrap(table)
                .route("/plain", web::get().to(cacheable))
                .route("/stream", web::get().to(streamed))
                .route("/kept", web::get().to(cacheable)),
        );
        cfg.route("/free", web::get().to(cacheable));
    }
}

async fn cache_control(server: &TestServer, path: &str, token: Option<&str>) -> (u16, Option<String>) {
    let mut request = http().get(server.at(path));
    if let Some(token) = token {
        request = request.header("payment-signature", token);
    }
    let response = request.send().await.unwrap();
    let value = response.headers().get("cache-control").map(|v| v.to_str().unwrap().to_owned());
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    (status, value)
}

#[actix_web::test]
async fn no_402_and_no_paid_answer_is_stored_by_a_cache() {
    let local = LocalFacilitator::start().unwrap();
    let payments = payments_for(&local).build().unwrap();
    let server = serve(Some(payments.clone()), app(payments));
    let token = local.mint_token(MintOptions::new());
    for path in ["/macro/plain", "/macro/stream", "/mw/plain", "/mw/stream"] {
        assert_eq!(
            cache_control(&server, path, None).await,
            (402, Some("no-store".into())),
            "{path}: unpaid"
        );
        assert_eq!(
            cache_control(&server, path, Some("bm90LWEtdG9rZW4")).await,
            (402, Some("no-store".into())),
            "{path}: a malformed token"
        );
        assert_eq!(
            cache_control(&server, path, Some(&token)).await,
            (200, Some("private, no-store".into())),
            "{path}: paid, whatever the handler asked"
        );
    }
    // A route that opts into private caching: its value on the paid answer, still
    // no-store on its 402.
    for path in ["/macro/kept", "/mw/kept"] {
        assert_eq!(cache_control(&server, path, None).await, (402, Some("no-store".into())), "{path}");
        assert_eq!(
            cache_control(&server, path, Some(&token)).await,
            (200, Some("private, max-age=300".into())),
            "{path}: the route's own private value"
        );
    }
    // A route that would let a shared cache keep paid answers is refused by name.
    for leaky in ["public, max-age=300", "private, s-maxage=60", "max-age=300"] {
        let error = PaymentMiddleware::new(payments_for(&local).build().unwrap())
            .route("GET /mw/plain", RouteConfig::new(DEMO_PLAN_ID).cache_control(leaky))
            .check()
            .unwrap_err();
        assert!(
            error.to_string().contains("GET /mw/plain") && error.to_string().contains("private"),
            "{error}"
        );
    }
    // A free route keeps what its handler set.
    assert_eq!(cache_control(&server, "/free", None).await, (200, Some("public, max-age=3600".into())));
}

#[actix_web::test]
async fn a_402_built_by_the_seller_s_hook_is_not_stored_either() {
    let local = LocalFacilitator::start().unwrap();
    let payments = payments_for(&local)
        .on_payment_error(|_, error| {
            let response = HttpResponse::PaymentRequired()
                .insert_header(("cache-control", "public, max-age=600"))
                .body(format!("pay first: {error}"));
            Some(response)
        })
        .build()
        .unwrap();
    let server = serve(Some(payments.clone()), app(payments));
    for path in ["/macro/plain", "/mw/plain"] {
        assert_eq!(cache_control(&server, path, None).await, (402, Some("no-store".into())), "{path}");
    }
}
