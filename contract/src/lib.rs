//! What Sluice's operator and its sidecar agree on, and nothing else.
//!
//! - [`config`]: the sidecar config model the operator compiles into, with
//!   checked types (URLs, path patterns, methods, durations) so a value is
//!   parsed once, where it is read.
//! - [`bounds`]: every numeric and duration bound, the one table the CRD's
//!   schema and CEL rules, `compile` and the sidecar's own check come from.
//! - [`layout`]: the pod the injector builds and the sidecar expects (ports,
//!   directories, the ConfigMap key, the token audience).
//! - [`stream`]: the config stream's path, long poll and answer.
//! - [`dead_letter`]: the webhook queue's directories and dead-letter files,
//!   which `sluice webhooks` reads.
//! - [`exposition`]: the `/metrics` format both serve, as the scraper asks.

pub mod bounds;
pub mod config;
pub mod dead_letter;
pub mod duration;
pub mod exposition;
pub mod layout;
pub mod stream;
mod text;
pub mod timestamp;
