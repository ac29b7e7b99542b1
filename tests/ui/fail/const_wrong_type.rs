use nvm_runtime::paid;

const PRICE: i32 = 3;

#[paid(plan = "1", credits = PRICE)]
async fn handler() -> &'static str {
    "i32 const"
}

fn main() {}
