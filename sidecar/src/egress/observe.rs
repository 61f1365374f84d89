//! The edge of the egress pipeline: routes each app request, gives it an id
//! and a deadline, turns Sluice's own errors into responses, and records the
//! request's metrics and log line.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use tokio::time::Instant;
use tower::Layer;

use super::body::{BodyEnd, OnBodyEnd, ProxyBody};
use super::client::strip_hop_by_hop;
use super::error::{ERROR_HEADER, ProxyError};
use super::replay::Replay;
use super::route::{PRIORITY_HEADER, Priority, RequestContext, Route, Router};
use super::step::Next;
use crate::metrics::{Metrics, Name, RequestLabels};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone)]
pub struct ObserveLayer {
    router: Arc<Router>,
    integration: Name,
    metrics: Metrics,
    warnings: Arc<WarnThrottle>,
}

/// At most one warning per error code a second: an outage must not become a
/// log storm (the metrics count every failure).
#[derive(Default)]
struct WarnThrottle {
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl WarnThrottle {
    const EVERY: Duration = Duration::from_secs(1);

    /// `Some(similar failures not logged since the last line)` when a line
    /// for `code` may be written at `now`.
    fn permit(&self, code: &'static str, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().expect("warn throttle lock poisoned");
        match last.get_mut(code) {
            Some((at, suppressed)) if now < *at + Self::EVERY => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                last.insert(code, (now, 0));
                Some(0)
            }
        }
    }
}

impl ObserveLayer {
    pub fn new(router: Arc<Router>, integration: Name, metrics: Metrics) -> Self {
        Self {
            router,
            integration,
            metrics,
            warnings: Arc::default(),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ObserveService(Arc::new(Edge {
            inner,
            layer: self.clone(),
        }))
    }
}

/// The pipeline with its edge: what an egress listener serves. Shared by
/// one `Arc`, so a request takes one reference, not one per part.
pub struct ObserveService<S>(Arc<Edge<S>>);

struct Edge<S> {
    inner: S,
    layer: ObserveLayer,
}

/// The app's request id when it sent a usable one (shared, not copied),
/// else 16 random hex digits.
fn request_id(request: &Request<ProxyBody>) -> HeaderValue {
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
        request: Request<ProxyBody>,
    ) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> {
        let edge = self.0.clone();
        Box::pin(async move {
            let layer = &edge.layer;
            let started = Instant::now();
            let id = request_id(&request);
            let method = request.method().clone();
            let route = layer.router.route(&method, request.uri().path());
            let (mut parts, body) = request.into_parts();
            let mut added_key = None;
            let (result, id) = match admit(&parts.method, &parts.uri, &parts.headers) {
                Ok(priority) => {
                    parts.headers.remove(PRIORITY_HEADER);
                    // Before any step adds a field (the credential, an
                    // idempotency key): `Connection: <name>` from the app
                    // must not remove what Sluice adds.
                    strip_hop_by_hop(&mut parts.headers);
                    // The id moves in and back out: a generated one is not
                    // shared, so a clone would copy it.
                    let ctx = RequestContext {
                        request_id: id,
                        route: route.clone(),
                        priority,
                        deadline: started + route.total_timeout,
                        replay: Replay::default(),
                        added_idempotency_key: Default::default(),
                        sends: Default::default(),
                    };
                    let result = edge
                        .inner
                        .call(Request::from_parts(parts, body), &ctx)
                        .await;
                    added_key = ctx.added_idempotency_key.into_inner();
                    (result, ctx.request_id)
                }
                Err(reason) => (Err(ProxyError::BadRequest(reason)), id),
            };
            let (mut response, error) = match result {
                Ok(response) => (response, None),
                Err(error) => {
                    let code = error.code();
                    match &error {
                        // The app's mistake, or Sluice protecting the provider
                        // as configured: counted in the metrics, not warned about.
                        ProxyError::BadRequest(_)
                        | ProxyError::RateLimited { .. }
                        | ProxyError::QueueFull { .. }
                        | ProxyError::CircuitOpen { .. } => {
                            tracing::debug!(request_id = id_str(&id), integration = %layer.integration, error = %error, "request refused by Sluice");
                        }
                        _ => {
                            if let Some(suppressed) = layer.warnings.permit(code, started) {
                                tracing::warn!(request_id = id_str(&id), integration = %layer.integration, endpoint = %route.endpoint, error = %error, similar_since_last = suppressed, "request failed in Sluice");
                            }
                        }
                    }
                    (error.into_response(), Some(code))
                }
            };
            let elapsed = started.elapsed();
            let status = response.status().as_u16();
            let outcome = outcome(&response, error);
            route.series.duration.observe(elapsed.as_secs_f64());
            let count = Box::new(RequestCount {
                metrics: layer.metrics.clone(),
                integration: layer.integration.clone(),
                route: route.clone(),
                status,
                outcome,
            });
            // A body still streaming from the upstream is counted when it
            // ends: cut short, its outcome is the failure's code.
            if let Err(count) = response.body_mut().on_end(count) {
                count.ended(BodyEnd::Complete);
            }
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
            if let Some((name, key)) = added_key {
                // The app may retry with it after a timeout or a 5xx.
                response.headers_mut().insert(name, key);
            }
            debug_assert!(error.is_none() || response.headers().contains_key(ERROR_HEADER));
            response
        })
    }
}

/// `sluice_egress_requests_total` for one request, once its outcome is known.
struct RequestCount {
    metrics: Metrics,
    integration: Name,
    route: Arc<Route>,
    status: u16,
    outcome: &'static str,
}

impl OnBodyEnd for RequestCount {
    fn ended(self: Box<Self>, end: BodyEnd) {
        let outcome = match end {
            BodyEnd::Failed(code) => code,
            // The app hanging up says nothing new about the response.
            BodyEnd::Complete | BodyEnd::Abandoned => self.outcome,
        };
        let RequestCount {
            metrics,
            integration,
            route,
            status,
            ..
        } = *self;
        route
            .series
            .count_request(&metrics, status, outcome, || RequestLabels {
                integration,
                endpoint: route.endpoint.clone(),
                code: status,
                outcome,
            });
    }
}

/// Checks on the app's request before anything is spent on it.
fn admit(method: &Method, uri: &Uri, headers: &http::HeaderMap) -> Result<Priority, String> {
    if method == Method::CONNECT {
        return Err("CONNECT is not supported: send plain HTTP requests to this port".into());
    }
    if let Some(target) = uri.path_and_query()
        && let Some(reason) = super::target::refusal(target.as_str().as_bytes())
    {
        return Err(reason.into());
    }
    if headers.contains_key(http::header::UPGRADE) && !headers.contains_key("http2-settings") {
        return Err("protocol upgrades (header upgrade) are not proxied".into());
    }
    Priority::from_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_throttled_per_code_and_count_what_was_skipped() {
        let throttle = WarnThrottle::default();
        let t0 = Instant::now();
        assert_eq!(throttle.permit("upstream-reset", t0), Some(0));
        assert_eq!(
            throttle.permit("upstream-reset", t0 + Duration::from_millis(10)),
            None
        );
        assert_eq!(
            throttle.permit("upstream-reset", t0 + Duration::from_millis(20)),
            None
        );
        assert_eq!(
            throttle.permit("upstream-timeout", t0 + Duration::from_millis(30)),
            Some(0)
        );
        assert_eq!(
            throttle.permit("upstream-reset", t0 + Duration::from_millis(1000)),
            Some(2)
        );
        assert_eq!(
            throttle.permit("upstream-reset", t0 + Duration::from_millis(1001)),
            None
        );
    }
}
