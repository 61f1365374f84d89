//! Where a deliverer's events come from, and what it reports back: the
//! pod's own queue (`queue.rs`, its ordering guard in memory) or the shared
//! state (a Redis stream every sidecar of the integration reads, the
//! ordering guard's memory beside it).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::ordering::{self, Facts, Last, OrderingGuard, Verdict};
use super::queue::QueueReader;
use crate::config::OrderingConfig;
use crate::dead_letter::{self, DeadLetter, StoredEvent};
use crate::shared::webhooks::{Entry, Order, SharedWebhook, TAKEOVER_IDLE};
use prometheus_client::metrics::counter::Counter;

pub trait Source: Send {
    /// The next event to deliver; `None` when the source is closed.
    fn next(&mut self) -> impl Future<Output = Option<StoredEvent>> + Send;
    /// Whether `event` may be delivered after what was delivered for its
    /// object (and if so it becomes the latest). `Err`: cannot tell now.
    fn order(
        &mut self,
        event: &StoredEvent,
    ) -> impl Future<Output = Result<Verdict, String>> + Send;
    /// Still delivering `event` (a long retry): nobody else takes it over.
    fn hold(&mut self, event: &StoredEvent) -> impl Future<Output = ()> + Send;
    /// Done with `event` (delivered, dropped, out of order).
    fn finish(&mut self, event: &StoredEvent) -> impl Future<Output = ()> + Send;
    /// Done with `event`, kept as a dead letter; `Err` keeps it to retry.
    fn dead_letter(
        &mut self,
        letter: DeadLetter,
    ) -> impl Future<Output = Result<(), String>> + Send;
    fn close(&mut self);
}

/// The pod's own durable queue.
pub struct LocalSource {
    pub reader: QueueReader,
    guard: Option<OrderingGuard>,
}

impl LocalSource {
    pub fn new(reader: QueueReader, ordering: Option<OrderingConfig>) -> Self {
        Self {
            reader,
            guard: ordering.map(OrderingGuard::new),
        }
    }

    fn ack(&mut self, event: &StoredEvent) {
        if let Err(error) = self.reader.ack(event.seq) {
            tracing::error!(%error, "recording webhook progress failed");
        }
    }
}

impl Source for LocalSource {
    async fn next(&mut self) -> Option<StoredEvent> {
        self.reader.next().await
    }

    async fn order(&mut self, event: &StoredEvent) -> Result<Verdict, String> {
        Ok(match self.guard.as_mut() {
            Some(guard) => guard.check(&event.body),
            None => Verdict::Deliver,
        })
    }

    async fn hold(&mut self, _: &StoredEvent) {}

    async fn finish(&mut self, event: &StoredEvent) {
        self.ack(event);
    }

    async fn dead_letter(&mut self, letter: DeadLetter) -> Result<(), String> {
        dead_letter::write(self.reader.dir(), &letter).map_err(|e| e.to_string())?;
        self.ack(&letter.event);
        Ok(())
    }

    fn close(&mut self) {
        self.reader.close();
    }
}

/// How often an idle shared source asks for new events.
const POLL_IDLE: Duration = Duration::from_millis(50);

/// The webhook's shared stream, as one consumer of its group.
pub struct SharedSource {
    webhook: SharedWebhook,
    ordering: Option<OrderingConfig>,
    /// How long an object's latest delivered event is remembered.
    remember: Duration,
    /// The entry being delivered and its size.
    current: Option<(String, u64)>,
    last_takeover_scan: Option<Instant>,
    takeovers: Counter,
}

/// The fields of a stream entry (see [`SharedSource::fields`]).
const ID: &str = "id";
const RECEIVED: &str = "at";
const VERIFIED_BY: &str = "by";
const HEADERS: &str = "headers";
const BODY: &str = "body";

impl SharedSource {
    pub fn new(
        webhook: SharedWebhook,
        ordering: Option<OrderingConfig>,
        remember: Duration,
        takeovers: Counter,
    ) -> Self {
        Self {
            webhook,
            ordering,
            remember,
            current: None,
            last_takeover_scan: None,
            takeovers,
        }
    }

    /// An event as the stream stores it.
    pub fn fields(event: &StoredEvent) -> (Vec<(&'static str, Vec<u8>)>, u64) {
        let headers = serde_json::to_vec(&event.headers).expect("headers serialize");
        let size = event.body.len() as u64;
        (
            vec![
                (ID, event.id.clone().into_bytes()),
                (RECEIVED, event.received_at_ms.to_string().into_bytes()),
                (VERIFIED_BY, event.verified_by.clone().into_bytes()),
                (HEADERS, headers),
                (BODY, event.body.to_vec()),
            ],
            size,
        )
    }

    fn event(entry: &Entry) -> StoredEvent {
        let text =
            |name| String::from_utf8_lossy(entry.field(name).unwrap_or_default()).into_owned();
        StoredEvent {
            seq: 0,
            id: text(ID),
            received_at_ms: text(RECEIVED).parse().unwrap_or_default(),
            verified_by: text(VERIFIED_BY),
            headers: serde_json::from_slice(entry.field(HEADERS).unwrap_or(b"[]"))
                .unwrap_or_default(),
            dedup_expires_ms: None,
            body: Bytes::copy_from_slice(entry.field(BODY).unwrap_or_default()),
        }
    }

    /// Finishes the current entry, trying again while the shared state is
    /// unreachable (at most a minute: then it stays pending and is
    /// delivered again, at least once).
    async fn settle(&mut self, dead_letter: Option<&[u8]>) -> Result<(), String> {
        let Some((entry, size)) = self.current.clone() else {
            return Ok(());
        };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            match self.webhook.finish(&entry, size, dead_letter).await {
                Ok(_) => {
                    self.current = None;
                    return Ok(());
                }
                Err(error) if Instant::now() >= until => return Err(error.to_string()),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

impl Source for SharedSource {
    async fn next(&mut self) -> Option<StoredEvent> {
        loop {
            if !self.webhook.state().is_up() {
                tokio::time::sleep(crate::shared::PROBE_PERIOD).await;
                continue;
            }
            let scan = self
                .last_takeover_scan
                .is_none_or(|at| at.elapsed() >= TAKEOVER_IDLE / 3);
            if scan {
                self.last_takeover_scan = Some(Instant::now());
            }
            match self.webhook.next(scan).await {
                Ok(Some(entry)) => {
                    let event = Self::event(&entry);
                    if entry.taken_over {
                        self.takeovers.inc();
                        tracing::info!(event_id = %event.id, "took over a webhook event another sidecar held without a sign of life");
                    }
                    self.current = Some((entry.id, event.body.len() as u64));
                    return Some(event);
                }
                Ok(None) => tokio::time::sleep(POLL_IDLE).await,
                Err(_) => tokio::time::sleep(crate::shared::PROBE_PERIOD).await,
            }
        }
    }

    async fn order(&mut self, event: &StoredEvent) -> Result<Verdict, String> {
        let Some(config) = &self.ordering else {
            return Ok(Verdict::Deliver);
        };
        let Some(Facts {
            object,
            timestamp,
            rank,
        }) = ordering::facts(config, &event.body)
        else {
            return Ok(Verdict::Deliver);
        };
        let answer = self
            .webhook
            .order(&object, timestamp, rank, self.remember)
            .await
            .map_err(|e| e.to_string())?;
        let previous = match answer {
            Order::Deliver => return Ok(Verdict::Deliver),
            Order::Older(time) => Last {
                timestamp: time.parse().ok(),
                rank: None,
            },
            Order::Backwards(before) => Last {
                timestamp: None,
                rank: Some(before),
            },
        };
        Ok(
            match ordering::out_of_order(config, &object, timestamp, rank, previous) {
                Some(reason) => Verdict::OutOfOrder(reason),
                None => Verdict::Deliver,
            },
        )
    }

    async fn hold(&mut self, _: &StoredEvent) {
        if let Some((entry, _)) = &self.current
            && let Err(error) = self.webhook.hold(entry).await
        {
            tracing::warn!(%error, "could not renew this sidecar's hold on a webhook event; another may deliver it too");
        }
    }

    async fn finish(&mut self, _: &StoredEvent) {
        if let Err(error) = self.settle(None).await {
            tracing::error!(%error, "could not record a webhook event as done; it will be delivered again");
        }
    }

    async fn dead_letter(&mut self, letter: DeadLetter) -> Result<(), String> {
        let json = serde_json::to_vec(&letter).expect("a dead letter serializes");
        self.settle(Some(&json)).await
    }

    fn close(&mut self) {}
}
