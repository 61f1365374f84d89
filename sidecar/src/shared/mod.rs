//! State shared by every sidecar of an integration, on Redis (or Valkey):
//! `scope: Cluster` limits ([`limits`]) and webhooks.
//!
//! One multiplexed connection per sidecar (concurrent calls are pipelined
//! on it; it reconnects by itself). Every call is bounded by a timeout, and
//! a failed or late call marks the engine down: while down nobody waits on
//! it (limits decide on the pod's share, webhooks answer 503) and a
//! supervisor pings it until it answers, which brings it back. Without
//! `--shared-state` none of this exists and each pod keeps its own state.

pub mod cli;
pub mod limits;
pub mod polls;
pub mod quotas;
pub mod webhooks;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisResult};
use tokio::sync::Notify;

use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{Metrics, SharedCallLabels, SharedTargetLabels};

/// The key of one piece of an integration's shared state. Every key of an
/// integration carries the hash tag `{integration}` (its `namespace/name`):
/// one script may touch several, and Redis Cluster keeps them on one node.
pub(crate) fn key(integration: &str, kind: &str, name: &str) -> String {
    format!("sluice:{{{integration}}}:{kind}:{name}")
}

/// How often an engine that is down is asked whether it is back.
pub const PROBE_PERIOD: Duration = Duration::from_millis(250);

/// The default bound on one call: a healthy Redis beside the cluster
/// answers in well under a millisecond; past this a request stops waiting
/// for it and the pod decides alone.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SharedStateError {
    /// The URL is never echoed: it may hold a password.
    #[error("--shared-state: {0}")]
    Settings(String),
    #[error("the shared state ({0}) is unreachable")]
    Down(String),
    #[error("the shared state ({0}) did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("the shared state ({0}) failed {1}: {2}")]
    Call(String, &'static str, String),
    /// Accepting would not be durable: the server does not write to disk
    /// before it answers (`appendonly no`, or `appendfsync` other than
    /// `always` on a server without `WAITAOF`).
    #[error("the shared state ({0}) does not store durably: {1}")]
    NotDurable(String, String),
    /// The server answered with an error on purpose (a script error, a
    /// missing ACL permission): the connection is fine.
    #[error("the shared state ({0}) refused {1}: {2}")]
    Refused(String, &'static str, String),
}

/// Where the shared state is and how to reach it. Not `Debug`: it holds the
/// password.
pub struct Settings {
    connection: redis::ConnectionInfo,
    tls_root: Option<Vec<u8>>,
    /// Names this sidecar to the others (its pod's name in a cluster).
    pub identity: String,
    pub call_timeout: Duration,
}

impl Settings {
    /// `redis://HOST:PORT[/DB]` or `rediss://` (TLS), a password in the URL
    /// or given apart (from a file; it wins over the URL's), and for TLS the
    /// CA bundle when the server's certificate is not from a public CA.
    pub fn new(
        url: &str,
        password: Option<String>,
        ca_pem: Option<Vec<u8>>,
        identity: String,
        call_timeout: Duration,
    ) -> Result<Self, SharedStateError> {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(SharedStateError::Settings(
                "must start with redis:// or rediss://".into(),
            ));
        }
        let mut connection = url
            .into_connection_info()
            // Its message may quote the URL, password and all.
            .map_err(|_| SharedStateError::Settings("not a valid Redis URL".into()))?;
        if let Some(password) = password {
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return Err(SharedStateError::Settings(
                    "the password file is empty".into(),
                ));
            }
            let redis = connection.redis_settings().clone().set_password(password);
            connection = connection.set_redis_settings(redis);
        }
        if ca_pem.is_some() && !matches!(connection.addr(), ConnectionAddr::TcpTls { .. }) {
            return Err(SharedStateError::Settings(
                "a CA file needs a rediss:// URL".into(),
            ));
        }
        if identity.is_empty() || identity.len() > 253 {
            return Err(SharedStateError::Settings(
                "the identity must be 1 to 253 characters (the pod's name)".into(),
            ));
        }
        Ok(Self {
            connection,
            tls_root: ca_pem,
            identity,
            call_timeout,
        })
    }

    /// Where it points, for logs and errors: never the password.
    pub fn describe(&self) -> String {
        let db = self.connection.redis_settings().db();
        match self.connection.addr() {
            ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{db}"),
            ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}/{db}"),
            other => format!("{other}/{db}"),
        }
    }
}

/// A handle on the engine; cheap to clone.
#[derive(Clone)]
pub struct SharedState(Arc<Inner>);

struct Inner {
    client: redis::Client,
    connection: RwLock<Option<ConnectionManager>>,
    up: AtomicBool,
    identity: Arc<str>,
    call_timeout: Duration,
    describe: String,
    /// Wakes the supervisor as soon as a call fails.
    failed: Notify,
    up_gauge: Gauge,
    metrics: Metrics,
    durability: RwLock<Durability>,
}

/// How a write is known to be on the server's disk before the provider's 200.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Redis/Valkey 7.2 or later: `WAITAOF 1 0` after the write.
    WaitAof,
    /// `appendonly yes` and `appendfsync always`: the answer comes after the fsync.
    FsyncAlways,
    /// `CONFIG GET` is not permitted: the server must be run with
    /// `appendfsync always` (docs/shared-state.md), which cannot be checked.
    Unchecked,
    /// Writes may be lost in a crash: webhooks are refused with 503.
    No(String),
}

impl SharedState {
    /// Starts down, and connects in the background: a sidecar starts and
    /// serves whether or not the engine is reachable. Must run inside a
    /// Tokio runtime; the supervisor ends when the last handle is dropped.
    pub fn connect(settings: Settings, metrics: Metrics) -> Result<Self, SharedStateError> {
        let describe = settings.describe();
        let client = match settings.tls_root {
            Some(root) => redis::Client::build_with_tls(
                settings.connection,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            ),
            None => redis::Client::open(settings.connection),
        }
        .map_err(|e| SharedStateError::Settings(e.to_string()))?;
        let up_gauge = metrics
            .shared_state_up
            .get_or_create(&SharedTargetLabels {
                target: Arc::from(describe.as_str()),
            })
            .clone();
        up_gauge.set(0);
        let state = Self(Arc::new(Inner {
            client,
            connection: RwLock::new(None),
            up: AtomicBool::new(false),
            identity: Arc::from(settings.identity.as_str()),
            call_timeout: settings.call_timeout,
            describe,
            failed: Notify::new(),
            up_gauge,
            metrics,
            durability: RwLock::new(Durability::Unchecked),
        }));
        tokio::spawn(supervise(Arc::downgrade(&state.0)));
        Ok(state)
    }

    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Relaxed)
    }

    /// This sidecar's name among the others.
    pub fn identity(&self) -> &str {
        &self.0.identity
    }

    pub fn describe(&self) -> &str {
        &self.0.describe
    }

    /// How writes are made durable, as found when the engine last came up.
    pub fn durability(&self) -> Durability {
        self.0.durability.read().expect("durability lock").clone()
    }

    /// Returns once what this sidecar wrote is on the server's disk, or an
    /// error when that cannot be known.
    pub(crate) async fn wait_durable(&self, op: &'static str) -> Result<(), SharedStateError> {
        match self.durability() {
            Durability::FsyncAlways | Durability::Unchecked => Ok(()),
            Durability::No(why) => Err(SharedStateError::NotDurable(self.0.describe.clone(), why)),
            Durability::WaitAof => {
                let wait = self.durable_timeout();
                let synced: Vec<i64> = self
                    .call_within(op, wait, |mut c| async move {
                        redis::cmd("WAITAOF")
                            .arg(1)
                            .arg(0)
                            .arg(wait.as_millis() as u64)
                            .query_async(&mut c)
                            .await
                    })
                    .await?;
                match synced.first() {
                    Some(n) if *n >= 1 => Ok(()),
                    _ => Err(SharedStateError::NotDurable(
                        self.0.describe.clone(),
                        "WAITAOF: the write is not on the server's disk yet".into(),
                    )),
                }
            }
        }
    }

    /// A write that must reach the disk may wait longer than a limit's
    /// admission: providers wait seconds for a webhook's answer.
    pub(crate) fn durable_timeout(&self) -> Duration {
        self.0.call_timeout.max(Duration::from_secs(2))
    }

    /// One round trip: fails at once while the engine is down, and marks it
    /// down when the call fails or takes longer than the call timeout.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        f: F,
    ) -> Result<T, SharedStateError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.call_within(op, self.0.call_timeout, f).await
    }

    /// [`SharedState::call`] with its own timeout.
    pub(crate) async fn call_within<T, F, Fut>(
        &self,
        op: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, SharedStateError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let connection = match self.0.connection.read().expect("connection lock").clone() {
            Some(c) if self.is_up() => c,
            _ => return Err(SharedStateError::Down(self.0.describe.clone())),
        };
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, f(connection)).await;
        let (outcome, result) = match result {
            Ok(Ok(value)) => ("ok", Ok(value)),
            Ok(Err(error)) if is_refusal(&error) => (
                "refused",
                Err(SharedStateError::Refused(
                    self.0.describe.clone(),
                    op,
                    error.to_string(),
                )),
            ),
            Ok(Err(error)) => {
                self.mark_down(op, &error.to_string());
                (
                    "error",
                    Err(SharedStateError::Call(
                        self.0.describe.clone(),
                        op,
                        error.to_string(),
                    )),
                )
            }
            Err(_) => {
                self.mark_down(op, "timed out");
                (
                    "timeout",
                    Err(SharedStateError::Timeout(self.0.describe.clone(), timeout)),
                )
            }
        };
        let labels = SharedCallLabels { op, outcome };
        self.0
            .metrics
            .shared_state_calls
            .get_or_create(&labels)
            .inc();
        self.0
            .metrics
            .shared_state_call_duration
            .get_or_create(&SharedCallLabels { op, outcome })
            .observe(started.elapsed().as_secs_f64());
        result
    }

    fn mark_down(&self, op: &'static str, why: &str) {
        if self.0.up.swap(false, Ordering::Relaxed) {
            self.0.up_gauge.set(0);
            tracing::error!(shared_state = %self.0.describe, op, error = why, "the shared state failed: Cluster limits fall back to this pod's share and webhooks are refused with 503 until it answers again");
        }
        self.0.failed.notify_one();
    }
}

/// An answer the server gave on purpose (a script error, a wrong type): the
/// connection is fine, so the engine is not marked down.
fn is_refusal(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Server(
            ServerErrorKind::ResponseError
                | ServerErrorKind::NoPerm
                | ServerErrorKind::ExecAbort
                | ServerErrorKind::NoScript
        ) | ErrorKind::Parse
            | ErrorKind::UnexpectedReturnType
    )
}

/// Connects, then probes the engine whenever it is down, and brings it
/// back up when it answers a PING.
async fn supervise(inner: std::sync::Weak<Inner>) {
    let mut logged_unreachable = false;
    loop {
        let Some(state) = inner.upgrade().map(SharedState) else {
            return;
        };
        if !state.is_up() {
            match probe(&state).await {
                Ok(durability) => {
                    if let Durability::No(why) = &durability {
                        tracing::error!(shared_state = %state.0.describe, reason = %why, "the shared state does not write to disk before it answers: webhooks are refused with 503 until it does (run it with appendonly yes and appendfsync always)");
                    }
                    *state.0.durability.write().expect("durability lock") = durability;
                    state.0.up.store(true, Ordering::Relaxed);
                    state.0.up_gauge.set(1);
                    tracing::info!(shared_state = %state.0.describe, identity = %state.0.identity, "the shared state answers: Cluster limits and webhooks are shared");
                    logged_unreachable = false;
                }
                Err(error) if !logged_unreachable => {
                    tracing::warn!(shared_state = %state.0.describe, %error, "cannot reach the shared state yet; trying every {PROBE_PERIOD:?}");
                    logged_unreachable = true;
                }
                Err(_) => {}
            }
        }
        if state.is_up() {
            // Sleep until a call fails, looking now and then whether the
            // handle is gone (this one keeps it alive for that long).
            let _ = tokio::time::timeout(Duration::from_secs(1), state.0.failed.notified()).await;
        } else {
            tokio::time::sleep(PROBE_PERIOD).await;
        }
    }
}

async fn probe(state: &SharedState) -> Result<Durability, String> {
    let timeout = state.0.call_timeout.max(Duration::from_millis(500));
    let existing = state.0.connection.read().expect("connection lock").clone();
    let mut connection = match existing {
        Some(c) => c,
        None => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            let c = tokio::time::timeout(
                timeout * 2,
                state.0.client.get_connection_manager_with_config(config),
            )
            .await
            .map_err(|_| "connecting timed out".to_string())?
            .map_err(|e| e.to_string())?;
            *state.0.connection.write().expect("connection lock") = Some(c.clone());
            c
        }
    };
    let pong: String =
        tokio::time::timeout(timeout, redis::cmd("PING").query_async(&mut connection))
            .await
            .map_err(|_| "PING timed out".to_string())?
            .map_err(|e| e.to_string())?;
    if pong != "PONG" {
        return Err(format!("PING answered {pong:?}"));
    }
    Ok(durability(&mut connection, timeout).await)
}

/// Finds how writes reach the server's disk (see [`Durability`]).
async fn durability(connection: &mut ConnectionManager, timeout: Duration) -> Durability {
    let info: Option<String> = tokio::time::timeout(
        timeout,
        redis::cmd("INFO").arg("server").query_async(connection),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let version = info
        .as_deref()
        .and_then(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .map(str::trim)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let mut numbers = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let config = |name: &'static str| {
        let mut connection = connection.clone();
        async move {
            let pair: Option<Vec<String>> = tokio::time::timeout(
                timeout,
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut connection),
            )
            .await
            .ok()
            .and_then(Result::ok);
            pair.and_then(|p| p.get(1).cloned())
        }
    };
    let appendonly = config("appendonly").await;
    if appendonly.as_deref() == Some("no") {
        return Durability::No("appendonly is no".into());
    }
    if (major, minor) >= (7, 2) {
        return Durability::WaitAof;
    }
    match config("appendfsync").await.as_deref() {
        Some("always") if appendonly.as_deref() == Some("yes") => Durability::FsyncAlways,
        Some(other) => Durability::No(format!(
            "appendfsync is {other} on Redis {version}, which has no WAITAOF"
        )),
        None => Durability::Unchecked,
    }
}
