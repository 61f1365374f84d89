//! The operator against a real kube-apiserver, etcd and
//! kube-controller-manager (tests/controlplane), started here on loopback
//! and stopped at the end: CRD schema and CEL rules, reconcile to Ready, live
//! edits, broken references, garbage collection, idle restarts, and an etcd
//! outage.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

#[test]
fn operator_on_a_real_api_server() {
    let mut phases = Phases::new();
    phases.enter("the control plane, the CRD and two namespaces");
    let cp = ControlPlane::up();
    cp.ok(
        &[
            "apply",
            "--server-side",
            "-f",
            repo()
                .join("crds/providerintegrations.sluice.dev.yaml")
                .to_str()
                .unwrap(),
        ],
        None,
    );
    cp.wait_established("providerintegrations.sluice.dev");
    for ns in ["shop", "onboarding"] {
        cp.ok(&["create", "namespace", ns], None);
    }

    phases.enter("The API server itself refuses invalid objects, naming the field");
    let base = "apiVersion: sluice.dev/v1alpha1\nkind: ProviderIntegration\nmetadata: {name: bad, namespace: shop}\nspec:\n  upstream: {baseUrl: 'https://x', timeout: 10s, totalTimeout: 30s}\n";
    let invalid = [
        (
            "  auth: {bearer: {secretRef: {name: a, key: b}}, basic: {usernameRef: {name: a, key: b}, passwordRef: {name: a, key: c}}}\n",
            "set exactly one of header, bearer, basic, oauth2ClientCredentials",
        ),
        (
            "  rateLimits: [{name: a, rate: {requests: 10, per: 1m}, burst: 0}]\n",
            "spec.rateLimits[0].burst in body should be greater than or equal to 1",
        ),
        (
            "  rateLimits: [{name: a, rate: {requests: 10, per: 1m}, burst: 20}]\n",
            "burst must not exceed rate.requests",
        ),
        (
            "  rateLimits: [{name: a, rate: {requests: 10, per: 1m}}, {name: a, rate: {requests: 5, per: 1m}}]\n",
            "spec.rateLimits[1]: Duplicate value",
        ),
        (
            "  rateLimits: [{name: a, rate: {requests: 10, per: 1 minute}}]\n",
            "spec.rateLimits[0].rate.per",
        ),
        (
            "  egress: {port: 15090}\n",
            "spec.egress.port: Invalid value",
        ),
        ("  bogus: true\n", "unknown field \"spec.bogus\""),
    ];
    for (extra, expected) in invalid {
        let out = cp.kubectl(&["apply", "-f", "-"], Some(&format!("{base}{extra}")));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {extra}");
        assert!(
            stderr.contains(expected),
            "for {extra:?} expected {expected:?} in: {stderr}"
        );
    }

    phases.enter("ServiceAccount tokens work for real: TokenRequest, then TokenReview");
    wait(
        "the default ServiceAccount in shop",
        Duration::from_secs(30),
        || {
            cp.kubectl(&["get", "serviceaccount", "default", "-n", "shop"], None)
                .status
                .success()
        },
    );
    let token = cp.ok(&["create", "token", "default", "-n", "shop"], None);
    let review = format!(
        "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {{token: {}}}\n",
        token.trim()
    );
    let reviewed: serde_json::Value =
        serde_json::from_str(&cp.ok(&["create", "-f", "-", "-o", "json"], Some(&review))).unwrap();
    assert_eq!(reviewed["status"]["authenticated"], true, "{reviewed}");
    assert_eq!(
        reviewed["status"]["user"]["username"],
        "system:serviceaccount:shop:default"
    );

    let operator = Operator::start(&cp);
    for example in [
        "examples/carrier.yaml",
        "examples/payments.yaml",
        "examples/oauth2-api.yaml",
    ] {
        cp.ok(
            &["apply", "-f", repo().join(example).to_str().unwrap()],
            None,
        );
    }
    for (ns, name) in [
        ("shop", "shipping"),
        ("shop", "payments"),
        ("onboarding", "kyc"),
    ] {
        wait(
            &format!("{ns}/{name} to be Ready"),
            Duration::from_secs(30),
            || ready(&cp, ns, name).is_some_and(|(s, _)| s == "True"),
        );
    }
    phases.enter("The ConfigMap holds exactly what `sluice render` compiles");
    let rendered: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&sluice(&["render", "examples/carrier.yaml"])).unwrap();
    let cm = cp.json(&["get", "configmap", "-n", "shop", "sluice-shipping"]);
    let stored: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(cm["data"]["integration.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(stored, rendered["integrations"][0]);
    assert_eq!(
        cm["metadata"]["ownerReferences"][0]["kind"],
        "ProviderIntegration"
    );
    let pi = cp.json(&["get", "pi", "-n", "shop", "shipping"]);
    assert_eq!(
        pi["status"]["observedGeneration"],
        pi["metadata"]["generation"]
    );

    phases.enter("Edit a limit: the new config lands within seconds");
    cp.ok(
        &[
            "patch",
            "pi",
            "-n",
            "shop",
            "shipping",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rateLimits/0/rate/requests","value":12}]"#,
        ],
        None,
    );
    let took = wait(
        "the edited limit in the ConfigMap",
        Duration::from_secs(10),
        || {
            cp.json(&["get", "configmap", "-n", "shop", "sluice-shipping"])["data"]["integration.yaml"]
            .as_str()
            .is_some_and(|y| y.contains("requests: 12"))
        },
    );
    eprintln!("edit to ConfigMap: {took:?}");

    phases.enter("A contract's schema from an OpenAPI document in a labelled ConfigMap: compiled inline, recompiled when the ConfigMap changes, reported when it is gone");
    let openapi = |statuses: &str| {
        format!(
            "apiVersion: v1
kind: ConfigMap
metadata: {{name: carrier-openapi, namespace: shop, labels: {{sluice.dev/schema: 'true'}}}}
data:
  openapi.yaml: |
    openapi: 3.0.3
    info: {{title: carrier, version: '1'}}
    paths:
      /v1/shipments/{{id}}:
        get:
          operationId: GetShipment
          responses:
            '200':
              content:
                application/json:
                  schema: {{$ref: '#/components/schemas/shipment'}}
    components:
      schemas:
        shipment:
          type: object
          required: [id, status]
          properties:
            status: {{type: string, enum: [{statuses}]}}
            eta: {{type: string, nullable: true}}
"
        )
    };
    cp.ok(&["apply", "-f", "-"], Some(&openapi("CREATED, DELIVERED")));
    cp.ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: sluice.dev/v1alpha1
kind: ProviderIntegration
metadata: {name: tracking, namespace: shop}
spec:
  podSelector: {matchLabels: {app: tracking}}
  upstream: {baseUrl: 'https://api.carrier.example'}
  egress: {port: 15010}
  contracts:
    - name: shipment
      match: {methods: [GET], path: '/v1/shipments/*'}
      schemaFrom:
        configMapKeyRef: {name: carrier-openapi, key: openapi.yaml}
        operationId: GetShipment
",
        ),
    );
    let compiled = || {
        cp.json(&["get", "configmap", "-n", "shop", "sluice-tracking"])["data"]["integration.yaml"]
            .as_str()
            .map(str::to_owned)
    };
    wait(
        "the tracking contract compiled",
        Duration::from_secs(20),
        || compiled().is_some_and(|y| y.contains("DELIVERED") && y.contains("'null'")),
    );
    assert!(!compiled().unwrap().contains("RETURNED_TO_SENDER"));
    cp.ok(
        &["apply", "-f", "-"],
        Some(&openapi("CREATED, DELIVERED, RETURNED_TO_SENDER")),
    );
    let took = wait(
        "the ConfigMap's change recompiled",
        Duration::from_secs(15),
        || compiled().is_some_and(|y| y.contains("RETURNED_TO_SENDER")),
    );
    eprintln!("schema ConfigMap edit to compiled config: {took:?}");
    cp.ok(
        &[
            "label",
            "configmap",
            "-n",
            "shop",
            "carrier-openapi",
            "sluice.dev/schema-",
        ],
        None,
    );
    wait(
        "the missing schema reported",
        Duration::from_secs(15),
        || {
            ready(&cp, "shop", "tracking").is_some_and(|(s, m)| {
                s == "False"
                    && m.contains("spec.contracts[0].schemaFrom.configMapKeyRef")
                    && m.contains("sluice.dev/schema")
            })
        },
    );
    assert!(
        compiled().is_some_and(|y| y.contains("RETURNED_TO_SENDER")),
        "the last good config stays"
    );
    cp.ok(&["delete", "pi", "-n", "shop", "tracking"], None);
    cp.ok(
        &["delete", "configmap", "-n", "shop", "carrier-openapi"],
        None,
    );

    phases
        .enter("A clash with another integration of the same pods: the status says which and why");
    let clash = std::fs::read_to_string(repo().join("examples/carrier.yaml"))
        .unwrap()
        .replace("name: shipping", "name: shipping-two")
        .replace("port: 15003", "port: 15002");
    cp.ok(&["apply", "-f", "-"], Some(&clash));
    wait("the clash to be reported", Duration::from_secs(15), || {
        ready(&cp, "shop", "shipping-two").is_some_and(|(s, m)| {
            s == "False" && m.contains("spec.egress.port: 15002") && m.contains("payments")
        })
    });
    let events = cp.ok(
        &[
            "get",
            "events",
            "-n",
            "shop",
            "--field-selector",
            "involvedObject.name=shipping-two",
        ],
        None,
    );
    assert!(events.contains("Invalid"), "{events}");

    phases.enter("Delete: the owned ConfigMap is garbage-collected");
    cp.ok(&["delete", "pi", "-n", "shop", "shipping"], None);
    wait(
        "the ConfigMap to be garbage-collected",
        Duration::from_secs(30),
        || {
            !cp.kubectl(&["get", "configmap", "-n", "shop", "sluice-shipping"], None)
                .status
                .success()
        },
    );

    phases.enter("Restart: with nothing changed, no writes at all (the first run has created the serving certificate once it is ready)");
    wait("the operator ready", Duration::from_secs(30), || {
        operator.is_ready()
    });
    drop(operator);
    let operator = Operator::start(&cp);
    wait(
        "the restarted operator to take the lease and reconcile",
        Duration::from_secs(60),
        || operator.counter("sluice_operator_reconciles_total") >= 3.0,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        operator.counter("sluice_operator_api_writes_total"),
        0.0,
        "writes after a restart with nothing changed"
    );

    phases.enter("A second replica waits for the Lease; it takes over when the leader dies");
    let standby = Operator::start(&cp);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        standby.counter("sluice_operator_reconciles_total"),
        0.0,
        "two replicas reconciled at once"
    );
    drop(operator);
    let took = wait("the standby to take over", Duration::from_secs(45), || {
        standby.counter("sluice_operator_reconciles_total") >= 3.0
    });
    eprintln!("leader failover: {took:?}");
    let operator = standby;

    phases.enter("etcd down for a few seconds: the operator recovers and keeps working");
    let etcd_pid = std::fs::read_to_string(cp.dir.join("etcd.pid")).unwrap();
    Command::new("kill")
        .args(["-9", etcd_pid.trim()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut restarted = Command::new(cp.dir.join("etcd.sh"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(cp.dir.join("etcd.pid"), restarted.id().to_string()).unwrap();
    wait(
        "the API server to answer again",
        Duration::from_secs(30),
        || {
            cp.kubectl(&["get", "--raw", "/readyz"], None)
                .status
                .success()
        },
    );
    cp.ok(
        &[
            "patch",
            "pi",
            "-n",
            "shop",
            "payments",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rateLimits/0/rate/requests","value":90}]"#,
        ],
        None,
    );
    wait("a change after the outage", Duration::from_secs(30), || {
        cp.json(&["get", "configmap", "-n", "shop", "sluice-payments"])["data"]["integration.yaml"]
            .as_str()
            .is_some_and(|y| y.contains("requests: 90"))
    });
    drop(operator);
    phases.enter("This etcd is our child: stop and reap it here (down finds no pid to kill)");
    let _ = restarted.kill();
    let _ = restarted.wait();
}
