//! A ready `async-openai` configuration (feature `openai`).

use async_openai::config::OpenAIConfig;

use super::{Observability, ObservabilityError};

impl Observability {
    /// An `async-openai` configuration that sends every call through the gateway, logged
    /// against this paid request: the gateway's base URL, `openai_api_key` as the
    /// provider's key, and the `Helicone-*` headers. payments-py's `with_openai`.
    ///
    /// ```
    /// use actix_web::{post, HttpResponse};
    /// use nvm_runtime::observability::async_openai::Client;
    /// use nvm_runtime::{paid, PaymentContext};
    ///
    /// #[paid(plan = "1234", credits = 10)]
    /// #[post("/ask")]
    /// async fn ask(payment: PaymentContext) -> HttpResponse {
    ///     let key = std::env::var("OPENAI_API_KEY").unwrap_or_default();
    ///     let Ok(config) = payment.observability().and_then(|gateway| gateway.openai_config(&key)) else {
    ///         return HttpResponse::InternalServerError().finish();
    ///     };
    ///     let openai = Client::with_config(config);
    ///     // openai.chat().create(request).await …
    ///     # let _ = openai;
    ///     HttpResponse::Ok().finish()
    /// }
    /// ```
    pub fn openai_config(&self, openai_api_key: &str) -> Result<OpenAIConfig, ObservabilityError> {
        let mut config = OpenAIConfig::new().with_api_base(self.base_url()).with_api_key(openai_api_key);
        for (name, value) in &self.headers {
            let invalid = || ObservabilityError::InvalidProperty(name.as_str().to_owned());
            let value = value.to_str().map_err(|_| invalid())?;
            config = config.with_header(name.clone(), value).map_err(|_| invalid())?;
        }
        Ok(config)
    }
}
