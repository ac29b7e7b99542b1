//! What `#[paid]` costs, measured side by side on loopback.
//!
//! ```text
//! cargo run --release -p nvm-examples --example bench            # ~4 minutes
//! cargo run --release -p nvm-examples --example bench -- --quick # a few seconds (CI smoke)
//! cargo run --release -p nvm-examples --example bench -- --latency-ms 100
//! cargo run --release -p nvm-examples --example bench -- --help
//! ```
//!
//! One run starts the local facilitator and four servers with the same trivial handler
//! (`GET /work` answering `ok`):
//!
//! - `plain`: no payment at all;
//! - `handwritten`: the five steps of the generic HTTP integration written by hand in the
//!   handler (envelope, header, verify, run, settle + receipt) with the same
//!   [`Facilitator`] client: the baseline a careful user writes without the macro;
//! - `paid`: `#[paid(plan = DEMO_PLAN_ID, credits = 1)]`;
//! - `paid+cache`: the same handler with a 30 s verification cache.
//!
//! A built-in load generator drives each server in turn (ABCD ABCD …) with the same number
//! of keep-alive HTTP/1.1 connections, and the medians over rounds are printed with the
//! ratios. Every paid response must be a 200 with a `payment-response` receipt; anything
//! else is counted as an error, and the run exits with 1 when there is any, when a plan
//! metadata fetch happens after warm-up, when the cache does not save its verify calls
//! (more than 1.05 facilitator calls per request with `paid+cache`), or when a paid
//! server reaches less than 0.9 of its latency limit (below; not in a `--quick` run,
//! whose debug figures mean nothing). The throughput ratios are reported, not judged:
//! on a shared machine they move from run to run.
//!
//! A second section follows with the facilitator's answers delayed by `--latency-ms`
//! (default 40 ms, 0 skips it; [`LocalFacilitator::set_latency`]), as the round trip to
//! the hosted backend delays them: `handwritten`, `paid` and `paid+cache` again, 6 rounds
//! of 1 s (quick: 1 of 0.4 s). There the facilitator's latency, not CPU, bounds a server:
//! each of the C closed-loop connections waits its requests' facilitator round trips one
//! after another, so
//!
//! ```text
//! limit = C / (round trips x latency) req/s
//!   round trips = 2 for handwritten and paid (verify, then settle)
//!               = 1 for paid+cache (a cached verification skips verify; settle is never
//!                 cached: every request burns its credits)
//! ```
//!
//! (16 connections at 40 ms: 200 req/s for `paid`, 400 for `paid+cache`), and the bench
//! reports each server's median req/s as a fraction of its limit (target >= 0.9). The
//! latency is a minimum: a delayed answer comes on the timer's next millisecond tick (one
//! call at 40 ms takes about 41.6 ms), so about 0.96 is the ceiling; the connections moving
//! in step, queuing for the 2 cores at every hop, take a little more.
//!
//! A third section measures idempotent paid calls ([`Idempotency`]; `--no-idempotency`
//! skips it), with four more servers of the same `#[paid]` handler, each with 1 worker:
//!
//! - `paid+nostore`: [`Idempotency::disabled`], the baseline;
//! - `paid+memory`: [`Idempotency::in_memory`], a distinct `idempotency-key` on every
//!   request (`CONNECTION:COUNTER`), so every request is run, settled and stored;
//! - `paid+redis`: the same with a [`RedisStore`] on a `redis-server` the bench starts on
//!   a free loopback port (it fails, exit 2, when `redis-server` cannot be started:
//!   `apt-get install -y redis-server`);
//! - `replay`: [`Idempotency::in_memory`] and the same key on every request: after the
//!   first (sent before the warm-up), each is answered from the store
//!   (`idempotent-replayed: true`, the original receipt) with no facilitator call.
//!
//! It reports paid+memory and paid+redis throughput as ratios to paid+nostore (side by
//! side in the same rounds), and the cost of a replay: its req/s, latency and CPU per
//! request against paid+nostore, and its facilitator calls per request, asserted 0. 10
//! rounds of 0.5 s (quick: 1 of 0.3 s); `--only paid+nostore,paid+memory,paid+redis,replay`
//! runs this section alone.
//!
//! A fourth section measures paid MCP tools (`--no-mcp` skips it). One more server, with 1
//! worker: one actix-web app serving an rmcp tool server through [`McpService`] at `/mcp`
//! and the `#[paid]` handler at `GET /work`, on one [`Payments`], driven as three scenarios
//! side by side:
//!
//! - `tool-paid`: `tools/call` of a tool with `#[paid(plan = DEMO_PLAN_ID, credits = 1)]`
//!   above rmcp's `#[tool]`, the payment in `_meta["x402/payment"]` (a reusable token minted
//!   once per session, sent decoded);
//! - `tool-unpaid`: the same tool body under a plain `#[tool]`, no payment;
//! - `route-paid`: `GET /work`, the paid HTTP route of the same app (the first section's
//!   client).
//!
//! Each MCP client is a session on its own keep-alive HTTP/1.1 connection: `initialize` and
//! `notifications/initialized` once, before the window; then its calls one after another,
//! each answered as an SSE stream read to its end; its `DELETE` after the window. The local
//! facilitator's counters are read around each window: exactly 1 verify and 1 settle per
//! paid call (`tool-paid`, `route-paid`) and none for `tool-unpaid`, asserted. It runs on
//! loopback (10 rounds of 0.5 s; quick: 1 of 0.3 s), then with the facilitator's answers
//! delayed `--latency-ms` (the second section's rounds, limit and fraction of it);
//! `--only tool-paid,tool-unpaid,route-paid` runs this section alone.
//!
//! A fifth section measures the pending-settlement journal ([`PendingSettlements`];
//! `--no-journal` skips it). A durable journal writes every settlement down ahead of its
//! settle call and forgets it once answered: two writes on the path of every paid call.
//! Three more servers of the same `#[paid]` handler, each with 1 worker and
//! [`Idempotency::disabled`], so that only the journal differs:
//!
//! - `journal-memory`: [`PendingSettlements::in_memory`], which writes nothing ahead: the
//!   baseline;
//! - `journal-file`: [`PendingSettlements::file`] in a temporary directory (removed after
//!   the run): JSON lines, one writer thread, the lines of concurrent calls sharing one
//!   `fdatasync`;
//! - `journal-redis`: [`PendingSettlements::redis`], a [`RedisStore`] on the `redis-server`
//!   the bench starts (the third section's).
//!
//! It runs on loopback (10 rounds of 0.5 s; quick: 1 of 0.3 s), then with the facilitator's
//! answers delayed `--latency-ms` (the second section's rounds, limit and fraction of it),
//! and reports journal-file and journal-redis as ratios to journal-memory (side by side in
//! the same rounds) at both. Then it asserts that the journals were written and emptied:
//! every `settling` line of the file has its `done` line, and the Redis journal holds no
//! record. `--only journal-memory,journal-file,journal-redis` runs this section alone.
//!
//! A sixth section measures deferred settlement ([`DeferredSettlement`]; `--no-deferred`
//! skips it): the answer goes out at once with a pending receipt (`success: false`,
//! `errorReason: "settlement_pending"`, `settlement: "deferred"`) and the settle call runs in
//! the background. Two more servers of the same `#[paid]` handler, each with 1 worker and a
//! file journal of its own in the fifth section's directory (a deferred settlement is
//! written down ahead of its answer), with `DeferredSettlement::new().everywhere()`:
//!
//! - `deferred`: a verify per call, its settle call in the background;
//! - `deferred+cache`: the same with a 30 s verification cache: a returning buyer waits for
//!   no facilitator call.
//!
//! Their bounds (`max_exposure` 1,000,000 credits, `max_in_flight` 8,192 settle calls) are
//! above what a run reaches (at R req/s with the facilitator L away, R x L credits and
//! settle calls are in flight), so that every call is deferred: a settled receipt there is
//! an error. They are driven side by side with `plain`, `paid` and `paid+cache` (the first
//! section's servers) with the facilitator's answers delayed by each of
//! `--deferred-latencies-ms` in turn (default 40 and 400 ms), 6 rounds of 1 s at each (quick:
//! 1 of 0.4 s), after a warm-up per server. `deferred+cache` is driven before `deferred`: the
//! settle calls its window leaves in flight land in `deferred`'s window (which waits its
//! verify: the latency bounds it, not CPU), not in plain's. The report gives each server's
//! median req/s as a multiple of synchronous `paid`'s limit (C / (2 x latency)), its p50 and
//! p99, its p50 minus plain's, its facilitator calls per request (a deferred window's last
//! settle calls land in the next window: reported, not asserted) and the cores the whole
//! process kept busy. Under that load every server is saturated, and its p50 is mostly its
//! queue (C connections / its req/s): the time a call spends on the response path is then
//! measured apart, `plain` and `deferred+cache` side by side again with one connection (no
//! queue), the same rounds. The goal: with `deferred+cache`, p50 within 1 ms of plain's on
//! one connection, and the throughput bound by its own work, not latency (at least 10 x
//! synchronous `paid`'s limit with C connections; the cores the process kept busy are
//! reported beside it), at every latency; a full run missing it fails (not a `--quick`
//! one). Then each deferring server is drained (at most 30 s, none left asserted), its
//! journal holds no settlement of unknown outcome, and its file as many `done` lines as
//! deferred settlements written down, none open and none settled synchronously.
//! `--only plain,paid,paid+cache,deferred,deferred+cache --no-idempotency --no-mcp
//! --no-journal` runs the first two sections and this one.

use std::fmt::Write as _;
use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use nvm_runtime::__private::backend::Facilitator;
use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
use nvm_runtime::__private::wire::EnvelopeBuilder;
use nvm_runtime::__private::wire::FacilitatorRequest;
use nvm_runtime::local::{DEMO_PLAN_ID, Endpoint, LocalFacilitator};
use nvm_runtime::mcp::McpService;
use nvm_runtime::store::RedisStore;
use nvm_runtime::wire::{Amount, SettleResponse};
use nvm_runtime::{DeferredSettlement, Idempotency, Payments, PendingSettlements, paid};
use rmcp::handler::server::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use tokio::net::TcpStream;

/// The network of the local facilitator's demo plan (a crypto plan on Base Sepolia).
const NETWORK: &str = "eip155:84532";
/// The bound on one request of the load generator.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on a connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The subscriber's balance: enough for any run.
const BALANCE: u64 = 1 << 60;
/// The key prefix of the fifth section's Redis journal (its records: `bench-journal:pending`),
/// apart from the keys of the third section's store (`nvm:`).
const JOURNAL_PREFIX: &str = "bench-journal:";
/// The sixth section's bound on the credits a payer may have delivered and not yet settled:
/// above what any run leaves unsettled (R x L, at R req/s with the facilitator L away), so
/// that every call is deferred.
const DEFERRED_EXPOSURE: u64 = 1_000_000;
/// The sixth section's bound on the deferred settle calls in flight at once: above R x L
/// too.
const DEFERRED_IN_FLIGHT: usize = 8_192;
/// How long the sixth section waits for the deferred settlements still in flight after it.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// The sixth section's goal: `deferred+cache`'s p50 at most this far above plain's (ms).
const DEFERRED_P50_GAP_MS: f64 = 1.0;
/// The sixth section's goal: `deferred+cache`'s req/s at least this multiple of the limit
/// the facilitator's latency sets for synchronous `paid` (C / (2 x latency)) at every
/// latency: a server bound by that latency stays at about 1 (2 with the cache), one bound
/// by its own work is far above it. (The cores the process keeps busy are reported beside
/// it, not judged: on a shared 2-core machine they move by a tenth from run to run, and a
/// file journal's `fdatasync` leaves them idle while it waits for the disk.)
const DEFERRED_MULTIPLE: f64 = 10.0;

// ---------------------------------------------------------------------------------------
// The handlers: the same body for every server.

/// The work every server does.
async fn work() -> &'static str {
    "ok"
}

/// `plain`: no payment.
async fn plain() -> &'static str {
    work().await
}

/// Every paying server but `handwritten`: the macro (they differ by their `Payments`).
#[paid(plan = DEMO_PLAN_ID, credits = 1)]
async fn paid_work() -> &'static str {
    work().await
}

/// `handwritten`: the generic HTTP integration, step by step, as a careful user writes it
/// with the crate's facilitator client.
async fn handwritten(req: HttpRequest, facilitator: web::Data<Facilitator>) -> HttpResponse {
    // 1. The envelope of this resource.
    let envelope =
        EnvelopeBuilder::new(DEMO_PLAN_ID, NETWORK).url(req.path()).http_verb(req.method().as_str()).build();
    // 2. The token, or a 402 advertising the envelope.
    let token = match req.headers().get("payment-signature").and_then(|v| v.to_str().ok()) {
        Some(token) if !token.is_empty() => token.to_owned(),
        _ => {
            return HttpResponse::PaymentRequired()
                .insert_header(("payment-required", envelope.to_header()))
                .json(serde_json::json!({"error": "Payment Required"}));
        }
    };
    // 3. Verify.
    let mut request = FacilitatorRequest {
        payment_required: envelope,
        x402_access_token: token,
        max_amount: Some(Amount::from(1)),
        agent_request_id: None,
    };
    let verification = match facilitator.verify(&request).await {
        Ok(v) if v.is_valid => v,
        Ok(v) => {
            return HttpResponse::PaymentRequired()
                .insert_header(("payment-required", request.payment_required.to_header()))
                .json(serde_json::json!({"error": "Payment Required", "message": v.invalid_reason}));
        }
        Err(e) => return HttpResponse::InternalServerError().body(e.to_string()),
    };
    // 4. Run the handler.
    let body = work().await;
    // 5. Settle, and attach the receipt.
    request.agent_request_id = verification.request_id().map(str::to_owned);
    match facilitator.settle(&request).await {
        Ok(receipt) if receipt.success => {
            let mut response = HttpResponse::Ok().body(body);
            if let Ok(value) = HeaderValue::try_from(receipt.to_header()) {
                response.headers_mut().insert(HeaderName::from_static("payment-response"), value);
            }
            response
        }
        Ok(receipt) => HttpResponse::PaymentRequired()
            .insert_header(("payment-response", receipt.to_header()))
            .json(serde_json::json!({"error": "Payment Required", "message": receipt.error_reason})),
        Err(e) => HttpResponse::PaymentRequired().body(e.to_string()),
    }
}

/// The arguments of both MCP tools.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Query {
    /// Anything.
    #[expect(dead_code, reason = "parsed, as a tool's arguments are, and not used")]
    query: String,
}

/// The MCP section's tool server: the same body as a paid and as an unpaid tool.
#[derive(Clone)]
struct BenchTools {
    tool_router: ToolRouter<BenchTools>,
}

#[tool_router]
impl BenchTools {
    /// `tool-paid`: 1 credit a call.
    #[paid(plan = DEMO_PLAN_ID, credits = 1)]
    #[tool]
    async fn paid_tool(&self, Parameters(_query): Parameters<Query>) -> String {
        work().await.to_owned()
    }

    /// `tool-unpaid`: no payment.
    #[tool]
    async fn free_tool(&self, Parameters(_query): Parameters<Query>) -> String {
        work().await.to_owned()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for BenchTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

// ---------------------------------------------------------------------------------------
// Settings.

#[derive(Debug, Clone)]
struct Settings {
    duration: Duration,
    warmup: Duration,
    connections: usize,
    rounds: usize,
    quick: bool,
    /// The servers to drive (all by default); `--only paid,handwritten` for profiling.
    only: Vec<Kind>,
    /// The facilitator's latency in the second section (zero: no second section).
    latency: Duration,
    /// The second section's rounds, window and warm-up per server.
    latency_rounds: usize,
    latency_duration: Duration,
    latency_warmup: Duration,
    /// The third section (idempotency), unless `--no-idempotency`: its rounds, window and
    /// warm-up per server.
    idempotency: bool,
    idempotency_rounds: usize,
    idempotency_duration: Duration,
    idempotency_warmup: Duration,
    /// The fourth section (MCP tools), unless `--no-mcp`: its rounds, window and warm-up
    /// per scenario on loopback (with the latency, the second section's).
    mcp: bool,
    mcp_rounds: usize,
    mcp_duration: Duration,
    mcp_warmup: Duration,
    /// The fifth section (the pending-settlement journal), unless `--no-journal`: its
    /// rounds, window and warm-up per server on loopback (with the latency, the second
    /// section's).
    journal: bool,
    journal_rounds: usize,
    journal_duration: Duration,
    journal_warmup: Duration,
    /// The sixth section (deferred settlement), unless `--no-deferred`: the facilitator's
    /// latencies it runs with, one after the other, and its rounds, window and warm-up per
    /// server at each.
    deferred: bool,
    deferred_latencies: Vec<Duration>,
    deferred_rounds: usize,
    deferred_duration: Duration,
    deferred_warmup: Duration,
    /// `--metrics-recorder`: a Prometheus recorder installed for the whole run, to
    /// measure what the payment metrics cost when something records them.
    metrics_recorder: bool,
}

impl Settings {
    fn default_run() -> Self {
        Settings {
            duration: Duration::from_millis(500),
            warmup: Duration::from_secs(1),
            connections: 16,
            rounds: 30,
            quick: false,
            only: Kind::ALL.to_vec(),
            latency: Duration::from_millis(40),
            latency_rounds: 6,
            latency_duration: Duration::from_secs(1),
            latency_warmup: Duration::from_millis(500),
            idempotency: true,
            idempotency_rounds: 10,
            idempotency_duration: Duration::from_millis(500),
            idempotency_warmup: Duration::from_millis(500),
            mcp: true,
            mcp_rounds: 10,
            mcp_duration: Duration::from_millis(500),
            mcp_warmup: Duration::from_millis(500),
            journal: true,
            journal_rounds: 10,
            journal_duration: Duration::from_millis(500),
            journal_warmup: Duration::from_millis(500),
            deferred: true,
            deferred_latencies: vec![Duration::from_millis(40), Duration::from_millis(400)],
            deferred_rounds: 6,
            deferred_duration: Duration::from_secs(1),
            deferred_warmup: Duration::from_millis(500),
            metrics_recorder: false,
        }
    }

    fn quick() -> Self {
        Settings {
            duration: Duration::from_millis(400),
            warmup: Duration::from_millis(200),
            connections: 8,
            rounds: 2,
            quick: true,
            only: Kind::ALL.to_vec(),
            latency: Duration::from_millis(40),
            latency_rounds: 1,
            latency_duration: Duration::from_millis(400),
            latency_warmup: Duration::from_millis(200),
            idempotency: true,
            idempotency_rounds: 1,
            idempotency_duration: Duration::from_millis(300),
            idempotency_warmup: Duration::from_millis(200),
            mcp: true,
            mcp_rounds: 1,
            mcp_duration: Duration::from_millis(300),
            mcp_warmup: Duration::from_millis(200),
            journal: true,
            journal_rounds: 1,
            journal_duration: Duration::from_millis(300),
            journal_warmup: Duration::from_millis(200),
            deferred: true,
            deferred_latencies: vec![Duration::from_millis(40), Duration::from_millis(400)],
            deferred_rounds: 1,
            deferred_duration: Duration::from_millis(400),
            deferred_warmup: Duration::from_millis(200),
            metrics_recorder: false,
        }
    }

    fn from_args() -> Result<Self, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut settings =
            if args.iter().any(|a| a == "--quick") { Settings::quick() } else { Settings::default_run() };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = || inline.clone().or_else(|| args.next()).ok_or(format!("{name} needs a value"));
            match name.as_str() {
                "--quick" => {}
                "--duration" => settings.duration = seconds(&value()?)?,
                "--warmup" => settings.warmup = seconds(&value()?)?,
                "--connections" => settings.connections = count(&value()?, 1, 1024)?,
                "--rounds" => settings.rounds = count(&value()?, 1, 100)?,
                "--latency-ms" => {
                    settings.latency = Duration::from_millis(count(&value()?, 0, 10_000)? as u64);
                }
                "--latency-rounds" => settings.latency_rounds = count(&value()?, 1, 100)?,
                "--no-idempotency" => settings.idempotency = false,
                "--metrics-recorder" => settings.metrics_recorder = true,
                "--idempotency-rounds" => settings.idempotency_rounds = count(&value()?, 1, 100)?,
                "--no-mcp" => settings.mcp = false,
                "--mcp-rounds" => settings.mcp_rounds = count(&value()?, 1, 100)?,
                "--no-journal" => settings.journal = false,
                "--journal-rounds" => settings.journal_rounds = count(&value()?, 1, 100)?,
                "--no-deferred" => settings.deferred = false,
                "--deferred-rounds" => settings.deferred_rounds = count(&value()?, 1, 100)?,
                "--deferred-latencies-ms" => {
                    settings.deferred_latencies = value()?
                        .split(',')
                        .map(|ms| Ok(Duration::from_millis(count(ms.trim(), 1, 10_000)? as u64)))
                        .collect::<Result<_, String>>()?;
                    if settings.deferred_latencies.len() > 4 {
                        return Err("--deferred-latencies-ms: at most 4 latencies".into());
                    }
                }
                "--only" => {
                    settings.only = value()?
                        .split(',')
                        .map(|name| {
                            Kind::ALL.into_iter().find(|k| k.name() == name.trim()).ok_or_else(|| {
                                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                                format!("--only: `{name}` is not one of {}", names.join(", "))
                            })
                        })
                        .collect::<Result<_, _>>()?;
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        if settings.duration > Duration::from_secs(600) || settings.warmup > Duration::from_secs(600) {
            return Err("--duration and --warmup are at most 600 seconds".into());
        }
        Ok(settings)
    }
}

const USAGE: &str = "usage: bench [--quick] [--duration SECS] [--warmup SECS] [--connections N] [--rounds N]\n\
  \x20            [--latency-ms N] [--latency-rounds N] [--no-idempotency] [--idempotency-rounds N]\n\
  \x20            [--no-mcp] [--mcp-rounds N] [--no-journal] [--journal-rounds N] [--no-deferred]\n\
  \x20            [--deferred-rounds N] [--deferred-latencies-ms MS,MS] [--only SERVERS]\n\
  \x20            [--metrics-recorder]\n\
  --duration        seconds each server is driven per round (default 0.5; quick 0.4)\n\
  --warmup          seconds of unmeasured load per server before the rounds (default 1; quick 0.2)\n\
  --connections     concurrent keep-alive connections (default 16; quick 8)\n\
  --rounds          rounds of ABCD (default 30; quick 2)\n\
  --latency-ms      the facilitator's latency in the second section, which reports req/s as a\n\
  \x20                 fraction of the limit it sets (default 40; 0 skips the section)\n\
  --latency-rounds  rounds of the second section, 1 s each (default 6; quick 1 of 0.4 s)\n\
  --no-idempotency  skip the third section: idempotent paid calls (Idempotency-Key), req/s with\n\
  \x20                 no store, the in-memory store and Redis (a redis-server it starts), and a\n\
  \x20                 replay's cost against a paid call\n\
  --idempotency-rounds  rounds of the third section, 0.5 s each (default 10; quick 1 of 0.3 s)\n\
  --no-mcp          skip the fourth section: paid MCP tool calls (tools/call, the payment in\n\
  \x20                 _meta) against the same tool unpaid and the paid HTTP route of the same app,\n\
  \x20                 on loopback, then with --latency-ms\n\
  --mcp-rounds      rounds of the fourth section on loopback, 0.5 s each (default 10; quick 1 of\n\
  \x20                 0.3 s); with the latency, --latency-rounds\n\
  --no-journal      skip the fifth section: the pending-settlement journal written ahead of every\n\
  \x20                 settle call, in a file and on Redis (a redis-server it starts), against one in\n\
  \x20                 memory, on loopback, then with --latency-ms\n\
  --journal-rounds  rounds of the fifth section on loopback, 0.5 s each (default 10; quick 1 of\n\
  \x20                 0.3 s); with the latency, --latency-rounds\n\
  --no-deferred     skip the sixth section: deferred settlement (the answer before the settle call,\n\
  \x20                 settled in the background) against plain, paid and paid+cache, with the\n\
  \x20                 facilitator's answers delayed by each of --deferred-latencies-ms\n\
  --deferred-rounds  rounds of the sixth section at each latency, 1 s each (default 6; quick 1 of\n\
  \x20                 0.4 s)\n\
  --deferred-latencies-ms  the facilitator's latencies of the sixth section, one after the other\n\
  \x20                 (default 40,400; each from 1 to 10000, at most 4)\n\
  --metrics-recorder  install a Prometheus metrics recorder (the payment metrics are recorded;\n\
  \x20                 without it they go nowhere): run twice to see what telemetry costs\n\
  --quick           a smoke run of a few seconds\n\
  --only            drive only these servers, e.g. `--only paid,handwritten` (for profiling); of\n\
  \x20                 plain, handwritten, paid, paid+cache (the first two sections) and\n\
  \x20                 paid+nostore, paid+memory, paid+redis, replay (the third) and\n\
  \x20                 tool-paid, tool-unpaid, route-paid (the fourth) and\n\
  \x20                 journal-memory, journal-file, journal-redis (the fifth) and\n\
  \x20                 deferred, deferred+cache (the sixth, driven with those of plain, paid and\n\
  \x20                 paid+cache that are named)";

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or(format!("`{text}` is not a positive number of seconds"))
}

fn count(text: &str, min: usize, max: usize) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or(format!("`{text}` is not a number from {min} to {max}"))
}

// ---------------------------------------------------------------------------------------
// The servers.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Handwritten,
    Paid,
    PaidCache,
    PaidNoStore,
    PaidMemory,
    PaidRedis,
    Replay,
    ToolPaid,
    ToolUnpaid,
    RoutePaid,
    JournalMemory,
    JournalFile,
    JournalRedis,
    Deferred,
    DeferredCache,
}

/// The `idempotency-key` of a server's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// No key (the servers of the first two sections, of the fifth and of the sixth, and
    /// `paid+nostore`).
    None,
    /// A distinct one on every request, added by the connection
    /// ([`drive_connection`]): every request is a new paid call.
    Fresh,
    /// The same on every request: after the first, every request is a replay.
    Same,
}

impl Kind {
    /// The servers of the first two sections.
    const FIRST: [Kind; 4] = [Kind::Plain, Kind::Handwritten, Kind::Paid, Kind::PaidCache];
    /// The servers of the third section.
    const IDEMPOTENCY: [Kind; 4] = [Kind::PaidNoStore, Kind::PaidMemory, Kind::PaidRedis, Kind::Replay];
    /// The scenarios of the fourth section: one server, the MCP app.
    const MCP: [Kind; 3] = [Kind::ToolPaid, Kind::ToolUnpaid, Kind::RoutePaid];
    /// The servers of the fifth section.
    const JOURNAL: [Kind; 3] = [Kind::JournalMemory, Kind::JournalFile, Kind::JournalRedis];
    /// The servers of the sixth section (driven with `plain`, `paid` and `paid+cache`).
    const DEFERRED: [Kind; 2] = [Kind::Deferred, Kind::DeferredCache];
    /// The sixth section's servers in the order it drives them: `deferred+cache` before
    /// `deferred`, so that the settle calls its window leaves in flight land in a window
    /// that the facilitator's latency bounds (`deferred`'s, which waits its verify), not in
    /// plain's.
    const SIXTH: [Kind; 5] = [Kind::Plain, Kind::Paid, Kind::PaidCache, Kind::DeferredCache, Kind::Deferred];
    const ALL: [Kind; 16] = [
        Kind::Plain,
        Kind::Handwritten,
        Kind::Paid,
        Kind::PaidCache,
        Kind::PaidNoStore,
        Kind::PaidMemory,
        Kind::PaidRedis,
        Kind::Replay,
        Kind::ToolPaid,
        Kind::ToolUnpaid,
        Kind::RoutePaid,
        Kind::JournalMemory,
        Kind::JournalFile,
        Kind::JournalRedis,
        Kind::Deferred,
        Kind::DeferredCache,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::Handwritten => "handwritten",
            Kind::Paid => "paid",
            Kind::PaidCache => "paid+cache",
            Kind::PaidNoStore => "paid+nostore",
            Kind::PaidMemory => "paid+memory",
            Kind::PaidRedis => "paid+redis",
            Kind::Replay => "replay",
            Kind::ToolPaid => "tool-paid",
            Kind::ToolUnpaid => "tool-unpaid",
            Kind::RoutePaid => "route-paid",
            Kind::JournalMemory => "journal-memory",
            Kind::JournalFile => "journal-file",
            Kind::JournalRedis => "journal-redis",
            Kind::Deferred => "deferred",
            Kind::DeferredCache => "deferred+cache",
        }
    }

    fn charges(self) -> bool {
        !matches!(self, Kind::Plain | Kind::ToolUnpaid)
    }

    /// Answered before its settlement, which runs in the background
    /// ([`DeferredSettlement`]).
    fn defers(self) -> bool {
        Kind::DEFERRED.contains(&self)
    }

    /// Driven by MCP tool calls in sessions, not by HTTP requests.
    fn is_tool(self) -> bool {
        matches!(self, Kind::ToolPaid | Kind::ToolUnpaid)
    }

    /// The server it is driven on: its own, or the MCP app's for the fourth section's
    /// scenarios (one server, keyed `tool-paid`).
    fn server(self) -> Kind {
        if Kind::MCP.contains(&self) { Kind::ToolPaid } else { self }
    }

    /// The MCP tool it calls.
    fn tool(self) -> &'static str {
        if self.charges() { "paid_tool" } else { "free_tool" }
    }

    fn keys(self) -> Keys {
        match self {
            Kind::PaidMemory | Kind::PaidRedis => Keys::Fresh,
            Kind::Replay => Keys::Same,
            _ => Keys::None,
        }
    }

    /// The request the load generator sends it: with [`Keys::Fresh`], without the blank
    /// line that ends the head, which the connection adds after the request's key. (An MCP
    /// tool's calls are written by its session, [`drive_session`]: this one is unused.)
    fn request(self, addr: SocketAddr, token: &str) -> Arc<[u8]> {
        let mut request = format!("GET /work HTTP/1.1\r\nhost: {addr}\r\npayment-signature: {token}\r\n");
        match self.keys() {
            Keys::None => request.push_str("\r\n"),
            Keys::Same => request.push_str("idempotency-key: replay\r\n\r\n"),
            Keys::Fresh => {}
        }
        Arc::from(request.into_bytes())
    }
}

/// What the servers are given: one pooled facilitator client per configuration.
#[derive(Clone)]
struct Configs {
    facilitator: web::Data<Facilitator>,
    /// The configuration of each `#[paid]` server.
    payments: Vec<(Kind, Payments)>,
    /// The MCP app's tool server (sessions shared by its workers).
    mcp: McpService<BenchTools>,
    /// The worker thread of each server, for its CPU time.
    workers: Arc<Mutex<Vec<(Kind, u32)>>>,
}

fn configure(kind: Kind, configs: &Configs, cfg: &mut web::ServiceConfig) {
    match kind {
        Kind::Plain => cfg.route("/work", web::get().to(plain)),
        Kind::Handwritten => {
            cfg.app_data(configs.facilitator.clone()).route("/work", web::get().to(handwritten))
        }
        paid => {
            // Servers::start starts no `#[paid]` server without its configuration.
            if let Some((_, payments)) = configs.payments.iter().find(|(k, _)| *k == paid.server()) {
                cfg.app_data(payments.clone());
            }
            if Kind::MCP.contains(&paid) {
                // The MCP app: the tools at /mcp next to the paid route, on the same Payments.
                cfg.service(configs.mcp.resource("/mcp"));
            }
            cfg.route("/work", web::get().to(paid_work))
        }
    };
}

/// The servers, on a thread of their own with its own actix `System`.
struct Servers {
    addrs: Vec<(Kind, SocketAddr)>,
    handles: Vec<ServerHandle>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Servers {
    /// Binds 127.0.0.1:0 for each server of `kinds` (the fourth section's scenarios share
    /// one, [`Kind::server`]); each server has 1 worker thread.
    fn start(configs: Configs, kinds: Vec<Kind>) -> io::Result<Servers> {
        type Started = io::Result<Vec<(Kind, SocketAddr, ServerHandle)>>;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Started>();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let mut servers: Vec<Kind> = kinds.iter().map(|k| k.server()).collect();
        servers.dedup();
        std::thread::Builder::new().name("bench-servers".into()).spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let mut started = Vec::new();
                let mut running = Vec::new();
                for kind in servers {
                    let configs = configs.clone();
                    let server = HttpServer::new(move || {
                        // Called on the worker thread: remember it.
                        if let Some(tid) = cpu::current_tid() {
                            configs.workers.lock().unwrap_or_else(PoisonError::into_inner).push((kind, tid));
                        }
                        let configs = configs.clone();
                        App::new().configure(move |cfg| configure(kind, &configs, cfg))
                    })
                    .workers(1)
                    // The MCP app's answers are SSE streams, written in parts (a priming event,
                    // then the answer): with Nagle's algorithm, the OS default actix-web keeps,
                    // the answer waits for the client's delayed ACK of the first part (40 ms on
                    // Linux). Each other server writes an answer at once: no difference there.
                    .tcp_nodelay(Kind::MCP.contains(&kind))
                    .disable_signals()
                    .shutdown_timeout(1)
                    .bind(("127.0.0.1", 0));
                    match server {
                        Ok(server) => {
                            let addr = server.addrs()[0];
                            let server = server.run();
                            started.push((kind, addr, server.handle()));
                            running.push(actix_web::rt::spawn(server));
                        }
                        Err(error) => {
                            let _ = ready_tx.send(Err(error));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(started));
                for server in running {
                    let _ = server.await;
                }
            });
            let _ = done_tx.send(());
        })?;
        let started = ready_rx.recv().map_err(|_| io::Error::other("the server thread exited early"))??;
        let addrs = kinds
            .iter()
            .filter_map(|kind| {
                let (_, addr, _) = started.iter().find(|(server, _, _)| *server == kind.server())?;
                Some((*kind, *addr))
            })
            .collect();
        let handles = started.into_iter().map(|(_, _, handle)| handle).collect();
        Ok(Servers { addrs, handles, done })
    }

    /// Stops every server and waits (at most 5 s) for their thread.
    fn stop(self) {
        for handle in &self.handles {
            // The command is sent at once; the returned future only waits for it.
            drop(handle.stop(false));
        }
        if self.done.recv_timeout(Duration::from_secs(5)).is_err() {
            eprintln!("warning: the servers did not stop within 5 s");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The load generator: N tasks on one current-thread tokio runtime, each with its own
// keep-alive HTTP/1.1 connection and a minimal client (write the request, read the
// status line and headers, read `content-length` bytes of body).

/// One parsed response.
struct Reply {
    status: u16,
    receipt: Option<String>,
    /// `idempotent-replayed: true`: answered from the idempotency store.
    replayed: bool,
}

/// One connection's results for one measurement.
#[derive(Default)]
struct ConnStats {
    latencies_us: Vec<u32>,
    errors: u64,
    samples: Vec<String>,
}

impl ConnStats {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.samples.len() < 3 {
            self.samples.push(what);
        }
    }
}

/// What one server did in one measurement.
#[derive(Debug, Clone, Default)]
struct Measure {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    p50_us: u32,
    p99_us: u32,
    /// Every request's latency (µs), sorted: the summary pools them over rounds.
    latencies_us: Vec<u32>,
    calls: u64,
    /// The facilitator's verify and settle calls (in `calls`).
    verifies: u64,
    settles: u64,
    plan_fetches: u64,
    samples: Vec<String>,
    /// CPU time (ns) of the server's worker thread, of the load generator, and of the
    /// rest of the process (the facilitator, mostly), when the platform tells.
    cpu_server: Option<u64>,
    cpu_loadgen: Option<u64>,
    cpu_rest: Option<u64>,
}

impl Measure {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Sends `request` and reads one response (with `want_receipt`, its receipt and replay
/// mark too); `buf` is reused across calls.
async fn exchange(
    stream: &TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
    want_receipt: bool,
) -> io::Result<Reply> {
    write_all(stream, request).await?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    let head_end = read_until(stream, buf, &mut chunk, 0, b"\r\n\r\n").await?;
    let (status, lines) = head_of(&buf[..head_end])?;
    let mut length = 0usize;
    let mut receipt = None;
    let mut replayed = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "chunked responses are not expected"));
        } else if want_receipt && name.eq_ignore_ascii_case("payment-response") {
            receipt = Some(value.to_owned());
        } else if want_receipt && name.eq_ignore_ascii_case("idempotent-replayed") {
            replayed = value == "true";
        }
    }
    read_to(stream, buf, &mut chunk, head_end + 4 + length).await?;
    Ok(Reply { status, receipt, replayed })
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads from `stream` into `buf` (through `chunk`) until `needle` is in it at or after
/// `from` (at most 64 KiB after): where it starts.
async fn read_until(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    from: usize,
    needle: &[u8],
) -> io::Result<usize> {
    loop {
        if let Some(at) = buf.get(from..).and_then(|rest| find(rest, needle)) {
            return Ok(from + at);
        }
        if buf.len() > from + 64 * 1024 {
            return Err(invalid("a response head or chunk line over 64 KiB"));
        }
        let n = read(stream, chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads from `stream` into `buf` (through `chunk`) until it holds `len` bytes.
async fn read_to(stream: &TcpStream, buf: &mut Vec<u8>, chunk: &mut [u8], len: usize) -> io::Result<()> {
    while buf.len() < len {
        let n = read(stream, chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// A response head's status, and its header lines.
fn head_of(head: &[u8]) -> io::Result<(u16, std::str::Split<'_, &'static str>)> {
    let head = std::str::from_utf8(head).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("no status line"))?;
    Ok((status, lines))
}

/// `exchange` within [`REQUEST_TIMEOUT`], its failure said in a sample's words.
async fn bounded<T>(exchange: impl std::future::Future<Output = io::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(error)) => Err(format!("i/o: {error}")),
        Err(_) => Err(format!("no response within {REQUEST_TIMEOUT:?}")),
    }
}

/// The connections of the run, numbered: the first part of their [`Keys::Fresh`] keys.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// Sends requests of server `kind` on `stream` until `deadline`, reconnecting (at most
/// 10 times) after an error. The first receipt of the connection is decoded and checked
/// in full ([`receipt_problem`]); later ones only for presence. A paying server's answers
/// must be replays exactly when its requests repeat a key ([`Keys::Same`]).
async fn drive_connection(
    mut stream: TcpStream,
    addr: SocketAddr,
    request: Arc<[u8]>,
    deadline: Instant,
    kind: Kind,
) -> ConnStats {
    let mut stats = ConnStats { latencies_us: Vec::with_capacity(16 * 1024), ..ConnStats::default() };
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut checked_receipt = false;
    let mut reconnects = 0;
    let (charges, replays) = (kind.charges(), kind.keys() == Keys::Same);
    // With fresh keys, each request is `request`, then `idempotency-key: CONNECTION:N`
    // and the blank line, written into `keyed`.
    let fresh_keys = kind.keys() == Keys::Fresh;
    let connection = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let mut keyed = Vec::with_capacity(if fresh_keys { request.len() + 64 } else { 0 });
    let mut sent = 0u64;
    while Instant::now() < deadline {
        let bytes: &[u8] = if fresh_keys {
            sent += 1;
            keyed.clear();
            keyed.extend_from_slice(&request);
            let _ = write!(keyed, "idempotency-key: {connection}:{sent}\r\n\r\n");
            &keyed
        } else {
            &request
        };
        let started = Instant::now();
        let reply = match bounded(exchange(&stream, bytes, &mut buf, charges)).await {
            Ok(reply) => reply,
            Err(what) => match recover(&mut stats, what, addr, &mut reconnects).await {
                Some(fresh) => {
                    stream = fresh;
                    continue;
                }
                None => break,
            },
        };
        stats.latencies_us.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        if reply.status != 200 {
            stats.error(format!("status {}", reply.status));
            continue;
        }
        if !charges {
            continue;
        }
        if reply.replayed != replays {
            stats.error(format!("a 200 with idempotent-replayed {} for a {}", reply.replayed, kind.name()));
        }
        match reply.receipt {
            None => stats.error("200 without a payment-response receipt".into()),
            Some(header) if !checked_receipt => {
                checked_receipt = true;
                if let Some(problem) = receipt_problem(kind, &header) {
                    stats.error(problem);
                }
            }
            Some(_) => {}
        }
    }
    stats
}

/// What is wrong with the receipt `header` of a paid call to `kind`, if anything: it must
/// be settled, 1 credit redeemed; for a deferring server, the pending receipt of a
/// deferred call instead (`success: false`, `errorReason: "settlement_pending"`,
/// `settlement: "deferred"`, amount 1). A settled receipt there is wrong too: the call was
/// settled synchronously, past the bound on what a payer may owe, and the figures would
/// not measure deferred settlement.
fn receipt_problem(kind: Kind, header: &str) -> Option<String> {
    let receipt = match SettleResponse::from_header(header) {
        Ok(receipt) => receipt,
        Err(error) => return Some(format!("undecodable receipt: {error}")),
    };
    let fine = if kind.defers() {
        // The seller's own fields (`settlement`, `amount`) are read from the JSON form.
        let fields = serde_json::to_value(&receipt).unwrap_or_default();
        !receipt.success
            && receipt.error_reason.as_deref() == Some("settlement_pending")
            && fields["settlement"] == "deferred"
            && fields["amount"] == "1"
    } else {
        receipt.success && receipt.credits_redeemed == Some(1.into())
    };
    (!fine).then(|| format!("unexpected receipt {receipt:?}"))
}

/// Counts `what` as an error and reconnects: a fresh connection, or `None` after 10.
async fn recover(
    stats: &mut ConnStats,
    what: String,
    addr: SocketAddr,
    reconnects: &mut u32,
) -> Option<TcpStream> {
    stats.error(what);
    reconnect(addr, reconnects).await
}

async fn reconnect(addr: SocketAddr, reconnects: &mut u32) -> Option<TcpStream> {
    *reconnects += 1;
    if *reconnects > 10 {
        return None;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    connect(addr).await.ok()
}

/// Drives server `kind` at `addr` with `connections` connections for `duration`.
async fn measure(
    kind: Kind,
    addr: SocketAddr,
    request: &Arc<[u8]>,
    connections: usize,
    duration: Duration,
) -> Measure {
    let mut streams = Vec::with_capacity(connections);
    let mut measure = Measure::default();
    for _ in 0..connections {
        match connect(addr).await {
            Ok(stream) => streams.push(stream),
            Err(error) => {
                measure.errors += 1;
                measure.samples.push(format!("connect: {error}"));
            }
        }
    }
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|stream| tokio::spawn(drive_connection(stream, addr, Arc::clone(request), deadline, kind)))
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        match task.await {
            Ok(stats) => measure.add(stats, &mut latencies),
            Err(error) => measure.samples.push(format!("load task failed: {error}")),
        }
    }
    measure.finish(started, latencies);
    measure
}

impl Measure {
    /// Adds one connection's results; its latencies go to `latencies`.
    fn add(&mut self, stats: ConnStats, latencies: &mut Vec<u32>) {
        self.errors += stats.errors;
        latencies.extend_from_slice(&stats.latencies_us);
        for sample in stats.samples {
            if self.samples.len() < 5 {
                self.samples.push(sample);
            }
        }
    }

    /// Closes the window opened at `started`, with every request's latency.
    fn finish(&mut self, started: Instant, mut latencies: Vec<u32>) {
        self.elapsed = started.elapsed();
        self.requests = latencies.len() as u64;
        latencies.sort_unstable();
        self.p50_us = percentile(&latencies, 0.50);
        self.p99_us = percentile(&latencies, 0.99);
        self.latencies_us = latencies;
    }
}

// ---------------------------------------------------------------------------------------
// The MCP client of the fourth section: a session on its own keep-alive connection
// (`initialize`, then `notifications/initialized`), its `tools/call` requests one after
// another, each answer an SSE stream (chunked) read to its end, and its `DELETE`.

/// The bound on one MCP answer's body.
const MAX_MCP_BODY: usize = 1024 * 1024;
/// The client's `initialize` request.
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
/// The notification that ends the handshake.
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// One answer of the MCP endpoint (its body is in the buffer given to [`mcp_exchange`]).
struct McpReply {
    status: u16,
    /// The `mcp-session-id` header (the answer to `initialize`).
    session: Option<String>,
}

/// An HTTP request to the MCP endpoint at `addr`: `method` (`POST` with `body`, or
/// `DELETE`), in `session` when there is one.
fn mcp_request(addr: SocketAddr, method: &str, session: Option<&str>, body: &str) -> Vec<u8> {
    let mut request =
        format!("{method} /mcp HTTP/1.1\r\nhost: {addr}\r\naccept: application/json, text/event-stream\r\n");
    if let Some(session) = session {
        let _ = write!(request, "mcp-session-id: {session}\r\n");
    }
    if !body.is_empty() {
        request.push_str("content-type: application/json\r\n");
    }
    let _ = write!(request, "content-length: {}\r\n\r\n{body}", body.len());
    request.into_bytes()
}

/// Sends `request` and reads one answer, its body (de-chunked: an SSE stream is read to
/// its end) into `body`; `buf` is reused across calls.
async fn mcp_exchange(
    stream: &TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> io::Result<McpReply> {
    write_all(stream, request).await?;
    buf.clear();
    body.clear();
    let mut chunk = [0u8; 8192];
    let head_end = read_until(stream, buf, &mut chunk, 0, b"\r\n\r\n").await?;
    let (status, lines) = head_of(&buf[..head_end])?;
    let (mut length, mut chunked, mut session) = (0usize, false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| invalid("bad content-length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("mcp-session-id") {
            session = Some(value.to_owned());
        }
    }
    let mut at = head_end + 4;
    if !chunked {
        if length > MAX_MCP_BODY {
            return Err(invalid("an MCP answer over 1 MiB"));
        }
        read_to(stream, buf, &mut chunk, at + length).await?;
        body.extend_from_slice(&buf[at..at + length]);
        return Ok(McpReply { status, session });
    }
    loop {
        // A chunk: its size in hex (extensions after `;`), CRLF, its bytes, CRLF.
        let line_end = read_until(stream, buf, &mut chunk, at, b"\r\n").await?;
        let size = std::str::from_utf8(&buf[at..line_end])
            .ok()
            .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok())
            .ok_or_else(|| invalid("bad chunk size"))?;
        at = line_end + 2;
        if size == 0 {
            // The last chunk; no trailers expected: the blank line that ends the body.
            read_until(stream, buf, &mut chunk, at, b"\r\n").await?;
            return Ok(McpReply { status, session });
        }
        if body.len() + size > MAX_MCP_BODY {
            return Err(invalid("an MCP answer over 1 MiB"));
        }
        read_to(stream, buf, &mut chunk, at + size + 2).await?;
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// An MCP session of the client, on its own connection.
struct Session {
    stream: TcpStream,
    id: String,
}

/// Connects and opens a session: `initialize` (answered with its `mcp-session-id`), then
/// `notifications/initialized` (202).
async fn open_session(addr: SocketAddr) -> Result<Session, String> {
    let stream = connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (mut buf, mut body) = (Vec::new(), Vec::new());
    let init = mcp_request(addr, "POST", None, INITIALIZE);
    let reply = bounded(mcp_exchange(&stream, &init, &mut buf, &mut body)).await?;
    let id = match reply.session {
        Some(id) if reply.status == 200 && answer_of(&body, 0).is_some_and(|a| a.get("result").is_some()) => {
            id
        }
        _ => return Err(format!("initialize: status {}, {}", reply.status, excerpt(&body))),
    };
    let done = mcp_request(addr, "POST", Some(&id), INITIALIZED);
    let reply = bounded(mcp_exchange(&stream, &done, &mut buf, &mut body)).await?;
    if reply.status != 202 {
        return Err(format!("notifications/initialized: status {}", reply.status));
    }
    Ok(Session { stream, id })
}

/// Ends `session`: `DELETE /mcp`, answered 2xx.
async fn close_session(addr: SocketAddr, session: &Session) -> Result<(), String> {
    let request = mcp_request(addr, "DELETE", Some(&session.id), "");
    let reply = bounded(mcp_exchange(&session.stream, &request, &mut Vec::new(), &mut Vec::new())).await?;
    if (200..300).contains(&reply.status) { Ok(()) } else { Err(format!("DELETE: status {}", reply.status)) }
}

/// A token as `_meta["x402/payment"]` carries it: its decoded payment payload (JSON).
fn payment_json(token: &str) -> Result<String, String> {
    let bytes = nvm_runtime::__private::wire::codec::decode_base64(token)
        .map_err(|e| format!("minted token: {e}"))?;
    let payload: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("minted token is not JSON: {e}"))?;
    Ok(payload.to_string())
}

/// The JSON-RPC message with `id` among the `data:` lines of an SSE body.
fn answer_of(body: &[u8], id: u64) -> Option<serde_json::Value> {
    body.split(|b| *b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .filter_map(|data| serde_json::from_slice::<serde_json::Value>(data).ok())
        .find(|message| message.get("id").and_then(serde_json::Value::as_u64) == Some(id))
}

/// The start of a body, for an error's sample.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// A tool call's answer checked in full: the answer to call `id`, a result that is not an
/// error with the tool's `ok`, and for a paid call its receipt (settled, 1 credit).
fn check_answer(body: &[u8], id: u64, paid: bool) -> Result<(), String> {
    let answer = answer_of(body, id).ok_or_else(|| format!("no answer to call {id}: {}", excerpt(body)))?;
    let result = &answer["result"];
    if result["isError"] != false || result["content"][0]["text"] != "ok" {
        return Err(format!("unexpected answer {}", excerpt(answer.to_string().as_bytes())));
    }
    let credits = &result["_meta"]["nevermined/credits"];
    if paid && (credits["success"] != true || credits["creditsRedeemed"] != "1") {
        return Err(format!("unexpected receipt {}", excerpt(credits.to_string().as_bytes())));
    }
    Ok(())
}

/// A later answer glanced at: a result that is not an error, and for a paid call, with
/// its receipt.
fn glance_answer(body: &[u8], paid: bool) -> Result<(), String> {
    if find(body, br#""isError":false"#).is_none() {
        return Err(format!("not a successful result: {}", excerpt(body)));
    }
    if paid && find(body, b"\"nevermined/credits\"").is_none() {
        return Err(format!("a paid result without its receipt: {}", excerpt(body)));
    }
    Ok(())
}

/// Calls the tool of `kind` in `session` until `deadline`, one call after another, with
/// `payment` (a token's payload, JSON) in `_meta["x402/payment"]` when there is one;
/// reconnecting (at most 10 times) after an error, in the same session. The session's
/// first answer is checked in full ([`check_answer`]), later ones at a glance.
async fn drive_session(
    mut session: Session,
    addr: SocketAddr,
    kind: Kind,
    payment: Option<String>,
    deadline: Instant,
) -> (ConnStats, Session) {
    let mut stats = ConnStats { latencies_us: Vec::with_capacity(16 * 1024), ..ConnStats::default() };
    let (mut buf, mut body) = (Vec::with_capacity(16 * 1024), Vec::with_capacity(4 * 1024));
    let (mut reconnects, mut id) = (0, 0u64);
    let (tool, paid) = (kind.tool(), payment.is_some());
    let meta = payment.map(|p| format!(r#","_meta":{{"x402/payment":{p}}}"#)).unwrap_or_default();
    while Instant::now() < deadline {
        id += 1;
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"query":"q"}}{meta}}}}}"#
        );
        let request = mcp_request(addr, "POST", Some(&session.id), &call);
        let started = Instant::now();
        let reply = match bounded(mcp_exchange(&session.stream, &request, &mut buf, &mut body)).await {
            Ok(reply) => reply,
            Err(what) => match recover(&mut stats, what, addr, &mut reconnects).await {
                Some(fresh) => {
                    session.stream = fresh;
                    continue;
                }
                None => break,
            },
        };
        stats.latencies_us.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        let verdict = match reply.status {
            200 if id == 1 => check_answer(&body, id, paid),
            200 => glance_answer(&body, paid),
            status => Err(format!("status {status}")),
        };
        if let Err(what) = verdict {
            stats.error(what);
        }
    }
    (stats, session)
}

/// Drives MCP tool `kind` at `addr` with `sessions` sessions for `duration`. They are
/// opened before the window (each with its reusable token, minted by `local`, for a paid
/// tool) and closed after it.
async fn measure_sessions(
    kind: Kind,
    addr: SocketAddr,
    sessions: usize,
    duration: Duration,
    local: &LocalFacilitator,
) -> Measure {
    let mut measure = Measure::default();
    let mut opened = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let payment = kind.charges().then(|| payment_json(&local.mint_token(MintOptions::new()))).transpose();
        match (payment, open_session(addr).await) {
            (Ok(payment), Ok(session)) => opened.push((session, payment)),
            (Err(error), _) | (_, Err(error)) => {
                measure.errors += 1;
                measure.samples.push(format!("session: {error}"));
            }
        }
    }
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|(session, payment)| tokio::spawn(drive_session(session, addr, kind, payment, deadline)))
        .collect();
    let (mut latencies, mut done) = (Vec::new(), Vec::new());
    for task in tasks {
        match task.await {
            Ok((stats, session)) => {
                measure.add(stats, &mut latencies);
                done.push(session);
            }
            Err(error) => measure.samples.push(format!("session task failed: {error}")),
        }
    }
    measure.finish(started, latencies);
    for session in &done {
        if let Err(error) = close_session(addr, session).await {
            measure.errors += 1;
            measure.samples.push(error);
        }
    }
    measure
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 }
}

/// How many calls each endpoint of `local` received: verify, settle, permissions, plans.
fn calls(local: &LocalFacilitator) -> [u64; 4] {
    [Endpoint::Verify, Endpoint::Settle, Endpoint::Permissions, Endpoint::Plans].map(|e| local.calls(e))
}

// ---------------------------------------------------------------------------------------
// CPU time per thread (Linux: /proc/self/task/TID/schedstat, in nanoseconds), so the cost
// of a request is seen apart from what other processes of the machine do.

mod cpu {
    /// The id of the calling thread.
    pub(crate) fn current_tid() -> Option<u32> {
        let link = std::fs::read_link("/proc/thread-self").ok()?;
        link.file_name()?.to_str()?.parse().ok()
    }

    /// CPU time of one thread of this process, in ns.
    pub(crate) fn thread_ns(tid: u32) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    /// CPU time of every live thread of this process, in ns.
    pub(crate) fn process_ns() -> Option<u64> {
        let mut total = 0;
        for entry in std::fs::read_dir("/proc/self/task").ok()? {
            let tid = entry.ok()?.file_name().to_str()?.parse().ok()?;
            total += thread_ns(tid).unwrap_or(0);
        }
        Some(total)
    }

    /// A reading of the three clocks of a measurement.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Reading {
        pub(crate) server: Option<u64>,
        pub(crate) loadgen: Option<u64>,
        pub(crate) total: Option<u64>,
    }

    impl Reading {
        pub(crate) fn now(server: Option<u32>, loadgen: Option<u32>) -> Self {
            Reading {
                server: server.and_then(thread_ns),
                loadgen: loadgen.and_then(thread_ns),
                total: process_ns(),
            }
        }
    }

    /// Load average over the last minute (all processes of the machine).
    pub(crate) fn load_average() -> Option<f64> {
        std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
    }
}

// ---------------------------------------------------------------------------------------
// The run.

fn machine() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or("unknown memory".to_owned(), |kb| format!("{:.1} GiB RAM", kb / 1024.0 / 1024.0));
    let cpus = nvm_examples::machine::cpus();
    format!("{cpus}, {memory}, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

fn main() {
    let settings = match Settings::from_args() {
        Ok(settings) => settings,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("bench: {message}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if message.is_empty() { 0 } else { 2 });
        }
    };
    match run(&settings) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("bench: {error}");
            std::process::exit(2);
        }
    }
}

/// Runs the benchmark; `Ok(false)` when a response was wrong or the plan metadata was
/// fetched after warm-up.
fn run(settings: &Settings) -> Result<bool, String> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with --release for meaningful numbers");
    }
    let load_before = cpu::load_average();
    if settings.metrics_recorder {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .map_err(|e| format!("installing the metrics recorder: {e}"))?;
        println!("metrics: a Prometheus recorder is installed; the payment metrics are recorded");
    }
    let local = LocalFacilitator::start().map_err(|e| format!("starting the local facilitator: {e}"))?;
    local.set_balance(DEMO_PLAN_ID, local.subscriber_address(), BALANCE);
    let token = local.mint_token(MintOptions::new());

    let key = local.builder_api_key().parse().map_err(|e| format!("builder key: {e}"))?;
    let facilitator =
        Facilitator::new(local.backend_url(), &key, nvm_runtime::__private::backend::DEFAULT_TIMEOUT)
            .map_err(|e| e.to_string())?;
    // The servers of the sections that run (in the order of Kind::ALL), and Redis when
    // one of them needs it: dropped (killed) when `run` returns.
    let (third, fourth, fifth) = (settings.idempotency, settings.mcp, settings.journal);
    let sixth = settings.deferred;
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| settings.only.contains(k))
        .filter(|k| (third || !Kind::IDEMPOTENCY.contains(k)) && (fourth || !Kind::MCP.contains(k)))
        .filter(|k| (fifth || !Kind::JOURNAL.contains(k)) && (sixth || !k.defers()))
        .collect();
    let redis = if kinds.contains(&Kind::PaidRedis) || kinds.contains(&Kind::JournalRedis) {
        Some(RedisServer::start()?)
    } else {
        None
    };
    // The file journals' directory: removed, with the journals, when `run` returns.
    let scratch = if kinds.iter().any(|k| *k == Kind::JournalFile || k.defers()) {
        Some(Scratch::create()?)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("load generator runtime: {e}"))?;
    let payments = |kind: Kind| -> Result<(Kind, Payments), String> {
        let builder = Payments::builder().api_key(local.builder_api_key()).backend_url(local.backend_url());
        let builder = match kind {
            Kind::PaidCache => builder.verification_cache(Duration::from_secs(30)),
            Kind::PaidNoStore => builder.idempotency(Idempotency::disabled()),
            Kind::PaidMemory | Kind::Replay => builder.idempotency(Idempotency::in_memory()),
            Kind::PaidRedis => {
                let url = redis.as_ref().map(RedisServer::url).ok_or("paid+redis without a redis-server")?;
                // Its connection is made, and driven, on the server's worker at first use; the
                // store only needs a runtime to be made (for a task that watches the connection).
                let _entered = runtime.enter();
                let store = RedisStore::open(&url).map_err(|e| format!("the Redis store at {url}: {e}"))?;
                builder.idempotency(Idempotency::with_store(store))
            }
            // The fifth section: no idempotency store, so that only the journal differs.
            Kind::JournalMemory => builder
                .idempotency(Idempotency::disabled())
                .pending_settlements(PendingSettlements::in_memory()),
            Kind::JournalFile => {
                let path =
                    scratch.as_ref().map(Scratch::journal).ok_or("journal-file without its directory")?;
                let journal = PendingSettlements::file(&path)
                    .map_err(|e| format!("the file journal at {}: {e}", path.display()))?;
                builder.idempotency(Idempotency::disabled()).pending_settlements(journal)
            }
            Kind::JournalRedis => {
                let url =
                    redis.as_ref().map(RedisServer::url).ok_or("journal-redis without a redis-server")?;
                // As paid+redis's store; its keys apart from those of paid+redis.
                let _entered = runtime.enter();
                let store = RedisStore::open(&url)
                    .map_err(|e| format!("the Redis journal at {url}: {e}"))?
                    .prefix(JOURNAL_PREFIX);
                builder
                    .idempotency(Idempotency::disabled())
                    .pending_settlements(PendingSettlements::redis(&store))
            }
            // The sixth section: `paid`'s defaults (and `paid+cache`'s cache), every route
            // deferred, a durable journal of its own, and bounds no call of the run reaches.
            Kind::Deferred | Kind::DeferredCache => {
                let path = scratch
                    .as_ref()
                    .map(|scratch| scratch.deferred_journal(kind))
                    .ok_or("a deferring server without its directory")?;
                let journal = PendingSettlements::file(&path)
                    .map_err(|e| format!("the file journal at {}: {e}", path.display()))?;
                let deferred = DeferredSettlement::new()
                    .everywhere()
                    .max_exposure(DEFERRED_EXPOSURE)
                    .max_in_flight(DEFERRED_IN_FLIGHT);
                let builder = builder.pending_settlements(journal).deferred_settlement(deferred);
                if kind == Kind::DeferredCache {
                    builder.verification_cache(Duration::from_secs(30))
                } else {
                    builder
                }
            }
            // `paid` and the MCP app: the defaults (an in-memory store, which their requests,
            // with no key, leave alone).
            _ => builder,
        };
        Ok((kind, builder.build().map_err(|e| e.to_string())?))
    };
    let workers = Arc::new(Mutex::new(Vec::new()));
    // A configuration per paying server (the MCP app's is keyed by its server, tool-paid).
    let mut paying: Vec<Kind> = kinds.iter().map(|k| k.server()).collect();
    paying.dedup();
    let configs = Configs {
        facilitator: web::Data::new(facilitator),
        payments: paying
            .into_iter()
            .filter(|k| k.charges() && *k != Kind::Handwritten)
            .map(payments)
            .collect::<Result<_, _>>()?,
        mcp: McpService::new(|| Ok(BenchTools { tool_router: BenchTools::tool_router() })),
        workers: Arc::clone(&workers),
    };
    // The deferring servers' configurations, to drain them after their section, and the
    // identity of their journal files as created (a compaction renames a fresh file over).
    let deferring: Vec<(Kind, Payments, Option<FileId>)> = configs
        .payments
        .iter()
        .filter(|(kind, _)| kind.defers())
        .map(|(kind, payments)| {
            let file = scratch.as_ref().and_then(|scratch| file_id(&scratch.deferred_journal(*kind)));
            (*kind, payments.clone(), file)
        })
        .collect();
    let servers = Servers::start(configs, kinds).map_err(|e| format!("starting the servers: {e}"))?;

    let loadgen = cpu::current_tid();
    let all: Vec<_> =
        servers.addrs.iter().map(|&(kind, addr)| (kind, addr, kind.request(addr, &token))).collect();
    let group =
        |section: &[Kind]| -> Vec<_> { all.iter().filter(|r| section.contains(&r.0)).cloned().collect() };
    let (requests, idempotent, tools) = (group(&Kind::FIRST), group(&Kind::IDEMPOTENCY), group(&Kind::MCP));
    let journals = group(&Kind::JOURNAL);
    // The sixth section's servers in its order, when one of them defers.
    let sixth: Vec<_> = if all.iter().any(|r| r.0.defers()) {
        Kind::SIXTH.iter().filter_map(|kind| all.iter().find(|r| r.0 == *kind).cloned()).collect()
    } else {
        Vec::new()
    };

    let counts = [requests.len(), idempotent.len(), tools.len(), journals.len(), sixth.len()];
    println!("{}", header(settings, &local, load_before, counts));

    let worker_of = |kind: Kind| {
        let workers = workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers.iter().find(|(k, _)| *k == kind).map(|(_, tid)| *tid)
    };
    let rig = Rig {
        runtime: &runtime,
        local: &local,
        connections: settings.connections,
        loadgen,
        worker_of: &worker_of,
    };

    // The first section: loopback speed, every server.
    let mut ok = true;
    if !requests.is_empty() {
        let first = Phase { rounds: settings.rounds, duration: settings.duration, warmup: settings.warmup };
        ok &= rig.section(&requests, &first, "", |outcome| summary(settings, outcome));
    }

    // The second section: the facilitator's answers delayed, the servers that call it.
    let delayed: Vec<_> = requests.iter().filter(|r| r.0.charges()).cloned().collect();
    if !settings.latency.is_zero() && !delayed.is_empty() {
        let intro = format!(
            "\n+{ms} ms facilitator latency: every answer of the local facilitator waits {ms} ms \
             (LocalFacilitator::set_latency), as the round trip to the hosted backend would;\n\x20 ",
            ms = settings.latency.as_millis()
        );
        ok &= rig.delayed(settings, &delayed, "+latency ", &intro);
    }

    // The third section: idempotent paid calls, stored in memory or in Redis, and replays.
    if !idempotent.is_empty() {
        println!(
            "\nidempotency: a paid call with an `idempotency-key` is run and settled once, stored, and answered\n\
             \x20 from the store when repeated (`idempotent-replayed: true`, the original receipt, no facilitator\n\
             \x20 call). paid+nostore: Idempotency::disabled(), no key (the baseline); paid+memory (in memory)\n\
             \x20 and paid+redis ({redis}):\n\
             \x20 a distinct key on every request (CONNECTION:N), each a new paid call; replay: in memory, the\n\
             \x20 same key on every request (its first request is sent before the warm-up), each answered from\n\
             \x20 the store;\n\
             \x20 {} rounds x {} servers x {:.1} s, {:.1} s warm-up per server",
            settings.idempotency_rounds,
            idempotent.len(),
            settings.idempotency_duration.as_secs_f64(),
            settings.idempotency_warmup.as_secs_f64(),
            redis = redis.as_ref().map_or("not driven".to_owned(), RedisServer::describe),
        );
        let phase = Phase {
            rounds: settings.idempotency_rounds,
            duration: settings.idempotency_duration,
            warmup: settings.idempotency_warmup,
        };
        let primed = match idempotent.iter().find(|r| r.0 == Kind::Replay) {
            Some((_, addr, request)) => runtime.block_on(prime(*addr, request)),
            None => Ok(()),
        };
        match primed {
            Ok(()) => {
                ok &= rig.section(&idempotent, &phase, "idempotency ", |outcome| {
                    idempotency_summary(settings, outcome)
                });
            }
            Err(error) => {
                println!("replay: the first request with its key failed: {error} (FAILED)");
                ok = false;
            }
        }
    }

    // The fourth section: MCP tool calls, paid and unpaid, and the paid route of the same
    // app, on loopback and then with the facilitator's latency.
    if !tools.is_empty() {
        println!(
            "\nMCP: one actix-web app (1 worker) serving rmcp tools through McpService at /mcp and the\n\
             \x20 #[paid] GET /work, on one Payments. tool-paid: tools/call of a #[paid(credits = 1)] #[tool],\n\
             \x20 the payment (a reusable token minted per session, decoded) in _meta[\"x402/payment\"];\n\
             \x20 tool-unpaid: the same body under a plain #[tool]; route-paid: GET /work of the same app.\n\
             \x20 {} sessions (initialize and notifications/initialized before the window, DELETE after it),\n\
             \x20 each on its own keep-alive HTTP/1.1 connection, each call answered as SSE;\n\
             \x20 {} rounds x {} scenarios x {:.1} s, {:.1} s warm-up per scenario",
            settings.connections,
            settings.mcp_rounds,
            tools.len(),
            settings.mcp_duration.as_secs_f64(),
            settings.mcp_warmup.as_secs_f64(),
        );
        let phase = Phase {
            rounds: settings.mcp_rounds,
            duration: settings.mcp_duration,
            warmup: settings.mcp_warmup,
        };
        ok &= rig.section(&tools, &phase, "mcp ", |outcome| mcp_summary(settings, outcome));
        if !settings.latency.is_zero() {
            let intro = format!("\nMCP, +{} ms facilitator latency: ", settings.latency.as_millis());
            ok &= rig.delayed(settings, &tools, "mcp +latency ", &intro);
        }
    }

    // The fifth section: the pending-settlement journal in memory, in a file and on Redis,
    // on loopback and then with the facilitator's latency; then what the journals hold.
    if !journals.is_empty() {
        println!(
            "\njournal: a durable pending-settlement journal writes every settlement down ahead of its settle\n\
             \x20 call and forgets it once answered (two writes on the path of each paid call); one in memory\n\
             \x20 writes nothing ahead. The #[paid] handler with Idempotency::disabled() (no key) and\n\
             \x20 journal-memory: PendingSettlements::in_memory(), the baseline;\n\
             \x20 journal-file: PendingSettlements::file, {file}\n\
             \x20   (JSON lines, one writer thread, the lines of concurrent calls sharing one fdatasync);\n\
             \x20 journal-redis: PendingSettlements::redis, {redis};\n\
             \x20 {} rounds x {} servers x {:.1} s, {:.1} s warm-up per server",
            settings.journal_rounds,
            journals.len(),
            settings.journal_duration.as_secs_f64(),
            settings.journal_warmup.as_secs_f64(),
            file = scratch
                .as_ref()
                .filter(|_| journals.iter().any(|r| r.0 == Kind::JournalFile))
                .map_or("not driven".to_owned(), |scratch| scratch.describe(&scratch.journal())),
            redis = redis.as_ref().map_or("not driven".to_owned(), RedisServer::describe),
        );
        // redis-server's counts of the Redis journal's writes before the section (only this
        // section's server writes to Redis meanwhile).
        let on_redis = redis.as_ref().filter(|_| journals.iter().any(|r| r.0 == Kind::JournalRedis));
        let before = on_redis.map(RedisServer::journal_writes);
        let phase = Phase {
            rounds: settings.journal_rounds,
            duration: settings.journal_duration,
            warmup: settings.journal_warmup,
        };
        ok &= rig.section(&journals, &phase, "journal ", |outcome| journal_summary(settings, outcome));
        if !settings.latency.is_zero() {
            let intro = format!("\njournal, +{} ms facilitator latency: ", settings.latency.as_millis());
            ok &= rig.delayed(settings, &journals, "journal +latency ", &intro);
        }
        if scratch.is_some() || on_redis.is_some() {
            let (report, emptied) = journals_emptied(scratch.as_ref(), on_redis.zip(before));
            println!("{report}");
            ok &= emptied;
        }
    }

    // The sixth section: deferred settlement against synchronous settlement, side by side,
    // with the facilitator's answers delayed; then the settlements drained and the journals
    // read.
    if !sixth.is_empty() {
        println!(
            "\ndeferred settlement: the answer goes out at once with a pending receipt and the settle call\n\
             \x20 runs in the background (DeferredSettlement::new().everywhere(), the #[paid] handler; every\n\
             \x20 deferred settlement written down ahead of its answer in a file journal of its own, as\n\
             \x20 {file});\n\
             \x20 max_exposure({DEFERRED_EXPOSURE}) credits and max_in_flight({DEFERRED_IN_FLIGHT}) settle calls, above the R x L in\n\
             \x20 flight at R req/s with the facilitator L away, so that every call of the run is deferred (a\n\
             \x20 settled receipt is an error). deferred: a verify per call; deferred+cache: with a 30 s\n\
             \x20 verification cache; against plain, paid (synchronous) and paid+cache in the same rounds\n\
             \x20 (deferred+cache before deferred: the settle calls its window leaves in flight land in\n\
             \x20 deferred's window, which waits its verify, not in plain's); at +{latencies} ms facilitator\n\
             \x20 latency, one after the other",
            file = scratch.as_ref().map_or("not driven".to_owned(), |scratch| {
                scratch.describe(&scratch.deferred_journal(Kind::DeferredCache))
            }),
            latencies = settings
                .deferred_latencies
                .iter()
                .map(|l| l.as_millis().to_string())
                .collect::<Vec<_>>()
                .join(" and +"),
        );
        let phase = Phase {
            rounds: settings.deferred_rounds,
            duration: settings.deferred_duration,
            warmup: settings.deferred_warmup,
        };
        let mut goals = Vec::new();
        for &latency in &settings.deferred_latencies {
            local.set_latency(latency);
            println!(
                "\ndeferred, +{} ms facilitator latency: {} rounds x {} servers x {:.1} s, {:.1} s warm-up per server",
                latency.as_millis(),
                phase.rounds,
                sixth.len(),
                phase.duration.as_secs_f64(),
                phase.warmup.as_secs_f64(),
            );
            let label = format!("deferred +{} ms ", latency.as_millis());
            let goal = std::cell::Cell::new(None);
            ok &= rig.section(&sixth, &phase, &label, |outcome| {
                let (report, fine, met) = deferred_summary(settings, latency, outcome);
                goal.set(met);
                (report, fine)
            });
            // The response path alone: one connection, no queue, plain and deferred+cache.
            let pair: Vec<_> =
                sixth.iter().filter(|r| matches!(r.0, Kind::Plain | Kind::DeferredCache)).cloned().collect();
            let single = Rig { connections: 1, ..rig };
            let gap = std::cell::Cell::new(None);
            if pair.len() == 2 {
                println!(
                    "
deferred, +{} ms, one connection: plain and deferred+cache, {} rounds x 2 servers x {:.1} s",
                    latency.as_millis(),
                    phase.rounds,
                    phase.duration.as_secs_f64(),
                );
                let label = format!("deferred +{} ms, 1 connection ", latency.as_millis());
                ok &= single.section(&pair, &phase, &label, |outcome| {
                    let (report, fine, measured) = response_path_summary(settings, outcome);
                    gap.set(measured);
                    (report, fine)
                });
            }
            let goal = goal.get().zip(gap.get()).map(|(goal, gap)| Goal { p50_gap_ms: gap, ..goal });
            goals.push((latency, goal));
        }
        local.set_latency(Duration::ZERO);
        let (report, met) = deferred_goal(settings, &goals);
        println!("{report}");
        ok &= met;
        let (report, settled) = deferred_settled(&runtime, scratch.as_ref(), &deferring);
        println!("{report}");
        ok &= settled;
    }
    servers.stop();
    drop(runtime);
    drop(redis);
    drop(scratch);

    if let (Some(before), Some(after)) = (load_before, cpu::load_average()) {
        println!("load average (1 min) before the run {before:.2}, after {after:.2}");
    }
    drop(local);
    Ok(ok)
}

/// Sends `request` once on a connection of its own: the paid call a replay server's
/// requests then replay; an error unless it is a 200 with a receipt, not replayed.
async fn prime(addr: SocketAddr, request: &[u8]) -> Result<(), String> {
    let stream = connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let mut buf = Vec::new();
    match bounded(exchange(&stream, request, &mut buf, true)).await? {
        reply if reply.status == 200 && reply.receipt.is_some() && !reply.replayed => Ok(()),
        reply => Err(format!(
            "status {}, receipt {}, replayed {}",
            reply.status,
            reply.receipt.is_some(),
            reply.replayed
        )),
    }
}

/// A `redis-server` of this run on a free port of 127.0.0.1, with no persistence,
/// killed (and waited for) when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts it and waits (at most 10 s) until it answers `PING`.
    fn start() -> Result<RedisServer, String> {
        const INSTALL: &str = "the idempotency and journal sections need it: install it with \
                               `apt-get install -y redis-server`, or skip them with --no-idempotency and \
                               --no-journal";
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| format!("no free port for redis-server: {e}"))?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server could not be started ({e}): {INSTALL}"))?;
        let mut redis = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis.answers_ping() {
            if let Ok(Some(status)) = redis.child.try_wait() {
                return Err(format!("redis-server exited at start ({status}): {INSTALL}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not answer PING on port {port} within 10 s: {INSTALL}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    fn answers_ping(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let ping = || -> io::Result<bool> {
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
            stream.set_read_timeout(Some(Duration::from_millis(500)))?;
            stream.write_all(b"PING\r\n")?;
            let mut answer = [0u8; 7];
            stream.read_exact(&mut answer)?;
            Ok(&answer == b"+PONG\r\n")
        };
        ping().unwrap_or(false)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends `command` (inline: words separated by spaces) and reads its answer: an
    /// integer's digits, or a bulk string.
    fn query(&self, command: &str) -> Result<String, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let answer = || -> io::Result<String> {
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(format!("{command}\r\n").as_bytes())?;
            let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
            loop {
                if let Some(end) = find(&buf, b"\r\n") {
                    let head = String::from_utf8_lossy(&buf[1..end]).into_owned();
                    match buf[0] {
                        b':' => return Ok(head),
                        b'$' => {
                            let len: usize = head.parse().map_err(|_| invalid("bad bulk string length"))?;
                            if let Some(bulk) = buf.get(end + 2..end + 2 + len) {
                                return Ok(String::from_utf8_lossy(bulk).into_owned());
                            }
                        }
                        _ => {
                            let answer = String::from_utf8_lossy(&buf[..end]);
                            return Err(io::Error::other(format!("answered {answer}")));
                        }
                    }
                }
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-answer"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        answer().map_err(|e| format!("`{command}` on port {}: {e}", self.port))
    }

    /// The calls of `HSET` and `HDEL` it has served (`INFO commandstats`): the Redis
    /// journal's writes ahead of a settle call, and its forgettings.
    fn journal_writes(&self) -> Result<JournalWrites, String> {
        let info = self.query("INFO commandstats")?;
        let calls = |command: &str| {
            let prefix = format!("cmdstat_{command}:calls=");
            info.lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .and_then(|rest| rest.split(',').next()?.parse().ok())
                .unwrap_or(0)
        };
        Ok(JournalWrites { set: calls("hset"), del: calls("hdel") })
    }

    /// Its version and address, for the report.
    fn describe(&self) -> String {
        let version = Command::new("redis-server")
            .arg("--version")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.split_whitespace().find_map(|w| w.strip_prefix("v=")).map(str::to_owned))
            .unwrap_or_else(|| "?".to_owned());
        format!("RedisStore on redis-server {version} at 127.0.0.1:{}, no persistence", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// redis-server's counts of the Redis journal's writes: `HSET` (a record written ahead of
/// its settle call) and `HDEL` (forgotten once answered).
#[derive(Debug, Clone, Copy)]
struct JournalWrites {
    set: u64,
    del: u64,
}

/// The directory of this run's file journal, in the temporary directory, removed (with
/// the journal) when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn create() -> Result<Scratch, String> {
        let dir = std::env::temp_dir().join(format!("nvm-bench-journal-{}", std::process::id()));
        // A directory left by an earlier run of the same id: its journal would be read.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)
            .map_err(|e| format!("the file journal's directory {}: {e}", dir.display()))?;
        Ok(Scratch { dir })
    }

    /// The fifth section's journal's path.
    fn journal(&self) -> PathBuf {
        self.dir.join("pending-settlements.jsonl")
    }

    /// The journal's path of a deferring server of the sixth section (one each).
    fn deferred_journal(&self, kind: Kind) -> PathBuf {
        self.dir.join(if kind == Kind::DeferredCache {
            "deferred-settlements-cache.jsonl"
        } else {
            "deferred-settlements.jsonl"
        })
    }

    /// The path of a journal in it, and its file system, for the report.
    fn describe(&self, path: &Path) -> String {
        // The longest mount point above the journal (/proc/self/mounts).
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let filesystem = mounts
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let (device, at, kind) = (fields.next()?, fields.next()?, fields.next()?);
                path.starts_with(at).then(|| (at.len(), format!("{kind} ({device})")))
            })
            .max_by_key(|(len, _)| *len)
            .map_or_else(|| "an unknown file system".to_owned(), |(_, what)| what);
        format!("{} on {filesystem}", path.display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the fifth section's journals hold after its rounds (and warm-ups), against what
/// was written to them: the file's lines (`settling` ahead of each settle call, `done`
/// once it is answered), and the Redis journal's writes (redis-server's `HSET` and `HDEL`
/// calls since `redis`'s reading) and the records left in it; `false` when nothing was
/// written ahead, or a record was not forgotten.
fn journals_emptied(
    file: Option<&Scratch>,
    redis: Option<(&RedisServer, Result<JournalWrites, String>)>,
) -> (String, bool) {
    let mut out = "\njournals after the rounds and warm-ups: every settlement written ahead, then forgotten \
                   once answered:"
        .to_owned();
    let mut ok = true;
    if let Some(scratch) = file {
        let path = scratch.journal();
        let line = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let (mut settling, mut done, mut other) = (0u64, 0u64, 0u64);
                for line in text.lines() {
                    let event = serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|line| line.get("event")?.as_str().map(str::to_owned));
                    match event.as_deref() {
                        Some("settling") => settling += 1,
                        Some("done") => done += 1,
                        _ => other += 1,
                    }
                }
                let pass = settling > 0 && done == settling && other == 0;
                ok &= pass;
                format!(
                    "{settling} written ahead (`settling` lines), {done} forgotten (`done` lines), {other} \
                     other lines, {:.1} MB (asserted as many, none other: {})",
                    text.len() as f64 / 1e6,
                    if pass { "ok" } else { "FAILED" }
                )
            }
            Err(error) => {
                ok = false;
                format!("{} unreadable: {error} (FAILED)", path.display())
            }
        };
        let _ = write!(out, "\n  {:<14} {line}", Kind::JournalFile.name());
    }
    if let Some((server, before)) = redis {
        let key = format!("{JOURNAL_PREFIX}pending");
        let line = match (before, server.journal_writes(), server.query(&format!("HLEN {key}"))) {
            (Ok(before), Ok(after), Ok(left)) => {
                let (set, del) = (after.set.saturating_sub(before.set), after.del.saturating_sub(before.del));
                let pass = set > 0 && del == set && left == "0";
                ok &= pass;
                format!(
                    "{set} written ahead (HSET), {del} forgotten (HDEL), {left} records left in {key} \
                     (asserted as many, 0 left: {})",
                    if pass { "ok" } else { "FAILED" }
                )
            }
            (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
                ok = false;
                format!("redis-server: {error} (FAILED)")
            }
        };
        let _ = write!(out, "\n  {:<14} {line}", Kind::JournalRedis.name());
    }
    (out, ok)
}

/// One section of the run: its rounds, the window of each server per round, and the
/// warm-up of each server before the rounds.
struct Phase {
    rounds: usize,
    duration: Duration,
    warmup: Duration,
}

/// What every section drives its servers with.
struct Rig<'a> {
    runtime: &'a tokio::runtime::Runtime,
    local: &'a LocalFacilitator,
    connections: usize,
    loadgen: Option<u32>,
    worker_of: &'a dyn Fn(Kind) -> Option<u32>,
}

impl Rig<'_> {
    /// A section with every answer of the facilitator delayed `settings.latency` (the
    /// second section's rounds), reported against the limit the latency sets, after
    /// `intro`; `false` when a check failed.
    fn delayed(
        &self,
        settings: &Settings,
        requests: &[(Kind, SocketAddr, Arc<[u8]>)],
        label: &str,
        intro: &str,
    ) -> bool {
        self.local.set_latency(settings.latency);
        println!(
            "{intro}{} rounds x {} servers x {:.1} s, {:.1} s warm-up per server",
            settings.latency_rounds,
            requests.len(),
            settings.latency_duration.as_secs_f64(),
            settings.latency_warmup.as_secs_f64(),
        );
        let phase = Phase {
            rounds: settings.latency_rounds,
            duration: settings.latency_duration,
            warmup: settings.latency_warmup,
        };
        let ok = self.section(requests, &phase, label, |outcome| latency_summary(settings, outcome));
        self.local.set_latency(Duration::ZERO);
        ok
    }

    /// Drives server `kind` for `duration` with the rig's connections: an MCP tool by as
    /// many sessions, anything else by HTTP requests.
    async fn measure(
        &self,
        kind: Kind,
        addr: SocketAddr,
        request: &Arc<[u8]>,
        duration: Duration,
    ) -> Measure {
        if kind.is_tool() {
            measure_sessions(kind, addr, self.connections, duration, self.local).await
        } else {
            measure(kind, addr, request, self.connections, duration).await
        }
    }

    /// Warms each server up, then drives them in turn for `phase.rounds` rounds (ABCD ABCD
    /// …), printing a line per round: the measures per server, and the warm-up's errors.
    fn drive(
        &self,
        requests: &[(Kind, SocketAddr, Arc<[u8]>)],
        phase: &Phase,
        label: &str,
    ) -> (Vec<Vec<Measure>>, Vec<String>) {
        let local = self.local;
        // Warm-up: connections, pools, the plan's metadata, the verification cache.
        let warm = self.runtime.block_on(async {
            let mut errors = Vec::new();
            for (kind, addr, request) in requests {
                let m = self.measure(*kind, *addr, request, phase.warmup).await;
                if m.errors > 0 {
                    errors.push(format!(
                        "{}: {} errors during warm-up ({})",
                        kind.name(),
                        m.errors,
                        m.samples.join("; ")
                    ));
                }
            }
            errors
        });
        for line in &warm {
            println!("{label}{line}");
        }

        // Rounds: ABCD ABCD …
        let mut results: Vec<Vec<Measure>> = vec![Vec::new(); requests.len()];
        for round in 1..=phase.rounds {
            let mut line = format!("{label}round {round:>2}/{}:", phase.rounds);
            for (i, (kind, addr, request)) in requests.iter().enumerate() {
                let worker = (self.worker_of)(kind.server());
                let (calls_before, cpu_before) = (calls(local), cpu::Reading::now(worker, self.loadgen));
                let mut m = self.runtime.block_on(self.measure(*kind, *addr, request, phase.duration));
                let (calls_after, cpu_after) = (calls(local), cpu::Reading::now(worker, self.loadgen));
                m.calls = calls_after.iter().sum::<u64>() - calls_before.iter().sum::<u64>();
                m.verifies = calls_after[0] - calls_before[0];
                m.settles = calls_after[1] - calls_before[1];
                m.plan_fetches = calls_after[3] - calls_before[3];
                let delta = |after: Option<u64>, before: Option<u64>| Some(after?.saturating_sub(before?));
                m.cpu_server = delta(cpu_after.server, cpu_before.server);
                m.cpu_loadgen = delta(cpu_after.loadgen, cpu_before.loadgen);
                m.cpu_rest = delta(cpu_after.total, cpu_before.total)
                    .and_then(|t| Some(t.saturating_sub(m.cpu_server? + m.cpu_loadgen?)));
                let _ = write!(line, "  {} {:.0}/s p99 {}", kind.name(), m.rps(), ms(f64::from(m.p99_us)));
                results[i].push(m);
            }
            println!("{line}");
        }
        (results, warm)
    }

    /// A section: [`Rig::drive`], then the report `summarise` makes of its outcome,
    /// printed; `false` when a check failed.
    fn section(
        &self,
        requests: &[(Kind, SocketAddr, Arc<[u8]>)],
        phase: &Phase,
        label: &str,
        summarise: impl Fn(&Outcome<'_>) -> (String, bool),
    ) -> bool {
        let (results, warm) = self.drive(requests, phase, label);
        let kinds: Vec<Kind> = requests.iter().map(|r| r.0).collect();
        let (report, ok) =
            summarise(&Outcome { kinds: &kinds, results: &results, warmup_errors: !warm.is_empty() });
        println!("{report}");
        ok
    }
}

/// What a section's servers did: the measures of each (`results[i]` are those of
/// `kinds[i]`, a measure per round), and whether the warm-up had errors.
struct Outcome<'a> {
    kinds: &'a [Kind],
    results: &'a [Vec<Measure>],
    warmup_errors: bool,
}

/// The run's header: `first` servers in the first two sections, `third` in the third,
/// `fourth` scenarios in the fourth, `fifth` servers in the fifth, `sixth` in the sixth.
fn header(
    settings: &Settings,
    local: &LocalFacilitator,
    load: Option<f64>,
    [first, third, fourth, fifth, sixth]: [usize; 5],
) -> String {
    let mut out = format!(
        "nvm-paid bench: what #[paid] costs, side by side\n\
         machine: {machine}\n\
         run: {mode}{rounds} rounds x {servers} servers x {duration:.1} s, {conns} keep-alive HTTP/1.1 connections, \
         {warmup:.1} s warm-up per server;\n\
         \x20 GET /work answering `ok`, credits = 1, one reusable token, subscriber balance 2^60\n\
         facilitator: local, {backend} (in-memory ledger, real HTTP on loopback){second}{third}{fourth}{fifth}{sixth}\n\
         threads: the facilitator runs on its own thread with its own actix System (2 workers); each server\n\
         \x20 has 1 worker thread (plus an idle accept thread); the load generator is 1 thread (a current-thread\n\
         \x20 tokio runtime, one task per connection, a minimal HTTP/1.1 client). Only one server is driven at a\n\
         \x20 time (ABCD ABCD ...), so the busy threads are the load generator, one server worker and, for the\n\
         \x20 paying servers, the facilitator: at most 4 on 2 cores, all closed-loop (each connection waits for\n\
         \x20 its answer), so none can run away from the others; handwritten and paid have exactly the same\n\
         \x20 topology. Many short rounds, throughput ratios taken as medians of per-round ratios (the servers\n\
         \x20 of a round run within two seconds) and latency percentiles over all the requests of all rounds,\n\
         \x20 so a burst of background load on the machine hits the servers of a round alike; CPU\n\
         \x20 time per request is read per thread (/proc/self/task/*/schedstat), so it is not affected by other\n\
         \x20 processes the way throughput is.",
        machine = machine(),
        mode = if settings.quick { "QUICK, " } else { "" },
        servers = first,
        rounds = settings.rounds,
        duration = settings.duration.as_secs_f64(),
        conns = settings.connections,
        warmup = settings.warmup.as_secs_f64(),
        backend = local.backend_url(),
        second = if settings.latency.is_zero() || first == 0 {
            String::new()
        } else {
            format!(
                ";\n  then a second section with every facilitator answer delayed {} ms (--latency-ms)",
                settings.latency.as_millis()
            )
        },
        third = if third == 0 {
            String::new()
        } else {
            format!(
                ";\n  then a third section: idempotent paid calls (idempotency-key), {third} servers of the same\n\
                 \x20 handler (--no-idempotency skips it)"
            )
        },
        fourth = if fourth == 0 {
            String::new()
        } else {
            format!(
                ";\n  then a fourth section: paid MCP tools, {fourth} scenarios on one app, on loopback{}\n\
                 \x20 (--no-mcp skips it)",
                if settings.latency.is_zero() { "" } else { " and delayed" }
            )
        },
        fifth = if fifth == 0 {
            String::new()
        } else {
            format!(
                ";\n  then a fifth section: the pending-settlement journal, {fifth} servers of the same handler,\n\
                 \x20 on loopback{} (--no-journal skips it)",
                if settings.latency.is_zero() { "" } else { " and delayed" }
            )
        },
        sixth = if sixth == 0 {
            String::new()
        } else {
            format!(
                ";\n  then a sixth section: deferred settlement, {sixth} servers side by side, with the facilitator\n\
                 \x20 {} ms away (--no-deferred skips it)",
                settings
                    .deferred_latencies
                    .iter()
                    .map(|l| l.as_millis().to_string())
                    .collect::<Vec<_>>()
                    .join(" and then ")
            )
        },
    );
    if let Some(load) = load {
        let _ = write!(out, "\nload average (1 min) before the run: {load:.2}");
        if load > 0.5 {
            out.push_str(" -- other processes are busy: throughput and latency will be noisy");
        }
    }
    out
}

/// The latency (µs) at quantile `q` of every request of every round: one window's p99
/// hangs on a few dozen requests, the pooled one on thousands.
fn pooled(rounds: &[Measure], q: f64) -> f64 {
    let mut all: Vec<u32> = rounds.iter().flat_map(|m| m.latencies_us.iter().copied()).collect();
    all.sort_unstable();
    f64::from(percentile(&all, q))
}

/// The pooled latency at quantile `q` of `a` over that of `b`.
fn latency_ratio(a: &[Measure], b: &[Measure], q: f64) -> f64 {
    let (x, y) = (pooled(a, q), pooled(b, q));
    if y > 0.0 { x / y } else { 0.0 }
}

/// The median of the per-round ratios of `field` of `a` to `b` (driven side by side).
fn ratio(a: &[Measure], b: &[Measure], field: fn(&Measure) -> f64) -> f64 {
    let mut values: Vec<f64> =
        a.iter().zip(b).map(|(x, y)| if field(y) > 0.0 { field(x) / field(y) } else { 0.0 }).collect();
    median(&mut values)
}

fn median_rps(rounds: &[Measure]) -> f64 {
    median(&mut rounds.iter().map(Measure::rps).collect::<Vec<_>>())
}

/// The CPU time (ns) of the server's worker per request.
fn server_cpu(m: &Measure) -> f64 {
    m.cpu_server.map_or(0.0, |ns| ns as f64 / m.requests.max(1) as f64)
}

/// The CPU time (ns) of the whole process per request.
fn all_cpu(m: &Measure) -> f64 {
    let ns = m.cpu_server.unwrap_or(0) + m.cpu_rest.unwrap_or(0) + m.cpu_loadgen.unwrap_or(0);
    ns as f64 / m.requests.max(1) as f64
}

/// Facilitator calls per request over the rounds.
fn calls_per_request(rounds: &[Measure]) -> f64 {
    let requests: u64 = rounds.iter().map(|m| m.requests).sum();
    rounds.iter().map(|m| m.calls).sum::<u64>() as f64 / requests.max(1) as f64
}

fn mark(pass: bool) -> &'static str {
    if pass { "ok" } else { "MISSED" }
}

/// A row per server (median req/s, pooled p50 and p99, facilitator calls and CPU per
/// request, requests, errors), then the errors' samples; `false` when there are any.
fn table(out: &mut String, kinds: &[Kind], results: &[Vec<Measure>]) -> bool {
    let per_req = |rounds: &[Measure], field: fn(&Measure) -> Option<u64>| -> Option<f64> {
        let mut values = Vec::new();
        for m in rounds {
            values.push(field(m)? as f64 / 1000.0 / m.requests.max(1) as f64);
        }
        Some(median(&mut values))
    };
    let width = name_width(kinds);
    let _ = writeln!(
        out,
        "{:<width$} {:>8} {:>9} {:>9} {:>12} {:>29} {:>9} {:>6}",
        "server", "req/s", "p50", "p99", "facilit./req", "CPU us/req: server+fac.+load", "requests", "errors"
    );
    for (kind, rounds) in kinds.iter().zip(results) {
        let cpu = match (
            per_req(rounds, |m| m.cpu_server),
            per_req(rounds, |m| m.cpu_rest),
            per_req(rounds, |m| m.cpu_loadgen),
        ) {
            (Some(server), Some(rest), Some(load)) => format!("{server:.1} + {rest:.1} + {load:.1}"),
            _ => "n/a".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<width$} {:>8.0} {:>9} {:>9} {:>12.3} {:>29} {:>9} {:>6}",
            kind.name(),
            median_rps(rounds),
            ms(pooled(rounds, 0.50)),
            ms(pooled(rounds, 0.99)),
            calls_per_request(rounds),
            cpu,
            rounds.iter().map(|m| m.requests).sum::<u64>(),
            rounds.iter().map(|m| m.errors).sum::<u64>()
        );
    }
    samples(out, kinds, results)
}

/// The width of the servers' column: their longest name, at least 12.
fn name_width(kinds: &[Kind]) -> usize {
    kinds.iter().map(|k| k.name().len()).max().unwrap_or(0).max(12)
}

/// The errors' samples of each server; `false` when there are any.
fn samples(out: &mut String, kinds: &[Kind], results: &[Vec<Measure>]) -> bool {
    let mut ok = true;
    for (kind, rounds) in kinds.iter().zip(results) {
        let samples: Vec<&str> = rounds.iter().flat_map(|m| &m.samples).take(5).map(String::as_str).collect();
        if !samples.is_empty() {
            ok = false;
            let _ = writeln!(out, "errors of {}: {}", kind.name(), samples.join("; "));
        }
    }
    ok
}

/// The last lines of a section's report: the plan metadata fetches after warm-up
/// (asserted 0) and the errors (asserted 0); `false` when one of them, or `ok`, is.
fn footer(out: &mut String, results: &[Vec<Measure>], ok: bool) -> bool {
    let fetches: u64 = results.iter().flatten().map(|m| m.plan_fetches).sum();
    let errors: u64 = results.iter().flatten().map(|m| m.errors).sum();
    let _ = writeln!(
        out,
        "plan metadata fetches after warm-up: {fetches} (asserted 0: {})",
        if fetches == 0 { "ok" } else { "FAILED" }
    );
    let ok = ok && fetches == 0 && errors == 0;
    let _ = write!(out, "errors: {errors}{}", if ok { "" } else { " (FAILED: see above)" });
    ok
}

/// Medians per server, ratios and targets; `false` when a check failed.
fn summary(settings: &Settings, outcome: &Outcome<'_>) -> (String, bool) {
    let Outcome { kinds, results, warmup_errors } = *outcome;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nover {} rounds: req/s and CPU are medians of the rounds, p50 and p99 are of all requests:",
        settings.rounds
    );
    let ok = table(&mut out, kinds, results) && !warmup_errors;
    let index = |kind: Kind| kinds.iter().position(|k| *k == kind).map(|i| &results[i][..]);
    let (Some(plain), Some(hand), Some(paid), Some(cache)) =
        (index(Kind::Plain), index(Kind::Handwritten), index(Kind::Paid), index(Kind::PaidCache))
    else {
        // A partial run (`--only`): no ratios.
        let ok = footer(&mut out, results, ok);
        return (out, ok);
    };
    let rps = Measure::rps;
    let p99 = |a, b| latency_ratio(a, b, 0.99);
    let (t, l) = (ratio(paid, hand, rps), p99(paid, hand));
    let _ =
        writeln!(out, "\nratios (throughput and CPU: medians of per-round ratios; p99: of all requests):");
    let _ = writeln!(out, "  paid/handwritten   throughput {t:.3}  p99 {l:.3}");
    let _ = writeln!(
        out,
        "                     CPU/request: server {:.3}, whole process {:.3}",
        ratio(paid, hand, server_cpu),
        ratio(paid, hand, all_cpu)
    );
    let _ = writeln!(
        out,
        "  paid/plain         throughput {:.3}  p99 {:.3}",
        ratio(paid, plain, rps),
        p99(paid, plain)
    );
    let _ = writeln!(
        out,
        "  handwritten/plain  throughput {:.3}  p99 {:.3}",
        ratio(hand, plain, rps),
        p99(hand, plain)
    );
    let c = ratio(cache, paid, rps);
    let cache_calls = calls_per_request(cache);
    let _ = writeln!(
        out,
        "  paid+cache/paid    throughput {c:.3}  p99 {:.3}\n\
         \x20                    facilitator calls/request {cache_calls:.3} (target <= 1.05: {})",
        p99(cache, paid),
        mark(cache_calls <= 1.05)
    );
    // The cache's one job: a verification reused, not asked again; failing the bench.
    let ok = footer(&mut out, results, ok && cache_calls <= 1.05);
    (out, ok)
}

/// The facilitator round trips of one request of `kind`, one after another: what the
/// facilitator's latency costs it.
fn round_trips(kind: Kind) -> u32 {
    match kind {
        Kind::Plain | Kind::Replay | Kind::ToolUnpaid => 0,
        // Nothing waited: the verification cached, the settle call in the background.
        Kind::DeferredCache => 0,
        // The cached verification skips verify; settle is never cached. Deferred: verify
        // only, the settle call in the background.
        Kind::PaidCache | Kind::Deferred => 1,
        // verify, then settle.
        _ => 2,
    }
}

/// The second section: each server's median req/s against the limit the facilitator's
/// latency sets; `false` when a check failed.
fn latency_summary(settings: &Settings, outcome: &Outcome<'_>) -> (String, bool) {
    let Outcome { kinds, results, warmup_errors } = *outcome;
    let latency = settings.latency.as_secs_f64();
    let conns = settings.connections;
    let mcp = kinds.iter().any(|k| Kind::MCP.contains(k));
    let journal = kinds.iter().any(|k| Kind::JOURNAL.contains(k));
    let trips = if mcp {
        "2 round trips for tool-paid and\n\
         \x20 route-paid (verify, settle), none for tool-unpaid (no limit)"
    } else if journal {
        "2 round trips for each server\n\
         \x20 (verify, settle; the journal's writes come on top of them)"
    } else {
        "2 round trips for handwritten and\n\
         \x20 paid (verify, settle), 1 for paid+cache (the cached verification skips verify)"
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nwith +{} ms: limit = connections / (round trips x latency) req/s, the bound of {conns} closed-loop\n\
         \x20 connections each waiting its round trips one after another: {trips}; fraction = the\n\
         \x20 median req/s of the rounds / limit; p50 and p99 of all requests, ideal = round trips x latency:",
        settings.latency.as_millis()
    );
    let width = name_width(kinds);
    let _ = writeln!(
        out,
        "{:<width$} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>12} {:>9} {:>6}",
        "server", "req/s", "limit", "fraction", "ideal", "p50", "p99", "facilit./req", "requests", "errors"
    );
    let mut verdicts = Vec::new();
    let mut missed = false;
    for (kind, rounds) in kinds.iter().zip(results) {
        let trips = round_trips(*kind);
        let limit = conns as f64 / (f64::from(trips) * latency);
        let fraction = median_rps(rounds) / limit;
        // No round trip, no limit.
        let bounded = |text: String| if trips == 0 { "-".to_owned() } else { text };
        let _ = writeln!(
            out,
            "{:<width$} {:>8.0} {:>8} {:>9} {:>9} {:>9} {:>9} {:>12.3} {:>9} {:>6}",
            kind.name(),
            median_rps(rounds),
            bounded(format!("{limit:.0}")),
            bounded(format!("{fraction:.3}")),
            bounded(ms(f64::from(trips) * latency * 1e6)),
            ms(pooled(rounds, 0.50)),
            ms(pooled(rounds, 0.99)),
            calls_per_request(rounds),
            rounds.iter().map(|m| m.requests).sum::<u64>(),
            rounds.iter().map(|m| m.errors).sum::<u64>()
        );
        if matches!(kind, Kind::Paid | Kind::PaidCache | Kind::ToolPaid | Kind::RoutePaid) || journal {
            // Latency, not CPU, bounds a server here: a paid server below 0.9 of the
            // limit fails the bench (not in a quick debug run, whose figures mean nothing).
            let pass = fraction >= 0.9;
            verdicts.push(format!(
                "{} {fraction:.3} of {limit:.0} req/s (target >= 0.9: {})",
                kind.name(),
                if settings.quick { "not judged in a quick run" } else { mark(pass) }
            ));
            missed |= !pass;
        }
    }
    let mut ok = samples(&mut out, kinds, results) && !warmup_errors && (settings.quick || !missed);
    if !verdicts.is_empty() {
        let _ = writeln!(out, "fraction of the limit: {}", verdicts.join(", "));
    }
    if journal {
        journal_ratios(&mut out, kinds, results);
    }
    if mcp || journal {
        ok &= facilitator_calls(&mut out, kinds, results);
    }
    let ok = footer(&mut out, results, ok);
    (out, ok)
}

/// The fourth section on loopback: the paid tool against the unpaid one and against the
/// paid route of the same app, side by side; `false` when a check failed (a wrong answer,
/// a facilitator call more or less than one verify and one settle per paid call).
fn mcp_summary(settings: &Settings, outcome: &Outcome<'_>) -> (String, bool) {
    let Outcome { kinds, results, warmup_errors } = *outcome;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nMCP, over {} rounds: req/s and CPU are medians of the rounds, p50 and p99 are of all calls:",
        settings.mcp_rounds
    );
    let mut ok = table(&mut out, kinds, results) && !warmup_errors;
    let index = |kind: Kind| kinds.iter().position(|k| *k == kind).map(|i| &results[i][..]);
    if let Some(paid) = index(Kind::ToolPaid) {
        let _ = writeln!(
            out,
            "\nratios (throughput and CPU: medians of per-round ratios; p50, p99: of all calls):"
        );
        for base in [Kind::ToolUnpaid, Kind::RoutePaid] {
            if let Some(rounds) = index(base) {
                ratio_line(&mut out, &format!("tool-paid/{}", base.name()), paid, rounds);
            }
        }
        if let Some(unpaid) = index(Kind::ToolUnpaid) {
            let cpu = |rounds: &[Measure]| median(&mut rounds.iter().map(server_cpu).collect::<Vec<_>>());
            let _ = writeln!(
                out,
                "  what the payment adds to a tool call: p50 +{}, server CPU +{:.1} us",
                ms(pooled(paid, 0.50) - pooled(unpaid, 0.50)),
                (cpu(paid) - cpu(unpaid)) / 1000.0
            );
        }
    }
    ok &= facilitator_calls(&mut out, kinds, results);
    let ok = footer(&mut out, results, ok);
    (out, ok)
}

/// A line of ratios of `a` to `b`: throughput, p50, p99 and CPU per request.
fn ratio_line(out: &mut String, label: &str, a: &[Measure], b: &[Measure]) {
    let _ = writeln!(
        out,
        "  {label:<26} throughput {:.3}  p50 {:.3}  p99 {:.3}  CPU/request: server {:.3}, whole process {:.3}",
        ratio(a, b, Measure::rps),
        latency_ratio(a, b, 0.50),
        latency_ratio(a, b, 0.99),
        ratio(a, b, server_cpu),
        ratio(a, b, all_cpu)
    );
}

/// The facilitator's verify and settle calls per call of each scenario of the MCP and
/// journal sections, from the local facilitator's counters over the rounds, asserted:
/// exactly 1 and 1 for a paid call (tool-paid, route-paid, journal-*), 0 and 0 for
/// tool-unpaid; `false` when one is off.
fn facilitator_calls(out: &mut String, kinds: &[Kind], results: &[Vec<Measure>]) -> bool {
    let _ = writeln!(out, "facilitator calls per call (LocalFacilitator::calls, over the rounds):");
    let (mut ok, width) = (true, name_width(kinds));
    for (kind, rounds) in kinds.iter().zip(results) {
        let sum = |field: fn(&Measure) -> u64| rounds.iter().map(field).sum::<u64>();
        let (calls, verifies, settles, all) =
            (sum(|m| m.requests), sum(|m| m.verifies), sum(|m| m.settles), sum(|m| m.calls));
        let expected = if kind.charges() { calls } else { 0 };
        // Nothing else either: no plan fetch, no token minted over HTTP.
        let pass = calls > 0 && verifies == expected && settles == expected && all == verifies + settles;
        ok &= pass;
        let per_call = |n: u64| n as f64 / calls.max(1) as f64;
        let _ = writeln!(
            out,
            "  {:<width$} {verifies} verify + {settles} settle for {calls} calls: {:.3} + {:.3} per call \
             (asserted {n} + {n}: {})",
            kind.name(),
            per_call(verifies),
            per_call(settles),
            if pass { "ok" } else { "FAILED" },
            n = u8::from(kind.charges()),
        );
    }
    ok
}

/// The third section: each store's req/s against no store, side by side, and what a
/// replay costs against a paid call; `false` when a check failed (a replay that called
/// the facilitator, a wrong response).
fn idempotency_summary(settings: &Settings, outcome: &Outcome<'_>) -> (String, bool) {
    let Outcome { kinds, results, warmup_errors } = *outcome;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nidempotency, over {} rounds: req/s and CPU are medians of the rounds, p50 and p99 are of all\n\
         \x20 requests (the CPU of redis-server, another process, is not counted):",
        settings.idempotency_rounds
    );
    let mut ok = table(&mut out, kinds, results) && !warmup_errors;
    let index = |kind: Kind| kinds.iter().position(|k| *k == kind).map(|i| &results[i][..]);
    if let Some(base) = index(Kind::PaidNoStore) {
        let _ = writeln!(
            out,
            "\nratios to paid+nostore (throughput and CPU: medians of per-round ratios; p50, p99: of all requests):"
        );
        for kind in [Kind::PaidMemory, Kind::PaidRedis, Kind::Replay] {
            let Some(rounds) = index(kind) else { continue };
            ratio_line(&mut out, &format!("{}/paid+nostore", kind.name()), rounds, base);
        }
    }
    if let Some(replay) = index(Kind::Replay) {
        // What one request costs: latency, CPU, and facilitator calls.
        let cost = |rounds: &[Measure]| {
            format!(
                "p50 {}, p99 {}, {:.1} us of server CPU, {:.3} facilitator calls; {:.0} req/s",
                ms(pooled(rounds, 0.50)),
                ms(pooled(rounds, 0.99)),
                median(&mut rounds.iter().map(server_cpu).collect::<Vec<_>>()) / 1000.0,
                calls_per_request(rounds),
                median_rps(rounds)
            )
        };
        let _ = writeln!(out, "\nthe cost of a replay:\n  a replay                    {}", cost(replay));
        if let Some(base) = index(Kind::PaidNoStore) {
            let speedup = ratio(replay, base, Measure::rps);
            let _ = writeln!(
                out,
                "  a paid call (paid+nostore)  {}\n  replay/paid throughput {speedup:.2}x",
                cost(base)
            );
        }
        let calls: u64 = replay.iter().map(|m| m.calls).sum();
        let _ = writeln!(
            out,
            "replay facilitator calls after warm-up: {calls} (asserted 0: {})",
            if calls == 0 { "ok" } else { "FAILED" }
        );
        ok &= calls == 0;
    }
    let ok = footer(&mut out, results, ok);
    (out, ok)
}

/// The fifth section on loopback: the file and Redis journals against the one in memory,
/// side by side; `false` when a check failed (a wrong response, a facilitator call more or
/// less than one verify and one settle per call).
fn journal_summary(settings: &Settings, outcome: &Outcome<'_>) -> (String, bool) {
    let Outcome { kinds, results, warmup_errors } = *outcome;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\njournal, over {} rounds: req/s and CPU are medians of the rounds, p50 and p99 are of all\n\
         \x20 requests (the file journal's writer thread is in fac.; the CPU of redis-server, another\n\
         \x20 process, is not counted):",
        settings.journal_rounds
    );
    let mut ok = table(&mut out, kinds, results) && !warmup_errors;
    journal_ratios(&mut out, kinds, results);
    ok &= facilitator_calls(&mut out, kinds, results);
    let ok = footer(&mut out, results, ok);
    (out, ok)
}

/// The file and Redis journals as ratios to the one in memory (driven in the same rounds),
/// and what writing ahead adds to a paid call.
fn journal_ratios(out: &mut String, kinds: &[Kind], results: &[Vec<Measure>]) {
    let index = |kind: Kind| kinds.iter().position(|k| *k == kind).map(|i| &results[i][..]);
    let Some(memory) = index(Kind::JournalMemory) else { return };
    let durable: Vec<_> =
        [Kind::JournalFile, Kind::JournalRedis].into_iter().filter_map(|k| Some((k, index(k)?))).collect();
    if durable.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nratios to journal-memory (throughput and CPU: medians of per-round ratios; p50, p99: of all requests):"
    );
    for (kind, rounds) in &durable {
        ratio_line(out, &format!("{:<28}", format!("{}/journal-memory", kind.name())), rounds, memory);
    }
    let _ = writeln!(out, "what writing ahead adds to a paid call (against journal-memory):");
    let cpu = |rounds: &[Measure]| median(&mut rounds.iter().map(all_cpu).collect::<Vec<_>>());
    for (kind, rounds) in &durable {
        let _ = writeln!(
            out,
            "  {:<14} p50 {:+.3} ms, p99 {:+.3} ms, CPU of the whole process {:+.1} us",
            kind.name(),
            (pooled(rounds, 0.50) - pooled(memory, 0.50)) / 1000.0,
            (pooled(rounds, 0.99) - pooled(memory, 0.99)) / 1000.0,
            (cpu(rounds) - cpu(memory)) / 1000.0
        );
    }
}

/// The cores the whole process kept busy in a window: its CPU time over the window's.
fn cores(m: &Measure) -> Option<f64> {
    let ns = m.cpu_server? + m.cpu_rest? + m.cpu_loadgen?;
    Some(ns as f64 / 1e9 / m.elapsed.as_secs_f64().max(1e-9))
}

/// What the sixth section's goal looks at, at one latency: `deferred+cache` against
/// `plain`, driven in the same rounds.
#[derive(Debug, Clone, Copy)]
struct Goal {
    /// Its p50 minus plain's (ms), on one connection (the response path, no queue).
    p50_gap_ms: f64,
    /// The cores it kept busy as a fraction of plain's (the median of the per-round
    /// ratios), when the platform tells.
    busy: Option<f64>,
    /// Its median req/s as a multiple of synchronous `paid`'s limit.
    multiple: f64,
}

impl Goal {
    fn p50_met(&self) -> bool {
        self.p50_gap_ms <= DEFERRED_P50_GAP_MS
    }

    fn multiple_met(&self) -> bool {
        self.multiple >= DEFERRED_MULTIPLE
    }
}

/// The sixth section at one latency: each server's req/s against the limit of synchronous
/// `paid`, its latency against plain's, its facilitator calls and the cores it kept busy;
/// `false` when a check failed (a wrong answer, a plan fetch), and what the goal looks at,
/// when `plain` and `deferred+cache` were both driven.
fn deferred_summary(
    settings: &Settings,
    latency: Duration,
    outcome: &Outcome<'_>,
) -> (String, bool, Option<Goal>) {
    let Outcome { kinds, results, warmup_errors } = *outcome;
    let conns = settings.connections;
    let limit = conns as f64 / (2.0 * latency.as_secs_f64());
    let index = |kind: Kind| kinds.iter().position(|k| *k == kind).map(|i| &results[i][..]);
    let plain = index(Kind::Plain);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ndeferred, +{ms} ms, over {rounds} rounds: limit = the bound of synchronous paid today, {conns}\n\
         \x20 connections / (2 round trips x {ms} ms) = {limit:.0} req/s; x limit = the median req/s of the\n\
         \x20 rounds / limit; p50 and p99 of all requests, p50-plain = minus plain's; verify and settle:\n\
         \x20 the facilitator's calls per request in the server's windows (a deferred window's last settle\n\
         \x20 calls land in the next window: reported, not asserted); cores: the whole process's CPU time\n\
         \x20 over the window (median of the rounds; the settle calls of a deferred window run partly\n\
         \x20 after it):",
        ms = latency.as_millis(),
        rounds = settings.deferred_rounds,
    );
    let width = name_width(kinds);
    let _ = writeln!(
        out,
        "{:<width$} {:>8} {:>8} {:>9} {:>9} {:>11} {:>7} {:>7} {:>6} {:>9} {:>6}",
        "server",
        "req/s",
        "x limit",
        "p50",
        "p99",
        "p50-plain",
        "verify",
        "settle",
        "cores",
        "requests",
        "errors"
    );
    for (kind, rounds) in kinds.iter().zip(results) {
        let requests: u64 = rounds.iter().map(|m| m.requests).sum();
        let per_request = |field: fn(&Measure) -> u64| {
            rounds.iter().map(field).sum::<u64>() as f64 / requests.max(1) as f64
        };
        let busy: Option<Vec<f64>> = rounds.iter().map(cores).collect();
        let _ = writeln!(
            out,
            "{:<width$} {:>8.0} {:>8.2} {:>9} {:>9} {:>11} {:>7.3} {:>7.3} {:>6} {:>9} {:>6}",
            kind.name(),
            median_rps(rounds),
            median_rps(rounds) / limit,
            ms(pooled(rounds, 0.50)),
            ms(pooled(rounds, 0.99)),
            plain.map_or("-".to_owned(), |plain| {
                format!("{:+.3} ms", (pooled(rounds, 0.50) - pooled(plain, 0.50)) / 1000.0)
            }),
            per_request(|m| m.verifies),
            per_request(|m| m.settles),
            busy.map_or("n/a".to_owned(), |mut busy| format!("{:.2}", median(&mut busy))),
            requests,
            rounds.iter().map(|m| m.errors).sum::<u64>()
        );
    }
    let ok = samples(&mut out, kinds, results) && !warmup_errors;
    let goal = match (plain, index(Kind::DeferredCache)) {
        (Some(plain), Some(cache)) => {
            let busy =
                plain.first().and_then(cores).map(|_| ratio(cache, plain, |m| cores(m).unwrap_or(0.0)));
            let goal = Goal {
                p50_gap_ms: (pooled(cache, 0.50) - pooled(plain, 0.50)) / 1000.0,
                busy,
                multiple: median_rps(cache) / limit,
            };
            let _ = writeln!(
                out,
                "deferred+cache: p50 {:+.3} ms over plain's under this load (both saturated: mostly queue;\n\
                 \x20 the target is judged on one connection, below); {:.1} x paid's limit (target >= {DEFERRED_MULTIPLE}:\n\
                 \x20 {}; bound by its own work, not latency); the cores kept busy {} of plain's",
                goal.p50_gap_ms,
                goal.multiple,
                verdict(settings, goal.multiple_met()),
                goal.busy.map_or("n/a".to_owned(), |busy| format!("{busy:.3}")),
            );
            Some(goal)
        }
        _ => None,
    };
    let ok = footer(&mut out, results, ok);
    (out, ok, goal)
}

/// The sixth section's response-path pass (one connection, `plain` and `deferred+cache`):
/// its table, `false` when a check failed, and deferred+cache's p50 minus plain's (ms).
fn response_path_summary(settings: &Settings, outcome: &Outcome<'_>) -> (String, bool, Option<f64>) {
    let Outcome { kinds, results, warmup_errors } = *outcome;
    let index = |kind: Kind| kinds.iter().position(|k| *k == kind).map(|i| &results[i][..]);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "
one connection: each call waits for no other; p50 and p99 of all requests, p50-plain = minus plain's:"
    );
    let width = name_width(kinds);
    let _ = writeln!(
        out,
        "{:<width$} {:>8} {:>9} {:>9} {:>11} {:>9} {:>6}",
        "server", "req/s", "p50", "p99", "p50-plain", "requests", "errors"
    );
    let plain = index(Kind::Plain);
    for (kind, rounds) in kinds.iter().zip(results) {
        let _ = writeln!(
            out,
            "{:<width$} {:>8.0} {:>9} {:>9} {:>11} {:>9} {:>6}",
            kind.name(),
            median_rps(rounds),
            ms(pooled(rounds, 0.50)),
            ms(pooled(rounds, 0.99)),
            plain.map_or("-".to_owned(), |plain| {
                format!("{:+.3} ms", (pooled(rounds, 0.50) - pooled(plain, 0.50)) / 1000.0)
            }),
            rounds.iter().map(|m| m.requests).sum::<u64>(),
            rounds.iter().map(|m| m.errors).sum::<u64>()
        );
    }
    let gap = plain
        .zip(index(Kind::DeferredCache))
        .map(|(plain, cache)| (pooled(cache, 0.50) - pooled(plain, 0.50)) / 1000.0);
    if let Some(gap) = gap {
        let _ = writeln!(
            out,
            "deferred+cache: p50 {gap:+.3} ms over plain's on one connection (target <= {DEFERRED_P50_GAP_MS} ms: {})",
            verdict(settings, gap <= DEFERRED_P50_GAP_MS)
        );
    }
    let ok = samples(&mut out, kinds, results) && !warmup_errors;
    let ok = footer(&mut out, results, ok);
    (out, ok, gap)
}

/// A target's verdict: not judged in a quick run, whose debug figures mean nothing.
fn verdict(settings: &Settings, pass: bool) -> &'static str {
    if settings.quick { "not judged in a quick run" } else { mark(pass) }
}

/// The sixth section's goal over its latencies: with `deferred+cache`, p50 within
/// [`DEFERRED_P50_GAP_MS`] of plain's and the throughput bound by CPU, not latency, at each;
/// `false` when it is missed in a full run.
fn deferred_goal(settings: &Settings, goals: &[(Duration, Option<Goal>)]) -> (String, bool) {
    let mut out = format!(
        "\ngoal: with deferred+cache, p50 within {DEFERRED_P50_GAP_MS} ms of plain's (one connection) and the throughput\n\
         \x20 bound by its own work, not latency (at least {DEFERRED_MULTIPLE} x paid's limit), at every latency:"
    );
    let mut met = true;
    for (latency, goal) in goals {
        let line = match goal {
            Some(goal) => {
                met &= goal.p50_met() && goal.multiple_met();
                format!(
                    "p50 {:+.3} ms ({}), {:.1} x paid's limit ({}), cores {} of plain's",
                    goal.p50_gap_ms,
                    verdict(settings, goal.p50_met()),
                    goal.multiple,
                    verdict(settings, goal.multiple_met()),
                    goal.busy.map_or("n/a".to_owned(), |busy| format!("{busy:.3}")),
                )
            }
            None => {
                met = false;
                "plain and deferred+cache were not both driven".to_owned()
            }
        };
        let _ = write!(out, "\n  +{:<7} {line}", format!("{} ms", latency.as_millis()));
    }
    let ok = if settings.quick {
        out.push_str("\ngoal: not judged in a quick run (debug figures)");
        true
    } else if goals.iter().all(|(_, goal)| goal.is_some()) {
        out.push_str(if met { "\ngoal: passed" } else { "\ngoal: FAILED (missed, see above)" });
        met
    } else {
        // A partial run (`--only`): nothing to judge against.
        out.push_str("\ngoal: not judged (drive plain and deferred+cache to judge it)");
        true
    };
    (out, ok)
}

/// A file's identity (device and inode, on Unix): another one once the journal compacted
/// itself (a fresh file renamed over it).
type FileId = (u64, u64);

/// The identity of the file at `path`, where the platform tells.
fn file_id(path: &Path) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let metadata = std::fs::metadata(path).ok()?;
        Some((metadata.dev(), metadata.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// What a deferring server's journal file holds: its lines by event, and its records.
#[derive(Debug, Default)]
struct DeferredLines {
    /// `deferred` lines: a settlement written down ahead of its answer.
    deferred: u64,
    /// `settling` lines: written ahead of the settle call.
    settling: u64,
    /// `done` lines: a settlement forgotten once settled.
    done: u64,
    /// Deferred settlements (records marked `deferred`), by id.
    records: u64,
    /// Of them, those whose first line is their `settling` one: copied so by a compaction.
    copied: u64,
    /// Records not marked `deferred`: calls settled synchronously.
    synchronous: u64,
    /// Records written down and not forgotten.
    open: u64,
    /// `done` lines of no record written down before, and other lines.
    other: u64,
    bytes: usize,
}

impl DeferredLines {
    /// Reads the journal at `path`.
    fn read(path: &Path) -> io::Result<DeferredLines> {
        let text = std::fs::read_to_string(path)?;
        let mut lines = DeferredLines { bytes: text.len(), ..DeferredLines::default() };
        let mut open = std::collections::HashSet::new();
        for line in text.lines() {
            let line = serde_json::from_str::<serde_json::Value>(line).unwrap_or_default();
            let id = line.get("id").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
            let deferred = line.get("deferred").and_then(serde_json::Value::as_bool) == Some(true);
            match line.get("event").and_then(serde_json::Value::as_str) {
                Some(event @ ("deferred" | "settling")) if !id.is_empty() => {
                    if event == "deferred" {
                        lines.deferred += 1;
                    } else {
                        lines.settling += 1;
                    }
                    if open.insert(id) {
                        match (deferred, event) {
                            (true, "deferred") => lines.records += 1,
                            (true, _) => {
                                lines.records += 1;
                                lines.copied += 1;
                            }
                            (false, _) => lines.synchronous += 1,
                        }
                    }
                }
                Some("done") => {
                    lines.done += 1;
                    if !open.remove(&id) {
                        lines.other += 1;
                    }
                }
                _ => lines.other += 1,
            }
        }
        lines.open = open.len() as u64;
        Ok(lines)
    }

    /// Every deferred settlement written down was forgotten once settled, and nothing
    /// else is there.
    fn settled(&self) -> bool {
        self.records > 0
            && self.done == self.records
            && self.open == 0
            && self.synchronous == 0
            && self.other == 0
    }
}

/// After the sixth section: each deferring server drained (within [`DRAIN_LIMIT`]: none
/// left in flight), no settlement of unknown outcome in its journal, and its journal file
/// read: as many `done` lines as deferred settlements written down, none open, none settled
/// synchronously; `false` when one of them is not so.
fn deferred_settled(
    runtime: &tokio::runtime::Runtime,
    scratch: Option<&Scratch>,
    deferring: &[(Kind, Payments, Option<FileId>)],
) -> (String, bool) {
    let mut out = "\nafter the section: every deferred settlement settled in the background, then forgotten:"
        .to_owned();
    let mut ok = true;
    for (kind, payments, created) in deferring {
        let started = Instant::now();
        let left = runtime.block_on(payments.drain(DRAIN_LIMIT));
        let drained = started.elapsed();
        let unknown = match runtime
            .block_on(payments.pending_settlements().list(nvm_runtime::SettlementStatus::Unknown))
        {
            Ok(records) => {
                let pass = records.is_empty();
                ok &= pass;
                format!(
                    "{} of unknown outcome in the journal (asserted none: {})",
                    records.len(),
                    ok_or_failed(pass)
                )
            }
            Err(error) => {
                ok = false;
                format!("the journal unreadable: {error} (FAILED)")
            }
        };
        ok &= left == 0;
        let _ = write!(
            out,
            "\n  {:<14} drained in {:.2} s: {left} in flight left (asserted 0: {}); {unknown}",
            kind.name(),
            drained.as_secs_f64(),
            ok_or_failed(left == 0)
        );
        let Some(path) = scratch.map(|scratch| scratch.deferred_journal(*kind)) else {
            ok = false;
            out.push_str("\n  the journal file: none (FAILED)");
            continue;
        };
        // A `done` line is written after its settle call returns, not waited for: read
        // again, for a moment, until they are all there.
        let deadline = Instant::now() + Duration::from_secs(2);
        let lines = loop {
            match DeferredLines::read(&path) {
                Ok(lines) if !lines.settled() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                read => break read,
            }
        };
        let line = match lines {
            Ok(lines) => {
                let pass = lines.settled();
                ok &= pass;
                let now = file_id(&path);
                let compacted = if lines.copied > 0 || created.zip(now).is_some_and(|(a, b)| a != b) {
                    "compacted during the run (past 32 MiB, rewritten with its open records): the lines since"
                } else if created.is_some() && now.is_some() {
                    "every line of the run"
                } else {
                    "its lines"
                };
                format!(
                    "journal, {compacted}, {:.1} MB: {} `deferred` lines, {} `settling`, {} `done`; {} deferred \
                     settlements written down ({} of them copied by the compaction), {} forgotten once settled, {} \
                     open, {} settled synchronously, {} other lines (asserted as many `done` as deferred \
                     settlements, none open, none synchronous, none other: {})",
                    lines.bytes as f64 / 1e6,
                    lines.deferred,
                    lines.settling,
                    lines.done,
                    lines.records,
                    lines.copied,
                    lines.done,
                    lines.open,
                    lines.synchronous,
                    lines.other,
                    ok_or_failed(pass)
                )
            }
            Err(error) => {
                ok = false;
                format!("{} unreadable: {error} (FAILED)", path.display())
            }
        };
        let _ = write!(out, "\n  {:<14} {line}", "");
    }
    (out, ok)
}

fn ok_or_failed(pass: bool) -> &'static str {
    if pass { "ok" } else { "FAILED" }
}
