//! `scope: Cluster` limits on shared state: real `sluice-sidecar` processes
//! sharing a real `redis-server` (AOF `always`, a loopback port, one per
//! test), a real upstream counting what reaches it.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::process::SidecarProcess;
use support::redis_server::RedisServer;
use support::*;
use tokio::time::Instant;

const INTEGRATION: &str = "default/carrier";

/// Two or more sidecars of one integration, one Redis, one upstream.
struct Cluster {
    redis: RedisServer,
    upstream: TestUpstream,
    config: PathBuf,
    sidecars: Vec<Sidecar>,
}

struct Sidecar {
    /// Killed when dropped.
    process: SidecarProcess,
    app: App,
    admin: std::net::SocketAddr,
}

/// A sidecar config in `dir`: the integration in front of `upstream` with
/// the one rate limit `limit` (YAML), no retries.
fn write_config(dir: &Path, upstream: &TestUpstream, limit: &str) -> PathBuf {
    let config = dir.join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            "admin: {{listen: '127.0.0.1:0'}}\nintegrations:\n- name: {INTEGRATION}\n  listen: 127.0.0.1:0\n  upstream: {{baseUrl: '{}', timeout: 2s, totalTimeout: 30s}}\n  retry: {{maxAttempts: 1}}\n  rateLimits:\n  - {limit}\n",
            upstream.url()
        ),
    )
    .unwrap();
    config
}

/// A limit of 5/s, shared, for the tests about the connection itself.
const SMALL_LIMIT: &str =
    "{name: account, match: {}, requests: 5, per: 1s, burst: 5, scope: Cluster}";

impl Cluster {
    /// `limit` is the YAML of the one rate limit (a Cluster one).
    async fn start(replicas: usize, limit: &str, upstream: TestUpstream) -> Self {
        let redis = RedisServer::start();
        let config = write_config(&redis.dir, &upstream, limit);
        let mut cluster = Self {
            redis,
            upstream,
            config,
            sidecars: Vec::new(),
        };
        for i in 0..replicas {
            cluster.spawn(&format!("pod-{i}"));
        }
        for sidecar in &cluster.sidecars {
            sidecar.wait_metric("sluice_shared_state_up{", 1.0).await;
        }
        cluster
    }

    fn spawn(&mut self, identity: &str) {
        let url = self.redis.url();
        let sidecar = Sidecar::spawn(
            &self.config,
            &["--shared-state", &url, "--shared-state-identity", identity],
        );
        self.sidecars.push(sidecar);
    }
}

impl Sidecar {
    /// `sluice-sidecar --config CONFIG ARGS...`, once it has bound.
    fn spawn(config: &Path, args: &[&str]) -> Self {
        let mut process = SidecarProcess::spawn(config, args);
        let app = App::new(process.egress_addr(INTEGRATION));
        let admin = process.admin_addr();
        Sidecar {
            process,
            app,
            admin,
        }
    }

    async fn metrics(&self) -> String {
        App::new(self.admin).get("/metrics").await.text()
    }

    async fn metric(&self, prefix: &str) -> f64 {
        metric(&self.metrics().await, prefix)
    }

    /// Waits (at most 10 s) until the metric `prefix` reads `value`.
    async fn wait_metric(&self, prefix: &str, value: f64) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.metric(prefix).await;
            if now == value {
                return;
            }
            assert!(
                Instant::now() < until,
                "{prefix} stayed {now}, not {value}, for 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The most arrivals in any window of `window` (each window starting at an arrival).
fn most_in_any_window(times: &[Instant], window: Duration) -> usize {
    let mut times = times.to_vec();
    times.sort();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t < times[i] + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn ok_upstream() -> impl Future<Output = TestUpstream> {
    TestUpstream::plain(handler(|_, _| async { respond(200, "ok") }))
}

/// Requests sent back to back by `workers` tasks through `app` until `until`;
/// returns how many were answered 200.
async fn load(app: &App, workers: usize, until: Instant) -> usize {
    let answered = AtomicUsize::new(0);
    let worker = || async {
        while Instant::now() < until {
            if app.get("/v1/rates").await.status == 200 {
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    futures_util::future::join_all((0..workers).map(|_| worker())).await;
    answered.into_inner()
}

/// Requests sent back to back through `app` until `until`; their statuses.
async fn statuses_until(app: &App, until: Instant) -> Vec<u16> {
    let mut statuses = Vec::new();
    while Instant::now() < until {
        statuses.push(app.get("/v1/rates").await.status);
    }
    statuses
}

/// The first test: a Cluster limit of 20/s shared by two sidecars,
/// 90 % of the load on one: never more than 20 in any second at the
/// upstream, at least 95 % of the limit used, and the quiet sidecar served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_uneven_load_never_exceed_and_use_the_limit() {
    // Each pod's share would be 10/s: without shared state the busy pod
    // could use only half of the limit.
    let cluster = Cluster::start(
        2,
        "{name: account, match: {}, requests: 10, per: 1s, burst: 10, scope: Cluster, cluster: {requests: 20, burst: 20}, queue: {maxWait: 20s, maxDepth: 1000}}",
        ok_upstream().await,
    )
    .await;
    let (busy, quiet) = (&cluster.sidecars[0], &cluster.sidecars[1]);
    let until = Instant::now() + Duration::from_secs(6);
    let (through_busy, through_quiet) =
        tokio::join!(load(&busy.app, 9, until), load(&quiet.app, 1, until));

    let arrivals: Vec<Instant> = cluster.upstream.requests().iter().map(|s| s.at).collect();
    let most = most_in_any_window(&arrivals, Duration::from_secs(1));
    assert!(
        most <= 20,
        "{most} requests reached the upstream within one second; the limit is 20"
    );
    let first = *arrivals.iter().min().expect("requests arrived");
    // Past the first second's burst: 5 s at 20/s is 100.
    let steady = arrivals
        .iter()
        .filter(|t| **t >= first + Duration::from_secs(1) && **t < first + Duration::from_secs(6))
        .count();
    assert!(
        steady >= 95,
        "{steady} of the 100 requests the limit allowed in 5 s were sent ({through_busy} through the busy sidecar, {through_quiet} through the quiet one)"
    );
    assert!(
        through_quiet >= 3,
        "the quiet sidecar was starved: {through_quiet}"
    );
    assert!(
        through_busy > 60,
        "the busy sidecar got only {through_busy}: it should use most of the limit"
    );
    for sidecar in &cluster.sidecars {
        let text = sidecar.metrics().await;
        assert!(
            metric(
                &text,
                "sluice_shared_state_calls_total{op=\"admit\",outcome=\"ok\"}"
            ) > 0.0
        );
        assert_eq!(
            metric(&text, "sluice_shared_state_fallbacks_total{"),
            0.0,
            "{text}"
        );
    }
}

/// Redis stopped: requests still go, on each pod's share, counted as
/// fallbacks; Redis back (from its AOF): shared again, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_state_down_falls_back_to_the_share_and_comes_back() {
    let mut cluster = Cluster::start(
        2,
        "{name: account, match: {}, requests: 5, per: 1s, burst: 5, scope: Cluster, cluster: {requests: 10, burst: 10}, queue: {maxWait: 20s, maxDepth: 1000}}",
        ok_upstream().await,
    )
    .await;

    // Phase: shared. One sidecar alone may use the whole 10.
    let start = Instant::now();
    let a = &cluster.sidecars[0];
    for _ in 0..10 {
        assert_eq!(a.app.get("/v1/rates").await.status, 200);
    }
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "the whole limit was usable by one sidecar: {:?}",
        start.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Phase: Redis down. Still served, at the pod's share (5/s).
    cluster.redis.stop();
    let before = cluster.upstream.count();
    let down_at = Instant::now();
    let a = &cluster.sidecars[0];
    for _ in 0..10 {
        assert_eq!(
            a.app.get("/v1/rates").await.status,
            200,
            "egress keeps serving without the shared state"
        );
    }
    let took = down_at.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "10 requests at a share of 5/s took {took:?}"
    );
    assert_eq!(cluster.upstream.count() - before, 10);
    let text = a.metrics().await;
    assert_eq!(metric(&text, "sluice_shared_state_up{"), 0.0, "{text}");
    assert!(
        metric(&text, "sluice_shared_state_fallbacks_total{") >= 9.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "sluice_shared_state_calls_total{op=\"admit\",outcome=\"error\"}"
        ) + metric(
            &text,
            "sluice_shared_state_calls_total{op=\"admit\",outcome=\"timeout\"}"
        ) >= 1.0,
        "{text}"
    );

    // Phase: Redis back from its AOF; the sidecars find it by themselves.
    cluster.redis.resume();
    for sidecar in &cluster.sidecars {
        sidecar.wait_metric("sluice_shared_state_up{", 1.0).await;
    }
    let a = &cluster.sidecars[0];
    let fallbacks = a.metric("sluice_shared_state_fallbacks_total{").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let back_at = Instant::now();
    for _ in 0..10 {
        assert_eq!(a.app.get("/v1/rates").await.status, 200);
    }
    assert!(
        back_at.elapsed() < Duration::from_millis(900),
        "shared again, the whole limit is usable: {:?}",
        back_at.elapsed()
    );
    assert_eq!(
        a.metric("sluice_shared_state_fallbacks_total{").await,
        fallbacks
    );
}

/// A provider's 429 seen through one sidecar holds the other's requests too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_429_through_one_sidecar_pauses_the_other() {
    // `n` counts the requests seen, this one included.
    let upstream = TestUpstream::plain(handler(|_, n| async move {
        if n == 1 {
            let mut r = respond(429, "slow down");
            r.headers_mut().insert("retry-after", "2".parse().unwrap());
            r
        } else {
            respond(200, "ok")
        }
    }))
    .await;
    let cluster = Cluster::start(
        2,
        "{name: account, match: {}, requests: 50, per: 1s, burst: 50, scope: Cluster, cluster: {requests: 100, burst: 100}, queue: {maxWait: 20s, maxDepth: 1000}}",
        upstream,
    )
    .await;
    let first = cluster.sidecars[0].app.get("/v1/rates").await;
    assert_eq!(first.status, 429);
    let sent = Instant::now();
    let second = cluster.sidecars[1].app.get("/v1/rates").await;
    assert_eq!(second.status, 200);
    let seen = cluster.upstream.requests();
    assert_eq!(seen.len(), 2);
    let held = seen[1].at - seen[0].at;
    assert!(
        held >= Duration::from_millis(1900),
        "the other sidecar sent {held:?} after the 429 that said 2 s (it waited {:?})",
        sent.elapsed()
    );
}

/// Requests for `account` sent back to back by `workers` tasks through
/// `app` until `until`.
async fn load_account(app: &App, account: &str, workers: usize, until: Instant) {
    let worker = || async {
        while Instant::now() < until {
            app.send("GET", "/v1/rates", &[("x-account-id", account)], "")
                .await;
        }
    };
    futures_util::future::join_all((0..workers).map(|_| worker())).await;
}

/// A Cluster limit kept per account: each account's whole 10/s is shared by
/// both sidecars (one sidecar alone uses all of it for `acct_a`, twice its
/// pod share), no account gets more, and each account's state has its own
/// Redis keys, named by a digest (no account id in the key space).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_cluster_limit_is_shared_per_value() {
    let cluster = Cluster::start(
        2,
        "{name: account, match: {}, requests: 5, per: 1s, burst: 5, scope: Cluster, cluster: {requests: 10, burst: 10}, key: {header: X-Account-Id}, queue: {maxWait: 20s, maxDepth: 1000}}",
        ok_upstream().await,
    )
    .await;
    let (one, two) = (&cluster.sidecars[0], &cluster.sidecars[1]);
    let until = Instant::now() + Duration::from_secs(4);
    tokio::join!(
        load_account(&one.app, "acct_a", 3, until),
        load_account(&one.app, "acct_b", 2, until),
        load_account(&two.app, "acct_b", 2, until),
    );

    let seen = cluster.upstream.requests();
    for account in ["acct_a", "acct_b"] {
        let arrivals: Vec<Instant> = seen
            .iter()
            .filter(|s| s.headers["x-account-id"] == account)
            .map(|s| s.at)
            .collect();
        let most = most_in_any_window(&arrivals, Duration::from_secs(1));
        let first = *arrivals.first().expect("requests arrived");
        let offsets: Vec<u128> = arrivals.iter().map(|t| (*t - first).as_millis()).collect();
        assert!(
            most <= 10,
            "{account}: {most} within one second; its limit is 10 (arrivals, ms: {offsets:?})"
        );
        // Past the first burst: 3 s at 10/s is 30.
        let steady = arrivals
            .iter()
            .filter(|t| {
                **t >= first + Duration::from_secs(1) && **t < first + Duration::from_secs(4)
            })
            .count();
        assert!(
            steady >= 27,
            "{account}: {steady} of the 30 its limit allowed in 3 s (one sidecar alone on its share would send 15)"
        );
    }
    let keys = cluster
        .redis
        .cli(&["--scan", "--pattern", "sluice:*:limit:account:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains("acct_")), "{keys:?}");
    // Every admission was the shared state's; each sidecar tracks the
    // accounts it sent for.
    for (sidecar, accounts) in [(one, 2.0), (two, 1.0)] {
        assert_eq!(
            sidecar.metric("sluice_shared_state_fallbacks_total{").await,
            0.0
        );
        assert_eq!(sidecar.metric("sluice_ratelimit_keys{").await, accounts);
    }
}

/// The provider's headers, read by one sidecar, hold the other too: the
/// provider's first window allows 4 in 2 s while the Cluster limit is
/// 100/s; two sidecars together stay within it (no 429), then go at full
/// speed after its reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_headers_hold_every_sidecar() {
    use support::provider::{Dialect, FIRST, WINDOW, windowed_upstream};
    let upstream = TestUpstream::plain(windowed_upstream(Dialect::XRateLimitEpoch)).await;
    let cluster = Cluster::start(
        2,
        "{name: account, match: {}, requests: 50, per: 1s, burst: 50, scope: Cluster, cluster: {requests: 100, burst: 100}, queue: {maxWait: 20s, maxDepth: 1000}}",
        upstream,
    )
    .await;
    let until = Instant::now() + Duration::from_millis(3500);
    let (one, two) = tokio::join!(
        statuses_until(&cluster.sidecars[0].app, until),
        statuses_until(&cluster.sidecars[1].app, until)
    );
    let statuses: Vec<u16> = one.into_iter().chain(two).collect();
    let seen = cluster.upstream.requests();
    let first = seen[0].at;
    let early: Vec<u128> = seen
        .iter()
        .map(|s| (s.at - first).as_millis())
        .filter(|ms| *ms < 2500)
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "the provider refused some (arrivals in its first window and after, ms: {early:?})"
    );
    let before_reset = seen.iter().filter(|s| s.at < first + WINDOW).count();
    assert!(
        before_reset as u64 <= FIRST,
        "{before_reset} requests in the first window, which allowed {FIRST}"
    );
    let after_reset = seen.iter().filter(|s| s.at >= first + WINDOW).count();
    assert!(after_reset >= 50, "only {after_reset} after the reset");
    // The budget went through the shared state.
    let mut follows = 0.0;
    for sidecar in &cluster.sidecars {
        follows += sidecar
            .metric("sluice_shared_state_calls_total{op=\"follow\",outcome=\"ok\"}")
            .await;
    }
    assert!(follows >= 1.0, "no budget was shared");
}

/// A high-priority request at one sidecar goes before low-priority ones
/// queued at another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_holds_across_sidecars() {
    let cluster = Cluster::start(
        2,
        "{name: account, match: {}, requests: 1, per: 1s, burst: 1, scope: Cluster, cluster: {requests: 2, burst: 1}, queue: {maxWait: 20s, maxDepth: 1000}}",
        ok_upstream().await,
    )
    .await;
    let (low, high) = (&cluster.sidecars[0], &cluster.sidecars[1]);
    let low_requests = async {
        futures_util::future::join_all((0..4).map(|i| async move {
            let path = format!("/low/{i}");
            low.app
                .send("GET", &path, &[("x-sluice-priority", "low")], "")
                .await
                .status
        }))
        .await
    };
    let high_request = async {
        // After the first low one went and the others queued.
        tokio::time::sleep(Duration::from_millis(150)).await;
        high.app
            .send("GET", "/high", &[("x-sluice-priority", "high")], "")
            .await
            .status
    };
    let (lows, high_status) = tokio::join!(low_requests, high_request);
    assert!(lows.iter().all(|s| *s == 200), "{lows:?}");
    assert_eq!(high_status, 200);
    let order: Vec<String> = cluster
        .upstream
        .requests()
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    let high_at = order
        .iter()
        .position(|u| u == "/high")
        .expect("the high request arrived");
    assert_eq!(
        high_at, 1,
        "the high-priority request should follow the one low request sent before it: {order:?}"
    );
}

/// A password from a file works; a wrong one keeps the sidecar on its
/// share, and neither password appears in its log, metrics or /config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_from_a_file_and_never_shown() {
    let redis = RedisServer::start_with(Some("right-horse-battery"));
    let upstream = ok_upstream().await;
    let config = write_config(&redis.dir, &upstream, SMALL_LIMIT);
    let password_file = redis.dir.join("password");
    std::fs::write(&password_file, "right-horse-battery\n").unwrap();
    let url = redis.url();
    let good = Sidecar::spawn(
        &config,
        &[
            "--shared-state",
            &url,
            "--shared-state-password-file",
            password_file.to_str().unwrap(),
        ],
    );
    let wrong_url = format!("redis://:wrong-staple-guess@{}/0", redis.addr);
    let bad = Sidecar::spawn(&config, &["--shared-state", &wrong_url]);
    good.wait_metric("sluice_shared_state_up{", 1.0).await;
    // The wrong password: refused by Redis, so never up; requests still go.
    assert_eq!(bad.app.get("/v1/rates").await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bad_metrics = bad.metrics().await;
    assert_eq!(
        metric(&bad_metrics, "sluice_shared_state_up{"),
        0.0,
        "{bad_metrics}"
    );
    assert!(
        bad_metrics.contains("target=\"redis://127.0.0.1:"),
        "{bad_metrics}"
    );
    let shown = [
        bad_metrics,
        App::new(bad.admin).get("/config").await.text(),
        good.metrics().await,
        App::new(good.admin).get("/config").await.text(),
        bad.process.log().join("\n"),
    ]
    .join("\n");
    for secret in ["wrong-staple-guess", "right-horse-battery"] {
        assert!(!shown.contains(secret), "{secret} was shown:\n{shown}");
    }
    assert!(
        bad.process
            .log()
            .iter()
            .any(|l| l.contains("cannot reach the shared state")),
        "the refusal is logged: {:?}",
        bad.process.log()
    );
}

/// rediss://: TLS to Redis with a private CA given by file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let redis = RedisServer::start_tls();
    let upstream = ok_upstream().await;
    let config = write_config(&redis.dir, &upstream, SMALL_LIMIT);
    let ca = redis.ca_file.clone().unwrap();
    let url = redis.url();
    assert!(url.starts_with("rediss://localhost:"), "{url}");
    let sidecar = Sidecar::spawn(
        &config,
        &[
            "--shared-state",
            &url,
            "--shared-state-ca-file",
            ca.to_str().unwrap(),
        ],
    );
    sidecar.wait_metric("sluice_shared_state_up{", 1.0).await;
    assert_eq!(sidecar.app.get("/v1/rates").await.status, 200);
    let text = sidecar.metrics().await;
    assert_eq!(
        metric(
            &text,
            "sluice_shared_state_calls_total{op=\"admit\",outcome=\"ok\"}"
        ),
        1.0,
        "{text}"
    );
    assert!(text.contains("target=\"rediss://localhost:"), "{text}");
}

/// A slow Redis (toxiproxy adds 500 ms to every answer) costs a request at
/// most the call timeout, once: then the limit is decided on the pod's
/// share until Redis answers in time again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_bounds_the_added_latency() {
    let redis = RedisServer::start();
    let toxiproxy = support::toxiproxy::Toxiproxy::start().await;
    let proxied = toxiproxy.proxy("redis", redis.addr).await;
    let upstream = ok_upstream().await;
    let config = write_config(
        &redis.dir,
        &upstream,
        "{name: account, match: {}, requests: 1000, per: 1s, burst: 1000, scope: Cluster}",
    );
    let url = format!("redis://{proxied}/0");
    let sidecar = Sidecar::spawn(
        &config,
        &["--shared-state", &url, "--shared-state-timeout", "100ms"],
    );
    sidecar.wait_metric("sluice_shared_state_up{", 1.0).await;
    assert_eq!(sidecar.app.get("/v1/rates").await.status, 200);

    // Phase: every answer from Redis 500 ms late.
    toxiproxy
        .toxic("redis", "latency", serde_json::json!({"latency": 500}))
        .await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(sidecar.app.get("/v1/rates").await.status, 200);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(400),
        "a request waited {slowest:?} on a Redis 500 ms slow; the call timeout is 100 ms"
    );
    let text = sidecar.metrics().await;
    assert!(
        metric(
            &text,
            "sluice_shared_state_calls_total{op=\"admit\",outcome=\"timeout\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "sluice_shared_state_fallbacks_total{") >= 9.0,
        "{text}"
    );

    // Phase: Redis fast again: shared again, by itself.
    toxiproxy.remove_toxic("redis", "latency_downstream").await;
    sidecar.wait_metric("sluice_shared_state_up{", 1.0).await;
    let fallbacks = sidecar.metric("sluice_shared_state_fallbacks_total{").await;
    assert_eq!(sidecar.app.get("/v1/rates").await.status, 200);
    assert_eq!(
        sidecar.metric("sluice_shared_state_fallbacks_total{").await,
        fallbacks
    );
}
