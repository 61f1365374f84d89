//! The request edge over real sockets: what the app sends that only Sluice
//! may send never reaches the provider, and targets an upstream could read
//! outside the base path are refused.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_sidecar::config::{AuthConfig, SecretFile};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that records the raw bytes of one chunked request and
/// answers 200.
async fn raw_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let record = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                // The head, then a chunked body up to its trailer section's end.
                while !(bytes.windows(5).any(|w| w == b"\r\n0\r\n") && bytes.ends_with(b"\r\n\r\n"))
                {
                    let mut chunk = [0u8; 4096];
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                    }
                }
                *record.lock().unwrap() = bytes;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    (addr, received)
}

fn key_file(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("sluice-edge-{name}-{}", std::process::id()));
    std::fs::write(&path, "sluice-key").unwrap();
    path
}

#[tokio::test]
async fn connection_cannot_remove_the_credential_and_trailers_cannot_smuggle_fields() {
    // Phase 1: `Connection: X-Api-Key` and the app's own key.
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "ok") })).await;
    let key = key_file("connection");
    let mut config = integration("edge", &upstream);
    config.auth = Some(AuthConfig::Header {
        name: "X-Api-Key".into(),
        secret: SecretFile::new(&key),
        previous: None,
    });
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("edge").unwrap());
    let answer = app
        .send(
            "GET",
            "/x",
            &[("connection", "X-Api-Key"), ("x-api-key", "the-apps")],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.requests()[0].headers["x-api-key"], "sluice-key");
    sidecar.shutdown().await;

    // Phase 2: a streamed upload whose trailers carry framing, routing and
    // the credential's name.
    let (addr, received) = raw_upstream().await;
    let key = key_file("trailers");
    let mut config: sluice_sidecar::config::IntegrationConfig = serde_yaml_ng::from_str(&format!(
        "name: edge\nlisten: 127.0.0.1:0\nupstream: {{baseUrl: 'http://{addr}'}}\nretry: {{maxAttempts: 1}}\n"
    ))
    .unwrap();
    config.auth = Some(AuthConfig::Header {
        name: "X-Api-Key".into(),
        secret: SecretFile::new(&key),
        previous: None,
    });
    let sidecar = start(vec![config]).await;
    let mut socket = tokio::net::TcpStream::connect(sidecar.egress_addr("edge").unwrap())
        .await
        .unwrap();
    socket
        .write_all(
            b"POST /upload HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\nte: trailers\r\n\r\n\
              5\r\nhello\r\n0\r\ncontent-length: 99\r\nhost: evil.example\r\nx-api-key: the-apps\r\n\
              authorization: Bearer the-apps\r\nx-checksum: abc\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    let sent = String::from_utf8_lossy(&received.lock().unwrap()).to_ascii_lowercase();
    let trailers = &sent[sent.rfind("\r\n0\r\n").expect("a chunked body") + 5..];
    assert!(
        trailers.contains("x-checksum: abc"),
        "an allowed trailer is kept: {sent}"
    );
    for refused in [
        "content-length",
        "host:",
        "x-api-key",
        "authorization",
        "the-apps",
        "evil",
    ] {
        assert!(
            !trailers.contains(refused),
            "{refused} forwarded in trailers: {sent}"
        );
    }
    assert!(sent.contains("x-api-key: sluice-key"), "{sent}");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn targets_an_upstream_could_read_outside_the_base_path_are_refused() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "ok") })).await;
    let sidecar = start(vec![integration("edge", &upstream)]).await;
    let addr = sidecar.egress_addr("edge").unwrap();
    for target in [
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1/..%2fadmin",
        "/v1/..%5cadmin",
        "/v1/..;/admin",
        "/v1/./x",
        "/v1/caf\u{e9}",
    ] {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{target}: {text}");
        assert!(
            text.contains("x-sluice-error: bad-request"),
            "{target}: {text}"
        );
    }
    assert_eq!(upstream.count(), 0, "nothing reached the upstream");
    // What only looks like one passes: dots inside a name, in the query.
    assert_eq!(
        App::new(addr)
            .get("/v1/report.v2.csv?next=../x")
            .await
            .status,
        200
    );
    sidecar.shutdown().await;
}
