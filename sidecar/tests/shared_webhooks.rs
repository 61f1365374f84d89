//! Webhooks on shared state: real `sluice-sidecar` processes sharing a real
//! `redis-server` (AOF `always`, loopback, one per test). What a sidecar
//! acknowledged outlives it; a provider's retry to another replica is a
//! duplicate there; the ordering guard holds whichever replica delivers.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::process::SidecarProcess;
use support::redis_server::RedisServer;
use support::*;
use tokio::time::Instant;

const SECRET: &str = "shared-webhook-secret";

/// An app that answers 200 while `up`, else 503; counts what it took.
struct TestApp {
    server: TestUpstream,
    up: Arc<AtomicBool>,
    /// Event ids of the deliveries it answered 200, in order.
    taken: Arc<std::sync::Mutex<Vec<String>>>,
}

impl TestApp {
    async fn start(up: bool) -> Self {
        let flag = Arc::new(AtomicBool::new(up));
        let taken = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (answer, record) = (flag.clone(), taken.clone());
        let server = TestUpstream::plain(handler(move |seen, _| {
            // Decided and recorded together: a 503 answered while down is
            // a failed attempt, not a delivery.
            let up = answer.load(Ordering::SeqCst);
            if up
                && seen.headers.get("x-sluice-attempt").is_some()
                && let Some(id) = seen.headers.get("x-sluice-event-id")
            {
                record
                    .lock()
                    .unwrap()
                    .push(id.to_str().unwrap().to_string());
            }
            async move {
                if up {
                    respond(200, "ok")
                } else {
                    respond(503, "down")
                }
            }
        }))
        .await;
        Self {
            server,
            up: flag,
            taken,
        }
    }

    /// Event ids of the deliveries this app answered 200 (it was up).
    fn delivered(&self) -> Vec<String> {
        self.taken.lock().unwrap().clone()
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

/// One sidecar's files: its config (its own state directory, its own app).
fn config(dir: &Path, name: &str, app: &TestApp) -> PathBuf {
    let state = dir.join(format!("state-{name}"));
    std::fs::create_dir_all(&state).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "admin: {{listen: '127.0.0.1:0'}}
ingress: {{listen: '127.0.0.1:0', stateDir: '{state}'}}
integrations:
- name: shop/payments
  listen: 127.0.0.1:0
  upstream: {{baseUrl: 'http://127.0.0.1:9'}}
  webhooks:
  - name: events
    path: /wh
    forwardTo: '{app}/in'
    delivery: {{ratePerSecond: 200, maxAttempts: 100, deadLetter: true, timeout: 2s, backoff: {{initial: 100ms, max: 200ms, multiplier: 2, jitter: 0}}}}
    verify: {{scheme: GitHub, secrets: [{{secret: {{path: '{secret}'}}}}]}}
    ordering: {{objectPointer: /object, timestampPointer: /at}}
",
            state = state.display(),
            app = app.server.url(),
            secret = secret.display(),
        ),
    )
    .unwrap();
    path
}

/// A sidecar once the shared state answers it, and its admin address.
async fn start(
    config: &Path,
    redis: &RedisServer,
    identity: &str,
) -> (SidecarProcess, std::net::SocketAddr) {
    let mut process = spawn(config, redis, identity);
    let admin = process.admin_addr();
    wait_metric(
        admin,
        "sluice_shared_state_up{",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    (process, admin)
}

fn spawn(config: &Path, redis: &RedisServer, identity: &str) -> SidecarProcess {
    SidecarProcess::spawn(
        config,
        &[
            "--shared-state",
            &redis.url(),
            "--shared-state-identity",
            identity,
        ],
    )
}

/// A GitHub delivery: `X-Hub-Signature-256` over the body, and its id.
async fn send(ingress: std::net::SocketAddr, id: &str, body: &str) -> Answer {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, body.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let signature = format!("sha256={hex}");
    App::new(ingress)
        .send(
            "POST",
            "/wh",
            &[
                ("x-hub-signature-256", signature.as_str()),
                ("x-github-delivery", id),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await
}

/// The status and the `status` word of the ingress's JSON answer.
fn outcome(answer: &Answer) -> (u16, String) {
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    (
        answer.status,
        json["status"].as_str().unwrap_or_default().to_string(),
    )
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    App::new(admin).get("/metrics").await.text()
}

async fn wait_metric(admin: std::net::SocketAddr, prefix: &str, at_least: f64, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let value = metric(&metrics(admin).await, prefix);
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < until,
            "{prefix} stayed at {value} for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_delivered(app: &TestApp, n: usize, within: Duration) {
    let until = Instant::now() + within;
    while app.delivered().len() < n {
        assert!(
            Instant::now() < until,
            "the app got {:?}, expected {n} within {within:?}",
            app.delivered()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sluice-shared-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The issue's test: accepted by A while its app is down; A killed with
/// SIGKILL and its state directory deleted; B takes the event over and
/// delivers it; the provider's retry to B and to A restarted is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_acknowledged_by_a_killed_pod_is_delivered_by_another_once() {
    let redis = RedisServer::start();
    let dir = Dir::new("takeover");
    let (app_a, app_b) = (TestApp::start(false).await, TestApp::start(true).await);
    let (config_a, config_b) = (config(&dir.0, "a", &app_a), config(&dir.0, "b", &app_b));

    // Phase: A accepts while its app is down and keeps trying (holding the event).
    let (mut a, a_admin) = start(&config_a, &redis, "pod-a").await;
    let body = r#"{"object":"pay_1","at":10}"#;
    let answer = send(a.ingress_addr(), "evt-1", body).await;
    assert_eq!(outcome(&answer), (200, "accepted".to_string()));
    wait_metric(
        a_admin,
        "sluice_webhook_deliveries_total{integration=\"shop/payments\",webhook=\"events\",result=\"retry\"}",
        2.0,
        Duration::from_secs(10),
    )
    .await;

    // Phase: A dies with its volume.
    a.kill_9();
    std::fs::remove_dir_all(dir.0.join("state-a")).unwrap();
    std::fs::create_dir_all(dir.0.join("state-a")).unwrap();

    // Phase: B takes it over once A's hold went stale, and delivers it.
    let mut b = spawn(&config_b, &redis, "pod-b");
    let b_admin = b.admin_addr();
    wait_delivered(&app_b, 1, Duration::from_secs(40)).await;
    assert_eq!(app_b.delivered(), ["evt-1"]);
    assert_eq!(
        metric(&metrics(b_admin).await, "sluice_webhook_takeovers_total{"),
        1.0
    );

    // Phase: the provider retries, to B and to A restarted: duplicates.
    let again_b = send(b.ingress_addr(), "evt-1", body).await;
    assert_eq!(outcome(&again_b), (200, "duplicate".to_string()));
    app_a.set_up(true);
    let (mut a, _) = start(&config_a, &redis, "pod-a").await;
    let again_a = send(a.ingress_addr(), "evt-1", body).await;
    assert_eq!(outcome(&again_a), (200, "duplicate".to_string()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app_b.delivered(), ["evt-1"], "delivered once");
    assert!(app_a.delivered().iter().all(|id| id == "evt-1"));
    let answered_200_at_a = app_a
        .server
        .requests()
        .iter()
        .filter(|s| s.at > Instant::now() - Duration::from_millis(800))
        .count();
    assert_eq!(
        answered_200_at_a, 0,
        "the restarted A delivered nothing again"
    );
}

/// Redis stopped: webhooks get 503 (never a 200 without durable storage);
/// Redis restarted from its AOF: what was acknowledged is delivered and
/// its id is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_and_restarted_redis_keeps_what_was_acknowledged() {
    let mut redis = RedisServer::start();
    let dir = Dir::new("restart");
    let app = TestApp::start(false).await;
    let (mut sidecar, admin) = start(&config(&dir.0, "a", &app), &redis, "pod-a").await;
    let ingress = sidecar.ingress_addr();

    // Phase: acknowledged while the app is down.
    let answer = send(ingress, "evt-kept", r#"{"object":"o","at":1}"#).await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    // Phase: Redis killed: a new event is refused with 503 + Retry-After.
    redis.stop();
    let refused = send(ingress, "evt-later", r#"{"object":"p","at":1}"#).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.header("retry-after").is_some());

    // Phase: Redis back from its AOF; the app back.
    redis.resume();
    wait_metric(
        admin,
        "sluice_shared_state_up{",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    app.set_up(true);
    wait_delivered(&app, 1, Duration::from_secs(20)).await;
    assert_eq!(app.delivered(), ["evt-kept"]);
    let again = send(ingress, "evt-kept", r#"{"object":"o","at":1}"#).await;
    assert_eq!(outcome(&again), (200, "duplicate".to_string()));
    let retried = send(ingress, "evt-later", r#"{"object":"p","at":1}"#).await;
    assert_eq!(outcome(&retried), (200, "accepted".to_string()));
    wait_delivered(&app, 2, Duration::from_secs(10)).await;
}

/// A stale event reaching the other replica is refused there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ordering_guard_holds_across_replicas() {
    let redis = RedisServer::start();
    let dir = Dir::new("ordering");
    let (app_a, app_b) = (TestApp::start(true).await, TestApp::start(true).await);
    let (mut a, a_admin) = start(&config(&dir.0, "a", &app_a), &redis, "pod-a").await;
    let (mut b, b_admin) = start(&config(&dir.0, "b", &app_b), &redis, "pod-b").await;
    assert_eq!(
        send(a.ingress_addr(), "new", r#"{"object":"pay_9","at":20}"#)
            .await
            .status,
        200
    );
    let until = Instant::now() + Duration::from_secs(10);
    while app_a.delivered().len() + app_b.delivered().len() < 1 {
        assert!(Instant::now() < until, "the newer event was not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        send(b.ingress_addr(), "old", r#"{"object":"pay_9","at":10}"#)
            .await
            .status,
        200
    );
    let out_of_order = "sluice_webhook_deliveries_total{integration=\"shop/payments\",webhook=\"events\",result=\"out_of_order\"}";
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = metric(&metrics(a_admin).await, out_of_order)
            + metric(&metrics(b_admin).await, out_of_order);
        if refused == 1.0 {
            break;
        }
        assert!(Instant::now() < until, "the stale event was not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut all = app_a.delivered();
    all.extend(app_b.delivered());
    assert_eq!(all, ["new"], "only the newer event reached an app");
}

/// Dead letters are shared: one sidecar dead-letters an event, another
/// lists, shows and replays it (the admin API `sluice webhooks` uses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_shared_and_replayed_from_another_replica() {
    let redis = RedisServer::start();
    let dir = Dir::new("dead");
    let app = TestApp::start(false).await;
    let config_a = config(&dir.0, "a", &app);
    // One attempt only: the event is dead-lettered at once.
    let yaml = std::fs::read_to_string(&config_a)
        .unwrap()
        .replace("maxAttempts: 100,", "maxAttempts: 1,");
    std::fs::write(&config_a, yaml).unwrap();
    let (mut a, a_admin) = start(&config_a, &redis, "pod-a").await;
    assert_eq!(
        send(a.ingress_addr(), "evt-dead", r#"{"object":"d","at":1}"#)
            .await
            .status,
        200
    );
    wait_metric(
        a_admin,
        "sluice_webhook_deliveries_total{integration=\"shop/payments\",webhook=\"events\",result=\"dead_letter\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    a.kill_9();

    // Another replica sees it, shows it and replays it to its (healthy) app.
    let app_b = TestApp::start(true).await;
    let (_b, b_admin) = start(&config(&dir.0, "b", &app_b), &redis, "pod-b").await;
    let list = App::new(b_admin).get("/webhooks/dead-letters").await;
    assert_eq!(list.status, 200, "{}", list.text());
    let letters: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(letters.as_array().unwrap().len(), 1, "{letters}");
    let seq = letters[0]["seq"].as_u64().expect("a dead letter's number");
    let path = format!("/webhooks/dead-letters/shop/payments/events/{seq}");
    let shown = App::new(b_admin).get(&path).await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert!(shown.text().contains("evt-dead"), "{}", shown.text());
    let replayed = App::new(b_admin)
        .send("POST", &format!("{path}/replay"), &[], "")
        .await;
    assert_eq!(replayed.status, 202, "{}", replayed.text());
    wait_delivered(&app_b, 1, Duration::from_secs(10)).await;
    assert_eq!(app_b.delivered(), ["evt-dead"]);
    let after = App::new(b_admin).get("/webhooks/dead-letters").await;
    assert_eq!(after.text().trim(), "[]", "replayed letters are gone");
}
