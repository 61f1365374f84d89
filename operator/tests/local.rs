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
    let (port, admin_port) = (free_port(), free_port());
    let dir = temp_dir("dir");
    std::fs::create_dir_all(dir.join("secrets/carrier-key")).unwrap();
    std::fs::write(
        dir.join("secrets/carrier-key/current"),
        "sk_test_NEVER_LOG_ME\n",
    )
    .unwrap();
    std::fs::write(dir.join("pi.yaml"), manifest(upstream, port, "")).unwrap();
    let admin = format!("127.0.0.1:{admin_port}");
    let (running, banner) = Running::start(&[
        "local",
        dir.join("pi.yaml").to_str().unwrap(),
        "--secrets-dir",
        dir.join("secrets").to_str().unwrap(),
        "--admin-listen",
        &admin,
    ]);
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

#[test]
fn local_reads_secrets_from_secret_documents() {
    let upstream = echo_upstream();
    let port = free_port();
    let dir = temp_dir("inline");
    // base64("inline-key")
    let secret = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: carrier-key}\ndata: {current: aW5saW5lLWtleQ==}\n";
    std::fs::write(dir.join("pi.yaml"), manifest(upstream, port, secret)).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let (running, banner) = Running::start(&[
        "local",
        dir.join("pi.yaml").to_str().unwrap(),
        "--admin-listen",
        &admin,
    ]);
    assert!(banner.contains("carrier:"), "{banner}");
    let answer = get(&format!("127.0.0.1:{port}"), "/");
    assert!(answer.ends_with("key=inline-key"), "{answer}");
    let logs = running.stop();
    assert!(!logs.contains("inline-key"), "a secret reached the logs");
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
