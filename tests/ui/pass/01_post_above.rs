#![deny(warnings)]
use actix_web::{post, web, App, HttpResponse, Responder};
use nvm_runtime::{paid, PaymentContext};

#[derive(serde::Deserialize)]
struct Query {
    query: String,
}

#[post("/ask")]
#[paid(plan = "1234", credits = 1)]
async fn ask(q: web::Json<Query>, payment: PaymentContext) -> impl Responder {
    HttpResponse::Ok().body(format!("{} {:?}", q.query, payment.payer()))
}

fn main() {
    let _ = App::new().service(ask);
}
