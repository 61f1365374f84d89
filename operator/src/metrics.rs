//! The operator's own metrics (prometheus-client), served on `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
}

#[derive(Clone)]
pub struct ControllerMetrics {
    /// Every request the operator's client sends, by HTTP method (watches included).
    pub api_requests: Family<RequestLabels, Counter>,
    pub reconciles: Counter,
    pub errors: Counter,
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
        let errors = Counter::default();
        registry.register(
            "sluice_operator_reconcile_errors",
            "Reconciles that failed (retried with backoff)",
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
        Self {
            api_requests,
            reconciles,
            errors,
            writes,
            duration,
            registry: Arc::new(registry),
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
