//! Shared helpers of the behaviour tests: a local facilitator, a configured
//! `Payments`, an actix server on loopback, a subscriber that mints tokens, and a
//! counter that tells whether a handler body ran.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::web::ServiceConfig;
use actix_web::{App, HttpServer, web};
use nvm_runtime::client::{Subscriber, TokenOptions};
use nvm_runtime::local::{Endpoint, LocalFacilitator};
use nvm_runtime::wire::SettleResponse;
use nvm_runtime::{Payments, PaymentsBuilder};

pub use nvm_runtime::local::{DEMO_AGENT_ID, DEMO_PLAN_ID};

/// Counts how many times handler bodies ran; registered as app data per server.
#[derive(Debug, Default, Clone)]
pub struct Runs(Arc<AtomicUsize>);

impl Runs {
    /// Records one run.
    pub fn hit(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Runs so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A `Payments` builder aimed at `local` with the builder's key and a short timeout.
pub fn payments_for(local: &LocalFacilitator) -> PaymentsBuilder {
    Payments::builder()
        .api_key(local.builder_api_key())
        .backend_url(local.backend_url())
        .timeout(Duration::from_secs(3))
}

/// An actix server on 127.0.0.1 (any free port), stopped when dropped.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Handler runs.
    pub runs: Runs,
    handle: ServerHandle,
}

impl TestServer {
    /// The URL of `path` on this server.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Sends the stop command; the server's task ends on its own.
        drop(self.handle.stop(false));
    }
}

/// Starts an app with `payments` and `configure` on the current actix runtime.
pub fn serve<F>(payments: Option<Payments>, configure: F) -> TestServer
where
    F: Fn(&mut ServiceConfig) + Send + Clone + 'static,
{
    let runs = Runs::default();
    let app_runs = runs.clone();
    let server = HttpServer::new(move || {
        let mut app = App::new().app_data(web::Data::new(app_runs.clone()));
        if let Some(payments) = &payments {
            app = app.app_data(payments.clone());
        }
        app.configure(configure.clone())
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("bind 127.0.0.1:0");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    TestServer { url: format!("http://{addr}"), runs, handle }
}

/// Mints an access token for the demo plan and agent with the demo subscriber's key,
/// over HTTP, as a buyer would.
pub async fn mint(local: &LocalFacilitator) -> String {
    mint_with(local, local.subscriber_api_key(), DEMO_PLAN_ID, Some(DEMO_AGENT_ID), None).await
}

/// Mints an access token with any key, plan, agent and token version.
pub async fn mint_with(
    local: &LocalFacilitator,
    subscriber_key: &str,
    plan_id: &str,
    agent_id: Option<&str>,
    version: Option<u8>,
) -> String {
    let subscriber = Subscriber::builder()
        .api_key(subscriber_key)
        .backend_url(local.backend_url())
        .timeout(Duration::from_secs(3))
        .build()
        .expect("subscriber config");
    let mut envelope = nvm_runtime::__private::wire::EnvelopeBuilder::new(plan_id, "eip155:84532");
    if let Some(agent) = agent_id {
        envelope = envelope.agent_id(agent);
    }
    let mut options = TokenOptions::default();
    options.token_version = version;
    let token = subscriber.mint(&envelope.build().accepts[0], &options).await.expect("mint");
    token.as_str().to_owned()
}

/// An HTTP client for the tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client")
}

/// Decodes the `payment-response` receipt of a response, if it has one.
pub fn receipt(response: &reqwest::Response) -> Option<SettleResponse> {
    let value = response.headers().get("payment-response")?.to_str().ok()?;
    SettleResponse::from_header(value).ok()
}

/// A field of `receipt` that this crate's types do not name (`pendingSettlementId`,
/// `agentRequestId`, `settlement`, `amount`, `retryAfter`, `confirmedAfterUnknown`…), read
/// from its JSON form; `Null` when absent.
pub fn receipt_field(receipt: &SettleResponse, name: &str) -> serde_json::Value {
    serde_json::to_value(receipt).expect("a receipt is JSON")[name].take()
}

/// How many calls each endpoint of a local facilitator received, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    /// `POST /api/v1/x402/verify`.
    pub verify: u64,
    /// `POST /api/v1/x402/settle`.
    pub settle: u64,
    /// `POST /api/v1/x402/permissions`.
    pub permissions: u64,
    /// `GET /api/v1/protocol/plans/{id}`.
    pub plans: u64,
}

impl Calls {
    /// The counts of `local` now.
    pub fn of(local: &LocalFacilitator) -> Calls {
        Calls {
            verify: local.calls(Endpoint::Verify),
            settle: local.calls(Endpoint::Settle),
            permissions: local.calls(Endpoint::Permissions),
            plans: local.calls(Endpoint::Plans),
        }
    }
}

/// Decodes the `payment-required` envelope of a response, if it has one.
pub fn envelope(response: &reqwest::Response) -> Option<nvm_runtime::wire::PaymentRequired> {
    let value = response.headers().get("payment-required")?.to_str().ok()?;
    nvm_runtime::wire::PaymentRequired::from_header(value).ok()
}

/// A raw HTTP/1.1 answer, read to the end of the connection.
#[derive(Debug)]
pub struct RawAnswer(pub String);

impl RawAnswer {
    /// Writes `request` as it is (paths, encodings and framing untouched by any client)
    /// to `addr` and reads the answer until the server closes the connection; the
    /// request should say `Connection: close`.
    pub async fn exchange(addr: &str, request: &[u8]) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("write the request");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read the answer");
        RawAnswer(String::from_utf8_lossy(&answer).into_owned())
    }

    /// The status code of the first status line, 0 when there is none.
    pub fn status(&self) -> u16 {
        self.0.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// The value of header `name` (written lower-case by actix-web), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.0.lines().take_while(|line| !line.is_empty()).find_map(|line| line.strip_prefix(prefix.as_str()))
    }
}

/// The paid content of the two-form tests: it must never reach a client whose payment
/// was not settled.
pub const CONTENT: &str = "the paid content";

/// What the two-form tests charge.
pub const CREDITS: u64 = 2;

/// `POST /paid`: the `#[paid]` form of the two-form tests.
#[actix_web::post("/paid")]
#[nvm_runtime::paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2)]
pub async fn paid_content(runs: web::Data<Runs>) -> actix_web::HttpResponse {
    runs.hit();
    actix_web::HttpResponse::Ok().body(CONTENT)
}

/// The handler behind `POST /mw/content`, the middleware form of the two-form tests.
pub async fn middleware_content(runs: web::Data<Runs>) -> actix_web::HttpResponse {
    runs.hit();
    actix_web::HttpResponse::Ok().body(CONTENT)
}

/// The two ways to protect a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `#[paid]` on the handler: `POST /paid`.
    Macro,
    /// A `PaymentMiddleware` routes table: `POST /mw/content`.
    Middleware,
}

impl Form {
    /// Both forms.
    pub const BOTH: [Form; 2] = [Form::Macro, Form::Middleware];

    /// The path this form serves the paid content at.
    pub fn path(self) -> &'static str {
        match self {
            Form::Macro => "/paid",
            Form::Middleware => "/mw/content",
        }
    }
}

/// A real `redis-server` on a free loopback port, with no persistence, killed when
/// dropped. A test that needs one and cannot start it fails, saying how to install it.
pub struct RedisServer {
    child: Option<std::process::Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        Self::start_on(port)
    }

    /// Starts one on `port` (to bring a stopped one back where its clients look),
    /// installing `redis-server` from the distribution's packages first when it is
    /// missing.
    pub fn start_on(port: u16) -> Self {
        install_redis_once();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "redis-server could not be started ({error}): these tests need a real Redis; install it \
                     with `apt-get install -y redis-server` (.ci/run does)"
                )
            });
        let server = RedisServer { child: Some(child), port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !server.answers_ping() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer PING on port {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers `PING` now.
    pub fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// Kills it (its data is gone: it never persisted any).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Installs `redis-server` with `apt-get` when it is not on the `PATH` (once per test
/// process), saying so; a machine where that fails fails the test, loudly.
fn install_redis_once() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let present = std::process::Command::new("redis-server").arg("--version").output().is_ok();
        if present {
            return;
        }
        eprintln!("redis-server is missing: installing it from the distribution's packages (apt-get install -y redis-server)");
        let installed = std::process::Command::new("sh")
            .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server"])
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            installed,
            "redis-server is missing and `apt-get install -y redis-server` failed: install Redis 6 or later \
             (its `redis-server` on the PATH) to run the idempotency tests"
        );
    });
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A stream of the items of `items`, each ready at once (a handler's streamed body).
pub fn ready_stream<I: IntoIterator>(items: I) -> impl futures_core::Stream<Item = I::Item>
where
    I::IntoIter: Unpin,
{
    struct Ready<I>(I);
    impl<I: Iterator + Unpin> futures_core::Stream for Ready<I> {
        type Item = I::Item;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<I::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Ready(items.into_iter())
}

/// A `PayingClient` paying with `local`'s demo subscriber.
pub fn paying_client(local: &LocalFacilitator) -> nvm_runtime::client::PayingClient {
    let subscriber = Subscriber::builder()
        .api_key(local.subscriber_api_key())
        .backend_url(local.backend_url())
        .build()
        .expect("subscriber config");
    nvm_runtime::client::PayingClient::new(subscriber)
}

/// What a test's log subscriber wrote, shared with it as its writer
/// (`.with_writer(move || captured.clone())`), to read the lines back.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything written so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
