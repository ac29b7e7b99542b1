#![deny(warnings)]
use actix_web::{get, App, HttpResponse, Responder};
use nvm_runtime::paid;

#[derive(Debug)]
struct MyError;

impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("my error")
    }
}

impl actix_web::ResponseError for MyError {}

#[get("/a")]
#[paid(plan = "1")]
async fn a() -> Result<HttpResponse, actix_web::Error> {
    Ok(HttpResponse::Ok().finish())
}

#[get("/b")]
#[paid(plan = "1")]
async fn b() -> Result<impl Responder, MyError> {
    Err::<String, _>(MyError)
}

#[get("/c")]
#[paid(plan = "1")]
async fn c() -> actix_web::Either<String, HttpResponse> {
    actix_web::Either::Left("c".to_owned())
}

fn main() {
    let _ = App::new().service(a).service(b).service(c);
}
