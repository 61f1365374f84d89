//! The operator's own metrics (prometheus-client), served on `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_contract::exposition::Exposition;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct ControllerMetrics {
    /// Pod admissions by result: injected, unchanged (not selected, opted
    /// out, already injected), error.
    pub injections: Family<ResultLabels, Counter>,
    /// Pods selected by an integration that run without the sidecar.
    pub injections_missed: Counter,
    /// Config stream polls by result: changed, unchanged, denied, error.
    pub config_polls: Family<ResultLabels, Counter>,
    /// Sidecars waiting on the config stream now.
    pub config_watchers: prometheus_client::metrics::gauge::Gauge,
    /// Serving certificate renewals (and creations) made by this replica.
    pub certificate_renewals: Counter,
    /// Every request the operator's client sends, by HTTP method (watches included).
    pub api_requests: Family<RequestLabels, Counter>,
    pub reconciles: Counter,
    /// Failed reconciles by `controller::Error::reason`.
    pub errors: Family<ErrorLabels, Counter>,
    /// Writes to the API (status patches, ConfigMap applies): flat when idle.
    pub writes: Counter,
    pub duration: Histogram,
    registry: Arc<Registry>,
}

impl ControllerMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Counter::default();
        registry.register(
            "sluice_operator_reconciles",
            "Reconciles started",
            reconciles.clone(),
        );
        let errors = Family::default();
        registry.register(
            "sluice_operator_reconcile_errors",
            "Reconciles that failed, by reason (retried with backoff)",
            errors.clone(),
        );
        let writes = Counter::default();
        registry.register(
            "sluice_operator_api_writes",
            "Writes made to the Kubernetes API",
            writes.clone(),
        );
        let api_requests = Family::default();
        registry.register(
            "sluice_operator_api_requests",
            "Requests sent to the Kubernetes API, by method",
            api_requests.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "sluice_operator_reconcile_duration_seconds",
            "Time per reconcile",
            duration.clone(),
        );
        let injections = Family::default();
        registry.register(
            "sluice_operator_injections",
            "Pod admissions by result (injected, unchanged, error)",
            injections.clone(),
        );
        let injections_missed = Counter::default();
        registry.register(
            "sluice_operator_injections_missed",
            "Pods selected by a ProviderIntegration that were created without the sidecar (the injector was unavailable, or the integration came later)",
            injections_missed.clone(),
        );
        let config_polls = Family::default();
        registry.register(
            "sluice_operator_config_polls",
            "Sidecar config stream polls by result (changed, unchanged, denied, error)",
            config_polls.clone(),
        );
        let config_watchers = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "sluice_operator_config_watchers",
            "Sidecars waiting on this replica's config stream",
            config_watchers.clone(),
        );
        let certificate_renewals = Counter::default();
        registry.register(
            "sluice_operator_certificate_renewals",
            "Serving certificates created or renewed by this replica",
            certificate_renewals.clone(),
        );
        // Every result at 0 from the start, for the dashboard's panels.
        for result in ["injected", "unchanged", "error"] {
            injections.get_or_create_owned(&ResultLabels { result });
        }
        for result in ["changed", "unchanged", "denied", "error"] {
            config_polls.get_or_create_owned(&ResultLabels { result });
        }
        Self {
            injections,
            injections_missed,
            config_polls,
            config_watchers,
            certificate_renewals,
            api_requests,
            reconciles,
            errors,
            writes,
            duration,
            registry: Arc::new(registry),
        }
    }

    /// Every series, in the format the scraper asked for.
    pub fn encode(&self, format: Exposition) -> String {
        format.encode(&self.registry)
    }
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
