//! The backend half of a configuration: key, environment, backend URL, timeout and
//! version, as the seller's `PaymentsBuilder` and the buyer's `SubscriberBuilder` both
//! take them, read from the environment the same way, resolved the same way.

use std::time::Duration;

use super::environment::{ApiKey, Environment};
use super::facilitator::{Facilitator, NEVERMINED_VERSION};
use crate::error::{ConfigError, ConfigProblem};

/// The default bound on each facilitator call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a connection to the Nevermined backend, before they are checked.
#[derive(Default, Clone)]
pub(crate) struct BackendSettings {
    pub(crate) api_key: Option<String>,
    pub(crate) environment: Option<Environment>,
    pub(crate) backend_url: Option<String>,
    /// `NVM_BACKEND_URL`: used only by the `custom` environment.
    pub(crate) custom_backend_url: Option<String>,
    /// The observability gateway's base URL, whatever the environment.
    pub(crate) helicone_url: Option<String>,
    /// `HELICONE_URL`: used only by the `custom` environment.
    pub(crate) custom_helicone_url: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) version: Option<String>,
}

/// A checked connection: the key, the environment it selects and the client.
pub(crate) struct Connection {
    pub(crate) api_key: ApiKey,
    pub(crate) environment: Environment,
    pub(crate) facilitator: Facilitator,
    /// The observability gateway's base URL (Helicone).
    pub(crate) helicone_url: String,
}

impl BackendSettings {
    /// `NVM_API_KEY` (required), `NVM_ENVIRONMENT` and `NVM_BACKEND_URL` (used by the
    /// `custom` environment).
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        let mut settings = BackendSettings::default();
        match std::env::var("NVM_API_KEY") {
            Ok(key) if !key.trim().is_empty() => settings.api_key = Some(key),
            _ => return Err(ConfigProblem::MissingApiKey.into()),
        }
        if let Ok(env) = std::env::var("NVM_ENVIRONMENT")
            && !env.trim().is_empty()
        {
            settings.environment = Some(env.parse()?);
        }
        if let Ok(url) = std::env::var("NVM_BACKEND_URL")
            && !url.trim().is_empty()
        {
            settings.custom_backend_url = Some(url);
        }
        if let Ok(url) = std::env::var("HELICONE_URL")
            && !url.trim().is_empty()
        {
            settings.custom_helicone_url = Some(url);
        }
        Ok(settings)
    }

    /// Checks the key and the URL and builds the client. The key's prefix picks the
    /// environment, else the one set, else `custom`.
    pub(crate) fn connect(self) -> Result<Connection, ConfigError> {
        let api_key: ApiKey = self.api_key.as_deref().unwrap_or("").parse()?;
        let environment = api_key.environment().or(self.environment).unwrap_or(Environment::Custom);
        let helicone_url = match (self.helicone_url, environment) {
            (Some(url), _) => url,
            (None, Environment::Custom) => match self.custom_helicone_url {
                Some(url) => url,
                // A local facilitator's key: its stand-in gateway is at the backend's URL.
                None if api_key.prefix() == Some(LOCAL_KEY_PREFIX) => self
                    .backend_url
                    .clone()
                    .or_else(|| self.custom_backend_url.clone())
                    .unwrap_or_else(|| Environment::Custom.helicone_url().to_owned()),
                None => Environment::Custom.helicone_url().to_owned(),
            },
            (None, env) => env.helicone_url().to_owned(),
        };
        let backend_url = match (self.backend_url, environment) {
            (Some(url), _) => url,
            (None, Environment::Custom) => {
                self.custom_backend_url.unwrap_or_else(|| Environment::Custom.backend_url().to_owned())
            }
            (None, env) => env.backend_url().to_owned(),
        };
        let facilitator = Facilitator::with_version(
            &backend_url,
            &api_key,
            self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            self.version.as_deref().unwrap_or(NEVERMINED_VERSION),
        )?;
        // After the backend's own check: a local key's gateway is the backend's URL.
        check_helicone_url(&helicone_url)?;
        Ok(Connection { api_key, environment, facilitator, helicone_url })
    }
}

/// The prefix of the keys a local facilitator issues.
const LOCAL_KEY_PREFIX: &str = "local";

fn check_helicone_url(url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(()),
        _ => Err(ConfigProblem::InvalidHeliconeUrl(url.to_owned()).into()),
    }
}

impl std::fmt::Debug for BackendSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSettings")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("environment", &self.environment)
            .field("backend_url", &self.backend_url)
            .field("helicone_url", &self.helicone_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
