//! Paid MCP tools over real HTTP on 127.0.0.1, through the real server path (the
//! actix-web app, the bridge, rmcp's streamable HTTP server and tool router), with the
//! local facilitator's ledger reconciled: `#[paid]` above `#[tool]` and the `PaidTools`
//! table form.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use nvm_runtime::__private::local::LocalFacilitatorExt as _;
use nvm_runtime::client::PaymentOutcome;
use nvm_runtime::client::mcp::{McpHttpClient, PayingTools};
use nvm_runtime::local::{DEMO_AGENT_ID, DEMO_PLAN_ID, Endpoint, Fault, LocalFacilitator};
use nvm_runtime::mcp::{McpService, PaidTools, ToolConfig};
use nvm_runtime::{PaymentContext, Payments, SettlementStatus, paid};
use nvm_tests::{Calls, mint, payments_for, serve};
use proptest::prelude::*;
use rmcp::handler::server::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{JsonObject, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, schemars::JsonSchema)]
struct Query {
    query: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Priced {
    /// The credits asked.
    n: u64,
    /// What the tool charges from inside, if anything.
    charge: Option<u64>,
}

/// Runs of each tool's body.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Tools>,
    runs: Runs,
}

/// What the priced tools answer: the charge they made, or why it was refused.
fn charged(p: &Priced, payment: &PaymentContext) -> String {
    match p.charge {
        Some(charge) => payment.charge(charge).map_err(|e| e.to_string()).err().unwrap_or_default(),
        None => format!("full price: {}", p.n),
    }
}

fn by_n(args: &JsonObject) -> u64 {
    args.get("n").and_then(Value::as_u64).unwrap_or(1)
}

#[tool_router]
impl Tools {
    /// 2 credits a call.
    #[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2)]
    #[tool]
    async fn fixed(&self, Parameters(q): Parameters<Query>, payment: PaymentContext) -> String {
        self.runs.0.fetch_add(1, Ordering::SeqCst);
        format!("{} for {:?}", q.query, payment.payer())
    }

    /// `n` credits; charges `charge` from inside.
    #[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = by_n)]
    #[tool]
    async fn priced(&self, Parameters(p): Parameters<Priced>, payment: PaymentContext) -> String {
        self.runs.0.fetch_add(1, Ordering::SeqCst);
        charged(&p, &payment)
    }

    /// Answers the LLM gateway settings of its paid call (the observability of a tool
    /// call, as of an HTTP request).
    #[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1)]
    #[tool]
    async fn gateway(&self, payment: PaymentContext) -> String {
        match payment.observability() {
            Ok(gateway) => {
                let headers = gateway.headers();
                let request = headers.get("helicone-property-agentrequestid").and_then(|v| v.to_str().ok());
                format!("{} {}", gateway.chat_completions_url(), request.unwrap_or_default())
            }
            Err(error) => error.to_string(),
        }
    }

    /// Fails with an `isError` result: never charged.
    #[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1)]
    #[tool]
    async fn failing(&self) -> Result<String, String> {
        self.runs.0.fetch_add(1, Ordering::SeqCst);
        Err("the tool failed".to_owned())
    }

    /// Waits until cancelled.
    #[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1)]
    #[tool]
    async fn slow(&self) -> String {
        self.runs.0.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        "late".to_owned()
    }

    /// Priced by the table, not by an attribute.
    #[tool]
    async fn tabled(&self, Parameters(q): Parameters<Query>, payment: PaymentContext) -> String {
        self.runs.0.fetch_add(1, Ordering::SeqCst);
        format!("{} for {:?}", q.query, payment.payer())
    }

    /// `failing`, priced by the table.
    #[tool]
    async fn tabled_failing(&self) -> Result<String, String> {
        self.runs.0.fetch_add(1, Ordering::SeqCst);
        Err("the tool failed".to_owned())
    }

    /// `slow`, priced by the table.
    #[tool]
    async fn tabled_slow(&self) -> String {
        self.runs.0.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        "late".to_owned()
    }

    /// `priced`, priced by the table.
    #[tool]
    async fn tabled_priced(&self, Parameters(p): Parameters<Priced>, payment: PaymentContext) -> String {
        self.runs.0.fetch_add(1, Ordering::SeqCst);
        charged(&p, &payment)
    }
}

/// The tools of one form of pricing: `#[paid]` or the `PaidTools` table.
#[derive(Debug, Clone, Copy)]
struct Form {
    /// A tool at a fixed price, answering `"<query> for <payer>"`.
    paid: &'static str,
    /// Its price.
    credits: u64,
    /// A tool answering `isError`.
    failing: &'static str,
    /// A tool that waits until cancelled.
    slow: &'static str,
    /// A tool priced by its `n` argument, charging its `charge` argument.
    priced: &'static str,
}

const FORMS: [Form; 2] = [
    Form { paid: "fixed", credits: 2, failing: "failing", slow: "slow", priced: "priced" },
    Form {
        paid: "tabled",
        credits: 3,
        failing: "tabled_failing",
        slow: "tabled_slow",
        priced: "tabled_priced",
    },
];

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// A seller serving `Tools` at `/mcp`, the `tabled` tool priced 3 credits by a table.
struct Seller {
    local: LocalFacilitator,
    runs: Runs,
    server: nvm_tests::TestServer,
}

fn seller_with(local: LocalFacilitator, payments: Payments) -> Seller {
    let (server, runs) = instance(payments);
    Seller { local, runs, server }
}

/// One instance of the seller's app: `Tools` at `/mcp`, `tabled` priced by a table.
fn instance(payments: Payments) -> (nvm_tests::TestServer, Runs) {
    let runs = Runs::default();
    let config = || ToolConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID);
    let table = PaidTools::new()
        .tool("tabled", config().credits(3))
        .tool("tabled_failing", config())
        .tool("tabled_slow", config())
        .tool("tabled_priced", config().credits_by(by_n));
    let router = table.wrap(Tools::tool_router()).expect("every table entry names a tool");
    let tools = Tools { tool_router: router, runs: runs.clone() };
    let mcp = McpService::new(move || Ok(tools.clone()));
    let server = serve(Some(payments), move |cfg| {
        cfg.service(mcp.resource("/mcp"));
    });
    (server, runs)
}

fn seller() -> Seller {
    let local = LocalFacilitator::start().expect("local facilitator");
    let payments = payments_for(&local).build().expect("payments");
    seller_with(local, payments)
}

impl Seller {
    fn balance(&self) -> u64 {
        self.local.balance(DEMO_PLAN_ID, self.local.subscriber_address())
    }

    async fn client(&self) -> Client {
        Client::open(&self.server.at("/mcp")).await
    }
}

/// A raw MCP client over HTTP: JSON-RPC requests, SSE answers read to their result.
struct Client {
    url: String,
    http: reqwest::Client,
    session: String,
    next: std::sync::atomic::AtomicU64,
}

impl Client {
    async fn open(url: &str) -> Client {
        let http = nvm_tests::http();
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"test","version":"1"}}});
        let response = http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .json(&init)
            .send()
            .await
            .expect("initialize");
        assert_eq!(response.status(), 200, "initialize");
        let session = response.headers()["mcp-session-id"].to_str().expect("session id").to_owned();
        let _ = response.text().await;
        let client = Client { url: url.to_owned(), http, session, next: 1.into() };
        let done = client.post(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}), &[]).await;
        assert_eq!(done.status(), 202, "initialized");
        client
    }

    async fn post(&self, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .http
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.session)
            .json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("MCP request")
    }

    /// Calls `tool` with `arguments`, `meta` and extra HTTP `headers`; the JSON-RPC
    /// answer (`result` or `error`).
    async fn call(
        &self,
        tool: &str,
        arguments: Value,
        meta: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Value {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let mut params = json!({"name": tool, "arguments": arguments});
        if let Some(meta) = meta {
            params["_meta"] = meta;
        }
        let body = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":params});
        let response = self.post(&body, headers).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("answer");
        answer_of(&text, id)
    }
}

/// The JSON-RPC answer with `id` in an SSE (or JSON) body.
fn answer_of(text: &str, id: u64) -> Value {
    let messages = text.lines().filter_map(|line| line.strip_prefix("data:")).map(str::trim);
    let mut found = None;
    for message in messages.chain(std::iter::once(text.trim())) {
        if let Ok(value) = serde_json::from_str::<Value>(message)
            && value.get("id") == Some(&json!(id))
        {
            found = Some(value);
            break;
        }
    }
    found.unwrap_or_else(|| panic!("no answer with id {id} in {text}"))
}

/// The decoded payment payload of a token, for `_meta["x402/payment"]`.
fn payload(token: &str) -> Value {
    let bytes = nvm_runtime::__private::wire::codec::decode_base64(token).expect("base64 token");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

fn paid_meta(token: &str) -> Value {
    json!({"x402/payment": payload(token)})
}

/// The `PaymentRequired` of a refused result, after checking the x402 shape: `isError`,
/// the object in `structuredContent` and the same JSON as `content[0].text`.
fn payment_required(answer: &Value) -> Value {
    let result = &answer["result"];
    assert_eq!(result["isError"], true, "{answer}");
    let structured = result["structuredContent"].clone();
    let text: Value =
        serde_json::from_str(result["content"][0]["text"].as_str().expect("text")).expect("JSON text");
    assert_eq!(structured, text, "structuredContent and content[0].text carry the same PaymentRequired");
    assert_eq!(structured["x402Version"], 2);
    assert!(structured["accepts"].as_array().is_some_and(|a| !a.is_empty()), "{structured}");
    structured
}

#[actix_web::test]
async fn an_unpaid_call_gets_payment_required_and_the_tool_does_not_run() {
    for form in FORMS {
        let s = seller();
        let client = s.client().await;
        let answer = client.call(form.paid, json!({"query": "hi"}), None, &[]).await;
        let required = payment_required(&answer);
        assert_eq!(required["error"], "payment required");
        assert_eq!(required["resource"]["url"], format!("mcp://mcp-server/tools/{}", form.paid));
        assert_eq!(required["accepts"][0]["planId"], DEMO_PLAN_ID);
        assert_eq!(required["accepts"][0]["extra"]["agentId"], DEMO_AGENT_ID);
        assert_eq!(s.runs.count(), 0, "{form:?}");
        let calls = Calls::of(&s.local);
        assert_eq!((calls.verify, calls.settle), (0, 0), "{form:?}");
    }
}

#[actix_web::test]
async fn a_call_paid_in_meta_runs_settles_once_and_carries_both_receipts() {
    for form in FORMS {
        let s = seller();
        let client = s.client().await;
        let token = mint(&s.local).await;
        let answer = client.call(form.paid, json!({"query": "hi"}), Some(paid_meta(&token)), &[]).await;
        let result = &answer["result"];
        assert_eq!(result["isError"], false, "{answer}");
        assert!(
            result["content"][0]["text"].as_str().is_some_and(|t| t.starts_with("hi for Some")),
            "{answer}"
        );
        let (price, left) = (form.credits.to_string(), (100 - form.credits).to_string());
        let receipt = &result["_meta"]["x402/payment-response"];
        assert_eq!(receipt["success"], true);
        assert_eq!(receipt["creditsRedeemed"], price.as_str());
        let credits = &result["_meta"]["nevermined/credits"];
        assert_eq!(credits["creditsRedeemed"], price.as_str());
        assert_eq!(credits["remainingBalance"], left.as_str());
        assert_eq!(credits["planId"], DEMO_PLAN_ID);
        assert_eq!(credits["subscriberAddress"], s.local.subscriber_address());
        assert_eq!(credits["success"], true);
        assert!(credits["txHash"].as_str().is_some_and(|h| h.starts_with("0x")));
        assert_eq!(s.balance(), 100 - form.credits);
        assert_eq!(s.runs.count(), 1);
        let calls = Calls::of(&s.local);
        assert_eq!((calls.verify, calls.settle), (1, 1), "{form:?}");
    }
}

#[actix_web::test]
async fn a_call_paid_with_an_authorization_header_is_served_the_same() {
    for form in FORMS {
        let s = seller();
        let client = s.client().await;
        let token = mint(&s.local).await;
        let bearer = format!("Bearer {token}");
        let answer =
            client.call(form.paid, json!({"query": "hi"}), None, &[("authorization", &bearer)]).await;
        assert_eq!(answer["result"]["isError"], false, "{answer}");
        let price = form.credits.to_string();
        assert_eq!(answer["result"]["_meta"]["nevermined/credits"]["creditsRedeemed"], price.as_str());
        assert_eq!(s.balance(), 100 - form.credits);
    }
}

#[test]
fn a_table_entry_naming_no_tool_is_refused_with_the_routers_tools() {
    let error = PaidTools::new()
        .tool("serch", ToolConfig::new(DEMO_PLAN_ID))
        .wrap(Tools::tool_router())
        .expect_err("a typo is an error");
    let message = error.to_string();
    assert!(message.contains("serch") && message.contains("tabled_slow"), "{message}");
}

#[actix_web::test]
async fn tools_list_shows_each_paid_tools_price() {
    let s = seller();
    let client = s.client().await;
    let answer = client.post(&json!({"jsonrpc":"2.0","id":99,"method":"tools/list"}), &[]).await;
    let answer = answer_of(&answer.text().await.expect("list"), 99);
    let tools = answer["result"]["tools"].as_array().expect("tools").clone();
    let price = |name: &str| {
        tools.iter().find(|t| t["name"] == name).map(|t| t["_meta"]["nevermined/price"].clone()).expect(name)
    };
    assert_eq!(price("fixed")["credits"], "2");
    assert_eq!(price("fixed")["planId"], DEMO_PLAN_ID);
    assert_eq!(price("fixed")["agentId"], DEMO_AGENT_ID);
    assert_eq!(price("priced")["credits"], "dynamic");
    assert_eq!(price("tabled")["credits"], "3");
}

#[actix_web::test]
async fn an_is_error_result_is_not_charged() {
    for form in FORMS {
        let s = seller();
        let client = s.client().await;
        let token = mint(&s.local).await;
        let answer = client.call(form.failing, json!({}), Some(paid_meta(&token)), &[]).await;
        assert_eq!(answer["result"]["isError"], true);
        assert_eq!(answer["result"]["content"][0]["text"], "the tool failed");
        assert!(answer["result"].get("_meta").is_none(), "no receipt: {answer}");
        assert_eq!(s.runs.count(), 1);
        assert_eq!(Calls::of(&s.local).settle, 0, "{form:?}");
        assert_eq!(s.balance(), 100);
    }
}

#[actix_web::test]
async fn arguments_price_the_call_and_the_tool_charges_its_usage() {
    for form in FORMS {
        let s = seller();
        let client = s.client().await;
        // Verified for 5, charged 2 from inside.
        let token = mint(&s.local).await;
        let answer =
            client.call(form.priced, json!({"n": 5, "charge": 2}), Some(paid_meta(&token)), &[]).await;
        assert_eq!(answer["result"]["_meta"]["nevermined/credits"]["creditsRedeemed"], "2", "{answer}");
        assert_eq!(s.balance(), 98);
        // More than verified is refused inside the tool, and the verified price is settled.
        let token = mint(&s.local).await;
        let answer =
            client.call(form.priced, json!({"n": 4, "charge": 9}), Some(paid_meta(&token)), &[]).await;
        assert!(
            answer["result"]["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("only 4 were verified"))
        );
        assert_eq!(answer["result"]["_meta"]["nevermined/credits"]["creditsRedeemed"], "4");
        assert_eq!(s.balance(), 94);
    }
    // Arguments an attribute-priced tool rejects: rmcp's own error, nothing verified or
    // settled (rmcp parses them before the paid body runs; a table entry wraps the whole
    // route, so it verifies first and settles nothing).
    let s = seller();
    let client = s.client().await;
    let token = mint(&s.local).await;
    let answer = client.call("priced", json!({"n": "five"}), Some(paid_meta(&token)), &[]).await;
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    assert!(answer["result"].get("structuredContent").is_none(), "not a PaymentRequired: {answer}");
    let calls = Calls::of(&s.local);
    assert_eq!((calls.verify, calls.settle), (0, 0));
    let answer = client.call("tabled_priced", json!({"n": "five"}), Some(paid_meta(&token)), &[]).await;
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    assert_eq!(Calls::of(&s.local).settle, 0);
    assert_eq!(s.balance(), 100);
}

#[actix_web::test]
async fn every_settle_fault_withholds_the_result_and_never_charges_twice() {
    let faults: [(Fault, &str); 5] = [
        (Fault::Status(400), "refused"),
        (Fault::SettleFailure("insufficient_balance".to_owned()), "refused"),
        (Fault::Status(500), "unknown"),
        (Fault::LoseAnswer, "unknown"),
        (Fault::Delay(Duration::from_secs(5)), "unknown"),
    ];
    for form in FORMS {
        for (fault, kind) in faults.clone() {
            let local = LocalFacilitator::start().expect("local facilitator");
            let payments = payments_for(&local).timeout(Duration::from_secs(1)).build().expect("payments");
            let s = seller_with(local, payments.clone());
            let client = s.client().await;
            let token = mint(&s.local).await;
            s.local.inject_times(Endpoint::Settle, fault.clone(), 1);
            let answer =
                client.call(form.paid, json!({"query": "secret"}), Some(paid_meta(&token)), &[]).await;
            let result = &answer["result"];
            assert_eq!(result["isError"], true, "{fault:?}: {answer}");
            assert!(
                !answer.to_string().contains("secret for"),
                "{fault:?}: the content is withheld: {answer}"
            );
            assert_eq!(result["_meta"]["x402/payment-response"]["success"], false, "{fault:?}: {answer}");
            let pending =
                payments.pending_settlements().list(SettlementStatus::Unknown).await.expect("journal");
            match kind {
                "refused" => {
                    assert!(result["structuredContent"]["accepts"].is_array(), "{fault:?}: {answer}");
                    assert_eq!(s.balance(), 100, "{fault:?}");
                    assert!(pending.is_empty(), "{fault:?}: {pending:?}");
                }
                _ => {
                    // Outcome unknown: no `accepts` (do not pay again), recorded as pending.
                    assert!(result["structuredContent"].get("accepts").is_none(), "{fault:?}: {answer}");
                    assert_eq!(Calls::of(&s.local).settle, 1, "{fault:?}: settled once, never retried");
                    assert!(s.balance() >= 100 - form.credits, "{fault:?}: at most one burn");
                    assert_eq!(pending.len(), 1, "{fault:?}: recorded in the journal");
                    assert_eq!(result["_meta"]["nevermined/credits"]["planId"], DEMO_PLAN_ID, "{answer}");
                    assert_eq!(pending[0].path, format!("mcp://mcp-server/tools/{}", form.paid));
                    assert_eq!(pending[0].amount, form.credits.to_string());
                }
            }
            assert_eq!(s.runs.count(), 1, "{fault:?}");
        }
    }
}

#[actix_web::test]
async fn a_cancelled_call_settles_nothing() {
    for form in FORMS {
        let s = seller();
        let client = Arc::new(s.client().await);
        let token = mint(&s.local).await;
        let call = {
            let client = Arc::clone(&client);
            actix_web::rt::spawn(async move {
                client.call(form.slow, json!({}), Some(paid_meta(&token)), &[]).await
            })
        };
        while s.runs.count() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let id = 1; // the first call of this client
        let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":id,"reason":"user"}});
        assert_eq!(client.post(&cancel, &[]).await.status(), 202);
        let _ = tokio::time::timeout(Duration::from_secs(5), call).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(Calls::of(&s.local).verify, 1, "{form:?}");
        assert_eq!(Calls::of(&s.local).settle, 0, "{form:?}");
        assert_eq!(s.balance(), 100);
    }
}

#[actix_web::test]
async fn fifty_concurrent_calls_on_a_small_balance_get_exactly_what_it_pays_for() {
    for form in FORMS {
        let s = seller();
        s.local.set_balance(DEMO_PLAN_ID, s.local.subscriber_address(), 21);
        let client = Arc::new(s.client().await);
        let mut tokens = Vec::new();
        for _ in 0..50 {
            tokens.push(mint(&s.local).await);
        }
        let calls: Vec<_> = tokens
            .into_iter()
            .map(|token| {
                let client = Arc::clone(&client);
                actix_web::rt::spawn(async move {
                    client.call(form.paid, json!({"query": "q"}), Some(paid_meta(&token)), &[]).await
                })
            })
            .collect();
        let mut served = 0;
        for call in calls {
            let answer = call.await.expect("call");
            if answer["result"]["isError"] == false {
                served += 1;
                let price = form.credits.to_string();
                assert_eq!(
                    answer["result"]["_meta"]["nevermined/credits"]["creditsRedeemed"],
                    price.as_str()
                );
            } else {
                assert!(!answer.to_string().contains("q for"), "no content without payment: {answer}");
            }
        }
        assert_eq!(served, 21 / form.credits, "{form:?}: 21 credits pay for exactly this many calls");
        assert_eq!(s.balance(), 21 % form.credits);
    }
}

/// Bad payments in `_meta` or the header, generated.
fn bad_payment() -> impl Strategy<Value = (Option<Value>, Option<String>)> {
    prop_oneof![
        // Not an object.
        any::<i64>().prop_map(|n| (Some(json!({"x402/payment": n})), None)),
        "[a-zA-Z0-9]{0,40}".prop_map(|s| (Some(json!({"x402/payment": s})), None)),
        Just((Some(json!({"x402/payment": [1, 2, 3]})), None)),
        Just((Some(json!({"x402/payment": null})), None)),
        // Over 64 KiB.
        (65 * 1024..70 * 1024usize)
            .prop_map(|n| (Some(json!({"x402/payment": {"pad": "x".repeat(n)}})), None)),
        // A header token that is not base64 JSON.
        "[!-~]{1,60}"
            .prop_filter("not base64 JSON", |s| {
                nvm_runtime::__private::wire::codec::decode_json_header::<Value>(s).is_err()
            })
            .prop_map(|s| (None, Some(s))),
        // Base64 of a JSON array.
        Just((None, Some(base64::engine::general_purpose::STANDARD.encode("[1,2]")))),
    ]
}

#[test]
fn bad_payments_get_invalid_token_and_cost_nothing() {
    let runtime = actix_web::rt::System::new();
    runtime.block_on(async {
        let s = seller();
        let client = s.client().await;
        let mut runner =
            proptest::test_runner::TestRunner::new(ProptestConfig { cases: 24, ..ProptestConfig::default() });
        let cases = std::cell::RefCell::new(Vec::new());
        runner
            .run(&bad_payment(), |case| {
                cases.borrow_mut().push(case);
                Ok(())
            })
            .expect("generated");
        for (meta, header) in cases.into_inner() {
            let bearer = header.as_ref().map(|h| format!("Bearer {h}"));
            let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
            for form in FORMS {
                let answer = client.call(form.paid, json!({"query": "q"}), meta.clone(), &headers).await;
                let required = payment_required(&answer);
                let error = required["error"].as_str().unwrap_or_default();
                assert!(error.starts_with("invalid_token"), "{form:?} {meta:?} {header:?}: {required}");
            }
        }
        // An unknown tool: rmcp's own error.
        let answer = client.call("nope", json!({}), None, &[]).await;
        assert!(answer.get("error").is_some() || answer["result"]["isError"] == true, "{answer}");
        assert_eq!(s.runs.count(), 0);
        let calls = Calls::of(&s.local);
        assert_eq!((calls.verify, calls.settle), (0, 0), "no facilitator call for bad input");
        assert_eq!(s.balance(), 100);
    });
}

/// An rmcp client session over this crate's `McpHttpClient` transport.
async fn rmcp_session(url: &str) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    use rmcp::ServiceExt as _;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    let transport = StreamableHttpClientTransport::with_client(McpHttpClient::default(), config);
    ().serve(transport).await.expect("MCP session")
}

fn tool_call(name: &'static str, arguments: Value) -> rmcp::model::CallToolRequestParams {
    let mut params = rmcp::model::CallToolRequestParams::new(name);
    params.arguments = arguments.as_object().cloned();
    params
}

#[actix_web::test]
async fn the_buyer_pays_a_tool_by_itself_and_never_pays_twice_for_one_call() {
    let s = seller();
    let session = rmcp_session(&s.server.at("/mcp")).await;
    let subscriber = nvm_runtime::client::Subscriber::builder()
        .api_key(s.local.subscriber_api_key())
        .backend_url(s.local.backend_url())
        .build()
        .expect("subscriber");
    let buyer = PayingTools::new(subscriber);

    // Paid by itself: unpaid probe, mint, paid call, receipt.
    let paid =
        buyer.call(session.peer(), tool_call("fixed", json!({"query": "hi"}))).await.expect("paid call");
    let PaymentOutcome::Settled(receipt) = &paid.outcome else { panic!("{:?}", paid.outcome) };
    assert_eq!(receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), 2);
    assert!(!paid.replayed());
    assert_eq!(s.balance(), 98);
    assert_eq!((Calls::of(&s.local).permissions, Calls::of(&s.local).settle), (1, 1));

    // An `isError` result: paid for, not charged, not sent again.
    let failed = buyer.call(session.peer(), tool_call("failing", json!({}))).await.expect("call");
    assert_eq!(failed.outcome, PaymentOutcome::Unsettled);
    assert_eq!(s.balance(), 98);

    // A settlement refused after the tool ran: never sent again (the tool ran once).
    let runs = s.runs.count();
    s.local.inject_times(Endpoint::Settle, Fault::SettleFailure("insufficient_balance".to_owned()), 1);
    let refused =
        buyer.call(session.peer(), tool_call("fixed", json!({"query": "again"}))).await.expect("call");
    assert!(refused.outcome.must_not_pay_again(), "{:?}", refused.outcome);
    assert_eq!(s.runs.count(), runs + 1, "the call was not sent again");
    assert_eq!(s.balance(), 98);

    // The answer lost after the facilitator burned: outcome unknown, not sent again.
    s.local.inject_times(Endpoint::Settle, Fault::LoseAnswer, 1);
    let lost = buyer.call(session.peer(), tool_call("fixed", json!({"query": "lost"}))).await.expect("call");
    let PaymentOutcome::OutcomeUnknown(receipt) = &lost.outcome else { panic!("{:?}", lost.outcome) };
    assert!(receipt.pending_id().is_some_and(|id| !id.is_empty()));
    assert_eq!(s.runs.count(), runs + 2);
    assert_eq!(s.balance(), 96, "burned once, by the settle whose answer was lost");

    // A free answer: nothing paid (an unknown tool is rmcp's error, not a payment).
    let unknown = buyer.call(session.peer(), tool_call("nope", json!({}))).await;
    assert!(matches!(unknown, Err(nvm_runtime::client::ClientError::Mcp(_))), "{unknown:?}");
    session.cancel().await.expect("close the session");
}

#[actix_web::test]
async fn a_retry_on_another_instance_sharing_redis_is_replayed_and_a_spent_single_use_token_refused() {
    use nvm_runtime::__private::local::MintOptions;
    use nvm_runtime::Idempotency;
    use nvm_runtime::store::RedisStore;
    let redis = nvm_tests::RedisServer::start();
    let local = LocalFacilitator::start().expect("local facilitator");
    let start = || {
        let store = RedisStore::open(&redis.url()).expect("redis store");
        instance(payments_for(&local).idempotency(Idempotency::with_store(store)).build().expect("payments"))
    };
    let ((a, runs_a), (b, runs_b)) = (start(), start());
    let (client_a, client_b) = (Client::open(&a.at("/mcp")).await, Client::open(&b.at("/mcp")).await);
    let balance = || local.balance(DEMO_PLAN_ID, local.subscriber_address());

    // The same call (token, arguments, payment-identifier) on A, then retried on B; the
    // `Idempotency-Key` header works the same.
    let mut spent = 0;
    for (i, form) in FORMS.into_iter().enumerate() {
        let token = mint(&local).await;
        let key = format!("call-000{i}-across-instances");
        let mut payment = payload(&token);
        payment["extensions"] = json!({"payment-identifier": {"info": {"id": key}}});
        let (meta, header) = if i == 0 {
            (json!({"x402/payment": payment}), Vec::new())
        } else {
            (json!({"x402/payment": payload(&token)}), vec![("idempotency-key", key.as_str())])
        };
        let first = client_a.call(form.paid, json!({"query": "once"}), Some(meta.clone()), &header).await;
        assert_eq!(first["result"]["isError"], false, "{first}");
        let retry = client_b.call(form.paid, json!({"query": "once"}), Some(meta.clone()), &header).await;
        assert_eq!(retry["result"]["_meta"]["nevermined/idempotent-replayed"], true, "{form:?}: {retry}");
        assert_eq!(retry["result"]["content"], first["result"]["content"]);
        assert_eq!(
            retry["result"]["_meta"]["x402/payment-response"],
            first["result"]["_meta"]["x402/payment-response"],
            "the original receipt"
        );
        spent += form.credits;
        assert_eq!((runs_a.count(), runs_b.count()), (i + 1, 0), "{form:?}");
        assert_eq!(Calls::of(&local).settle, i as u64 + 1, "{form:?}");
        assert_eq!(balance(), 100 - spent, "{form:?}");

        // Other arguments under the same key: refused, nothing run or charged.
        let reused = client_b.call(form.paid, json!({"query": "other"}), Some(meta), &header).await;
        assert_eq!(reused["result"]["isError"], true, "{reused}");
        assert_eq!(runs_b.count(), 0);
        assert_eq!(balance(), 100 - spent);
    }

    // A single-use token spent on A is refused on B before any facilitator call.
    let single = local.mint_token(MintOptions::new().single_use().resource("mcp://mcp-server/tools/fixed"));
    let single_paid = client_a.call("fixed", json!({"query": "single"}), Some(paid_meta(&single)), &[]).await;
    assert_eq!(single_paid["result"]["isError"], false, "{single_paid}");
    let calls = Calls::of(&local);
    let again = client_b.call("fixed", json!({"query": "single"}), Some(paid_meta(&single)), &[]).await;
    let required = payment_required(&again);
    assert!(required["error"].as_str().is_some_and(|e| e.contains("BCK.X402.0059")), "{required}");
    let after = Calls::of(&local);
    assert_eq!(
        (after.verify, after.settle),
        (calls.verify, calls.settle),
        "refused before any facilitator call"
    );
    assert_eq!(balance(), 100 - spent - 2);
}

#[actix_web::test]
async fn the_manifest_and_the_start_up_report_list_the_paid_tools() {
    let s = seller();
    let tools = nvm_runtime::mcp::manifest();
    let find =
        |name: &str| tools.iter().find(|t| t["tool"] == name).unwrap_or_else(|| panic!("{name}: {tools:?}"));
    assert_eq!(
        (&find("priced")["credits"], &find("priced")["form"]),
        (&json!("dynamic"), &json!("attribute"))
    );
    assert_eq!((&find("tabled")["credits"], &find("tabled")["form"]), (&json!(3), &json!("table")));
    assert_eq!(
        find("fixed"),
        &json!({"tool": "fixed", "plan": DEMO_PLAN_ID, "agent": DEMO_AGENT_ID, "credits": 2, "form": "attribute"})
    );

    // The pricing handler of an app lists them next to its routes.
    let payments = payments_for(&s.local).build().expect("payments");
    let app = serve(Some(payments.clone()), |cfg| {
        cfg.route("/pricing", actix_web::web::get().to(nvm_runtime::actix::pricing::manifest_handler));
    });
    let manifest: Value =
        nvm_tests::http().get(app.at("/pricing")).send().await.expect("GET").json().await.expect("JSON");
    let names: Vec<&str> =
        manifest["tools"].as_array().expect("tools").iter().filter_map(|t| t["tool"].as_str()).collect();
    for name in ["failing", "fixed", "priced", "slow", "tabled"] {
        assert!(names.contains(&name), "{name}: {manifest}");
    }

    // The start-up report: one line per paid tool, counted in the summary.
    let logs = nvm_tests::CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let guard = tracing::subscriber::set_default(subscriber);
    payments.prepare().await.expect("prepared");
    drop(guard);
    let logs = logs.text();
    let line = logs
        .lines()
        .find(|l| l.contains("paid MCP tool") && l.contains("tool=fixed"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(
        line.contains("price=2") && line.contains("form=\"attribute\"") || line.contains("form=attribute"),
        "{line}"
    );
    assert!(logs.contains("paid MCP tool(s)"), "{logs}");
}

#[actix_web::test]
async fn the_configurations_hooks_see_each_step_of_a_tool_call() {
    use nvm_runtime::mcp::ToolCall;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let local = LocalFacilitator::start().expect("local facilitator");
    let record = |step: &'static str| {
        let seen = Arc::clone(&seen);
        move |req: &actix_web::HttpRequest| {
            let call = actix_web::HttpMessage::extensions(req).get::<ToolCall>().cloned();
            let line =
                format!("{step} {} {}", req.path(), call.map(|c| c.name().to_owned()).unwrap_or_default());
            seen.lock().expect("hooks").push(line);
        }
    };
    let (before, after, settled, unknown) =
        (record("before_verify"), record("after_verify"), record("after_settle"), record("unknown"));
    let payments = payments_for(&local)
        .timeout(Duration::from_secs(1))
        .before_verify(move |req, _| before(req))
        .after_verify(move |req, _| after(req))
        .after_settle(move |req, _, _| settled(req))
        .on_settlement_unknown(move |req, _| unknown(req))
        .build()
        .expect("payments");
    let s = seller_with(local, payments);
    let client = s.client().await;
    for form in FORMS {
        let token = mint(&s.local).await;
        let answer = client.call(form.paid, json!({"query": "h"}), Some(paid_meta(&token)), &[]).await;
        assert_eq!(answer["result"]["isError"], false, "{answer}");
    }
    s.local.inject_times(Endpoint::Settle, Fault::LoseAnswer, 1);
    let token = mint(&s.local).await;
    let _ = client.call("fixed", json!({"query": "h"}), Some(paid_meta(&token)), &[]).await;
    let seen = seen.lock().expect("hooks").clone();
    let expected = [
        "before_verify /mcp fixed",
        "after_verify /mcp fixed",
        "after_settle /mcp fixed",
        "before_verify /mcp tabled",
        "after_verify /mcp tabled",
        "after_settle /mcp tabled",
        "before_verify /mcp fixed",
        "after_verify /mcp fixed",
        "unknown /mcp fixed",
    ];
    assert_eq!(seen, expected);
}

#[actix_web::test]
async fn a_paid_tool_gets_the_llm_gateway_settings_of_its_call() {
    let s = seller();
    let client = s.client().await;
    let token = mint(&s.local).await;
    let answer = client.call("gateway", json!({}), Some(paid_meta(&token)), &[]).await;
    let text = answer["result"]["content"][0]["text"].as_str().unwrap_or_default().to_owned();
    let (url, request_id) = text.split_once(' ').unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(url, format!("{}/jawn/v1/gateway/oai/v1/chat/completions", s.local.backend_url()), "{answer}");
    let receipt = &answer["result"]["_meta"]["x402/payment-response"];
    assert!(!request_id.is_empty(), "the verified agent request's id: {answer}");
    assert_eq!(s.balance(), 99, "{receipt}");
}

/// A tool call whose settle answer was lost, retried with its `payment-identifier`:
/// told to wait while the settlement is pending (never the result, never `accepts`),
/// then, once the seller resolves it as burned, the held result with a confirmed
/// receipt; the tool ran once and the price was burned once. Both forms.
#[actix_web::test]
async fn a_pending_tool_call_is_collected_once_the_seller_resolves_it() {
    for form in FORMS {
        let local = LocalFacilitator::start().expect("local facilitator");
        let payments = payments_for(&local).timeout(Duration::from_secs(1)).build().expect("payments");
        let s = seller_with(local, payments.clone());
        let client = s.client().await;
        let token = mint(&s.local).await;
        let mut payment = payload(&token);
        payment["extensions"] =
            json!({"payment-identifier": {"info": {"id": format!("pending-{}", form.paid)}}});
        let meta = json!({"x402/payment": payment});
        s.local.inject_times(Endpoint::Settle, Fault::LoseAnswer, 1);
        let first = client.call(form.paid, json!({"query": "held"}), Some(meta.clone()), &[]).await;
        assert_eq!(
            first["result"]["_meta"]["x402/payment-response"]["errorReason"],
            "settlement_outcome_unknown"
        );
        let burned = 100 - s.balance();
        assert_eq!(burned, form.credits, "{form:?}: the lost answer's burn");

        let waiting = client.call(form.paid, json!({"query": "held"}), Some(meta.clone()), &[]).await;
        let result = &waiting["result"];
        assert_eq!(result["isError"], true, "{waiting}");
        assert_eq!(
            result["_meta"]["x402/payment-response"]["errorReason"], "settlement_pending",
            "{waiting}"
        );
        assert!(result["structuredContent"].get("accepts").is_none(), "{waiting}");
        assert!(!waiting.to_string().contains("held for"), "{waiting}");

        let pending = payments.pending_settlements().list(SettlementStatus::Unknown).await.expect("journal");
        assert_eq!(pending.len(), 1);
        assert!(
            payments
                .pending_settlements()
                .close(&pending[0].id, nvm_runtime::Resolution::Burned)
                .await
                .unwrap()
        );
        let collected = client.call(form.paid, json!({"query": "held"}), Some(meta), &[]).await;
        let result = &collected["result"];
        assert_eq!(result["isError"], false, "{collected}");
        assert!(collected.to_string().contains("held for"), "{collected}");
        assert_eq!(result["_meta"]["x402/payment-response"]["success"], true, "{collected}");
        assert_eq!(result["_meta"]["x402/payment-response"]["confirmedAfterUnknown"], true, "{collected}");
        assert_eq!((s.runs.count(), 100 - s.balance()), (1, form.credits), "{form:?}: ran once, burned once");
    }
}
