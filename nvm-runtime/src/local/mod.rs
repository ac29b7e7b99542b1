//! The local facilitator.
