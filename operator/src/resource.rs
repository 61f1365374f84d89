//! The `ProviderIntegration` custom resource (sluice.dev/v1alpha1): what a
//! platform team writes. Field docs become `kubectl explain` text.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_sidecar::config::{ClientAuthMethod, Duration, RetryOn, Timestamp, WhenExceeded};

/// One third-party API as the pods that call it should see it: limits,
/// credentials, retries, caching, and (later) its webhooks.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "ProviderIntegration",
    namespaced,
    status = "ProviderIntegrationStatus",
    shortname = "pi",
    category = "sluice",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Upstream","type":"string","jsonPath":".spec.upstream.baseUrl"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.pods.injected"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderIntegrationSpec {
    /// Pods in this namespace that get this integration (with the label
    /// `sluice.dev/inject: enabled` on them or their namespace). Absent
    /// selects no pod; `{}` selects every pod of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    pub upstream: UpstreamSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressSpec>,
    /// Credentials Sluice adds to every request: exactly one kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Named routes (first match wins): the `endpoint` metric label and per-endpoint timeouts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub endpoints: Vec<EndpointSpec>,
    /// Every limit whose match fits a request applies; all must admit it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rate_limits: Vec<RateLimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    /// Response caching for matched GET endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub cache: Vec<CacheSpec>,
    /// Webhooks the provider sends: verified, de-duplicated, durably queued
    /// and delivered to the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub webhooks: Vec<WebhookSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSpec {
    #[schemars(length(max = 63))]
    pub name: String,
    /// Path on the sidecar's webhook port (15080) the provider posts to.
    #[schemars(length(max = 256))]
    pub path: String,
    /// Where verified events go, e.g. `http://127.0.0.1:8080/hooks/carrier`.
    pub forward_to: String,
    pub verify: WebhookVerifySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<WebhookDedupSpec>,
    /// JSON pointer to the event id for schemes without an id header (Stripe: `/id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_pointer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<WebhookOrderingSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<WebhookDeliverySpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookVerifySpec {
    pub scheme: sluice_sidecar::config::WebhookScheme,
    /// Several while a secret is rotated: each may stop at `notAfter`.
    pub secrets: Vec<WebhookSecretSpec>,
    /// How far a signed timestamp may be from now, either way (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Duration>,
    /// HmacSha256 only: the header with the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// HmacSha256 only: Hex (default) or Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<sluice_sidecar::config::SignatureEncoding>,
    /// HmacSha256 only: text before the signature, e.g. `sha256=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSecretSpec {
    pub secret_ref: SecretKeyRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookDedupSpec {
    /// How long an event id is remembered (default 72h).
    pub ttl: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookOrderingSpec {
    pub object_pointer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_pointer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<WebhookStatesSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookStatesSpec {
    pub pointer: String,
    pub order: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookDeliverySpec {
    /// Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Keep events that exhausted their attempts (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<bool>,
    /// Per attempt (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.timeout) || (duration(self.timeout) > duration('0s') && duration(self.timeout) <= duration('1h'))").message("timeout must be between 0s (exclusive) and 1h"),
    validation = Rule::new("!has(self.totalTimeout) || (duration(self.totalTimeout) > duration('0s') && duration(self.totalTimeout) <= duration('2h'))").message("totalTimeout must be between 0s (exclusive) and 2h"),
    validation = Rule::new("!has(self.timeout) || !has(self.totalTimeout) || duration(self.totalTimeout) >= duration(self.timeout)").message("totalTimeout must be at least timeout"),
    validation = Rule::new("!has(self.bodyTimeout) || (duration(self.bodyTimeout) > duration('0s') && duration(self.bodyTimeout) <= duration('24h'))").message("bodyTimeout must be between 0s (exclusive) and 24h")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamSpec {
    /// `https://host[:port][/prefix]`; the app's path and query are appended byte for byte.
    #[schemars(length(max = 2048))]
    pub base_url: String,
    /// Per attempt, up to the response headers (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Queueing plus every attempt and backoff (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_timeout: Option<Duration>,
    /// From the response headers to the end of the response body (default
    /// 60s): a body still arriving then is cut and counted as `upstream-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_timeout: Option<Duration>,
    /// Extra CA certificates (PEM) to trust for this upstream, besides the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Request bodies up to this size are kept so retries can resend them (default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffered_body_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.port) || (self.port >= 1024 && self.port != 15080 && self.port != 15090)").message("port must be 1024-65535, not 15080 (webhooks) or 15090 (admin)"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressSpec {
    /// The app calls `http://127.0.0.1:<port>/...` (default 15001). The injector
    /// sets `SLUICE_<NAME>_URL` to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A key of a Secret in the integration's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    validation = Rule::new("[has(self.header), has(self.bearer), has(self.basic), has(self.oauth2ClientCredentials)].filter(x, x).size() == 1").message("set exactly one of header, bearer, basic, oauth2ClientCredentials"),
    validation = Rule::new("!has(self.rotationGrace) || (duration(self.rotationGrace) >= duration('0s') && duration(self.rotationGrace) <= duration('24h'))").message("rotationGrace must be between 0s and 24h")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthSpec {
    /// How long a static key replaced in its Secret stays a fallback, tried
    /// after a 401 with the new one and sent first while the new one is
    /// refused (default 15m; 0s keeps none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_grace: Option<Duration>,
    /// A key in a header of your choice, e.g. `X-Api-Key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderAuth>,
    /// `Authorization: Bearer <key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuth>,
    /// `Authorization: Basic ...` from a username and a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// OAuth2 client credentials: tokens fetched, cached and refreshed by Sluice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_client_credentials: Option<OAuth2Auth>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.previousSecretRef) == has(self.previousValidUntil)").message("previousSecretRef and previousValidUntil go together"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderAuth {
    pub name: String,
    pub secret_ref: SecretKeyRef,
    /// The key being rotated out: tried once after a 401 until `previousValidUntil`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_ref: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.previousSecretRef) == has(self.previousValidUntil)").message("previousSecretRef and previousValidUntil go together"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BearerAuth {
    pub secret_ref: SecretKeyRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_ref: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.previousPasswordRef) == has(self.previousValidUntil)").message("previousPasswordRef and previousValidUntil go together"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicAuth {
    pub username_ref: SecretKeyRef,
    pub password_ref: SecretKeyRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_password_ref: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuth2Auth {
    pub token_url: String,
    pub client_id_ref: SecretKeyRef,
    pub client_secret_ref: SecretKeyRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Refresh this long before the token expires (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_before: Option<Duration>,
    /// How the client authenticates to the token endpoint (default Basic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthMethod>,
}

/// Which requests a rule applies to; empty matches all.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// `*` matches one path segment, a final `**` the rest, e.g. `/v1/shipments/*/tracking`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    #[schemars(length(max = 63))]
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: MatchSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LimitScope {
    /// Each pod may send the whole rate.
    #[default]
    Pod,
    /// All selected pods together share the rate.
    Cluster,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.requests >= 1 && self.requests <= 1000000").message("requests must be between 1 and 1000000"),
    validation = Rule::new("duration(self.per) > duration('0s') && duration(self.per) <= duration('24h')").message("per must be between 0s (exclusive) and 24h")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateSpec {
    pub requests: u32,
    pub per: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueSpec {
    /// Longest a request waits for a slot (default 30s; at most upstream.totalTimeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<Duration>,
    /// Most requests waiting at once (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.burst) || self.burst >= 1").message("burst must be at least 1"),
    validation = Rule::new("!has(self.burst) || self.burst <= self.rate.requests").message("burst must not exceed rate.requests"),
    validation = Rule::new("!has(self.queue) || !has(self.whenExceeded) || self.whenExceeded == 'Queue'").message("queue applies only with whenExceeded: Queue")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    #[schemars(length(max = 63))]
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: MatchSpec,
    /// At most `requests` in any window of length `per`.
    pub rate: RateSpec,
    /// How many may go back to back (default: rate.requests, i.e. no spacing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<LimitScope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_exceeded: Option<WhenExceeded>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    /// 0 to 1: each wait is scaled by a random factor in [1 - jitter, 1 + jitter].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Retries may add at most this fraction of requests (default 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Plus this many retries per second (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
    /// Over this window (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdempotencySpec {
    /// e.g. `Idempotency-Key`: added when the app sent none, the same on every attempt.
    pub header: String,
    /// Non-idempotent methods that may then be retried, e.g. [POST, PATCH].
    pub methods: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included (default 3; 1 disables retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    /// Status codes and `connect-error`, `reset`, `timeout` (default 429, 500, 502, 503, 504 and all three).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<RetryOn>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_retry_after: Option<bool>,
    /// A provider asking for a longer wait gets its answer passed to the app (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_after: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudgetSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencySpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheSpec {
    #[serde(rename = "match", default)]
    pub matches: MatchSpec,
    pub ttl: Duration,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderIntegrationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodCounts>,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodCounts {
    /// Live pods this integration selects that run the sidecar.
    pub selected: u32,
    pub injected: u32,
    /// Reserved: sidecars confirmed on the current config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_sync: Option<u32>,
}
