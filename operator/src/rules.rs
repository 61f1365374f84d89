//! Every rule a ProviderIntegration must follow beyond its field types, in
//! one table. The same rows become the CRD's schema bounds, patterns and CEL
//! `x-kubernetes-validations` (so the API server refuses what breaks them)
//! and are checked by `compile` (so `sluice check` and the controller refuse
//! exactly the same). A test applies one corpus to both and compares.
//!
//! Bounds come from `sluice_contract::bounds`, defaults from
//! `sluice_contract::config::defaults`: a rule that depends on a default
//! (a total timeout at least the attempt timeout) writes the default into
//! its CEL.

use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_contract::bounds::{self, Bound};
use sluice_contract::config::{
    CALENDAR_MONTH, CURSOR_LAST_ID, CursorFrom, DedupConfig, Duration, RetryOn, defaults,
};
use sluice_contract::layout;

use crate::field_error::FieldError;

/// Where a rule sits: a path from the object's root, `[]` for each item of
/// a list (`spec.rateLimits[].rate`).
pub type At = &'static str;

pub enum Rule {
    /// A number within a bound: the schema's `minimum`/`maximum`.
    Number {
        at: At,
        field: &'static str,
        bound: Bound<f64>,
    },
    /// A duration within a bound: a CEL rule on the object holding it.
    Duration {
        at: At,
        field: &'static str,
        bound: Bound<Duration>,
    },
    /// A string of a grammar: the schema's `pattern`; `field` may end in
    /// `[]` for each item of a list of strings.
    Pattern {
        at: At,
        field: &'static str,
        pattern: &'static Grammar,
    },
    /// A list's least length: the schema's `minItems`.
    MinItems {
        at: At,
        field: &'static str,
        min: usize,
        message: &'static str,
    },
    /// A list's greatest length: the schema's `maxItems` (it also bounds
    /// what the API server's CEL rules may cost).
    MaxItems {
        at: At,
        field: &'static str,
        max: usize,
    },
    /// A rule over several fields of one object: `cel` for the API server,
    /// `check` for `compile` (returns the fields, relative to `at`, that
    /// break it). `field` is where the API server reports it.
    Cel {
        at: At,
        field: Option<&'static str>,
        cel: String,
        message: String,
        check: fn(&Map<String, Value>) -> Vec<String>,
    },
}

/// A named regular expression and what to tell a user who broke it.
pub struct Grammar {
    pub pattern: &'static str,
    pub explain: &'static str,
}

pub static DNS_LABEL: Grammar = Grammar {
    pattern: r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    explain: "must be a DNS label: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63",
};
pub static DNS_SUBDOMAIN: Grammar = Grammar {
    pattern: r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    explain: "is not a Secret name (lower-case letters, digits, '-' and '.')",
};
pub static SECRET_KEY: Grammar = Grammar {
    pattern: r"^[-._a-zA-Z0-9]+$",
    explain: "is not a Secret or ConfigMap key (letters, digits, '-', '_' and '.')",
};
pub static HEADER_NAME: Grammar = Grammar {
    pattern: r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
    explain: "is not a header name",
};
pub static QUERY_NAME: Grammar = Grammar {
    pattern: r"^[^&=#\s]+$",
    explain: "is not a query parameter name (no '&', '=', '#' or spaces)",
};
pub static JSON_POINTER: Grammar = Grammar {
    pattern: r"^/",
    explain: "is not a JSON pointer (they start with '/', e.g. /data/object/id)",
};
pub static WEBHOOK_PATH: Grammar = Grammar {
    pattern: r"^/[^?#*]*$",
    explain: "must be a plain path starting with '/' (no query, fragment or '*')",
};
pub static SCOPE_TOKEN: Grammar = Grammar {
    pattern: r#"^[^ "\\]+$"#,
    explain: "is not a scope token (no spaces, quotes or backslashes)",
};
pub static DURATION: Grammar = Grammar {
    pattern: sluice_contract::config::DURATION_PATTERN,
    explain: "is not a duration such as 500ms, 30s, 5m, 1h30m or 72h",
};
pub static METHOD: Grammar = Grammar {
    pattern: sluice_contract::config::METHOD_PATTERN,
    explain: "is not an upper-case HTTP method such as GET or POST",
};
pub static PATH_PATTERN: Grammar = Grammar {
    pattern: sluice_contract::config::PATH_PATTERN,
    explain: "is not a path pattern: start with '/', '*' only as a whole segment, '**' only at the end, no query",
};
pub static URL: Grammar = Grammar {
    pattern: sluice_contract::config::URL_PATTERN,
    explain: "is not an absolute http:// or https:// URL without a query",
};

/// The grammars the schema may name, for explaining a mismatch.
pub fn grammar_of(pattern: &str) -> Option<&'static Grammar> {
    [
        &DNS_LABEL,
        &DNS_SUBDOMAIN,
        &SECRET_KEY,
        &HEADER_NAME,
        &QUERY_NAME,
        &JSON_POINTER,
        &WEBHOOK_PATH,
        &SCOPE_TOKEN,
        &DURATION,
        &METHOD,
        &PATH_PATTERN,
        &URL,
    ]
    .into_iter()
    .find(|g| g.pattern == pattern)
}

fn number<T: Into<f64> + Copy>(at: At, field: &'static str, b: Bound<T>) -> Rule {
    Rule::Number {
        at,
        field,
        bound: Bound {
            min: b.min.into(),
            min_exclusive: b.min_exclusive,
            max: b.max.map(Into::into),
        },
    }
}

fn duration(at: At, field: &'static str, bound: Bound<Duration>) -> Rule {
    Rule::Duration { at, field, bound }
}

fn pattern(at: At, field: &'static str, grammar: &'static Grammar) -> Rule {
    Rule::Pattern {
        at,
        field,
        pattern: grammar,
    }
}

fn cel(
    at: At,
    field: Option<&'static str>,
    cel: impl Into<String>,
    message: impl Into<String>,
    check: fn(&Map<String, Value>) -> Vec<String>,
) -> Rule {
    Rule::Cel {
        at,
        field,
        cel: cel.into(),
        message: message.into(),
        check,
    }
}

/// `field` when `broken`, for a `Cel` rule's check.
fn fails(broken: bool, field: &str) -> Vec<String> {
    if broken {
        vec![field.to_owned()]
    } else {
        Vec::new()
    }
}

// Field accessors for the checks: `None` when absent or of another type
// (the schema reports a wrong type; a rule then has nothing to say).
fn obj<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Map<String, Value>> {
    o.get(key)?.as_object()
}
fn list<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Vec<Value>> {
    o.get(key)?.as_array()
}
fn text<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    o.get(key)?.as_str()
}
fn int(o: &Map<String, Value>, key: &str) -> Option<i64> {
    o.get(key)?.as_i64()
}
fn dur(o: &Map<String, Value>, key: &str) -> Option<Duration> {
    text(o, key)?.parse().ok()
}
fn has(o: &Map<String, Value>, key: &str) -> bool {
    o.contains_key(key)
}

/// The effective total timeout of `spec.upstream`, as CEL and as a value.
fn upstream_total_cel() -> String {
    format!(
        "duration(has(self.upstream.totalTimeout) ? self.upstream.totalTimeout : '{}')",
        defaults::total_timeout()
    )
}
fn upstream_total(spec: &Map<String, Value>) -> Duration {
    obj(spec, "upstream")
        .and_then(|u| dur(u, "totalTimeout"))
        .unwrap_or_else(defaults::total_timeout)
}
fn upstream_timeout(spec: &Map<String, Value>) -> Duration {
    obj(spec, "upstream")
        .and_then(|u| dur(u, "timeout"))
        .unwrap_or_else(defaults::timeout)
}

const RESERVED_CREDENTIAL_HEADERS: [&str; 4] =
    ["host", "content-length", "transfer-encoding", "connection"];
/// A DNS label's greatest length.
const MAX_NAME: usize = 63;
const PREVIOUS_KEY: &str =
    "previousSecretRef and previousValidUntil go together: say when the old key stops being tried";

fn rows() -> Vec<Rule> {
    use bounds::*;
    let default_retry = sluice_contract::config::RetryConfig::default();
    let mut rules = vec![
        // The object's name becomes a ConfigMap name and part of an env var.
        cel(
            "",
            Some("metadata.name"),
            format!(
                "size(self.metadata.name) <= {MAX_NAME} && self.metadata.name.matches('{}')",
                DNS_LABEL.pattern
            ),
            format!(
                "metadata.name must be a DNS label (lower-case letters, digits, '-'; at most {MAX_NAME})"
            ),
            |root| {
                let name = obj(root, "metadata")
                    .and_then(|m| text(m, "name"))
                    .unwrap_or("");
                fails(
                    !(name.len() <= MAX_NAME && regex(DNS_LABEL.pattern).is_match(name)),
                    "metadata.name",
                )
            },
        ),
        // spec.upstream
        duration("spec.upstream", "timeout", TIMEOUT),
        duration("spec.upstream", "totalTimeout", TOTAL_TIMEOUT),
        duration("spec.upstream", "bodyTimeout", BODY_TIMEOUT),
        number(
            "spec.upstream",
            "maxBufferedBodyBytes",
            MAX_BUFFERED_BODY_BYTES.map(|v| v as f64),
        ),
        cel(
            "spec.upstream",
            Some("totalTimeout"),
            format!(
                "duration(has(self.totalTimeout) ? self.totalTimeout : '{}') >= duration(has(self.timeout) ? self.timeout : '{}')",
                defaults::total_timeout(),
                defaults::timeout()
            ),
            format!(
                "totalTimeout must be at least timeout (defaults {} and {})",
                defaults::total_timeout(),
                defaults::timeout()
            ),
            |up| {
                let t = dur(up, "timeout").unwrap_or_else(defaults::timeout);
                let tt = dur(up, "totalTimeout").unwrap_or_else(defaults::total_timeout);
                fails(tt < t, "totalTimeout")
            },
        ),
        cel(
            "spec.upstream",
            Some("caBundle"),
            "!has(self.caBundle) || self.caBundle.contains('-----BEGIN CERTIFICATE-----')",
            "caBundle holds no PEM CERTIFICATE block",
            |up| {
                fails(
                    text(up, "caBundle")
                        .is_some_and(|p| !p.contains("-----BEGIN CERTIFICATE-----")),
                    "caBundle",
                )
            },
        ),
        // spec.egress
        number("spec.egress", "port", EGRESS_PORT),
        cel(
            "spec.egress",
            Some("port"),
            format!(
                "!has(self.port) || !(self.port in [{}])",
                layout::RESERVED_PORTS.map(|p| p.to_string()).join(", ")
            ),
            format!(
                "port is reserved: use {}-{} except {} (webhooks) and {} (admin)",
                layout::MIN_EGRESS_PORT,
                u16::MAX,
                layout::WEBHOOK_PORT,
                layout::ADMIN_PORT
            ),
            |e| {
                fails(
                    int(e, "port")
                        .is_some_and(|p| layout::RESERVED_PORTS.iter().any(|r| i64::from(*r) == p)),
                    "port",
                )
            },
        ),
        // spec.auth
        cel(
            "spec.auth",
            None,
            "[has(self.header), has(self.bearer), has(self.basic), has(self.oauth2ClientCredentials)].filter(x, x).size() == 1",
            "set exactly one of header, bearer, basic, oauth2ClientCredentials",
            |a| {
                let kinds = ["header", "bearer", "basic", "oauth2ClientCredentials"];
                fails(kinds.iter().filter(|k| has(a, k)).count() != 1, "")
            },
        ),
        duration("spec.auth", "rotationGrace", ROTATION_GRACE),
        pattern("spec.auth.header", "name", &HEADER_NAME),
        cel(
            "spec.auth.header",
            Some("name"),
            format!(
                "!(self.name.lowerAscii() in [{}])",
                RESERVED_CREDENTIAL_HEADERS
                    .map(|h| format!("'{h}'"))
                    .join(", ")
            ),
            "name cannot carry a credential (Host, Content-Length, Transfer-Encoding, Connection)",
            |h| {
                fails(
                    text(h, "name").is_some_and(|n| {
                        RESERVED_CREDENTIAL_HEADERS.contains(&n.to_ascii_lowercase().as_str())
                    }),
                    "name",
                )
            },
        ),
        cel(
            "spec.auth.header",
            Some("previousValidUntil"),
            "has(self.previousSecretRef) == has(self.previousValidUntil)",
            PREVIOUS_KEY,
            |h| {
                fails(
                    has(h, "previousSecretRef") != has(h, "previousValidUntil"),
                    "previousValidUntil",
                )
            },
        ),
        cel(
            "spec.auth.bearer",
            Some("previousValidUntil"),
            "has(self.previousSecretRef) == has(self.previousValidUntil)",
            PREVIOUS_KEY,
            |b| {
                fails(
                    has(b, "previousSecretRef") != has(b, "previousValidUntil"),
                    "previousValidUntil",
                )
            },
        ),
        cel(
            "spec.auth.basic",
            Some("previousValidUntil"),
            "has(self.previousPasswordRef) == has(self.previousValidUntil)",
            "previousPasswordRef and previousValidUntil go together: say when the old password stops being tried",
            |b| {
                fails(
                    has(b, "previousPasswordRef") != has(b, "previousValidUntil"),
                    "previousValidUntil",
                )
            },
        ),
        duration(
            "spec.auth.oauth2ClientCredentials",
            "refreshBefore",
            REFRESH_BEFORE,
        ),
        pattern(
            "spec.auth.oauth2ClientCredentials",
            "scopes[]",
            &SCOPE_TOKEN,
        ),
        // spec.endpoints
        pattern("spec.endpoints[]", "name", &DNS_LABEL),
        duration("spec.endpoints[]", "timeout", TIMEOUT),
        duration("spec.endpoints[]", "totalTimeout", TOTAL_TIMEOUT),
        cel(
            "spec",
            Some("endpoints"),
            format!(
                "!has(self.endpoints) || self.endpoints.all(e, duration(has(e.totalTimeout) ? e.totalTimeout : (has(self.upstream.totalTimeout) ? self.upstream.totalTimeout : '{}')) >= duration(has(e.timeout) ? e.timeout : (has(self.upstream.timeout) ? self.upstream.timeout : '{}')))",
                defaults::total_timeout(),
                defaults::timeout()
            ),
            "an endpoint's totalTimeout must be at least its timeout (each defaults to the upstream's)",
            |spec| {
                let (t, tt) = (upstream_timeout(spec), upstream_total(spec));
                list(spec, "endpoints")
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        let e = e.as_object()?;
                        let broken =
                            dur(e, "totalTimeout").unwrap_or(tt) < dur(e, "timeout").unwrap_or(t);
                        broken.then(|| format!("endpoints[{i}].totalTimeout"))
                    })
                    .collect()
            },
        ),
        // spec.rateLimits
        pattern("spec.rateLimits[]", "name", &DNS_LABEL),
        number("spec.rateLimits[].rate", "requests", RATE_REQUESTS),
        duration("spec.rateLimits[].rate", "per", RATE_PER),
        number("spec.rateLimits[]", "burst", BURST),
        cel(
            "spec.rateLimits[]",
            Some("burst"),
            "!has(self.burst) || self.burst <= self.rate.requests",
            "burst must not exceed rate.requests: no more than that may go in one window",
            |l| {
                let requests = obj(l, "rate").and_then(|r| int(r, "requests"));
                fails(
                    matches!((int(l, "burst"), requests), (Some(b), Some(r)) if b > r),
                    "burst",
                )
            },
        ),
        cel(
            "spec.rateLimits[]",
            Some("queue"),
            "!has(self.queue) || !has(self.whenExceeded) || self.whenExceeded == 'Queue'",
            "queue applies only with whenExceeded: Queue",
            |l| {
                fails(
                    has(l, "queue") && text(l, "whenExceeded").is_some_and(|w| w != "Queue"),
                    "queue",
                )
            },
        ),
        cel(
            "spec.rateLimits[].key",
            None,
            "[has(self.header), has(self.query), has(self.pathSegment)].filter(x, x).size() == 1",
            "set exactly one of header, query, pathSegment",
            |k| {
                let kinds = ["header", "query", "pathSegment"];
                fails(kinds.iter().filter(|f| has(k, f)).count() != 1, "")
            },
        ),
        pattern("spec.rateLimits[].key", "header", &HEADER_NAME),
        pattern("spec.rateLimits[].key", "query", &QUERY_NAME),
        number(
            "spec.rateLimits[].key",
            "pathSegment",
            LIMIT_KEY_PATH_SEGMENT,
        ),
        number("spec.rateLimits[]", "maxKeys", LIMIT_MAX_KEYS),
        cel(
            "spec.rateLimits[]",
            Some("maxKeys"),
            "!has(self.maxKeys) || has(self.key)",
            "maxKeys applies only to a limit with a key",
            |l| fails(has(l, "maxKeys") && !has(l, "key"), "maxKeys"),
        ),
        duration("spec.rateLimits[].queue", "maxWait", QUEUE_MAX_WAIT),
        number("spec.rateLimits[].queue", "maxDepth", QUEUE_MAX_DEPTH),
        cel(
            "spec",
            Some("rateLimits"),
            format!(
                "!has(self.rateLimits) || self.rateLimits.all(l, !has(l.queue) || !has(l.queue.maxWait) || duration(l.queue.maxWait) <= {})",
                upstream_total_cel()
            ),
            "a rate limit's queue.maxWait must not exceed upstream.totalTimeout: no request could wait that long",
            |spec| {
                let tt = upstream_total(spec);
                list(spec, "rateLimits")
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter_map(|(i, l)| {
                        let wait = dur(obj(l.as_object()?, "queue")?, "maxWait")?;
                        (wait > tt).then(|| format!("rateLimits[{i}].queue.maxWait"))
                    })
                    .collect()
            },
        ),
        // spec.contracts
        pattern("spec.contracts[]", "name", &DNS_LABEL),
        number("spec.contracts[]", "sample", CONTRACT_SAMPLE),
        number(
            "spec.contracts[]",
            "maxBodyBytes",
            CONTRACT_MAX_BODY_BYTES.map(|v| v as f64),
        ),
        number("spec.contracts[]", "statuses[]", CONTRACT_STATUS),
        cel(
            "spec.contracts[]",
            None,
            "has(self.schema) != has(self.schemaFrom)",
            "set exactly one of schema, schemaFrom",
            |c| fails(has(c, "schema") == has(c, "schemaFrom"), ""),
        ),
        pattern(
            "spec.contracts[].schemaFrom.configMapKeyRef",
            "name",
            &DNS_SUBDOMAIN,
        ),
        pattern(
            "spec.contracts[].schemaFrom.configMapKeyRef",
            "key",
            &SECRET_KEY,
        ),
        // spec.quotas
        pattern("spec.quotas[]", "name", &DNS_LABEL),
        number("spec.quotas[]", "limit", QUOTA_LIMIT.map(|v| v as f64)),
        cel(
            "spec.quotas[]",
            Some("per"),
            format!(
                "self.per == '{CALENDAR_MONTH}' || (duration(self.per) >= duration('{}') && duration(self.per) <= duration('{}'))",
                QUOTA_PER.min,
                QUOTA_PER.max.expect("bounded")
            ),
            format!("per must be {CALENDAR_MONTH} or a duration {QUOTA_PER}"),
            |q| {
                let broken = text(q, "per").is_some_and(|per| {
                    per != CALENDAR_MONTH
                        && per.parse::<Duration>().is_ok_and(|d| !QUOTA_PER.holds(d))
                });
                fails(broken, "per")
            },
        ),
        cel(
            "spec.quotas[].cost",
            None,
            "[has(self.queryProduct), has(self.header)].filter(x, x).size() == 1",
            "set exactly one of queryProduct, header",
            |c| {
                let kinds = ["queryProduct", "header"];
                fails(kinds.iter().filter(|f| has(c, f)).count() != 1, "")
            },
        ),
        cel(
            "spec.quotas[].cost",
            Some("separator"),
            "!has(self.separator) || has(self.queryProduct)",
            "separator applies only with queryProduct",
            |c| fails(has(c, "separator") && !has(c, "queryProduct"), "separator"),
        ),
        cel(
            "spec.quotas[].cost",
            Some("separator"),
            format!(
                "!has(self.separator) || (size(self.separator) >= {} && size(self.separator) <= {})",
                COST_SEPARATOR_CHARS.min,
                COST_SEPARATOR_CHARS.max.expect("bounded")
            ),
            format!("separator must be {COST_SEPARATOR_CHARS} characters"),
            |c| {
                fails(
                    text(c, "separator")
                        .is_some_and(|s| !COST_SEPARATOR_CHARS.holds(s.chars().count())),
                    "separator",
                )
            },
        ),
        pattern("spec.quotas[].cost", "header", &HEADER_NAME),
        pattern("spec.quotas[].cost", "queryProduct[]", &QUERY_NAME),
        Rule::MinItems {
            at: "spec.quotas[].cost",
            field: "queryProduct",
            min: 1,
            message: "name the query parameters whose element counts multiply, e.g. [origins, destinations]",
        },
        number("spec.quotas[]", "warnAt[]", QUOTA_WARN_AT),
        // spec.retry
        number("spec.retry", "maxAttempts", MAX_ATTEMPTS),
        duration("spec.retry.backoff", "initial", BACKOFF_INITIAL),
        duration("spec.retry.backoff", "max", BACKOFF_MAX),
        number("spec.retry.backoff", "multiplier", BACKOFF_MULTIPLIER),
        number("spec.retry.backoff", "jitter", JITTER),
        cel(
            "spec.retry.backoff",
            Some("max"),
            format!(
                "duration(has(self.max) ? self.max : '{}') >= duration(has(self.initial) ? self.initial : '{}')",
                default_retry.backoff.max, default_retry.backoff.initial
            ),
            format!(
                "max must be at least initial (defaults {} and {})",
                default_retry.backoff.max, default_retry.backoff.initial
            ),
            |b| {
                let base = sluice_contract::config::BackoffConfig::default();
                fails(
                    dur(b, "max").unwrap_or(base.max) < dur(b, "initial").unwrap_or(base.initial),
                    "max",
                )
            },
        ),
        cel(
            "spec",
            Some("retry"),
            format!(
                "!has(self.retry) || (has(self.retry.maxAttempts) ? self.retry.maxAttempts : {}) <= 1 || duration((has(self.retry.backoff) && has(self.retry.backoff.initial)) ? self.retry.backoff.initial : '{}') < {}",
                default_retry.max_attempts,
                default_retry.backoff.initial,
                upstream_total_cel()
            ),
            "retry.backoff.initial leaves no time for a retry within upstream.totalTimeout",
            |spec| {
                let Some(r) = obj(spec, "retry") else {
                    return Vec::new();
                };
                let base = sluice_contract::config::RetryConfig::default();
                let attempts = int(r, "maxAttempts").unwrap_or(i64::from(base.max_attempts));
                let initial = obj(r, "backoff")
                    .and_then(|b| dur(b, "initial"))
                    .unwrap_or(base.backoff.initial);
                fails(
                    attempts > 1 && initial >= upstream_total(spec),
                    "retry.backoff.initial",
                )
            },
        ),
        cel(
            "spec.retry",
            Some("retryOn"),
            format!(
                "!has(self.retryOn) || self.retryOn.all(r, type(r) == int ? (r >= {} && r <= {}) : (r in [{}] || r.matches('{}')))",
                RetryOn::STATUSES.start(),
                RetryOn::STATUSES.end(),
                RetryOn::NAMES.map(|(n, _)| format!("'{n}'")).join(", "),
                RetryOn::STATUS_TEXT_PATTERN
            ),
            "retryOn holds a status code 400-599 or one of connect-error, reset, timeout",
            |r| {
                list(r, "retryOn")
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter(|(_, on)| RetryOn::deserialize(*on).is_err())
                    .map(|(i, _)| format!("retryOn[{i}]"))
                    .collect()
            },
        ),
        cel(
            "spec.retry",
            Some("retryOn"),
            format!(
                "!has(self.retryOn) || !self.retryOn.exists(r, string(r) in [{}])",
                PERMANENT_STATUSES.map(|c| format!("'{c}'")).join(", ")
            ),
            "retryOn names a permanent error (400, 401, 403, 404, 422): retrying it cannot succeed, and 401s can lock accounts",
            |r| {
                list(r, "retryOn")
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter(|(_, on)| {
                        matches!(RetryOn::deserialize(*on), Ok(RetryOn::Status(c)) if PERMANENT_STATUSES.contains(&c))
                    })
                    .map(|(i, _)| format!("retryOn[{i}]"))
                    .collect()
            },
        ),
        duration("spec.retry", "maxRetryAfter", MAX_RETRY_AFTER),
        number("spec.retry.budget", "ratio", BUDGET_RATIO),
        number("spec.retry.budget", "minPerSecond", BUDGET_MIN_PER_SECOND),
        duration("spec.retry.budget", "window", BUDGET_WINDOW),
        pattern("spec.retry.idempotency", "header", &HEADER_NAME),
        Rule::MinItems {
            at: "spec.retry.idempotency",
            field: "methods",
            min: 1,
            message: "name the methods that get a key, e.g. [POST, PATCH]",
        },
        // spec.circuitBreaker
        number("spec.circuitBreaker", "failureRatio", FAILURE_RATIO),
        number("spec.circuitBreaker", "minRequests", MIN_REQUESTS),
        duration("spec.circuitBreaker", "window", BREAKER_WINDOW),
        duration("spec.circuitBreaker", "openFor", OPEN_FOR),
        number("spec.circuitBreaker", "halfOpenProbes", HALF_OPEN_PROBES),
        // spec.cache
        duration("spec.cache[]", "ttl", CACHE_TTL),
        cel(
            "spec.cache[]",
            Some("match.methods"),
            "has(self.match) && has(self.match.methods) && size(self.match.methods) > 0 && self.match.methods.all(m, m == 'GET' || m == 'HEAD')",
            "name the methods to cache: only GET and HEAD responses are cacheable",
            |c| {
                let methods = obj(c, "match").and_then(|m| list(m, "methods"));
                let cacheable = methods.is_some_and(|ms| {
                    !ms.is_empty()
                        && ms
                            .iter()
                            .all(|m| matches!(m.as_str(), Some("GET" | "HEAD")))
                });
                fails(!cacheable, "match.methods")
            },
        ),
        // spec.webhooks
        pattern("spec.webhooks[]", "name", &DNS_LABEL),
        pattern("spec.webhooks[]", "path", &WEBHOOK_PATH),
        cel(
            "spec",
            Some("webhooks"),
            "!has(self.webhooks) || self.webhooks.all(a, self.webhooks.exists_one(b, b.path == a.path))",
            "two webhooks use the same path",
            |spec| {
                let paths: Vec<Option<&str>> = list(spec, "webhooks")
                    .into_iter()
                    .flatten()
                    .map(|w| w.as_object().and_then(|w| text(w, "path")))
                    .collect();
                paths
                    .iter()
                    .enumerate()
                    .filter(|(i, p)| p.is_some() && paths[..*i].contains(p))
                    .map(|(i, _)| format!("webhooks[{i}].path"))
                    .collect()
            },
        ),
        Rule::MinItems {
            at: "spec.webhooks[].verify",
            field: "secrets",
            min: 1,
            message: "list at least one secret: unsigned webhooks are never accepted",
        },
        duration("spec.webhooks[].verify", "tolerance", WEBHOOK_TOLERANCE),
        pattern("spec.webhooks[].verify", "header", &HEADER_NAME),
        cel(
            "spec.webhooks[].verify",
            Some("header"),
            "self.scheme != 'HmacSha256' || has(self.header)",
            "header is required for scheme HmacSha256",
            |v| {
                fails(
                    text(v, "scheme") == Some("HmacSha256") && !has(v, "header"),
                    "header",
                )
            },
        ),
        cel(
            "spec.webhooks[].verify",
            None,
            "self.scheme == 'HmacSha256' || (!has(self.header) && !has(self.encoding) && !has(self.prefix))",
            "header, encoding and prefix apply only to scheme HmacSha256",
            |v| {
                let generic = text(v, "scheme") == Some("HmacSha256");
                fails(
                    !generic && ["header", "encoding", "prefix"].iter().any(|f| has(v, f)),
                    "",
                )
            },
        ),
        duration("spec.webhooks[].dedup", "ttl", DEDUP_TTL),
        pattern("spec.webhooks[]", "idPointer", &JSON_POINTER),
        pattern("spec.webhooks[].ordering", "objectPointer", &JSON_POINTER),
        pattern(
            "spec.webhooks[].ordering",
            "timestampPointer",
            &JSON_POINTER,
        ),
        pattern("spec.webhooks[].ordering.states", "pointer", &JSON_POINTER),
        Rule::MinItems {
            at: "spec.webhooks[].ordering.states",
            field: "order",
            min: 2,
            message: "name at least two states in their order",
        },
        cel(
            "spec.webhooks[].ordering",
            None,
            "has(self.timestampPointer) || has(self.states)",
            "set timestampPointer, states, or both: otherwise nothing is ordered",
            |o| fails(!has(o, "timestampPointer") && !has(o, "states"), ""),
        ),
        number("spec.webhooks[].delivery", "ratePerSecond", DELIVERY_RATE),
        number(
            "spec.webhooks[].delivery",
            "maxAttempts",
            DELIVERY_MAX_ATTEMPTS,
        ),
        duration("spec.webhooks[].delivery", "timeout", DELIVERY_TIMEOUT),
        // spec.webhooks[].polling
        pattern("spec.webhooks[].polling", "path", &WEBHOOK_PATH),
        duration("spec.webhooks[].polling", "interval", POLL_INTERVAL),
        duration("spec.webhooks[].polling", "lookback", POLL_LOOKBACK),
        pattern("spec.webhooks[].polling", "items", &JSON_POINTER),
        pattern("spec.webhooks[].polling", "id", &JSON_POINTER),
        pattern("spec.webhooks[].polling", "created", &JSON_POINTER),
        pattern("spec.webhooks[].polling", "hasMore", &JSON_POINTER),
        pattern("spec.webhooks[].polling.cursor", "param", &QUERY_NAME),
        cel(
            "spec.webhooks[].polling.cursor",
            Some("from"),
            format!(
                "!has(self.from) || self.from == '{CURSOR_LAST_ID}' || self.from.startsWith('/')"
            ),
            format!("from is {CURSOR_LAST_ID} or a JSON pointer into the page, e.g. /next_cursor"),
            |c| {
                let broken = text(c, "from").is_some_and(|f| f.parse::<CursorFrom>().is_err());
                fails(broken, "from")
            },
        ),
        cel(
            "spec.webhooks[].polling",
            Some("query"),
            format!(
                "!has(self.query) || (size(self.query) <= {MAX_POLL_QUERY} && !(self.cursor.param in self.query))"
            ),
            format!(
                "at most {MAX_POLL_QUERY} query parameters, and not cursor.param (Sluice sets it)"
            ),
            |p| {
                let param = obj(p, "cursor").and_then(|c| text(c, "param"));
                let broken = obj(p, "query").is_some_and(|q| {
                    q.len() > MAX_POLL_QUERY || param.is_some_and(|param| q.contains_key(param))
                });
                fails(broken, "query")
            },
        ),
        cel(
            "spec.webhooks[]",
            Some("polling"),
            format!(
                "!has(self.polling) || duration(has(self.polling.lookback) ? self.polling.lookback : '{}') <= duration(has(self.dedup) && has(self.dedup.ttl) ? self.dedup.ttl : '{}')",
                defaults::poll_lookback(),
                DedupConfig::default().ttl
            ),
            "polling.lookback must not exceed dedup.ttl: an event listed after its id is forgotten would be delivered twice",
            |w| {
                let Some(polling) = obj(w, "polling") else {
                    return Vec::new();
                };
                let lookback = dur(polling, "lookback").unwrap_or_else(defaults::poll_lookback);
                let ttl = obj(w, "dedup")
                    .and_then(|d| dur(d, "ttl"))
                    .unwrap_or(DedupConfig::default().ttl);
                fails(lookback > ttl, "polling.lookback")
            },
        ),
    ];
    // List lengths.
    for (at, field, max) in [
        ("spec", "endpoints", MAX_ENDPOINTS),
        ("spec", "rateLimits", MAX_RATE_LIMITS),
        ("spec", "quotas", MAX_QUOTAS),
        ("spec", "contracts", MAX_CONTRACTS),
        ("spec.contracts[]", "statuses", MAX_CONTRACT_STATUSES),
        ("spec.quotas[]", "warnAt", MAX_WARN_AT),
        ("spec.quotas[].cost", "queryProduct", MAX_COST_PARAMS),
        ("spec", "cache", MAX_CACHE_RULES),
        ("spec", "webhooks", MAX_WEBHOOKS),
        ("spec.retry", "retryOn", MAX_RETRY_ON),
        ("spec.retry.idempotency", "methods", MAX_METHODS),
        ("spec.auth.oauth2ClientCredentials", "scopes", MAX_SCOPES),
        ("spec.webhooks[].verify", "secrets", MAX_WEBHOOK_SECRETS),
        ("spec.webhooks[].ordering.states", "order", MAX_STATES),
    ] {
        rules.push(Rule::MaxItems { at, field, max });
    }
    for at in MATCHES {
        rules.push(Rule::MaxItems {
            at,
            field: "methods",
            max: MAX_METHODS,
        });
    }
    // Every Secret reference, wherever it is.
    for at in SECRET_REFS {
        rules.push(pattern(at, "name", &DNS_SUBDOMAIN));
        rules.push(pattern(at, "key", &SECRET_KEY));
    }
    rules
}

/// Every place a `MatchSpec` appears.
const MATCHES: [At; 5] = [
    "spec.endpoints[].match",
    "spec.rateLimits[].match",
    "spec.quotas[].match",
    "spec.contracts[].match",
    "spec.cache[].match",
];

/// Every place a `SecretKeyRef` appears.
pub const SECRET_REFS: [At; 10] = [
    "spec.auth.header.secretRef",
    "spec.auth.header.previousSecretRef",
    "spec.auth.bearer.secretRef",
    "spec.auth.bearer.previousSecretRef",
    "spec.auth.basic.usernameRef",
    "spec.auth.basic.passwordRef",
    "spec.auth.basic.previousPasswordRef",
    "spec.auth.oauth2ClientCredentials.clientIdRef",
    "spec.auth.oauth2ClientCredentials.clientSecretRef",
    "spec.webhooks[].verify.secrets[].secretRef",
];

/// The table, built once.
pub fn table() -> &'static [Rule] {
    static TABLE: LazyLock<Vec<Rule>> = LazyLock::new(rows);
    &TABLE
}

/// A compiled regular expression, kept for the process's life.
pub fn regex(pattern: &str) -> &'static regex::Regex {
    static CACHE: LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, &'static regex::Regex>>,
    > = LazyLock::new(Default::default);
    let mut cache = CACHE.lock().expect("regex cache");
    cache.entry(pattern.to_owned()).or_insert_with(|| {
        Box::leak(Box::new(
            regex::Regex::new(pattern).expect("the table's patterns are valid"),
        ))
    })
}

/// Adds the table to a generated CRD schema (`openAPIV3Schema`).
pub fn apply_to_schema(root: &mut Value) {
    for rule in table() {
        match rule {
            Rule::Number { at, field, bound } => {
                let property = property(root, at, field);
                property["minimum"] = json!(bound.min);
                if bound.min_exclusive {
                    property["exclusiveMinimum"] = json!(true);
                }
                if let Some(max) = bound.max {
                    property["maximum"] = json!(max);
                }
                integral_bounds(property);
            }
            Rule::Pattern { at, field, pattern } => {
                property(root, at, field)["pattern"] = json!(pattern.pattern);
            }
            Rule::MinItems { at, field, min, .. } => {
                property(root, at, field)["minItems"] = json!(min);
            }
            Rule::MaxItems { at, field, max } => {
                property(root, at, field)["maxItems"] = json!(max);
            }
            Rule::Duration { at, field, bound } => {
                let mut conditions = vec![format!(
                    "duration(self.{field}) {} duration('{}')",
                    if bound.min_exclusive { ">" } else { ">=" },
                    bound.min
                )];
                if let Some(max) = bound.max {
                    conditions.push(format!("duration(self.{field}) <= duration('{max}')"));
                }
                push_validation(
                    node(root, at),
                    format!("!has(self.{field}) || ({})", conditions.join(" && ")),
                    format!("{field} must be {bound}"),
                    Some(field),
                );
            }
            Rule::Cel {
                at,
                field,
                cel,
                message,
                ..
            } => {
                // The root's rule reports at metadata.name, outside the schema's reach.
                let field = field.filter(|_| !at.is_empty());
                push_validation(node(root, at), cel.clone(), message.clone(), field);
            }
        }
    }
}

/// Whole-number fields keep whole-number bounds in the schema.
fn integral_bounds(property: &mut Value) {
    if property["type"] == "integer" {
        for key in ["minimum", "maximum"] {
            if let Some(v) = property[key].as_f64() {
                property[key] = json!(v as i64);
            }
        }
    }
}

fn push_validation(node: &mut Value, rule: String, message: String, field: Option<&str>) {
    let mut validation = json!({"rule": rule, "message": message});
    if let Some(field) = field.filter(|f| !f.is_empty()) {
        validation["fieldPath"] = json!(format!(".{field}"));
    }
    match node["x-kubernetes-validations"].as_array_mut() {
        Some(list) => list.push(validation),
        None => node["x-kubernetes-validations"] = json!([validation]),
    }
}

/// The schema of the object at `at`.
fn node<'a>(root: &'a mut Value, at: &str) -> &'a mut Value {
    let mut node = root;
    for segment in at.split('.').filter(|s| !s.is_empty()) {
        let (name, items) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (segment, false),
        };
        node = node
            .get_mut("properties")
            .and_then(|p| p.get_mut(name))
            .unwrap_or_else(|| panic!("the rule table names {at}, which the schema lacks"));
        if items {
            node = node.get_mut("items").expect("a list has items");
        }
    }
    node
}

fn property<'a>(root: &'a mut Value, at: &str, field: &str) -> &'a mut Value {
    let path = format!("{at}.{field}");
    node(root, &path)
}

/// Checks a ProviderIntegration (as JSON) against every row that the
/// schema walk in `validate.rs` does not cover: durations and CEL rules.
pub fn check(root: &Value, errors: &mut Vec<FieldError>) {
    for rule in table() {
        match rule {
            Rule::Duration { at, field, bound } => each_object(root, at, &mut |path, o| {
                if let Some(d) = dur(o, field)
                    && !bound.holds(d)
                {
                    errors.push(FieldError {
                        path: join(&path, field),
                        message: format!("{d} is out of range: must be {bound}"),
                    });
                }
            }),
            Rule::Cel {
                at, check, message, ..
            } => each_object(root, at, &mut |path, o| {
                for field in check(o) {
                    errors.push(FieldError {
                        path: if at.is_empty() {
                            field
                        } else {
                            join(&path, &field)
                        },
                        message: message.clone(),
                    });
                }
            }),
            // In the schema itself: `validate.rs` checks them there.
            Rule::Number { .. }
            | Rule::Pattern { .. }
            | Rule::MinItems { .. }
            | Rule::MaxItems { .. } => {}
        }
    }
}

fn join(path: &str, field: &str) -> String {
    match (path.is_empty(), field.is_empty()) {
        (_, true) => path.to_owned(),
        (true, false) => field.to_owned(),
        (false, false) => format!("{path}.{field}"),
    }
}

/// Calls `f` with every object at `at` and its concrete path (`spec.rateLimits[2]`).
fn each_object(root: &Value, at: &str, f: &mut dyn FnMut(String, &Map<String, Value>)) {
    fn walk(
        value: &Value,
        path: String,
        segments: &[&str],
        f: &mut dyn FnMut(String, &Map<String, Value>),
    ) {
        let Some((segment, rest)) = segments.split_first() else {
            if let Some(o) = value.as_object() {
                f(path, o);
            }
            return;
        };
        let (name, items) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (*segment, false),
        };
        let Some(child) = value.get(name) else { return };
        let child_path = join(&path, name);
        if items {
            for (i, item) in child.as_array().into_iter().flatten().enumerate() {
                walk(item, format!("{child_path}[{i}]"), rest, f);
            }
        } else {
            walk(child, child_path, rest, f);
        }
    }
    let segments: Vec<&str> = at.split('.').filter(|s| !s.is_empty()).collect();
    walk(root, String::new(), &segments, f);
}

/// The message of the `MinItems` row for a list (`spec.webhooks[].verify.secrets`).
pub fn min_items_message(path: &str) -> Option<&'static str> {
    table().iter().find_map(|rule| match rule {
        Rule::MinItems {
            at, field, message, ..
        } if format!("{at}.{field}") == path => Some(*message),
        _ => None,
    })
}
