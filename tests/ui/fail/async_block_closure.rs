use nvm_runtime::paid;

#[paid(plan = "1", credits = |_req| async move { 1 })]
async fn handler() -> &'static str {
    "async block"
}

fn main() {}
