//! Where one webhook's accepted events and dead letters are kept: the pod's
//! own queue directory, or the shared state (`--shared-state`), where they
//! outlive the pod and every replica sees them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::dedup::DedupStore;
use super::queue::{EnqueueError, QueueWriter};
use super::source::SharedSource;
use crate::dead_letter::{self, DeadLetter, StoredEvent};
use crate::shared::SharedStateError;
use crate::shared::webhooks::{Accepted, SharedWebhook};

#[derive(Clone)]
pub enum WebhookStore {
    Local {
        dedup: Arc<dyn DedupStore>,
        queue: QueueWriter,
        dir: PathBuf,
    },
    Shared {
        webhook: SharedWebhook,
        /// `ingress.maxQueueBytes`, for the webhook's stream.
        bound: u64,
    },
}

/// Why an event was not stored; the provider gets 503 and retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the webhook's stored events are at their bound")]
    Full,
    #[error("{0}")]
    Unavailable(String),
}

impl From<EnqueueError> for StoreError {
    fn from(error: EnqueueError) -> Self {
        match error {
            EnqueueError::Full(_) => StoreError::Full,
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl From<SharedStateError> for StoreError {
    fn from(error: SharedStateError) -> Self {
        StoreError::Unavailable(error.to_string())
    }
}

/// What became of an event handed to [`WebhookStore::accept`].
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Durably stored: the provider may be told 200.
    Stored,
    /// Accepted before (here or, with shared state, at any replica).
    Duplicate,
}

impl WebhookStore {
    /// Stores `event` unless its id was accepted within `ttl` (until
    /// `expires_ms`); returns only once it is durable.
    pub async fn accept(
        &self,
        event: StoredEvent,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<Outcome, StoreError> {
        let expires_ms = now_ms + ttl.as_millis() as u64;
        match self {
            WebhookStore::Local { dedup, queue, .. } => {
                if !dedup.claim(&event.id, now_ms, expires_ms) {
                    return Ok(Outcome::Duplicate);
                }
                let id = event.id.clone();
                match queue.append(event, Some(expires_ms)).await {
                    Ok(_) => Ok(Outcome::Stored),
                    Err(error) => {
                        // Not stored: the provider's retry must be accepted.
                        dedup.release(&id);
                        Err(error.into())
                    }
                }
            }
            WebhookStore::Shared { webhook, bound } => {
                let (fields, size) = SharedSource::fields(&event);
                let fields: Vec<(&str, &[u8])> =
                    fields.iter().map(|(n, v)| (*n, v.as_slice())).collect();
                match webhook
                    .accept(Some(&event.id), ttl, *bound, size, &fields)
                    .await?
                {
                    Accepted::Stored => Ok(Outcome::Stored),
                    Accepted::Duplicate => Ok(Outcome::Duplicate),
                    Accepted::Full => Err(StoreError::Full),
                }
            }
        }
    }

    /// Stores a dead letter's event again, without de-duplication (its id
    /// was seen), and removes the dead letter.
    pub async fn replay(&self, seq: u64, letter: DeadLetter) -> Result<(), StoreError> {
        let body = letter.body_bytes();
        let mut event = letter.event;
        event.body = body;
        match self {
            WebhookStore::Local { queue, dir, .. } => {
                queue.append(event, None).await?;
                let _ = std::fs::remove_file(dead_letter::path(dir, seq));
                Ok(())
            }
            WebhookStore::Shared { webhook, bound } => {
                let (fields, size) = SharedSource::fields(&event);
                let fields: Vec<(&str, &[u8])> =
                    fields.iter().map(|(n, v)| (*n, v.as_slice())).collect();
                match webhook
                    .accept(None, Duration::ZERO, *bound, size, &fields)
                    .await?
                {
                    Accepted::Full => Err(StoreError::Full),
                    _ => Ok(webhook.remove_dead_letter(seq).await?),
                }
            }
        }
    }

    /// Every dead letter, its number in `event.seq`.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, String> {
        match self {
            WebhookStore::Local { dir, .. } => dead_letter::list(dir).map_err(|e| e.to_string()),
            WebhookStore::Shared { webhook, .. } => {
                let all = webhook.dead_letters().await.map_err(|e| e.to_string())?;
                let mut letters: Vec<DeadLetter> = all
                    .into_iter()
                    .filter_map(|(seq, json)| parse(seq, &json))
                    .collect();
                letters.sort_by_key(|l| l.event.seq);
                Ok(letters)
            }
        }
    }

    pub async fn dead_letter(&self, seq: u64) -> Result<Option<DeadLetter>, String> {
        match self {
            WebhookStore::Local { dir, .. } => {
                dead_letter::read(dir, seq).map_err(|e| e.to_string())
            }
            WebhookStore::Shared { webhook, .. } => Ok(webhook
                .dead_letter(seq)
                .await
                .map_err(|e| e.to_string())?
                .and_then(|json| parse(seq, &json))),
        }
    }
}

fn parse(seq: u64, json: &[u8]) -> Option<DeadLetter> {
    let mut letter: DeadLetter = serde_json::from_slice(json).ok()?;
    letter.event.seq = seq;
    Some(letter)
}
