//! LLM observability: an agent whose paid answer comes from an LLM called through
//! Nevermined's observability gateway, charged by the tokens it used.
//!
//! ```text
//! cargo run -p nvm-examples --example observability
//! ```
//!
//! - `POST /ask` with `{"query": "..."}`: paid, 1 credit per 10 LLM tokens (at most 10),
//!   answers `{"answer", "tokens", "creditsCharged"}`. An `x-session-id` header becomes the
//!   `sessionId` property of the logged call.
//!
//! Every LLM call carries the gateway's headers (`Helicone-Auth` and the
//! `Helicone-Property-*` of the paid request: seller, payer, agent, plan, agent request
//! id…), so the seller sees what each paid call cost.
//!
//! With no `NVM_API_KEY` set, it starts the embedded local facilitator, whose stand-in
//! gateway answers a short canned completion with its token usage, and prints the curl
//! lines to pay. With `NVM_API_KEY` and `NVM_PLAN_ID` (see the quick start) the calls go
//! to the environment's gateway (`HELICONE_URL` for a custom backend), which forwards
//! them to OpenAI with `OPENAI_API_KEY`; `OPENAI_MODEL` picks the model (default
//! `gpt-4o-mini`). The port comes from `PORT` (default 3000).

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, post, web};
use nvm_examples::settings;
use nvm_runtime::client::reqwest;
use nvm_runtime::{PaymentContext, paid};
use serde::Deserialize;

/// LLM tokens per credit.
const TOKENS_PER_CREDIT: u64 = 10;

#[derive(Deserialize)]
struct Query {
    query: String,
}

/// Up to 10 credits verified; what the LLM used is charged.
#[paid(plan = settings::plan_id(), agent = settings::agent_id(), credits = 10, description = "Ask the LLM")]
#[post("/ask")]
async fn ask(req: HttpRequest, q: web::Json<Query>, payment: PaymentContext) -> HttpResponse {
    // The gateway settings of this paid request, and a property of our own.
    let session = req.headers().get("x-session-id").and_then(|v| v.to_str().ok()).unwrap_or("none");
    let gateway = match payment.observability().and_then(|g| g.property("sessionId", session)) {
        Ok(gateway) => gateway,
        Err(error) => {
            return HttpResponse::InternalServerError().json(serde_json::json!({"error": error.to_string()}));
        }
    };
    let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".to_owned());
    let openai_key = std::env::var("OPENAI_API_KEY").unwrap_or_default();
    let request = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": q.query}],
    });
    let sent = reqwest::Client::new()
        .post(gateway.chat_completions_url())
        .headers(gateway.headers().clone())
        .bearer_auth(openai_key)
        .header("content-type", "application/json")
        .body(request.to_string())
        .send()
        .await;
    let completion: serde_json::Value = match sent {
        Ok(response) if response.status().is_success() => {
            serde_json::from_slice(&response.bytes().await.unwrap_or_default()).unwrap_or_default()
        }
        // A failed LLM call is a failed handler: nothing is settled.
        Ok(response) => {
            let status = response.status().as_u16();
            return HttpResponse::BadGateway()
                .json(serde_json::json!({"error": format!("the LLM answered {status}")}));
        }
        Err(_) => {
            return HttpResponse::BadGateway().json(serde_json::json!({"error": "the LLM is unreachable"}));
        }
    };
    let tokens = completion["usage"]["total_tokens"].as_u64().unwrap_or(0);
    let credits = tokens.div_ceil(TOKENS_PER_CREDIT).clamp(1, payment.credits());
    if let Err(error) = payment.charge(credits) {
        return HttpResponse::InternalServerError().json(serde_json::json!({"error": error.to_string()}));
    }
    HttpResponse::Ok().json(serde_json::json!({
        "answer": completion["choices"][0]["message"]["content"],
        "tokens": tokens,
        "creditsCharged": credits,
    }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let setup = settings::from_env_or_exit("observability");
    let port = settings::port();
    settings::prepare_or_exit("observability", &setup.payments).await;
    let server = HttpServer::new({
        let payments = setup.payments.clone();
        move || App::new().app_data(payments.clone()).service(ask)
    })
    .bind(("127.0.0.1", port))
    .unwrap_or_else(|error| settings::exit_bind_failed("observability", port, &error));
    let url = format!("http://{}", server.addrs()[0]);
    println!("LLM calls go through the observability gateway at {}", setup.payments.helicone_url());
    println!("{}", setup.banner_for(&url, "POST /ask: 1 credit per 10 LLM tokens, at most 10", "/ask"));
    server.run().await
}
