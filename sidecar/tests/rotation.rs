//! Key rotation under load (about 200 requests a second): however the two
//! secret files are written, whenever the provider switches, and even with
//! a wrong new key, no 401 reaches the app while any accepted key exists.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_sidecar::config::IntegrationConfig;
use support::*;
use tokio::time::Instant;

/// A provider that accepts the bearer keys in its set.
struct Provider {
    upstream: TestUpstream,
    accepts: Arc<Mutex<HashSet<String>>>,
}

impl Provider {
    async fn start(keys: &[&str]) -> Self {
        let accepts = Arc::new(Mutex::new(keys.iter().map(|k| k.to_string()).collect()));
        let allowed: Arc<Mutex<HashSet<String>>> = Arc::clone(&accepts);
        let upstream = TestUpstream::plain(handler(move |seen, _| {
            let key = seen
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            let ok = allowed.lock().unwrap().contains(&key);
            async move {
                if ok {
                    respond(200, "ok")
                } else {
                    respond(401, "bad key")
                }
            }
        }))
        .await;
        Self { upstream, accepts }
    }

    fn accept_only(&self, keys: &[&str]) {
        *self.accepts.lock().unwrap() = keys.iter().map(|k| k.to_string()).collect();
    }
}

struct Files(PathBuf);

impl Files {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sluice-rotation-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, file: &str, value: &str) -> PathBuf {
        let path = self.0.join(file);
        // As the kubelet does: the new content appears whole.
        let staged = self.0.join(format!(".{file}.new"));
        std::fs::write(&staged, value).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(provider: &Provider, files: &Files, with_previous: bool) -> IntegrationConfig {
    let previous = if with_previous {
        format!(
            ", previous: {{secret: {{path: '{}'}}, validUntil: '2099-01-01T00:00:00Z'}}",
            files.0.join("previous").display()
        )
    } else {
        String::new()
    };
    serde_yaml_ng::from_str(&format!(
        "name: keys\nlisten: 127.0.0.1:0\nupstream: {{baseUrl: '{}', timeout: 2s, totalTimeout: 5s}}\nauth: {{type: bearer, secret: {{path: '{}'}}{previous}}}\nretry: {{maxAttempts: 1}}\n",
        provider.upstream.url(),
        files.0.join("current").display()
    ))
    .unwrap()
}

/// What the app saw under load.
#[derive(Default)]
struct Seen {
    ok: AtomicUsize,
    unauthorized: AtomicUsize,
    other: AtomicUsize,
}

/// Runs `steps` (at their offsets from the start) while 4 clients send
/// GETs, about 200 a second together, until `until`.
async fn under_load(
    sidecar: &sluice_sidecar::Sidecar,
    until: Duration,
    steps: Vec<(Duration, Box<dyn FnOnce() + Send>)>,
) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let app = App::new(sidecar.egress_addr("keys").unwrap());
        let seen = seen.clone();
        clients.push(tokio::spawn(async move {
            while started.elapsed() < until {
                let counter = match app.get("/x").await.status {
                    200 => &seen.ok,
                    401 => &seen.unauthorized,
                    _ => &seen.other,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for (at, step) in steps {
        tokio::time::sleep_until(started + at).await;
        step();
    }
    for client in clients {
        client.await.unwrap();
    }
    seen
}

async fn fallback_active(sidecar: &sluice_sidecar::Sidecar) -> f64 {
    let metrics = admin(sidecar, "/metrics").await.text();
    metric(
        &metrics,
        "sluice_credential_fallback_active{integration=\"keys\"}",
    )
}

fn assert_no_401(seen: &Seen) {
    let (ok, unauthorized, other) = (
        seen.ok.load(Ordering::Relaxed),
        seen.unauthorized.load(Ordering::Relaxed),
        seen.other.load(Ordering::Relaxed),
    );
    assert!(ok > 300, "the load ran: {ok} answered");
    assert_eq!((unauthorized, other), (0, 0), "of {ok} requests");
}

/// The files are polled once a second: 1.5 s apart, each write is seen on
/// its own (more adversarial than the 0.3 s of the field report).
const APART: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_written_before_previous_costs_no_401() {
    let provider = Provider::start(&["old"]).await;
    let files = Files::new("current-first");
    files.write("current", "old");
    files.write("previous", "older");
    let sidecar = start(vec![config(&provider, &files, true)]).await;
    let dir = files.0.clone();
    let write = move |file: &'static str, value: &'static str| -> Box<dyn FnOnce() + Send> {
        let dir = dir.clone();
        Box::new(move || std::fs::write(dir.join(file), value).unwrap())
    };
    let second = Duration::from_secs(1);
    let seen = under_load(
        &sidecar,
        second * 5,
        vec![
            (second, write("current", "new")),
            (second + APART, write("previous", "old")),
        ],
    )
    .await;
    assert_no_401(&seen);
    assert_eq!(
        fallback_active(&sidecar).await,
        1.0,
        "the new key is refused"
    );
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_written_before_current_costs_no_401() {
    let provider = Provider::start(&["old"]).await;
    let files = Files::new("previous-first");
    files.write("current", "old");
    files.write("previous", "older");
    let sidecar = start(vec![config(&provider, &files, true)]).await;
    let dir = files.0.clone();
    let write = move |file: &'static str, value: &'static str| -> Box<dyn FnOnce() + Send> {
        let dir = dir.clone();
        Box::new(move || std::fs::write(dir.join(file), value).unwrap())
    };
    let second = Duration::from_secs(1);
    let seen = under_load(
        &sidecar,
        second * 5,
        vec![
            (second, write("previous", "old")),
            (second + APART, write("current", "new")),
        ],
    )
    .await;
    assert_no_401(&seen);
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_provider_cutover_costs_no_401() {
    // The provider accepts only the old key, then at once only the new one.
    let provider = Arc::new(Provider::start(&["old"]).await);
    let files = Files::new("cutover");
    files.write("current", "old");
    let sidecar = start(vec![config(&provider, &files, false)]).await;
    let dir = files.0.clone();
    let cutover = provider.clone();
    let second = Duration::from_secs(1);
    let seen = under_load(
        &sidecar,
        second * 5,
        vec![
            (
                second,
                Box::new(move || std::fs::write(dir.join("current"), "new").unwrap()),
            ),
            (second * 3, Box::new(move || cutover.accept_only(&["new"]))),
        ],
    )
    .await;
    assert_no_401(&seen);
    assert_eq!(
        fallback_active(&sidecar).await,
        0.0,
        "after the cutover the current key is accepted and sent first again"
    );
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_new_key_costs_no_401_one_probe_a_second_and_an_alert() {
    let provider = Provider::start(&["old"]).await;
    let files = Files::new("wrong");
    files.write("current", "old");
    let sidecar = start(vec![config(&provider, &files, false)]).await;
    let dir = files.0.clone();
    let second = Duration::from_secs(1);
    let seen = under_load(
        &sidecar,
        second * 6,
        vec![(
            second,
            Box::new(move || std::fs::write(dir.join("current"), "wrong").unwrap()),
        )],
    )
    .await;
    assert_no_401(&seen);
    assert_eq!(fallback_active(&sidecar).await, 1.0, "the alert's gauge");
    // Each answered request reached the provider once, plus one probe of
    // the wrong key a second (and the first request that found it wrong).
    let ok = seen.ok.load(Ordering::Relaxed);
    let sent = provider.upstream.count();
    assert!(
        sent <= ok + 10,
        "{sent} sends for {ok} requests: the fallback must go first, not second"
    );
    sidecar.shutdown().await;
}
