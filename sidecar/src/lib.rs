//! Sluice's data plane. See `docs/architecture.md` for the map.

pub mod admin;
pub mod config;
pub mod egress;
pub mod ingress;
pub mod metrics;
pub mod runtime;
pub mod secrets;
pub mod source;

pub use runtime::{Sidecar, StartError};
