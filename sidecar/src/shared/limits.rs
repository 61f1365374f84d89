//! `scope: Cluster` limits on the shared state: every sidecar of an
//! integration draws from one limit, decided on the server by one script
//! call per admission (`admit.lua`: the sliding window and the burst, the
//! same rules as the pod's own limiter, on the server's clock), so nothing
//! is read, modified and written back by two sidecars at once.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{SharedState, SharedStateError, key};

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("admit.lua")));
static PAUSE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("pause.lua")));
static FOLLOW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("follow.lua")));

/// The provider's budget as every sidecar enforces it (see `follow.lua`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedBudget {
    pub remaining: u64,
    pub ready: u64,
    pub reset: Duration,
    pub interval: Duration,
    /// How long ago the request the provider answered was admitted: what
    /// any sidecar admitted since comes off `remaining`.
    pub age: Duration,
}

/// How many buckets one window is counted in: an admission is remembered
/// up to one bucket longer than exactly (1 % of the window), and a limit
/// takes at most this many hash fields whatever its rate.
pub const BUCKETS_PER_WINDOW: u32 = 100;

/// How long a sidecar's "requests waiting at priority P" stands without
/// being renewed; the limiter renews it at least every second.
pub const WAITING_LIFETIME: Duration = Duration::from_secs(2);

/// One limit as the shared state counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedLimit {
    key: String,
    /// Who waits at which priority (see `admit.lua`).
    waiting: String,
    requests: u32,
    window_us: u64,
    bucket_us: u64,
    interval_us: u64,
    tolerance_us: u64,
}

impl SharedLimit {
    /// At most `requests` in any `window`, spaced `interval` apart after a
    /// burst (`tolerance` ahead of now), for every sidecar of `integration`.
    pub fn new(
        integration: &str,
        limit: &str,
        requests: u32,
        window: Duration,
        interval: Duration,
        tolerance: Duration,
    ) -> Self {
        let window_us = micros(window).max(1);
        Self {
            key: key(integration, "limit", limit),
            waiting: key(integration, "limit-waiting", limit),
            requests: requests.max(1),
            window_us,
            bucket_us: window_us.div_ceil(u64::from(BUCKETS_PER_WINDOW)),
            interval_us: micros(interval),
            tolerance_us: micros(tolerance),
        }
    }
}

impl SharedLimit {
    /// The same limit for one value of a keyed limit: its own keys, named by
    /// a digest of the value (bounded length, the same at every sidecar
    /// whatever its version, and no account id in the key space).
    pub fn for_value(&self, value: &[u8]) -> SharedLimit {
        let digest = ring::digest::digest(&ring::digest::SHA256, value);
        let hex: String = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        SharedLimit {
            key: format!("{}:{hex}", self.key),
            waiting: format!("{}:{hex}", self.waiting),
            ..self.clone()
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The shared state's answer for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Refused: when to ask again, for each limit in the order given.
    Wait(Vec<Duration>),
}

impl SharedState {
    /// Admits one request under every limit in `limits` at the same instant,
    /// or says when each will have room. `priority` is the request's;
    /// `still_waiting` the highest priority of this sidecar's other requests
    /// queued on these limits, which the other sidecars then let go first.
    pub async fn admit(
        &self,
        limits: &[&SharedLimit],
        priority: u8,
        still_waiting: Option<u8>,
    ) -> Result<Admission, SharedStateError> {
        let mut invocation = ADMIT.prepare_invoke();
        for limit in limits {
            invocation.key(&limit.key).key(&limit.waiting);
        }
        invocation
            .arg(self.identity())
            .arg(priority)
            .arg(still_waiting.map_or(-1, i64::from))
            .arg(micros(WAITING_LIFETIME));
        for limit in limits {
            invocation
                .arg(limit.requests)
                .arg(limit.window_us)
                .arg(limit.bucket_us)
                .arg(limit.interval_us)
                .arg(limit.tolerance_us);
        }
        let answer: Vec<u64> = self
            .call("admit", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        match answer.split_first() {
            Some((1, _)) => Ok(Admission::Admitted),
            Some((0, waits)) if waits.len() == limits.len() => Ok(Admission::Wait(
                waits.iter().map(|&us| Duration::from_micros(us)).collect(),
            )),
            _ => Err(SharedStateError::Call(
                self.describe().to_string(),
                "admit",
                format!("unexpected answer {answer:?}"),
            )),
        }
    }

    /// Sets the provider's budget on `limit` for every sidecar, or lifts
    /// it (`None`): the provider's headers said how much is left.
    pub async fn follow(
        &self,
        limit: &SharedLimit,
        budget: Option<SharedBudget>,
    ) -> Result<(), SharedStateError> {
        let mut invocation = FOLLOW.prepare_invoke();
        invocation.key(&limit.key);
        match budget {
            Some(b) => invocation
                .arg(b.remaining.min(i64::MAX as u64))
                .arg(b.ready.min(i64::MAX as u64))
                .arg(micros(b.reset))
                .arg(micros(b.interval))
                .arg(micros(b.age)),
            None => invocation.arg(-1).arg(0).arg(0).arg(0).arg(0),
        };
        let _: i64 = self
            .call("follow", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    /// Holds `limits` for `wait` at every sidecar: the provider said when
    /// to come back.
    pub async fn pause(
        &self,
        limits: &[&SharedLimit],
        wait: Duration,
    ) -> Result<(), SharedStateError> {
        let mut invocation = PAUSE.prepare_invoke();
        invocation.arg(micros(wait));
        for limit in limits {
            invocation.key(&limit.key).arg(limit.tolerance_us);
        }
        let _: i64 = self
            .call("pause", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }
}
