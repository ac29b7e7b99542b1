#![deny(warnings)]
use actix_web::{post, App, HttpResponse};
use nvm_runtime::{paid, ChargeError, PaymentContext};

#[post("/work")]
#[paid(plan = "1", credits = 10)]
async fn work(payment: PaymentContext) -> Result<HttpResponse, actix_web::Error> {
    let _: Option<&str> = payment.plan_id();
    let _: Option<&str> = payment.agent_id();
    let _: Option<&str> = payment.agent_request_id();
    let _: Option<&str> = payment.payer();
    let _: Option<String> = payment.token().map(|t| t.to_string());
    let used: u64 = 3;
    if used > payment.credits() {
        return Ok(HttpResponse::BadRequest().body(format!("at most {}", payment.credits())));
    }
    payment.charge(used).map_err(|e: ChargeError| actix_web::error::ErrorInternalServerError(e))?;
    Ok(HttpResponse::Ok().body(payment.charged().to_string()))
}

fn main() {
    let _ = App::new().service(work);
}
