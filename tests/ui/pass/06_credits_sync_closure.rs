#![deny(warnings)]
use actix_web::{post, App, HttpRequest};
use nvm_runtime::paid;

fn by_header(req: &HttpRequest) -> u64 {
    req.headers().get("x-units").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1)
}

#[post("/a")]
#[paid(plan = "1", credits = |req| if req.query_string().is_empty() { 1 } else { 2 })]
async fn a() -> &'static str {
    "a"
}

#[post("/b")]
#[paid(plan = "1", credits = |req: &HttpRequest| -> u64 { req.path().len() as u64 })]
async fn b() -> &'static str {
    "b"
}

#[post("/c")]
#[paid(plan = "1", credits = by_header)]
async fn c() -> &'static str {
    "c"
}

fn main() {
    let _ = App::new().service(a).service(b).service(c);
}
