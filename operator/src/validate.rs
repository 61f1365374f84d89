//! What the API server checks before it stores a ProviderIntegration, done
//! here on the manifest as JSON: the CRD's own structural schema (types,
//! unknown and required fields, enums, patterns, lengths, bounds, list keys)
//! and the rule table's CEL rules. Every problem is reported, not the first.
//!
//! The schema is the generated CRD's, so this can only drift from the API
//! server where the two implementations of JSON Schema differ; the corpus
//! test in `tests/rules.rs` holds them to the same verdicts.

use std::sync::LazyLock;

use serde_json::{Map, Value};
use sluice_contract::config::Timestamp;

use crate::field_error::FieldError;
use crate::rules;

/// The CRD's `openAPIV3Schema`, generated once.
pub fn schema() -> &'static Value {
    static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
        let crd = crate::crd_json();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    });
    &SCHEMA
}

/// Every problem the API server would find in `manifest`.
pub fn validate(manifest: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let root = schema();
    match manifest.as_object() {
        Some(fields) => {
            for (key, value) in fields {
                // The API server validates metadata itself and ignores a
                // manifest's status (it is a subresource).
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
                    continue;
                }
                match root["properties"].get(key) {
                    Some(schema) => walk(schema, value, key, &mut errors),
                    None => errors.push(unknown(key, key, &root["properties"])),
                }
            }
            if !fields.contains_key("spec") {
                errors.push(FieldError::new("spec", "is required"));
            }
        }
        None => errors.push(FieldError::new("", "a manifest must be a mapping")),
    }
    // The table's rules look only at fields of the right type, so they can
    // run beside a schema problem: every problem is reported in one pass.
    rules::check(manifest, &mut errors);
    errors
}

fn walk(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if value.is_null() {
        if schema["nullable"] != true {
            errors.push(FieldError::new(path, "must not be null"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(FieldError::new(
                path,
                format!("must be a whole number or a string, not {}", shown(value)),
            ));
        }
        return;
    }
    let expected = schema["type"].as_str().unwrap_or("");
    let fits = match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !fits {
        errors.push(FieldError::new(
            path,
            format!("must be {}, not {}", article(expected), shown(value)),
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect();
        errors.push(FieldError::new(
            path,
            format!("{} is not one of {}", shown(value), names.join(", ")),
        ));
    }
    match value {
        Value::Object(fields) => object(schema, fields, path, errors),
        Value::Array(items) => array(schema, items, path, errors),
        Value::String(text) => string(schema, text, path, errors),
        Value::Number(n) => number(schema, n.as_f64().unwrap_or(f64::NAN), path, errors),
        _ => {}
    }
}

fn object(schema: &Value, fields: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    let properties = &schema["properties"];
    for (key, value) in fields {
        let child = format!("{path}.{key}");
        match (properties.get(key), schema.get("additionalProperties")) {
            (Some(property), _) => walk(property, value, &child, errors),
            (None, Some(additional)) if additional.is_object() => {
                walk(additional, value, &child, errors)
            }
            _ if schema["x-kubernetes-preserve-unknown-fields"] == true => {}
            _ => errors.push(unknown(&child, key, properties)),
        }
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = required.as_str()
            && !fields.contains_key(name)
        {
            errors.push(FieldError::new(format!("{path}.{name}"), "is required"));
        }
    }
}

fn array(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    if let Some(max) = schema["maxItems"].as_u64()
        && items.len() as u64 > max
    {
        errors.push(FieldError::new(
            path,
            format!("has {} items: at most {max} are allowed", items.len()),
        ));
    }
    if let Some(min) = schema["minItems"].as_u64()
        && (items.len() as u64) < min
    {
        let message = rules::min_items_message(&abstract_path(path))
            .map_or_else(|| format!("must have at least {min} items"), str::to_owned);
        errors.push(FieldError::new(path, message));
    }
    for (i, item) in items.iter().enumerate() {
        walk(&schema["items"], item, &format!("{path}[{i}]"), errors);
    }
    // A list of objects keyed by a field: each key once.
    if schema["x-kubernetes-list-type"] == "map" {
        let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let key_of = |item: &Value| {
            keys.iter()
                .map(|k| item.get(*k).cloned())
                .collect::<Vec<_>>()
        };
        for (i, item) in items.iter().enumerate() {
            let key = key_of(item);
            if items[..i].iter().any(|earlier| key_of(earlier) == key) {
                let shown_key: Vec<String> = key.iter().flatten().map(shown).collect();
                errors.push(FieldError::new(
                    format!("{path}[{i}].{}", keys.join(",")),
                    format!("{} is used by an earlier item", shown_key.join(", ")),
                ));
            }
        }
    }
}

fn string(schema: &Value, text: &str, path: &str, errors: &mut Vec<FieldError>) {
    // Lengths count characters, as the API server does.
    let length = text.chars().count() as u64;
    if let Some(max) = schema["maxLength"].as_u64()
        && length > max
    {
        errors.push(FieldError::new(
            path,
            format!("is {length} characters long: at most {max} are allowed"),
        ));
    }
    if let Some(pattern) = schema["pattern"].as_str()
        && !rules::regex(pattern).is_match(text)
    {
        let explain = rules::grammar_of(pattern).map_or_else(
            || format!("does not match {pattern}"),
            |g| g.explain.to_owned(),
        );
        errors.push(FieldError::new(path, format!("{text:?} {explain}")));
    }
    if schema["format"] == "date-time" && text.parse::<Timestamp>().is_err() {
        errors.push(FieldError::new(
            path,
            format!("{text:?} is not an RFC 3339 timestamp such as 2026-12-01T00:00:00Z"),
        ));
    }
}

fn number(schema: &Value, n: f64, path: &str, errors: &mut Vec<FieldError>) {
    let min = schema["minimum"].as_f64();
    let max = schema["maximum"].as_f64();
    let exclusive = schema["exclusiveMinimum"] == true;
    let below = min.is_some_and(|m| if exclusive { n <= m } else { n < m });
    let above = max.is_some_and(|m| n > m);
    if below || above {
        let bound = sluice_contract::bounds::Bound {
            min: Shown(min.unwrap_or(f64::MIN)),
            min_exclusive: exclusive,
            max: max.map(Shown),
        };
        errors.push(FieldError::new(
            path,
            format!("{} is out of range: must be {bound}", Shown(n)),
        ));
    }
}

/// A number as a user wrote it: `10`, not `10.0`.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
struct Shown(f64);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.fract() == 0.0 && self.0.abs() < 1e15 {
            write!(f, "{}", self.0 as i64)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

fn unknown(path: &str, key: &str, properties: &Value) -> FieldError {
    let known: Vec<&str> = properties
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let hint = known
        .iter()
        .map(|k| {
            (
                edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| format!("; did you mean {k}?"))
        .unwrap_or_default();
    FieldError::new(path, format!("unknown field {key:?}{hint}"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// `spec.webhooks[2].verify` → `spec.webhooks[].verify`, as the table names places.
fn abstract_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

fn article(kind: &str) -> &'static str {
    match kind {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "a string",
        "integer" => "a whole number",
        "number" => "a number",
        "boolean" => "true or false",
        _ => "something else",
    }
}

fn shown(value: &Value) -> String {
    match value {
        Value::Object(_) => "a mapping".into(),
        Value::Array(_) => "a list".into(),
        other => {
            let text = other.to_string();
            if text.chars().count() > 40 {
                format!("{}...", text.chars().take(40).collect::<String>())
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
mod tests;
