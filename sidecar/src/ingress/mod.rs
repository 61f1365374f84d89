//! Webhook ingress: `listener -> body limit -> verify -> timestamp tolerance
//! -> dedup -> durable enqueue -> 200`, and a deliverer per webhook that
//! drains its queue to the app.
//!
//! The provider gets its 200 only after the event is on disk; a forged,
//! stale or duplicate webhook never reaches the app.

pub mod dedup;
pub mod deliver;
pub mod intake;
pub mod ordering;
pub mod poll;
pub mod queue;
pub mod source;
pub mod store;
pub mod verify;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use self::dedup::{DedupStore, MemoryDedup};
use self::deliver::Deliverer;
use self::intake::{Intake, IntakeError, IntakeLimits};
use self::poll::Poller;
use self::poll::mark::MarkStore;
use self::queue::{QueueWriter, StoredEvent};
use self::source::{LocalSource, SharedSource};
use self::store::{Outcome, StoreError, WebhookStore};
use self::verify::{GenericHmac, WebhookKey};
use crate::config::{
    DeliveryConfig, IngressConfig, IntegrationConfig, OrderingConfig, PollingConfig, WebhookConfig,
    WebhookScheme,
};
use crate::egress::EgressService;
use crate::metrics::{Metrics, Name, Received, ReceivedLabels, WebhookLabels};
use crate::secrets::{Secret, SecretError, SecretStore};
use crate::shared::SharedState;
use crate::shared::webhooks::SharedWebhook;

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
    /// Accepted events and dead letters: the pod's queue or the shared state.
    pub store: WebhookStore,
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
    #[error("webhook path {0:?} is used twice")]
    DuplicatePath(String),
}

/// All webhook endpoints of the sidecar, by path; reconfigured live.
pub struct Ingress {
    routes: RwLock<Arc<HashMap<String, Arc<Endpoint>>>>,
    /// Every queue opened since start, by `integration.webhook`. A queue
    /// outlives its webhook's removal from the config: what was accepted is
    /// still delivered.
    queues: tokio::sync::Mutex<HashMap<String, OpenQueue>>,
    config: IngressConfig,
    /// What unsigned senders can hold while their bodies are read.
    intake: Intake,
    secrets: SecretStore,
    metrics: Metrics,
    tasks: TaskTracker,
    shared: Option<SharedState>,
}

/// One webhook's durable queue and the deliverer draining it; with shared
/// state, also the deliverer of the shared stream (the pod's queue then
/// takes no new events and drains what it held before).
struct OpenQueue {
    writer: QueueWriter,
    dedup: Arc<dyn DedupStore>,
    dir: PathBuf,
    delivery: DeliverySettings,
    stop_deliverer: watch::Sender<bool>,
    deliverer: tokio::task::JoinHandle<LocalSource>,
    shared: Option<SharedDelivery>,
    poller: Option<RunningPoller>,
}

/// A webhook's poller and what it was started with; a change restarts it.
struct RunningPoller {
    polling: PollingConfig,
    dedup_ttl: Duration,
    egress: EgressService,
    stop: watch::Sender<bool>,
}

impl Drop for RunningPoller {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct SharedDelivery {
    webhook: SharedWebhook,
    stop: watch::Sender<bool>,
    deliverer: tokio::task::JoinHandle<SharedSource>,
}

/// What a deliverer is started with; a change restarts it.
#[derive(Clone, PartialEq)]
struct DeliverySettings {
    forward_to: http::Uri,
    delivery: DeliveryConfig,
    ordering: Option<OrderingConfig>,
    /// How long the shared ordering guard remembers an object: as long as
    /// an id counts for de-duplication.
    remember: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

pub use crate::layout::queue_dir;

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

    /// An ingress with no webhooks yet; [`Ingress::reconfigure`] adds them.
    pub fn new(
        config: &IngressConfig,
        secrets: &SecretStore,
        metrics: &Metrics,
        tasks: TaskTracker,
        shared: Option<SharedState>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared,
            routes: RwLock::default(),
            queues: tokio::sync::Mutex::default(),
            config: config.clone(),
            intake: Intake::new(
                IntakeLimits {
                    max_body: config.max_body_bytes,
                    budget: config.max_unverified_bytes,
                    timeout: config.body_timeout.get(),
                    min_rate: config.min_body_bytes_per_second,
                },
                metrics.webhook_unverified_bytes.clone(),
            ),
            secrets: secrets.clone(),
            metrics: metrics.clone(),
            tasks,
        })
    }

    /// Makes the webhooks of `integrations` the ones served. New webhooks'
    /// queues are opened (recovering what a crash left) and their deliverers
    /// started; a webhook whose delivery settings changed gets a new
    /// deliverer that carries on where the old one stopped. A webhook with
    /// `polling` gets a poller that lists through `egress(integration)`.
    /// All or nothing: on an error the webhooks served before stay as they
    /// were.
    pub async fn reconfigure(
        &self,
        integrations: &[IntegrationConfig],
        egress: &(dyn Fn(&str) -> Option<EgressService> + Sync),
    ) -> Result<(), IngressError> {
        let mut queues = self.queues.lock().await;
        let mut routes = HashMap::new();
        let mut restarts = Vec::new();
        let mut polled = Vec::new();
        for integration in integrations {
            for webhook in &integration.webhooks {
                let key = format!("{}.{}", integration.name, webhook.name);
                let settings = DeliverySettings {
                    forward_to: webhook.forward_to.uri().clone(),
                    delivery: webhook.delivery.clone(),
                    ordering: webhook.ordering.clone(),
                    remember: webhook.dedup.ttl.get(),
                };
                if !queues.contains_key(&key) {
                    let queue = self.open_queue(integration, webhook, settings.clone())?;
                    queues.insert(key.clone(), queue);
                } else if queues[&key].delivery != settings {
                    restarts.push((key.clone(), settings));
                }
                let endpoint = self.endpoint(integration, webhook, &queues[&key])?;
                polled.push((key.clone(), integration.name.clone(), webhook.clone()));
                if routes
                    .insert(webhook.path.clone(), Arc::new(endpoint))
                    .is_some()
                {
                    return Err(IngressError::DuplicatePath(webhook.path.clone()));
                }
            }
        }
        for (key, settings) in restarts {
            let queue = queues.get_mut(&key).expect("restarted queues are open");
            let _ = queue.stop_deliverer.send(true);
            let reader = (&mut queue.deliverer)
                .await
                .expect("a deliverer does not panic")
                .reader;
            let (integration, webhook) = key.split_once('.').expect("keys are integration.webhook");
            let (stop, deliverer) = self.spawn_deliverer(
                integration,
                webhook,
                &settings,
                LocalSource::new(reader, settings.ordering.clone()),
            );
            queue.stop_deliverer = stop;
            queue.deliverer = deliverer;
            if let Some(shared) = queue.shared.as_mut() {
                let _ = shared.stop.send(true);
                let _ = (&mut shared.deliverer).await;
                let source = self.shared_source(integration, webhook, &shared.webhook, &settings);
                let (stop, deliverer) =
                    self.spawn_deliverer(integration, webhook, &settings, source);
                shared.stop = stop;
                shared.deliverer = deliverer;
            }
            queue.delivery = settings;
            tracing::info!(%integration, %webhook, "webhook delivery settings changed; deliverer restarted");
        }
        self.repoll(&mut queues, &polled, egress);
        *self.routes.write().expect("routes lock") = Arc::new(routes);
        Ok(())
    }

    /// Starts, restarts or stops pollers so that exactly the `webhooks`
    /// (by queue key) with `polling` have one, started with their settings.
    fn repoll(
        &self,
        queues: &mut HashMap<String, OpenQueue>,
        webhooks: &[(String, String, WebhookConfig)],
        egress: &(dyn Fn(&str) -> Option<EgressService> + Sync),
    ) {
        let mut wanted = std::collections::HashSet::new();
        for (key, integration, webhook) in webhooks {
            let (Some(polling), Some(egress)) = (&webhook.polling, egress(integration)) else {
                continue;
            };
            wanted.insert(key.clone());
            let queue = queues
                .get_mut(key)
                .expect("every served webhook's queue is open");
            let same = queue.poller.as_ref().is_some_and(|p| {
                p.polling == *polling
                    && p.dedup_ttl == webhook.dedup.ttl.get()
                    && Arc::ptr_eq(&p.egress, &egress)
            });
            if same {
                continue;
            }
            let marks = match (&self.shared, &queue.shared) {
                (Some(state), Some(_)) => MarkStore::Shared {
                    state: state.clone(),
                    poll: crate::shared::polls::SharedPoll::new(integration, &webhook.name),
                },
                _ => MarkStore::Local(crate::layout::poll_file(
                    &self.config.state_dir,
                    integration,
                    &webhook.name,
                )),
            };
            let poller = Poller {
                integration: Arc::from(integration.as_str()),
                webhook: Arc::from(webhook.name.as_str()),
                polling: polling.clone(),
                dedup_ttl: webhook.dedup.ttl.get(),
                egress: egress.clone(),
                store: self.store_of(queue),
                marks,
                metrics: self.metrics.clone(),
            };
            let (stop, stopped) = watch::channel(false);
            self.tasks.spawn(poller.run(stopped));
            // Replacing the old one stops it (its Drop).
            queue.poller = Some(RunningPoller {
                polling: polling.clone(),
                dedup_ttl: webhook.dedup.ttl.get(),
                egress,
                stop,
            });
        }
        for (key, queue) in queues.iter_mut() {
            if !wanted.contains(key) {
                queue.poller = None;
            }
        }
    }

    /// Whether any webhook is served.
    pub fn is_empty(&self) -> bool {
        self.routes.read().expect("routes lock").is_empty()
    }

    /// Stops every deliverer and poller (the queues keep what they did not deliver).
    pub async fn stop(&self) {
        for queue in self.queues.lock().await.values_mut() {
            queue.poller = None;
            let _ = queue.stop_deliverer.send(true);
            if let Some(shared) = &queue.shared {
                let _ = shared.stop.send(true);
            }
        }
    }

    fn shared_source(
        &self,
        integration: &str,
        webhook: &str,
        shared: &SharedWebhook,
        settings: &DeliverySettings,
    ) -> SharedSource {
        SharedSource::new(
            shared.clone(),
            settings.ordering.clone(),
            settings.remember,
            self.metrics
                .webhook_takeovers
                .get_or_create(&WebhookLabels {
                    integration: Arc::from(integration),
                    webhook: Arc::from(webhook),
                })
                .clone(),
        )
    }

    fn spawn_deliverer<S: source::Source + 'static>(
        &self,
        integration: &str,
        webhook: &str,
        settings: &DeliverySettings,
        source: S,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<S>) {
        let client =
            crate::egress::client::UpstreamClient::new(None, settings.delivery.timeout.get())
                .expect("a client without extra CA certificates always builds");
        let deliverer = Deliverer {
            integration: Arc::from(integration),
            webhook: Arc::from(webhook),
            forward_to: settings.forward_to.clone(),
            config: settings.delivery.clone(),
            client,
            metrics: self.metrics.clone(),
        };
        let (stop, stopped) = watch::channel(false);
        (stop, self.tasks.spawn(deliverer.run(source, stopped)))
    }

    fn open_queue(
        &self,
        integration: &IntegrationConfig,
        webhook: &WebhookConfig,
        delivery: DeliverySettings,
    ) -> Result<OpenQueue, IngressError> {
        let dir = queue_dir(&self.config.state_dir, &integration.name, &webhook.name);
        let labels = WebhookLabels {
            integration: Arc::from(integration.name.as_str()),
            webhook: Arc::from(webhook.name.as_str()),
        };
        let (writer, reader, recovered) = queue::open(
            &dir,
            self.config.max_queue_bytes,
            now_ms(),
            queue::QueueMetrics {
                fsyncs: self.metrics.webhook_fsyncs.get_or_create(&labels).clone(),
                depth: self
                    .metrics
                    .webhook_queue_depth
                    .get_or_create(&labels)
                    .clone(),
            },
        )
        .map_err(|source| IngressError::State {
            dir: dir.clone(),
            source,
        })?;
        if recovered.pending > 0 {
            tracing::info!(integration = %integration.name, webhook = %webhook.name, pending = recovered.pending, "resuming delivery of accepted webhooks");
        }
        let (stop_deliverer, deliverer) = self.spawn_deliverer(
            &integration.name,
            &webhook.name,
            &delivery,
            LocalSource::new(reader, delivery.ordering.clone()),
        );
        let shared = self.shared.as_ref().map(|state| {
            let shared = SharedWebhook::new(state.clone(), &integration.name, &webhook.name);
            let source = self.shared_source(&integration.name, &webhook.name, &shared, &delivery);
            let (stop, deliverer) =
                self.spawn_deliverer(&integration.name, &webhook.name, &delivery, source);
            SharedDelivery {
                webhook: shared,
                stop,
                deliverer,
            }
        });
        Ok(OpenQueue {
            writer,
            dedup: Arc::new(MemoryDedup::new(recovered.dedup)),
            dir,
            delivery,
            stop_deliverer,
            deliverer,
            shared,
            poller: None,
        })
    }

    /// The receiving side of one webhook: its verification settings and secrets.
    fn endpoint(
        &self,
        integration: &IntegrationConfig,
        webhook: &WebhookConfig,
        queue: &OpenQueue,
    ) -> Result<Endpoint, IngressError> {
        let name: Name = Arc::from(integration.name.as_str());
        self.metrics
            .webhook_series(&name, &Arc::from(webhook.name.as_str()));
        let loaded = webhook
            .verify
            .secrets
            .iter()
            .map(|s| {
                Ok((
                    self.secrets
                        .load(s.secret.path(), &name)
                        .map_err(|source| IngressError::Secret {
                            integration: integration.name.clone(),
                            webhook: webhook.name.clone(),
                            source,
                        })?,
                    s.not_after.map(|t| t.to_system_time()),
                ))
            })
            .collect::<Result<Vec<_>, IngressError>>()?;
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
            webhook: Arc::from(webhook.name.as_str()),
            scheme: webhook.verify.scheme,
            generic,
            secrets: loaded,
            tolerance: webhook.verify.tolerance.get(),
            id_pointer: webhook.id_pointer.clone(),
            dedup_ttl: webhook.dedup.ttl.get(),
            store: self.store_of(queue),
        })
    }

    /// Where a webhook's accepted events go: the shared stream when there
    /// is one, else the pod's queue.
    fn store_of(&self, queue: &OpenQueue) -> WebhookStore {
        match &queue.shared {
            Some(shared) => WebhookStore::Shared {
                webhook: shared.webhook.clone(),
                bound: self.config.max_queue_bytes,
            },
            None => WebhookStore::Local {
                dedup: queue.dedup.clone(),
                queue: queue.writer.clone(),
                dir: queue.dir.clone(),
            },
        }
    }

    /// The webhooks served now.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.routes
            .read()
            .expect("routes lock")
            .values()
            .cloned()
            .collect()
    }

    fn count(&self, endpoint: &Endpoint, result: Received) {
        self.metrics
            .webhook_received
            .get_or_create(&ReceivedLabels {
                integration: endpoint.integration.clone(),
                webhook: endpoint.webhook.clone(),
                result,
            })
            .inc();
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let endpoint = self
            .routes
            .read()
            .expect("routes lock")
            .get(request.uri().path())
            .cloned();
        let Some(endpoint) = endpoint else {
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
        let (parts, body) = request.into_parts();
        let unverified = match self.intake.read(body, declared, started).await {
            Ok(unverified) => unverified,
            Err(error) => {
                self.count(&endpoint, error.result_label());
                tracing::debug!(integration = %endpoint.integration, webhook = %endpoint.webhook, reason = %error, "webhook body refused");
                return refusal(&error);
            }
        };
        let body = unverified.bytes.clone();
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
        let event = StoredEvent {
            seq: 0,
            id: id.clone(),
            received_at_ms: now_ms,
            verified_by: scheme_name(endpoint.scheme).to_owned(),
            headers: StoredEvent::encode_headers(&parts.headers),
            dedup_expires_ms: None,
            body,
        };
        match endpoint
            .store
            .accept(event, now_ms, endpoint.dedup_ttl)
            .await
        {
            Ok(Outcome::Stored) => {
                self.count(&endpoint, Received::Verified);
                self.metrics
                    .webhook_ack_duration
                    .get_or_create(&WebhookLabels {
                        integration: endpoint.integration.clone(),
                        webhook: endpoint.webhook.clone(),
                    })
                    .observe(started.elapsed().as_secs_f64());
                reply(StatusCode::OK, "accepted", None)
            }
            Ok(Outcome::Duplicate) => {
                self.count(&endpoint, Received::Duplicate);
                reply(StatusCode::OK, "duplicate", None)
            }
            Err(error) => {
                let (result, retry) = match error {
                    StoreError::Full => (Received::QueueFull, 30),
                    StoreError::Unavailable(_) => (Received::Error, 5),
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

/// The answer to a body that was not read whole. The connection closes:
/// what is left of the body is not worth reading.
fn refusal(error: &IntakeError) -> Response<Full<Bytes>> {
    let mut response = match error {
        IntakeError::TooLarge(_) => reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the webhook body is too large",
            None,
        ),
        IntakeError::Busy => reply(StatusCode::SERVICE_UNAVAILABLE, "try again later", Some(1)),
        IntakeError::TooSlow => reply(
            StatusCode::REQUEST_TIMEOUT,
            "the webhook body did not arrive in time",
            None,
        ),
        IntakeError::Unreadable => reply(
            StatusCode::BAD_REQUEST,
            "the webhook body could not be read",
            None,
        ),
    };
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
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
