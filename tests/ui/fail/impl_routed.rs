//! `#[paid]` above a routing attribute on an associated function: one error, at the
//! routing attribute, saying to write a free function or register it by hand (not
//! actix-web's two errors about a struct and an impl inside an `impl` block).
use actix_web::post;
use nvm_runtime::paid;

struct Agent;

impl Agent {
    #[paid(plan = "1")]
    #[post("/ask")]
    async fn ask() -> &'static str {
        "associated"
    }
}

trait Priced {
    #[paid(plan = "1")]
    #[actix_web::get("/price")]
    async fn price() -> &'static str {
        "default"
    }
}

fn main() {}
