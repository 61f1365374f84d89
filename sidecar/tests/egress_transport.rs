//! The egress proxy's transport over real sockets: the app's HTTP/1.1 and h2c,
//! TLS and HTTP/2 to the upstream, pooled connections and their failures,
//! bodies streamed and cut, malformed requests.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sluice_sidecar::config::Duration as D;
use support::*;
use tokio::time::Instant;

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
