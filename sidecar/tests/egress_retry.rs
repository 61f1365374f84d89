//! The retry, timeout and circuit-breaker layers over real sockets: what an
//! app sees while the upstream fails.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_sidecar::config::{
    AuthConfig, CircuitBreakerConfig, Duration as D, EndpointConfig, IdempotencyConfig,
    RequestMatch, RetryOn, SecretFile,
};
use support::*;
use tokio::time::Instant;

#[tokio::test]
async fn retries_transient_failures_but_never_permanent_ones() {
    let upstream = TestUpstream::plain(handler(|seen, n| async move {
        match seen.uri.as_str() {
            "/flaky" if n <= 2 => respond(503, "busy"),
            "/flaky" => respond(200, "finally"),
            "/bad" => respond(400, "malformed"),
            "/auth" => respond(401, "no"),
            _ => respond(404, ""),
        }
    }))
    .await;
    let sidecar = start(vec![integration("retry", &upstream)]).await;
    let app = App::new(sidecar.egress_addr("retry").unwrap());
    let answer = app.get("/flaky").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "finally"));
    assert_eq!(upstream.count(), 3);
    assert_eq!(app.get("/bad").await.status, 400);
    assert_eq!(app.get("/auth").await.status, 401);
    assert_eq!(upstream.count(), 5, "400 and 401 sent once each");
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "sluice_egress_retries_total{integration=\"retry\",endpoint=\"default\",reason=\"503\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "sluice_egress_attempts_total{integration=\"retry\""
        ),
        5.0
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn post_is_retried_only_with_an_idempotency_key_that_never_changes() {
    let upstream = TestUpstream::plain(handler(|_, n| async move {
        if n % 3 == 0 {
            respond(200, "charged")
        } else {
            respond(503, "")
        }
    }))
    .await;
    let plain = integration("no-key", &upstream);
    let mut keyed = integration("keyed", &upstream);
    keyed.retry.idempotency = Some(IdempotencyConfig {
        header: "Idempotency-Key".into(),
        methods: vec!["POST".parse().unwrap()],
    });
    let sidecar = start(vec![plain, keyed]).await;

    let answer = App::new(sidecar.egress_addr("no-key").unwrap())
        .send("POST", "/charges", &[], "amount=1")
        .await;
    assert_eq!(answer.status, 503, "a POST without a key is not repeated");
    assert_eq!(upstream.count(), 1);

    let answer = App::new(sidecar.egress_addr("keyed").unwrap())
        .send("POST", "/charges", &[], "amount=2")
        .await;
    assert_eq!(answer.status, 200);
    let attempts = &upstream.requests()[1..];
    assert_eq!(attempts.len(), 2);
    let keys: Vec<_> = attempts
        .iter()
        .map(|s| s.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(keys[0], keys[1], "same key on every attempt");
    assert_eq!(keys[0].len(), 32);
    assert!(
        attempts.iter().all(|s| s.body == "amount=2"),
        "body replayed"
    );

    // The app's own key is kept.
    let _ = App::new(sidecar.egress_addr("keyed").unwrap())
        .send(
            "POST",
            "/charges",
            &[("idempotency-key", "app-chosen")],
            "amount=3",
        )
        .await;
    assert!(
        upstream.requests()[3..]
            .iter()
            .all(|s| s.headers["idempotency-key"] == "app-chosen")
    );
    sidecar.shutdown().await;
}

/// A provider that did the work but answered too late: the app gets the
/// 504 with the key Sluice used, so it can retry without a second charge.
#[tokio::test]
async fn the_idempotency_key_sluice_added_is_returned_whatever_the_outcome() {
    let upstream = TestUpstream::plain(handler(|seen, _| async move {
        if seen.uri == "/slow" {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        respond(200, "charged")
    }))
    .await;
    let mut config = integration("keyed", &upstream);
    config.upstream.timeout = D::from_millis(200);
    config.retry.max_attempts = 2;
    config.retry.retry_on.push(RetryOn::Timeout);
    config.retry.idempotency = Some(IdempotencyConfig {
        header: "Idempotency-Key".into(),
        methods: vec!["POST".parse().unwrap()],
    });
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("keyed").unwrap());

    let timed_out = app.send("POST", "/slow", &[], "amount=1").await;
    assert_eq!(timed_out.status, 504, "{}", timed_out.text());
    assert_eq!(timed_out.header("x-sluice-error"), Some("upstream-timeout"));
    let sent: Vec<_> = upstream
        .requests()
        .iter()
        .map(|s| s.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(sent.len(), 2, "both attempts reached the provider");
    assert_eq!(
        timed_out.header("idempotency-key"),
        sent[0].to_str().ok(),
        "the key the provider saw"
    );

    let ok = app.send("POST", "/fast", &[], "amount=2").await;
    assert_eq!(ok.status, 200);
    let last = upstream.requests().last().unwrap().headers["idempotency-key"].clone();
    assert_eq!(ok.header("idempotency-key"), last.to_str().ok());
    assert_ne!(last, sent[0], "a new request, a new key");

    // A GET gets no key, and the app's own key is the app's business.
    assert_eq!(app.get("/fast").await.header("idempotency-key"), None);
    sidecar.shutdown().await;
}

/// The retry step does not copy the request before each attempt: the
/// attempt gives its head back (see `egress/replay.rs`), also when the
/// attempt timeout cut it off mid-exchange. Every attempt must still be the
/// app's request, under a base path that is added once.
#[tokio::test]
async fn every_attempt_resends_the_apps_request_even_after_a_timeout() {
    let upstream = TestUpstream::plain(handler(|_, n| async move {
        match n {
            1 => {
                tokio::time::sleep(Duration::from_millis(800)).await;
                respond(200, "too late")
            }
            2 => respond(503, "busy"),
            _ => respond(200, "charged"),
        }
    }))
    .await;
    let secrets = SecretDir::new("replay");
    let mut config = integration("replay", &upstream);
    config.upstream.base_url = format!("{}/base", upstream.url()).parse().unwrap();
    config.upstream.timeout = D::from_millis(300);
    config.retry.max_attempts = 3;
    config.retry.retry_on.push(RetryOn::Timeout);
    config.retry.idempotency = Some(IdempotencyConfig {
        header: "Idempotency-Key".into(),
        methods: vec!["POST".parse().unwrap()],
    });
    config.auth = Some(AuthConfig::Bearer {
        secret: SecretFile::new(secrets.write("key", "sk-test")),
        previous: None,
    });
    let sidecar = start(vec![config]).await;
    let answer = App::new(sidecar.egress_addr("replay").unwrap())
        .send(
            "POST",
            "/v1/charges?expand=a%2Fb",
            &[
                ("x-app", "kept"),
                ("x-app-hop", "1"),
                ("connection", "keep-alive, x-app-hop"),
            ],
            "amount=5",
        )
        .await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "charged"));
    let attempts = upstream.requests();
    assert_eq!(attempts.len(), 3, "a timeout, a 503, then the answer");
    let key = &attempts[0].headers["idempotency-key"];
    for seen in &attempts {
        assert_eq!(seen.method, "POST");
        assert_eq!(
            seen.uri, "/base/v1/charges?expand=a%2Fb",
            "base path added once"
        );
        assert_eq!(seen.body, "amount=5");
        assert_eq!(seen.headers["x-app"], "kept");
        assert_eq!(seen.headers["authorization"], "Bearer sk-test");
        assert_eq!(&seen.headers["idempotency-key"], key);
        assert_eq!(seen.headers.get_all("authorization").iter().count(), 1);
        assert!(
            !seen.headers.contains_key("x-app-hop"),
            "hop-by-hop stripped"
        );
    }
    let metrics = admin(&sidecar, "/metrics").await.text();
    for reason in ["timeout", "503"] {
        assert_eq!(
            metric(
                &metrics,
                &format!(
                    "sluice_egress_retries_total{{integration=\"replay\",endpoint=\"default\",reason=\"{reason}\"}}"
                )
            ),
            1.0,
            "{metrics}"
        );
    }
    sidecar.shutdown().await;
}

#[tokio::test]
async fn honours_retry_after_and_passes_long_waits_to_the_app() {
    let upstream = TestUpstream::plain(handler(|seen, _| async move {
        let first = seen.headers.get("x-try").is_none();
        let _ = first;
        match seen.uri.as_str() {
            "/soon" => {
                let mut r = respond(429, "slow down");
                r.headers_mut().insert("retry-after", "1".parse().unwrap());
                r
            }
            _ => {
                let mut r = respond(429, "come back tomorrow");
                r.headers_mut()
                    .insert("retry-after", "86400".parse().unwrap());
                r
            }
        }
    }))
    .await;
    let mut config = integration("ra", &upstream);
    config.retry.max_attempts = 2;
    config.retry.max_retry_after = D::from_secs(5);
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("ra").unwrap());
    let started = Instant::now();
    let answer = app.get("/soon").await;
    assert_eq!(answer.status, 429);
    assert_eq!(upstream.count(), 2);
    let gap = upstream.requests()[1].at - upstream.requests()[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "waited {gap:?} instead of Retry-After: 1"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let answer = app.get("/later").await;
    assert_eq!(answer.status, 429);
    assert_eq!(
        answer.header("retry-after"),
        Some("86400"),
        "the provider's answer, untouched"
    );
    assert_eq!(
        upstream.count(),
        3,
        "not retried: the wait exceeds maxRetryAfter"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn retry_budget_caps_the_extra_traffic_of_an_outage() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(503, "down") })).await;
    let mut config = integration("budget", &upstream);
    config.retry.max_attempts = 4;
    config.retry.budget.ratio = 0.1;
    config.retry.budget.min_per_second = 1;
    let sidecar = start(vec![config]).await;
    let addr = sidecar.egress_addr("budget").unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(async move { App::new(addr).get("/x").await.status }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 503);
    }
    // Without a budget: 200 attempts. With 10% plus 1/s over the 10 s window: far fewer.
    let sent = upstream.count();
    assert!(
        sent <= 50 + 5 + 10 + 2,
        "an outage multiplied traffic: {sent} attempts for 50 requests"
    );
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(
        metric(
            &metrics,
            "sluice_retry_budget_exhausted_total{integration=\"budget\"}"
        ) >= 30.0,
        "{metrics}"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn attempt_timeouts_are_per_endpoint_and_total_timeout_bounds_everything() {
    let upstream = TestUpstream::plain(handler(|seen, _| async move {
        let delay = if seen.uri.starts_with("/slow") {
            600
        } else {
            0
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        respond(200, "done")
    }))
    .await;
    let mut config = integration("timeouts", &upstream);
    config.upstream.timeout = D::from_millis(200);
    config.upstream.total_timeout = D::from_secs(1);
    config.retry.retry_on = vec![RetryOn::Timeout];
    config.retry.max_attempts = 10;
    config.retry.budget.min_per_second = 100;
    config.endpoints = vec![EndpointConfig {
        name: "slow-kyc".into(),
        matches: RequestMatch {
            methods: vec![],
            path: Some("/slow/kyc".parse().unwrap()),
        },
        timeout: Some(D::from_secs(2)),
        total_timeout: Some(D::from_secs(3)),
    }];
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("timeouts").unwrap());
    let started = Instant::now();
    let answer = app.get("/slow/other").await;
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert!(matches!(
        answer.header("x-sluice-error"),
        Some("total-timeout" | "upstream-timeout")
    ));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert!(upstream.count() >= 3, "timed-out attempts were retried");
    let answer = app.get("/slow/kyc").await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "done"),
        "the endpoint's longer timeout"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn circuit_breaker_fails_fast_then_recovers() {
    let healthy = Arc::new(AtomicUsize::new(0));
    let flag = healthy.clone();
    let upstream = TestUpstream::plain(handler(move |_, _| {
        let up = flag.load(Ordering::SeqCst) == 1;
        async move {
            if up {
                respond(200, "up")
            } else {
                respond(500, "down")
            }
        }
    }))
    .await;
    let mut config = integration("breaker", &upstream);
    config.retry.max_attempts = 1;
    config.circuit_breaker = Some(CircuitBreakerConfig {
        failure_ratio: 0.5,
        min_requests: 4,
        window: D::from_secs(10),
        open_for: D::from_millis(500),
        half_open_probes: 1,
    });
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("breaker").unwrap());
    for _ in 0..4 {
        assert_eq!(app.get("/x").await.status, 500);
    }
    let open = app.get("/x").await;
    assert_eq!(open.status, 503);
    assert_eq!(open.header("x-sluice-error"), Some("circuit-open"));
    assert!(open.header("retry-after").is_some());
    assert_eq!(
        upstream.count(),
        4,
        "no request reached the upstream while open"
    );
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(
        metrics.contains("sluice_circuit_state{integration=\"breaker\"} 1"),
        "{metrics}"
    );
    healthy.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.get("/x").await.status, 200, "half-open probe");
    assert_eq!(app.get("/x").await.status, 200, "closed again");
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(
        metrics.contains("sluice_circuit_state{integration=\"breaker\"} 0"),
        "{metrics}"
    );
    sidecar.shutdown().await;
}

/// A provider that accepts the connection and never answers: every request
/// ends in its total timeout (504 total-timeout), and those count as the
/// provider's failures, so the breaker opens instead of letting the app
/// wait out every timeout.
#[tokio::test]
async fn a_provider_that_hangs_past_the_total_timeout_opens_the_circuit() {
    let upstream = TestUpstream::plain(handler(|_, _| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        respond(200, "late")
    }))
    .await;
    let mut config = integration("hangs", &upstream);
    config.upstream.timeout = D::from_millis(150);
    config.upstream.total_timeout = D::from_millis(150);
    config.retry.max_attempts = 1;
    config.circuit_breaker = Some(CircuitBreakerConfig {
        failure_ratio: 0.5,
        min_requests: 3,
        window: D::from_secs(10),
        open_for: D::from_secs(30),
        half_open_probes: 1,
    });
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("hangs").unwrap());
    for _ in 0..3 {
        let hung = app.get("/x").await;
        assert_eq!(hung.status, 504);
        assert_eq!(hung.header("x-sluice-error"), Some("total-timeout"));
    }
    let open = app.get("/x").await;
    assert_eq!(open.status, 503);
    assert_eq!(open.header("x-sluice-error"), Some("circuit-open"));
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(
        metrics.contains("sluice_circuit_state{integration=\"hangs\"} 1"),
        "{metrics}"
    );
    sidecar.shutdown().await;
}
