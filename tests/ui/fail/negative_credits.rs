use nvm_runtime::paid;

#[paid(plan = "1", credits = -1)]
async fn handler() -> &'static str {
    "negative"
}

fn main() {}
