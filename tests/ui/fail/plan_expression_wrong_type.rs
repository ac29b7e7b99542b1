use nvm_runtime::paid;

const PLAN: u32 = 42;

#[paid(plan = PLAN)]
async fn handler() -> &'static str {
    "numeric plan const"
}

fn main() {}
