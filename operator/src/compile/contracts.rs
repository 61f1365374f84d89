//! `spec.contracts` → the sidecar's response contracts; a schema that does
//! not compile is reported at its path (the API server keeps any object).

use sluice_contract::config::{JsonSchema, ResponseContractConfig, defaults};

use super::Compiler;
use super::routes::request_match;
use crate::resource::ContractSpec;

pub(super) fn compile(c: &mut Compiler, specs: &[ContractSpec]) -> Vec<ResponseContractConfig> {
    specs
        .iter()
        .enumerate()
        .filter_map(|(i, spec)| {
            let schema = match JsonSchema::new(spec.schema.clone()) {
                Ok(schema) => schema,
                Err(error) => {
                    c.add(format!("spec.contracts[{i}].schema"), error.to_string());
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
