//! Sluice's data plane. See `docs/architecture.md` for the map.

pub mod config;
