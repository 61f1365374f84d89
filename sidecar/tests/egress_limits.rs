//! The rate-limit layer over real sockets: queued and rejected requests, limits
//! that overlap, and a provider's own 429.

mod support;

use std::time::Duration;

use sluice_sidecar::config::{Duration as D, LimitKey, RequestMatch, WhenExceeded};
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

/// Issue 17's first test: a limit of 5/s kept per `X-Account-Id`, two
/// accounts sending 15 each at once. Each account gets its own 5/s (neither
/// waits for the other: 15 each take about two windows, where one shared
/// limit would need five) and neither gets more.
#[tokio::test]
async fn a_keyed_limit_gives_each_value_the_whole_rate_and_no_more() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "ok") })).await;
    let mut config = integration("per-account", &upstream);
    let mut keyed = limit("account", 5, D::from_secs(1), 5);
    keyed.key = Some(LimitKey::Header(http::HeaderName::from_static(
        "x-account-id",
    )));
    config.rate_limits = vec![keyed];
    let sidecar = start(vec![config]).await;
    let addr = sidecar.egress_addr("per-account").unwrap();

    // Phase: both accounts at once.
    let started = Instant::now();
    let tasks: Vec<_> = ["acct_a", "acct_b"]
        .iter()
        .flat_map(|account| std::iter::repeat_n(*account, 15))
        .map(|account| {
            tokio::spawn(async move {
                App::new(addr)
                    .send("GET", "/v1/rates", &[("x-account-id", account)], "")
                    .await
                    .status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "queued, not rejected");
    }
    let took = started.elapsed();

    // Phase: per account, never more than 5 in a second, all 15 through.
    let seen = upstream.requests();
    for account in ["acct_a", "acct_b"] {
        let times: Vec<Instant> = seen
            .iter()
            .filter(|s| s.headers["x-account-id"] == account)
            .map(|s| s.at)
            .collect();
        assert_eq!(times.len(), 15, "{account}");
        assert!(
            max_in_window(&times, Duration::from_secs(1)) <= 5,
            "{account} went over its 5/s: {times:?}"
        );
        // The first five of each went at once: nobody waited for the other.
        let first = times[0];
        assert!(
            times[4] - first < Duration::from_millis(300),
            "{account}'s burst was held back: {times:?}"
        );
    }
    // 15 per account at 5/s is two more windows (with their guard); one
    // limit for both would need five.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(3500),
        "took {took:?}"
    );

    // Phase: metrics per limit, never per value.
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "sluice_ratelimit_keys{integration=\"per-account\",limit=\"account\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains("acct_"),
        "a key value reached the metrics"
    );
    sidecar.shutdown().await;
}

/// Keys from the path and the query, with `Reject`: one shop's refusal
/// leaves the other shop's limit untouched; a full table refuses a new
/// value while the tracked ones still count.
#[tokio::test]
async fn keys_from_the_path_and_the_query() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "ok") })).await;
    let mut by_path = integration("shops", &upstream);
    let mut shop = limit("shop", 2, D::from_secs(30), 2);
    shop.when_exceeded = WhenExceeded::Reject;
    shop.key = Some(LimitKey::PathSegment(3));
    shop.max_keys = 2;
    by_path.rate_limits = vec![shop];
    let mut by_query = integration("maps", &upstream);
    let mut project = limit("project", 1, D::from_secs(30), 1);
    project.when_exceeded = WhenExceeded::Reject;
    project.key = Some(LimitKey::Query("project".into()));
    by_query.rate_limits = vec![project];
    let sidecar = start(vec![by_path, by_query]).await;

    let shops = App::new(sidecar.egress_addr("shops").unwrap());
    for _ in 0..2 {
        assert_eq!(shops.get("/v1/shops/acme/orders").await.status, 200);
    }
    let refused = shops.get("/v1/shops/acme/orders?page=2").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-sluice-error"), Some("rate-limited"));
    assert_eq!(shops.get("/v1/shops/zeta/orders").await.status, 200);
    // Two shops tracked, both counting for 30 s: a third is refused, and
    // neither tracked shop was forgotten to make room.
    let third = shops.get("/v1/shops/third/orders").await;
    assert_eq!(third.status, 429);
    assert_eq!(third.header("x-sluice-error"), Some("queue-full"));
    assert!(third.header("retry-after").is_some());
    assert_eq!(shops.get("/v1/shops/acme/orders").await.status, 429);

    let maps = App::new(sidecar.egress_addr("maps").unwrap());
    assert_eq!(maps.get("/v1/distance?project=p1&x=1").await.status, 200);
    assert_eq!(maps.get("/v1/distance?x=2&project=p1").await.status, 429);
    assert_eq!(maps.get("/v1/distance?project=p2").await.status, 200);
    // Without the parameter: one more value, shared by every such request.
    assert_eq!(maps.get("/v1/distance").await.status, 200);
    assert_eq!(maps.get("/v1/distance?other=1").await.status, 429);

    let metrics = admin(&sidecar, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "sluice_ratelimit_rejected_total{integration=\"shops\",limit=\"shop\",reason=\"keys-full\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(upstream.count(), 6);
    sidecar.shutdown().await;
}
