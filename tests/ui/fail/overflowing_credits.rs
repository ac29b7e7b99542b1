use nvm_runtime::paid;

#[paid(plan = "1", credits = 18446744073709551616)]
async fn handler() -> &'static str {
    "overflow"
}

fn main() {}
