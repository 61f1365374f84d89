//! Secret values read from files (mounted Secret volumes), re-read when they
//! change so a rotated key is used for new requests without a restart.
//!
//! Kubernetes updates a Secret volume by swapping a symlink, which inotify
//! reports unreliably across the swap; a cheap periodic re-read is what works
//! everywhere (and what the kubelet's own sync period bounds anyway).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::metrics::{Metrics, Name, ResultLabels};

/// A secret value. It has no `Display`, and `Debug` prints `<redacted>`, so it
/// cannot end up in a log line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Arc<str>);

impl SecretValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {path} is empty")]
    Empty { path: PathBuf },
    #[error("secret file {path} is not UTF-8 text")]
    NotText { path: PathBuf },
}

fn read_secret(path: &Path) -> Result<SecretValue, SecretError> {
    let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| SecretError::NotText {
        path: path.to_owned(),
    })?;
    // `echo key > file` leaves a newline no provider expects.
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(SecretValue(Arc::from(trimmed)))
}

/// A handle to one secret file's current value.
#[derive(Clone, Debug)]
pub struct Secret {
    path: Arc<PathBuf>,
    value: Arc<RwLock<SecretValue>>,
}

impl Secret {
    pub fn current(&self) -> SecretValue {
        self.value.read().expect("secret lock poisoned").clone()
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// All secret files of the sidecar, loaded at start and watched after.
#[derive(Clone, Default)]
pub struct SecretStore {
    secrets: Arc<RwLock<HashMap<PathBuf, (Secret, Name)>>>,
}

impl SecretStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads `path` now (an error if it is missing or empty) and watches it from then on.
    pub fn load(&self, path: &Path, integration: &Name) -> Result<Secret, SecretError> {
        if let Some((secret, _)) = self.secrets.read().expect("lock").get(path) {
            return Ok(secret.clone());
        }
        let secret = Secret {
            path: Arc::new(path.to_owned()),
            value: Arc::new(RwLock::new(read_secret(path)?)),
        };
        self.secrets
            .write()
            .expect("lock")
            .insert(path.to_owned(), (secret.clone(), integration.clone()));
        Ok(secret)
    }

    /// Re-reads every file once; a file that vanished or emptied keeps its
    /// last value (a rotation in progress must not break requests).
    pub fn reload(&self, metrics: &Metrics) {
        let entries: Vec<(Secret, Name)> = self
            .secrets
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        for (secret, integration) in entries {
            let result = match read_secret(&secret.path) {
                Ok(value) => {
                    let mut current = secret.value.write().expect("secret lock poisoned");
                    if *current == value {
                        continue;
                    }
                    *current = value;
                    tracing::info!(path = %secret.path.display(), integration = %integration, "secret file changed; new requests use the new value");
                    "success"
                }
                Err(error) => {
                    tracing::warn!(%error, integration = %integration, "keeping the last value of a secret file that cannot be read");
                    "error"
                }
            };
            metrics
                .secret_reloads
                .get_or_create(&ResultLabels {
                    integration,
                    result,
                })
                .inc();
        }
    }

    /// Re-reads the files every `period` until the returned task is aborted.
    pub fn watch(&self, period: Duration, metrics: Metrics) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let (store, metrics) = (store.clone(), metrics.clone());
                // File reads block; keep them off the proxy's threads.
                let _ = tokio::task::spawn_blocking(move || store.reload(&metrics)).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_newline_and_redacts_debug() {
        let dir = std::env::temp_dir().join(format!("sluice-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "sk_live_123\n").unwrap();
        let store = SecretStore::new();
        let secret = store.load(&path, &Arc::from("t")).unwrap();
        assert_eq!(secret.current().expose(), "sk_live_123");
        assert_eq!(format!("{:?}", secret.current()), "<redacted>");
        assert!(!format!("{secret:?}").contains("sk_live"));

        std::fs::write(&path, "sk_live_456").unwrap();
        store.reload(&Metrics::new());
        assert_eq!(secret.current().expose(), "sk_live_456");

        std::fs::remove_file(&path).unwrap();
        store.reload(&Metrics::new());
        assert_eq!(
            secret.current().expose(),
            "sk_live_456",
            "kept the last good value"
        );

        let missing = store
            .load(&dir.join("absent"), &Arc::from("t"))
            .unwrap_err();
        assert!(missing.to_string().contains("absent"));
        std::fs::write(dir.join("empty"), "\n").unwrap();
        assert!(matches!(
            store.load(&dir.join("empty"), &Arc::from("t")),
            Err(SecretError::Empty { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
