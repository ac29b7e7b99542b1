#![deny(warnings)]
use actix_web::{get, App};
use nvm_runtime::paid;

#[paid(plan = "1234", credits = 2)]
#[get("/weather")]
async fn weather() -> &'static str {
    "sunny"
}

fn main() {
    let _ = App::new().service(weather);
}
