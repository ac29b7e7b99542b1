use nvm_runtime::paid;

#[paid(plan = "1", price = 3)]
async fn handler() -> &'static str {
    "unknown"
}

fn main() {}
