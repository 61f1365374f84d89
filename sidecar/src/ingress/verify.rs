//! Webhook signature schemes, verified over the raw body bytes as received.
//!
//! Every comparison is ring's constant-time HMAC verification (which checks
//! lengths first) or an Ed25519 verification. A missing or malformed header
//! fails; nothing fails open.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderMap;
use ring::{hmac, signature};

use crate::config::{SignatureEncoding, WebhookScheme};
use crate::metrics::Received;

/// Why a webhook was refused. The reason goes to metrics and debug logs; the
/// provider only sees a generic 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    #[error("header {0} is malformed")]
    MalformedHeader(&'static str),
    #[error("no signature matches any configured secret")]
    NoMatch,
    #[error("timestamp is {0:?} away from now, outside the tolerance")]
    Stale(Duration),
    #[error("the SHA-1 header X-Hub-Signature is not accepted; configure SHA-256 signatures")]
    Sha1Refused,
    #[error("no secret is currently valid")]
    NoSecret,
}

impl VerifyError {
    /// The `result` label of `sluice_webhook_received_total`.
    pub fn result_label(&self) -> Received {
        match self {
            VerifyError::Stale(_) => Received::Stale,
            _ => Received::InvalidSignature,
        }
    }
}

/// A secret as the scheme needs it.
pub struct WebhookKey<'a> {
    pub value: &'a str,
}

/// What a verified webhook tells us.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verified {
    /// The scheme's own event id header, if it has one.
    pub event_id: Option<String>,
}

/// The settings of the generic HMAC scheme.
#[derive(Debug, Clone)]
pub struct GenericHmac {
    pub header: String,
    pub encoding: SignatureEncoding,
    pub prefix: String,
}

fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, VerifyError> {
    headers
        .get(name)
        .ok_or(VerifyError::MissingHeader(name))?
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(name))
}

fn optional(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn check_time(timestamp: i64, now: SystemTime, tolerance: Duration) -> Result<(), VerifyError> {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let skew = Duration::from_secs(now.abs_diff(timestamp));
    if skew > tolerance {
        return Err(VerifyError::Stale(skew));
    }
    Ok(())
}

/// ring's `hmac::verify` compares in constant time, lengths first.
fn hmac_matches(key: &[u8], message: &[&[u8]], tag: &[u8]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&key, &concat(message), tag).is_ok()
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut all = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        all.extend_from_slice(part);
    }
    all
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Verifies one request. `keys` are the secrets valid now (rotation).
pub fn verify(
    scheme: WebhookScheme,
    generic: Option<&GenericHmac>,
    headers: &HeaderMap,
    body: &[u8],
    keys: &[WebhookKey<'_>],
    now: SystemTime,
    tolerance: Duration,
) -> Result<Verified, VerifyError> {
    if keys.is_empty() {
        return Err(VerifyError::NoSecret);
    }
    match scheme {
        WebhookScheme::StandardWebhooks => standard_webhooks(headers, body, keys, now, tolerance),
        WebhookScheme::Stripe => stripe(headers, body, keys, now, tolerance),
        WebhookScheme::GitHub => {
            let Some(value) = headers.get("x-hub-signature-256") else {
                return Err(if headers.contains_key("x-hub-signature") {
                    VerifyError::Sha1Refused
                } else {
                    VerifyError::MissingHeader("x-hub-signature-256")
                });
            };
            let value = value
                .to_str()
                .map_err(|_| VerifyError::MalformedHeader("x-hub-signature-256"))?;
            let tag = value
                .strip_prefix("sha256=")
                .and_then(decode_hex)
                .ok_or(VerifyError::MalformedHeader("x-hub-signature-256"))?;
            any_key(keys, |k| hmac_matches(k.value.as_bytes(), &[body], &tag))?;
            Ok(Verified {
                event_id: optional(headers, "x-github-delivery"),
            })
        }
        WebhookScheme::Shopify => {
            let tag = BASE64
                .decode(header(headers, "x-shopify-hmac-sha256")?.trim())
                .map_err(|_| VerifyError::MalformedHeader("x-shopify-hmac-sha256"))?;
            any_key(keys, |k| hmac_matches(k.value.as_bytes(), &[body], &tag))?;
            Ok(Verified {
                event_id: optional(headers, "x-shopify-event-id")
                    .or_else(|| optional(headers, "x-shopify-webhook-id")),
            })
        }
        WebhookScheme::Slack => {
            let timestamp = header(headers, "x-slack-request-timestamp")?;
            let ts: i64 = timestamp
                .parse()
                .map_err(|_| VerifyError::MalformedHeader("x-slack-request-timestamp"))?;
            let tag = header(headers, "x-slack-signature")?
                .strip_prefix("v0=")
                .and_then(decode_hex)
                .ok_or(VerifyError::MalformedHeader("x-slack-signature"))?;
            any_key(keys, |k| {
                hmac_matches(
                    k.value.as_bytes(),
                    &[b"v0:", timestamp.as_bytes(), b":", body],
                    &tag,
                )
            })?;
            check_time(ts, now, tolerance)?;
            Ok(Verified { event_id: None })
        }
        WebhookScheme::Razorpay => {
            let tag = decode_hex(header(headers, "x-razorpay-signature")?.trim())
                .ok_or(VerifyError::MalformedHeader("x-razorpay-signature"))?;
            any_key(keys, |k| hmac_matches(k.value.as_bytes(), &[body], &tag))?;
            Ok(Verified {
                event_id: optional(headers, "x-razorpay-event-id"),
            })
        }
        WebhookScheme::HmacSha256 => {
            let generic = generic.ok_or(VerifyError::MissingHeader("signature"))?;
            let raw = headers
                .get(generic.header.as_str())
                .ok_or(VerifyError::MissingHeader("signature"))?
                .to_str()
                .map_err(|_| VerifyError::MalformedHeader("signature"))?;
            let encoded = raw
                .trim()
                .strip_prefix(generic.prefix.as_str())
                .ok_or(VerifyError::MalformedHeader("signature"))?;
            let tag = match generic.encoding {
                SignatureEncoding::Hex => decode_hex(encoded),
                SignatureEncoding::Base64 => BASE64.decode(encoded).ok(),
            }
            .ok_or(VerifyError::MalformedHeader("signature"))?;
            any_key(keys, |k| hmac_matches(k.value.as_bytes(), &[body], &tag))?;
            Ok(Verified { event_id: None })
        }
    }
}

fn any_key(
    keys: &[WebhookKey<'_>],
    mut matches: impl FnMut(&WebhookKey<'_>) -> bool,
) -> Result<(), VerifyError> {
    // Try every key (no early exit), so timing does not reveal which matched.
    let mut matched = false;
    for key in keys {
        matched |= matches(key);
    }
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

/// standardwebhooks.com, with the `svix-` header names too.
fn standard_webhooks(
    headers: &HeaderMap,
    body: &[u8],
    keys: &[WebhookKey<'_>],
    now: SystemTime,
    tolerance: Duration,
) -> Result<Verified, VerifyError> {
    let svix = !headers.contains_key("webhook-id") && headers.contains_key("svix-id");
    let (id_name, ts_name, sig_name) = if svix {
        ("svix-id", "svix-timestamp", "svix-signature")
    } else {
        ("webhook-id", "webhook-timestamp", "webhook-signature")
    };
    let id = header(headers, id_name)?;
    let timestamp = header(headers, ts_name)?;
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| VerifyError::MalformedHeader(ts_name))?;
    let signatures = header(headers, sig_name)?;
    let signed: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
    let candidates: Vec<(&str, Vec<u8>)> = signatures
        .split(' ')
        .filter_map(|s| {
            let (version, sig) = s.split_once(',')?;
            Some((version, BASE64.decode(sig).ok()?))
        })
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::MalformedHeader(sig_name));
    }
    any_key(keys, |key| {
        if let Some(public) = key.value.strip_prefix("whpk_") {
            let Ok(public) = BASE64.decode(public) else {
                return false;
            };
            let public = signature::UnparsedPublicKey::new(&signature::ED25519, public);
            let message = concat(&signed);
            candidates
                .iter()
                .any(|(v, sig)| *v == "v1a" && public.verify(&message, sig).is_ok())
        } else {
            let secret = key.value.strip_prefix("whsec_").unwrap_or(key.value);
            let Ok(secret) = BASE64.decode(secret) else {
                return false;
            };
            candidates
                .iter()
                .any(|(v, sig)| *v == "v1" && hmac_matches(&secret, &signed, sig))
        }
    })?;
    check_time(ts, now, tolerance)?;
    Ok(Verified {
        event_id: Some(id.to_owned()),
    })
}

/// `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`, HMAC over `{t}.{body}`
/// keyed with the `whsec_...` string as it is.
fn stripe(
    headers: &HeaderMap,
    body: &[u8],
    keys: &[WebhookKey<'_>],
    now: SystemTime,
    tolerance: Duration,
) -> Result<Verified, VerifyError> {
    let value = header(headers, "stripe-signature")?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t),
            Some(("v1", sig)) => signatures.extend(decode_hex(sig)),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::MalformedHeader("stripe-signature"))?;
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| VerifyError::MalformedHeader("stripe-signature"))?;
    if signatures.is_empty() {
        return Err(VerifyError::MalformedHeader("stripe-signature"));
    }
    any_key(keys, |k| {
        signatures
            .iter()
            .any(|sig| hmac_matches(k.value.as_bytes(), &[timestamp.as_bytes(), b".", body], sig))
    })?;
    check_time(ts, now, tolerance)?;
    Ok(Verified { event_id: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const FIVE_MIN: Duration = Duration::from_secs(300);

    /// The published vector of the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_published_vector() {
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,bogus= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let body = br#"{"test": 2432232314}"#;
        let keys = [WebhookKey {
            value: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        }];
        let ok = verify(
            WebhookScheme::StandardWebhooks,
            None,
            &h,
            body,
            &keys,
            at(1614265330),
            FIVE_MIN,
        )
        .unwrap();
        assert_eq!(ok.event_id.as_deref(), Some("msg_p5jXN8AQM9LWM0D4loKWxJek"));
        // One byte changed in the body.
        assert_eq!(
            verify(
                WebhookScheme::StandardWebhooks,
                None,
                &h,
                br#"{"test": 2432232315}"#,
                &keys,
                at(1614265330),
                FIVE_MIN
            ),
            Err(VerifyError::NoMatch)
        );
        // Replayed an hour later, or sent from the future.
        assert!(matches!(
            verify(
                WebhookScheme::StandardWebhooks,
                None,
                &h,
                body,
                &keys,
                at(1614265330 + 3600),
                FIVE_MIN
            ),
            Err(VerifyError::Stale(_))
        ));
        assert!(matches!(
            verify(
                WebhookScheme::StandardWebhooks,
                None,
                &h,
                body,
                &keys,
                at(1614265330 - 3600),
                FIVE_MIN
            ),
            Err(VerifyError::Stale(_))
        ));
        // The svix- header names.
        let svix = headers(&[
            ("svix-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("svix-timestamp", "1614265330"),
            (
                "svix-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        assert!(
            verify(
                WebhookScheme::StandardWebhooks,
                None,
                &svix,
                body,
                &keys,
                at(1614265330),
                FIVE_MIN
            )
            .is_ok()
        );
    }

    /// The published example of GitHub's "Validating webhook deliveries".
    #[test]
    fn github_published_vector_and_sha1_refused() {
        let h = headers(&[
            (
                "x-hub-signature-256",
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            ),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ]);
        let keys = [WebhookKey {
            value: "It's a Secret to Everybody",
        }];
        let ok = verify(
            WebhookScheme::GitHub,
            None,
            &h,
            b"Hello, World!",
            &keys,
            at(0),
            FIVE_MIN,
        )
        .unwrap();
        assert_eq!(
            ok.event_id.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        let sha1 = headers(&[(
            "x-hub-signature",
            "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59",
        )]);
        assert_eq!(
            verify(
                WebhookScheme::GitHub,
                None,
                &sha1,
                b"Hello, World!",
                &keys,
                at(0),
                FIVE_MIN
            ),
            Err(VerifyError::Sha1Refused)
        );
    }

    #[test]
    fn rotation_accepts_any_current_secret() {
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        let keys = [
            WebhookKey {
                value: "new secret",
            },
            WebhookKey {
                value: "It's a Secret to Everybody",
            },
        ];
        assert!(
            verify(
                WebhookScheme::GitHub,
                None,
                &h,
                b"Hello, World!",
                &keys,
                at(0),
                FIVE_MIN
            )
            .is_ok()
        );
        assert_eq!(
            verify(
                WebhookScheme::GitHub,
                None,
                &h,
                b"Hello, World!",
                &[],
                at(0),
                FIVE_MIN
            ),
            Err(VerifyError::NoSecret)
        );
    }

    #[test]
    fn missing_and_malformed_headers_fail_closed() {
        let keys = [WebhookKey { value: "s" }];
        // HmacSha256 needs its header named: tested on its own.
        for scheme in WebhookScheme::ALL
            .into_iter()
            .filter(|s| *s != WebhookScheme::HmacSha256)
        {
            let result = verify(
                scheme,
                None,
                &HeaderMap::new(),
                b"{}",
                &keys,
                at(0),
                FIVE_MIN,
            );
            assert!(
                matches!(result, Err(VerifyError::MissingHeader(_))),
                "{scheme:?}: {result:?}"
            );
        }
        let bad = headers(&[("stripe-signature", "v1=zz,t=notanumber")]);
        assert!(matches!(
            verify(
                WebhookScheme::Stripe,
                None,
                &bad,
                b"{}",
                &keys,
                at(0),
                FIVE_MIN
            ),
            Err(VerifyError::MalformedHeader(_))
        ));
        let short = headers(&[("x-hub-signature-256", "sha256=7571")]);
        assert_eq!(
            verify(
                WebhookScheme::GitHub,
                None,
                &short,
                b"Hello, World!",
                &keys,
                at(0),
                FIVE_MIN
            ),
            Err(VerifyError::NoMatch),
            "a truncated signature never matches"
        );
    }

    #[test]
    fn generic_hmac_with_prefix_and_base64() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        let tag = hmac::sign(&key, b"payload");
        let generic = GenericHmac {
            header: "x-signature".into(),
            encoding: SignatureEncoding::Base64,
            prefix: "sha256=".into(),
        };
        let h = headers(&[(
            "x-signature",
            &format!("sha256={}", BASE64.encode(tag.as_ref())),
        )]);
        let keys = [WebhookKey { value: "k" }];
        assert!(
            verify(
                WebhookScheme::HmacSha256,
                Some(&generic),
                &h,
                b"payload",
                &keys,
                at(0),
                FIVE_MIN
            )
            .is_ok()
        );
        assert!(
            verify(
                WebhookScheme::HmacSha256,
                Some(&generic),
                &h,
                b"payload!",
                &keys,
                at(0),
                FIVE_MIN
            )
            .is_err()
        );
    }

    #[test]
    fn standard_webhooks_v1a_ed25519() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        use ring::signature::KeyPair;
        let public = format!("whpk_{}", BASE64.encode(pair.public_key().as_ref()));
        let sig = BASE64.encode(pair.sign(b"msg_1.1700000000.{}").as_ref());
        let h = headers(&[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", "1700000000"),
            ("webhook-signature", &format!("v1,bm90IGl0 v1a,{sig}")),
        ]);
        let keys = [WebhookKey { value: &public }];
        assert!(
            verify(
                WebhookScheme::StandardWebhooks,
                None,
                &h,
                b"{}",
                &keys,
                at(1700000000),
                FIVE_MIN
            )
            .is_ok()
        );
        assert_eq!(
            verify(
                WebhookScheme::StandardWebhooks,
                None,
                &h,
                b"{ }",
                &keys,
                at(1700000000),
                FIVE_MIN
            ),
            Err(VerifyError::NoMatch)
        );
    }

    fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()),
            &concat(parts),
        );
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn shopify_razorpay_and_slack_headers() {
        let keys = [WebhookKey { value: "shh" }];
        let body = br#"{"id":1}"#;
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, b"shh"), body);
        let shopify = headers(&[
            ("x-shopify-hmac-sha256", &BASE64.encode(tag.as_ref())),
            ("x-shopify-webhook-id", "w-1"),
        ]);
        let ok = verify(
            WebhookScheme::Shopify,
            None,
            &shopify,
            body,
            &keys,
            at(0),
            FIVE_MIN,
        )
        .unwrap();
        assert_eq!(ok.event_id.as_deref(), Some("w-1"));
        let razorpay = headers(&[
            ("x-razorpay-signature", &hmac_hex("shh", &[body])),
            ("x-razorpay-event-id", "r-1"),
        ]);
        let ok = verify(
            WebhookScheme::Razorpay,
            None,
            &razorpay,
            body,
            &keys,
            at(0),
            FIVE_MIN,
        )
        .unwrap();
        assert_eq!(ok.event_id.as_deref(), Some("r-1"));
        let slack = headers(&[
            ("x-slack-request-timestamp", "1700000000"),
            (
                "x-slack-signature",
                &format!("v0={}", hmac_hex("shh", &[b"v0:1700000000:", body])),
            ),
        ]);
        assert!(
            verify(
                WebhookScheme::Slack,
                None,
                &slack,
                body,
                &keys,
                at(1700000100),
                FIVE_MIN
            )
            .is_ok()
        );
        assert!(matches!(
            verify(
                WebhookScheme::Slack,
                None,
                &slack,
                body,
                &keys,
                at(1700009999),
                FIVE_MIN
            ),
            Err(VerifyError::Stale(_))
        ));
    }

    #[test]
    fn hex_decoding() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
    }
}
