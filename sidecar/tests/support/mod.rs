//! Real peers for the sidecar's tests: an upstream HTTP server (plain or TLS
//! with HTTP/2 over ALPN) that records what it receives, and an app client.
//! Everything binds 127.0.0.1 and stops when dropped.
#![allow(dead_code)]

pub mod process;
pub mod provider;
pub mod redis_server;
pub mod toxiproxy;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_sidecar::Sidecar;
use sluice_sidecar::config::{
    AdminConfig, Duration as D, IntegrationConfig, QueueConfig, RateLimitConfig, RequestMatch,
    SidecarConfig, UpstreamConfig, WhenExceeded,
};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// A fresh CA, and a certificate for `localhost` it signed with its key.
pub fn localhost_certificate() -> (rcgen::Certificate, rcgen::Certificate, rcgen::KeyPair) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sluice test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let leaf = params
        .signed_by(&key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    (ca, leaf, key)
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

pub type Handler = Arc<
    dyn Fn(Seen, usize) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Seen, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    Arc::new(move |seen, n| Box::pin(f(seen, n)))
}

pub fn respond(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

pub struct TestUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    pub ca_pem: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    pub fn url(&self) -> String {
        match self.ca_pem {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub async fn plain(handler: Handler) -> Self {
        Self::start(handler, None).await
    }

    /// TLS with a certificate for `localhost` from a fresh CA; HTTP/2 and HTTP/1.1 by ALPN.
    pub async fn tls(handler: Handler) -> Self {
        let (ca, leaf, leaf_key) = localhost_certificate();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::start(handler, Some((Arc::new(config), ca.pem()))).await
    }

    async fn start(handler: Handler, tls: Option<(Arc<rustls::ServerConfig>, String)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let ca_pem = tls.as_ref().map(|(_, pem)| pem.clone());
        let acceptor = tls.map(|(config, _)| tokio_rustls::TlsAcceptor::from(config));
        let recorded = seen.clone();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (handler, recorded, acceptor) =
                    (handler.clone(), recorded.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (handler, recorded) = (handler.clone(), recorded.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                method: parts.method,
                                uri: parts.uri.to_string(),
                                version: parts.version,
                                headers: parts.headers,
                                body,
                                at: Instant::now(),
                            };
                            let n = {
                                let mut all = recorded.lock().unwrap();
                                all.push(seen.clone());
                                all.len()
                            };
                            Ok::<_, Infallible>(handler(seen, n).await)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            connections,
            ca_pem,
            task,
        }
    }
}

/// An integration config for `upstream` on a free loopback port.
pub fn integration(name: &str, upstream: &TestUpstream) -> IntegrationConfig {
    let yaml = format!(
        "name: {name}\nlisten: 127.0.0.1:0\nupstream: {{baseUrl: '{}', timeout: 2s, totalTimeout: 10s}}\n",
        upstream.url()
    );
    let mut config: IntegrationConfig = serde_yaml_ng::from_str(&yaml).unwrap();
    config.upstream.ca_bundle = upstream.ca_pem.clone();
    config.retry.backoff.initial = sluice_sidecar::config::Duration::from_millis(20);
    config.retry.backoff.max = sluice_sidecar::config::Duration::from_millis(100);
    config
}

pub fn upstream_config(base_url: &str) -> UpstreamConfig {
    serde_yaml_ng::from_str(&format!(
        "{{baseUrl: '{base_url}', timeout: 2s, totalTimeout: 10s}}"
    ))
    .unwrap()
}

pub async fn start(integrations: Vec<IntegrationConfig>) -> Sidecar {
    let config = SidecarConfig {
        admin: AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
        },
        drain_timeout: sluice_sidecar::config::Duration::from_secs(5),
        integrations,
        ingress: Default::default(),
    };
    Sidecar::start(config).await.expect("sidecar starts")
}

/// The app's side: a plain HTTP/1.1 client (or h2c with `http2_only`).
pub struct App {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    base: String,
}

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: Version,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl App {
    pub fn new(addr: SocketAddr) -> Self {
        Self::build(addr, false)
    }
    pub fn h2c(addr: SocketAddr) -> Self {
        Self::build(addr, true)
    }
    fn build(addr: SocketAddr, http2_only: bool) -> Self {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(http2_only)
            .build_http();
        Self {
            client,
            base: format!("http://{addr}"),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            self.client
                .request(request.body(Full::new(body.into())).unwrap()),
        )
        .await
        .expect("the sidecar answered within 30s")
        .expect("the sidecar answered");
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[], Bytes::new()).await
    }
}

/// Fetches a page of the admin server.
pub async fn admin(sidecar: &Sidecar, path: &str) -> Answer {
    App::new(sidecar.admin_addr).get(path).await
}

/// The value of a metric line starting with `prefix` (labels included), summed.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[path = "../../../tests/tools/locate.rs"]
mod locate;
// Not every test binary uses it.
#[allow(unused_imports)]
pub use locate::tool;

/// One GET over a fresh connection to `addr`, read until the sidecar closes
/// it (however the response ends: cut bodies included), and how long that took.
pub async fn get_until_closed(addr: SocketAddr, path: &str) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut app = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n");
    app.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), app.read_to_end(&mut received))
        .await
        .expect("the sidecar ended the response within 10s")
        .unwrap_or_default();
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

/// The venv `tests/run` creates with the providers' Python SDKs.
pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_PYTHON") {
        return p.into();
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let venv = std::path::Path::new(&home).join(".cache/sluice/venv/bin/python");
    assert!(
        venv.exists(),
        "the provider SDKs are missing: run tests/run (it creates {}), or set SLUICE_PYTHON",
        venv.display()
    );
    venv
}

/// Matches every request.
pub fn any() -> RequestMatch {
    RequestMatch::default()
}

pub fn limit(name: &str, requests: u32, per: D, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        name: name.into(),
        matches: any(),
        requests,
        per,
        burst,
        scope: Default::default(),
        cluster: None,
        when_exceeded: WhenExceeded::Queue,
        queue: QueueConfig {
            max_wait: D::from_secs(10),
            max_depth: 1000,
        },
        key: None,
        max_keys: sluice_sidecar::config::defaults::max_keys(),
    }
}

pub struct SecretDir(pub std::path::PathBuf);

impl SecretDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sluice-test-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn write(&self, name: &str, value: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        // Write then rename, as the kubelet swaps a Secret volume.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, value).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl SecretDir {
    pub fn path_of(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

/// Signs webhooks with the providers' own libraries (tests/webhooks/sign.py,
/// one JSON request per line); returns each one's header pairs.
pub fn sign_webhooks(requests: &[serde_json::Value]) -> Vec<Vec<(String, String)>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/webhooks/sign.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the signer");
    {
        let stdin = child.stdin.as_mut().unwrap();
        for r in requests {
            writeln!(stdin, "{r}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the signer failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).unwrap();
            map.into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap().to_owned()))
                .collect()
        })
        .collect()
}
