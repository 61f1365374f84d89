//! The pod the injector builds and the sidecar expects: ports, paths, names.
//! The operator writes these into pods; the sidecar's flags default to them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// `/metrics`, `/healthz`, `/readyz`, `/config`.
pub const ADMIN_PORT: u16 = 15090;
/// Where providers post webhooks.
pub const WEBHOOK_PORT: u16 = 15080;
/// An integration's egress port when its spec names none.
pub const EGRESS_PORT: u16 = 15001;
/// Ports an integration's egress listener may not take.
pub const RESERVED_PORTS: [u16; 2] = [WEBHOOK_PORT, ADMIN_PORT];
/// Egress ports start here: below are privileged.
pub const MIN_EGRESS_PORT: u16 = 1024;

/// In a pod the admin and webhook ports face the pod network (the kubelet,
/// Prometheus, the Service); egress listeners never do.
pub const POD_ADMIN_LISTEN: SocketAddr = all_addresses(ADMIN_PORT);
pub const POD_WEBHOOK_LISTEN: SocketAddr = all_addresses(WEBHOOK_PORT);
/// Outside a pod (`sluice local`) everything stays on loopback.
pub const LOCAL_ADMIN_LISTEN: SocketAddr = loopback(ADMIN_PORT);
pub const LOCAL_WEBHOOK_LISTEN: SocketAddr = loopback(WEBHOOK_PORT);

/// The sidecar's integrations, one file per ConfigMap.
pub const CONFIG_DIR: &str = "/etc/sluice/integrations";
/// The key of an integration's compiled config in its ConfigMap.
pub const CONFIG_KEY: &str = "integration.yaml";
/// Webhook queues, de-duplication ids and dead letters (a pod volume).
pub const STATE_DIR: &str = "/var/run/sluice/state";
/// Referenced Secrets, as `<root>/<secret>/<key>`.
pub const SECRETS_ROOT: &str = "/var/run/sluice/secrets";
/// The shared state's password (`sharedState.existingSecret`), mounted
/// from a Secret in the pod's namespace.
pub const SHARED_STATE_DIR: &str = "/var/run/sluice/shared-state";
/// That Secret's key, and the file's name.
pub const SHARED_STATE_PASSWORD_KEY: &str = "password";
/// The projected ServiceAccount token the sidecar shows the config stream.
pub const TOKEN_DIR: &str = "/var/run/secrets/sluice";
pub const TOKEN_FILE: &str = "token";
/// That token's audience: the operator's TokenReview asks for exactly it.
pub const TOKEN_AUDIENCE: &str = "sluice";

/// The ConfigMap the operator writes an integration's compiled config to.
pub fn config_map_name(integration: &str) -> String {
    format!("sluice-{integration}")
}

/// Where a referenced Secret key is found under `root`.
pub fn secret_path(root: &Path, secret: &str, key: &str) -> PathBuf {
    root.join(secret).join(key)
}

/// One webhook's queue directory under the state directory.
pub fn queue_dir(state_dir: &Path, integration: &str, webhook: &str) -> PathBuf {
    state_dir
        .join("webhooks")
        .join(format!("{integration}.{webhook}"))
}

/// Where a quota's usage is kept under the state directory (without
/// shared state).
pub fn quota_file(state_dir: &Path, integration: &str, quota: &str) -> PathBuf {
    state_dir
        .join("quotas")
        .join(format!("{integration}.{quota}.json"))
}

/// Where a polled webhook's place in the provider's listing is kept under
/// the state directory (without shared state).
pub fn poll_file(state_dir: &Path, integration: &str, webhook: &str) -> PathBuf {
    state_dir
        .join("polls")
        .join(format!("{integration}.{webhook}.json"))
}

/// Every webhook queue under the state directory, as
/// (integration, webhook, directory), in name order.
pub fn queue_dirs(state_dir: &Path) -> std::io::Result<Vec<(String, String, PathBuf)>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(state_dir.join("webhooks"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((integration, webhook)) = name.split_once('.') {
            dirs.push((integration.to_owned(), webhook.to_owned(), entry.path()));
        }
    }
    dirs.sort();
    Ok(dirs)
}

const fn all_addresses(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}
