//! Scheme and network of a plan, auto-detected from its public metadata (the [`wire`](crate::wire) docs, §3)
//! and cached per plan, failures included, so the backend is asked at most once per
//! plan and period.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::backend::Facilitator;
use crate::wire::{NETWORK_STRIPE, SCHEME_CARD_DELEGATION, SCHEME_ERC4337};

/// How long a plan's scheme is trusted.
pub(crate) const PLAN_TTL: Duration = Duration::from_secs(300);
/// How long a failed metadata fetch keeps the default before it is tried again.
pub(crate) const PLAN_FAILURE_TTL: Duration = Duration::from_secs(30);
/// How often a prepared server refreshes its plans in the background: well before
/// [`PLAN_TTL`] runs out, so no request waits on a fetch.
pub(crate) const PLAN_REFRESH: Duration = Duration::from_secs(240);

/// The scheme and network a plan is paid on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// use nvm_runtime::__private::backend::PlanScheme;
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
    entries: Mutex<HashMap<String, (Instant, PlanScheme), foldhash::fast::RandomState>>,
    /// Plans the routes table names, to fetch at start-up.
    wanted: Mutex<BTreeSet<String>>,
    /// Plans fetched at start-up and refreshed in the background: their entry is served
    /// even past its TTL (a failed refresh keeps the last answer) rather than fetched
    /// on a request.
    kept: Mutex<BTreeSet<String>>,
    /// Whether the background refresh runs already.
    refreshing: std::sync::atomic::AtomicBool,
}

impl PlanCatalog {
    pub(crate) fn new(default_network: &str) -> Self {
        PlanCatalog {
            default_network: default_network.into(),
            entries: Mutex::new(HashMap::default()),
            wanted: Mutex::new(BTreeSet::new()),
            kept: Mutex::new(BTreeSet::new()),
            refreshing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn default_network(&self) -> &str {
        &self.default_network
    }

    /// Notes a plan to fetch at start-up (a `PaymentMiddleware` route's).
    pub(crate) fn want(&self, plan_id: &str) {
        self.wanted.lock().unwrap_or_else(PoisonError::into_inner).insert(plan_id.to_owned());
    }

    /// The plans noted with [`PlanCatalog::want`].
    pub(crate) fn wanted(&self) -> BTreeSet<String> {
        self.wanted.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The plans kept fresh in the background.
    pub(crate) fn kept(&self) -> BTreeSet<String> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Fetches a plan's metadata now and keeps the plan: from then on its entry is
    /// served without a fetch, and [`PlanCatalog::refresh`] renews it.
    pub(crate) async fn fetch_and_keep(
        &self,
        facilitator: &Facilitator,
        plan_id: &str,
    ) -> Result<PlanScheme, crate::error::FacilitatorError> {
        let metadata = facilitator.plan_metadata(plan_id).await?;
        let scheme = PlanScheme::from_metadata(&metadata, &self.default_network);
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(plan_id.to_owned(), (Instant::now() + PLAN_TTL, scheme.clone()));
        self.kept.lock().unwrap_or_else(PoisonError::into_inner).insert(plan_id.to_owned());
        Ok(scheme)
    }

    /// `true` the first time only: the caller starts the background refresh.
    pub(crate) fn start_refreshing(&self) -> bool {
        !self.refreshing.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// Renews every kept plan; a failed fetch keeps the last answer and is logged.
    pub(crate) async fn refresh(&self, facilitator: &Facilitator) {
        for plan_id in self.kept() {
            if let Err(error) = self.fetch_and_keep(facilitator, &plan_id).await {
                tracing::warn!(plan_id, error = %crate::error::Report(&error), "plan metadata refresh failed; keeping the last answer");
            }
        }
    }

    /// The plan's scheme, from the cache or the backend.
    pub(crate) async fn resolve(&self, facilitator: &Facilitator, plan_id: &str) -> PlanScheme {
        if let Some(hit) = self.cached(plan_id) {
            return hit;
        }
        let (scheme, ttl) = match facilitator.plan_metadata(plan_id).await {
            Ok(metadata) => (PlanScheme::from_metadata(&metadata, &self.default_network), PLAN_TTL),
            Err(error) => {
                tracing::warn!(plan_id, error = %crate::error::Report(&error), "plan metadata unavailable; advertising nvm:erc4337");
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
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner).contains(plan_id);
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(plan_id).filter(|(expires, _)| kept || *expires > Instant::now()).map(|(_, s)| s.clone())
    }
}
