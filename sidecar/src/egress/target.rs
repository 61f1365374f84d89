//! Which request targets the app may send. Routing, limits and the cache
//! match the path as sent, and the base path is put in front of it byte for
//! byte; an upstream that normalises paths must not be able to serve
//! something else, so targets it could read differently are refused.

/// Why the target of an app request is refused (`None`: accepted).
pub fn refusal(path_and_query: &[u8]) -> Option<&'static str> {
    if !path_and_query.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Some(
            "the request target has bytes outside visible ASCII: percent-encode them (RFC 3986)",
        );
    }
    let path_end = path_and_query
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path_and_query.len());
    if has_dot_segment(&path_and_query[..path_end]) {
        return Some(
            "the request path has a dot-segment (., .., or their percent-encoded forms): \
             send the path the provider should see, without them",
        );
    }
    None
}

/// Whether any segment of `path` is `.` or `..`, counting what upstreams
/// are known to read as such: `%2e` for a dot, `%2f`, `%5c` and `\` as
/// separators, and a `;parameter` after the dots (`..;/`).
fn has_dot_segment(path: &[u8]) -> bool {
    // Per segment: how many dots its name has, and whether it has anything else.
    let (mut dots, mut other, mut in_params) = (0u32, false, false);
    let is_dot_name = |dots: u32, other: bool| !other && (dots == 1 || dots == 2);
    let mut i = 0;
    while i < path.len() {
        let (byte, width) = match (path[i], path.get(i + 1), path.get(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                match (high.to_ascii_lowercase(), low.to_ascii_lowercase()) {
                    (b'2', b'e') => (b'.', 3),
                    (b'2', b'f') => (b'/', 3),
                    (b'5', b'c') => (b'\\', 3),
                    _ => (b'%', 1),
                }
            }
            (byte, _, _) => (byte, 1),
        };
        match byte {
            b'/' | b'\\' => {
                if is_dot_name(dots, other) {
                    return true;
                }
                (dots, other, in_params) = (0, false, false);
            }
            _ if in_params => {}
            b';' => in_params = true,
            b'.' => dots += 1,
            _ => other = true,
        }
        i += width;
    }
    is_dot_name(dots, other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_targets_pass() {
        for ok in [
            "/",
            "/v1/charges?expand=a%2Fb",
            "/v1/files/report.v2.csv",
            "/v1/...",
            "/v1/a..b/.well-known/x",
            "/v1/search?q=../..",
            "/v1/%2e%2e%2e",
            "/v1/%25",
        ] {
            assert_eq!(refusal(ok.as_bytes()), None, "{ok}");
        }
    }

    #[test]
    fn dot_segments_in_any_spelling_are_refused() {
        for bad in [
            "/..",
            "/v1/../admin",
            "/v1/./x",
            "/v1/%2e%2e/admin",
            "/v1/%2E./admin",
            "/v1/..%2fadmin",
            "/v1/..%2Fadmin",
            "/v1/..%5cadmin",
            "/v1/..\\admin",
            "/v1/..;/admin",
            "/v1/.;x/y",
            "/v1/..?q=1",
        ] {
            assert!(refusal(bad.as_bytes()).is_some(), "{bad}");
        }
    }

    #[test]
    fn raw_non_ascii_and_controls_are_refused() {
        assert!(refusal("/v1/caf\u{e9}".as_bytes()).is_some());
        assert!(refusal(b"/v1/a\x7fb").is_some());
        assert!(refusal(b"/v1/a b").is_some());
    }
}
