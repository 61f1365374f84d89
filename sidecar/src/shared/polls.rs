//! Polling on the shared state: one sidecar of an integration polls a
//! webhook's event list at a time (a lease it renews while it polls), and
//! the place reached in the listing is kept beside the webhook's stream, so
//! whichever sidecar polls next carries on from it.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{SharedState, SharedStateError, key};

static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("poll_lease.lua")));

/// One webhook's polling keys.
#[derive(Clone, Debug)]
pub struct SharedPoll {
    lease: String,
    mark: String,
}

/// The place reached: when polling first started and the newest event id
/// the last complete poll listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollMark {
    pub since_ms: Option<u64>,
    pub watermark: Option<String>,
}

impl SharedPoll {
    pub fn new(integration: &str, webhook: &str) -> Self {
        Self {
            lease: key(integration, "poll-lease", webhook),
            mark: key(integration, "poll", webhook),
        }
    }
}

impl SharedState {
    /// Whether this sidecar may poll for `ttl` from now.
    pub async fn poll_lease(
        &self,
        poll: &SharedPoll,
        ttl: Duration,
    ) -> Result<bool, SharedStateError> {
        let mut invocation = LEASE.prepare_invoke();
        invocation
            .key(&poll.lease)
            .arg(self.identity())
            .arg((ttl.as_millis() as u64).max(1));
        let held: i64 = self
            .call("poll-lease", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(held == 1)
    }

    pub async fn poll_mark(&self, poll: &SharedPoll) -> Result<PollMark, SharedStateError> {
        let key = poll.mark.clone();
        let (since, watermark): (Option<u64>, Option<String>) = self
            .call("poll-mark", |mut c| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("since")
                    .arg("watermark")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(PollMark {
            since_ms: since,
            watermark,
        })
    }

    pub async fn set_poll_mark(
        &self,
        poll: &SharedPoll,
        mark: &PollMark,
    ) -> Result<(), SharedStateError> {
        let key = poll.mark.clone();
        let mut fields: Vec<(&str, String)> = Vec::new();
        if let Some(since) = mark.since_ms {
            fields.push(("since", since.to_string()));
        }
        if let Some(watermark) = &mark.watermark {
            fields.push(("watermark", watermark.clone()));
        }
        if fields.is_empty() {
            return Ok(());
        }
        self.call("poll-mark", |mut c| async move {
            redis::cmd("HSET")
                .arg(key)
                .arg(fields)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }
}
