//! Sidecar injection and live config on a real control plane
//! (tests/controlplane), with the Helm chart's objects and RBAC:
//!
//! - the chart lints, renders, passes a server-side dry run and is applied;
//! - the operator runs as the chart's ServiceAccount (a real token), so a
//!   missing RBAC rule fails here, with its webhook registered by URL;
//! - pods of a Deployment, a Job and a StatefulSet in a namespace that
//!   enforces Pod Security `restricted` get the sidecar; opted-out and
//!   other namespaces' pods do not;
//! - a `sluice-sidecar`, started with the args the injector gave the pod and
//!   the pod's bound token, follows the operator's config stream: an edited
//!   limit is enforced within about a second (measured), and Cluster limits
//!   are re-divided when the Deployment scales;
//! - with the operator down, pods are still created (failurePolicy Ignore)
//!   and the sidecar keeps its last good config; back up, the operator
//!   reports the pod that missed its sidecar;
//! - the serving certificate is renewed and reloaded without a restart,
//!   and one from files (cert-manager) is served and its rotation picked up.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;

/// One HTTP/1.1 GET on a new connection; the status and the x-sluice-error header.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let error = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-sluice-error: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((status, if error.is_empty() { body } else { error }))
}

fn restricted_container(name: &str) -> String {
    format!(
        "{{name: {name}, image: shop/app, securityContext: {{runAsNonRoot: true, runAsUser: 1000, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}, seccompProfile: {{type: RuntimeDefault}}}}}}"
    )
}

fn live_integration(port: u16, upstream: SocketAddr, requests: u32, per: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1
kind: ProviderIntegration
metadata: {{name: live, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: live}}}}
  upstream: {{baseUrl: 'http://{upstream}', timeout: 2s, totalTimeout: 5s}}
  egress: {{port: {port}}}
  retry: {{maxAttempts: 1}}
  rateLimits:
    - {{name: shared, match: {{}}, rate: {{requests: {requests}, per: {per}}}, scope: Cluster, whenExceeded: Reject}}
"
    )
}

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: shop}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{}]
",
        restricted_container("app")
    )
}

/// Pods of the namespace with a label, as JSON.
fn pods(cp: &ControlPlane, namespace: &str, selector: &str) -> Vec<serde_json::Value> {
    cp.json(&["get", "pods", "-n", namespace, "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn sidecar_of(pod: &serde_json::Value) -> Option<serde_json::Value> {
    pod["spec"]["initContainers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "sluice-sidecar")
        .cloned()
}

/// A kubeconfig that authenticates with `token` (a ServiceAccount's).
fn token_kubeconfig(cp: &ControlPlane, token: &str) -> std::path::PathBuf {
    let admin = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap();
    let ca = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority: "))
        .unwrap();
    let path = cp.dir.join("operator-sa.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{server}', certificate-authority: '{ca}'}}\nusers:\n- name: sluice-operator\n  user: {{token: '{}'}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: sluice-operator}}\ncurrent-context: c\n",
            token.trim()
        ),
    )
    .unwrap();
    path
}

fn admin_get(addr: &str, path: &str) -> Option<String> {
    http_get(addr, path)
}

fn metric(text: &str, name: &str) -> f64 {
    support::sample(text, name).unwrap_or(0.0)
}

/// The `requests` of the running config's first rate limit, from /config.
fn enforced_requests(admin: &str) -> Option<u64> {
    let text = admin_get(admin, "/config")?;
    let json: serde_json::Value = serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()?;
    json["integrations"][0]["rateLimits"][0]["requests"].as_u64()
}

struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every optional part of the chart on, and every value a user may set
/// set: all but cert-manager, whose CRDs the test control plane lacks (the
/// lint covers it).
fn every_option() -> Vec<&'static str> {
    [
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prometheus",
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=prometheus",
        "metrics.grafanaDashboard.enabled=true",
        "sharedState.deploy=true",
        "sharedState.secretNamespaces={shop}",
        "operator.watchNamespace=shop",
        "operator.replicas=3",
        "operator.podDisruptionBudget.minAvailable=2",
        "sidecar.resources.cpuLimit=1",
        "sidecar.webhookQueueBytes=268435456",
        "injector.failurePolicy=Fail",
        "injector.excludeNamespaces={legacy}",
    ]
    .iter()
    .flat_map(|value| ["--set", value])
    .collect()
}

fn served_serial(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn injection_and_live_config_with_the_charts_rbac() {
    let cp = ControlPlane::up();
    let helm = cp.dir.join("bin/helm");
    let chart = repo().join("charts/sluice");

    let mut phases = Phases::new();
    phases.enter("The chart: lint (every optional part on, too), render, dry run, apply");
    let with_cert_manager = [
        every_option(),
        vec!["--set", "tls.certManager.enabled=true"],
    ]
    .concat();
    for extra in [&[][..], &with_cert_manager[..]] {
        let out = Command::new(&helm)
            .arg("lint")
            .arg(&chart)
            .args(["--strict"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm lint: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let refused = Command::new(&helm)
        .arg("lint")
        .arg(&chart)
        .args(["--set", "injector.failurePolicy=Sometimes"])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "values.schema.json must refuse a bad failurePolicy"
    );
    let rendered = Command::new(&helm)
        .args(["template", "sluice"])
        .arg(&chart)
        .args([
            "-n",
            "sluice-system",
            "--include-crds",
            "--kube-version",
            "1.37.0",
        ])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let rendered = String::from_utf8(rendered.stdout).unwrap();
    cp.ok(&["create", "namespace", "sluice-system"], None);
    let crd_only: String = rendered
        .split("\n---")
        .filter(|doc| doc.contains("kind: CustomResourceDefinition"))
        .collect::<Vec<_>>()
        .join("\n---");
    cp.ok(&["apply", "--server-side", "-f", "-"], Some(&crd_only));
    cp.wait_established("providerintegrations.sluice.dev");
    cp.ok(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
    cp.ok(&["apply", "--server-side", "-f", "-"], Some(&rendered));

    phases.enter("The operator, as the chart's ServiceAccount, with its webhook by URL");
    let token = cp.ok(
        &[
            "create",
            "token",
            "sluice-operator",
            "-n",
            "sluice-system",
            "--duration",
            "2h",
        ],
        None,
    );
    let kubeconfig = token_kubeconfig(&cp, &token);
    let webhook_port = free_port();
    let webhook_url = format!("https://127.0.0.1:{webhook_port}");
    let webhook_listen = format!("127.0.0.1:{webhook_port}");
    let operator_args = [
        "--webhook-listen",
        webhook_listen.as_str(),
        "--webhook-url",
        webhook_url.as_str(),
        "--lease-namespace",
        "sluice-system",
        "--sidecar-image",
        "sluice-sidecar:test",
        "--tls-check-interval",
        "1s",
        "--sidecar-shared-state",
        "redis://shared-state.example:6379/0",
        "--sidecar-shared-state-secret",
        "sluice-redis",
    ];
    let mut operator = Operator::start_with(&cp, &kubeconfig, &operator_args, "operator");
    let registered = wait(
        "the webhook's caBundle and URL",
        Duration::from_secs(30),
        || {
            let mwc = cp.json(&["get", "mutatingwebhookconfiguration", "sluice"]);
            mwc["webhooks"].as_array().is_some_and(|hooks| {
                hooks.iter().all(|h| {
                    h["clientConfig"]["caBundle"].is_string()
                        && h["clientConfig"]["url"] == format!("{webhook_url}/mutate")
                })
            })
        },
    );
    println!("webhook registered with its caBundle {registered:?} after the operator started");
    let ca_bundle =
        cp.json(&["get", "mutatingwebhookconfiguration", "sluice"])["webhooks"][0]["clientConfig"]
            ["caBundle"]
            .clone();

    phases.enter("An opted-in namespace that enforces Pod Security `restricted`");
    cp.ok(&["create", "namespace", "shop"], None);
    cp.ok(
        &[
            "label",
            "namespace",
            "shop",
            "sluice.dev/inject=enabled",
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        None,
    );
    cp.ok(&["create", "namespace", "plain"], None);
    wait(
        "the default ServiceAccounts",
        Duration::from_secs(30),
        || {
            ["shop", "plain"].iter().all(|ns| {
                cp.kubectl(&["get", "serviceaccount", "default", "-n", ns], None)
                    .status
                    .success()
            })
        },
    );
    let upstream = Upstream::start(|_| 200);
    let live_port = free_port();
    cp.ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: sluice.dev/v1alpha1
kind: ProviderIntegration
metadata: {{name: carrier, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: checkout}}}}
  upstream: {{baseUrl: 'https://api.carrier.example'}}
  egress: {{port: 15011}}
  auth: {{header: {{name: X-Api-Key, secretRef: {{name: carrier-key, key: current}}}}}}
---
{}",
            live_integration(live_port, upstream.addr, 100, "1s")
        )),
    );
    wait("both integrations Ready", Duration::from_secs(30), || {
        ["carrier", "live"]
            .iter()
            .all(|n| ready(&cp, "shop", n).is_some_and(|(s, _)| s == "True"))
    });

    phases.enter("Workloads: a Deployment, a Job and a StatefulSet get the sidecar");
    let workloads = format!(
        "{}---
apiVersion: batch/v1
kind: Job
metadata: {{name: nightly, namespace: shop}}
spec:
  template:
    metadata: {{labels: {{app: checkout, kind: job}}}}
    spec:
      restartPolicy: Never
      containers: [{c}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: ledger, namespace: shop}}
spec:
  serviceName: ledger
  replicas: 1
  selector: {{matchLabels: {{app: checkout, kind: sts}}}}
  template:
    metadata: {{labels: {{app: checkout, kind: sts}}}}
    spec:
      containers: [{c}]
---
apiVersion: v1
kind: Pod
metadata: {{name: opted-out, namespace: shop, labels: {{app: checkout, sluice.dev/inject: disabled}}}}
spec:
  containers: [{c}]
---
apiVersion: v1
kind: Pod
metadata: {{name: elsewhere, namespace: plain, labels: {{app: checkout}}}}
spec:
  containers: [{c}]
",
        deployment("checkout", 1),
        c = restricted_container("app")
    );
    let started = Instant::now();
    cp.ok(&["apply", "-f", "-"], Some(&workloads));
    for selector in ["app=checkout,kind!=job,kind!=sts", "kind=job", "kind=sts"] {
        wait(
            &format!("a pod for {selector}"),
            Duration::from_secs(60),
            || {
                pods(&cp, "shop", selector)
                    .iter()
                    .any(|p| p["metadata"]["name"] != "opted-out" && sidecar_of(p).is_some())
            },
        );
    }
    println!(
        "Deployment, Job and StatefulSet pods injected {:?} after apply",
        started.elapsed()
    );
    let checkout = pods(&cp, "shop", "app=checkout,kind!=job,kind!=sts")
        .into_iter()
        .find(|p| p["metadata"]["name"] != "opted-out")
        .unwrap();
    let sidecar = sidecar_of(&checkout).unwrap();
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert!(sidecar["startupProbe"]["httpGet"]["path"] == "/readyz");
    assert_eq!(
        checkout["metadata"]["labels"]["sluice.dev/injected"],
        "true"
    );
    let app_env = &checkout["spec"]["containers"][0]["env"];
    assert!(
        app_env
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "SLUICE_CARRIER_URL" && e["value"] == "http://127.0.0.1:15011"),
        "{app_env}"
    );
    let secrets: Vec<&str> = checkout["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    // The integration's one Secret, and the shared state's password.
    assert_eq!(secrets, ["carrier-key", "sluice-redis"]);
    let opted_out = cp.json(&["get", "pod", "-n", "shop", "opted-out"]);
    assert!(
        sidecar_of(&opted_out).is_none(),
        "sluice.dev/inject: disabled"
    );
    let elsewhere = cp.json(&["get", "pod", "-n", "plain", "elsewhere"]);
    assert!(sidecar_of(&elsewhere).is_none(), "namespace not opted in");

    phases.enter("A sidecar started as the pod `live` would start it");
    cp.ok(&["apply", "-f", "-"], Some(&deployment("live", 1)));
    wait("the live pod", Duration::from_secs(60), || {
        pods(&cp, "shop", "app=live")
            .iter()
            .any(|p| sidecar_of(p).is_some())
    });
    let live_pod = pods(&cp, "shop", "app=live").remove(0);
    let pod_name = live_pod["metadata"]["name"].as_str().unwrap().to_owned();
    let pod_uid = live_pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let injected = sidecar_of(&live_pod).unwrap();
    let pod_token = cp.ok(
        &[
            "create",
            "token",
            "default",
            "-n",
            "shop",
            "--audience",
            "sluice",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            &pod_name,
            "--bound-object-uid",
            &pod_uid,
            "--duration",
            "1h",
        ],
        None,
    );
    let work = cp.dir.join("live-pod");
    let config_dir = work.join("integrations");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(work.join("token"), pod_token.trim()).unwrap();
    phases.enter("The projected ConfigMap, as the kubelet would write it");
    let cm = cp.json(&["get", "configmap", "-n", "shop", "sluice-live"]);
    std::fs::write(
        config_dir.join("live.yaml"),
        cm["data"]["integration.yaml"].as_str().unwrap(),
    )
    .unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = injected["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .map(|a| match a.split_once('=') {
            Some(("--config-dir", _)) => format!("--config-dir={}", config_dir.display()),
            Some(("--admin-listen", _)) => format!("--admin-listen={admin}"),
            Some(("--webhook-listen", _)) => format!("--webhook-listen=127.0.0.1:{}", free_port()),
            Some(("--state-dir", _)) => format!("--state-dir={}", work.join("state").display()),
            Some(("--config-token-file", _)) => {
                format!("--config-token-file={}", work.join("token").display())
            }
            _ => a,
        })
        .collect();
    assert!(
        args.iter()
            .any(|a| a == &format!("--config-server={webhook_url}")),
        "{args:?}"
    );
    // Shared state: the URL, the pod's name as its identity, and the
    // password as a file from a Secret in the pod's own namespace.
    let env_of = |name: &str| {
        injected["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        env_of("SLUICE_SHARED_STATE")["value"],
        "redis://shared-state.example:6379/0"
    );
    assert_eq!(
        env_of("SLUICE_POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env_of("SLUICE_SHARED_STATE_PASSWORD_FILE")["value"],
        "/var/run/sluice/shared-state/password"
    );
    assert!(
        live_pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "sluice-redis"),
        "{}",
        live_pod["spec"]["volumes"]
    );
    let ca = injected["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SLUICE_CONFIG_CA")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let _sidecar = Sidecar(
        Command::new(support::sidecar_binary())
            .args(&args)
            .env("SLUICE_CONFIG_CA", &ca)
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(cp.dir.join("logs/sidecar.log")).unwrap(),
            ))
            .spawn()
            .unwrap(),
    );
    wait(
        "the sidecar on the config stream",
        Duration::from_secs(20),
        || {
            admin_get(&admin, "/metrics")
                .is_some_and(|m| metric(&m, "sluice_config_server_connected") == 1.0)
        },
    );
    let app = format!("127.0.0.1:{live_port}");
    for _ in 0..3 {
        assert_eq!(get(&app, "/v1/things").unwrap().0, 200);
    }
    assert_eq!(enforced_requests(&admin), Some(100));

    phases.enter("Edits reach the running sidecar: measure apply -> enforced");
    let mut propagation = Vec::new();
    for (requests, per) in [(2, "10s"), (50, "1s"), (2, "10s")] {
        let edited = Instant::now();
        cp.ok(
            &["apply", "-f", "-"],
            Some(&live_integration(live_port, upstream.addr, requests, per)),
        );
        let applied = edited.elapsed();
        // Poll finely: the figure is reported.
        while enforced_requests(&admin) != Some(requests as u64) {
            assert!(
                edited.elapsed() < Duration::from_secs(10),
                "the edit never arrived"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        propagation.push((applied, edited.elapsed()));
    }
    println!("edit: (kubectl apply returned, enforced by the sidecar) = {propagation:?}");
    assert!(propagation.iter().all(|(_, d)| *d < Duration::from_secs(5)));
    phases.enter("The new limit is enforced: 2 per 10 s, admissions so far counted");
    let answers: Vec<(u16, String)> = (0..4).map(|_| get(&app, "/v1/things").unwrap()).collect();
    assert!(
        answers
            .iter()
            .any(|(s, e)| *s == 429 && e == "rate-limited"),
        "{answers:?}"
    );
    assert!(
        answers.iter().filter(|(s, _)| *s == 200).count() <= 2,
        "{answers:?}"
    );

    phases.enter("Cluster scope: two pods share the limit; the running sidecar gets half");
    cp.ok(
        &["apply", "-f", "-"],
        Some(&live_integration(live_port, upstream.addr, 40, "1s")),
    );
    wait("40 for one pod", Duration::from_secs(10), || {
        enforced_requests(&admin) == Some(40)
    });
    let scale = |replicas: &str| {
        cp.ok(
            &[
                "scale",
                "deployment",
                "live",
                "-n",
                "shop",
                "--replicas",
                replicas,
            ],
            None,
        )
    };
    scale("2");
    let shared = wait(
        "the limit shared by two pods",
        Duration::from_secs(30),
        || enforced_requests(&admin) == Some(20),
    );
    println!("scaled to 2 pods -> each sidecar enforces half after {shared:?}");
    let status = cp.json(&["get", "providerintegration", "-n", "shop", "live"]);
    assert_eq!(status["status"]["pods"]["selected"], 2);
    scale("1");
    wait("the whole limit back", Duration::from_secs(30), || {
        enforced_requests(&admin) == Some(40)
    });

    phases.enter("Serving certificate renewal: marked as expiring soon, it is renewed with the same CA and served without a restart");
    let before = served_serial(webhook_port);
    cp.ok(
        &[
            "annotate",
            "secret",
            "-n",
            "sluice-system",
            "sluice-operator-tls",
            "--overwrite",
            "sluice.dev/not-after=1000",
        ],
        None,
    );
    wait(
        "a renewed certificate served",
        Duration::from_secs(20),
        || {
            let now = served_serial(webhook_port);
            !now.is_empty() && now != before
        },
    );
    let after =
        cp.json(&["get", "mutatingwebhookconfiguration", "sluice"])["webhooks"][0]["clientConfig"]
            ["caBundle"]
            .clone();
    assert_eq!(after, ca_bundle, "renewal keeps the CA");
    assert!(operator.counter("sluice_operator_certificate_renewals_total") >= 2.0);

    phases.enter("Operator down: pods are still created (failurePolicy Ignore), the sidecar keeps enforcing its last good config");
    let _ = operator.child.kill();
    let _ = operator.child.wait();
    cp.ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: late, namespace: shop, labels: {{app: checkout}}}}\nspec:\n  containers: [{}]\n",
            restricted_container("app")
        )),
    );
    let late = cp.json(&["get", "pod", "-n", "shop", "late"]);
    assert!(sidecar_of(&late).is_none());
    wait(
        "the sidecar notices the operator is gone",
        Duration::from_secs(60),
        || {
            admin_get(&admin, "/metrics")
                .is_some_and(|m| metric(&m, "sluice_config_server_connected") == 0.0)
        },
    );
    assert_eq!(enforced_requests(&admin), Some(40), "last good config kept");
    assert_eq!(get(&app, "/v1/things").unwrap().0, 200);
    let hits_before = upstream.hits.load(Ordering::SeqCst);
    assert!(hits_before > 0);

    phases.enter("Back up: the pod that missed its sidecar is reported");
    operator = Operator::start_with(&cp, &kubeconfig, &operator_args, "operator");
    wait(
        "a NotInjected Event for the late pod",
        Duration::from_secs(30),
        || {
            cp.ok(
                &[
                    "get",
                    "events",
                    "-n",
                    "shop",
                    "--field-selector",
                    "involvedObject.name=late",
                    "-o",
                    "json",
                ],
                None,
            )
            .contains("NotInjected")
        },
    );
    assert_eq!(
        operator.counter("sluice_operator_injections_missed_total"),
        1.0
    );
    wait(
        "the sidecar back on the stream",
        Duration::from_secs(40),
        || {
            admin_get(&admin, "/metrics")
                .is_some_and(|m| metric(&m, "sluice_config_server_connected") == 1.0)
        },
    );
    // Scrapes of a working operator and sidecar pass Prometheus's own lint.
    for scrape in [operator.scrape(), admin_get(&admin, "/metrics")] {
        let scrape = scrape.unwrap();
        let (head, body) = scrape.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        promtool(&["check", "metrics"], Some(body));
    }

    phases.enter("The chart with every option on, against the Prometheus Operator's CRDs");
    for crd in ["servicemonitors", "podmonitors", "prometheusrules"] {
        let file = tool(&format!("crds/monitoring.coreos.com_{crd}.yaml"));
        cp.ok(
            &["apply", "--server-side", "-f", file.to_str().unwrap()],
            None,
        );
        cp.wait_established(&format!("{crd}.monitoring.coreos.com"));
    }
    // Another release: its objects are created, not merged into the live
    // ones (whose webhook the operator points at its URL).
    let everything = Command::new(&helm)
        .args(["template", "full"])
        .arg(&chart)
        .args(["-n", "sluice-system", "--kube-version", "1.37.0"])
        .args(every_option())
        .output()
        .unwrap();
    assert!(
        everything.status.success(),
        "{}",
        String::from_utf8_lossy(&everything.stderr)
    );
    let everything = String::from_utf8(everything.stdout).unwrap();
    cp.ok(&["apply", "--dry-run=server", "-f", "-"], Some(&everything));
    // The monitoring objects are inert without Prometheus Operator: create them.
    let monitoring: String = everything
        .split("\n---")
        .filter(|doc| {
            [
                "kind: ServiceMonitor",
                "kind: PodMonitor",
                "kind: PrometheusRule",
            ]
            .iter()
            .any(|kind| doc.contains(kind))
        })
        .collect::<Vec<_>>()
        .join("\n---");
    cp.ok(&["apply", "--server-side", "-f", "-"], Some(&monitoring));
    let pod_monitor = cp.json(&[
        "get",
        "podmonitor",
        "-n",
        "sluice-system",
        "full-sluice-sidecars",
    ]);
    assert_eq!(
        pod_monitor["spec"]["podMetricsEndpoints"][0]["honorLabels"],
        true
    );
    let rules = cp.json(&[
        "get",
        "prometheusrule",
        "-n",
        "sluice-system",
        "full-sluice",
    ]);
    assert!(
        rules["spec"]["groups"][1]["rules"]
            .as_array()
            .unwrap()
            .len()
            >= 15,
        "{rules}"
    );

    phases.enter("cert-manager's way: a second replica reading a mounted kubernetes.io/tls Secret serves it, and a rotated file from the next handshake on");
    let tls_dir = cp.dir.join("cert-manager-tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let secret = cp.json(&[
        "get",
        "secret",
        "-n",
        "sluice-system",
        "sluice-operator-tls",
    ]);
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        let value = secret["data"][key].as_str().unwrap();
        let decoded = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(value.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        std::fs::write(tls_dir.join(key), decoded.stdout).unwrap();
    }
    let files_port = free_port();
    let files_listen = format!("127.0.0.1:{files_port}");
    let tls_dir_arg = tls_dir.display().to_string();
    let _files_replica = Operator::start_with(
        &cp,
        &kubeconfig,
        &[
            "--webhook-listen",
            &files_listen,
            "--lease-namespace",
            "sluice-system",
            "--tls-dir",
            &tls_dir_arg,
            "--tls-check-interval",
            "1s",
        ],
        "operator-files",
    );
    let from_secret = served_serial(webhook_port);
    wait(
        "the mounted certificate served",
        Duration::from_secs(20),
        || served_serial(files_port) == from_secret,
    );
    let rotated = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(tls_dir.join("tls.key.new"))
        .arg("-out")
        .arg(tls_dir.join("tls.crt.new"))
        .output()
        .unwrap();
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    std::fs::rename(tls_dir.join("tls.key.new"), tls_dir.join("tls.key")).unwrap();
    std::fs::rename(tls_dir.join("tls.crt.new"), tls_dir.join("tls.crt")).unwrap();
    wait("the rotated file served", Duration::from_secs(20), || {
        let now = served_serial(files_port);
        !now.is_empty() && now != from_secret
    });

    let injections = operator.scrape().unwrap_or_default();
    println!(
        "operator metrics after restart: polls {} / injections {}",
        metric(&injections, "sluice_operator_config_polls_total"),
        metric(&injections, "sluice_operator_injections_total")
    );
}
