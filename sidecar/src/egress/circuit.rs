//! Circuit breaker: when the provider is failing, fail fast (503,
//! `x-sluice-error: circuit-open`) instead of piling up requests, then let a
//! few probes through to find out whether it has recovered.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use super::body::{BodyEnd, OnBodyEnd, ProxyBody};
use super::error::ProxyError;
use super::route::RequestContext;
use super::step::{Next, PipelineResult, Step};
use crate::config::CircuitBreakerConfig;
use crate::metrics::{IntegrationLabels, Metrics, Name};

const BUCKETS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, passed: u32 },
}

/// Outcome counts over a sliding window, in `BUCKETS` slices.
struct Window {
    slice: Duration,
    buckets: [(u32, u32); BUCKETS],
    current: usize,
    current_start: Instant,
}

impl Window {
    fn new(length: Duration, now: Instant) -> Self {
        Self {
            slice: (length / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: [(0, 0); BUCKETS],
            current: 0,
            current_start: now,
        }
    }

    fn advance(&mut self, now: Instant) {
        let mut steps = 0;
        while now >= self.current_start + self.slice && steps <= BUCKETS {
            self.current = (self.current + 1) % BUCKETS;
            self.buckets[self.current] = (0, 0);
            self.current_start += self.slice;
            steps += 1;
        }
        if steps > BUCKETS {
            self.current_start = now;
        }
    }

    fn record(&mut self, now: Instant, failed: bool) -> (u32, u32) {
        self.advance(now);
        let bucket = &mut self.buckets[self.current];
        bucket.0 += 1;
        bucket.1 += u32::from(failed);
        self.buckets
            .iter()
            .fold((0, 0), |(t, f), (bt, bf)| (t + bt, f + bf))
    }

    fn reset(&mut self, now: Instant) {
        self.buckets = [(0, 0); BUCKETS];
        self.current_start = now;
    }
}

pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    state: Mutex<(CircuitState, Window)>,
    gauge: Gauge,
    integration: Name,
}

/// Whether a call was let through as an ordinary request or as a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Normal,
    Probe,
}

impl CircuitBreaker {
    pub fn new(config: CircuitBreakerConfig, integration: Name, metrics: &Metrics) -> Arc<Self> {
        let gauge = metrics
            .circuit_state
            .get_or_create(&IntegrationLabels {
                integration: integration.clone(),
            })
            .clone();
        gauge.set(0);
        Arc::new(Self {
            state: Mutex::new((
                CircuitState::Closed,
                Window::new(config.window.get(), Instant::now()),
            )),
            config,
            gauge,
            integration,
        })
    }

    pub fn state(&self) -> CircuitState {
        self.state.lock().expect("circuit lock poisoned").0
    }

    fn set(&self, state: &mut CircuitState, next: CircuitState) {
        let (label, value) = match next {
            CircuitState::Closed => ("closed", 0),
            CircuitState::Open { .. } => ("open", 1),
            CircuitState::HalfOpen { .. } => ("half-open", 2),
        };
        if std::mem::discriminant(state) != std::mem::discriminant(&next) {
            tracing::warn!(integration = %self.integration, state = label, "circuit breaker changed state");
        }
        *state = next;
        self.gauge.set(value);
    }

    pub fn admit(&self, now: Instant) -> Result<Admission, ProxyError> {
        let mut guard = self.state.lock().expect("circuit lock poisoned");
        let (state, _) = &mut *guard;
        match *state {
            CircuitState::Closed => Ok(Admission::Normal),
            CircuitState::Open { until } if now < until => Err(ProxyError::CircuitOpen {
                retry_after: until - now,
            }),
            CircuitState::Open { .. } => {
                self.set(
                    state,
                    CircuitState::HalfOpen {
                        in_flight: 1,
                        passed: 0,
                    },
                );
                Ok(Admission::Probe)
            }
            CircuitState::HalfOpen { in_flight, passed } => {
                if in_flight + passed < self.config.half_open_probes.max(1) {
                    self.set(
                        state,
                        CircuitState::HalfOpen {
                            in_flight: in_flight + 1,
                            passed,
                        },
                    );
                    Ok(Admission::Probe)
                } else {
                    Err(ProxyError::CircuitOpen {
                        retry_after: Duration::from_secs(1),
                    })
                }
            }
        }
    }

    /// Records an outcome: `None` when the call says nothing about the upstream's health.
    pub fn record(&self, admission: Admission, failed: Option<bool>, now: Instant) {
        let mut guard = self.state.lock().expect("circuit lock poisoned");
        let (state, window) = &mut *guard;
        let Some(failed) = failed else {
            if let (Admission::Probe, CircuitState::HalfOpen { in_flight, passed }) =
                (admission, *state)
            {
                // A probe that never reached the upstream frees its slot.
                self.set(
                    state,
                    CircuitState::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                        passed,
                    },
                );
            }
            return;
        };
        match (admission, *state) {
            (Admission::Probe, CircuitState::HalfOpen { in_flight, passed }) => {
                if failed {
                    self.set(
                        state,
                        CircuitState::Open {
                            until: now + self.config.open_for.get(),
                        },
                    );
                } else if passed + 1 >= self.config.half_open_probes.max(1) {
                    window.reset(now);
                    self.set(state, CircuitState::Closed);
                } else {
                    self.set(
                        state,
                        CircuitState::HalfOpen {
                            in_flight: in_flight.saturating_sub(1),
                            passed: passed + 1,
                        },
                    );
                }
            }
            (Admission::Normal, CircuitState::Closed) => {
                let (total, failures) = window.record(now, failed);
                if total >= self.config.min_requests
                    && f64::from(failures) >= self.config.failure_ratio * f64::from(total)
                    && failures > 0
                {
                    self.set(
                        state,
                        CircuitState::Open {
                            until: now + self.config.open_for.get(),
                        },
                    );
                }
            }
            // Late answers from before the state changed do not count.
            _ => {}
        }
    }
}

/// Whether an outcome counts against the upstream's health. A provider that
/// hangs until the request's total timeout is failing as surely as one that
/// refuses connections; a deadline passed while reading the app's upload is
/// not its doing.
fn upstream_failed(result: &Result<Response<ProxyBody>, ProxyError>) -> Option<bool> {
    match result {
        Ok(response) => Some(response.status().is_server_error()),
        Err(
            ProxyError::Connect(_)
            | ProxyError::Tls(_)
            | ProxyError::Reset(_)
            | ProxyError::Protocol(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::DeadlineExceeded {
                awaiting_upstream: true,
                ..
            }
            | ProxyError::BudgetExhausted { .. },
        ) => Some(true),
        // Our own refusals (rate limits, bad requests, missing secrets) say nothing about it.
        Err(_) => None,
    }
}

/// Pipeline step: fails fast while open, records upstream health.
#[derive(Clone)]
pub struct CircuitStep {
    breaker: Option<Arc<CircuitBreaker>>,
}

impl CircuitStep {
    pub fn new(breaker: Option<Arc<CircuitBreaker>>) -> Self {
        Self { breaker }
    }
}

impl Step for CircuitStep {
    async fn call<S: Next>(
        &self,
        request: Request<ProxyBody>,
        ctx: &RequestContext,
        next: &S,
    ) -> PipelineResult {
        let Some(breaker) = &self.breaker else {
            return next.call(request, ctx).await;
        };
        let admission = breaker.admit(Instant::now())?;
        let mut result = next.call(request, ctx).await;
        let failed = upstream_failed(&result);
        // A success is only a success once its body has arrived whole: a
        // response cut mid-body is an upstream failure.
        if let (Ok(response), Some(false)) = (&mut result, failed) {
            let outcome = Box::new(RecordAtBodyEnd {
                breaker: breaker.clone(),
                admission,
            });
            if let Err(outcome) = response.body_mut().on_end(outcome) {
                outcome.ended(BodyEnd::Complete);
            }
            return result;
        }
        breaker.record(admission, failed, Instant::now());
        result
    }
}

/// Records a call's outcome when its response body ends.
struct RecordAtBodyEnd {
    breaker: Arc<CircuitBreaker>,
    admission: Admission,
}

impl OnBodyEnd for RecordAtBodyEnd {
    fn ended(self: Box<Self>, end: BodyEnd) {
        let failed = match end {
            BodyEnd::Complete => Some(false),
            BodyEnd::Failed(_) => Some(true),
            // The app stopped reading: nothing learnt about the upstream.
            BodyEnd::Abandoned => None,
        };
        self.breaker.record(self.admission, failed, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration as D;

    fn breaker() -> Arc<CircuitBreaker> {
        CircuitBreaker::new(
            CircuitBreakerConfig {
                failure_ratio: 0.5,
                min_requests: 4,
                window: D::from_secs(10),
                open_for: D::from_secs(5),
                half_open_probes: 2,
            },
            Arc::from("t"),
            &Metrics::new(),
        )
    }

    #[test]
    fn opens_on_failure_ratio_then_probes_and_closes() {
        let b = breaker();
        let t0 = Instant::now();
        for failed in [false, true, false] {
            b.record(b.admit(t0).unwrap(), Some(failed), t0);
        }
        assert_eq!(b.state(), CircuitState::Closed, "below minRequests");
        b.record(b.admit(t0).unwrap(), Some(true), t0);
        assert!(matches!(b.state(), CircuitState::Open { .. }));
        assert!(matches!(
            b.admit(t0 + Duration::from_secs(1)),
            Err(ProxyError::CircuitOpen { .. })
        ));

        let later = t0 + Duration::from_secs(6);
        let p1 = b.admit(later).unwrap();
        let p2 = b.admit(later).unwrap();
        assert_eq!((p1, p2), (Admission::Probe, Admission::Probe));
        assert!(b.admit(later).is_err(), "only two probes at a time");
        b.record(p1, Some(false), later);
        b.record(p2, Some(false), later);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn failed_probe_reopens() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..4 {
            b.record(b.admit(t0).unwrap(), Some(true), t0);
        }
        let later = t0 + Duration::from_secs(6);
        let probe = b.admit(later).unwrap();
        b.record(probe, Some(true), later);
        assert!(
            matches!(b.state(), CircuitState::Open { until } if until == later + Duration::from_secs(5))
        );
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(b.admit(t0).unwrap(), Some(true), t0);
        }
        let later = t0 + Duration::from_secs(11);
        for _ in 0..3 {
            b.record(b.admit(later).unwrap(), Some(false), later);
        }
        b.record(b.admit(later).unwrap(), Some(true), later);
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "1 of 4 failed in the window"
        );
    }
}
