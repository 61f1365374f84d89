//! `spec.endpoints` and `spec.cache`: which requests get a name, their
//! timeouts, and which responses are cached.

use sluice_contract::config::{CacheConfig, CacheRule, EndpointConfig, RequestMatch};

use crate::resource::{CacheSpec, EndpointSpec, MatchSpec};

pub(super) fn request_match(spec: &MatchSpec) -> RequestMatch {
    RequestMatch {
        methods: spec.methods.clone(),
        path: spec.path.clone(),
    }
}

pub(super) fn endpoints(specs: &[EndpointSpec]) -> Vec<EndpointConfig> {
    specs
        .iter()
        .map(|e| EndpointConfig {
            name: e.name.clone(),
            matches: request_match(&e.matches),
            timeout: e.timeout,
            total_timeout: e.total_timeout,
        })
        .collect()
}

pub(super) fn cache(specs: &[CacheSpec]) -> CacheConfig {
    CacheConfig {
        rules: specs
            .iter()
            .map(|c| CacheRule {
                matches: request_match(&c.matches),
                ttl: c.ttl,
            })
            .collect(),
        ..CacheConfig::default()
    }
}
