//! The edge of the egress pipeline: routes each app request, gives it an id
//! and a deadline, turns Sluice's own errors into responses, and records the
//! request's metrics and log line.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderValue;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::body::ProxyBody;
use super::error::{ERROR_HEADER, ProxyError};
use super::route::{PRIORITY_HEADER, Priority, RequestContext, Router};
use crate::metrics::{EndpointLabels, Metrics, Name, RequestLabels};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

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
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ObserveService<S> {
    inner: S,
    layer: ObserveLayer,
}

fn request_id(request: &Request<Incoming>) -> Arc<str> {
    match request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
    {
        Some(id) => Arc::from(id),
        None => Arc::from(format!("{:016x}", fastrand::u64(..)).as_str()),
    }
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

impl<S> Service<Request<Incoming>> for ObserveService<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Inner layers never apply backpressure through readiness; the rate
        // limiter queues inside `call`, where it knows the request.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let started = Instant::now();
            let id = request_id(&request);
            let method = request.method().clone();
            let route = Arc::new(layer.router.route(&method, request.uri().path()));
            let (mut parts, body) = request.into_parts();
            let result = match admit(&parts.method, &parts.headers) {
                Ok(priority) => {
                    parts.headers.remove(PRIORITY_HEADER);
                    parts.extensions.insert(RequestContext {
                        request_id: id.clone(),
                        route: route.clone(),
                        priority,
                        started,
                        deadline: started + route.total_timeout,
                    });
                    inner
                        .call(Request::from_parts(parts, ProxyBody::Incoming(body)))
                        .await
                }
                Err(reason) => Err(ProxyError::BadRequest(reason)),
            };
            let (mut response, error) = match result {
                Ok(response) => (response, None),
                Err(error) => {
                    let code = error.code();
                    if matches!(error, ProxyError::BadRequest(_)) {
                        tracing::debug!(request_id = %id, error = %error, "bad request from the app");
                    } else {
                        tracing::warn!(request_id = %id, integration = %layer.integration, endpoint = %route.endpoint, error = %error, "request failed in Sluice");
                    }
                    (error.into_response(), Some(code))
                }
            };
            let elapsed = started.elapsed();
            let status = response.status().as_u16();
            let outcome = outcome(&response, error);
            layer
                .metrics
                .requests
                .get_or_create(&RequestLabels {
                    integration: layer.integration.clone(),
                    endpoint: route.endpoint.clone(),
                    code: status,
                    outcome,
                })
                .inc();
            layer
                .metrics
                .request_duration
                .get_or_create(&EndpointLabels {
                    integration: layer.integration.clone(),
                    endpoint: route.endpoint.clone(),
                })
                .observe(elapsed.as_secs_f64());
            // One line per request at debug level: metrics carry the totals,
            // and a log write per request would cost more than the proxying.
            // The path only: queries can carry personal data or keys.
            tracing::debug!(
                request_id = %id,
                integration = %layer.integration,
                endpoint = %route.endpoint,
                method = %method,
                status,
                outcome,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "egress"
            );
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            debug_assert!(error.is_none() || response.headers().contains_key(ERROR_HEADER));
            Ok(response)
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
