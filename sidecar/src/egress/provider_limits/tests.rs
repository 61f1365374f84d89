use super::*;

fn headers(fields: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    map
}

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

fn report(remaining: u64, reset_secs: u64, limit: Option<u64>) -> Option<Report> {
    Some(Report {
        remaining,
        reset: Duration::from_secs(reset_secs),
        limit,
        refill: None,
    })
}

#[test]
fn the_drafts_structured_fields() {
    // Shaped as in the draft's examples (draft-ietf-httpapi-ratelimit-headers-09).
    let h = headers(&[
        ("RateLimit-Policy", "\"default\";q=100;w=10"),
        ("RateLimit", "\"default\";r=50;t=30"),
    ]);
    assert_eq!(read(&h, at(0)), report(50, 30, Some(100)));
    // Two policies: the slower pace binds (1 per 60 s against 9 per second).
    let h = headers(&[
        (
            "RateLimit-Policy",
            "\"burst\";q=100;w=60,\"daily\";q=1000;w=86400",
        ),
        ("RateLimit", "\"burst\";r=90;t=10, \"daily\";r=1;t=60"),
    ]);
    assert_eq!(read(&h, at(0)), report(1, 60, Some(1000)));
    // No t: the policy's window; a token name; unknown parameters skipped.
    let h = headers(&[
        ("RateLimit-Policy", "hourly;q=500;w=3600;qu=\"requests\""),
        ("RateLimit", "hourly;r=7;pk=:cHsdsRA=:"),
    ]);
    assert_eq!(read(&h, at(0)), report(7, 3600, Some(500)));
    // Without the policy field there is no quota, and no window to default to.
    assert_eq!(
        read(&headers(&[("RateLimit", "\"x\";r=3;t=2")]), at(0)),
        report(3, 2, None)
    );
    assert_eq!(read(&headers(&[("RateLimit", "\"x\";r=3")]), at(0)), None);
}

#[test]
fn the_older_three_fields() {
    let h = headers(&[
        ("RateLimit-Limit", "100"),
        ("RateLimit-Remaining", "3"),
        ("RateLimit-Reset", "2"),
    ]);
    assert_eq!(read(&h, at(0)), report(3, 2, Some(100)));
    // An older draft's list form: the first number is the limit.
    let h = headers(&[
        ("RateLimit-Limit", "10, 10;w=1, 50;w=60"),
        ("RateLimit-Remaining", "9"),
        ("RateLimit-Reset", "1"),
    ]);
    assert_eq!(read(&h, at(0)), report(9, 1, Some(10)));
}

#[test]
fn x_ratelimit_in_seconds_or_unix_time() {
    // GitHub: a Unix time in seconds.
    let h = headers(&[
        ("x-ratelimit-limit", "5000"),
        ("x-ratelimit-remaining", "4999"),
        ("x-ratelimit-used", "1"),
        ("x-ratelimit-reset", "1700000600"),
        ("x-ratelimit-resource", "core"),
    ]);
    assert_eq!(read(&h, at(1_700_000_000)), report(4999, 600, Some(5000)));
    // A Unix time in milliseconds; a reset in the past is now.
    let h = headers(&[
        ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", "1700000002500"),
    ]);
    assert_eq!(
        read(&h, at(1_700_000_000)).map(|r| r.reset),
        Some(Duration::from_millis(2500))
    );
    let h = headers(&[
        ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", "1600000000"),
    ]);
    assert_eq!(read(&h, at(1_700_000_000)), report(0, 0, None));
    // Seconds from now.
    let h = headers(&[("X-RateLimit-Remaining", "12"), ("X-RateLimit-Reset", "45")]);
    assert_eq!(read(&h, at(1_700_000_000)), report(12, 45, None));
}

#[test]
fn shopifys_leaky_bucket() {
    let h = headers(&[("X-Shopify-Shop-Api-Call-Limit", "32/40")]);
    assert_eq!(
        read(&h, at(0)),
        Some(Report {
            remaining: 8,
            reset: Duration::from_secs(16),
            limit: Some(40),
            refill: Some(Duration::from_millis(500)),
        })
    );
    let h = headers(&[("X-Shopify-Shop-Api-Call-Limit", "41/40")]);
    assert_eq!(read(&h, at(0)).map(|r| r.remaining), Some(0));
    for bad in ["40", "a/40", "1/0", "/", "1/40/2"] {
        let h = headers(&[("X-Shopify-Shop-Api-Call-Limit", bad)]);
        assert_eq!(read(&h, at(0)), None, "{bad}");
    }
}

#[test]
fn the_newest_dialect_wins_and_malformed_is_absent() {
    let h = headers(&[
        ("RateLimit", "\"d\";r=1;t=5"),
        ("X-RateLimit-Remaining", "100"),
        ("X-RateLimit-Reset", "5"),
    ]);
    assert_eq!(read(&h, at(0)).map(|r| r.remaining), Some(1));
    for (name, value) in [
        ("RateLimit", "\"d;r=1;t=5"),
        ("RateLimit", "\"d\";r=-1;t=5"),
        ("RateLimit", "1d;r=1;t=5"),
        ("X-RateLimit-Remaining", "-3"),
        ("X-RateLimit-Remaining", ""),
    ] {
        let mut h = headers(&[(name, value)]);
        h.insert("x-ratelimit-reset", "5".parse().unwrap());
        assert_eq!(read(&h, at(0)), None, "{name}: {value}");
    }
    // A huge number saturates and a far reset is capped.
    let h = headers(&[
        ("X-RateLimit-Remaining", "99999999999999999999"),
        ("X-RateLimit-Reset", "86400"),
    ]);
    assert_eq!(
        read(&h, at(0)),
        Some(Report {
            remaining: u64::MAX,
            reset: MAX_RESET,
            limit: None,
            refill: None,
        })
    );
}
