//! One quota's usage in its current window, kept where it outlives the
//! process: the state directory (this pod alone) or the shared state (every
//! sidecar of the integration).
//!
//! On disk the tally reserves ahead: before the usage passes what the file
//! says, the file is moved a step (1 % of the limit, at least 1) past it
//! and synced, and only then is the request counted. A crash therefore
//! loses nothing counted; it can only over-count by less than a step. A
//! clean stop writes the exact usage.
//!
//! With shared state the usage lives on the server (`shared/quota.lua`);
//! while it is unreachable the tally counts here, from the last usage the
//! server gave, and adds what it counted meanwhile on its next call.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

use crate::config::{QuotaPeriod, QuotaWindow};
use crate::shared::SharedState;
use crate::shared::quotas::SharedQuota;

/// A usage file that cannot be read: the sidecar will not guess a usage
/// (starting from zero could spend the quota twice).
#[derive(Debug, thiserror::Error)]
#[error("quota usage file {path}: {reason} (remove it to start the window from zero)")]
pub struct TallyError {
    pub path: PathBuf,
    pub reason: String,
}

/// The answer to one charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Counted; `used` includes it.
    Charged { used: u64, window: QuotaWindow },
    /// It does not fit in what is left of `window`.
    Exhausted { used: u64, window: QuotaWindow },
}

/// The usage file: the window it is for and the units it reserves.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageFile {
    window_start: i64,
    used: u64,
}

#[derive(Debug)]
struct Usage {
    window: QuotaWindow,
    used: u64,
    /// What the usage file says: never below `used`.
    reserved: u64,
    /// With shared state: counted here while the server was unreachable
    /// (negative: refunds), not yet added there.
    pending: i64,
}

impl Usage {
    fn empty(window: QuotaWindow) -> Self {
        Self {
            window,
            used: 0,
            reserved: 0,
            pending: 0,
        }
    }

    /// Starts the window `now` falls in once the current one has ended (a
    /// clock stepping back does not restart a window).
    fn roll(&mut self, window: QuotaWindow) {
        if window.start > self.window.start {
            *self = Usage::empty(window);
        }
    }
}

/// Where the usage outlives the process.
enum Store {
    /// Nowhere (no state directory): tests and embedding.
    Memory,
    File(PathBuf),
    Shared {
        state: SharedState,
        quota: SharedQuota,
        fallbacks: Counter,
    },
}

pub struct Tally {
    period: QuotaPeriod,
    /// How far ahead of the usage the file is moved.
    step: u64,
    store: Store,
    usage: Mutex<Usage>,
    /// One writer of the usage file at a time; requests that need room
    /// wait for it, the rest count in memory.
    writer: tokio::sync::Mutex<()>,
}

/// How many rounds a charge may take to find room ahead on disk: each
/// round either counts or moves the file past the usage.
const MAX_RESERVE_ROUNDS: usize = 4;

impl Tally {
    /// Memory only.
    pub fn in_memory(period: QuotaPeriod, limit: u64, now: i64) -> Self {
        Self::with_store(
            period,
            limit,
            Store::Memory,
            Usage::empty(period.window_at(now)),
        )
    }

    /// Kept in `path`; what it holds for the current window is where the
    /// usage starts.
    pub fn in_file(
        period: QuotaPeriod,
        limit: u64,
        path: PathBuf,
        now: i64,
    ) -> Result<Self, TallyError> {
        let window = period.window_at(now);
        let mut usage = Usage::empty(window);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: UsageFile = serde_json::from_slice(&bytes).map_err(|e| TallyError {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                if file.window_start == window.start {
                    usage.used = file.used;
                    usage.reserved = file.used;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(TallyError {
                    path,
                    reason: e.to_string(),
                });
            }
        }
        Ok(Self::with_store(period, limit, Store::File(path), usage))
    }

    /// Kept on the shared state; `fallbacks` counts charges decided here
    /// while it was unreachable.
    pub fn shared(
        period: QuotaPeriod,
        limit: u64,
        state: SharedState,
        quota: SharedQuota,
        fallbacks: Counter,
        now: i64,
    ) -> Self {
        let store = Store::Shared {
            state,
            quota,
            fallbacks,
        };
        Self::with_store(period, limit, store, Usage::empty(period.window_at(now)))
    }

    fn with_store(period: QuotaPeriod, limit: u64, store: Store, usage: Usage) -> Self {
        Self {
            period,
            step: (limit / 100).max(1),
            store,
            usage: Mutex::new(usage),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    pub fn period(&self) -> QuotaPeriod {
        self.period
    }

    pub fn is_shared(&self) -> bool {
        matches!(self.store, Store::Shared { .. })
    }

    fn lock(&self, now: i64) -> std::sync::MutexGuard<'_, Usage> {
        let mut usage = self.usage.lock().expect("quota usage lock");
        usage.roll(self.period.window_at(now));
        usage
    }

    /// Counts `cost` at `now`, unless `limit` is given and it would pass it.
    pub async fn charge(&self, cost: u64, limit: Option<u64>, now: i64) -> Verdict {
        match &self.store {
            Store::Shared {
                state,
                quota,
                fallbacks,
            } => {
                if state.is_up() {
                    let (window, pending) = {
                        let mut usage = self.lock(now);
                        (usage.window, std::mem::take(&mut usage.pending))
                    };
                    match state
                        .charge_quota(quota, window, pending, cost, limit)
                        .await
                    {
                        Ok(answer) => {
                            let mut usage = self.lock(now);
                            if usage.window == window {
                                usage.used = answer.used.saturating_add_signed(usage.pending);
                            }
                            return if answer.admitted {
                                Verdict::Charged {
                                    used: answer.used,
                                    window,
                                }
                            } else {
                                Verdict::Exhausted {
                                    used: answer.used,
                                    window,
                                }
                            };
                        }
                        Err(error) => {
                            let mut usage = self.lock(now);
                            if usage.window == window {
                                usage.pending += pending;
                            }
                            tracing::debug!(%error, "quota counted on this pod: the shared state did not answer");
                        }
                    }
                }
                fallbacks.inc();
                self.charge_in_memory(cost, limit, now, true)
            }
            Store::Memory => self.charge_in_memory(cost, limit, now, false),
            Store::File(path) => self.charge_in_file(path, cost, limit, now).await,
        }
    }

    fn charge_in_memory(&self, cost: u64, limit: Option<u64>, now: i64, pending: bool) -> Verdict {
        let mut usage = self.lock(now);
        let verdict = charge_within(&mut usage, cost, limit, u64::MAX);
        if pending && matches!(verdict, Some(Verdict::Charged { .. })) {
            usage.pending = usage.pending.saturating_add_unsigned(cost);
        }
        verdict.expect("no reservation to stay within")
    }

    /// Counts within what the file reserves; past it, this request moves
    /// the reservation (one writer at a time) and counts under it, so the
    /// usage never passes what the file says.
    async fn charge_in_file(
        &self,
        path: &Path,
        cost: u64,
        limit: Option<u64>,
        now: i64,
    ) -> Verdict {
        for _ in 0..MAX_RESERVE_ROUNDS {
            {
                let mut usage = self.lock(now);
                let reserved = usage.reserved;
                if let Some(verdict) = charge_within(&mut usage, cost, limit, reserved) {
                    return verdict;
                }
            }
            let _writer = self.writer.lock().await;
            let (window, target) = {
                let usage = self.lock(now);
                // Others count only within the reservation meanwhile: past
                // both it and their usage, this cost always fits.
                let base = usage.used.max(usage.reserved);
                (
                    usage.window,
                    base.saturating_add(cost).saturating_add(self.step),
                )
            };
            if let Err(error) = write_usage(path.to_owned(), window, target).await {
                // Counted in memory all the same: the process still knows.
                tracing::error!(path = %path.display(), %error, "cannot write a quota's usage: a restart would forget what was counted since its last write");
            }
            let mut usage = self.lock(now);
            if usage.window == window {
                usage.reserved = usage.reserved.max(target);
                let reserved = usage.reserved;
                if let Some(verdict) = charge_within(&mut usage, cost, limit, reserved) {
                    return verdict;
                }
            }
            // The window ended while the file was written: again, in the new one.
        }
        self.charge_in_memory(cost, limit, now, false)
    }

    /// Gives back `cost` counted in `window` for a request that never
    /// reached the provider; returns the usage after it.
    pub async fn refund(&self, cost: u64, window: QuotaWindow, now: i64) -> u64 {
        let cost_signed = i64::try_from(cost).unwrap_or(i64::MAX);
        if let Store::Shared { state, quota, .. } = &self.store
            && state.is_up()
            && state
                .charge_quota(quota, window, -cost_signed, 0, None)
                .await
                .is_ok()
        {
            let mut usage = self.lock(now);
            if usage.window == window {
                usage.used = usage.used.saturating_sub(cost);
            }
            return usage.used;
        }
        let mut usage = self.lock(now);
        if usage.window == window {
            usage.used = usage.used.saturating_sub(cost);
            if self.is_shared() {
                usage.pending = usage.pending.saturating_sub(cost_signed);
            }
        }
        usage.used
    }

    /// The usage of the window holding `now`; with shared state, as the
    /// server has it (every sidecar's), when it answers.
    pub async fn refresh(&self, now: i64) -> u64 {
        let window = self.lock(now).window;
        if let Store::Shared { state, quota, .. } = &self.store
            && state.is_up()
            && let Ok(used) = state.quota_used(quota, window).await
        {
            let mut usage = self.lock(now);
            if usage.window == window {
                usage.used = used.saturating_add_signed(usage.pending);
            }
        }
        self.lock(now).used
    }

    /// Writes the exact usage (a clean stop), so a restart resumes from it.
    pub fn flush(&self) {
        let Store::File(path) = &self.store else {
            return;
        };
        let (window, used, reserved) = {
            let usage = self.usage.lock().expect("quota usage lock");
            (usage.window, usage.used, usage.reserved)
        };
        if used == reserved {
            return;
        }
        match write_usage_now(path, window, used) {
            Ok(()) => self.usage.lock().expect("quota usage lock").reserved = used,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot write a quota's usage at stop: a restart resumes from the last reservation")
            }
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.flush();
    }
}

async fn write_usage(path: PathBuf, window: QuotaWindow, used: u64) -> std::io::Result<()> {
    crate::state_file::replace_async(path, usage_bytes(window, used)).await
}

fn write_usage_now(path: &Path, window: QuotaWindow, used: u64) -> std::io::Result<()> {
    crate::state_file::replace(path, &usage_bytes(window, used))
}

fn usage_bytes(window: QuotaWindow, used: u64) -> Vec<u8> {
    serde_json::to_vec(&UsageFile {
        window_start: window.start,
        used,
    })
    .expect("a usage file always serializes")
}

/// Counts `cost` if it fits under `limit` (else `Exhausted`) and under
/// `reserved` (else `None`: the reservation must move first).
fn charge_within(
    usage: &mut Usage,
    cost: u64,
    limit: Option<u64>,
    reserved: u64,
) -> Option<Verdict> {
    let window = usage.window;
    let after = usage.used.saturating_add(cost);
    if limit.is_some_and(|l| after > l) {
        return Some(Verdict::Exhausted {
            used: usage.used,
            window,
        });
    }
    if after > reserved {
        return None;
    }
    usage.used = after;
    Some(Verdict::Charged {
        used: after,
        window,
    })
}

#[cfg(test)]
mod tests;
