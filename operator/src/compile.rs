//! `compile`: a ProviderIntegration in, the sidecar's config for it out.
//!
//! Pure: no I/O, no clock, no cluster. The controller, `sluice render`,
//! `sluice check` and `sluice local` all call it, so what a pod enforces is
//! exactly what `sluice render` prints. Every error names the field path.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use sluice_sidecar::config::{
    self as sidecar, AuthConfig, BackoffConfig, CacheConfig, CacheRule, CircuitBreakerConfig,
    DEFAULT_ADMIN_PORT, DEFAULT_EGRESS_PORT, DEFAULT_WEBHOOK_PORT, DedupConfig, DeliveryConfig,
    Duration, EndpointConfig, IdempotencyConfig, IntegrationConfig, OrderingConfig, PreviousSecret,
    QueueConfig, RateLimitConfig, RequestMatch, RetryBudgetConfig, RetryConfig, SecretFile,
    StateOrder, Timestamp, UpstreamConfig, VerifyConfig, WebhookConfig, WebhookScheme,
    WebhookSecret, WhenExceeded, defaults,
};
use sluice_sidecar::egress::route::PathPattern;

use crate::resource::{
    AuthSpec, LimitScope, MatchSpec, ProviderIntegration, ProviderIntegrationSpec, SecretKeyRef,
};

/// One problem with a manifest, at a field path such as `spec.rateLimits[1].burst`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All problems found in one ProviderIntegration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct CompileErrors(pub Vec<FieldError>);

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Where the sidecar finds a referenced Secret key as a file.
pub trait SecretPaths {
    /// `None` when the Secret is known not to exist (local runs); in a cluster
    /// it is always the mount path, since the operator never reads Secrets.
    fn path_of(&self, reference: &SecretKeyRef) -> Option<PathBuf>;
}

/// The layout of mounted Secret volumes: `ROOT/<secret>/<key>`.
#[derive(Clone, Debug)]
pub struct MountedSecrets {
    pub root: PathBuf,
}

/// Where the injector mounts the referenced Secrets in a pod.
pub const POD_SECRETS_ROOT: &str = "/var/run/sluice/secrets";

impl SecretPaths for MountedSecrets {
    fn path_of(&self, reference: &SecretKeyRef) -> Option<PathBuf> {
        Some(self.root.join(&reference.name).join(&reference.key))
    }
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `<path>.name` must be a DNS label, unique among the `what`s of its list.
fn check_name<'a>(
    errors: &mut Errors,
    path: &str,
    name: &'a str,
    seen: &mut HashSet<&'a str>,
    what: &str,
) {
    if !is_dns_label(name) {
        errors.add(
            format!("{path}.name"),
            format!("{name:?} must be a DNS label"),
        );
    }
    if !seen.insert(name) {
        errors.add(
            format!("{path}.name"),
            format!("{name:?} is used by an earlier {what}"),
        );
    }
}

fn is_token(s: &str) -> bool {
    // RFC 9110 tchar, for method and header names.
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

fn positive(errors: &mut Errors, path: &str, d: Option<Duration>) {
    if d.is_some_and(|d| d.is_zero()) {
        errors.add(path, "must be greater than 0");
    }
}

fn compile_match(errors: &mut Errors, path: &str, spec: &MatchSpec) -> RequestMatch {
    for (i, method) in spec.methods.iter().enumerate() {
        if !is_token(method) || method.to_ascii_uppercase() != *method {
            errors.add(
                format!("{path}.methods[{i}]"),
                format!("{method:?} is not an upper-case HTTP method such as GET or POST"),
            );
        }
    }
    if let Some(pattern) = &spec.path
        && let Err(e) = PathPattern::parse(pattern)
    {
        errors.add(format!("{path}.path"), format!("{pattern:?} {e}"));
    }
    RequestMatch {
        methods: spec.methods.clone(),
        path: spec.path.clone(),
    }
}

fn secret_file(
    errors: &mut Errors,
    secrets: &dyn SecretPaths,
    path: &str,
    reference: &SecretKeyRef,
) -> SecretFile {
    if !is_dns_subdomain(&reference.name) {
        errors.add(
            format!("{path}.name"),
            format!("{:?} is not a Secret name", reference.name),
        );
    }
    if reference.key.is_empty()
        || !reference
            .key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._".contains(&c))
    {
        errors.add(
            format!("{path}.key"),
            format!("{:?} is not a Secret key", reference.key),
        );
    }
    match secrets.path_of(reference) {
        Some(file) => SecretFile::new(file),
        None => {
            errors.add(
                path,
                format!(
                    "Secret {:?} (key {:?}) not found: add a kind: Secret document or pass --secrets-dir DIR holding DIR/{}/{}",
                    reference.name, reference.key, reference.name, reference.key
                ),
            );
            SecretFile::new(PathBuf::new())
        }
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn previous(
    errors: &mut Errors,
    secrets: &dyn SecretPaths,
    path: &str,
    reference: &Option<SecretKeyRef>,
    ref_field: &str,
    valid_until: Option<Timestamp>,
) -> Option<PreviousSecret> {
    match (reference, valid_until) {
        (Some(r), Some(until)) => Some(PreviousSecret {
            secret: secret_file(errors, secrets, &format!("{path}.{ref_field}"), r),
            valid_until: until,
        }),
        (Some(_), None) => {
            errors.add(
                format!("{path}.previousValidUntil"),
                format!("is required with {ref_field}: say when the old key stops being tried"),
            );
            None
        }
        (None, Some(_)) => {
            errors.add(
                format!("{path}.previousValidUntil"),
                format!("is set but {ref_field} is not"),
            );
            None
        }
        (None, None) => None,
    }
}

fn compile_auth(
    errors: &mut Errors,
    secrets: &dyn SecretPaths,
    auth: &AuthSpec,
) -> Option<AuthConfig> {
    let kinds = [
        auth.header.is_some(),
        auth.bearer.is_some(),
        auth.basic.is_some(),
        auth.oauth2_client_credentials.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        errors.add(
            "spec.auth",
            "set exactly one of header, bearer, basic, oauth2ClientCredentials",
        );
        return None;
    }
    if let Some(h) = &auth.header {
        let path = "spec.auth.header";
        if !is_token(&h.name) {
            errors.add(
                format!("{path}.name"),
                format!("{:?} is not a header name", h.name),
            );
        }
        let lower = h.name.to_ascii_lowercase();
        if ["host", "content-length", "transfer-encoding", "connection"].contains(&lower.as_str()) {
            errors.add(
                format!("{path}.name"),
                format!("{:?} cannot carry a credential", h.name),
            );
        }
        return Some(AuthConfig::Header {
            name: h.name.clone(),
            secret: secret_file(errors, secrets, &format!("{path}.secretRef"), &h.secret_ref),
            previous: previous(
                errors,
                secrets,
                path,
                &h.previous_secret_ref,
                "previousSecretRef",
                h.previous_valid_until,
            ),
        });
    }
    if let Some(b) = &auth.bearer {
        let path = "spec.auth.bearer";
        return Some(AuthConfig::Bearer {
            secret: secret_file(errors, secrets, &format!("{path}.secretRef"), &b.secret_ref),
            previous: previous(
                errors,
                secrets,
                path,
                &b.previous_secret_ref,
                "previousSecretRef",
                b.previous_valid_until,
            ),
        });
    }
    if let Some(b) = &auth.basic {
        let path = "spec.auth.basic";
        return Some(AuthConfig::Basic {
            username: secret_file(
                errors,
                secrets,
                &format!("{path}.usernameRef"),
                &b.username_ref,
            ),
            password: secret_file(
                errors,
                secrets,
                &format!("{path}.passwordRef"),
                &b.password_ref,
            ),
            previous_password: previous(
                errors,
                secrets,
                path,
                &b.previous_password_ref,
                "previousPasswordRef",
                b.previous_valid_until,
            ),
        });
    }
    let o = auth.oauth2_client_credentials.as_ref()?;
    let path = "spec.auth.oauth2ClientCredentials";
    check_url(errors, &format!("{path}.tokenUrl"), &o.token_url);
    positive(errors, &format!("{path}.refreshBefore"), o.refresh_before);
    for (i, scope) in o.scopes.iter().enumerate() {
        if scope.is_empty() || scope.contains([' ', '"', '\\']) {
            errors.add(
                format!("{path}.scopes[{i}]"),
                format!("{scope:?} is not a scope token"),
            );
        }
    }
    Some(AuthConfig::Oauth2ClientCredentials {
        token_url: o.token_url.clone(),
        client_id: secret_file(
            errors,
            secrets,
            &format!("{path}.clientIdRef"),
            &o.client_id_ref,
        ),
        client_secret: secret_file(
            errors,
            secrets,
            &format!("{path}.clientSecretRef"),
            &o.client_secret_ref,
        ),
        scopes: o.scopes.clone(),
        audience: o.audience.clone(),
        refresh_before: o.refresh_before.unwrap_or_else(defaults::refresh_before),
        client_auth: o.client_auth.unwrap_or_default(),
    })
}

fn check_url(errors: &mut Errors, path: &str, url: &str) {
    match sluice_sidecar::egress::client::Upstream::parse(url) {
        Ok(_) => {}
        Err(_) => errors.add(
            path,
            format!("{url:?} is not an absolute http:// or https:// URL without a query"),
        ),
    }
}

/// Compiles one ProviderIntegration. `secrets` says where referenced Secret
/// keys are found as files.
pub fn compile(
    pi: &ProviderIntegration,
    secrets: &dyn SecretPaths,
) -> Result<IntegrationConfig, CompileErrors> {
    let mut errors = Errors(Vec::new());
    let name = pi.metadata.name.clone().unwrap_or_default();
    if !is_dns_label(&name) {
        errors.add(
            "metadata.name",
            format!("{name:?} must be a DNS label (lower-case letters, digits, '-'; at most 63)"),
        );
    }
    let spec: &ProviderIntegrationSpec = &pi.spec;

    let up = &spec.upstream;
    check_url(&mut errors, "spec.upstream.baseUrl", &up.base_url);
    positive(&mut errors, "spec.upstream.timeout", up.timeout);
    positive(&mut errors, "spec.upstream.totalTimeout", up.total_timeout);
    positive(&mut errors, "spec.upstream.bodyTimeout", up.body_timeout);
    let timeout = up.timeout.unwrap_or_else(defaults::timeout);
    let total_timeout = up.total_timeout.unwrap_or_else(defaults::total_timeout);
    if total_timeout < timeout {
        errors.add(
            "spec.upstream.totalTimeout",
            format!("{total_timeout} is shorter than upstream.timeout {timeout}"),
        );
    }
    if let Some(pem) = &up.ca_bundle
        && !pem.contains("-----BEGIN CERTIFICATE-----")
    {
        errors.add("spec.upstream.caBundle", "holds no PEM CERTIFICATE block");
    }

    let port = spec
        .egress
        .as_ref()
        .and_then(|e| e.port)
        .unwrap_or(DEFAULT_EGRESS_PORT);
    if port < 1024 || port == DEFAULT_ADMIN_PORT || port == DEFAULT_WEBHOOK_PORT {
        errors.add(
            "spec.egress.port",
            format!("{port} is reserved: use 1024-65535 except {DEFAULT_WEBHOOK_PORT} (webhooks) and {DEFAULT_ADMIN_PORT} (admin)"),
        );
    }

    let auth = spec
        .auth
        .as_ref()
        .and_then(|a| compile_auth(&mut errors, secrets, a));

    let mut endpoint_names = HashSet::new();
    let endpoints = spec
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let path = format!("spec.endpoints[{i}]");
            check_name(&mut errors, &path, &e.name, &mut endpoint_names, "endpoint");
            positive(&mut errors, &format!("{path}.timeout"), e.timeout);
            positive(
                &mut errors,
                &format!("{path}.totalTimeout"),
                e.total_timeout,
            );
            let (t, tt) = (
                e.timeout.unwrap_or(timeout),
                e.total_timeout.unwrap_or(total_timeout),
            );
            if tt < t {
                errors.add(
                    format!("{path}.totalTimeout"),
                    format!("{tt} is shorter than the timeout {t}"),
                );
            }
            EndpointConfig {
                name: e.name.clone(),
                matches: compile_match(&mut errors, &format!("{path}.match"), &e.matches),
                timeout: e.timeout,
                total_timeout: e.total_timeout,
            }
        })
        .collect();

    let mut limit_names = HashSet::new();
    let rate_limits = spec
        .rate_limits
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let path = format!("spec.rateLimits[{i}]");
            check_name(&mut errors, &path, &l.name, &mut limit_names, "rate limit");
            if l.rate.requests == 0 {
                errors.add(format!("{path}.rate.requests"), "must be at least 1");
            }
            if l.rate.per.is_zero() {
                errors.add(format!("{path}.rate.per"), "must be greater than 0");
            }
            if l.rate.requests > 1_000_000 {
                errors.add(format!("{path}.rate.requests"), "must be at most 1000000 per window (use a shorter per)");
            }
            let burst = l.burst.unwrap_or(l.rate.requests);
            if burst == 0 {
                errors.add(format!("{path}.burst"), "must be at least 1");
            } else if burst > l.rate.requests && l.rate.requests > 0 {
                errors.add(
                    format!("{path}.burst"),
                    format!("{burst} exceeds rate.requests {}: no more than that may go in one window", l.rate.requests),
                );
            }
            let when_exceeded = l.when_exceeded.unwrap_or_default();
            let queue = l.queue.clone().unwrap_or(crate::resource::QueueSpec {
                max_wait: None,
                max_depth: None,
            });
            if when_exceeded == WhenExceeded::Reject && l.queue.is_some() {
                errors.add(format!("{path}.queue"), "applies only with whenExceeded: Queue");
            }
            let max_wait = queue.max_wait.unwrap_or_else(|| defaults::max_wait().min(total_timeout));
            if max_wait > total_timeout {
                errors.add(
                    format!("{path}.queue.maxWait"),
                    format!("{max_wait} exceeds upstream.totalTimeout {total_timeout}: no request could wait that long"),
                );
            }
            let max_depth = queue.max_depth.unwrap_or_else(defaults::max_depth);
            if max_depth == 0 {
                errors.add(format!("{path}.queue.maxDepth"), "must be at least 1");
            }
            // Cluster scope is divided among the pods by `share_cluster_limits`.
            RateLimitConfig {
                name: l.name.clone(),
                matches: compile_match(&mut errors, &format!("{path}.match"), &l.matches),
                requests: l.rate.requests,
                per: l.rate.per,
                burst,
                when_exceeded,
                queue: QueueConfig { max_wait, max_depth },
            }
        })
        .collect();

    let retry = compile_retry(&mut errors, spec, total_timeout);

    let circuit_breaker = spec.circuit_breaker.as_ref().map(|c| {
        let path = "spec.circuitBreaker";
        if !(c.failure_ratio > 0.0 && c.failure_ratio <= 1.0) {
            errors.add(
                format!("{path}.failureRatio"),
                format!("{} is not in (0, 1]", c.failure_ratio),
            );
        }
        if c.min_requests == 0 {
            errors.add(format!("{path}.minRequests"), "must be at least 1");
        }
        positive(&mut errors, &format!("{path}.window"), Some(c.window));
        positive(&mut errors, &format!("{path}.openFor"), Some(c.open_for));
        if c.half_open_probes == Some(0) {
            errors.add(format!("{path}.halfOpenProbes"), "must be at least 1");
        }
        CircuitBreakerConfig {
            failure_ratio: c.failure_ratio,
            min_requests: c.min_requests,
            window: c.window,
            open_for: c.open_for,
            half_open_probes: c
                .half_open_probes
                .unwrap_or_else(defaults::half_open_probes),
        }
    });

    let cache = CacheConfig {
        rules: spec
            .cache
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let path = format!("spec.cache[{i}]");
                positive(&mut errors, &format!("{path}.ttl"), Some(c.ttl));
                if c.matches.methods.is_empty() {
                    errors.add(
                        format!("{path}.match.methods"),
                        "name the methods to cache: [GET] (only GET and HEAD are cacheable)",
                    );
                }
                for (j, m) in c.matches.methods.iter().enumerate() {
                    if m != "GET" && m != "HEAD" {
                        errors.add(
                            format!("{path}.match.methods[{j}]"),
                            format!("{m:?} responses are not cacheable (only GET and HEAD)"),
                        );
                    }
                }
                CacheRule {
                    matches: compile_match(&mut errors, &format!("{path}.match"), &c.matches),
                    ttl: c.ttl,
                }
            })
            .collect(),
        ..CacheConfig::default()
    };

    let webhooks = compile_webhooks(&mut errors, secrets, &spec.webhooks);

    if !errors.0.is_empty() {
        return Err(CompileErrors(errors.0));
    }
    Ok(IntegrationConfig {
        name,
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        upstream: UpstreamConfig {
            base_url: up.base_url.clone(),
            timeout,
            total_timeout,
            body_timeout: up.body_timeout.unwrap_or_else(defaults::body_timeout),
            ca_bundle: up.ca_bundle.clone(),
            max_buffered_body_bytes: up
                .max_buffered_body_bytes
                .unwrap_or_else(defaults::max_buffered_body),
        },
        auth,
        rotation_grace: spec
            .auth
            .as_ref()
            .and_then(|a| a.rotation_grace)
            .unwrap_or_else(defaults::rotation_grace),
        endpoints,
        rate_limits,
        retry,
        circuit_breaker,
        cache,
        webhooks,
    })
}

fn check_pointer(errors: &mut Errors, path: &str, pointer: &str) {
    if !pointer.starts_with('/') {
        errors.add(
            path,
            format!(
                "{pointer:?} is not a JSON pointer (they start with '/', e.g. /data/object/id)"
            ),
        );
    }
}

fn compile_webhooks(
    errors: &mut Errors,
    secrets: &dyn SecretPaths,
    specs: &[crate::resource::WebhookSpec],
) -> Vec<WebhookConfig> {
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    specs
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let path = format!("spec.webhooks[{i}]");
            check_name(errors, &path, &w.name, &mut names, "webhook");
            if !w.path.starts_with('/') || w.path.contains(['?', '#', '*']) {
                errors.add(
                    format!("{path}.path"),
                    format!("{:?} must be a plain path starting with '/'", w.path),
                );
            }
            if !paths.insert(w.path.as_str()) {
                errors.add(
                    format!("{path}.path"),
                    format!("{:?} is used by an earlier webhook", w.path),
                );
            }
            check_url(errors, &format!("{path}.forwardTo"), &w.forward_to);
            let v = &w.verify;
            if v.secrets.is_empty() {
                errors.add(
                    format!("{path}.verify.secrets"),
                    "list at least one secret: unsigned webhooks are never accepted",
                );
            }
            let generic = v.scheme == WebhookScheme::HmacSha256;
            if generic && v.header.is_none() {
                errors.add(
                    format!("{path}.verify.header"),
                    "is required for scheme HmacSha256",
                );
            }
            if !generic && (v.header.is_some() || v.encoding.is_some() || v.prefix.is_some()) {
                errors.add(
                    format!("{path}.verify"),
                    "header, encoding and prefix apply only to scheme HmacSha256",
                );
            }
            if let Some(header) = &v.header
                && !is_token(header)
            {
                errors.add(
                    format!("{path}.verify.header"),
                    format!("{header:?} is not a header name"),
                );
            }
            positive(errors, &format!("{path}.verify.tolerance"), v.tolerance);
            if let Some(p) = &w.id_pointer {
                check_pointer(errors, &format!("{path}.idPointer"), p);
            }
            if let Some(o) = &w.ordering {
                check_pointer(
                    errors,
                    &format!("{path}.ordering.objectPointer"),
                    &o.object_pointer,
                );
                if let Some(p) = &o.timestamp_pointer {
                    check_pointer(errors, &format!("{path}.ordering.timestampPointer"), p);
                }
                if let Some(states) = &o.states {
                    check_pointer(
                        errors,
                        &format!("{path}.ordering.states.pointer"),
                        &states.pointer,
                    );
                    if states.order.len() < 2 {
                        errors.add(
                            format!("{path}.ordering.states.order"),
                            "name at least two states in their order",
                        );
                    }
                }
                if o.timestamp_pointer.is_none() && o.states.is_none() {
                    errors.add(
                        format!("{path}.ordering"),
                        "set timestampPointer, states, or both: otherwise nothing is ordered",
                    );
                }
            }
            let base = DeliveryConfig::default();
            let d = w.delivery.clone();
            let delivery = DeliveryConfig {
                rate_per_second: d
                    .as_ref()
                    .and_then(|d| d.rate_per_second)
                    .unwrap_or(base.rate_per_second),
                max_attempts: d
                    .as_ref()
                    .and_then(|d| d.max_attempts)
                    .unwrap_or(base.max_attempts),
                dead_letter: d
                    .as_ref()
                    .and_then(|d| d.dead_letter)
                    .unwrap_or(base.dead_letter),
                timeout: d.as_ref().and_then(|d| d.timeout).unwrap_or(base.timeout),
                backoff: base.backoff,
            };
            if !(delivery.rate_per_second > 0.0 && delivery.rate_per_second <= 100_000.0) {
                errors.add(
                    format!("{path}.delivery.ratePerSecond"),
                    format!("{} is not in (0, 100000]", delivery.rate_per_second),
                );
            }
            if !(1..=100).contains(&delivery.max_attempts) {
                errors.add(
                    format!("{path}.delivery.maxAttempts"),
                    format!("{} is not between 1 and 100", delivery.max_attempts),
                );
            }
            positive(
                errors,
                &format!("{path}.delivery.timeout"),
                d.as_ref().and_then(|d| d.timeout),
            );
            WebhookConfig {
                name: w.name.clone(),
                path: w.path.clone(),
                forward_to: w.forward_to.clone(),
                verify: VerifyConfig {
                    scheme: v.scheme,
                    secrets: v
                        .secrets
                        .iter()
                        .enumerate()
                        .map(|(j, s)| WebhookSecret {
                            secret: secret_file(
                                errors,
                                secrets,
                                &format!("{path}.verify.secrets[{j}].secretRef"),
                                &s.secret_ref,
                            ),
                            not_after: s.not_after,
                        })
                        .collect(),
                    tolerance: v.tolerance.unwrap_or_else(defaults::webhook_tolerance),
                    header: v.header.clone(),
                    encoding: v.encoding.unwrap_or_default(),
                    prefix: v.prefix.clone(),
                },
                dedup: w
                    .dedup
                    .as_ref()
                    .map(|d| DedupConfig { ttl: d.ttl })
                    .unwrap_or_default(),
                id_pointer: w
                    .id_pointer
                    .clone()
                    .or_else(|| (v.scheme == WebhookScheme::Stripe).then(|| "/id".to_owned())),
                ordering: w.ordering.as_ref().map(|o| OrderingConfig {
                    object_pointer: o.object_pointer.clone(),
                    timestamp_pointer: o.timestamp_pointer.clone(),
                    states: o.states.as_ref().map(|s| StateOrder {
                        pointer: s.pointer.clone(),
                        order: s.order.clone(),
                    }),
                }),
                delivery,
            }
        })
        .collect()
}

fn compile_retry(
    errors: &mut Errors,
    spec: &ProviderIntegrationSpec,
    total_timeout: Duration,
) -> RetryConfig {
    let base = RetryConfig::default();
    let Some(r) = &spec.retry else {
        return base;
    };
    let path = "spec.retry";
    let max_attempts = r.max_attempts.unwrap_or(base.max_attempts);
    if !(1..=10).contains(&max_attempts) {
        errors.add(
            format!("{path}.maxAttempts"),
            format!("{max_attempts} is not between 1 and 10"),
        );
    }
    let b = r.backoff.clone().unwrap_or(crate::resource::BackoffSpec {
        initial: None,
        max: None,
        multiplier: None,
        jitter: None,
    });
    let backoff = BackoffConfig {
        initial: b.initial.unwrap_or(base.backoff.initial),
        max: b.max.unwrap_or(base.backoff.max),
        multiplier: b.multiplier.unwrap_or(base.backoff.multiplier),
        jitter: b.jitter.unwrap_or(base.backoff.jitter),
    };
    positive(errors, &format!("{path}.backoff.initial"), b.initial);
    if backoff.max < backoff.initial {
        errors.add(
            format!("{path}.backoff.max"),
            format!(
                "{} is below backoff.initial {}",
                backoff.max, backoff.initial
            ),
        );
    }
    if !(1.0..=10.0).contains(&backoff.multiplier) {
        errors.add(
            format!("{path}.backoff.multiplier"),
            format!("{} is not between 1 and 10", backoff.multiplier),
        );
    }
    if !(0.0..=1.0).contains(&backoff.jitter) {
        errors.add(
            format!("{path}.backoff.jitter"),
            format!("{} is not between 0 and 1", backoff.jitter),
        );
    }
    if max_attempts > 1 && backoff.initial >= total_timeout {
        errors.add(
            format!("{path}.backoff.initial"),
            format!(
                "{} leaves no time for a retry within upstream.totalTimeout {total_timeout}",
                backoff.initial
            ),
        );
    }
    let retry_on = r.retry_on.clone().unwrap_or(base.retry_on);
    for (i, on) in retry_on.iter().enumerate() {
        if let sidecar::RetryOn::Status(code) = on
            && [400, 401, 403, 404, 422].contains(code)
        {
            errors.add(
                format!("{path}.retryOn[{i}]"),
                format!("{code} is a permanent error: retrying it cannot succeed (and 401s can lock accounts)"),
            );
        }
    }
    let bud = r
        .budget
        .clone()
        .unwrap_or(crate::resource::RetryBudgetSpec {
            ratio: None,
            min_per_second: None,
            window: None,
        });
    let budget = RetryBudgetConfig {
        ratio: bud.ratio.unwrap_or(base.budget.ratio),
        min_per_second: bud.min_per_second.unwrap_or(base.budget.min_per_second),
        window: bud.window.unwrap_or(base.budget.window),
    };
    if !(0.0..=1.0).contains(&budget.ratio) {
        errors.add(
            format!("{path}.budget.ratio"),
            format!("{} is not between 0 and 1", budget.ratio),
        );
    }
    if budget.window < Duration::from_secs(1) || budget.window > Duration::from_secs(60) {
        errors.add(
            format!("{path}.budget.window"),
            format!("{} is not between 1s and 60s", budget.window),
        );
    }
    let idempotency = r.idempotency.as_ref().map(|i| {
        if !is_token(&i.header) {
            errors.add(
                format!("{path}.idempotency.header"),
                format!("{:?} is not a header name", i.header),
            );
        }
        if i.methods.is_empty() {
            errors.add(
                format!("{path}.idempotency.methods"),
                "name the methods that get a key, e.g. [POST, PATCH]",
            );
        }
        for (j, m) in i.methods.iter().enumerate() {
            if !is_token(m) || m.to_ascii_uppercase() != *m {
                errors.add(
                    format!("{path}.idempotency.methods[{j}]"),
                    format!("{m:?} is not an upper-case HTTP method"),
                );
            }
        }
        IdempotencyConfig {
            header: i.header.clone(),
            methods: i.methods.clone(),
        }
    });
    positive(errors, &format!("{path}.maxRetryAfter"), r.max_retry_after);
    RetryConfig {
        max_attempts,
        backoff,
        retry_on,
        honor_retry_after: r.honor_retry_after.unwrap_or(base.honor_retry_after),
        max_retry_after: r.max_retry_after.unwrap_or(base.max_retry_after),
        budget,
        idempotency,
    }
}

/// Checks that concern several integrations of one namespace, which may
/// land in the same pod: each needs its own egress port.
/// `compiled` holds (namespace, config) pairs.
pub fn check_together(compiled: &[(String, IntegrationConfig)]) -> Vec<String> {
    let mut by_port: BTreeMap<(&str, u16), Vec<&str>> = BTreeMap::new();
    for (namespace, config) in compiled {
        by_port
            .entry((namespace, config.listen.port()))
            .or_default()
            .push(&config.name);
    }
    by_port
        .into_iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|((namespace, port), names)| {
            format!(
                "spec.egress.port: {port} is used by several integrations in namespace {namespace} ({}); give each its own port",
                names.join(", ")
            )
        })
        .collect()
}

/// A pod's share of the `scope: Cluster` limits when `pods` pods run the
/// integration: each pod enforces `requests / pods`, rounded down and at
/// least 1, and a burst cut the same way, so together they stay within the
/// provider's limit. `Pod` limits are left as they are.
pub fn share_cluster_limits(
    pi: &ProviderIntegration,
    mut config: IntegrationConfig,
    pods: u32,
) -> IntegrationConfig {
    let pods = pods.max(1);
    for (limit, spec) in config.rate_limits.iter_mut().zip(&pi.spec.rate_limits) {
        if spec.scope == Some(LimitScope::Cluster) {
            limit.requests = (limit.requests / pods).max(1);
            limit.burst = (limit.burst / pods).clamp(1, limit.requests);
        }
    }
    config
}

/// When a Cluster limit cannot be divided among `pods` without going over:
/// fewer requests than pods, each pod still needing one.
pub fn cluster_share_problems(pi: &ProviderIntegration, pods: u32) -> Vec<String> {
    pi.spec
        .rate_limits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.scope == Some(LimitScope::Cluster) && l.rate.requests < pods)
        .map(|(i, l)| {
            format!(
                "spec.rateLimits[{i}].rate.requests: {} per {} cannot be shared by {pods} pods (each needs at least 1); together they may send {pods}",
                l.rate.requests, l.rate.per
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_limits_are_divided_among_pods_and_pod_limits_are_not() {
        let pi = pi("  upstream: {baseUrl: 'https://x.example'}
  rateLimits:
    - {name: shared, match: {}, rate: {requests: 100, per: 1m}, burst: 10, scope: Cluster}
    - {name: mine, match: {}, rate: {requests: 30, per: 1m}, burst: 5}
    - {name: tiny, match: {}, rate: {requests: 2, per: 1s}, scope: Cluster}
");
        let config = compile(&pi, &mounted()).unwrap();
        let shared = |n: u32| {
            let c = share_cluster_limits(&pi, config.clone(), n);
            c.rate_limits
                .iter()
                .map(|l| (l.requests, l.burst))
                .collect::<Vec<_>>()
        };
        assert_eq!(shared(1), [(100, 10), (30, 5), (2, 2)]);
        assert_eq!(shared(0), shared(1), "no pods yet: the first gets it all");
        assert_eq!(shared(3), [(33, 3), (30, 5), (1, 1)]);
        assert_eq!(shared(20), [(5, 1), (30, 5), (1, 1)]);
        assert!(cluster_share_problems(&pi, 2).is_empty());
        let problems = cluster_share_problems(&pi, 3);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("spec.rateLimits[2].rate.requests"),
            "{problems:?}"
        );
    }

    fn pi(spec_yaml: &str) -> ProviderIntegration {
        let yaml = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: ProviderIntegration\nmetadata: {{name: carrier, namespace: shop}}\nspec:\n{spec_yaml}"
        );
        serde_yaml_ng::from_str(&yaml).unwrap()
    }

    fn mounted() -> MountedSecrets {
        MountedSecrets {
            root: POD_SECRETS_ROOT.into(),
        }
    }

    #[test]
    fn minimal_spec_gets_every_default() {
        let config = compile(
            &pi("  upstream: {baseUrl: 'https://api.example'}\n"),
            &mounted(),
        )
        .unwrap();
        assert_eq!(config.name, "carrier");
        assert_eq!(config.listen.to_string(), "127.0.0.1:15001");
        assert_eq!(config.upstream.timeout, defaults::timeout());
        assert_eq!(config.upstream.total_timeout, defaults::total_timeout());
        assert_eq!(config.retry, RetryConfig::default());
        assert!(config.auth.is_none() && config.rate_limits.is_empty());
    }

    #[test]
    fn secret_refs_become_mounted_file_paths() {
        let config = compile(
            &pi("  upstream: {baseUrl: 'https://api.example'}\n  auth:\n    oauth2ClientCredentials:\n      tokenUrl: https://auth.example/token\n      clientIdRef: {name: kyc, key: id}\n      clientSecretRef: {name: kyc, key: secret}\n"),
            &mounted(),
        )
        .unwrap();
        let Some(AuthConfig::Oauth2ClientCredentials {
            client_id,
            client_secret,
            refresh_before,
            ..
        }) = config.auth
        else {
            panic!("oauth2 expected");
        };
        assert_eq!(
            client_id.path(),
            std::path::Path::new("/var/run/sluice/secrets/kyc/id")
        );
        assert_eq!(
            client_secret.path(),
            std::path::Path::new("/var/run/sluice/secrets/kyc/secret")
        );
        assert_eq!(refresh_before, defaults::refresh_before());
    }

    #[test]
    fn rate_limit_defaults_follow_the_rate_and_the_total_timeout() {
        let config = compile(
            &pi("  upstream: {baseUrl: 'https://api.example', totalTimeout: 20s}\n  rateLimits:\n  - name: all\n    rate: {requests: 300, per: 1m}\n"),
            &mounted(),
        )
        .unwrap();
        let limit = &config.rate_limits[0];
        assert_eq!(limit.burst, 300, "burst defaults to rate.requests");
        assert_eq!(
            limit.queue.max_wait,
            Duration::from_secs(20),
            "maxWait capped by totalTimeout"
        );
        assert_eq!(limit.when_exceeded, WhenExceeded::Queue);
    }

    #[test]
    fn collects_every_error_with_its_path() {
        let errors = compile(
            &pi("  upstream: {baseUrl: 'ftp://x', timeout: 0s}\n  rateLimits:\n  - name: a\n    rate: {requests: 0, per: 1m}\n    burst: 0\n  - name: a\n    rate: {requests: 1, per: 0s}\n"),
            &mounted(),
        )
        .unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "spec.upstream.baseUrl",
            "spec.upstream.timeout",
            "spec.rateLimits[0].rate.requests",
            "spec.rateLimits[0].burst",
            "spec.rateLimits[1].name",
            "spec.rateLimits[1].rate.per",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn same_port_in_two_namespaces_is_fine() {
        let a = compile(
            &pi("  upstream: {baseUrl: 'https://a.example'}\n"),
            &mounted(),
        )
        .unwrap();
        let ok = check_together(&[("shop".into(), a.clone()), ("billing".into(), a.clone())]);
        assert!(ok.is_empty());
        let clash = check_together(&[("shop".into(), a.clone()), ("shop".into(), a)]);
        assert_eq!(clash.len(), 1);
    }
}
