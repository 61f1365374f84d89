//! One set of rules: a corpus of valid and invalid ProviderIntegrations
//! goes to a real API server (with the generated CRD) and to `sluice
//! check`, and both must give every manifest the same verdict. Then
//! `kubectl explain` shows a description for the fields users look at first.

mod support;

use std::path::Path;

use support::*;

/// A valid base every case edits.
const BASE: &str = "apiVersion: sluice.dev/v1alpha1
kind: ProviderIntegration
metadata: {name: NAME, namespace: shop}
spec:
  upstream: {baseUrl: 'https://api.carrier.example'}
";

/// (what it tests, extra spec lines, valid?)
const CORPUS: &[(&str, &str, bool)] = &[
    ("the base", "", true),
    // What the issue found the two sides disagreeing on.
    (
        "failureRatio above 1",
        "  circuitBreaker: {failureRatio: 1.5, minRequests: 5, window: 10s, openFor: 30s}\n",
        false,
    ),
    (
        "failureRatio 1",
        "  circuitBreaker: {failureRatio: 1, minRequests: 5, window: 10s, openFor: 30s}\n",
        true,
    ),
    (
        "failureRatio 0",
        "  circuitBreaker: {failureRatio: 0, minRequests: 5, window: 10s, openFor: 30s}\n",
        false,
    ),
    ("maxAttempts 0", "  retry: {maxAttempts: 0}\n", false),
    ("maxAttempts 10", "  retry: {maxAttempts: 10}\n", true),
    ("maxAttempts 11", "  retry: {maxAttempts: 11}\n", false),
    ("jitter 2", "  retry: {backoff: {jitter: 2}}\n", false),
    ("jitter 0", "  retry: {backoff: {jitter: 0}}\n", true),
    (
        "multiplier 0.5",
        "  retry: {backoff: {multiplier: 0.5}}\n",
        false,
    ),
    (
        "multiplier 1",
        "  retry: {backoff: {multiplier: 1}}\n",
        true,
    ),
    (
        "a lower-case method",
        "  rateLimits: [{name: a, match: {methods: [get]}, rate: {requests: 10, per: 1m}}]\n",
        false,
    ),
    (
        "per over 24h",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 25h}}]\n",
        false,
    ),
    (
        "per 24h",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 24h}}]\n",
        true,
    ),
    // Keyed limits.
    (
        "a limit keyed by a header",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1s}, key: {header: X-Account-Id}, maxKeys: 500}]\n",
        true,
    ),
    (
        "a limit keyed by a query parameter and by a path segment",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1s}, key: {query: account}}, {name: b, rate: {requests: 10, per: 1s}, key: {pathSegment: 3}}]\n",
        true,
    ),
    (
        "a key naming two parts",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1s}, key: {header: X-Shop, query: shop}}]\n",
        false,
    ),
    (
        "a key naming nothing",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1s}, key: {}}]\n",
        false,
    ),
    (
        "a key header that is no header name",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1s}, key: {header: 'X Account'}}]\n",
        false,
    ),
    (
        "a key query with '='",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1s}, key: {query: 'a=b'}}]\n",
        false,
    ),
    (
        "path segment 0",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1s}, key: {pathSegment: 0}}]\n",
        false,
    ),
    (
        "path segment 33",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1s}, key: {pathSegment: 33}}]\n",
        false,
    ),
    // Response contracts.
    (
        "a contract with an enum, sampled, for two statuses",
        "  contracts: [{name: shipment, match: {methods: [GET], path: /v1/shipments/*}, schema: {type: object, required: [status], properties: {status: {enum: [CREATED, DELIVERED]}}}, statuses: [200, 203], sample: 0.5, maxBodyBytes: 65536}]\n",
        true,
    ),
    (
        "a contract sampled at 150 %",
        "  contracts: [{name: shipment, schema: {type: object}, sample: 1.5}]\n",
        false,
    ),
    (
        "a contract for status 700",
        "  contracts: [{name: shipment, schema: {type: object}, statuses: [700]}]\n",
        false,
    ),
    (
        "a contract without a schema",
        "  contracts: [{name: shipment}]\n",
        false,
    ),
    (
        "a contract with both schema and schemaFrom",
        "  contracts: [{name: c, schema: {type: object}, schemaFrom: {configMapKeyRef: {name: api, key: openapi.yaml}, operationId: GetShipment}}]\n",
        false,
    ),
    (
        "a contract with no schema",
        "  contracts: [{name: c, statuses: [200]}]\n",
        false,
    ),
    (
        "a schemaFrom ConfigMap name that is not a name",
        "  contracts: [{name: c, schemaFrom: {configMapKeyRef: {name: 'API Docs', key: openapi.yaml}}}]\n",
        false,
    ),
    // Quotas.
    (
        "a monthly quota with a cost from the query and a daily one from a header",
        "  quotas: [{name: elements, limit: 100000, per: calendarMonth, cost: {queryProduct: [origins, destinations], separator: '|'}, warnAt: [50, 80, 95], whenExhausted: Reject}, {name: units, limit: 5000, per: 24h, cost: {header: X-Units}, whenExhausted: Warn, match: {methods: [POST], path: /v1/**}}]\n",
        true,
    ),
    (
        "a quota per 8784h (a leap year)",
        "  quotas: [{name: q, limit: 1, per: 8784h}]\n",
        true,
    ),
    (
        "a quota per 30s",
        "  quotas: [{name: q, limit: 10, per: 30s}]\n",
        false,
    ),
    (
        "a quota per month (not a period)",
        "  quotas: [{name: q, limit: 10, per: month}]\n",
        false,
    ),
    (
        "a quota of 0",
        "  quotas: [{name: q, limit: 0, per: 24h}]\n",
        false,
    ),
    (
        "a cost from a header and the query at once",
        "  quotas: [{name: q, limit: 10, per: 24h, cost: {header: X-Units, queryProduct: [a]}}]\n",
        false,
    ),
    (
        "a separator without queryProduct",
        "  quotas: [{name: q, limit: 10, per: 24h, cost: {header: X-Units, separator: ','}}]\n",
        false,
    ),
    (
        "a separator of nine characters",
        "  quotas: [{name: q, limit: 10, per: 24h, cost: {queryProduct: [a], separator: '|||||||||'}}]\n",
        false,
    ),
    (
        "an empty separator",
        "  quotas: [{name: q, limit: 10, per: 24h, cost: {queryProduct: [a], separator: ''}}]\n",
        false,
    ),
    (
        "an empty queryProduct",
        "  quotas: [{name: q, limit: 10, per: 24h, cost: {queryProduct: []}}]\n",
        false,
    ),
    (
        "a cost header that is not a header name",
        "  quotas: [{name: q, limit: 10, per: 24h, cost: {header: 'X Units'}}]\n",
        false,
    ),
    (
        "a warning at 120 %",
        "  quotas: [{name: q, limit: 10, per: 24h, warnAt: [50, 120]}]\n",
        false,
    ),
    (
        "maxKeys without a key",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1s}, maxKeys: 5}]\n",
        false,
    ),
    (
        "maxKeys 0",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1s}, key: {header: X-Shop}, maxKeys: 0}]\n",
        false,
    ),
    (
        "timeout over 1h",
        "  endpoints: [{name: slow, timeout: 61m, totalTimeout: 2h}]\n",
        false,
    ),
    (
        "timeout 1h",
        "  endpoints: [{name: slow, timeout: 1h, totalTimeout: 2h}]\n",
        true,
    ),
    // Types and names.
    ("an unknown field", "  bogus: 1\n", false),
    (
        "a string for a number",
        "  rateLimits: [{name: a, rate: {requests: ten, per: 1m}}]\n",
        false,
    ),
    (
        "not a duration",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1 minute}}]\n",
        false,
    ),
    (
        "a name that is not a DNS label",
        "  rateLimits: [{name: Tracking_API, rate: {requests: 10, per: 1m}}]\n",
        false,
    ),
    (
        "two limits of one name",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1m}}, {name: a, rate: {requests: 5, per: 1s}}]\n",
        false,
    ),
    (
        "requests 0",
        "  rateLimits: [{name: a, rate: {requests: 0, per: 1m}}]\n",
        false,
    ),
    (
        "requests 1000001",
        "  rateLimits: [{name: a, rate: {requests: 1000001, per: 1m}}]\n",
        false,
    ),
    (
        "burst over requests",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1m}, burst: 11}]\n",
        false,
    ),
    (
        "burst equal to requests",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1m}, burst: 10}]\n",
        true,
    ),
    (
        "a queue with Reject",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1m}, whenExceeded: Reject, queue: {maxDepth: 5}}]\n",
        false,
    ),
    (
        "maxWait over the default total timeout",
        "  rateLimits: [{name: a, rate: {requests: 10, per: 1m}, queue: {maxWait: 31s}}]\n",
        false,
    ),
    (
        "maxWait within a longer total timeout",
        "  upstream: {baseUrl: 'https://x.example', totalTimeout: 60s}\n  rateLimits: [{name: a, rate: {requests: 10, per: 1m}, queue: {maxWait: 45s}}]\n",
        true,
    ),
    (
        "a path pattern with a partial wildcard",
        "  rateLimits: [{name: a, match: {path: '/v1/ship*'}, rate: {requests: 10, per: 1m}}]\n",
        false,
    ),
    (
        "a path pattern with a final **",
        "  rateLimits: [{name: a, match: {methods: [GET, POST], path: '/v1/shipments/*/**'}, rate: {requests: 10, per: 1m}}]\n",
        true,
    ),
    // Upstream.
    (
        "a base URL without a scheme",
        "  upstream: {baseUrl: 'api.carrier.example'}\n",
        false,
    ),
    (
        "a base URL with a query",
        "  upstream: {baseUrl: 'https://x.example/?a=1'}\n",
        false,
    ),
    (
        "totalTimeout below timeout",
        "  upstream: {baseUrl: 'https://x.example', timeout: 10s, totalTimeout: 5s}\n",
        false,
    ),
    (
        "totalTimeout below the default timeout",
        "  upstream: {baseUrl: 'https://x.example', totalTimeout: 5s}\n",
        false,
    ),
    (
        "an endpoint's totalTimeout below the upstream's timeout",
        "  endpoints: [{name: quick, totalTimeout: 5s}]\n",
        false,
    ),
    (
        "bodyTimeout 0s",
        "  upstream: {baseUrl: 'https://x.example', bodyTimeout: 0s}\n",
        false,
    ),
    (
        "a CA bundle without a certificate",
        "  upstream: {baseUrl: 'https://x.example', caBundle: 'hello'}\n",
        false,
    ),
    // Egress.
    ("port 15090", "  egress: {port: 15090}\n", false),
    ("port 1023", "  egress: {port: 1023}\n", false),
    ("port 1024", "  egress: {port: 1024}\n", true),
    // Auth.
    (
        "two credential kinds",
        "  auth: {bearer: {secretRef: {name: a, key: b}}, basic: {usernameRef: {name: a, key: b}, passwordRef: {name: a, key: c}}}\n",
        false,
    ),
    ("no credential kind", "  auth: {rotationGrace: 5m}\n", false),
    (
        "rotationGrace 0s",
        "  auth: {rotationGrace: 0s, bearer: {secretRef: {name: a, key: b}}}\n",
        true,
    ),
    (
        "rotationGrace over 24h",
        "  auth: {rotationGrace: 25h, bearer: {secretRef: {name: a, key: b}}}\n",
        false,
    ),
    (
        "a credential in Host",
        "  auth: {header: {name: Host, secretRef: {name: a, key: b}}}\n",
        false,
    ),
    (
        "a previous key without its end",
        "  auth: {header: {name: X-Api-Key, secretRef: {name: a, key: b}, previousSecretRef: {name: a, key: c}}}\n",
        false,
    ),
    (
        "a Secret name with upper case",
        "  auth: {bearer: {secretRef: {name: Carrier, key: b}}}\n",
        false,
    ),
    (
        "oauth2 with a scope holding a space",
        "  auth: {oauth2ClientCredentials: {tokenUrl: 'https://auth.example/token', clientIdRef: {name: a, key: id}, clientSecretRef: {name: a, key: s}, scopes: ['read write']}}\n",
        false,
    ),
    // Retry.
    ("retrying 401", "  retry: {retryOn: [429, 401]}\n", false),
    ("retrying '401'", "  retry: {retryOn: ['401']}\n", false),
    ("retrying 200", "  retry: {retryOn: [200]}\n", false),
    ("retrying on dns", "  retry: {retryOn: [dns]}\n", false),
    (
        "retrying codes and conditions",
        "  retry: {retryOn: [429, '503', connect-error, reset, timeout]}\n",
        true,
    ),
    (
        "backoff max below initial",
        "  retry: {backoff: {initial: 5s, max: 2s}}\n",
        false,
    ),
    (
        "backoff initial past the total timeout",
        "  retry: {backoff: {initial: 31s, max: 40s}}\n",
        false,
    ),
    (
        "budget window 0.5s",
        "  retry: {budget: {window: 500ms}}\n",
        false,
    ),
    (
        "idempotency without methods",
        "  retry: {idempotency: {header: Idempotency-Key, methods: []}}\n",
        false,
    ),
    // Cache.
    (
        "caching POST",
        "  cache: [{match: {methods: [POST]}, ttl: 5m}]\n",
        false,
    ),
    (
        "caching without methods",
        "  cache: [{match: {}, ttl: 5m}]\n",
        false,
    ),
    (
        "caching GET",
        "  cache: [{match: {methods: [GET]}, ttl: 5m}]\n",
        true,
    ),
    (
        "a cache ttl of 0s",
        "  cache: [{match: {methods: [GET]}, ttl: 0s}]\n",
        false,
    ),
    // Webhooks.
    (
        "a webhook without secrets",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: Stripe, secrets: []}}]\n",
        false,
    ),
    (
        "an unknown scheme",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: Paypal, secrets: [{secretRef: {name: h, key: k}}]}}]\n",
        false,
    ),
    (
        "HmacSha256 without a header",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: HmacSha256, secrets: [{secretRef: {name: h, key: k}}]}}]\n",
        false,
    ),
    (
        "a prefix for GitHub",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: GitHub, prefix: 'sha256=', secrets: [{secretRef: {name: h, key: k}}]}}]\n",
        false,
    ),
    (
        "two webhooks on one path",
        "  webhooks: [{name: a, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: GitHub, secrets: [{secretRef: {name: h, key: k}}]}}, {name: b, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: GitHub, secrets: [{secretRef: {name: h, key: k}}]}}]\n",
        false,
    ),
    (
        "ordering by nothing",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: GitHub, secrets: [{secretRef: {name: h, key: k}}]}, ordering: {objectPointer: /id}}]\n",
        false,
    ),
    (
        "a pointer without a slash",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: GitHub, secrets: [{secretRef: {name: h, key: k}}]}, ordering: {objectPointer: data.id, timestampPointer: /created}}]\n",
        false,
    ),
    (
        "delivery maxAttempts 0",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: GitHub, secrets: [{secretRef: {name: h, key: k}}]}, delivery: {maxAttempts: 0}}]\n",
        false,
    ),
    (
        "a full webhook",
        "  webhooks: [{name: events, path: /hooks/carrier, forwardTo: 'http://127.0.0.1:8080/h', idPointer: /id, verify: {scheme: HmacSha256, header: X-Signature, encoding: Base64, prefix: 'sha256=', tolerance: 10m, secrets: [{secretRef: {name: h, key: k}, notAfter: '2027-01-01T00:00:00Z'}]}, dedup: {ttl: 24h}, ordering: {objectPointer: /data/id, states: {pointer: /type, order: [created, shipped]}}, delivery: {ratePerSecond: 100, maxAttempts: 5, deadLetter: true, timeout: 5s}}]\n",
        true,
    ),
    (
        "a webhook path with a query",
        "  webhooks: [{name: events, path: '/hooks?x=1', forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: GitHub, secrets: [{secretRef: {name: h, key: k}}]}}]\n",
        false,
    ),
    (
        "Stripe's events polled",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: Stripe, secrets: [{secretRef: {name: h, key: k}}]}, polling: {path: /v1/events, items: /data, id: /id, created: /created, query: {limit: '100', 'types[]': 'charge.*'}, interval: 5m, cursor: {param: starting_after, from: lastId}, hasMore: /has_more, lookback: 72h}}]\n",
        true,
    ),
    (
        "a next-page token from the page",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: Stripe, secrets: [{secretRef: {name: h, key: k}}]}, polling: {path: /v1/events, items: /data, id: /id, created: /created, cursor: {param: page_token, from: /next_page_token}}}]\n",
        true,
    ),
    (
        "a cursor from neither",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: Stripe, secrets: [{secretRef: {name: h, key: k}}]}, polling: {path: /v1/events, items: /data, id: /id, created: /created, cursor: {param: page, from: next}}}]\n",
        false,
    ),
    (
        "polling every 500ms",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: Stripe, secrets: [{secretRef: {name: h, key: k}}]}, polling: {path: /v1/events, items: /data, id: /id, created: /created, interval: 500ms, cursor: {param: p}}}]\n",
        false,
    ),
    (
        "a lookback past the dedup ttl",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: Stripe, secrets: [{secretRef: {name: h, key: k}}]}, dedup: {ttl: 24h}, polling: {path: /v1/events, items: /data, id: /id, created: /created, lookback: 48h, cursor: {param: p}}}]\n",
        false,
    ),
    (
        "a lookback past the default dedup ttl",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: Stripe, secrets: [{secretRef: {name: h, key: k}}]}, polling: {path: /v1/events, items: /data, id: /id, created: /created, lookback: 96h, cursor: {param: p}}}]\n",
        false,
    ),
    (
        "the cursor also in the query",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: Stripe, secrets: [{secretRef: {name: h, key: k}}]}, polling: {path: /v1/events, items: /data, id: /id, created: /created, query: {starting_after: evt_1}, cursor: {param: starting_after}}}]\n",
        false,
    ),
    (
        "an items pointer without a slash",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: Stripe, secrets: [{secretRef: {name: h, key: k}}]}, polling: {path: /v1/events, items: data, id: /id, created: /created, cursor: {param: p}}}]\n",
        false,
    ),
    (
        "a polling path with a query",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: Stripe, secrets: [{secretRef: {name: h, key: k}}]}, polling: {path: '/v1/events?limit=3', items: /data, id: /id, created: /created, cursor: {param: p}}}]\n",
        false,
    ),
    (
        "polling without created",
        "  webhooks: [{name: events, path: /hooks, forwardTo: 'http://127.0.0.1:8080/h', verify: {scheme: Stripe, secrets: [{secretRef: {name: h, key: k}}]}, polling: {path: /v1/events, items: /data, id: /id, cursor: {param: p}}}]\n",
        false,
    ),
];

fn manifest(index: usize, extra: &str) -> String {
    // `upstream` may be overridden by the case: YAML keeps the last key only
    // for serde, so cases that replace it drop the base's line instead.
    let base = BASE.replace("NAME", &format!("case-{index}"));
    let base = if extra.contains("  upstream:") {
        base.replace("  upstream: {baseUrl: 'https://api.carrier.example'}\n", "")
    } else {
        base
    };
    format!("{base}{extra}")
}

fn sluice_check(dir: &Path, index: usize, text: &str) -> (bool, String) {
    let file = dir.join(format!("case-{index}.yaml"));
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", file.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_api_server_and_sluice_check_agree() {
    let mut phases = Phases::new();
    phases.enter("a control plane with the generated CRD");
    let cp = ControlPlane::up();
    let crd = repo().join("crds/providerintegrations.sluice.dev.yaml");
    cp.ok(
        &["apply", "--server-side", "-f", crd.to_str().unwrap()],
        None,
    );
    cp.wait_established("providerintegrations.sluice.dev");
    cp.ok(&["create", "namespace", "shop"], None);

    phases.enter("every case to both, verdicts compared");
    let dir = cp.dir.join("corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let mut disagreements = Vec::new();
    for (index, (what, extra, valid)) in CORPUS.iter().enumerate() {
        let text = manifest(index, extra);
        let server = cp.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&text));
        let server_ok = server.status.success();
        let (check_ok, check_text) = sluice_check(&dir, index, &text);
        if server_ok != *valid || check_ok != *valid {
            disagreements.push(format!(
                "{what}: expected {}, API server {} ({}), sluice check {} ({})",
                if *valid { "valid" } else { "invalid" },
                if server_ok { "accepted" } else { "refused" },
                String::from_utf8_lossy(&server.stderr).trim(),
                if check_ok { "accepted" } else { "refused" },
                check_text.trim()
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} cases disagree:\n{}",
        disagreements.len(),
        CORPUS.len(),
        disagreements.join("\n")
    );

    phases.enter("the reference users read first: kubectl explain");
    for field in [
        "providerintegration.spec.upstream",
        "providerintegration.spec.retry.backoff",
        "providerintegration.spec.circuitBreaker",
        "providerintegration.spec.auth.header.secretRef",
        "providerintegration.status.conditions",
    ] {
        let text = cp.ok(&["explain", field], None);
        assert!(
            !text.contains("<empty>"),
            "kubectl explain {field} has an undescribed field:\n{text}"
        );
    }
    let recursive = cp.ok(
        &["explain", "providerintegration.spec", "--recursive"],
        None,
    );
    assert!(recursive.contains("rateLimits"), "{recursive}");
}
