use actix_web::post;
use nvm_runtime::paid;

#[paid(plan = "1")]
#[post("/ask")]
fn handler() -> &'static str {
    "sync"
}

fn main() {}
