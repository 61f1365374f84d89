//! Sluice's data plane. See `docs/architecture.md` for the map.

pub mod admin;
pub mod egress;
pub mod ingress;
pub mod metrics;
pub mod runtime;
pub mod secrets;
pub mod shared;
pub mod source;
pub mod state_file;

/// The config model is the operator's and the sidecar's contract; it lives
/// in `sluice-contract` and is re-exported where the data plane reads it.
pub use sluice_contract::{config, dead_letter, layout};

pub use runtime::{Sidecar, StartError, StartOptions};
