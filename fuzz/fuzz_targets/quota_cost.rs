//! A request's quota cost from its query string and a header (any bytes an
//! app sends): reading it never panics, a query product is at least 1, and
//! a header's cost is a number or an error naming the header.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice_sidecar::config::QuotaCost;
use sluice_sidecar::egress::quota::cost_of;

fuzz_target!(|data: &[u8]| {
    // The first line is the query, the second the header's value.
    let mut lines = data.splitn(2, |b| *b == b'\n');
    let query = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let mut headers = HeaderMap::new();
    if let Some(value) = lines.next().and_then(|v| HeaderValue::from_bytes(v).ok()) {
        headers.insert(HeaderName::from_static("x-units"), value);
    }
    let product = QuotaCost::QueryProduct {
        params: vec!["origins".into(), "destinations".into()],
        separator: "|".into(),
    };
    let cost = cost_of(&product, Some(&query), &headers).expect("a query product always reads");
    assert!(cost >= 1);
    let header = QuotaCost::Header(HeaderName::from_static("x-units"));
    if let Err(error) = cost_of(&header, Some(&query), &headers) {
        assert!(error.to_string().starts_with("header x-units: "), "{error}");
    }
});
