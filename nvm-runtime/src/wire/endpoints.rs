//! The backend's x402 endpoints (the [`wire`](crate::wire) docs, §3–§5): one enum, used by
//! the facilitator client, the local facilitator and its fault injection.

/// An endpoint of the Nevermined backend that this crate calls.
///
/// The local facilitator's fault injection names them (feature `local`):
///
/// ```
/// # #[cfg(feature = "local")] {
/// use nvm_runtime::local::{Endpoint, Fault, LocalFacilitator};
///
/// let local = LocalFacilitator::start()?;
/// local.inject(Endpoint::Settle, Fault::Status(503));
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[cfg_attr(not(feature = "local"), allow(unreachable_pub))]
pub enum Endpoint {
    /// `POST /api/v1/x402/verify`.
    Verify,
    /// `POST /api/v1/x402/settle`.
    Settle,
    /// `POST /api/v1/x402/permissions`: mint an access token.
    Permissions,
    /// `GET /api/v1/protocol/plans/{plan_id}`: a plan's public metadata.
    Plans,
}

impl Endpoint {
    /// The path, as a route pattern (`{plan_id}` stands for the plan's id).
    pub(crate) const fn path(self) -> &'static str {
        match self {
            Endpoint::Verify => "/api/v1/x402/verify",
            Endpoint::Settle => "/api/v1/x402/settle",
            Endpoint::Permissions => "/api/v1/x402/permissions",
            Endpoint::Plans => "/api/v1/protocol/plans/{plan_id}",
        }
    }

    /// Its place in tables indexed by endpoint (0 to 3).
    #[cfg(feature = "local")]
    pub(crate) const fn index(self) -> usize {
        match self {
            Endpoint::Verify => 0,
            Endpoint::Settle => 1,
            Endpoint::Permissions => 2,
            Endpoint::Plans => 3,
        }
    }
}
