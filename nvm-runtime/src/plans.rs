//! Scheme and network of a plan, auto-detected from its public metadata (WIRE.md §3)
//! and cached per plan, failures included, so the backend is asked at most once per
//! plan and period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::envelope::{NETWORK_STRIPE, SCHEME_CARD_DELEGATION, SCHEME_ERC4337};
use crate::facilitator::Facilitator;

/// How long a plan's scheme is trusted.
pub const PLAN_TTL: Duration = Duration::from_secs(300);
/// How long a failed metadata fetch keeps the default before it is tried again.
pub const PLAN_FAILURE_TTL: Duration = Duration::from_secs(30);

/// The scheme and network a plan is paid on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanScheme {
    /// `nvm:erc4337` or `nvm:card-delegation`.
    pub scheme: Arc<str>,
    /// The network.
    pub network: Arc<str>,
}

impl PlanScheme {
    /// Reads a plan's metadata: only `registry.price.isCrypto == false` selects card
    /// delegation (network: `metadata.plan.fiatPaymentProvider`, default `stripe`);
    /// anything else is `nvm:erc4337` on `default_network`.
    ///
    /// ```
    /// use nvm_runtime::plans::PlanScheme;
    /// let fiat = serde_json::json!({"registry":{"price":{"isCrypto":false}},"metadata":{"plan":{"fiatPaymentProvider":"braintree"}}});
    /// assert_eq!(&*PlanScheme::from_metadata(&fiat, "eip155:84532").network, "braintree");
    /// let crypto = serde_json::json!({"registry":{"price":{"isCrypto":true}}});
    /// assert_eq!(&*PlanScheme::from_metadata(&crypto, "eip155:84532").scheme, "nvm:erc4337");
    /// ```
    pub fn from_metadata(metadata: &serde_json::Value, default_network: &str) -> Self {
        let is_fiat = metadata.pointer("/registry/price/isCrypto") == Some(&serde_json::Value::Bool(false));
        if is_fiat {
            let network = metadata
                .pointer("/metadata/plan/fiatPaymentProvider")
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or(NETWORK_STRIPE);
            PlanScheme { scheme: SCHEME_CARD_DELEGATION.into(), network: network.into() }
        } else {
            Self::default_for(default_network)
        }
    }

    fn default_for(network: &str) -> Self {
        PlanScheme { scheme: SCHEME_ERC4337.into(), network: network.into() }
    }
}

/// The per-plan cache of [`PlanScheme`]s.
pub(crate) struct PlanCatalog {
    default_network: Arc<str>,
    entries: Mutex<HashMap<String, (Instant, PlanScheme)>>,
}

impl PlanCatalog {
    pub(crate) fn new(default_network: &str) -> Self {
        PlanCatalog { default_network: default_network.into(), entries: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn default_network(&self) -> &str {
        &self.default_network
    }

    /// The plan's scheme, from the cache or the backend.
    pub(crate) async fn resolve(&self, facilitator: &Facilitator, plan_id: &str) -> PlanScheme {
        if let Some(hit) = self.cached(plan_id) {
            return hit;
        }
        let (scheme, ttl) = match facilitator.plan_metadata(plan_id).await {
            Ok(metadata) => (PlanScheme::from_metadata(&metadata, &self.default_network), PLAN_TTL),
            Err(error) => {
                tracing::warn!(plan_id, %error, "plan metadata unavailable; advertising nvm:erc4337");
                (PlanScheme::default_for(&self.default_network), PLAN_FAILURE_TTL)
            }
        };
        let expires = Instant::now() + ttl;
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(plan_id.to_owned(), (expires, scheme.clone()));
        scheme
    }

    fn cached(&self, plan_id: &str) -> Option<PlanScheme> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(plan_id).filter(|(expires, _)| *expires > Instant::now()).map(|(_, s)| s.clone())
    }
}
