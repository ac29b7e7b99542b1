//! Production: the quick start's agent as it runs in front of real traffic, with the
//! telemetry, cache, browser and discovery pieces on.
//!
//! ```text
//! cargo run -p nvm-examples --example production
//! ```
//!
//! - `POST /v1/ask` with `{"query": "..."}`: paid, 1 credit (inside `web::scope("/v1")`).
//! - `GET /pricing`: the pricing manifest, at the paths the app serves (`/v1/ask`).
//! - `GET /metrics`: the payment metrics (`nvm_paid_requests_total`, …) in Prometheus'
//!   text format, from the `metrics` facade and `metrics-exporter-prometheus`.
//! - CORS for a paying web page on the origin in `CORS_ORIGIN` (default
//!   `http://localhost:5173`): `payment-signature` allowed, `payment-required` and
//!   `payment-response` readable.
//! - Logs: the start-up report (one line per paid route), then one `nvm_paid_request`
//!   span per paid request with its outcome, credits and latencies.
//!
//! Like the quick start, it starts the embedded local facilitator when no
//! `NVM_API_KEY` is set. The port comes from `PORT` (default 3000).

use actix_web::{App, HttpResponse, HttpServer, Responder, get, post, web};
use nvm_examples::settings;
use nvm_runtime::actix::cors::{actix_cors::Cors, payment_cors};
use nvm_runtime::actix::pricing::manifest_handler;
use nvm_runtime::{PaymentContext, paid};
use serde::Deserialize;

#[derive(Deserialize)]
struct Question {
    query: String,
}

/// Answers a question for 1 credit; the answer names the verification it was paid with.
#[paid(plan = settings::plan_id(), agent = settings::agent_id(), credits = 1, description = "Ask the agent")]
#[post("/ask")]
async fn ask(question: web::Json<Question>, payment: PaymentContext) -> impl Responder {
    let words = question.query.split_whitespace().count();
    HttpResponse::Ok().json(serde_json::json!({
        "answer": format!("{words} word(s) received; the answer is 42."),
        "agentRequestId": payment.agent_request_id(),
    }))
}

/// The metrics, in Prometheus' text format.
#[get("/metrics")]
async fn metrics(handle: web::Data<metrics_exporter_prometheus::PrometheusHandle>) -> impl Responder {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(handle.render())
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().with_ansi(false).init();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();
    let handle = match recorder {
        Ok(handle) => web::Data::new(handle),
        Err(error) => {
            eprintln!("production: the metrics recorder could not be installed: {error}");
            std::process::exit(2);
        }
    };
    let origin = std::env::var("CORS_ORIGIN").unwrap_or_else(|_| "http://localhost:5173".to_owned());
    let setup = settings::from_env_or_exit("production");
    let port = settings::port();
    // Logs the start-up report: what this server charges, before any traffic.
    settings::prepare_or_exit("production", &setup.payments).await;
    let server = HttpServer::new({
        let payments = setup.payments.clone();
        move || {
            let cors = Cors::default().allowed_origin(&origin).allowed_methods(["GET", "POST"]);
            App::new()
                .wrap(payment_cors(cors))
                .app_data(payments.clone())
                .app_data(handle.clone())
                .service(web::scope("/v1").service(ask))
                .route("/pricing", web::get().to(manifest_handler))
                .service(metrics)
        }
    })
    .bind(("127.0.0.1", port))
    .unwrap_or_else(|error| settings::exit_bind_failed("production", port, &error));
    let url = format!("http://{}", server.addrs()[0]);
    let routes = "POST /v1/ask: 1 credit; GET /pricing; GET /metrics";
    println!("{}", setup.banner_for(&url, routes, "/v1/ask"));
    server.run().await
}
