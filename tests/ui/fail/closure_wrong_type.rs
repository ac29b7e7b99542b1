use nvm_runtime::paid;

#[paid(plan = "1", credits = |_req| "one")]
async fn handler() -> &'static str {
    "closure returns a string"
}

fn main() {}
