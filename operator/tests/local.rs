//! `sluice local` as a user runs it: a real process in front of a real
//! upstream, secrets from a directory or from `kind: Secret` documents, and
//! logs that never contain a secret value.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tiny upstream on a thread: answers every request with what
/// authorization header it got, so the test sees what Sluice injected.
fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                use std::io::Write;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut auth = String::new();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("x-api-key:") {
                        auth = v.trim().to_owned();
                    }
                    line.clear();
                }
                let body = format!("key={auth}");
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The admin address `sluice local` bound, from its banner's `admin:` line
/// (asked for port 0: no port is picked here and handed over, a race).
fn admin_addr(banner: &str) -> String {
    banner
        .lines()
        .find_map(|line| {
            line.strip_prefix("admin: http://")?
                .strip_suffix("/metrics")
        })
        .unwrap_or_else(|| panic!("no admin address in the banner:\n{banner}"))
        .to_owned()
}

fn get(addr: &str, path: &str) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

struct Running {
    child: Child,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> (Self, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env("SLUICE_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // `sluice local` prints one line per integration, then the admin URL.
        let mut banner = String::new();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match lines.next() {
                Some(Ok(line)) => {
                    banner.push_str(&line);
                    banner.push('\n');
                    if line.starts_with("admin:") {
                        break;
                    }
                }
                _ => break,
            }
        }
        (Self { child, stderr: rx }, banner)
    }

    /// What it logged so far (waiting up to 2 s for more), for a failure message.
    fn logs_so_far(&self) -> String {
        let mut logs = String::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            logs.push_str(&line);
            logs.push('\n');
        }
        logs
    }

    /// SIGTERM, wait for a clean exit, and return everything logged.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "sluice local exited with {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sluice local did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

fn manifest(upstream: SocketAddr, port: u16, extra: &str) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: ProviderIntegration
metadata: {{name: carrier}}
spec:
  upstream: {{baseUrl: "http://{upstream}"}}
  egress: {{port: {port}}}
  auth:
    header: {{name: X-Api-Key, secretRef: {{name: carrier-key, key: current}}}}
  rateLimits:
    - name: all
      rate: {{requests: 100, per: 1s}}
{extra}"#
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-local-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn local_runs_a_sidecar_from_a_manifest_and_a_secrets_dir() {
    let upstream = echo_upstream();
    let port = free_port();
    let dir = temp_dir("dir");
    std::fs::create_dir_all(dir.join("secrets/carrier-key")).unwrap();
    std::fs::write(
        dir.join("secrets/carrier-key/current"),
        "sk_test_NEVER_LOG_ME\n",
    )
    .unwrap();
    std::fs::write(dir.join("pi.yaml"), manifest(upstream, port, "")).unwrap();
    let (running, banner) = Running::start(&[
        "local",
        dir.join("pi.yaml").to_str().unwrap(),
        "--secrets-dir",
        dir.join("secrets").to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = admin_addr(&banner);
    assert!(
        banner.contains(&format!(
            "carrier: http://127.0.0.1:{port} -> http://{upstream}"
        )),
        "{banner}"
    );
    let answer = get(&format!("127.0.0.1:{port}"), "/v1/track?id=1");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("key=sk_test_never_log_me"),
        "the key was injected: {answer}"
    );
    let bad = get(&format!("127.0.0.1:{port}"), "/x%ZZ");
    assert!(bad.starts_with("HTTP/1.1"), "{bad}");
    let config = get(&admin, "/config");
    assert!(
        config.contains("carrier-key/current") && !config.contains("NEVER_LOG_ME"),
        "{config}"
    );
    let logs = running.stop();
    assert!(
        logs.contains("\"egress\""),
        "request logs expected:\n{logs}"
    );
    assert!(
        !logs.contains("NEVER_LOG_ME") && !logs.to_lowercase().contains("never_log_me"),
        "a secret reached the logs:\n{logs}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `sluice local` on PORT with the credential from a `kind: Secret` in the
/// manifest itself (value "inline-key").
fn start_with_inline_secret(
    dir: &std::path::Path,
    upstream: SocketAddr,
    port: u16,
) -> (Running, String) {
    // base64("inline-key")
    let secret = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: carrier-key}\ndata: {current: aW5saW5lLWtleQ==}\n";
    std::fs::write(dir.join("pi.yaml"), manifest(upstream, port, secret)).unwrap();
    Running::start(&[
        "local",
        dir.join("pi.yaml").to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
    ])
}

#[test]
fn local_reads_secrets_from_secret_documents() {
    let upstream = echo_upstream();
    let port = free_port();
    let dir = temp_dir("inline");
    let (running, banner) = start_with_inline_secret(&dir, upstream, port);
    assert!(banner.contains("carrier:"), "{banner}");
    let answer = get(&format!("127.0.0.1:{port}"), "/");
    assert!(answer.ends_with("key=inline-key"), "{answer}");
    let logs = running.stop();
    assert!(!logs.contains("inline-key"), "a secret reached the logs");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The banner means "serving": a SIGTERM sent the moment it appears must
/// drain and exit 0, never meet SIGTERM's default action (CI caught the race).
#[test]
fn local_exits_cleanly_on_a_sigterm_sent_right_after_its_banner() {
    let upstream = echo_upstream();
    let dir = temp_dir("early-term");
    for round in 0..5 {
        let (running, banner) = start_with_inline_secret(&dir, upstream, free_port());
        assert!(
            banner.contains("admin:"),
            "round {round}: {banner}\n{}",
            running.logs_so_far()
        );
        running.stop();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn local_refuses_a_missing_secret_with_the_field_path() {
    let dir = temp_dir("missing");
    std::fs::write(
        dir.join("pi.yaml"),
        manifest("127.0.0.1:9".parse().unwrap(), free_port(), ""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "local",
            dir.join("pi.yaml").to_str().unwrap(),
            "--secrets-dir",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.auth.header.secretRef") && stderr.contains("carrier-key"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn local_refuses_a_port_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = temp_dir("inuse");
    let secret = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: carrier-key}\nstringData: {current: k}\n";
    std::fs::write(
        dir.join("pi.yaml"),
        manifest("127.0.0.1:9".parse().unwrap(), port, secret),
    )
    .unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "local",
            dir.join("pi.yaml").to_str().unwrap(),
            "--admin-listen",
            &admin,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn post(addr: &str, path: &str, headers: &[(&str, String)], body: &str) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(stream, "{head}\r\n{body}").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn sluice_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn dead_letters_are_listed_shown_and_replayed_with_the_cli() {
    let app_port = free_port();
    let (hooks, admin_port) = (free_port(), free_port());
    let dir = temp_dir("deadletters");
    let manifest = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: ProviderIntegration
metadata: {{name: shop}}
spec:
  upstream: {{baseUrl: "http://127.0.0.1:9"}}
  egress: {{port: {}}}
  webhooks:
    - name: orders
      path: /webhooks/orders
      forwardTo: http://127.0.0.1:{app_port}/in
      verify: {{scheme: GitHub, secrets: [{{secretRef: {{name: hook, key: secret}}}}]}}
      delivery: {{maxAttempts: 1, timeout: 1s}}
---
apiVersion: v1
kind: Secret
metadata: {{name: hook}}
stringData: {{secret: hook-secret}}
"#,
        free_port()
    );
    std::fs::write(dir.join("pi.yaml"), manifest).unwrap();
    let admin = format!("127.0.0.1:{admin_port}");
    let state = dir.join("state");
    let (running, banner) = Running::start(&[
        "local",
        dir.join("pi.yaml").to_str().unwrap(),
        "--admin-listen",
        &admin,
        "--webhook-listen",
        &format!("127.0.0.1:{hooks}"),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(
        banner.contains(&format!("webhooks: http://127.0.0.1:{hooks}")),
        "{banner}"
    );

    let body = r#"{"order":"o-1","total":42}"#;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"hook-secret");
    let tag: String = ring::hmac::sign(&key, body.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let headers = [
        ("x-hub-signature-256", format!("sha256={tag}")),
        ("x-github-delivery", "delivery-1".to_owned()),
    ];
    let answer = post(
        &format!("127.0.0.1:{hooks}"),
        "/webhooks/orders",
        &headers,
        body,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The app is down: one attempt, then a dead letter.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listing = loop {
        let (ok, text) = sluice_cli(&["webhooks", "dead-letters", "--admin", &admin]);
        assert!(ok, "{text}");
        if text.contains("shop/orders/1") {
            break text;
        }
        assert!(Instant::now() < deadline, "no dead letter appeared: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        listing.contains("id=delivery-1") && listing.contains("attempts=1"),
        "{listing}"
    );
    let (ok, shown) = sluice_cli(&["webhooks", "show", "shop/orders/1", "--admin", &admin]);
    assert!(
        ok && shown.contains(body) && shown.contains("x-github-delivery: delivery-1"),
        "{shown}"
    );
    let (ok, offline) = sluice_cli(&[
        "webhooks",
        "dead-letters",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(ok && offline.contains("shop/orders/1"), "{offline}");

    // The app is back: replay, and it gets the event byte for byte.
    let app = TcpListener::bind(("127.0.0.1", app_port)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut stream, _)) = app.accept() {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = Vec::new();
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if text.contains(r#""total":42}"#) {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    let _ = tx.send(text);
                    break;
                }
            }
        }
    });
    let (ok, replayed) = sluice_cli(&["webhooks", "replay", "shop/orders/1", "--admin", &admin]);
    assert!(ok, "{replayed}");
    let request = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the replayed event reached the app");
    assert!(request.ends_with(body), "{request}");
    assert!(
        request
            .to_lowercase()
            .contains("x-sluice-event-id: delivery-1"),
        "{request}"
    );
    let (_, after) = sluice_cli(&["webhooks", "dead-letters", "--admin", &admin]);
    assert!(after.contains("no dead letters"), "{after}");
    let (ok, bad) = sluice_cli(&["webhooks", "show", "nonsense", "--admin", &admin]);
    assert!(!ok && bad.contains("INTEGRATION/WEBHOOK/SEQ"), "{bad}");
    running.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `sluice local --shared-state`: the same flags as the sidecar's, against a
/// real redis-server (Debian's package; tests/run installs it).
#[test]
fn local_shares_cluster_limits_through_redis() {
    let dir = temp_dir("shared");
    let redis_port = free_port();
    let redis = KillOnDrop(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (tests/run installs it)"),
    );
    let upstream = echo_upstream();
    let port = free_port();
    std::fs::write(
        dir.join("pi.yaml"),
        manifest(upstream, port, "").replace(
            "rate: {requests: 100, per: 1s}",
            "rate: {requests: 100, per: 1s}\n      scope: Cluster",
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("secrets/carrier-key")).unwrap();
    std::fs::write(dir.join("secrets/carrier-key/current"), "k").unwrap();
    let url = format!("redis://127.0.0.1:{redis_port}/0");
    let (running, banner) = Running::start(&[
        "local",
        dir.join("pi.yaml").to_str().unwrap(),
        "--secrets-dir",
        dir.join("secrets").to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
        "--shared-state",
        &url,
    ]);
    let admin = admin_addr(&banner);
    let up = |text: &str| {
        text.lines()
            .any(|l| l.starts_with("sluice_shared_state_up{") && l.ends_with(" 1"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up(&get(&admin, "/metrics")) {
        assert!(
            Instant::now() < deadline,
            "never connected:\n{}",
            running.logs_so_far()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = get(&format!("127.0.0.1:{port}"), "/v1/track?id=1");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = get(&admin, "/metrics");
    assert!(
        metrics.contains("sluice_shared_state_calls_total{op=\"admit\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    let keys = Command::new("redis-cli")
        .args([
            "-p",
            &redis_port.to_string(),
            "--scan",
            "--pattern",
            "sluice:*",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&keys.stdout).trim(),
        "sluice:{carrier}:limit:all",
        "the limit's key, scoped by the integration (no namespace locally)"
    );
    running.stop();
    drop(redis);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A child process killed when the test ends, failed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
