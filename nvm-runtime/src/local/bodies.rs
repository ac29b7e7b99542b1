//! Request bodies as the local facilitator reads them: the shapes of the [`wire`](crate::wire) docs, §4–§5, read
//! leniently, the way the hosted backend does. The official Python SDK sends `null` for
//! unset optional fields and may omit `extra.version`; the TypeScript SDK omits them.
//! Both must be accepted.

use serde::{Deserialize, Deserializer};

/// A string that may come as a JSON string or number (ids, amounts); `null` is absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Text(pub(crate) Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Null => Ok(Text(None)),
            serde_json::Value::String(s) => Ok(Text(Some(s))),
            serde_json::Value::Number(n) => Ok(Text(Some(n.to_string()))),
            other => {
                Err(serde::de::Error::custom(format_args!("expected a string or a number, found {other}")))
            }
        }
    }
}

impl Text {
    pub(crate) fn get(&self) -> Option<&str> {
        self.0.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
}

/// The body of `verify` and `settle`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FacilitatorBody {
    pub(crate) payment_required: Envelope,
    pub(crate) x402_access_token: String,
    #[serde(default)]
    pub(crate) max_amount: Text,
    #[serde(default)]
    pub(crate) agent_request_id: Text,
}

/// The advertised `PaymentRequired` envelope.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Envelope {
    #[serde(default)]
    pub(crate) resource: Option<ResourceBody>,
    #[serde(default)]
    pub(crate) accepts: Option<Vec<Accepted>>,
}

impl Envelope {
    pub(crate) fn first(&self) -> Option<&Accepted> {
        self.accepts.as_ref().and_then(|a| a.first())
    }

    pub(crate) fn url(&self) -> Option<&str> {
        self.resource.as_ref().and_then(|r| r.url.get())
    }
}

/// `resource` of an envelope or of a mint request.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ResourceBody {
    #[serde(default)]
    pub(crate) url: Text,
}

/// One `accepts[]` entry, or the `accepted` object of a mint request.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Accepted {
    #[serde(default)]
    pub(crate) scheme: Text,
    #[serde(default)]
    pub(crate) network: Text,
    #[serde(default)]
    pub(crate) plan_id: Text,
    #[serde(default)]
    pub(crate) extra: Option<Extra>,
}

impl Accepted {
    pub(crate) fn agent_id(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.agent_id.get())
    }

    pub(crate) fn http_verb(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.http_verb.get())
    }
}

/// `extra` of an [`Accepted`].
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Extra {
    #[serde(default)]
    pub(crate) agent_id: Text,
    #[serde(default)]
    pub(crate) http_verb: Text,
}

/// The body of `POST /api/v1/x402/permissions`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PermissionsBody {
    pub(crate) accepted: Accepted,
    #[serde(default)]
    pub(crate) token_version: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) resource: Option<ResourceBody>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_python_sdk_form() {
        let body = r#"{"paymentRequired":{"x402Version":2,"error":null,
            "resource":{"url":"/ask","description":null,"mimeType":null},
            "accepts":[{"scheme":"nvm:erc4337","network":"eip155:84532","planId":"12",
                        "extra":{"version":null,"agentId":"7","httpVerb":null}}],
            "extensions":{}},"x402AccessToken":"abc","maxAmount":null}"#;
        let body: FacilitatorBody = serde_json::from_str(body).expect("parses");
        let first = body.payment_required.first().expect("one entry");
        assert_eq!(first.plan_id.get(), Some("12"));
        assert_eq!(first.agent_id(), Some("7"));
        assert_eq!(first.http_verb(), None);
        assert_eq!(body.max_amount.get(), None);
        assert_eq!(body.payment_required.url(), Some("/ask"));
    }

    #[test]
    fn reads_numbers_as_text() {
        let body =
            r#"{"accepted":{"scheme":"nvm:erc4337","network":"x","planId":12,"extra":{}},"tokenVersion":3}"#;
        let body: PermissionsBody = serde_json::from_str(body).expect("parses");
        assert_eq!(body.accepted.plan_id.get(), Some("12"));
    }
}
