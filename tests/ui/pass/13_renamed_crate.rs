#![deny(warnings)]
use actix_web::{get, App};
use nvm_runtime as payments_kit;
use payments_kit::paid;

#[get("/a")]
#[paid(plan = "1", crate = payments_kit)]
async fn a() -> &'static str {
    "a"
}

#[get("/b")]
#[paid(plan = "1", crate = ::nvm_runtime)]
async fn b() -> &'static str {
    "b"
}

fn main() {
    let _ = App::new().service(a).service(b);
}
