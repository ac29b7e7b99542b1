//! A local facilitator: the Nevermined backend's x402 endpoints on loopback, over an
//! in-memory ledger, for development and tests that run offline.
//!
//! [`LocalFacilitator::start`] binds `127.0.0.1` on a free port and serves, on its own
//! thread with its own actix `System` (so it works from a plain `main`, a
//! `#[tokio::test]` or inside an actix runtime):
//!
//! | endpoint | auth | what |
//! |---|---|---|
//! | `POST /api/v1/x402/permissions` | subscriber key | mint an access token (the [`wire`](crate::wire) docs, §5) |
//! | `POST /api/v1/x402/verify` | builder key | check a token against an envelope (the [`wire`](crate::wire) docs, §4) |
//! | `POST /api/v1/x402/settle` | builder key | burn credits, atomically (the [`wire`](crate::wire) docs, §4) |
//! | `GET /api/v1/protocol/plans/{id}` | none | plan metadata (`registry.price.isCrypto`, …) |
//! | `GET /api/v1/protocol/plans/{id}/balance/{holder}` | none | a holder's balance |
//! | `POST /jawn/v1/gateway/oai/v1/chat/completions` | `Helicone-Auth` | the stand-in LLM observability gateway: OpenAI's chat completions, plain or streamed, answering a canned completion with token usage (prompt tokens: the words of the messages) |
//! | `POST /jawn/v1/trace/custom/v1/log` | gateway key | the gateway's manual log |
//!
//! The two gateway endpoints record every call (headers and body). A seller configured with this facilitator's
//! keys sends its LLM calls there
//! ([`PaymentContext::observability`](crate::PaymentContext::observability)); the
//! official SDKs do with `HELICONE_URL` set to [`LocalFacilitator::backend_url`].
//!
//! It issues API keys `local:<JWT>` (HS256, claims `sub` and `o11y`) that the official
//! SDKs accept: their unknown prefix selects the `custom` environment, so pointing
//! `NVM_BACKEND_URL` at [`LocalFacilitator::backend_url`] is all they need. Tokens have
//! the real format (base64 of a JSON x402 `PaymentPayload`), signed with HMAC-SHA256 by
//! the instance secret, so any alteration or forgery is detected.
//!
//! Refusals answer the backend's error envelope `{code, message, httpStatus, hint,
//! details}`. Besides `BCK.X402.0005` (forged token, envelope mismatch), `BCK.X402.0013`
//! (token bound to another resource) and `BCK.X402.0059` (single-use token spent), the
//! local codes are: `BCK.AUTH.0001` (401, unknown key), `BCK.COMMON.0400` (400, body is
//! not the expected JSON), `BCK.COMMON.0404` (no such endpoint), `BCK.PROTOCOL.0404`
//! (no such plan), `BCK.PROTOCOL.0400` (agent not of the plan), `BCK.X402.0404`
//! (unknown `agentRequestId`), `BCK.X402.0409` (`agentRequestId` of another token).
//!
//! Answers come at loopback speed unless a latency is set
//! ([`LocalFacilitator::set_latency`]): then every answer waits that long, without holding a server thread, as the round trip to the
//! hosted backend would make it.
//!
//! ```
//! use nvm_runtime::local::LocalFacilitator;
//!
//! let local = LocalFacilitator::start()?;
//! assert!(local.backend_url().starts_with("http://127.0.0.1:"));
//! assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), 100);
//! # Ok::<(), std::io::Error>(())
//! ```

mod bodies;
mod faults;
pub(crate) mod gateway;
mod keys;
pub(crate) mod kit;
mod ledger;
mod server;

use std::fmt;
use std::io;
use std::sync::Arc;

use self::faults::Faults;
use self::kit::{DEFAULT_CREDITS, LocalInfo};
use self::ledger::State;
use self::server::Running;

pub use self::faults::{Endpoint, Fault};

/// The id of the default plan of every local facilitator: fixed, so code and tests can
/// name it before the facilitator starts (`#[paid(plan = DEMO_PLAN_ID)]`).
pub const DEMO_PLAN_ID: &str =
    "80918427023170428029540261117198154464497879145267720259488529685089104529015";

/// The id of the default plan's agent: fixed, like [`DEMO_PLAN_ID`].
pub const DEMO_AGENT_ID: &str =
    "21319780138104830291683649381947612938461982473619283740192837465102938475610";

/// A running local facilitator. It stops when dropped (or [`stop`](Self::stop)ped).
///
/// ```
/// use nvm_runtime::local::LocalFacilitator;
///
/// let local = LocalFacilitator::start()?;
/// let url = local.backend_url().to_owned();
/// drop(local); // stops the server
/// # let _ = url;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct LocalFacilitator {
    state: Arc<State>,
    info: LocalInfo,
    running: Running,
    faults: Arc<Faults>,
    gateway: Arc<gateway::Gateway>,
}

impl fmt::Debug for LocalFacilitator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFacilitator")
            .field("backend_url", &self.info.backend_url)
            .field("plan_id", &self.info.plan_id)
            .field("agent_id", &self.info.agent_id)
            .finish_non_exhaustive()
    }
}

impl LocalFacilitator {
    /// Starts a local facilitator on a free port of 127.0.0.1, with a builder, a
    /// default plan and agent, and a demo subscriber holding 100 credits on it
    /// ([`set_balance`](Self::set_balance) changes that), answering at once
    /// ([`set_latency`](Self::set_latency) delays it).
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// local.set_balance(local.plan_id(), local.subscriber_address(), 5);
    /// assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), 5);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start() -> io::Result<Self> {
        Self::start_on(0)
    }

    /// Starts one on `port` of 127.0.0.1 (0: any free port).
    fn start_on(port: u16) -> io::Result<Self> {
        let state = Arc::new(State::new(DEFAULT_CREDITS));
        let faults = Arc::new(Faults::default());
        let gateway = Arc::new(gateway::Gateway::default());
        let running = server::spawn(Arc::clone(&state), Arc::clone(&faults), Arc::clone(&gateway), port)?;
        let info = LocalInfo {
            backend_url: format!("http://{}", running.addr),
            builder_api_key: state.builder_api_key.clone(),
            subscriber_api_key: state.subscriber_api_key.clone(),
            plan_id: state.plan_id.clone(),
            agent_id: state.agent_id.clone(),
        };
        Ok(LocalFacilitator { state, info, running, faults, gateway })
    }

    /// `http://127.0.0.1:<port>`: the backend URL to give clients (`NVM_BACKEND_URL`).
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// let addr = local.backend_url().trim_start_matches("http://");
    /// std::net::TcpStream::connect(addr)?; // it is listening
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn backend_url(&self) -> &str {
        &self.info.backend_url
    }

    /// The builder's API key (`local:<JWT>`): sellers verify and settle with it.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// let key: nvm_runtime::__private::backend::ApiKey = local.builder_api_key().parse().unwrap();
    /// assert!(key.account().starts_with("0x"));
    /// assert_ne!(key.account(), local.subscriber_address());
    /// assert!(key.has_o11y());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn builder_api_key(&self) -> &str {
        &self.info.builder_api_key
    }

    /// The demo subscriber's API key: clients mint tokens with it.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// let key: nvm_runtime::__private::backend::ApiKey = local.subscriber_api_key().parse().unwrap();
    /// assert_eq!(key.account(), local.subscriber_address());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn subscriber_api_key(&self) -> &str {
        &self.info.subscriber_api_key
    }

    /// The default plan's id (a 256-bit decimal number).
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert!(local.plan_id().bytes().all(|b| b.is_ascii_digit()));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn plan_id(&self) -> &str {
        &self.info.plan_id
    }

    /// The default plan's agent id.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert!(!local.agent_id().is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn agent_id(&self) -> &str {
        &self.info.agent_id
    }

    /// The demo subscriber's address: whose balance [`LocalFacilitator::balance`] reads.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert!(local.subscriber_address().starts_with("0x"));
    /// assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), 100);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn subscriber_address(&self) -> &str {
        &self.state.subscriber_address
    }

    /// `address`'s credits on `plan_id` (0 when it holds none; addresses compare
    /// case-insensitively).
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), 100);
    /// assert_eq!(local.balance("1", local.subscriber_address()), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn balance(&self, plan_id: &str, address: &str) -> u64 {
        self.state.balance(plan_id, address)
    }

    /// Sets `address`'s credits on `plan_id`.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// local.set_balance(local.plan_id(), local.subscriber_address(), 3);
    /// assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_balance(&self, plan_id: &str, address: &str, credits: u64) {
        self.state.set_balance(plan_id, address, credits);
    }

    /// A new subscriber holding `credits` on `plan_id`: its `(api_key, address)`.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// let (key, address) = local.add_subscriber(local.plan_id(), 7);
    /// assert!(key.starts_with("local:"));
    /// assert_eq!(local.balance(local.plan_id(), &address), 7);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn add_subscriber(&self, plan_id: &str, credits: u64) -> (String, String) {
        let (key, address) = self.state.new_account();
        self.state.set_balance(plan_id, &address, credits);
        (key, address)
    }

    /// How many calls `endpoint` received (every call counts, faulted and refused ones
    /// included).
    ///
    /// ```
    /// use nvm_runtime::local::{Endpoint, LocalFacilitator};
    ///
    /// let local = LocalFacilitator::start()?;
    /// assert_eq!(local.calls(Endpoint::Settle), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        self.state.calls(endpoint)
    }

    /// Credits burned by successful settlements, all plans together.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert_eq!(local.total_burned(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn total_burned(&self) -> u64 {
        self.state.total_burned()
    }

    /// The credits a settlement of the verification `agent_request_id` burned, or `None`
    /// when none went through (or the verification is unknown, or forgotten after
    /// 50,000 newer ones): what a seller's resolver asks the backend about a pending
    /// settlement.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert_eq!(local.burned_for("no-such-request"), None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn burned_for(&self, agent_request_id: &str) -> Option<u64> {
        self.state.burned_for(agent_request_id)
    }

    /// Stops the server and waits for its thread (dropping the handle does the same).
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// let addr = local.backend_url().trim_start_matches("http://").to_owned();
    /// local.stop();
    /// assert!(std::net::TcpStream::connect(addr).is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stop(mut self) {
        self.running.stop();
    }
}
