//! The behaviour table, row by row, over real HTTP against the local facilitator, run
//! against both forms (`#[paid]` and `PaymentMiddleware`) by one shared table of cases:
//! status, headers, decoded envelope and receipt, whether the handler ran, and the
//! ledger afterwards.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, Responder, get, post, web};
use nvm_runtime::error::PaymentErrorKind;
use nvm_runtime::local::LocalFacilitator;
use nvm_runtime::{PaymentContext, PaymentMiddleware, Payments, PaymentsBuilder, RouteConfig, paid};
use nvm_tests::{
    Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, Runs, TestServer, envelope, http, mint, payments_for, receipt, serve,
};

/// The handlers' bodies, unannotated: `#[paid]` wraps them below, `PaymentMiddleware`
/// protects them in [`Form::Middleware`], so both forms serve the same code.
mod plain {
    use super::*;

    pub(crate) async fn ask(runs: web::Data<Runs>, payment: PaymentContext) -> HttpResponse {
        runs.hit();
        HttpResponse::Ok().json(serde_json::json!({
            "payer": payment.payer(),
            "credits": payment.credits(),
            "plan": payment.plan_id(),
            "agentRequestId": payment.agent_request_id(),
        }))
    }

    pub(crate) async fn ran(runs: web::Data<Runs>) -> &'static str {
        runs.hit();
        "ran"
    }

    pub(crate) async fn bad_request(runs: web::Data<Runs>) -> HttpResponse {
        runs.hit();
        HttpResponse::BadRequest().body("no")
    }

    pub(crate) async fn error(runs: web::Data<Runs>) -> Result<String, actix_web::Error> {
        runs.hit();
        Err(actix_web::error::ErrorServiceUnavailable("backend down"))
    }

    pub(crate) async fn panics(runs: web::Data<Runs>) -> String {
        runs.hit();
        panic!("handler bug")
    }

    pub(crate) async fn credits(runs: web::Data<Runs>, payment: PaymentContext) -> String {
        runs.hit();
        match payment.credits() {
            0 => "free".to_owned(),
            credits => credits.to_string(),
        }
    }

    pub(crate) async fn usage(
        runs: web::Data<Runs>,
        payment: PaymentContext,
    ) -> Result<String, actix_web::Error> {
        runs.hit();
        if payment.charge(6).is_ok() {
            return Err(actix_web::error::ErrorInternalServerError("charged more than verified"));
        }
        payment.charge(2).map_err(actix_web::error::ErrorInternalServerError)?;
        Ok(format!("charged {}", payment.charged()))
    }

    /// Spends the subscriber's balance while the handler runs, so the settlement fails.
    pub(crate) async fn drain(
        runs: web::Data<Runs>,
        local: web::Data<Arc<LocalFacilitator>>,
    ) -> &'static str {
        runs.hit();
        local.set_balance(DEMO_PLAN_ID, local.subscriber_address(), 0);
        "content that must not leak"
    }

    /// Not protected in either form.
    pub(crate) async fn context_without_paid(payment: PaymentContext) -> String {
        format!("{payment:?}")
    }
}

fn units_of(req: &HttpRequest) -> u64 {
    req.headers().get("x-units").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(1)
}

fn broken_price(_req: &HttpRequest) -> u64 {
    panic!("pricing bug")
}

async fn price_by_query(req: &HttpRequest) -> u64 {
    tokio::time::sleep(Duration::from_millis(1)).await;
    if req.query_string().contains("big") { 4 } else { 0 }
}

#[post("/ask")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2, description = "Ask the agent")]
async fn ask(runs: web::Data<Runs>, payment: PaymentContext) -> impl Responder {
    plain::ask(runs, payment).await
}

/// `#[paid]` above the routing attribute.
#[paid(plan = DEMO_PLAN_ID, credits = 1)]
#[get("/above")]
async fn above(runs: web::Data<Runs>) -> &'static str {
    plain::ran(runs).await
}

#[post("/bad-request")]
#[paid(plan = DEMO_PLAN_ID, credits = 1)]
async fn bad_request(runs: web::Data<Runs>) -> HttpResponse {
    plain::bad_request(runs).await
}

#[post("/error")]
#[paid(plan = DEMO_PLAN_ID, credits = 1)]
async fn error(runs: web::Data<Runs>) -> Result<String, actix_web::Error> {
    plain::error(runs).await
}

#[post("/panic")]
#[paid(plan = DEMO_PLAN_ID, credits = 1)]
async fn panics(runs: web::Data<Runs>) -> String {
    plain::panics(runs).await
}

#[get("/free")]
#[paid(plan = DEMO_PLAN_ID, credits = 0)]
async fn free(runs: web::Data<Runs>, payment: PaymentContext) -> String {
    plain::credits(runs, payment).await
}

#[post("/units")]
#[paid(plan = DEMO_PLAN_ID, credits = |req: &HttpRequest| units_of(req))]
async fn units(runs: web::Data<Runs>, payment: PaymentContext) -> String {
    plain::credits(runs, payment).await
}

#[get("/priced")]
#[paid(plan = DEMO_PLAN_ID, credits = price_by_query)]
async fn priced(runs: web::Data<Runs>, payment: PaymentContext) -> String {
    plain::credits(runs, payment).await
}

#[post("/usage")]
#[paid(plan = DEMO_PLAN_ID, credits = 5)]
async fn usage(runs: web::Data<Runs>, payment: PaymentContext) -> Result<String, actix_web::Error> {
    plain::usage(runs, payment).await
}

#[post("/bad-price")]
#[paid(plan = DEMO_PLAN_ID, credits = broken_price)]
async fn bad_price(runs: web::Data<Runs>) -> &'static str {
    plain::ran(runs).await
}

#[post("/drain")]
#[paid(plan = DEMO_PLAN_ID, credits = 1)]
async fn drain(runs: web::Data<Runs>, local: web::Data<Arc<LocalFacilitator>>) -> &'static str {
    plain::drain(runs, local).await
}

#[paid(plan = DEMO_PLAN_ID, credits = 3)]
async fn by_resource(runs: web::Data<Runs>) -> &'static str {
    plain::ran(runs).await
}

/// Which form protects the routes.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// `#[paid]` on each handler.
    Paid,
    /// The plain handlers behind a `PaymentMiddleware` routes table.
    Middleware,
}

impl Form {
    fn serve(self, payments: Payments, local: Arc<LocalFacilitator>) -> TestServer {
        match self {
            Form::Paid => serve(Some(payments), move |cfg: &mut web::ServiceConfig| {
                cfg.app_data(web::Data::new(local.clone()))
                    .service(ask)
                    .service(above)
                    .service(bad_request)
                    .service(error)
                    .service(panics)
                    .service(free)
                    .service(units)
                    .service(priced)
                    .service(usage)
                    .service(drain)
                    .service(bad_price)
                    .route("/context-without-paid", web::get().to(plain::context_without_paid))
                    .service(web::resource("/by-resource").route(web::post().to(by_resource)));
            }),
            Form::Middleware => {
                let table = PaymentMiddleware::new(payments)
                    .route(
                        "POST /ask",
                        RouteConfig::new(DEMO_PLAN_ID)
                            .agent(DEMO_AGENT_ID)
                            .credits(2)
                            .description("Ask the agent"),
                    )
                    .route("GET /above", RouteConfig::new(DEMO_PLAN_ID))
                    .route("POST /bad-request", RouteConfig::new(DEMO_PLAN_ID))
                    .route("POST /error", RouteConfig::new(DEMO_PLAN_ID))
                    .route("POST /panic", RouteConfig::new(DEMO_PLAN_ID))
                    .route("GET /free", RouteConfig::new(DEMO_PLAN_ID).credits(0))
                    .route("POST /units", RouteConfig::new(DEMO_PLAN_ID).credits(units_of))
                    .route("GET /priced", RouteConfig::new(DEMO_PLAN_ID).credits(price_by_query))
                    .route("POST /usage", RouteConfig::new(DEMO_PLAN_ID).credits(5))
                    .route("POST /drain", RouteConfig::new(DEMO_PLAN_ID))
                    .route("POST /bad-price", RouteConfig::new(DEMO_PLAN_ID).credits(broken_price))
                    .route("POST /by-resource", RouteConfig::new(DEMO_PLAN_ID).credits(3));
                table.check().expect("valid route keys");
                serve(None, move |cfg: &mut web::ServiceConfig| {
                    cfg.app_data(web::Data::new(local.clone())).service(
                        web::scope("")
                            .wrap(table.clone())
                            .route("/ask", web::post().to(plain::ask))
                            .route("/above", web::get().to(plain::ran))
                            .route("/bad-request", web::post().to(plain::bad_request))
                            .route("/error", web::post().to(plain::error))
                            .route("/panic", web::post().to(plain::panics))
                            .route("/free", web::get().to(plain::credits))
                            .route("/units", web::post().to(plain::credits))
                            .route("/priced", web::get().to(plain::credits))
                            .route("/usage", web::post().to(plain::usage))
                            .route("/drain", web::post().to(plain::drain))
                            .route("/bad-price", web::post().to(plain::ran))
                            .route("/context-without-paid", web::get().to(plain::context_without_paid))
                            .route("/by-resource", web::post().to(plain::ran)),
                    );
                })
            }
        }
    }
}

struct Setup {
    local: Arc<LocalFacilitator>,
    server: TestServer,
}

impl Setup {
    fn new(form: Form) -> Self {
        Self::with(form, |b| b)
    }

    fn with(form: Form, configure: impl FnOnce(PaymentsBuilder) -> PaymentsBuilder) -> Self {
        let local = Arc::new(LocalFacilitator::start().expect("local facilitator"));
        let payments = configure(payments_for(&local)).build().expect("payments");
        let server = form.serve(payments, local.clone());
        Setup { local, server }
    }

    fn balance(&self) -> u64 {
        self.local.balance(DEMO_PLAN_ID, self.local.subscriber_address())
    }
}

/// Runs each shared case against both forms.
macro_rules! both_forms {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[actix_web::test]
                async fn with_paid() {
                    super::$case(super::Form::Paid).await;
                }

                #[actix_web::test]
                async fn with_middleware() {
                    super::$case(super::Form::Middleware).await;
                }
            }
        )*
    };
}

both_forms!(
    no_token_gets_402_with_the_envelope_and_the_handler_does_not_run,
    a_paid_request_is_verified_served_and_settled_exactly_once,
    a_token_the_facilitator_refuses_gets_402_with_its_reason,
    an_unreachable_facilitator_gives_500_and_the_handler_does_not_run,
    failed_handlers_pass_through_and_nothing_is_settled,
    a_failed_settlement_withholds_the_content_with_a_failed_receipt,
    delivering_on_settle_failure_is_opt_in,
    zero_credits_are_free_and_need_no_token,
    bad_tokens_get_402_invalid_token_without_a_facilitator_call,
    dynamic_credits_sync_and_async_are_verified_and_burned,
    charge_settles_the_usage_never_more_than_verified,
    hooks_see_every_step_and_may_replace_the_error_response,
    the_verification_cache_saves_verify_calls_but_settles_every_request,
    payment_context_without_paid_is_a_500_that_says_why,
    resource_routes_and_both_attribute_orders_work,
    a_panicking_credits_function_is_a_500_and_the_handler_does_not_run,
);

async fn a_panicking_credits_function_is_a_500_and_the_handler_does_not_run(form: Form) {
    let s = Setup::new(form);
    let token = mint(&s.local).await;
    let response =
        http().post(s.server.at("/bad-price")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("credits function"), "{body}");
    assert_eq!(s.server.runs.count(), 0);
    assert_eq!(Calls::of(&s.local).verify, 0);
    // The worker survived.
    let response = http().post(s.server.at("/ask")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

async fn no_token_gets_402_with_the_envelope_and_the_handler_does_not_run(form: Form) {
    let s = Setup::new(form);
    let response = http().post(s.server.at("/ask?x=1")).send().await.unwrap();
    assert_eq!(response.status(), 402);
    let envelope = envelope(&response).expect("payment-required header");
    let json = serde_json::to_value(&envelope).unwrap();
    assert_eq!((&json["x402Version"], &json["extensions"]), (&serde_json::json!(2), &serde_json::json!({})));
    assert_eq!(envelope.resource.url, "/ask");
    assert_eq!(envelope.resource.description.as_deref(), Some("Ask the agent"));
    let accepted = envelope.accepts.first().unwrap();
    assert_eq!(accepted.plan_id, DEMO_PLAN_ID);
    assert_eq!(accepted.scheme, "nvm:erc4337");
    assert_eq!(accepted.network, "eip155:84532");
    let extra = &json["accepts"][0]["extra"];
    assert_eq!(extra, &serde_json::json!({"version": "1", "agentId": DEMO_AGENT_ID, "httpVerb": "POST"}));
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "Payment Required");
    assert!(body["message"].as_str().unwrap().contains("payment-signature"), "{body}");
    assert_eq!(s.server.runs.count(), 0);
    assert_eq!(Calls::of(&s.local).verify, 0);
    assert_eq!(Calls::of(&s.local).settle, 0);
}

async fn a_paid_request_is_verified_served_and_settled_exactly_once(form: Form) {
    let s = Setup::new(form);
    let before = s.balance();
    let token = mint(&s.local).await;
    let response = http().post(s.server.at("/ask")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let receipt = receipt(&response).expect("payment-response header");
    assert!(receipt.success);
    assert_eq!(receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), 2);
    assert!(receipt.transaction.starts_with("0x"), "{receipt:?}");
    assert_eq!(receipt.remaining_balance.as_ref().and_then(|a| a.as_u64()), Some(before - 2));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["credits"], 2);
    assert_eq!(body["plan"], DEMO_PLAN_ID);
    assert_eq!(body["payer"], s.local.subscriber_address());
    assert!(body["agentRequestId"].is_string(), "{body}");
    assert_eq!(s.server.runs.count(), 1);
    assert_eq!(s.balance(), before - 2);
    let calls = Calls::of(&s.local);
    assert_eq!((calls.verify, calls.settle), (1, 1));
}

async fn resource_routes_and_both_attribute_orders_work(form: Form) {
    let s = Setup::new(form);
    let before = s.balance();
    let token = mint(&s.local).await;
    let response =
        http().get(s.server.at("/above")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        receipt(&response).unwrap().credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
        1
    );
    let response =
        http().post(s.server.at("/by-resource")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        receipt(&response).unwrap().credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
        3
    );
    assert_eq!(response.text().await.unwrap(), "ran");
    assert_eq!(s.balance(), before - 4);
    assert_eq!(s.server.runs.count(), 2);
}

async fn a_token_the_facilitator_refuses_gets_402_with_its_reason(form: Form) {
    let s = Setup::new(form);
    let token = mint(&s.local).await;
    s.local.set_balance(DEMO_PLAN_ID, s.local.subscriber_address(), 1);
    let response = http().post(s.server.at("/ask")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 402);
    let envelope = envelope(&response).unwrap();
    assert_eq!(envelope.error.as_deref(), Some("insufficient_balance"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["message"], "insufficient_balance");
    assert_eq!(s.server.runs.count(), 0);
    assert_eq!((Calls::of(&s.local).verify, Calls::of(&s.local).settle), (1, 0));
    assert_eq!(s.balance(), 1);
}

async fn an_unreachable_facilitator_gives_500_and_the_handler_does_not_run(form: Form) {
    let local = LocalFacilitator::start().unwrap();
    let token = mint(&local).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let payments = payments_for(&local).backend_url(dead_url).build().unwrap();
    let server = form.serve(payments, Arc::new(local));
    let response = http().post(server.at("/ask")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "Payment verification failed");
    assert!(body["message"].as_str().unwrap().contains("unavailable"), "{body}");
    assert_eq!(server.runs.count(), 0);
}

async fn failed_handlers_pass_through_and_nothing_is_settled(form: Form) {
    let s = Setup::new(form);
    let before = s.balance();
    let token = mint(&s.local).await;
    for (path, status) in [("/bad-request", 400), ("/error", 503), ("/panic", 500)] {
        let response =
            http().post(s.server.at(path)).header("payment-signature", &token).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert!(receipt(&response).is_none(), "{path} has no receipt");
    }
    assert_eq!(s.server.runs.count(), 3);
    let calls = Calls::of(&s.local);
    assert_eq!((calls.verify, calls.settle), (3, 0));
    assert_eq!(s.balance(), before);
    // The server keeps serving after the panic.
    let response = http().post(s.server.at("/ask")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

async fn a_failed_settlement_withholds_the_content_with_a_failed_receipt(form: Form) {
    let s = Setup::new(form);
    let token = mint(&s.local).await;
    let response =
        http().post(s.server.at("/drain")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 402);
    let receipt = receipt(&response).expect("failed receipt");
    assert!(!receipt.success);
    assert_eq!(receipt.error_reason.as_deref(), Some("insufficient_balance"));
    assert!(envelope(&response).is_some());
    let text = response.text().await.unwrap();
    assert!(!text.contains("must not leak"), "{text}");
    assert!(text.contains("settlement failed"), "{text}");
    assert_eq!(s.server.runs.count(), 1);
    assert_eq!(Calls::of(&s.local).settle, 1);
}

async fn delivering_on_settle_failure_is_opt_in(form: Form) {
    let s = Setup::with(form, |b| b.deliver_on_settle_failure(true));
    let token = mint(&s.local).await;
    let response =
        http().post(s.server.at("/drain")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(!receipt(&response).unwrap().success);
    assert_eq!(response.text().await.unwrap(), "content that must not leak");
}

async fn zero_credits_are_free_and_need_no_token(form: Form) {
    let s = Setup::new(form);
    let response = http().get(s.server.at("/free")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(receipt(&response).is_none());
    assert_eq!(response.text().await.unwrap(), "free");
    let response = http().get(s.server.at("/priced")).send().await.unwrap();
    assert_eq!(response.status(), 200, "dynamic credits of 0 are free too");
    let calls = Calls::of(&s.local);
    assert_eq!((calls.verify, calls.settle), (0, 0));
}

async fn bad_tokens_get_402_invalid_token_without_a_facilitator_call(form: Form) {
    let s = Setup::new(form);
    let huge = "A".repeat(20 * 1024);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("huge", huge.into_bytes()),
        ("not base64", b"%%%not-base64%%%".to_vec()),
        ("base64 of text", b"aGVsbG8gd29ybGQ=".to_vec()),
        ("json that is not an object", b"WzEsMl0=".to_vec()),
        ("non-ascii", "t\u{00e9}st".as_bytes().to_vec()),
    ];
    for (name, value) in cases {
        let value = reqwest::header::HeaderValue::from_bytes(&value).unwrap();
        let response =
            http().post(s.server.at("/ask")).header("payment-signature", value).send().await.unwrap();
        assert_eq!(response.status(), 402, "{name}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().starts_with("invalid_token"), "{name}: {body}");
    }
    assert_eq!(s.server.runs.count(), 0);
    assert_eq!(Calls::of(&s.local).verify, 0);
}

async fn dynamic_credits_sync_and_async_are_verified_and_burned(form: Form) {
    let s = Setup::new(form);
    let before = s.balance();
    let token = mint(&s.local).await;
    let response = http()
        .post(s.server.at("/units"))
        .header("payment-signature", &token)
        .header("x-units", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        receipt(&response).unwrap().credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
        3
    );
    assert_eq!(response.text().await.unwrap(), "3");
    let response =
        http().get(s.server.at("/priced?size=big")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        receipt(&response).unwrap().credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
        4
    );
    assert_eq!(s.balance(), before - 7);
}

async fn charge_settles_the_usage_never_more_than_verified(form: Form) {
    let s = Setup::new(form);
    let before = s.balance();
    let token = mint(&s.local).await;
    let response =
        http().post(s.server.at("/usage")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        receipt(&response).unwrap().credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
        2
    );
    assert_eq!(response.text().await.unwrap(), "charged 2");
    assert_eq!(s.balance(), before - 2);
}

async fn hooks_see_every_step_and_may_replace_the_error_response(form: Form) {
    let before_verify = Arc::new(AtomicUsize::new(0));
    let after_verify = Arc::new(AtomicUsize::new(0));
    let settled = Arc::new(AtomicUsize::new(0));
    let (bv, av, st) = (before_verify.clone(), after_verify.clone(), settled.clone());
    let s = Setup::with(form, move |b| {
        b.before_verify(move |_req, envelope| {
            assert_eq!(envelope.accepts[0].plan_id, DEMO_PLAN_ID);
            bv.fetch_add(1, Ordering::SeqCst);
        })
        .after_verify(move |_req, verification| {
            assert!(verification.is_valid);
            av.fetch_add(1, Ordering::SeqCst);
        })
        .after_settle(move |_req, credits, receipt| {
            assert!(receipt.success);
            st.fetch_add(credits as usize, Ordering::SeqCst);
        })
        .on_payment_error(|_req, failure| match failure.kind() {
            PaymentErrorKind::MissingToken => Some(HttpResponse::PaymentRequired().body("custom: pay first")),
            _ => None,
        })
    });
    let response = http().post(s.server.at("/ask")).send().await.unwrap();
    assert_eq!(response.status(), 402);
    assert_eq!(response.text().await.unwrap(), "custom: pay first");
    let token = mint(&s.local).await;
    let response = http().post(s.server.at("/ask")).header("payment-signature", &token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(before_verify.load(Ordering::SeqCst), 1);
    assert_eq!(after_verify.load(Ordering::SeqCst), 1);
    assert_eq!(settled.load(Ordering::SeqCst), 2);
}

async fn the_verification_cache_saves_verify_calls_but_settles_every_request(form: Form) {
    let s = Setup::with(form, |b| b.verification_cache(Duration::from_secs(10)));
    let before = s.balance();
    let token = mint(&s.local).await;
    for _ in 0..3 {
        let response =
            http().post(s.server.at("/ask")).header("payment-signature", &token).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            receipt(&response).unwrap().credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
            2
        );
    }
    let calls = Calls::of(&s.local);
    assert_eq!((calls.verify, calls.settle), (1, 3));
    assert_eq!(s.balance(), before - 6);
}

async fn payment_context_without_paid_is_a_500_that_says_why(form: Form) {
    let s = Setup::new(form);
    let response = http().get(s.server.at("/context-without-paid")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("#[paid"), "{body}");
}

#[actix_web::test]
async fn a_missing_configuration_is_a_500_that_says_what_to_add() {
    let local = Arc::new(LocalFacilitator::start().unwrap());
    // `#[paid]` handlers, but no `Payments` registered with the app.
    let server = serve(None, move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(local.clone())).service(ask);
    });
    let response = http().post(server.at("/ask")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("the #[paid] handler `ask` (POST /ask)"), "{body}");
    assert!(message.contains("add `.app_data(payments.clone())` to the `App::new()`"), "{body}");
    assert_eq!(server.runs.count(), 0);
}

#[test]
fn every_paid_handler_is_in_the_pricing_table() {
    // This file's handlers, each recorded once (the test binary links other crates' too).
    let ours = [
        "above",
        "ask",
        "bad_price",
        "bad_request",
        "by_resource",
        "drain",
        "error",
        "free",
        "panics",
        "priced",
        "units",
        "usage",
    ];
    let manifest: Vec<_> = nvm_runtime::actix::pricing::manifest()
        .into_iter()
        .filter(|r| r["handler"].as_str().is_some_and(|h| ours.contains(&h)))
        .collect();
    let find = |handler: &str| {
        manifest.iter().find(|r| r["handler"] == handler).unwrap_or_else(|| panic!("{handler} recorded"))
    };
    let asked = find("ask");
    assert_eq!(asked["credits"], serde_json::json!(2));
    assert_eq!(asked["plan"], DEMO_PLAN_ID);
    assert_eq!(asked["agent"], DEMO_AGENT_ID);
    assert_eq!(find("units")["credits"], "dynamic");
    // The closure's text is not published.
    let json = serde_json::to_string(&manifest).unwrap();
    assert!(!json.contains("units_of"), "{json}");
    // `#[paid]` above the routing attribute: known at compile time.
    let upper = find("above");
    assert_eq!((&upper["method"], &upper["path"]), (&serde_json::json!("GET"), &serde_json::json!("/above")));
    assert_eq!(find("free")["credits"], 0);
    // The app's layout is not published.
    assert!(!json.contains("module") && !json.contains("paid_flow"), "{json}");
    assert_eq!(manifest.len(), ours.len(), "{json}");
}

#[actix_web::test]
async fn the_manifest_handler_serves_the_app_routes_with_those_learned_from_traffic() {
    let local = Arc::new(LocalFacilitator::start().unwrap());
    let payments = payments_for(&local).build().unwrap();
    let server = serve(Some(payments), |cfg: &mut web::ServiceConfig| {
        cfg.service(ask)
            .service(above)
            .service(web::resource("/by-resource").route(web::post().to(by_resource)))
            .route("/pricing", web::get().to(nvm_runtime::actix::pricing::manifest_handler));
    });
    // `#[post]` above `#[paid]` names the resource only: its method is learned from the
    // first request; a handler registered by hand is learned from its first request.
    for path in ["/ask", "/by-resource"] {
        let response = http().post(server.at(path)).send().await.unwrap();
        assert_eq!(response.status(), 402, "{path}");
    }
    let body: serde_json::Value =
        http().get(server.at("/pricing")).send().await.unwrap().json().await.unwrap();
    let routes = body["routes"].as_array().unwrap();
    let asked = routes.iter().find(|r| r["handler"] == "ask").expect("ask listed");
    assert_eq!(asked["credits"], 2, "{body}");
    assert_eq!(asked["method"], "POST", "{body}");
    assert_eq!(asked["path"], "/ask", "{body}");
    assert_eq!(asked["plan"], DEMO_PLAN_ID, "{body}");
    assert_eq!(asked["agent"], DEMO_AGENT_ID, "{body}");
    assert_eq!(asked["description"], "Ask the agent", "{body}");
    assert_eq!(asked["settle"], "default", "{body}");
    let upper = routes.iter().find(|r| r["handler"] == "above").expect("above listed");
    assert_eq!((&upper["method"], &upper["path"]), (&"GET".into(), &"/above".into()), "{body}");
    let by_hand = routes.iter().find(|r| r["handler"] == "by_resource").expect("by_resource listed");
    assert_eq!((&by_hand["method"], &by_hand["path"]), (&"POST".into(), &"/by-resource".into()), "{body}");
    // Only the routes of this app.
    assert_eq!(routes.len(), 3, "{body}");
}

/// LLM observability: the gateway's headers against payments-py, manual logs.
#[path = "observability.rs"]
mod observability;
