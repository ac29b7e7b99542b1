//! LLM observability (a module of the `paid_flow` test binary): a paid handler calls the
//! local facilitator's stand-in gateway, and the gateway must have seen exactly the
//! headers the official Python SDK (payments-py 1.18, run in the tests' virtual
//! environment) builds for the same verification; manual logs are sent one per call,
//! and a log endpoint that is down, slow or failing changes nothing for the buyer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, post, web};
use nvm_runtime::__private::backend::ApiKey;
use nvm_runtime::__private::local::{CANNED_COMPLETION, LocalFacilitatorExt as _};
use nvm_runtime::__private::local::{GatewayCall, GatewayEndpoint};
use nvm_runtime::__private::observability::helicone_headers;
use nvm_runtime::local::{Fault, LocalFacilitator};
use nvm_runtime::observability::LlmCall;
use nvm_runtime::observability::async_openai::Client as OpenAiClient;
use nvm_runtime::observability::async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions, CreateChatCompletionRequestArgs,
};
use nvm_runtime::{Environment, PaymentContext, paid};
use nvm_tests::{DEMO_AGENT_ID, DEMO_PLAN_ID, http, mint, payments_for, receipt, serve};

const SESSION: &str = "session-7f3a";

#[derive(serde::Deserialize)]
struct Query {
    query: String,
}

/// The quick start's `POST /ask`, answered by an LLM behind the gateway and charged by
/// the tokens it used.
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 20)]
#[post("/llm/ask")]
async fn gateway_ask(q: web::Json<Query>, payment: PaymentContext) -> HttpResponse {
    let gateway = match payment.observability().and_then(|g| g.property("sessionId", SESSION)) {
        Ok(gateway) => gateway,
        Err(error) => return HttpResponse::InternalServerError().body(error.to_string()),
    };
    let request =
        serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": q.query}]});
    let answer = reqwest::Client::new()
        .post(gateway.chat_completions_url())
        .headers(gateway.headers().clone())
        .bearer_auth("sk-test-not-a-key")
        .json(&request)
        .send()
        .await;
    let Ok(answer) = answer else { return HttpResponse::BadGateway().finish() };
    let Ok(answer) = answer.json::<serde_json::Value>().await else {
        return HttpResponse::BadGateway().finish();
    };
    let tokens = answer["usage"]["total_tokens"].as_u64().unwrap_or(0);
    if payment.charge(tokens).is_err() {
        return HttpResponse::PaymentRequired().body("the answer cost more than was verified");
    }
    HttpResponse::Ok().json(serde_json::json!({
        "answer": answer["choices"][0]["message"]["content"],
        "tokens": tokens,
        "baseUrl": gateway.base_url(),
        "agentRequest": nvm_runtime::__private::observability::verification(&payment)["agentRequest"],
    }))
}

/// The same through `async-openai`, plain and streamed.
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 20)]
#[post("/llm/ask-openai")]
async fn gateway_ask_openai(q: web::Json<Query>, payment: PaymentContext) -> HttpResponse {
    let Ok(config) = payment.observability().and_then(|g| g.openai_config("sk-test-not-a-key")) else {
        return HttpResponse::InternalServerError().finish();
    };
    let openai = OpenAiClient::with_config(config);
    let message = ChatCompletionRequestUserMessageArgs::default().content(q.query.as_str()).build().unwrap();
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages([message.into()])
        .build()
        .unwrap();
    let plain = openai.chat().create(request.clone()).await.unwrap();
    let mut streamed = request;
    streamed.stream = Some(true);
    streamed.stream_options =
        Some(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None });
    let mut stream = openai.chat().create_stream(streamed).await.unwrap();
    let (mut text, mut stream_tokens) = (String::new(), 0);
    while let Some(chunk) =
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx)).await
    {
        let chunk = chunk.unwrap();
        for choice in &chunk.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
        }
        if let Some(usage) = chunk.usage {
            stream_tokens = usage.total_tokens;
        }
    }
    let tokens = plain.usage.as_ref().map_or(0, |u| u.total_tokens);
    payment.charge(u64::from(tokens)).unwrap();
    HttpResponse::Ok().json(serde_json::json!({
        "plain": plain.choices[0].message.content,
        "streamed": text,
        "tokens": tokens,
        "streamTokens": stream_tokens,
    }))
}

/// A model that is not behind the gateway, logged by hand (off the response path).
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 5)]
#[post("/llm/local-model")]
async fn gateway_local_model(q: web::Json<Query>, payment: PaymentContext) -> HttpResponse {
    let call = LlmCall::new("llama-3-8b", serde_json::json!({"query": q.query}));
    let answer = format!("echo: {}", q.query);
    let call = call.output(serde_json::json!(answer)).usage(4, 2).id_prefix("local");
    match payment.observability() {
        Ok(gateway) => drop(gateway.log(call)),
        Err(error) => return HttpResponse::InternalServerError().body(error.to_string()),
    }
    payment.charge(2).unwrap();
    HttpResponse::Ok().json(serde_json::json!({"answer": answer}))
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(gateway_ask).service(gateway_ask_openai).service(gateway_local_model);
}

/// The tests' Python with payments-py 1.18 (installed once under the target directory,
/// as the examples' smoke test does; fails loudly when it cannot be).
fn python_with_sdk() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            let venv = target.parent().expect("the target directory").join("py-payments-sdk");
            let python = venv.join("bin").join("python");
            if !python.exists() {
                let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
                assert!(
                    made.is_ok_and(|s| s.success()),
                    "python3 -m venv {} failed: install python3-venv",
                    venv.display()
                );
                let installed = Command::new(&python)
                    .args(["-m", "pip", "install", "--quiet", "payments-py==1.18.0", "requests"])
                    .status();
                assert!(
                    installed.is_ok_and(|s| s.success()),
                    "pip install payments-py failed: the official SDK is needed for this cross-check"
                );
            }
            python
        })
        .clone()
}

/// payments-py's own `get_default_helicone_headers` (and `with_openai`'s base URL), for
/// the seller's key and each `agentRequest`, with the custom properties `custom`.
fn sdk_headers(
    key: &str,
    helicone_url: &str,
    agent_requests: &[serde_json::Value],
    custom: &serde_json::Value,
) -> (Vec<BTreeMap<String, String>>, String) {
    const SCRIPT: &str = r#"
import json, sys
from payments_py.common.types import PaymentOptions, StartAgentRequest
from payments_py.api.observability_api import ObservabilityAPI, get_default_helicone_headers
given = json.load(sys.stdin)
api = ObservabilityAPI(PaymentOptions(nvm_api_key=given["key"]))
out = {"headers": [], "baseUrl": None}
for agent_request in given["agentRequests"]:
    request = StartAgentRequest.model_validate(agent_request)
    out["headers"].append(get_default_helicone_headers(
        api.helicone_api_key, api.account_address, api.environment_name, request, given["custom"]))
    out["baseUrl"] = api.with_openai("sk-test", request, given["custom"]).base_url
print(json.dumps(out))
"#;
    let mut child = Command::new(python_with_sdk())
        .args(["-c", SCRIPT])
        .env("HELICONE_URL", helicone_url)
        .env_remove("HELICONE_API_KEY")
        .env("PYTHONWARNINGS", "ignore")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run payments-py");
    let input = serde_json::json!({"key": key, "agentRequests": agent_requests, "custom": custom});
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "payments-py failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let headers = out["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            h.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .collect();
    (headers, out["baseUrl"].as_str().unwrap().to_owned())
}

/// The `helicone-*` headers of a call the gateway received.
fn helicone_of(call: &GatewayCall) -> BTreeMap<String, String> {
    call.headers.iter().filter(|(n, _)| n.starts_with("helicone-")).cloned().collect()
}

fn gateway_calls(local: &LocalFacilitator, endpoint: GatewayEndpoint) -> Vec<GatewayCall> {
    local.gateway_calls().into_iter().filter(|c| c.endpoint == endpoint).collect()
}

#[actix_web::test]
async fn the_gateway_sees_exactly_the_headers_payments_py_builds() {
    let local = LocalFacilitator::start().unwrap();
    let payments = payments_for(&local).build().unwrap();
    assert_eq!(payments.helicone_url(), local.backend_url(), "a local key's gateway is the stand-in");
    let server = serve(Some(payments), routes);
    let token = mint(&local).await;
    let query = "what does x402 do";
    let response = http()
        .post(server.at("/llm/ask"))
        .header("payment-signature", &token)
        .json(&serde_json::json!({"query": query}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let settled = receipt(&response).expect("a receipt");
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["answer"], CANNED_COMPLETION);
    // Charged by the tokens used: the words of the query, and those of the answer.
    let tokens = (query.split_whitespace().count() + CANNED_COMPLETION.split_whitespace().count()) as u64;
    assert_eq!(answer["tokens"], tokens);
    assert_eq!(settled.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), tokens);
    assert_eq!(local.balance(DEMO_PLAN_ID, local.subscriber_address()), 100 - tokens);

    let chats = gateway_calls(&local, GatewayEndpoint::ChatCompletions);
    assert_eq!(chats.len(), 1, "{chats:?}");
    let seen = helicone_of(&chats[0]);

    // The official SDK, given the same key and the agentRequest the seller verified.
    let custom = serde_json::json!({"sessionId": SESSION});
    let (sdk, base_url) =
        sdk_headers(local.builder_api_key(), local.backend_url(), &[answer["agentRequest"].clone()], &custom);
    assert_eq!(seen, sdk[0], "the gateway saw other headers than payments-py builds");
    assert_eq!(answer["baseUrl"], base_url);
    assert_eq!(seen.len(), 15, "14 of the SDK's own and the session: {seen:?}");
    assert_eq!(seen["helicone-property-sessionid"], SESSION);
    assert_eq!(seen["helicone-property-consumeraddress"], local.subscriber_address());
}

/// Other verifications than the local facilitator's (prices as numbers and strings,
/// tiny and huge; batch as a bool and a string): the same headers as payments-py.
#[test]
fn helicone_headers_match_payments_py_for_any_agent_request() {
    let local = LocalFacilitator::start().unwrap();
    let key: ApiKey = local.builder_api_key().parse().unwrap();
    let prices = [
        serde_json::json!(0),
        serde_json::json!(0.5),
        serde_json::json!("0.25"),
        serde_json::json!(0.00001),
        serde_json::json!(1.25e-7),
        serde_json::json!(12),
        serde_json::json!(1e16),
        serde_json::json!(123456.789),
    ];
    let batches = [serde_json::json!(false), serde_json::json!(true), serde_json::json!("true")];
    let cases: Vec<serde_json::Value> = prices
        .iter()
        .enumerate()
        .map(|(i, price)| {
            serde_json::json!({
                "agentRequestId": format!("req-{i}"), "agentName": format!("Agent {i}"),
                "agentId": format!("{i}42"), "urlMatching": "/ask", "verbMatching": "POST",
                "batch": batches[i % batches.len()],
                "balance": {"planId": format!("9{i}"), "planName": "Pro plan", "planType": "credits",
                            "holderAddress": format!("0xbuyer{i}"), "balance": "100",
                            "creditsContract": "0xc", "isSubscriber": true, "pricePerCredit": price},
            })
        })
        .collect();
    let (sdk, _) = sdk_headers(local.builder_api_key(), local.backend_url(), &cases, &serde_json::json!({}));
    for (case, sdk) in cases.iter().zip(&sdk) {
        let ours =
            helicone_headers(key.observability_key().unwrap(), key.account(), Environment::Custom, case)
                .unwrap();
        let ours: BTreeMap<String, String> =
            ours.iter().map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned())).collect();
        assert_eq!(&ours, sdk, "{case}");
    }
}

#[actix_web::test]
async fn async_openai_through_the_gateway_plain_and_streamed() {
    let local = LocalFacilitator::start().unwrap();
    let server = serve(Some(payments_for(&local).build().unwrap()), routes);
    let token = mint(&local).await;
    let response = http()
        .post(server.at("/llm/ask-openai"))
        .header("payment-signature", &token)
        .json(&serde_json::json!({"query": "hello there"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let settled = receipt(&response).expect("a receipt");
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["plain"], CANNED_COMPLETION);
    assert_eq!(answer["streamed"], CANNED_COMPLETION);
    let tokens = 2 + CANNED_COMPLETION.split_whitespace().count() as u64;
    assert_eq!((answer["tokens"].as_u64(), answer["streamTokens"].as_u64()), (Some(tokens), Some(tokens)));
    assert_eq!(settled.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), tokens);
    let chats = gateway_calls(&local, GatewayEndpoint::ChatCompletions);
    assert_eq!(chats.len(), 2);
    assert_eq!(chats[1].body["stream"], true);
    // Both carry the gateway headers (the same ones), and the provider's key.
    assert_eq!(helicone_of(&chats[0]), helicone_of(&chats[1]));
    assert_eq!(helicone_of(&chats[0]).len(), 14);
    assert_eq!(chats[0].header("authorization"), Some("Bearer sk-test-not-a-key"));
    let o11y = local.builder_api_key().parse::<ApiKey>().unwrap().observability_key().unwrap().to_owned();
    assert_eq!(chats[0].header("helicone-auth"), Some(format!("Bearer {o11y}").as_str()));
}

/// What the buyer got: status, body, whether settled, credits redeemed, balance after.
type Seen = (u16, String, bool, u64, u64);

async fn call_local_model(local: &LocalFacilitator, url: &str) -> (Seen, Duration) {
    let token = mint(local).await;
    let started = Instant::now();
    let response = http()
        .post(url)
        .header("payment-signature", &token)
        .json(&serde_json::json!({"query": "hi"}))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let settled = receipt(&response).expect("a receipt");
    let body = response.text().await.unwrap();
    let balance = local.balance(DEMO_PLAN_ID, local.subscriber_address());
    (
        (
            status,
            body,
            settled.success,
            settled.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
            balance,
        ),
        elapsed,
    )
}

/// Waits until the gateway has received `n` logs (they are sent in the background).
async fn logs_received(local: &LocalFacilitator, n: usize) -> Vec<GatewayCall> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = gateway_calls(local, GatewayEndpoint::Log);
        if logs.len() >= n || Instant::now() > deadline {
            return logs;
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn manual_logs_one_per_call_and_a_failing_log_endpoint_changes_nothing() {
    let local = LocalFacilitator::start().unwrap();
    let server = serve(Some(payments_for(&local).build().unwrap()), routes);
    let url = server.at("/llm/local-model");

    // Healthy: one log per call, with the request's headers and the call's usage.
    let (healthy, _) = call_local_model(&local, &url).await;
    assert_eq!(healthy.0, 200, "{healthy:?}");
    assert!(healthy.2 && healthy.3 == 2 && healthy.4 == 98, "{healthy:?}");
    let logs = logs_received(&local, 1).await;
    assert_eq!(logs.len(), 1);
    let log = &logs[0];
    let o11y = local.builder_api_key().parse::<ApiKey>().unwrap().observability_key().unwrap().to_owned();
    assert_eq!(log.header("authorization"), Some(format!("Bearer {o11y}").as_str()));
    assert_eq!(helicone_of(log).len(), 14);
    assert_eq!(log.header("helicone-property-consumeraddress"), Some(local.subscriber_address()));
    assert_eq!(log.body["providerRequest"]["json"]["model"], "llama-3-8b");
    assert_eq!(log.body["providerRequest"]["json"]["messages"][0]["content"], r#"{"query":"hi"}"#);
    let logged = &log.body["providerResponse"]["json"];
    assert_eq!(logged["choices"][0]["message"]["content"], r#""echo: hi""#);
    assert_eq!(logged["usage"]["total_tokens"], 6);
    assert!(logged["id"].as_str().unwrap().starts_with("local-"));
    assert!(!log.body.to_string().contains(&o11y), "the gateway key is not in the log's body");

    // The same call against a log endpoint that answers 500, then one that is slow:
    // the buyer sees the same thing (the balance one call lower each time), at once.
    let mut expected = healthy.clone();
    local.inject_gateway(GatewayEndpoint::Log, Fault::Status(500));
    let (failing, _) = call_local_model(&local, &url).await;
    expected.4 -= 2;
    assert_eq!(failing, expected);
    assert_eq!(logs_received(&local, 2).await.len(), 2, "one log per call, failed or not");
    local.clear_gateway_faults();
    local.inject_gateway(GatewayEndpoint::Log, Fault::Delay(Duration::from_secs(5)));
    let (slow, elapsed) = call_local_model(&local, &url).await;
    expected.4 -= 2;
    assert_eq!(slow, expected);
    assert!(elapsed < Duration::from_secs(2), "the answer waited for the log: {elapsed:?}");
    assert_eq!(logs_received(&local, 3).await.len(), 3);
    local.inject_gateway(GatewayEndpoint::Log, Fault::Disconnect);
    let (cut, _) = call_local_model(&local, &url).await;
    expected.4 -= 2;
    assert_eq!(cut, expected);
    assert_eq!(logs_received(&local, 4).await.len(), 4);
    local.clear_gateway_faults();

    // No gateway at all: the seller's Helicone URL is a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let down = serve(Some(payments_for(&local).helicone_url(&down_url).build().unwrap()), routes);
    let (unreachable, _) = call_local_model(&local, &down.at("/llm/local-model")).await;
    expected.4 -= 2;
    assert_eq!(unreachable, expected);
    assert_eq!(gateway_calls(&local, GatewayEndpoint::Log).len(), 4, "nothing reached the stand-in");
}
