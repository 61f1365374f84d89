//! The real `sluice-sidecar` binary as a child process: its JSON log is
//! read for the addresses it bound (and passed through to the test's
//! output), and it can be killed with SIGKILL like a node losing a pod.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A log event that announced an address: (message, integration, addr).
type Bound = (String, String, SocketAddr);

pub struct SidecarProcess {
    child: Child,
    bound: Arc<(Mutex<Vec<Bound>>, Condvar)>,
    /// Every log line so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl SidecarProcess {
    /// `sluice-sidecar --config CONFIG ARGS...`
    pub fn spawn(config: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-sidecar"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env(
                "SLUICE_LOG",
                "warn,sluice_sidecar::runtime=info,sluice_sidecar::shared=info",
            )
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sluice-sidecar");
        let stderr = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
        let bound = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let tell = bound.clone();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let pid = child.id();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let fields = &event["fields"];
                let addr = fields["addr"]
                    .as_str()
                    .or(fields["admin_addr"].as_str())
                    .and_then(|a| a.parse().ok());
                match (fields["message"].as_str(), addr) {
                    (Some(message), Some(addr)) => {
                        let integration = fields["integration"].as_str().unwrap_or("").to_string();
                        tell.0
                            .lock()
                            .unwrap()
                            .push((message.to_string(), integration, addr));
                        tell.1.notify_all();
                    }
                    _ => eprintln!("sluice-sidecar[{pid}]: {line}"),
                }
            }
        });
        SidecarProcess { child, bound, log }
    }

    /// Every line the sidecar logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The address the log line `message` (for `integration`, or any) named.
    fn bound(&mut self, message: &str, integration: &str) -> SocketAddr {
        let until = Instant::now() + Duration::from_secs(10);
        let (lock, changed) = &*self.bound;
        let mut seen = lock.lock().unwrap();
        loop {
            if let Some((_, _, addr)) = seen
                .iter()
                .find(|(m, i, _)| m == message && (integration.is_empty() || i == integration))
            {
                return *addr;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(seen);
                panic!(
                    "the sidecar did not log {message:?} {integration} within 10 s; it {}",
                    self.state()
                );
            }
            seen = changed.wait_timeout(seen, left).unwrap().0;
        }
    }

    pub fn ingress_addr(&mut self) -> SocketAddr {
        self.bound("webhook ingress listening", "")
    }

    pub fn admin_addr(&mut self) -> SocketAddr {
        self.bound("admin listening", "")
    }

    pub fn egress_addr(&mut self, integration: &str) -> SocketAddr {
        self.bound("egress listening", integration)
    }

    pub fn state(&mut self) -> String {
        match self.child.try_wait() {
            Ok(None) => "is still running".into(),
            Ok(Some(status)) => format!("exited: {status}"),
            Err(error) => format!("cannot be waited for: {error}"),
        }
    }

    /// SIGTERM, as the kubelet stops a pod, and waits (at most 15 s) for
    /// the drain to end.
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "the sidecar stopped with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the sidecar did not stop within 15 s of SIGTERM");
    }

    pub fn kill_9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}
