//! The `Accept` header of a `/metrics` scrape (any bytes a scraper sends):
//! negotiation never panics, and only a header that names OpenMetrics gets it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_contract::exposition::Exposition;

fuzz_target!(|data: &[u8]| {
    let format = Exposition::negotiate(Some(data));
    let names_it = String::from_utf8_lossy(data)
        .to_ascii_lowercase()
        .contains("application/openmetrics-text");
    if format == Exposition::OpenMetrics {
        assert!(names_it, "{data:?}");
    }
    assert_eq!(format, Exposition::negotiate(Some(data)));
});
