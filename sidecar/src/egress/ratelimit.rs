//! Client-side rate limits: never send the provider more than it allows.
//!
//! Each limit enforces two rules at once: at most `requests` in any sliding
//! window of length `per` (a log of the last `requests` admissions), and at
//! most `burst` back to back (GCRA with emission interval `per / requests`).
//!
//! A request may fall under several limits (an endpoint's and an overall one);
//! it is admitted only when all of them have room, and consumes from all at
//! the same instant. While it waits it holds nothing: a limit it could pass is
//! left to others, and only the limits it is actually short of keep later
//! arrivals behind it (FIFO within priority). Waiters are admitted by one
//! dispatcher task per integration, which sleeps until the next slot opens.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use futures_util::future::Either;
use http::Request;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::body::ProxyBody;
use super::error::ProxyError;
use super::retry::provider_wait;
use super::route::{Priority, RequestContext};
use super::step::{Next, PipelineResult, Step};
use crate::config::{RateLimitConfig, WhenExceeded};
use crate::metrics::{LimitLabels, LimitReasonLabels, Metrics, Name};

struct Limit {
    name: Name,
    requests: usize,
    /// `per` plus a guard: an admission is remembered a little longer than
    /// the provider's window, so uneven transit (a new connection's handshake
    /// delaying one request, a pooled one speeding the next) cannot put one
    /// request too many into the provider's window.
    window: Duration,
    interval: Duration,
    /// How far ahead of now the GCRA's theoretical arrival time may run.
    tolerance: Duration,
    when_exceeded: WhenExceeded,
    max_wait: Duration,
    max_depth: usize,
    tat: Instant,
    /// Admission times within the last `per`, oldest first; at most `requests`.
    log: VecDeque<Instant>,
    waiting: usize,
    depth_gauge: prometheus_client::metrics::gauge::Gauge,
    /// No longer in the config: admits everything. Its slot stays, so
    /// requests routed by the previous config still find it.
    retired: bool,
}

impl Limit {
    fn new(
        config: &RateLimitConfig,
        depth_gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> Self {
        let mut limit = Limit {
            depth_gauge,
            name: Arc::from(config.name.as_str()),
            requests: 1,
            window: Duration::ZERO,
            interval: Duration::ZERO,
            tolerance: Duration::ZERO,
            when_exceeded: config.when_exceeded,
            max_wait: Duration::ZERO,
            max_depth: 0,
            tat: Instant::now(),
            log: VecDeque::new(),
            waiting: 0,
            retired: false,
        };
        limit.configure(config);
        limit
    }

    /// Takes the new numbers and keeps the history: the admissions already
    /// made are facts about the provider's window whatever the new limit is.
    fn configure(&mut self, c: &RateLimitConfig) {
        let requests = c.requests.max(1) as usize;
        let interval = c.per.get() / c.requests.max(1);
        // The GCRA's debt is so many requests' worth of the old interval:
        // keep it as the same number of requests at the new one.
        let now = Instant::now();
        if self.tat > now && !self.interval.is_zero() && interval != self.interval {
            let owed = (self.tat - now).as_secs_f64() / self.interval.as_secs_f64();
            self.tat = now + interval.mul_f64(owed);
        }
        self.requests = requests;
        self.window = c.per.get() + window_guard(c.per.get());
        self.interval = interval;
        self.tolerance = interval * c.burst.saturating_sub(1);
        self.when_exceeded = c.when_exceeded;
        self.max_wait = c.queue.max_wait.get();
        self.max_depth = c.queue.max_depth as usize;
        self.retired = false;
        while self.log.len() > requests {
            self.log.pop_front();
        }
        self.log
            .reserve(requests.min(4096).saturating_sub(self.log.len()));
    }

    fn forget_expired(&mut self, now: Instant) {
        while self.log.front().is_some_and(|&t| t + self.window <= now) {
            self.log.pop_front();
        }
    }

    fn has_room(&mut self, now: Instant) -> bool {
        if self.retired {
            return true;
        }
        self.forget_expired(now);
        self.log.len() < self.requests && self.tat <= now + self.tolerance
    }

    fn consume(&mut self, now: Instant) {
        if self.retired {
            return;
        }
        self.tat = self.tat.max(now) + self.interval;
        self.log.push_back(now);
    }

    /// When the request `ahead` places behind the next one could be admitted,
    /// assuming nothing else arrives. An estimate for queueing decisions.
    fn available_at(&self, now: Instant, ahead: usize) -> Instant {
        if self.retired {
            return now;
        }
        let gcra = (self.tat.max(now) + self.interval * ahead as u32)
            .checked_sub(self.tolerance)
            .unwrap_or(now)
            .max(now);
        let index = self.log.len() + ahead;
        let window = if index >= self.requests {
            let oldest_needed = index - self.requests;
            match self.log.get(oldest_needed) {
                Some(&t) => t + self.window,
                // Depends on admissions not made yet: a full window per lap.
                None => now + self.window * (1 + (oldest_needed / self.requests) as u32),
            }
        } else {
            now
        };
        gcra.max(window)
    }
}

/// Longest a provider's 429 may hold a queue; longer asks are treated as this.
pub const MAX_PROVIDER_PAUSE: Duration = Duration::from_secs(300);

/// 2 % of the window, at most one second: utilization stays at or above 98 %.
pub fn window_guard(per: Duration) -> Duration {
    (per / 50).min(Duration::from_secs(1))
}

struct Waiter {
    limits: Vec<usize>,
    admit: oneshot::Sender<()>,
}

/// Order of service: higher priority first, then arrival.
type WaiterKey = (std::cmp::Reverse<Priority>, u64);

struct State {
    limits: Vec<Limit>,
    waiters: BTreeMap<WaiterKey, Waiter>,
    next_seq: u64,
}

impl State {
    /// Consumes a slot of every limit if all have room and nobody waits
    /// ahead (a waiter would otherwise be overtaken).
    fn admit_if_free(&mut self, limits: &[usize], now: Instant) -> bool {
        let free = limits.iter().all(|&i| {
            let limit = &mut self.limits[i];
            limit.waiting == 0 && limit.has_room(now)
        });
        if !free {
            return false;
        }
        for &i in limits {
            self.limits[i].consume(now);
        }
        true
    }

    fn remove_waiter(&mut self, key: &WaiterKey) -> Option<Waiter> {
        let waiter = self.waiters.remove(key)?;
        for &i in &waiter.limits {
            let limit = &mut self.limits[i];
            limit.waiting -= 1;
            limit.depth_gauge.set(limit.waiting as i64);
        }
        Some(waiter)
    }

    /// Admits every waiter that can go now; returns when the next may.
    fn dispatch(&mut self, now: Instant) -> Option<Instant> {
        let mut blocked = vec![false; self.limits.len()];
        let keys: Vec<WaiterKey> = self.waiters.keys().copied().collect();
        for key in keys {
            let waiter = &self.waiters[&key];
            if waiter.admit.is_closed() {
                // The app gave up (disconnected or timed out): free its place.
                self.remove_waiter(&key);
                continue;
            }
            let limits = waiter.limits.clone();
            let mut admissible = true;
            for &i in &limits {
                if blocked[i] || !self.limits[i].has_room(now) {
                    admissible = false;
                }
            }
            if admissible {
                for &i in &limits {
                    self.limits[i].consume(now);
                }
                if let Some(waiter) = self.remove_waiter(&key) {
                    let _ = waiter.admit.send(());
                }
            } else {
                // Keep later arrivals behind this one only where it is short.
                for &i in &limits {
                    if !self.limits[i].has_room(now) {
                        blocked[i] = true;
                    }
                }
            }
        }
        // Wake when the first limit someone is short of gets room. A limit
        // with room is no reason to wake: its waiters wait on other limits.
        self.limits
            .iter_mut()
            .filter(|l| l.waiting > 0)
            .filter_map(|l| (!l.has_room(now)).then(|| l.available_at(now, 0)))
            .min()
            .map(|at| at.max(now + Duration::from_micros(100)))
    }
}

/// The rate limits of one integration.
pub struct RateLimiter {
    state: Mutex<State>,
    /// Shared with the dispatcher, which holds only a weak reference to the limiter.
    wake_dispatcher: Arc<Notify>,
    integration: Name,
    metrics: Metrics,
}

impl RateLimiter {
    /// Spawns the dispatcher on the current Tokio runtime; it ends when the
    /// limiter is dropped. Returns the slot of each limit by name, as
    /// [`RateLimiter::reconfigure`] does.
    pub fn new(
        integration: Name,
        configs: &[RateLimitConfig],
        metrics: Metrics,
    ) -> (Arc<Self>, HashMap<Name, usize>) {
        let limiter = Arc::new(Self {
            state: Mutex::new(State {
                limits: Vec::new(),
                waiters: BTreeMap::new(),
                next_seq: 0,
            }),
            wake_dispatcher: Arc::new(Notify::new()),
            integration,
            metrics,
        });
        let slots = limiter.reconfigure(configs);
        tokio::spawn(dispatcher(
            Arc::downgrade(&limiter),
            limiter.wake_dispatcher.clone(),
        ));
        (limiter, slots)
    }

    /// Applies a changed config in place, so nothing resets: a limit keeps
    /// its slot, its admission history and its waiters by name; a new name
    /// gets a new slot; a name no longer configured is retired (admits
    /// everything, its waiters are let go when their other limits allow).
    /// Returns the slot of each configured name, for [`super::route::Router::with_limit_slots`].
    pub fn reconfigure(&self, configs: &[RateLimitConfig]) -> HashMap<Name, usize> {
        let mut state = self.state.lock().expect("rate limiter lock poisoned");
        let mut slots = HashMap::with_capacity(configs.len());
        for config in configs {
            self.metrics
                .ratelimit_queue_capacity
                .get_or_create(&LimitLabels {
                    integration: self.integration.clone(),
                    limit: Arc::from(config.name.as_str()),
                })
                .set(config.queue.max_depth as i64);
            match state.limits.iter().position(|l| *l.name == *config.name) {
                Some(slot) => {
                    state.limits[slot].configure(config);
                    slots.insert(Name::from(config.name.as_str()), slot);
                }
                None => {
                    let gauge = self
                        .metrics
                        .ratelimit_queue_depth
                        .get_or_create(&LimitLabels {
                            integration: self.integration.clone(),
                            limit: Arc::from(config.name.as_str()),
                        })
                        .clone();
                    state.limits.push(Limit::new(config, gauge));
                    slots.insert(Name::from(config.name.as_str()), state.limits.len() - 1);
                }
            }
        }
        for (slot, limit) in state.limits.iter_mut().enumerate() {
            if !slots.values().any(|&s| s == slot) {
                limit.retired = true;
            }
        }
        drop(state);
        self.wake_dispatcher.notify_one();
        slots
    }

    fn reject(&self, limit: &Name, reason: &'static str) {
        self.metrics
            .ratelimit_rejected
            .get_or_create(&LimitReasonLabels {
                integration: self.integration.clone(),
                limit: limit.clone(),
                reason,
            })
            .inc();
    }

    fn observe_wait(&self, limits: &[Name], waited: Duration) {
        for limit in limits {
            self.metrics
                .ratelimit_wait
                .get_or_create(&LimitLabels {
                    integration: self.integration.clone(),
                    limit: limit.clone(),
                })
                .observe(waited.as_secs_f64());
        }
    }

    /// Admits nothing under `limits` until `until`: the provider answered 429
    /// and said when to come back, so the requests queued behind must not
    /// each earn their own 429 (a 429 storm).
    pub fn pause(&self, limits: &[usize], until: Instant) {
        let mut state = self.state.lock().expect("rate limiter lock poisoned");
        for &i in limits {
            let limit = &mut state.limits[i];
            // Admission needs tat <= now + tolerance, so this holds until `until`.
            limit.tat = limit.tat.max(until + limit.tolerance);
        }
        drop(state);
        self.wake_dispatcher.notify_one();
    }

    /// Admits the request at once if every limit in `limits` has room and
    /// nobody waits ahead of it: the common case, decided without a future.
    pub fn admit_now(&self, limits: &[usize]) -> bool {
        limits.is_empty()
            || self
                .state
                .lock()
                .expect("rate limiter lock poisoned")
                .admit_if_free(limits, Instant::now())
    }

    /// Waits until every limit in `limits` admits the request, or fails with
    /// 429 when a `Reject` limit is full, the queue is full, or the wait would
    /// pass `maxWait` or `deadline`.
    pub async fn acquire(
        &self,
        limits: &[usize],
        priority: Priority,
        deadline: Instant,
    ) -> Result<(), ProxyError> {
        if limits.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let (key, admitted, give_up_at, names) = {
            let mut state = self.state.lock().expect("rate limiter lock poisoned");
            if state.admit_if_free(limits, now) {
                return Ok(());
            }
            let mut give_up_at = deadline;
            let mut expected = now;
            for &i in limits {
                let limit = &mut state.limits[i];
                let has_room = limit.has_room(now);
                let at = limit.available_at(now, limit.waiting);
                let retry_after = at.saturating_duration_since(now);
                if limit.when_exceeded == WhenExceeded::Reject && (!has_room || limit.waiting > 0) {
                    let name = limit.name.clone();
                    drop(state);
                    self.reject(&name, "rate-limited");
                    return Err(ProxyError::RateLimited {
                        limit: name.to_string(),
                        retry_after,
                    });
                }
                if limit.waiting >= limit.max_depth {
                    let name = limit.name.clone();
                    drop(state);
                    self.reject(&name, "queue-full");
                    return Err(ProxyError::QueueFull {
                        limit: name.to_string(),
                        retry_after,
                    });
                }
                if limit.when_exceeded == WhenExceeded::Queue {
                    give_up_at = give_up_at.min(now + limit.max_wait);
                }
                expected = expected.max(at);
            }
            if expected > give_up_at {
                let (name, retry_after) = limits
                    .iter()
                    .map(|&i| &state.limits[i])
                    .map(|l| (l.name.clone(), l.available_at(now, l.waiting)))
                    .max_by_key(|(_, at)| *at)
                    .map(|(n, at)| (n, at.saturating_duration_since(now)))
                    .expect("limits is not empty");
                drop(state);
                self.reject(&name, "deadline");
                return Err(ProxyError::QueueFull {
                    limit: name.to_string(),
                    retry_after,
                });
            }
            let key = (std::cmp::Reverse(priority), state.next_seq);
            state.next_seq += 1;
            let (admit, admitted) = oneshot::channel();
            for &i in limits {
                let limit = &mut state.limits[i];
                limit.waiting += 1;
                limit.depth_gauge.set(limit.waiting as i64);
            }
            let names: Vec<Name> = limits
                .iter()
                .map(|&i| state.limits[i].name.clone())
                .collect();
            state.waiters.insert(
                key,
                Waiter {
                    limits: limits.to_vec(),
                    admit,
                },
            );
            (key, admitted, give_up_at, names)
        };
        self.wake_dispatcher.notify_one();

        let mut admitted = admitted;
        match tokio::time::timeout_at(give_up_at, &mut admitted).await {
            Ok(Ok(())) => {
                self.observe_wait(&names, now.elapsed());
                Ok(())
            }
            Ok(Err(_)) => unreachable!("the dispatcher never drops an admission unsent"),
            Err(_elapsed) => {
                let mut state = self.state.lock().expect("rate limiter lock poisoned");
                if state.remove_waiter(&key).is_none() {
                    // Admitted in the same instant the wait ran out: go ahead.
                    drop(state);
                    self.observe_wait(&names, now.elapsed());
                    return Ok(());
                }
                let later = Instant::now();
                let (name, retry_after) = limits
                    .iter()
                    .map(|&i| &state.limits[i])
                    .map(|l| (l.name.clone(), l.available_at(later, l.waiting)))
                    .max_by_key(|(_, at)| *at)
                    .map(|(n, at)| (n, at.saturating_duration_since(later)))
                    .expect("limits is not empty");
                drop(state);
                self.wake_dispatcher.notify_one();
                self.reject(&name, "deadline");
                Err(ProxyError::QueueFull {
                    limit: name.to_string(),
                    retry_after,
                })
            }
        }
    }
}

async fn dispatcher(limiter: Weak<RateLimiter>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        let next = {
            // Hold the limiter only while dispatching, so a replaced config drops it.
            let Some(limiter) = limiter.upgrade() else {
                return;
            };
            let mut state = limiter.state.lock().expect("rate limiter lock poisoned");
            state.dispatch(Instant::now())
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => notified.await,
        }
    }
}

impl Drop for RateLimiter {
    fn drop(&mut self) {
        // Let the dispatcher see that we are gone and end.
        self.wake_dispatcher.notify_one();
    }
}

/// Pipeline step: waits for the route's limits before each attempt, and
/// pauses them when the provider answers 429 with a time to come back.
#[derive(Clone)]
pub struct RateLimitStep {
    limiter: Arc<RateLimiter>,
}

impl RateLimitStep {
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        Self { limiter }
    }
}

impl Step for RateLimitStep {
    /// A request admitted at once carries no waiting state: only one that
    /// must queue boxes the wait (the step's future is boxed per request, and
    /// its size is copied).
    fn call<S: Next>(
        &self,
        request: Request<ProxyBody>,
        ctx: &RequestContext,
        next: &S,
    ) -> impl Future<Output = PipelineResult> + Send {
        let limiter = &self.limiter;
        let limits = &ctx.route.limits;
        if limiter.admit_now(limits) {
            return Either::Left(self.heed_429(next.call(request, ctx), ctx));
        }
        Either::Right(Box::pin(async move {
            limiter.acquire(limits, ctx.priority, ctx.deadline).await?;
            self.heed_429(next.call(request, ctx), ctx).await
        }))
    }
}

impl RateLimitStep {
    /// A 429 with a time to come back pauses the request's limits until then.
    async fn heed_429(
        &self,
        attempt: impl Future<Output = PipelineResult>,
        ctx: &RequestContext,
    ) -> PipelineResult {
        let response = attempt.await?;
        let limits = &ctx.route.limits;
        if response.status() == http::StatusCode::TOO_MANY_REQUESTS
            && !limits.is_empty()
            && let Some(wait) = provider_wait(response.headers(), SystemTime::now())
        {
            let wait = wait.min(MAX_PROVIDER_PAUSE);
            tracing::warn!(request_id = super::observe::id_str(&ctx.request_id), integration = %self.limiter.integration, wait_ms = wait.as_millis() as u64, "the provider answered 429; holding this endpoint's queue until it said to come back");
            self.limiter.pause(limits, Instant::now() + wait);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Duration as ConfigDuration, QueueConfig, RequestMatch};

    fn limit(
        name: &str,
        requests: u32,
        per_ms: u64,
        burst: u32,
        mode: WhenExceeded,
    ) -> RateLimitConfig {
        RateLimitConfig {
            name: name.into(),
            matches: RequestMatch::default(),
            requests,
            per: ConfigDuration::from_millis(per_ms),
            burst,
            scope: Default::default(),
            when_exceeded: mode,
            queue: QueueConfig {
                max_wait: ConfigDuration::from_secs(60),
                max_depth: 100,
            },
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_spacing() {
        let limiter = RateLimiter::new(
            "t".into(),
            &[limit("l", 10, 1000, 3, WhenExceeded::Queue)],
            Metrics::new(),
        )
        .0;
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..6 {
            limiter
                .acquire(&[0], Priority::Normal, far())
                .await
                .unwrap();
            times.push(start.elapsed());
        }
        // Three back to back, then one per 100 ms.
        assert_eq!(times[..3], [Duration::ZERO; 3]);
        assert_eq!(times[3], Duration::from_millis(100));
        assert_eq!(times[5], Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_requests_per_window() {
        // burst == requests: the sliding window is the binding rule.
        let limiter = RateLimiter::new(
            "t".into(),
            &[limit("l", 5, 1000, 5, WhenExceeded::Queue)],
            Metrics::new(),
        )
        .0;
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..12 {
            limiter
                .acquire(&[0], Priority::Normal, far())
                .await
                .unwrap();
            times.push(start.elapsed());
        }
        for (i, t) in times.iter().enumerate() {
            let in_window = times
                .iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                .count();
            assert!(
                in_window <= 5,
                "window starting at admission {i} holds {in_window}: {times:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reject_mode_answers_at_once_with_retry_after() {
        let limiter = RateLimiter::new(
            "t".into(),
            &[limit("l", 2, 1000, 2, WhenExceeded::Reject)],
            Metrics::new(),
        )
        .0;
        limiter
            .acquire(&[0], Priority::Normal, far())
            .await
            .unwrap();
        limiter
            .acquire(&[0], Priority::Normal, far())
            .await
            .unwrap();
        match limiter.acquire(&[0], Priority::Normal, far()).await {
            Err(ProxyError::RateLimited { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(1020))
            }
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_past_deadline_is_refused_up_front() {
        let limiter = RateLimiter::new(
            "t".into(),
            &[limit("l", 1, 10_000, 1, WhenExceeded::Queue)],
            Metrics::new(),
        )
        .0;
        limiter
            .acquire(&[0], Priority::Normal, far())
            .await
            .unwrap();
        let soon = Instant::now() + Duration::from_secs(1);
        let before = Instant::now();
        let result = limiter.acquire(&[0], Priority::Normal, soon).await;
        assert!(
            matches!(result, Err(ProxyError::QueueFull { .. })),
            "{result:?}"
        );
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_depth_is_bounded() {
        let mut config = limit("l", 1, 1000, 1, WhenExceeded::Queue);
        config.queue.max_depth = 2;
        let limiter = RateLimiter::new("t".into(), &[config], Metrics::new()).0;
        limiter
            .acquire(&[0], Priority::Normal, far())
            .await
            .unwrap();
        let a = tokio::spawn({
            let l = limiter.clone();
            async move { l.acquire(&[0], Priority::Normal, far()).await }
        });
        let b = tokio::spawn({
            let l = limiter.clone();
            async move { l.acquire(&[0], Priority::Normal, far()).await }
        });
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let third = limiter.acquire(&[0], Priority::Normal, far()).await;
        assert!(
            matches!(third, Err(ProxyError::QueueFull { .. })),
            "{third:?}"
        );
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn high_priority_goes_first() {
        let limiter = RateLimiter::new(
            "t".into(),
            &[limit("l", 1, 100, 1, WhenExceeded::Queue)],
            Metrics::new(),
        )
        .0;
        limiter
            .acquire(&[0], Priority::Normal, far())
            .await
            .unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (label, priority) in [
            ("low", Priority::Low),
            ("normal", Priority::Normal),
            ("high", Priority::High),
        ] {
            let (l, order) = (limiter.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                l.acquire(&[0], priority, far()).await.unwrap();
                order.lock().unwrap().push(label);
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["high", "normal", "low"]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_on_one_limit_holds_no_slot_of_another() {
        // Limit 0 (slow) is exhausted; limit 1 (fast) has room. A request
        // needing both must wait without keeping a request that needs only
        // limit 1 from going.
        let limiter = RateLimiter::new(
            "t".into(),
            &[
                limit("slow", 1, 10_000, 1, WhenExceeded::Queue),
                limit("fast", 1, 1000, 1, WhenExceeded::Queue),
            ],
            Metrics::new(),
        )
        .0;
        limiter
            .acquire(&[0], Priority::Normal, far())
            .await
            .unwrap();
        let both = tokio::spawn({
            let l = limiter.clone();
            async move {
                l.acquire(&[0, 1], Priority::Normal, far())
                    .await
                    .map(|_| Instant::now())
            }
        });
        tokio::task::yield_now().await;
        let start = Instant::now();
        limiter
            .acquire(&[1], Priority::Normal, far())
            .await
            .unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "fast-only request was held back"
        );
        let admitted_at = both.await.unwrap().unwrap();
        assert!(admitted_at >= start + Duration::from_secs(9));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiters_free_their_place() {
        let limiter = RateLimiter::new(
            "t".into(),
            &[limit("l", 1, 1000, 1, WhenExceeded::Queue)],
            Metrics::new(),
        )
        .0;
        limiter
            .acquire(&[0], Priority::Normal, far())
            .await
            .unwrap();
        let waiting = tokio::spawn({
            let l = limiter.clone();
            async move { l.acquire(&[0], Priority::Normal, far()).await }
        });
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;
        let start = Instant::now();
        limiter
            .acquire(&[0], Priority::Normal, far())
            .await
            .unwrap();
        // The aborted waiter did not take the next slot (window plus its guard).
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1) + window_guard(Duration::from_secs(1))
        );
    }
}
