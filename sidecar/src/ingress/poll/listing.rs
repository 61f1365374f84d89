//! One page of a provider's event list, read as the integration's
//! `polling` says: where the events are, each one's id and creation time,
//! whether more pages follow and what asks for the next. Pure (no I/O), so
//! it is fuzzed as it is.
//!
//! Events are kept as the provider wrote them (`RawValue`): the app gets
//! the listed event's JSON byte for byte, as a webhook would carry it.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::{CursorFrom, PollingConfig, Timestamp};

/// One listed event.
#[derive(Debug)]
pub struct Item<'a> {
    pub json: &'a RawValue,
    /// `None`: no usable id at `polling.id` (the event cannot be de-duplicated).
    pub id: Option<String>,
    /// Milliseconds since the epoch; `None`: no usable time at `polling.created`.
    pub created_ms: Option<i64>,
}

/// One page.
#[derive(Debug)]
pub struct Page<'a> {
    pub items: Vec<Item<'a>>,
    /// The value that asks for the next page, when there is one.
    pub next: Option<String>,
}

/// A page that cannot be read at all; the poll fails and is tried again.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("the page is not JSON: {0}")]
    NotJson(String),
    #[error("the page has no array of events at {0} (polling.items)")]
    NoItems(String),
}

/// Reads `body` as `polling` describes it.
pub fn read<'a>(body: &'a [u8], polling: &PollingConfig) -> Result<Page<'a>, PageError> {
    let text = std::str::from_utf8(body).map_err(|e| PageError::NotJson(e.to_string()))?;
    let page: &RawValue =
        serde_json::from_str(text).map_err(|e| PageError::NotJson(e.to_string()))?;
    let items_raw =
        raw_at(page, &polling.items).ok_or_else(|| PageError::NoItems(polling.items.clone()))?;
    let listed: Vec<&RawValue> = serde_json::from_str(items_raw.get())
        .map_err(|_| PageError::NoItems(polling.items.clone()))?;
    let items: Vec<Item<'a>> = listed
        .into_iter()
        .map(|json| Item {
            json,
            id: value_at(json, &polling.id).and_then(|v| id_of(&v)),
            created_ms: value_at(json, &polling.created).and_then(|v| millis_of(&v)),
        })
        .collect();
    let more = match &polling.has_more {
        Some(pointer) => value_at(page, pointer).and_then(|v| v.as_bool()) == Some(true),
        None => !items.is_empty(),
    };
    let next = match &polling.cursor.from {
        _ if !more => None,
        CursorFrom::LastId => items.last().and_then(|item| item.id.clone()),
        CursorFrom::Pointer(pointer) => value_at(page, pointer).and_then(|v| id_of(&v)),
    };
    Ok(Page { items, next })
}

/// The JSON at `pointer` (RFC 6901) in `raw`, still as written.
pub fn raw_at<'a>(raw: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    if pointer.is_empty() {
        return Some(raw);
    }
    let mut here = raw;
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        here = match here.get().trim_start().as_bytes().first() {
            Some(b'{') => {
                let object: BTreeMap<String, &'a RawValue> =
                    serde_json::from_str(here.get()).ok()?;
                *object.get(&token)?
            }
            Some(b'[') => {
                let index: usize = token.parse().ok()?;
                let array: Vec<&'a RawValue> = serde_json::from_str(here.get()).ok()?;
                *array.get(index)?
            }
            _ => return None,
        };
    }
    Some(here)
}

fn value_at(raw: &RawValue, pointer: &str) -> Option<Value> {
    serde_json::from_str(raw_at(raw, pointer)?.get()).ok()
}

/// An id is a non-empty string or a number.
fn id_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Unix seconds (below 10^11, i.e. before the year 5138), Unix
/// milliseconds, or RFC 3339 text.
fn millis_of(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => {
            let n = n.as_f64()?;
            if !n.is_finite() || !(0.0..=1e15).contains(&n) {
                None
            } else if n < 1e11 {
                Some((n * 1000.0) as i64)
            } else {
                Some(n as i64)
            }
        }
        Value::String(s) => s
            .parse::<Timestamp>()
            .ok()
            .map(|t| t.unix_seconds().saturating_mul(1000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
