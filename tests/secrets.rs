//! Secrets never reach a log or a `Debug` string.
//!
//! Every `tracing` event of the process (all levels down to TRACE, `log` records of the
//! dependencies included) is captured while a full paid flow runs over real HTTP: a
//! 402, paid 200s in both forms, a paying client that mints and re-mints, refused
//! tokens, an API key sent as a token, failed settlements, a facilitator that drops
//! the connection and one that is not there. Then no access token, no API key (the
//! builder's or the subscriber's), no JWT part of one, and no token signature may
//! appear in the captured output or in the answers; tokens appear as `tok:…` hashes.
//! `Debug` of every type that holds a secret is checked the same way. LLM calls through
//! the observability gateway and manual logs (sent, refused, unreachable) leak neither
//! the gateway key (the `o11y` claim) nor the provider's key.

use std::io::Write;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use actix_web::{HttpResponse, post, web};
use nvm_runtime::__private::backend::ApiKey;
use nvm_runtime::__private::backend::Facilitator;
use nvm_runtime::__private::local::GatewayEndpoint;
use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
use nvm_runtime::__private::wire::AccessTokenExt as _;
use nvm_runtime::__private::wire::{FacilitatorRequest, PermissionsResponse};
use nvm_runtime::client::{PayingClient, Subscriber};
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::observability::LlmCall;
use nvm_runtime::wire::AccessToken;
use nvm_runtime::{PaymentContext, PaymentMiddleware, Payments, RouteConfig, paid};
use nvm_tests::{DEMO_AGENT_ID, DEMO_PLAN_ID, TestServer, http, payments_for, serve};

/// Everything written by the global subscriber.
static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURED.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber once for the whole process (server threads
/// included), at TRACE, with `log` records forwarded.
fn capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| Capture)
            .with_target(true)
            .try_init()
            .expect("the only subscriber of this test binary");
    });
}

fn captured() -> String {
    String::from_utf8_lossy(&CAPTURED.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
}

/// The capture once `landed` holds of it (the lines the checks wait for are written),
/// or after 5 s (the checks then say what is missing).
async fn captured_once(landed: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = captured();
        if landed(&log) || std::time::Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The forms a secret may leak in: whole, and the parts that identify it.
fn forms_of(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned()];
    // An API key `<prefix>:<header>.<payload>.<signature>`: the JWT, its claims and its
    // signature (the header segment is the same in every HS256 JWT: not a secret).
    if let Some((_, jwt)) = secret.split_once(':') {
        forms.push(jwt.to_owned());
        forms.extend(jwt.split('.').skip(1).filter(|s| s.len() >= 16).map(str::to_owned));
    }
    // A token: its signature, as hex and as the base64 characters that carry it.
    if let Ok(payload) = AccessToken::new(secret).decode() {
        let signature = payload.payload.signature.clone();
        let json = nvm_runtime::__private::wire::codec::decode_base64(secret).unwrap_or_default();
        let start = json.windows(signature.len()).position(|w| w == signature.as_bytes());
        if let Some(start) = start.filter(|_| signature.len() >= 16) {
            let (from, to) = (start.div_ceil(3) * 4, (start + signature.len()) / 3 * 4);
            forms.push(secret[from..to].to_owned());
        }
        forms.push(signature);
    }
    forms
}

#[track_caller]
fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        for form in forms_of(secret) {
            assert!(!text.contains(&form), "{what} contains a secret ({}…)", &form[..form.len().min(12)]);
        }
    }
}

#[post("/paid")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1)]
async fn paid_content(payment: PaymentContext) -> HttpResponse {
    let shown = format!("{payment:?}");
    tracing::info!(context = %shown, "inside the paid handler");
    HttpResponse::Ok().body(shown)
}

async fn middleware_content(payment: PaymentContext) -> HttpResponse {
    let shown = format!("{payment:?}");
    tracing::trace!(context = ?payment, "inside the middleware route");
    HttpResponse::Ok().body(shown)
}

fn server_for(payments: Payments) -> TestServer {
    let table = payments.clone();
    serve(Some(payments), move |cfg: &mut web::ServiceConfig| {
        let middleware = PaymentMiddleware::new(table.clone())
            .route("POST /mw/content", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(1));
        cfg.service(paid_content).service(
            web::scope("/mw").wrap(middleware).route("/content", web::post().to(middleware_content)),
        );
    })
}

/// Sends `token` (if any) to `path`, returns the status and everything the client sees.
async fn call(server: &TestServer, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = http().post(server.at(path));
    if let Some(token) = token {
        request = request.header("payment-signature", token);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let headers = format!("{:?}", response.headers());
    let body = response.text().await.expect("a body");
    (status, format!("{headers}\n{body}"))
}

#[actix_web::test]
async fn a_full_paid_flow_logs_no_secret_even_at_trace() {
    capture();
    let local = LocalFacilitator::start().expect("local facilitator");
    let payments = payments_for(&local).timeout(Duration::from_millis(500)).build().expect("payments");
    let server = server_for(payments);
    let mut secrets = vec![local.builder_api_key().to_owned(), local.subscriber_api_key().to_owned()];
    let mut answers = Vec::new();
    let mut expect = |answer: (u16, String), status: u16, what: &str| {
        assert_eq!(answer.0, status, "{what}: {}", answer.1);
        answers.push(answer.1);
    };

    // 402 without a token; paid 200 in both forms.
    expect(call(&server, "/paid", None).await, 402, "no token");
    let token = local.mint_token(MintOptions::new());
    secrets.push(token.clone());
    expect(call(&server, "/paid", Some(&token)).await, 200, "paid, macro");
    expect(call(&server, "/mw/content", Some(&token)).await, 200, "paid, middleware");

    // Refused tokens: expired, altered, an API key sent as a token.
    let expired = local.mint_token(MintOptions::new().valid_before(1));
    let mut altered = AccessToken::new(token.as_str()).decode().expect("decodes");
    altered.payload.authorization.from = "0x00000000000000000000000000000000000000ff".into();
    let altered = altered.to_token().as_str().to_owned();
    secrets.extend([expired.clone(), altered.clone()]);
    expect(call(&server, "/paid", Some(&expired)).await, 402, "expired");
    expect(call(&server, "/mw/content", Some(&altered)).await, 402, "altered");
    expect(call(&server, "/paid", Some(local.subscriber_api_key())).await, 402, "a key as a token");

    // Failed settlements: refused, then a facilitator error.
    local.inject(Endpoint::Settle, Fault::SettleFailure("insufficient_balance".into()));
    expect(call(&server, "/paid", Some(&token)).await, 402, "settle refused");
    local.inject(Endpoint::Settle, Fault::Status(500));
    expect(call(&server, "/mw/content", Some(&token)).await, 402, "settle failed");
    local.inject(Endpoint::Settle, Fault::TruncatedJson);
    expect(call(&server, "/paid", Some(&token)).await, 402, "settle garbage");
    local.clear_faults();

    // The facilitator drops the connection, hangs, or is not there at all.
    local.inject(Endpoint::Verify, Fault::Disconnect);
    expect(call(&server, "/paid", Some(&token)).await, 500, "verify disconnected");
    local.inject(Endpoint::Verify, Fault::Hang);
    expect(call(&server, "/mw/content", Some(&token)).await, 500, "verify hung");
    local.clear_faults();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let down = server_for(payments_for(&local).backend_url(dead_url).build().expect("payments"));
    expect(call(&down, "/paid", Some(&token)).await, 500, "facilitator down");

    // The buyer's side: a paying client mints over HTTP, pays, and re-mints when its
    // cached token is refused.
    let subscriber = Subscriber::builder()
        .api_key(local.subscriber_api_key())
        .backend_url(local.backend_url())
        .build()
        .expect("subscriber config");
    let client = PayingClient::new(subscriber);
    let paid = client.send(client.http().post(server.at("/paid"))).await.expect("pays");
    assert_eq!(paid.response.status(), 200);
    let minted = client
        .subscriber()
        .token_for(
            &nvm_runtime::__private::wire::EnvelopeBuilder::new(DEMO_PLAN_ID, "eip155:84532").build().accepts
                [0],
        )
        .await
        .expect("a token");
    secrets.push(minted.as_str().to_owned());
    local.set_balance(DEMO_PLAN_ID, local.subscriber_address(), 0);
    let refused = client.send(client.http().post(server.at("/mw/content"))).await.expect("answers");
    assert_eq!(refused.response.status(), 402);
    answers.push(format!("{paid:?}\n{refused:?}"));

    // Look once the last request's own line has landed (the refusal at verify): every
    // line before it is in the capture.
    let log = captured_once(|log| {
        log.contains("inside the paid handler")
            && (log.contains("payment refused by the facilitator") || log.contains("verify refused"))
    })
    .await;
    assert!(log.contains("TRACE") && log.contains("DEBUG"), "the capture sees every level");
    assert!(log.contains("tok:"), "tokens are logged as hashes");
    assert!(log.contains("inside the paid handler"), "the handler's own event is captured");
    assert_clean("the log", &log, &secrets);
    for answer in &answers {
        assert_clean("an answer", answer, &secrets);
    }
    // The handler's `PaymentContext` shows the token as its hash.
    assert!(answers.iter().any(|a| a.contains("PaymentContext") && a.contains("tok:")), "{answers:?}");
    let mut targets: Vec<&str> = log
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter(|word| word.ends_with(':'))
        .map(|word| word.split("::").next().unwrap_or(word).trim_end_matches(':'))
        .collect();
    targets.sort_unstable();
    targets.dedup();
    eprintln!(
        "captured {} log lines ({} bytes) from {targets:?}, {} answers, {} secrets checked",
        log.lines().count(),
        log.len(),
        answers.len(),
        secrets.len()
    );
}

#[actix_web::test]
async fn debug_of_every_type_holding_a_secret_redacts_it() {
    capture();
    let local = LocalFacilitator::start().expect("local facilitator");
    let token = local.mint_token(MintOptions::new());
    let secrets = [local.builder_api_key().to_owned(), local.subscriber_api_key().to_owned(), token.clone()];
    let builder = Payments::builder().api_key(local.builder_api_key()).backend_url(local.backend_url());
    let builder_debug = format!("{builder:?}");
    let payments = builder.build().expect("payments");
    let key: ApiKey = local.builder_api_key().parse().expect("key");
    let facilitator = Facilitator::new(local.backend_url(), &key, Duration::from_secs(1)).expect("client");
    let payload = AccessToken::new(token.as_str()).decode().expect("decodes");
    let request = FacilitatorRequest {
        payment_required: nvm_runtime::__private::wire::EnvelopeBuilder::new(DEMO_PLAN_ID, "eip155:84532")
            .build(),
        x402_access_token: token.clone(),
        max_amount: None,
        agent_request_id: None,
    };
    let minted: PermissionsResponse =
        serde_json::from_value(serde_json::json!({ "accessToken": token })).expect("a permissions answer");
    let subscriber = Subscriber::builder()
        .api_key(local.subscriber_api_key())
        .backend_url(local.backend_url())
        .build()
        .expect("subscriber config");
    let middleware =
        PaymentMiddleware::new(payments.clone()).route("POST /ask", RouteConfig::new(DEMO_PLAN_ID));
    let debugs = [
        ("Payments", format!("{payments:?}")),
        ("Payments (alternate)", format!("{payments:#?}")),
        ("PaymentsBuilder", builder_debug),
        ("ApiKey", format!("{key:?}")),
        ("Facilitator", format!("{facilitator:?}")),
        ("AccessToken", format!("{:?}", AccessToken::new(token.as_str()))),
        ("AccessToken (Display)", format!("{}", AccessToken::new(token.as_str()))),
        ("PaymentPayload", format!("{payload:?}")),
        ("FacilitatorRequest", format!("{request:?}")),
        ("PermissionsResponse", format!("{minted:?}")),
        ("LocalFacilitator", format!("{local:?}")),
        ("LocalInfo", format!("{:?}", local.info())),
        ("LocalInfo (alternate)", format!("{:#?}", local.info())),
        ("Subscriber", format!("{subscriber:?}")),
        ("PayingClient", format!("{:?}", PayingClient::new(subscriber))),
        ("PaymentMiddleware", format!("{middleware:?}")),
    ];
    for (what, debug) in &debugs {
        assert_clean(what, debug, &secrets);
    }
    assert!(debugs[5].1.contains("tok:"), "{}", debugs[5].1);
}

/// The LLM observability gateway: its key (the `o11y` claim) and the provider's key.
const OPENAI_KEY: &str = "sk-test-provider-secret-0123456789";

#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 20)]
#[post("/llm")]
async fn llm(payment: PaymentContext) -> HttpResponse {
    let Ok(gateway) = payment.observability() else {
        return HttpResponse::InternalServerError().finish();
    };
    tracing::info!(gateway = ?gateway, "calling the LLM through the gateway");
    let answer = http()
        .post(gateway.chat_completions_url())
        .headers(gateway.headers().clone())
        .bearer_auth(OPENAI_KEY)
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    let status = answer.map_or(0, |a| a.status().as_u16());
    let call = LlmCall::new("m", serde_json::json!("hi")).output(serde_json::json!("hello")).usage(1, 1);
    let outcome = gateway.log(call).await;
    tracing::info!(?outcome, status, "logged");
    HttpResponse::Ok().body(format!("{gateway:?} {outcome:?}"))
}

#[actix_web::test]
async fn llm_gateway_calls_and_logs_show_no_key() {
    capture();
    let local = LocalFacilitator::start().expect("local facilitator");
    let o11y =
        ApiKey::from_str(local.builder_api_key()).expect("key").observability_key().expect("o11y").to_owned();
    let routes = |cfg: &mut web::ServiceConfig| {
        cfg.service(llm);
    };
    let server = serve(Some(payments_for(&local).build().expect("payments")), routes);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let down = serve(Some(payments_for(&local).helicone_url(dead_url).build().expect("payments")), routes);
    let token = local.mint_token(MintOptions::new());
    let mut answers = Vec::new();
    let (status, answer) = call(&server, "/llm", Some(&token)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("Sent"), "{answer}");
    answers.push(answer);
    local.inject_gateway(GatewayEndpoint::Log, Fault::Status(500));
    let (status, answer) = call(&server, "/llm", Some(&token)).await;
    assert!(status == 200 && answer.contains("Failed"), "{answer}");
    answers.push(answer);
    let (status, answer) = call(&down, "/llm", Some(&token)).await;
    assert!(status == 200 && answer.contains("Failed"), "{answer}");
    answers.push(answer);
    let calls = local.gateway_calls();
    assert_eq!(calls.len(), 4, "two chats, two logs reached the stand-in");
    answers.push(format!("{calls:?}"));

    let log = captured_once(|log| {
        log.contains("calling the LLM through the gateway") && log.contains("could not be logged")
    })
    .await;
    assert!(log.contains("calling the LLM through the gateway"), "the handler's event is captured");
    assert!(log.contains("could not be logged"), "the failed logs are reported");
    let secrets = [
        o11y,
        OPENAI_KEY.to_owned(),
        token,
        local.builder_api_key().to_owned(),
        local.subscriber_api_key().to_owned(),
    ];
    assert_clean("the log", &log, &secrets);
    for answer in &answers {
        assert_clean("an answer (Debug of Observability, GatewayCall)", answer, &secrets);
    }
}
