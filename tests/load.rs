//! Load with exact accounting: thousands of concurrent requests with a mix of outcomes
//! against `#[paid]` handlers and `PaymentMiddleware` routes, then every credit is
//! accounted for.
//!
//! The mix: paid 2xx, dynamic credits, usage-based `charge`, handler 4xx, handler 5xx,
//! handler panics, no token, expired tokens, subscribers whose balance runs out
//! mid-test (refused at verify, or verified and then refused at settle when concurrent
//! requests raced for the last credits), and clients that hang up mid-request (the
//! request future is dropped after a short timeout while the handler sleeps).
//!
//! # How credits are accounted
//!
//! Three independent books are kept:
//!
//! 1. the client's: every response, its status and its `payment-response` receipt;
//! 2. the server's: each handler records the request id and the credits it charges
//!    when it returns 2xx, and the `after_settle` hook records each successful
//!    settlement by request id;
//! 3. the facilitator's ledger: `total_burned()` and every subscriber's balance.
//!
//! A client that hangs up cannot see its response, but its handler may still finish:
//! actix-web keeps running a handler whose client left, and `#[paid]` then settles a
//! response nobody reads. Such a burn is a service rendered to a client that walked
//! away; it is not lost, it is counted server-side. The checks are therefore strict
//! on both sides of it:
//!
//! - burned (ledger) == Σ balances spent == Σ successful settlements (hook)
//!   == Σ `creditsRedeemed` of the 2xx receipts clients saw + Σ settlements of the
//!   requests whose client hung up;
//! - every settlement belongs to a handler that returned 2xx with exactly that charge
//!   (no burn without a 2xx), and to a request whose client either saw the 2xx with
//!   that receipt or hung up;
//! - every successful receipt a client saw matches a settlement (no receipt without a
//!   burn), and every 2xx a client saw carries one (fail closed);
//! - no handler ran without a successful verification;
//! - afterwards the server's open connections return to 0, the process's file
//!   descriptors to their starting count, and its memory (RSS) near where it was
//!   after a warm-up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::dev::Extensions;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, get, post, web};
use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
use nvm_runtime::local::LocalFacilitator;
use nvm_runtime::{PaymentContext, PaymentMiddleware, Payments, RouteConfig, paid};
use nvm_tests::{Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, payments_for, receipt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Requests of the main test, and how many run at once.
const REQUESTS: u64 = 4_000;
const CONCURRENCY: usize = 64;
/// How long a hanging-up client waits, and how long its handler works.
const HANG_UP_AFTER: Duration = Duration::from_millis(30);
const SLOW_HANDLER: Duration = Duration::from_millis(150);
/// The message of the handlers' deliberate panics (silenced in the output).
const PANIC_MESSAGE: &str = "load test: deliberate handler panic";

/// The server's books, shared by handlers and hooks.
#[derive(Debug, Default)]
struct Books {
    /// Request id → credits charged, for every handler that returned 2xx.
    served: Mutex<HashMap<u64, u64>>,
    /// Request id → credits settled, from `after_settle`.
    settled: Mutex<HashMap<u64, u64>>,
    /// Successful verifications, from `after_verify`.
    verified: AtomicU64,
    /// Handler bodies that ran.
    runs: AtomicU64,
}

impl Books {
    fn serve(&self, req: &HttpRequest, credits: u64) {
        let previous = lock(&self.served).insert(request_id(req), credits);
        assert!(previous.is_none(), "one handler run per request id");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn request_id(req: &HttpRequest) -> u64 {
    header_u64(req, "x-load-id").unwrap_or(u64::MAX)
}

fn header_u64(req: &HttpRequest, name: &str) -> Option<u64> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

fn units(req: &HttpRequest) -> u64 {
    header_u64(req, "x-units").unwrap_or(1)
}

#[post("/ok")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1)]
async fn ok(req: HttpRequest, books: web::Data<Books>) -> HttpResponse {
    books.runs.fetch_add(1, Ordering::SeqCst);
    books.serve(&req, 1);
    HttpResponse::Ok().body("ok")
}

#[post("/dynamic")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = |req: &HttpRequest| units(req))]
async fn dynamic(req: HttpRequest, books: web::Data<Books>, payment: PaymentContext) -> HttpResponse {
    books.runs.fetch_add(1, Ordering::SeqCst);
    books.serve(&req, payment.credits());
    HttpResponse::Ok().body("dynamic")
}

/// Verifies 5, settles what was used (1–5).
#[post("/usage")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 5)]
async fn usage(req: HttpRequest, books: web::Data<Books>, payment: PaymentContext) -> HttpResponse {
    books.runs.fetch_add(1, Ordering::SeqCst);
    let used = units(&req).clamp(1, 5);
    if payment.charge(used).is_err() {
        return HttpResponse::InternalServerError().finish();
    }
    books.serve(&req, used);
    HttpResponse::Ok().body("usage")
}

#[post("/bad")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1)]
async fn bad(books: web::Data<Books>) -> HttpResponse {
    books.runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::BadRequest().body("bad input")
}

#[post("/fail")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1)]
async fn fail(books: web::Data<Books>) -> Result<HttpResponse, actix_web::Error> {
    books.runs.fetch_add(1, Ordering::SeqCst);
    Err(actix_web::error::ErrorServiceUnavailable("upstream down"))
}

#[post("/panic")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1)]
async fn panics(books: web::Data<Books>) -> HttpResponse {
    books.runs.fetch_add(1, Ordering::SeqCst);
    panic!("{PANIC_MESSAGE}")
}

/// Works longer than a hanging-up client waits.
#[post("/slow")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2)]
async fn slow(req: HttpRequest, books: web::Data<Books>) -> HttpResponse {
    books.runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(SLOW_HANDLER).await;
    books.serve(&req, 2);
    HttpResponse::Ok().body("slow")
}

#[get("/health")]
async fn health() -> &'static str {
    "up"
}

async fn middleware_ok(req: HttpRequest, books: web::Data<Books>, payment: PaymentContext) -> HttpResponse {
    books.runs.fetch_add(1, Ordering::SeqCst);
    books.serve(&req, payment.credits());
    HttpResponse::Ok().body("middleware")
}

/// Decrements the open-connection gauge when actix-web drops a connection.
struct Open(Arc<AtomicI64>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The app under load, on 127.0.0.1, with an open-connection gauge.
struct Server {
    url: String,
    open: Arc<AtomicI64>,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn start_server(payments: Payments, books: Arc<Books>) -> Server {
    let open = Arc::new(AtomicI64::new(0));
    let gauge = open.clone();
    let data = web::Data::from(books);
    let server = HttpServer::new(move || {
        let table = PaymentMiddleware::new(payments.clone())
            .route("POST /mw/ok", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(1))
            .route("POST /mw/dynamic", RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(units));
        App::new()
            .app_data(payments.clone())
            .app_data(data.clone())
            .service(ok)
            .service(dynamic)
            .service(usage)
            .service(bad)
            .service(fail)
            .service(panics)
            .service(slow)
            .service(health)
            .service(
                web::scope("/mw")
                    .wrap(table)
                    .route("/ok", web::post().to(middleware_ok))
                    .route("/dynamic", web::post().to(middleware_ok)),
            )
    })
    .on_connect(move |_, extensions: &mut Extensions| {
        gauge.fetch_add(1, Ordering::SeqCst);
        extensions.insert(Open(gauge.clone()));
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(("127.0.0.1", 0))
    .expect("bind 127.0.0.1:0");
    let url = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    let task = actix_web::rt::spawn(server);
    Server { url, open, handle, task }
}

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ok,
    OkPoor,
    Dynamic,
    Usage,
    HandlerBad,
    HandlerFail,
    HandlerPanic,
    HangUp,
    NoToken,
    Expired,
    Middleware,
    MiddlewareDynamicPoor,
}

impl Kind {
    /// The mix, by request number.
    fn of(i: u64) -> Kind {
        match i % 20 {
            0..=4 => Kind::Ok,
            5 | 6 => Kind::OkPoor,
            7 => Kind::Dynamic,
            8 => Kind::Usage,
            9 => Kind::HandlerBad,
            10 => Kind::HandlerFail,
            11 => Kind::HandlerPanic,
            12 | 13 => Kind::HangUp,
            14 => Kind::NoToken,
            15 => Kind::Expired,
            16 | 17 => Kind::Middleware,
            _ => Kind::MiddlewareDynamicPoor,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Ok | Kind::OkPoor | Kind::NoToken | Kind::Expired => "/ok",
            Kind::Dynamic => "/dynamic",
            Kind::Usage => "/usage",
            Kind::HandlerBad => "/bad",
            Kind::HandlerFail => "/fail",
            Kind::HandlerPanic => "/panic",
            Kind::HangUp => "/slow",
            Kind::Middleware => "/mw/ok",
            Kind::MiddlewareDynamicPoor => "/mw/dynamic",
        }
    }

    fn poor(self) -> bool {
        matches!(self, Kind::OkPoor | Kind::MiddlewareDynamicPoor)
    }

    /// The statuses this kind may get (`None`: the client hangs up first). Rich
    /// subscribers never run out, so only the poor ones see a 402 on a paid route.
    fn expected(self) -> &'static [Option<u16>] {
        match self {
            Kind::Ok | Kind::Dynamic | Kind::Usage | Kind::Middleware => &[Some(200)],
            Kind::OkPoor | Kind::MiddlewareDynamicPoor => &[Some(200), Some(402)],
            Kind::HandlerBad => &[Some(400)],
            Kind::HandlerFail => &[Some(503)],
            Kind::HandlerPanic => &[Some(500)],
            Kind::HangUp => &[None],
            Kind::NoToken | Kind::Expired => &[Some(402)],
        }
    }
}

/// What the client saw of one request.
#[derive(Debug)]
struct Seen {
    id: u64,
    kind: Kind,
    /// `None`: the client hung up.
    status: Option<u16>,
    /// The `creditsRedeemed` of a successful receipt.
    redeemed: Option<u64>,
    /// Whether a failed receipt came (a settlement refused after the handler ran).
    failed_receipt: bool,
}

/// The tokens of the run: reusable tokens of rich subscribers and of poor ones.
struct Wallets {
    rich: Vec<String>,
    poor: Vec<String>,
    expired: String,
    holders: Vec<String>,
}

fn wallets(local: &LocalFacilitator) -> Wallets {
    let mut holders = Vec::new();
    let mut rich = Vec::new();
    let mut poor = Vec::new();
    for _ in 0..8 {
        let (_, address) = local.add_subscriber(DEMO_PLAN_ID, 1_000_000);
        rich.push(local.mint_token(MintOptions::new().subscriber(address.as_str())));
        holders.push(address);
    }
    // Few poor subscribers, so their last credits are raced for by concurrent requests.
    for credits in [40, 60, 80] {
        let (_, address) = local.add_subscriber(DEMO_PLAN_ID, credits);
        poor.push(local.mint_token(MintOptions::new().subscriber(address.as_str())));
        holders.push(address);
    }
    let expired = local.mint_token(MintOptions::new().valid_before(1));
    Wallets { rich, poor, expired, holders }
}

async fn one(client: reqwest::Client, base: Arc<str>, wallets: Arc<Wallets>, id: u64) -> Seen {
    let kind = Kind::of(id);
    let mut request = client.post(format!("{base}{}", kind.path())).header("x-load-id", id);
    let pool = if kind.poor() { &wallets.poor } else { &wallets.rich };
    let token = pool[(id as usize / 20) % pool.len()].as_str();
    match kind {
        Kind::NoToken => {}
        Kind::Expired => request = request.header("payment-signature", wallets.expired.as_str()),
        _ => request = request.header("payment-signature", token),
    }
    if matches!(kind, Kind::Dynamic | Kind::Usage | Kind::MiddlewareDynamicPoor) {
        request = request.header("x-units", 1 + id % 5);
    }
    let send = async {
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let receipt = receipt(&response);
        let _ = response.bytes().await;
        (status, receipt)
    };
    let (status, receipt) = if kind == Kind::HangUp {
        match tokio::time::timeout(HANG_UP_AFTER, send).await {
            Ok(answer) => answer,
            Err(_) => return Seen { id, kind, status: None, redeemed: None, failed_receipt: false },
        }
    } else {
        send.await
    };
    let redeemed = receipt
        .as_ref()
        .filter(|r| r.success)
        .map(|r| r.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0));
    let failed_receipt = receipt.as_ref().is_some_and(|r| !r.success);
    Seen { id, kind, status: Some(status), redeemed, failed_receipt }
}

/// Sends `count` requests (ids `first..first + count`), `CONCURRENCY` at a time.
async fn blast(base: &str, wallets: &Arc<Wallets>, first: u64, count: u64) -> Vec<Seen> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let base: Arc<str> = base.into();
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    for id in first..first + count {
        let permit = permits.clone().acquire_owned().await.expect("semaphore open");
        let (client, base, wallets) = (client.clone(), base.clone(), wallets.clone());
        tasks.spawn(async move {
            let seen = one(client, base, wallets, id).await;
            drop(permit);
            seen
        });
    }
    let mut seen = Vec::with_capacity(count as usize);
    while let Some(result) = tasks.join_next().await {
        seen.push(result.expect("request task"));
    }
    seen
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|dir| dir.count()).unwrap_or(0)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()).unwrap_or(0) * 4096
}

/// Waits (at most `limit`) until `done` holds.
async fn settle_down(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn silence_deliberate_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if !message.contains(PANIC_MESSAGE) {
            default(info);
        }
    }));
}

/// Checks the three books against each other; returns the credits reconciled and,
/// among them, those settled for clients who had hung up.
fn reconcile(
    seen: &[Seen],
    books: &Books,
    local: &LocalFacilitator,
    wallets: &Wallets,
    start: &[u64],
) -> (u64, u64) {
    let served = lock(&books.served).clone();
    let settled = lock(&books.settled).clone();
    let burned = local.total_burned();
    let spent: u64 = wallets
        .holders
        .iter()
        .zip(start)
        .map(|(holder, before)| before - local.balance(DEMO_PLAN_ID, holder))
        .sum();
    let settled_total: u64 = settled.values().sum();
    assert_eq!(spent, burned, "balances spent == ledger burn");
    assert_eq!(settled_total, burned, "settlements seen by the server == ledger burn");

    let mut receipts = 0;
    let mut walked_away = 0;
    let by_id: HashMap<u64, &Seen> = seen.iter().map(|s| (s.id, s)).collect();
    assert_eq!(by_id.len(), seen.len(), "one answer per request");
    for s in seen {
        assert!(s.kind.expected().contains(&s.status), "{s:?}: expected {:?}", s.kind.expected());
        match (s.status, s.redeemed) {
            (Some(status), Some(credits)) => {
                assert!((200..300).contains(&status), "{s:?}: a successful receipt on a non-2xx");
                assert_eq!(settled.get(&s.id), Some(&credits), "{s:?}: no receipt without a burn");
                receipts += credits;
            }
            (Some(status), None) => {
                assert!(!(200..300).contains(&status), "{s:?}: a 2xx without a successful settlement");
                assert!(!settled.contains_key(&s.id), "{s:?}: a burn without a delivered 2xx");
            }
            (None, _) => walked_away += settled.get(&s.id).copied().unwrap_or(0),
        }
    }
    for (id, credits) in &settled {
        assert_eq!(served.get(id), Some(credits), "request {id}: a burn without a handler's 2xx for it");
        let client = by_id.get(id).unwrap_or_else(|| panic!("request {id}: settled but never sent"));
        assert!(client.status.is_none() || client.redeemed == Some(*credits), "request {id}: {client:?}");
    }
    assert_eq!(receipts + walked_away, burned, "receipts seen + burns of clients who left == burned");
    let verified = books.verified.load(Ordering::SeqCst);
    let runs = books.runs.load(Ordering::SeqCst);
    assert!(runs <= verified, "{runs} handler runs for {verified} verifications");
    (burned, walked_away)
}

/// Counts of what the clients saw, for the report.
fn summary(seen: &[Seen]) -> String {
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for s in seen {
        let key = match (s.status, s.failed_receipt) {
            (None, _) => "hung up".to_owned(),
            (Some(status), true) => format!("{status} (failed settle)"),
            (Some(status), false) => status.to_string(),
        };
        *by_status.entry(key).or_default() += 1;
    }
    let mut counts: Vec<_> = by_status.into_iter().collect();
    counts.sort();
    format!("{counts:?}")
}

/// One full run: warm-up, `requests` under load, reconciliation, clean shutdown.
async fn run_load(requests: u64, rounds: u64) {
    silence_deliberate_panics();
    let fds_at_start = open_fds();
    let local = LocalFacilitator::start().expect("local facilitator");
    let wallets = Arc::new(wallets(&local));
    let start_balances: Vec<u64> = wallets.holders.iter().map(|h| local.balance(DEMO_PLAN_ID, h)).collect();
    let books = Arc::new(Books::default());
    let (on_settle, on_verify) = (books.clone(), books.clone());
    let payments = payments_for(&local)
        .timeout(Duration::from_secs(10))
        .after_verify(move |_, _| {
            on_verify.verified.fetch_add(1, Ordering::SeqCst);
        })
        .after_settle(move |req, credits, receipt| {
            assert!(receipt.success);
            let previous = lock(&on_settle.settled).insert(request_id(req), credits);
            assert!(previous.is_none(), "one settlement per request");
        })
        .build()
        .expect("payments");
    let server = start_server(payments, books.clone());
    assert_eq!(reqwest::get(format!("{}/health", server.url)).await.expect("up").status(), 200);

    // Warm-up: pools, caches and allocator arenas reach their working size.
    let started = Instant::now();
    let mut seen = blast(&server.url, &wallets, 0, 400).await;
    assert!(settle_down(Duration::from_secs(5), || server.open.load(Ordering::SeqCst) == 0).await);
    let rss_warm = rss_bytes();
    let mut next = 400;
    for round in 0..rounds {
        let round_started = Instant::now();
        seen.extend(blast(&server.url, &wallets, next, requests).await);
        next += requests;
        eprintln!(
            "round {round}: {requests} requests in {:?}, RSS {} MiB",
            round_started.elapsed(),
            rss_bytes() >> 20
        );
    }
    // Handlers of clients that hung up finish on their own; then the books close.
    tokio::time::sleep(SLOW_HANDLER + Duration::from_millis(100)).await;
    let connections_closed =
        settle_down(Duration::from_secs(5), || server.open.load(Ordering::SeqCst) == 0).await;
    assert!(connections_closed, "{} connections still open", server.open.load(Ordering::SeqCst));
    let (burned, walked_away) = reconcile(&seen, &books, &local, &wallets, &start_balances);
    let rss_end = rss_bytes();
    let growth = rss_end.saturating_sub(rss_warm);
    eprintln!(
        "{} requests in {:?}: {}; {burned} credits reconciled ({walked_away} settled for clients who hung up); \
         {} verify / {} settle calls; RSS {} → {} MiB",
        seen.len(),
        started.elapsed(),
        summary(&seen),
        Calls::of(&local).verify,
        Calls::of(&local).settle,
        rss_warm >> 20,
        rss_end >> 20,
    );
    // Allocators keep some of what they got, and the local facilitator, in this same
    // process, keeps every verification in its ledger (request id and settlement
    // result, about 1 KiB each, for idempotent settles): that part grows with the
    // request count by design. Without it the seller's side stays flat (measured: 3 MiB
    // over 20,000 requests). A leak of a connection or a request state would be far
    // beyond this bound.
    let allowed = (32 + 8 * rounds) << 20;
    assert!(growth < allowed, "RSS grew by {} MiB after the warm-up", growth >> 20);
    assert!(seen.iter().any(|s| s.status.is_none()), "some clients hung up");
    // The race the mix is built for happened: poor subscribers' concurrent requests
    // were verified for their last credits and lost at settle (402 with a failed
    // receipt), besides those refused at verify.
    let lost_at_settle = seen.iter().filter(|s| s.status == Some(402) && s.failed_receipt).count();
    let refused_at_verify = seen.iter().filter(|s| s.status == Some(402) && !s.failed_receipt).count();
    assert!(
        lost_at_settle > 0,
        "no request lost the race for the last credits at settle: {}",
        summary(&seen)
    );
    assert!(refused_at_verify > 0, "no request was refused at verify: {}", summary(&seen));

    // Everything stops by itself and gives back its file descriptors.
    server.handle.stop(false).await;
    server.task.await.expect("server task").expect("server ran");
    local.stop();
    drop(books);
    let fds_returned = settle_down(Duration::from_secs(5), || open_fds() <= fds_at_start + 2).await;
    assert!(fds_returned, "{} file descriptors open, {fds_at_start} at the start", open_fds());
}

#[actix_web::test]
async fn thousands_of_mixed_requests_account_for_every_credit() {
    tokio::time::timeout(Duration::from_secs(120), run_load(REQUESTS, 1)).await.expect("bounded in time");
}

/// A longer soak: five rounds of the same load; memory must stay flat across them.
#[actix_web::test]
#[ignore = "a soak of ~20,000 requests; run with --ignored"]
async fn soak() {
    tokio::time::timeout(Duration::from_secs(600), run_load(4_000, 5)).await.expect("bounded in time");
}
