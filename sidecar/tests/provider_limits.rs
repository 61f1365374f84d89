//! `upstream.providerLimits: Auto` over real sockets: test upstreams that
//! enforce their own window and say so in each header dialect; the local
//! limit (100/s) is far above what they allow.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_sidecar::config::{Duration as D, ProviderLimits};
use support::provider::{Dialect, FIRST, LATER, WINDOW, respond_with, windowed_upstream};
use support::*;
use tokio::time::Instant;

/// Requests sent back to back by `workers` tasks until `until`; the
/// statuses seen.
async fn load(app: &App, workers: usize, until: Instant) -> Vec<u16> {
    let statuses = Mutex::new(Vec::new());
    let worker = || async {
        while Instant::now() < until {
            let status = app.get("/v1/things").await.status;
            statuses.lock().unwrap().push(status);
        }
    };
    futures_util::future::join_all((0..workers).map(|_| worker())).await;
    statuses.into_inner().unwrap()
}

/// The test, in each dialect: the first response says 3 remain with
/// the reset 2 s away; the provider sees no more than that before the
/// reset (no 429), and full speed after it.
#[tokio::test]
async fn the_remainder_lasts_until_the_reset_then_full_speed() {
    for dialect in [
        Dialect::Structured,
        Dialect::RateLimitFields,
        Dialect::XRateLimitEpoch,
    ] {
        // Phase: a sidecar in front of a provider speaking `dialect`.
        let upstream = TestUpstream::plain(windowed_upstream(dialect)).await;
        let mut config = integration("provider", &upstream);
        config.retry.max_attempts = 1;
        config.rate_limits = vec![limit("all", 100, D::from_secs(1), 100)];
        let sidecar = start(vec![config]).await;
        let app = App::new(sidecar.egress_addr("provider").unwrap());

        // Phase: two workers for 3.5 s, well past the first window's reset.
        let started = Instant::now();
        let statuses = load(&app, 2, started + Duration::from_millis(3500)).await;
        assert!(
            statuses.iter().all(|s| *s == 200),
            "{dialect:?}: the provider refused some: {statuses:?}"
        );

        // Phase: what the provider saw, per window.
        let seen = upstream.requests();
        let first = seen[0].at;
        let before_reset = seen.iter().filter(|s| s.at < first + WINDOW).count();
        assert!(
            before_reset as u64 <= FIRST,
            "{dialect:?}: {before_reset} requests in the first window, which allowed {FIRST}"
        );
        let after_reset = seen
            .iter()
            .filter(|s| s.at >= first + WINDOW && s.at < first + WINDOW + Duration::from_secs(1))
            .count();
        assert!(
            after_reset >= 50,
            "{dialect:?}: only {after_reset} in the second after the reset (the limit is 100/s)"
        );

        // Phase: what the provider said, exported.
        let metrics = admin(&sidecar, "/metrics").await.text();
        assert_eq!(
            metric(
                &metrics,
                "sluice_provider_ratelimit_limit{integration=\"provider\",limit=\"all\"}"
            ),
            LATER as f64,
            "{dialect:?}: {metrics}"
        );
        assert!(
            metrics.contains(
                "sluice_provider_ratelimit_remaining{integration=\"provider\",limit=\"all\"}"
            ),
            "{metrics}"
        );
        sidecar.shutdown().await;
    }
}

/// Shopify's leaky bucket (40, leaking 2/s), nearly full at the start: the
/// sidecar never overflows it and keeps to about the leak rate.
#[tokio::test]
async fn shopifys_bucket_is_never_overflowed() {
    struct Bucket {
        level: f64,
        at: Option<Instant>,
    }
    let bucket = Arc::new(Mutex::new(Bucket {
        level: 36.0,
        at: None,
    }));
    let upstream = TestUpstream::plain(handler(move |seen, _| {
        let bucket = bucket.clone();
        async move {
            let mut b = bucket.lock().unwrap();
            let leaked = b.at.map_or(0.0, |at| (seen.at - at).as_secs_f64() * 2.0);
            b.level = (b.level - leaked).max(0.0);
            b.at = Some(seen.at);
            if b.level + 1.0 > 40.0 {
                return respond_with(429, vec![("x-shopify-shop-api-call-limit", "40/40".into())]);
            }
            b.level += 1.0;
            let used = b.level.ceil() as u64;
            respond_with(
                200,
                vec![("x-shopify-shop-api-call-limit", format!("{used}/40"))],
            )
        }
    }))
    .await;
    let mut config = integration("shop", &upstream);
    config.retry.max_attempts = 1;
    config.rate_limits = vec![limit("all", 100, D::from_secs(1), 100)];
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("shop").unwrap());

    let statuses = load(&app, 2, Instant::now() + Duration::from_secs(3)).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "the bucket overflowed: {statuses:?}"
    );
    // 4 of room, then 2/s for 3 s: about 10; never stalled.
    let sent = upstream.count();
    assert!((6..=14).contains(&sent), "{sent} requests in 3 s");
    sidecar.shutdown().await;
}

/// `providerLimits: None`: the headers are ignored, the provider's 429s
/// reach the app.
#[tokio::test]
async fn none_ignores_the_headers() {
    let upstream = TestUpstream::plain(windowed_upstream(Dialect::Structured)).await;
    let mut config = integration("ignored", &upstream);
    config.retry.max_attempts = 1;
    config.upstream.provider_limits = ProviderLimits::None;
    config.rate_limits = vec![limit("all", 100, D::from_secs(1), 100)];
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("ignored").unwrap());
    let statuses = load(&app, 1, Instant::now() + Duration::from_millis(500)).await;
    assert!(statuses.contains(&429), "{statuses:?}");
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(
        !metrics.contains("sluice_provider_ratelimit_remaining{"),
        "{metrics}"
    );
    sidecar.shutdown().await;
}
