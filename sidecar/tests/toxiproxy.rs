//! The faults as toxiproxy (the tool users reach for) produces them, between
//! the sidecar and a real upstream: a body cut by `limit_data`, a body slowed
//! by `bandwidth`, connections reset by `reset_peer`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use sluice_sidecar::config::IntegrationConfig;
use support::toxiproxy::Toxiproxy;
use support::*;

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
