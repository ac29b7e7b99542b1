use actix_web::HttpRequest;
use nvm_runtime::paid;

#[paid(plan = "1")]
async fn handler(
    a1: HttpRequest, a2: HttpRequest, a3: HttpRequest, a4: HttpRequest,
    a5: HttpRequest, a6: HttpRequest, a7: HttpRequest, a8: HttpRequest,
    a9: HttpRequest, a10: HttpRequest, a11: HttpRequest, a12: HttpRequest,
    a13: HttpRequest, a14: HttpRequest, a15: HttpRequest, a16: HttpRequest,
) -> &'static str {
    "too many"
}

fn main() {}
