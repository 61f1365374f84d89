//! Spend quotas over real sockets: the real `sluice-sidecar` binary keeps a
//! quota's usage across a restart (clean or killed), Google's own Maps
//! client is charged a Distance Matrix's elements, and with shared state
//! two sidecars spend one quota that outlives both.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::process::SidecarProcess;
use support::redis_server::RedisServer;
use support::*;

const INTEGRATION: &str = "maps";

/// A Maps-like upstream: every answer is an OK Distance Matrix.
async fn maps_upstream() -> TestUpstream {
    TestUpstream::plain(handler(|_, _| async {
        respond(
            200,
            r#"{"status": "OK", "origin_addresses": [], "destination_addresses": [], "rows": []}"#,
        )
    }))
    .await
}

/// A sidecar config with `quotas` (YAML list items), its state in `dir`.
fn write_config(dir: &Path, upstream: &TestUpstream, quotas: &[&str]) -> PathBuf {
    let config = dir.join("sidecar.yaml");
    let quotas: String = quotas.iter().map(|q| format!("  - {q}\n")).collect();
    std::fs::write(
        &config,
        format!(
            "admin: {{listen: '127.0.0.1:0'}}\ningress: {{listen: '127.0.0.1:0', stateDir: '{}'}}\nintegrations:\n- name: {INTEGRATION}\n  listen: 127.0.0.1:0\n  upstream: {{baseUrl: '{}', timeout: 2s, totalTimeout: 10s}}\n  retry: {{maxAttempts: 1}}\n  quotas:\n{quotas}",
            dir.join("state").display(),
            upstream.url()
        ),
    )
    .unwrap();
    config
}

/// A process and the app's client to it.
struct Pod {
    process: SidecarProcess,
    app: App,
    egress: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Pod {
    fn spawn(config: &Path, args: &[&str]) -> Self {
        let mut process = SidecarProcess::spawn(config, args);
        let egress = process.egress_addr(INTEGRATION);
        let admin = process.admin_addr();
        Pod {
            process,
            app: App::new(egress),
            egress,
            admin,
        }
    }

    async fn metric(&self, prefix: &str) -> f64 {
        metric(&App::new(self.admin).get("/metrics").await.text(), prefix)
    }

    /// GETs `path` until one is refused (at most `most`): how many passed,
    /// and the refusal.
    async fn spend(&self, path: &str, most: usize) -> (usize, Option<Answer>) {
        for sent in 0..most {
            let answer = self.app.get(path).await;
            if answer.status != 200 {
                return (sent, Some(answer));
            }
        }
        (most, None)
    }
}

fn seconds_to_utc_midnight() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    86_400 - now % 86_400
}

/// A refusal by the quota: 429 `quota-exhausted`, `Retry-After` at the
/// window's end (midnight UTC for `24h`).
fn assert_exhausted(answer: &Answer) {
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert_eq!(answer.header("x-sluice-error"), Some("quota-exhausted"));
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    let midnight = seconds_to_utc_midnight();
    assert!(
        retry_after.abs_diff(midnight) <= 2,
        "Retry-After {retry_after}, midnight in {midnight}"
    );
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["error"]["code"], "quota-exhausted");
    assert!(body["error"]["message"].as_str().unwrap().contains("calls"));
}

const TEN_A_DAY: &str = "{name: calls, limit: 10, per: 24h, whenExhausted: Reject}";

#[tokio::test]
async fn a_quota_of_ten_refuses_the_eleventh_and_still_does_after_a_restart() {
    let upstream = maps_upstream().await;
    let dir = SecretDir::new("quota-restart");

    // Phase 1: five pass; a clean stop writes the exact usage (the file
    // was a step ahead), so the restarted sidecar resumes from 5.
    let config = write_config(&dir.0, &upstream, &[TEN_A_DAY]);
    let mut pod = Pod::spawn(&config, &[]);
    assert_eq!(pod.spend("/v1/geocode?address=x", 5).await.0, 5);
    pod.process.terminate();
    let mut pod = Pod::spawn(&config, &[]);
    assert_eq!(pod.metric("sluice_quota_used{").await, 5.0);

    // Phase 2: five more pass, the eleventh is refused before it reaches
    // the provider.
    let (passed, refused) = pod.spend("/v1/geocode?address=x", 20).await;
    assert_eq!(passed, 5);
    assert_exhausted(&refused.unwrap());
    assert_eq!(upstream.count(), 10);
    assert_eq!(pod.metric("sluice_quota_used{").await, 10.0);
    assert_eq!(pod.metric("sluice_quota_rejected_total{").await, 1.0);

    // Phase 3: a clean restart with the same state: still exhausted.
    pod.process.terminate();
    let pod = Pod::spawn(&config, &[]);
    assert_eq!(pod.metric("sluice_quota_used{").await, 10.0);
    assert_exhausted(&pod.app.get("/v1/geocode?address=y").await);
    assert_eq!(upstream.count(), 10, "nothing more reached the provider");
}

#[tokio::test]
async fn a_killed_sidecar_over_counts_by_at_most_a_step_never_under() {
    let upstream = maps_upstream().await;
    let dir = SecretDir::new("quota-crash");
    let config = write_config(&dir.0, &upstream, &[TEN_A_DAY]);

    // Phase 1: five pass, then the pod is killed without a chance to write.
    let mut pod = Pod::spawn(&config, &[]);
    assert_eq!(pod.spend("/v1/geocode", 5).await.0, 5);
    pod.process.kill_9();

    // Phase 2: the restarted pod resumes from the reservation: at most one
    // step (1 % of 10, at least 1) is lost, nothing is spent twice.
    let pod = Pod::spawn(&config, &[]);
    let (passed, refused) = pod.spend("/v1/geocode", 10).await;
    assert_exhausted(&refused.unwrap());
    assert!((4..=5).contains(&passed), "{passed} passed after the crash");
    assert!(upstream.count() <= 10);
}

#[tokio::test]
async fn the_google_maps_client_is_charged_a_distance_matrix_by_its_elements() {
    let upstream = maps_upstream().await;
    let dir = SecretDir::new("quota-maps");
    let config = write_config(
        &dir.0,
        &upstream,
        &[
            "{name: elements, match: {path: '/maps/api/distancematrix/*'}, limit: 24, per: calendarMonth, cost: {queryProduct: [origins, destinations], separator: '|'}}",
            "{name: requests, limit: 2, per: 24h, whenExhausted: Warn}",
        ],
    );
    let pod = Pod::spawn(&config, &[]);

    // Phase 1: three 3×4 matrices with the SDK: 12 + 12 fit in 24, the
    // third raises the SDK's own HTTPError with Sluice's 429.
    let base = format!("http://{}", pod.egress);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sdks/maps_calls.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .args([&base, "3x4", "3x4", "3x4"])
            .output()
    })
    .await
    .unwrap()
    .expect("the Maps script runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let calls: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 3, "{calls:?}\n{stderr}");
    assert_eq!(
        (calls[0]["ok"].clone(), calls[1]["ok"].clone()),
        (true.into(), true.into())
    );
    assert_eq!(calls[2]["raised"], "HTTPError", "{calls:?}");
    assert_eq!(calls[2]["status"], 429);

    // Phase 2: the provider saw two matrices as the SDK sent them (`|`
    // percent-encoded), and each cost 12.
    assert_eq!(upstream.count(), 2);
    assert!(
        upstream.requests()[0]
            .uri
            .contains("origins=origin+0%7Corigin+1%7Corigin+2")
    );
    assert_eq!(
        pod.metric("sluice_quota_used{integration=\"maps\",quota=\"elements\"}")
            .await,
        24.0
    );
    assert_eq!(
        pod.metric("sluice_quota_spent_total{integration=\"maps\",quota=\"elements\"}")
            .await,
        24.0
    );
    // The refused third was given back to the quota that only warns.
    assert_eq!(
        pod.metric("sluice_quota_used{integration=\"maps\",quota=\"requests\"}")
            .await,
        2.0
    );

    // Phase 3: `Warn` sends past its limit and counts it.
    assert_eq!(
        pod.app.get("/maps/api/geocode/json?address=x").await.status,
        200
    );
    assert_eq!(
        pod.metric("sluice_quota_used{integration=\"maps\",quota=\"requests\"}")
            .await,
        3.0
    );
    assert_eq!(upstream.count(), 3);
}

#[tokio::test]
async fn a_shared_quota_is_one_count_for_every_sidecar_and_outlives_them() {
    let upstream = maps_upstream().await;
    let redis = RedisServer::start();
    let config = write_config(&redis.dir, &upstream, &[TEN_A_DAY]);
    let url = redis.url();
    let shared = |identity: &'static str| {
        Pod::spawn(
            &config,
            &["--shared-state", &url, "--shared-state-identity", identity],
        )
    };
    let (mut a, mut b) = (shared("pod-a"), shared("pod-b"));
    for pod in [&a, &b] {
        wait_until(|| pod.metric("sluice_shared_state_up{"), 1.0).await;
    }

    // Phase 1: six through one sidecar, four through the other, then both refuse.
    assert_eq!(a.spend("/v1/geocode", 6).await.0, 6);
    let (passed, refused) = b.spend("/v1/geocode", 10).await;
    assert_eq!(passed, 4);
    assert_exhausted(&refused.unwrap());
    assert_exhausted(&a.app.get("/v1/geocode").await);
    assert_eq!(upstream.count(), 10);
    // The idle sidecar's gauge shows what the other spent.
    wait_until(|| a.metric("sluice_quota_used{"), 10.0).await;

    // Phase 2: both pods killed; new ones find the usage on the server.
    a.process.kill_9();
    b.process.kill_9();
    let c = shared("pod-c");
    wait_until(|| c.metric("sluice_shared_state_up{"), 1.0).await;
    assert_exhausted(&c.app.get("/v1/geocode").await);
    assert_eq!(upstream.count(), 10);
    assert_eq!(c.metric("sluice_quota_fallbacks_total{").await, 0.0);
}

/// Waits (at most 20 s) until `read` gives `value`.
async fn wait_until<F, Fut>(read: F, value: f64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = read().await;
        if now == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "stayed {now}, not {value}, for 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn what_a_pod_counts_while_the_shared_state_is_down_is_added_when_it_returns() {
    let upstream = maps_upstream().await;
    let mut redis = RedisServer::start();
    let config = write_config(&redis.dir, &upstream, &[TEN_A_DAY]);
    let url = redis.url();
    let pod = Pod::spawn(&config, &["--shared-state", &url]);
    wait_until(|| pod.metric("sluice_shared_state_up{"), 1.0).await;

    // Phase 1: three counted on the server, two on the pod while it is down.
    assert_eq!(pod.spend("/v1/geocode", 3).await.0, 3);
    redis.stop();
    assert_eq!(pod.spend("/v1/geocode", 2).await.0, 2);
    assert_eq!(pod.metric("sluice_quota_fallbacks_total{").await, 2.0);

    // Phase 2: back up, the next charge brings the two along: the server
    // holds all six, and the limit holds across the outage.
    redis.resume();
    wait_until(|| pod.metric("sluice_shared_state_up{"), 1.0).await;
    assert_eq!(pod.spend("/v1/geocode", 1).await.0, 1);
    let keys = redis.cli(&["--scan", "--pattern", "sluice:*:quota:calls:*"]);
    let key = keys
        .lines()
        .next()
        .expect("the window's key")
        .trim()
        .to_owned();
    assert_eq!(redis.cli(&["GET", &key]).trim(), "6");
    let (passed, refused) = pod.spend("/v1/geocode", 10).await;
    assert_eq!(passed, 4);
    assert_exhausted(&refused.unwrap());
    assert_eq!(upstream.count(), 10);
}
