use nvm_runtime::paid;

#[paid(plan = "1")]
struct Handler;

fn main() {}
