//! Response contracts: the JSON Schema a provider's answers are expected
//! to keep, checked on a copy so drift (a new enum value, a field gone)
//! is counted instead of failing silently in the app.

use serde::{Deserialize, Serialize};

use super::RequestMatch;

/// One contract of an integration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseContractConfig {
    /// The `contract` metric label.
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: RequestMatch,
    pub schema: JsonSchema,
    /// The response statuses checked; empty: every 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<u16>,
    /// The share of matched responses checked, 0 to 1.
    #[serde(default = "super::defaults::contract_sample")]
    pub sample: f64,
    /// Larger bodies are not checked (counted as skipped).
    #[serde(default = "super::defaults::contract_max_body")]
    pub max_body_bytes: u64,
}

impl ResponseContractConfig {
    /// Whether a response with this status is checked.
    pub fn covers(&self, status: u16) -> bool {
        if self.statuses.is_empty() {
            (200..300).contains(&status)
        } else {
            self.statuses.contains(&status)
        }
    }
}

/// A JSON Schema (draft 2020-12 unless it names another in `$schema`)
/// that is known to compile: checked where it is read.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct JsonSchema(serde_json::Value);

/// Why a schema cannot be used: the message says where in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a usable JSON Schema: {0}")]
pub struct JsonSchemaError(String);

impl JsonSchema {
    pub fn new(schema: serde_json::Value) -> Result<Self, JsonSchemaError> {
        compile(&schema).map_err(JsonSchemaError)?;
        Ok(Self(schema))
    }

    pub fn get(&self) -> &serde_json::Value {
        &self.0
    }

    /// The validator, `format` checked (draft 2020-12 only annotates it).
    pub fn validator(&self) -> jsonschema::Validator {
        compile(&self.0).expect("checked when the schema was read")
    }
}

fn compile(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("a schema is an object (or true/false)".into());
    }
    let draft = if schema.get("$schema").is_some() {
        None
    } else {
        Some(jsonschema::Draft::Draft202012)
    };
    let mut options = jsonschema::options().should_validate_formats(true);
    if let Some(draft) = draft {
        options = options.with_draft(draft);
    }
    options.build(schema).map_err(|e| {
        let at = e.schema_path().to_string();
        if at.is_empty() {
            e.to_string()
        } else {
            format!("{e} (at {at})")
        }
    })
}

impl<'de> Deserialize<'de> for JsonSchema {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        JsonSchema::new(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_is_checked_where_it_is_read() {
        let contract: ResponseContractConfig = serde_yaml_ng::from_str(
            "{name: shipment, schema: {type: object, required: [status], properties: {status: {enum: [CREATED, DELIVERED]}}}}",
        )
        .unwrap();
        assert!(contract.covers(200) && contract.covers(204) && !contract.covers(404));
        assert_eq!((contract.sample, contract.max_body_bytes), (1.0, 256 << 10));
        let validator = contract.schema.validator();
        assert!(validator.is_valid(&serde_json::json!({"status": "CREATED"})));
        assert!(!validator.is_valid(&serde_json::json!({"status": "RETURNED_TO_SENDER"})));

        for bad in [
            "{type: strange}",
            "[1, 2]",
            "{properties: {a: {minimum: x}}}",
        ] {
            let error = serde_yaml_ng::from_str::<JsonSchema>(bad)
                .unwrap_err()
                .to_string();
            assert!(error.contains("not a usable JSON Schema"), "{bad}: {error}");
        }
        let with_format = JsonSchema::new(serde_json::json!({"format": "date-time"})).unwrap();
        assert!(
            !with_format
                .validator()
                .is_valid(&serde_json::json!("yesterday"))
        );
    }
}
