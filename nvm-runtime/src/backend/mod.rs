//! The backend: the facilitator client, the plan catalogue and the environments. Talks
//! HTTP with reqwest; knows nothing of actix-web.

mod environment;
mod facilitator;
mod plans;
mod settings;

pub use environment::{ApiKey, Environment};
pub(crate) use facilitator::RequestRef;
pub use facilitator::{Facilitator, SettleOutcome};
pub(crate) use plans::PLAN_REFRESH;
pub(crate) use plans::PlanCatalog;
pub use plans::PlanScheme;
pub use settings::DEFAULT_TIMEOUT;
pub(crate) use settings::{BackendSettings, Connection};
