//! The wire: the x402 and Nevermined types, the header codecs and the header names. No
//! I/O: the facilitator client (`backend`) sends these, the web layer (`actix`) reads
//! and writes them on requests and responses.
//!
//! What follows is the protocol this crate speaks, field by field, so that a reader
//! never needs another document. Where the two official SDKs (`payments-py`, the
//! TypeScript `@nevermined-io/payments`) differ, the choice made here is stated.
//!
//! # §1 Environments and API keys
//!
//! | environment | backend base URL | default network of `nvm:erc4337` |
//! |---|---|---|
//! | `sandbox` | `https://api.sandbox.nevermined.app` | `eip155:84532` (Base Sepolia) |
//! | `live` | `https://api.live.nevermined.app` | `eip155:8453` (Base) |
//! | `staging_sandbox` | `https://api.sandbox.nevermined.dev` | `eip155:84532` |
//! | `staging_live` | `https://api.live.nevermined.dev` | `eip155:8453` |
//! | `custom` | `NVM_BACKEND_URL` (default `http://localhost:3001`) | `eip155:84532` |
//!
//! An NVM API key is `<prefix>:<JWT>`. The prefix,
//! lower-cased, picks the environment and always wins: `sandbox`, `live`,
//! `sandbox-staging` (staging_sandbox), `live-staging` (staging_live); an unknown prefix
//! falls back to the environment configured, else `custom`. The JWT is decoded without
//! checking its signature: its `sub` claim is the account address, its `o11y` claim an
//! observability key (the Python SDK refuses a key without one). The environment
//! variables are `NVM_API_KEY`, `NVM_ENVIRONMENT`, `NVM_BACKEND_URL` (for `custom`),
//! and by convention `NVM_PLAN_ID` and `NVM_AGENT_ID`.
//!
//! # §2 Headers
//!
//! | header | direction | content |
//! |---|---|---|
//! | [`PAYMENT_SIGNATURE`] | buyer → seller | the access token (§5), verbatim: it is base64 JSON already, never wrapped again |
//! | [`PAYMENT_REQUIRED`] | seller → buyer, on a 402 | standard padded base64 of the compact JSON [`PaymentRequired`] (§3) |
//! | [`PAYMENT_RESPONSE`] | seller → buyer | standard padded base64 of the JSON [`SettleResponse`] (§4) |
//!
//! Header names are case-insensitive. The seller may read the token from a list of
//! headers, the first non-empty one winning (default: `payment-signature` only). The
//! codecs (`codec`) write standard padded base64 and read standard or URL-safe, padded
//! or not, and refuse a value longer than 16 KiB (`MAX_HEADER_LEN`) before decoding it.
//!
//! # §3 The `PaymentRequired` envelope: what a 402 advertises
//!
//! ```json
//! {"x402Version":2,
//!  "resource":{"url":"/ask","description":"…","mimeType":"application/json"},
//!  "accepts":[{"scheme":"nvm:erc4337","network":"eip155:84532","planId":"<plan id>",
//!              "extra":{"version":"1","agentId":"<agent id>","httpVerb":"POST"}}],
//!  "extensions":{}}
//! ```
//!
//! - `x402Version`: always `X402_VERSION` (2). `error`: an optional string, the
//!   reason of the refusal. `extensions`: always `{}`.
//! - `resource` ([`Resource`]): `url` is the request's path without its query string,
//!   overridable per route; `description` and `mimeType` only when the route sets them.
//! - `accepts` ([`Accepted`]): one entry per plan, usually one. `planId` is a decimal
//!   string of a 256-bit id: never parsed as a number. `extra`: `version` is
//!   always `"1"`; `agentId` and `httpVerb` only when known.
//! - Schemes: `SCHEME_ERC4337` (networks `eip155:84532`, `eip155:8453`) and
//!   `SCHEME_CARD_DELEGATION` (networks `NETWORK_STRIPE`, the default, `braintree`,
//!   `visa`). A route that forces no scheme has it detected from the plan's public
//!   metadata, `GET {backend}/api/v1/protocol/plans/{planId}` (no `Authorization`):
//!   only `registry.price.isCrypto == false` selects `nvm:card-delegation`, with
//!   `metadata.plan.fiatPaymentProvider`, when present, as the network; anything else,
//!   or any error, gives `nvm:erc4337`. The answer is kept per plan (a failure for a
//!   shorter time, so a broken backend is not hammered).
//! - Unset optional fields are omitted, as the TypeScript SDK does (the backend accepts
//!   both forms).
//! - The 402's body is `{"error":"Payment Required","message":"<reason>"}`, JSON.
//!
//! # §4 The facilitator calls (seller side)
//!
//! `POST {backend}/api/v1/x402/verify` and `POST {backend}/api/v1/x402/settle`, with
//! `Accept: application/json`, `Content-Type: application/json`,
//! `Authorization: Bearer <the seller's whole API key, prefix included>` and
//! `Nevermined-Version: 1.1`. The body (`FacilitatorRequest`):
//!
//! | field | verify | settle | meaning |
//! |---|---|---|---|
//! | `paymentRequired` | yes | yes | the very envelope advertised (§3) |
//! | `x402AccessToken` | yes | yes | the token header's value |
//! | `maxAmount` | optional | optional | credits as a decimal string ([`Amount`]); absent or `"0"` makes the backend charge the plan's default, so a free request is never sent: its settle call is skipped |
//! | `agentRequestId` | – | optional | the verify answer's request id, linking the two calls |
//!
//! The verify answer ([`VerifyResponse`], 200): `isValid` (always), `invalidReason` (when
//! invalid; an open string, documented values `invalid_token`, `expired_token`,
//! `insufficient_balance`, `invalid_plan`, `invalid_agent`), `payer`, `network`,
//! `agentRequestId`, `urlMatching`, and `agentRequest` (`agentRequestId`, `agentName`,
//! `agentId`, `urlMatching`, `verbMatching`, `batch`, and `balance`: `planId`,
//! `planName`, `planType`, `holderAddress`, `balance` as a number or a string,
//! `creditsContract`, `isSubscriber`, `pricePerCredit`). The request id is `agentRequest.agentRequestId`, else the
//! top-level one.
//!
//! The settle answer ([`SettleResponse`], 200): `success` (a 200 with `success: false`
//! is a failed settlement), `errorReason`, `payer`, `transaction` (a transaction hash,
//! `""` on failure), `network`, `creditsRedeemed` and `remainingBalance` (decimal
//! strings), `orderTx`, `billingModel` (`"credits"`, the default when absent, or
//! `"pay-as-you-go"`, whose successful settle reports `creditsRedeemed: "0"`). Fields
//! this crate does not know pass through to the `payment-response` receipt untouched.
//!
//! A refused call answers non-2xx with the backend's error envelope, `BackendError`: `{code, message, httpStatus,
//! hint, details}`. Codes seen: `CODE_FORGED` (`BCK.X402.0005`: a forged token, or an
//! envelope that does not match it), `CODE_SPENT` (`BCK.X402.0059`: a single-use token
//! already spent; mint a new one, never retry), `CODE_WRONG_RESOURCE`
//! (`BCK.X402.0013`: a token bound to another resource). A gateway's error body may be
//! HTML: every answer is parsed defensively.
//!
//! # §5 Access tokens (buyer side)
//!
//! Minting: `POST {backend}/api/v1/x402/permissions` with the subscriber's key as
//! bearer and the body `PermissionsRequest`: `accepted` (scheme, network, `planId`,
//! `extra.agentId`), optionally `delegationConfig` (`DelegationConfig`:
//! `delegationId`, to pay with a card delegation), `tokenVersion` (2 or 3) and
//! `resource` (`ResourceBinding`: `url`). The answer (`PermissionsResponse`) is
//! `{"accessToken": "…"}`.
//!
//! The token ([`AccessToken`]) is base64 (standard or URL-safe, padded or not) of a JSON
//! x402 `PaymentPayload`: `{"x402Version":2, "accepted":{…as minted…},
//! "payload":{"signature":"0x…", "authorization":{"from":"0x<subscriber>",
//! "sessionKeysProvider":"…", "sessionKeys":[…]}}, "extensions":{}}`
//! (`SignedPayload`, `Authorization`). A seller never needs to decode it (the
//! backend checks everything); this crate checks only that it is base64 of a JSON
//! object before calling the facilitator, and logs it only as a `TokenHash`.
//! Version 2 tokens are reusable bearer credentials; version 3 tokens (a non-empty
//! `payload.authorization.nonce`) are single-use and bound to `resource.url` and
//! `httpVerb`.
//!
//! # §6 The buyer's flow
//!
//! 1. A request without a token gets a 402 with `payment-required`.
//! 2. The buyer decodes it and takes `accepts[0].planId` and `accepts[0].extra.agentId`.
//! 3. It mints a token (§5).
//! 4. It retries with `payment-signature: <token>` and gets a 200 with `payment-response`.
//! 5. It decodes the receipt: `creditsRedeemed`, `remainingBalance`, `transaction`.
//!
//! # §7 Status codes
//!
//! | code | when |
//! |---|---|
//! | 200 (any 2xx) | a valid payment, the request served and settled |
//! | 402 | a missing or invalid token, too few credits, a failed settlement |
//! | 500 | the payment could not be checked: the facilitator unreachable, slow or answering garbage, or the route misconfigured |

pub(crate) mod codec;
pub(crate) mod endpoints;
pub(crate) mod envelope;
mod headers;
pub(crate) mod messages;
pub(crate) mod token;

pub use codec::DecodeError;
pub use envelope::{Accepted, PaymentRequired, Resource};
pub use headers::{IDEMPOTENCY_KEY, PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE};
pub use messages::{Amount, SettleResponse, VerifyResponse};
pub use token::AccessToken;

// The protocol's inner parts: the crate's own (the `__private` module lends a few to the
// repository's tests, fuzzers and benchmarks). Some only the local facilitator names.
pub(crate) use endpoints::Endpoint;
#[cfg_attr(not(feature = "local"), allow(unused_imports))]
pub(crate) use envelope::{Extra, NETWORK_STRIPE, SCHEME_CARD_DELEGATION, SCHEME_ERC4337, X402_VERSION};
pub(crate) use headers::IDEMPOTENT_REPLAYED;
#[cfg_attr(not(feature = "local"), allow(unused_imports))]
pub(crate) use messages::{
    AgentRequest, BackendError, CODE_FORGED, CODE_SPENT, CODE_WRONG_RESOURCE, DelegationConfig,
    FacilitatorRequest, PermissionsRequest, PermissionsResponse, SETTLEMENT_PENDING, SETTLEMENT_UNKNOWN,
};
#[cfg_attr(not(feature = "local"), allow(unused_imports))]
pub(crate) use token::{
    AccessTokenExt, Authorization, PaymentPayload, ResourceBinding, SignedPayload, TokenHash,
};
