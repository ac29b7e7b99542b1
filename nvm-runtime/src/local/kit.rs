//! What this repository's own tests, benchmarks and the `nvm-local-facilitator` binary
//! do with a local facilitator beyond a user's test (lent by `__private::local`, not a
//! public API): more plans and accounts, tokens minted in-process, the facilitator's
//! keys and addresses as one record, the stand-in gateway's faults.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::gateway::{GatewayCall, GatewayEndpoint};
use super::{Fault, LocalFacilitator};

/// The starting balance of the demo subscriber.
///
/// ```
/// use nvm_runtime::__private::local::DEFAULT_CREDITS;
/// use nvm_runtime::local::LocalFacilitator;
///
/// let local = LocalFacilitator::start()?;
/// assert_eq!(local.balance(local.plan_id(), local.subscriber_address()), DEFAULT_CREDITS);
/// # Ok::<(), std::io::Error>(())
/// ```
pub const DEFAULT_CREDITS: u64 = 100;

/// Starts a local facilitator as [`LocalFacilitator::start`] does, on `port` of
/// 127.0.0.1 (0: any free port): what the `nvm-local-facilitator` binary does (lent by
/// `__private::local`).
///
/// ```
/// let local = nvm_runtime::__private::local::start_on(0)?;
/// assert!(local.backend_url().starts_with("http://127.0.0.1:"));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn start_on(port: u16) -> std::io::Result<LocalFacilitator> {
    LocalFacilitator::start_on(port)
}

/// What a client needs to use a local facilitator. Serializes as
/// `{"backendUrl","builderApiKey","subscriberApiKey","planId","agentId"}`, the line the
/// `nvm-local-facilitator` binary prints first.
///
/// `Debug` redacts the keys.
///
/// ```
/// use nvm_runtime::__private::local::LocalFacilitatorExt as _;
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

/// A plan to add with [`LocalFacilitatorExt::add_plan`].
///
/// ```
/// use nvm_runtime::__private::local::PlanSpec;
///
/// let crypto = PlanSpec::crypto("Pro").credits_per_request(2).agent("42").agent("43");
/// let fiat = PlanSpec::fiat("Card", "stripe");
/// # let _ = (crypto, fiat);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PlanSpec {
    pub(super) id: Option<String>,
    pub(super) name: String,
    pub(super) owner: Option<String>,
    pub(super) agents: Vec<String>,
    pub(super) credits_per_request: u64,
    pub(super) fiat_provider: Option<String>,
}

impl PlanSpec {
    /// A crypto plan (`registry.price.isCrypto: true`, scheme `nvm:erc4337`), owned by
    /// the facilitator's builder, 1 credit per request, one generated agent.
    ///
    /// ```
    /// let spec = nvm_runtime::__private::local::PlanSpec::crypto("Basic");
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
    /// let spec = nvm_runtime::__private::local::PlanSpec::fiat("Card", "braintree");
    /// # let _ = spec;
    /// ```
    pub fn fiat(name: impl Into<String>, provider: impl Into<String>) -> Self {
        PlanSpec { fiat_provider: Some(provider.into()), ..PlanSpec::crypto(name) }
    }

    /// Gives the plan this id (default: a generated 256-bit decimal id). An id already
    /// in use is replaced.
    ///
    /// ```
    /// let spec = nvm_runtime::__private::local::PlanSpec::crypto("Basic").id("42");
    /// # let _ = spec;
    /// ```
    pub fn id(mut self, plan_id: impl Into<String>) -> Self {
        self.id = Some(plan_id.into());
        self
    }

    /// Adds an agent with this id (when none is added, one is generated).
    ///
    /// ```
    /// let spec = nvm_runtime::__private::local::PlanSpec::crypto("Basic").agent("7");
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
    /// let spec = nvm_runtime::__private::local::PlanSpec::crypto("Theirs").owner("0x0000000000000000000000000000000000000001");
    /// # let _ = spec;
    /// ```
    pub fn owner(mut self, address: impl Into<String>) -> Self {
        self.owner = Some(address.into());
        self
    }

    /// Credits burned when a request carries no `maxAmount` (default 1).
    ///
    /// ```
    /// let spec = nvm_runtime::__private::local::PlanSpec::crypto("Basic").credits_per_request(3);
    /// # let _ = spec;
    /// ```
    pub fn credits_per_request(mut self, credits: u64) -> Self {
        self.credits_per_request = credits;
        self
    }
}

/// A plan added with [`LocalFacilitatorExt::add_plan`].
///
/// ```
/// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, PlanSpec};
/// use nvm_runtime::local::LocalFacilitator;
///
/// let local = LocalFacilitator::start()?;
/// let plan = local.add_plan(PlanSpec::crypto("Pro").agent("7"));
/// assert_eq!(plan.agent_ids, ["7"]);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPlan {
    /// The plan id (a 256-bit decimal number).
    pub plan_id: String,
    /// Its agents.
    pub agent_ids: Vec<String>,
}

/// What [`LocalFacilitatorExt::mint_token`] puts in a token. Unset fields default to the
/// facilitator's plan, that plan's agent and scheme and network, the demo subscriber,
/// version 2 (reusable), no resource binding and no expiry. Nothing is validated: tests
/// mint invalid tokens on purpose.
///
/// ```
/// use nvm_runtime::__private::local::MintOptions;
///
/// let options = MintOptions::new().single_use().resource("/ask").valid_before(0);
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct MintOptions {
    pub(super) plan_id: Option<String>,
    pub(super) agent_id: Option<Option<String>>,
    pub(super) subscriber: Option<String>,
    pub(super) version: u8,
    pub(super) resource: Option<String>,
    pub(super) http_verb: Option<String>,
    pub(super) valid_before: Option<u64>,
    pub(super) scheme: Option<String>,
    pub(super) network: Option<String>,
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
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new());
    /// let payload = AccessToken::new(token).decode().unwrap();
    /// assert_eq!(payload.accepted.plan_id, local.plan_id());
    /// let accepted = serde_json::to_value(&payload.accepted).unwrap();
    /// assert_eq!(accepted["extra"]["agentId"], local.agent_id());
    /// assert!(!payload.is_single_use());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The plan (`accepted.planId`).
    ///
    /// ```
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
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
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().agent("456"));
    /// let payload = AccessToken::new(token).decode().unwrap();
    /// assert_eq!(serde_json::to_value(&payload.accepted).unwrap()["extra"]["agentId"], "456");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn agent(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(Some(agent_id.into()));
        self
    }

    /// No `accepted.extra.agentId` at all.
    ///
    /// ```
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().no_agent());
    /// let accepted = serde_json::to_value(AccessToken::new(token).decode().unwrap().accepted).unwrap();
    /// assert_eq!(accepted["extra"].get("agentId"), None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn no_agent(mut self) -> Self {
        self.agent_id = Some(None);
        self
    }

    /// The paying subscriber's address (`payload.authorization.from`).
    ///
    /// ```
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
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
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
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
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
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
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
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
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
    /// use nvm_runtime::wire::AccessToken;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let token = local.mint_token(MintOptions::new().single_use().http_verb("POST"));
    /// let payload = AccessToken::new(token).decode().unwrap();
    /// assert_eq!(serde_json::to_value(&payload.accepted).unwrap()["extra"]["httpVerb"], "POST");
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
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
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
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
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
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
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

/// The local facilitator's controls that only this repository's tests, benchmarks and
/// binary use: a method of [`LocalFacilitator`] each, in scope with
/// `use nvm_runtime::__private::local::LocalFacilitatorExt as _`.
pub trait LocalFacilitatorExt {
    /// Everything a client needs, as the binary prints it.
    ///
    /// ```
    /// use nvm_runtime::__private::local::LocalFacilitatorExt as _;
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert_eq!(local.info().backend_url, local.backend_url());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn info(&self) -> &LocalInfo;

    /// The builder's address (lower-case `0x` + 40 hex digits), owner of the default plan.
    ///
    /// ```
    /// use nvm_runtime::__private::local::LocalFacilitatorExt as _;
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert_eq!(local.builder_address().len(), 42);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn builder_address(&self) -> &str;

    /// A new account with no plan and no credits (another builder, say): its
    /// `(api_key, address)`. Give it a plan with [`PlanSpec::owner`].
    ///
    /// ```
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, PlanSpec};
    /// use nvm_runtime::local::LocalFacilitator;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let (_key, other_builder) = local.add_account();
    /// let theirs = local.add_plan(PlanSpec::crypto("Theirs").owner(other_builder));
    /// # let _ = theirs;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn add_account(&self) -> (String, String);

    /// Adds a plan (crypto or fiat, with its own agents and owner).
    ///
    /// ```
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, PlanSpec};
    /// use nvm_runtime::local::LocalFacilitator;
    ///
    /// let local = LocalFacilitator::start()?;
    /// let card = local.add_plan(PlanSpec::fiat("Card", "stripe"));
    /// assert_eq!(card.agent_ids.len(), 1);
    /// assert_ne!(card.plan_id, local.plan_id());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn add_plan(&self, spec: PlanSpec) -> LocalPlan;

    /// Mints an access token in-process, in the format `POST /api/v1/x402/permissions`
    /// answers, signed by this facilitator.
    ///
    /// ```
    /// use nvm_runtime::__private::local::{LocalFacilitatorExt as _, MintOptions};
    /// use nvm_runtime::__private::wire::AccessTokenExt as _;
    /// use nvm_runtime::local::LocalFacilitator;
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
    fn mint_token(&self, options: MintOptions) -> String;

    /// Makes a stand-in gateway endpoint misbehave until
    /// [`clear_gateway_faults`](Self::clear_gateway_faults) (a `Fault::SettleFailure`
    /// answers a 200 JSON refusal). Calls are recorded, faulted or not.
    ///
    /// ```
    /// use nvm_runtime::__private::local::{GatewayEndpoint, LocalFacilitatorExt as _};
    /// use nvm_runtime::local::{Fault, LocalFacilitator};
    /// let local = LocalFacilitator::start()?;
    /// local.inject_gateway(GatewayEndpoint::Log, Fault::Status(500));
    /// local.clear_gateway_faults();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn inject_gateway(&self, endpoint: GatewayEndpoint, fault: Fault);

    /// Clears the stand-in gateway's faults.
    fn clear_gateway_faults(&self);

    /// Every call the stand-in LLM gateway received, in order (headers and body).
    ///
    /// ```
    /// use nvm_runtime::__private::local::LocalFacilitatorExt as _;
    /// let local = nvm_runtime::local::LocalFacilitator::start()?;
    /// assert!(local.gateway_calls().is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn gateway_calls(&self) -> Vec<GatewayCall>;
}

impl LocalFacilitatorExt for LocalFacilitator {
    fn info(&self) -> &LocalInfo {
        &self.info
    }

    fn builder_address(&self) -> &str {
        &self.state.builder_address
    }

    fn add_account(&self) -> (String, String) {
        self.state.new_account()
    }

    fn add_plan(&self, spec: PlanSpec) -> LocalPlan {
        self.state.add_plan(spec)
    }

    fn mint_token(&self, options: MintOptions) -> String {
        self.state.mint(&options)
    }

    fn inject_gateway(&self, endpoint: GatewayEndpoint, fault: Fault) {
        self.gateway.inject(endpoint, fault);
    }

    fn clear_gateway_faults(&self) {
        self.gateway.clear();
    }

    fn gateway_calls(&self) -> Vec<GatewayCall> {
        self.gateway.calls()
    }
}
