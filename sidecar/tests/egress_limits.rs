//! The rate-limit layer over real sockets: queued and rejected requests, limits
//! that overlap, and a provider's own 429.

mod support;

use std::time::Duration;

use sluice_sidecar::config::{Duration as D, RequestMatch, WhenExceeded};
use support::*;
use tokio::time::Instant;

/// Most requests the upstream saw in any window of `window` length.
fn max_in_window(times: &[Instant], window: Duration) -> usize {
    times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && **t < *start + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn queued_requests_never_exceed_the_limit_in_any_window() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "ok") })).await;
    let mut config = integration("limited", &upstream);
    config.rate_limits = vec![limit("all", 5, D::from_millis(500), 2)];
    let sidecar = start(vec![config]).await;
    let addr = sidecar.egress_addr("limited").unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { App::new(addr).get("/x").await.status }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "queued, not rejected");
    }
    let times: Vec<Instant> = upstream.requests().iter().map(|s| s.at).collect();
    assert_eq!(times.len(), 20);
    assert!(
        max_in_window(&times, Duration::from_millis(500)) <= 5,
        "over the limit: {times:?}"
    );
    assert!(
        max_in_window(&times, Duration::from_millis(10)) <= 2,
        "burst exceeded"
    );
    // 20 requests at 5 per 500 ms need at least 1.5 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(
        metric(&metrics, "sluice_ratelimit_wait_seconds_count{") > 0.0,
        "{metrics}"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn reject_mode_and_full_queues_answer_429_with_retry_after() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "ok") })).await;
    let mut config = integration("reject", &upstream);
    let mut reject = limit("strict", 2, D::from_secs(10), 2);
    reject.when_exceeded = WhenExceeded::Reject;
    config.rate_limits = vec![reject];
    let mut queued = integration("queued", &upstream);
    let mut small = limit("small", 1, D::from_secs(10), 1);
    small.queue.max_wait = D::from_secs(1);
    queued.rate_limits = vec![small];
    let sidecar = start(vec![config, queued]).await;

    let app = App::new(sidecar.egress_addr("reject").unwrap());
    assert_eq!(app.get("/a").await.status, 200);
    assert_eq!(app.get("/a").await.status, 200);
    let third = app.get("/a").await;
    assert_eq!(third.status, 429);
    assert_eq!(third.header("x-sluice-error"), Some("rate-limited"));
    let retry_after: u64 = third.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=11).contains(&retry_after), "{retry_after}");

    // maxWait 1s but the next slot is 10s away: refused at once, not after a wait.
    let app = App::new(sidecar.egress_addr("queued").unwrap());
    assert_eq!(app.get("/b").await.status, 200);
    let started = Instant::now();
    let refused = app.get("/b").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-sluice-error"), Some("queue-full"));
    assert!(refused.header("retry-after").is_some());
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(upstream.count(), 3);
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(metrics.contains("sluice_ratelimit_rejected_total{integration=\"reject\",limit=\"strict\",reason=\"rate-limited\"} 1"), "{metrics}");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn endpoint_and_overall_limits_both_apply() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "ok") })).await;
    let mut config = integration("two", &upstream);
    let mut tracking = limit("tracking", 2, D::from_secs(30), 2);
    tracking.matches = RequestMatch {
        methods: vec!["GET".parse().unwrap()],
        path: Some("/track/*".parse().unwrap()),
    };
    tracking.when_exceeded = WhenExceeded::Reject;
    let mut overall = limit("all", 3, D::from_secs(30), 3);
    overall.when_exceeded = WhenExceeded::Reject;
    config.rate_limits = vec![tracking, overall];
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("two").unwrap());
    assert_eq!(app.get("/track/1").await.status, 200);
    assert_eq!(app.get("/track/2").await.status, 200);
    let third = app.get("/track/3").await;
    assert_eq!(
        (third.status, third.text().contains("tracking")),
        (429, true),
        "{}",
        third.text()
    );
    // The refused tracking call took nothing from the overall limit.
    assert_eq!(app.get("/other").await.status, 200);
    let fourth = app.get("/other").await;
    assert_eq!(fourth.status, 429);
    assert!(fourth.text().contains("\\\"all\\\""), "{}", fourth.text());
    assert_eq!(upstream.count(), 3);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_providers_429_holds_the_whole_queue_not_just_one_request() {
    // The provider's real limit is lower than configured: it answers the
    // second request 429 with Retry-After: 1, then accepts again.
    let upstream = TestUpstream::plain(handler(|_, n| async move {
        if n == 2 {
            let mut r = respond(429, "slow down");
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
            r
        } else {
            respond(200, "ok")
        }
    }))
    .await;
    let mut config = integration("storm", &upstream);
    config.rate_limits = vec![limit("all", 100, D::from_secs(1), 1)];
    config.retry.max_attempts = 3;
    let sidecar = start(vec![config]).await;
    let addr = sidecar.egress_addr("storm").unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { App::new(addr).get("/x").await.status }))
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            200,
            "the 429 was retried after Retry-After"
        );
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 7, "one 429, no storm of them");
    let throttled_at = seen[1].at;
    let during_pause = seen
        .iter()
        .filter(|s| s.at > throttled_at && s.at < throttled_at + Duration::from_millis(950))
        .count();
    assert_eq!(
        during_pause, 0,
        "requests reached the provider while it asked us to wait"
    );
    sidecar.shutdown().await;
}
