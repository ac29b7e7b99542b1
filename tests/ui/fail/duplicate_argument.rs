use nvm_runtime::paid;

#[paid(plan = "1", credits = 1, credits = 2)]
async fn handler() -> &'static str {
    "duplicate"
}

fn main() {}
