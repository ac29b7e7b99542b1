//! The in-memory ledger and the backend's rules over it: minting, verification and
//! settlement. Every check and burn happens under one lock, so no interleaving of
//! requests can spend a credit twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::bodies::{FacilitatorBody, PermissionsBody};
use super::keys::{self, Secret};
use super::kit::{LocalPlan, MintOptions, PlanSpec};
use crate::wire::AccessTokenExt as _;
use crate::wire::{Accepted, Endpoint, Extra, SCHEME_CARD_DELEGATION, SCHEME_ERC4337, X402_VERSION};
use crate::wire::{AccessToken, Authorization, PaymentPayload, SignedPayload, TokenHash};
use crate::wire::{CODE_FORGED, CODE_SPENT, CODE_WRONG_RESOURCE, ResourceBinding};

/// The network of crypto plans (the `custom` environment's default).
pub(crate) const CRYPTO_NETWORK: &str = "eip155:84532";

/// Error codes the local facilitator answers with, beyond the three of the [`wire`](crate::wire) docs, §4.
pub(crate) mod codes {
    /// 401: no key, a malformed key, or a key this facilitator did not issue.
    pub(crate) const UNAUTHORIZED: &str = "BCK.AUTH.0001";
    /// 400: the body is not the expected JSON.
    pub(crate) const BAD_REQUEST: &str = "BCK.COMMON.0400";
    /// 404: no such endpoint.
    pub(crate) const NOT_FOUND: &str = "BCK.COMMON.0404";
    /// 404: no such plan.
    pub(crate) const UNKNOWN_PLAN: &str = "BCK.PROTOCOL.0404";
    /// 400: the agent is not an agent of the plan.
    pub(crate) const UNKNOWN_AGENT: &str = "BCK.PROTOCOL.0400";
    /// 404: the `agentRequestId` was never issued by `verify`.
    pub(crate) const UNKNOWN_REQUEST: &str = "BCK.X402.0404";
    /// 409: the `agentRequestId` belongs to another token or another account.
    pub(crate) const REQUEST_MISMATCH: &str = "BCK.X402.0409";
}

/// A plan of the ledger.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) owner: String,
    pub(crate) agents: Vec<Agent>,
    pub(crate) credits_per_request: u64,
    pub(crate) fiat_provider: Option<String>,
    pub(crate) credits_contract: String,
}

/// An agent of a plan.
#[derive(Debug, Clone)]
pub(crate) struct Agent {
    pub(crate) id: String,
    pub(crate) name: String,
}

impl Plan {
    pub(crate) fn scheme(&self) -> &'static str {
        if self.fiat_provider.is_some() { SCHEME_CARD_DELEGATION } else { SCHEME_ERC4337 }
    }

    pub(crate) fn network(&self) -> &str {
        self.fiat_provider.as_deref().unwrap_or(CRYPTO_NETWORK)
    }

    fn agent(&self, id: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.id == id)
    }
}

/// How many verified requests are remembered for `settle`; the oldest are forgotten
/// first, so a long-running facilitator keeps a bounded memory. A request verified more
/// than this many verifications ago can no longer be settled by its id.
const REMEMBERED_REQUESTS: usize = 50_000;

/// What `verify` remembered about a request, for `settle`.
#[derive(Debug)]
struct RequestRecord {
    caller: String,
    fingerprint: [u8; 32],
    settled: Option<Value>,
}

/// The ledger proper: everything behind the lock.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    plans: HashMap<String, Plan>,
    balances: HashMap<(String, String), u64>,
    requests: HashMap<String, RequestRecord>,
    /// Request ids, oldest first, to forget past [`REMEMBERED_REQUESTS`].
    request_order: VecDeque<String>,
    spent_nonces: HashSet<String>,
    total_burned: u64,
    serial: u64,
}

impl Ledger {
    fn remember(&mut self, id: String, record: RequestRecord) {
        if self.request_order.len() >= REMEMBERED_REQUESTS
            && let Some(oldest) = self.request_order.pop_front()
        {
            self.requests.remove(&oldest);
        }
        self.request_order.push_back(id.clone());
        self.requests.insert(id, record);
    }

    fn next(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn balance(&self, plan_id: &str, address: &str) -> u64 {
        self.balances.get(&(plan_id.to_owned(), address.to_ascii_lowercase())).copied().unwrap_or(0)
    }

    fn holds(&self, plan_id: &str, address: &str) -> bool {
        self.balances.contains_key(&(plan_id.to_owned(), address.to_ascii_lowercase()))
    }
}

/// An HTTP answer: 200 with JSON, or the backend's error envelope.
#[derive(Debug)]
pub(crate) enum Reply {
    Ok(Value),
    Error(ApiError),
}

/// The backend's error envelope, with its HTTP status.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) hint: &'static str,
}

impl ApiError {
    pub(crate) fn new(
        status: u16,
        code: &'static str,
        message: impl Into<String>,
        hint: &'static str,
    ) -> Self {
        ApiError { status, code, message: message.into(), hint }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "code": self.code,
            "message": self.message,
            "httpStatus": self.status,
            "hint": self.hint,
            "details": null,
        })
    }
}

/// Why a token does not pay for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Undecodable, or a signature that does not match.
    Token,
    /// A single-use token already settled.
    Spent,
    /// Bound to another resource or verb.
    Resource,
    /// The envelope does not match the token (plan or agent); the verify reason.
    Mismatch(&'static str),
    Expired,
    Plan,
    Agent,
    Balance,
    Amount,
}

#[derive(Debug)]
struct Denial {
    kind: Kind,
    message: String,
}

fn reject(kind: Kind, message: impl Into<String>) -> Denial {
    Denial { kind, message: message.into() }
}

impl Kind {
    fn verify_reason(self) -> &'static str {
        match self {
            Kind::Token | Kind::Spent | Kind::Resource => "invalid_token",
            Kind::Mismatch(reason) => reason,
            Kind::Expired => "expired_token",
            Kind::Plan => "invalid_plan",
            Kind::Agent => "invalid_agent",
            Kind::Balance => "insufficient_balance",
            Kind::Amount => "invalid_amount",
        }
    }
}

/// A token that passed every check, with what verify and settle report.
#[derive(Debug)]
struct Checked {
    plan_id: String,
    plan_name: String,
    credits_contract: String,
    agent_id: String,
    agent_name: String,
    payer: String,
    network: String,
    amount: u64,
    balance: u64,
    nonce: Option<String>,
    url: String,
    verb: String,
}

/// A decoded token whose signature holds.
#[derive(Debug)]
struct Token {
    payload: PaymentPayload,
    fingerprint: [u8; 32],
}

/// Everything the server threads and the handle share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) secret: Secret,
    ledger: Mutex<Ledger>,
    counters: [AtomicU64; 4],
    pub(crate) builder_address: String,
    pub(crate) builder_api_key: String,
    pub(crate) subscriber_address: String,
    pub(crate) subscriber_api_key: String,
    pub(crate) plan_id: String,
    pub(crate) agent_id: String,
}

/// Whether two resource URLs name the same resource: equal, or equal paths once the
/// scheme, host, query string and trailing slash are ignored (a token may be bound to
/// `https://host/ask` and advertised as `/ask`).
fn same_resource(a: &str, b: &str) -> bool {
    fn path(url: &str) -> &str {
        let url = url.trim();
        let url = match url.find("://") {
            Some(i) => url[i + 3..].find('/').map_or("/", |j| &url[i + 3 + j..]),
            None => url,
        };
        let url = url.split(['?', '#']).next().unwrap_or(url);
        let url = url.trim_end_matches('/');
        if url.is_empty() { "/" } else { url }
    }
    a.trim() == b.trim() || path(a) == path(b)
}

impl State {
    /// A fresh instance: a secret, a builder, a demo subscriber with `credits` on a
    /// default crypto plan with one agent.
    pub(crate) fn new(credits: u64) -> Self {
        let secret = Secret::generate();
        let mut ledger = Ledger::default();
        let builder_address = keys::address(&secret.derive("account", ledger.next()));
        let builder_api_key = keys::issue_api_key(&secret, &builder_address, ledger.serial);
        let subscriber_address = keys::address(&secret.derive("account", ledger.next()));
        let subscriber_api_key = keys::issue_api_key(&secret, &subscriber_address, ledger.serial);
        let plan = Self::plan_from(
            &secret,
            &mut ledger,
            &builder_address,
            PlanSpec::crypto("Local plan").id(super::DEMO_PLAN_ID).agent(super::DEMO_AGENT_ID),
        );
        let plan_id = plan.id.clone();
        let agent_id = plan.agents.first().map(|a| a.id.clone()).unwrap_or_default();
        ledger.balances.insert((plan_id.clone(), subscriber_address.clone()), credits);
        ledger.plans.insert(plan_id.clone(), plan);
        State {
            secret,
            ledger: Mutex::new(ledger),
            counters: Default::default(),
            builder_address,
            builder_api_key,
            subscriber_address,
            subscriber_api_key,
            plan_id,
            agent_id,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave the ledger half-updated (every
        // mutation is a few infallible statements), so a poisoned lock is still usable.
        self.ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn count(&self, endpoint: Endpoint) {
        self.counters[endpoint.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn calls(&self, endpoint: Endpoint) -> u64 {
        self.counters[endpoint.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn total_burned(&self) -> u64 {
        self.lock().total_burned
    }

    pub(crate) fn burned_for(&self, agent_request_id: &str) -> Option<u64> {
        let ledger = self.lock();
        let settled = ledger.requests.get(agent_request_id)?.settled.as_ref()?;
        settled["creditsRedeemed"].as_str()?.parse().ok()
    }

    pub(crate) fn balance(&self, plan_id: &str, address: &str) -> u64 {
        self.lock().balance(plan_id, address)
    }

    pub(crate) fn set_balance(&self, plan_id: &str, address: &str, credits: u64) {
        self.lock().balances.insert((plan_id.to_owned(), address.to_ascii_lowercase()), credits);
    }

    /// A new account with its API key.
    pub(crate) fn new_account(&self) -> (String, String) {
        let mut ledger = self.lock();
        let serial = ledger.next();
        let address = keys::address(&self.secret.derive("account", serial));
        (keys::issue_api_key(&self.secret, &address, serial), address)
    }

    fn plan_from(secret: &Secret, ledger: &mut Ledger, default_owner: &str, spec: PlanSpec) -> Plan {
        let serial = ledger.next();
        let id = spec.id.clone().unwrap_or_else(|| keys::decimal(&secret.derive("plan", serial)));
        let mut agents: Vec<Agent> = spec
            .agents
            .iter()
            .enumerate()
            .map(|(i, id)| Agent { id: id.clone(), name: format!("{} agent {}", spec.name, i + 1) })
            .collect();
        if agents.is_empty() {
            let serial = ledger.next();
            agents.push(Agent {
                id: keys::decimal(&secret.derive("agent", serial)),
                name: format!("{} agent", spec.name),
            });
        }
        Plan {
            credits_contract: keys::address(&secret.derive("contract", serial)),
            id,
            name: spec.name,
            owner: spec.owner.unwrap_or_else(|| default_owner.to_owned()).to_ascii_lowercase(),
            agents,
            credits_per_request: spec.credits_per_request,
            fiat_provider: spec.fiat_provider,
        }
    }

    pub(crate) fn add_plan(&self, spec: PlanSpec) -> LocalPlan {
        let mut ledger = self.lock();
        let plan = Self::plan_from(&self.secret, &mut ledger, &self.builder_address, spec);
        let added = LocalPlan {
            plan_id: plan.id.clone(),
            agent_ids: plan.agents.iter().map(|a| a.id.clone()).collect(),
        };
        ledger.plans.insert(plan.id.clone(), plan);
        added
    }

    /// Mints a token in-process; anything goes (tests make invalid ones on purpose).
    pub(crate) fn mint(&self, options: &MintOptions) -> String {
        let mut ledger = self.lock();
        let plan_id = options.plan_id.clone().unwrap_or_else(|| self.plan_id.clone());
        let plan = ledger.plans.get(&plan_id);
        let scheme = options
            .scheme
            .clone()
            .or_else(|| plan.map(|p| p.scheme().to_owned()))
            .unwrap_or_else(|| SCHEME_ERC4337.to_owned());
        let network = options
            .network
            .clone()
            .or_else(|| plan.map(|p| p.network().to_owned()))
            .unwrap_or_else(|| CRYPTO_NETWORK.to_owned());
        let agent_id = match &options.agent_id {
            Some(agent) => agent.clone(),
            None if plan_id == self.plan_id => Some(self.agent_id.clone()),
            None => plan.and_then(|p| p.agents.first()).map(|a| a.id.clone()),
        };
        let accepted = Accepted {
            scheme,
            network,
            plan_id,
            extra: Extra { version: "1".to_owned(), agent_id, http_verb: options.http_verb.clone() },
        };
        let from = options.subscriber.clone().unwrap_or_else(|| self.subscriber_address.clone());
        self.mint_locked(
            &mut ledger,
            accepted,
            from,
            options.version,
            options.resource.clone(),
            options.valid_before,
        )
    }

    fn mint_locked(
        &self,
        ledger: &mut Ledger,
        accepted: Accepted,
        from: String,
        version: u8,
        resource: Option<String>,
        valid_before: Option<u64>,
    ) -> String {
        let serial = ledger.next();
        let nonce = (version >= 3).then(|| keys::hash_hex(&self.secret.derive("nonce", serial)));
        let mut payload = PaymentPayload {
            x402_version: X402_VERSION,
            accepted,
            payload: SignedPayload {
                signature: String::new(),
                authorization: Authorization {
                    from,
                    session_keys_provider: keys::SESSION_KEYS_PROVIDER.to_owned(),
                    session_keys: Vec::new(),
                    nonce,
                    valid_before,
                },
            },
            resource: resource.map(|url| ResourceBinding { url }),
            extensions: serde_json::Map::new(),
        };
        keys::sign_token(&self.secret, &mut payload);
        payload.to_token().as_str().to_owned()
    }

    /// `POST /api/v1/x402/permissions` for the account `caller`.
    pub(crate) fn permissions(&self, caller: &str, body: &PermissionsBody) -> Reply {
        let mut ledger = self.lock();
        let Some(plan_id) = body.accepted.plan_id.get() else {
            return Reply::Error(ApiError::new(
                400,
                codes::BAD_REQUEST,
                "accepted.planId is required",
                "send {\"accepted\":{\"scheme\",\"network\",\"planId\",\"extra\":{\"agentId\"}}}",
            ));
        };
        let Some(plan) = ledger.plans.get(plan_id) else {
            return Reply::Error(unknown_plan(plan_id));
        };
        let agent_id = match body.accepted.agent_id() {
            Some(agent) if plan.agent(agent).is_none() => {
                return Reply::Error(ApiError::new(
                    400,
                    codes::UNKNOWN_AGENT,
                    format!("agent {agent} is not an agent of plan {plan_id}"),
                    "use the agent id the seller advertises in accepts[0].extra.agentId",
                ));
            }
            agent => agent.map(str::to_owned),
        };
        let version = match &body.token_version {
            None | Some(Value::Null) => 2,
            Some(v) if v.as_u64() == Some(2) || v.as_str() == Some("2") => 2,
            Some(v) if v.as_u64() == Some(3) || v.as_str() == Some("3") => 3,
            Some(other) => {
                return Reply::Error(ApiError::new(
                    400,
                    codes::BAD_REQUEST,
                    format!("tokenVersion must be 2 or 3, got {other}"),
                    "omit tokenVersion for a reusable token, or send 3 for a single-use one",
                ));
            }
        };
        // As the backend does: on a version 2 token the resource and verb bind nothing.
        let resource =
            body.resource.as_ref().and_then(|r| r.url.get()).filter(|_| version == 3).map(str::to_owned);
        let http_verb = body.accepted.http_verb().filter(|_| version == 3).map(str::to_ascii_uppercase);
        let accepted = Accepted {
            scheme: body.accepted.scheme.get().unwrap_or(plan.scheme()).to_owned(),
            network: body.accepted.network.get().unwrap_or(plan.network()).to_owned(),
            plan_id: plan.id.clone(),
            extra: Extra { version: "1".to_owned(), agent_id, http_verb },
        };
        let token = self.mint_locked(&mut ledger, accepted, caller.to_owned(), version, resource, None);
        tracing::debug!(token = %TokenHash::of(&token), plan = plan_id, subscriber = caller, version, "minted an access token");
        Reply::Ok(json!({ "accessToken": token }))
    }

    fn decode(&self, raw: &str) -> Result<Token, Denial> {
        let payload = AccessToken::new(raw).decode().map_err(|e| {
            reject(Kind::Token, format!("the access token is not a base64 JSON x402 payment payload: {e}"))
        })?;
        if !keys::token_signature_ok(&self.secret, &payload) {
            return Err(reject(
                Kind::Token,
                "the access token's signature does not match its content: it was forged or altered",
            ));
        }
        let fingerprint = Sha256::digest(payload.payload.signature.trim().as_bytes()).into();
        Ok(Token { payload, fingerprint })
    }

    /// Every rule of verify, read-only.
    fn check(
        &self,
        ledger: &Ledger,
        caller: &str,
        body: &FacilitatorBody,
        token: &Token,
        now: u64,
    ) -> Result<Checked, Denial> {
        let payload = &token.payload;
        let authorization = &payload.payload.authorization;
        let nonce = authorization.nonce.as_deref().map(str::trim).filter(|n| !n.is_empty());
        if let Some(nonce) = nonce
            && ledger.spent_nonces.contains(nonce)
        {
            return Err(reject(
                Kind::Spent,
                "this single-use access token was already settled; mint a new one",
            ));
        }
        let envelope = &body.payment_required;
        let bound = payload.resource.as_ref().map(|r| r.url.trim()).filter(|u| !u.is_empty());
        if let Some(bound) = bound {
            match envelope.url() {
                Some(url) if same_resource(bound, url) => {}
                Some(url) => {
                    return Err(reject(
                        Kind::Resource,
                        format!("the access token is bound to resource {bound}, not {url}"),
                    ));
                }
                None => {
                    return Err(reject(
                        Kind::Resource,
                        format!("the access token is bound to resource {bound}; the envelope names none"),
                    ));
                }
            }
        }
        let first = envelope.first();
        if nonce.is_some()
            && let (Some(bound), Some(verb)) =
                (payload.accepted.extra.http_verb.as_deref(), first.and_then(|f| f.http_verb()))
            && !bound.eq_ignore_ascii_case(verb)
        {
            return Err(reject(Kind::Resource, format!("the access token is bound to {bound}, not {verb}")));
        }
        if let Some(valid_before) = authorization.valid_before
            && valid_before <= now
        {
            return Err(reject(
                Kind::Expired,
                format!("the access token expired at {valid_before} (now {now})"),
            ));
        }
        let Some(first) = first else {
            return Err(reject(
                Kind::Mismatch("invalid_plan"),
                "paymentRequired.accepts is empty: it names no plan",
            ));
        };
        let token_plan = payload.accepted.plan_id.as_str();
        match first.plan_id.get() {
            Some(plan) if plan == token_plan => {}
            Some(plan) => {
                return Err(reject(
                    Kind::Mismatch("invalid_plan"),
                    format!("the access token is for plan {token_plan}, the envelope asks for plan {plan}"),
                ));
            }
            None => {
                return Err(reject(
                    Kind::Mismatch("invalid_plan"),
                    "paymentRequired.accepts[0].planId is missing",
                ));
            }
        }
        let Some(plan) = ledger.plans.get(token_plan) else {
            return Err(reject(Kind::Plan, format!("plan {token_plan} does not exist")));
        };
        if plan.owner != caller {
            return Err(reject(
                Kind::Plan,
                format!("plan {token_plan} is not owned by the calling account {caller}"),
            ));
        }
        let token_agent = payload.accepted.extra.agent_id.as_deref().map(str::trim).filter(|a| !a.is_empty());
        let envelope_agent = first.agent_id();
        if let (Some(t), Some(e)) = (token_agent, envelope_agent)
            && t != e
        {
            return Err(reject(
                Kind::Mismatch("invalid_agent"),
                format!("the access token is for agent {t}, the envelope names agent {e}"),
            ));
        }
        let agent = match token_agent.or(envelope_agent) {
            Some(id) => match plan.agent(id) {
                Some(agent) => agent,
                None => {
                    return Err(reject(
                        Kind::Agent,
                        format!("agent {id} is not an agent of plan {token_plan}"),
                    ));
                }
            },
            None => match plan.agents.first() {
                Some(agent) => agent,
                None => return Err(reject(Kind::Agent, format!("plan {token_plan} has no agent"))),
            },
        };
        let amount = match body.max_amount.get() {
            None => plan.credits_per_request,
            Some(text) => match text.parse::<u64>() {
                Ok(0) => plan.credits_per_request,
                Ok(n) => n,
                Err(_) => {
                    return Err(reject(
                        Kind::Amount,
                        format!("maxAmount must be a non-negative decimal integer, got {text:?}"),
                    ));
                }
            },
        };
        let payer = authorization.from.to_ascii_lowercase();
        let balance = ledger.balance(token_plan, &payer);
        if balance < amount {
            return Err(reject(
                Kind::Balance,
                format!("the balance is {balance} credits; {amount} are needed"),
            ));
        }
        Ok(Checked {
            plan_id: plan.id.clone(),
            plan_name: plan.name.clone(),
            credits_contract: plan.credits_contract.clone(),
            agent_id: agent.id.clone(),
            agent_name: agent.name.clone(),
            payer,
            network: payload.accepted.network.clone(),
            amount,
            balance,
            nonce: nonce.map(str::to_owned),
            url: envelope.url().unwrap_or_default().to_owned(),
            verb: first.http_verb().unwrap_or("*").to_owned(),
        })
    }

    /// `POST /api/v1/x402/verify` for the account `caller`.
    pub(crate) fn verify(&self, caller: &str, body: &FacilitatorBody) -> Reply {
        let hash = TokenHash::of(&body.x402_access_token);
        let mut ledger = self.lock();
        let checked = self.decode(&body.x402_access_token).and_then(|token| {
            self.check(&ledger, caller, body, &token, keys::unix_now()).map(|c| (c, token))
        });
        let (checked, token) = match checked {
            Ok(ok) => ok,
            Err(denial) if denial.kind == Kind::Amount => {
                return Reply::Error(ApiError::new(
                    400,
                    codes::BAD_REQUEST,
                    denial.message,
                    "send maxAmount as a decimal string such as \"1\"",
                ));
            }
            Err(denial) => {
                let reason = denial.kind.verify_reason();
                tracing::debug!(token = %hash, reason, why = %denial.message, "verify: invalid");
                let mut answer =
                    json!({ "isValid": false, "invalidReason": reason, "invalidMessage": denial.message });
                if let Ok(token) = AccessToken::new(body.x402_access_token.as_str()).decode() {
                    answer["payer"] = json!(token.payload.authorization.from.to_ascii_lowercase());
                    answer["network"] = json!(token.accepted.network);
                }
                return Reply::Ok(answer);
            }
        };
        let serial = ledger.next();
        let request_id = keys::uuid(&self.secret.derive("agent-request", serial));
        ledger.remember(
            request_id.clone(),
            RequestRecord { caller: caller.to_owned(), fingerprint: token.fingerprint, settled: None },
        );
        drop(ledger);
        tracing::debug!(token = %hash, plan = %checked.plan_id, payer = %checked.payer, request = %request_id, "verify: valid");
        Reply::Ok(json!({
            "isValid": true,
            "payer": checked.payer,
            "network": checked.network,
            "agentRequestId": request_id,
            "urlMatching": checked.url,
            "agentRequest": {
                "agentRequestId": request_id,
                "agentName": checked.agent_name,
                "agentId": checked.agent_id,
                "balance": {
                    "planId": checked.plan_id,
                    "planName": checked.plan_name,
                    "planType": "credits",
                    "holderAddress": checked.payer,
                    "balance": checked.balance.to_string(),
                    "creditsContract": checked.credits_contract,
                    "isSubscriber": true,
                    "pricePerCredit": 0,
                },
                "urlMatching": checked.url,
                "verbMatching": checked.verb,
                "batch": false,
            },
        }))
    }

    /// `POST /api/v1/x402/settle` for the account `caller`.
    pub(crate) fn settle(&self, caller: &str, body: &FacilitatorBody) -> Reply {
        let hash = TokenHash::of(&body.x402_access_token);
        let mut ledger = self.lock();
        let token = match self.decode(&body.x402_access_token) {
            Ok(token) => token,
            Err(denial) => {
                tracing::debug!(token = %hash, why = %denial.message, "settle: refused");
                return Reply::Error(ApiError::new(
                    400,
                    CODE_FORGED,
                    denial.message,
                    "send the access token exactly as the subscriber minted it",
                ));
            }
        };
        let request_id = body.agent_request_id.get();
        if let Some(id) = request_id {
            match ledger.requests.get(id) {
                None => {
                    return Reply::Error(ApiError::new(
                        404,
                        codes::UNKNOWN_REQUEST,
                        format!("agent request {id} does not exist"),
                        "send the agentRequestId of this token's verify response, or none",
                    ));
                }
                Some(record) if record.fingerprint != token.fingerprint || record.caller != caller => {
                    return Reply::Error(ApiError::new(
                        409,
                        codes::REQUEST_MISMATCH,
                        format!("agent request {id} was verified for another access token or account"),
                        "send the agentRequestId of this token's verify response, or none",
                    ));
                }
                Some(RequestRecord { settled: Some(result), .. }) => {
                    tracing::debug!(token = %hash, request = id, "settle: already settled, answering the first result");
                    return Reply::Ok(result.clone());
                }
                Some(_) => {}
            }
        }
        let checked = match self.check(&ledger, caller, body, &token, keys::unix_now()) {
            Ok(checked) => checked,
            Err(denial) => {
                tracing::debug!(token = %hash, why = %denial.message, "settle: refused");
                let (status, code, hint) = match denial.kind {
                    Kind::Token | Kind::Mismatch(_) => (
                        400,
                        CODE_FORGED,
                        "the token and the envelope must match what was minted and advertised",
                    ),
                    Kind::Spent => {
                        (400, CODE_SPENT, "mint a new access token; never retry a spent single-use token")
                    }
                    Kind::Resource => (400, CODE_WRONG_RESOURCE, "mint a token bound to this resource"),
                    Kind::Amount => {
                        (400, codes::BAD_REQUEST, "send maxAmount as a decimal string such as \"1\"")
                    }
                    Kind::Expired | Kind::Plan | Kind::Agent | Kind::Balance => {
                        let payload = &token.payload;
                        let payer = payload.payload.authorization.from.to_ascii_lowercase();
                        let balance = ledger.balance(&payload.accepted.plan_id, &payer);
                        return Reply::Ok(json!({
                            "success": false,
                            "errorReason": denial.kind.verify_reason(),
                            "errorMessage": denial.message,
                            "payer": payer,
                            "transaction": "",
                            "network": payload.accepted.network,
                            "creditsRedeemed": "0",
                            "remainingBalance": balance.to_string(),
                            "billingModel": "credits",
                        }));
                    }
                };
                return Reply::Error(ApiError::new(status, code, denial.message, hint));
            }
        };
        let key = (checked.plan_id.clone(), checked.payer.clone());
        let remaining = checked.balance - checked.amount;
        ledger.balances.insert(key, remaining);
        ledger.total_burned += checked.amount;
        if let Some(nonce) = checked.nonce {
            ledger.spent_nonces.insert(nonce);
        }
        let serial = ledger.next();
        let transaction = keys::hash_hex(&self.secret.derive("transaction", serial));
        let result = json!({
            "success": true,
            "payer": checked.payer,
            "transaction": transaction,
            "network": checked.network,
            "creditsRedeemed": checked.amount.to_string(),
            "remainingBalance": remaining.to_string(),
            "billingModel": "credits",
        });
        if let Some(record) = request_id.and_then(|id| ledger.requests.get_mut(id)) {
            record.settled = Some(result.clone());
        }
        drop(ledger);
        tracing::debug!(token = %hash, plan = %checked.plan_id, payer = %checked.payer, burned = checked.amount, remaining, "settle: burned");
        Reply::Ok(result)
    }

    /// `GET /api/v1/protocol/plans/{id}`.
    pub(crate) fn plan_metadata(&self, plan_id: &str) -> Reply {
        let ledger = self.lock();
        let Some(plan) = ledger.plans.get(plan_id) else {
            return Reply::Error(unknown_plan(plan_id));
        };
        let mut plan_meta = json!({ "accessLimit": "credits", "isTrialPlan": false });
        if let Some(provider) = &plan.fiat_provider {
            plan_meta["fiatPaymentProvider"] = json!(provider);
        }
        let per_request = plan.credits_per_request.to_string();
        Reply::Ok(json!({
            "id": plan.id,
            "planId": plan.id,
            "name": plan.name,
            "owner": plan.owner,
            "agentIds": plan.agents.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            "credits": { "perRequest": per_request, "minAmount": per_request, "maxAmount": per_request },
            "registry": {
                "owner": plan.owner,
                "price": {
                    "isCrypto": plan.fiat_provider.is_none(),
                    "amounts": ["0"],
                    "receivers": [plan.owner],
                    "tokenAddress": "0x0000000000000000000000000000000000000000",
                },
                "credits": {
                    "creditsType": "fixed",
                    "amount": per_request,
                    "minAmount": per_request,
                    "maxAmount": per_request,
                    "nftAddress": plan.credits_contract,
                },
            },
            "metadata": {
                "main": { "name": plan.name },
                "plan": plan_meta,
            },
        }))
    }

    /// `GET /api/v1/protocol/plans/{id}/balance/{holder}` (the SDKs' `get_plan_balance`).
    pub(crate) fn plan_balance(&self, plan_id: &str, holder: &str) -> Reply {
        let ledger = self.lock();
        let Some(plan) = ledger.plans.get(plan_id) else {
            return Reply::Error(unknown_plan(plan_id));
        };
        Reply::Ok(json!({
            "planId": plan.id,
            "planName": plan.name,
            "planType": "credits",
            "holderAddress": holder.to_ascii_lowercase(),
            "balance": ledger.balance(plan_id, holder).to_string(),
            "creditsContract": plan.credits_contract,
            "isSubscriber": ledger.holds(plan_id, holder),
            "pricePerCredit": 0,
        }))
    }
}

fn unknown_plan(plan_id: &str) -> ApiError {
    ApiError::new(
        404,
        codes::UNKNOWN_PLAN,
        format!("plan {plan_id} does not exist"),
        "use the plan id the local facilitator printed (planId)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_compare_by_path() {
        assert!(same_resource("/ask", "/ask"));
        assert!(same_resource("https://seller.example/ask?x=1", "/ask"));
        assert!(same_resource("/ask/", "/ask"));
        assert!(!same_resource("/ask", "/other"));
        assert!(same_resource("http://h", "/"));
    }
}
