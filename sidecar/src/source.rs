//! Where a pod's sidecar gets its integrations while it runs.
//!
//! Two sources, one contract (`IntegrationConfig`, as the operator compiles
//! it):
//!
//! - a directory of `*.yaml` files, one integration each: the operator's
//!   ConfigMaps, mounted by the injector. Read at start, so a sidecar starts
//!   even when the operator is down, and watched (the kubelet refreshes
//!   mounted ConfigMaps within about a minute);
//! - the operator's config stream: a long poll over TLS, authenticated with
//!   the pod's projected ServiceAccount token. A change reaches the sidecar
//!   as soon as the operator has compiled it, and while the stream is up it
//!   is the authority.
//!
//! When neither answers, the sidecar keeps enforcing its last good config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{ConfigError, IntegrationConfig};
use crate::runtime::Sidecar;

pub use sluice_contract::stream::{CONFIG_PATH, ConfigSnapshot, LONG_POLL};

/// Reads every `*.yaml` file of `dir` (by file name order) as one
/// integration. Names starting with `.` are skipped: the kubelet's
/// atomic-update bookkeeping (`..data`, `..2026_...`).
pub fn load_dir(dir: &Path) -> Result<Vec<IntegrationConfig>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            serde_yaml_ng::from_str(&text)
                .map_err(|e| ConfigError::Syntax(format!("{}: {e}", path.display())))
        })
        .collect()
}

/// Applies the directory's integrations whenever its files change, unless
/// the config stream is connected (then it is the authority).
pub async fn watch_dir(
    sidecar: Arc<Sidecar>,
    dir: PathBuf,
    stream_connected: Arc<AtomicBool>,
    period: Duration,
) {
    let mut last = load_dir(&dir).ok();
    loop {
        tokio::time::sleep(period).await;
        let Ok(now) = load_dir(&dir) else {
            continue;
        };
        if last.as_ref() == Some(&now) {
            continue;
        }
        last = Some(now.clone());
        if stream_connected.load(Ordering::Acquire) {
            continue;
        }
        match sidecar.apply(&now).await {
            Ok(()) => tracing::info!(dir = %dir.display(), "config files changed; applied"),
            Err(error) => {
                tracing::error!(dir = %dir.display(), %error, "config files changed; not applied")
            }
        }
    }
}

/// How to reach the operator's config stream.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// `https://host:port` of the operator.
    pub server: http::Uri,
    /// The projected ServiceAccount token; re-read for every poll, as the
    /// kubelet rotates it.
    pub token_file: PathBuf,
    /// PEM of the CA that signed the operator's serving certificate.
    pub ca_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("config server CA: {0}")]
    Ca(String),
    #[error("config server URL {0:?}: must be https://host[:port]")]
    Url(String),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

type StreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn stream_client(ca_pem: &str) -> Result<StreamClient, StreamError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| StreamError::Ca(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| StreamError::Ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(StreamError::Ca("no CERTIFICATE block".into()));
    }
    // Only the operator's CA: the token must never go anywhere else.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// The outcome of one poll.
enum Poll {
    Changed(ConfigSnapshot),
    Unchanged,
}

async fn poll_once(
    client: &StreamClient,
    settings: &StreamSettings,
    version: Option<&str>,
) -> Result<Poll, String> {
    let token = std::fs::read_to_string(&settings.token_file)
        .map_err(|e| format!("reading the token {}: {e}", settings.token_file.display()))?;
    let query = version
        .map(|v| format!("?version={v}&wait=true"))
        .unwrap_or_default();
    let uri = format!(
        "{}{CONFIG_PATH}{query}",
        settings.server.to_string().trim_end_matches('/')
    );
    let request = Request::get(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", token.trim()))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response =
        tokio::time::timeout(LONG_POLL + Duration::from_secs(15), client.request(request))
            .await
            .map_err(|_| "no answer within the long-poll time".to_owned())?
            .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
        .await
        .map_err(|_| "the answer's body stalled".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    match status {
        StatusCode::OK => serde_json::from_slice(&body)
            .map(Poll::Changed)
            .map_err(|e| format!("not a config snapshot: {e}")),
        StatusCode::NOT_MODIFIED => Ok(Poll::Unchanged),
        other => Err(format!(
            "{other}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )),
    }
}

/// Follows the operator's config stream for as long as the sidecar runs,
/// applying every change; on errors retries with backoff (1 s doubling to
/// 30 s), keeping the last good config meanwhile.
pub async fn follow_stream(
    sidecar: Arc<Sidecar>,
    settings: StreamSettings,
    connected: Arc<AtomicBool>,
) -> Result<(), StreamError> {
    match settings.server.scheme_str() {
        Some("https") if settings.server.authority().is_some() => {}
        _ => return Err(StreamError::Url(settings.server.to_string())),
    }
    let client = stream_client(&settings.ca_pem)?;
    let mut version: Option<String> = None;
    let mut failures = 0u32;
    loop {
        match poll_once(&client, &settings, version.as_deref()).await {
            Ok(poll) => {
                if failures > 0 || !connected.load(Ordering::Acquire) {
                    tracing::info!(server = %settings.server, "following the operator's config stream");
                }
                failures = 0;
                connected.store(true, Ordering::Release);
                sidecar.metrics.config_server_connected.set(1);
                if let Poll::Changed(snapshot) = poll {
                    if sidecar.integrations() != snapshot.integrations {
                        match sidecar.apply(&snapshot.integrations).await {
                            Ok(()) => {
                                tracing::info!(version = %snapshot.version, "config from the operator applied")
                            }
                            Err(error) => {
                                tracing::error!(version = %snapshot.version, %error, "config from the operator not applied; keeping the last good config")
                            }
                        }
                    }
                    version = Some(snapshot.version);
                }
            }
            Err(error) => {
                connected.store(false, Ordering::Release);
                sidecar.metrics.config_server_connected.set(0);
                let wait = Duration::from_secs(1 << failures.min(5)).min(Duration::from_secs(30));
                failures += 1;
                tracing::warn!(server = %settings.server, %error, retry_in = ?wait, "config stream unavailable; enforcing the last good config");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_integrations_skips_kubelet_bookkeeping() {
        let dir = std::env::temp_dir().join(format!("sluice-source-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("..2026_11_28")).unwrap();
        let one = "name: b\nlisten: 127.0.0.1:15002\nupstream: {baseUrl: 'https://b.example'}\n";
        let two = "name: a\nlisten: 127.0.0.1:15001\nupstream: {baseUrl: 'https://a.example'}\n";
        std::fs::write(dir.join("b.yaml"), one).unwrap();
        std::fs::write(dir.join("a.yaml"), two).unwrap();
        std::fs::write(dir.join("..data.yaml"), "garbage").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let loaded = load_dir(&dir).unwrap();
        assert_eq!(
            loaded.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        std::fs::write(dir.join("c.yaml"), "name: [").unwrap();
        let error = load_dir(&dir).unwrap_err().to_string();
        assert!(error.contains("c.yaml"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
