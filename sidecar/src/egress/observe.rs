//! The edge of the egress pipeline: routes each app request, gives it an id
//! and a deadline, turns Sluice's own errors into responses, and records the
//! request's metrics and log line.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::Layer;

use super::body::ProxyBody;
use super::error::{ERROR_HEADER, ProxyError};
use super::route::{PRIORITY_HEADER, Priority, RequestContext, Router};
use super::step::Next;
use crate::metrics::{Metrics, Name, RequestLabels};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone)]
pub struct ObserveLayer {
    router: Arc<Router>,
    integration: Name,
    metrics: Metrics,
}

impl ObserveLayer {
    pub fn new(router: Arc<Router>, integration: Name, metrics: Metrics) -> Self {
        Self {
            router,
            integration,
            metrics,
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ObserveService {
            inner: Arc::new(inner),
            layer: self.clone(),
        }
    }
}

/// The pipeline with its edge: what an egress listener serves.
pub struct ObserveService<S> {
    inner: Arc<S>,
    layer: ObserveLayer,
}

/// The app's request id when it sent a usable one (shared, not copied),
/// else 16 random hex digits.
fn request_id(request: &Request<Incoming>) -> HeaderValue {
    match request
        .headers()
        .get(REQUEST_ID_HEADER)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.to_str().is_ok())
    {
        Some(id) => id.clone(),
        None => {
            let mut hex = [0u8; 16];
            let mut n = fastrand::u64(..);
            for digit in hex.iter_mut().rev() {
                *digit = b"0123456789abcdef"[(n & 0xf) as usize];
                n >>= 4;
            }
            HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value")
        }
    }
}

/// A request id for log lines.
pub fn id_str(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

/// What the outcome label says about a response.
fn outcome(response: &Response<ProxyBody>, error: Option<&'static str>) -> &'static str {
    if let Some(code) = error {
        return code;
    }
    if response.headers().contains_key(super::cache::CACHE_HEADER) {
        return "cache_hit";
    }
    match response.status().as_u16() {
        100..=399 => "success",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

impl<S: Next> super::Handle for ObserveService<S> {
    fn handle(
        &self,
        request: Request<Incoming>,
    ) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> {
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        Box::pin(async move {
            let started = Instant::now();
            let id = request_id(&request);
            let method = request.method().clone();
            let route = layer.router.route(&method, request.uri().path());
            let (mut parts, body) = request.into_parts();
            let result = match admit(&parts.method, &parts.headers) {
                Ok(priority) => {
                    parts.headers.remove(PRIORITY_HEADER);
                    let ctx = RequestContext {
                        request_id: id.clone(),
                        route: route.clone(),
                        priority,
                        started,
                        deadline: started + route.total_timeout,
                    };
                    inner
                        .call(Request::from_parts(parts, ProxyBody::Incoming(body)), &ctx)
                        .await
                }
                Err(reason) => Err(ProxyError::BadRequest(reason)),
            };
            let (mut response, error) = match result {
                Ok(response) => (response, None),
                Err(error) => {
                    let code = error.code();
                    if matches!(error, ProxyError::BadRequest(_)) {
                        tracing::debug!(request_id = id_str(&id), error = %error, "bad request from the app");
                    } else {
                        tracing::warn!(request_id = id_str(&id), integration = %layer.integration, endpoint = %route.endpoint, error = %error, "request failed in Sluice");
                    }
                    (error.into_response(), Some(code))
                }
            };
            let elapsed = started.elapsed();
            let status = response.status().as_u16();
            let outcome = outcome(&response, error);
            let series = &route.series;
            series.count_request(&layer.metrics, status, outcome, || RequestLabels {
                integration: layer.integration.clone(),
                endpoint: route.endpoint.clone(),
                code: status,
                outcome,
            });
            series.duration.observe(elapsed.as_secs_f64());
            // One line per request at debug level: metrics carry the totals,
            // and a log write per request would cost more than the proxying.
            // The path only: queries can carry personal data or keys.
            tracing::debug!(
                request_id = id_str(&id),
                integration = %layer.integration,
                endpoint = %route.endpoint,
                method = %method,
                status,
                outcome,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "egress"
            );
            response.headers_mut().insert(REQUEST_ID_HEADER, id);
            debug_assert!(error.is_none() || response.headers().contains_key(ERROR_HEADER));
            response
        })
    }
}

/// Checks on the app's request before anything is spent on it.
fn admit(method: &Method, headers: &http::HeaderMap) -> Result<Priority, String> {
    if method == Method::CONNECT {
        return Err("CONNECT is not supported: send plain HTTP requests to this port".into());
    }
    if headers.contains_key(http::header::UPGRADE) && !headers.contains_key("http2-settings") {
        return Err("protocol upgrades (header upgrade) are not proxied".into());
    }
    Priority::from_headers(headers)
}
