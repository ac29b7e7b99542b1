use nvm_runtime::paid;

#[paid(plan = "1")]
fn handler() -> &'static str {
    "sync"
}

fn main() {}
