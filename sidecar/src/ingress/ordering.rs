//! The ordering guard: per object, an event older than the last one
//! delivered, or a step backwards in the configured state order, is not
//! delivered (the field report's "stale" and "out of order" webhooks).

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use crate::config::OrderingConfig;

/// How many objects are remembered; the oldest are forgotten first.
const MAX_OBJECTS: usize = 100_000;

/// What was delivered last for an object (or what an event says).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Last {
    pub timestamp: Option<f64>,
    pub rank: Option<usize>,
}

/// What the guard compares of one event.
pub struct Facts {
    pub object: String,
    pub timestamp: Option<f64>,
    pub rank: Option<usize>,
}

/// The object, time and state rank of `body`; `None` when it names no
/// object (or is not JSON): such events are always delivered.
pub fn facts(config: &OrderingConfig, body: &[u8]) -> Option<Facts> {
    let json = serde_json::from_slice::<Value>(body).ok()?;
    let object = json.pointer(&config.object_pointer).and_then(text_of)?;
    let timestamp = config
        .timestamp_pointer
        .as_deref()
        .and_then(|p| json.pointer(p))
        .and_then(timestamp_of);
    let rank = config.states.as_ref().and_then(|states| {
        let state = json.pointer(&states.pointer).and_then(text_of)?;
        states.order.iter().position(|s| *s == state)
    });
    Some(Facts {
        object,
        timestamp,
        rank,
    })
}

/// Why an event of `object` with `timestamp` and `rank` may not follow
/// `previous`, if it may not.
pub fn out_of_order(
    config: &OrderingConfig,
    object: &str,
    timestamp: Option<f64>,
    rank: Option<usize>,
    previous: Last,
) -> Option<String> {
    if let (Some(now), Some(before)) = (timestamp, previous.timestamp)
        && now < before
    {
        return Some(format!(
            "object {object}: event time {now} is before the last delivered {before}"
        ));
    }
    if let (Some(now), Some(before)) = (rank, previous.rank)
        && now < before
    {
        let states = &config.states.as_ref().expect("rank implies states").order;
        let name = |i: usize| states.get(i).map_or("?", String::as_str);
        return Some(format!(
            "object {object}: state {} after {} moves backwards",
            name(now),
            name(before)
        ));
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// Older than, or a step back from, what the app already has.
    OutOfOrder(String),
}

pub struct OrderingGuard {
    config: OrderingConfig,
    last: HashMap<String, Last>,
    order: VecDeque<String>,
}

/// Seconds since the epoch from a number or an RFC 3339 string.
fn timestamp_of(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s
            .parse::<crate::config::Timestamp>()
            .ok()
            .map(|t| t.unix_seconds() as f64)
            .or_else(|| s.parse().ok()),
        _ => None,
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl OrderingGuard {
    pub fn new(config: OrderingConfig) -> Self {
        Self {
            config,
            last: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Judges `body` and, when it is delivered, remembers it as the latest.
    /// Bodies without the object (or not JSON) are always delivered.
    pub fn check(&mut self, body: &[u8]) -> Verdict {
        let Some(Facts {
            object,
            timestamp,
            rank,
        }) = facts(&self.config, body)
        else {
            return Verdict::Deliver;
        };
        if let Some(previous) = self.last.get(&object) {
            if let Some(reason) = out_of_order(&self.config, &object, timestamp, rank, *previous) {
                return Verdict::OutOfOrder(reason);
            }
        } else {
            if self.order.len() >= MAX_OBJECTS
                && let Some(oldest) = self.order.pop_front()
            {
                self.last.remove(&oldest);
            }
            self.order.push_back(object.clone());
        }
        let entry = self.last.entry(object).or_insert(Last {
            timestamp: None,
            rank: None,
        });
        entry.timestamp = timestamp.or(entry.timestamp);
        entry.rank = rank.or(entry.rank);
        Verdict::Deliver
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StateOrder;

    fn guard() -> OrderingGuard {
        OrderingGuard::new(OrderingConfig {
            object_pointer: "/data/object/id".into(),
            timestamp_pointer: Some("/created".into()),
            states: Some(StateOrder {
                pointer: "/type".into(),
                order: vec!["payment.pending".into(), "payment.completed".into()],
            }),
        })
    }

    fn event(id: &str, created: u64, kind: &str) -> Vec<u8> {
        format!(r#"{{"type":"{kind}","created":{created},"data":{{"object":{{"id":"{id}"}}}}}}"#)
            .into_bytes()
    }

    #[test]
    fn the_field_reports_pending_completed_pending() {
        let mut g = guard();
        assert_eq!(
            g.check(&event("pay_1", 10, "payment.pending")),
            Verdict::Deliver
        );
        assert_eq!(
            g.check(&event("pay_1", 20, "payment.completed")),
            Verdict::Deliver
        );
        // The delayed first pending arrives last: a backwards move.
        assert!(
            matches!(g.check(&event("pay_1", 30, "payment.pending")), Verdict::OutOfOrder(m) if m.contains("backwards"))
        );
        // Other objects are independent.
        assert_eq!(
            g.check(&event("pay_2", 5, "payment.pending")),
            Verdict::Deliver
        );
    }

    #[test]
    fn stale_events_by_time() {
        let mut g = guard();
        assert_eq!(
            g.check(&event("o", 100, "payment.pending")),
            Verdict::Deliver
        );
        assert!(matches!(
            g.check(&event("o", 50, "payment.pending")),
            Verdict::OutOfOrder(_)
        ));
        assert_eq!(
            g.check(&event("o", 100, "payment.pending")),
            Verdict::Deliver,
            "equal time is not older"
        );
        assert_eq!(g.check(b"not json"), Verdict::Deliver);
        assert_eq!(g.check(br#"{"no":"object"}"#), Verdict::Deliver);
    }

    #[test]
    fn rfc3339_timestamps() {
        let mut g = OrderingGuard::new(OrderingConfig {
            object_pointer: "/id".into(),
            timestamp_pointer: Some("/at".into()),
            states: None,
        });
        assert_eq!(
            g.check(br#"{"id":"x","at":"2026-01-02T00:00:00Z"}"#),
            Verdict::Deliver
        );
        assert!(matches!(
            g.check(br#"{"id":"x","at":"2026-01-01T00:00:00Z"}"#),
            Verdict::OutOfOrder(_)
        ));
    }
}
