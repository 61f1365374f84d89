//! Quotas on the shared state: every sidecar of an integration counts into
//! one usage per window (`quota.lua`: read, check and add in one script
//! call), so the limit holds for the integration, not per pod, and the
//! usage outlives every pod.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{SharedState, SharedStateError, key};
use crate::config::QuotaWindow;

static CHARGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("quota.lua")));

/// How long a window's usage is kept past its end: a sidecar whose clock
/// runs behind still counts into it rather than starting it again.
const KEPT_PAST_END: Duration = Duration::from_secs(3600);

/// One quota as the shared state counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedQuota {
    prefix: String,
}

/// The shared state's answer to one charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedCharge {
    pub admitted: bool,
    /// Units used in the window, by every sidecar, after this call.
    pub used: u64,
}

impl SharedQuota {
    pub fn new(integration: &str, quota: &str) -> Self {
        Self {
            prefix: key(integration, "quota", quota),
        }
    }

    fn key(&self, window: QuotaWindow) -> String {
        format!("{}:{}", self.prefix, window.start)
    }
}

impl SharedState {
    /// Adds `pending` (negative: a refund) to the window's usage, then
    /// `cost` if it fits under `limit` (`None`: always).
    pub async fn charge_quota(
        &self,
        quota: &SharedQuota,
        window: QuotaWindow,
        pending: i64,
        cost: u64,
        limit: Option<u64>,
    ) -> Result<SharedCharge, SharedStateError> {
        let mut invocation = CHARGE.prepare_invoke();
        let expires_ms = window
            .end
            .saturating_add(KEPT_PAST_END.as_secs() as i64)
            .saturating_mul(1000);
        invocation
            .key(quota.key(window))
            .arg(pending)
            .arg(cost.min(i64::MAX as u64))
            .arg(limit.map_or(-1, |l| l.min(i64::MAX as u64) as i64))
            .arg(expires_ms);
        let answer: Vec<u64> = self
            .call("quota", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        match answer.as_slice() {
            [admitted, used] => Ok(SharedCharge {
                admitted: *admitted == 1,
                used: *used,
            }),
            _ => Err(SharedStateError::Call(
                self.describe().to_string(),
                "quota",
                format!("unexpected answer {answer:?}"),
            )),
        }
    }

    /// The window's usage by every sidecar, without counting anything.
    pub async fn quota_used(
        &self,
        quota: &SharedQuota,
        window: QuotaWindow,
    ) -> Result<u64, SharedStateError> {
        let key = quota.key(window);
        let used: Option<u64> = self
            .call("quota-read", |mut c| async move {
                redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await?;
        Ok(used.unwrap_or(0))
    }
}
