use nvm_runtime::paid;

#[paid(plan = "1", credits = 1.5)]
async fn handler() -> &'static str {
    "float"
}

fn main() {}
