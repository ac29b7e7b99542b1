//! `#[paid]` on an associated function (no `self`), registered by hand: actix-web's
//! routing attributes need a free function, `.to(Agent::ask)` does not. A routed handler
//! declared inside a method's body is a free function, and compiles.
use actix_web::{App, get, web};
use nvm_runtime::paid;

struct Agent;

impl Agent {
    #[paid(plan = "1")]
    async fn ask() -> &'static str {
        "associated"
    }

    fn app() -> App<
        impl actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
            InitError = (),
        >,
    > {
        #[paid(plan = "1")]
        #[get("/status")]
        async fn status() -> &'static str {
            "nested"
        }
        App::new().route("/ask", web::post().to(Agent::ask)).service(status)
    }
}

fn main() {
    let _app = Agent::app();
}
