//! The `--shared-state` flags, the same on `sluice-sidecar` and `sluice local`.

use std::path::PathBuf;

use super::{Settings, SharedStateError};
use crate::config::Duration;

/// Not `Debug`: the URL may hold a password.
#[derive(clap::Args)]
pub struct SharedStateArgs {
    /// Share `scope: Cluster` limits and webhooks with the integration's
    /// other sidecars, on Redis or Valkey: redis://[:PASSWORD@]HOST:PORT[/DB],
    /// or rediss:// for TLS. Without it every pod keeps its own state.
    #[arg(
        long = "shared-state",
        env = "SLUICE_SHARED_STATE",
        hide_env_values = true
    )]
    pub url: Option<String>,
    /// A file holding the password (it wins over one in the URL).
    #[arg(
        long = "shared-state-password-file",
        env = "SLUICE_SHARED_STATE_PASSWORD_FILE",
        requires = "url"
    )]
    pub password_file: Option<PathBuf>,
    /// With rediss://: the CA bundle (PEM) of the server's certificate, when
    /// it is not from a CA the system trusts.
    #[arg(
        long = "shared-state-ca-file",
        env = "SLUICE_SHARED_STATE_CA_FILE",
        requires = "url"
    )]
    pub ca_file: Option<PathBuf>,
    /// This sidecar's name among the others (default: the host name, which
    /// in a pod is the pod's name).
    #[arg(long = "shared-state-identity", env = "SLUICE_POD_NAME")]
    pub identity: Option<String>,
    /// The longest one call may take before this sidecar stops waiting for
    /// the shared state and counts it down.
    #[arg(long = "shared-state-timeout", default_value = "100ms")]
    pub timeout: Duration,
}

impl SharedStateArgs {
    /// `None` without `--shared-state`.
    pub fn settings(&self) -> Result<Option<Settings>, SharedStateError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| SharedStateError::Settings(format!("{flag} {}: {e}", path.display())))
        };
        let password = self
            .password_file
            .as_ref()
            .map(|p| read("--shared-state-password-file", p))
            .transpose()?
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|_| {
                    SharedStateError::Settings("the password file is not UTF-8".into())
                })
            })
            .transpose()?;
        let ca = self
            .ca_file
            .as_ref()
            .map(|p| read("--shared-state-ca-file", p))
            .transpose()?;
        let identity = self.identity.clone().unwrap_or_else(host_name);
        Settings::new(url, password, ca, identity, self.timeout.get()).map(Some)
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("sluice-{}", std::process::id()))
}
