use nvm_runtime::paid;

#[paid(plan = "1", settle = "after_headers")]
async fn handler() -> &'static str {
    "streamed"
}

fn main() {}
