//! Every example, run as a newcomer runs it: started as a process on a free port with
//! the embedded local facilitator, then paid with the client, with plain HTTP, and with
//! the curl lines it prints.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nvm_runtime::client::{PayingClient, Subscriber};
use nvm_runtime::wire::SettleResponse;

/// A running example, killed when dropped.
struct Example {
    child: Child,
    banner: Vec<String>,
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Example {
    /// The built example binary (cargo builds examples before running tests).
    fn path(name: &str) -> PathBuf {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/smoke-… → target/<profile>/examples/<name>
        exe.parent().and_then(|deps| deps.parent()).expect("target dir").join("examples").join(name)
    }

    /// Starts `name` with no NVM_API_KEY on a free port and reads its banner.
    fn start(name: &str) -> Example {
        let mut child = Command::new(Self::path(name))
            .env_remove("NVM_API_KEY")
            .env_remove("NVM_PLAN_ID")
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start example {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        // The MCP example's banner goes on with its MCP lines, to its own client's.
        let last = if name == "mcp" { "--example mcp_client" } else { "--example client" };
        while !banner.iter().any(|l: &String| l.contains(last)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => banner.push(line),
                Err(_) => panic!("{name} printed no complete banner in 30 s: {banner:#?}"),
            }
        }
        Example { child, banner }
    }

    fn line(&self, needle: &str) -> &str {
        self.banner
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {:#?}", self.banner))
    }

    /// The server URL from "Agent listening on http://…".
    fn url(&self) -> String {
        let line = self.line("Agent listening on");
        line.split_whitespace().find(|w| w.starts_with("http://")).expect("url").to_owned()
    }

    /// NVM_API_KEY and NVM_BACKEND_URL of the client line.
    fn subscriber(&self) -> (String, String) {
        let line = self.line("--example client");
        let key = line.split("NVM_API_KEY='").nth(1).and_then(|r| r.split('\'').next()).expect("key");
        let backend =
            line.split("NVM_BACKEND_URL=").nth(1).and_then(|r| r.split(' ').next()).expect("backend");
        (key.to_owned(), backend.to_owned())
    }

    /// The three commands to paste (402, mint, pay).
    fn curl_lines(&self) -> Vec<String> {
        self.banner.iter().filter(|l| l.starts_with("curl ") || l.starts_with("TOKEN=")).cloned().collect()
    }

    fn paying_client(&self) -> PayingClient {
        let (key, backend) = self.subscriber();
        let subscriber =
            Subscriber::builder().api_key(key).backend_url(backend).build().expect("subscriber config");
        PayingClient::new(subscriber)
    }
}

fn run_shell(script: &str) -> String {
    let output = Command::new("sh").arg("-c").arg(script).output().expect("sh");
    assert!(output.status.success(), "script failed: {script}\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn receipt_in(headers_and_body: &str) -> SettleResponse {
    let value = headers_and_body
        .lines()
        .find_map(|l| l.strip_prefix("payment-response: "))
        .unwrap_or_else(|| panic!("no payment-response in {headers_and_body}"));
    SettleResponse::from_header(value.trim()).expect("receipt")
}

#[tokio::test(flavor = "current_thread")]
async fn quickstart_is_paid_by_the_client_by_plain_http_and_by_its_curl_lines() {
    let example = Example::start("quickstart");
    let url = example.url();
    // The start-up report reaches the terminal before the banner.
    assert!(
        example.banner.iter().any(|l| l.contains("1 paid route(s) on 1 plan(s)")),
        "no start-up report: {:#?}",
        example.banner
    );

    // The free routes.
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{url}/health")).send().await.unwrap().status(), 200);
    let pricing: serde_json::Value =
        http.get(format!("{url}/pricing")).send().await.unwrap().json().await.unwrap();
    assert_eq!(pricing["routes"][0]["credits"], 1, "{pricing}");

    // 1. The client pays by itself.
    let client = example.paying_client();
    let request = client.http().post(format!("{url}/ask")).header("content-type", "application/json");
    let paid = client.send(request.body(r#"{"query":"hi"}"#)).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    let receipt = paid.receipt.expect("receipt");
    assert_eq!(receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), 1);
    assert_eq!(receipt.remaining_balance.as_ref().and_then(|a| a.as_u64()), Some(99));

    // 2. Plain HTTP: mint, then pay (the client's cached token is reused too).
    let token = client
        .subscriber()
        .token_for(
            &nvm_runtime::__private::wire::EnvelopeBuilder::new(
                pricing["routes"][0]["plan"].as_str().unwrap(),
                "eip155:84532",
            )
            .agent_id(pricing["routes"][0]["agent"].as_str().unwrap())
            .build()
            .accepts[0],
        )
        .await
        .unwrap();
    let response = http
        .post(format!("{url}/ask"))
        .header("content-type", "application/json")
        .header("payment-signature", token.as_str())
        .body(r#"{"query":"plain"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let receipt =
        SettleResponse::from_header(response.headers()["payment-response"].to_str().unwrap()).unwrap();
    assert_eq!(receipt.remaining_balance.as_ref().and_then(|a| a.as_u64()), Some(98));
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["answer"].as_str().unwrap().contains("plain"), "{body}");

    // 3. The printed curl lines, pasted as they are into one shell.
    let lines = example.curl_lines();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let unpaid = run_shell(&lines[0]);
    assert!(unpaid.starts_with("HTTP/1.1 402"), "{unpaid}");
    assert!(unpaid.contains("payment-required: "), "{unpaid}");
    let script = format!("{}\n{}", lines[1], lines[2]);
    let out = run_shell(&script);
    let (token_line, paid) = out.split_once('\n').expect("token then response");
    assert!(token_line.len() > 100, "the mint line printed no token: {out}");
    assert!(paid.starts_with("HTTP/1.1 200"), "{paid}");
    let receipt = receipt_in(paid);
    assert_eq!(receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), 1);
    assert_eq!(receipt.remaining_balance.as_ref().and_then(|a| a.as_u64()), Some(97));
}

#[tokio::test(flavor = "current_thread")]
async fn dynamic_credits_prices_by_request_and_charges_usage() {
    let example = Example::start("dynamic_credits");
    let url = example.url();
    let client = example.paying_client();
    let paid = client.send(client.http().post(format!("{url}/generate?tokens=250"))).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    assert_eq!(
        paid.receipt.expect("receipt").credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
        3
    );
    let text = "x".repeat(120);
    let paid = client.send(client.http().post(format!("{url}/translate")).body(text)).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    // Quoted 5 + 120/50 = 7, used 2 (1 per 100 characters).
    assert_eq!(
        paid.receipt.expect("receipt").credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
        2
    );
    let body: serde_json::Value = paid.response.json().await.unwrap();
    assert_eq!((body["quoted"].as_u64(), body["charged"].as_u64()), (Some(7), Some(2)), "{body}");
}

#[tokio::test(flavor = "current_thread")]
async fn production_reports_meters_lists_and_lets_a_page_pay() {
    let example = Example::start("production");
    // The start-up report, before the banner: the route and the summary.
    let report = example.line("paid route method=");
    assert!(report.contains("path=\"/ask\"") && report.contains("price=1"), "{report}");
    example.line("paid route(s) on 1 plan(s)");
    let url = example.url();
    let client = example.paying_client();
    let request = client.http().post(format!("{url}/v1/ask")).header("content-type", "application/json");
    let paid = client.send(request.body(r#"{"query":"hi"}"#)).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    let http = reqwest::Client::new();
    let unpaid = http.post(format!("{url}/v1/ask")).body("{}").send().await.unwrap();
    assert_eq!(unpaid.status(), 402);

    // The metrics count what happened.
    let metrics = http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    let count = |outcome: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("nvm_paid_requests_total{")
                    && l.contains("route=\"/v1/ask\"")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no {outcome} counter in {metrics}"))
            .to_owned()
    };
    // Two 402s without a token: the paying client's first try, and the unpaid call.
    assert_eq!((count("paid").as_str(), count("no_token").as_str()), ("1", "2"), "{metrics}");
    assert!(metrics.contains("nvm_paid_credits_settled_total{"), "{metrics}");
    assert!(metrics.contains("nvm_paid_verify_seconds"), "{metrics}");

    // The manifest lists the route at the path the app serves.
    let pricing: serde_json::Value =
        http.get(format!("{url}/pricing")).send().await.unwrap().json().await.unwrap();
    assert_eq!(pricing["routes"][0]["path"], "/v1/ask", "{pricing}");
    assert_eq!(pricing["routes"][0]["credits"], 1, "{pricing}");

    // CORS: a page on the allowed origin may send the token and read the receipt.
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{url}/v1/ask"))
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "payment-signature, content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{preflight:?}");
    let allowed = preflight.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("payment-signature"), "{allowed}");
    let from_page =
        http.post(format!("{url}/v1/ask")).header("origin", "http://localhost:5173").send().await.unwrap();
    let exposed = from_page.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("payment-required") && exposed.contains("payment-response"), "{exposed}");
}

#[tokio::test(flavor = "current_thread")]
async fn middleware_protects_its_table_and_streams() {
    let example = Example::start("middleware");
    let url = example.url();
    let client = example.paying_client();
    assert_eq!(reqwest::get(format!("{url}/health")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(format!("{url}/reports/7")).await.unwrap().status(), 402);
    let paid = client.send(client.http().get(format!("{url}/reports/7"))).await.unwrap();
    assert_eq!(
        paid.receipt.expect("receipt").credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
        5
    );
    let paid = client.send(client.http().get(format!("{url}/stream"))).await.unwrap();
    assert!(paid.receipt.is_none(), "settled after the stream: no receipt in the head");
    let mut stream = paid.into_stream();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(text.matches("data: chunk").count(), 3);
    assert_eq!(
        stream
            .receipt()
            .expect("the receipt, last event")
            .credits_redeemed
            .as_ref()
            .and_then(|c| c.as_u64())
            .unwrap_or(0),
        2
    );
}

#[tokio::test(flavor = "current_thread")]
async fn observability_answers_from_the_gateway_and_charges_by_tokens() {
    let example = Example::start("observability");
    let client = example.paying_client();
    let url = format!("{}/ask", example.url());
    let ask = |query: String| {
        let request = client.http().post(&url).header("content-type", "application/json");
        client.send(request.body(serde_json::json!({ "query": query }).to_string()))
    };
    // The stand-in's answer is 6 tokens: "hello" costs 7 tokens, 1 credit; 30 words 36, 4.
    let mut expected_balance = 100;
    for (words, credits) in [(1, 1), (30, 4)] {
        let paid = ask(vec!["hello"; words].join(" ")).await.expect("paid");
        assert_eq!(paid.response.status(), 200);
        let nvm_runtime::client::PaymentOutcome::Settled(receipt) = &paid.outcome else {
            panic!("not settled: {:?}", paid.outcome)
        };
        assert_eq!(receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), credits);
        expected_balance -= credits;
        assert_eq!(receipt.remaining_balance.as_ref().and_then(|a| a.as_u64()), Some(expected_balance));
        let body: serde_json::Value = paid.response.json().await.expect("JSON");
        assert_eq!(body["answer"], nvm_runtime::__private::local::CANNED_COMPLETION, "{body}");
        assert_eq!(body["tokens"], words as u64 + 6, "{body}");
        assert_eq!(body["creditsCharged"], credits, "{body}");
    }
    assert!(example.line("observability gateway at http://127.0.0.1:").contains("127.0.0.1"));
}

#[test]
fn client_example_pays_the_quickstart_and_prints_the_receipt() {
    let example = Example::start("quickstart");
    let (key, backend) = example.subscriber();
    let output = Command::new(Example::path("client"))
        .arg(format!("{}/ask", example.url()))
        .env("NVM_API_KEY", key)
        .env("NVM_BACKEND_URL", backend)
        .env_remove("NVM_ENVIRONMENT")
        .output()
        .expect("run client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("status: 200 OK"), "{stdout}");
    assert!(stdout.contains("credits redeemed: 1"), "{stdout}");
    assert!(stdout.contains("remaining balance: 99"), "{stdout}");

    // An answer nobody paid for (the client POSTs; /health is a free GET) is not what the
    // buyer asked: exit 1.
    let output = Command::new(Example::path("client"))
        .arg(format!("{}/health", example.url()))
        .env("NVM_API_KEY", example.subscriber().0)
        .env("NVM_BACKEND_URL", example.subscriber().1)
        .env_remove("NVM_ENVIRONMENT")
        .output()
        .expect("run client");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("answered 404 Not Found, not a paid 2xx: NotRequired"), "{stderr}");
}

/// Each example started on a port already taken exits with code 2 and a message that
/// says which variable picks the port, and how to rerun it.
#[test]
fn examples_on_a_taken_port_say_that_port_picks_the_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let port = taken.local_addr().expect("local addr").port();
    for name in ["quickstart", "dynamic_credits", "middleware"] {
        let mut child = Command::new(Example::path(name))
            .env_remove("NVM_API_KEY")
            .env_remove("NVM_PLAN_ID")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start example {name}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} still runs on a taken port after 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("stderr");
        assert_eq!(status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(&format!("127.0.0.1:{port} is already in use")), "{name}: {stderr}");
        assert!(stderr.contains("The environment variable PORT picks the port"), "{name}: {stderr}");
        assert!(stderr.contains(&format!("--example {name}")), "{name}: {stderr}");
    }
    drop(taken);
}

#[tokio::test(flavor = "current_thread")]
async fn streaming_sends_words_at_once_and_ends_with_the_receipt() {
    let example = Example::start("streaming");
    let url = example.url();
    let client = example.paying_client();
    let request = client.http().post(format!("{url}/chat")).header("content-type", "application/json");
    let paid = client.send(request.body(r#"{"query":"rust"}"#)).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    assert_eq!(paid.outcome, nvm_runtime::client::PaymentOutcome::SettlesAfterBody);
    let mut stream = paid.into_stream();
    let mut words = 0;
    while let Some(chunk) = stream.next().await.unwrap() {
        words += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    // The receipt event is one of the `data:` lines; 1 credit per started 10 words, at most 5.
    let words = words - 1;
    let receipt = stream.receipt().expect("the payment-response event").clone();
    assert!(receipt.success, "{receipt:?}");
    assert_eq!(
        receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
        words.div_ceil(10).min(5) as u64,
        "{words} words"
    );
    assert!(words > 10, "{words} words");

    // The printed curl lines: the unpaid one gets its 402; the paid one streams the words
    // and ends with the payment-response event.
    let lines = example.curl_lines();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(run_shell(&lines[0]).starts_with("HTTP/1.1 402"));
    let out = run_shell(&format!("{}\n{}", lines[1], lines[2]));
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    assert!(out.contains("event: payment-response"), "{out}");
}

/// A Python virtual environment with the official SDKs (payments-py, and the MCP SDK `mcp`
/// 1.x), made once under the target directory; a test that needs it fails loudly when it
/// cannot be made.
fn python_with_sdk() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(make_python_with_sdk).clone()
}

fn make_python_with_sdk() -> PathBuf {
    let target =
        Example::path("streaming").parent().and_then(|p| p.parent()).expect("target dir").to_path_buf();
    let venv = target.join("py-payments-sdk");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "python3 -m venv {} failed: install python3-venv",
            venv.display()
        );
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "payments-py==1.18.0", "requests", MCP_SDK])
            .status();
        assert!(
            installed.is_ok_and(|s| s.success()),
            "pip install payments-py failed: the official SDK is needed for this cross-check"
        );
    }
    // A venv made before the MCP cross-check: add the MCP SDK.
    let has_mcp = || {
        Command::new(&python)
            .args(["-c", "import importlib.metadata as m, mcp; assert m.version('mcp').startswith('1.')"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_mcp() {
        let installed = Command::new(&python).args(["-m", "pip", "install", "--quiet", MCP_SDK]).status();
        assert!(
            installed.is_ok_and(|s| s.success()) && has_mcp(),
            "pip install {MCP_SDK} into {} failed: the official MCP SDK is needed for this cross-check",
            venv.display()
        );
    }
    python
}

/// The official MCP SDK for Python the cross-check runs (payments-py 1.18 needs
/// `mcp>=1.25,<2`).
const MCP_SDK: &str = "mcp==1.30.0";

/// Runs `examples/python/<script> <example url><path> <subscriber key>` with the official
/// SDKs against the example's local facilitator, and returns the one JSON line it prints.
fn run_python_buyer(example: &Example, script: &str, path: &str) -> serde_json::Value {
    let (key, backend) = example.subscriber();
    let output = Command::new(python_with_sdk())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(script))
        .arg(format!("{}{path}", example.url()))
        .arg(key)
        .env("NVM_BACKEND_URL", backend)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .unwrap_or_else(|e| panic!("run the Python buyer {script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{script}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    eprintln!("{script}: {line}");
    line
}

#[test]
fn the_official_python_buyer_receives_the_stream_and_its_receipt() {
    let example = Example::start("streaming");
    let line = run_python_buyer(&example, "buyer_stream.py", "/chat");
    assert_eq!(line["words"], 50, "{line}");
    assert_eq!(line["receipt"]["success"], true, "{line}");
    assert_eq!(line["receipt"]["creditsRedeemed"], "5", "{line}");
}

/// The official Python SDKs buy a paid MCP tool of the `mcp` example end to end: the MCP
/// SDK's client opens a session, sees the price in tools/list, gets the PaymentRequired
/// of an unpaid call, and pays with a payments-py token in `_meta["x402/payment"]`; the
/// answer comes with both receipts, and the demo subscriber holds exactly 1 credit less.
#[test]
fn the_official_python_mcp_client_pays_a_paid_tool_with_a_payments_py_token() {
    let example = Example::start("mcp");
    let holds = example.line("a demo subscriber holds");
    let before: u64 = holds
        .split("holds ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no credit count in {holds}"));
    let line = run_python_buyer(&example, "mcp_buyer.py", "/mcp");
    assert_eq!(line["creditsRedeemed"], "1", "{line}");
    assert_eq!(line["remainingBalance"], (before - 1).to_string(), "{line}");
    assert!(line["txHash"].as_str().is_some_and(|h| h.starts_with("0x")), "{line}");
}

/// The MCP example's own instructions, followed as a user would: the Rust MCP client it
/// names pays the paid tool by itself, and its curl lines (session, unpaid call, paid
/// call with the token in the `Authorization` header) work pasted into one shell.
#[test]
fn the_mcp_example_is_paid_by_its_rust_client_and_by_its_curl_lines() {
    let example = Example::start("mcp");
    let line = example.line("--example mcp_client");
    let key = line.split("NVM_API_KEY='").nth(1).and_then(|r| r.split('\'').next()).expect("key");
    let backend = line.split("NVM_BACKEND_URL=").nth(1).and_then(|r| r.split(' ').next()).expect("backend");
    let output = Command::new(Example::path("mcp_client"))
        .args([format!("{}/mcp", example.url()), "ask".to_owned(), r#"{"query":"hi"}"#.to_owned()])
        .env("NVM_API_KEY", key)
        .env("NVM_BACKEND_URL", backend)
        .env_remove("NVM_ENVIRONMENT")
        .output()
        .expect("run mcp_client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("The answer is 42"), "{stdout}");
    assert!(stdout.contains("credits redeemed: 1"), "{stdout}");
    assert!(stdout.contains("remaining balance: 99"), "{stdout}");

    // The printed lines: mint (step 2), then the MCP steps 4 to 6, in one shell.
    let mint = example.line("TOKEN=$(curl");
    let mcp: Vec<&str> = example
        .banner
        .iter()
        .skip_while(|l| !l.starts_with("# MCP: 4."))
        .filter(|l| l.starts_with("SID=") || l.starts_with("curl "))
        .map(String::as_str)
        .collect();
    assert_eq!(mcp.len(), 4, "{mcp:#?}");
    let out = run_shell(&format!("{mint}\n{}", mcp.join("\necho\n")));
    let messages: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let unpaid = messages.iter().find(|m| m["id"] == 2).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(unpaid["result"]["isError"], true, "{unpaid}");
    assert_eq!(unpaid["result"]["structuredContent"]["x402Version"], 2, "{unpaid}");
    let paid = messages.iter().find(|m| m["id"] == 3).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(paid["result"]["isError"], false, "{paid}");
    assert_eq!(paid["result"]["_meta"]["nevermined/credits"]["remainingBalance"], "98", "{paid}");
}
