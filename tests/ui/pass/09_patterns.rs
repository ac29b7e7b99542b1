#![deny(warnings)]
use actix_web::{post, web, App, HttpRequest};
use nvm_runtime::{paid, PaymentContext};

#[derive(serde::Deserialize)]
struct Query {
    query: String,
}

#[post("/ask/{id}")]
#[paid(plan = "1")]
async fn ask(
    web::Json(Query { query }): web::Json<Query>,
    path: web::Path<u32>,
    _: HttpRequest,
    mut payment: PaymentContext,
) -> String {
    payment = payment.clone();
    let id = path.into_inner();
    format!("{query} {id} {}", payment.credits())
}

fn main() {
    let _ = App::new().service(ask);
}
