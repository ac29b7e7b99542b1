use nvm_runtime::paid;

#[paid(plan = 42)]
async fn handler() -> &'static str {
    "numeric plan"
}

fn main() {}
