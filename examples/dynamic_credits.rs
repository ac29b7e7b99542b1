//! Dynamic credits: a price computed from the request, and usage-based billing.
//!
//! ```text
//! cargo run -p nvm-examples --example dynamic_credits
//! ```
//!
//! - `POST /generate?tokens=N`: credits from a closure of the request (1 per 100
//!   tokens asked, at least 1).
//! - `POST /translate`: priced by its body with `credits::by_body` (the bytes really
//!   sent, so a chunked upload costs what the same text costs with `Content-Length`);
//!   the handler then charges what it really used with `PaymentContext::charge`, never
//!   more than was verified.
//!
//! Like the quick start, it runs on the embedded local facilitator unless
//! `NVM_API_KEY` and `NVM_PLAN_ID` are set; the port comes from `PORT` (default 3000).

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, Responder, post, web};
use nvm_examples::settings;
use nvm_runtime::actix::credits::by_body;
use nvm_runtime::{PaymentContext, paid};

/// 1 credit per 100 tokens asked for, at least 1.
fn tokens_price(req: &HttpRequest) -> u64 {
    let tokens: u64 = web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("tokens")?.parse().ok())
        .unwrap_or(100);
    tokens.div_ceil(100).max(1)
}

/// Quotes a translation from the text itself: 5 credits, plus 1 per 50 bytes.
fn translation_quote(_req: &HttpRequest, text: &[u8]) -> u64 {
    5 + text.len() as u64 / 50
}

#[paid(plan = settings::plan_id(), credits = |req: &HttpRequest| tokens_price(req))]
#[post("/generate")]
async fn generate(payment: PaymentContext) -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({"text": "…", "credits": payment.credits()}))
}

#[paid(plan = settings::plan_id(), credits = by_body(translation_quote).limit(64 * 1024))]
#[post("/translate")]
async fn translate(body: String, payment: PaymentContext) -> Result<HttpResponse, actix_web::Error> {
    // The real cost: 1 credit per 100 characters actually translated.
    let used = (body.chars().count() as u64).div_ceil(100).max(1);
    payment.charge(used.min(payment.credits())).map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "translation": body.to_uppercase(),
        "quoted": payment.credits(),
        "charged": payment.charged(),
    })))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let setup = settings::from_env_or_exit("dynamic_credits");
    let payments = setup.payments.clone();
    settings::prepare_or_exit("dynamic_credits", &setup.payments).await;
    let port = settings::port();
    let server =
        HttpServer::new(move || App::new().app_data(payments.clone()).service(generate).service(translate))
            .bind(("127.0.0.1", port))
            .unwrap_or_else(|error| settings::exit_bind_failed("dynamic_credits", port, &error));
    let url = format!("http://{}", server.addrs()[0]);
    println!(
        "{}",
        setup.banner_for(
            &url,
            "POST /generate?tokens=N (1 credit per 100 tokens), POST /translate (usage-based)",
            "/generate?tokens=250"
        )
    );
    server.run().await
}
