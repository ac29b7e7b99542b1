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
//! | `POST /jawn/v1/gateway/oai/v1/chat/completions` | `Helicone-Auth` | the stand-in LLM observability gateway: OpenAI's chat completions, plain or streamed, answering [`CANNED_COMPLETION`] with token usage (prompt tokens: the words of the messages) |
//! | `POST /jawn/v1/trace/custom/v1/log` | gateway key | the gateway's manual log |
//!
//! The two gateway endpoints record every call (headers and body:
//! [`LocalFacilitator::gateway_calls`]) and take their own faults
//! ([`LocalFacilitator::inject_gateway`]). A seller configured with this facilitator's
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
//! ([`LocalFacilitatorBuilder::latency`], [`LocalFacilitator::set_latency`]): then every
//! answer waits that long, without holding a server thread, as the round trip to the
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
mod gateway;
mod keys;
mod ledger;
mod server;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::faults::Faults;
use self::ledger::State;
use self::server::Running;

pub use self::faults::{Endpoint, Fault};
pub use self::gateway::{CANNED_COMPLETION, GatewayCall, GatewayEndpoint};

/// The starting balance of the demo subscriber.
///
/// ```
/// use nvm_runtime::local::{DEFAULT_CREDITS, LocalFacilitator};
///
/// let local = LocalFacilitator::start()?;
/// assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), DEFAULT_CREDITS);
/// # Ok::<(), std::io::Error>(())
/// ```
#[doc(hidden)]
pub const DEFAULT_CREDITS: u64 = 100;

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

/// What a client needs to use a local facilitator. Serializes as
/// `{"backendUrl","builderApiKey","subscriberApiKey","planId","agentId"}`, the line the
/// `nvm-local-facilitator` binary prints first.
///
/// `Debug` redacts the keys.
///
/// ```
/// use nvm_runtime::local::LocalFacilitator;
///
/// let local = LocalFacilitator::start()?;
/// let json = serde_json::to_value(local.info()).unwrap();
/// assert_eq!(json["planId"], local.plan_id());
/// assert_eq!(json["builderApiKey"], local.builder_api_key());
/// assert!(!format!("{:?}", local.info()).contains(local.builder_api_key()));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[doc(hidden)]
pub struct LocalInfo {
    /// `http://127.0.0.1:<port>`, for `NVM_BACKEND_URL`.
    pub backend_url: String,
    /// The key of the builder who owns the default plan (sellers verify and settle with it).
    pub builder_api_key: String,
    /// The key of the demo subscriber (clients mint tokens with it).
    pub subscriber_api_key: String,
    /// The default plan: crypto, 1 credit per request.
    pub plan_id: String,
    /// The default plan's agent.
    pub agent_id: String,
}

impl fmt::Debug for LocalInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalInfo")
            .field("backend_url", &self.backend_url)
            .field("builder_api_key", &"<redacted>")
            .field("subscriber_api_key", &"<redacted>")
            .field("plan_id", &self.plan_id)
            .field("agent_id", &self.agent_id)
            .finish()
    }
}

/// How many calls each endpoint received (every call counts, refused ones included).
///
/// ```
/// use nvm_runtime::local::{Calls, LocalFacilitator};
///
/// let local = LocalFacilitator::start()?;
/// assert_eq!(local.calls(), Calls::default());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
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
    /// The calls one endpoint received.
    ///
    /// ```
    /// use nvm_runtime::local::{Calls, Endpoint};
    ///
    /// let mut calls = Calls::default();
    /// calls.settle = 2;
    /// assert_eq!(calls.of(Endpoint::Settle), 2);
    /// assert_eq!(calls.of(Endpoint::Verify), 0);
    /// ```
    #[doc(hidden)]
    pub fn of(&self, endpoint: Endpoint) -> u64 {
        match endpoint {
            Endpoint::Verify => self.verify,
            Endpoint::Settle => self.settle,
            Endpoint::Permissions => self.permissions,
            Endpoint::Plans => self.plans,
        }
    }
}

/// Configures a [`LocalFacilitator`] before it starts.
///
/// ```
/// use nvm_runtime::local::LocalFacilitator;
///
/// let local = LocalFacilitator::builder().port(0).credits(5).start()?;
/// assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), 5);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct LocalFacilitatorBuilder {
    port: u16,
    credits: u64,
    latency: Duration,
}

impl LocalFacilitatorBuilder {
    /// The port to bind on 127.0.0.1 (default 0: any free port).
    ///
    /// ```
    /// let builder = nvm_runtime::local::LocalFacilitator::builder().port(0);
    /// # let _ = builder;
    /// ```
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The demo subscriber's starting balance on the default plan (default
    /// [`DEFAULT_CREDITS`]).
    ///
    /// ```
    /// let builder = nvm_runtime::local::LocalFacilitator::builder().credits(20);
    /// # let _ = builder;
    /// ```
    pub fn credits(mut self, credits: u64) -> Self {
        self.credits = credits;
        self
    }

    /// Delays every answer of every endpoint by `latency` (default zero), the way the
    /// round trip to the hosted backend does; see
    /// [`LocalFacilitator::set_latency`], which changes it while running.
    ///
    /// ```
    /// use std::time::Duration;
    /// use nvm_runtime::local::LocalFacilitator;
    ///
    /// let local = LocalFacilitator::builder().latency(Duration::from_millis(40)).start()?;
    /// assert_eq!(local.latency(), Duration::from_millis(40));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Binds the port and starts serving on a new thread.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::builder().start()?;
    /// # let _ = local;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start(self) -> io::Result<LocalFacilitator> {
        let state = Arc::new(State::new(self.credits));
        let faults = Arc::new(Faults::default());
        faults.set_latency(self.latency);
        let gateway = Arc::new(gateway::Gateway::default());
        let running =
            server::spawn(Arc::clone(&state), Arc::clone(&faults), Arc::clone(&gateway), self.port)?;
        let info = LocalInfo {
            backend_url: format!("http://{}", running.addr),
            builder_api_key: state.builder_api_key.clone(),
            subscriber_api_key: state.subscriber_api_key.clone(),
            plan_id: state.plan_id.clone(),
            agent_id: state.agent_id.clone(),
        };
        Ok(LocalFacilitator { state, info, running, faults, gateway })
    }
}

/// A plan to add with [`LocalFacilitator::add_plan`].
///
/// ```
/// use nvm_runtime::local::PlanSpec;
///
/// let crypto = PlanSpec::crypto("Pro").credits_per_request(2).agent("42").agent("43");
/// let fiat = PlanSpec::fiat("Card", "stripe");
/// # let _ = (crypto, fiat);
/// ```
#[derive(Debug, Clone)]
#[must_use]
#[doc(hidden)]
pub struct PlanSpec {
    id: Option<String>,
    name: String,
    owner: Option<String>,
    agents: Vec<String>,
    credits_per_request: u64,
    fiat_provider: Option<String>,
}

impl PlanSpec {
    /// A crypto plan (`registry.price.isCrypto: true`, scheme `nvm:erc4337`), owned by
    /// the facilitator's builder, 1 credit per request, one generated agent.
    ///
    /// ```
    /// let spec = nvm_runtime::local::PlanSpec::crypto("Basic");
    /// # let _ = spec;
    /// ```
    pub fn crypto(name: impl Into<String>) -> Self {
        PlanSpec {
            id: None,
            name: name.into(),
            owner: None,
            agents: Vec::new(),
            credits_per_request: 1,
            fiat_provider: None,
        }
    }

    /// A fiat plan (`isCrypto: false`, scheme `nvm:card-delegation`) paid through
    /// `provider` (`stripe`, `braintree`, `visa`), reported as
    /// `metadata.plan.fiatPaymentProvider` and used as the network.
    ///
    /// ```
    /// let spec = nvm_runtime::local::PlanSpec::fiat("Card", "braintree");
    /// # let _ = spec;
    /// ```
    pub fn fiat(name: impl Into<String>, provider: impl Into<String>) -> Self {
        PlanSpec { fiat_provider: Some(provider.into()), ..PlanSpec::crypto(name) }
    }

    /// Gives the plan this id (default: a generated 256-bit decimal id). An id already
    /// in use is replaced.
    ///
    /// ```
    /// let spec = nvm_runtime::local::PlanSpec::crypto("Basic").id("42");
    /// # let _ = spec;
    /// ```
    pub fn id(mut self, plan_id: impl Into<String>) -> Self {
        self.id = Some(plan_id.into());
        self
    }

    /// Adds an agent with this id (when none is added, one is generated).
    ///
    /// ```
    /// let spec = nvm_runtime::local::PlanSpec::crypto("Basic").agent("7");
    /// # let _ = spec;
    /// ```
    pub fn agent(mut self, agent_id: impl Into<String>) -> Self {
        self.agents.push(agent_id.into());
        self
    }

    /// The owner's address (default: the facilitator's builder). Verify and settle
    /// succeed only for the owner's key.
    ///
    /// ```
    /// let spec = nvm_runtime::local::PlanSpec::crypto("Theirs").owner("0x0000000000000000000000000000000000000001");
    /// # let _ = spec;
    /// ```
    pub fn owner(mut self, address: impl Into<String>) -> Self {
        self.owner = Some(address.into());
        self
    }

    /// Credits burned when a request carries no `maxAmount` (default 1).
    ///
    /// ```
    /// let spec = nvm_runtime::local::PlanSpec::crypto("Basic").credits_per_request(3);
    /// # let _ = spec;
    /// ```
    pub fn credits_per_request(mut self, credits: u64) -> Self {
        self.credits_per_request = credits;
        self
    }
}

/// A plan added with [`LocalFacilitator::add_plan`].
///
/// ```
/// use nvm_runtime::local::{LocalFacilitator, PlanSpec};
///
/// let local = LocalFacilitator::start()?;
/// let plan = local.add_plan(PlanSpec::crypto("Pro").agent("7"));
/// assert_eq!(plan.agent_ids, ["7"]);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[doc(hidden)]
pub struct LocalPlan {
    /// The plan id (a 256-bit decimal number).
    pub plan_id: String,
    /// Its agents.
    pub agent_ids: Vec<String>,
}

/// What [`LocalFacilitator::mint_token`] puts in a token. Unset fields default to the
/// facilitator's plan, that plan's agent and scheme and network, the demo subscriber,
/// version 2 (reusable), no resource binding and no expiry. Nothing is validated: tests
/// mint invalid tokens on purpose.
///
/// ```
/// use nvm_runtime::local::MintOptions;
///
/// let options = MintOptions::new().single_use().resource("/ask").valid_before(0);
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
#[must_use]
#[doc(hidden)]
pub struct MintOptions {
    plan_id: Option<String>,
    agent_id: Option<Option<String>>,
    subscriber: Option<String>,
    version: u8,
    resource: Option<String>,
    http_verb: Option<String>,
    valid_before: Option<u64>,
    scheme: Option<String>,
    network: Option<String>,
}

impl Default for MintOptions {
    fn default() -> Self {
        MintOptions {
            plan_id: None,
            agent_id: None,
            subscriber: None,
            version: 2,
            resource: None,
            http_verb: None,
            valid_before: None,
            scheme: None,
            network: None,
        }
    }
}

impl MintOptions {
    /// The defaults: a reusable token of the demo subscriber for the default plan.
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new());
    /// let payload = AccessToken::new(token).decode().unwrap();
    /// assert_eq!(payload.accepted.plan_id, local.plan_id());
    /// assert_eq!(payload.accepted.extra.agent_id.as_deref(), Some(local.agent_id()));
    /// assert!(!payload.is_single_use());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The plan (`accepted.planId`).
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().plan("123"));
    /// assert_eq!(AccessToken::new(token).decode().unwrap().accepted.plan_id, "123");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn plan(mut self, plan_id: impl Into<String>) -> Self {
        self.plan_id = Some(plan_id.into());
        self
    }

    /// The agent (`accepted.extra.agentId`).
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().agent("456"));
    /// let payload = AccessToken::new(token).decode().unwrap();
    /// assert_eq!(payload.accepted.extra.agent_id.as_deref(), Some("456"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn agent(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(Some(agent_id.into()));
        self
    }

    /// No `accepted.extra.agentId` at all.
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().no_agent());
    /// assert_eq!(AccessToken::new(token).decode().unwrap().accepted.extra.agent_id, None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn no_agent(mut self) -> Self {
        self.agent_id = Some(None);
        self
    }

    /// The paying subscriber's address (`payload.authorization.from`).
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let (_key, address) = local.add_subscriber(local.plan_id(), 1);
    /// let token = local.mint_token(MintOptions::new().subscriber(address.as_str()));
    /// assert_eq!(AccessToken::new(token).decode().unwrap().payload.authorization.from, address);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn subscriber(mut self, address: impl Into<String>) -> Self {
        self.subscriber = Some(address.into());
        self
    }

    /// The token version: 2 (reusable) or 3 and above (single-use: a nonce is added).
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().version(3));
    /// assert!(AccessToken::new(token).decode().unwrap().is_single_use());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn version(mut self, version: u8) -> Self {
        self.version = version;
        self
    }

    /// Shorthand for `version(3)`: a single-use token.
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().single_use());
    /// let payload = AccessToken::new(token).decode().unwrap();
    /// assert!(payload.payload.authorization.nonce.is_some_and(|n| n.starts_with("0x")));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn single_use(self) -> Self {
        self.version(3)
    }

    /// Binds the token to a resource (`resource.url`): verify and settle refuse it for
    /// any other URL.
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().single_use().resource("/ask"));
    /// let payload = AccessToken::new(token).decode().unwrap();
    /// assert_eq!(payload.resource.map(|r| r.url).as_deref(), Some("/ask"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn resource(mut self, url: impl Into<String>) -> Self {
        self.resource = Some(url.into());
        self
    }

    /// Binds a single-use token to an HTTP verb (`accepted.extra.httpVerb`).
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().single_use().http_verb("POST"));
    /// let payload = AccessToken::new(token).decode().unwrap();
    /// assert_eq!(payload.accepted.extra.http_verb.as_deref(), Some("POST"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn http_verb(mut self, verb: impl Into<String>) -> Self {
        self.http_verb = Some(verb.into());
        self
    }

    /// Unix time (seconds) from which the token is expired (`authorization.validBefore`);
    /// a past time makes an expired token.
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let expired = local.mint_token(MintOptions::new().valid_before(1));
    /// let payload = AccessToken::new(expired).decode().unwrap();
    /// assert_eq!(payload.payload.authorization.valid_before, Some(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn valid_before(mut self, unix_seconds: u64) -> Self {
        self.valid_before = Some(unix_seconds);
        self
    }

    /// The scheme (default: the plan's).
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().scheme("nvm:card-delegation"));
    /// assert_eq!(AccessToken::new(token).decode().unwrap().accepted.scheme, "nvm:card-delegation");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = Some(scheme.into());
        self
    }

    /// The network (default: the plan's).
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().network("eip155:8453"));
    /// assert_eq!(AccessToken::new(token).decode().unwrap().accepted.network, "eip155:8453");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = Some(network.into());
        self
    }
}

impl LocalFacilitator {
    /// Starts a local facilitator on a free port of 127.0.0.1, with a builder, a
    /// default plan and agent, and a demo subscriber holding [`DEFAULT_CREDITS`].
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// # let _ = local;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start() -> io::Result<Self> {
        Self::builder().start()
    }

    /// Configures a local facilitator: port, starting credits and latency.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::builder().credits(1).start()?;
    /// # let _ = local;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn builder() -> LocalFacilitatorBuilder {
        LocalFacilitatorBuilder { port: 0, credits: DEFAULT_CREDITS, latency: Duration::ZERO }
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
    /// assert_eq!(key.account(), local.builder_address());
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

    /// Everything a client needs, as the binary prints it.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert_eq!(local.info().backend_url, local.backend_url());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(hidden)]
    pub fn info(&self) -> &LocalInfo {
        &self.info
    }

    /// The builder's address (lower-case `0x` + 40 hex digits), owner of the default plan.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert_eq!(local.builder_address().len(), 42);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(hidden)]
    pub fn builder_address(&self) -> &str {
        &self.state.builder_address
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

    /// A new account with no plan and no credits (another builder, say): its
    /// `(api_key, address)`. Give it a plan with [`PlanSpec::owner`].
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, PlanSpec};
    ///
    /// let local = LocalFacilitator::start()?;
    /// let (_key, other_builder) = local.add_account();
    /// let theirs = local.add_plan(PlanSpec::crypto("Theirs").owner(other_builder));
    /// # let _ = theirs;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(hidden)]
    pub fn add_account(&self) -> (String, String) {
        self.state.new_account()
    }

    /// Adds a plan (crypto or fiat, with its own agents and owner).
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, PlanSpec};
    ///
    /// let local = LocalFacilitator::start()?;
    /// let card = local.add_plan(PlanSpec::fiat("Card", "stripe"));
    /// assert_eq!(card.agent_ids.len(), 1);
    /// assert_ne!(card.plan_id, local.plan_id());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(hidden)]
    pub fn add_plan(&self, spec: PlanSpec) -> LocalPlan {
        self.state.add_plan(spec)
    }

    /// Mints an access token in-process, in the format `POST /api/v1/x402/permissions`
    /// answers, signed by this facilitator.
    ///
    /// ```
    /// use nvm_runtime::local::{LocalFacilitator, MintOptions};
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().single_use().resource("/ask"));
    /// let payload = AccessToken::new(token).decode().unwrap();
    /// assert_eq!(payload.accepted.plan_id, local.plan_id());
    /// assert_eq!(payload.payload.authorization.from, local.subscriber_address());
    /// assert!(payload.is_single_use());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(hidden)]
    pub fn mint_token(&self, options: MintOptions) -> String {
        self.state.mint(&options)
    }

    /// How many calls each endpoint received.
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert_eq!(local.calls().settle, 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn calls(&self) -> Calls {
        self.state.calls()
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

    /// Every call the stand-in LLM gateway received, in order (headers and body).
    ///
    /// ```
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert!(local.gateway_calls().is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn gateway_calls(&self) -> Vec<GatewayCall> {
        self.gateway.calls()
    }

    /// Makes a stand-in gateway endpoint misbehave until
    /// [`clear_gateway_faults`](Self::clear_gateway_faults) (a `Fault::SettleFailure`
    /// answers a 200 JSON refusal). Calls are recorded, faulted or not.
    ///
    /// ```
    /// use nvm_runtime::local::{Fault, GatewayEndpoint, LocalFacilitator};
    /// let local = LocalFacilitator::start()?;
    /// local.inject_gateway(GatewayEndpoint::Log, Fault::Status(500));
    /// local.clear_gateway_faults();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(hidden)]
    pub fn inject_gateway(&self, endpoint: GatewayEndpoint, fault: Fault) {
        self.gateway.inject(endpoint, fault);
    }

    /// Clears the stand-in gateway's faults.
    #[doc(hidden)]
    pub fn clear_gateway_faults(&self) {
        self.gateway.clear();
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
