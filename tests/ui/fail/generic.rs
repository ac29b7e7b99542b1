use nvm_runtime::paid;

#[paid(plan = "1")]
async fn handler<T: Default>() -> &'static str {
    "generic"
}

fn main() {}
