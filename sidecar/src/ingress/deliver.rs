//! Draining a webhook queue to the app: in order, at a set rate, retried
//! with backoff and jitter, dead-lettered after `maxAttempts`, with the
//! ordering guard in front; from the pod's queue or the shared stream
//! ([`super::source`]).

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::ordering::Verdict;
use super::source::Source;
use crate::config::DeliveryConfig;
use crate::dead_letter::{DeadLetter, StoredEvent};
use crate::egress::body::{BodyTimeouts, ProxyBody};
use crate::egress::client::{UpstreamClient, strip_hop_by_hop};
use crate::metrics::{Delivery, DeliveryLabels, Metrics};
use crate::shared::webhooks::TAKEOVER_IDLE;

pub const EVENT_ID_HEADER: &str = "x-sluice-event-id";
pub const ATTEMPT_HEADER: &str = "x-sluice-attempt";
pub const VERIFIED_HEADER: &str = "x-sluice-verified";
/// `webhook` (the provider posted it) or `poll` (Sluice found it listed).
pub const SOURCE_HEADER: &str = "x-sluice-source";

pub struct Deliverer {
    pub integration: Arc<str>,
    pub webhook: Arc<str>,
    pub forward_to: Uri,
    pub config: DeliveryConfig,
    pub client: UpstreamClient,
    pub metrics: Metrics,
}

impl Deliverer {
    fn count(&self, result: Delivery) {
        self.metrics
            .webhook_deliveries
            .get_or_create(&DeliveryLabels {
                integration: self.integration.clone(),
                webhook: self.webhook.clone(),
                result,
            })
            .inc();
    }

    fn request(&self, event: &StoredEvent, attempt: u32) -> Request<ProxyBody> {
        let mut request = Request::post(self.forward_to.clone())
            .body(ProxyBody::full(event.body.clone()))
            .expect("a POST to a valid URI builds");
        let headers = request.headers_mut();
        for (name, value) in event.header_pairs() {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(&value),
            ) {
                headers.append(name, value);
            }
        }
        strip_hop_by_hop(headers);
        headers.remove(http::header::HOST);
        headers.remove(http::header::CONTENT_LENGTH);
        if let Ok(id) = HeaderValue::from_str(&event.id) {
            headers.insert(EVENT_ID_HEADER, id);
        }
        headers.insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
        if let Ok(scheme) = HeaderValue::from_str(&event.verified_by) {
            headers.insert(VERIFIED_HEADER, scheme);
        }
        // Set here, never taken from the provider's headers.
        let source = if event.verified_by == super::poll::POLLED {
            "poll"
        } else {
            "webhook"
        };
        headers.insert(SOURCE_HEADER, HeaderValue::from_static(source));
        request
    }

    /// One attempt: Ok when the app answered 2xx.
    async fn attempt(&self, event: &StoredEvent, attempt: u32) -> Result<(), String> {
        let send = async {
            let response = self
                .client
                .request(
                    self.request(event, attempt),
                    BodyTimeouts::within(self.config.timeout.get()),
                )
                .await
                .map_err(|e| format!("sending to the app failed: {e}"))?;
            let status = response.status();
            // Drain the body so the connection can be reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the app answered {status}"))
            }
        };
        tokio::time::timeout(self.config.timeout.get(), send)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer from the app within {}",
                    self.config.timeout
                ))
            })
    }

    /// Runs until `stop` turns true or the source closes; gives the source
    /// back, so a changed delivery config can carry on where this one stopped.
    pub async fn run<S: Source>(self, mut source: S, mut stop: watch::Receiver<bool>) -> S {
        let spacing = Duration::from_secs_f64(1.0 / self.config.rate_per_second.max(0.001));
        let mut next_slot = Instant::now();
        loop {
            let event = tokio::select! {
                event = source.next() => match event { Some(e) => e, None => return source },
                _ = stop.wait_for(|s| *s) => { source.close(); return source }
            };
            match source.order(&event).await {
                Ok(Verdict::Deliver) => {}
                Ok(Verdict::OutOfOrder(reason)) => {
                    tracing::warn!(integration = %self.integration, webhook = %self.webhook, event_id = %event.id, %reason, "webhook not delivered: out of order");
                    self.count(Delivery::OutOfOrder);
                    source.finish(&event).await;
                    continue;
                }
                Err(error) => {
                    // Unknown whether it is stale: not delivered yet, asked again.
                    tracing::warn!(integration = %self.integration, webhook = %self.webhook, event_id = %event.id, %error, "cannot check the webhook's order now; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.wait_for(|s| *s) => { source.close(); return source }
                    }
                    continue;
                }
            }
            let mut attempt = 1;
            let outcome = loop {
                // Only sleep when ahead of the rate: the timer's millisecond
                // granularity would otherwise cap delivery near 1,000/s.
                if next_slot > Instant::now() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(next_slot) => {}
                        _ = stop.wait_for(|s| *s) => { source.close(); return source }
                    }
                }
                next_slot = next_slot.max(Instant::now() - spacing) + spacing;
                if attempt > 1 {
                    // Just taken, the event's hold is fresh for the first attempt.
                    source.hold(&event).await;
                }
                match self.attempt(&event, attempt).await {
                    Ok(()) => break Ok(()),
                    Err(error) if attempt >= self.config.max_attempts => {
                        break Err((attempt, error));
                    }
                    Err(error) => {
                        self.count(Delivery::Retry);
                        tracing::info!(integration = %self.integration, webhook = %self.webhook, event_id = %event.id, attempt, %error, "webhook delivery failed; retrying");
                        let wait =
                            crate::egress::retry::backoff_delay(&self.config.backoff, attempt);
                        // Renew the hold while waiting, so no other sidecar takes it over.
                        let until = Instant::now() + wait;
                        while Instant::now() < until {
                            let step = until
                                .saturating_duration_since(Instant::now())
                                .min(TAKEOVER_IDLE / 3);
                            tokio::select! {
                                _ = tokio::time::sleep(step) => {}
                                _ = stop.wait_for(|s| *s) => { source.close(); return source }
                            }
                            source.hold(&event).await;
                        }
                        attempt += 1;
                    }
                }
            };
            match outcome {
                Ok(()) => {
                    self.count(Delivery::Delivered);
                    source.finish(&event).await;
                }
                Err((attempts, error)) if self.config.dead_letter => {
                    tracing::warn!(integration = %self.integration, webhook = %self.webhook, event_id = %event.id, attempts, %error, "webhook dead-lettered");
                    if let Err(error) = source
                        .dead_letter(DeadLetter::new(event.clone(), attempts, error))
                        .await
                    {
                        // Keep it rather than lose it.
                        tracing::error!(%error, "writing a dead letter failed; will retry the event");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    self.count(Delivery::DeadLetter);
                }
                Err((attempts, error)) => {
                    tracing::warn!(integration = %self.integration, webhook = %self.webhook, event_id = %event.id, attempts, %error, "webhook dropped after its last attempt (deadLetter: false)");
                    self.count(Delivery::Dropped);
                    source.finish(&event).await;
                }
            }
        }
    }
}
