//! The wire: the x402 and Nevermined types, codecs and header names. No I/O.
//!
//! (The protocol, field by field, is described below in sections §1–§6.)

pub mod codec;
mod envelope;
mod headers;
mod messages;
mod token;

pub use envelope::{
    Accepted, EnvelopeBuilder, Extra, NETWORK_STRIPE, PaymentRequired, Resource, SCHEME_CARD_DELEGATION,
    SCHEME_ERC4337, X402_VERSION,
};
pub use headers::{PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE};
pub use messages::{
    AgentRequest, Amount, BackendError, Balance, CODE_FORGED, CODE_SPENT, CODE_WRONG_RESOURCE,
    DelegationConfig, FacilitatorRequest, PermissionsRequest, PermissionsResponse, SettleResponse,
    VerifyResponse,
};
pub use token::{AccessToken, Authorization, PaymentPayload, ResourceBinding, SignedPayload, TokenHash};
