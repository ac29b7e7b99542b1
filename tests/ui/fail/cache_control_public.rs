use nvm_runtime::paid;

// A shared cache would serve the paid answer to callers who did not pay.
#[paid(plan = "1", cache_control = "public, max-age=60")]
async fn handler() -> &'static str {
    "paid"
}

fn main() {}
