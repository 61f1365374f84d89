//! Polling for missed webhooks: every `interval` the provider's list of
//! events is read, newest first, through the integration's own egress
//! pipeline (its limits, quotas, credentials, retries and metrics apply),
//! and each event not already accepted as a webhook goes into the same
//! durable store, under the same dedup id, to be delivered like one.
//!
//! A poll pages back until the newest event the last complete poll saw
//! (the watermark), an event older than `lookback` or than the moment
//! polling first started, or the end of the listing. The watermark moves
//! only when a poll completes, so a crash mid-way lists those pages again
//! (what was stored then is a duplicate now).

pub mod listing;
pub mod mark;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use tokio::sync::watch;

use self::listing::{Item, PageError};
use self::mark::{MarkError, MarkStore};
use super::store::{Outcome, StoreError, WebhookStore};
use crate::config::PollingConfig;
use crate::dead_letter::StoredEvent;
use crate::egress::EgressService;
use crate::egress::body::ProxyBody;
use crate::egress::error::ERROR_HEADER;
use crate::metrics::{Metrics, Name, Poll, PollLabels, Polled, PolledLabels};

/// `x-sluice-verified` of a polled event: it came from the provider's API
/// over the integration's credentials, not with a signature.
pub const POLLED: &str = "polled";
/// Pages one poll reads at most; the watermark or `lookback` ends it sooner.
pub const MAX_PAGES: usize = 100;
/// A larger page fails the poll.
pub const MAX_PAGE_BYTES: usize = 16 << 20;
/// Times a page refused with 429 or 503 is asked again (after its `Retry-After`).
const PAGE_ATTEMPTS: u32 = 3;
/// Creation times are often whole seconds: an event is old only when it is
/// a second before the floor.
const CREATED_SLACK_MS: i64 = 1000;

/// One webhook's poller; [`Poller::run`] until stopped.
pub struct Poller {
    pub integration: Name,
    pub webhook: Name,
    pub polling: PollingConfig,
    pub dedup_ttl: Duration,
    pub egress: EgressService,
    pub store: WebhookStore,
    pub marks: MarkStore,
    pub metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("the provider answered {status}{}", .error.as_ref().map(|e| format!(" (x-sluice-error: {e})")).unwrap_or_default())]
    Status {
        status: StatusCode,
        error: Option<String>,
    },
    #[error("reading the page failed: {0}")]
    Body(String),
    #[error("the page is larger than {MAX_PAGE_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    Mark(#[from] MarkError),
    #[error("storing a listed event failed: {0}")]
    Store(#[from] StoreError),
    #[error("stopped")]
    Stopped,
}

/// What one poll found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    pub pages: usize,
    pub recovered: u64,
    pub known: u64,
    pub unreadable: u64,
}

impl Poller {
    /// Polls now and then every `interval` after the last poll ended, until
    /// `stop` turns true. A poll is not cut mid-way by `stop` while it
    /// stores an event (nothing half-accepted), only between pages.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        self.metrics.poll_series(&self.integration, &self.webhook);
        let interval = self.polling.interval.get();
        loop {
            match self.poll(&stop).await {
                Ok(Some(report)) => {
                    self.count_poll(Poll::Complete);
                    if report.recovered > 0 {
                        tracing::warn!(integration = %self.integration, webhook = %self.webhook, recovered = report.recovered, known = report.known, pages = report.pages, "polling found events whose webhook never arrived; delivering them");
                    } else {
                        tracing::debug!(integration = %self.integration, webhook = %self.webhook, known = report.known, pages = report.pages, "poll complete");
                    }
                }
                Ok(None) => {
                    tracing::debug!(integration = %self.integration, webhook = %self.webhook, "another sidecar polls this webhook");
                }
                Err(PollError::Stopped) => return,
                Err(error) => {
                    self.count_poll(Poll::Failed);
                    tracing::warn!(integration = %self.integration, webhook = %self.webhook, %error, "poll failed; trying again at the next interval");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One poll; `None` when another sidecar holds the lease.
    pub async fn poll(
        &self,
        stop: &watch::Receiver<bool>,
    ) -> Result<Option<PollReport>, PollError> {
        let lease = self.lease_ttl();
        if !self.marks.lease(lease).await? {
            return Ok(None);
        }
        let now = super::now_ms();
        let mut mark = self.marks.load().await?;
        if mark.since_ms.is_none() {
            // Kept before listing: a first poll that fails must not move it.
            mark.since_ms = Some(now);
            self.marks.save(&mark).await?;
        }
        let since = mark.since_ms.unwrap_or(now) as i64;
        let floor = since.max(now as i64 - self.polling.lookback.get().as_millis() as i64)
            - CREATED_SLACK_MS;
        let mut report = PollReport::default();
        let mut newest: Option<String> = None;
        let mut cursor: Option<String> = None;
        'pages: while report.pages < MAX_PAGES {
            let body = self.page(cursor.as_deref(), stop).await?;
            report.pages += 1;
            let page = listing::read(&body, &self.polling)?;
            for item in &page.items {
                let Some(id) = &item.id else {
                    self.count(Polled::Unreadable, &mut report);
                    continue;
                };
                if newest.is_none() {
                    newest = Some(id.clone());
                }
                if mark.watermark.as_deref() == Some(id.as_str()) {
                    break 'pages;
                }
                match item.created_ms {
                    None => {
                        self.count(Polled::Unreadable, &mut report);
                        continue;
                    }
                    Some(created) if created < floor => break 'pages,
                    Some(_) => {}
                }
                let outcome = self
                    .store
                    .accept(self.event(id, item), super::now_ms(), self.dedup_ttl)
                    .await?;
                match outcome {
                    Outcome::Stored => self.count(Polled::Recovered, &mut report),
                    Outcome::Duplicate => self.count(Polled::Known, &mut report),
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
            if report.pages == MAX_PAGES {
                tracing::warn!(integration = %self.integration, webhook = %self.webhook, pages = MAX_PAGES, "the poll stopped at its page limit; older events were not checked");
            }
            // A long listing keeps the lease while it pages.
            self.marks.lease(lease).await?;
        }
        if newest.is_some() {
            mark.watermark = newest;
        }
        self.marks.save(&mark).await?;
        Ok(Some(report))
    }

    /// Held for two intervals (at least 30 s), so a poller that died is
    /// replaced within about that long.
    fn lease_ttl(&self) -> Duration {
        (self.polling.interval.get() * 2).max(Duration::from_secs(30))
    }

    fn event(&self, id: &str, item: &Item<'_>) -> StoredEvent {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        StoredEvent {
            seq: 0,
            id: id.to_owned(),
            received_at_ms: super::now_ms(),
            verified_by: POLLED.to_owned(),
            headers: StoredEvent::encode_headers(&headers),
            dedup_expires_ms: None,
            body: Bytes::copy_from_slice(item.json.get().as_bytes()),
        }
    }

    /// One page's body, asked again after `Retry-After` when refused with
    /// 429 or 503 (the integration's own limits answer so too).
    async fn page(
        &self,
        cursor: Option<&str>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Bytes, PollError> {
        let uri = self.page_uri(cursor);
        let mut attempt = 1;
        loop {
            if *stop.borrow() {
                return Err(PollError::Stopped);
            }
            let request = Request::get(uri.as_str())
                .header(header::ACCEPT, "application/json")
                .body(ProxyBody::full(Bytes::new()))
                .expect("a GET of an origin-form target builds");
            let response = self.egress.handle(request).await;
            let status = response.status();
            if status.is_success() {
                let body = Limited::new(response.into_body(), MAX_PAGE_BYTES)
                    .collect()
                    .await
                    .map_err(|e| {
                        if e.downcast_ref::<http_body_util::LengthLimitError>()
                            .is_some()
                        {
                            PollError::TooLarge
                        } else {
                            PollError::Body(e.to_string())
                        }
                    })?;
                return Ok(body.to_bytes());
            }
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
                .filter(|wait| *wait <= self.polling.interval.get());
            let refused = matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            );
            match retry_after {
                Some(wait) if refused && attempt < PAGE_ATTEMPTS => {
                    attempt += 1;
                    let mut stop = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => return Err(PollError::Stopped),
                    }
                }
                _ => {
                    return Err(PollError::Status {
                        status,
                        error: response
                            .headers()
                            .get(ERROR_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    });
                }
            }
        }
    }

    /// The listing's path with its fixed query and the cursor, encoded.
    pub fn page_uri(&self, cursor: Option<&str>) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.polling.query {
            query.append_pair(name, value);
        }
        if let Some(cursor) = cursor {
            query.append_pair(&self.polling.cursor.param, cursor);
        }
        let query = query.finish();
        if query.is_empty() {
            self.polling.path.clone()
        } else {
            format!("{}?{query}", self.polling.path)
        }
    }

    fn count(&self, result: Polled, report: &mut PollReport) {
        match result {
            Polled::Recovered => report.recovered += 1,
            Polled::Known => report.known += 1,
            Polled::Unreadable => report.unreadable += 1,
        }
        self.metrics
            .webhook_polled
            .get_or_create(&PolledLabels {
                integration: self.integration.clone(),
                webhook: self.webhook.clone(),
                result,
            })
            .inc();
    }

    fn count_poll(&self, result: Poll) {
        self.metrics
            .webhook_polls
            .get_or_create(&PollLabels {
                integration: self.integration.clone(),
                webhook: self.webhook.clone(),
                result,
            })
            .inc();
    }
}
