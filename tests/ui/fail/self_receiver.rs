use nvm_runtime::paid;

struct Agent;

impl Agent {
    #[paid(plan = "1")]
    async fn handler(&self) -> &'static str {
        "method"
    }
}

fn main() {}
