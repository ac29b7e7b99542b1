#![deny(warnings)]
use actix_web::{get, App};
use nvm_runtime::paid;

mod config {
    pub const AGENT: &str = "77";
    pub fn plan_id() -> String {
        std::env::var("MY_APP_PLAN").unwrap_or_else(|_| "1234".to_owned())
    }
}

static PLAN: &str = "999";

#[get("/a")]
#[paid(plan = config::plan_id(), agent = config::AGENT)]
async fn a() -> &'static str {
    "a"
}

#[get("/b")]
#[paid(plan = PLAN, credits = 3)]
async fn b() -> &'static str {
    "b"
}

fn main() {
    let _ = App::new().service(a).service(b);
}
