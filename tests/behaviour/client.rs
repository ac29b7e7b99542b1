//! The buyer's client against a `#[paid]` server: it pays a 402 by itself, reuses its
//! token, mints a fresh one when a token is refused at verify as spent or expired, and
//! never pays again once the seller attempted settlement (a 402 with `payment-response`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, post, web};
use nvm_runtime::__private::wire::CODE_SPENT;
use nvm_runtime::client::{ClientError, PaidResponse, PayingClient, PaymentOutcome, Subscriber};
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::{PaymentsBuilder, paid};
use nvm_tests::{Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, Runs, TestServer, payments_for, serve};

/// The price of `POST /ask`.
const PRICE: u64 = 2;

#[post("/ask")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2)]
async fn ask(runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    HttpResponse::Ok().body("answer")
}

#[post("/fail")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2)]
async fn fail(runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    HttpResponse::InternalServerError().body("the handler failed")
}

#[post("/free")]
async fn free() -> HttpResponse {
    HttpResponse::Ok().body("free")
}

fn setup() -> (Arc<LocalFacilitator>, TestServer, PayingClient) {
    setup_with(payments_for)
}

/// A local facilitator, a seller configured by `seller` (from the builder's defaults),
/// and a paying client for the demo subscriber.
fn setup_with(
    seller: impl Fn(&LocalFacilitator) -> PaymentsBuilder,
) -> (Arc<LocalFacilitator>, TestServer, PayingClient) {
    let local = Arc::new(LocalFacilitator::start().unwrap());
    let server = serve(Some(seller(&local).build().unwrap()), |cfg: &mut web::ServiceConfig| {
        cfg.service(ask).service(fail).service(free);
    });
    let subscriber = Subscriber::builder()
        .api_key(local.subscriber_api_key())
        .backend_url(local.backend_url())
        .build()
        .unwrap();
    (local, server, PayingClient::new(subscriber))
}

#[actix_web::test]
async fn pays_a_402_by_itself_and_reuses_its_token() {
    let (local, server, client) = setup();
    for expected_balance in [98, 96, 94] {
        let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
        assert!(matches!(paid.outcome, PaymentOutcome::Settled(_)), "{:?}", paid.outcome);
        assert_eq!(paid.response.status(), 200);
        let receipt = paid.receipt.clone().expect("receipt");
        assert_eq!(receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), 2);
        assert_eq!(receipt.remaining_balance.as_ref().and_then(|a| a.as_u64()), Some(expected_balance));
        assert_eq!(paid.outcome, PaymentOutcome::Settled(receipt));
    }
    // One token, minted once, for the plan and agent of the envelope.
    assert_eq!(Calls::of(&local).permissions, 1);
    assert_eq!(server.runs.count(), 3);
}

#[actix_web::test]
async fn a_cached_token_refused_is_replaced_once() {
    let (local, server, client) = setup();
    assert_eq!(client.send(client.http().post(server.at("/ask"))).await.unwrap().response.status(), 200);
    local.inject_times(Endpoint::Verify, Fault::SettleFailure("expired_token".into()), 1);
    let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    assert!(matches!(paid.outcome, PaymentOutcome::Settled(_)), "{:?}", paid.outcome);
    assert_eq!(Calls::of(&local).permissions, 2, "a fresh token was minted");
    assert_eq!(server.runs.count(), 2);
}

#[actix_web::test]
async fn a_fresh_token_reported_spent_at_verify_is_replaced_once() {
    let (local, server, client) = setup();
    local.inject_times(
        Endpoint::Verify,
        Fault::SettleFailure(format!("{CODE_SPENT}: access token already used")),
        1,
    );
    let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    assert!(
        matches!(&paid.outcome, PaymentOutcome::Settled(r) if r.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0) == PRICE),
        "{:?}",
        paid.outcome
    );
    assert_eq!(Calls::of(&local).permissions, 2, "the spent token was replaced");
    assert_eq!(Calls::of(&local).verify, 2);
    assert_eq!(server.runs.count(), 1);
}

/// A 402 with `payment-response` naming the spent-token code came after the handler
/// ran: it is returned, never retried, whether the token was cached or fresh.
#[actix_web::test]
async fn a_settlement_failure_naming_a_spent_token_is_not_retried() {
    for warm in [false, true] {
        let (local, server, client) = setup();
        if warm {
            assert_eq!(
                client.send(client.http().post(server.at("/ask"))).await.unwrap().response.status(),
                200
            );
        }
        let (before, calls, runs) = (balance(&local), Calls::of(&local), server.runs.count());
        let reason = format!("{CODE_SPENT}: access token already used");
        local.inject_times(Endpoint::Settle, Fault::SettleFailure(reason), 1);
        let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
        let label = if warm { "warm" } else { "cold" };
        assert_eq!(paid.response.status(), 402, "{label}");
        assert!(paid.response.headers().contains_key("payment-response"), "{label}");
        match &paid.outcome {
            PaymentOutcome::SettlementFailed(receipt) => {
                assert!(!receipt.success, "{label}");
                assert!(
                    receipt.error_reason.as_deref().is_some_and(|r| r.contains(CODE_SPENT)),
                    "{label}: {receipt:?}"
                );
            }
            other => panic!("{label}: expected SettlementFailed, got {other:?}"),
        }
        assert!(paid.outcome.must_not_pay_again(), "{label}");
        let delta = delta(calls, Calls::of(&local));
        assert_eq!((delta.verify, delta.settle), (1, 1), "{label}: one paid request");
        assert_eq!(delta.permissions, u64::from(!warm), "{label}: no re-mint");
        assert_eq!(server.runs.count() - runs, 1, "{label}");
        assert_eq!(before - balance(&local), 0, "{label}: nothing burned");
    }
}

/// Every way settlement can fail after the handler ran (refused, failing, lost, late),
/// with a warm token cache and a cold one: one `send` pays at most the price once, and
/// never sends again once settlement was attempted. The client's reusable tokens are
/// never settled twice by the seller: an answer that did not come back (a 500, lost,
/// late) is recorded as a pending settlement and answered 402 without an envelope, outcome unknown.
#[actix_web::test]
async fn settlement_faults_never_make_the_client_pay_twice() {
    const SELLER_TIMEOUT: Duration = Duration::from_millis(300);
    const LATE: Duration = Duration::from_millis(800);
    // (label, fault, status, unknown outcome, burned)
    let faults = [
        ("settle 500", Fault::Status(500), 402, true, 0),
        (
            "settle success:false",
            Fault::SettleFailure("settlement rejected by the ledger".into()),
            402,
            false,
            0,
        ),
        ("settle answer lost", Fault::LoseAnswer, 402, true, PRICE),
        ("settle answer late", Fault::Delay(LATE), 402, true, PRICE),
    ];
    let mut table = Vec::new();
    for (name, fault, want_status, unknown, burned) in &faults {
        for warm in [true, false] {
            let label = format!("{name}, {} cache", if warm { "warm" } else { "cold" });
            let (local, server, client) = setup_with(|local| payments_for(local).timeout(SELLER_TIMEOUT));
            if warm {
                let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
                assert!(
                    matches!(paid.outcome, PaymentOutcome::Settled(_)),
                    "{label}: warm-up {:?}",
                    paid.outcome
                );
            }
            let (before, calls, runs) = (balance(&local), Calls::of(&local), server.runs.count());
            local.inject_times(Endpoint::Settle, fault.clone(), 1);
            let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
            if matches!(fault, Fault::Delay(_)) {
                // Let the late settlement land before reading the ledger.
                tokio::time::sleep(LATE + Duration::from_millis(300)).await;
            }
            let after = balance(&local);
            let delta = delta(calls, Calls::of(&local));
            let ran = server.runs.count() - runs;
            let status = paid.response.status().as_u16();
            let attempted = paid.response.headers().contains_key("payment-response");

            assert_eq!(before - after, *burned, "{label}: burned");
            assert_eq!(ran, 1, "{label}: the handler ran {ran} times");
            assert_eq!(
                (status, attempted),
                (*want_status, true),
                "{label}: the seller withholds and says why"
            );
            assert!(paid.outcome.must_not_pay_again(), "{label}: {:?}", paid.outcome);
            if *unknown {
                let PaymentOutcome::OutcomeUnknown(receipt) = &paid.outcome else {
                    panic!("{label}: {:?}", paid.outcome)
                };
                assert!(
                    receipt.pending_id().is_some_and(|id| !id.is_empty()),
                    "{label}: the buyer gets the record's id"
                );
            } else {
                assert!(
                    matches!(paid.outcome, PaymentOutcome::SettlementFailed(_)),
                    "{label}: {:?}",
                    paid.outcome
                );
            }
            assert_eq!((delta.verify, delta.settle), (1, 1), "{label}: one paid request, one settle");
            assert_eq!(delta.permissions, u64::from(!warm), "{label}: no re-mint");
            table.push(format!("{label}: status {status}, outcome {}, burned {}, handler runs {ran}, verify {}, settle {}, mints {}",
                outcome_name(&paid), before - after, delta.verify, delta.settle, delta.permissions));
        }
    }
    eprintln!("{}", table.join("\n"));
}

#[actix_web::test]
async fn outcomes_name_what_happened() {
    let (local, server, client) = setup();
    let paid = client.send(client.http().post(server.at("/free"))).await.unwrap();
    assert_eq!((paid.response.status().as_u16(), paid.outcome), (200, PaymentOutcome::NotRequired));

    let before = balance(&local);
    let paid = client.send(client.http().post(server.at("/fail"))).await.unwrap();
    assert_eq!(paid.response.status().as_u16(), 500);
    assert_eq!(paid.outcome, PaymentOutcome::Unsettled);
    assert_eq!((balance(&local), server.runs.count(), Calls::of(&local).settle), (before, 1, 0));

    // A seller that delivers on settle failure: the content comes, the failure is named.
    let (local, server, client) = setup_with(|local| payments_for(local).deliver_on_settle_failure(true));
    local.inject_times(Endpoint::Settle, Fault::SettleFailure("declined".into()), 1);
    let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    assert!(matches!(paid.outcome, PaymentOutcome::SettlementFailed(_)), "{:?}", paid.outcome);
    assert_eq!((Calls::of(&local).verify, Calls::of(&local).settle, server.runs.count()), (1, 1, 1));
    // ... and an unknown outcome, delivered: named as such.
    local.inject_times(Endpoint::Settle, Fault::Status(503), 1);
    let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    assert!(matches!(paid.outcome, PaymentOutcome::OutcomeUnknown(_)), "{:?}", paid.outcome);
}

fn balance(local: &LocalFacilitator) -> u64 {
    local.balance(DEMO_PLAN_ID, local.subscriber_address())
}

fn delta(before: Calls, after: Calls) -> Calls {
    let mut delta = after;
    delta.verify -= before.verify;
    delta.settle -= before.settle;
    delta.permissions -= before.permissions;
    delta.plans -= before.plans;
    delta
}

fn outcome_name(paid: &PaidResponse) -> &'static str {
    match paid.outcome {
        PaymentOutcome::NotRequired => "NotRequired",
        PaymentOutcome::Settled(_) => "Settled",
        PaymentOutcome::SettlementFailed(_) => "SettlementFailed",
        PaymentOutcome::Refused(_) => "Refused",
        PaymentOutcome::Unsettled => "Unsettled",
        PaymentOutcome::OutcomeUnknown(_) => "OutcomeUnknown",
        _ => "other",
    }
}

#[actix_web::test]
async fn a_refusal_that_a_new_token_cannot_fix_is_returned_not_retried_forever() {
    let (local, server, client) = setup();
    local.set_balance(DEMO_PLAN_ID, local.subscriber_address(), 1);
    let paid = client.send(client.http().post(server.at("/ask"))).await.unwrap();
    assert_eq!(paid.response.status(), 402);
    assert!(paid.receipt.is_none());
    assert!(
        matches!(&paid.outcome, PaymentOutcome::Refused(reason) if !reason.is_empty()),
        "{:?}",
        paid.outcome
    );
    assert_eq!(Calls::of(&local).permissions, 1);
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
