//! The start-up check fails fast, naming the variable and the handler, when an
//! `env("VAR")` plan is unset; and reads it once it is set.

use actix_web::{HttpResponse, post};
use nvm_runtime::paid;

#[post("/needs-env")]
#[paid(plan = env("NVM_TEST_STARTUP_PLAN"), credits = 1)]
async fn needs_env() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[test]
fn an_unset_env_plan_fails_the_startup_check_by_name() {
    // Nothing sets this variable: it exists for this test only.
    assert!(std::env::var_os("NVM_TEST_STARTUP_PLAN").is_none());
    let error = nvm_runtime::actix::pricing::check_startup().unwrap_err();
    let message = error.to_string();
    assert!(message.contains("NVM_TEST_STARTUP_PLAN"), "{message}");
    assert!(message.contains("needs_env"), "{message}");
    let route =
        nvm_runtime::actix::pricing::manifest().into_iter().find(|r| r.handler == "needs_env").unwrap();
    assert_eq!(route.plan, nvm_runtime::actix::pricing::ValueSource::Env("NVM_TEST_STARTUP_PLAN".into()));
}
