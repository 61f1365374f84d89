//! Durations (`1h30m`, `250ms`) and RFC 3339 timestamps as the CRD and the
//! sidecar config spell them: what parses must print back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_sidecar::config::{Duration, Timestamp};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(duration) = text.parse::<Duration>() {
        let again: Duration = duration
            .to_string()
            .parse()
            .expect("a printed duration parses");
        assert_eq!(again, duration, "{text:?} -> {duration}");
    }
    if let Ok(timestamp) = text.parse::<Timestamp>() {
        let again: Timestamp = timestamp
            .to_string()
            .parse()
            .expect("a printed timestamp parses");
        assert_eq!(again, timestamp, "{text:?} -> {timestamp}");
    }
});
