//! Retries that help instead of hurt: classify first, back off with jitter,
//! honour the provider's Retry-After, spend from a budget so an outage cannot
//! multiply traffic, and retry non-idempotent calls only under an idempotency
//! key that stays the same on every attempt.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::Either;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response};
use http_body::Body as _;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use super::body::ProxyBody;
use super::error::ProxyError;
use super::route::RequestContext;
use super::step::{Next, PipelineResult, Step};
use crate::config::{BackoffConfig, RetryConfig, RetryOn};
use crate::metrics::{IntegrationLabels, Metrics, Name, RetryLabels};

/// The retry settings of one integration, compiled.
pub struct RetryRules {
    max_attempts: u32,
    backoff: BackoffConfig,
    statuses: Vec<u16>,
    on_connect_error: bool,
    on_reset: bool,
    on_timeout: bool,
    honor_retry_after: bool,
    max_retry_after: Duration,
    budget: TpsBudget,
    /// `sluice_retry_budget_exhausted_total`, at 0 from the start.
    budget_exhausted: Counter,
    idempotency: Option<(HeaderName, Vec<Method>)>,
    max_buffered_body: u64,
    integration: Name,
    metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
#[error("retry.idempotency: {0}")]
pub struct RetryRulesError(String);

impl RetryRules {
    pub fn new(
        config: &RetryConfig,
        max_buffered_body: u64,
        integration: Name,
        metrics: Metrics,
    ) -> Result<Self, RetryRulesError> {
        let idempotency = match &config.idempotency {
            Some(i) => Some((
                HeaderName::from_bytes(i.header.as_bytes())
                    .map_err(|_| RetryRulesError(format!("{:?} is not a header name", i.header)))?,
                i.methods.iter().map(|m| m.get().clone()).collect(),
            )),
            None => None,
        };
        let budget = &config.budget;
        let budget_exhausted = metrics
            .retry_budget_exhausted
            .get_or_create(&IntegrationLabels {
                integration: integration.clone(),
            })
            .clone();
        Ok(Self {
            max_attempts: config.max_attempts.max(1),
            backoff: config.backoff.clone(),
            statuses: config
                .retry_on
                .iter()
                .filter_map(|r| match r {
                    RetryOn::Status(code) => Some(*code),
                    _ => None,
                })
                .collect(),
            on_connect_error: config.retry_on.contains(&RetryOn::ConnectError),
            on_reset: config.retry_on.contains(&RetryOn::Reset),
            on_timeout: config.retry_on.contains(&RetryOn::Timeout),
            honor_retry_after: config.honor_retry_after,
            max_retry_after: config.max_retry_after.get(),
            budget: TpsBudget::new(
                budget.window.get().max(Duration::from_secs(1)),
                budget.min_per_second,
                budget.ratio.clamp(0.0, 1000.0) as f32,
            ),
            budget_exhausted,
            idempotency,
            max_buffered_body,
            integration,
            metrics,
        })
    }

    /// Why the attempt failed, if that is a reason to try again.
    fn reason(&self, result: &Result<Response<ProxyBody>, ProxyError>) -> Option<&'static str> {
        match result {
            Ok(response) => {
                let code = response.status().as_u16();
                self.statuses.contains(&code).then_some(match code {
                    429 => "429",
                    500 => "500",
                    502 => "502",
                    503 => "503",
                    504 => "504",
                    400..=499 => "4xx",
                    _ => "5xx",
                })
            }
            Err(ProxyError::Connect(_) | ProxyError::Tls(_)) => {
                self.on_connect_error.then_some("connect-error")
            }
            Err(ProxyError::Reset(_) | ProxyError::Protocol(_)) => self.on_reset.then_some("reset"),
            Err(ProxyError::UpstreamTimeout(_)) => self.on_timeout.then_some("timeout"),
            Err(_) => None,
        }
    }

    /// Whether a request of this method may be sent more than once; one
    /// that never reached the upstream always may (`never_reached_upstream`).
    fn may_repeat(&self, method: &Method) -> bool {
        method.is_idempotent()
            || self
                .idempotency
                .as_ref()
                .is_some_and(|(_, methods)| methods.contains(method))
    }

    /// Exponential backoff for the wait after attempt `attempt` (1-based), with jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff_delay(&self.backoff, attempt)
    }
}

/// The wait after attempt `attempt` (1-based): `initial * multiplier^(attempt-1)`,
/// capped at `max`, scaled by a random factor in `[1 - jitter, 1 + jitter]`.
pub fn backoff_delay(backoff: &BackoffConfig, attempt: u32) -> Duration {
    let exp = backoff
        .multiplier
        .max(1.0)
        .powi(attempt.saturating_sub(1) as i32);
    let capped = (backoff.initial.get().as_secs_f64() * exp).min(backoff.max.get().as_secs_f64());
    let factor = 1.0 + backoff.jitter.clamp(0.0, 1.0) * (fastrand::f64() * 2.0 - 1.0);
    Duration::from_secs_f64((capped * factor).max(0.0))
}

/// How long the provider asked us to wait: `Retry-After` (seconds or an
/// HTTP-date), else `X-RateLimit-Reset` (epoch seconds, or seconds from now).
pub fn provider_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = text(RETRY_AFTER.as_str()) {
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(date) = httpdate::parse_http_date(value) {
            return Some(date.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    let reset = text("x-ratelimit-reset")?.parse::<f64>().ok()?;
    if !reset.is_finite() || reset < 0.0 {
        return None;
    }
    // Epoch timestamps are large; small numbers are a delay in seconds.
    if reset > 1_000_000_000.0 {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(reset);
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    } else {
        Some(Duration::from_secs_f64(reset))
    }
}

/// Refused here, or a connect or TLS failure: the upstream never saw the request.
fn never_reached_upstream(result: &Result<Response<ProxyBody>, ProxyError>) -> bool {
    result.as_ref().is_err_and(ProxyError::never_sent)
}

/// A fresh idempotency key: 128 random bits, hex.
fn new_idempotency_key() -> HeaderValue {
    let key = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    HeaderValue::from_str(&key).expect("hex is a valid header value")
}

/// Pipeline step: the retry loop.
#[derive(Clone)]
pub struct RetryStep {
    rules: Arc<RetryRules>,
}

impl RetryStep {
    pub fn new(rules: Arc<RetryRules>) -> Self {
        Self { rules }
    }
}

impl Step for RetryStep {
    /// Not an `async fn`: that would keep the request (an argument) beside
    /// its head and body, in a state boxed per request. A body that must be
    /// read first to be sent again takes the boxed path.
    fn call<S: Next>(
        &self,
        mut request: Request<ProxyBody>,
        ctx: &RequestContext,
        next: &S,
    ) -> impl Future<Output = PipelineResult> + Send {
        let rules = &*self.rules;
        rules.budget.deposit();
        if let Some((header, methods)) = &rules.idempotency
            && methods.contains(request.method())
            && !request.headers().contains_key(header)
        {
            let key = new_idempotency_key();
            request.headers_mut().insert(header.clone(), key.clone());
            let _ = ctx.added_idempotency_key.set((header.clone(), key));
        }
        let wants_retries = rules.max_attempts > 1;
        if wants_retries && !request.body().is_end_stream() {
            let (head, body) = request.into_parts();
            return Either::Right(Box::pin(async move {
                // A slow upload must not outlast the request's deadline.
                let body = tokio::time::timeout_at(
                    ctx.deadline,
                    body.buffer_up_to(rules.max_buffered_body),
                )
                .await
                .map_err(|_| ProxyError::DeadlineExceeded {
                    total: ctx.route.total_timeout,
                    awaiting_upstream: false,
                })?
                .map_err(|e| ProxyError::BadRequest(format!("reading the request body: {e}")))?;
                attempts(rules, head, body, ctx, next).await
            }));
        }
        if wants_retries {
            // Nothing to read, and an empty body can be sent again.
            *request.body_mut() = ProxyBody::Empty;
        }
        let (head, body) = request.into_parts();
        Either::Left(attempts(rules, head, body, ctx, next))
    }
}

/// Sends the request until an attempt is final: it succeeded, failed in a
/// way not worth repeating, or the attempts, the budget or the deadline ran
/// out. An `async` block over `head` and `body`, not an `async fn`: that
/// stores its arguments twice (measured: the retry step's boxed state grows
/// from 680 to 1,000 bytes).
#[allow(clippy::manual_async_fn)]
fn attempts<S: Next>(
    rules: &RetryRules,
    mut head: http::request::Parts,
    mut body: ProxyBody,
    ctx: &RequestContext,
    next: &S,
) -> impl Future<Output = PipelineResult> + Send {
    async move {
        let may_repeat = rules.may_repeat(&head.method);
        ctx.sends.set(rules.max_attempts);
        let mut attempt = 1u32;
        loop {
            // Only a body small enough to be buffered can be sent again; its
            // copy shares the bytes.
            let spare_body = if attempt < rules.max_attempts {
                body.try_clone()
            } else {
                None
            };
            // The head is not copied: the attempt gives it back (see `replay`).
            ctx.replay.want(spare_body.is_some());
            let result = next.call(Request::from_parts(head, body), ctx).await;
            let Some(spare_body) = spare_body else {
                return result;
            };
            // The pool may have sent it again on a fresh connection (a
            // stale one failed): those sends count too.
            if ctx.sends.left() == 0 {
                return result;
            }
            let Some(reason) = rules.reason(&result) else {
                return result;
            };
            if !(may_repeat || never_reached_upstream(&result)) {
                return result;
            }
            let wait = match (&result, rules.honor_retry_after) {
                (Ok(response), true) => {
                    match provider_wait(response.headers(), SystemTime::now()) {
                        // Asked to wait longer than we allow: the app hears it now.
                        Some(wait) if wait > rules.max_retry_after => return result,
                        Some(wait) => wait,
                        None => rules.backoff(attempt),
                    }
                }
                _ => rules.backoff(attempt),
            };
            if Instant::now() + wait >= ctx.deadline {
                return result;
            }
            // Every step that holds the head across a wait lends it, so it
            // comes back even from an attempt cut off by its timeout; without
            // it there would be nothing to send. It stays in the slot during
            // the wait below, out of this future's state.
            if !ctx.replay.is_filled() {
                return result;
            }
            if !rules.budget.withdraw() {
                rules.budget_exhausted.inc();
                return match result {
                    Err(last) => Err(ProxyError::BudgetExhausted {
                        last: Box::new(last),
                    }),
                    // The provider's own answer is the most useful thing to return.
                    ok => ok,
                };
            }
            rules
                .metrics
                .retries
                .get_or_create(&RetryLabels {
                    integration: rules.integration.clone(),
                    endpoint: ctx.route.endpoint.clone(),
                    reason,
                })
                .inc();
            // Free the failed attempt's connection before sleeping.
            drop(result);
            // Boxed: a timer is large, and only a retried request sleeps.
            Box::pin(tokio::time::sleep(wait)).await;
            // Nothing else of this request runs during the wait.
            head = ctx
                .replay
                .take()
                .expect("the head was given back before the wait");
            body = spare_body;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(provider_wait(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            httpdate::fmt_http_date(now + Duration::from_secs(30))
                .parse()
                .unwrap(),
        );
        assert_eq!(provider_wait(&h, now), Some(Duration::from_secs(30)));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", "1700000012".parse().unwrap());
        assert_eq!(provider_wait(&h, now), Some(Duration::from_secs(12)));
        h.insert("x-ratelimit-reset", "3".parse().unwrap());
        assert_eq!(provider_wait(&h, now), Some(Duration::from_secs(3)));
        h.insert("x-ratelimit-reset", "soon".parse().unwrap());
        assert_eq!(provider_wait(&h, now), None);
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let config = RetryConfig::default();
        let rules = RetryRules::new(&config, 1024, Arc::from("t"), Metrics::new()).unwrap();
        for _ in 0..100 {
            let first = rules.backoff(1).as_secs_f64();
            assert!((0.7..=1.3).contains(&first), "{first}");
            let third = rules.backoff(3).as_secs_f64();
            assert!((2.8..=5.2).contains(&third), "{third}");
            let capped = rules.backoff(20).as_secs_f64();
            assert!((11.2..=20.8).contains(&capped), "{capped}");
        }
    }

    #[test]
    fn classification_never_retries_client_errors() {
        let rules = RetryRules::new(
            &RetryConfig::default(),
            1024,
            Arc::from("t"),
            Metrics::new(),
        )
        .unwrap();
        let status = |code: u16| {
            let mut r = Response::new(ProxyBody::Empty);
            *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
            Ok(r)
        };
        for code in [400, 401, 403, 404, 409, 422, 200, 201, 301] {
            assert_eq!(rules.reason(&status(code)), None, "{code}");
        }
        for code in [429, 500, 502, 503, 504] {
            assert!(rules.reason(&status(code)).is_some(), "{code}");
        }
        assert_eq!(
            rules.reason(&Err(ProxyError::Connect("x".into()))),
            Some("connect-error")
        );
        assert_eq!(
            rules.reason(&Err(ProxyError::UpstreamTimeout(Duration::ZERO))),
            Some("timeout")
        );
        assert_eq!(
            rules.reason(&Err(ProxyError::RateLimited {
                limit: "l".into(),
                retry_after: Duration::ZERO
            })),
            None
        );
        // POST is retried only after a connect failure, without an idempotency key.
        assert!(!rules.may_repeat(&Method::POST));
        assert!(never_reached_upstream(&Err(ProxyError::Connect(
            "x".into()
        ))));
        assert!(!never_reached_upstream(&status(503)));
        assert!(rules.may_repeat(&Method::PUT));
    }
}
