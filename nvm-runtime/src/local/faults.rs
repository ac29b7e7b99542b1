//! Fault injection: tell a [`LocalFacilitator`] to misbehave on one endpoint, the way a
//! real backend, gateway or network does, to test what a seller does about it.
//!
//! A fault is set per [`Endpoint`] with [`LocalFacilitator::inject`] (until cleared) or
//! [`LocalFacilitator::inject_times`] (for the next `n` calls), and removed with
//! [`LocalFacilitator::clear_faults`]. The call counters ([`LocalFacilitator::calls`])
//! count every call, faulted or not.
//!
//! Except for [`Fault::Delay`] and [`Fault::LoseAnswer`], a faulted call is **not**
//! carried out: nothing is minted, verified or burned, and the fault's answer is sent
//! instead.
//!
//! Apart from faults, a latency ([`LocalFacilitator::set_latency`]) delays every answer
//! of every endpoint, faulted or not, the way the round trip to the hosted backend does.
//!
//! ```
//! use std::time::Duration;
//! use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
//!
//! let local = LocalFacilitator::start()?;
//! local.inject(Endpoint::Settle, Fault::Status(500));
//! local.inject_times(Endpoint::Verify, Fault::Delay(Duration::from_millis(50)), 1);
//! local.clear_faults();
//! # Ok::<(), std::io::Error>(())
//! ```

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use actix_web::body::{BodySize, MessageBody};
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderValue};
use actix_web::web::Bytes;

use super::LocalFacilitator;

/// The longest a [`Fault::Hang`] holds a call before giving up (so a forgotten fault
/// cannot keep a server thread busy forever).
pub(crate) const HANG_LIMIT: Duration = Duration::from_secs(30);

/// How often a hanging call looks whether its fault was cleared.
const HANG_POLL: Duration = Duration::from_millis(10);

pub use crate::wire::endpoints::Endpoint;

/// How a faulted endpoint misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Never answers: the call is held until the fault is cleared, the server stops, or
    /// 30 s pass (then it answers 504), whichever comes first.
    Hang,
    /// Answers normally, after this delay (the call is carried out after the delay).
    Delay(Duration),
    /// Answers this status with the backend's error envelope (`{code, message,
    /// httpStatus, hint, details}`, code `BCK.FAULT.<status>`).
    Status(u16),
    /// Answers a gateway's HTML error page: `502 Bad Gateway`, `text/html`.
    Html502,
    /// Answers 200 `application/json` with a body cut off in the middle.
    TruncatedJson,
    /// Answers 200 with a refusal in the endpoint's own terms: `success:false` with this
    /// `errorReason` on settle, `isValid:false` with this `invalidReason` on verify, a
    /// 400 error envelope with this message on the others.
    SettleFailure(String),
    /// Closes the connection without answering anything.
    Disconnect,
    /// Carries the call out (a settle **burns**), then closes the connection without
    /// answering: the facilitator committed and the caller cannot know it.
    LoseAnswer,
}

/// One endpoint's fault and how many more calls it applies to (`None`: until cleared).
#[derive(Debug, Clone)]
struct Armed {
    fault: Fault,
    remaining: Option<u64>,
}

/// The faults of one local facilitator, shared with its server.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    armed: Mutex<[Option<Armed>; 4]>,
    /// Bumped by every change, so a hanging call knows its fault was cleared.
    generation: AtomicU64,
    /// Set when the server stops, releasing hanging calls.
    stopping: AtomicBool,
    /// The delay of every answer, in nanoseconds (0: none).
    latency_ns: AtomicU64,
}

impl Faults {
    fn set(&self, endpoint: Endpoint, armed: Option<Armed>) {
        self.armed.lock().unwrap_or_else(PoisonError::into_inner)[endpoint.index()] = armed;
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn clear(&self) {
        *self.armed.lock().unwrap_or_else(PoisonError::into_inner) = Default::default();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    #[cfg(test)]
    fn get(&self, endpoint: Endpoint) -> Option<Fault> {
        self.armed.lock().unwrap_or_else(PoisonError::into_inner)[endpoint.index()]
            .as_ref()
            .map(|a| a.fault.clone())
    }

    /// The fault for this call of `endpoint`, counting it down.
    fn take(&self, endpoint: Endpoint) -> Option<Fault> {
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut armed[endpoint.index()];
        let fault = slot.as_ref()?.fault.clone();
        if let Some(Armed { remaining: Some(remaining), .. }) = slot {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                *slot = None;
            }
        }
        Some(fault)
    }

    /// Arms `fault` on a slot until cleared (the stand-in gateway's table).
    pub(crate) fn inject_slot(&self, endpoint: Endpoint, fault: Fault) {
        self.set(endpoint, Some(Armed { fault, remaining: None }));
    }

    /// Clears every slot.
    pub(crate) fn clear_all(&self) {
        self.clear();
    }

    /// Delays every answer by `latency` from now on (saturating at `u64::MAX` ns, some
    /// 584 years).
    pub(crate) fn set_latency(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns.store(ns, Ordering::Relaxed);
    }

    /// The delay of every answer.
    pub(crate) fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed))
    }

    /// Releases hanging calls: the server is stopping.
    pub(crate) fn release(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Answers one call of `endpoint`: `call` carries it out, unless a fault says
    /// otherwise.
    pub(crate) async fn around(
        &self,
        endpoint: Endpoint,
        call: impl FnOnce() -> HttpResponse,
    ) -> HttpResponse {
        let Some(fault) = self.take(endpoint) else {
            return call();
        };
        tracing::debug!(?endpoint, ?fault, "local facilitator: injected fault");
        match fault {
            Fault::Hang => {
                self.hang().await;
                error_envelope(StatusCode::GATEWAY_TIMEOUT, "the injected hang ended; nothing was done")
            }
            Fault::Delay(delay) => {
                tokio::time::sleep(delay).await;
                call()
            }
            Fault::Status(status) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                error_envelope(status, "injected fault")
            }
            Fault::Html502 => HttpResponse::BadGateway()
                .insert_header((CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")))
                .body(GATEWAY_PAGE),
            Fault::TruncatedJson => HttpResponse::Ok()
                .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
                .body(truncated(endpoint)),
            Fault::SettleFailure(reason) => refusal(endpoint, &reason),
            Fault::Disconnect => disconnect(),
            Fault::LoseAnswer => {
                drop(call());
                disconnect()
            }
        }
    }

    /// Waits until the faults change, the server stops, or [`HANG_LIMIT`] passes.
    async fn hang(&self) {
        let generation = self.generation.load(Ordering::SeqCst);
        let started = Instant::now();
        while self.generation.load(Ordering::SeqCst) == generation
            && !self.stopping.load(Ordering::SeqCst)
            && started.elapsed() < HANG_LIMIT
        {
            tokio::time::sleep(HANG_POLL).await;
        }
    }
}

const GATEWAY_PAGE: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

fn error_envelope(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({
        "code": format!("BCK.FAULT.{:04}", status.as_u16()),
        "message": format!("{message}: HTTP {}", status.as_u16()),
        "httpStatus": status.as_u16(),
        "hint": "a fault injected into the local facilitator",
        "details": null,
    }))
}

/// The first half of a plausible answer of `endpoint`.
fn truncated(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Verify => r#"{"isValid":true,"payer":"0x00000000000000000"#,
        Endpoint::Settle => r#"{"success":true,"transaction":"0x4e1f"#,
        Endpoint::Permissions => r#"{"accessToken":"eyJ4NDAyVmVyc2lv"#,
        Endpoint::Plans => r#"{"registry":{"price":{"isCrypto":fa"#,
    }
}

fn refusal(endpoint: Endpoint, reason: &str) -> HttpResponse {
    match endpoint {
        Endpoint::Settle => HttpResponse::Ok().json(serde_json::json!({
            "success": false,
            "errorReason": reason,
            "transaction": "",
            "creditsRedeemed": "0",
        })),
        Endpoint::Verify => HttpResponse::Ok().json(serde_json::json!({
            "isValid": false,
            "invalidReason": reason,
        })),
        Endpoint::Permissions | Endpoint::Plans => error_envelope(StatusCode::BAD_REQUEST, reason),
    }
}

/// A response whose body fails at once: actix-web then closes the connection before
/// the head is written, so the caller sees the connection closed with no answer.
fn disconnect() -> HttpResponse {
    HttpResponse::Ok().body(Broken)
}

/// A body that fails on its first poll.
struct Broken;

impl MessageBody for Broken {
    type Error = std::io::Error;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "injected disconnect",
        ))))
    }
}

impl LocalFacilitator {
    /// Makes `endpoint` misbehave as `fault` from now on, until
    /// [`clear_faults`](Self::clear_faults) (or another fault for the same endpoint).
    ///
    /// ```
    /// use std::io::{Read as _, Write as _};
    /// use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
    ///
    /// let local = LocalFacilitator::start()?;
    /// local.inject(Endpoint::Plans, Fault::Status(503));
    /// let addr = local.backend_url().trim_start_matches("http://");
    /// let mut stream = std::net::TcpStream::connect(addr)?;
    /// write!(stream, "GET /api/v1/protocol/plans/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n", local.plan_id())?;
    /// let mut answer = String::new();
    /// stream.read_to_string(&mut answer)?;
    /// assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    /// assert_eq!(local.calls(Endpoint::Plans), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn inject(&self, endpoint: Endpoint, fault: Fault) {
        self.faults.set(endpoint, Some(Armed { fault, remaining: None }));
    }

    /// Makes the next `calls` calls of `endpoint` misbehave as `fault`, then behave
    /// again (0 clears the endpoint's fault).
    ///
    /// ```
    /// use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
    ///
    /// let local = LocalFacilitator::start()?;
    /// local.inject_times(Endpoint::Settle, Fault::Disconnect, 2);
    /// local.inject_times(Endpoint::Settle, Fault::Disconnect, 0); // cleared
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn inject_times(&self, endpoint: Endpoint, fault: Fault, calls: u64) {
        let armed = (calls > 0).then_some(Armed { fault, remaining: Some(calls) });
        self.faults.set(endpoint, armed);
    }

    /// Delays every answer of every endpoint by `latency` from now on (zero: none),
    /// the way the round trip to the hosted backend does, so a seller can be measured
    /// as it runs against it. The delay is an asynchronous wait before the call is
    /// carried out: it holds no server thread, and concurrent calls wait side by side
    /// (100 calls in flight with 40 ms each are all answered after about 40 ms).
    ///
    /// It applies to calls that arrive from now on, faulted or not (a
    /// [`Fault::Delay`] adds to it); [`clear_faults`](Self::clear_faults) leaves it.
    ///
    /// ```
    /// use std::io::{Read as _, Write as _};
    /// use std::time::{Duration, Instant};
    /// use nvm_runtime::local::LocalFacilitator;
    ///
    /// let local = LocalFacilitator::start()?;
    /// local.set_latency(Duration::from_millis(30));
    ///
    /// let addr = local.backend_url().trim_start_matches("http://");
    /// let mut stream = std::net::TcpStream::connect(addr)?;
    /// let started = Instant::now();
    /// let plan = local.plan_id();
    /// write!(stream, "GET /api/v1/protocol/plans/{plan} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    /// let mut answer = String::new();
    /// stream.read_to_string(&mut answer)?;
    /// assert!(answer.starts_with("HTTP/1.1 200"));
    /// assert!(started.elapsed() >= Duration::from_millis(30));
    ///
    /// local.set_latency(Duration::ZERO); // answers at once again
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_latency(&self, latency: Duration) {
        self.faults.set_latency(latency);
    }

    /// Removes every fault; calls held by [`Fault::Hang`] are released (they answer 504
    /// without doing anything).
    ///
    /// ```
    /// use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
    ///
    /// let local = LocalFacilitator::start()?;
    /// local.inject(Endpoint::Verify, Fault::Hang);
    /// local.clear_faults();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn clear_faults(&self) {
        self.faults.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_run_out() {
        let faults = Faults::default();
        faults.set(Endpoint::Settle, Some(Armed { fault: Fault::Status(500), remaining: Some(2) }));
        assert_eq!(faults.take(Endpoint::Verify), None);
        assert_eq!(faults.take(Endpoint::Settle), Some(Fault::Status(500)));
        assert_eq!(faults.take(Endpoint::Settle), Some(Fault::Status(500)));
        assert_eq!(faults.take(Endpoint::Settle), None);
        faults.set(Endpoint::Plans, Some(Armed { fault: Fault::Hang, remaining: None }));
        for _ in 0..3 {
            assert_eq!(faults.take(Endpoint::Plans), Some(Fault::Hang));
        }
        faults.clear();
        assert_eq!(faults.get(Endpoint::Plans), None);
    }

    #[test]
    fn latency_is_kept_apart_from_faults() {
        let faults = Faults::default();
        assert_eq!(faults.latency(), Duration::ZERO);
        faults.set_latency(Duration::from_micros(1500));
        faults.clear();
        assert_eq!(faults.latency(), Duration::from_micros(1500));
        faults.set_latency(Duration::MAX);
        assert_eq!(faults.latency(), Duration::from_nanos(u64::MAX));
    }
}
