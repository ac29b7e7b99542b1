#![deny(warnings)]
use actix_web::{post, App, HttpRequest};
use nvm_runtime::paid;

async fn quote(req: &HttpRequest) -> u64 {
    if req.headers().contains_key("x-premium") { 10 } else { 1 }
}

#[post("/a")]
#[paid(plan = "1", credits = quote)]
async fn a() -> &'static str {
    "a"
}

#[post("/b")]
#[paid(plan = "1", credits = async |req: &HttpRequest| quote(req).await * 2)]
async fn b() -> &'static str {
    "b"
}

fn main() {
    let _ = App::new().service(a).service(b);
}
