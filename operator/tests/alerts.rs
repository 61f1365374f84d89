//! The chart's alerts under promtool (`promtool test rules`), fed with the
//! series a real sidecar and the operator export:
//!
//! - the PrometheusRule is rendered from the chart (thresholds as users set
//!   them) and passes `promtool check rules`;
//! - a sidecar binary runs a ProviderIntegration with an endpoint, a
//!   Cluster limit (its shared state unreachable), retries, a breaker and a
//!   webhook, in front of a loopback provider answering 200, 429, 422 and
//!   500; its scrape passes `promtool check metrics` and so does the
//!   operator's registry;
//! - each test group picks its input series from those scrapes, stored as
//!   the chart's PodMonitor and ServiceMonitor store them (target labels,
//!   honorLabels), so a renamed metric or label, or a monitor that renames
//!   the sidecar's labels, fails here;
//! - every alert has a group where it fires and one where it must not.

#[path = "alerts/cases.rs"]
mod cases;
#[path = "alerts/series.rs"]
mod series;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_contract::exposition::Exposition;
use sluice_operator::metrics::ControllerMetrics;
use support::*;

use cases::{Group, Scrapes};
use series::{Scrape, Target};

/// The chart rendered with its monitoring objects on: one YAML document each.
fn render_monitoring(dir: &Path) -> Vec<Value> {
    let out = Command::new(controlplane_bin("helm"))
        .args(["template", "sluice"])
        .arg(repo().join("charts/sluice"))
        .args(["-n", "sluice-system", "--kube-version", "1.37.0"])
        .args(["--set", "metrics.prometheusRule.enabled=true"])
        .args(["--set", "metrics.serviceMonitor.enabled=true"])
        .args(["--show-only", "templates/prometheusrule.yaml"])
        .args(["--show-only", "templates/monitoring.yaml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde_yaml_ng::with::singleton_map_recursive::deserialize(doc).unwrap())
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("the chart renders no {kind}"))
}

/// The integration the sidecar runs: every part an alert watches.
const INTEGRATION: &str = "apiVersion: sluice.dev/v1alpha1
kind: ProviderIntegration
metadata: {name: payments, namespace: shop}
spec:
  podSelector: {matchLabels: {app: checkout}}
  upstream: {baseUrl: 'http://UPSTREAM', timeout: 2s, totalTimeout: 5s}
  egress: {port: EGRESS}
  auth:
    bearer:
      secretRef: {name: payments-key, key: current}
  endpoints:
    - name: charges
      match: {path: '/v1/charges/**'}
  rateLimits:
    - name: overall
      rate: {requests: 100, per: 1s}
      scope: Cluster
      queue: {maxDepth: 50}
  contracts:
    - name: charge
      match: {path: '/v1/charges/**'}
      schema: {type: object, required: [id]}
  quotas:
    - name: monthly
      limit: 1000
      per: calendarMonth
      warnAt: [50, 80]
  retry:
    maxAttempts: 2
    backoff: {initial: 10ms, max: 20ms}
    retryOn: [429, 503]
  circuitBreaker: {failureRatio: 0.5, minRequests: 20, window: 30s, openFor: 15s}
  webhooks:
    - name: events
      path: /webhooks/payments
      forwardTo: http://127.0.0.1:9/hooks
      verify:
        scheme: StandardWebhooks
        secrets: [{secretRef: {name: payments-webhook, key: current}}]
      polling: {path: /v1/events, items: /data, id: /id, created: /created, cursor: {param: starting_after}}
---
apiVersion: sluice.dev/v1alpha1
kind: ProviderIntegration
metadata: {name: kyc, namespace: shop}
spec:
  podSelector: {matchLabels: {app: checkout}}
  upstream: {baseUrl: 'http://UPSTREAM'}
  egress: {port: KYC_EGRESS}
  auth:
    oauth2ClientCredentials:
      tokenUrl: http://UPSTREAM/oauth/token
      clientIdRef: {name: kyc-oauth, key: client-id}
      clientSecretRef: {name: kyc-oauth, key: client-secret}
";

struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the sidecar, sends one request per provider answer, and returns
/// its scrape (the classic text format: what `promtool check metrics` reads).
fn scrape_a_sidecar(dir: &Path) -> String {
    let upstream = Upstream::start(|path| match path.rsplit('/').next() {
        Some("throttled") => 429,
        Some("invalid") => 422,
        Some("broken") => 500,
        _ => 200,
    });
    for (secret, value) in [
        ("payments-key/current", "sk_test_alerts"),
        (
            "payments-webhook/current",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
        ("kyc-oauth/client-id", "kyc-client"),
        ("kyc-oauth/client-secret", "kyc-secret"),
    ] {
        let path = dir.join("secrets").join(secret);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, value).unwrap();
    }
    let (egress, admin, webhooks) = (free_port(), free_port(), free_port());
    let manifest = dir.join("payments.yaml");
    std::fs::write(
        &manifest,
        INTEGRATION
            .replace("UPSTREAM", &upstream.addr.to_string())
            .replace("KYC_EGRESS", &free_port().to_string())
            .replace("EGRESS", &egress.to_string()),
    )
    .unwrap();
    let admin_addr = format!("127.0.0.1:{admin}");
    let config = sluice(&[
        "render",
        "--secrets-root",
        dir.join("secrets").to_str().unwrap(),
        "--admin-listen",
        &admin_addr,
        "--webhook-listen",
        &format!("127.0.0.1:{webhooks}"),
        "--state-dir",
        dir.join("state").to_str().unwrap(),
        manifest.to_str().unwrap(),
    ]);
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    // Nothing listens there: the shared state is down, as the alerts see it.
    let unreachable = format!("redis://127.0.0.1:{}/0", free_port());
    let _sidecar = Sidecar(
        Command::new(sidecar_binary())
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .args(["--shared-state", &unreachable])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait("the sidecar's /readyz", Duration::from_secs(20), || {
        http_get(&admin_addr, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    let egress_addr = format!("127.0.0.1:{egress}");
    for (path, status) in [
        ("/v1/charges/ok", 200),
        ("/v1/charges/throttled", 429),
        ("/v1/charges/invalid", 422),
        ("/v1/charges/broken", 500),
        ("/v1/charges/drifted", 200),
    ] {
        let answer = http_get(&egress_addr, path).unwrap_or_default();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {answer}"
        );
    }
    // Contracts are checked after the answer: wait for the count.
    wait("the contract's check", Duration::from_secs(10), || {
        http_get(&admin_addr, "/metrics")
            .is_some_and(|m| m.contains("sluice_contract_violations_total{"))
    });
    let answer = http_get(&admin_addr, "/metrics").unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}

/// Every series a dashboard panel reads exists in a scrape (or is a
/// recording rule of the chart), with every label the panel names.
fn check_dashboard(scrapes: &Scrapes, rules: &Value) -> usize {
    let recorded: BTreeSet<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["record"].as_str())
        .collect();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("charts/sluice/dashboards/sluice.json")).unwrap(),
    )
    .unwrap();
    let metric = regex::Regex::new(r"\b(sluice[a-z0-9_:]*)(\{[^}]*\})?").unwrap();
    let matcher = regex::Regex::new(r"([a-z_]+)\s*=~?").unwrap();
    let grouping = regex::Regex::new(r"by \(([^)]*)\)").unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let grouped: Vec<&str> = grouping
                .captures_iter(expr)
                .flat_map(|c| c.get(1).unwrap().as_str().split(','))
                .map(str::trim)
                .filter(|l| !l.is_empty() && *l != "le")
                .collect();
            for found in metric.captures_iter(expr) {
                let name = &found[1];
                if recorded.contains(name) {
                    continue;
                }
                let mut labels: Vec<&str> = found
                    .get(2)
                    .map(|m| {
                        matcher
                            .captures_iter(m.as_str())
                            .map(|c| c.get(1).unwrap().as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                labels.extend(&grouped);
                let series: Vec<&series::Series> = scrapes
                    .sidecar
                    .series
                    .iter()
                    .chain(&scrapes.operator.series)
                    .filter(|s| s.name == name)
                    .collect();
                assert!(
                    !series.is_empty(),
                    "panel {} reads {name}, which no scrape has",
                    panel["title"]
                );
                for label in &labels {
                    assert!(
                        series.iter().all(|s| s.labels.contains_key(*label)),
                        "panel {} reads {name} by {label}, a label its series lack",
                        panel["title"]
                    );
                }
                checked += 1;
            }
        }
    }
    checked
}

/// promtool's test file: the groups, with each expected alert's constant
/// labels and descriptions taken from the rule it tests.
fn test_file(groups: &[Group], rules: &Value) -> Value {
    let alerts: BTreeMap<&str, &Value> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| Some((r["alert"].as_str()?, r)))
        .collect();
    let tests: Vec<Value> = groups
        .iter()
        .map(|group| {
            let input: Vec<Value> = group
                .input
                .iter()
                .map(|(series, values)| json!({"series": series.selector(), "values": values}))
                .collect();
            let checks: Vec<Value> = group
                .tests
                .iter()
                .map(|test| {
                    let rule = alerts
                        .get(test.alert)
                        .unwrap_or_else(|| panic!("the chart has no alert {}", test.alert));
                    let firing: Vec<Value> = test
                        .firing
                        .iter()
                        .map(|expected| {
                            let mut labels = expected.labels.clone();
                            for (k, v) in rule["labels"].as_object().unwrap() {
                                labels.insert(k.clone(), v.as_str().unwrap().to_owned());
                            }
                            let mut annotations = json!({"summary": expected.summary});
                            if let Some(description) = rule["annotations"]["description"].as_str() {
                                assert!(!description.contains("{{"), "templated description");
                                annotations["description"] = json!(description);
                            }
                            json!({"exp_labels": labels, "exp_annotations": annotations})
                        })
                        .collect();
                    json!({
                        "eval_time": format!("{}m", test.minute),
                        "alertname": test.alert,
                        "exp_alerts": firing,
                    })
                })
                .collect();
            json!({
                "name": group.name,
                "interval": "1m",
                "input_series": input,
                "alert_rule_test": checks,
            })
        })
        .collect();
    json!({
        "rule_files": ["rules.json"],
        "evaluation_interval": "1m",
        "tests": tests,
    })
}

#[test]
fn every_alert_fires_when_it_should_and_only_then() {
    let dir = std::env::temp_dir().join(format!("sluice-alerts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut phases = Phases::new();

    phases.enter("The chart's rules, rendered, pass promtool check rules");
    let docs = render_monitoring(&dir);
    let rules = of_kind(&docs, "PrometheusRule")["spec"].clone();
    std::fs::write(dir.join("rules.json"), rules.to_string()).unwrap();
    println!(
        "{}",
        promtool(
            &["check", "rules", dir.join("rules.json").to_str().unwrap()],
            None
        )
    );
    let honor = |kind: &str, endpoints: &str| {
        of_kind(&docs, kind)["spec"][endpoints][0]["honorLabels"]
            .as_bool()
            .unwrap_or(false)
    };
    let (pod_monitor_honors, service_monitor_honors) = (
        honor("PodMonitor", "podMetricsEndpoints"),
        honor("ServiceMonitor", "endpoints"),
    );

    phases.enter("A real sidecar's scrape and the operator's, through promtool check metrics");
    let sidecar_text = scrape_a_sidecar(&dir);
    promtool(&["check", "metrics"], Some(&sidecar_text));
    let operator_text = ControllerMetrics::new().encode(Exposition::Text);
    promtool(&["check", "metrics"], Some(&operator_text));
    // What Prometheus Operator adds to each target's series.
    let pod = Target::new(
        &[
            ("namespace", "shop"),
            ("pod", "checkout-5d8f7c9b4-x2k9q"),
            ("container", "sluice-sidecar"),
            ("endpoint", "sluice-admin"),
            ("job", "sluice-system/sluice-sidecars"),
            ("instance", "10.88.0.12:15090"),
        ],
        pod_monitor_honors,
    );
    let operator = Target::new(
        &[
            ("namespace", "sluice-system"),
            ("pod", "sluice-operator-7c9d5-abcde"),
            ("container", "operator"),
            ("endpoint", "metrics"),
            ("service", "sluice-operator"),
            ("job", "sluice-operator"),
            ("instance", "10.88.0.9:8080"),
        ],
        service_monitor_honors,
    );
    let scrapes = Scrapes {
        sidecar: Scrape::new(&sidecar_text, &pod),
        operator: Scrape::new(&operator_text, &operator),
    };

    phases.enter("The dashboard's queries against the scrapes");
    let queried = check_dashboard(&scrapes, &rules);
    println!("{queried} series selectors of the dashboard found in the scrapes");

    phases.enter("promtool test rules: every alert, firing and not");
    let groups = cases::groups(&scrapes);
    let alerts: BTreeSet<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    let tested = |firing: bool| -> BTreeSet<&str> {
        groups
            .iter()
            .flat_map(|g| &g.tests)
            .filter(|t| t.firing.is_empty() != firing)
            .map(|t| t.alert)
            .collect()
    };
    assert_eq!(tested(true), alerts, "alerts without a firing test");
    assert_eq!(
        tested(false),
        alerts,
        "alerts without a test where they stay silent"
    );
    let file = dir.join("tests.json");
    std::fs::write(&file, test_file(&groups, &rules).to_string()).unwrap();
    let out = promtool(&["test", "rules", file.to_str().unwrap()], None);
    println!("{out}{} alerts, {} groups", alerts.len(), groups.len());
    let _ = std::fs::remove_dir_all(&dir);
}
