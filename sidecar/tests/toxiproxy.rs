//! The faults as toxiproxy (the tool users reach for) produces them, between
//! the sidecar and a real upstream: a body cut by `limit_data`, a body slowed
//! by `bandwidth`, connections reset by `reset_peer`.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::Duration;

use bytes::Bytes;
use sluice_sidecar::config::IntegrationConfig;
use support::*;
use tokio::time::Instant;

/// A toxiproxy server on loopback, stopped on drop.
struct Toxiproxy {
    child: Child,
    api: App,
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Toxiproxy {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(tool("toxiproxy-server"))
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("toxiproxy-server starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "toxiproxy did not listen within 10s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            api: App::new(addr),
        }
    }

    /// A proxy to `upstream`; returns where it listens.
    async fn proxy(&self, name: &str, upstream: SocketAddr) -> SocketAddr {
        let created = self
            .call(
                "/proxies",
                serde_json::json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream.to_string()}),
            )
            .await;
        created["listen"].as_str().unwrap().parse().unwrap()
    }

    async fn toxic(&self, proxy: &str, kind: &str, attributes: serde_json::Value) {
        self.call(
            &format!("/proxies/{proxy}/toxics"),
            serde_json::json!({"type": kind, "stream": "downstream", "attributes": attributes}),
        )
        .await;
    }

    async fn call(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let answer = self
            .api
            .send("POST", path, &[], Bytes::from(body.to_string()))
            .await;
        assert!(answer.status < 300, "toxiproxy {path}: {}", answer.text());
        serde_json::from_slice(&answer.body).unwrap()
    }
}

fn config(name: &str, proxy: SocketAddr, extra: &str) -> IntegrationConfig {
    let mut config: IntegrationConfig = serde_yaml_ng::from_str(&format!(
        "name: {name}\nlisten: 127.0.0.1:0\nupstream: {{baseUrl: 'http://{proxy}', timeout: 2s, totalTimeout: 5s, bodyTimeout: 1s}}\n{extra}"
    ))
    .unwrap();
    config.retry.backoff.initial = sluice_sidecar::config::Duration::from_millis(20);
    config.retry.backoff.max = sluice_sidecar::config::Duration::from_millis(50);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_faults_are_counted_bounded_and_within_max_attempts() {
    // Phase 1: an upstream with a 100 KB answer, behind three proxies.
    let upstream = TestUpstream::plain(handler(|_, _| async {
        respond(200, Box::leak("x".repeat(100_000).into_boxed_str()))
    }))
    .await;
    let toxiproxy = Toxiproxy::start().await;
    let cut = toxiproxy.proxy("cut", upstream.addr).await;
    let slow = toxiproxy.proxy("slow", upstream.addr).await;
    let reset = toxiproxy.proxy("reset", upstream.addr).await;
    toxiproxy
        .toxic("cut", "limit_data", serde_json::json!({"bytes": 5000}))
        .await;
    toxiproxy
        .toxic("slow", "bandwidth", serde_json::json!({"rate": 10}))
        .await;
    let sidecar = start(vec![
        config("cut", cut, "retry: {maxAttempts: 1}\n"),
        config("slow", slow, "retry: {maxAttempts: 1}\n"),
        config("reset", reset, "retry: {maxAttempts: 3}\n"),
    ])
    .await;

    // Phase 2: limit_data cuts the body; the app sees it end early, the
    // metrics count an upstream failure, not a success.
    let (text, _) = get_until_closed(sidecar.egress_addr("cut").unwrap(), "/cut").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.len() < 100_000, "the cut body is not made whole");

    // Phase 3: bandwidth at 10 KB/s would take 10 s; bodyTimeout cuts at 1 s.
    let (text, took) = get_until_closed(sidecar.egress_addr("slow").unwrap(), "/slow").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.80}");
    assert!(took < Duration::from_secs(4), "the slow body ran {took:?}");

    // Phase 4: reset_peer on a pooled connection, then on every new one.
    let app = App::new(sidecar.egress_addr("reset").unwrap());
    assert_eq!(app.get("/warm").await.status, 200);
    toxiproxy
        .toxic("reset", "reset_peer", serde_json::json!({"timeout": 0}))
        .await;
    let failed = app.get("/reset").await;
    assert!(failed.status == 502, "{} {}", failed.status, failed.text());

    let metrics = admin(&sidecar, "/metrics").await.text();
    let count = |integration: &str, outcome: &str| {
        metric(
            &metrics,
            &format!(
                "sluice_egress_requests_total{{integration=\"{integration}\",endpoint=\"default\",code=\"200\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(count("cut", "upstream-reset"), 1.0, "{metrics}");
    assert_eq!(count("slow", "upstream-timeout"), 1.0, "{metrics}");
    assert_eq!(count("cut", "success") + count("slow", "success"), 0.0);
    assert_eq!(
        metric(
            &metrics,
            "sluice_egress_attempts_total{integration=\"reset\""
        ),
        4.0,
        "one send for the warm-up, maxAttempts (3) for the reset request: {metrics}"
    );
    sidecar.shutdown().await;
}
