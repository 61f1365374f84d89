//! What a provider says about its own rate limit, read from a response:
//! how many requests remain until when, and (when it says) of how many.
//!
//! Dialects, in the order they are tried (the first one present wins):
//! - the IETF httpapi draft's structured fields (draft-ietf-httpapi-
//!   ratelimit-headers-09): `RateLimit: "default";r=50;t=30` with
//!   `RateLimit-Policy: "default";q=100;w=60` for the quota;
//! - the draft's earlier fields: `RateLimit-Limit`, `RateLimit-Remaining`,
//!   `RateLimit-Reset` (seconds from now);
//! - `X-RateLimit-Limit`, `-Remaining`, `-Reset`, the reset in seconds from
//!   now or as a Unix time in seconds (GitHub, X) or milliseconds;
//! - Shopify's leaky bucket, `X-Shopify-Shop-Api-Call-Limit: 32/40`: the
//!   room left now, then one more per leak interval; a full bucket drains
//!   in 20 seconds at every plan's leak rate (40 at 2/s, 80 at 4/s).
//!
//! Pure and bounded: every field is read at most once, numbers saturate,
//! and anything malformed is as if absent (a provider's header never fails
//! a request).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::HeaderName;

/// The longest reset followed: a provider saying "none left for a day" is
/// more likely wrong than right, and nothing is held longer than this.
pub const MAX_RESET: Duration = Duration::from_secs(3600);

/// Shopify's bucket empties in this long on every plan.
const SHOPIFY_DRAIN: Duration = Duration::from_secs(20);

/// A reset above this is a Unix time, not a number of seconds from now.
const EPOCH_SECONDS_FROM: u64 = 1_000_000_000;
const EPOCH_MILLIS_FROM: u64 = 1_000_000_000_000;

/// One response's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// Requests the provider will still take before `reset` (a bucket:
    /// right now).
    pub remaining: u64,
    /// From when the response was read until the provider's window resets
    /// (a bucket: until it is empty).
    pub reset: Duration,
    /// The provider's quota for its window (a bucket: its size), when it says.
    pub limit: Option<u64>,
    /// A leaky bucket: one more request fits every this long.
    pub refill: Option<Duration>,
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const SHOPIFY_CALL_LIMIT: HeaderName = HeaderName::from_static("x-shopify-shop-api-call-limit");

/// The provider's report in `headers`, if it sent one; `now` reads Unix
/// times.
pub fn read(headers: &HeaderMap, now: SystemTime) -> Option<Report> {
    if let Some(report) = structured(headers) {
        return Some(report);
    }
    if let Some(report) = legacy(
        headers,
        [RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET],
        None,
    ) {
        return Some(report);
    }
    if let Some(report) = legacy(
        headers,
        [X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET],
        Some(now),
    ) {
        return Some(report);
    }
    shopify(headers)
}

/// `RateLimit` (and `RateLimit-Policy` for each policy's quota): of several
/// policies, the one allowing the slowest pace until its reset binds.
fn structured(headers: &HeaderMap) -> Option<Report> {
    let field = text(headers, &RATELIMIT)?;
    let policies = text(headers, &RATELIMIT_POLICY).map(parse_list);
    parse_list(field)
        .iter()
        .filter_map(|item| {
            let remaining = item.integer("r")?;
            // `t` is optional: without it the window is the policy's `w`.
            let policy = policies
                .as_ref()
                .and_then(|p| p.iter().find(|p| p.name == item.name));
            let reset = item
                .integer("t")
                .or_else(|| policy.and_then(|p| p.integer("w")))?;
            Some(Report {
                remaining,
                reset: seconds(reset),
                limit: policy.and_then(|p| p.integer("q")),
                refill: None,
            })
        })
        .min_by(|a, b| pace(a).total_cmp(&pace(b)))
}

/// Requests per second a report allows until its reset.
fn pace(report: &Report) -> f64 {
    report.remaining as f64 / report.reset.as_secs_f64().max(0.001)
}

/// The three-field dialects; `epoch_from` reads a large reset as a Unix time.
fn legacy(
    headers: &HeaderMap,
    [limit, remaining, reset]: [HeaderName; 3],
    now: Option<SystemTime>,
) -> Option<Report> {
    let remaining = leading_integer(text(headers, &remaining)?)?;
    let reset = leading_integer(text(headers, &reset)?)?;
    let reset = match now {
        Some(now) if reset >= EPOCH_MILLIS_FROM => until(now, Duration::from_millis(reset)),
        Some(now) if reset >= EPOCH_SECONDS_FROM => until(now, Duration::from_secs(reset)),
        _ => seconds(reset),
    };
    Some(Report {
        remaining,
        reset,
        limit: text(headers, &limit).and_then(leading_integer),
        refill: None,
    })
}

/// `used/size`: the room left now, one more each `20 s / size`, empty
/// after `used` of those.
fn shopify(headers: &HeaderMap) -> Option<Report> {
    let (used, size) = text(headers, &SHOPIFY_CALL_LIMIT)?.split_once('/')?;
    let (used, size) = (integer(used.trim())?, integer(size.trim())?);
    if size == 0 {
        return None;
    }
    let refill = SHOPIFY_DRAIN / u32::try_from(size).unwrap_or(u32::MAX);
    Some(Report {
        remaining: size.saturating_sub(used),
        reset: refill
            .saturating_mul(u32::try_from(used.min(size)).unwrap_or(u32::MAX))
            .min(MAX_RESET),
        limit: Some(size),
        refill: Some(refill),
    })
}

fn text<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

fn seconds(n: u64) -> Duration {
    Duration::from_secs(n).min(MAX_RESET)
}

/// From `now` until the Unix time `at` (zero if it has passed).
fn until(now: SystemTime, at: Duration) -> Duration {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    at.saturating_sub(now).min(MAX_RESET)
}

/// A non-negative decimal integer, saturating.
fn integer(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

/// The integer a field starts with: older drafts allowed `100, 100;w=60`.
fn leading_integer(s: &str) -> Option<u64> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    integer(&s[..end])
}

/// One member of a structured-field list: its name (a string or token)
/// and its integer parameters.
#[derive(Debug, PartialEq)]
struct Item<'s> {
    name: &'s str,
    params: Vec<(&'s str, u64)>,
}

impl Item<'_> {
    fn integer(&self, key: &str) -> Option<u64> {
        self.params.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// At most this many members are read from one field.
const MAX_ITEMS: usize = 16;

/// An RFC 9651 list, as far as these fields use it: members separated by
/// commas, each a string or token with `;key=value` parameters. Parameters
/// that are not non-negative integers are skipped; a member that cannot be
/// read ends the list.
fn parse_list(field: &str) -> Vec<Item<'_>> {
    let mut items = Vec::new();
    for member in field.split(',').take(MAX_ITEMS) {
        let mut parts = member.split(';');
        let name = parts.next().unwrap_or_default().trim();
        let name = match name.strip_prefix('"') {
            Some(quoted) => match quoted.strip_suffix('"') {
                Some(inner) if !inner.contains(['"', '\\']) => inner,
                _ => break,
            },
            None if is_token(name) => name,
            None => break,
        };
        let params = parts
            .filter_map(|p| {
                let (key, value) = p.trim().split_once('=')?;
                Some((key.trim(), integer(value.trim())?))
            })
            .take(MAX_ITEMS)
            .collect();
        items.push(Item { name, params });
    }
    items
}

fn is_token(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '*')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b))
}

#[cfg(test)]
mod tests;
