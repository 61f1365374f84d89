//! Following what the provider says about its own limit
//! (`upstream.providerLimits: Auto`): when it reports fewer requests left
//! until its reset than the configured limit would send by then, the limit
//! spreads what is left evenly until the reset, and goes back to its own
//! pace at the reset. It only ever holds requests back: the configured
//! limit still applies on top.

use std::time::Duration;

use tokio::time::Instant;

use crate::egress::provider_limits::Report;
use crate::shared::limits::SharedBudget;

/// At most `remaining` more admissions before `until`: `ready` of them at
/// once, the rest one per `interval` from `next`.
#[derive(Clone, Copy, Debug)]
pub(super) struct ProviderBudget {
    remaining: u64,
    ready: u64,
    until: Instant,
    interval: Duration,
    next: Instant,
}

impl ProviderBudget {
    /// What `report` leaves this pod: `share` is its part of the limit (1
    /// for a Pod limit), `admitted_since` the requests this limit let go
    /// after the one the report answers (the provider had not counted them).
    ///
    /// A window's remainder is spread evenly until its reset, the first at
    /// once. A leaky bucket's room is used at once, then one request per
    /// refill until the bucket would have drained.
    pub fn new(report: &Report, share: f64, admitted_since: u64, now: Instant) -> Self {
        let ours = |n: u64| (n as f64 * share.clamp(0.0, 1.0)).floor() as u64;
        let until = now + report.reset;
        match report.refill {
            None => {
                let remaining = ours(report.remaining).saturating_sub(admitted_since);
                let interval = match u32::try_from(remaining) {
                    Ok(0) => report.reset,
                    Ok(n) => report.reset / n,
                    Err(_) => Duration::ZERO,
                };
                ProviderBudget {
                    remaining,
                    ready: remaining.min(1),
                    until,
                    interval,
                    next: now + interval,
                }
            }
            Some(refill) => {
                // This pod's part of the leak.
                let interval = refill.div_f64(share.clamp(1e-6, 1.0));
                let room = ours(report.remaining);
                let later = (report.reset.as_secs_f64() / interval.as_secs_f64().max(1e-9)) as u64;
                let ready = room.saturating_sub(admitted_since);
                let later = later.saturating_sub(admitted_since.saturating_sub(room));
                ProviderBudget {
                    remaining: ready + later,
                    ready,
                    until,
                    interval,
                    next: now + interval,
                }
            }
        }
    }

    /// The budget as the shared state keeps it, from `now`, for a request
    /// admitted `age` ago.
    pub fn shared(&self, now: Instant, age: Duration) -> SharedBudget {
        SharedBudget {
            remaining: self.remaining,
            ready: self.ready,
            reset: self.until.saturating_duration_since(now),
            interval: self.interval,
            age,
        }
    }

    /// How many it lets go before its reset.
    pub fn capacity(&self) -> u64 {
        self.remaining
    }

    /// Still binding at `now`; past its reset it is forgotten.
    pub fn binds(&self, now: Instant) -> bool {
        now < self.until
    }

    pub fn allows(&self, now: Instant) -> bool {
        self.remaining > 0 && (self.ready > 0 || self.next <= now)
    }

    pub fn spend(&mut self, now: Instant) {
        self.remaining = self.remaining.saturating_sub(1);
        if self.ready > 0 {
            self.ready -= 1;
        } else {
            self.next = self.next.max(now) + self.interval;
        }
    }

    /// Gives back what `spend` took (the request did not go).
    pub fn refund(&mut self) {
        self.remaining = self.remaining.saturating_add(1);
        self.ready = self.ready.saturating_add(1);
    }

    /// When the request `ahead` places behind the next one may go.
    pub fn available_at(&self, now: Instant, ahead: usize) -> Instant {
        let ahead = ahead as u64;
        if ahead >= self.remaining {
            return self.until;
        }
        if ahead < self.ready {
            return now;
        }
        let paced = u32::try_from(ahead - self.ready).unwrap_or(u32::MAX);
        self.next.max(now) + self.interval.saturating_mul(paced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(remaining: u64, reset_secs: u64) -> Report {
        Report {
            remaining,
            reset: Duration::from_secs(reset_secs),
            limit: None,
            refill: None,
        }
    }

    /// When a budget lets requests go, polled every 100 ms until it lapses.
    fn admissions(mut budget: ProviderBudget, now: Instant) -> Vec<Duration> {
        let mut at = Vec::new();
        let mut t = now;
        while budget.binds(t) {
            while budget.allows(t) {
                budget.spend(t);
                at.push(t - now);
            }
            t += Duration::from_millis(100);
        }
        at
    }

    #[tokio::test(start_paused = true)]
    async fn a_windows_remainder_is_spread_until_the_reset() {
        let now = Instant::now();
        let budget = ProviderBudget::new(&window(3, 3), 1.0, 0, now);
        assert_eq!(budget.available_at(now, 2), now + Duration::from_secs(2));
        assert_eq!(budget.available_at(now, 3), now + Duration::from_secs(3));
        assert_eq!(
            admissions(budget, now),
            [0, 1000, 2000].map(Duration::from_millis),
            "one per second, the first at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn none_left_holds_until_the_reset_and_no_longer() {
        let now = Instant::now();
        let budget = ProviderBudget::new(&window(0, 2), 1.0, 0, now);
        assert!(!budget.allows(now));
        assert_eq!(budget.available_at(now, 0), now + Duration::from_secs(2));
        assert!(!budget.binds(now + Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_and_the_requests_in_flight_come_off() {
        let now = Instant::now();
        assert_eq!(
            ProviderBudget::new(&window(10, 1), 0.5, 2, now).capacity(),
            3
        );
        assert_eq!(
            ProviderBudget::new(&window(10, 1), 1.0, 20, now).capacity(),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_buckets_room_goes_at_once_then_one_per_refill() {
        let now = Instant::now();
        // 37/40, leaking one per 500 ms: 3 now, then one per 500 ms for the
        // 18.5 s the bucket takes to drain.
        let bucket = Report {
            remaining: 3,
            reset: Duration::from_millis(18_500),
            limit: Some(40),
            refill: Some(Duration::from_millis(500)),
        };
        let at = admissions(ProviderBudget::new(&bucket, 1.0, 0, now), now);
        assert_eq!(at[..5], [0, 0, 0, 500, 1000].map(Duration::from_millis));
        // The 37th refill falls on the drain instant, when the budget lapses.
        assert_eq!(at.len(), 3 + 36);
        // One request already in flight takes one of the room.
        assert_eq!(ProviderBudget::new(&bucket, 1.0, 1, now).capacity(), 39);
    }
}
