//! A page of a provider's event list (any bytes the provider answers, as
//! Stripe's, and as a next-page-token listing): reading it never panics,
//! each event is a slice of the page as written, and a next page is asked
//! for only when the page says more follow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_sidecar::config::{CursorFrom, Duration, PollCursor, PollingConfig};
use sluice_sidecar::ingress::poll::listing;

fuzz_target!(|data: &[u8]| {
    let stripe = PollingConfig {
        path: "/v1/events".into(),
        query: Default::default(),
        interval: Duration::from_secs(60),
        items: "/data".into(),
        id: "/id".into(),
        created: "/created".into(),
        cursor: PollCursor {
            param: "starting_after".into(),
            from: CursorFrom::LastId,
        },
        has_more: Some("/has_more".into()),
        lookback: Duration::from_secs(3600),
    };
    let mut token = stripe.clone();
    token.items = "/results/0/events".into();
    token.has_more = None;
    token.cursor.from = CursorFrom::Pointer("/meta/next~1page".into());
    let text = String::from_utf8_lossy(data);
    for polling in [&stripe, &token] {
        if let Ok(page) = listing::read(data, polling) {
            for item in &page.items {
                assert!(text.contains(item.json.get()), "an event is the page's own text");
            }
            if page.next.is_some() && polling.has_more.is_none() {
                assert!(!page.items.is_empty(), "an empty page ends the listing");
            }
        }
    }
});
