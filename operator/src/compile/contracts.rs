//! `spec.contracts` → the sidecar's response contracts, each schema inline
//! (a `schemaFrom` ConfigMap read here); a schema that does not compile is
//! reported at its path (the API server keeps any object).

use sluice_contract::config::{JsonSchema, ResponseContractConfig, defaults};

use super::routes::request_match;
use super::schema_source::schema_from;
use super::{Compiler, ConfigMapValue};
use crate::resource::{ContractSpec, SchemaFromSpec};
use crate::selection::SCHEMA_LABEL;

pub(super) fn compile(c: &mut Compiler, specs: &[ContractSpec]) -> Vec<ResponseContractConfig> {
    specs
        .iter()
        .enumerate()
        .filter_map(|(i, spec)| {
            let path = format!("spec.contracts[{i}]");
            let (value, at) = match (&spec.schema, &spec.schema_from) {
                (Some(schema), _) => (schema.clone(), format!("{path}.schema")),
                (None, Some(from)) => (
                    from_config_map(c, &format!("{path}.schemaFrom"), from, &spec.statuses)?,
                    format!("{path}.schemaFrom"),
                ),
                // The rule table has reported it.
                (None, None) => return None,
            };
            let schema = match JsonSchema::new(value) {
                Ok(schema) => schema,
                Err(error) => {
                    c.add(at, error.to_string());
                    return None;
                }
            };
            Some(ResponseContractConfig {
                name: spec.name.clone(),
                matches: request_match(&spec.matches),
                schema,
                statuses: spec.statuses.clone(),
                sample: spec.sample.unwrap_or_else(defaults::contract_sample),
                max_body_bytes: spec
                    .max_body_bytes
                    .unwrap_or_else(defaults::contract_max_body),
            })
        })
        .collect()
}

/// The schema a `schemaFrom` names; a problem at `path` when it cannot be had.
fn from_config_map(
    c: &mut Compiler,
    path: &str,
    from: &SchemaFromSpec,
    statuses: &[u16],
) -> Option<serde_json::Value> {
    let reference = &from.config_map_key_ref;
    let text = match c.config_maps.value(&reference.name, &reference.key) {
        ConfigMapValue::Found(text) => text,
        ConfigMapValue::NoConfigMap => {
            c.add(
                format!("{path}.configMapKeyRef"),
                format!(
                    "ConfigMap {:?} not found in the namespace (it needs the label {SCHEMA_LABEL}: \"true\"; locally, a kind: ConfigMap document)",
                    reference.name
                ),
            );
            return None;
        }
        ConfigMapValue::NoKey => {
            c.add(
                format!("{path}.configMapKeyRef.key"),
                format!(
                    "ConfigMap {:?} has no key {:?}",
                    reference.name, reference.key
                ),
            );
            return None;
        }
    };
    match schema_from(&text, from.operation_id.as_deref(), statuses) {
        Ok(schema) => Some(schema),
        Err(error) => {
            c.add(
                path,
                format!(
                    "ConfigMap {:?} key {:?}: {error}",
                    reference.name, reference.key
                ),
            );
            None
        }
    }
}
