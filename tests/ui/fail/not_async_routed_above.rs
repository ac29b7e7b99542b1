use actix_web::post;
use nvm_runtime::paid;

#[post("/ask")]
#[paid(plan = "1")]
fn handler() -> &'static str {
    "sync"
}

fn main() {}
