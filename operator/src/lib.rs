//! Sluice's control plane: the `ProviderIntegration` resource, the pure
//! `compile` to sidecar config, and manifest handling for the `sluice` CLI.

pub mod admission;
pub mod app;
pub mod compile;
pub mod controller;
pub mod field_error;
pub mod inject;
pub mod leader;
pub mod manifest;
pub mod metrics;
pub mod missed;
pub mod offline;
pub mod resource;
pub mod rules;
pub mod selection;
pub mod server;
pub mod stream;
pub mod tls;
pub mod validate;
pub mod view;

pub use compile::{CompileErrors, FieldError, compile};
pub use resource::{ProviderIntegration, ProviderIntegrationSpec};

/// The CRD as YAML, exactly as checked in under `crds/`.
pub fn crd_yaml() -> String {
    serde_yaml_ng::to_string(&crd_json()).expect("the CRD serializes")
}

/// The CRD: the types' schema plus every rule of the table (`rules.rs`).
pub fn crd_json() -> serde_json::Value {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(ProviderIntegration::crd()).expect("the CRD serializes");
    drop_unknown_formats(&mut crd);
    rules::apply_to_schema(&mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]);
    crd
}

/// schemars marks unsigned integers `format: uint16/32/64`, which the API
/// server does not know (and warns about); `minimum: 0` already says it.
fn drop_unknown_formats(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map
                .get("format")
                .and_then(|f| f.as_str())
                .is_some_and(|f| f.starts_with("uint"))
            {
                map.remove("format");
            }
            map.values_mut().for_each(drop_unknown_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_unknown_formats),
        _ => {}
    }
}
