//! Live config changes over real sockets: what changes takes effect for the
//! next request, what did not change keeps its state, in-flight requests
//! finish, and a bad config leaves the last good one running.

mod support;

use std::time::Duration;

use sluice_sidecar::config::{
    AuthConfig, Duration as D, QueueConfig, RateLimitConfig, RequestMatch, SecretFile, WhenExceeded,
};
use support::*;

fn reject_limit(requests: u32, per: D) -> RateLimitConfig {
    RateLimitConfig {
        name: "all".into(),
        matches: RequestMatch::default(),
        requests,
        per,
        burst: requests,
        scope: Default::default(),
        cluster: None,
        when_exceeded: WhenExceeded::Reject,
        queue: QueueConfig::default(),
        key: None,
        max_keys: sluice_sidecar::config::defaults::max_keys(),
    }
}

#[tokio::test]
async fn a_change_elsewhere_keeps_the_limiter_history_and_a_new_limit_applies_at_once() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "ok") })).await;
    let mut config = integration("carrier", &upstream);
    config.rate_limits = vec![reject_limit(2, D::from_secs(30))];
    let sidecar = start(vec![config.clone()]).await;
    let app = App::new(sidecar.egress_addr("carrier").unwrap());
    assert_eq!(app.get("/a").await.status, 200);
    assert_eq!(app.get("/a").await.status, 200);
    assert_eq!(app.get("/a").await.status, 429);

    // Another part of the config changes: the window's two admissions stay counted.
    config.retry.max_attempts = 2;
    sidecar.apply(std::slice::from_ref(&config)).await.unwrap();
    let refused = app.get("/a").await;
    assert_eq!(refused.status, 429, "the limiter must not reset");
    assert_eq!(refused.header("x-sluice-error"), Some("rate-limited"));

    // The limit itself rises: the same keep-alive client gets the new one.
    config.rate_limits = vec![reject_limit(4, D::from_secs(30))];
    sidecar.apply(std::slice::from_ref(&config)).await.unwrap();
    assert_eq!(app.get("/a").await.status, 200);
    assert_eq!(app.get("/a").await.status, 200);
    assert_eq!(app.get("/a").await.status, 429, "2 + 2 of 4 in the window");
    assert_eq!(upstream.count(), 4);
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert_eq!(
        metric(&metrics, "sluice_config_reloads_total{result=\"applied\"}"),
        2.0
    );
    let shown = admin(&sidecar, "/config").await.text();
    assert!(shown.contains("\"requests\": 4"), "{shown}");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_config_they_started_with() {
    let upstream = TestUpstream::plain(handler(|_, _| async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        respond(200, "slow")
    }))
    .await;
    let mut config = integration("slow", &upstream);
    let sidecar = start(vec![config.clone()]).await;
    let addr = sidecar.egress_addr("slow").unwrap();
    let in_flight = tokio::spawn(async move { App::new(addr).get("/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A timeout shorter than the upstream's answer: new requests time out,
    // the one already sent keeps its own.
    config.upstream.timeout = D::from_millis(150);
    config.retry.max_attempts = 1;
    sidecar.apply(std::slice::from_ref(&config)).await.unwrap();
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let timed_out = App::new(addr).get("/slow").await;
    assert_eq!(timed_out.status, 504);
    assert_eq!(timed_out.header("x-sluice-error"), Some("upstream-timeout"));
    sidecar.shutdown().await;
}

#[tokio::test]
async fn integrations_come_and_go_and_a_bad_config_keeps_the_last_good_one() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "ok") })).await;
    let first = integration("first", &upstream);
    let sidecar = start(vec![first.clone()]).await;
    let first_addr = sidecar.egress_addr("first").unwrap();

    let second = integration("second", &upstream);
    sidecar
        .apply(&[first.clone(), second.clone()])
        .await
        .unwrap();
    let second_addr = sidecar.egress_addr("second").expect("a new listener");
    assert_eq!(App::new(second_addr).get("/x").await.status, 200);

    // A credential file that does not exist: "second" keeps its config,
    // "first" is removed as asked.
    let mut broken = second.clone();
    broken.auth = Some(AuthConfig::Bearer {
        secret: SecretFile::new("/nonexistent/sluice-test/token"),
        previous: None,
    });
    let error = sidecar.apply(&[broken]).await.unwrap_err().to_string();
    assert!(
        error.contains("second") && error.contains("/nonexistent/sluice-test/token"),
        "{error}"
    );
    let answer = App::new(second_addr).get("/x").await;
    assert_eq!(answer.status, 200, "still served by its last good config");
    assert!(
        upstream
            .requests()
            .last()
            .unwrap()
            .headers
            .get("authorization")
            .is_none()
    );
    assert_eq!(sidecar.egress_addr("first"), None);
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(first_addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "a removed integration stops listening");
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert_eq!(
        metric(&metrics, "sluice_config_reloads_total{result=\"failed\"}"),
        1.0
    );
    sidecar.shutdown().await;
}
