//! Webhooks on the shared state: one Redis stream per webhook, read by a
//! consumer group in which every sidecar of the integration is a consumer.
//!
//! An accepted event is in the stream (and, with `WAITAOF` or `appendfsync
//! always`, on the server's disk) before the provider gets its 200; its id
//! is claimed in the same script, so a retry landing on another replica is
//! a duplicate there too. Any sidecar may deliver it; one that dies holding
//! it loses it to another after `TAKEOVER_IDLE`. The ordering guard's
//! per-object memory and the dead letters live beside the stream.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{SharedState, SharedStateError, key};

static ACCEPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("accept.lua")));
static NEXT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("next.lua")));
static DONE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("done.lua")));
static ORDER: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("order.lua")));

/// An event held this long by a sidecar that gives no sign of life (it
/// renews its hold at least every `TAKEOVER_IDLE / 3` while it delivers) is
/// taken over by another.
pub const TAKEOVER_IDLE: Duration = Duration::from_secs(15);

const GROUP: &str = "deliver";

/// One webhook's keys.
#[derive(Clone)]
pub struct SharedWebhook {
    state: SharedState,
    stream: String,
    bytes: String,
    dead: String,
    dead_seq: String,
    dedup_prefix: String,
    order_prefix: String,
}

/// What the shared state did with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    Stored,
    /// Its id was accepted before (by any sidecar).
    Duplicate,
    /// The webhook's stored events are at their bound.
    Full,
}

/// An event read from the stream: its entry id, whether it was taken over
/// from another sidecar, and its fields.
pub struct Entry {
    pub id: String,
    pub taken_over: bool,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Where an event stands against the object's latest delivered one.
#[derive(Debug, PartialEq, Eq)]
pub enum Order {
    Deliver,
    /// Older than the latest delivered time (given).
    Older(String),
    /// A state ranked before the latest delivered one (its rank given).
    Backwards(usize),
}

impl SharedWebhook {
    pub fn new(state: SharedState, integration: &str, webhook: &str) -> Self {
        let k = |kind: &str| key(integration, kind, webhook);
        Self {
            stream: k("events"),
            bytes: k("events-bytes"),
            dead: k("dead"),
            dead_seq: k("dead-seq"),
            dedup_prefix: k("dedup"),
            order_prefix: k("order"),
            state,
        }
    }

    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// Stores an event (`fields`, `size` bytes of it counted against
    /// `bound`) under `dedup_id` for `dedup_ttl`; `None` stores it without
    /// de-duplication (a replay). Durable when it returns `Stored`.
    pub async fn accept(
        &self,
        dedup_id: Option<&str>,
        dedup_ttl: Duration,
        bound: u64,
        size: u64,
        fields: &[(&str, &[u8])],
    ) -> Result<Accepted, SharedStateError> {
        let mut invocation = ACCEPT.prepare_invoke();
        let dedup_key = format!("{}:{}", self.dedup_prefix, dedup_id.unwrap_or(""));
        invocation
            .key(&self.stream)
            .key(&dedup_key)
            .key(&self.bytes)
            .arg(match dedup_id {
                Some(_) => (dedup_ttl.as_millis() as u64).max(1),
                None => 0,
            })
            .arg(bound)
            .arg(size);
        for (name, value) in fields {
            invocation.arg(*name).arg(*value);
        }
        let (verdict, _detail): (String, String) = self
            .state
            .call("webhook-accept", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        match verdict.as_str() {
            "accepted" => {
                self.state.wait_durable("webhook-accept").await?;
                Ok(Accepted::Stored)
            }
            "duplicate" => Ok(Accepted::Duplicate),
            "full" => Ok(Accepted::Full),
            other => Err(SharedStateError::Refused(
                self.state.describe().to_string(),
                "webhook-accept",
                format!("unexpected answer {other:?}"),
            )),
        }
    }

    /// The next event this sidecar should deliver, if any; with
    /// `look_for_idle`, also one another sidecar has held for too long.
    pub async fn next(&self, look_for_idle: bool) -> Result<Option<Entry>, SharedStateError> {
        let mut invocation = NEXT.prepare_invoke();
        invocation
            .key(&self.stream)
            .arg(GROUP)
            .arg(self.state.identity())
            .arg(TAKEOVER_IDLE.as_millis() as u64)
            .arg(if look_for_idle { "1" } else { "0" });
        let reply: Vec<Vec<u8>> = self
            .state
            .call("webhook-next", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        let mut parts = reply.into_iter();
        let (Some(id), Some(taken)) = (parts.next(), parts.next()) else {
            return Ok(None);
        };
        let mut fields = Vec::new();
        while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
            fields.push((String::from_utf8_lossy(&name).into_owned(), value));
        }
        Ok(Some(Entry {
            id: String::from_utf8_lossy(&id).into_owned(),
            taken_over: taken == b"1",
            fields,
        }))
    }

    /// Still delivering `entry`: resets its idle time so no other sidecar
    /// takes it over.
    pub async fn hold(&self, entry: &str) -> Result<(), SharedStateError> {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.stream)
            .arg(GROUP)
            .arg(self.state.identity())
            .arg(0)
            .arg(entry)
            .arg("JUSTID");
        let _: Vec<String> = self
            .state
            .call("webhook-hold", |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    /// Finishes `entry` (`size` bytes): removed from the stream; with
    /// `dead_letter` (its JSON) stored as a dead letter in the same step.
    /// Returns the dead letter's number.
    pub async fn finish(
        &self,
        entry: &str,
        size: u64,
        dead_letter: Option<&[u8]>,
    ) -> Result<u64, SharedStateError> {
        let mut invocation = DONE.prepare_invoke();
        invocation
            .key(&self.stream)
            .key(&self.bytes)
            .key(&self.dead)
            .key(&self.dead_seq)
            .arg(GROUP)
            .arg(entry)
            .arg(size)
            .arg(dead_letter.unwrap_or(b""));
        let seq: u64 = self
            .state
            .call("webhook-finish", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        if dead_letter.is_some() {
            self.state.wait_durable("webhook-finish").await?;
        }
        Ok(seq)
    }

    /// Judges an event of `object` with its time and state rank against the
    /// latest delivered one, and records it as the latest when it passes.
    pub async fn order(
        &self,
        object: &str,
        time: Option<f64>,
        rank: Option<usize>,
        remember: Duration,
    ) -> Result<Order, SharedStateError> {
        let mut invocation = ORDER.prepare_invoke();
        invocation
            .key(format!("{}:{object}", self.order_prefix))
            .arg(time.map(|t| t.to_string()).unwrap_or_default())
            .arg(rank.map(|r| r.to_string()).unwrap_or_default())
            .arg((remember.as_millis() as u64).max(1));
        let reply: Vec<String> = self
            .state
            .call("webhook-order", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(match reply.as_slice() {
            [verdict, last] if verdict == "time" => Order::Older(last.clone()),
            [verdict, last] if verdict == "state" => {
                Order::Backwards(last.parse().unwrap_or_default())
            }
            _ => Order::Deliver,
        })
    }

    /// Every dead letter (number, JSON).
    pub async fn dead_letters(&self) -> Result<Vec<(u64, Vec<u8>)>, SharedStateError> {
        let dead = self.dead.clone();
        let all: Vec<(u64, Vec<u8>)> = self
            .state
            .call("dead-letters", |mut c| async move {
                redis::cmd("HGETALL").arg(dead).query_async(&mut c).await
            })
            .await?;
        Ok(all)
    }

    pub async fn dead_letter(&self, seq: u64) -> Result<Option<Vec<u8>>, SharedStateError> {
        let dead = self.dead.clone();
        self.state
            .call("dead-letters", |mut c| async move {
                redis::cmd("HGET")
                    .arg(dead)
                    .arg(seq)
                    .query_async(&mut c)
                    .await
            })
            .await
    }

    pub async fn remove_dead_letter(&self, seq: u64) -> Result<(), SharedStateError> {
        let dead = self.dead.clone();
        let _: i64 = self
            .state
            .call("dead-letters", |mut c| async move {
                redis::cmd("HDEL")
                    .arg(dead)
                    .arg(seq)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.state.wait_durable("dead-letters").await
    }
}
