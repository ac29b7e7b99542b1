use actix_web::HttpRequest;
use nvm_runtime::actix::credits::by_body;
use nvm_runtime::{paid, PaymentContext};

fn per_byte(_: &HttpRequest, body: &[u8]) -> u64 {
    body.len() as u64
}

/// A speculative handler runs before its payment is verified: no PaymentContext.
#[paid(plan = "1", speculative = true)]
async fn reads_its_payment(payment: PaymentContext) -> String {
    format!("{:?}", payment.payer())
}

/// Its extractors take the body while it is verified: not priced by it.
#[paid(plan = "1", credits = by_body(per_byte).limit(1024), speculative = true)]
async fn priced_by_body() -> &'static str {
    "ok"
}

/// A flag is a `bool`.
#[paid(plan = "1", speculative = "yes")]
async fn not_a_bool() -> &'static str {
    "ok"
}

fn main() {}
