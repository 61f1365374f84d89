//! The sidecar's configuration: the contract between the operator (which
//! compiles `ProviderIntegration`s into it) and the data plane (which enforces it).
//!
//! The config never holds a secret value, only the path of a file that holds one
//! (a mounted Secret volume), so it can be printed, logged and served on
//! `/config` as it is.

mod method;
mod pattern;
mod polling;
mod quota;
mod response_contract;
mod url;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bounds::{self, Bound};
use crate::layout;

pub use crate::duration::{DURATION_PATTERN, Duration, ParseDurationError};
pub use crate::timestamp::{ParseTimestampError, Timestamp};
pub use method::{METHOD_PATTERN, Method, ParseMethodError};
pub use pattern::{PATH_PATTERN, PathPattern, PatternError};
pub use polling::{CURSOR_LAST_ID, CursorFrom, PollCursor, PollingConfig};
pub use quota::{
    CALENDAR_MONTH, DEFAULT_COST_SEPARATOR, ParseQuotaPeriodError, QuotaConfig, QuotaCost,
    QuotaPeriod, QuotaWindow, WhenExhausted, quota_period_pattern,
};
pub use response_contract::{JsonSchema, JsonSchemaError, ResponseContractConfig};
pub use url::{HttpUrl, ParseUrlError, URL_PATTERN};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarConfig {
    #[serde(default)]
    pub admin: AdminConfig,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Duration,
    #[serde(default)]
    pub integrations: Vec<IntegrationConfig>,
    /// The webhook ingress: one inbound port for every integration's webhooks.
    #[serde(default)]
    pub ingress: IngressConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressConfig {
    /// Where providers send webhooks (through the pod's Service or Ingress).
    pub listen: SocketAddr,
    /// Durable queues, de-duplication ids and dead letters (a pod volume).
    pub state_dir: PathBuf,
    /// Accepted but undelivered events may take this much disk; past it
    /// providers get 503 + Retry-After and send again later.
    #[serde(default = "defaults::max_queue_bytes")]
    pub max_queue_bytes: u64,
    /// Larger webhook bodies get 413.
    #[serde(default = "defaults::max_webhook_body")]
    pub max_body_bytes: u64,
    /// Bytes of bodies being read before their signature is checked, all
    /// webhooks together; past it senders get 503 and a close. Bodies over
    /// 64 KiB may take three quarters of it, so small ones always find room.
    #[serde(default = "defaults::max_unverified_bytes")]
    pub max_unverified_bytes: u64,
    /// From a webhook's request head to the end of its body.
    #[serde(default = "defaults::webhook_body_timeout")]
    pub body_timeout: Duration,
    /// Bytes a second a webhook body must average after its first 2 s.
    #[serde(default = "defaults::min_webhook_body_rate")]
    pub min_body_bytes_per_second: u64,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: layout::LOCAL_WEBHOOK_LISTEN,
            state_dir: PathBuf::from(layout::STATE_DIR),
            max_queue_bytes: defaults::max_queue_bytes(),
            max_body_bytes: defaults::max_webhook_body(),
            max_unverified_bytes: defaults::max_unverified_bytes(),
            body_timeout: defaults::webhook_body_timeout(),
            min_body_bytes_per_second: defaults::min_webhook_body_rate(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    /// `/metrics`, `/healthz`, `/readyz`, `/config`. In a pod this binds all
    /// addresses so the kubelet and Prometheus reach it; it serves no secrets.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: layout::LOCAL_ADMIN_LISTEN,
        }
    }
}

/// One provider integration: an egress listener and everything that governs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntegrationConfig {
    /// The metrics label and log field; `namespace/name` of the ProviderIntegration.
    pub name: String,
    /// Where the app sends its calls. Must be a loopback address: this listener
    /// injects credentials, so nothing outside the pod may reach it.
    pub listen: SocketAddr,
    pub upstream: UpstreamConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// How long a static key value replaced in its file stays a fallback
    /// (sent after a 401 with the new one); 0 keeps none.
    #[serde(default = "defaults::rotation_grace")]
    pub rotation_grace: Duration,
    /// Named routes, first match wins: the `endpoint` label and per-endpoint timeouts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointConfig>,
    /// Every limit whose match fits a request applies to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitConfig>,
    /// JSON Schemas the provider's matched responses are checked against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contracts: Vec<ResponseContractConfig>,
    /// Spend quotas: every quota whose match fits a request counts its cost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaConfig>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    #[serde(default)]
    pub cache: CacheConfig,
    /// Webhooks this provider sends, received on the ingress port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookConfig>,
}

/// One webhook endpoint of a provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    /// The path on the ingress port the provider posts to.
    pub path: String,
    /// Where verified events go: the app, in the pod.
    pub forward_to: HttpUrl,
    pub verify: VerifyConfig,
    #[serde(default)]
    pub dedup: DedupConfig,
    /// JSON pointer to the event id in the body, for schemes without an id header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_pointer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<OrderingConfig>,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// The provider's list of events, read for events whose webhook never came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling: Option<PollingConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum WebhookScheme {
    /// standardwebhooks.com (also Svix): `webhook-id/-timestamp/-signature`.
    StandardWebhooks,
    /// `Stripe-Signature: t=...,v1=...`.
    Stripe,
    /// `X-Hub-Signature-256: sha256=...`.
    GitHub,
    /// `X-Shopify-Hmac-Sha256`, base64.
    Shopify,
    /// `X-Slack-Signature: v0=...` over `v0:{timestamp}:{body}`.
    Slack,
    /// `X-Razorpay-Signature`, hex.
    Razorpay,
    /// Any HMAC-SHA256 of the body in a header of your choice.
    HmacSha256,
}

impl WebhookScheme {
    /// Every scheme, for whatever must cover them all (tests, fuzzing).
    pub const ALL: [WebhookScheme; 7] = [
        WebhookScheme::StandardWebhooks,
        WebhookScheme::Stripe,
        WebhookScheme::GitHub,
        WebhookScheme::Shopify,
        WebhookScheme::Slack,
        WebhookScheme::Razorpay,
        WebhookScheme::HmacSha256,
    ];
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyConfig {
    pub scheme: WebhookScheme,
    /// Several while a secret is rotated; each may stop being accepted at `notAfter`.
    pub secrets: Vec<WebhookSecret>,
    /// How far a signed timestamp may be from now, either way.
    #[serde(default = "defaults::webhook_tolerance")]
    pub tolerance: Duration,
    /// HmacSha256 only: the header holding the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// HmacSha256 only.
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// HmacSha256 only: text before the signature, e.g. `sha256=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSecret {
    pub secret: SecretFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DedupConfig {
    pub ttl: Duration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(72 * 3600),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderingConfig {
    /// JSON pointer to the object the event is about, e.g. `/data/object/id`.
    pub object_pointer: String,
    /// JSON pointer to the event time (epoch seconds or RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_pointer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<StateOrder>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateOrder {
    /// JSON pointer to the state (often the event type).
    pub pointer: String,
    /// States in the only order they may follow each other.
    pub order: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryConfig {
    pub rate_per_second: f64,
    pub max_attempts: u32,
    pub dead_letter: bool,
    /// Per delivery attempt to the app.
    #[serde(default = "defaults::delivery_timeout")]
    pub timeout: Duration,
    #[serde(default = "defaults::delivery_backoff")]
    pub backoff: BackoffConfig,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            rate_per_second: 50.0,
            max_attempts: 10,
            dead_letter: true,
            timeout: defaults::delivery_timeout(),
            backoff: defaults::delivery_backoff(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `https://host[:port][/prefix]`; the app's path is appended to the prefix.
    pub base_url: HttpUrl,
    /// Per attempt, from sending the request to the response headers.
    #[serde(default = "defaults::timeout")]
    pub timeout: Duration,
    /// Queueing plus all attempts and backoff.
    #[serde(default = "defaults::total_timeout")]
    pub total_timeout: Duration,
    /// From the response headers to the end of the response body: a
    /// trickling body is cut (`upstream-timeout`) rather than held open.
    #[serde(default = "defaults::body_timeout")]
    pub body_timeout: Duration,
    /// Extra trust anchors (PEM) besides the public web roots, for private providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Request bodies up to this size are kept so a retry can resend them.
    #[serde(default = "defaults::max_buffered_body")]
    pub max_buffered_body_bytes: u64,
    /// Whether the provider's own rate-limit headers slow the limits down.
    #[serde(default)]
    pub provider_limits: ProviderLimits,
}

/// What Sluice does with the rate-limit headers a provider sends. `Auto`
/// (default): read `RateLimit`/`RateLimit-Policy`, `RateLimit-*`,
/// `X-RateLimit-*` and `X-Shopify-Shop-Api-Call-Limit` on every response
/// and, when the provider has fewer requests left until its reset than the
/// request's rate limit would send, spread the rest until the reset.
/// `None`: ignore them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ProviderLimits {
    /// Read `RateLimit`/`RateLimit-Policy`, `RateLimit-*`, `X-RateLimit-*`
    /// and Shopify's call limit on every response, and slow the request's
    /// limit down when the provider has fewer left than it would send.
    #[default]
    Auto,
    /// Ignore them.
    None,
}

/// Which requests a rule applies to. Empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    /// Empty means any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathPattern>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: RequestMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_timeout: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: RequestMatch,
    /// At most `requests` in any window of length `per`.
    pub requests: u32,
    pub per: Duration,
    /// How many of them may go back to back; the rest are spaced `per / requests` apart.
    pub burst: u32,
    /// Whether every pod may send the whole rate or the pods share it; the
    /// operator has already divided a `Cluster` limit among the pods.
    #[serde(default)]
    pub scope: LimitScope,
    /// A `Cluster` limit as a whole, before the operator divided it: what
    /// sidecars with shared state enforce together. `requests` and `burst`
    /// above are then this pod's share, enforced alone (no shared state) and
    /// while the shared state is unreachable. Absent, the limit is not divided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterRate>,
    #[serde(default)]
    pub when_exceeded: WhenExceeded,
    #[serde(default)]
    pub queue: QueueConfig,
    /// Kept per value of this part of the request (an account, a shop):
    /// each value gets the whole limit and its own queue. Absent, one limit
    /// for every request it matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<LimitKey>,
    /// With `key`: how many values are tracked at once; past it the least
    /// recently used value whose window is empty is forgotten (one still
    /// counting is never forgotten: a request with a new value is refused).
    #[serde(default = "defaults::max_keys")]
    pub max_keys: u32,
}

impl RateLimitConfig {
    /// The limit as a whole: a divided Cluster limit's `cluster`, else
    /// this pod's own numbers (nothing was divided).
    pub fn whole(&self) -> ClusterRate {
        self.cluster.unwrap_or(ClusterRate {
            requests: self.requests,
            burst: self.burst,
        })
    }
}

/// The part of a request a keyed limit is kept per. Written as a map with
/// one of `header`, `query`, `pathSegment`, as in the CRD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LimitKeyFields", into = "LimitKeyFields")]
pub enum LimitKey {
    /// A request header's value (`X-Account-Id`).
    Header(http::HeaderName),
    /// A query parameter's value, as sent (not percent-decoded).
    Query(String),
    /// The Nth segment of the app's path, 1-based (`/v1/shops/{2}/orders`).
    PathSegment(u32),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LimitKeyFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_segment: Option<u32>,
}

impl TryFrom<LimitKeyFields> for LimitKey {
    type Error = String;

    fn try_from(f: LimitKeyFields) -> Result<Self, String> {
        match (f.header, f.query, f.path_segment) {
            (Some(h), None, None) => http::HeaderName::from_bytes(h.as_bytes())
                .map(LimitKey::Header)
                .map_err(|_| format!("header: {h:?} is not a header name")),
            (None, Some(q), None) => Ok(LimitKey::Query(q)),
            (None, None, Some(n)) => Ok(LimitKey::PathSegment(n)),
            _ => Err("set exactly one of header, query, pathSegment".into()),
        }
    }
}

impl From<LimitKey> for LimitKeyFields {
    fn from(key: LimitKey) -> Self {
        let mut f = LimitKeyFields {
            header: None,
            query: None,
            path_segment: None,
        };
        match key {
            LimitKey::Header(h) => f.header = Some(h.as_str().to_owned()),
            LimitKey::Query(q) => f.query = Some(q),
            LimitKey::PathSegment(n) => f.path_segment = Some(n),
        }
        f
    }
}

/// The whole of a `Cluster` limit, shared by every pod of the integration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterRate {
    pub requests: u32,
    pub burst: u32,
}

/// Who a rate limit's rate belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum LimitScope {
    /// Each pod may send the whole rate.
    #[default]
    Pod,
    /// All the pods running the integration share the rate.
    Cluster,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum WhenExceeded {
    /// Wait (FIFO within priority) for a slot, up to `queue.maxWait`.
    #[default]
    Queue,
    /// Answer 429 at once.
    Reject,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(default = "defaults::max_wait")]
    pub max_wait: Duration,
    #[serde(default = "defaults::max_depth")]
    pub max_depth: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_wait: defaults::max_wait(),
            max_depth: defaults::max_depth(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 disables retries.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: BackoffConfig,
    #[serde(default = "defaults::retry_on")]
    pub retry_on: Vec<RetryOn>,
    #[serde(default = "defaults::yes")]
    pub honor_retry_after: bool,
    #[serde(default = "defaults::max_retry_after")]
    pub max_retry_after: Duration,
    #[serde(default)]
    pub budget: RetryBudgetConfig,
    /// Lets non-idempotent methods be retried safely: the same key on every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencyConfig>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: defaults::max_attempts(),
            backoff: BackoffConfig::default(),
            retry_on: defaults::retry_on(),
            honor_retry_after: true,
            max_retry_after: defaults::max_retry_after(),
            budget: RetryBudgetConfig::default(),
            idempotency: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    /// Each wait is scaled by a random factor in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(16),
            multiplier: 2.0,
            jitter: 0.3,
        }
    }
}

/// A reason to retry an attempt: a status code or a transport failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryOn {
    Status(u16),
    ConnectError,
    Reset,
    Timeout,
}

impl RetryOn {
    /// The transport failures, by the names manifests use.
    pub const NAMES: [(&'static str, RetryOn); 3] = [
        ("connect-error", RetryOn::ConnectError),
        ("reset", RetryOn::Reset),
        ("timeout", RetryOn::Timeout),
    ];
    /// The status codes a retry may be for.
    pub const STATUSES: std::ops::RangeInclusive<u16> = 400..=599;
    /// A status code written as a string: three digits within `STATUSES`
    /// (the CRD's CEL rule matches the same).
    pub const STATUS_TEXT_PATTERN: &'static str = "^[45][0-9][0-9]$";

    fn status(code: u64) -> Option<Self> {
        u16::try_from(code)
            .ok()
            .filter(|c| Self::STATUSES.contains(c))
            .map(RetryOn::Status)
    }

    fn from_text(text: &str) -> Option<Self> {
        if let Some((_, on)) = Self::NAMES.iter().find(|(name, _)| *name == text) {
            return Some(*on);
        }
        let digits = text.len() == 3 && text.bytes().all(|c| c.is_ascii_digit());
        digits
            .then(|| text.parse().ok())
            .flatten()
            .and_then(Self::status)
    }
}

impl std::fmt::Display for RetryOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryOn::Status(code) => write!(f, "{code}"),
            other => {
                let (name, _) = Self::NAMES
                    .iter()
                    .find(|(_, on)| on == other)
                    .expect("every transport failure has a name");
                f.write_str(name)
            }
        }
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::Status(code) => s.serialize_u16(*code),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Code(u64),
            Name(String),
        }
        let invalid = |what: String| {
            serde::de::Error::custom(format!(
                "{what} is not a retry condition (use a status code 400-599 or one of connect-error, reset, timeout)"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Code(code) => RetryOn::status(code).ok_or_else(|| invalid(code.to_string())),
            Raw::Name(name) => {
                RetryOn::from_text(&name).ok_or_else(|| invalid(format!("{name:?}")))
            }
        }
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for RetryOn {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RetryOn".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "maxLength": 16,
            "description": "A status code (400-599) or one of connect-error, reset, timeout."
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries may add at most this fraction of the requests seen in `window`...
    pub ratio: f64,
    /// ...plus this many retries per second, so a quiet integration can still retry.
    pub min_per_second: u32,
    pub window: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 5,
            window: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdempotencyConfig {
    pub header: String,
    pub methods: Vec<Method>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Open when this fraction of the requests in `window` failed...
    pub failure_ratio: f64,
    /// ...and at least this many requests were seen.
    pub min_requests: u32,
    pub window: Duration,
    /// Fail fast this long, then let probes through (half-open).
    pub open_for: Duration,
    /// Probes allowed while half-open; all must succeed to close again.
    #[serde(default = "defaults::half_open_probes")]
    pub half_open_probes: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<CacheRule>,
    #[serde(default = "defaults::cache_max_entries")]
    pub max_entries: u32,
    #[serde(default = "defaults::cache_max_bytes")]
    pub max_bytes: u64,
    /// Responses larger than this pass through uncached.
    #[serde(default = "defaults::cache_max_entry_bytes")]
    pub max_entry_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            max_entries: defaults::cache_max_entries(),
            max_bytes: defaults::cache_max_bytes(),
            max_entry_bytes: defaults::cache_max_entry_bytes(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheRule {
    #[serde(rename = "match", default)]
    pub matches: RequestMatch,
    pub ttl: Duration,
}

/// A file holding one secret value (a key of a mounted Secret volume).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretFile {
    pub path: PathBuf,
}

impl SecretFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The key being rotated out: still tried once after a 401, until `validUntil`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviousSecret {
    pub secret: SecretFile,
    pub valid_until: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum AuthConfig {
    /// `name: <secret>`, e.g. `X-Api-Key`.
    #[serde(rename_all = "camelCase")]
    Header {
        name: String,
        secret: SecretFile,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<PreviousSecret>,
    },
    /// `Authorization: Bearer <secret>`.
    #[serde(rename_all = "camelCase")]
    Bearer {
        secret: SecretFile,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<PreviousSecret>,
    },
    /// `Authorization: Basic base64(<username>:<password>)`.
    #[serde(rename_all = "camelCase")]
    Basic {
        username: SecretFile,
        password: SecretFile,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_password: Option<PreviousSecret>,
    },
    /// RFC 6749 §4.4: a cached access token, refreshed `refreshBefore` it expires.
    #[serde(rename_all = "camelCase")]
    Oauth2ClientCredentials {
        token_url: HttpUrl,
        client_id: SecretFile,
        client_secret: SecretFile,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        scopes: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audience: Option<String>,
        #[serde(default = "defaults::refresh_before")]
        refresh_before: Duration,
        #[serde(default)]
        client_auth: ClientAuthMethod,
    },
}

/// How the client credentials reach the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ClientAuthMethod {
    /// HTTP Basic with the client id and secret (the RFC's preferred form).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    RequestBody,
}

/// Every default in one place, so `sluice render` can print what will apply.
pub mod defaults {
    use super::{Duration, RetryOn};

    pub fn drain_timeout() -> Duration {
        Duration::from_secs(20)
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn total_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn body_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_buffered_body() -> u64 {
        1 << 20
    }
    pub fn max_wait() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_depth() -> u32 {
        1000
    }
    pub fn max_keys() -> u32 {
        10_000
    }
    pub fn contract_sample() -> f64 {
        1.0
    }
    pub fn contract_max_body() -> u64 {
        256 << 10
    }
    /// The percentages of a quota its alerts fire at.
    pub fn warn_at() -> Vec<u32> {
        vec![50, 80]
    }
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn retry_on() -> Vec<RetryOn> {
        vec![
            RetryOn::Status(429),
            RetryOn::Status(500),
            RetryOn::Status(502),
            RetryOn::Status(503),
            RetryOn::Status(504),
            RetryOn::ConnectError,
            RetryOn::Reset,
            RetryOn::Timeout,
        ]
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_retry_after() -> Duration {
        Duration::from_secs(60)
    }
    pub fn half_open_probes() -> u32 {
        1
    }
    pub fn cache_max_entries() -> u32 {
        10_000
    }
    pub fn cache_max_bytes() -> u64 {
        64 << 20
    }
    pub fn cache_max_entry_bytes() -> u64 {
        1 << 20
    }
    pub fn refresh_before() -> Duration {
        Duration::from_secs(300)
    }
    pub fn rotation_grace() -> Duration {
        Duration::from_secs(15 * 60)
    }
    pub fn max_unverified_bytes() -> u64 {
        16 << 20
    }
    pub fn webhook_body_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn min_webhook_body_rate() -> u64 {
        8 * 1024
    }
    pub fn max_queue_bytes() -> u64 {
        1 << 30
    }
    pub fn max_webhook_body() -> u64 {
        1 << 20
    }
    pub fn poll_interval() -> Duration {
        Duration::from_secs(300)
    }
    pub fn poll_lookback() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn webhook_tolerance() -> Duration {
        Duration::from_secs(300)
    }
    pub fn delivery_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn delivery_backoff() -> super::BackoffConfig {
        super::BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.3,
        }
    }
}

/// A config file that cannot be used, with the path of the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl SidecarConfig {
    /// A sidecar's whole config: its integrations, where it serves admin and
    /// webhooks, and where webhook state lives; everything else default.
    pub fn new(
        integrations: Vec<IntegrationConfig>,
        admin_listen: SocketAddr,
        webhook_listen: SocketAddr,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            admin: AdminConfig {
                listen: admin_listen,
            },
            drain_timeout: defaults::drain_timeout(),
            integrations,
            ingress: IngressConfig {
                listen: webhook_listen,
                state_dir,
                ..IngressConfig::default()
            },
        }
    }

    /// Parses YAML (or JSON, which is YAML) as `sluice render` prints it.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        // serde_yaml_ng's errors already start with the field path and end
        // with the line and column.
        let config: SidecarConfig =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("the config model always serializes")
    }

    /// What the data plane relies on, with the bounds the operator's
    /// `compile` enforces (`crate::bounds`), so a hand-written file is held
    /// to the cluster's rules. Reports the first problem.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut ports = std::collections::HashSet::new();
        for (i, integration) in self.integrations.iter().enumerate() {
            let at = |field: &str| format!("integrations[{i}].{field}");
            if !integration.listen.ip().is_loopback() {
                return Err(ConfigError::Invalid {
                    path: at("listen"),
                    message: "egress listeners inject credentials and must bind a loopback address"
                        .into(),
                });
            }
            // Port 0 (any free port) never clashes; tests use it.
            if integration.listen.port() != 0 && !ports.insert(integration.listen) {
                return Err(ConfigError::Invalid {
                    path: at("listen"),
                    message: "another integration uses this address".into(),
                });
            }
            integration
                .check_bounds()
                .map_err(|(field, message)| ConfigError::Invalid {
                    path: at(&field),
                    message,
                })?;
        }
        bounds::MAX_QUEUE_BYTES
            .check(self.ingress.max_queue_bytes)
            .map_err(|message| ConfigError::Invalid {
                path: "ingress.maxQueueBytes".into(),
                message,
            })?;
        Ok(())
    }
}

impl IntegrationConfig {
    /// Every bound of `crate::bounds` that applies to a compiled integration:
    /// `Err((field path, message))` for the first value outside its bound.
    fn check_bounds(&self) -> Result<(), (String, String)> {
        fn within<T: PartialOrd + Copy + std::fmt::Display>(
            field: impl Into<String>,
            bound: Bound<T>,
            value: T,
        ) -> Result<(), (String, String)> {
            bound
                .check(value)
                .map_err(|message| (field.into(), message))
        }
        let up = &self.upstream;
        within("upstream.timeout", bounds::TIMEOUT, up.timeout)?;
        within(
            "upstream.totalTimeout",
            bounds::TOTAL_TIMEOUT,
            up.total_timeout,
        )?;
        within(
            "upstream.bodyTimeout",
            bounds::BODY_TIMEOUT,
            up.body_timeout,
        )?;
        within(
            "upstream.maxBufferedBodyBytes",
            bounds::MAX_BUFFERED_BODY_BYTES,
            up.max_buffered_body_bytes,
        )?;
        within("rotationGrace", bounds::ROTATION_GRACE, self.rotation_grace)?;
        for (j, e) in self.endpoints.iter().enumerate() {
            if let Some(t) = e.timeout {
                within(format!("endpoints[{j}].timeout"), bounds::TIMEOUT, t)?;
            }
            if let Some(t) = e.total_timeout {
                within(
                    format!("endpoints[{j}].totalTimeout"),
                    bounds::TOTAL_TIMEOUT,
                    t,
                )?;
            }
        }
        for (j, l) in self.rate_limits.iter().enumerate() {
            let at = |f: &str| format!("rateLimits[{j}].{f}");
            within(at("requests"), bounds::RATE_REQUESTS, l.requests)?;
            within(at("per"), bounds::RATE_PER, l.per)?;
            within(at("burst"), bounds::BURST, l.burst)?;
            if let Some(c) = &l.cluster {
                within(at("cluster.requests"), bounds::RATE_REQUESTS, c.requests)?;
                within(at("cluster.burst"), bounds::BURST, c.burst)?;
            }
            within(
                at("queue.maxWait"),
                bounds::QUEUE_MAX_WAIT,
                l.queue.max_wait,
            )?;
            within(
                at("queue.maxDepth"),
                bounds::QUEUE_MAX_DEPTH,
                l.queue.max_depth,
            )?;
            within(at("maxKeys"), bounds::LIMIT_MAX_KEYS, l.max_keys)?;
            match &l.key {
                Some(LimitKey::PathSegment(n)) => {
                    within(at("key.pathSegment"), bounds::LIMIT_KEY_PATH_SEGMENT, *n)?
                }
                Some(LimitKey::Query(name)) if name.is_empty() => {
                    return Err((at("key.query"), "must name a query parameter".into()));
                }
                _ => {}
            }
        }
        for (j, q) in self.quotas.iter().enumerate() {
            let at = |f: &str| format!("quotas[{j}].{f}");
            within(at("limit"), bounds::QUOTA_LIMIT, q.limit)?;
            if let QuotaPeriod::Every(length) = q.per {
                within(at("per"), bounds::QUOTA_PER, length)?;
            }
            for (k, percent) in q.warn_at.iter().enumerate() {
                within(at(&format!("warnAt[{k}]")), bounds::QUOTA_WARN_AT, *percent)?;
            }
            if let QuotaCost::QueryProduct { params, separator } = &q.cost {
                if params.is_empty()
                    || params.len() > bounds::MAX_COST_PARAMS
                    || params.iter().any(String::is_empty)
                {
                    return Err((
                        at("cost.queryProduct"),
                        format!("name 1 to {} query parameters", bounds::MAX_COST_PARAMS),
                    ));
                }
                within(
                    at("cost.separator"),
                    bounds::COST_SEPARATOR_CHARS,
                    separator.chars().count(),
                )?;
            }
        }
        for (j, c) in self.contracts.iter().enumerate() {
            let at = |f: &str| format!("contracts[{j}].{f}");
            within(at("sample"), bounds::CONTRACT_SAMPLE, c.sample)?;
            within(
                at("maxBodyBytes"),
                bounds::CONTRACT_MAX_BODY_BYTES,
                c.max_body_bytes,
            )?;
            for (k, status) in c.statuses.iter().enumerate() {
                within(
                    at(&format!("statuses[{k}]")),
                    bounds::CONTRACT_STATUS,
                    *status,
                )?;
            }
        }
        let r = &self.retry;
        within("retry.maxAttempts", bounds::MAX_ATTEMPTS, r.max_attempts)?;
        within(
            "retry.backoff.initial",
            bounds::BACKOFF_INITIAL,
            r.backoff.initial,
        )?;
        within("retry.backoff.max", bounds::BACKOFF_MAX, r.backoff.max)?;
        within(
            "retry.backoff.multiplier",
            bounds::BACKOFF_MULTIPLIER,
            r.backoff.multiplier,
        )?;
        within("retry.backoff.jitter", bounds::JITTER, r.backoff.jitter)?;
        within(
            "retry.maxRetryAfter",
            bounds::MAX_RETRY_AFTER,
            r.max_retry_after,
        )?;
        within("retry.budget.ratio", bounds::BUDGET_RATIO, r.budget.ratio)?;
        within(
            "retry.budget.minPerSecond",
            bounds::BUDGET_MIN_PER_SECOND,
            r.budget.min_per_second,
        )?;
        within(
            "retry.budget.window",
            bounds::BUDGET_WINDOW,
            r.budget.window,
        )?;
        if let Some(c) = &self.circuit_breaker {
            within(
                "circuitBreaker.failureRatio",
                bounds::FAILURE_RATIO,
                c.failure_ratio,
            )?;
            within(
                "circuitBreaker.minRequests",
                bounds::MIN_REQUESTS,
                c.min_requests,
            )?;
            within("circuitBreaker.window", bounds::BREAKER_WINDOW, c.window)?;
            within("circuitBreaker.openFor", bounds::OPEN_FOR, c.open_for)?;
            within(
                "circuitBreaker.halfOpenProbes",
                bounds::HALF_OPEN_PROBES,
                c.half_open_probes,
            )?;
        }
        for (j, rule) in self.cache.rules.iter().enumerate() {
            within(format!("cache.rules[{j}].ttl"), bounds::CACHE_TTL, rule.ttl)?;
        }
        for (j, w) in self.webhooks.iter().enumerate() {
            let at = |f: &str| format!("webhooks[{j}].{f}");
            within(
                at("verify.tolerance"),
                bounds::WEBHOOK_TOLERANCE,
                w.verify.tolerance,
            )?;
            within(at("dedup.ttl"), bounds::DEDUP_TTL, w.dedup.ttl)?;
            within(
                at("delivery.ratePerSecond"),
                bounds::DELIVERY_RATE,
                w.delivery.rate_per_second,
            )?;
            within(
                at("delivery.maxAttempts"),
                bounds::DELIVERY_MAX_ATTEMPTS,
                w.delivery.max_attempts,
            )?;
            within(
                at("delivery.timeout"),
                bounds::DELIVERY_TIMEOUT,
                w.delivery.timeout,
            )?;
            if let Some(p) = &w.polling {
                within(at("polling.interval"), bounds::POLL_INTERVAL, p.interval)?;
                within(at("polling.lookback"), bounds::POLL_LOOKBACK, p.lookback)?;
                if p.lookback > w.dedup.ttl {
                    return Err((
                        at("polling.lookback"),
                        format!(
                            "{} is longer than dedup.ttl ({}): an event listed after its id is forgotten would be delivered again",
                            p.lookback, w.dedup.ttl
                        ),
                    ));
                }
                if !p.path.starts_with('/') || p.path.contains(['?', '#']) {
                    return Err((
                        at("polling.path"),
                        "must be a path starting with '/', without a query (use polling.query)"
                            .into(),
                    ));
                }
                if p.query.len() > bounds::MAX_POLL_QUERY {
                    return Err((
                        at("polling.query"),
                        format!("at most {} parameters", bounds::MAX_POLL_QUERY),
                    ));
                }
                let pointers = [
                    ("polling.items", Some(&p.items)),
                    ("polling.id", Some(&p.id)),
                    ("polling.created", Some(&p.created)),
                    ("polling.hasMore", p.has_more.as_ref()),
                ];
                for (field, pointer) in pointers {
                    if pointer.is_some_and(|p| !p.starts_with('/')) {
                        return Err((at(field), "must be a JSON pointer such as /data".into()));
                    }
                }
                if p.cursor.param.is_empty() || p.query.contains_key(&p.cursor.param) {
                    return Err((
                        at("polling.cursor.param"),
                        "must be a query parameter name not also in polling.query".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = SidecarConfig::from_yaml(
            "integrations:\n- name: shop/carrier\n  listen: 127.0.0.1:15001\n  upstream: {baseUrl: 'https://api.example'}\n",
        )
        .unwrap();
        let integration = &config.integrations[0];
        assert_eq!(integration.upstream.timeout, Duration::from_secs(10));
        assert_eq!(integration.retry.max_attempts, 3);
        assert!(integration.retry.retry_on.contains(&RetryOn::Status(503)));
        assert_eq!(config.admin.listen.port(), layout::ADMIN_PORT);
    }

    #[test]
    fn errors_name_the_field() {
        let err = SidecarConfig::from_yaml(
            "integrations:\n- name: a\n  listen: 127.0.0.1:1\n  upstream: {baseUrl: 'https://x', timeout: 1 minute}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("integrations[0].upstream.timeout: \"1 minute\" is not a duration"),
            "{err}"
        );
        let err = SidecarConfig::from_yaml("integrations: []\nbogus: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn egress_must_bind_loopback() {
        let err = SidecarConfig::from_yaml(
            "integrations:\n- name: a\n  listen: 0.0.0.0:15001\n  upstream: {baseUrl: 'https://x'}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("integrations[0].listen"), "{err}");
    }

    #[test]
    fn retry_on_accepts_codes_and_names() {
        let parsed: Vec<RetryOn> =
            serde_yaml_ng::from_str("[429, '503', connect-error, reset, timeout]").unwrap();
        assert_eq!(
            parsed,
            vec![
                RetryOn::Status(429),
                RetryOn::Status(503),
                RetryOn::ConnectError,
                RetryOn::Reset,
                RetryOn::Timeout
            ]
        );
        assert!(serde_yaml_ng::from_str::<Vec<RetryOn>>("[200]").is_err());
        assert!(serde_yaml_ng::from_str::<Vec<RetryOn>>("[dns]").is_err());
        // Written as text, a code is three digits: what the CRD's CEL rule accepts.
        let regex = regex::Regex::new(RetryOn::STATUS_TEXT_PATTERN).unwrap();
        for text in ["503", "0503", "+503", "5030", "399", "600", " 503"] {
            assert_eq!(
                serde_yaml_ng::from_str::<RetryOn>(&format!("'{text}'")).is_ok(),
                regex.is_match(text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_webhook_queue_under_a_mib_is_refused() {
        let err = SidecarConfig::from_yaml(
            "ingress: {listen: '127.0.0.1:0', stateDir: /tmp/q, maxQueueBytes: 1000}\nintegrations: []\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ingress.maxQueueBytes") && err.contains("at least 1048576"),
            "{err}"
        );
        assert_eq!(crate::bounds::queue_bytes_flag("1048576"), Ok(1 << 20));
        assert!(crate::bounds::queue_bytes_flag("1048575").is_err());
        assert!(crate::bounds::queue_bytes_flag("1MiB").is_err());
    }

    #[test]
    fn a_hand_written_key_is_checked() {
        let file = |limit: &str| {
            SidecarConfig::from_yaml(&format!(
                "integrations:\n- name: a\n  listen: 127.0.0.1:1\n  upstream: {{baseUrl: 'https://x'}}\n  rateLimits:\n  - {{name: l, requests: 5, per: 1s, burst: 5, {limit}}}\n"
            ))
        };
        let config = file("key: {header: X-Account-Id}, maxKeys: 50").unwrap();
        let limit = &config.integrations[0].rate_limits[0];
        assert_eq!(
            limit.key,
            Some(LimitKey::Header(http::HeaderName::from_static(
                "x-account-id"
            )))
        );
        assert_eq!(limit.max_keys, 50);
        for (bad, says) in [
            ("key: {header: 'X Account'}", "is not a header name"),
            (
                "key: {header: a, query: b}",
                "exactly one of header, query, pathSegment",
            ),
            (
                "key: {pathSegment: 0}",
                "integrations[0].rateLimits[0].key.pathSegment",
            ),
            (
                "key: {query: ''}",
                "integrations[0].rateLimits[0].key.query",
            ),
            (
                "key: {query: a}, maxKeys: 0",
                "integrations[0].rateLimits[0].maxKeys",
            ),
        ] {
            let err = file(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn auth_round_trips() {
        let auth = AuthConfig::Header {
            name: "X-Api-Key".into(),
            secret: SecretFile::new("/var/run/secrets/key/current"),
            previous: Some(PreviousSecret {
                secret: SecretFile::new("/var/run/secrets/key/previous"),
                valid_until: "2026-12-01T00:00:00Z".parse().unwrap(),
            }),
        };
        let yaml = serde_yaml_ng::to_string(&auth).unwrap();
        assert!(yaml.contains("type: header"), "{yaml}");
        assert_eq!(serde_yaml_ng::from_str::<AuthConfig>(&yaml).unwrap(), auth);
    }
}
