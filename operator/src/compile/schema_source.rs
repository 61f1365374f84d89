//! A contract's schema from a ConfigMap key (`schemaFrom`): a JSON Schema
//! as it is, or one operation's response schema out of an OpenAPI 3.x
//! document. Pure: the text in, an inline JSON Schema out, so the sidecar
//! only ever sees inline schemas.
//!
//! From OpenAPI the result is `{allOf: [<response schema>], components:
//! <the components it reaches>}`: its `#/components/...` references still
//! resolve, and nothing the response does not use is carried into the
//! compiled config (a ConfigMap holds 1 MiB at most). OpenAPI 3.0's
//! dialect (`nullable`, boolean `exclusiveMaximum`) is rewritten to 2020-12;
//! 3.1 is 2020-12 already.

use serde_json::{Map, Value, json};

/// Operations' methods in a path item (OpenAPI 3.x).
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Keeps at most this many components: a reference cycle or a huge
/// document cannot grow the result without end.
const MAX_COMPONENTS: usize = 10_000;

/// The JSON Schema `text` (YAML or JSON) gives for responses with
/// `statuses` (empty: the operation's first 2xx).
pub fn schema_from(
    text: &str,
    operation_id: Option<&str>,
    statuses: &[u16],
) -> Result<Value, String> {
    let document: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| format!("the ConfigMap key is not YAML or JSON: {e}"))?;
    if document.get("swagger").is_some() {
        return Err("Swagger 2.0 is not supported: only OpenAPI 3.x documents".into());
    }
    let version = match document.get("openapi") {
        Some(Value::String(v)) => Some(v.clone()),
        // YAML reads an unquoted `openapi: 3.0` as a number.
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let Some(version) = version else {
        if operation_id.is_some() {
            return Err(
                "operationId applies to an OpenAPI document; this is a JSON Schema (it has no openapi field)"
                    .into(),
            );
        }
        return Ok(document);
    };
    if !version.starts_with("3.") {
        return Err(format!(
            "OpenAPI {version} is not supported: only 3.x documents"
        ));
    }
    let operation_id = operation_id
        .ok_or("an OpenAPI document needs operationId: which operation's responses are checked")?;
    let operation = find_operation(&document, operation_id)?;
    let response = pick_response(&document, operation, operation_id, statuses)?;
    let schema = json_schema_of(response, operation_id)?;
    let mut components = Map::new();
    reach(&document, schema, &mut components)?;
    let mut result = json!({"allOf": [schema]});
    if !components.is_empty() {
        result["components"] = Value::Object(components);
    }
    if version.starts_with("3.0") {
        rewrite_openapi_30(&mut result);
    }
    Ok(result)
}

fn find_operation<'a>(document: &'a Value, operation_id: &str) -> Result<&'a Value, String> {
    let paths = document
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("the OpenAPI document has no paths")?;
    paths
        .values()
        .flat_map(|item| METHODS.iter().filter_map(move |m| item.get(*m)))
        .find(|op| op.get("operationId").and_then(Value::as_str) == Some(operation_id))
        .ok_or_else(|| format!("no operation has operationId {operation_id:?}"))
}

/// The response for the first listed status, else the first 2xx, `2XX`
/// or `default`; a `$ref` to `#/components/responses` followed.
fn pick_response<'a>(
    document: &'a Value,
    operation: &'a Value,
    operation_id: &str,
    statuses: &[u16],
) -> Result<&'a Value, String> {
    let responses = operation
        .get("responses")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("operation {operation_id:?} has no responses"))?;
    let wanted: Vec<String> = match statuses.first() {
        Some(status) => vec![
            status.to_string(),
            format!("{}XX", status / 100),
            "default".into(),
        ],
        None => {
            let mut success: Vec<String> = responses
                .keys()
                .filter(|k| {
                    k.len() == 3 && k.starts_with('2') && k.bytes().all(|b| b.is_ascii_digit())
                })
                .cloned()
                .collect();
            success.sort();
            success.extend(["2XX".to_owned(), "default".to_owned()]);
            success
        }
    };
    let response = wanted
        .iter()
        .find_map(|status| responses.get(status))
        .ok_or_else(|| {
            format!(
                "operation {operation_id:?} documents no response for {}",
                wanted.join(", ")
            )
        })?;
    match response.get("$ref").and_then(Value::as_str) {
        Some(reference) => resolve(document, reference),
        None => Ok(response),
    }
}

/// The schema of the response's JSON content.
fn json_schema_of<'a>(response: &'a Value, operation_id: &str) -> Result<&'a Value, String> {
    let content = response
        .get("content")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("operation {operation_id:?}'s response has no content"))?;
    content
        .iter()
        .find(|(media, _)| {
            let media = media.split(';').next().unwrap_or_default().trim();
            media == "application/json" || media.ends_with("+json")
        })
        .and_then(|(_, body)| body.get("schema"))
        .ok_or_else(|| format!("operation {operation_id:?}'s response has no JSON schema"))
}

fn resolve<'a>(document: &'a Value, reference: &str) -> Result<&'a Value, String> {
    let pointer = reference.strip_prefix('#').ok_or_else(|| {
        format!(
            "the reference {reference:?} is not in the document (remote references are not fetched)"
        )
    })?;
    document
        .pointer(pointer)
        .ok_or_else(|| format!("the reference {reference:?} points nowhere in the document"))
}

/// Copies every `#/components/...` the schema reaches, transitively, into
/// `components` (keyed as in the document).
fn reach(
    document: &Value,
    schema: &Value,
    components: &mut Map<String, Value>,
) -> Result<(), String> {
    let mut pending = vec![schema];
    while let Some(value) = pending.pop() {
        match value {
            Value::Object(object) => {
                if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
                    if let Some(rest) = reference.strip_prefix("#/components/") {
                        let (kind, name) = rest.split_once('/').ok_or_else(|| {
                            format!("the reference {reference:?} names no component")
                        })?;
                        let target = resolve(document, reference)?;
                        let kind = components
                            .entry(kind.to_owned())
                            .or_insert_with(|| Value::Object(Map::new()))
                            .as_object_mut()
                            .expect("a component kind is an object");
                        if !kind.contains_key(name) {
                            kind.insert(name.to_owned(), target.clone());
                            pending.push(target);
                        }
                    } else {
                        resolve(document, reference)?;
                    }
                }
                pending.extend(object.values());
            }
            Value::Array(items) => pending.extend(items),
            _ => {}
        }
        let kept: usize = components
            .values()
            .filter_map(Value::as_object)
            .map(Map::len)
            .sum();
        if kept > MAX_COMPONENTS {
            return Err(format!(
                "the response reaches more than {MAX_COMPONENTS} components"
            ));
        }
    }
    Ok(())
}

/// OpenAPI 3.0's schema dialect in 2020-12 terms: `nullable: true` allows
/// null, a boolean `exclusiveMaximum`/`exclusiveMinimum` makes its bound
/// exclusive.
fn rewrite_openapi_30(value: &mut Value) {
    match value {
        Value::Object(object) => {
            for child in object.values_mut() {
                rewrite_openapi_30(child);
            }
            for (exclusive, bound) in [
                ("exclusiveMaximum", "maximum"),
                ("exclusiveMinimum", "minimum"),
            ] {
                match object.get(exclusive) {
                    Some(Value::Bool(true)) => {
                        if let Some(limit) = object.remove(bound) {
                            object.insert(exclusive.into(), limit);
                        } else {
                            object.remove(exclusive);
                        }
                    }
                    Some(Value::Bool(false)) => {
                        object.remove(exclusive);
                    }
                    _ => {}
                }
            }
            if object.remove("nullable") != Some(Value::Bool(true)) {
                return;
            }
            if let Some(values) = object.get_mut("enum").and_then(Value::as_array_mut)
                && !values.contains(&Value::Null)
            {
                values.push(Value::Null);
            }
            match object.get("type").cloned() {
                Some(Value::String(kind)) => {
                    object.insert("type".into(), json!([kind, "null"]));
                }
                _ if object.contains_key("enum") => {}
                _ => {
                    let rest = std::mem::take(object);
                    object.insert("anyOf".into(), json!([rest, {"type": "null"}]));
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_openapi_30),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
