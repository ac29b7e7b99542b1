//! The routes-table form: protect routes you do not annotate, as with the official
//! FastAPI and Express middlewares.
//!
//! ```text
//! cargo run -p nvm-examples --example middleware
//! ```
//!
//! - `POST /ask`: 1 credit.
//! - `GET /reports/{id}`: 5 credits (an actix-web pattern; `:id` is accepted too).
//! - `GET /stream`: 2 credits, a server-sent-events stream: it flows at once, and is
//!   settled when it ends; its last event, `payment-response`, carries the receipt.
//! - `GET /health`: not in the table, passes through free.
//!
//! Runs on the embedded local facilitator unless `NVM_API_KEY` and `NVM_PLAN_ID` are
//! set; the port comes from `PORT` (default 3000).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{App, HttpResponse, HttpServer, web};
use futures_core::Stream;
use nvm_examples::settings;
use nvm_runtime::{PaymentContext, PaymentMiddleware, RouteConfig};

async fn ask(payment: PaymentContext) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"answer": 42, "payer": payment.payer()}))
}

async fn report(id: web::Path<u32>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"report": *id, "rows": [1, 2, 3]}))
}

async fn stream() -> HttpResponse {
    HttpResponse::Ok().content_type("text/event-stream").streaming(Events { sent: 0, count: 3, sleep: None })
}

/// `count` server-sent events, 50 ms apart.
struct Events {
    sent: u32,
    count: u32,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for Events {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.sent == self.count {
            return Poll::Ready(None);
        }
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.sleep = None;
        self.sent += 1;
        Poll::Ready(Some(Ok(Bytes::from(format!("data: chunk {}\n\n", self.sent)))))
    }
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let setup = settings::from_env_or_exit("middleware");
    let plan = settings::plan_id();
    let mut ask_route = RouteConfig::new(plan).credits(1).description("Ask the agent");
    if !settings::agent_id().is_empty() {
        ask_route = ask_route.agent(settings::agent_id());
    }
    let payments = PaymentMiddleware::new(setup.payments.clone())
        .route("POST /ask", ask_route)
        .route("GET /reports/{id}", RouteConfig::new(plan).credits(5))
        .route("GET /stream", RouteConfig::new(plan).credits(2).mime_type("text/event-stream"));
    if let Err(error) = payments.check() {
        eprintln!("middleware: {error}");
        std::process::exit(2);
    }
    // After the table: it registered its plans with the configuration.
    settings::prepare_or_exit("middleware", &setup.payments).await;
    let port = settings::port();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(payments.clone())
            .route("/ask", web::post().to(ask))
            .route("/reports/{id}", web::get().to(report))
            .route("/stream", web::get().to(stream))
            .route("/health", web::get().to(health))
    })
    .bind(("127.0.0.1", port))
    .unwrap_or_else(|error| settings::exit_bind_failed("middleware", port, &error));
    let url = format!("http://{}", server.addrs()[0]);
    println!(
        "{}",
        setup.banner_for(
            &url,
            "POST /ask: 1 credit, GET /reports/{id}: 5, GET /stream: 2 (SSE), GET /health",
            "/ask"
        )
    );
    server.run().await
}
