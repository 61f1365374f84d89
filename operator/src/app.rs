//! `sluice operator`: every replica serves the admission webhook, the config
//! stream and its metrics from its own view of the cluster; the replica
//! holding the Lease also runs the controller and writes certificates.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use kube::Client;
use sluice_contract::exposition::Exposition;

use crate::admission::Injector;
use crate::controller;
use crate::inject::InjectorSettings;
use crate::leader::LeaderElector;
use crate::metrics::{ControllerMetrics, RequestLabels};
use crate::server::{CertKeeper, CertSource};
use crate::stream::ConfigStream;
use crate::tls::ReloadingCert;
use crate::view::ClusterView;

/// Everything `sluice operator` is told on its command line.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch one namespace only (default: all).
    pub namespace: Option<String>,
    /// The operator's own namespace: its Lease, its certificate Secret; never injected.
    pub operator_namespace: String,
    /// The Lease (in `operator_namespace`) the replicas elect a leader with.
    pub lease_name: String,
    pub metrics_listen: SocketAddr,
    pub webhook_listen: SocketAddr,
    /// The Service in front of the replicas (certificate names, stream URL).
    pub service_name: String,
    /// The port of that Service that reaches `webhook_listen`.
    pub service_port: u16,
    /// Register the webhook by URL (the operator runs outside the cluster).
    pub webhook_url: Option<String>,
    pub webhook_configuration: String,
    pub tls_secret: String,
    /// Certificates from files (cert-manager) instead of the managed Secret.
    pub tls_dir: Option<PathBuf>,
    pub sidecar: InjectorSettings,
    /// How often the serving certificate is checked for renewal and reload.
    pub tls_check_interval: Duration,
}

impl Options {
    /// The DNS names (or IP) the serving certificate must carry.
    pub fn certificate_names(&self) -> Vec<String> {
        match &self.webhook_url {
            Some(url) => {
                let host = url
                    .parse::<http::Uri>()
                    .ok()
                    .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()))
                    .unwrap_or_default();
                vec![host]
            }
            None => {
                let (svc, ns) = (&self.service_name, &self.operator_namespace);
                vec![
                    format!("{svc}.{ns}.svc"),
                    format!("{svc}.{ns}.svc.cluster.local"),
                    format!("{svc}.{ns}"),
                    svc.clone(),
                ]
            }
        }
    }

    /// What sidecars dial for the config stream.
    pub fn stream_url(&self) -> String {
        match &self.webhook_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!(
                "https://{}.{}.svc:{}",
                self.service_name, self.operator_namespace, self.service_port
            ),
        }
    }
}

async fn client(metrics: &ControllerMetrics) -> anyhow::Result<Client> {
    let config = kube::Config::infer()
        .await
        .context("finding the cluster (in-cluster config or KUBECONFIG)")?;
    let counted = metrics.api_requests.clone();
    // Count every request the operator makes: the scale benchmark reports them.
    Ok(kube::client::ClientBuilder::try_from(config)
        .context("building the Kubernetes client")?
        .with_layer(&tower::util::MapRequestLayer::new(
            move |request: http::Request<kube::client::Body>| {
                counted
                    .get_or_create(&RequestLabels {
                        method: request.method().to_string(),
                    })
                    .inc();
                request
            },
        ))
        .build())
}

/// `/metrics`, `/healthz` and `/readyz` (ready once the view has listed and
/// a serving certificate is loaded).
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: ControllerMetrics,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    const PLAIN: &str = "text/plain; charset=utf-8";
                    let (status, content_type, body) = match request.uri().path() {
                        "/metrics" => {
                            let format = Exposition::negotiate(
                                request
                                    .headers()
                                    .get(http::header::ACCEPT)
                                    .map(|v| v.as_bytes()),
                            );
                            (200, format.content_type(), metrics.encode(format))
                        }
                        "/healthz" => (200, PLAIN, "ok\n".to_owned()),
                        "/readyz" if ready() => (200, PLAIN, "ok\n".to_owned()),
                        "/readyz" => (
                            503,
                            PLAIN,
                            "not ready: listing the cluster or waiting for a certificate\n"
                                .to_owned(),
                        ),
                        _ => (
                            404,
                            PLAIN,
                            "not found: /metrics, /healthz, /readyz\n".to_owned(),
                        ),
                    };
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header(http::header::CONTENT_TYPE, content_type)
                                .body(Full::new(Bytes::from(body)))
                                .expect("valid response"),
                        )
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Runs until `stopped` resolves (SIGTERM; the caller installs its handler
/// before this reports ready) or the Lease it held is lost.
pub async fn run(options: Options, stopped: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut stopped = std::pin::pin!(stopped);
    let metrics = ControllerMetrics::new();
    let client = client(&metrics).await?;
    let view = ClusterView::start(client.clone(), options.namespace.as_deref());
    let view_ready = Arc::new(AtomicBool::new(false));
    let cert = Arc::new(ReloadingCert::default());

    let metrics_listener = tokio::net::TcpListener::bind(options.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.metrics_listen))?;
    let webhook_listener = tokio::net::TcpListener::bind(options.webhook_listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.webhook_listen))?;
    tracing::info!(
        metrics = %metrics_listener.local_addr()?,
        webhook = %webhook_listener.local_addr()?,
        "operator listening"
    );
    let ready = {
        let (view_ready, cert) = (view_ready.clone(), cert.clone());
        Arc::new(move || view_ready.load(Ordering::Acquire) && cert.is_set())
    };
    tokio::spawn(serve_metrics(metrics_listener, metrics.clone(), ready));

    let injector = Arc::new(Injector {
        view: view.clone(),
        settings: RwLock::new(options.sidecar.clone()),
        skip_namespaces: vec!["kube-system".into(), options.operator_namespace.clone()],
        metrics: metrics.clone(),
    });
    let stream = Arc::new(ConfigStream::new(
        view.clone(),
        client.clone(),
        metrics.clone(),
    ));
    let tls = Arc::new(crate::tls::server_config(cert.clone())?);
    tokio::spawn(crate::server::serve(
        webhook_listener,
        tls,
        injector.clone(),
        stream,
        view_ready.clone(),
    ));
    let leader = Arc::new(AtomicBool::new(false));
    let source = match &options.tls_dir {
        Some(dir) => CertSource::Files { dir: dir.clone() },
        None => CertSource::Managed {
            namespace: options.operator_namespace.clone(),
            secret: options.tls_secret.clone(),
            names: options.certificate_names(),
            webhook_configuration: options.webhook_configuration.clone(),
            webhook_url: options.webhook_url.clone(),
        },
    };
    tokio::spawn(
        CertKeeper {
            client: client.clone(),
            source,
            cert,
            injector,
            leader: leader.clone(),
            metrics: metrics.clone(),
            stream_url: Some(options.stream_url()),
            period: options.tls_check_interval,
        }
        .run(),
    );
    {
        let (view, view_ready) = (view.clone(), view_ready.clone());
        tokio::spawn(async move {
            view.wait_until_ready().await;
            view_ready.store(true, Ordering::Release);
            tracing::info!("cluster view listed; serving admissions and config polls");
        });
    }

    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("sluice-operator-{}", std::process::id()));
    let elector = LeaderElector::new(
        client.clone(),
        &options.operator_namespace,
        &options.lease_name,
        identity,
        Duration::from_secs(15),
    );
    tokio::select! {
        _ = elector.acquire() => {}
        _ = &mut stopped => return Ok(()),
    }
    leader.store(true, Ordering::Release);
    tracing::info!(
        namespace = options.namespace.as_deref().unwrap_or("<all>"),
        "leader: controller starting"
    );
    let skip = vec!["kube-system".to_owned(), options.operator_namespace.clone()];
    tokio::spawn(crate::missed::run(
        client.clone(),
        view.clone(),
        options.namespace.clone(),
        skip,
        metrics.clone(),
    ));
    tokio::select! {
        _ = controller::run(client, metrics, options.namespace.clone(), view) => {}
        _ = elector.keep() => anyhow::bail!("lost the leader lease"),
    }
    Ok(())
}
