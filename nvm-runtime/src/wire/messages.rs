//! Bodies of the facilitator calls (the [`wire`](crate::wire) docs, §4): verify, settle and the backend's
//! error envelope.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::envelope::PaymentRequired;
use super::token::ResourceBinding;

/// A credit amount as the wire carries it: a decimal string (`"1"`), also read from a
/// JSON number because some backend fields (`balance`) come either way.
///
/// ```
/// use nvm_runtime::wire::Amount;
/// let a: Amount = serde_json::from_str("\"12\"").unwrap();
/// let b: Amount = serde_json::from_str("12").unwrap();
/// assert_eq!(a, b);
/// assert_eq!(a.as_u64(), Some(12));
/// assert_eq!(serde_json::to_string(&Amount::from(7)).unwrap(), "\"7\"");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Amount(String);

impl Amount {
    /// The decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The amount as a `u64`, when it is a plain non-negative integer that fits.
    pub fn as_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }
}

impl From<u64> for Amount {
    fn from(value: u64) -> Self {
        Amount(value.to_string())
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) => Ok(Amount(s)),
            serde_json::Value::Number(n) => Ok(Amount(n.to_string())),
            other => Err(serde::de::Error::custom(format_args!(
                "expected a decimal string or a number, found {other}"
            ))),
        }
    }
}

/// The body of `POST /api/v1/x402/verify` and `POST /api/v1/x402/settle`.
///
/// `Debug` shows the token only as its hash.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest {
    /// The exact envelope advertised for the resource.
    pub payment_required: PaymentRequired,
    /// The raw `payment-signature` header value.
    pub x402_access_token: String,
    /// Credits to verify or burn; never `"0"` (absent means the plan's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_amount: Option<Amount>,
    /// The verify response's request id (settle only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_request_id: Option<String>,
}

impl std::fmt::Debug for FacilitatorRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FacilitatorRequest")
            .field("payment_required", &self.payment_required)
            .field("x402_access_token", &crate::wire::TokenHash::of(&self.x402_access_token))
            .field("max_amount", &self.max_amount)
            .field("agent_request_id", &self.agent_request_id)
            .finish()
    }
}

/// The answer of `POST /api/v1/x402/verify`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct VerifyResponse {
    /// Whether the token may be used for this request.
    pub is_valid: bool,
    /// Why not, when `is_valid` is false: `invalid_token`, `expired_token`,
    /// `insufficient_balance`, `invalid_plan`, `invalid_agent`, or another string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// The subscriber's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// The network of the payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The request id that links verify to settle (prefer [`VerifyResponse::request_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_request_id: Option<String>,
    /// Whether the URL matched the token's binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) url_matching: Option<serde_json::Value>,
    /// The backend's view of the request (agent, balance, matching): what the
    /// observability headers are built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_request: Option<AgentRequest>,
}

impl VerifyResponse {
    /// The agent request id: `agentRequest.agentRequestId`, else the top-level one.
    pub fn request_id(&self) -> Option<&str> {
        self.agent_request
            .as_ref()
            .and_then(|r| r.agent_request_id.as_deref())
            .or(self.agent_request_id.as_deref())
    }
}

/// The `agentRequest` object of a verify response.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentRequest {
    /// The request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_request_id: Option<String>,
    /// The agent's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_name: Option<String>,
    /// The agent's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_id: Option<String>,
    /// The subscriber's balance on the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) balance: Option<Balance>,
    /// Whether the URL matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) url_matching: Option<serde_json::Value>,
    /// Whether the HTTP verb matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) verb_matching: Option<serde_json::Value>,
    /// Whether this is a batch request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) batch: Option<serde_json::Value>,
}

/// The subscriber's balance on a plan, as verify reports it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Balance {
    /// The plan id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) plan_id: Option<String>,
    /// The plan's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) plan_name: Option<String>,
    /// The plan's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) plan_type: Option<String>,
    /// The subscriber's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) holder_address: Option<String>,
    /// Credits left (a number or a decimal string on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) balance: Option<Amount>,
    /// The credits contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) credits_contract: Option<String>,
    /// Whether the holder is a subscriber of the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) is_subscriber: Option<bool>,
    /// Price of one credit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) price_per_credit: Option<serde_json::Value>,
}

/// The answer of `POST /api/v1/x402/settle`: the receipt.
///
/// Fields this crate does not know (a seller's `pendingSettlementId`, `agentRequestId`,
/// `settlement`, `amount`, `retryAfter`, `confirmedAfterUnknown`…) are kept and written
/// back out, so the `payment-response` receipt passes them through untouched: read them
/// from its JSON form, `serde_json::to_value(&receipt)`.
///
/// ```
/// use nvm_runtime::wire::SettleResponse;
/// let json = r#"{"success":true,"transaction":"0xab","creditsRedeemed":"1","remainingBalance":"9","novel":[1]}"#;
/// let receipt: SettleResponse = serde_json::from_str(json).unwrap();
/// assert!(receipt.success);
/// assert_eq!(receipt.credits_redeemed.as_ref().and_then(|a| a.as_u64()), Some(1));
/// let back = serde_json::to_value(&receipt).unwrap();
/// assert_eq!(back["novel"], serde_json::json!([1]));
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SettleResponse {
    /// Whether credits were burned. A 200 with `success:false` is a failed settlement.
    pub success: bool,
    /// Why not, when `success` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// The subscriber's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// The transaction hash (`""` on failure).
    #[serde(default)]
    pub transaction: String,
    /// The network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Credits burned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_redeemed: Option<Amount>,
    /// Credits left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_balance: Option<Amount>,
    /// The order transaction, when the settle also ordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_tx: Option<String>,
    /// `"credits"` (also when absent) or `"pay-as-you-go"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_model: Option<String>,
    /// Every other field, passed through to the receipt.
    #[serde(flatten)]
    pub(crate) other: serde_json::Map<String, serde_json::Value>,
}

impl SettleResponse {
    /// The value of the `payment-response` header.
    pub fn to_header(&self) -> String {
        crate::wire::codec::encode_json_header(self)
    }

    /// Reads a `payment-response` header value.
    pub fn from_header(value: &str) -> Result<Self, crate::wire::DecodeError> {
        Ok(crate::wire::codec::decode_json_header(value)?)
    }

    /// The seller's record of a settlement not known to be done (`pendingSettlementId`):
    /// the id to quote to the seller when its outcome is unknown, still pending, or
    /// deferred ([`PaymentOutcome`](crate::client::PaymentOutcome)'s `OutcomeUnknown`,
    /// `Pending`, `Deferred`).
    ///
    /// ```
    /// use nvm_runtime::wire::SettleResponse;
    /// let json = r#"{"success":false,"errorReason":"settlement_outcome_unknown","transaction":"","pendingSettlementId":"req-9"}"#;
    /// let receipt: SettleResponse = serde_json::from_str(json).unwrap();
    /// assert_eq!(receipt.pending_id(), Some("req-9"));
    /// assert_eq!(SettleResponse::default().pending_id(), None);
    /// ```
    pub fn pending_id(&self) -> Option<&str> {
        self.other.get("pendingSettlementId").and_then(serde_json::Value::as_str)
    }

    /// Credits redeemed as a number (0 when absent or unreadable).
    pub(crate) fn credits_redeemed_u64(&self) -> u64 {
        self.credits_redeemed.as_ref().and_then(Amount::as_u64).unwrap_or(0)
    }
}

/// The backend's error envelope on a refused call: what
/// [`FacilitatorError::code`](crate::error::FacilitatorError::code) and
/// [`message`](crate::error::FacilitatorError::message) read (lent by `__private::wire` to
/// this repository's fuzzers and tests; not a public API).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BackendError {
    /// A code such as `BCK.X402.0059`.
    #[serde(default)]
    pub code: String,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// The HTTP status the backend meant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// `BCK.X402.0005`: a forged token or an envelope that does not match it.
pub const CODE_FORGED: &str = "BCK.X402.0005";
/// `BCK.X402.0013`: the token is bound to another resource.
pub const CODE_WRONG_RESOURCE: &str = "BCK.X402.0013";
/// `BCK.X402.0059`: a single-use token already spent; mint a new one, never retry.
pub const CODE_SPENT: &str = "BCK.X402.0059";

/// The `errorReason` of a seller's receipt whose settlement outcome is unknown: the
/// settle call was sent and its answer lost. The seller recorded it as a pending
/// settlement (its id in the receipt's `pendingSettlementId`) and answered 402 with no `payment-required` envelope, the
/// content withheld; the buyer must not pay again for this call.
pub(crate) const SETTLEMENT_UNKNOWN: &str = "settlement_outcome_unknown";

/// The `errorReason` of the receipt answering a retry of a call whose settlement is
/// still pending (409 with `Retry-After`, no `payment-required` envelope): the outcome
/// is not known yet, the buyer must not pay again, and retries with the same
/// `Idempotency-Key` after `retryAfter` seconds (the receipt's `pendingSettlementId`
/// names the record). Named after x402's non-terminal `settlement_pending` status.
pub(crate) const SETTLEMENT_PENDING: &str = "settlement_pending";

/// The body of `POST /api/v1/x402/permissions` (minting an access token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionsRequest {
    /// What the token pays for.
    pub accepted: crate::wire::Accepted,
    /// Card delegation settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_config: Option<DelegationConfig>,
    /// 2 (reusable) or 3 (single-use, bound to a resource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_version: Option<u8>,
    /// The resource a single-use token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceBinding>,
}

/// `delegationConfig` of a [`PermissionsRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelegationConfig {
    /// The card delegation id.
    pub delegation_id: String,
}

/// The answer of `POST /api/v1/x402/permissions`.
///
/// `Debug` shows the token only as its hash.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PermissionsResponse {
    /// The x402 access token, ready for the `payment-signature` header.
    pub access_token: String,
}

impl std::fmt::Debug for PermissionsResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PermissionsResponse")
            .field("access_token", &crate::wire::TokenHash::of(&self.access_token))
            .finish()
    }
}
