#![deny(warnings, missing_docs)]
//! A crate that documents everything.
use actix_web::{get, App};
use nvm_runtime::paid;

/// Tells the time, for one credit.
#[get("/time")]
#[paid(plan = "1")]
#[allow(clippy::unused_async)]
pub async fn time() -> &'static str {
    "noon"
}

/// Visible to the crate only.
#[paid(plan = "1")]
#[get("/inner")]
pub(crate) async fn inner() -> &'static str {
    "inner"
}

mod nested {
    use nvm_runtime::paid;

    /// In a module, routed by hand.
    #[paid(plan = "1", credits = 2)]
    pub(super) async fn routed() -> &'static str {
        "nested"
    }
}

fn main() {
    let _ = App::new()
        .service(time)
        .service(inner)
        .route("/nested", actix_web::web::get().to(nested::routed));
}
