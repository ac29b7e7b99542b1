//! Bad input, end to end and decoder by decoder.
//!
//! - Over real HTTP, in both forms (`#[paid]` and `PaymentMiddleware`): tokens that are
//!   empty, huge, not base64, base64 of something else, JSON of the wrong shape, with
//!   control characters or non-ASCII bytes, duplicated, minted for another plan or
//!   agent, expired, altered or from another facilitator. Each gets a 402 with a reason
//!   that says what is wrong (or, for bytes HTTP itself forbids, the HTTP layer's 400),
//!   never a panic, never the handler, and exactly the facilitator calls it deserves:
//!   none for what the seller can judge alone, one verify for what only the facilitator
//!   can judge, never a settle. A generated property sends each kind of token several
//!   times: the verdict is the same every time (the seller's memory of well-formed
//!   tokens only skips work), a single-use token is charged once.
//! - Property tests (proptest, 256 cases each) of every decoder of the public API
//!   (`codec::{decode_base64, decode_json_header}`, `PaymentRequired::from_header`,
//!   `SettleResponse::from_header`, `AccessToken::decode`, `ApiKey` parsing): no panic
//!   on arbitrary strings and bytes, and exact round trips of generated envelopes,
//!   receipts, tokens and keys (256-bit decimal ids, arbitrary text), in both base64
//!   alphabets, padded or not.

use std::io::{Read, Write};
use std::time::Duration;

use actix_web::{HttpResponse, post, web};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use nvm_runtime::__private::backend::ApiKey;
use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions, PlanSpec};
use nvm_runtime::__private::wire::AccessTokenExt as _;
use nvm_runtime::__private::wire::codec::{self, MAX_HEADER_LEN, Malformed};
use nvm_runtime::__private::wire::{
    Authorization, CODE_SPENT, PaymentPayload, ResourceBinding, SignedPayload,
};
use nvm_runtime::local::LocalFacilitator;
use nvm_runtime::wire::{Accepted, PaymentRequired};
use nvm_runtime::wire::{AccessToken, Amount, SettleResponse};
use nvm_runtime::{Environment, PaymentMiddleware, RouteConfig, paid};
use nvm_tests::{Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, Runs, TestServer, envelope, http, payments_for, serve};
use proptest::prelude::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------
// Bad input over HTTP
// ---------------------------------------------------------------------------------

#[post("/paid")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1)]
async fn paid_content(runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    HttpResponse::Ok().body("paid content")
}

async fn middleware_content(runs: web::Data<Runs>) -> HttpResponse {
    runs.hit();
    HttpResponse::Ok().body("paid content")
}

const PATHS: [&str; 2] = ["/paid", "/mw/content"];

fn start() -> (LocalFacilitator, TestServer) {
    let local = LocalFacilitator::start().expect("local facilitator");
    let payments = payments_for(&local).timeout(Duration::from_secs(2)).build().expect("payments");
    let table = payments.clone();
    let server = serve(Some(payments), move |cfg: &mut web::ServiceConfig| {
        let middleware = PaymentMiddleware::new(table.clone())
            .route("POST /mw/content", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(1));
        cfg.service(paid_content).service(
            web::scope("/mw").wrap(middleware).route("/content", web::post().to(middleware_content)),
        );
    });
    (local, server)
}

/// A bad token and what it must get.
struct Bad {
    name: &'static str,
    /// The `payment-signature` values (several for a duplicated header).
    values: Vec<Vec<u8>>,
    /// The start of the 402's message.
    message: String,
    /// Verify calls it deserves: 0 when the seller can judge alone.
    verify: u64,
}

fn bad(name: &'static str, value: impl Into<Vec<u8>>, message: impl Into<String>, verify: u64) -> Bad {
    Bad { name, values: vec![value.into()], message: message.into(), verify }
}

fn b64(json: &Value) -> String {
    STANDARD.encode(json.to_string())
}

/// Re-encodes a token's payload after `change`, keeping the (now wrong) signature.
fn altered(token: &str, change: impl FnOnce(&mut PaymentPayload)) -> String {
    let mut payload = AccessToken::new(token).decode().expect("a minted token decodes");
    change(&mut payload);
    payload.to_token().as_str().to_owned()
}

fn bad_tokens(local: &LocalFacilitator) -> Vec<Bad> {
    let valid = local.mint_token(MintOptions::new());
    let other_plan = local.add_plan(PlanSpec::crypto("Other"));
    let (_, other_holder) = local.add_subscriber(&other_plan.plan_id, 50);
    let other_facilitator = LocalFacilitator::start().expect("another facilitator");
    let huge_json = b64(&json!({ "x402Version": 2, "padding": "x".repeat(MAX_HEADER_LEN) }));
    let required = "payment required: send an x402 access token in the `payment-signature` header";
    vec![
        bad("empty", "", required, 0),
        bad("blank", "   ", required, 0),
        bad("huge", "A".repeat(20 * 1024), "invalid_token: the token is 20480 bytes long; at most 16384", 0),
        bad(
            "huge base64 JSON",
            huge_json.clone(),
            format!("invalid_token: the token is {} bytes long", huge_json.len()),
            0,
        ),
        bad(
            "just over the limit",
            "A".repeat(MAX_HEADER_LEN + 1),
            "invalid_token: the token is 16385 bytes",
            0,
        ),
        bad(
            "not base64",
            "%%%not-base64%%%",
            "invalid_token: the token is not base64 JSON (the value is not base64)",
            0,
        ),
        bad(
            "base64 of text",
            STANDARD.encode("hello world"),
            "invalid_token: the token is not base64 JSON (the decoded",
            0,
        ),
        bad(
            "base64 of bytes",
            STANDARD.encode([0xff, 0x00, 0xfe, 0x01]),
            "invalid_token: the token is not base64 JSON",
            0,
        ),
        bad(
            "a JSON array",
            b64(&json!([1, 2])),
            "invalid_token: the token is not an x402 payment payload",
            0,
        ),
        bad(
            "a JSON string",
            b64(&json!("token")),
            "invalid_token: the token is not an x402 payment payload",
            0,
        ),
        bad("a JSON number", b64(&json!(12)), "invalid_token: the token is not an x402 payment payload", 0),
        bad("tab inside", "ab\tcd", "invalid_token: the token is not base64 JSON", 0),
        bad(
            "non-ASCII bytes",
            "t\u{e9}st".as_bytes(),
            "invalid_token: the token contains non-ASCII or control characters",
            0,
        ),
        bad(
            "non-ASCII in base64",
            [b"eyJ4".as_slice(), &[0xc3, 0xa9]].concat(),
            "invalid_token: the token contains non-ASCII",
            0,
        ),
        Bad {
            name: "duplicated header",
            values: vec![valid.clone().into_bytes(), valid.clone().into_bytes()],
            message: "invalid_token: more than one `payment-signature` header; send exactly one".into(),
            verify: 0,
        },
        // Only the facilitator can judge these: one verify, never a settle.
        bad("an object of the wrong shape", b64(&json!({"foo": 1})), "invalid_token", 1),
        bad(
            "a payload with the wrong types",
            b64(&json!({"x402Version": "two", "accepted": 1})),
            "invalid_token",
            1,
        ),
        bad(
            "minted for another plan",
            local.mint_token(MintOptions::new().plan(&other_plan.plan_id)),
            "invalid_plan",
            1,
        ),
        bad(
            "another plan, holder of it",
            local.mint_token(MintOptions::new().plan(&other_plan.plan_id).subscriber(other_holder)),
            "invalid_plan",
            1,
        ),
        bad(
            "minted for another agent",
            local.mint_token(MintOptions::new().agent("12345")),
            "invalid_agent",
            1,
        ),
        bad("expired", local.mint_token(MintOptions::new().valid_before(1)), "expired_token", 1),
        bad(
            "altered payer",
            altered(&valid, |p| {
                p.payload.authorization.from = "0x0000000000000000000000000000000000000bad".into()
            }),
            "invalid_token",
            1,
        ),
        bad("from another facilitator", other_facilitator.mint_token(MintOptions::new()), "invalid_token", 1),
        bad(
            "bound to another resource",
            local.mint_token(MintOptions::new().single_use().resource("/elsewhere")),
            "invalid_token",
            1,
        ),
    ]
}

#[actix_web::test]
async fn bad_tokens_get_402_with_a_reason_and_the_right_facilitator_calls() {
    let (local, server) = start();
    let cases = bad_tokens(&local);
    let mut tried = 0;
    for path in PATHS {
        for case in &cases {
            let label = format!("{} [{path}]", case.name);
            let before = Calls::of(&local);
            let mut request = http().post(server.at(path));
            for value in &case.values {
                let value = reqwest::header::HeaderValue::from_bytes(value).expect("a sendable header value");
                request = request.header("payment-signature", value);
            }
            let response = request.send().await.expect("an answer");
            assert_eq!(response.status(), 402, "{label}");
            let envelope = envelope(&response).expect("the envelope comes with every 402");
            assert_eq!(envelope.accepts.first().map(|a| a.plan_id.as_str()), Some(DEMO_PLAN_ID), "{label}");
            let body: Value = response.json().await.expect("a JSON body");
            let message = body["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with(&case.message),
                "{label}: {message:?} does not start with {:?}",
                case.message
            );
            let after = Calls::of(&local);
            assert_eq!(after.verify - before.verify, case.verify, "{label}: verify calls");
            assert_eq!(after.settle, 0, "{label}: never a settle");
            tried += 1;
        }
    }
    assert_eq!(server.runs.count(), 0, "no handler ran");
    assert_eq!(local.total_burned(), 0);
    // The plan's scheme is fetched once per configuration and cached.
    assert!(Calls::of(&local).plans <= 1, "{:?}", Calls::of(&local));
    eprintln!("bad tokens over HTTP: {tried} requests");
}

/// Bytes that HTTP forbids in a header value (control characters, DEL) cannot be sent
/// by a well-behaved client; sent raw, the HTTP layer refuses them (400) before any
/// payment code runs. Either way: no panic, no handler, no facilitator call, and the
/// server keeps serving.
#[actix_web::test]
async fn control_characters_sent_raw_never_reach_the_handler() {
    let (local, server) = start();
    let addr = server.url.trim_start_matches("http://").to_owned();
    let values: [&[u8]; 5] = [b"ab\x01cd", b"ab\x00cd", b"ab\x7fcd", b"eyJ\x1b[31m", b"tok\x0bx"];
    let mut statuses = Vec::new();
    for path in PATHS {
        for value in values {
            let addr = addr.clone();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\npayment-signature: "
            );
            let status = tokio::task::spawn_blocking(move || {
                let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
                stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
                stream.write_all(&[head.as_bytes(), value, b"\r\n\r\n"].concat()).expect("write");
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                String::from_utf8_lossy(&answer).split(' ').nth(1).unwrap_or("none").to_owned()
            })
            .await
            .expect("raw request");
            assert!(status == "400" || status == "402", "{path} {value:?}: status {status}");
            statuses.push(status);
        }
    }
    assert_eq!(server.runs.count(), 0);
    assert_eq!((Calls::of(&local).verify, Calls::of(&local).settle), (0, 0));
    let response = http().post(server.at("/paid")).send().await.expect("still serving");
    assert_eq!(response.status(), 402);
    eprintln!("raw control characters: statuses {statuses:?}");
}

/// A token as a generated request sends it, for the property below.
#[derive(Debug, Clone)]
enum Sent {
    /// A valid reusable token.
    Reusable,
    /// A valid single-use token.
    SingleUse,
    /// A valid reusable token with blanks around it.
    Padded(String, String),
    /// Text that is not base64.
    NotBase64(String),
    /// Base64 of text.
    Base64Text(String),
    /// Base64 of a JSON array (JSON, but not a payment payload).
    Base64Array(Vec<u8>),
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        Just(Sent::Reusable),
        Just(Sent::SingleUse),
        ("[ \t]{0,3}", "[ \t]{0,3}").prop_map(|(before, after)| Sent::Padded(before, after)),
        "[%!*~]{1,40}".prop_map(Sent::NotBase64),
        "[a-z ]{1,40}".prop_map(Sent::Base64Text),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Sent::Base64Array),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// A token gets the same verdict every time it is sent, in both forms: the seller
    /// remembers the tokens it found well-formed (and whether they may be single-use)
    /// only to skip work. A reusable token is served and charged each time; a single-use
    /// one once, then refused as spent; a malformed one refused with the same reason each
    /// time, with no facilitator call.
    #[test]
    fn a_tokens_verdict_is_the_same_every_time(sends in prop::collection::vec((sent(), 0..PATHS.len(), 2usize..4), 1..5)) {
        actix_web::rt::System::new().block_on(async move {
            let (local, server) = start();
            let (mut burned, mut runs) = (0, 0);
            for (sent, path, times) in sends {
                let path = PATHS[path];
                let value = match &sent {
                    Sent::Reusable => local.mint_token(MintOptions::new()),
                    Sent::SingleUse => local.mint_token(MintOptions::new().single_use()),
                    Sent::Padded(before, after) => format!("{before}{}{after}", local.mint_token(MintOptions::new())),
                    Sent::NotBase64(text) => text.clone(),
                    Sent::Base64Text(text) => STANDARD.encode(text),
                    Sent::Base64Array(bytes) => b64(&json!(bytes)),
                };
                let mut first_refusal = None;
                for attempt in 0..times {
                    let label = format!("{sent:?} [{path}] attempt {attempt}");
                    let before = Calls::of(&local);
                    let response = http()
                        .post(server.at(path))
                        .header("payment-signature", value.as_str())
                        .send()
                        .await
                        .expect("an answer");
                    let status = response.status();
                    let body = response.text().await.expect("a body");
                    let after = Calls::of(&local);
                    match &sent {
                        Sent::Reusable | Sent::Padded(..) => {
                            assert_eq!(status, 200, "{label}: {body}");
                            (burned, runs) = (burned + 1, runs + 1);
                        }
                        Sent::SingleUse if attempt == 0 => {
                            assert_eq!(status, 200, "{label}: {body}");
                            (burned, runs) = (burned + 1, runs + 1);
                        }
                        Sent::SingleUse => {
                            assert_eq!(status, 402, "{label}: {body}");
                            assert!(body.contains(CODE_SPENT), "{label}: {body}");
                            // Refused by the seller's own record of it, before any call.
                            assert_eq!((after.verify, after.settle), (before.verify, before.settle), "{label}");
                        }
                        _ => {
                            assert_eq!(status, 402, "{label}: {body}");
                            let first = first_refusal.get_or_insert_with(|| body.clone());
                            assert_eq!(&body, first, "{label}: the same reason each time");
                            assert_eq!((after.verify, after.settle), (before.verify, before.settle), "{label}");
                        }
                    }
                }
            }
            assert_eq!(local.total_burned(), burned);
            assert_eq!(server.runs.count(), runs);
        });
    }
}

// ---------------------------------------------------------------------------------
// Properties of the decoders
// ---------------------------------------------------------------------------------

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// A decimal id of up to 78 digits: every 256-bit number fits.
fn decimal_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_owned()),
        "[1-9][0-9]{0,77}",
        Just("115792089237316195423570985008687907853269984665640564039457584007913129639935".to_owned()),
    ]
}

/// Arbitrary text: any Unicode (control characters, quotes, NUL, emoji) or plain.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[ -~]{0,40}", Just(String::new())]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text().prop_map(Value::from),
        decimal_id().prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z0-9_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object whose keys start with `x_`, so they never collide with known fields.
fn extension_map() -> impl Strategy<Value = serde_json::Map<String, Value>> {
    prop::collection::btree_map("x_[a-zA-Z0-9]{0,8}", json_value(), 0..4)
        .prop_map(|m| m.into_iter().collect())
}

fn amount() -> impl Strategy<Value = Amount> {
    decimal_id()
        .prop_map(|d| serde_json::from_value(Value::String(d)).expect("a decimal string is an amount"))
}

fn accepted() -> impl Strategy<Value = Accepted> {
    (text(), text(), decimal_id(), text(), prop::option::of(decimal_id()), prop::option::of(text())).prop_map(
        |(scheme, network, plan_id, version, agent_id, http_verb)| {
            // Every field set, `extra` included (which the type keeps to itself): from JSON.
            let extra = json!({"version": version, "agentId": agent_id, "httpVerb": http_verb});
            let accepted = json!({"scheme": scheme, "network": network, "planId": plan_id, "extra": extra});
            serde_json::from_value::<Accepted>(accepted).expect("an accepted entry")
        },
    )
}

fn envelope_value() -> impl Strategy<Value = PaymentRequired> {
    (
        any::<u32>(),
        prop::option::of(text()),
        (text(), prop::option::of(text()), prop::option::of(text())),
        prop::collection::vec(accepted(), 0..3),
        extension_map(),
    )
        .prop_map(|(x402_version, error, (url, description, mime_type), accepts, extensions)| {
            // Every field set, `x402Version` and `extensions` included: from JSON.
            let resource = json!({"url": url, "description": description, "mimeType": mime_type});
            let envelope = json!({"x402Version": x402_version, "error": error, "resource": resource,
                "accepts": accepts, "extensions": extensions});
            serde_json::from_value::<PaymentRequired>(envelope).expect("an envelope")
        })
}

fn receipt_value() -> impl Strategy<Value = SettleResponse> {
    (
        (any::<bool>(), prop::option::of(text()), prop::option::of(text()), text()),
        (prop::option::of(text()), prop::option::of(amount()), prop::option::of(amount())),
        (prop::option::of(text()), prop::option::of(text()), extension_map()),
    )
        .prop_map(
            |(
                (success, error_reason, payer, transaction),
                (network, credits_redeemed, remaining_balance),
                (order_tx, billing_model, other),
            )| {
                // Field by field: the type is `#[non_exhaustive]`, every field is covered; the
                // fields it does not name (`x_…`) through its JSON form.
                let mut receipt = SettleResponse::default();
                receipt.success = success;
                receipt.error_reason = error_reason;
                receipt.payer = payer;
                receipt.transaction = transaction;
                receipt.network = network;
                receipt.credits_redeemed = credits_redeemed;
                receipt.remaining_balance = remaining_balance;
                receipt.order_tx = order_tx;
                receipt.billing_model = billing_model;
                let mut json = serde_json::to_value(&receipt).expect("a receipt is JSON");
                json.as_object_mut().expect("an object").extend(other);
                serde_json::from_value(json).expect("a receipt")
            },
        )
}

fn payload_value() -> impl Strategy<Value = PaymentPayload> {
    (
        any::<u32>(),
        accepted(),
        (text(), text(), text(), prop::collection::vec(json_value(), 0..3)),
        (prop::option::of(text()), prop::option::of(any::<u64>()), prop::option::of(text())),
        extension_map(),
    )
        .prop_map(
            |(
                x402_version,
                accepted,
                (signature, from, provider, session_keys),
                (nonce, valid_before, bound),
                ext,
            )| {
                PaymentPayload {
                    x402_version,
                    accepted,
                    payload: SignedPayload {
                        signature,
                        authorization: Authorization {
                            from,
                            session_keys_provider: provider,
                            session_keys,
                            nonce,
                            valid_before,
                        },
                    },
                    resource: bound.map(|url| ResourceBinding { url }),
                    extensions: ext,
                }
            },
        )
}

/// The four ways a base64 header may come: standard or URL-safe, padded or not.
fn alphabets(bytes: &[u8]) -> [String; 4] {
    [
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ]
}

/// Variations of a valid value: cut short, one character replaced, one inserted.
fn mutations(valid: &str, at: usize, with: char) -> Vec<String> {
    let chars: Vec<char> = valid.chars().collect();
    let at = if chars.is_empty() { 0 } else { at % chars.len() };
    let mut replaced = chars.clone();
    let mut inserted = chars.clone();
    if !replaced.is_empty() {
        replaced[at] = with;
    }
    inserted.insert(at, with);
    vec![
        chars[..at].iter().collect(),
        replaced.into_iter().collect(),
        inserted.into_iter().collect(),
        format!(" {valid}\t"),
        valid.repeat(2),
    ]
}

/// Every decoder of the public API on one input; none may panic.
fn decode_everything(input: &str) {
    let _ = codec::decode_base64(input);
    let _ = codec::decode_json_header::<Value>(input);
    let _ = PaymentRequired::from_header(input);
    let _ = SettleResponse::from_header(input);
    let _ = AccessToken::new(input).decode();
    let _ = input.parse::<ApiKey>();
    let _ = input.parse::<Environment>();
    let _ = serde_json::from_str::<nvm_runtime::wire::VerifyResponse>(input);
    let _ = serde_json::from_str::<SettleResponse>(input);
    let _ = serde_json::from_str::<nvm_runtime::__private::wire::BackendError>(input);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn no_decoder_panics_on_arbitrary_strings(input in any::<String>()) {
        decode_everything(&input);
    }

    #[test]
    fn no_decoder_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&String::from_utf8_lossy(&bytes));
        for encoded in alphabets(&bytes) {
            decode_everything(&encoded);
            // Decoding gives the bytes back in every alphabet, padded or not.
            prop_assert_eq!(codec::decode_base64(&encoded).ok(), (!bytes.is_empty()).then(|| bytes.clone()));
        }
    }

    #[test]
    fn no_decoder_panics_on_arbitrary_json(value in json_value()) {
        let json = value.to_string();
        decode_everything(&json);
        for encoded in alphabets(json.as_bytes()) {
            decode_everything(&encoded);
            let decoded: Value = codec::decode_json_header(&encoded).expect("valid base64 JSON decodes");
            prop_assert_eq!(&decoded, &value);
        }
    }

    #[test]
    fn no_decoder_panics_on_near_misses(envelope in envelope_value(), at in any::<usize>(), with in any::<char>()) {
        let valid = envelope.to_header();
        for input in mutations(&valid, at, with) {
            decode_everything(&input);
        }
    }

    #[test]
    fn overlong_values_are_refused_before_decoding(extra in 1usize..4096, fill in "[A-Za-z0-9+/]") {
        let value = fill.repeat(MAX_HEADER_LEN + extra);
        prop_assert_eq!(codec::decode_base64(&value), Err(Malformed::TooLong(MAX_HEADER_LEN + extra)));
        prop_assert!(PaymentRequired::from_header(&value).is_err());
        prop_assert!(AccessToken::new(value).decode().is_err());
    }

    #[test]
    fn envelopes_round_trip_in_every_alphabet(envelope in envelope_value()) {
        let header = envelope.to_header();
        prop_assert_eq!(PaymentRequired::from_header(&header).expect("own header"), envelope.clone());
        let json = serde_json::to_vec(&envelope).expect("serializes");
        for encoded in alphabets(&json) {
            prop_assert_eq!(PaymentRequired::from_header(&encoded).expect("any alphabet"), envelope.clone());
        }
    }

    #[test]
    fn receipts_round_trip_with_unknown_fields(receipt in receipt_value()) {
        let header = receipt.to_header();
        let back = SettleResponse::from_header(&header).expect("own header");
        prop_assert_eq!(&back, &receipt);
        let json = serde_json::to_vec(&receipt).expect("serializes");
        for encoded in alphabets(&json) {
            prop_assert_eq!(SettleResponse::from_header(&encoded).expect("any alphabet"), receipt.clone());
        }
        // 256-bit amounts survive as decimal strings.
        prop_assert_eq!(
            back.credits_redeemed.as_ref().map(Amount::as_str),
            receipt.credits_redeemed.as_ref().map(Amount::as_str)
        );
    }

    #[test]
    fn tokens_round_trip_in_every_alphabet(payload in payload_value()) {
        let token = payload.to_token();
        prop_assert_eq!(token.decode().expect("own token"), payload.clone());
        let json = serde_json::to_vec(&payload).expect("serializes");
        for encoded in alphabets(&json) {
            let token = AccessToken::new(encoded);
            prop_assert_eq!(token.decode().expect("any alphabet"), payload.clone());
            // A token shows only its hash.
            let debug = format!("{token:?}");
            prop_assert!(debug.starts_with("AccessToken(tok:"), "{}", debug);
        }
    }

    #[test]
    fn api_keys_parse_in_every_alphabet(
        prefix in prop_oneof![
            Just("sandbox"), Just("live"), Just("sandbox-staging"), Just("live-staging"), Just("local"), Just("LIVE"),
        ],
        sub in "[ -~]{1,60}",
        o11y in prop::option::of(json_value()),
        signature in prop::collection::vec(any::<u8>(), 0..48),
        alphabet in 0usize..4,
    ) {
        let mut claims = json!({ "sub": sub, "iat": 1 });
        if let Some(o11y) = &o11y {
            claims["o11y"] = o11y.clone();
        }
        let header = alphabets(br#"{"alg":"HS256","typ":"JWT"}"#)[alphabet].clone();
        let payload = alphabets(claims.to_string().as_bytes())[alphabet].clone();
        let signature = URL_SAFE_NO_PAD.encode(signature);
        let raw = format!("{prefix}:{header}.{payload}.{signature}");
        let key: ApiKey = raw.parse().expect("a well-formed key parses");
        prop_assert_eq!(key.account(), sub.as_str());
        prop_assert_eq!(key.prefix(), Some(prefix));
        // `"o11y": null` counts as absent, as the Python SDK reads it.
        prop_assert_eq!(key.has_o11y(), o11y.is_some_and(|v| !v.is_null()));
        let expected = match prefix.to_ascii_lowercase().as_str() {
            "sandbox" => Some(Environment::Sandbox),
            "live" => Some(Environment::Live),
            "sandbox-staging" => Some(Environment::StagingSandbox),
            "live-staging" => Some(Environment::StagingLive),
            _ => None,
        };
        prop_assert_eq!(key.environment(), expected);
        prop_assert_eq!(key.expose(), raw.as_str());
        let debug = format!("{key:?}");
        prop_assert!(!debug.contains(&payload) && !debug.contains(&raw), "{}", debug);
    }
}
