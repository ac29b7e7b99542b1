//! The behaviour tests that set no process-wide state, in one test binary (each binary
//! links the whole stack: one link instead of ten). A test keeps a binary of its own when
//! it installs a global (a `tracing` subscriber, a metrics recorder), measures the
//! process (its memory), reads the whole `#[paid]` route table (`Payments::prepare`, the
//! start-up check, the manifest, whose entries remember the requests each handler
//! served) or starts a process of its own.
//!
//! Run one group: `cargo test -p nvm-tests --test behaviour streaming::`.

#[path = "behaviour/body_pricing.rs"]
mod body_pricing;
#[path = "behaviour/caching.rs"]
mod caching;
#[path = "behaviour/client.rs"]
mod client;
#[path = "behaviour/decoders.rs"]
mod decoders;
#[path = "behaviour/deferred.rs"]
mod deferred;
#[path = "behaviour/hangup.rs"]
mod hangup;
#[path = "behaviour/idempotency.rs"]
mod idempotency;
#[path = "behaviour/middleware_paths.rs"]
mod middleware_paths;
#[path = "behaviour/middleware_routes.rs"]
mod middleware_routes;
#[path = "behaviour/reliability.rs"]
mod reliability;
#[path = "behaviour/speculative.rs"]
mod speculative;
#[path = "behaviour/streaming.rs"]
mod streaming;
