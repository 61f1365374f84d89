//! Webhook ingress: `listener -> body limit -> verify -> timestamp tolerance
//! -> dedup -> durable enqueue -> 200`, and a deliverer per webhook that
//! drains its queue to the app.
//!
//! The provider gets its 200 only after the event is on disk; a forged,
//! stale or duplicate webhook never reaches the app.

pub mod dedup;
pub mod deliver;
pub mod ordering;
pub mod queue;
pub mod verify;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::watch;
use tokio::time::Instant;

use self::dedup::{DedupStore, MemoryDedup};
use self::deliver::Deliverer;
use self::queue::{EnqueueError, QueueWriter, StoredEvent};
use self::verify::{GenericHmac, WebhookKey};
use crate::config::{IngressConfig, IntegrationConfig, WebhookConfig, WebhookScheme};
use crate::metrics::{Metrics, Name, WebhookLabels, WebhookResultLabels};
use crate::secrets::{Secret, SecretError, SecretStore};

/// One webhook endpoint, ready to receive.
pub struct Endpoint {
    pub integration: Name,
    pub webhook: Name,
    scheme: WebhookScheme,
    generic: Option<GenericHmac>,
    secrets: Vec<(Secret, Option<SystemTime>)>,
    tolerance: Duration,
    id_pointer: Option<String>,
    dedup_ttl: Duration,
    dedup: Arc<dyn DedupStore>,
    pub queue: QueueWriter,
    pub queue_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("integration {integration}, webhook {webhook}: {source}")]
    Secret {
        integration: String,
        webhook: String,
        source: SecretError,
    },
    #[error("webhook state directory {dir}: {source}")]
    State {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("integration {integration}, webhook {webhook}: forwardTo {url:?} is not a URL")]
    ForwardTo {
        integration: String,
        webhook: String,
        url: String,
    },
    #[error("webhook path {0:?} is used twice")]
    DuplicatePath(String),
}

/// All webhook endpoints of the sidecar, by path.
pub struct Ingress {
    routes: HashMap<String, Arc<Endpoint>>,
    max_body_bytes: u64,
    metrics: Metrics,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Where one webhook's queue lives under the state directory.
pub fn queue_dir(state_dir: &Path, integration: &str, webhook: &str) -> PathBuf {
    state_dir
        .join("webhooks")
        .join(format!("{integration}.{webhook}"))
}

impl Ingress {
    /// The service of the ingress port.
    pub fn service(
        self: Arc<Self>,
    ) -> impl tower::Service<
        Request<Incoming>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
    > + Clone
    + Send
    + 'static {
        let ingress = self;
        tower::service_fn(move |request: Request<Incoming>| {
            let ingress = ingress.clone();
            async move { Ok::<_, Infallible>(ingress.handle(request).await) }
        })
    }

    /// Opens every webhook's queue (recovering what a crash left) and spawns
    /// its deliverer. Returns `None` when no integration has webhooks.
    pub fn start(
        config: &IngressConfig,
        integrations: &[IntegrationConfig],
        secrets: &SecretStore,
        metrics: &Metrics,
        stop: watch::Receiver<bool>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Result<Option<Arc<Ingress>>, IngressError> {
        let mut routes = HashMap::new();
        for integration in integrations {
            for webhook in &integration.webhooks {
                let endpoint = open_endpoint(
                    config,
                    integration,
                    webhook,
                    secrets,
                    metrics,
                    stop.clone(),
                    tasks,
                )?;
                if routes
                    .insert(webhook.path.clone(), Arc::new(endpoint))
                    .is_some()
                {
                    return Err(IngressError::DuplicatePath(webhook.path.clone()));
                }
            }
        }
        if routes.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Ingress {
            routes,
            max_body_bytes: config.max_body_bytes,
            metrics: metrics.clone(),
        })))
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.routes.values()
    }

    fn count(&self, endpoint: &Endpoint, result: &'static str) {
        self.metrics
            .webhook_received
            .get_or_create(&WebhookResultLabels {
                integration: endpoint.integration.clone(),
                webhook: endpoint.webhook.clone(),
                result,
            })
            .inc();
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let Some(endpoint) = self.routes.get(request.uri().path()).cloned() else {
            return reply(
                StatusCode::NOT_FOUND,
                "no webhook is configured at this path",
                None,
            );
        };
        if request.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "webhooks are POSTed", None);
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes) {
            self.count(&endpoint, "too_large");
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the webhook body is too large",
                None,
            );
        }
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, self.max_body_bytes as usize)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                if error
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    self.count(&endpoint, "too_large");
                    return reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the webhook body is too large",
                        None,
                    );
                }
                return reply(
                    StatusCode::BAD_REQUEST,
                    "the webhook body could not be read",
                    None,
                );
            }
        };
        let now = SystemTime::now();
        let values: Vec<_> = endpoint
            .secrets
            .iter()
            .filter(|(_, not_after)| not_after.is_none_or(|t| now < t))
            .map(|(secret, _)| secret.current())
            .collect();
        let keys: Vec<WebhookKey<'_>> = values
            .iter()
            .map(|v| WebhookKey { value: v.expose() })
            .collect();
        let verified = match verify::verify(
            endpoint.scheme,
            endpoint.generic.as_ref(),
            &parts.headers,
            &body,
            &keys,
            now,
            endpoint.tolerance,
        ) {
            Ok(verified) => verified,
            Err(error) => {
                self.count(&endpoint, error.result_label());
                tracing::debug!(integration = %endpoint.integration, webhook = %endpoint.webhook, reason = %error, "webhook refused");
                // A generic 400: never tell a forger which check failed (and never 401).
                return reply(StatusCode::BAD_REQUEST, "invalid webhook", None);
            }
        };
        let id = verified
            .event_id
            .or_else(|| id_from_body(&body, endpoint.id_pointer.as_deref()))
            .unwrap_or_else(|| digest_id(&body));
        let now_ms = now_ms();
        let expires = now_ms + endpoint.dedup_ttl.as_millis() as u64;
        if !endpoint.dedup.claim(&id, now_ms, expires) {
            self.count(&endpoint, "duplicate");
            return reply(StatusCode::OK, "duplicate", None);
        }
        let event = StoredEvent {
            seq: 0,
            id: id.clone(),
            received_at_ms: now_ms,
            verified_by: scheme_name(endpoint.scheme).to_owned(),
            headers: StoredEvent::encode_headers(&parts.headers),
            dedup_expires_ms: None,
            body,
        };
        match endpoint.queue.append(event, Some(expires)).await {
            Ok(_) => {
                self.count(&endpoint, "verified");
                self.metrics
                    .webhook_ack_duration
                    .get_or_create(&WebhookLabels {
                        integration: endpoint.integration.clone(),
                        webhook: endpoint.webhook.clone(),
                    })
                    .observe(started.elapsed().as_secs_f64());
                reply(StatusCode::OK, "accepted", None)
            }
            Err(error) => {
                endpoint.dedup.release(&id);
                let (result, retry) = match error {
                    EnqueueError::Full(_) => ("queue_full", 30),
                    _ => ("error", 5),
                };
                self.count(&endpoint, result);
                tracing::warn!(integration = %endpoint.integration, webhook = %endpoint.webhook, %error, "webhook not accepted; the provider will retry");
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "try again later",
                    Some(retry),
                )
            }
        }
    }
}

fn open_endpoint(
    config: &IngressConfig,
    integration: &IntegrationConfig,
    webhook: &WebhookConfig,
    secrets: &SecretStore,
    metrics: &Metrics,
    stop: watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<Endpoint, IngressError> {
    let name: Name = Arc::from(integration.name.as_str());
    let webhook_name: Name = Arc::from(webhook.name.as_str());
    let secret_error = |source| IngressError::Secret {
        integration: integration.name.clone(),
        webhook: webhook.name.clone(),
        source,
    };
    let loaded = webhook
        .verify
        .secrets
        .iter()
        .map(|s| {
            Ok((
                secrets.load(s.secret.path(), &name).map_err(secret_error)?,
                s.not_after.map(|t| t.to_system_time()),
            ))
        })
        .collect::<Result<Vec<_>, IngressError>>()?;
    let forward_to: http::Uri =
        webhook
            .forward_to
            .parse()
            .map_err(|_| IngressError::ForwardTo {
                integration: integration.name.clone(),
                webhook: webhook.name.clone(),
                url: webhook.forward_to.clone(),
            })?;
    let dir = queue_dir(&config.state_dir, &integration.name, &webhook.name);
    let labels = WebhookLabels {
        integration: name.clone(),
        webhook: webhook_name.clone(),
    };
    let (writer, reader, recovered) = queue::open(
        &dir,
        config.max_queue_bytes,
        now_ms(),
        queue::QueueMetrics {
            fsyncs: metrics.webhook_fsyncs.get_or_create(&labels).clone(),
            depth: metrics.webhook_queue_depth.get_or_create(&labels).clone(),
        },
    )
    .map_err(|source| IngressError::State {
        dir: dir.clone(),
        source,
    })?;
    if recovered.pending > 0 {
        tracing::info!(integration = %name, webhook = %webhook_name, pending = recovered.pending, "resuming delivery of accepted webhooks");
    }
    let client = crate::egress::client::build_client(None, webhook.delivery.timeout.get())
        .expect("a client without extra CA certificates always builds");
    let deliverer = Deliverer {
        integration: name.clone(),
        webhook: webhook_name.clone(),
        forward_to,
        config: webhook.delivery.clone(),
        ordering: webhook.ordering.clone(),
        client,
        metrics: metrics.clone(),
    };
    tasks.spawn(deliverer.run(reader, stop));
    let generic = (webhook.verify.scheme == WebhookScheme::HmacSha256).then(|| GenericHmac {
        header: webhook
            .verify
            .header
            .clone()
            .unwrap_or_else(|| "x-signature".into())
            .to_ascii_lowercase(),
        encoding: webhook.verify.encoding,
        prefix: webhook.verify.prefix.clone().unwrap_or_default(),
    });
    Ok(Endpoint {
        integration: name,
        webhook: webhook_name,
        scheme: webhook.verify.scheme,
        generic,
        secrets: loaded,
        tolerance: webhook.verify.tolerance.get(),
        id_pointer: webhook.id_pointer.clone(),
        dedup_ttl: webhook.dedup.ttl.get(),
        dedup: Arc::new(MemoryDedup::new(recovered.dedup)),
        queue: writer,
        queue_dir: dir,
    })
}

pub fn scheme_name(scheme: WebhookScheme) -> &'static str {
    match scheme {
        WebhookScheme::StandardWebhooks => "StandardWebhooks",
        WebhookScheme::Stripe => "Stripe",
        WebhookScheme::GitHub => "GitHub",
        WebhookScheme::Shopify => "Shopify",
        WebhookScheme::Slack => "Slack",
        WebhookScheme::Razorpay => "Razorpay",
        WebhookScheme::HmacSha256 => "HmacSha256",
    }
}

fn id_from_body(body: &[u8], pointer: Option<&str>) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    match json.pointer(pointer?)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// With no id anywhere, identical bodies are the same event.
fn digest_id(body: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn reply(
    status: StatusCode,
    message: &'static str,
    retry_after: Option<u64>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!(
        "{{\"status\":\"{message}\"}}\n"
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    response
}
