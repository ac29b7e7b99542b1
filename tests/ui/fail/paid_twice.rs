use nvm_runtime::paid;

#[paid(plan = "1")]
#[paid(plan = "2")]
async fn handler() -> &'static str {
    "twice"
}

fn main() {}
