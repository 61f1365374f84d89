//! Every webhook scheme's header parsing and check: the input is split into
//! signature headers and a body; a forgery must be refused, never panic.
#![no_main]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice_sidecar::config::{SignatureEncoding, WebhookScheme};
use sluice_sidecar::ingress::verify::{GenericHmac, WebhookKey, verify};

const SCHEMES: [WebhookScheme; 7] = WebhookScheme::ALL;

/// Every header a scheme reads; the input's lines fill them in turn.
const NAMES: [&str; 12] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "stripe-signature",
    "x-hub-signature-256",
    "x-github-delivery",
    "x-shopify-hmac-sha256",
    "x-slack-request-timestamp",
    "x-slack-signature",
    "x-razorpay-signature",
    "x-signature",
    "svix-signature",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == b'\n');
    let mut headers = HeaderMap::new();
    for name in NAMES {
        if let Some(value) = parts.next()
            && let Ok(value) = HeaderValue::from_bytes(value)
        {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    let body: Vec<u8> = parts.collect::<Vec<_>>().join(&b'\n');
    let generic = GenericHmac {
        header: "x-signature".into(),
        encoding: if selector & 0x10 == 0 {
            SignatureEncoding::Hex
        } else {
            SignatureEncoding::Base64
        },
        prefix: if selector & 0x20 == 0 {
            String::new()
        } else {
            "sha256=".into()
        },
    };
    let keys = [
        WebhookKey {
            value: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        },
        WebhookKey {
            value: "whpk_MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=",
        },
    ];
    let scheme = SCHEMES[usize::from(selector) % SCHEMES.len()];
    let _ = verify(
        scheme,
        Some(&generic),
        &headers,
        &body,
        &keys,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        Duration::from_secs(300),
    );
});
