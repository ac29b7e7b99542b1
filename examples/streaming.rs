//! Streaming: an LLM-style agent that streams its answer word by word as server-sent
//! events, charging 1 credit per 10 words (a started group of 10 counts), at most 5.
//!
//! ```text
//! cargo run -p nvm-examples --example streaming
//! ```
//!
//! - `POST /chat` with `{"query": "..."}`: paid, settled after the body. The head and the
//!   words go out at once; when the answer ends the words are settled, and the last event,
//!   `payment-response`, carries the receipt. A client that hangs up pays for the words
//!   it was sent; an answer that breaks off pays nothing.
//! - `GET /health`: free.
//!
//! Like the quick start, it starts the embedded local facilitator when no `NVM_API_KEY`
//! is set and prints curl lines to paste (add `-N` to see the words arrive one by one).
//! The port comes from `PORT` (default 3000).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{App, HttpResponse, HttpServer, Responder, get, post, web};
use futures_core::Stream;
use nvm_examples::settings;
use nvm_runtime::{Meter, PaymentContext, paid};
use serde::Deserialize;

/// Words per credit.
const WORDS_PER_CREDIT: usize = 10;

#[derive(Deserialize)]
struct Query {
    query: String,
}

/// Streams a generated answer; settled after the body for the words sent.
#[paid(
    plan = settings::plan_id(),
    agent = settings::agent_id(),
    credits = 5,
    settle = "after_body",
    description = "Chat, streamed: 1 credit per 10 words"
)]
#[post("/chat")]
async fn chat(q: web::Json<Query>, payment: PaymentContext) -> HttpResponse {
    let words = answer(&q.query);
    HttpResponse::Ok().content_type("text/event-stream").streaming(Words {
        words,
        sent: 0,
        meter: payment.meter(),
        pause: None,
    })
}

/// A made-up answer of a few dozen words.
fn answer(query: &str) -> Vec<String> {
    let text = format!(
        "You asked about {query}. Here is a streamed answer, produced one word at a time the way a \
         language model would produce tokens, so that the buyer sees the first words at once and pays \
         only for the words that were actually sent to it, never for more than the plan allows."
    );
    text.split_whitespace().map(str::to_owned).collect()
}

/// The answer as server-sent events, one word each, 20 ms apart.
struct Words {
    words: Vec<String>,
    sent: usize,
    meter: Meter,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for Words {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.sent == this.words.len() {
            return Poll::Ready(None);
        }
        let pause = this.pause.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
        if pause.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.pause = None;
        // A new group of 10 words costs a credit; past the verified cap, stop.
        if this.sent.is_multiple_of(WORDS_PER_CREDIT) && this.meter.add(1).is_err() {
            return Poll::Ready(None);
        }
        let word = &this.words[this.sent];
        this.sent += 1;
        Poll::Ready(Some(Ok(Bytes::from(format!("data: {word}\n\n")))))
    }
}

/// Free.
#[get("/health")]
async fn health() -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let setup = settings::from_env_or_exit("streaming");
    let port = settings::port();
    settings::prepare_or_exit("streaming", &setup.payments).await;
    let server = HttpServer::new({
        let payments = setup.payments.clone();
        move || App::new().app_data(payments.clone()).service(chat).service(health)
    })
    .bind(("127.0.0.1", port))
    .unwrap_or_else(|error| settings::exit_bind_failed("streaming", port, &error));
    let url = format!("http://{}", server.addrs()[0]);
    let routes =
        "POST /chat: 1 credit per 10 words streamed, at most 5 (SSE, settled after the body), GET /health";
    println!("{}", setup.banner_for(&url, routes, "/chat"));
    server.run().await
}
