//! Browsers: a web page on another origin pays with `fetch` in a real headless Chromium
//! (the distribution's `chromium`, installed with `apt-get` when missing), through
//! `payment_cors`; the same page against a server without it cannot read the payment
//! headers; and a person who opens a paid URL gets the HTML page, screenshotted to
//! `target/browser-artifacts/paywall.png`.
//!
//! Chromium is driven by its own command line: `--dump-dom` prints the DOM once the
//! page's scripts are done (`--virtual-time-budget`), `--screenshot` saves a PNG.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};
use nvm_runtime::__private::local::LocalFacilitatorExt as _;
use nvm_runtime::Environment;
use nvm_runtime::actix::cors::actix_cors::Cors;
use nvm_runtime::actix::cors::payment_cors;
use nvm_runtime::client::{Subscriber, TokenOptions};
use nvm_runtime::local::LocalFacilitator;
use nvm_runtime::wire::Accepted;
use nvm_runtime::{Payments, paid};
use nvm_tests::{DEMO_AGENT_ID, DEMO_PLAN_ID, http, payments_for};

/// The paying page (origin A), its script included.
const PAY_PAGE: &str = include_str!("browser/pay.html");

/// What the paid routes charge.
const PRICE: u64 = 2;

#[derive(serde::Deserialize)]
struct Question {
    query: String,
}

#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2, description = "Answers a question")]
#[actix_web::post("/ask")]
async fn ask(question: web::Json<Question>) -> HttpResponse {
    HttpResponse::Ok().body(format!("the answer to {}", question.query))
}

#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 2, description = "The quarterly report")]
#[actix_web::get("/report")]
async fn report() -> HttpResponse {
    HttpResponse::Ok().body("the quarterly report")
}

/// An actix server on 127.0.0.1 (any free port), stopped when dropped.
struct Server {
    url: String,
    handle: ServerHandle,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

/// Serves the app the factory builds, on the current actix runtime.
macro_rules! serve {
    ($factory:expr) => {{
        let server = HttpServer::new($factory)
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Server { url, handle }
    }};
}

/// Origin B: the paid routes, wrapped (from the outside) in `cors`.
fn seller(payments: &Payments, cors: impl Fn() -> Cors + Send + Clone + 'static) -> Server {
    let payments = payments.clone();
    serve!(move || App::new().wrap(cors()).app_data(payments.clone()).service(ask).service(report))
}

/// Origin A: the paying page at `/`, and `POST /token`, which mints a token for the
/// accepted plan the page posts, with the buyer's key (it never reaches the page).
fn buyer_site(local: &LocalFacilitator) -> Server {
    let subscriber = Subscriber::builder()
        .api_key(local.subscriber_api_key())
        .backend_url(local.backend_url())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("subscriber config");
    let subscriber = web::Data::new(subscriber);
    serve!(move || {
        App::new()
            .app_data(subscriber.clone())
            .route(
                "/",
                web::get().to(|| async {
                    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(PAY_PAGE)
                }),
            )
            .route("/token", web::post().to(mint))
    })
}

async fn mint(subscriber: web::Data<Subscriber>, accepted: web::Json<Accepted>) -> HttpResponse {
    match subscriber.mint(&accepted, &TokenOptions::default()).await {
        Ok(token) => HttpResponse::Ok().content_type("text/plain").body(token.as_str().to_owned()),
        Err(error) => HttpResponse::BadGateway().body(error.to_string()),
    }
}

/// The text of the element `<pre id="result">` of a dumped DOM.
fn result_of(dom: &str) -> &str {
    let start = dom.find("<pre id=\"result\">").map(|i| i + "<pre id=\"result\">".len());
    let text = start.map_or("", |start| &dom[start..]);
    text.split("</pre>").next().unwrap_or_default()
}

#[actix_web::test]
async fn a_page_on_another_origin_pays_with_fetch_and_a_person_sees_the_price() {
    let chromium = Chromium::find_or_install();
    let started = Instant::now();
    let local = LocalFacilitator::start().unwrap();
    // The sandbox's checkout page is linked; the calls still go to the local facilitator.
    let payments = payments_for(&local).environment(Environment::Sandbox).build().unwrap();
    let site = buyer_site(&local);
    let origin = site.url.clone();

    // 1. Negative control: CORS lets the page send its headers, but exposes none of the
    // payment headers. The page sees a 402 and cannot read why: it pays nothing.
    let allow_origin = origin.clone();
    let without_helper = seller(&payments, move || {
        Cors::default()
            .allowed_origin(&allow_origin)
            .allowed_methods(["GET", "POST"])
            .allowed_headers(["content-type", "payment-signature"])
    });
    let dom = chromium.dump_dom(&format!("{origin}/?target={}/ask", without_helper.url)).await;
    assert_eq!(
        result_of(&dom),
        "FAILED payment-required is not readable on the 402",
        "without payment_cors the page must not read the envelope; the DOM:\n{dom}"
    );
    assert_eq!(local.total_burned(), 0);

    // 2. With `payment_cors`: 402 → envelope read → token from the page's own server →
    // paid retry → receipt read.
    let allow_origin = origin.clone();
    let with_helper = seller(&payments, move || {
        payment_cors(Cors::default().allowed_origin(&allow_origin).allowed_methods(["GET", "POST"]))
    });
    let dom = chromium.dump_dom(&format!("{origin}/?target={}/ask", with_helper.url)).await;
    assert_eq!(
        result_of(&dom),
        format!("PAID status=200 credits={PRICE} success=true plan={DEMO_PLAN_ID} content=the answer to hi"),
        "the DOM:\n{dom}"
    );
    assert!(dom.contains("unpaid: 402"), "{dom}");
    // The facilitator burned exactly the price, from the buyer's balance.
    assert_eq!(local.total_burned(), PRICE);
    assert_eq!(local.balance(DEMO_PLAN_ID, local.subscriber_address()), 100 - PRICE);

    // 3. A person opens the paid URL: the HTML page, with the price and the checkout link.
    let url = format!("{}/report", with_helper.url);
    let page = chromium.dump_dom(&url).await;
    assert!(page.contains("<h1>The quarterly report</h1>"), "{page}");
    assert!(page.contains("402 · Payment required"), "{page}");
    assert!(page.contains("<code>GET /report</code>"), "{page}");
    assert!(page.contains(&format!("<code>{DEMO_PLAN_ID}</code>")), "{page}");
    assert!(page.contains(&format!("/checkout/{DEMO_PLAN_ID}\">Buy credits on Nevermined</a>")), "{page}");
    // The price the route asks, in credits.
    assert!(page.contains(&format!("<strong>{PRICE} credits</strong> per request")), "{page}");
    let screenshot = artifacts_dir().join("paywall.png");
    chromium.screenshot(&url, &screenshot).await;
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
        "{} is not a screenshot",
        screenshot.display()
    );
    eprintln!(
        "screenshot: {} ({} bytes); browser test took {:?}",
        screenshot.display(),
        png.len(),
        started.elapsed()
    );
    // Opening it burned nothing.
    assert_eq!(local.total_burned(), PRICE);
}

/// What Chromium sends when it opens a URL.
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";

/// The HTML page and the JSON body are two forms of one 402: same envelope, same
/// headers, chosen by `Accept`; a paid request is served whatever it accepts; the
/// `on_payment_error` hook still wins.
#[actix_web::test]
async fn the_html_402_is_the_json_402_for_a_person() {
    let local = LocalFacilitator::start().unwrap();
    // The sandbox's checkout page is linked; the calls still go to the local facilitator.
    let payments = payments_for(&local).environment(Environment::Sandbox).build().unwrap();
    let server = seller(&payments, || {
        payment_cors(Cors::default().allowed_origin("https://app.example").allowed_methods(["GET"]))
    });
    let url = format!("{}/report", server.url);

    let page = http()
        .get(&url)
        .header("accept", BROWSER_ACCEPT)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    let json = http().get(&url).header("accept", "*/*").send().await.unwrap();
    assert_eq!((page.status().as_u16(), json.status().as_u16()), (402, 402));
    let header = |response: &reqwest::Response, name: &str| {
        response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(header(&page, "content-type").as_deref(), Some("text/html; charset=utf-8"));
    assert_eq!(header(&json, "content-type").as_deref(), Some("application/json"));
    for response in [&page, &json] {
        assert_eq!(header(response, "cache-control").as_deref(), Some("no-store"));
        assert!(header(response, "vary").unwrap().contains("Accept"), "{:?}", response.headers());
    }
    assert_eq!(header(&page, "payment-required"), header(&json, "payment-required"));
    // The CORS layer outside the paid route dresses the HTML 402 too.
    assert_eq!(header(&page, "access-control-allow-origin").as_deref(), Some("https://app.example"));
    assert!(header(&page, "access-control-expose-headers").unwrap().contains("payment-required"));
    let body = page.text().await.unwrap();
    assert!(body.contains(&format!("/checkout/{DEMO_PLAN_ID}\"")), "{body}");
    let body: serde_json::Value = json.json().await.unwrap();
    assert_eq!(body["error"], "Payment Required");

    // application/json, or nothing said, stays JSON.
    for accept in ["application/json", "application/json, text/html;q=0.9"] {
        let response = http().get(&url).header("accept", accept).send().await.unwrap();
        assert_eq!(header(&response, "content-type").as_deref(), Some("application/json"), "{accept}");
    }
    let response = http().get(&url).send().await.unwrap();
    assert_eq!(header(&response, "content-type").as_deref(), Some("application/json"));

    // Paid, a browser's Accept gets the content.
    let token = local.mint_token(nvm_runtime::__private::local::MintOptions::new());
    let paid = http()
        .get(&url)
        .header("accept", BROWSER_ACCEPT)
        .header("payment-signature", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    assert_eq!(paid.text().await.unwrap(), "the quarterly report");
    assert_eq!(local.total_burned(), PRICE);

    // The hook's answer replaces the page as it replaces the JSON.
    let hooked = payments_for(&local)
        .on_payment_error(|_, _| Some(HttpResponse::PaymentRequired().body("pay at the counter")))
        .build()
        .unwrap();
    let server = seller(&hooked, Cors::default);
    let response =
        http().get(format!("{}/report", server.url)).header("accept", BROWSER_ACCEPT).send().await.unwrap();
    assert_eq!(response.status(), 402);
    assert_eq!(response.text().await.unwrap(), "pay at the counter");
}

/// `target/browser-artifacts/`: under `CARGO_TARGET_DIR` when it is set (relative to the
/// workspace), else the workspace's `target/`; created.
fn artifacts_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace.join(dir),
        _ => workspace.join("target"),
    };
    let dir = target.join("browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A headless Chromium, started once per page with a fresh profile.
struct Chromium {
    binary: PathBuf,
}

/// How long one Chromium run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

impl Chromium {
    /// Chromium of the distribution (`/usr/bin/chromium`, or `chromium` /
    /// `chromium-browser` on the `PATH`), installed with `apt-get` when missing; fails
    /// the test, saying how to install it, when it cannot be had.
    fn find_or_install() -> Self {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            if Self::find().is_some() {
                return;
            }
            eprintln!(
                "chromium is missing: installing it from the distribution's packages (apt-get install -y chromium)"
            );
            let installed = Command::new("sh")
                .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium"])
                .stdout(Stdio::null())
                .status();
            if !installed.as_ref().is_ok_and(|status| status.success()) {
                eprintln!("apt-get install chromium failed: {installed:?}");
            }
        });
        let binary = Self::find().unwrap_or_else(|| {
            panic!(
                "Chromium is missing and `apt-get install -y chromium` did not install it: the browser tests \
                 need a real Chromium; install it with `apt-get install -y chromium` (Debian) or \
                 `apt-get install -y chromium-browser` (Ubuntu) so that `chromium` is on the PATH (.ci/run does)"
            )
        });
        Chromium { binary }
    }

    fn find() -> Option<PathBuf> {
        let default = PathBuf::from("/usr/bin/chromium");
        if default.is_file() {
            return Some(default);
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|dir| [dir.join("chromium"), dir.join("chromium-browser")])
            .find(|candidate| candidate.is_file())
    }

    /// The DOM of `url` once its scripts have settled.
    async fn dump_dom(&self, url: &str) -> String {
        let args = vec!["--dump-dom".to_owned(), "--virtual-time-budget=10000".to_owned(), url.to_owned()];
        let binary = self.binary.clone();
        actix_web::rt::task::spawn_blocking(move || run(&binary, args)).await.unwrap()
    }

    /// A 1000×700 PNG of `url`, written to `path`.
    async fn screenshot(&self, url: &str, path: &Path) {
        let _ = std::fs::remove_file(path);
        let args = vec![
            format!("--screenshot={}", path.display()),
            "--window-size=1000,700".to_owned(),
            "--hide-scrollbars".to_owned(),
            url.to_owned(),
        ];
        let binary = self.binary.clone();
        actix_web::rt::task::spawn_blocking(move || run(&binary, args)).await.unwrap();
        assert!(path.is_file(), "Chromium wrote no screenshot at {}", path.display());
    }
}

/// Runs Chromium headless with `args` and a fresh profile; its standard output. Runs
/// off the test's actix runtime (the servers it talks to run there).
fn run(binary: &Path, args: Vec<String>) -> String {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let profile = std::env::temp_dir().join(format!(
        "nvm-browser-test-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&profile).unwrap();
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            // Without these, Chromium's own connections are refused on a closed network.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-proxy-server",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} could not be started: {e}", binary.display()));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let _ = std::fs::remove_dir_all(&profile);
    match status {
        Some(status) if status.success() => stdout,
        Some(status) => panic!("chromium {args:?} failed ({status}); its stderr:\n{stderr}"),
        None => panic!("chromium {args:?} did not finish within {RUN_LIMIT:?}; its stderr:\n{stderr}"),
    }
}
