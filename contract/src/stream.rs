//! The config stream: a sidecar long-polls the operator for its pod's
//! integrations, showing its projected token (audience
//! [`crate::layout::TOKEN_AUDIENCE`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::IntegrationConfig;

/// The path of the config stream on the operator.
pub const CONFIG_PATH: &str = "/v1/sidecar/config";
/// How long the operator holds a poll open when nothing changes.
pub const LONG_POLL: Duration = Duration::from_secs(30);

/// What the stream answers (200): every integration of the pod. A sidecar
/// sends `version` back as `?version=` to wait for the next change; the
/// operator answers 304 when the poll ends without one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigSnapshot {
    /// Opaque to the sidecar.
    pub version: String,
    pub integrations: Vec<IntegrationConfig>,
}
