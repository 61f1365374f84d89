//! A real `redis-server` (Debian's package; `tests/run` installs it) for the
//! shared-state tests: one per test, on a free loopback port, with AOF
//! `always` in its own directory, stopped when dropped. `stop` and `start`
//! again keep the port and the directory, so a restart reloads the AOF.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    password: Option<String>,
    /// TLS only (`rediss://`): the CA that signed its certificate.
    pub ca_file: Option<PathBuf>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one without a password.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    pub fn start_with(password: Option<&str>) -> Self {
        Self::start_full(password, false)
    }

    /// TLS only, with a certificate for `localhost` from a CA of its own
    /// (`ca_file`).
    pub fn start_tls() -> Self {
        Self::start_full(None, true)
    }

    fn start_full(password: Option<&str>, tls: bool) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sluice-redis-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ca_file = tls.then(|| write_certificates(&dir));
        let mut server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            password: password.map(str::to_string),
            ca_file,
            child: None,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        match self.ca_file {
            Some(_) => format!("rediss://localhost:{}/0", self.addr.port()),
            None => format!("redis://{}/0", self.addr),
        }
    }

    /// Starts it again after `stop`, from its AOF.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let binary = which("redis-server");
        let mut command = Command::new(&binary);
        let port = self.addr.port().to_string();
        match &self.ca_file {
            Some(ca) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(ca),
            None => command.args(["--port", &port]),
        };
        command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no", "--loglevel", "warning"])
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < until,
                "redis-server did not answer on {} within 10s; log:\n{}",
                self.addr,
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it (SIGKILL: nothing is flushed beyond what AOF `always` wrote).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it answers PING (a raw RESP exchange; no client library).
    fn answers(&self) -> bool {
        if self.ca_file.is_some() {
            return self.cli(&["ping"]).trim() == "PONG";
        }
        use std::io::{Read, Write};
        let Ok(mut s) =
            std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let hello = match &self.password {
            Some(p) => format!("AUTH {p}\r\nPING\r\n"),
            None => "PING\r\n".to_string(),
        };
        if s.write_all(hello.as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.ends_with(b"+PONG\r\n") {
                return true;
            }
        }
        false
    }

    /// Runs `redis-cli` against it and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new(which("redis-cli"));
        command.args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()]);
        if let Some(ca) = &self.ca_file {
            command
                .args(["--tls", "--sni", "localhost", "--cacert"])
                .arg(ca);
        }
        if let Some(p) = &self.password {
            command.args(["-a", p, "--no-auth-warning"]);
        }
        let out = command.args(args).output().expect("running redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is missing: tests/run installs it (apt-get install redis-server)");
}

/// A CA and a server certificate for `localhost` in `dir`; returns the CA's file.
fn write_certificates(dir: &Path) -> PathBuf {
    let (ca, leaf, key) = super::localhost_certificate();
    std::fs::write(dir.join("server.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    ca_file
}
