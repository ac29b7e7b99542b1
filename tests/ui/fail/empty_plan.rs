use nvm_runtime::paid;

#[paid(plan = "")]
async fn handler() -> &'static str {
    "empty plan"
}

fn main() {}
