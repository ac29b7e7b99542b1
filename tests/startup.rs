//! The start-up check of `Payments::prepare` fails fast, before any facilitator call,
//! naming the variable and the handler, when an `env("VAR")` plan is unset.

use actix_web::{HttpResponse, post};
use nvm_runtime::paid;

#[post("/needs-env")]
#[paid(plan = env("NVM_TEST_STARTUP_PLAN"), credits = 1)]
async fn needs_env() -> HttpResponse {
    HttpResponse::Ok().finish()
}

/// What `prepare()` says of this program, against an embedded facilitator.
fn prepare_error() -> nvm_runtime::error::ConfigError {
    actix_web::rt::System::new().block_on(async {
        let t = nvm_runtime::testing::TestPayments::start().await;
        let error = t.payments().prepare().await.expect_err("an unset env(\"VAR\") plan fails prepare()");
        assert_eq!(
            t.facilitator().calls(nvm_runtime::local::Endpoint::Plans),
            0,
            "refused before any facilitator call"
        );
        error
    })
}

#[test]
fn an_unset_env_plan_fails_the_startup_check_by_name() {
    // Nothing sets this variable: it exists for this test only.
    assert!(std::env::var_os("NVM_TEST_STARTUP_PLAN").is_none());
    let error = prepare_error();
    let message = error.to_string();
    assert!(message.contains("NVM_TEST_STARTUP_PLAN"), "{message}");
    assert!(message.contains("needs_env"), "{message}");
    let route =
        nvm_runtime::actix::pricing::manifest().into_iter().find(|r| r["handler"] == "needs_env").unwrap();
    assert_eq!(route["plan"], serde_json::json!({"env": "NVM_TEST_STARTUP_PLAN"}));
}
