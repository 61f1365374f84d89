//! The admin port: `/metrics`, `/healthz`, `/readyz` and `/config`.
//!
//! It serves no secret: the config holds secret file paths, never values.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::config::SidecarConfig;
use crate::metrics::Metrics;

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

#[derive(Clone)]
pub struct AdminService {
    metrics: Metrics,
    config: Arc<SidecarConfig>,
    ready: Readiness,
}

impl AdminService {
    pub fn new(metrics: Metrics, config: Arc<SidecarConfig>, ready: Readiness) -> Self {
        Self {
            metrics,
            config,
            ready,
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
            "/metrics" => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
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
                serde_json::to_string_pretty(&*self.config).expect("config serializes") + "\n",
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
        let response = self.respond(&request);
        Box::pin(async move { Ok(response) })
    }
}
