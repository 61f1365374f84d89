//! Sluice's control plane: the `ProviderIntegration` resource, the pure
//! `compile` to sidecar config, and manifest handling for the `sluice` CLI.

pub mod compile;
pub mod controller;
pub mod leader;
pub mod manifest;
pub mod metrics;
pub mod resource;

pub use compile::{CompileErrors, FieldError, compile};
pub use resource::{ProviderIntegration, ProviderIntegrationSpec};

/// The CRD as YAML, exactly as checked in under `crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml_ng::to_string(&ProviderIntegration::crd()).expect("the CRD serializes")
}
