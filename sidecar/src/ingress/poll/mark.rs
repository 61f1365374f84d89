//! Where a polled webhook's place in the listing is kept: a file in the
//! state directory (this pod) or the shared state (every sidecar, with a
//! lease so one polls at a time). A restart carries on from it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::shared::SharedState;
use crate::shared::polls::{PollMark, SharedPoll};

pub enum MarkStore {
    Local(PathBuf),
    Shared {
        state: SharedState,
        poll: SharedPoll,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error("poll state file {path}: {reason} (remove it to start polling afresh)")]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Shared(#[from] crate::shared::SharedStateError),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MarkFile {
    since_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    watermark: Option<String>,
}

impl MarkStore {
    /// Whether this sidecar polls now, for up to `ttl` (always, alone).
    pub async fn lease(&self, ttl: Duration) -> Result<bool, MarkError> {
        match self {
            MarkStore::Local(_) => Ok(true),
            MarkStore::Shared { state, poll } => Ok(state.poll_lease(poll, ttl).await?),
        }
    }

    pub async fn load(&self) -> Result<PollMark, MarkError> {
        match self {
            MarkStore::Local(path) => {
                let bytes = match std::fs::read(path) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(PollMark::default());
                    }
                    Err(e) => return Err(file_error(path, e.to_string())),
                };
                let file: MarkFile =
                    serde_json::from_slice(&bytes).map_err(|e| file_error(path, e.to_string()))?;
                Ok(PollMark {
                    since_ms: Some(file.since_ms),
                    watermark: file.watermark,
                })
            }
            MarkStore::Shared { state, poll } => Ok(state.poll_mark(poll).await?),
        }
    }

    /// Keeps `mark` (its `since_ms` set) durably.
    pub async fn save(&self, mark: &PollMark) -> Result<(), MarkError> {
        match self {
            MarkStore::Local(path) => {
                let file = MarkFile {
                    since_ms: mark.since_ms.unwrap_or_default(),
                    watermark: mark.watermark.clone(),
                };
                let bytes = serde_json::to_vec(&file).expect("a mark always serializes");
                crate::state_file::replace_async(path.clone(), bytes)
                    .await
                    .map_err(|e| file_error(path, e.to_string()))
            }
            MarkStore::Shared { state, poll } => Ok(state.set_poll_mark(poll, mark).await?),
        }
    }
}

fn file_error(path: &std::path::Path, reason: String) -> MarkError {
    MarkError::File {
        path: path.to_owned(),
        reason,
    }
}
