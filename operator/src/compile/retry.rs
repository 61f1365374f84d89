//! `spec.retry` and `spec.circuitBreaker`: when a failed attempt is tried
//! again, and when the provider is given a rest.

use sluice_contract::config::{
    BackoffConfig, CircuitBreakerConfig, IdempotencyConfig, RetryBudgetConfig, RetryConfig,
    defaults,
};

use crate::resource::{CircuitBreakerSpec, RetrySpec};

pub(super) fn compile(spec: Option<&RetrySpec>) -> RetryConfig {
    let base = RetryConfig::default();
    let Some(r) = spec else {
        return base;
    };
    let b = r.backoff.as_ref();
    let budget = r.budget.as_ref();
    RetryConfig {
        max_attempts: r.max_attempts.unwrap_or(base.max_attempts),
        backoff: BackoffConfig {
            initial: b.and_then(|b| b.initial).unwrap_or(base.backoff.initial),
            max: b.and_then(|b| b.max).unwrap_or(base.backoff.max),
            multiplier: b
                .and_then(|b| b.multiplier)
                .unwrap_or(base.backoff.multiplier),
            jitter: b.and_then(|b| b.jitter).unwrap_or(base.backoff.jitter),
        },
        retry_on: r.retry_on.clone().unwrap_or(base.retry_on),
        honor_retry_after: r.honor_retry_after.unwrap_or(base.honor_retry_after),
        max_retry_after: r.max_retry_after.unwrap_or(base.max_retry_after),
        budget: RetryBudgetConfig {
            ratio: budget.and_then(|b| b.ratio).unwrap_or(base.budget.ratio),
            min_per_second: budget
                .and_then(|b| b.min_per_second)
                .unwrap_or(base.budget.min_per_second),
            window: budget.and_then(|b| b.window).unwrap_or(base.budget.window),
        },
        idempotency: r.idempotency.as_ref().map(|i| IdempotencyConfig {
            header: i.header.clone(),
            methods: i.methods.clone(),
        }),
    }
}

pub(super) fn circuit_breaker(c: &CircuitBreakerSpec) -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        failure_ratio: c.failure_ratio,
        min_requests: c.min_requests,
        window: c.window,
        open_for: c.open_for,
        half_open_probes: c
            .half_open_probes
            .unwrap_or_else(defaults::half_open_probes),
    }
}
