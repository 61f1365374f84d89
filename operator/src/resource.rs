//! The `ProviderIntegration` custom resource (sluice.dev/v1alpha1): what a
//! platform team writes. Every field's doc comment is its `kubectl explain`
//! text (say what it does, its default and its unit); the rules beyond types
//! come from `rules.rs`, which adds them to the generated schema.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_contract::config::{
    ClientAuthMethod, Duration, HttpUrl, LimitScope, Method, PathPattern, ProviderLimits,
    QuotaPeriod, RetryOn, SignatureEncoding, Timestamp, WebhookScheme, WhenExceeded, WhenExhausted,
};

/// One third-party API as the pods that call it should see it: where it is,
/// the credentials Sluice adds, its rate limits, retries, circuit breaker and
/// response cache, and the webhooks it sends.
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
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.pods.selected"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderIntegrationSpec {
    /// Pods in this namespace that get this integration (with the label
    /// `sluice.dev/inject: enabled` on them or their namespace). Absent
    /// selects no pod; `{}` selects every pod of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// The provider's API: its base URL and how long calls to it may take.
    pub upstream: UpstreamSpec,
    /// The listener the app calls instead of the provider (default: port 15001 on 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressSpec>,
    /// Credentials Sluice adds to every request: exactly one kind. Whatever
    /// the app sends under the credential's header is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Named routes (first match wins): the `endpoint` metric label and
    /// per-endpoint timeouts. At most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub endpoints: Vec<EndpointSpec>,
    /// The provider's rate limits: every limit whose match fits a request
    /// applies, and the request goes when all have room. At most 32.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rate_limits: Vec<RateLimitSpec>,
    /// JSON Schemas the provider's answers are expected to keep: matched
    /// JSON responses are checked on a copy (the app's response is never
    /// changed or delayed) and what they break is counted by kind and
    /// schema location (`sluice_contract_violations_total`). At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub contracts: Vec<ContractSpec>,
    /// Spend quotas: at most `limit` units of cost per day, month or other
    /// period for the requests each matches (every matching quota counts).
    /// Usage survives restarts (the pod's state volume) and, with shared
    /// state, is one count for every pod. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub quotas: Vec<QuotaSpec>,
    /// When and how failed attempts are retried (default: 3 attempts in all,
    /// for idempotent methods, on 429, 5xx, connect errors, resets and timeouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Fail fast while the provider is failing (default: no breaker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    /// Response caching for matched GET and HEAD requests (default: none). At most 32.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<CacheSpec>,
    /// Webhooks the provider sends to the sidecar's port 15080: verified,
    /// de-duplicated, durably queued and delivered to the app. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub webhooks: Vec<WebhookSpec>,
}

/// One webhook endpoint of the provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSpec {
    /// The webhook's name: a DNS label, unique in this integration; the
    /// `webhook` metric label.
    #[schemars(length(max = 63))]
    pub name: String,
    /// Path on the sidecar's webhook port (15080) the provider posts to,
    /// e.g. `/webhooks/stripe`; unique in this integration, no query.
    #[schemars(length(max = 256))]
    pub path: String,
    /// Where verified events go, e.g. `http://127.0.0.1:8080/hooks/carrier`.
    pub forward_to: HttpUrl,
    /// How events are authenticated: unsigned or wrongly signed ones get 401.
    pub verify: WebhookVerifySpec,
    /// How long event ids are remembered to drop the provider's duplicates (default 72h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<WebhookDedupSpec>,
    /// JSON pointer to the event id in the body, for schemes without an id
    /// header (Stripe's default: `/id`). Without one, the body's digest is the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_pointer: Option<String>,
    /// Drop events older than one already delivered for the same object (default: deliver all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<WebhookOrderingSpec>,
    /// How queued events are delivered to `forwardTo` (default: 50/s, 10 attempts, dead letters kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<WebhookDeliverySpec>,
    /// Also list the provider's events (newest first) through this
    /// integration's egress, and deliver those whose webhook never came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling: Option<WebhookPollingSpec>,
}

/// Polling the provider's list of events for webhooks that went missing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookPollingSpec {
    /// The list's path on the upstream, newest event first, e.g. `/v1/events`.
    #[schemars(length(max = 256))]
    pub path: String,
    /// Query parameters sent with every page, e.g. `{limit: "100"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<std::collections::BTreeMap<String, String>>,
    /// From the end of one poll to the start of the next (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// JSON pointer to the page's array of events, e.g. `/data`.
    #[schemars(length(max = 256))]
    pub items: String,
    /// JSON pointer to an event's id in it: the webhook's dedup id, e.g. `/id`.
    #[schemars(length(max = 256))]
    pub id: String,
    /// JSON pointer to an event's creation time (Unix seconds or milliseconds, or RFC 3339), e.g. `/created`.
    #[schemars(length(max = 256))]
    pub created: String,
    /// How the next (older) page is asked for.
    pub cursor: WebhookPollCursorSpec,
    /// JSON pointer to the page's "more pages follow" flag, e.g. `/has_more`
    /// (default: a page with events is followed by another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub has_more: Option<String>,
    /// How far back each poll lists (default 24h); at most `dedup.ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookback: Option<Duration>,
}

/// The cursor of a paged event list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookPollCursorSpec {
    /// The query parameter, e.g. `starting_after`.
    #[schemars(length(max = 128))]
    pub param: String,
    /// `lastId` (the page's last event id, the default) or a JSON pointer
    /// into the page to a next-page token, e.g. `/next_cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub from: Option<String>,
}

/// Signature verification of a webhook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookVerifySpec {
    /// The provider's signing scheme.
    pub scheme: WebhookScheme,
    /// The signing secrets, at least one; several while a secret is rotated,
    /// each accepted until its `notAfter`.
    pub secrets: Vec<WebhookSecretSpec>,
    /// How far a signed timestamp may be from now, either way (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Duration>,
    /// HmacSha256 only, and required there: the header with the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// HmacSha256 only: how the signature is written, Hex (default) or Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<SignatureEncoding>,
    /// HmacSha256 only: text before the signature, e.g. `sha256=` (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// One webhook signing secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSecretSpec {
    /// The Secret key holding the signing secret.
    pub secret_ref: SecretKeyRef,
    /// When this secret stops being accepted (default: never), for rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
}

/// De-duplication of a webhook's events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookDedupSpec {
    /// How long an event id is remembered: a duplicate within it is
    /// acknowledged and not delivered again.
    pub ttl: Duration,
}

/// The ordering guard of a webhook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookOrderingSpec {
    /// JSON pointer to the id of the object an event is about, e.g. `/data/object/id`.
    pub object_pointer: String,
    /// JSON pointer to the event's time (epoch seconds or RFC 3339): an
    /// event older than one delivered for the same object is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_pointer: Option<String>,
    /// The states an object moves through in order: an event for an earlier
    /// state than one delivered is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<WebhookStatesSpec>,
}

/// A state machine events must follow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookStatesSpec {
    /// JSON pointer to the state (often the event type, `/type`).
    pub pointer: String,
    /// The states in the only order they may follow each other; at least two.
    pub order: Vec<String>,
}

/// Delivery of queued events to the app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookDeliverySpec {
    /// Events per second at most (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
    /// Delivery attempts per event, the first included (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Keep events that exhausted their attempts as dead letters (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<bool>,
    /// Per delivery attempt (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// The provider's API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamSpec {
    /// `https://host[:port][/prefix]`; the app's path and query are appended byte for byte.
    pub base_url: HttpUrl,
    /// Per attempt, up to the response headers (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Queueing plus every attempt and backoff (default 30s); at least `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_timeout: Option<Duration>,
    /// From the response headers to the end of the response body (default
    /// 60s): a body still arriving then is cut and counted as `upstream-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_timeout: Option<Duration>,
    /// Extra CA certificates (PEM) to trust for this upstream, besides the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Request bodies up to this many bytes are kept so retries can resend
    /// them (default 1048576, 1 MiB); larger ones are sent once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffered_body_bytes: Option<u64>,
    /// `Auto` (default): read the provider's rate-limit headers on every
    /// response (`RateLimit`/`RateLimit-Policy`, `RateLimit-*`,
    /// `X-RateLimit-*`, `X-Shopify-Shop-Api-Call-Limit`) and, when it has
    /// fewer requests left until its reset than the request's rate limit
    /// would send, spread the rest until the reset. `None`: ignore them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_limits: Option<ProviderLimits>,
}

/// The egress listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressSpec {
    /// The app calls `http://127.0.0.1:<port>/...` (default 15001; 1024-65535,
    /// not 15080 or 15090). The injector sets `SLUICE_<NAME>_URL` to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A key of a Secret in the integration's namespace, mounted into the sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key in the Secret's data.
    pub key: String,
}

/// Credentials: exactly one of `header`, `bearer`, `basic`, `oauth2ClientCredentials`.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
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

/// A static key in a header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderAuth {
    /// The header's name, e.g. `X-Api-Key` (not Host, Content-Length,
    /// Transfer-Encoding or Connection).
    pub name: String,
    /// The Secret key holding the current key.
    pub secret_ref: SecretKeyRef,
    /// The key being rotated out: tried once after a 401 until `previousValidUntil`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_ref: Option<SecretKeyRef>,
    /// When the previous key stops being tried; required with `previousSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<Timestamp>,
}

/// A static bearer token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BearerAuth {
    /// The Secret key holding the current token.
    pub secret_ref: SecretKeyRef,
    /// The token being rotated out: tried once after a 401 until `previousValidUntil`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_ref: Option<SecretKeyRef>,
    /// When the previous token stops being tried; required with `previousSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<Timestamp>,
}

/// HTTP Basic credentials.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicAuth {
    /// The Secret key holding the username.
    pub username_ref: SecretKeyRef,
    /// The Secret key holding the current password.
    pub password_ref: SecretKeyRef,
    /// The password being rotated out: tried once after a 401 until `previousValidUntil`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_password_ref: Option<SecretKeyRef>,
    /// When the previous password stops being tried; required with `previousPasswordRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<Timestamp>,
}

/// OAuth2 client credentials (RFC 6749 §4.4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuth2Auth {
    /// The token endpoint, e.g. `https://auth.example/oauth/token`.
    pub token_url: HttpUrl,
    /// The Secret key holding the client id.
    pub client_id_ref: SecretKeyRef,
    /// The Secret key holding the client secret.
    pub client_secret_ref: SecretKeyRef,
    /// Scopes to ask for (default none), each without spaces or quotes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The `audience` form field some providers require (default none).
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
    /// Upper-case methods, e.g. `[GET, HEAD]` (default: any method).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
    /// `*` matches one path segment, a final `**` the rest, e.g.
    /// `/v1/shipments/*/tracking`; compared to the raw path (default: any path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathPattern>,
}

/// A named route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    /// The `endpoint` metric label: a DNS label, unique.
    #[schemars(length(max = 63))]
    pub name: String,
    /// The requests this endpoint names (default: all).
    #[serde(rename = "match", default)]
    pub matches: MatchSpec,
    /// This endpoint's attempt timeout (default: `upstream.timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// This endpoint's total timeout (default: `upstream.totalTimeout`); at least its timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_timeout: Option<Duration>,
}

/// How many requests a window may hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateSpec {
    /// Requests in any window of length `per` (1-1000000).
    pub requests: u32,
    /// The window's length (more than 0s, at most 24h).
    pub per: Duration,
}

/// The wait of requests over a limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueSpec {
    /// Longest a request waits for a slot (default 30s; at most upstream.totalTimeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<Duration>,
    /// Most requests waiting at once (default 1000); more get 429 `queue-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
}

/// One of the provider's rate limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    /// The `limit` metric label: a DNS label, unique.
    #[schemars(length(max = 63))]
    pub name: String,
    /// The requests this limit counts (default: all).
    #[serde(rename = "match", default)]
    pub matches: MatchSpec,
    /// At most `requests` in any window of length `per`.
    pub rate: RateSpec,
    /// How many may go back to back (default: rate.requests, i.e. no
    /// spacing); the rest are spaced `per / requests` apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `Pod` (default): each pod may send the whole rate. `Cluster`: the pods
    /// running the integration share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<LimitScope>,
    /// `Queue` (default): wait for room. `Reject`: answer 429 at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_exceeded: Option<WhenExceeded>,
    /// How long and how many may wait, with `whenExceeded: Queue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpec>,
    /// Keep the limit per value of a header, query parameter or path
    /// segment (a provider that limits per account or per shop): each value
    /// gets the whole rate, burst and queue. Requests without the value
    /// share one limit. Metrics stay per limit, never per value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<LimitKeySpec>,
    /// With `key`: how many values are tracked at once (default 10000). Past
    /// it the least recently used value whose window is empty is forgotten;
    /// a value still counting never is, so a request with yet another value
    /// is refused (429 `queue-full`) until one empties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u32>,
}

/// Which part of a request a limit is kept per: set exactly one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitKeySpec {
    /// A request header, e.g. `X-Account-Id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub header: Option<String>,
    /// A query parameter, e.g. `account`; its value as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub query: Option<String>,
    /// A segment of the app's path, 1-based: 3 in `/v1/shops/acme/orders` is `acme`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_segment: Option<u32>,
}

/// One response contract.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContractSpec {
    /// The `contract` metric label: a DNS label, unique.
    #[schemars(length(max = 63))]
    pub name: String,
    /// The requests whose responses are checked (default: all).
    #[serde(rename = "match", default)]
    pub matches: MatchSpec,
    /// A JSON Schema (draft 2020-12 unless `$schema` names another), written
    /// as YAML: `enum` lists the values the app handles, `required` the
    /// fields it reads, `additionalProperties: false` where new fields
    /// matter. Remote `$ref`s are not fetched. Exactly one of `schema` and
    /// `schemaFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object_or_none")]
    pub schema: Option<serde_json::Value>,
    /// The schema from a ConfigMap key instead: a JSON Schema, or an OpenAPI
    /// 3.x document and the operation whose response is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_from: Option<SchemaFromSpec>,
    /// The statuses whose responses are checked (default: every 2xx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<u16>,
    /// The share of matched responses checked, 0 to 1 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<f64>,
    /// Larger bodies are not checked, only counted (default 262144, 256 KiB;
    /// at most 16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
}

/// Where a contract's schema is kept: a ConfigMap of the integration's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchemaFromSpec {
    /// The ConfigMap and key (YAML or JSON). The ConfigMap must carry the
    /// label `sluice.dev/schema: "true"`: the operator watches only those,
    /// and recompiles when one changes.
    pub config_map_key_ref: ConfigMapKeyRef,
    /// For an OpenAPI 3.x document: the operation whose response schema
    /// (for `statuses`, default its first 2xx) is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub operation_id: Option<String>,
}

/// A key of a ConfigMap in the integration's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapKeyRef {
    /// The ConfigMap's name.
    pub name: String,
    /// The key in its data.
    pub key: String,
}

/// [`any_object`], the field optional.
fn any_object_or_none(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    any_object(generator)
}

/// Any JSON object, kept as written (a JSON Schema inside the CRD).
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// One spend quota.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaSpec {
    /// The `quota` metric label: a DNS label, unique.
    #[schemars(length(max = 63))]
    pub name: String,
    /// The requests this quota counts (default: all).
    #[serde(rename = "match", default)]
    pub matches: MatchSpec,
    /// Units of cost per period.
    pub limit: u64,
    /// `calendarMonth` (the first of the month, 00:00 UTC, to the next), or
    /// a duration from 1m to 8784h counted in fixed windows from the Unix
    /// epoch (`24h` starts at midnight UTC).
    pub per: QuotaPeriod,
    /// What one request costs (default 1): `queryProduct` for an element
    /// count such as a distance matrix's origins × destinations, or
    /// `header` for a number the app sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<QuotaCostSpec>,
    /// Percentages of `limit` the SluiceQuotaWarning alert fires at
    /// (default [50, 80]); SluiceQuotaExhausted fires at 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_at: Option<Vec<u32>>,
    /// `Reject` (default): a request that would pass the limit gets 429
    /// `quota-exhausted` with `Retry-After` at the period's end. `Warn`:
    /// send it, count it, and let the alerts say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_exhausted: Option<WhenExhausted>,
}

/// Where a request's cost comes from: set one of `queryProduct`, `header`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaCostSpec {
    /// Query parameters whose element counts multiply, e.g. `[origins,
    /// destinations]`: each value is split at `separator`; a parameter
    /// absent or empty counts 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_product: Option<Vec<String>>,
    /// With `queryProduct`: what separates elements in a value (default
    /// `|`; 1 to 8 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// A request header holding the cost as a whole number, e.g. `X-Units`;
    /// absent, the request costs 1; anything else gets 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub header: Option<String>,
}

/// The wait between attempts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffSpec {
    /// The wait after the first attempt (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<Duration>,
    /// The longest wait (default 16s); at least `initial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,
    /// Each wait is the previous one times this (default 2; 1-10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    /// 0 to 1: each wait is scaled by a random factor in [1 - jitter, 1 + jitter] (default 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

/// How many retries the integration may add, so retries never multiply an outage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Retries may add at most this fraction of requests (default 0.2; 0-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Plus this many retries per second (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
    /// Over this window (default 10s; 1s-60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
}

/// Safe retries of non-idempotent methods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdempotencySpec {
    /// e.g. `Idempotency-Key`: added when the app sent none, the same on
    /// every attempt, and returned on the response.
    pub header: String,
    /// Non-idempotent methods that get a key and may then be retried, e.g. [POST, PATCH].
    pub methods: Vec<Method>,
}

/// Retries of failed attempts.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included (default 3; 1-10; 1 disables retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The wait between attempts (default: 1s doubling to 16s, jitter 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    /// Status codes and `connect-error`, `reset`, `timeout` (default 429,
    /// 500, 502, 503, 504 and all three). 400, 401, 403, 404 and 422 are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<RetryOn>>,
    /// Wait as long as the provider's `Retry-After` says (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_retry_after: Option<bool>,
    /// A provider asking for a longer wait gets its answer passed to the app (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_after: Option<Duration>,
    /// How many retries may be added (default: 20% of requests plus 5/s over 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudgetSpec>,
    /// Idempotency keys for non-idempotent methods (default: POST and PATCH are never retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencySpec>,
}

/// The circuit breaker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Open when more than this fraction of the requests in `window` failed
    /// (more than 0, at most 1).
    pub failure_ratio: f64,
    /// ...and at least this many requests were seen in `window`.
    pub min_requests: u32,
    /// The window failures are counted over.
    pub window: Duration,
    /// How long to fail fast (`circuit-open`, 503) before probing.
    pub open_for: Duration,
    /// Probes let through while half-open; all must succeed to close (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
}

/// A cache rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheSpec {
    /// The requests cached: `methods` must name GET and/or HEAD only.
    #[serde(rename = "match", default)]
    pub matches: MatchSpec,
    /// How long a response is served from the cache.
    pub ttl: Duration,
}

/// What the operator observed.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderIntegrationStatus {
    /// The generation of the spec this status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: True when the spec compiled and its config was written to
    /// the ConfigMap `sluice-<name>`; False with reason `Invalid` and every
    /// problem in the message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The pods running Sluice that this integration concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodCounts>,
}

/// Pod counts, over pods that run the sidecar, are not terminating and have not finished.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodCounts {
    /// Pods this integration's podSelector selects: they get its config (the
    /// config stream follows the selector), and `scope: Cluster` limits are
    /// divided among them.
    pub selected: u32,
    /// Of those, the pods created with this integration (named in their
    /// `sluice.dev/integrations` annotation); the others were injected before
    /// it selected them and have it only through the config stream.
    pub injected: u32,
}
