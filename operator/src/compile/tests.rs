use super::*;
use sluice_contract::config::{AuthConfig, Duration, RetryConfig, WhenExceeded};

#[test]
fn cluster_limits_are_divided_among_pods_and_pod_limits_are_not() {
    let pi = pi("  upstream: {baseUrl: 'https://x.example'}
  rateLimits:
    - {name: shared, match: {}, rate: {requests: 100, per: 1m}, burst: 10, scope: Cluster}
    - {name: mine, match: {}, rate: {requests: 30, per: 1m}, burst: 5}
    - {name: tiny, match: {}, rate: {requests: 2, per: 1s}, scope: Cluster}
");
    let config = compile(&pi, &mounted()).unwrap();
    let shared = |n: u32| {
        let c = share_cluster_limits(config.clone(), n);
        c.rate_limits
            .iter()
            .map(|l| (l.requests, l.burst))
            .collect::<Vec<_>>()
    };
    assert_eq!(shared(1), [(100, 10), (30, 5), (2, 2)]);
    assert_eq!(shared(0), shared(1), "no pods yet: the first gets it all");
    assert_eq!(shared(3), [(33, 3), (30, 5), (1, 1)]);
    assert_eq!(shared(20), [(5, 1), (30, 5), (1, 1)]);
    // The whole of each Cluster limit stays beside the share, for sidecars
    // with shared state; a Pod limit has none.
    let whole: Vec<_> = share_cluster_limits(config.clone(), 20)
        .rate_limits
        .iter()
        .map(|l| l.cluster.map(|c| (c.requests, c.burst)))
        .collect();
    assert_eq!(whole, [Some((100, 10)), None, Some((2, 2))]);
    assert!(cluster_share_problems(&config, 2).is_empty());
    let problems = cluster_share_problems(&config, 3);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with("spec.rateLimits[2].rate.requests"),
        "{problems:?}"
    );
}

fn pi(spec_yaml: &str) -> ProviderIntegration {
    let yaml = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: ProviderIntegration\nmetadata: {{name: carrier, namespace: shop}}\nspec:\n{spec_yaml}"
    );
    serde_yaml_ng::from_str(&yaml).unwrap()
}

fn mounted() -> MountedSecrets {
    MountedSecrets::in_pod()
}

#[test]
fn minimal_spec_gets_every_default() {
    let config = compile(
        &pi("  upstream: {baseUrl: 'https://api.example'}\n"),
        &mounted(),
    )
    .unwrap();
    assert_eq!(config.name, "carrier");
    assert_eq!(config.listen.to_string(), "127.0.0.1:15001");
    assert_eq!(config.upstream.timeout, defaults::timeout());
    assert_eq!(config.upstream.total_timeout, defaults::total_timeout());
    assert_eq!(config.retry, RetryConfig::default());
    assert!(config.auth.is_none() && config.rate_limits.is_empty());
}

#[test]
fn secret_refs_become_mounted_file_paths() {
    let config = compile(
            &pi("  upstream: {baseUrl: 'https://api.example'}\n  auth:\n    oauth2ClientCredentials:\n      tokenUrl: https://auth.example/token\n      clientIdRef: {name: kyc, key: id}\n      clientSecretRef: {name: kyc, key: secret}\n"),
            &mounted(),
        )
        .unwrap();
    let Some(AuthConfig::Oauth2ClientCredentials {
        client_id,
        client_secret,
        refresh_before,
        ..
    }) = config.auth
    else {
        panic!("oauth2 expected");
    };
    assert_eq!(
        client_id.path(),
        std::path::Path::new("/var/run/sluice/secrets/kyc/id")
    );
    assert_eq!(
        client_secret.path(),
        std::path::Path::new("/var/run/sluice/secrets/kyc/secret")
    );
    assert_eq!(refresh_before, defaults::refresh_before());
}

#[test]
fn rate_limit_defaults_follow_the_rate_and_the_total_timeout() {
    let config = compile(
            &pi("  upstream: {baseUrl: 'https://api.example', totalTimeout: 20s}\n  rateLimits:\n  - name: all\n    rate: {requests: 300, per: 1m}\n"),
            &mounted(),
        )
        .unwrap();
    let limit = &config.rate_limits[0];
    assert_eq!(limit.burst, 300, "burst defaults to rate.requests");
    assert_eq!(
        limit.queue.max_wait,
        Duration::from_secs(20),
        "maxWait capped by totalTimeout"
    );
    assert_eq!(limit.when_exceeded, WhenExceeded::Queue);
}

#[test]
fn collects_every_error_with_its_path() {
    let errors = compile(
            &pi("  upstream: {baseUrl: 'https://x', timeout: 0s}\n  rateLimits:\n  - name: a\n    rate: {requests: 0, per: 1m}\n    burst: 0\n  - name: a\n    rate: {requests: 1, per: 0s}\n"),
            &mounted(),
        )
        .unwrap_err();
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    for expected in [
        "spec.upstream.timeout",
        "spec.rateLimits[0].rate.requests",
        "spec.rateLimits[0].burst",
        "spec.rateLimits[1].name",
        "spec.rateLimits[1].rate.per",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
}

#[test]
fn same_port_in_two_namespaces_is_fine() {
    let a = compile(
        &pi("  upstream: {baseUrl: 'https://a.example'}\n"),
        &mounted(),
    )
    .unwrap();
    let at = |ns: &str| ("a.yaml".to_owned(), ns.to_owned(), a.clone());
    let ok = check_together(&[at("shop"), at("billing")]);
    assert!(ok.is_empty());
    let clash = check_together(&[at("shop"), at("shop")]);
    assert_eq!(clash.len(), 1);
}

#[test]
fn keyed_limits_compile_to_their_key_and_table_size() {
    use sluice_contract::config::LimitKey;
    let config = compile(
        &pi("  upstream: {baseUrl: 'https://x.example'}
  rateLimits:
    - {name: per-account, rate: {requests: 5, per: 1s}, key: {header: X-Account-Id}, maxKeys: 500}
    - {name: per-shop, rate: {requests: 2, per: 1s}, key: {pathSegment: 3}}
    - {name: per-query, rate: {requests: 2, per: 1s}, key: {query: account}}
    - {name: all, rate: {requests: 50, per: 1s}}
"),
        &mounted(),
    )
    .unwrap();
    let keys: Vec<_> = config
        .rate_limits
        .iter()
        .map(|l| (l.key.clone(), l.max_keys))
        .collect();
    assert_eq!(
        keys,
        [
            (
                Some(LimitKey::Header(http::HeaderName::from_static(
                    "x-account-id"
                ))),
                500
            ),
            (Some(LimitKey::PathSegment(3)), 10_000),
            (Some(LimitKey::Query("account".into())), 10_000),
            (None, 10_000),
        ]
    );
    // The sidecar's own check reads it back.
    let yaml = serde_yaml_ng::to_string(&config).unwrap();
    assert!(yaml.contains("key:\n    header: x-account-id"), "{yaml}");
    let again: sluice_contract::config::IntegrationConfig = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(again.rate_limits, config.rate_limits);
}

#[test]
fn a_key_naming_two_parts_is_refused_with_its_path() {
    let error = compile(
        &pi("  upstream: {baseUrl: 'https://x.example'}
  rateLimits:
    - {name: a, rate: {requests: 5, per: 1s}, key: {header: X-Shop, pathSegment: 2}}
"),
        &mounted(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("spec.rateLimits[0].key")
            && error.contains("exactly one of header, query, pathSegment"),
        "{error}"
    );
}

#[test]
fn quotas_compile_with_their_defaults_and_checked_periods() {
    use sluice_contract::config::{QuotaCost, QuotaPeriod, WhenExhausted};
    let config = compile(
        &pi("  upstream: {baseUrl: 'https://maps.example'}
  quotas:
    - {name: elements, limit: 100000, per: calendarMonth, warnAt: [95, 50, 80, 80],
       cost: {queryProduct: [origins, destinations]}}
    - {name: units, limit: 5000, per: 24h, cost: {header: X-Units}, whenExhausted: Warn}
    - {name: calls, limit: 10, per: 720h}
"),
        &mounted(),
    )
    .unwrap();
    let q = &config.quotas;
    assert_eq!(q[0].per, QuotaPeriod::CalendarMonth);
    assert_eq!(q[0].warn_at, [50, 80, 95], "sorted, once each");
    assert_eq!(
        q[0].cost,
        QuotaCost::QueryProduct {
            params: vec!["origins".into(), "destinations".into()],
            separator: "|".into()
        }
    );
    assert_eq!(
        (q[1].cost.clone(), q[1].when_exhausted),
        (
            QuotaCost::Header(http::HeaderName::from_static("x-units")),
            WhenExhausted::Warn
        )
    );
    assert_eq!(
        (q[2].cost.clone(), q[2].warn_at.clone(), q[2].when_exhausted),
        (QuotaCost::One, vec![50, 80], WhenExhausted::Reject)
    );
    let yaml = serde_yaml_ng::to_string(&config).unwrap();
    let again: sluice_contract::config::IntegrationConfig = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(again.quotas, config.quotas);

    let error = compile(
        &pi("  upstream: {baseUrl: 'https://maps.example'}
  quotas: [{name: q, limit: 10, per: 30s, cost: {header: X-Units, separator: ','}}]
"),
        &mounted(),
    )
    .unwrap_err()
    .to_string();
    for wanted in ["spec.quotas[0].per", "spec.quotas[0].cost.separator"] {
        assert!(error.contains(wanted), "{wanted} missing from {error}");
    }
}

#[test]
fn contracts_compile_and_a_broken_schema_is_reported_at_its_path() {
    let config = compile(
        &pi("  upstream: {baseUrl: 'https://api.carrier.example'}
  contracts:
    - name: shipment
      match: {path: /v1/shipments/*}
      schema:
        type: object
        required: [status]
        properties: {status: {enum: [CREATED, DELIVERED]}}
"),
        &mounted(),
    )
    .unwrap();
    let contract = &config.contracts[0];
    assert_eq!((contract.sample, contract.max_body_bytes), (1.0, 262_144));
    assert!(contract.statuses.is_empty() && contract.covers(201));
    let yaml = serde_yaml_ng::to_string(&config).unwrap();
    let again: sluice_contract::config::IntegrationConfig = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(again.contracts, config.contracts);

    let error = compile(
        &pi("  upstream: {baseUrl: 'https://api.carrier.example'}
  contracts: [{name: shipment, schema: {type: shape}}]
"),
        &mounted(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("spec.contracts[0].schema: not a usable JSON Schema"),
        "{error}"
    );
}

#[test]
fn polling_compiles_with_its_defaults_and_its_rules_are_checked() {
    use sluice_contract::config::CursorFrom;
    let webhook = "  webhooks:
    - name: events
      path: /webhooks/stripe
      forwardTo: 'http://127.0.0.1:8080/stripe'
      verify: {scheme: Stripe, secrets: [{secretRef: {name: stripe, key: signing}}]}
";
    let config = compile(
        &pi(&format!(
            "  upstream: {{baseUrl: 'https://api.stripe.com'}}
{webhook}      polling: {{path: /v1/events, items: /data, id: /id, created: /created, cursor: {{param: starting_after}}, hasMore: /has_more}}
"
        )),
        &mounted(),
    )
    .unwrap();
    let polling = config.webhooks[0].polling.as_ref().unwrap();
    assert_eq!(polling.cursor.from, CursorFrom::LastId);
    assert_eq!(polling.interval, defaults::poll_interval());
    assert_eq!(polling.lookback, defaults::poll_lookback());
    assert!(polling.query.is_empty());
    let again: sluice_contract::config::IntegrationConfig =
        serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    assert_eq!(again.webhooks, config.webhooks);

    let error = compile(
        &pi(&format!(
            "  upstream: {{baseUrl: 'https://api.stripe.com'}}
{webhook}      dedup: {{ttl: 12h}}
      polling: {{path: /v1/events, items: /data, id: /id, created: /created, cursor: {{param: p, from: next}}}}
"
        )),
        &mounted(),
    )
    .unwrap_err()
    .to_string();
    for wanted in [
        "spec.webhooks[0].polling.cursor.from",
        "spec.webhooks[0].polling.lookback",
    ] {
        assert!(error.contains(wanted), "{wanted} missing from {error}");
    }
}

#[test]
fn a_schema_from_a_config_map_is_compiled_inline_and_its_problems_named() {
    use crate::compile::{ConfigMapData, compile_with};
    let spec = "  upstream: {baseUrl: 'https://api.carrier.example'}
  contracts:
    - name: shipment
      schemaFrom: {configMapKeyRef: {name: carrier-api, key: openapi.json}, operationId: GetShipment}
";
    let document = r##"{"openapi": "3.0.1", "paths": {"/v1/shipments/{id}": {"get": {"operationId": "GetShipment",
        "responses": {"200": {"content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"enum": ["CREATED"], "nullable": true}}}}}}}}}}}"##;
    let mut maps = ConfigMapData::new();
    maps.insert(
        "carrier-api".into(),
        [("openapi.json".to_owned(), document.to_owned())].into(),
    );
    let config = compile_with(&pi(spec), &mounted(), &maps).unwrap();
    assert_eq!(
        config.contracts[0].schema.get(),
        &serde_json::json!({"allOf": [{"type": "object", "properties": {"status": {"enum": ["CREATED", null]}}}]})
    );

    let missing = compile(&pi(spec), &mounted()).unwrap_err().to_string();
    assert!(
        missing.contains(
            "spec.contracts[0].schemaFrom.configMapKeyRef: ConfigMap \"carrier-api\" not found"
        ),
        "{missing}"
    );
    maps.get_mut("carrier-api").unwrap().clear();
    let no_key = compile_with(&pi(spec), &mounted(), &maps)
        .unwrap_err()
        .to_string();
    assert!(
        no_key.contains("schemaFrom.configMapKeyRef.key"),
        "{no_key}"
    );
    maps.get_mut("carrier-api").unwrap().insert(
        "openapi.json".into(),
        document.replace("GetShipment", "Other"),
    );
    let no_operation = compile_with(&pi(spec), &mounted(), &maps)
        .unwrap_err()
        .to_string();
    assert!(
        no_operation.contains("spec.contracts[0].schemaFrom: ConfigMap \"carrier-api\" key \"openapi.json\": no operation has operationId \"GetShipment\""),
        "{no_operation}"
    );
    let both = compile(
        &pi("  upstream: {baseUrl: 'https://x'}
  contracts: [{name: c, schema: {type: object}, schemaFrom: {configMapKeyRef: {name: a, key: b}}}]
"),
        &mounted(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        both.contains("set exactly one of schema, schemaFrom"),
        "{both}"
    );
}
