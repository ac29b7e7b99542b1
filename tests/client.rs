//! The buyer's client against a `#[paid]` server: it pays a 402 by itself, reuses its
//! token, and mints a fresh one when a token is refused as spent or expired.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use actix_web::{HttpResponse, post, web};
use nvm_runtime::client::{ClientError, PayingClient, Subscriber};
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::{Payments, paid};
use nvm_tests::{DEMO_AGENT_ID, DEMO_PLAN_ID, Runs, TestServer, payments_for, serve};

#[post("/ask")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2)]
async fn ask(runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    HttpResponse::Ok().body("answer")
}

fn setup() -> (Arc<LocalFacilitator>, TestServer, PayingClient) {
    let local = Arc::new(LocalFacilitator::start().unwrap());
    let server = serve(Some(payments_for(&local).build().unwrap()), |cfg: &mut web::ServiceConfig| {
        cfg.service(ask);
    });
    let subscriber = Payments::builder()
        .api_key(local.subscriber_api_key())
        .backend_url(local.backend_url())
        .build()
        .unwrap();
    (local, server, PayingClient::new(Subscriber::new(subscriber)))
}

#[actix_web::test]
async fn pays_a_402_by_itself_and_reuses_its_token() {
    let (local, server, client) = setup();
    for expected_balance in [98, 96, 94] {
        let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
        assert!(paid.paid);
        assert_eq!(paid.response.status(), 200);
        let receipt = paid.receipt.expect("receipt");
        assert_eq!(receipt.credits_redeemed_u64(), 2);
        assert_eq!(receipt.remaining_balance.and_then(|a| a.as_u64()), Some(expected_balance));
    }
    // One token, minted once, for the plan and agent of the envelope.
    assert_eq!(local.calls().permissions, 1);
    assert_eq!(server.runs.count(), 3);
}

#[actix_web::test]
async fn a_cached_token_refused_is_replaced_once() {
    let (local, server, client) = setup();
    assert_eq!(client.send(client.http().post(server.at("/ask"))).await.unwrap().response.status(), 200);
    local.inject_times(Endpoint::Verify, Fault::SettleFailure("expired_token".into()), 1);
    let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    assert_eq!(local.calls().permissions, 2, "a fresh token was minted");
}

#[actix_web::test]
async fn a_token_reported_spent_is_replaced_once() {
    let (local, server, client) = setup();
    local.inject_times(
        Endpoint::Settle,
        Fault::SettleFailure("BCK.X402.0059: access token already used".into()),
        1,
    );
    let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    assert_eq!(paid.receipt.unwrap().credits_redeemed_u64(), 2);
    assert_eq!(local.calls().permissions, 2);
}

#[actix_web::test]
async fn a_refusal_that_a_new_token_cannot_fix_is_returned_not_retried_forever() {
    let (local, server, client) = setup();
    local.set_balance(DEMO_PLAN_ID, local.subscriber_address(), 1);
    let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
    assert_eq!(paid.response.status(), 402);
    assert!(paid.receipt.is_none());
    assert_eq!(local.calls().permissions, 1);
    assert_eq!(server.runs.count(), 0);
}

#[actix_web::test]
async fn errors_say_which_step_failed() {
    let (local, server, client) = setup();
    local.inject(Endpoint::Permissions, Fault::Status(500));
    let error = client.send(client.http().post(server.at("/ask"))).await.unwrap_err();
    assert!(matches!(error, ClientError::Mint { .. }), "{error:?}");
    assert!(error.to_string().starts_with("minting an access token for plan"), "{error}");
    let error = client.send(client.http().post("http://127.0.0.1:9/ask")).await.unwrap_err();
    assert!(error.to_string().starts_with("sending the request failed"), "{error}");
}
