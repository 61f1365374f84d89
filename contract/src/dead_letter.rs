//! Accepted webhook events as the queue stores them, and the dead letters
//! that `sluice webhooks` lists, shows and replays: the files under a
//! webhook's queue directory ([`crate::layout::queue_dir`]).
//!
//! ```text
//! dead/<seq, 20 digits>.json   one DeadLetter, written to a temp file, synced, renamed
//! ```

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One accepted webhook, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    pub seq: u64,
    /// The de-duplication id (the scheme's id, the body's `idPointer`, or a digest).
    pub id: String,
    pub received_at_ms: u64,
    /// The scheme that verified it, for `x-sluice-verified`.
    pub verified_by: String,
    /// Original headers, values base64 so any byte survives.
    pub headers: Vec<(String, String)>,
    /// Until when the id counts for de-duplication; the segment holding the
    /// record is its durable copy until `dedup.log` takes over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_expires_ms: Option<u64>,
    /// Stored next to the metadata, never inside it.
    #[serde(skip)]
    pub body: Bytes,
}

impl StoredEvent {
    pub fn header_pairs(&self) -> impl Iterator<Item = (&str, Vec<u8>)> {
        self.headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), BASE64.decode(v).ok()?)))
    }

    pub fn encode_headers(headers: &http::HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), BASE64.encode(v.as_bytes())))
            .collect()
    }
}

/// An event that exhausted its delivery attempts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    #[serde(flatten)]
    pub event: StoredEvent,
    /// The body, base64.
    pub body: String,
    pub attempts: u32,
    pub last_error: String,
}

impl DeadLetter {
    pub fn new(event: StoredEvent, attempts: u32, last_error: String) -> Self {
        Self {
            body: BASE64.encode(&event.body),
            event,
            attempts,
            last_error,
        }
    }

    pub fn body_bytes(&self) -> Bytes {
        Bytes::from(BASE64.decode(&self.body).unwrap_or_default())
    }
}

/// One line of the admin port's `GET /webhooks/dead-letters`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSummary {
    pub integration: String,
    pub webhook: String,
    pub seq: u64,
    pub id: String,
    pub received_at_ms: u64,
    pub attempts: u32,
    pub last_error: String,
}

impl DeadLetterSummary {
    pub fn of(integration: &str, webhook: &str, letter: DeadLetter) -> Self {
        Self {
            integration: integration.to_owned(),
            webhook: webhook.to_owned(),
            seq: letter.event.seq,
            id: letter.event.id,
            received_at_ms: letter.event.received_at_ms,
            attempts: letter.attempts,
            last_error: letter.last_error,
        }
    }
}

pub fn dir(queue_dir: &Path) -> PathBuf {
    queue_dir.join("dead")
}

/// The file of dead letter `seq`.
pub fn path(queue_dir: &Path, seq: u64) -> PathBuf {
    dir(queue_dir).join(format!("{seq:020}.json"))
}

/// Writes a dead letter so that a crash leaves either all of it or nothing.
pub fn write(queue_dir: &Path, letter: &DeadLetter) -> std::io::Result<()> {
    let dir = dir(queue_dir);
    let tmp = dir.join(format!(".{}.tmp", letter.event.seq));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(letter).expect("dead letter serializes"),
    )?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path(queue_dir, letter.event.seq))
}

/// Reads dead letter `seq`; `Ok(None)` when there is none.
pub fn read(queue_dir: &Path, seq: u64) -> std::io::Result<Option<DeadLetter>> {
    let file = path(queue_dir, seq);
    match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| invalid(&file, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The dead letters of a queue directory, oldest first.
pub fn list(queue_dir: &Path) -> std::io::Result<Vec<DeadLetter>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir(queue_dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| serde_json::from_slice(&std::fs::read(&path)?).map_err(|e| invalid(&path, e)))
        .collect()
}

fn invalid(path: &Path, e: serde_json::Error) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
}
