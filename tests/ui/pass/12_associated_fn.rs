//! `#[paid]` on an associated function (no `self`), registered by hand: actix-web's
//! routing attributes need a free function, `.to(Agent::ask)` does not.
use actix_web::{App, web};
use nvm_runtime::paid;

struct Agent;

impl Agent {
    #[paid(plan = "1")]
    async fn ask() -> &'static str {
        "associated"
    }
}

fn main() {
    let _app = App::new().route("/ask", web::post().to(Agent::ask));
}
