use serde_json::json;

use super::*;

fn manifest(spec: Value) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "ProviderIntegration",
        "metadata": {"name": "carrier", "namespace": "shop"},
        "spec": spec,
    })
}

fn paths(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn every_schema_problem_of_a_document_at_once() {
    let errors = validate(&manifest(json!({
        "upstream": {"baseUrl": "https://x.example", "timeout": "1 minute"},
        "ratelimits": [],
        "rateLimits": [{"name": "a", "rate": {"requests": "ten", "per": "1m"}}],
        "retry": {"maxAtempts": 3},
    })));
    let found = paths(&errors);
    for expected in [
        "spec.upstream.timeout",
        "spec.ratelimits",
        "spec.rateLimits[0].rate.requests",
        "spec.retry.maxAtempts",
    ] {
        assert!(
            found.contains(&expected),
            "{expected} missing from {errors:?}"
        );
    }
    let typo = errors.iter().find(|e| e.path == "spec.ratelimits").unwrap();
    assert!(typo.message.contains("did you mean rateLimits?"), "{typo}");
}

#[test]
fn bounds_and_rules_name_the_field() {
    let errors = validate(&manifest(json!({
        "upstream": {"baseUrl": "https://x.example", "timeout": "2h"},
        "retry": {"maxAttempts": 0, "backoff": {"jitter": 2, "multiplier": 0.5}},
        "circuitBreaker": {"failureRatio": 1.5, "minRequests": 1, "window": "10s", "openFor": "30s"},
        "rateLimits": [{"name": "a", "match": {"methods": ["get"]}, "rate": {"requests": 10, "per": "25h"}, "burst": 20}],
    })));
    let found = paths(&errors);
    for expected in [
        "spec.upstream.timeout",
        "spec.rateLimits[0].rate.per",
        "spec.rateLimits[0].burst",
        "spec.retry.maxAttempts",
        "spec.retry.backoff.jitter",
        "spec.retry.backoff.multiplier",
        "spec.circuitBreaker.failureRatio",
        "spec.rateLimits[0].match.methods[0]",
    ] {
        assert!(
            found.contains(&expected),
            "{expected} missing from {errors:?}"
        );
    }
}

#[test]
fn a_valid_manifest_has_no_problem() {
    let errors = validate(&manifest(json!({
        "upstream": {"baseUrl": "https://x.example"},
        "auth": {"header": {"name": "X-Api-Key", "secretRef": {"name": "key", "key": "current"}}},
        "rateLimits": [{"name": "a", "match": {"methods": ["GET"], "path": "/v1/*/x"}, "rate": {"requests": 10, "per": "1m"}}],
        "retry": {"retryOn": [429, "503", "reset"]},
    })));
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn duplicate_list_keys_and_missing_fields() {
    let errors = validate(&manifest(json!({
        "upstream": {},
        "rateLimits": [
            {"name": "a", "rate": {"requests": 10, "per": "1m"}},
            {"name": "a", "rate": {"requests": 5, "per": "1m"}},
        ],
    })));
    let found = paths(&errors);
    assert!(found.contains(&"spec.upstream.baseUrl"), "{errors:?}");
    assert!(found.contains(&"spec.rateLimits[1].name"), "{errors:?}");
}

#[test]
fn abstract_paths_drop_indices() {
    assert_eq!(
        abstract_path("spec.webhooks[12].verify.secrets[0]"),
        "spec.webhooks[].verify.secrets[]"
    );
}
