//! Every bound a value of a ProviderIntegration (and so of the compiled
//! config) must stay within. The operator's rule table turns each into the
//! CRD's schema bounds or CEL rules and checks it in `compile`; the
//! sidecar's own check of a config file uses the same constants. Change a
//! bound here and all three move.

use std::fmt;

use crate::duration::Duration;

/// `min..=max`, the minimum excluded when `min_exclusive`; no `max` means
/// no upper bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound<T> {
    pub min: T,
    pub min_exclusive: bool,
    pub max: Option<T>,
}

impl<T> Bound<T> {
    /// The same bound in another unit or type.
    pub fn map<U>(self, f: impl Fn(T) -> U) -> Bound<U> {
        Bound {
            min: f(self.min),
            min_exclusive: self.min_exclusive,
            max: self.max.map(f),
        }
    }
}

impl<T: PartialOrd + Copy + fmt::Display> Bound<T> {
    pub fn holds(&self, value: T) -> bool {
        let above = if self.min_exclusive {
            value > self.min
        } else {
            value >= self.min
        };
        above && self.max.is_none_or(|max| value <= max)
    }

    /// `Err("must be ...")` naming the bound when `value` is outside it.
    pub fn check(&self, value: T) -> Result<(), String> {
        if self.holds(value) {
            Ok(())
        } else {
            Err(format!("{value} is out of range: must be {self}"))
        }
    }
}

impl<T: fmt::Display> fmt::Display for Bound<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.max, self.min_exclusive) {
            (Some(max), false) => write!(f, "between {} and {max}", self.min),
            (Some(max), true) => write!(f, "greater than {} and at most {max}", self.min),
            (None, false) => write!(f, "at least {}", self.min),
            (None, true) => write!(f, "greater than {}", self.min),
        }
    }
}

const fn at_least<T>(min: T) -> Bound<T> {
    Bound {
        min,
        min_exclusive: false,
        max: None,
    }
}

const fn between<T>(min: T, max: T) -> Bound<T> {
    Bound {
        min,
        min_exclusive: false,
        max: Some(max),
    }
}

/// Greater than zero, at most `max` (`None`: no upper bound).
const fn positive(max: Option<Duration>) -> Bound<Duration> {
    Bound {
        min: Duration::from_secs(0),
        min_exclusive: true,
        max,
    }
}

const fn hours(h: u64) -> Option<Duration> {
    Some(Duration::from_secs(h * 3600))
}

// Upstream and endpoint timing.
pub const TIMEOUT: Bound<Duration> = positive(hours(1));
pub const TOTAL_TIMEOUT: Bound<Duration> = positive(hours(2));
pub const BODY_TIMEOUT: Bound<Duration> = positive(hours(24));
pub const MAX_BUFFERED_BODY_BYTES: Bound<u64> = between(0, 64 << 20);

// Credentials.
pub const ROTATION_GRACE: Bound<Duration> =
    between(Duration::from_secs(0), Duration::from_secs(24 * 3600));
pub const REFRESH_BEFORE: Bound<Duration> = positive(hours(24));

// Rate limits.
pub const RATE_REQUESTS: Bound<u32> = between(1, 1_000_000);
pub const RATE_PER: Bound<Duration> = positive(hours(24));
pub const BURST: Bound<u32> = between(1, 1_000_000);
pub const QUEUE_MAX_WAIT: Bound<Duration> =
    between(Duration::from_secs(0), Duration::from_secs(2 * 3600));
pub const QUEUE_MAX_DEPTH: Bound<u32> = between(1, 1_000_000);
/// Disk one webhook's queue may take (`ingress.maxQueueBytes`, the
/// sidecar's `--max-queue-bytes`, the chart's `sidecar.webhookQueueBytes`):
/// below a MiB one large event would fill it.
pub const MAX_QUEUE_BYTES: Bound<u64> = at_least(1 << 20);

/// A byte count given as a flag, within `MAX_QUEUE_BYTES` (for clap's
/// `value_parser`, in both binaries).
pub fn queue_bytes_flag(text: &str) -> Result<u64, String> {
    let bytes: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes"))?;
    MAX_QUEUE_BYTES.check(bytes)?;
    Ok(bytes)
}

/// Values a keyed limit tracks at once.
pub const LIMIT_MAX_KEYS: Bound<u32> = between(1, 1_000_000);
/// The path segment a limit may be keyed by (1-based).
pub const LIMIT_KEY_PATH_SEGMENT: Bound<u32> = between(1, 32);

// Quotas.
pub const QUOTA_LIMIT: Bound<u64> = between(1, 1_000_000_000_000);
/// A quota's period, when it is a duration (else `calendarMonth`).
pub const QUOTA_PER: Bound<Duration> = between(
    Duration::from_secs(60),
    Duration::from_secs(366 * 24 * 3600),
);
/// A percentage of the quota an alert fires at.
pub const QUOTA_WARN_AT: Bound<u32> = between(1, 100);
pub const MAX_QUOTAS: usize = 16;
pub const MAX_WARN_AT: usize = 8;
/// Characters of the separator a query product splits values at.
pub const COST_SEPARATOR_CHARS: Bound<usize> = between(1, 8);
/// Query parameters a cost may multiply.
pub const MAX_COST_PARAMS: usize = 4;

// Response contracts.
pub const CONTRACT_SAMPLE: Bound<f64> = between(0.0, 1.0);
pub const CONTRACT_MAX_BODY_BYTES: Bound<u64> = between(1, 16 << 20);
pub const CONTRACT_STATUS: Bound<u16> = between(100, 599);
pub const MAX_CONTRACTS: usize = 16;
pub const MAX_CONTRACT_STATUSES: usize = 16;

// Retries.
pub const MAX_ATTEMPTS: Bound<u32> = between(1, 10);
pub const BACKOFF_INITIAL: Bound<Duration> = positive(hours(1));
pub const BACKOFF_MAX: Bound<Duration> = positive(hours(1));
pub const BACKOFF_MULTIPLIER: Bound<f64> = between(1.0, 10.0);
pub const JITTER: Bound<f64> = between(0.0, 1.0);
pub const MAX_RETRY_AFTER: Bound<Duration> = positive(hours(24));
pub const BUDGET_RATIO: Bound<f64> = between(0.0, 1.0);
pub const BUDGET_MIN_PER_SECOND: Bound<u32> = between(0, 1_000_000);
pub const BUDGET_WINDOW: Bound<Duration> = between(Duration::from_secs(1), Duration::from_secs(60));
/// Status codes a retry cannot fix (and 401s can lock accounts).
pub const PERMANENT_STATUSES: [u16; 5] = [400, 401, 403, 404, 422];

// Circuit breaker.
pub const FAILURE_RATIO: Bound<f64> = Bound {
    min: 0.0,
    min_exclusive: true,
    max: Some(1.0),
};
pub const MIN_REQUESTS: Bound<u32> = at_least(1);
pub const BREAKER_WINDOW: Bound<Duration> = positive(hours(24));
pub const OPEN_FOR: Bound<Duration> = positive(hours(24));
pub const HALF_OPEN_PROBES: Bound<u32> = between(1, 1000);

// Cache.
pub const CACHE_TTL: Bound<Duration> = positive(hours(24 * 30));

// Webhooks.
pub const WEBHOOK_TOLERANCE: Bound<Duration> = positive(hours(24));
pub const DEDUP_TTL: Bound<Duration> = positive(hours(24 * 30));
pub const DELIVERY_RATE: Bound<f64> = Bound {
    min: 0.0,
    min_exclusive: true,
    max: Some(100_000.0),
};
pub const DELIVERY_MAX_ATTEMPTS: Bound<u32> = between(1, 100);
pub const DELIVERY_TIMEOUT: Bound<Duration> = positive(hours(1));
/// Time between polls of the provider's events; a second at least (each
/// poll goes through the integration's limits as well).
pub const POLL_INTERVAL: Bound<Duration> =
    between(Duration::from_secs(1), Duration::from_secs(24 * 3600));
/// How far back a poll lists; it must also be within the webhook's dedup TTL.
pub const POLL_LOOKBACK: Bound<Duration> = positive(hours(24 * 30));
/// Fixed query parameters of a poll.
pub const MAX_POLL_QUERY: usize = 16;

// Egress listener.
pub const EGRESS_PORT: Bound<u16> = between(crate::layout::MIN_EGRESS_PORT, u16::MAX);

// List sizes (the CRD's maxItems).
pub const MAX_ENDPOINTS: usize = 64;
pub const MAX_RATE_LIMITS: usize = 32;
pub const MAX_CACHE_RULES: usize = 32;
pub const MAX_WEBHOOKS: usize = 16;
pub const MAX_RETRY_ON: usize = 16;
pub const MAX_METHODS: usize = 16;
pub const MAX_SCOPES: usize = 32;
pub const MAX_WEBHOOK_SECRETS: usize = 8;
pub const MAX_STATES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_say_what_they_hold() {
        assert!(MAX_ATTEMPTS.holds(1) && MAX_ATTEMPTS.holds(10));
        assert!(!MAX_ATTEMPTS.holds(0) && !MAX_ATTEMPTS.holds(11));
        assert!(!FAILURE_RATIO.holds(0.0) && FAILURE_RATIO.holds(1.0) && !FAILURE_RATIO.holds(1.5));
        assert!(!TIMEOUT.holds(Duration::from_secs(0)));
        assert!(TIMEOUT.holds(Duration::from_secs(3600)));
        assert!(!TIMEOUT.holds(Duration::from_secs(3601)));
        assert_eq!(
            MAX_ATTEMPTS.check(0).unwrap_err(),
            "0 is out of range: must be between 1 and 10"
        );
        assert_eq!(TIMEOUT.to_string(), "greater than 0s and at most 1h");
        assert_eq!(MIN_REQUESTS.to_string(), "at least 1");
    }
}
