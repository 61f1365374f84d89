//! The mutating admission webhook: a pod being created that opted in and is
//! selected by a ProviderIntegration gets the sidecar (see [`crate::inject`]).
//!
//! The webhook configuration's selectors decide which pods are sent here
//! (label `sluice.dev/inject: enabled` on the pod or its namespace); this
//! handler still refuses to touch kube-system and the operator's own
//! namespace, and honours `sluice.dev/inject: disabled` on the pod.

use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::inject::{self, InjectorSettings};
use crate::metrics::{ControllerMetrics, ResultLabels};
use crate::selection::INJECT_LABEL;
use crate::view::ClusterView;

pub const MUTATE_PATH: &str = "/mutate";

pub struct Injector {
    pub view: Arc<ClusterView>,
    /// Replaced when the CA the sidecars must trust changes.
    pub settings: RwLock<InjectorSettings>,
    /// Never injected: kube-system and the operator's namespace.
    pub skip_namespaces: Vec<String>,
    pub metrics: ControllerMetrics,
}

impl Injector {
    fn count(&self, result: &'static str) {
        self.metrics
            .injections
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Answers one AdmissionReview (the request body) with an AdmissionReview.
    pub fn review(&self, body: &[u8]) -> AdmissionReview<DynamicObject> {
        let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
            Ok(review) => review,
            Err(error) => {
                self.count("error");
                return AdmissionResponse::invalid(format!(
                    "not an AdmissionReview of a Pod: {error}"
                ))
                .into_review();
            }
        };
        let request: AdmissionRequest<Pod> = match review.try_into() {
            Ok(request) => request,
            Err(error) => {
                self.count("error");
                return AdmissionResponse::invalid(error.to_string()).into_review();
            }
        };
        let response = AdmissionResponse::from(&request);
        // An internal failure lets the pod through unchanged, as the default
        // failurePolicy (Ignore) would: the operator then reports the pod
        // with a NotInjected Event.
        let patched = self.mutate(&request).and_then(|patch| match patch {
            Some(patch) => response
                .clone()
                .with_patch(patch)
                .map(Some)
                .map_err(|e| e.to_string()),
            None => Ok(None),
        });
        match patched {
            Ok(Some(patched)) => {
                self.count("injected");
                patched.into_review()
            }
            Ok(None) => {
                self.count("unchanged");
                response.into_review()
            }
            Err(reason) => {
                self.count("error");
                tracing::warn!(%reason, "pod admitted without the sidecar: injection failed");
                response.into_review()
            }
        }
    }

    fn mutate(&self, request: &AdmissionRequest<Pod>) -> Result<Option<json_patch::Patch>, String> {
        if request.operation != Operation::Create {
            return Ok(None);
        }
        let Some(pod) = &request.object else {
            return Ok(None);
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.namespace())
            .unwrap_or_default();
        if self.skip_namespaces.contains(&namespace)
            || pod.labels().get(INJECT_LABEL).map(String::as_str) == Some("disabled")
        {
            return Ok(None);
        }
        let integrations = self.view.integrations.state();
        let selected = inject::selecting(
            integrations.iter().map(|p| p.as_ref()),
            &namespace,
            pod.labels(),
        );
        let mut mutated = pod.clone();
        let Some(spec) = mutated.spec.as_mut() else {
            return Ok(None);
        };
        let settings = self.settings.read().expect("settings lock").clone();
        if !inject::inject(&mut mutated.metadata, spec, &selected, &settings) {
            return Ok(None);
        }
        let before = serde_json::to_value(pod).map_err(|e| e.to_string())?;
        let after = serde_json::to_value(&mutated).map_err(|e| e.to_string())?;
        tracing::info!(
            namespace = %namespace,
            pod = %pod.metadata.name.clone().or_else(|| pod.metadata.generate_name.clone()).unwrap_or_default(),
            integrations = selected.len(),
            "sidecar injected"
        );
        Ok(Some(json_patch::diff(&before, &after)))
    }
}
