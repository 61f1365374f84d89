//! A toxiproxy server (built by tests/tools/build) on loopback, stopped on
//! drop: the faults users produce with it, between the sidecar and a peer.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{App, tool};

/// A toxiproxy server on loopback, stopped on drop.
pub struct Toxiproxy {
    child: Child,
    api: App,
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Toxiproxy {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(tool("toxiproxy-server"))
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("toxiproxy-server starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "toxiproxy did not listen within 10s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            api: App::new(addr),
        }
    }

    /// A proxy to `upstream`; returns where it listens.
    pub async fn proxy(&self, name: &str, upstream: SocketAddr) -> SocketAddr {
        let created = self
            .call(
                "/proxies",
                serde_json::json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream.to_string()}),
            )
            .await;
        created["listen"].as_str().unwrap().parse().unwrap()
    }

    pub async fn toxic(&self, proxy: &str, kind: &str, attributes: serde_json::Value) {
        self.call(
            &format!("/proxies/{proxy}/toxics"),
            serde_json::json!({"type": kind, "stream": "downstream", "attributes": attributes}),
        )
        .await;
    }

    /// Removes a toxic (named `<type>_<stream>` when created by `toxic`).
    pub async fn remove_toxic(&self, proxy: &str, name: &str) {
        let answer = self
            .api
            .send(
                "DELETE",
                &format!("/proxies/{proxy}/toxics/{name}"),
                &[],
                Bytes::new(),
            )
            .await;
        assert!(answer.status < 300, "toxiproxy: {}", answer.text());
    }

    pub async fn call(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let answer = self
            .api
            .send("POST", path, &[], Bytes::from(body.to_string()))
            .await;
        assert!(answer.status < 300, "toxiproxy {path}: {}", answer.text());
        serde_json::from_slice(&answer.body).unwrap()
    }
}
