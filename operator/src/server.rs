//! The operator's HTTPS port: the admission webhook (`/mutate`) and the
//! sidecars' config stream (`/v1/sidecar/config`), served by every replica
//! from its [`ClusterView`]; and the upkeep of its certificate.
//!
//! Certificates come from one of two places:
//! - managed: the operator keeps a CA and a serving certificate in a Secret
//!   of its namespace, renews it 30 days before expiry, and keeps the
//!   MutatingWebhookConfiguration's `caBundle` current (the leader writes,
//!   every replica reloads);
//! - files: a mounted `kubernetes.io/tls` Secret (cert-manager), re-read as
//!   it changes; cert-manager's CA injector keeps the `caBundle`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::net::TcpListener;

use crate::admission::{Injector, MUTATE_PATH};
use crate::inject::ConfigServer;
use crate::metrics::ControllerMetrics;
use crate::stream::ConfigStream;
use crate::tls::{self, Authority, ReloadingCert};

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    Managed {
        namespace: String,
        secret: String,
        /// DNS names and IPs the certificate is for.
        names: Vec<String>,
        /// The MutatingWebhookConfiguration whose caBundle is kept current.
        webhook_configuration: String,
        /// With `--webhook-url`: the API server calls this URL instead of the Service.
        webhook_url: Option<String>,
    },
    Files {
        dir: PathBuf,
    },
}

const NOT_AFTER: &str = "sluice.dev/not-after";
const NAMES: &str = "sluice.dev/names";

/// Keeps `cert` loaded and current, the injector's CA current, and (on the
/// leader, managed certificates) the Secret and the webhook's caBundle.
pub struct CertKeeper {
    pub client: Client,
    pub source: CertSource,
    pub cert: Arc<ReloadingCert>,
    pub injector: Arc<Injector>,
    pub leader: Arc<AtomicBool>,
    pub metrics: ControllerMetrics,
    /// The config stream's public URL, given to sidecars with the CA.
    pub stream_url: Option<String>,
    /// How often the certificate is checked once loaded.
    pub period: Duration,
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

impl CertKeeper {
    /// Runs for as long as the operator does: checks every `period` (every
    /// 2 s until a certificate is loaded).
    pub async fn run(self) {
        let mut loaded: Option<String> = None;
        let mut warned_missing_webhook = false;
        loop {
            let outcome = match &self.source {
                CertSource::Files { dir } => read_files(dir),
                CertSource::Managed { .. } => self.managed(&mut warned_missing_webhook).await,
            };
            match outcome {
                Ok(Some((cert_pem, key_pem, ca_pem))) => {
                    if loaded.as_ref() != Some(&cert_pem) {
                        match tls::certified_key(&cert_pem, &key_pem) {
                            Ok(key) => {
                                self.cert.set(key);
                                tracing::info!("serving certificate loaded");
                                loaded = Some(cert_pem);
                            }
                            Err(error) => tracing::error!(%error, "serving certificate not usable"),
                        }
                    }
                    if let Some(url) = &self.stream_url {
                        self.injector
                            .settings
                            .write()
                            .expect("settings lock")
                            .config_server = Some(ConfigServer {
                            url: url.clone(),
                            ca_pem,
                        });
                    }
                }
                Ok(None) => {
                    tracing::info!("waiting for the leader to create the serving certificate")
                }
                Err(error) => tracing::warn!(%error, "certificate upkeep failed; retrying"),
            }
            let period = if loaded.is_some() {
                self.period
            } else {
                Duration::from_secs(2)
            };
            tokio::time::sleep(period).await;
        }
    }

    async fn managed(
        &self,
        warned_missing_webhook: &mut bool,
    ) -> anyhow::Result<Option<(String, String, String)>> {
        let CertSource::Managed {
            namespace,
            secret,
            names,
            webhook_configuration,
            webhook_url,
        } = &self.source
        else {
            unreachable!("called for managed certificates only")
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let leader = self.leader.load(Ordering::Acquire);
        let now = SystemTime::now();
        let existing = api.get_opt(secret).await?;
        let current = existing.as_ref().and_then(|s| {
            let not_after = s
                .annotations()
                .get(NOT_AFTER)
                .and_then(|t| t.parse::<u64>().ok())
                .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))?;
            let same_names = s.annotations().get(NAMES) == Some(&names.join(","));
            Some((
                Authority {
                    cert_pem: text(s, "ca.crt")?,
                    key_pem: text(s, "ca.key")?,
                },
                text(s, "tls.crt")?,
                text(s, "tls.key")?,
                not_after,
                same_names,
            ))
        });
        let (ca, cert_pem, key_pem) = match current {
            Some((ca, cert, key, not_after, true)) if !tls::needs_renewal(not_after, now) => {
                (ca, cert, key)
            }
            _ if !leader => {
                // Serve what is there (if anything) until the leader renews it.
                return Ok(existing.and_then(|s| {
                    Some((
                        text(&s, "tls.crt")?,
                        text(&s, "tls.key")?,
                        text(&s, "ca.crt")?,
                    ))
                }));
            }
            current => {
                let ca = match current {
                    Some((ca, ..)) => ca,
                    None => tls::new_authority(now)?,
                };
                let serving = tls::issue(&ca, names, now)?;
                let not_after = serving
                    .not_after
                    .duration_since(SystemTime::UNIX_EPOCH)?
                    .as_secs();
                let data = BTreeMap::from([
                    (
                        "ca.crt".to_owned(),
                        ByteString(ca.cert_pem.clone().into_bytes()),
                    ),
                    (
                        "ca.key".to_owned(),
                        ByteString(ca.key_pem.clone().into_bytes()),
                    ),
                    (
                        "tls.crt".to_owned(),
                        ByteString(serving.cert_pem.clone().into_bytes()),
                    ),
                    (
                        "tls.key".to_owned(),
                        ByteString(serving.key_pem.clone().into_bytes()),
                    ),
                ]);
                let object = Secret {
                    metadata: ObjectMeta {
                        name: Some(secret.clone()),
                        namespace: Some(namespace.clone()),
                        resource_version: existing
                            .as_ref()
                            .and_then(|s| s.metadata.resource_version.clone()),
                        annotations: Some(BTreeMap::from([
                            (NOT_AFTER.to_owned(), not_after.to_string()),
                            (NAMES.to_owned(), names.join(",")),
                        ])),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "sluice".to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(data),
                    ..Secret::default()
                };
                // Create or replace at the version read: a concurrent writer makes this fail, and the next round reads again.
                match existing {
                    None => api.create(&PostParams::default(), &object).await?,
                    Some(_) => api.replace(secret, &PostParams::default(), &object).await?,
                };
                self.metrics.certificate_renewals.inc();
                self.metrics.writes.inc();
                tracing::info!(secret = %secret, valid_until_unix = not_after, "serving certificate issued");
                (ca, serving.cert_pem, serving.key_pem)
            }
        };
        if leader {
            self.keep_ca_bundle(
                &ca.cert_pem,
                webhook_configuration,
                webhook_url.as_deref(),
                warned_missing_webhook,
            )
            .await?;
        }
        Ok(Some((cert_pem, key_pem, ca.cert_pem)))
    }

    /// Points every webhook of the configuration at us with the current CA.
    async fn keep_ca_bundle(
        &self,
        ca_pem: &str,
        name: &str,
        url: Option<&str>,
        warned_missing: &mut bool,
    ) -> anyhow::Result<()> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let Some(mut configuration) = api.get_opt(name).await? else {
            if !*warned_missing {
                tracing::warn!(webhook_configuration = %name, "no such MutatingWebhookConfiguration: pods are not injected (the Helm chart installs it)");
                *warned_missing = true;
            }
            return Ok(());
        };
        let before = configuration.clone();
        for webhook in configuration.webhooks.iter_mut().flatten() {
            webhook.client_config.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
            if let Some(url) = url {
                webhook.client_config.url =
                    Some(format!("{}{MUTATE_PATH}", url.trim_end_matches('/')));
                webhook.client_config.service = None;
            }
        }
        if configuration != before {
            configuration.metadata.managed_fields = None;
            api.replace(name, &PostParams::default(), &configuration)
                .await?;
            self.metrics.writes.inc();
            tracing::info!(webhook_configuration = %name, "webhook caBundle updated");
        }
        Ok(())
    }
}

/// tls.crt, tls.key and ca.crt from a mounted `kubernetes.io/tls` Secret.
fn read_files(dir: &std::path::Path) -> anyhow::Result<Option<(String, String, String)>> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(name).display()))
    };
    Ok(Some((read("tls.crt")?, read("tls.key")?, read("ca.crt")?)))
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .expect("static parts are valid")
}

/// The largest AdmissionReview accepted (a pod with big env and volumes fits easily).
const MAX_REVIEW_BYTES: usize = 4 << 20;

async fn route(
    request: Request<Incoming>,
    injector: Arc<Injector>,
    stream: Arc<ConfigStream>,
    view_ready: Arc<AtomicBool>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "{\"status\":\"ok\"}"),
        _ if !view_ready.load(Ordering::Acquire) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"error\":\"the operator is still listing the cluster\"}",
        ),
        (&Method::POST, MUTATE_PATH) => {
            let body = match Limited::new(request.into_body(), MAX_REVIEW_BYTES)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(error) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"error": format!("reading the AdmissionReview: {error}")})
                            .to_string(),
                    );
                }
            };
            let review = injector.review(&body);
            reply(
                StatusCode::OK,
                serde_json::to_vec(&review).expect("reviews serialize"),
            )
        }
        (&Method::GET, sluice_contract::stream::CONFIG_PATH) => {
            let authorization = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let (status, body) = stream.poll(authorization, request.uri().query()).await;
            reply(status, body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "{\"error\":\"not found: POST /mutate or GET /v1/sidecar/config\"}",
        ),
    }
}

/// Serves the HTTPS port until the process ends.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    injector: Arc<Injector>,
    stream: Arc<ConfigStream>,
    view_ready: Arc<AtomicBool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (acceptor, injector, stream, view_ready) = (
            acceptor.clone(),
            injector.clone(),
            stream.clone(),
            view_ready.clone(),
        );
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let (injector, stream, view_ready) =
                    (injector.clone(), stream.clone(), view_ready.clone());
                async move { Ok::<_, Infallible>(route(request, injector, stream, view_ready).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}
