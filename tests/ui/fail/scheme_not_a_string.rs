use nvm_runtime::paid;

#[paid(plan = "1", scheme = erc4337)]
async fn handler() -> &'static str {
    "scheme"
}

fn main() {}
