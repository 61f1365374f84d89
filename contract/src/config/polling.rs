//! Polling for missed webhooks: the provider's own list of events, read
//! through the integration's egress pipeline, newest first, so an event
//! whose webhook never arrived is still delivered.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Duration;

/// `webhooks[].polling`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PollingConfig {
    /// The listing's path on the upstream, e.g. `/v1/events`.
    pub path: String,
    /// Query parameters sent with every page, e.g. `limit: "100"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// Time between the end of one poll and the start of the next.
    #[serde(default = "super::defaults::poll_interval")]
    pub interval: Duration,
    /// JSON pointer to the page's array of events, e.g. `/data`.
    pub items: String,
    /// JSON pointer to an event's id within it (the webhook's dedup id).
    pub id: String,
    /// JSON pointer to an event's creation time: Unix seconds, Unix
    /// milliseconds or RFC 3339.
    pub created: String,
    pub cursor: PollCursor,
    /// JSON pointer to the page's "more pages follow" flag; without one a
    /// listing ends at an empty page or a page without a next cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_more: Option<String>,
    /// How far back a poll lists: never before polling first started, and
    /// at most the webhook's dedup TTL (older ids are forgotten).
    #[serde(default = "super::defaults::poll_lookback")]
    pub lookback: Duration,
}

/// How the next (older) page is asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PollCursor {
    /// The query parameter, e.g. Stripe's `starting_after`.
    pub param: String,
    #[serde(default)]
    pub from: CursorFrom,
}

/// Where the cursor's value comes from: the id of the page's last event
/// (`lastId`, Stripe's style) or a JSON pointer into the page (a next-page
/// token).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CursorFrom {
    #[default]
    LastId,
    Pointer(String),
}

pub const CURSOR_LAST_ID: &str = "lastId";

impl CursorFrom {
    pub fn as_str(&self) -> &str {
        match self {
            CursorFrom::LastId => CURSOR_LAST_ID,
            CursorFrom::Pointer(pointer) => pointer,
        }
    }
}

impl std::str::FromStr for CursorFrom {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == CURSOR_LAST_ID {
            Ok(CursorFrom::LastId)
        } else if text.starts_with('/') {
            Ok(CursorFrom::Pointer(text.to_owned()))
        } else {
            Err(format!(
                "{text:?} is neither {CURSOR_LAST_ID} nor a JSON pointer into the page (e.g. /next_cursor)"
            ))
        }
    }
}

impl Serialize for CursorFrom {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CursorFrom {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_events_read_with_defaults() {
        let polling: PollingConfig = serde_yaml_ng::from_str(
            "{path: /v1/events, query: {limit: '100'}, items: /data, id: /id, created: /created, cursor: {param: starting_after}, hasMore: /has_more}",
        )
        .unwrap();
        assert_eq!(polling.cursor.from, CursorFrom::LastId);
        assert_eq!(polling.interval, super::super::defaults::poll_interval());
        assert_eq!(polling.lookback, super::super::defaults::poll_lookback());
        let again: PollingConfig =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&polling).unwrap()).unwrap();
        assert_eq!(again, polling);
    }

    #[test]
    fn a_cursor_comes_from_the_last_id_or_a_pointer() {
        let token: PollCursor =
            serde_yaml_ng::from_str("{param: page_token, from: /next_page_token}").unwrap();
        assert_eq!(token.from, CursorFrom::Pointer("/next_page_token".into()));
        let err = serde_yaml_ng::from_str::<PollCursor>("{param: p, from: next}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither lastId nor a JSON pointer"), "{err}");
    }
}
