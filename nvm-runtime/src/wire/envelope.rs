//! The `PaymentRequired` envelope a 402 advertises (the [`wire`](crate::wire) docs, §3).

use serde::{Deserialize, Serialize};

use crate::wire::codec::{self, DecodeError};

/// The x402 protocol version this crate speaks; always 2.
pub(crate) const X402_VERSION: u32 = 2;

/// The crypto scheme: ERC-4337 smart accounts.
pub(crate) const SCHEME_ERC4337: &str = "nvm:erc4337";
/// The fiat scheme: card delegation.
pub(crate) const SCHEME_CARD_DELEGATION: &str = "nvm:card-delegation";
/// The default network of [`SCHEME_CARD_DELEGATION`].
pub(crate) const NETWORK_STRIPE: &str = "stripe";

/// What a 402 advertises: which plans are accepted for which resource.
///
/// Serialized in the TypeScript SDK's form: unset optional fields are omitted.
///
/// ```
/// use nvm_runtime::wire::PaymentRequired;
///
/// let json = r#"{"x402Version":2,"resource":{"url":"/ask"},"accepts":[{"scheme":"nvm:erc4337","network":"eip155:84532","planId":"123","extra":{"version":"1","agentId":"456","httpVerb":"POST"}}],"extensions":{}}"#;
/// let envelope: PaymentRequired = serde_json::from_str(json).unwrap();
/// assert_eq!(envelope.accepts.first().map(|accepted| accepted.plan_id.as_str()), Some("123"));
/// assert_eq!(serde_json::to_string(&envelope).unwrap(), json);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PaymentRequired {
    /// Always 2.
    pub(crate) x402_version: u32,
    /// Why the payment is required, when there is a reason to give.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The protected resource.
    pub resource: Resource,
    /// One entry per accepted plan.
    pub accepts: Vec<Accepted>,
    /// Always `{}`.
    #[serde(default)]
    pub(crate) extensions: serde_json::Map<String, serde_json::Value>,
}

/// The protected resource of a [`PaymentRequired`] envelope.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Resource {
    /// The request path, without the query string.
    pub url: String,
    /// A human description of the resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The MIME type of the resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// One accepted way to pay: a plan on a scheme and network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Accepted {
    /// `nvm:erc4337` or `nvm:card-delegation`.
    pub scheme: String,
    /// `eip155:84532`, `eip155:8453`, `stripe`, `braintree` or `visa`.
    pub network: String,
    /// The plan id: a 256-bit decimal number, kept as a string.
    pub plan_id: String,
    /// Version, agent and verb (read leniently: missing or `null` is the default).
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) extra: Extra,
}

/// The `extra` object of an [`Accepted`] entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Extra {
    /// Always `"1"` (read as `"1"` when missing or `null`, as some SDKs mint it).
    #[serde(default = "version_one", deserialize_with = "null_as_version_one")]
    pub(crate) version: String,
    /// The agent the plan is used with, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_id: Option<String>,
    /// The HTTP method of the request, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) http_verb: Option<String>,
}

fn version_one() -> String {
    "1".to_owned()
}

fn null_as_version_one<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_else(version_one))
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl Default for Extra {
    fn default() -> Self {
        Extra { version: "1".to_owned(), agent_id: None, http_verb: None }
    }
}

impl PaymentRequired {
    /// The value of the `payment-required` header: standard padded base64 of compact JSON.
    pub fn to_header(&self) -> String {
        codec::encode_json_header(self)
    }

    /// Reads a `payment-required` header value (either base64 alphabet, padded or not).
    ///
    /// ```
    /// use nvm_runtime::wire::PaymentRequired;
    /// let json = r#"{"x402Version":2,"resource":{"url":"/x"},"accepts":[{"scheme":"nvm:erc4337","network":"eip155:84532","planId":"1","extra":{"version":"1"}}]}"#;
    /// let envelope: PaymentRequired = serde_json::from_str(json).unwrap();
    /// assert_eq!(PaymentRequired::from_header(&envelope.to_header()).unwrap(), envelope);
    /// ```
    pub fn from_header(value: &str) -> Result<Self, DecodeError> {
        Ok(codec::decode_json_header(value)?)
    }

    /// The first accepted plan, the one clients pay with.
    pub(crate) fn first(&self) -> Option<&Accepted> {
        self.accepts.first()
    }
}

/// Builds a [`PaymentRequired`] envelope for one plan: what the flow advertises, and
/// what this repository's tests, fuzzers and benchmarks build by hand (lent by
/// `__private::wire`; not a public API).
///
/// ```
/// use nvm_runtime::__private::wire::EnvelopeBuilder;
///
/// let envelope = EnvelopeBuilder::new("123", "eip155:84532").url("/ask").agent_id("456").http_verb("POST").build();
/// let json = serde_json::to_string(&envelope).unwrap();
/// assert_eq!(
///     json,
///     r#"{"x402Version":2,"resource":{"url":"/ask"},"accepts":[{"scheme":"nvm:erc4337","network":"eip155:84532","planId":"123","extra":{"version":"1","agentId":"456","httpVerb":"POST"}}],"extensions":{}}"#
/// );
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct EnvelopeBuilder {
    envelope: PaymentRequired,
}

impl EnvelopeBuilder {
    /// Starts an envelope for one plan on the `nvm:erc4337` scheme and the given network.
    pub fn new(plan_id: impl Into<String>, network: impl Into<String>) -> Self {
        EnvelopeBuilder {
            envelope: PaymentRequired {
                x402_version: X402_VERSION,
                error: None,
                resource: Resource::default(),
                accepts: vec![Accepted {
                    scheme: SCHEME_ERC4337.to_owned(),
                    network: network.into(),
                    plan_id: plan_id.into(),
                    extra: Extra::default(),
                }],
                extensions: serde_json::Map::new(),
            },
        }
    }

    fn accepted(&mut self) -> &mut Accepted {
        // The builder always holds exactly one entry.
        &mut self.envelope.accepts[0]
    }

    /// Sets the scheme (default `nvm:erc4337`).
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.accepted().scheme = scheme.into();
        self
    }

    /// Sets `resource.url`: the request path, without the query string.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.envelope.resource.url = url.into();
        self
    }

    /// Sets `resource.description`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.envelope.resource.description = Some(description.into());
        self
    }

    /// Sets `resource.mimeType`.
    pub fn mime_type(mut self, mime_type: impl Into<String>) -> Self {
        self.envelope.resource.mime_type = Some(mime_type.into());
        self
    }

    /// Sets `extra.agentId`.
    pub fn agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.accepted().extra.agent_id = Some(agent_id.into());
        self
    }

    /// Sets `extra.httpVerb`.
    pub fn http_verb(mut self, verb: impl Into<String>) -> Self {
        self.accepted().extra.http_verb = Some(verb.into());
        self
    }

    /// Finishes the envelope.
    pub fn build(self) -> PaymentRequired {
        self.envelope
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omits_unset_optionals_and_keeps_extensions() {
        let envelope = EnvelopeBuilder::new("9", "stripe")
            .scheme(SCHEME_CARD_DELEGATION)
            .url("/a")
            .description("d")
            .mime_type("application/json")
            .build();
        let value = serde_json::to_value(&envelope).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"x402Version":2,"resource":{"url":"/a","description":"d","mimeType":"application/json"},
                "accepts":[{"scheme":"nvm:card-delegation","network":"stripe","planId":"9","extra":{"version":"1"}}],
                "extensions":{}})
        );
    }

    #[test]
    fn reads_the_python_sdk_form_of_accepted() {
        let accepted: Accepted = serde_json::from_str(
            r#"{"scheme":"nvm:erc4337","network":"eip155:84532","planId":"1","extra":{}}"#,
        )
        .unwrap();
        assert_eq!(accepted.extra.version, "1");
        let accepted: Accepted = serde_json::from_str(
            r#"{"scheme":"nvm:erc4337","network":"eip155:84532","planId":"1","extra":null}"#,
        )
        .unwrap();
        assert_eq!(accepted.extra, Extra::default());
        let accepted: Accepted =
            serde_json::from_str(r#"{"scheme":"nvm:erc4337","network":"eip155:84532","planId":"1"}"#)
                .unwrap();
        assert_eq!(accepted.extra, Extra::default());
    }

    #[test]
    fn keeps_256_bit_plan_ids_as_strings() {
        let id = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        let json = format!(
            r#"{{"x402Version":2,"resource":{{"url":"/"}},"accepts":[{{"scheme":"nvm:erc4337","network":"eip155:8453","planId":"{id}","extra":{{"version":"1"}}}}],"extensions":{{}}}}"#
        );
        let envelope: PaymentRequired = serde_json::from_str(&json).unwrap();
        assert_eq!(envelope.accepts[0].plan_id, id);
    }
}
