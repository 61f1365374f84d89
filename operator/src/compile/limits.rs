//! `spec.rateLimits` → the sidecar's limits, and a pod's share of the
//! `scope: Cluster` ones.

use sluice_contract::config::{
    ClusterRate, Duration, IntegrationConfig, LimitKey, LimitScope, QueueConfig, RateLimitConfig,
    defaults,
};

use super::routes::request_match;
use crate::resource::{LimitKeySpec, RateLimitSpec};

pub(super) fn compile(specs: &[RateLimitSpec], total_timeout: Duration) -> Vec<RateLimitConfig> {
    specs
        .iter()
        .map(|l| {
            let queue = l.queue.as_ref();
            let burst = l.burst.unwrap_or(l.rate.requests);
            let scope = l.scope.unwrap_or_default();
            RateLimitConfig {
                name: l.name.clone(),
                matches: request_match(&l.matches),
                requests: l.rate.requests,
                per: l.rate.per,
                burst,
                scope,
                // The whole limit, kept when the controller divides it.
                cluster: (scope == LimitScope::Cluster).then_some(ClusterRate {
                    requests: l.rate.requests,
                    burst,
                }),
                when_exceeded: l.when_exceeded.unwrap_or_default(),
                queue: QueueConfig {
                    // No request can wait past its total timeout.
                    max_wait: queue
                        .and_then(|q| q.max_wait)
                        .unwrap_or_else(|| defaults::max_wait().min(total_timeout)),
                    max_depth: queue
                        .and_then(|q| q.max_depth)
                        .unwrap_or_else(defaults::max_depth),
                },
                key: l.key.as_ref().map(limit_key),
                max_keys: l.max_keys.unwrap_or_else(defaults::max_keys),
            }
        })
        .collect()
}

/// The rules table has checked that exactly one is set and that a header
/// name is one.
fn limit_key(k: &LimitKeySpec) -> LimitKey {
    match (&k.header, &k.query, k.path_segment) {
        (Some(h), _, _) => LimitKey::Header(
            http::HeaderName::from_bytes(h.as_bytes()).expect("checked by the header-name rule"),
        ),
        (_, Some(q), _) => LimitKey::Query(q.clone()),
        (_, _, Some(n)) => LimitKey::PathSegment(n),
        (None, None, None) => unreachable!("checked by the exactly-one rule"),
    }
}

/// A pod's share of the `scope: Cluster` limits when `pods` pods run the
/// integration: each pod enforces `requests / pods`, rounded down and at
/// least 1, and a burst cut the same way, so together they stay within the
/// provider's limit (`cluster` keeps the whole, for sidecars with shared
/// state, which use the share only while that state is unreachable). `Pod`
/// limits are left as they are.
pub fn share_cluster_limits(mut config: IntegrationConfig, pods: u32) -> IntegrationConfig {
    let pods = pods.max(1);
    for limit in &mut config.rate_limits {
        if limit.scope == LimitScope::Cluster {
            limit.requests = (limit.requests / pods).max(1);
            limit.burst = (limit.burst / pods).clamp(1, limit.requests);
        }
    }
    config
}

/// When a Cluster limit cannot be divided among `pods` without going over:
/// fewer requests than pods, each pod still needing one.
pub fn cluster_share_problems(config: &IntegrationConfig, pods: u32) -> Vec<String> {
    config
        .rate_limits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.scope == LimitScope::Cluster && l.requests < pods)
        .map(|(i, l)| {
            format!(
                "spec.rateLimits[{i}].rate.requests: {} per {} ({}) cannot be shared by {pods} pods (each needs at least 1); together they may send {pods}",
                l.requests, l.per, l.name
            )
        })
        .collect()
}
