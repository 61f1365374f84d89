//! Which fields may travel in a trailer section. A trailer arrives after
//! the body, too late for anything that frames, routes, authenticates or
//! describes the message (RFC 9110 §6.5.1); a recipient that merged such a
//! field into the header section would act on what the sender never put
//! in its header. Sluice drops them in both directions.

use http::header::{self, HeaderMap, HeaderName};

/// Fields never forwarded in trailers.
const FORBIDDEN: [HeaderName; 33] = [
    // Framing and the connection.
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TRAILER,
    header::TE,
    header::CONNECTION,
    header::UPGRADE,
    // Routing.
    header::HOST,
    header::MAX_FORWARDS,
    // Request modifiers and controls.
    header::CACHE_CONTROL,
    header::EXPECT,
    header::PRAGMA,
    header::RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    // Authentication and state.
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::WWW_AUTHENTICATE,
    header::PROXY_AUTHENTICATE,
    header::COOKIE,
    header::SET_COOKIE,
    // Response controls.
    header::AGE,
    header::EXPIRES,
    header::DATE,
    header::LOCATION,
    header::RETRY_AFTER,
    header::VARY,
    // Content format.
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::CONTENT_LANGUAGE,
];

fn forbidden(name: &HeaderName) -> bool {
    FORBIDDEN.contains(name)
        || name == "keep-alive"
        || name == "proxy-connection"
        || name.as_str().starts_with("x-sluice-")
}

/// Removes the fields that must not be forwarded in a trailer section.
pub fn sanitize(trailers: &mut HeaderMap) {
    if trailers.keys().any(forbidden) {
        let names: Vec<HeaderName> = trailers.keys().filter(|n| forbidden(n)).cloned().collect();
        for name in names {
            trailers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_routing_and_credentials_are_dropped_the_rest_kept() {
        let mut trailers = HeaderMap::new();
        for (name, value) in [
            ("content-length", "0"),
            ("host", "evil.example"),
            ("authorization", "Bearer stolen"),
            ("transfer-encoding", "chunked"),
            ("x-sluice-error", "fake"),
            ("grpc-status", "0"),
            ("x-checksum", "abc"),
            ("server-timing", "db;dur=53"),
        ] {
            trailers.append(name, value.parse().unwrap());
        }
        sanitize(&mut trailers);
        let mut kept: Vec<&str> = trailers.keys().map(HeaderName::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["grpc-status", "server-timing", "x-checksum"]);
    }
}
