//! The egress proxy over real sockets: an app client, the sidecar, and a
//! test upstream, all on 127.0.0.1.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sluice_sidecar::config::{
    AuthConfig, CacheRule, CircuitBreakerConfig, Duration as D, EndpointConfig, IdempotencyConfig,
    PreviousSecret, QueueConfig, RateLimitConfig, RequestMatch, RetryOn, SecretFile, WhenExceeded,
};
use support::*;
use tokio::time::Instant;

fn any() -> RequestMatch {
    RequestMatch::default()
}

#[tokio::test]
async fn passes_path_query_headers_and_bodies_through() {
    let upstream = TestUpstream::plain(handler(|seen, _| async move {
        let mut r = respond(201, "");
        *r.body_mut() = http_body_util::Full::new(seen.body.clone());
        r.headers_mut().insert("x-upstream", "yes".parse().unwrap());
        r.headers_mut()
            .insert("connection", "x-hop".parse().unwrap());
        r.headers_mut()
            .insert("x-hop", "secret-hop".parse().unwrap());
        r
    }))
    .await;
    let sidecar = start(vec![integration("carrier", &upstream)]).await;
    let app = App::new(sidecar.egress_addr("carrier").unwrap());

    let big = Bytes::from(vec![b'x'; 3 << 20]);
    let answer = app
        .send(
            "POST",
            "/v1/items/a%2Fb/c?q=%20x&q=../2&empty=",
            &[
                ("x-app", "1"),
                ("connection", "x-drop"),
                ("x-drop", "1"),
                ("keep-alive", "timeout=5"),
            ],
            big.clone(),
        )
        .await;
    assert_eq!(answer.status, 201);
    assert_eq!(
        answer.body.len(),
        big.len(),
        "response body streamed back whole"
    );
    assert_eq!(answer.header("x-upstream"), Some("yes"));
    assert!(
        answer.header("x-hop").is_none(),
        "hop-by-hop response header removed"
    );
    assert!(answer.header("x-request-id").is_some());

    let seen = &upstream.requests()[0];
    assert_eq!(
        seen.uri, "/v1/items/a%2Fb/c?q=%20x&q=../2&empty=",
        "path and query byte-exact"
    );
    assert_eq!(seen.body.len(), big.len());
    assert_eq!(seen.headers["x-app"], "1");
    assert!(
        !seen.headers.contains_key("x-drop"),
        "Connection-named header removed"
    );
    assert!(!seen.headers.contains_key("keep-alive"));
    assert_eq!(
        seen.headers["host"],
        upstream.addr.to_string().as_str(),
        "Host is the upstream's"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn speaks_h2c_to_the_app_and_h2_over_tls_to_the_upstream() {
    let upstream = TestUpstream::tls(handler(|_, _| async { respond(200, "over tls") })).await;
    let sidecar = start(vec![integration("tls", &upstream)]).await;
    let answer = App::h2c(sidecar.egress_addr("tls").unwrap())
        .get("/ping")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.version, http::Version::HTTP_2, "h2c from the app");
    assert_eq!(answer.text(), "over tls");
    assert_eq!(
        upstream.requests()[0].version,
        http::Version::HTTP_2,
        "h2 negotiated by ALPN"
    );
    // Many requests, some at once, share the one HTTP/2 connection.
    let app = Arc::new(App::new(sidecar.egress_addr("tls").unwrap()));
    let concurrent: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.get("/again").await.status })
        })
        .collect();
    for request in concurrent {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "one multiplexed upstream connection"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn untrusted_certificates_fail_with_502_never_a_hang() {
    let upstream = TestUpstream::tls(handler(|_, _| async { respond(200, "") })).await;
    let mut config = integration("untrusted", &upstream);
    config.upstream.ca_bundle = None;
    let sidecar = start(vec![config]).await;
    let answer = App::new(sidecar.egress_addr("untrusted").unwrap())
        .get("/")
        .await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(
        answer.header("x-sluice-error"),
        Some("upstream-tls"),
        "{}",
        answer.text()
    );
    assert_eq!(upstream.count(), 0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let upstream = TestUpstream::plain(handler(|seen, _| async move {
        match seen.uri.as_str() {
            "/empty" => respond(204, ""),
            _ => respond(200, "ok"),
        }
    }))
    .await;
    let sidecar = start(vec![integration("api", &upstream)]).await;
    let app = App::new(sidecar.egress_addr("api").unwrap());
    for i in 0..20 {
        // Bodies read to the end and empty bodies both free the connection.
        let answer = app.get(if i % 2 == 0 { "/full" } else { "/empty" }).await;
        assert!(
            answer.status == 200 || answer.status == 204,
            "{}",
            answer.text()
        );
    }
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "sequential requests share one upstream connection"
    );
    sidecar.shutdown().await;
}

/// A server that closes every connection after three responses, without
/// saying so (as one whose idle timeout fires does). The middle one is
/// chunked: its end, too, must free the connection for the third. With
/// `swallow`, it first reads a fourth request and closes without answering
/// it (its timeout fired just as the request came). Returns its address and
/// how many connections it accepted.
fn closing_upstream(
    swallow: bool,
) -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                for turn in 0..if swallow { 4 } else { 3 } {
                    // One GET per turn: read to the end of its head.
                    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buffer.drain(..end);
                    if turn == 3 {
                        return;
                    }
                    let reply: &[u8] = if turn == 1 {
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if socket.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, server)
}

/// Two sends a request: the resend on a fresh connection after a reused one
/// was closed under it counts as one (`maxAttempts` bounds every send), and
/// no retry budget, so nothing else sends again.
async fn closing_sidecar(addr: std::net::SocketAddr) -> sluice_sidecar::Sidecar {
    let mut config: sluice_sidecar::config::IntegrationConfig = serde_yaml_ng::from_str(&format!(
        "name: closing\nlisten: 127.0.0.1:0\nupstream: {{baseUrl: 'http://{addr}', timeout: 2s, totalTimeout: 5s}}\nretry: {{maxAttempts: 2}}\n"
    ))
    .unwrap();
    config.retry.budget.min_per_second = 0;
    start(vec![config]).await
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced_without_an_error() {
    let (addr, accepted, server) = closing_upstream(false);
    let sidecar = closing_sidecar(addr).await;
    let app = App::new(sidecar.egress_addr("closing").unwrap());
    for round in 0..3 {
        for _ in 0..3 {
            let answer = app.get("/x").await;
            assert_eq!(answer.status, 200, "round {round}: {}", answer.text());
            assert_eq!(answer.text(), "ok", "round {round}");
        }
        // Let the close reach the sidecar before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one connection per three requests"
    );
    sidecar.shutdown().await;
    server.abort();
}

/// A request can go out on a reused connection just as the upstream closes
/// it; one the upstream never answered, if it can be sent again safely (a
/// GET), goes on the next connection instead of failing.
#[tokio::test]
async fn a_get_sent_as_the_upstream_closes_goes_on_another_connection() {
    let (addr, accepted, server) = closing_upstream(true);
    let sidecar = closing_sidecar(addr).await;
    let app = App::new(sidecar.egress_addr("closing").unwrap());
    for n in 0..12 {
        let answer = app.get("/x").await;
        assert_eq!(answer.status, 200, "request {n}: {}", answer.text());
        assert_eq!(answer.text(), "ok", "request {n}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "three answers per connection, every fourth request moved to a new one"
    );
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "sluice_egress_attempts_total{integration=\"closing\""
        ),
        15.0,
        "each of the three moved requests was sent twice, and counted so: {metrics}"
    );
    sidecar.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn upstream_failures_are_502_with_a_code() {
    // Nothing listens: connection refused.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused_addr = closed.local_addr().unwrap();
    drop(closed);
    // Accepts and closes at once: a reset before any response.
    let resetting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = resetting.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = resetting.accept().await {
            drop(s);
        }
    });
    // Answers garbage.
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = garbage.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"SMTP ready\r\n\r\n").await;
        }
    });
    let make = |name: &str, addr: std::net::SocketAddr| {
        let mut c: sluice_sidecar::config::IntegrationConfig = serde_yaml_ng::from_str(&format!(
            "name: {name}\nlisten: 127.0.0.1:0\nupstream: {{baseUrl: 'http://{addr}', timeout: 1s, totalTimeout: 5s}}\nretry: {{maxAttempts: 2, backoff: {{initial: 10ms, max: 10ms, multiplier: 1, jitter: 0}}}}\n"
        ))
        .unwrap();
        c.retry.budget.min_per_second = 100;
        c
    };
    let sidecar = start(vec![
        make("refused", refused_addr),
        make("reset", reset_addr),
        make("garbage", garbage_addr),
    ])
    .await;
    for (name, code) in [
        ("refused", "upstream-connect"),
        ("reset", "upstream-reset"),
        ("garbage", "upstream-protocol"),
    ] {
        let started = Instant::now();
        let answer = App::new(sidecar.egress_addr(name).unwrap()).get("/x").await;
        assert_eq!(answer.status, 502, "{name}: {}", answer.text());
        assert_eq!(
            answer.header("x-sluice-error"),
            Some(code),
            "{name}: {}",
            answer.text()
        );
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["error"]["code"], code);
        assert_eq!(body["error"]["type"], "sluice_error");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
    }
    sidecar.shutdown().await;
}

#[tokio::test]
async fn malformed_app_requests_get_400_with_a_reason() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    let sidecar = start(vec![integration("bad", &upstream)]).await;
    let app = App::new(sidecar.egress_addr("bad").unwrap());
    let answer = app
        .send(
            "GET",
            "/x",
            &[("x-sluice-priority", "urgent")],
            Bytes::new(),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.header("x-sluice-error"), Some("bad-request"));
    assert!(
        answer.text().contains("x-sluice-priority"),
        "{}",
        answer.text()
    );
    assert_eq!(upstream.count(), 0);
    // A valid priority header is consumed, not forwarded.
    let ok = app
        .send("GET", "/x", &[("x-sluice-priority", "high")], Bytes::new())
        .await;
    assert_eq!(ok.status, 200);
    assert!(
        !upstream.requests()[0]
            .headers
            .contains_key("x-sluice-priority")
    );
    sidecar.shutdown().await;
}

fn limit(name: &str, requests: u32, per: D, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        name: name.into(),
        matches: any(),
        requests,
        per,
        burst,
        scope: Default::default(),
        when_exceeded: WhenExceeded::Queue,
        queue: QueueConfig {
            max_wait: D::from_secs(10),
            max_depth: 1000,
        },
    }
}

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

struct SecretDir(std::path::PathBuf);

impl SecretDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sluice-test-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, name: &str, value: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        // Write then rename, as the kubelet swaps a Secret volume.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, value).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn injects_credentials_and_picks_up_rotated_keys() {
    let upstream = TestUpstream::plain(handler(|seen, _| async move {
        match seen
            .headers
            .get("x-api-key")
            .map(|v| v.to_str().unwrap().to_owned())
            .as_deref()
        {
            Some("key-one") | Some("key-two") => respond(200, "ok"),
            _ => respond(401, "bad key"),
        }
    }))
    .await;
    let secrets = SecretDir::new("rotate");
    let current = secrets.write("current", "key-one\n");
    let mut config = integration("keys", &upstream);
    config.auth = Some(AuthConfig::Header {
        name: "X-Api-Key".into(),
        secret: SecretFile::new(&current),
        previous: None,
    });
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("keys").unwrap());
    let answer = app
        .send(
            "GET",
            "/x",
            &[("x-api-key", "app-tried-its-own")],
            Bytes::new(),
        )
        .await;
    assert_eq!(answer.status, 200, "Sluice's key replaces the app's");
    assert_eq!(upstream.requests()[0].headers["x-api-key"], "key-one");

    secrets.write("current", "key-two");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(app.get("/x").await.status, 200);
        if upstream.requests().last().unwrap().headers["x-api-key"] == "key-two" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated key was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_401_during_rotation_is_retried_once_with_the_previous_key() {
    // The provider has not activated the new key yet.
    let upstream = TestUpstream::plain(handler(|seen, _| async move {
        if seen.headers["authorization"] == "Bearer old-key" {
            respond(200, "ok")
        } else {
            respond(401, "unknown key")
        }
    }))
    .await;
    let secrets = SecretDir::new("fallback");
    let mut config = integration("rotating", &upstream);
    config.auth = Some(AuthConfig::Bearer {
        secret: SecretFile::new(secrets.write("current", "new-key")),
        previous: Some(PreviousSecret {
            secret: SecretFile::new(secrets.write("previous", "old-key")),
            valid_until: "2999-01-01T00:00:00Z".parse().unwrap(),
        }),
    });
    let mut expired = integration("expired", &upstream);
    expired.auth = Some(AuthConfig::Bearer {
        secret: SecretFile::new(secrets.path_of("current")),
        previous: Some(PreviousSecret {
            secret: SecretFile::new(secrets.path_of("previous")),
            valid_until: "2001-01-01T00:00:00Z".parse().unwrap(),
        }),
    });
    let sidecar = start(vec![config, expired]).await;
    let answer = App::new(sidecar.egress_addr("rotating").unwrap())
        .send("POST", "/charge", &[], "x")
        .await;
    assert_eq!(answer.status, 200);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, "x", "body resent");
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(
        metrics.contains(
            "sluice_credential_fallback_total{integration=\"rotating\",result=\"success\"} 1"
        ),
        "{metrics}"
    );
    // Past previousValidUntil the old key is no longer tried.
    let answer = App::new(sidecar.egress_addr("expired").unwrap())
        .get("/x")
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(upstream.count(), 3);
    sidecar.shutdown().await;
}

impl SecretDir {
    fn path_of(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

#[tokio::test]
async fn basic_auth_is_encoded() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    let secrets = SecretDir::new("basic");
    let mut config = integration("basic", &upstream);
    config.auth = Some(AuthConfig::Basic {
        username: SecretFile::new(secrets.write("user", "acct")),
        password: SecretFile::new(secrets.write("pass", "p@ss:word")),
        previous_password: None,
    });
    let sidecar = start(vec![config]).await;
    App::new(sidecar.egress_addr("basic").unwrap())
        .get("/")
        .await;
    // base64("acct:p@ss:word")
    assert_eq!(
        upstream.requests()[0].headers["authorization"],
        "Basic YWNjdDpwQHNzOndvcmQ="
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn oauth2_tokens_are_fetched_once_cached_and_refreshed() {
    let token_calls = Arc::new(AtomicUsize::new(0));
    let calls = token_calls.clone();
    let tokens = TestUpstream::plain(handler(move |seen, _| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let form = String::from_utf8_lossy(&seen.body).into_owned();
            let ok = form.contains("grant_type=client_credentials")
                && form.contains("scope=read+write")
                && seen.headers["authorization"] == "Basic Y2xpZW50LTE6czNjcjN0";
            if !ok {
                return respond(400, "{\"error\":\"invalid_client\"}");
            }
            let mut r = respond(200, "");
            // A 2 s token with refreshBefore 1 s: refreshed after ~1 s.
            *r.body_mut() = http_body_util::Full::new(Bytes::from(format!(
                "{{\"access_token\":\"tok-{n}\",\"token_type\":\"Bearer\",\"expires_in\":2}}"
            )));
            r
        }
    }))
    .await;
    let api = TestUpstream::plain(handler(|_, _| async { respond(200, "data") })).await;
    let secrets = SecretDir::new("oauth");
    let mut config = integration("oauth", &api);
    config.auth = Some(AuthConfig::Oauth2ClientCredentials {
        token_url: format!("{}/oauth/token", tokens.url()).parse().unwrap(),
        client_id: SecretFile::new(secrets.write("id", "client-1")),
        client_secret: SecretFile::new(secrets.write("secret", "s3cr3t")),
        scopes: vec!["read".into(), "write".into()],
        audience: None,
        refresh_before: D::from_secs(1),
        client_auth: Default::default(),
    });
    let sidecar = start(vec![config]).await;
    let addr = sidecar.egress_addr("oauth").unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { App::new(addr).get("/r").await.status }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        1,
        "one refresh at a time, then cached"
    );
    assert!(
        api.requests()
            .iter()
            .all(|s| s.headers["authorization"] == "Bearer tok-1")
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(App::new(addr).get("/r").await.status, 200);
    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        2,
        "refreshed before expiry"
    );
    assert_eq!(
        api.requests().last().unwrap().headers["authorization"],
        "Bearer tok-2"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn oauth2_refresh_failure_is_an_error_and_a_metric() {
    let tokens = TestUpstream::plain(handler(|_, _| async {
        respond(401, "{\"error\":\"invalid_client\"}")
    }))
    .await;
    let api = TestUpstream::plain(handler(|_, _| async { respond(200, "data") })).await;
    let secrets = SecretDir::new("oauth-fail");
    let mut config = integration("oauth-fail", &api);
    config.auth = Some(AuthConfig::Oauth2ClientCredentials {
        token_url: format!("{}/token", tokens.url()).parse().unwrap(),
        client_id: SecretFile::new(secrets.write("id", "c")),
        client_secret: SecretFile::new(secrets.write("secret", "wrong")),
        scopes: vec![],
        audience: None,
        refresh_before: D::from_secs(60),
        client_auth: sluice_sidecar::config::ClientAuthMethod::RequestBody,
    });
    let sidecar = start(vec![config]).await;
    let answer = App::new(sidecar.egress_addr("oauth-fail").unwrap())
        .get("/r")
        .await;
    assert_eq!(answer.status, 502);
    assert_eq!(
        answer.header("x-sluice-error"),
        Some("token-refresh-failed")
    );
    assert!(
        answer.text().contains("invalid_client"),
        "{}",
        answer.text()
    );
    assert!(!answer.text().contains("wrong"), "the client secret leaked");
    assert_eq!(api.count(), 0);
    assert!(String::from_utf8_lossy(&tokens.requests()[0].body).contains("client_secret=wrong"));
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(
        metrics
            .contains("sluice_token_refresh_total{integration=\"oauth-fail\",result=\"error\"} 1"),
        "{metrics}"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn admin_serves_metrics_health_and_a_secret_free_config() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    let secrets = SecretDir::new("admin");
    let mut config = integration("adm", &upstream);
    config.auth = Some(AuthConfig::Bearer {
        secret: SecretFile::new(secrets.write("k", "sk_live_TOPSECRET")),
        previous: None,
    });
    let sidecar = start(vec![config]).await;
    App::new(sidecar.egress_addr("adm").unwrap())
        .get("/x")
        .await;
    assert_eq!(admin(&sidecar, "/healthz").await.status, 200);
    assert_eq!(admin(&sidecar, "/readyz").await.status, 200);
    let config = admin(&sidecar, "/config").await;
    assert_eq!(config.status, 200);
    assert!(config.text().contains("\"baseUrl\""));
    assert!(!config.text().contains("TOPSECRET"));
    let metrics = admin(&sidecar, "/metrics").await.text();
    for name in [
        "sluice_egress_requests_total{integration=\"adm\",endpoint=\"default\",code=\"200\",outcome=\"success\"} 1",
        "sluice_egress_request_duration_seconds_bucket",
        "sluice_egress_attempts_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    assert!(!metrics.contains("TOPSECRET"));
    assert_eq!(admin(&sidecar, "/nope").await.status, 404);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let upstream = TestUpstream::plain(handler(|_, _| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        respond(200, "slow but complete")
    }))
    .await;
    let sidecar = start(vec![integration("drain", &upstream)]).await;
    let addr = sidecar.egress_addr("drain").unwrap();
    // A keep-alive connection that is idle at shutdown must be closed at
    // once, not waited for until the drain timeout (5 s here).
    let idle = App::new(addr);
    assert_eq!(idle.get("/warm").await.status, 200);
    // Nor may a connection that never sent a byte hold up the drain.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let in_flight = tokio::spawn(async move { App::new(addr).get("/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    sidecar.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    let answer = in_flight.await.unwrap();
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "slow but complete")
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    let mut config = integration("clash", &upstream);
    config.listen = taken.local_addr().unwrap();
    let result = sluice_sidecar::Sidecar::start(sluice_sidecar::config::SidecarConfig {
        admin: sluice_sidecar::config::AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
        },
        drain_timeout: D::from_secs(1),
        integrations: vec![config],
        ingress: Default::default(),
    })
    .await;
    let error = result.err().expect("start fails").to_string();
    assert!(
        error.contains("integration clash")
            && error.contains(&taken.local_addr().unwrap().to_string()),
        "{error}"
    );
}

#[tokio::test]
async fn a_missing_secret_file_is_a_clear_start_error() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    let mut config = integration("nosecret", &upstream);
    config.auth = Some(AuthConfig::Bearer {
        secret: SecretFile::new("/nonexistent/sluice/key"),
        previous: None,
    });
    let error = sluice_sidecar::Sidecar::start(sluice_sidecar::config::SidecarConfig {
        admin: sluice_sidecar::config::AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
        },
        drain_timeout: D::from_secs(1),
        integrations: vec![config],
        ingress: Default::default(),
    })
    .await
    .err()
    .expect("start fails")
    .to_string();
    assert!(error.contains("/nonexistent/sluice/key"), "{error}");
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

#[tokio::test]
async fn a_stalled_upload_ends_at_the_total_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "ok") })).await;
    let mut config = integration("uploads", &upstream);
    config.upstream.total_timeout = D::from_millis(500);
    config.upstream.timeout = D::from_millis(400);
    let sidecar = start(vec![config]).await;
    // Headers promise 100 bytes; 10 come, then nothing.
    let mut app = tokio::net::TcpStream::connect(sidecar.egress_addr("uploads").unwrap())
        .await
        .unwrap();
    app.write_all(
        b"POST /v1/documents HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("total-timeout") {
        let read = tokio::time::timeout(Duration::from_secs(5), app.read(&mut chunk))
            .await
            .expect("the sidecar answers a stalled upload");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("x-sluice-error: total-timeout"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(upstream.count(), 0, "nothing half-read was sent");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_buffer_limit_stream_and_are_sent_once() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(503, "busy") })).await;
    let mut config = integration("big", &upstream);
    config.upstream.max_buffered_body_bytes = 64 * 1024;
    config.retry.budget.min_per_second = 100;
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("big").unwrap());
    let small = app
        .send("PUT", "/doc", &[], Bytes::from(vec![b's'; 1024]))
        .await;
    assert_eq!(small.status, 503);
    assert_eq!(
        upstream.count(),
        3,
        "a small PUT is replayed on every attempt"
    );
    let large = app
        .send("PUT", "/doc", &[], Bytes::from(vec![b'L'; 256 * 1024]))
        .await;
    assert_eq!(large.status, 503);
    assert_eq!(
        upstream.count(),
        4,
        "a body over the limit is not kept, so not retried"
    );
    assert_eq!(
        upstream.requests()[3].body.len(),
        256 * 1024,
        "and arrives whole"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_body_that_stalls_is_cut_off_instead_of_hanging_the_app() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Headers and a first chunk, then nothing, with the connection kept open.
    let stalling = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stalling.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = stalling.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let config: sluice_sidecar::config::IntegrationConfig = serde_yaml_ng::from_str(&format!(
        "name: stall\nlisten: 127.0.0.1:0\nupstream: {{baseUrl: 'http://{addr}', timeout: 300ms, totalTimeout: 5s}}\n"
    ))
    .unwrap();
    let sidecar = start(vec![config]).await;
    let mut app = tokio::net::TcpStream::connect(sidecar.egress_addr("stall").unwrap())
        .await
        .unwrap();
    app.write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), app.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the app was left hanging on a stalled body");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("hello"),
        "{text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut-off body must not look complete: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    sidecar.shutdown().await;
}
