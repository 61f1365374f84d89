//! The admin port: `/metrics`, `/healthz`, `/readyz`, `/config`, and the
//! webhook dead letters.
//!
//! It serves no secret: the config holds secret file paths, never values.
//! Dead letters hold provider payloads, so `/webhooks/...` answers only
//! requests from loopback (`kubectl exec` or `kubectl port-forward`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::config::SidecarConfig;
pub use crate::dead_letter::DeadLetterSummary;
use crate::ingress::Endpoint;
use crate::ingress::Ingress;
use crate::metrics::Metrics;
use sluice_contract::exposition::Exposition;

/// Readiness: true once every listener is bound and every secret loaded.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The config running now, as `/config` shows it; replaced on every change.
#[derive(Clone)]
pub struct LiveConfig(Arc<std::sync::RwLock<Arc<SidecarConfig>>>);

impl LiveConfig {
    pub fn new(config: SidecarConfig) -> Self {
        Self(Arc::new(std::sync::RwLock::new(Arc::new(config))))
    }
    pub fn get(&self) -> Arc<SidecarConfig> {
        self.0.read().expect("config lock").clone()
    }
    pub fn set(&self, config: SidecarConfig) {
        *self.0.write().expect("config lock") = Arc::new(config);
    }
}

#[derive(Clone)]
pub struct AdminService {
    metrics: Metrics,
    config: LiveConfig,
    ready: Readiness,
    ingress: Arc<Ingress>,
    from_loopback: bool,
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec_pretty(value).expect("admin answers serialize"),
        )))
        .expect("static parts are valid")
}

impl AdminService {
    pub fn new(
        metrics: Metrics,
        config: LiveConfig,
        ready: Readiness,
        ingress: Arc<Ingress>,
    ) -> Self {
        Self {
            metrics,
            config,
            ready,
            ingress,
            from_loopback: false,
        }
    }

    /// The service for one connection.
    pub fn for_peer(&self, peer: SocketAddr) -> Self {
        Self {
            from_loopback: peer.ip().is_loopback(),
            ..self.clone()
        }
    }

    fn endpoint(&self, integration: &str, webhook: &str) -> Option<Arc<Endpoint>> {
        self.ingress
            .endpoints()
            .into_iter()
            .find(|e| &*e.integration == integration && &*e.webhook == webhook)
    }

    async fn dead_letters(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if !self.from_loopback {
            return json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "dead letters are served to loopback only: use kubectl port-forward or exec"}),
            );
        }
        let ingress = &self.ingress;
        if ingress.is_empty() {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "no webhooks are configured"}),
            );
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            (&Method::GET, ["webhooks", "dead-letters"]) => {
                let mut all = Vec::new();
                for endpoint in ingress.endpoints() {
                    match endpoint.store.dead_letters().await {
                        Ok(letters) => all.extend(letters.into_iter().map(|l| {
                            DeadLetterSummary::of(&endpoint.integration, &endpoint.webhook, l)
                        })),
                        Err(error) => {
                            return json(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                &serde_json::json!({"error": error}),
                            );
                        }
                    }
                }
                all.sort_by_key(|l| l.received_at_ms);
                json(StatusCode::OK, &all)
            }
            (method, ["webhooks", "dead-letters", letter @ ..]) if letter.len() >= 3 => {
                // INTEGRATION/WEBHOOK/SEQ[/replay]; in a cluster the
                // integration is NAMESPACE/NAME, so read from the end.
                let (letter, rest): (&[&str], &[&str]) = match letter.split_last() {
                    Some((&"replay", head)) => (head, &["replay"]),
                    _ => (letter, &[]),
                };
                let [integration @ .., webhook, seq] = letter else {
                    return json(
                        StatusCode::NOT_FOUND,
                        &serde_json::json!({"error": "try GET /webhooks/dead-letters/INTEGRATION/WEBHOOK/SEQ"}),
                    );
                };
                let integration = integration.join("/");
                let (webhook, seq) = (*webhook, *seq);
                let Some(endpoint) = self.endpoint(&integration, webhook) else {
                    return json(
                        StatusCode::NOT_FOUND,
                        &serde_json::json!({"error": format!("no webhook {integration}/{webhook}")}),
                    );
                };
                let Ok(seq) = seq.parse::<u64>() else {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": "seq must be a number"}),
                    );
                };
                let letter = match endpoint.store.dead_letter(seq).await {
                    Ok(Some(letter)) => letter,
                    Ok(None) => {
                        return json(
                            StatusCode::NOT_FOUND,
                            &serde_json::json!({"error": format!("no dead letter {seq}")}),
                        );
                    }
                    Err(e) => {
                        return json(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            &serde_json::json!({"error": e}),
                        );
                    }
                };
                match (method, rest) {
                    (&Method::GET, []) => json(StatusCode::OK, &letter),
                    (&Method::POST, ["replay"]) => {
                        // Replays skip de-duplication: the id was already seen.
                        match endpoint.store.replay(seq, letter).await {
                            Ok(()) => {
                                json(StatusCode::ACCEPTED, &serde_json::json!({"replayed": seq}))
                            }
                            Err(e) => json(
                                StatusCode::SERVICE_UNAVAILABLE,
                                &serde_json::json!({"error": e.to_string()}),
                            ),
                        }
                    }
                    _ => json(
                        StatusCode::METHOD_NOT_ALLOWED,
                        &serde_json::json!({"error": "GET a dead letter, or POST .../replay"}),
                    ),
                }
            }
            _ => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "try GET /webhooks/dead-letters"}),
            ),
        }
    }

    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, content_type: &'static str, body: String| {
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, content_type)
                .body(Full::new(Bytes::from(body)))
                .expect("static parts are valid")
        };
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "use GET\n".into(),
            );
        }
        match request.uri().path() {
            "/metrics" => {
                let format = Exposition::negotiate(
                    request.headers().get(header::ACCEPT).map(|v| v.as_bytes()),
                );
                text(
                    StatusCode::OK,
                    format.content_type(),
                    self.metrics.encode(format),
                )
            }
            "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" if self.ready.get() => text(StatusCode::OK, "text/plain", "ready\n".into()),
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready\n".into(),
            ),
            "/config" => text(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&*self.config.get()).expect("config serializes")
                    + "\n",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /metrics, /healthz, /readyz or /config\n".into(),
            ),
        }
    }
}

impl tower::Service<Request<Incoming>> for AdminService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        if request.uri().path().starts_with("/webhooks/") {
            let this = self.clone();
            return Box::pin(async move {
                Ok(this
                    .dead_letters(request.method(), request.uri().path())
                    .await)
            });
        }
        let response = self.respond(&request);
        Box::pin(async move { Ok(response) })
    }
}
