//! Upstream faults as toxiproxy produces them (a body cut short, a body
//! trickling in, connections reset as a request arrives), played by raw
//! sockets so each test controls the bytes exactly.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_sidecar::config::IntegrationConfig;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that reads each request head and hands the socket to
/// `answer` with the number of heads seen so far (1-based).
async fn raw_upstream<F, Fut>(answer: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (answer, seen) = (answer.clone(), seen.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    let mut chunk = [0u8; 4096];
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                answer(socket, n).await;
            });
        }
    });
    (addr, heads)
}

fn config(addr: SocketAddr, extra: &str) -> IntegrationConfig {
    let mut config: IntegrationConfig = serde_yaml_ng::from_str(&format!(
        "name: faults\nlisten: 127.0.0.1:0\nupstream: {{baseUrl: 'http://{addr}', timeout: 1s, totalTimeout: 5s, bodyTimeout: 1s}}\n{extra}"
    ))
    .unwrap();
    config.retry.backoff.initial = sluice_sidecar::config::Duration::from_millis(20);
    config.retry.backoff.max = sluice_sidecar::config::Duration::from_millis(50);
    config
}

async fn fetch(sidecar: &sluice_sidecar::Sidecar) -> (String, Duration) {
    get_until_closed(sidecar.egress_addr("faults").unwrap(), "/body").await
}

#[tokio::test]
async fn a_response_cut_mid_body_is_an_upstream_failure_for_metrics_and_breaker() {
    // 1,000 bytes promised, 100 sent, then the connection closes.
    let (addr, heads) = raw_upstream(|mut socket, _| async move {
        let _ = socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
            .await;
        let _ = socket.write_all(&[b'x'; 100]).await;
    })
    .await;
    let sidecar = start(vec![config(
        addr,
        "retry: {maxAttempts: 1}\ncircuitBreaker: {failureRatio: 0.5, minRequests: 3, window: 10s, openFor: 30s}\n",
    )])
    .await;

    for n in 0..3 {
        let (text, _) = fetch(&sidecar).await;
        assert!(text.starts_with("HTTP/1.1 200"), "request {n}: {text}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        assert_eq!(
            body.len(),
            100,
            "request {n}: the app gets what came, no more"
        );
    }
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "sluice_egress_requests_total{integration=\"faults\",endpoint=\"default\",code=\"200\",outcome=\"upstream-reset\"}"
        ),
        3.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains("outcome=\"success\""),
        "a cut body is not a success: {metrics}"
    );

    // Three failures in three: the breaker opened.
    let (text, _) = fetch(&sidecar).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("x-sluice-error: circuit-open"), "{text}");
    assert_eq!(heads.load(Ordering::SeqCst), 3);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_trickling_body_is_cut_at_the_body_timeout() {
    // A byte every 100 ms: never idle for `timeout`, never done.
    let (addr, _) = raw_upstream(|mut socket, _| async move {
        let _ = socket
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        for _ in 0..200 {
            if socket.write_all(b"1\r\nx\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let sidecar = start(vec![config(addr, "retry: {maxAttempts: 1}\n")]).await;

    let (text, elapsed) = fetch(&sidecar).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut-off body must not look complete: {text}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "bodyTimeout is 1s, the body was cut after {elapsed:?}"
    );
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "sluice_egress_requests_total{integration=\"faults\",endpoint=\"default\",code=\"200\",outcome=\"upstream-timeout\"}"
        ),
        1.0,
        "{metrics}"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn connections_reset_as_requests_arrive_get_at_most_max_attempts_sends() {
    // The first request is answered on a kept-alive connection; from then
    // on every request is met with a reset (toxiproxy's `reset_peer`).
    let on_pooled = Arc::new(AtomicUsize::new(0));
    let seen_on_pooled = on_pooled.clone();
    let (addr, heads) = raw_upstream(move |mut socket, n| {
        let seen_on_pooled = seen_on_pooled.clone();
        async move {
            if n == 1 {
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Kept open: the sidecar pools it and sends the next request on it.
                let mut next = [0u8; 1024];
                if let Ok(1..) = socket.read(&mut next).await {
                    seen_on_pooled.fetch_add(1, Ordering::SeqCst);
                }
            }
            socket.set_zero_linger().unwrap();
            drop(socket);
        }
    })
    .await;
    let sidecar = start(vec![config(addr, "retry: {maxAttempts: 3}\n")]).await;
    let app = App::new(sidecar.egress_addr("faults").unwrap());
    assert_eq!(app.get("/first").await.status, 200);

    let failed = app.get("/second").await;
    assert_eq!(failed.status, 502, "{}", failed.text());
    assert_eq!(failed.header("x-sluice-error"), Some("upstream-reset"));
    let sends = on_pooled.load(Ordering::SeqCst) + heads.load(Ordering::SeqCst) - 1;
    assert_eq!(
        sends, 3,
        "maxAttempts is 3: that many sends, the resend on a fresh connection included"
    );
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "sluice_egress_attempts_total{integration=\"faults\""
        ),
        4.0,
        "every send is counted: {metrics}"
    );
    sidecar.shutdown().await;
}
