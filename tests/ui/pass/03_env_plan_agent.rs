#![deny(warnings)]
use actix_web::{post, App, HttpResponse};
use nvm_runtime::paid;

#[post("/ask")]
#[paid(plan = env("NVM_PLAN_ID"), agent = env("NVM_AGENT_ID"))]
async fn ask() -> HttpResponse {
    HttpResponse::Ok().finish()
}

fn main() {
    let _ = App::new().service(ask);
}
