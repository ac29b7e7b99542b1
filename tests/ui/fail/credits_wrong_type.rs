use nvm_runtime::paid;

#[paid(plan = "1", credits = "ten")]
async fn handler() -> &'static str {
    "string credits"
}

fn main() {}
