//! Streamed responses settled after their body, on both forms, against the local
//! facilitator's ledger: the rules of the README's "Streaming" table.
//!
//! - the body ends normally: the metered amount is settled once (the route's price when
//!   nothing was metered), and an SSE body ends with a `payment-response` event;
//! - the handler's stream yields an error: nothing is settled;
//! - the client hangs up mid-stream: what was metered so far is settled;
//! - a metered amount of 0: no settle call at all;
//! - the meter refuses past the verified cap;
//! - the first byte does not wait for the facilitator (settlement after the body), and
//!   does with `settle = "before_body"`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use actix_web::{HttpResponse, post, web};
use futures_core::Stream;
use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
use nvm_runtime::client::PaymentOutcome;
use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
use nvm_runtime::wire::SettleResponse;
use nvm_runtime::{Meter, PaymentContext, PaymentMiddleware, Payments, RouteConfig, SettlePoint, paid};
use nvm_tests::{Calls, DEMO_AGENT_ID, DEMO_PLAN_ID, TestServer, http, payments_for, receipt_field, serve};

/// The routes' price, and the meter's cap.
const PRICE: u64 = 10;

/// What a stream does, from the query string.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
struct Plan {
    /// Words produced.
    words: u64,
    /// Meter one credit per word (else the meter is never taken).
    #[serde(default)]
    meter: bool,
    /// Yield an error instead of this word.
    fail_at: Option<u64>,
    /// Milliseconds between words.
    #[serde(default)]
    delay_ms: u64,
}

/// The last meter handed out, for the test to read.
#[derive(Clone, Default)]
struct LastMeter(Arc<Mutex<Option<Meter>>>);

/// A word-by-word SSE answer.
struct Words {
    plan: Plan,
    next: u64,
    meter: Option<Meter>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for Words {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.next >= this.plan.words {
            return Poll::Ready(None);
        }
        if this.plan.delay_ms > 0 {
            let sleep = this.sleep.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep(Duration::from_millis(this.plan.delay_ms)))
            });
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let word = this.next;
        this.next += 1;
        if this.plan.fail_at == Some(word) {
            return Poll::Ready(Some(Err(std::io::Error::other("the model failed mid-answer"))));
        }
        if let Some(meter) = &this.meter
            && meter.add(1).is_err()
        {
            // Past the verified cap: stop producing.
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Bytes::from(format!("data: word{word}\n\n")))))
    }
}

use std::future::Future as _;

fn answer(plan: Plan, payment: &PaymentContext, last: &LastMeter) -> HttpResponse {
    let meter = plan.meter.then(|| payment.meter());
    *last.0.lock().unwrap() = meter.clone();
    HttpResponse::Ok().content_type("text/event-stream").streaming(Words {
        plan,
        next: 0,
        meter,
        sleep: None,
    })
}

#[post("/stream")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 10)]
async fn paid_stream(
    plan: web::Query<Plan>,
    payment: PaymentContext,
    last: web::Data<LastMeter>,
) -> HttpResponse {
    answer(plan.into_inner(), &payment, &last)
}

#[post("/held")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 10, settle = "before_body")]
async fn held_stream(
    plan: web::Query<Plan>,
    payment: PaymentContext,
    last: web::Data<LastMeter>,
) -> HttpResponse {
    answer(plan.into_inner(), &payment, &last)
}

async fn middleware_stream(
    plan: web::Query<Plan>,
    payment: PaymentContext,
    last: web::Data<LastMeter>,
) -> HttpResponse {
    answer(plan.into_inner(), &payment, &last)
}

/// 100 MB of octets in 64 KiB chunks, for the memory test.
struct Octets {
    left: usize,
}

const CHUNK: &[u8] = &[b'x'; 64 * 1024];

impl Stream for Octets {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len());
        self.left -= n;
        Poll::Ready(Some(Ok(Bytes::from_static(&CHUNK[..n]))))
    }
}

/// `words` words through `Meter::stream`, 1 credit each, capped at the price.
#[post("/metered")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 10, settle = "after_body")]
async fn metered_stream(plan: web::Query<Plan>, payment: PaymentContext) -> HttpResponse {
    let words = (0..plan.words).map(|i| Ok::<_, std::io::Error>(Bytes::from(format!("data: word{i}\n\n"))));
    let body = payment.meter().stream(futures_util::stream::iter(words), |_word| 1);
    HttpResponse::Ok().content_type("text/event-stream").streaming(body)
}

/// A large download, not SSE: its receipt reaches the seller's hooks.
#[post("/big")]
#[paid(plan = DEMO_PLAN_ID, agent = DEMO_AGENT_ID, credits = 1)]
async fn big(size: web::Query<Size>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/octet-stream").streaming(Octets { left: size.bytes })
}

#[derive(Debug, Clone, Copy, serde::Deserialize)]
struct Size {
    bytes: usize,
}

#[derive(Debug, Clone, Copy)]
enum Form {
    Macro,
    Middleware,
}

impl Form {
    fn path(self) -> &'static str {
        match self {
            Form::Macro => "/stream",
            Form::Middleware => "/mw/stream",
        }
    }
}

struct Rig {
    local: LocalFacilitator,
    server: TestServer,
    last: LastMeter,
    failed: Arc<Mutex<Vec<(u64, SettleResponse)>>>,
    settled: Arc<Mutex<Vec<SettleResponse>>>,
}

impl Rig {
    fn new() -> Rig {
        let local = LocalFacilitator::start().unwrap();
        let failed = Arc::new(Mutex::new(Vec::new()));
        let seen = failed.clone();
        let settled = Arc::new(Mutex::new(Vec::new()));
        let settled_seen = settled.clone();
        let payments = payments_for(&local)
            .on_settle_failed(move |_, credits, receipt| {
                seen.lock().unwrap().push((credits, receipt.clone()))
            })
            .after_settle(move |_, _, receipt| settled_seen.lock().unwrap().push(receipt.clone()))
            .build()
            .unwrap();
        let last = LastMeter::default();
        let server = serve(Some(payments.clone()), routes(payments, last.clone()));
        Rig { local, server, last, failed, settled }
    }

    fn balance(&self) -> u64 {
        self.local.balance(DEMO_PLAN_ID, self.local.subscriber_address())
    }

    fn token(&self) -> String {
        self.local.mint_token(MintOptions::new())
    }

    fn metered(&self) -> u64 {
        self.last.0.lock().unwrap().as_ref().map_or(0, Meter::total)
    }
}

fn routes(payments: Payments, last: LastMeter) -> impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static {
    move |cfg: &mut web::ServiceConfig| {
        let table = PaymentMiddleware::new(payments.clone()).route(
            "POST /mw/stream",
            RouteConfig::new(DEMO_PLAN_ID).agent(DEMO_AGENT_ID).credits(PRICE).settle(SettlePoint::AfterBody),
        );
        cfg.app_data(web::Data::new(last.clone()))
            .service(paid_stream)
            .service(held_stream)
            .service(big)
            .service(metered_stream)
            .service(web::scope("/mw").wrap(table).route("/stream", web::post().to(middleware_stream)));
    }
}

/// The whole answer, its status, and the receipt of its last `payment-response` event.
async fn call(rig: &Rig, path: &str, query: &str) -> (u16, String, Option<SettleResponse>) {
    let url = format!("{}?{query}", rig.server.at(path));
    let response = http().post(url).header("payment-signature", rig.token()).send().await.unwrap();
    let status = response.status().as_u16();
    assert!(response.headers().get("payment-response").is_none(), "a streamed head carries no receipt");
    let text = response.text().await.unwrap_or_default();
    let receipt = nvm_runtime::__private::wire::event_stream_receipt(&text);
    (status, text, receipt)
}

/// Waits (at most 3 s) until the local facilitator received `n` settle calls.
async fn settles(local: &LocalFacilitator, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Calls::of(local).settle < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Calls::of(local).settle
}

#[actix_web::test]
async fn a_stream_that_ends_settles_what_it_metered_once() {
    for form in [Form::Macro, Form::Middleware] {
        let rig = Rig::new();
        let before = rig.balance();
        let (status, text, receipt) = call(&rig, form.path(), "words=7&meter=true").await;
        assert_eq!(status, 200, "{form:?}");
        assert_eq!(text.matches("data: word").count(), 7, "{form:?}: {text}");
        let receipt = receipt.unwrap_or_else(|| panic!("{form:?}: no payment-response event in {text}"));
        assert!(receipt.success, "{form:?}");
        assert_eq!(receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), 7, "{form:?}");
        assert!(text.trim_end().ends_with(&receipt.to_header()), "{form:?}: the receipt is the last event");
        assert_eq!((before - rig.balance(), Calls::of(&rig.local).settle), (7, 1), "{form:?}");
    }
}

#[actix_web::test]
async fn an_unmetered_stream_settles_the_price_and_a_capped_meter_stops_the_stream() {
    for form in [Form::Macro, Form::Middleware] {
        let rig = Rig::new();
        let before = rig.balance();
        let (_, _, receipt) = call(&rig, form.path(), "words=3").await;
        assert_eq!(
            receipt.unwrap().credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
            PRICE,
            "{form:?}"
        );
        assert_eq!(before - rig.balance(), PRICE, "{form:?}");

        // 25 words asked, 1 credit each, capped at the 10 verified: the stream stops.
        let before = rig.balance();
        let (_, text, receipt) = call(&rig, form.path(), "words=25&meter=true").await;
        assert_eq!(text.matches("data: word").count(), 10, "{form:?}");
        assert_eq!(
            receipt.unwrap().credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0),
            PRICE,
            "{form:?}"
        );
        assert_eq!(before - rig.balance(), PRICE, "{form:?}");
    }
}

/// `Meter::stream`: each word metered as it passes; at the cap the stream ends cleanly,
/// and what was sent is what is settled.
#[actix_web::test]
async fn a_metered_stream_adapter_bills_what_it_passed_and_ends_at_the_cap() {
    let rig = Rig::new();
    for (asked, sent) in [(4, 4), (25, PRICE)] {
        let before = rig.balance();
        let (status, text, receipt) = call(&rig, "/metered", &format!("words={asked}")).await;
        assert_eq!(status, 200);
        assert_eq!(text.matches("data: word").count() as u64, sent, "{text}");
        assert_eq!(
            receipt
                .expect("the receipt event")
                .credits_redeemed
                .as_ref()
                .and_then(|c| c.as_u64())
                .unwrap_or(0),
            sent
        );
        assert_eq!(before - rig.balance(), sent, "{asked} words asked");
    }
}

#[actix_web::test]
async fn a_stream_that_fails_settles_nothing() {
    for form in [Form::Macro, Form::Middleware] {
        let rig = Rig::new();
        let before = rig.balance();
        let url = format!("{}?words=6&meter=true&fail_at=3&delay_ms=20", rig.server.at(form.path()));
        // The body breaks off: the connection is closed mid-stream (before the head, if
        // actix had not flushed it yet).
        if let Ok(response) = http().post(url).header("payment-signature", rig.token()).send().await {
            assert_eq!(response.status(), 200, "{form:?}");
            let body = response.text().await;
            assert!(body.is_err() || !body.unwrap_or_default().contains("payment-response"), "{form:?}");
        }
        assert_nothing_settled_before_a_sentinel(&rig, form, before).await;
    }
}

/// Proves a negative without a fixed pause: a paid call sent after the request under
/// test is settled (its receipt event is the last of its body); a settlement of the
/// earlier request, decided before that call was even sent, would be in the ledger by
/// then. Only the sentinel's 1 credit is burned, in one settle call.
async fn assert_nothing_settled_before_a_sentinel(rig: &Rig, form: Form, before: u64) {
    let (status, _, receipt) = call(rig, form.path(), "words=1&meter=true").await;
    assert_eq!(
        (status, receipt.map(|r| r.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0))),
        (200, Some(1)),
        "{form:?}: the sentinel"
    );
    assert_eq!(
        (before - rig.balance(), Calls::of(&rig.local).settle),
        (1, 1),
        "{form:?}: nothing settled before it"
    );
}

#[actix_web::test]
async fn a_metered_zero_makes_no_settle_call() {
    for form in [Form::Macro, Form::Middleware] {
        let rig = Rig::new();
        let before = rig.balance();
        let (status, _, receipt) = call(&rig, form.path(), "words=0&meter=true").await;
        assert_eq!((status, receipt), (200, None), "{form:?}");
        assert_nothing_settled_before_a_sentinel(&rig, form, before).await;
    }
}

#[actix_web::test]
async fn a_client_that_hangs_up_pays_for_what_was_delivered() {
    // Hang up after 1, 3 and 7 of 10 words, on both forms.
    for (form, cut) in [Form::Macro, Form::Middleware].into_iter().flat_map(|f| [1, 3, 7].map(|c| (f, c))) {
        let label = format!("{form:?}, hung up after {cut} words");
        let rig = Rig::new();
        let before = rig.balance();
        let url = format!("{}?words=10&meter=true&delay_ms=60", rig.server.at(form.path()));
        let mut response = http().post(url).header("payment-signature", rig.token()).send().await.unwrap();
        let mut seen = 0;
        while seen < cut {
            let chunk = response.chunk().await.unwrap().expect("a chunk");
            seen += String::from_utf8_lossy(&chunk).matches("data: word").count();
        }
        drop(response);
        assert_eq!(settles(&rig.local, 1).await, 1, "{label}: settled once the client left");
        // The settle call is counted when it arrives; let it burn.
        let deadline = Instant::now() + Duration::from_secs(3);
        while rig.balance() == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let metered = rig.metered();
        // Words are 60 ms apart: when the client leaves, the words written into the
        // socket before its reset comes back are metered (one or two; three for a slow
        // machine's margin), never the rest of the answer.
        let cut = cut as u64;
        assert!((cut..=cut + 3).contains(&metered), "{label}: metered {metered}");
        assert_eq!(before - rig.balance(), metered, "{label}: what was delivered, no more");
    }
}

/// Time to first byte with every facilitator answer 40 ms away (as the hosted backend
/// is): after the body, the first byte waits for the verification only; before the body,
/// for the settlement too.
#[actix_web::test]
async fn the_first_byte_does_not_wait_for_the_settlement() {
    const LATENCY: Duration = Duration::from_millis(40);
    let rig = Rig::new();
    rig.local.set_latency(LATENCY);
    let mut figures = Vec::new();
    // The held route is not metered: settled before the body, a meter would count
    // nothing yet.
    for (path, query) in [("/stream", "words=3&meter=true"), ("/held", "words=3")] {
        let mut ttfbs = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let url = format!("{}?{query}", rig.server.at(path));
            let mut response =
                http().post(url).header("payment-signature", rig.token()).send().await.unwrap();
            assert!(response.chunk().await.unwrap().is_some());
            ttfbs.push(started.elapsed());
            while response.chunk().await.unwrap().is_some() {}
        }
        ttfbs.sort();
        figures.push((path, ttfbs[ttfbs.len() / 2]));
    }
    let (after, before) = (figures[0].1, figures[1].1);
    eprintln!(
        "facilitator +{LATENCY:?}: median time to first byte, after_body {after:?}, before_body {before:?}"
    );
    assert!(after < LATENCY * 2, "after_body: the first byte waited {after:?}, more than the verification");
    assert!(before >= LATENCY * 2, "before_body: the first byte came before the settlement ({before:?})");
}

#[actix_web::test]
async fn a_failed_settlement_after_the_stream_reaches_the_hook_and_the_last_event() {
    let rig = Rig::new();
    rig.local.inject_times(Endpoint::Settle, Fault::SettleFailure("insufficient_balance".into()), 1);
    let (status, text, receipt) = call(&rig, "/stream", "words=4&meter=true").await;
    assert_eq!(status, 200);
    assert_eq!(text.matches("data: word").count(), 4, "delivered: a stream cannot be taken back");
    let receipt = receipt.expect("the failed receipt as the last event");
    assert!(!receipt.success);
    let hooked = rig.failed.lock().unwrap().clone();
    assert_eq!(hooked, vec![(4, receipt.clone())], "the hook got the amount and the failed receipt");
    assert!(receipt.payer.is_some() && !receipt_field(&receipt, "agentRequestId").is_null(), "{receipt:?}");
}

#[actix_web::test]
async fn the_paying_client_streams_and_reads_the_receipt_at_the_end() {
    let rig = Rig::new();
    let client = nvm_tests::paying_client(&rig.local);
    let before = rig.balance();
    let paid = client
        .send(client.http().post(format!("{}?words=5&meter=true&delay_ms=20", rig.server.at("/stream"))))
        .await
        .unwrap();
    assert_eq!(paid.outcome, PaymentOutcome::SettlesAfterBody, "no receipt in a streamed head");
    let mut stream = paid.into_stream();
    let mut words = 0;
    while let Some(chunk) = stream.next().await.unwrap() {
        words += String::from_utf8_lossy(&chunk).matches("data: word").count();
        assert!(stream.receipt().is_none() || words == 5, "the receipt comes last");
    }
    assert_eq!(words, 5);
    let receipt = stream.receipt().expect("the receipt once the stream ended").clone();
    assert_eq!(receipt.credits_redeemed.as_ref().and_then(|c| c.as_u64()).unwrap_or(0), 5);
    assert_eq!(before - rig.balance(), 5);
}

/// The peak resident memory of this process (the server and the client), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// 100 MB streamed through a paid route: nothing is buffered (the process's peak memory
/// grows by far less than the body), settled once at the end, the receipt to the hooks.
#[actix_web::test]
async fn a_hundred_megabytes_stream_through_with_flat_memory() {
    const SIZE: usize = 100 * 1024 * 1024;
    let rig = Rig::new();
    let before = rig.balance();
    // Warm up the paths (allocator pools, connection) before measuring the peak.
    let url = |bytes: usize| format!("{}?bytes={bytes}", rig.server.at("/big"));
    let warm = http().post(url(1 << 20)).header("payment-signature", rig.token()).send().await.unwrap();
    assert_eq!(warm.bytes().await.unwrap().len(), 1 << 20);
    let peak_before = peak_rss_kib();
    let started = Instant::now();
    let mut response = http().post(url(SIZE)).header("payment-signature", rig.token()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut received = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len();
    }
    let took = started.elapsed();
    assert_eq!(received, SIZE);
    let grew_kib = peak_rss_kib().saturating_sub(peak_before);
    eprintln!("100 MB through a paid after-body route in {took:?}; peak memory grew by {grew_kib} KiB");
    assert!(grew_kib < 16 * 1024, "the peak grew by {grew_kib} KiB: the body was buffered");
    assert_eq!(settles(&rig.local, 2).await, 2);
    let deadline = Instant::now() + Duration::from_secs(3);
    while rig.settled.lock().unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(before - rig.balance(), 2, "1 credit each, settled once each");
    let receipts = rig.settled.lock().unwrap().clone();
    assert!(
        receipts.len() == 2 && receipts.iter().all(|r| r.success),
        "the hook got the receipts: {receipts:?}"
    );
}
