use nvm_runtime::paid;

#[paid(plan = env(""))]
async fn handler() -> &'static str {
    "empty env"
}

fn main() {}
