//! A ready `async-openai` configuration (feature `openai`).

use async_openai::config::OpenAIConfig;

use super::{Observability, ObservabilityError};

impl Observability {
    /// An `async-openai` configuration that sends every call through the gateway, logged
    /// against this paid request: the gateway's base URL, `openai_api_key` as the
    /// provider's key, and the `Helicone-*` headers. payments-py's `with_openai`.
    ///
    /// ```
    /// use nvm_runtime::observability::{async_openai::Client, Observability, ObservabilityError};
    ///
    /// fn client(gateway: &Observability) -> Result<Client<nvm_runtime::observability::async_openai::config::OpenAIConfig>, ObservabilityError> {
    ///     Ok(Client::with_config(gateway.openai_config("sk-…")?))
    /// }
    /// ```
    ///
    /// The [`async_openai`] re-export shows it in a
    /// handler.
    pub fn openai_config(&self, openai_api_key: &str) -> Result<OpenAIConfig, ObservabilityError> {
        let mut config = OpenAIConfig::new().with_api_base(self.base_url()).with_api_key(openai_api_key);
        for (name, value) in &self.headers {
            let invalid =
                || crate::observability::ObservabilityProblem::InvalidProperty(name.as_str().to_owned());
            let value = value.to_str().map_err(|_| invalid())?;
            config = config.with_header(name.clone(), value).map_err(|_| invalid())?;
        }
        Ok(config)
    }
}
