//! The local facilitator over real HTTP on 127.0.0.1, driven by the crate's own
//! facilitator client; and the `nvm-pending` operator command (built with it).
#![cfg(feature = "local")]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nvm_runtime::__private::backend::{ApiKey, Facilitator};
use nvm_runtime::__private::local::{LocalFacilitatorExt as _, LocalInfo, MintOptions, PlanSpec};
use nvm_runtime::__private::wire::codec;
use nvm_runtime::__private::wire::{AccessTokenExt as _, EnvelopeBuilder};
use nvm_runtime::__private::wire::{
    CODE_FORGED, CODE_SPENT, CODE_WRONG_RESOURCE, FacilitatorRequest, PermissionsRequest, ResourceBinding,
};
use nvm_runtime::error::FacilitatorError;
use nvm_runtime::local::{Endpoint, LocalFacilitator};
use nvm_runtime::wire::AccessToken;
use nvm_runtime::wire::PaymentRequired;
use nvm_runtime::wire::{SettleResponse, VerifyResponse};

const NETWORK: &str = "eip155:84532";

fn client(local: &LocalFacilitator, key: &str) -> Facilitator {
    let key: ApiKey = key.parse().expect("the local facilitator's keys parse");
    Facilitator::new(local.backend_url(), &key, Duration::from_secs(10)).expect("a client")
}

fn builder(local: &LocalFacilitator) -> Facilitator {
    client(local, local.builder_api_key())
}

fn envelope(plan_id: &str, agent_id: &str, url: &str) -> PaymentRequired {
    EnvelopeBuilder::new(plan_id, NETWORK).url(url).agent_id(agent_id).http_verb("POST").build()
}

fn default_envelope(local: &LocalFacilitator) -> PaymentRequired {
    envelope(local.plan_id(), local.agent_id(), "/ask")
}

fn request(envelope: &PaymentRequired, token: &str) -> FacilitatorRequest {
    FacilitatorRequest {
        payment_required: envelope.clone(),
        x402_access_token: token.to_owned(),
        max_amount: None,
        agent_request_id: None,
    }
}

fn with_id(mut request: FacilitatorRequest, id: &str) -> FacilitatorRequest {
    request.agent_request_id = Some(id.to_owned());
    request
}

fn with_amount(mut request: FacilitatorRequest, amount: u64) -> FacilitatorRequest {
    request.max_amount = Some(amount.into());
    request
}

async fn verify(local: &LocalFacilitator, request: &FacilitatorRequest) -> VerifyResponse {
    builder(local).verify(request).await.expect("verify answers 200")
}

async fn invalid_reason(local: &LocalFacilitator, request: &FacilitatorRequest) -> String {
    let response = verify(local, request).await;
    assert!(!response.is_valid, "expected an invalid verification, got {response:?}");
    response.invalid_reason.expect("an invalid verification says why")
}

async fn settle(local: &LocalFacilitator, request: &FacilitatorRequest) -> SettleResponse {
    builder(local).settle(request).await.expect("settle answers 200")
}

fn refused_code(result: Result<SettleResponse, FacilitatorError>) -> String {
    match result {
        Err(error) if !error.is_unavailable() => {
            let status = error.status().unwrap_or_default();
            assert!((400..500).contains(&status), "a refusal is a 4xx, got {status}");
            assert!(error.message().is_some_and(|m| !m.is_empty()), "a refusal explains itself");
            error.code().unwrap_or_default().to_owned()
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn is_tx_hash(text: &str) -> bool {
    text.len() == 66 && text.starts_with("0x") && text[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[actix_web::test]
async fn mints_verifies_and_settles_over_http() {
    let local = LocalFacilitator::start().expect("starts");
    let subscriber = client(&local, local.subscriber_api_key());
    let envelope = default_envelope(&local);
    let minted = subscriber
        .mint(&PermissionsRequest {
            accepted: envelope.accepts[0].clone(),
            delegation_config: None,
            token_version: None,
            resource: None,
        })
        .await
        .expect("mints");

    // The real token format: base64 of a JSON x402 PaymentPayload.
    let json: serde_json::Value = codec::decode_json_header(&minted.access_token).expect("base64 JSON");
    assert_eq!(json["x402Version"], 2);
    assert_eq!(json["accepted"]["planId"], local.plan_id());
    assert_eq!(json["accepted"]["extra"]["agentId"], local.agent_id());
    assert_eq!(json["accepted"]["extra"]["version"], "1");
    assert_eq!(json["payload"]["authorization"]["from"], local.subscriber_address());
    assert_eq!(json["payload"]["authorization"]["sessionKeysProvider"], "local");
    assert_eq!(json["payload"]["authorization"]["sessionKeys"], serde_json::json!([]));
    assert!(json["payload"]["signature"].as_str().is_some_and(|s| s.starts_with("0x")));
    assert_eq!(json["extensions"], serde_json::json!({}));
    assert!(!AccessToken::new(minted.access_token.as_str()).decode().expect("decodes").is_single_use());

    let request = request(&envelope, &minted.access_token);
    let verified = verify(&local, &request).await;
    assert!(verified.is_valid, "{verified:?}");
    assert_eq!(verified.payer.as_deref(), Some(local.subscriber_address()));
    assert_eq!(verified.network.as_deref(), Some(NETWORK));
    let id = verified.request_id().expect("a request id").to_owned();
    assert_eq!(verified.agent_request_id.as_deref(), Some(id.as_str()));
    let verified_json = serde_json::to_value(&verified).expect("serialises");
    let json = &verified_json["agentRequest"];
    assert_eq!(json["agentId"], local.agent_id());
    assert!(json["agentName"].is_string(), "{json}");
    assert_eq!(json["batch"], serde_json::json!(false));
    assert_eq!(json["urlMatching"], serde_json::json!("/ask"));
    assert_eq!(json["verbMatching"], serde_json::json!("POST"));
    let balance = &json["balance"];
    assert_eq!(balance["planId"], local.plan_id());
    assert_eq!(balance["planType"], "credits");
    assert_eq!(balance["holderAddress"], local.subscriber_address());
    assert_eq!(balance["balance"], "100");
    assert_eq!(balance["isSubscriber"], true);
    assert!(
        balance["creditsContract"].is_string()
            && balance["planName"].is_string()
            && balance["pricePerCredit"].is_number(),
        "{balance}"
    );

    let receipt = settle(&local, &with_id(request, &id)).await;
    assert!(receipt.success, "{receipt:?}");
    assert!(is_tx_hash(&receipt.transaction), "{}", receipt.transaction);
    assert_eq!(receipt.payer.as_deref(), Some(local.subscriber_address()));
    assert_eq!(receipt.network.as_deref(), Some(NETWORK));
    assert_eq!(receipt.credits_redeemed.as_ref().map(|a| a.as_str()), Some("1"));
    assert_eq!(receipt.remaining_balance.as_ref().map(|a| a.as_str()), Some("99"));
    assert_eq!(receipt.billing_model.as_deref(), Some("credits"));
    assert_eq!(receipt.error_reason, None);

    assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), 99);
    assert_eq!(local.total_burned(), 1);
    let calls =
        [Endpoint::Verify, Endpoint::Settle, Endpoint::Permissions, Endpoint::Plans].map(|e| local.calls(e));
    assert_eq!(calls, [1, 1, 1, 0]);
}

#[actix_web::test]
async fn max_amount_is_verified_and_burned() {
    let local = LocalFacilitator::start().expect("starts");
    let token = local.mint_token(MintOptions::new());
    let request = with_amount(request(&default_envelope(&local), &token), 7);
    let verified = verify(&local, &request).await;
    assert!(verified.is_valid);
    let id = verified.request_id().expect("id").to_owned();
    let receipt = settle(&local, &with_id(request, &id)).await;
    assert_eq!(receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), 7);
    assert_eq!(receipt.remaining_balance.as_ref().and_then(|a| a.as_u64()), Some(93));
    // A reusable token pays again.
    let again = settle(&local, &request_for(&local, &token)).await;
    assert!(again.success);
    assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), 92);
}

fn request_for(local: &LocalFacilitator, token: &str) -> FacilitatorRequest {
    request(&default_envelope(local), token)
}

#[actix_web::test]
async fn verify_reports_invalid_token_for_garbage_forged_and_altered_tokens() {
    let local = LocalFacilitator::start().expect("starts");
    let (_, rich) = local.add_subscriber(local.plan_id(), 1_000);
    let token = local.mint_token(MintOptions::new());

    for garbage in ["", "not a token", "!!!!", "bm90IGpzb24", "eyJ4NDAyVmVyc2lvbiI6Mn0"] {
        assert_eq!(
            invalid_reason(&local, &request_for(&local, garbage)).await,
            "invalid_token",
            "{garbage:?}"
        );
    }
    let huge = "A".repeat(64 * 1024);
    assert_eq!(invalid_reason(&local, &request_for(&local, &huge)).await, "invalid_token");

    // Forged signatures.
    let mut payload = AccessToken::new(token.as_str()).decode().expect("decodes");
    for signature in [format!("0x{}", "00".repeat(32)), "0xzz".to_owned(), String::new()] {
        payload.payload.signature = signature;
        let forged = payload.to_token();
        assert_eq!(invalid_reason(&local, &request_for(&local, forged.as_str())).await, "invalid_token");
    }
    // A token signed by another facilitator.
    let other = LocalFacilitator::start().expect("starts");
    let foreign = other.mint_token(MintOptions::new().plan(local.plan_id()).agent(local.agent_id()));
    assert_eq!(invalid_reason(&local, &request_for(&local, &foreign)).await, "invalid_token");

    // Altered payloads keep the signature but not its content.
    let original = AccessToken::new(token.as_str()).decode().expect("decodes");
    let mut altered = original.clone();
    altered.payload.authorization.from = rich.clone();
    assert_eq!(
        invalid_reason(&local, &request_for(&local, altered.to_token().as_str())).await,
        "invalid_token"
    );
    let mut altered = original.clone();
    altered.payload.authorization.valid_before = Some(u64::MAX);
    assert_eq!(
        invalid_reason(&local, &request_for(&local, altered.to_token().as_str())).await,
        "invalid_token"
    );
    let mut altered = original.clone();
    altered.accepted.network = "eip155:8453".into();
    assert_eq!(
        invalid_reason(&local, &request_for(&local, altered.to_token().as_str())).await,
        "invalid_token"
    );

    // The untouched token is still fine, and the URL-safe unpadded form of it too.
    assert!(verify(&local, &request_for(&local, &token)).await.is_valid);
    let url_safe = token.replace('+', "-").replace('/', "_").trim_end_matches('=').to_owned();
    assert!(verify(&local, &request_for(&local, &url_safe)).await.is_valid);
    assert_eq!(local.total_burned(), 0);
}

#[actix_web::test]
async fn verify_reports_expired_token() {
    let local = LocalFacilitator::start().expect("starts");
    let expired = local.mint_token(MintOptions::new().valid_before(1_000));
    assert_eq!(invalid_reason(&local, &request_for(&local, &expired)).await, "expired_token");
    let receipt = settle(&local, &request_for(&local, &expired)).await;
    assert!(!receipt.success);
    assert_eq!(receipt.error_reason.as_deref(), Some("expired_token"));
    let fresh = local.mint_token(MintOptions::new().valid_before(4_000_000_000));
    assert!(verify(&local, &request_for(&local, &fresh)).await.is_valid);
    assert_eq!(local.total_burned(), 0);
}

#[actix_web::test]
async fn verify_reports_insufficient_balance() {
    let local = LocalFacilitator::start().expect("starts");
    local.set_balance(local.plan_id(), local.subscriber_address(), 3);
    let token = local.mint_token(MintOptions::new());
    assert!(verify(&local, &with_amount(request_for(&local, &token), 3)).await.is_valid);
    let too_much = with_amount(request_for(&local, &token), 4);
    assert_eq!(invalid_reason(&local, &too_much).await, "insufficient_balance");

    // Without maxAmount the plan's default (here 5 credits) is needed.
    let pricey = local.add_plan(PlanSpec::crypto("Pricey").credits_per_request(5));
    local.set_balance(&pricey.plan_id, local.subscriber_address(), 4);
    let token = local.mint_token(MintOptions::new().plan(&pricey.plan_id));
    let request = request(&envelope(&pricey.plan_id, &pricey.agent_ids[0], "/ask"), &token);
    assert_eq!(invalid_reason(&local, &request).await, "insufficient_balance");
    // A "0" maxAmount also means the plan's default.
    assert_eq!(invalid_reason(&local, &with_amount(request.clone(), 0)).await, "insufficient_balance");
    local.set_balance(&pricey.plan_id, local.subscriber_address(), 5);
    assert!(verify(&local, &request).await.is_valid);

    // A subscriber who holds nothing.
    let (_, broke) = local.add_subscriber(local.plan_id(), 0);
    let token = local.mint_token(MintOptions::new().subscriber(&broke));
    assert_eq!(invalid_reason(&local, &request_for(&local, &token)).await, "insufficient_balance");
}

#[actix_web::test]
async fn verify_reports_invalid_plan() {
    let local = LocalFacilitator::start().expect("starts");
    // A plan that does not exist.
    let token = local.mint_token(MintOptions::new().plan("12345").agent(local.agent_id()));
    let request = request(&envelope("12345", local.agent_id(), "/ask"), &token);
    assert_eq!(invalid_reason(&local, &request).await, "invalid_plan");

    // A token for another plan than the envelope's.
    let other = local.add_plan(PlanSpec::crypto("Other"));
    local.set_balance(&other.plan_id, local.subscriber_address(), 10);
    let token = local.mint_token(MintOptions::new().plan(&other.plan_id));
    assert_eq!(invalid_reason(&local, &request_for(&local, &token)).await, "invalid_plan");

    // A plan the calling builder does not own.
    let (_, stranger) = local.add_account();
    let theirs = local.add_plan(PlanSpec::crypto("Theirs").owner(&stranger));
    local.set_balance(&theirs.plan_id, local.subscriber_address(), 10);
    let token = local.mint_token(MintOptions::new().plan(&theirs.plan_id));
    let request = self::request(&envelope(&theirs.plan_id, &theirs.agent_ids[0], "/ask"), &token);
    assert_eq!(invalid_reason(&local, &request).await, "invalid_plan");

    // An envelope that accepts nothing.
    let token = local.mint_token(MintOptions::new());
    let mut empty = default_envelope(&local);
    empty.accepts.clear();
    assert_eq!(invalid_reason(&local, &self::request(&empty, &token)).await, "invalid_plan");
}

#[actix_web::test]
async fn verify_reports_invalid_agent() {
    let local = LocalFacilitator::start().expect("starts");
    let other = local.add_plan(PlanSpec::crypto("Other").agent("777"));
    // The envelope names an agent that is not one of the plan's.
    let token = local.mint_token(MintOptions::new().no_agent());
    let request = request(&envelope(local.plan_id(), "777", "/ask"), &token);
    assert_eq!(invalid_reason(&local, &request).await, "invalid_agent");
    // The token's agent is not one of the plan's.
    let token = local.mint_token(MintOptions::new().agent("777"));
    let no_agent = EnvelopeBuilder::new(local.plan_id(), NETWORK).url("/ask").build();
    assert_eq!(invalid_reason(&local, &self::request(&no_agent, &token)).await, "invalid_agent");
    // The token's agent differs from the envelope's.
    assert_eq!(invalid_reason(&local, &request_for(&local, &token)).await, "invalid_agent");
    // Agents of a plan work for that plan only.
    local.set_balance(&other.plan_id, local.subscriber_address(), 1);
    let token = local.mint_token(MintOptions::new().plan(&other.plan_id).agent("777"));
    assert!(verify(&local, &self::request(&envelope(&other.plan_id, "777", "/x"), &token)).await.is_valid);
}

#[actix_web::test]
async fn settle_without_enough_credits_fails_and_burns_nothing() {
    let local = LocalFacilitator::start().expect("starts");
    local.set_balance(local.plan_id(), local.subscriber_address(), 2);
    let token = local.mint_token(MintOptions::new());
    let receipt = settle(&local, &with_amount(request_for(&local, &token), 3)).await;
    assert!(!receipt.success, "{receipt:?}");
    assert_eq!(receipt.error_reason.as_deref(), Some("insufficient_balance"));
    assert_eq!(receipt.transaction, "");
    assert_eq!(receipt.payer.as_deref(), Some(local.subscriber_address()));
    assert_eq!(receipt.network.as_deref(), Some(NETWORK));
    assert_eq!(receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), 0);
    assert_eq!(receipt.remaining_balance.as_ref().and_then(|a| a.as_u64()), Some(2));
    assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), 2);
    assert_eq!(local.total_burned(), 0);
}

#[actix_web::test]
async fn settle_is_idempotent_per_agent_request_id() {
    let local = LocalFacilitator::start().expect("starts");
    let token = local.mint_token(MintOptions::new());
    let request = request_for(&local, &token);
    let id = verify(&local, &request).await.request_id().expect("id").to_owned();
    let first = settle(&local, &with_id(request.clone(), &id)).await;
    let second = settle(&local, &with_id(request.clone(), &id)).await;
    assert!(first.success);
    assert_eq!(first, second, "the same agentRequestId answers the first result");
    assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), 99);
    assert_eq!(local.total_burned(), 1);

    // An id that was never issued, or that belongs to another token.
    assert_eq!(
        refused_code(builder(&local).settle(&with_id(request.clone(), "no-such-request")).await),
        "BCK.X402.0404"
    );
    let (_, someone) = local.add_subscriber(local.plan_id(), 5);
    let theirs = local.mint_token(MintOptions::new().subscriber(&someone));
    assert_eq!(
        refused_code(builder(&local).settle(&with_id(request_for(&local, &theirs), &id)).await),
        "BCK.X402.0409"
    );
    assert_eq!(local.total_burned(), 1);
}

#[actix_web::test]
async fn settling_a_spent_single_use_token_is_refused() {
    let local = LocalFacilitator::start().expect("starts");
    let token = local.mint_token(MintOptions::new().single_use().resource("/ask"));
    assert!(AccessToken::new(token.as_str()).decode().expect("decodes").is_single_use());
    let request = request_for(&local, &token);
    // Two verifications before any settlement are both valid.
    let first_id = verify(&local, &request).await.request_id().expect("id").to_owned();
    let second_id = verify(&local, &request).await.request_id().expect("id").to_owned();
    assert_ne!(first_id, second_id);
    assert!(settle(&local, &with_id(request.clone(), &first_id)).await.success);
    // The same id is a replay of the same settlement: the first result, nothing burned.
    assert!(settle(&local, &with_id(request.clone(), &first_id)).await.success);
    // Any other settlement of the spent token is refused with BCK.X402.0059.
    let facilitator = builder(&local);
    assert_eq!(refused_code(facilitator.settle(&with_id(request.clone(), &second_id)).await), CODE_SPENT);
    assert_eq!(refused_code(facilitator.settle(&request).await), CODE_SPENT);
    // And verify calls it invalid from now on.
    assert_eq!(invalid_reason(&local, &request).await, "invalid_token");
    assert_eq!(local.total_burned(), 1);
}

#[actix_web::test]
async fn settling_forged_or_misbound_tokens_is_refused() {
    let local = LocalFacilitator::start().expect("starts");
    let facilitator = builder(&local);
    let token = local.mint_token(MintOptions::new());
    let mut payload = AccessToken::new(token.as_str()).decode().expect("decodes");
    payload.payload.signature = format!("0x{}", "ab".repeat(32));
    let forged = payload.to_token();
    assert_eq!(refused_code(facilitator.settle(&request_for(&local, forged.as_str())).await), CODE_FORGED);
    assert_eq!(refused_code(facilitator.settle(&request_for(&local, "garbage")).await), CODE_FORGED);

    // A token for another plan than the envelope's is an envelope mismatch.
    let other = local.add_plan(PlanSpec::crypto("Other"));
    local.set_balance(&other.plan_id, local.subscriber_address(), 10);
    let token = local.mint_token(MintOptions::new().plan(&other.plan_id));
    assert_eq!(refused_code(facilitator.settle(&request_for(&local, &token)).await), CODE_FORGED);

    // A single-use token bound to another resource.
    let bound = local.mint_token(MintOptions::new().single_use().resource("/other"));
    assert_eq!(invalid_reason(&local, &request_for(&local, &bound)).await, "invalid_token");
    assert_eq!(refused_code(facilitator.settle(&request_for(&local, &bound)).await), CODE_WRONG_RESOURCE);
    // A full URL binding matches the advertised path.
    let bound = local.mint_token(MintOptions::new().single_use().resource("https://seller.example/ask"));
    assert!(settle(&local, &request_for(&local, &bound)).await.success);
    assert_eq!(local.total_burned(), 1);
}

#[actix_web::test]
async fn single_use_tokens_minted_over_http_are_bound_to_their_resource() {
    let local = LocalFacilitator::start().expect("starts");
    let subscriber = client(&local, local.subscriber_api_key());
    let envelope = default_envelope(&local);
    let minted = subscriber
        .mint(&PermissionsRequest {
            accepted: envelope.accepts[0].clone(),
            delegation_config: None,
            token_version: Some(3),
            resource: Some(ResourceBinding { url: "/ask".into() }),
        })
        .await
        .expect("mints");
    let payload = AccessToken::new(minted.access_token.as_str()).decode().expect("decodes");
    assert!(payload.is_single_use());
    assert_eq!(payload.resource.as_ref().map(|r| r.url.as_str()), Some("/ask"));
    let elsewhere =
        request(&self::envelope(local.plan_id(), local.agent_id(), "/other"), &minted.access_token);
    assert_eq!(refused_code(builder(&local).settle(&elsewhere).await), CODE_WRONG_RESOURCE);
    assert!(settle(&local, &request(&envelope, &minted.access_token)).await.success);
    assert_eq!(
        refused_code(builder(&local).settle(&request(&envelope, &minted.access_token)).await),
        CODE_SPENT
    );

    // Minting for an unknown plan or a foreign agent is refused.
    let mut unknown = envelope.accepts[0].clone();
    unknown.plan_id = "1".into();
    let request = PermissionsRequest {
        accepted: unknown,
        delegation_config: None,
        token_version: None,
        resource: None,
    };
    assert!(
        matches!(subscriber.mint(&request).await, Err(e) if !e.is_unavailable() && e.status() == Some(404))
    );
    let foreign = self::envelope(local.plan_id(), "999", "/ask").accepts.remove(0);
    let request = PermissionsRequest {
        accepted: foreign,
        delegation_config: None,
        token_version: None,
        resource: None,
    };
    assert!(
        matches!(subscriber.mint(&request).await, Err(e) if !e.is_unavailable() && e.status() == Some(400))
    );
    assert_eq!(local.calls(Endpoint::Permissions), 3);
}

#[actix_web::test]
async fn concurrent_settles_never_overspend() {
    const N: usize = 64;
    const B: u64 = 20;
    let local = LocalFacilitator::start().expect("starts");
    local.set_balance(local.plan_id(), local.subscriber_address(), B);
    let facilitator = builder(&local);
    let token = local.mint_token(MintOptions::new());
    let base = request_for(&local, &token);
    // Half of the settlements carry their own verify's request id, half carry none.
    let mut requests = Vec::with_capacity(N);
    for i in 0..N {
        if i % 2 == 0 {
            let verified = facilitator.verify(&base).await.expect("verifies");
            assert!(verified.is_valid);
            requests.push(with_id(base.clone(), verified.request_id().expect("id")));
        } else {
            requests.push(base.clone());
        }
    }
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let facilitator = facilitator.clone();
            actix_web::rt::spawn(async move { facilitator.settle(&request).await })
        })
        .collect();
    let mut successes = 0u64;
    let mut failures = 0u64;
    for task in tasks {
        let receipt = task.await.expect("the task ran").expect("settle answers 200");
        if receipt.success {
            successes += 1;
            assert_eq!(receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), 1);
        } else {
            failures += 1;
            assert_eq!(receipt.error_reason.as_deref(), Some("insufficient_balance"));
            assert_eq!(receipt.transaction, "");
        }
    }
    assert_eq!(successes, B.min(N as u64));
    assert_eq!(failures, N as u64 - successes);
    assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), 0);
    assert_eq!(local.total_burned(), B);
    assert_eq!(local.calls(Endpoint::Settle), N as u64);
}

async fn post_raw(local: &LocalFacilitator, path: &str, body: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", local.backend_url()))
        .header("authorization", format!("Bearer {}", local.builder_api_key()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("answers");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("a body");
    (status, serde_json::from_slice(&bytes).expect("a JSON body"))
}

#[actix_web::test]
async fn malformed_bodies_get_clear_errors() {
    let local = LocalFacilitator::start().expect("starts");
    for path in ["/api/v1/x402/verify", "/api/v1/x402/settle", "/api/v1/x402/permissions"] {
        for body in
            ["", "{not json", "[]", r#"{"paymentRequired":5,"x402AccessToken":"x"}"#, "null", "\u{0}\u{1}"]
        {
            let (status, json) = post_raw(&local, path, body).await;
            assert_eq!(status, 400, "{path} {body:?}: {json}");
            assert_eq!(json["code"], "BCK.COMMON.0400");
            assert_eq!(json["httpStatus"], 400);
            let message = json["message"].as_str().expect("a message");
            assert!(message.contains("not the expected JSON"), "{message}");
            assert!(json.get("hint").is_some() && json.get("details").is_some());
        }
    }
    let (status, json) =
        post_raw(&local, "/api/v1/x402/verify", r#"{"paymentRequired":{"accepts":[]}}"#).await;
    assert_eq!(status, 400);
    assert!(json["message"].as_str().is_some_and(|m| m.contains("x402AccessToken")), "{json}");
    let token = local.mint_token(MintOptions::new());
    let mut bad_amount = request_for(&local, &token);
    bad_amount.max_amount = Some(serde_json::from_str("\"lots\"").expect("an amount"));
    match builder(&local).verify(&bad_amount).await {
        Err(error) if !error.is_unavailable() && error.status() == Some(400) => {
            assert!(error.message().is_some_and(|m| m.contains("maxAmount")), "{error}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    let (status, json) = post_raw(&local, "/api/v1/nowhere", "{}").await;
    assert_eq!((status, json["code"].as_str()), (404, Some("BCK.COMMON.0404")));
    // Still serving, nothing burned.
    assert!(verify(&local, &request_for(&local, &token)).await.is_valid);
    assert_eq!(local.total_burned(), 0);
}

#[actix_web::test]
async fn the_python_sdk_body_form_is_accepted() {
    // payments-py sends null for unset optional fields and may omit extra.version.
    let local = LocalFacilitator::start().expect("starts");
    let token = local.mint_token(MintOptions::new());
    let body = serde_json::json!({
        "paymentRequired": {
            "x402Version": 2, "error": null,
            "resource": {"url": "/ask", "description": null, "mimeType": null},
            "accepts": [{"scheme": "nvm:erc4337", "network": NETWORK, "planId": local.plan_id(),
                         "extra": {"version": null, "agentId": local.agent_id(), "httpVerb": null}}],
            "extensions": {}
        },
        "x402AccessToken": token,
        "maxAmount": "2",
    });
    let (status, json) = post_raw(&local, "/api/v1/x402/verify", &body.to_string()).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["isValid"], true);
    assert!(json["urlMatching"].is_string());
    assert!(json["agentRequest"]["verbMatching"].is_string());
    let (status, json) = post_raw(&local, "/api/v1/x402/settle", &body.to_string()).await;
    assert_eq!(
        (status, &json["success"], &json["creditsRedeemed"]),
        (200, &serde_json::json!(true), &serde_json::json!("2"))
    );
    let mint = serde_json::json!({"accepted": {"scheme": "nvm:erc4337", "network": NETWORK,
        "planId": local.plan_id(), "extra": {}}});
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/x402/permissions", local.backend_url()))
        .header("authorization", format!("Bearer {}", local.subscriber_api_key()))
        .body(mint.to_string())
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status().as_u16(), 200);
}

#[actix_web::test]
async fn unknown_keys_are_unauthorized() {
    let local = LocalFacilitator::start().expect("starts");
    let other = LocalFacilitator::start().expect("starts");
    let token = local.mint_token(MintOptions::new());
    let request = request_for(&local, &token);
    // A well-formed key this facilitator did not issue.
    let stranger = client(&local, other.builder_api_key());
    for result in [stranger.verify(&request).await.map(|_| ()), stranger.settle(&request).await.map(|_| ())] {
        match result {
            Err(error) if error.is_unavailable() && error.status() == Some(401) => {
                assert!(error.message().is_some_and(|m| m.contains("unknown API key")), "{error}");
            }
            other => panic!("expected Unauthorized, got {other:?}"),
        }
    }
    // A key whose signature was tampered with.
    let key = local.builder_api_key();
    let at = key.rfind('.').expect("a JWT") + 1;
    let flipped = if key[at..].starts_with('A') { "B" } else { "A" };
    let tampered = client(&local, &format!("{}{flipped}{}", &key[..at], &key[at + 1..]));
    assert!(matches!(
        tampered.verify(&request).await,
        Err(e) if e.is_unavailable() && e.status() == Some(401) && e.message().is_some()
    ));
    // No key at all.
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/x402/verify", local.backend_url()))
        .body("{}")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status().as_u16(), 401);
    let json: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON");
    assert_eq!(json["code"], "BCK.AUTH.0001");
    assert_eq!(local.total_burned(), 0);
    assert_eq!(local.calls(Endpoint::Verify), 3);
}

#[actix_web::test]
async fn plan_metadata_reports_is_crypto() {
    let local = LocalFacilitator::start().expect("starts");
    let facilitator = builder(&local);
    let crypto = facilitator.plan_metadata(local.plan_id()).await.expect("metadata");
    assert_eq!(crypto["registry"]["price"]["isCrypto"], true);
    assert_eq!(crypto["id"], local.plan_id());
    assert!(crypto["name"].is_string());
    assert!(crypto["metadata"]["plan"].get("fiatPaymentProvider").is_none());

    let card = local.add_plan(PlanSpec::fiat("Card", "braintree"));
    let fiat = facilitator.plan_metadata(&card.plan_id).await.expect("metadata");
    assert_eq!(fiat["registry"]["price"]["isCrypto"], false);
    assert_eq!(fiat["metadata"]["plan"]["fiatPaymentProvider"], "braintree");
    // Tokens of a fiat plan default to its scheme and provider.
    let token = local.mint_token(MintOptions::new().plan(&card.plan_id));
    let payload = AccessToken::new(token).decode().expect("decodes");
    assert_eq!(payload.accepted.scheme, "nvm:card-delegation");
    assert_eq!(payload.accepted.network, "braintree");

    assert!(matches!(
        facilitator.plan_metadata("404").await,
        Err(e) if !e.is_unavailable() && e.status() == Some(404)
    ));
    assert_eq!(local.calls(Endpoint::Plans), 3);
}

#[test]
fn works_from_plain_synchronous_code() {
    let local = LocalFacilitator::start().expect("starts");
    let addr = local.backend_url().trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a timeout");
    write!(
        stream,
        "GET /api/v1/protocol/plans/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        local.plan_id()
    )
    .expect("writes");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("reads");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""isCrypto":true"#), "{answer}");
    local.stop();
    assert!(std::net::TcpStream::connect(&addr).is_err(), "stopped");
}

/// Kills the child process when dropped, whatever happens in the test.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[actix_web::test]
async fn the_binary_prints_its_connection_details_first() {
    let child = Command::new(env!("CARGO_BIN_EXE_nvm-local-facilitator"))
        .args(["--port", "0", "--credits", "7"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary runs");
    let mut child = Killed(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).expect("a first line within 60 s");
    let info: LocalInfo = serde_json::from_str(line.trim()).expect("the first line is the JSON object");
    let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line.trim())
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert!(info.backend_url.starts_with("http://127.0.0.1:"), "{}", info.backend_url);
    assert!(info.builder_api_key.starts_with("local:") && info.subscriber_api_key.starts_with("local:"));

    let key: ApiKey = info.builder_api_key.parse().expect("a key");
    let facilitator = Facilitator::new(&info.backend_url, &key, Duration::from_secs(10)).expect("a client");
    let metadata = facilitator.plan_metadata(&info.plan_id).await.expect("it serves");
    assert_eq!(metadata["registry"]["price"]["isCrypto"], true);
    assert_eq!(metadata["agentIds"][0], info.agent_id.as_str());
    drop(child);
}

#[test]
fn the_binary_refuses_bad_flags_with_usage() {
    let bin = env!("CARGO_BIN_EXE_nvm-local-facilitator");
    for args in
        [&["--bogus"][..], &["--port"], &["--port", "seventy"], &["--credits", "-3"], &["--port", "99999"]]
    {
        let output = Command::new(bin).args(args).stdin(Stdio::null()).output().expect("runs");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("Usage: nvm-local-facilitator"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(output.stdout.is_empty());
    }
    let output = Command::new(bin).arg("--help").stdin(Stdio::null()).output().expect("runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--credits") && help.contains("--latency-ms"), "{help}");
}

#[actix_web::test]
async fn the_binary_delays_every_answer_by_its_latency() {
    let child = Command::new(env!("CARGO_BIN_EXE_nvm-local-facilitator"))
        .args(["--latency-ms", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary runs");
    let mut child = Killed(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).expect("a first line within 60 s");
    let info: LocalInfo = serde_json::from_str(line.trim()).expect("the first line is unchanged");
    let key: ApiKey = info.builder_api_key.parse().expect("a key");
    let facilitator = Facilitator::new(&info.backend_url, &key, Duration::from_secs(10)).expect("a client");
    for _ in 0..2 {
        let started = std::time::Instant::now();
        facilitator.plan_metadata(&info.plan_id).await.expect("it serves");
        assert!(started.elapsed() >= Duration::from_millis(60), "{:?}", started.elapsed());
    }
    drop(child);
}

#[test]
fn the_handle_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<LocalFacilitator>();
    shareable::<LocalInfo>();
    let local = std::sync::Arc::new(LocalFacilitator::start().expect("starts"));
    local.set_balance(local.plan_id(), local.subscriber_address(), 8);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let local = std::sync::Arc::clone(&local);
            std::thread::spawn(move || local.mint_token(MintOptions::new().single_use()))
        })
        .collect();
    let tokens: std::collections::HashSet<String> =
        threads.into_iter().map(|t| t.join().expect("the thread ran")).collect();
    assert_eq!(tokens.len(), 4, "single-use tokens are all distinct");
}

/// Runs `nvm-pending` with `args` on the journal at `path` (given by
/// `NVM_PENDING_SETTLEMENTS`): exit code, stdout, stderr.
fn nvm_pending(path: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_nvm-pending"))
        .args(args)
        .env("NVM_PENDING_SETTLEMENTS", path)
        .output()
        .expect("nvm-pending runs");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8");
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

#[test]
fn the_operator_command_lists_shows_and_resolves_a_journal_once() {
    let path = std::env::temp_dir().join(format!("nvm-pending-cli-{}.jsonl", std::process::id()));
    let record = |event: &str, id: &str| {
        format!(
            r#"{{"event":"{event}","id":"{id}","agentRequestId":"req-{id}","payer":"0xabc","planId":"7","method":"POST","path":"/ask","amount":"3","recordedAt":1764750000,"tokenHash":"0a1b2c3d4e5f"}}"#
        )
    };
    let lines = [record("pending", "p-1"), record("settling", "s-1"), record("deferred", "d-1")];
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    let (code, out, err) = nvm_pending(&path, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("p-1\tunknown\t3 credit(s)") && out.contains("req-p-1"), "{out}");
    assert!(!out.contains("s-1") && !out.contains("d-1"), "in flight and deferred with --all only: {out}");
    assert!(err.contains("1 record(s)"), "{err}");
    let (_, out, _) = nvm_pending(&path, &["list", "--all"]);
    assert!(out.contains("s-1\tsettling") && out.contains("d-1\tdeferred"), "{out}");

    let (code, out, err) = nvm_pending(&path, &["close", "p-1", "burned"]);
    assert_eq!((code, out.trim()), (0, "p-1: resolved as burned"), "{err}");
    let (code, _, err) = nvm_pending(&path, &["close", "p-1", "not-burned"]);
    assert_eq!(code, 1, "resolved once");
    assert!(err.contains("no open record p-1"), "{err}");
    let (code, out, _) = nvm_pending(&path, &["--json", "show", "p-1"]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(out.trim()).expect("a JSON line");
    assert_eq!((shown["status"].as_str(), shown["amount"].as_str()), (Some("resolved: burned"), Some("3")));
    let (_, out, _) = nvm_pending(&path, &["--json", "list"]);
    assert!(out.trim().is_empty(), "{out}");

    let (code, _, err) = nvm_pending(&path, &["close", "s-1", "maybe"]);
    assert_eq!(code, 2);
    assert!(err.contains("not-burned"), "the error says what to write: {err}");
    let (code, _, err) = nvm_pending(std::path::Path::new("/nonexistent/journal.jsonl"), &["list"]);
    assert_eq!(code, 1);
    assert!(err.contains("no such journal file"), "{err}");
    std::fs::remove_file(&path).unwrap();
}
