//! Keyed limits: one limit per value of a header, query parameter or path
//! segment (a provider that counts per account or per shop), each value with
//! the whole rate, burst and queue.
//!
//! The values live in a [`KeyTable`] bounded by `maxKeys`. When it is full,
//! the least recently used value whose limit is idle (nothing in its window,
//! nobody waiting) is forgotten: forgetting it loses nothing, since a fresh
//! limit for that value would decide the same. A value still counting is
//! never forgotten, so a request with yet another value is refused instead
//! of resetting someone's limit.

use std::collections::{BTreeMap, HashMap};

use http::{HeaderMap, Request, Uri};
use prometheus_client::metrics::gauge::Gauge;

use crate::config::{LimitKey, RateLimitConfig};

/// Values longer than this are kept as their SHA-256 digest, so the table's
/// memory is bounded whatever the app sends, and two values never merge.
const MAX_INLINE_VALUE: usize = 128;

/// How many of the least recently used values a new one looks at for one
/// to forget: past them, the table is full of limits still counting.
pub(super) const EVICTION_SCAN: usize = 64;

/// The parts of a request a limit may be keyed by.
#[derive(Clone, Copy)]
pub struct KeySource<'a> {
    headers: &'a HeaderMap,
    uri: &'a Uri,
}

impl<'a> KeySource<'a> {
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            headers: request.headers(),
            uri: request.uri(),
        }
    }

    /// The request's value for `key` (a header's first value, a query
    /// parameter as sent, a path segment); empty when it has none, so every
    /// request without one shares a single limit.
    pub fn value(&self, key: &LimitKey) -> &'a [u8] {
        match key {
            LimitKey::Header(name) => self.headers.get(name).map_or(&[], |v| v.as_bytes()),
            LimitKey::Query(param) => self
                .uri
                .query()
                .and_then(|q| query_value(q, param))
                .unwrap_or_default()
                .as_bytes(),
            LimitKey::PathSegment(n) => path_segment(self.uri.path(), *n)
                .unwrap_or_default()
                .as_bytes(),
        }
    }
}

/// The first `param=value` of a raw query; a bare `param` has an empty value.
fn query_value<'q>(query: &'q str, param: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == param).then_some(value)
    })
}

/// Segment `n` (1-based) of an origin-form path.
fn path_segment(path: &str, n: u32) -> Option<&str> {
    let index = usize::try_from(n.checked_sub(1)?).ok()?;
    path.strip_prefix('/')?.split('/').nth(index)
}

/// A value as the table stores it: itself, or its digest when long.
pub(super) enum StoredValue<'v> {
    Inline(&'v [u8]),
    Digest(ring::digest::Digest),
}

impl<'v> StoredValue<'v> {
    pub(super) fn of(value: &'v [u8]) -> Self {
        if value.len() <= MAX_INLINE_VALUE {
            StoredValue::Inline(value)
        } else {
            StoredValue::Digest(ring::digest::digest(&ring::digest::SHA256, value))
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            StoredValue::Inline(v) => v,
            StoredValue::Digest(d) => d.as_ref(),
        }
    }
}

/// The values of one keyed limit and the limiter slots holding their limits.
pub(super) struct KeyTable {
    /// What each new value's limit is made from.
    pub config: RateLimitConfig,
    /// value → slot.
    slots: HashMap<Box<[u8]>, usize>,
    /// Last use → slot, least recent first.
    recency: BTreeMap<u64, usize>,
    clock: u64,
    /// `sluice_ratelimit_keys`: how many values are tracked.
    tracked: Gauge,
}

impl KeyTable {
    pub fn new(config: RateLimitConfig, tracked: Gauge) -> Self {
        Self {
            config,
            slots: HashMap::new(),
            recency: BTreeMap::new(),
            clock: 0,
            tracked,
        }
    }

    pub fn key(&self) -> &LimitKey {
        self.config
            .key
            .as_ref()
            .expect("a key table is made for a keyed limit")
    }

    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.config.max_keys.max(1) as usize
    }

    /// The slot of `value` if it is tracked, marked as just used; `last_used`
    /// is the slot's previous mark, which it replaces.
    pub fn touch(
        &mut self,
        value: &[u8],
        last_used: impl FnOnce(usize) -> u64,
    ) -> Option<(usize, u64)> {
        let slot = *self.slots.get(value)?;
        self.recency.remove(&last_used(slot));
        let tick = self.tick();
        self.recency.insert(tick, slot);
        Some((slot, tick))
    }

    /// Tracks a new value at `slot`; returns its use mark.
    pub fn insert(&mut self, value: &[u8], slot: usize) -> u64 {
        let tick = self.tick();
        self.slots.insert(value.into(), slot);
        self.recency.insert(tick, slot);
        self.tracked.set(self.slots.len() as i64);
        tick
    }

    /// The least recently used values, oldest first, with their use marks.
    pub fn least_recent(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.recency
            .iter()
            .take(EVICTION_SCAN)
            .map(|(&tick, &slot)| (tick, slot))
    }

    /// Forgets `value` (its slot, used last at `tick`).
    pub fn forget(&mut self, value: &[u8], tick: u64) {
        self.slots.remove(value);
        self.recency.remove(&tick);
        self.tracked.set(self.slots.len() as i64);
    }

    /// Every slot, for a new config or for retiring them all.
    pub fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots.values().copied()
    }

    /// Stops counting: the table is being dropped.
    pub fn clear_gauge(&self) {
        self.tracked.set(0);
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_value(uri: &str, header: Option<(&str, &str)>, key: &LimitKey) -> Vec<u8> {
        let mut builder = Request::builder().uri(uri);
        if let Some((name, value)) = header {
            builder = builder.header(name, value);
        }
        let request = builder.body(()).unwrap();
        KeySource::of(&request).value(key).to_vec()
    }

    #[test]
    fn values_by_header_query_and_segment() {
        let header = LimitKey::Header(http::HeaderName::from_static("x-account-id"));
        assert_eq!(
            source_value("/v1/x", Some(("X-Account-Id", "acct_1")), &header),
            b"acct_1"
        );
        assert_eq!(source_value("/v1/x", None, &header), b"");

        let query = LimitKey::Query("account".into());
        assert_eq!(
            source_value("/v1/x?a=1&account=b%20c&account=z", None, &query),
            b"b%20c"
        );
        assert_eq!(source_value("/v1/x?accounts=1", None, &query), b"");
        assert_eq!(source_value("/v1/x?account", None, &query), b"");

        let second = LimitKey::PathSegment(2);
        assert_eq!(source_value("/v1/shops/acme?x=1", None, &second), b"shops");
        assert_eq!(source_value("/v1", None, &second), b"");
        let third = LimitKey::PathSegment(3);
        assert_eq!(source_value("/v1/shops/acme/orders", None, &third), b"acme");
    }

    #[test]
    fn long_values_are_digests_and_stay_distinct() {
        let a = vec![b'a'; 1000];
        let mut b = a.clone();
        b[999] = b'b';
        let (da, db) = (StoredValue::of(&a), StoredValue::of(&b));
        assert_eq!(da.bytes().len(), 32);
        assert_ne!(da.bytes(), db.bytes());
        assert_eq!(StoredValue::of(b"short").bytes(), b"short");
    }
}
