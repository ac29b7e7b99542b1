//! Quick start: an AI agent that charges 1 credit per question.
//!
//! ```text
//! cargo run -p nvm-examples --example quickstart
//! ```
//!
//! - `POST /ask` with `{"query": "..."}`: paid, 1 credit, answers JSON.
//! - `GET /health`: free.
//! - `GET /pricing`: the pricing manifest of every `#[paid]` route.
//!
//! With no `NVM_API_KEY` set, it starts the embedded local facilitator and prints three
//! curl lines to paste: one gets the 402, one mints a token, one pays. With
//! `NVM_API_KEY` and `NVM_PLAN_ID` (and optionally `NVM_AGENT_ID`, `NVM_ENVIRONMENT`,
//! `NVM_BACKEND_URL`) it uses that backend instead. The port comes from `PORT`
//! (default 3000).

use actix_web::{App, HttpResponse, HttpServer, Responder, get, post, web};
use nvm_examples::settings;
use nvm_runtime::{PaymentContext, paid};
use serde::Deserialize;

#[derive(Deserialize)]
struct Query {
    query: String,
}

/// Answers a question for 1 credit.
#[paid(plan = settings::plan_id(), agent = settings::agent_id(), credits = 1, description = "Ask the agent")]
#[post("/ask")]
async fn ask(q: web::Json<Query>, payment: PaymentContext) -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({
        "answer": format!("You asked: {}. The answer is 42.", q.query),
        "payer": payment.payer(),
        "creditsVerified": payment.credits(),
    }))
}

/// Free.
#[get("/health")]
async fn health() -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    // The logs, to the terminal: the start-up report first (one line per paid route:
    // what it charges, on which plan), then what goes wrong, if anything does.
    tracing_subscriber::fmt().with_target(false).init();
    let setup = settings::from_env_or_exit("quickstart");
    let port = settings::port();
    settings::prepare_or_exit("quickstart", &setup.payments).await;
    let server = HttpServer::new({
        let payments = setup.payments.clone();
        move || {
            App::new()
                .app_data(payments.clone())
                .service(ask)
                .service(health)
                .route("/pricing", web::get().to(nvm_runtime::actix::pricing::manifest_handler))
        }
    })
    .bind(("127.0.0.1", port))
    .unwrap_or_else(|error| settings::exit_bind_failed("quickstart", port, &error));
    let url = format!("http://{}", server.addrs()[0]);
    println!("{}", setup.banner(&url));
    server.run().await
}
