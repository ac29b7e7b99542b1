#![deny(warnings)]
use actix_web::{get, App};
use nvm_runtime::paid;

const PRICE: u64 = 5;

mod prices {
    pub const PREMIUM: u64 = 50;
}

#[get("/a")]
#[paid(plan = "1", credits = PRICE)]
async fn a() -> &'static str {
    "a"
}

#[get("/b")]
#[paid(plan = "1", credits = prices::PREMIUM)]
async fn b() -> &'static str {
    "b"
}

#[get("/free")]
#[paid(plan = "1", credits = 0)]
async fn free() -> &'static str {
    "free"
}

#[get("/big")]
#[paid(plan = "1", credits = 18_446_744_073_709_551_615)]
async fn big() -> &'static str {
    "big"
}

fn main() {
    let _ = App::new().service(a).service(b).service(free).service(big);
}
