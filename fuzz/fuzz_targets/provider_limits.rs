//! A provider's rate-limit headers (any bytes it sends, in any of the
//! dialects at once): reading them never panics, never reports a reset
//! past the cap, and gives the same report twice.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice_sidecar::egress::provider_limits::{MAX_RESET, read};

/// Each input line `i:value` sets field `i` (mod the list) to `value`.
const FIELDS: [&str; 9] = [
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-shopify-shop-api-call-limit",
];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some((&selector, value)) = line.split_first() else {
            continue;
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let name = HeaderName::from_static(FIELDS[usize::from(selector) % FIELDS.len()]);
        headers.append(name, value);
    }
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let report = read(&headers, now);
    if let Some(r) = report {
        assert!(r.reset <= MAX_RESET, "{r:?}");
        if let Some(refill) = r.refill {
            assert!(refill <= Duration::from_secs(20), "{r:?}");
        }
    }
    assert_eq!(report, read(&headers, now));
});
