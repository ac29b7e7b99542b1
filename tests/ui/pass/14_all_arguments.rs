#![deny(warnings)]
use actix_web::{route, App};
use nvm_runtime::paid;

#[route("/card", method = "GET", method = "POST")]
#[paid(
    plan = "1",
    agent = "2",
    credits = 4,
    scheme = "nvm:card-delegation",
    network = "stripe",
    description = "A card-paid report",
    mime_type = "application/pdf",
    resource = "/reports/card",
)]
async fn card() -> &'static str {
    "report"
}

fn main() {
    let _ = App::new().service(card);
}
