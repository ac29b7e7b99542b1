use nvm_runtime::paid;

#[paid(credits = 1)]
async fn handler() -> &'static str {
    "no plan"
}

fn main() {}
