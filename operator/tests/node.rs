//! The product on a real node (tests/controlplane/up --node): the chart
//! installed with images built from this workspace, pods that run with the
//! injected sidecar under Pod Security `restricted`, and a user's day on it —
//! calls through the sidecar, a limit shared by two replicas through the
//! chart's Redis, a live edit, webhooks through a Service, a rollout restart
//! while webhooks arrive, and the operator's leader deleted.
//!
//! Each phase prints its time; the numbers the closing notes quote come from
//! this test's output (`cargo test -p sluice-operator --test node -- --nocapture`).

#[path = "node/peers.rs"]
mod peers;
mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use peers::{Hit, Peers};
use support::{ControlPlane, Phases, repo, sample, wait};

const TOKEN: &str = "sk_node_test_4f6a1c";
/// A Standard Webhooks secret: `whsec_` and the base64 of the key.
const WEBHOOK_KEY: &[u8] = b"node-test-webhook-key-32-bytes!!";

#[test]
fn a_users_day_on_a_real_node() {
    let mut phases = Phases::new();
    phases.enter("1. the node, the images, and the chart installed with them");
    let started = Instant::now();
    let cp = ControlPlane::up_with_node();
    println!("node Ready {:?} after up started", started.elapsed());
    import_images(&cp);
    let peers = Peers::start(&cp.node_ip(), TOKEN);
    install_chart(&cp);
    let leader = lease_holder(&cp).expect("no operator holds the Lease");
    let operators = running_pods(&cp, "sluice-system", "app.kubernetes.io/component=operator");
    assert_eq!(operators.len(), 2, "two operator replicas: {operators:?}");
    assert!(
        operators.contains(&leader),
        "the leader {leader} is not one of {operators:?}"
    );

    phases.enter("2. an integration and an app (2 replicas) under Pod Security restricted");
    let pods_started = Instant::now();
    apply_app(&cp, &peers, 5);
    let apps = wait_for_app_pods(&cp, 2, Duration::from_secs(120));
    println!("app pods Ready {:?} after apply", pods_started.elapsed());
    for pod in &apps {
        let json = cp.json(&["get", "pod", "-n", "shop", pod]);
        let sidecar = json["spec"]["initContainers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "sluice-sidecar"))
            .unwrap_or_else(|| panic!("{pod} has no injected sidecar"));
        assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    }

    phases.enter("3. calls from the app container reach the provider with the credential");
    let out = exec(
        &cp,
        &apps[0],
        r#"wget -q -O- "$SLUICE_PROVIDER_URL/v1/ping""#,
    );
    assert_eq!(stdout(&out), "authorized\n", "{}", stderr(&out));
    let before = peers.hits().len();
    let elapsed = load(&cp, &apps, 15, "/v1/load-5");
    let hits = since(&peers.hits(), before);
    assert_eq!(hits.len(), 30, "every call reached the provider");
    assert!(
        hits.iter().all(|h| h.path == "/v1/load-5"),
        "the app's path, byte for byte"
    );
    assert!(
        hits.iter().all(|h| h.authorized),
        "a call without the credential"
    );
    let peak = busiest_second(&hits);
    println!("30 calls at a shared 5/s: {elapsed:?}, at most {peak} in any second");
    assert!(
        peak <= 5,
        "the shared limit of 5/s let {peak} through in one second"
    );
    for pod in &apps {
        // Decided in the chart's Redis, not on each pod's half of the rate.
        let metrics = stdout(&exec(
            &cp,
            pod,
            "wget -q -O- http://127.0.0.1:15090/metrics",
        ));
        assert_eq!(
            sample(&metrics, "sluice_shared_state_up{"),
            Some(1.0),
            "{pod}:\n{metrics}"
        );
        let admitted = sample(
            &metrics,
            r#"sluice_shared_state_calls_total{op="admit",outcome="ok"}"#,
        );
        assert!(
            admitted.is_some_and(|n| n >= 1.0),
            "{pod} asked Redis for no admission"
        );
        let fallbacks = metrics
            .lines()
            .filter(|line| line.starts_with("sluice_shared_state_fallbacks_total{"))
            .any(|line| !line.ends_with(" 0"));
        assert!(!fallbacks, "{pod} decided on its own share:\n{metrics}");
    }

    phases.enter("4. the integration edited: the running sidecars enforce 10/s");
    let edited = Instant::now();
    apply_integration(&cp, &peers, 10);
    wait_enforcing(&cp, &apps, 10, Duration::from_secs(30));
    println!(
        "config propagated to both sidecars in {:?}",
        edited.elapsed()
    );
    let before = peers.hits().len();
    let elapsed = load(&cp, &apps, 20, "/v1/load-10");
    let hits = since(&peers.hits(), before);
    let peak = busiest_second(&hits);
    println!("40 calls at a shared 10/s: {elapsed:?}, at most {peak} in any second");
    assert_eq!(hits.len(), 40);
    assert!(
        peak <= 10,
        "the edited limit of 10/s let {peak} through in one second"
    );
    assert!(
        peak > 5,
        "still held at the old 5/s ({peak} in the busiest second)"
    );

    phases.enter("5. webhooks posted to the app's Service are verified and delivered");
    let service = cluster_ip(&cp, "shop", "app-webhooks");
    let ids: Vec<String> = (0..20).map(|i| format!("evt_first_{i}")).collect();
    for id in &ids {
        assert_eq!(
            post_webhook(&service, id, &signed_headers(id)),
            Some(200),
            "{id}"
        );
    }
    let forged = post_webhook(&service, "evt_forged", &forged_headers("evt_forged"));
    assert!(
        matches!(forged, Some(s) if (400..500).contains(&s)),
        "a forged webhook: {forged:?}"
    );
    assert_eq!(
        post_webhook(&service, &ids[0], &signed_headers(&ids[0])),
        Some(200),
        "a duplicate is acknowledged"
    );
    wait("the 20 webhooks delivered", Duration::from_secs(30), || {
        let delivered = peers.delivered();
        ids.iter().all(|id| delivered.contains_key(id))
    });
    std::thread::sleep(Duration::from_secs(2));
    let delivered = peers.delivered();
    assert!(
        !delivered.contains_key("evt_forged"),
        "a forged webhook was delivered"
    );
    assert_eq!(delivered[&ids[0]], 1, "a duplicate was delivered again");

    phases.enter("6. rollout restart while webhooks arrive: every acknowledged one delivered");
    let report = rollout_under_webhooks(&cp, &peers, &service);
    println!(
        "rollout restart: {} acknowledged, {} delivered, {} delivered twice, {} refused while pods changed, all delivered {:?} after the last acknowledgement",
        report.acknowledged, report.delivered, report.duplicates, report.refused, report.drained
    );
    let apps = wait_for_app_pods(&cp, 2, Duration::from_secs(60));

    phases.enter(
        "7. the operator's leader deleted: the other takes over, sidecars keep their config",
    );
    let deleted = Instant::now();
    cp.ok(
        &[
            "delete",
            "pod",
            "-n",
            "sluice-system",
            &leader,
            "--wait=false",
        ],
        None,
    );
    wait(
        "another operator holding the Lease",
        Duration::from_secs(60),
        || lease_holder(&cp).is_some_and(|holder| holder != leader),
    );
    println!("leadership moved in {:?}", deleted.elapsed());
    for pod in &apps {
        assert_eq!(
            enforced_cluster_requests(&cp, pod),
            Some(10),
            "{pod} lost its config"
        );
        let out = exec(
            &cp,
            pod,
            r#"wget -q -O- "$SLUICE_PROVIDER_URL/v1/after-failover""#,
        );
        assert_eq!(stdout(&out), "authorized\n", "{}", stderr(&out));
    }
    apply_integration(&cp, &peers, 8);
    wait_enforcing(&cp, &apps, 8, Duration::from_secs(60));
}

/// The operator and sidecar binaries this test was built with, and the test
/// images, imported into the node's containerd.
fn import_images(cp: &ControlPlane) {
    let sidecar = support::sidecar_binary();
    let bin_dir = sidecar.parent().unwrap();
    let images = cp.dir.join("images");
    let out = Command::new(repo().join("tests/node/images"))
        .arg(&images)
        .arg(bin_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "tests/node/images: {}", stderr(&out));
    for entry in std::fs::read_dir(&images).unwrap() {
        let path = entry.unwrap().path();
        let out = Command::new(cp.dir.join("bin/ctr"))
            .args(["images", "import"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "importing {}: {}",
            path.display(),
            stderr(&out)
        );
    }
}

fn install_chart(cp: &ControlPlane) {
    // The chart's Redis claims a volume; this cluster has no provisioner, so
    // a hostPath PersistentVolume on the node stands in for the cloud's disk.
    let pv_dir = cp.dir.join("node/redis-volume");
    std::fs::create_dir_all(&pv_dir).unwrap();
    Command::new("chmod")
        .arg("0777")
        .arg(&pv_dir)
        .status()
        .unwrap();
    cp.ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1
kind: PersistentVolume
metadata: {{name: redis-volume}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  hostPath: {{path: '{}', type: Directory}}
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    sluice.dev/inject: enabled
    pod-security.kubernetes.io/enforce: restricted
",
            pv_dir.display()
        )),
    );
    let out = Command::new(cp.dir.join("bin/helm"))
        .args(["install", "sluice"])
        .arg(repo().join("charts/sluice"))
        .args([
            "--namespace",
            "sluice-system",
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
        ])
        .args([
            "--set",
            "operator.image.repository=localhost/sluice",
            "--set",
            "operator.image.tag=test",
            "--set",
            "operator.image.pullPolicy=Never",
            "--set",
            "sidecar.image.repository=localhost/sluice-sidecar",
            "--set",
            "sidecar.image.tag=test",
            "--set",
            "sidecar.image.pullPolicy=Never",
            "--set",
            "sharedState.deploy=true",
            "--set",
            "sharedState.secretNamespaces={shop}",
            "--set",
            "sharedState.redis.image=localhost/redis:test",
        ])
        .env("KUBECONFIG", cp.kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm install: {}{}\n{}",
        stdout(&out),
        stderr(&out),
        cp.ok(&["get", "pods", "-A", "-o", "wide"], None)
    );
}

fn apply_integration(cp: &ControlPlane, peers: &Peers, per_second: u32) {
    cp.ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: sluice.dev/v1alpha1
kind: ProviderIntegration
metadata: {{name: provider, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: shop-app}}}}
  upstream: {{baseUrl: 'http://{provider}', timeout: 5s, totalTimeout: 30s}}
  egress: {{port: 15001}}
  auth:
    bearer: {{secretRef: {{name: provider-key, key: token}}}}
  rateLimits:
    - {{name: shared, match: {{}}, rate: {{requests: {per_second}, per: 1s}}, burst: 1, scope: Cluster}}
  webhooks:
    - name: events
      path: /webhooks/events
      forwardTo: http://127.0.0.1:8080/cgi-bin/deliver
      verify:
        scheme: StandardWebhooks
        secrets: [{{secretRef: {{name: provider-webhook, key: secret}}}}]
      delivery: {{ratePerSecond: 200, maxAttempts: 20, timeout: 5s}}
",
            provider = peers.provider
        )),
    );
}

fn apply_app(cp: &ControlPlane, peers: &Peers, per_second: u32) {
    let webhook_secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(WEBHOOK_KEY)
    );
    cp.ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1
kind: Secret
metadata: {{name: provider-key, namespace: shop}}
stringData: {{token: {TOKEN}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: provider-webhook, namespace: shop}}
stringData: {{secret: '{webhook_secret}'}}
"
        )),
    );
    apply_integration(cp, peers, per_second);
    cp.ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: apps/v1
kind: Deployment
metadata: {{name: app, namespace: shop}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: shop-app}}}}
  template:
    metadata: {{labels: {{app: shop-app}}}}
    spec:
      securityContext: {{runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}
      containers:
        - name: app
          image: localhost/sluice-testapp:test
          imagePullPolicy: Never
          env: [{{name: COLLECTOR_URL, value: 'http://{collector}/delivered'}}]
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {{drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata: {{name: app-webhooks, namespace: shop}}
spec:
  selector: {{app: shop-app}}
  ports: [{{port: 80, targetPort: sluice-webhooks}}]
",
            collector = peers.collector
        )),
    );
}

/// Names of the pods matching `selector` that run with every container ready
/// and are not being deleted.
fn running_pods(cp: &ControlPlane, namespace: &str, selector: &str) -> Vec<String> {
    let list = cp.json(&["get", "pods", "-n", namespace, "-l", selector]);
    let mut names: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .filter(|pod| pod["status"]["phase"] == "Running")
        .filter(|pod| {
            let statuses = ["containerStatuses", "initContainerStatuses"];
            statuses.iter().all(|key| {
                pod["status"][key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .all(|c| c["ready"] == true)
            })
        })
        .filter_map(|pod| pod["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn wait_for_app_pods(cp: &ControlPlane, count: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let pods = running_pods(cp, "shop", "app=shop-app");
        let all = cp.json(&["get", "pods", "-n", "shop", "-l", "app=shop-app"]);
        if pods.len() == count && all["items"].as_array().map_or(0, Vec::len) == count {
            return pods;
        }
        assert!(
            Instant::now() < deadline,
            "{count} app pods not Ready in {timeout:?}:\n{}\n{}",
            cp.ok(&["get", "pods", "-n", "shop", "-o", "wide"], None),
            cp.ok(&["get", "events", "-n", "shop"], None)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn lease_holder(cp: &ControlPlane) -> Option<String> {
    let out = cp.kubectl(
        &[
            "get",
            "lease",
            "sluice-operator",
            "-n",
            "sluice-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    let holder = stdout(&out);
    (out.status.success() && !holder.is_empty()).then_some(holder)
}

fn exec(cp: &ControlPlane, pod: &str, script: &str) -> Output {
    cp.kubectl(
        &[
            "exec", "-n", "shop", pod, "-c", "app", "--", "sh", "-c", script,
        ],
        None,
    )
}

/// `per_pod` sequential calls from each app pod at once; how long they took.
fn load(cp: &ControlPlane, pods: &[String], per_pod: u32, path: &str) -> Duration {
    let started = Instant::now();
    let script = format!(
        r#"i=0; while [ $i -lt {per_pod} ]; do wget -q -O /dev/null "$SLUICE_PROVIDER_URL{path}" || exit 1; i=$((i+1)); done"#
    );
    let script = &script;
    std::thread::scope(|scope| {
        let runs: Vec<_> = pods
            .iter()
            .map(|pod| scope.spawn(move || (pod, exec(cp, pod, script))))
            .collect();
        for run in runs {
            let (pod, out) = run.join().unwrap();
            assert!(out.status.success(), "calls from {pod}: {}", stderr(&out));
        }
    });
    started.elapsed()
}

fn since(hits: &[Hit], from: usize) -> Vec<Hit> {
    hits[from..].to_vec()
}

/// The most calls the provider saw in any one second.
fn busiest_second(hits: &[Hit]) -> usize {
    let mut times: Vec<Instant> = hits.iter().map(|h| h.at).collect();
    times.sort();
    let mut peak = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak
}

/// Waits until the sidecar of every pod runs a shared limit of `requests`.
fn wait_enforcing(cp: &ControlPlane, pods: &[String], requests: u64, within: Duration) {
    for pod in pods {
        wait(&format!("{pod} enforcing {requests}/s"), within, || {
            enforced_cluster_requests(cp, pod) == Some(requests)
        });
    }
}

/// The cluster-wide `requests` of the first limit the sidecar in `pod` runs,
/// read from its /config inside the pod.
fn enforced_cluster_requests(cp: &ControlPlane, pod: &str) -> Option<u64> {
    let out = exec(cp, pod, "wget -q -O- http://127.0.0.1:15090/config");
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    config["integrations"][0]["rateLimits"][0]["cluster"]["requests"].as_u64()
}

fn cluster_ip(cp: &ControlPlane, namespace: &str, service: &str) -> String {
    let ip = cp.ok(
        &[
            "get",
            "service",
            service,
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    );
    format!("{ip}:80")
}

fn signed_headers(id: &str) -> Vec<(String, String)> {
    let body = event_body(id);
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, WEBHOOK_KEY);
    let tag = ring::hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), timestamp),
        ("webhook-signature".into(), format!("v1,{signature}")),
    ]
}

fn forged_headers(id: &str) -> Vec<(String, String)> {
    let mut headers = signed_headers(id);
    headers[2].1 = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
    headers
}

fn event_body(id: &str) -> String {
    format!(r#"{{"id":"{id}","type":"shipment.updated"}}"#)
}

/// Posts the event `id` to the Service; its status, None if it could not be reached.
fn post_webhook(service: &str, id: &str, headers: &[(String, String)]) -> Option<u16> {
    let body = event_body(id);
    let addr = service.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut head = format!(
        "POST /webhooks/events HTTP/1.1\r\nhost: app-webhooks.shop\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    stream
        .write_all(format!("{head}\r\n{body}").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

struct RolloutReport {
    acknowledged: usize,
    delivered: usize,
    duplicates: usize,
    refused: usize,
    drained: Duration,
}

/// Posts fresh events (each until acknowledged, as a provider retries) while
/// the app's Deployment restarts, then waits for every acknowledged one.
fn rollout_under_webhooks(cp: &ControlPlane, peers: &Peers, service: &str) -> RolloutReport {
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(0usize));
    let sender = {
        let (stop, acknowledged, refused, service) = (
            stop.clone(),
            acknowledged.clone(),
            refused.clone(),
            service.to_owned(),
        );
        std::thread::spawn(move || {
            // Bounded: at most 2,000 events and 3 minutes.
            let deadline = Instant::now() + Duration::from_secs(180);
            for n in 0..2000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let id = format!("evt_rollout_{n}");
                for _ in 0..50 {
                    if post_webhook(&service, &id, &signed_headers(&id)) == Some(200) {
                        acknowledged.lock().unwrap().push(id.clone());
                        break;
                    }
                    *refused.lock().unwrap() += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    cp.ok(
        &["rollout", "restart", "deployment/app", "-n", "shop"],
        None,
    );
    cp.ok(
        &[
            "rollout",
            "status",
            "deployment/app",
            "-n",
            "shop",
            "--timeout",
            "150s",
        ],
        None,
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let acknowledged: HashSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    let last_ack = Instant::now();
    // A sidecar that stopped mid-delivery leaves its events to the others:
    // they claim them after 15 s (docs/shared-state.md).
    let deadline = last_ack + Duration::from_secs(90);
    loop {
        let delivered = peers.delivered();
        let missing: Vec<&String> = acknowledged
            .iter()
            .filter(|id| !delivered.contains_key(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged webhooks not delivered 90 s after the rollout, e.g. {:?}",
            missing.len(),
            acknowledged.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let drained = last_ack.elapsed();
    let delivered = peers.delivered();
    let ours: Vec<u32> = delivered
        .iter()
        .filter(|(id, _)| id.starts_with("evt_rollout_"))
        .map(|(_, n)| *n)
        .collect();
    assert!(
        acknowledged.len() >= 20,
        "too few webhooks sent during the rollout: {}",
        acknowledged.len()
    );
    RolloutReport {
        acknowledged: acknowledged.len(),
        delivered: ours.len(),
        duplicates: ours.iter().filter(|n| **n > 1).count(),
        refused: *refused.lock().unwrap(),
        drained,
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
