#![deny(warnings)]
use actix_web::{web, App, HttpResponse};
use nvm_runtime::{paid, Payments};

#[paid(plan = "1", credits = 3)]
async fn handler(body: String) -> HttpResponse {
    HttpResponse::Ok().body(body)
}

fn app(payments: Payments) {
    let _ = App::new()
        .app_data(payments)
        .service(web::resource("/ask").route(web::post().to(handler)))
        .route("/also", web::put().to(handler));
}

fn main() {
    let _ = app;
}
