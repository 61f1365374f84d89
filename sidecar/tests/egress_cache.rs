//! The cache layer over real sockets.

mod support;

use std::time::Duration;

use bytes::Bytes;
use sluice_sidecar::config::{CacheRule, Duration as D, RequestMatch};
use support::*;

#[tokio::test]
async fn caches_matched_gets_and_honours_no_store() {
    let upstream = TestUpstream::plain(handler(|seen, n| async move {
        let mut r = respond(200, "");
        *r.body_mut() = http_body_util::Full::new(Bytes::from(format!("answer {n}")));
        if seen.uri.starts_with("/private") {
            r.headers_mut()
                .insert("cache-control", "no-store".parse().unwrap());
        }
        r
    }))
    .await;
    let mut config = integration("cache", &upstream);
    config.cache.rules = vec![CacheRule {
        matches: RequestMatch {
            methods: vec!["GET".parse().unwrap()],
            path: Some("/**".parse().unwrap()),
        },
        ttl: D::from_millis(800),
    }];
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("cache").unwrap());
    let first = app.get("/v1/shipments/1/tracking?lang=en").await;
    let second = app.get("/v1/shipments/1/tracking?lang=en").await;
    assert_eq!(first.text(), "answer 1");
    assert_eq!(second.text(), "answer 1");
    assert_eq!(second.header("x-sluice-cache"), Some("hit"));
    assert!(second.header("age").is_some());
    assert_eq!(
        app.get("/v1/shipments/1/tracking?lang=de").await.text(),
        "answer 2",
        "query is part of the key"
    );
    assert_eq!(
        app.send("POST", "/v1/shipments/1/tracking?lang=en", &[], "")
            .await
            .text(),
        "answer 3",
        "POST never cached"
    );
    let bypass = app
        .send(
            "GET",
            "/v1/shipments/1/tracking?lang=en",
            &[("cache-control", "no-store")],
            Bytes::new(),
        )
        .await;
    assert_eq!(bypass.text(), "answer 4");
    assert_eq!(app.get("/private").await.text(), "answer 5");
    assert_eq!(
        app.get("/private").await.text(),
        "answer 6",
        "no-store responses are not kept"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        app.get("/v1/shipments/1/tracking?lang=en").await.text(),
        "answer 7",
        "expired after the TTL"
    );
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(metrics.contains("outcome=\"cache_hit\""), "{metrics}");
    sidecar.shutdown().await;
}
