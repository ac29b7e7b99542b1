//! The backend's x402 endpoints (the [`wire`](crate::wire) docs, §3–§5): one enum, used by
//! the facilitator client, the local facilitator and its fault injection.

/// An endpoint of the Nevermined backend that this crate calls.
///
/// ```
/// use nvm_runtime::wire::Endpoint;
///
/// assert_eq!(Endpoint::Settle.path(), "/api/v1/x402/settle");
/// assert_eq!(Endpoint::Plans.path(), "/api/v1/protocol/plans/{plan_id}");
/// assert_eq!(Endpoint::ALL.len(), 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// Every endpoint.
    pub const ALL: [Endpoint; 4] =
        [Endpoint::Verify, Endpoint::Settle, Endpoint::Permissions, Endpoint::Plans];

    /// The path, as a route pattern (`{plan_id}` stands for the plan's id).
    pub const fn path(self) -> &'static str {
        match self {
            Endpoint::Verify => "/api/v1/x402/verify",
            Endpoint::Settle => "/api/v1/x402/settle",
            Endpoint::Permissions => "/api/v1/x402/permissions",
            Endpoint::Plans => "/api/v1/protocol/plans/{plan_id}",
        }
    }

    /// Its place in [`Endpoint::ALL`], for tables indexed by endpoint.
    pub const fn index(self) -> usize {
        match self {
            Endpoint::Verify => 0,
            Endpoint::Settle => 1,
            Endpoint::Permissions => 2,
            Endpoint::Plans => 3,
        }
    }
}
