//! Environments and NVM API keys (the [`wire`](crate::wire) docs, §1).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{ConfigError, ConfigProblem};

/// Where the Nevermined backend lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Environment {
    /// `https://api.sandbox.nevermined.app`, Base Sepolia.
    Sandbox,
    /// `https://api.live.nevermined.app`, Base.
    Live,
    /// `https://api.sandbox.nevermined.dev`, Base Sepolia.
    StagingSandbox,
    /// `https://api.live.nevermined.dev`, Base.
    StagingLive,
    /// `NVM_BACKEND_URL` (default `http://localhost:3001`), Base Sepolia.
    Custom,
}

impl Environment {
    /// The backend base URL (for [`Environment::Custom`], the default one).
    pub(crate) fn backend_url(self) -> &'static str {
        match self {
            Environment::Sandbox => "https://api.sandbox.nevermined.app",
            Environment::Live => "https://api.live.nevermined.app",
            Environment::StagingSandbox => "https://api.sandbox.nevermined.dev",
            Environment::StagingLive => "https://api.live.nevermined.dev",
            Environment::Custom => "http://localhost:3001",
        }
    }

    /// The base URL of the environment's LLM observability gateway (Helicone), as the
    /// official SDKs name it: `https://helicone.nevermined.dev` for the hosted
    /// environments, `http://localhost:8585` for [`Environment::Custom`] (where
    /// `HELICONE_URL` overrides it).
    pub(crate) fn helicone_url(self) -> &'static str {
        match self {
            Environment::Custom => "http://localhost:8585",
            _ => "https://helicone.nevermined.dev",
        }
    }

    /// The default network of the `nvm:erc4337` scheme.
    pub(crate) fn default_network(self) -> &'static str {
        match self {
            Environment::Live | Environment::StagingLive => "eip155:8453",
            _ => "eip155:84532",
        }
    }

    /// The environment an API key prefix selects (`sandbox`, `live`, `sandbox-staging`,
    /// `live-staging`, any case).
    pub(crate) fn from_key_prefix(prefix: &str) -> Option<Self> {
        match prefix.to_ascii_lowercase().as_str() {
            "sandbox" => Some(Environment::Sandbox),
            "live" => Some(Environment::Live),
            "sandbox-staging" => Some(Environment::StagingSandbox),
            "live-staging" => Some(Environment::StagingLive),
            _ => None,
        }
    }

    /// The name used by `NVM_ENVIRONMENT` and the official SDKs (what `Display` writes).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Environment::Sandbox => "sandbox",
            Environment::Live => "live",
            Environment::StagingSandbox => "staging_sandbox",
            Environment::StagingLive => "staging_live",
            Environment::Custom => "custom",
        }
    }
}

/// The name used by `NVM_ENVIRONMENT` and the official SDKs, which `FromStr` reads back.
///
/// ```
/// use nvm_runtime::Environment;
///
/// assert_eq!(Environment::StagingSandbox.to_string(), "staging_sandbox");
/// assert_eq!("staging_sandbox".parse::<Environment>().unwrap(), Environment::StagingSandbox);
/// ```
impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Environment {
    type Err = ConfigError;

    /// Parses `sandbox`, `live`, `staging_sandbox`, `staging_live` or `custom`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "sandbox" => Ok(Environment::Sandbox),
            "live" => Ok(Environment::Live),
            "staging_sandbox" | "sandbox_staging" => Ok(Environment::StagingSandbox),
            "staging_live" | "live_staging" => Ok(Environment::StagingLive),
            "custom" | "local" => Ok(Environment::Custom),
            _ => Err(ConfigProblem::UnknownEnvironment(s.to_owned()).into()),
        }
    }
}

/// An NVM API key, `<prefix>:<JWT>`: the prefix picks the environment, the JWT (read
/// without verifying its signature) names the account.
///
/// `Debug` shows only the account, never the key.
///
/// ```
/// use nvm_runtime::__private::backend::ApiKey;
/// // header {"alg":"none"}, payload {"sub":"0xabc","o11y":"k"}
/// let key: ApiKey = "sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.".parse().unwrap();
/// assert_eq!(key.account(), "0xabc");
/// assert_eq!(key.prefix(), Some("sandbox"));
/// assert!(!format!("{key:?}").contains("eyJ"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    raw: String,
    account: String,
    /// The `o11y` claim: the key of the observability gateway (a secret).
    o11y: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    o11y: Option<serde_json::Value>,
}

impl ApiKey {
    /// The full key, prefix included, as the `Authorization` header sends it.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The prefix before the first `:`, when there is one.
    pub fn prefix(&self) -> Option<&str> {
        self.raw.split_once(':').map(|(prefix, _)| prefix)
    }

    /// The account address (`sub` claim).
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Whether the JWT carries an `o11y` claim (the Python SDK refuses keys without one).
    pub fn has_o11y(&self) -> bool {
        self.o11y.is_some()
    }

    /// The `o11y` claim: the key the observability gateway authenticates
    /// (`Helicone-Auth: Bearer <it>`). A secret, like the key: never log it.
    ///
    /// ```
    /// use nvm_runtime::__private::backend::ApiKey;
    /// // payload {"sub":"0xabc","o11y":"k"}
    /// let key: ApiKey = "sandbox:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweGFiYyIsIm8xMXkiOiJrIn0.".parse().unwrap();
    /// assert_eq!(key.observability_key(), Some("k"));
    /// ```
    pub fn observability_key(&self) -> Option<&str> {
        self.o11y.as_deref()
    }

    /// The environment the prefix selects, if it names one.
    pub fn environment(&self) -> Option<Environment> {
        self.prefix().and_then(Environment::from_key_prefix)
    }
}

impl FromStr for ApiKey {
    type Err = ConfigError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(ConfigProblem::MissingApiKey.into());
        }
        let jwt = raw.split_once(':').map_or(raw, |(_, jwt)| jwt);
        let payload = jwt.split('.').nth(1).ok_or_else(|| {
            ConfigProblem::MalformedApiKey(
                "it has no JWT after the prefix (expected `<prefix>:<header>.<payload>.<signature>`)".into(),
            )
        })?;
        let bytes = crate::wire::codec::decode_base64(payload)
            .map_err(|e| ConfigProblem::MalformedApiKey(format!("its JWT payload is unreadable: {e}")))?;
        let claims: Claims = serde_json::from_slice(&bytes).map_err(|e| {
            ConfigProblem::MalformedApiKey(format!("its JWT payload is not JSON claims: {e}"))
        })?;
        let account = claims.sub.filter(|s| !s.is_empty()).ok_or_else(|| {
            ConfigProblem::MalformedApiKey("its JWT has no `sub` claim (the account address)".into())
        })?;
        // A string claim as it is (what the SDKs send); another JSON value, compact.
        let o11y = claims.o11y.filter(|v| !v.is_null()).map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        });
        Ok(ApiKey { raw: raw.to_owned(), account, o11y })
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("prefix", &self.prefix())
            .field("account", &self.account)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_keys_with_a_reason() {
        assert!(matches!("".parse::<ApiKey>(), Err(ConfigError(ConfigProblem::MissingApiKey))));
        assert!(matches!(
            "sandbox:nope".parse::<ApiKey>(),
            Err(ConfigError(ConfigProblem::MalformedApiKey(_)))
        ));
        assert!(matches!(
            "sandbox:a.!!!.c".parse::<ApiKey>(),
            Err(ConfigError(ConfigProblem::MalformedApiKey(_)))
        ));
        // payload {"o11y":"k"}: no sub
        assert!(matches!(
            "live:a.eyJvMTF5IjoiayJ9.c".parse::<ApiKey>(),
            Err(ConfigError(ConfigProblem::MalformedApiKey(_)))
        ));
    }

    #[test]
    fn environment_names_round_trip() {
        for env in [
            Environment::Sandbox,
            Environment::Live,
            Environment::StagingSandbox,
            Environment::StagingLive,
            Environment::Custom,
        ] {
            assert_eq!(env.as_str().parse::<Environment>().unwrap(), env);
        }
        assert!("mars".parse::<Environment>().is_err());
    }
}
