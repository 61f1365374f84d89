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
//!
//! A limit with a `key` is one limit per value (`keys.rs`): the route names
//! the limit, and each admission first resolves it to its value's slot.
//!
//! With shared state, a `scope: Cluster` limit is decided by the shared
//! state instead ([`crate::shared::limits`]: one round trip per admission,
//! the whole limit for every sidecar together) while this pod's queue keeps
//! its order, priorities and bounds; a refusal says when to ask again, and
//! nobody here asks before. While the shared state is unreachable the limit
//! runs here on the pod's share (the config's `requests` and `burst`),
//! which has seen this pod's shared admissions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use futures_util::future::Either;
use http::Request;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::body::ProxyBody;
use super::error::ProxyError;
use super::provider_limits::{self, Report};
use super::retry::provider_wait;
use super::route::{Priority, RequestContext};
use super::step::{Next, PipelineResult, Step};
use crate::config::{LimitScope, RateLimitConfig, WhenExceeded};
use crate::metrics::{LimitLabels, LimitReasonLabels, Metrics, Name, Rejection};
use crate::shared::limits::{Admission, SharedLimit};
use crate::shared::{SharedState, SharedStateError};

mod keys;
mod provider;
pub use keys::KeySource;
use keys::{KeyTable, StoredValue};
use provider::ProviderBudget;

/// The longest a request queued on a shared limit goes without asking the
/// shared state again, whatever its last answer said: the ask also renews
/// this sidecar's place (`WAITING_LIFETIME`) among higher priorities.
const SHARED_ASK_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// How long a shared limit runs on the pod's share after the shared state
/// refused a call on purpose (a script error, a missing permission): asking
/// again at once would refuse again.
const SHARED_REFUSAL_HOLD: Duration = Duration::from_secs(1);

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
    depth_gauge: Gauge,
    /// No longer in the config: admits everything. Its slot stays, so
    /// requests routed by the previous config still find it.
    retired: bool,
    /// With shared state, a `scope: Cluster` limit: the whole of it, which
    /// every sidecar of the integration draws from.
    shared: Option<Arc<SharedLimit>>,
    /// The shared limit's last refusal said to ask again then.
    shared_retry_at: Instant,
    /// A queued request's admission is being asked of the shared state:
    /// the requests behind it wait for the answer.
    shared_asking: bool,
    /// Until then the shared limit runs on the pod's share (see
    /// `SHARED_REFUSAL_HOLD`).
    local_until: Instant,
    fallbacks: Counter,
    /// A keyed limit as configured: requests are admitted by its values'
    /// limits (`State::tables`), never by this one.
    keyed: bool,
    /// One value's limit of a keyed limit: the value as stored and when it
    /// was last used (its place in the table's recency).
    value: Option<(Box<[u8]>, u64)>,
    /// Requests holding this slot while they ask the shared state: it must
    /// not be forgotten and reused under them.
    pins: u32,
    /// Which value's limit this slot holds: a value's slot is reused once
    /// it is forgotten, and a later `pause` must not hold the next value.
    generation: u64,
    /// The provider's last report, while it binds (`provider.rs`).
    provider: Option<ProviderBudget>,
    /// `requests` of the whole limit (a Cluster limit's, before division):
    /// what a provider's stated quota is compared with.
    whole_requests: u32,
    /// When this pod last gave the shared state the provider's budget.
    provider_shared_at: Option<Instant>,
    /// It is giving it now: nothing is admitted under the limit meanwhile.
    provider_sharing: bool,
    /// What the provider said, exported; made at its first report (a limit
    /// whose provider says nothing has no such series).
    provider_gauges: Option<ProviderGauges>,
}

/// `sluice_provider_ratelimit_*` of one limit (its values share them).
#[derive(Clone)]
struct ProviderGauges {
    remaining: Gauge,
    limit: Gauge,
    reset: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl ProviderGauges {
    fn new(metrics: &Metrics, integration: &Name, limit: &Name) -> Self {
        let labels = LimitLabels {
            integration: integration.clone(),
            limit: limit.clone(),
        };
        ProviderGauges {
            remaining: metrics.provider_remaining.get_or_create(&labels).clone(),
            limit: metrics.provider_limit.get_or_create(&labels).clone(),
            reset: metrics.provider_reset.get_or_create(&labels).clone(),
        }
    }

    fn show(&self, report: &Report) {
        let saturating = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.remaining.set(saturating(report.remaining));
        if let Some(quota) = report.limit {
            self.limit.set(saturating(quota));
        }
        self.reset.set(report.reset.as_secs_f64());
    }
}

impl Limit {
    fn new(
        config: &RateLimitConfig,
        shared: Option<Arc<SharedLimit>>,
        depth_gauge: Gauge,
        fallbacks: Counter,
        // The caller's now: a limit made while admitting must not start
        // after the instant the admission is decided at.
        now: Instant,
    ) -> Self {
        let mut limit = Limit {
            depth_gauge,
            fallbacks,
            shared: None,
            shared_retry_at: now,
            shared_asking: false,
            local_until: now,
            name: Arc::from(config.name.as_str()),
            requests: 1,
            window: Duration::ZERO,
            interval: Duration::ZERO,
            tolerance: Duration::ZERO,
            when_exceeded: config.when_exceeded,
            max_wait: Duration::ZERO,
            max_depth: 0,
            tat: now,
            log: VecDeque::new(),
            waiting: 0,
            retired: false,
            keyed: false,
            value: None,
            pins: 0,
            generation: 0,
            provider: None,
            whole_requests: 0,
            provider_shared_at: None,
            provider_sharing: false,
            provider_gauges: None,
        };
        limit.configure(config, shared);
        limit
    }

    /// Keeps room for a full window's log: a limit that is not one value's
    /// among thousands pays for its log once, not while admitting.
    fn reserve_log(&mut self) {
        self.log
            .reserve(self.requests.min(4096).saturating_sub(self.log.len()));
    }

    /// Nothing in its window, nobody waiting or asking, no pause: a fresh
    /// limit would decide exactly the same, so forgetting it is safe.
    fn is_idle(&mut self, now: Instant) -> bool {
        self.forget_expired(now);
        self.waiting == 0
            && self.pins == 0
            && !self.shared_asking
            && self.log.is_empty()
            && self.tat <= now
            && self.shared_retry_at <= now
            && !self.provider.is_some_and(|b| b.binds(now))
    }

    /// When it will be idle if nothing more is admitted.
    fn idle_at(&self, now: Instant) -> Instant {
        let last = self.log.back().map_or(now, |&t| t + self.window);
        last.max(self.tat).max(self.shared_retry_at).max(
            self.provider
                .map_or(now, |b| b.available_at(now, usize::MAX)),
        )
    }

    /// The provider's budget lets one more go now (or has lapsed).
    fn provider_allows(&mut self, now: Instant) -> bool {
        match self.provider {
            Some(b) if b.binds(now) => b.allows(now),
            Some(_) => {
                self.provider = None;
                true
            }
            None => true,
        }
    }

    fn spend_provider(&mut self, now: Instant) {
        if let Some(b) = &mut self.provider
            && b.binds(now)
        {
            b.spend(now);
        }
    }

    /// Applies a provider's report (`admitted_at`: when the request it
    /// answers was admitted here): binds when the configured limit alone
    /// would send more than it leaves before its reset, else lifts any
    /// earlier one.
    fn follow(&mut self, report: &Report, admitted_at: Instant, now: Instant, up: bool) {
        // A remote limit's budget is the shared state's, for every pod.
        let share = if self.is_remote(up, now) {
            1.0
        } else {
            f64::from(self.requests as u32) / f64::from(self.whole_requests.max(1))
        };
        let since = self
            .log
            .iter()
            .rev()
            .take_while(|&&t| t > admitted_at)
            .count();
        let budget = ProviderBudget::new(report, share, since as u64, now);
        // Past what any limit may send in a window: nothing to follow.
        let plenty = budget.capacity()
            >= u64::from(
                sluice_contract::bounds::RATE_REQUESTS
                    .max
                    .unwrap_or(u32::MAX),
            );
        let binds = !plenty
            && self.configured_available_at(now, budget.capacity() as usize, up)
                < now + report.reset;
        self.provider = binds.then_some(budget);
    }

    /// Takes the new numbers and keeps the history: the admissions already
    /// made are facts about the provider's window whatever the new limit is.
    fn configure(&mut self, c: &RateLimitConfig, shared: Option<Arc<SharedLimit>>) {
        self.shared = shared;
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
        self.whole_requests = c.whole().requests;
        self.retired = false;
        while self.log.len() > requests {
            self.log.pop_front();
        }
    }

    fn forget_expired(&mut self, now: Instant) {
        while self.log.front().is_some_and(|&t| t + self.window <= now) {
            self.log.pop_front();
        }
    }

    /// Decided by the shared state now (`up`: it answers), not here.
    fn is_remote(&self, up: bool, now: Instant) -> bool {
        up && self.shared.is_some() && !self.retired && now >= self.local_until
    }

    fn has_room(&mut self, now: Instant, up: bool) -> bool {
        if self.retired {
            return true;
        }
        if !self.provider_allows(now) {
            return false;
        }
        if self.is_remote(up, now) {
            return !self.shared_asking && !self.provider_sharing && self.shared_retry_at <= now;
        }
        self.forget_expired(now);
        self.log.len() < self.requests && self.tat <= now + self.tolerance
    }

    /// Takes a slot here; a remote limit is only taken once the shared
    /// state admitted (`record_shared`).
    fn consume(&mut self, now: Instant, up: bool) {
        if self.retired || self.is_remote(up, now) {
            return;
        }
        if self.shared.is_some() {
            self.fallbacks.inc();
        }
        self.tat = self.tat.max(now) + self.interval;
        self.log.push_back(now);
        self.spend_provider(now);
    }

    /// Gives back the slot `consume` took at `at`: the request it was for
    /// did not go (a shared limit it also needed refused).
    fn unconsume(&mut self, at: Instant) {
        if self.retired {
            return;
        }
        if let Some(i) = self.log.iter().rposition(|&t| t == at) {
            self.log.remove(i);
            self.tat = self.tat.checked_sub(self.interval).unwrap_or(at).max(at);
            if let Some(b) = &mut self.provider {
                b.refund();
            }
        }
    }

    /// The shared state admitted a request: remember it here too, so that
    /// if the shared state fails this pod's share starts from what it sent
    /// (never more than full: the share is smaller than the whole).
    fn record_shared(&mut self, now: Instant) {
        self.forget_expired(now);
        if self.log.len() >= self.requests {
            self.log.pop_front();
        }
        self.log.push_back(now);
        self.tat = (self.tat.max(now) + self.interval).min(now + self.tolerance + self.interval);
        self.spend_provider(now);
    }

    /// The shared state said to ask again after `wait`.
    fn hold_remote(&mut self, now: Instant, wait: Duration) {
        self.shared_retry_at = now + wait.min(SHARED_ASK_AT_LEAST_EVERY);
    }

    /// When the request `ahead` places behind the next one could be admitted,
    /// assuming nothing else arrives. An estimate for queueing decisions.
    fn available_at(&self, now: Instant, ahead: usize, up: bool) -> Instant {
        if self.retired {
            return now;
        }
        let provider = match self.provider {
            Some(b) if b.binds(now) => b.available_at(now, ahead),
            _ => now,
        };
        self.configured_available_at(now, ahead, up).max(provider)
    }

    /// `available_at` by the configured limit alone.
    fn configured_available_at(&self, now: Instant, ahead: usize, up: bool) -> Instant {
        if self.is_remote(up, now) {
            // Other sidecars draw from it too: the share is the best guess
            // of this pod's pace.
            return self.shared_retry_at.max(now) + self.interval * ahead as u32;
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

/// While the provider's budget binds, how often a pod gives the shared
/// state the newest one.
const PROVIDER_SHARE_EVERY: Duration = Duration::from_millis(100);

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

/// A request whose pod limits are taken and whose shared limits must now be
/// asked of the shared state.
struct SharedAsk {
    /// Taken here at `at`; given back if the shared state refuses.
    reserved: Vec<usize>,
    at: Instant,
    shared: Vec<(usize, Arc<SharedLimit>)>,
}

/// What [`State::admit_if_free`] found.
enum Free {
    Admitted,
    AskShared(SharedAsk),
    Busy,
}

/// A queued request the dispatcher asks the shared state about.
struct QueuedAsk {
    key: WaiterKey,
    ask: SharedAsk,
    /// The highest priority of the other requests queued here on its
    /// shared limits, which the other sidecars let go first.
    still_waiting: Option<Priority>,
}

/// The limiter slots a request's limits resolved to: the route's own, or
/// with a keyed limit among them, its value's slot in that one's place.
#[derive(Debug)]
pub enum Grant<'a> {
    Route(&'a [usize]),
    Keyed {
        slots: Vec<usize>,
        /// Each slot's generation when admitted (see `Limit::generation`).
        generations: Vec<u64>,
    },
}

impl Grant<'_> {
    fn slots(&self) -> &[usize] {
        match self {
            Grant::Route(slots) => slots,
            Grant::Keyed { slots, .. } => slots,
        }
    }
}

/// A keyed limit had no room for another value.
struct TableFull {
    limit: Name,
    retry_after: Duration,
}

struct State {
    limits: Vec<Limit>,
    waiters: BTreeMap<WaiterKey, Waiter>,
    next_seq: u64,
    /// The values of each keyed limit, by the slot of the limit as configured.
    tables: HashMap<usize, KeyTable>,
    /// Slots of forgotten values, to reuse.
    free: Vec<usize>,
    /// Slots of values whose keyed limit was removed or lost its key: they
    /// admit everything and are reused once nobody waits on them.
    draining: Vec<usize>,
    next_generation: u64,
}

impl State {
    /// The slots `limits` resolve to for this request: a keyed limit's value's
    /// slot, made (and a least recently used idle value forgotten) if new.
    fn resolve<'a>(
        &mut self,
        limits: &'a [usize],
        source: KeySource<'_>,
        now: Instant,
    ) -> Result<Grant<'a>, TableFull> {
        if !limits.iter().any(|&i| self.limits[i].keyed) {
            return Ok(Grant::Route(limits));
        }
        let mut slots = Vec::with_capacity(limits.len());
        let mut generations = Vec::with_capacity(limits.len());
        for &i in limits {
            let slot = if self.limits[i].keyed {
                self.value_slot(i, source, now)?
            } else {
                i
            };
            slots.push(slot);
            generations.push(self.limits[slot].generation);
        }
        Ok(Grant::Keyed { slots, generations })
    }

    /// The slot of this request's value of the keyed limit at `template`.
    fn value_slot(
        &mut self,
        template: usize,
        source: KeySource<'_>,
        now: Instant,
    ) -> Result<usize, TableFull> {
        let Self {
            limits,
            tables,
            free,
            draining,
            next_generation,
            ..
        } = self;
        let table = tables
            .get_mut(&template)
            .expect("a keyed limit has a table");
        let value = StoredValue::of(source.value(table.key()));
        let value = value.bytes();
        let last_used = |slot: usize| limits[slot].value.as_ref().map_or(0, |(_, t)| *t);
        if let Some((slot, tick)) = table.touch(value, last_used) {
            if let Some((_, used)) = &mut limits[slot].value {
                *used = tick;
            }
            return Ok(slot);
        }
        if table.is_full() {
            let idle = table
                .least_recent()
                .find(|&(_, slot)| limits[slot].is_idle(now));
            let Some((tick, slot)) = idle else {
                let retry_after = table
                    .least_recent()
                    .map(|(_, slot)| limits[slot].idle_at(now))
                    .min()
                    .unwrap_or(now)
                    .saturating_duration_since(now);
                return Err(TableFull {
                    limit: limits[template].name.clone(),
                    retry_after,
                });
            };
            let (forgotten, _) = limits[slot].value.take().expect("a value's slot");
            table.forget(&forgotten, tick);
            free.push(slot);
        }
        // Values of a removed keyed limit go back once nobody waits on them.
        draining.retain(|&slot| {
            let limit = &limits[slot];
            let done = limit.waiting == 0 && limit.pins == 0;
            if done {
                free.push(slot);
            }
            !done
        });
        let template_limit = &limits[template];
        let mut limit = Limit::new(
            &table.config,
            template_limit
                .shared
                .as_ref()
                .map(|s| Arc::new(s.for_value(value))),
            template_limit.depth_gauge.clone(),
            template_limit.fallbacks.clone(),
            now,
        );
        *next_generation += 1;
        limit.generation = *next_generation;
        let slot = free.pop().unwrap_or(limits.len());
        let tick = table.insert(value, slot);
        limit.value = Some((value.into(), tick));
        if slot == limits.len() {
            limits.push(limit);
        } else {
            limits[slot] = limit;
        }
        Ok(slot)
    }

    /// Takes a slot of every limit if all have room and nobody waits ahead
    /// (a waiter would otherwise be overtaken); shared limits are left to
    /// ask about.
    fn admit_if_free(&mut self, limits: &[usize], now: Instant, up: bool) -> Free {
        let free = limits.iter().all(|&i| {
            let limit = &mut self.limits[i];
            limit.waiting == 0 && limit.has_room(now, up)
        });
        if !free {
            return Free::Busy;
        }
        match self.take(limits, now, up) {
            None => Free::Admitted,
            Some(ask) => Free::AskShared(ask),
        }
    }

    /// Consumes the pod limits among `limits`; the shared ones, if any, are
    /// returned to ask about.
    fn take(&mut self, limits: &[usize], now: Instant, up: bool) -> Option<SharedAsk> {
        let mut reserved = Vec::new();
        let mut shared = Vec::new();
        for &i in limits {
            let limit = &mut self.limits[i];
            match &limit.shared {
                Some(s) if limit.is_remote(up, now) => {
                    limit.pins += 1;
                    shared.push((i, s.clone()));
                }
                _ => {
                    limit.consume(now, up);
                    reserved.push(i);
                }
            }
        }
        (!shared.is_empty()).then_some(SharedAsk {
            reserved,
            at: now,
            shared,
        })
    }

    /// Applies the shared state's answer to `ask`; true when admitted.
    fn settle(&mut self, ask: &SharedAsk, answer: &Result<Admission, SharedStateError>) -> bool {
        let now = Instant::now();
        for &(i, _) in &ask.shared {
            let limit = &mut self.limits[i];
            limit.shared_asking = false;
            limit.pins -= 1;
        }
        match answer {
            Ok(Admission::Admitted) => {
                for &(i, _) in &ask.shared {
                    self.limits[i].record_shared(now);
                }
                return true;
            }
            Ok(Admission::Wait(waits)) => {
                for (&(i, _), &wait) in ask.shared.iter().zip(waits) {
                    self.limits[i].hold_remote(now, wait);
                }
            }
            Err(SharedStateError::Refused(..)) => {
                for &(i, _) in &ask.shared {
                    self.limits[i].local_until = now + SHARED_REFUSAL_HOLD;
                }
            }
            // The shared state marked itself down: the next decision is here.
            Err(_) => {}
        }
        self.refund(ask);
        false
    }

    fn refund(&mut self, ask: &SharedAsk) {
        for &i in &ask.reserved {
            self.limits[i].unconsume(ask.at);
        }
    }

    fn remove_waiter(&mut self, key: &WaiterKey) -> Option<Waiter> {
        let waiter = self.waiters.remove(key)?;
        for &i in &waiter.limits {
            let limit = &mut self.limits[i];
            limit.waiting -= 1;
            // The gauge is the limit's, summed over its values.
            limit.depth_gauge.dec();
        }
        Some(waiter)
    }

    /// Admits every waiter that can go now, and returns when the next may
    /// and the waiters to ask the shared state about (their pod limits
    /// taken, their shared limits marked as being asked).
    fn dispatch(&mut self, now: Instant, up: bool) -> (Option<Instant>, Vec<QueuedAsk>) {
        let mut blocked = vec![false; self.limits.len()];
        let mut asks = Vec::new();
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
                if blocked[i] || !self.limits[i].has_room(now, up) {
                    admissible = false;
                }
            }
            if !admissible {
                // Keep later arrivals behind this one only where it is short.
                for &i in &limits {
                    if !self.limits[i].has_room(now, up) {
                        blocked[i] = true;
                    }
                }
                continue;
            }
            match self.take(&limits, now, up) {
                None => {
                    if let Some(waiter) = self.remove_waiter(&key) {
                        let _ = waiter.admit.send(());
                    }
                }
                Some(ask) => {
                    for &(i, _) in &ask.shared {
                        self.limits[i].shared_asking = true;
                    }
                    let still_waiting = self
                        .waiters
                        .iter()
                        .filter(|(k, w)| {
                            **k != key
                                && w.limits
                                    .iter()
                                    .any(|i| ask.shared.iter().any(|(j, _)| i == j))
                        })
                        .map(|(k, _)| k.0.0)
                        .max();
                    asks.push(QueuedAsk {
                        key,
                        ask,
                        still_waiting,
                    });
                }
            }
        }
        // Wake when the first limit someone is short of gets room. A limit
        // with room is no reason to wake: its waiters wait on other limits.
        let next = self
            .limits
            .iter_mut()
            .filter(|l| l.waiting > 0)
            .filter_map(|l| (!l.has_room(now, up)).then(|| l.available_at(now, 0, up)))
            .min()
            .map(|at| at.max(now + Duration::from_micros(100)));
        (next, asks)
    }
}

/// The rate limits of one integration.
pub struct RateLimiter {
    state: Mutex<State>,
    /// Shared with the dispatcher, which holds only a weak reference to the limiter.
    wake_dispatcher: Arc<Notify>,
    integration: Name,
    shared: Option<SharedState>,
    metrics: Metrics,
}

/// A priority as the shared state compares them.
fn rank(priority: Priority) -> u8 {
    match priority {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

impl RateLimiter {
    /// Spawns the dispatcher on the current Tokio runtime; it ends when the
    /// limiter is dropped. Returns the slot of each limit by name, as
    /// [`RateLimiter::reconfigure`] does. With `shared`, `scope: Cluster`
    /// limits are decided by the shared state.
    pub fn new(
        integration: Name,
        configs: &[RateLimitConfig],
        metrics: Metrics,
        shared: Option<SharedState>,
    ) -> (Arc<Self>, HashMap<Name, usize>) {
        let limiter = Arc::new(Self {
            state: Mutex::new(State {
                limits: Vec::new(),
                waiters: BTreeMap::new(),
                next_seq: 0,
                tables: HashMap::new(),
                free: Vec::new(),
                draining: Vec::new(),
                next_generation: 0,
            }),
            wake_dispatcher: Arc::new(Notify::new()),
            integration,
            shared,
            metrics,
        });
        let slots = limiter.reconfigure(configs);
        tokio::spawn(dispatcher(
            Arc::downgrade(&limiter),
            limiter.wake_dispatcher.clone(),
        ));
        (limiter, slots)
    }

    /// The whole of a `scope: Cluster` limit, when there is shared state.
    fn shared_limit(&self, c: &RateLimitConfig) -> Option<Arc<SharedLimit>> {
        if self.shared.is_none() || c.scope != LimitScope::Cluster {
            return None;
        }
        let whole = c.whole();
        let requests = whole.requests.max(1);
        let per = c.per.get();
        let interval = per / requests;
        Some(Arc::new(SharedLimit::new(
            &self.integration,
            &c.name,
            requests,
            per + window_guard(per),
            interval,
            interval * whole.burst.saturating_sub(1),
        )))
    }

    fn shared_up(&self) -> bool {
        self.shared.as_ref().is_some_and(SharedState::is_up)
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
            let labels = LimitLabels {
                integration: self.integration.clone(),
                limit: Arc::from(config.name.as_str()),
            };
            self.metrics
                .ratelimit_queue_capacity
                .get_or_create(&labels)
                .set(queue_capacity(config));
            for &reason in Rejection::ALL {
                self.metrics
                    .ratelimit_rejected
                    .get_or_create_owned(&LimitReasonLabels {
                        integration: labels.integration.clone(),
                        limit: labels.limit.clone(),
                        reason,
                    });
            }
            let shared = self.shared_limit(config);
            // Values' slots come after their limit's: never a configured name.
            let configured = state
                .limits
                .iter()
                .position(|l| l.value.is_none() && *l.name == *config.name);
            match configured {
                Some(slot) => {
                    state.limits[slot].configure(config, shared);
                    state.limits[slot].reserve_log();
                    self.rekey(&mut state, slot, config, &labels);
                    slots.insert(Name::from(config.name.as_str()), slot);
                }
                None => {
                    let gauge = self
                        .metrics
                        .ratelimit_queue_depth
                        .get_or_create(&labels)
                        .clone();
                    // Only shared limits have fallbacks worth a series.
                    let fallbacks = match shared {
                        Some(_) => self
                            .metrics
                            .shared_state_fallbacks
                            .get_or_create(&labels)
                            .clone(),
                        None => Counter::default(),
                    };
                    let mut limit = Limit::new(config, shared, gauge, fallbacks, Instant::now());
                    limit.reserve_log();
                    state.limits.push(limit);
                    let slot = state.limits.len() - 1;
                    self.rekey(&mut state, slot, config, &labels);
                    slots.insert(Name::from(config.name.as_str()), slot);
                }
            }
        }
        let retired: Vec<usize> = (0..state.limits.len())
            .filter(|&slot| {
                state.limits[slot].value.is_none() && !slots.values().any(|&s| s == slot)
            })
            .collect();
        for slot in retired {
            state.limits[slot].retired = true;
            drain_values(&mut state, slot);
        }
        drop(state);
        self.wake_dispatcher.notify_one();
        slots
    }

    /// Gives the limit at `slot` its values' table when `config` has a key
    /// (the values' limits take the new numbers and keep their history), or
    /// lets its values go when it no longer has one.
    fn rekey(
        &self,
        state: &mut State,
        slot: usize,
        config: &RateLimitConfig,
        labels: &LimitLabels,
    ) {
        let Some(key) = &config.key else {
            drain_values(state, slot);
            return;
        };
        let State { limits, tables, .. } = state;
        let table = tables.entry(slot).or_insert_with(|| {
            let tracked = self.metrics.ratelimit_keys.get_or_create(labels).clone();
            KeyTable::new(config.clone(), tracked)
        });
        if table.key() != key {
            // Other values now: the old ones are forgotten as they idle.
            tracing::info!(integration = %self.integration, limit = %config.name, "a rate limit is keyed by something else now; its values start anew");
        }
        table.config = config.clone();
        let shared = limits[slot].shared.clone();
        for value_slot in table.slots().collect::<Vec<_>>() {
            let limit = &mut limits[value_slot];
            let shared = match (&shared, &limit.value) {
                (Some(s), Some((value, _))) => Some(Arc::new(s.for_value(value))),
                _ => None,
            };
            limit.configure(config, shared);
        }
        limits[slot].keyed = true;
    }

    fn table_full(&self, full: TableFull) -> ProxyError {
        self.reject(&full.limit, Rejection::KeysFull);
        ProxyError::QueueFull {
            limit: full.limit.to_string(),
            retry_after: full.retry_after,
        }
    }

    fn reject(&self, limit: &Name, reason: Rejection) {
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

    /// Admits nothing under `limits` for `wait`: the provider answered 429
    /// and said when to come back, so the requests queued behind must not
    /// each earn their own 429 (a 429 storm). Shared limits are held at
    /// every sidecar before this returns, so once the app sees the 429 no
    /// other sidecar admits under them (one round trip, bounded by the call
    /// timeout; a failure is logged and each sidecar learns from its own).
    pub async fn pause(&self, grant: &Grant<'_>, wait: Duration) {
        let now = Instant::now();
        let until = now + wait;
        let up = self.shared_up();
        let mut shared = Vec::new();
        {
            let mut state = self.state.lock().expect("rate limiter lock poisoned");
            for (k, &i) in grant.slots().iter().enumerate() {
                if let Grant::Keyed { generations, .. } = grant
                    && state.limits[i].generation != generations[k]
                {
                    // The value went idle and was forgotten meanwhile.
                    continue;
                }
                let limit = &mut state.limits[i];
                // Admission needs tat <= now + tolerance, so this holds until `until`.
                limit.tat = limit.tat.max(until + limit.tolerance);
                if limit.is_remote(up, now) {
                    limit.hold_remote(now, wait);
                    shared.extend(limit.shared.clone());
                }
            }
        }
        self.wake_dispatcher.notify_one();
        if let (Some(engine), false) = (&self.shared, shared.is_empty()) {
            let limits: Vec<&SharedLimit> = shared.iter().map(|s| &**s).collect();
            if let Err(error) = engine.pause(&limits, wait).await {
                tracing::warn!(integration = %self.integration, %error, "the other sidecars were not told of the provider's 429; each will learn it from its own");
            }
        }
    }

    /// Follows the provider's `report` on the response to a request admitted
    /// under `grant` at `admitted_at`: on the one limit of the request it is
    /// about (see [`reported_limit`]), and exports what it said. For a
    /// remote limit, returns the call that gives the shared state the new
    /// budget: this pod admits nothing more under the limit until it is
    /// done, and the response waits for it, so the app's next request is
    /// decided by the new budget.
    pub fn follow_provider(
        self: &Arc<Self>,
        grant: &Grant<'_>,
        admitted_at: Instant,
        report: &Report,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let now = Instant::now();
        let up = self.shared_up();
        let mut state = self.state.lock().expect("rate limiter lock poisoned");
        let slot = reported_limit(&state, grant, report)?;
        let limit = &mut state.limits[slot];
        let was_binding = limit.provider.is_some_and(|b| b.binds(now));
        limit.follow(report, admitted_at, now, up);
        let binds = limit.provider.is_some_and(|b| b.binds(now));
        let gauges = limit.provider_gauges.get_or_insert_with(|| {
            ProviderGauges::new(&self.metrics, &self.integration, &limit.name)
        });
        gauges.show(report);
        // Every pod of a remote limit follows the budget the shared state
        // keeps: tell it when the budget starts or lifts, and while it binds
        // at most every PROVIDER_SHARE_EVERY (each response would be a call).
        let share = match (&limit.shared, &self.shared) {
            (Some(shared), Some(engine))
                if limit.is_remote(up, now)
                    && (was_binding != binds
                        || (binds
                            && limit
                                .provider_shared_at
                                .is_none_or(|at| now >= at + PROVIDER_SHARE_EVERY))) =>
            {
                limit.provider_shared_at = Some(now);
                limit.provider_sharing = true;
                limit.pins += 1;
                // The shared state takes off what every pod admitted since.
                let budget = binds.then(|| {
                    ProviderBudget::new(report, 1.0, 0, now).shared(now, now - admitted_at)
                });
                Some((engine.clone(), shared.clone(), budget))
            }
            _ => None,
        };
        drop(state);
        if was_binding && !binds {
            // Lifted: whoever waits on it may go now.
            self.wake_dispatcher.notify_one();
        }
        let (engine, shared, budget) = share?;
        let limiter = self.clone();
        Some(async move {
            if let Err(error) = engine.follow(&shared, budget).await {
                tracing::warn!(integration = %limiter.integration, %error, "the other sidecars were not told of the provider's rate-limit headers; each follows its own responses");
            }
            let mut state = limiter.state.lock().expect("rate limiter lock poisoned");
            let limit = &mut state.limits[slot];
            limit.provider_sharing = false;
            limit.pins -= 1;
            drop(state);
            limiter.wake_dispatcher.notify_one();
        })
    }

    /// Admits the request at once if every limit in `limits` has room here
    /// and nobody waits ahead of it: the common case, decided without a
    /// future. A shared limit is never decided here.
    pub fn admit_now<'a>(&self, limits: &'a [usize], source: KeySource<'_>) -> Option<Grant<'a>> {
        if limits.is_empty() {
            return Some(Grant::Route(limits));
        }
        let (now, up) = (Instant::now(), self.shared_up());
        let mut state = self.state.lock().expect("rate limiter lock poisoned");
        // A full table is reported by `acquire`.
        let grant = state.resolve(limits, source, now).ok()?;
        let slots = grant.slots();
        if up && slots.iter().any(|&i| state.limits[i].is_remote(up, now)) {
            return None;
        }
        matches!(state.admit_if_free(slots, now, up), Free::Admitted).then_some(grant)
    }

    async fn ask_shared(
        &self,
        ask: &SharedAsk,
        priority: Priority,
        still_waiting: Option<Priority>,
    ) -> Result<Admission, SharedStateError> {
        let engine = self
            .shared
            .as_ref()
            .expect("only a limiter with shared state has shared limits");
        let limits: Vec<&SharedLimit> = ask.shared.iter().map(|(_, s)| &**s).collect();
        engine
            .admit(&limits, rank(priority), still_waiting.map(rank))
            .await
    }

    /// Waits until every limit in `limits` admits the request, or fails with
    /// 429 when a `Reject` limit is full, the queue is full, or the wait would
    /// pass `maxWait` or `deadline`.
    pub async fn acquire<'a>(
        &self,
        limits: &'a [usize],
        source: KeySource<'_>,
        priority: Priority,
        deadline: Instant,
    ) -> Result<Grant<'a>, ProxyError> {
        if limits.is_empty() {
            return Ok(Grant::Route(limits));
        }
        let started = Instant::now();
        // Nobody waits ahead: ask the shared state straight away. A second
        // or third try follows only a failed call (then decided here) or a
        // refusal that came back with no wait at all.
        for _ in 0..3 {
            let (grant, ask) = {
                let mut state = self.state.lock().expect("rate limiter lock poisoned");
                let now = Instant::now();
                let grant = match state.resolve(limits, source, now) {
                    Ok(grant) => grant,
                    Err(full) => {
                        drop(state);
                        return Err(self.table_full(full));
                    }
                };
                match state.admit_if_free(grant.slots(), now, self.shared_up()) {
                    Free::Admitted => return Ok(grant),
                    Free::AskShared(ask) => (grant, ask),
                    Free::Busy => break,
                }
            };
            let answer = self.ask_shared(&ask, priority, None).await;
            let mut state = self.state.lock().expect("rate limiter lock poisoned");
            if state.settle(&ask, &answer) {
                return Ok(grant);
            }
        }
        self.queue(limits, source, priority, deadline, started)
            .await
    }

    /// Queues the request behind the ones already waiting, or refuses it.
    async fn queue<'a>(
        &self,
        route_limits: &'a [usize],
        source: KeySource<'_>,
        priority: Priority,
        deadline: Instant,
        started: Instant,
    ) -> Result<Grant<'a>, ProxyError> {
        let now = Instant::now();
        let up = self.shared_up();
        let (key, admitted, give_up_at, names, grant) = {
            let mut state = self.state.lock().expect("rate limiter lock poisoned");
            let grant = match state.resolve(route_limits, source, now) {
                Ok(grant) => grant,
                Err(full) => {
                    drop(state);
                    return Err(self.table_full(full));
                }
            };
            let limits = grant.slots();
            let mut give_up_at = deadline;
            let mut expected = now;
            for &i in limits {
                let limit = &mut state.limits[i];
                let has_room = limit.has_room(now, up);
                let at = limit.available_at(now, limit.waiting, up);
                let retry_after = at.saturating_duration_since(now);
                if limit.when_exceeded == WhenExceeded::Reject && (!has_room || limit.waiting > 0) {
                    let name = limit.name.clone();
                    drop(state);
                    self.reject(&name, Rejection::RateLimited);
                    return Err(ProxyError::RateLimited {
                        limit: name.to_string(),
                        retry_after,
                    });
                }
                if limit.waiting >= limit.max_depth {
                    let name = limit.name.clone();
                    drop(state);
                    self.reject(&name, Rejection::QueueFull);
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
                let (name, retry_after) = slowest(&state, limits, now, up);
                drop(state);
                self.reject(&name, Rejection::Deadline);
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
                limit.depth_gauge.inc();
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
            (key, admitted, give_up_at, names, grant)
        };
        self.wake_dispatcher.notify_one();

        let limits = grant.slots();
        let mut admitted = admitted;
        match tokio::time::timeout_at(give_up_at, &mut admitted).await {
            Ok(Ok(())) => {
                self.observe_wait(&names, started.elapsed());
                Ok(grant)
            }
            Ok(Err(_)) => unreachable!("the dispatcher never drops an admission unsent"),
            Err(_elapsed) => {
                let mut state = self.state.lock().expect("rate limiter lock poisoned");
                if state.remove_waiter(&key).is_none() {
                    // Admitted in the same instant the wait ran out: go ahead.
                    drop(state);
                    self.observe_wait(&names, started.elapsed());
                    return Ok(grant);
                }
                let (name, retry_after) = slowest(&state, limits, Instant::now(), self.shared_up());
                drop(state);
                self.wake_dispatcher.notify_one();
                self.reject(&name, Rejection::Deadline);
                Err(ProxyError::QueueFull {
                    limit: name.to_string(),
                    retry_after,
                })
            }
        }
    }
}

/// How many may wait on a limit: a keyed limit's queues are per value, and
/// its depth gauge sums them.
fn queue_capacity(config: &RateLimitConfig) -> i64 {
    let values = if config.key.is_some() {
        i64::from(config.max_keys)
    } else {
        1
    };
    i64::from(config.queue.max_depth).saturating_mul(values)
}

/// Lets the values of the keyed limit at `slot` go: they admit everything
/// (their waiters leave when their other limits allow) and their slots are
/// reused once nobody waits on them.
fn drain_values(state: &mut State, slot: usize) {
    state.limits[slot].keyed = false;
    let Some(table) = state.tables.remove(&slot) else {
        return;
    };
    table.clear_gauge();
    for value_slot in table.slots() {
        let limit = &mut state.limits[value_slot];
        limit.retired = true;
        limit.value = None;
        state.draining.push(value_slot);
    }
}

/// The slot of the request's limit a provider's report is about: the one
/// whose whole `requests` is nearest the quota the provider states (a
/// search API's 30 a minute, not the account's 5000 an hour), else the
/// request's strictest. A value's slot forgotten since is skipped.
fn reported_limit(state: &State, grant: &Grant<'_>, report: &Report) -> Option<usize> {
    let live = grant.slots().iter().enumerate().filter_map(|(k, &slot)| {
        let limit = &state.limits[slot];
        let same = match grant {
            Grant::Keyed { generations, .. } => limit.generation == generations[k],
            Grant::Route(_) => true,
        };
        (same && !limit.retired).then_some((slot, limit))
    });
    let distance = |l: &Limit| -> f64 {
        match report.limit {
            Some(quota) => (f64::from(l.whole_requests.max(1)) / quota.max(1) as f64)
                .ln()
                .abs(),
            // Requests per second: the strictest binds first.
            None => f64::from(l.requests as u32) / l.window.as_secs_f64().max(1e-3),
        }
    };
    live.min_by(|(_, a), (_, b)| distance(a).total_cmp(&distance(b)))
        .map(|(slot, _)| slot)
}

/// The limit among `limits` that will have room last, and how long until then.
fn slowest(state: &State, limits: &[usize], now: Instant, up: bool) -> (Name, Duration) {
    limits
        .iter()
        .map(|&i| &state.limits[i])
        .map(|l| (l.name.clone(), l.available_at(now, l.waiting, up)))
        .max_by_key(|(_, at)| *at)
        .map(|(n, at)| (n, at.saturating_duration_since(now)))
        .expect("limits is not empty")
}

async fn dispatcher(limiter: Weak<RateLimiter>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        // Hold the limiter only while dispatching (and asking), so a
        // replaced config drops it.
        let Some(strong) = limiter.upgrade() else {
            return;
        };
        let (next, asks) = strong
            .state
            .lock()
            .expect("rate limiter lock poisoned")
            .dispatch(Instant::now(), strong.shared_up());
        if !asks.is_empty() {
            let answers = futures_util::future::join_all(
                asks.iter()
                    .map(|q| strong.ask_shared(&q.ask, q.key.0.0, q.still_waiting)),
            )
            .await;
            let mut state = strong.state.lock().expect("rate limiter lock poisoned");
            for (queued, answer) in asks.iter().zip(&answers) {
                if state.settle(&queued.ask, answer) {
                    match state.remove_waiter(&queued.key) {
                        Some(waiter) => {
                            let _ = waiter.admit.send(());
                        }
                        // It gave up meanwhile: its pod slots go back (the
                        // shared one is spent).
                        None => state.refund(&queued.ask),
                    }
                }
            }
            // Dispatch again at once: the answers changed what can go.
            continue;
        }
        drop(strong);
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
    /// `upstream.providerLimits: Auto`.
    follow_provider: bool,
}

impl RateLimitStep {
    pub fn new(limiter: Arc<RateLimiter>, follow_provider: bool) -> Self {
        Self {
            limiter,
            follow_provider,
        }
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
        if let Some(grant) = limiter.admit_now(limits, KeySource::of(&request)) {
            return Either::Left(self.heed_provider(next.call(request, ctx), ctx, grant));
        }
        Either::Right(Box::pin(async move {
            let grant = limiter
                .acquire(limits, KeySource::of(&request), ctx.priority, ctx.deadline)
                .await?;
            self.heed_provider(next.call(request, ctx), ctx, grant)
                .await
        }))
    }
}

impl RateLimitStep {
    /// A 429 with a time to come back pauses the request's limits until
    /// then; the provider's rate-limit headers slow the limit they are about.
    async fn heed_provider(
        &self,
        attempt: impl Future<Output = PipelineResult>,
        ctx: &RequestContext,
        grant: Grant<'_>,
    ) -> PipelineResult {
        // Read only when the provider's headers will be followed.
        let admitted_at = (self.follow_provider && !grant.slots().is_empty()).then(Instant::now);
        let response = attempt.await?;
        if let Some(admitted_at) = admitted_at
            && let Some(report) = provider_limits::read(response.headers(), SystemTime::now())
            && let Some(sharing) = self.limiter.follow_provider(&grant, admitted_at, &report)
        {
            // Rare (a budget starting, lifting, or renewed at most every
            // PROVIDER_SHARE_EVERY): boxed, not in every request's future.
            Box::pin(sharing).await;
        }
        if response.status() == http::StatusCode::TOO_MANY_REQUESTS
            && !grant.slots().is_empty()
            && let Some(wait) = provider_wait(response.headers(), SystemTime::now())
        {
            let wait = wait.min(MAX_PROVIDER_PAUSE);
            tracing::warn!(request_id = super::observe::id_str(&ctx.request_id), integration = %self.limiter.integration, wait_ms = wait.as_millis() as u64, "the provider answered 429; holding this endpoint's queue until it said to come back");
            // Boxed: rare, and it would otherwise enlarge every request's future.
            Box::pin(self.limiter.pause(&grant, wait)).await;
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests;
