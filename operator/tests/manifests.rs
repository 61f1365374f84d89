//! `sluice check`, `render` and `crd` as a user runs them, and the field
//! paths of their error messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sluice_sidecar::config::SidecarConfig;

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("running sluice")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn check_text(manifest: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "sluice-check-{}-{}",
        std::process::id(),
        fastrand_name()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pi.yaml");
    std::fs::write(&file, manifest).unwrap();
    let out = sluice(&["check", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn fastrand_name() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

const VALID: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: ProviderIntegration
metadata: {name: shipping, namespace: shop}
spec:
  upstream: {baseUrl: "https://api.carrier.example", timeout: 10s, totalTimeout: 30s}
  egress: {port: 15001}
  auth:
    header: {name: X-Api-Key, secretRef: {name: carrier-key, key: current}}
  rateLimits:
    - name: tracking
      match: {methods: [GET], path: "/v1/shipments/*/tracking"}
      rate: {requests: 20, per: 1m}
      burst: 5
    - name: all
      match: {}
      rate: {requests: 300, per: 1m}
"#;

#[test]
fn examples_check_clean() {
    let examples: Vec<String> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(examples.len() >= 4);
    let mut args = vec!["check"];
    args.extend(examples.iter().map(String::as_str));
    let out = sluice(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn valid_manifest_passes() {
    let (ok, text) = check_text(VALID);
    assert!(ok, "{text}");
    assert!(text.contains("ok: "), "{text}");
}

/// Each broken manifest, and the words its error must contain.
#[test]
fn errors_name_the_field_and_the_problem() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "requests: 300, per: 1m",
            "requests: 300, per: 1 minute",
            "spec.rateLimits[1].rate.per: \"1 minute\" is not a duration",
        ),
        (
            "burst: 5",
            "burst: 0",
            "spec.rateLimits[0].burst: 0 is out of range: must be between 1 and 1000000",
        ),
        (
            "burst: 5",
            "burst: 25",
            "spec.rateLimits[0].burst: burst must not exceed rate.requests",
        ),
        (
            "- name: all",
            "- name: tracking",
            "spec.rateLimits[1].name: \"tracking\" is used by an earlier item",
        ),
        (
            "burst: 5",
            "burst: 5\n      queue: {maxWait: 1m}",
            "spec.rateLimits[0].queue.maxWait: a rate limit's queue.maxWait must not exceed upstream.totalTimeout",
        ),
        (
            "timeout: 10s, totalTimeout: 30s",
            "timeout: 10s, totalTimeout: 5s",
            "spec.upstream.totalTimeout: totalTimeout must be at least timeout",
        ),
        (
            "egress: {port: 15001}",
            "egress: {port: 15090}",
            "spec.egress.port: port is reserved",
        ),
        (
            "egress: {port: 15001}",
            "egress: {port: 15001}\n  bogus: 1",
            "spec.bogus: unknown field \"bogus\"",
        ),
        (
            "  auth:\n",
            "  auth:\n    bearer: {secretRef: {name: a, key: b}}\n",
            "spec.auth: set exactly one of",
        ),
        (
            "path: \"/v1/shipments/*/tracking\"",
            "path: \"/v1/ship*/tracking\"",
            "spec.rateLimits[0].match.path",
        ),
        (
            "methods: [GET]",
            "methods: [get]",
            "spec.rateLimits[0].match.methods[0]",
        ),
        (
            "baseUrl: \"https://api.carrier.example\"",
            "baseUrl: \"api.carrier.example\"",
            "spec.upstream.baseUrl",
        ),
        (
            "requests: 20",
            "requests: \"twenty\"",
            "spec.rateLimits[0].rate.requests",
        ),
        (
            "secretRef: {name: carrier-key, key: current}}",
            "secretRef: {name: carrier-key, key: current}, previousSecretRef: {name: carrier-key, key: old}}",
            "spec.auth.header.previousValidUntil: previousSecretRef and previousValidUntil go together",
        ),
        ("name: shipping", "name: Shipping_Co", "metadata.name"),
    ];
    for (from, to, expected) in cases {
        assert!(
            VALID.contains(from),
            "case setup: {from:?} not in the manifest"
        );
        let manifest = VALID.replacen(from, to, 1);
        let (ok, text) = check_text(&manifest);
        assert!(!ok, "accepted a manifest with {to:?}");
        assert!(
            text.contains(expected),
            "for {to:?} expected {expected:?} in:\n{text}"
        );
    }
}

#[test]
fn retrying_permanent_errors_is_refused() {
    let manifest = format!("{VALID}  retry: {{retryOn: [429, 401]}}\n");
    let (ok, text) = check_text(&manifest);
    assert!(!ok);
    assert!(
        text.contains("spec.retry.retryOn[1]: retryOn names a permanent error"),
        "{text}"
    );
}

#[test]
fn clashing_ports_are_reported() {
    let second = VALID.replace("name: shipping", "name: shipping-two");
    let (ok, text) = check_text(&format!("{VALID}---\n{second}"));
    assert!(!ok);
    assert!(
        text.contains("15001 is used by several integrations"),
        "{text}"
    );
}

#[test]
fn render_prints_a_config_the_sidecar_loads() {
    let out = sluice(&["render", "examples/carrier.yaml", "examples/payments.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let config = SidecarConfig::from_yaml(&yaml).expect("the sidecar accepts what render prints");
    assert_eq!(config.integrations.len(), 2);
    let shipping = &config.integrations[0];
    assert_eq!(shipping.name, "shipping");
    assert_eq!(shipping.rate_limits[0].requests, 20);
    assert_eq!(shipping.rate_limits[1].burst, 30);
    assert_eq!(shipping.cache.rules[0].ttl.to_string(), "5m");
    assert!(yaml.contains("/var/run/sluice/secrets/carrier-key/current"));
    // Defaults are spelled out, so what a pod enforces can be read.
    assert!(yaml.contains("maxDepth: 1000"));
}

#[test]
fn checked_in_crd_is_current() {
    let out = sluice(&["crd"]);
    assert!(out.status.success());
    let current = String::from_utf8(out.stdout).unwrap();
    for copy in [
        "crds/providerintegrations.sluice.dev.yaml",
        "charts/sluice/crds/providerintegrations.sluice.dev.yaml",
    ] {
        let checked_in = std::fs::read_to_string(repo_root().join(copy)).unwrap();
        assert!(
            current == checked_in,
            "{copy} is stale: run `cargo run --bin sluice -- crd > {copy}`"
        );
    }
}

/// `helm show values` and editors show these; a value without one is a
/// value users must guess at.
#[test]
fn every_chart_value_is_described() {
    fn walk(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        for (key, child) in node["properties"].as_object().into_iter().flatten() {
            let path = format!("{path}.{key}");
            if child["description"].as_str().is_none_or(str::is_empty) {
                missing.push(path.clone());
            }
            walk(child, &path, missing);
        }
    }
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("charts/sluice/values.schema.json")).unwrap(),
    )
    .unwrap();
    let mut missing = Vec::new();
    walk(&schema, "", &mut missing);
    assert!(
        missing.is_empty(),
        "values without a description: {missing:?}"
    );
}

/// One bound for a webhook queue's size: the chart's schema, the operator's
/// flag and the sidecar's (through the contract) agree.
#[test]
fn the_webhook_queue_bound_is_the_contracts() {
    let bound = sluice_contract::bounds::MAX_QUEUE_BYTES;
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("charts/sluice/values.schema.json")).unwrap(),
    )
    .unwrap();
    let chart = &schema["properties"]["sidecar"]["properties"]["webhookQueueBytes"];
    assert_eq!(chart["minimum"].as_u64(), Some(bound.min), "{chart}");
    let below = (bound.min - 1).to_string();
    let out = sluice(&["operator", "--sidecar-webhook-queue-bytes", &below]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--sidecar-webhook-queue-bytes") && stderr.contains(&bound.to_string()),
        "{stderr}"
    );
}

#[test]
fn webhook_errors_name_the_field() {
    let webhook = |verify: &str, extra: &str| {
        format!(
            "{VALID}  webhooks:\n    - name: events\n      path: /webhooks/carrier\n      forwardTo: http://127.0.0.1:8080/hooks\n      verify: {verify}\n{extra}"
        )
    };
    let good = webhook(
        "{scheme: StandardWebhooks, secrets: [{secretRef: {name: hook, key: current}}]}",
        "",
    );
    let (ok, text) = check_text(&good);
    assert!(ok, "{text}");
    let cases = [
        (
            webhook("{scheme: StandardWebhooks, secrets: []}", ""),
            "spec.webhooks[0].verify.secrets: list at least one secret",
        ),
        (
            webhook("{scheme: Paypal, secrets: []}", ""),
            "spec.webhooks[0].verify.scheme",
        ),
        (
            webhook(
                "{scheme: HmacSha256, secrets: [{secretRef: {name: h, key: k}}]}",
                "",
            ),
            "spec.webhooks[0].verify.header: header is required for scheme HmacSha256",
        ),
        (
            webhook(
                "{scheme: GitHub, secrets: [{secretRef: {name: h, key: k}}]}",
                "      ordering: {objectPointer: data.id, timestampPointer: /created}\n",
            ),
            "spec.webhooks[0].ordering.objectPointer",
        ),
        (
            webhook(
                "{scheme: GitHub, secrets: [{secretRef: {name: h, key: k}}]}",
                "      delivery: {maxAttempts: 0}\n",
            ),
            "spec.webhooks[0].delivery.maxAttempts: 0 is out of range: must be between 1 and 100",
        ),
        (
            webhook(
                "{scheme: GitHub, secrets: [{secretRef: {name: h, key: k}}], tolerance: soon}",
                "",
            ),
            "spec.webhooks[0].verify.tolerance",
        ),
    ];
    for (manifest, expected) in cases {
        let (ok, text) = check_text(&manifest);
        assert!(!ok, "accepted:\n{manifest}");
        assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
    }
}

#[test]
fn inject_adds_the_sidecar_to_the_example_app_offline() {
    let out = sluice(&[
        "inject",
        "-f",
        "examples/carrier.yaml",
        "-f",
        "examples/app.yaml",
        "--sidecar-image",
        "registry.example/sluice-sidecar:test",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8(out.stderr).unwrap();
    assert!(
        report.contains("deployment/checkout: injected (shipping)"),
        "{report}"
    );
    let docs: Vec<serde_json::Value> =
        serde_yaml_ng::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["initContainers"][0]["image"],
        "registry.example/sluice-sidecar:test"
    );
    assert_eq!(
        pod["containers"][0]["env"][0]["name"],
        "SLUICE_SHIPPING_URL"
    );
    assert_eq!(
        pod["containers"][0]["env"][0]["value"],
        "http://127.0.0.1:15003"
    );
    // The ProviderIntegration and the Namespace pass through unchanged.
    assert!(docs.iter().any(|d| d["kind"] == "ProviderIntegration"));
    assert!(docs.iter().any(|d| d["kind"] == "Namespace"));
}

#[test]
fn check_reports_every_problem_of_every_document_with_its_file() {
    let broken = VALID
        .replacen("burst: 5", "burst: 5\n      scope: Everywhere", 1)
        .replacen("per: 1m}", "per: 1 minute}", 1)
        .replacen(
            "egress: {port: 15001}",
            "egress: {port: 15001}\n  retrys: {}",
            1,
        );
    let typo = "apiVersion: sluice.dev/v1alpha1\nkind: ProviderIntegraton\nmetadata: {name: typo}\nspec: {}\n";
    let (ok, text) = check_text(&format!("{broken}---\n{typo}"));
    assert!(!ok, "{text}");
    for expected in [
        "(document 1, ProviderIntegration shipping): spec.rateLimits[0].scope: \"Everywhere\" is not one of Pod, Cluster",
        "(document 1, ProviderIntegration shipping): spec.rateLimits[0].rate.per: \"1 minute\" is not a duration",
        "(document 1, ProviderIntegration shipping): spec.retrys: unknown field \"retrys\"; did you mean retry?",
        "(document 2, ProviderIntegraton typo): kind: \"ProviderIntegraton\" is not a kind of sluice.dev/v1alpha1; did you mean ProviderIntegration?",
    ] {
        assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
    }
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains("pi.yaml"),
            "a message without its file: {line}"
        );
    }
    let (ok, text) = check_text("");
    assert!(!ok);
    assert!(text.contains("pi.yaml: holds no YAML document"), "{text}");
}

/// `kubectl explain` shows each field's description: every field needs one.
#[test]
fn every_crd_field_is_described() {
    let out = sluice(&["crd"]);
    let crd: serde_json::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut missing = Vec::new();
    let mut fields = 0;
    fn walk(node: &serde_json::Value, path: &str, fields: &mut usize, missing: &mut Vec<String>) {
        for (name, property) in node["properties"].as_object().into_iter().flatten() {
            let path = format!("{path}.{name}");
            *fields += 1;
            let described = property["description"]
                .as_str()
                .is_some_and(|d| d.trim().len() > 3);
            if !described {
                missing.push(path.clone());
            }
            walk(property, &path, fields, missing);
            walk(&property["items"], &format!("{path}[]"), fields, missing);
        }
    }
    for part in ["spec", "status"] {
        walk(&root["properties"][part], part, &mut fields, &mut missing);
    }
    assert!(fields > 140, "only {fields} fields found");
    assert!(
        missing.is_empty(),
        "{} of {fields} fields have no description: {missing:?}",
        missing.len()
    );
}
