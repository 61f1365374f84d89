//! Shared by the end-to-end tests: a real control plane (tests/controlplane)
//! on loopback, the `sluice` binary as the operator, and polling helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "../../../tests/tools/locate.rs"]
mod locate;
// Not every test binary uses it.
#[allow(unused_imports)]
pub use locate::tool;

/// A binary of the test control plane (`kubectl`, `helm`, ...), built once
/// by `tests/controlplane/build`, without starting anything.
pub fn controlplane_bin(name: &str) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let out = Command::new(repo().join("tests/controlplane/build"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running tests/controlplane/build");
        assert!(out.status.success(), "tests/controlplane/build failed");
        String::from_utf8(out.stdout).unwrap().trim().into()
    });
    dir.join(name)
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A running control plane; stopped when dropped, even after a failed assertion.
pub struct ControlPlane {
    pub dir: PathBuf,
}

impl ControlPlane {
    pub fn up() -> Self {
        Self::up_with(&[])
    }

    /// The control plane and one node where pods run (`up --node`: root only).
    pub fn up_with_node() -> Self {
        Self::up_with(&["--node"])
    }

    fn up_with(args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-cp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new(repo().join("tests/controlplane/up"))
            .arg(&dir)
            .args(args)
            .status()
            .expect("running tests/controlplane/up");
        assert!(
            status.success(),
            "the control plane did not start (logs in {})",
            dir.join("logs").display()
        );
        Self { dir }
    }

    /// The node's IP on its bridge (`up --node` writes it): what pods reach.
    pub fn node_ip(&self) -> String {
        std::fs::read_to_string(self.dir.join("node/ip"))
            .expect("a control plane started with --node")
            .trim()
            .to_owned()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(self.dir.join("bin/kubectl"))
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().unwrap()
    }

    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Waits (up to 30 s) until the CRD named `crd` is Established.
    /// `kubectl wait --for=condition=...` fails outright, instead of
    /// waiting, when it reads the CRD before the API server has written any
    /// condition (`.status.conditions accessor error: <nil>`): CI met that.
    pub fn wait_established(&self, crd: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let jsonpath = r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#;
        loop {
            let out = self.kubectl(&["get", "crd", crd, "-o", jsonpath], None);
            if out.status.success() && out.stdout == b"True" {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CRD {crd} not Established after 30 s: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all, None)).unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/controlplane/down"))
            .arg(&self.dir)
            .status();
        // SLUICE_KEEP_LOGS=1 keeps DIR/logs for a look after a failure.
        if std::env::var_os("SLUICE_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub struct Operator {
    pub child: Child,
    pub metrics: String,
}

impl Operator {
    /// The operator with cluster-admin credentials and default flags.
    pub fn start(cp: &ControlPlane) -> Self {
        let webhook = format!("127.0.0.1:{}", free_port());
        Self::start_with(
            cp,
            &cp.kubeconfig(),
            &["--webhook-listen", &webhook],
            "operator",
        )
    }

    /// The operator with `kubeconfig`'s credentials and extra flags; its log
    /// goes to logs/NAME.log.
    pub fn start_with(cp: &ControlPlane, kubeconfig: &Path, args: &[&str], name: &str) -> Self {
        let port = free_port();
        let log = cp.dir.join(format!("logs/{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["operator", "--metrics-listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            ))
            .spawn()
            .unwrap();
        let op = Self {
            child,
            metrics: format!("127.0.0.1:{port}"),
        };
        wait("the operator's /metrics", Duration::from_secs(20), || {
            op.scrape().is_some()
        });
        op
    }

    /// Whether /readyz says ok: the cluster listed, a serving certificate loaded.
    pub fn is_ready(&self) -> bool {
        self.get("/readyz")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    }

    pub fn scrape(&self) -> Option<String> {
        self.get("/metrics")
    }

    fn get(&self, path: &str) -> Option<String> {
        http_get(&self.metrics, path)
    }

    pub fn counter(&self, name: &str) -> f64 {
        self.scrape()
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP upstream on loopback: answers each GET with the status
/// `status_for` gives its path, and counts requests.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn start(status_for: fn(&str) -> u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request per read is enough: GETs without bodies.
                        let Ok(n) = stream.read(&mut chunk) else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                            buffer.drain(..end + 4);
                            counted.fetch_add(1, Ordering::SeqCst);
                            let path = head.split(' ').nth(1).unwrap_or("/");
                            let status = status_for(path);
                            // A provider that says how much of its limit is left.
                            let limit = if status == 200 {
                                "x-ratelimit-limit: 5000\r\nx-ratelimit-remaining: 4990\r\nx-ratelimit-reset: 60\r\n"
                            } else {
                                ""
                            };
                            // A JSON answer that lacks what a contract requires.
                            let (media, body) = if path.ends_with("/drifted") {
                                ("application/json", "{}")
                            } else {
                                ("text/plain", "ok")
                            };
                            let _ = write!(
                                stream,
                                "HTTP/1.1 {status} X\r\ncontent-length: 2\r\ncontent-type: {media}\r\n{limit}\r\n{body}",
                            );
                        }
                    }
                });
            }
        });
        Self { addr, hits }
    }
}

/// Runs promtool (built by tests/tools/build) and returns what it printed;
/// a failure fails the test with that output.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// One plain HTTP/1.1 GET; the whole answer (status line, headers, body).
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// A free loopback port (bound and released; tests bind it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it holds, at most `within`.
pub fn wait(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

pub fn ready(cp: &ControlPlane, ns: &str, name: &str) -> Option<(String, String)> {
    let pi = cp.json(&["get", "providerintegration", "-n", ns, name]);
    let condition = pi["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    Some((
        condition["status"].as_str()?.to_owned(),
        condition["message"].as_str().unwrap_or("").to_owned(),
    ))
}

pub fn sluice(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The named phases of a long end-to-end test: each is printed as it
/// starts and when it ends with the time it took, and a failure names the
/// phase it happened in.
pub struct Phases {
    current: Option<(&'static str, std::time::Instant)>,
}

impl Phases {
    pub fn new() -> Self {
        Self { current: None }
    }

    /// Ends the running phase and starts `name`.
    pub fn enter(&mut self, name: &'static str) {
        self.finish();
        println!("phase: {name}");
        self.current = Some((name, std::time::Instant::now()));
    }

    fn finish(&mut self) {
        if let Some((name, started)) = self.current.take() {
            println!("phase done in {:?}: {name}", started.elapsed());
        }
    }
}

impl Drop for Phases {
    fn drop(&mut self) {
        match self.current {
            Some((name, _)) if std::thread::panicking() => eprintln!("failed in phase: {name}"),
            _ => self.finish(),
        }
    }
}

/// The `sluice-sidecar` binary of this workspace, beside `sluice`; built
/// here when only the operator package was.
pub fn sidecar_binary() -> std::path::PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "sluice-sidecar",
            "--bin",
            "sluice-sidecar",
        ])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(status.success());
    Path::new(env!("CARGO_BIN_EXE_sluice")).with_file_name("sluice-sidecar")
}

/// The value of the first sample whose line starts with `prefix`.
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}
