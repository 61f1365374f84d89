//! Prometheus metrics (the Prometheus project's `prometheus-client`), named as
//! in DESIGN.md and docs/metrics.md. Every label value is a config name or a
//! fixed word: never a path, a header or a secret.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_contract::exposition::Exposition;

pub type Name = Arc<str>;

/// A label's closed set of values: each variant's text in one place, and
/// `ALL` so the series an alert counts with `increase()` can exist at 0
/// before the first event (a series born at 1 shows no increase).
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_values! {
    /// `result` of `sluice_webhook_received_total`.
    Received {
        Verified => "verified",
        Duplicate => "duplicate",
        InvalidSignature => "invalid_signature",
        Stale => "stale",
        TooLarge => "too_large",
        Busy => "busy",
        TooSlow => "too_slow",
        Unreadable => "unreadable",
        QueueFull => "queue_full",
        Error => "error",
    }
}

label_values! {
    /// `result` of `sluice_webhook_deliveries_total`.
    Delivery {
        Delivered => "delivered",
        Retry => "retry",
        DeadLetter => "dead_letter",
        Dropped => "dropped",
        OutOfOrder => "out_of_order",
    }
}

label_values! {
    /// `result` of `sluice_webhook_polled_total`: what became of each event
    /// a poll listed.
    Polled {
        Recovered => "recovered",
        Known => "known",
        Unreadable => "unreadable",
    }
}

label_values! {
    /// `result` of `sluice_webhook_polls_total`.
    Poll {
        Complete => "complete",
        Failed => "failed",
    }
}

label_values! {
    /// `result` of `sluice_token_refresh_total`.
    TokenRefresh {
        Success => "success",
        Error => "error",
    }
}

label_values! {
    /// `result` of `sluice_credential_fallback_total`: whether the older key
    /// answered what the current one was refused.
    Fallback {
        Success => "success",
        Failure => "failure",
    }
}

label_values! {
    /// `result` of `sluice_config_reloads_total`.
    Reload {
        Applied => "applied",
        Failed => "failed",
    }
}

label_values! {
    /// `reason` of `sluice_ratelimit_rejected_total`: why Sluice answered 429.
    Rejection {
        RateLimited => "rate-limited",
        QueueFull => "queue-full",
        Deadline => "deadline",
        KeysFull => "keys-full",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub integration: Name,
    pub endpoint: Name,
    pub code: u16,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub integration: Name,
    pub endpoint: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub integration: Name,
    pub endpoint: Name,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub integration: Name,
    pub limit: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitReasonLabels {
    pub integration: Name,
    pub limit: Name,
    pub reason: Rejection,
}

label_values! {
    /// `kind` of `sluice_contract_violations_total`: what a response broke.
    Violation {
        UnknownEnum => "unknown_enum",
        MissingRequired => "missing_required",
        Type => "type",
        AdditionalProperty => "additional_property",
        Format => "format",
        Constraint => "constraint",
    }
}

label_values! {
    /// `reason` of `sluice_contract_skipped_total`: why a matched response
    /// was not checked.
    ContractSkip {
        TooLarge => "too_large",
        Unparsable => "unparsable",
        Incomplete => "incomplete",
        Busy => "busy",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContractLabels {
    pub integration: Name,
    pub contract: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    pub integration: Name,
    pub contract: Name,
    pub kind: Violation,
    /// Where in the schema (a JSON pointer into it): bounded by the schema,
    /// never an instance value or index.
    pub pointer: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContractSkipLabels {
    pub integration: Name,
    pub contract: Name,
    pub reason: ContractSkip,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub integration: Name,
    pub quota: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaWarnLabels {
    pub integration: Name,
    pub quota: Name,
    /// One of the quota's `warnAt` percentages.
    pub percent: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntegrationLabels {
    pub integration: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub integration: Name,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: Reload,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenRefreshLabels {
    pub integration: Name,
    pub result: TokenRefresh,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    pub integration: Name,
    pub result: Fallback,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub integration: Name,
    pub webhook: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolledLabels {
    pub integration: Name,
    pub webhook: Name,
    pub result: Polled,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    pub integration: Name,
    pub webhook: Name,
    pub result: Poll,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceivedLabels {
    pub integration: Name,
    pub webhook: Name,
    pub result: Received,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub integration: Name,
    pub webhook: Name,
    pub result: Delivery,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SharedTargetLabels {
    /// Where the shared state is (`redis://host:port/db`, never a password).
    pub target: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SharedCallLabels {
    pub op: &'static str,
    pub outcome: &'static str,
}

/// One endpoint's series, found once when the pipeline is built, so a
/// request records them without hashing a label set under a lock.
#[derive(Debug)]
pub struct EndpointSeries {
    pub attempts: Counter,
    pub duration: Histogram,
    /// The request counters by (status, outcome) seen so far: a short list
    /// scanned without hashing.
    requests: std::sync::Mutex<Vec<((u16, &'static str), Counter)>>,
}

impl EndpointSeries {
    /// The series of one endpoint of an integration.
    pub fn new(metrics: &Metrics, labels: &EndpointLabels) -> Self {
        Self {
            attempts: metrics.attempts.get_or_create(labels).clone(),
            duration: metrics.request_duration.get_or_create(labels).clone(),
            requests: Default::default(),
        }
    }

    /// `sluice_egress_requests_total` for this endpoint, status and outcome;
    /// `labels` is only called the first time a pair is seen.
    pub fn count_request(
        &self,
        metrics: &Metrics,
        code: u16,
        outcome: &'static str,
        labels: impl FnOnce() -> RequestLabels,
    ) {
        let mut known = self.requests.lock().expect("series lock");
        if let Some((_, counter)) = known.iter().find(|(k, _)| *k == (code, outcome)) {
            counter.inc();
            return;
        }
        let counter = metrics.requests.get_or_create(&labels()).clone();
        counter.inc();
        // Statuses are few in practice; bound the list regardless.
        if known.len() < 64 {
            known.push(((code, outcome), counter));
        }
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn round_trip_histogram() -> Histogram {
    // 50 us .. ~1.6 s: a round trip beside the cluster is well under 1 ms.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// All metric families of the sidecar, registered once at start. Cloning is
/// one reference count: layers clone it on the request path.
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

impl std::ops::Deref for Metrics {
    type Target = Families;
    fn deref(&self) -> &Families {
        &self.0
    }
}

pub struct Families {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    pub attempts: Family<EndpointLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub ratelimit_queue_depth: Family<LimitLabels, Gauge>,
    pub ratelimit_queue_capacity: Family<LimitLabels, Gauge>,
    pub ratelimit_keys: Family<LimitLabels, Gauge>,
    pub provider_remaining: Family<LimitLabels, Gauge>,
    pub provider_limit: Family<LimitLabels, Gauge>,
    pub provider_reset: Family<LimitLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub ratelimit_wait: Family<LimitLabels, Histogram, fn() -> Histogram>,
    pub ratelimit_rejected: Family<LimitReasonLabels, Counter>,
    pub contract_checked: Family<ContractLabels, Counter>,
    pub contract_violations: Family<ViolationLabels, Counter>,
    pub contract_skipped: Family<ContractSkipLabels, Counter>,
    pub quota_used: Family<QuotaLabels, Gauge>,
    pub quota_limit: Family<QuotaLabels, Gauge>,
    pub quota_warn_ratio: Family<QuotaWarnLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub quota_spent: Family<QuotaLabels, Counter>,
    pub quota_rejected: Family<QuotaLabels, Counter>,
    pub quota_fallbacks: Family<QuotaLabels, Counter>,
    pub retry_budget_exhausted: Family<IntegrationLabels, Counter>,
    pub circuit_state: Family<IntegrationLabels, Gauge>,
    pub cache: Family<ResultLabels, Counter>,
    pub token_refresh: Family<TokenRefreshLabels, Counter>,
    pub credential_fallback: Family<FallbackLabels, Counter>,
    pub secret_reloads: Family<ResultLabels, Counter>,
    pub webhook_received: Family<ReceivedLabels, Counter>,
    pub webhook_queue_depth: Family<WebhookLabels, Gauge>,
    pub webhook_deliveries: Family<DeliveryLabels, Counter>,
    pub webhook_polled: Family<PolledLabels, Counter>,
    pub webhook_polls: Family<PollLabels, Counter>,
    pub webhook_fsyncs: Family<WebhookLabels, Counter>,
    pub webhook_ack_duration: Family<WebhookLabels, Histogram, fn() -> Histogram>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    /// Unix time of the last config change applied (0: the config it started with).
    pub config_applied: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub config_server_connected: Gauge,
    pub webhook_unverified_bytes: Gauge,
    pub credential_fallback_active: Family<IntegrationLabels, Gauge>,
    pub shared_state_up: Family<SharedTargetLabels, Gauge>,
    pub shared_state_calls: Family<SharedCallLabels, Counter>,
    pub shared_state_call_duration: Family<SharedCallLabels, Histogram, fn() -> Histogram>,
    pub shared_state_fallbacks: Family<LimitLabels, Counter>,
    pub webhook_takeovers: Family<WebhookLabels, Counter>,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register(
            "sluice_egress_requests",
            "Requests from the app, by final status code and outcome (success, client_error, server_error, cache_hit, or a Sluice error code)",
            requests.clone(),
        );
        let request_duration =
            Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "sluice_egress_request_duration_seconds",
            "Time from the app's request to Sluice's response headers, queueing and retries included",
            request_duration.clone(),
        );
        let attempts = Family::default();
        registry.register(
            "sluice_egress_attempts",
            "Attempts sent to the upstream (first tries and retries)",
            attempts.clone(),
        );
        let retries = Family::default();
        registry.register(
            "sluice_egress_retries",
            "Retries, by the reason the previous attempt failed",
            retries.clone(),
        );
        let ratelimit_queue_capacity = Family::default();
        registry.register(
            "sluice_ratelimit_queue_capacity",
            "The queue's maxDepth: alert before depth reaches 80 % of it",
            ratelimit_queue_capacity.clone(),
        );
        let ratelimit_keys = Family::default();
        registry.register(
            "sluice_ratelimit_keys",
            "Values a keyed rate limit tracks (at most its maxKeys)",
            ratelimit_keys.clone(),
        );
        let provider_remaining = Family::default();
        registry.register(
            "sluice_provider_ratelimit_remaining",
            "Requests the provider said remain in its window, at its last response with rate-limit headers",
            provider_remaining.clone(),
        );
        let provider_limit = Family::default();
        registry.register(
            "sluice_provider_ratelimit_limit",
            "The provider's quota for its window, as it last said",
            provider_limit.clone(),
        );
        let provider_reset = Family::default();
        registry.register(
            "sluice_provider_ratelimit_reset_seconds",
            "Seconds until the provider's window resets, as of its last response with rate-limit headers",
            provider_reset.clone(),
        );
        let ratelimit_queue_depth = Family::default();
        registry.register(
            "sluice_ratelimit_queue_depth",
            "Requests waiting for a rate limit",
            ratelimit_queue_depth.clone(),
        );
        let ratelimit_wait =
            Family::<LimitLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "sluice_ratelimit_wait_seconds",
            "Time requests spent queued for a rate limit",
            ratelimit_wait.clone(),
        );
        let ratelimit_rejected = Family::default();
        registry.register(
            "sluice_ratelimit_rejected",
            "Requests answered 429 by Sluice: rate-limited (Reject), queue-full, or deadline (the wait would pass maxWait or the total timeout)",
            ratelimit_rejected.clone(),
        );
        let retry_budget_exhausted = Family::default();
        registry.register(
            "sluice_retry_budget_exhausted",
            "Retries not made because the retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        let circuit_state = Family::default();
        registry.register(
            "sluice_circuit_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            circuit_state.clone(),
        );
        let cache = Family::default();
        registry.register(
            "sluice_cache_requests",
            "Response cache lookups: hit, miss, bypass, store",
            cache.clone(),
        );
        let token_refresh = Family::default();
        registry.register(
            "sluice_token_refresh",
            "OAuth2 token refreshes, by result",
            token_refresh.clone(),
        );
        let credential_fallback = Family::default();
        registry.register(
            "sluice_credential_fallback",
            "401s retried with the previous key during a rotation window, by result",
            credential_fallback.clone(),
        );
        let secret_reloads = Family::default();
        registry.register(
            "sluice_secret_reloads",
            "Secret files re-read after they changed on disk, by result",
            secret_reloads.clone(),
        );
        let webhook_received = Family::default();
        registry.register(
            "sluice_webhook_received",
            "Webhooks received, by result: verified, duplicate, invalid_signature, stale, too_large, queue_full, error",
            webhook_received.clone(),
        );
        let webhook_queue_depth = Family::default();
        registry.register(
            "sluice_webhook_queue_depth",
            "Accepted webhooks not yet delivered to the app",
            webhook_queue_depth.clone(),
        );
        let webhook_deliveries = Family::default();
        registry.register(
            "sluice_webhook_deliveries",
            "Delivery outcomes: delivered, retry, dead_letter, dropped, out_of_order",
            webhook_deliveries.clone(),
        );
        let webhook_polled = Family::default();
        registry.register(
            "sluice_webhook_polled",
            "Events listed by polling the provider, by result: recovered (its webhook never came; delivered), known, unreadable",
            webhook_polled.clone(),
        );
        let webhook_polls = Family::default();
        registry.register(
            "sluice_webhook_polls",
            "Polls of the provider's event list, by result: complete, failed",
            webhook_polls.clone(),
        );
        let webhook_fsyncs = Family::default();
        registry.register(
            "sluice_webhook_fsyncs",
            "fdatasync calls of the webhook queue (one per group commit)",
            webhook_fsyncs.clone(),
        );
        let webhook_ack_duration =
            Family::<WebhookLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "sluice_webhook_ack_duration_seconds",
            "From the webhook's arrival to the provider's 200 (durably stored)",
            webhook_ack_duration.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "sluice_config_reloads",
            "Config changes received while running, by result (applied, failed: the last good config stays)",
            config_reloads.clone(),
        );
        let config_applied = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "sluice_config_last_applied_timestamp_seconds",
            "When the running config was last changed (Unix time; 0 until the first live change)",
            config_applied.clone(),
        );
        let config_server_connected = Gauge::default();
        registry.register(
            "sluice_config_server_connected",
            "1 while the sidecar follows the operator's config stream, 0 while it runs on its last good config",
            config_server_connected.clone(),
        );
        let webhook_unverified_bytes = Gauge::default();
        registry.register(
            "sluice_webhook_unverified_bytes",
            "Bytes of webhook bodies being read or verified, held in memory (bounded by ingress.maxUnverifiedBytes)",
            webhook_unverified_bytes.clone(),
        );
        let credential_fallback_active = Family::default();
        registry.register(
            "sluice_credential_fallback_active",
            "1 while the current static key is refused (401) and an older one is sent first",
            credential_fallback_active.clone(),
        );
        let shared_state_up = Family::default();
        registry.register(
            "sluice_shared_state_up",
            "1 while the shared state (--shared-state) answers; 0 while Cluster limits run on the pod's share and webhooks get 503 (absent without shared state)",
            shared_state_up.clone(),
        );
        let shared_state_calls = Family::default();
        registry.register(
            "sluice_shared_state_calls",
            "Round trips to the shared state, by operation and outcome (ok, refused, error, timeout)",
            shared_state_calls.clone(),
        );
        let shared_state_call_duration =
            Family::<SharedCallLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                round_trip_histogram,
            );
        registry.register(
            "sluice_shared_state_call_duration_seconds",
            "Time of one round trip to the shared state",
            shared_state_call_duration.clone(),
        );
        let contract_checked = Family::default();
        registry.register(
            "sluice_contract_checked",
            "Provider responses checked against a response contract's JSON Schema",
            contract_checked.clone(),
        );
        let contract_violations = Family::default();
        registry.register(
            "sluice_contract_violations",
            "What checked responses broke, by kind and schema location (unknown_enum, missing_required, type, additional_property, format, constraint)",
            contract_violations.clone(),
        );
        let contract_skipped = Family::default();
        registry.register(
            "sluice_contract_skipped",
            "Matched responses not checked: too_large (over maxBodyBytes), unparsable (not JSON), incomplete (cut short), busy (the integration's checks all running)",
            contract_skipped.clone(),
        );
        let quota_used = Family::default();
        registry.register(
            "sluice_quota_used",
            "Units of a quota used in its current period (with shared state: by every sidecar, as last read)",
            quota_used.clone(),
        );
        let quota_limit = Family::default();
        registry.register(
            "sluice_quota_limit",
            "A quota's limit: units per period",
            quota_limit.clone(),
        );
        let quota_warn_ratio = Family::default();
        registry.register(
            "sluice_quota_warn_ratio",
            "A quota's warnAt percentages as ratios of its limit, one series each: the alerts compare used / limit with them",
            quota_warn_ratio.clone(),
        );
        let quota_spent = Family::default();
        registry.register(
            "sluice_quota_spent",
            "Units of cost this sidecar sent the provider under a quota (its rate is the spend rate)",
            quota_spent.clone(),
        );
        let quota_rejected = Family::default();
        registry.register(
            "sluice_quota_rejected",
            "Requests answered 429 quota-exhausted: the quota (whenExhausted: Reject) could not hold them",
            quota_rejected.clone(),
        );
        let quota_fallbacks = Family::default();
        registry.register(
            "sluice_quota_fallbacks",
            "Charges to a shared quota counted on this pod because the shared state was unreachable (added there when it answers again)",
            quota_fallbacks.clone(),
        );
        let shared_state_fallbacks = Family::default();
        registry.register(
            "sluice_shared_state_fallbacks",
            "Admissions under a Cluster limit decided on this pod's share because the shared state was unreachable",
            shared_state_fallbacks.clone(),
        );
        let webhook_takeovers = Family::default();
        registry.register(
            "sluice_webhook_takeovers",
            "Webhook events this sidecar took over from another that held them without a sign of life (shared state)",
            webhook_takeovers.clone(),
        );
        for &result in Reload::ALL {
            config_reloads.get_or_create_owned(&ReloadLabels { result });
        }
        Self(Arc::new(Families {
            webhook_takeovers,
            shared_state_up,
            shared_state_calls,
            shared_state_call_duration,
            shared_state_fallbacks,
            credential_fallback_active,
            webhook_unverified_bytes,
            config_reloads,
            config_applied,
            config_server_connected,
            webhook_received,
            webhook_queue_depth,
            webhook_deliveries,
            webhook_polled,
            webhook_polls,
            webhook_fsyncs,
            webhook_ack_duration,
            requests,
            request_duration,
            attempts,
            retries,
            ratelimit_queue_depth,
            ratelimit_queue_capacity,
            ratelimit_keys,
            provider_remaining,
            provider_limit,
            provider_reset,
            ratelimit_wait,
            ratelimit_rejected,
            contract_checked,
            contract_violations,
            contract_skipped,
            quota_used,
            quota_limit,
            quota_warn_ratio,
            quota_spent,
            quota_rejected,
            quota_fallbacks,
            retry_budget_exhausted,
            circuit_state,
            cache,
            token_refresh,
            credential_fallback,
            secret_reloads,
            registry,
        }))
    }

    /// Creates a webhook's received and delivery series at 0, so the first
    /// forged or dead-lettered event is an increase an alert can see.
    pub fn webhook_series(&self, integration: &Name, webhook: &Name) {
        for &result in Received::ALL {
            self.webhook_received.get_or_create_owned(&ReceivedLabels {
                integration: integration.clone(),
                webhook: webhook.clone(),
                result,
            });
        }
        self.webhook_ack_duration
            .get_or_create_owned(&WebhookLabels {
                integration: integration.clone(),
                webhook: webhook.clone(),
            });
        for &result in Delivery::ALL {
            self.webhook_deliveries
                .get_or_create_owned(&DeliveryLabels {
                    integration: integration.clone(),
                    webhook: webhook.clone(),
                    result,
                });
        }
    }

    /// A polled webhook's series, at zero until its first poll.
    pub fn poll_series(&self, integration: &Name, webhook: &Name) {
        for &result in Polled::ALL {
            self.webhook_polled.get_or_create_owned(&PolledLabels {
                integration: integration.clone(),
                webhook: webhook.clone(),
                result,
            });
        }
        for &result in Poll::ALL {
            self.webhook_polls.get_or_create_owned(&PollLabels {
                integration: integration.clone(),
                webhook: webhook.clone(),
                result,
            });
        }
    }

    /// Every series, in the format the scraper asked for.
    pub fn encode(&self, format: Exposition) -> String {
        format.encode(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
