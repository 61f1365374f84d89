//! Spend quotas: at most `limit` units of cost per period (a day, a
//! calendar month), where a request's cost is 1 or read from the request.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::RequestMatch;
use crate::duration::{DURATION_PATTERN, Duration};
use crate::timestamp;

/// One quota of an integration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaConfig {
    /// The `quota` metric label.
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: RequestMatch,
    /// Units of cost per period.
    pub limit: u64,
    pub per: QuotaPeriod,
    #[serde(default, skip_serializing_if = "QuotaCost::is_one")]
    pub cost: QuotaCost,
    /// Percentages of `limit` the alerts fire at, ascending.
    #[serde(default = "super::defaults::warn_at")]
    pub warn_at: Vec<u32>,
    #[serde(default)]
    pub when_exhausted: WhenExhausted,
}

/// How long a quota's usage counts before it starts again from zero.
/// Written `calendarMonth` or as a duration (`24h`, `720h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaPeriod {
    /// Fixed windows of this length counted from the Unix epoch (so `24h`
    /// starts at midnight UTC).
    Every(Duration),
    /// From the first of a month, 00:00 UTC, to the first of the next.
    CalendarMonth,
}

pub const CALENDAR_MONTH: &str = "calendarMonth";

/// The grammar of [`QuotaPeriod`], for the CRD schema.
pub fn quota_period_pattern() -> String {
    let duration = DURATION_PATTERN
        .trim_start_matches('^')
        .trim_end_matches('$');
    format!("^({CALENDAR_MONTH}|{duration})$")
}

/// One window of a period, in Unix seconds: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaWindow {
    pub start: i64,
    pub end: i64,
}

impl QuotaPeriod {
    /// The window that holds the instant `unix_seconds`.
    pub fn window_at(self, unix_seconds: i64) -> QuotaWindow {
        match self {
            QuotaPeriod::Every(length) => {
                let length = i64::try_from(length.get().as_secs())
                    .unwrap_or(i64::MAX)
                    .max(1);
                let start = unix_seconds.div_euclid(length) * length;
                QuotaWindow {
                    start,
                    end: start.saturating_add(length),
                }
            }
            QuotaPeriod::CalendarMonth => {
                let (start, end) = timestamp::month_around(unix_seconds);
                QuotaWindow { start, end }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a quota period (use calendarMonth or a duration such as 24h or 720h)")]
pub struct ParseQuotaPeriodError(String);

impl FromStr for QuotaPeriod {
    type Err = ParseQuotaPeriodError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == CALENDAR_MONTH {
            return Ok(QuotaPeriod::CalendarMonth);
        }
        text.parse()
            .map(QuotaPeriod::Every)
            .map_err(|_| ParseQuotaPeriodError(text.to_owned()))
    }
}

impl fmt::Display for QuotaPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaPeriod::Every(d) => d.fmt(f),
            QuotaPeriod::CalendarMonth => f.write_str(CALENDAR_MONTH),
        }
    }
}

crate::text::serde_as_text!(QuotaPeriod);

#[cfg(feature = "schema")]
impl schemars::JsonSchema for QuotaPeriod {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "QuotaPeriod".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 32,
            "pattern": quota_period_pattern(),
            "description": "calendarMonth, or a duration such as 24h or 720h.",
        })
    }
}

/// What one request costs. Written as absent (1), `{queryProduct: [a, b],
/// separator}` or `{header: X-Units}`, as in the CRD.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "QuotaCostFields", into = "QuotaCostFields")]
pub enum QuotaCost {
    #[default]
    One,
    /// The product of the element counts of these query parameters, each
    /// value split at `separator` (a Distance Matrix's origins ×
    /// destinations); a parameter absent or empty counts 1.
    QueryProduct {
        params: Vec<String>,
        separator: String,
    },
    /// A request header holding the cost as a whole number; absent, 1.
    Header(http::HeaderName),
}

impl QuotaCost {
    pub fn is_one(&self) -> bool {
        *self == QuotaCost::One
    }
}

pub const DEFAULT_COST_SEPARATOR: &str = "|";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct QuotaCostFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query_product: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    separator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
}

impl TryFrom<QuotaCostFields> for QuotaCost {
    type Error = String;

    fn try_from(f: QuotaCostFields) -> Result<Self, String> {
        match (f.query_product, f.separator, f.header) {
            (None, None, None) => Ok(QuotaCost::One),
            (Some(params), separator, None) => Ok(QuotaCost::QueryProduct {
                params,
                separator: separator.unwrap_or_else(|| DEFAULT_COST_SEPARATOR.into()),
            }),
            (None, None, Some(h)) => http::HeaderName::from_bytes(h.as_bytes())
                .map(QuotaCost::Header)
                .map_err(|_| format!("header: {h:?} is not a header name")),
            (None, Some(_), _) => Err("separator applies only with queryProduct".into()),
            _ => Err("set one of queryProduct, header".into()),
        }
    }
}

impl From<QuotaCost> for QuotaCostFields {
    fn from(cost: QuotaCost) -> Self {
        let mut f = QuotaCostFields {
            query_product: None,
            separator: None,
            header: None,
        };
        match cost {
            QuotaCost::One => {}
            QuotaCost::QueryProduct { params, separator } => {
                f.query_product = Some(params);
                f.separator = Some(separator);
            }
            QuotaCost::Header(h) => f.header = Some(h.as_str().to_owned()),
        }
        f
    }
}

/// What happens to a request that does not fit in what is left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum WhenExhausted {
    /// Answer 429 `quota-exhausted`, `Retry-After` at the period's end.
    #[default]
    Reject,
    /// Send it anyway and count it (the alerts say so).
    Warn,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::Timestamp;

    fn at(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().unix_seconds()
    }

    #[test]
    fn windows_of_durations_start_at_the_epoch() {
        let day: QuotaPeriod = "24h".parse().unwrap();
        let w = day.window_at(at("2026-12-07T15:30:00Z"));
        assert_eq!(
            (w.start, w.end),
            (at("2026-12-07T00:00:00Z"), at("2026-12-08T00:00:00Z"))
        );
        let hour: QuotaPeriod = "1h".parse().unwrap();
        let w = hour.window_at(at("2026-12-07T15:00:00Z"));
        assert_eq!(
            w.start,
            at("2026-12-07T15:00:00Z"),
            "a window includes its start"
        );
    }

    #[test]
    fn calendar_months_have_their_own_lengths() {
        let month = QuotaPeriod::CalendarMonth;
        for (now, start, end) in [
            (
                "2026-12-07T15:30:00Z",
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            (
                "2028-02-29T23:59:59Z",
                "2028-02-01T00:00:00Z",
                "2028-03-01T00:00:00Z",
            ),
            (
                "2027-02-01T00:00:00Z",
                "2027-02-01T00:00:00Z",
                "2027-03-01T00:00:00Z",
            ),
            (
                "2026-04-30T12:00:00Z",
                "2026-04-01T00:00:00Z",
                "2026-05-01T00:00:00Z",
            ),
        ] {
            let w = month.window_at(at(now));
            assert_eq!((w.start, w.end), (at(start), at(end)), "{now}");
        }
    }

    #[test]
    fn periods_and_costs_read_as_written() {
        assert_eq!("calendarMonth".parse(), Ok(QuotaPeriod::CalendarMonth));
        assert_eq!(QuotaPeriod::CalendarMonth.to_string(), "calendarMonth");
        assert_eq!("720h".parse::<QuotaPeriod>().unwrap().to_string(), "720h");
        assert!(
            "monthly"
                .parse::<QuotaPeriod>()
                .unwrap_err()
                .to_string()
                .contains("calendarMonth")
        );
        let pattern = regex::Regex::new(&quota_period_pattern()).unwrap();
        assert!(pattern.is_match("calendarMonth") && pattern.is_match("24h"));
        assert!(!pattern.is_match("month") && !pattern.is_match("24h calendarMonth"));

        let cost: QuotaCost =
            serde_yaml_ng::from_str("{queryProduct: [origins, destinations]}").unwrap();
        assert_eq!(
            cost,
            QuotaCost::QueryProduct {
                params: vec!["origins".into(), "destinations".into()],
                separator: "|".into()
            }
        );
        let header: QuotaCost = serde_yaml_ng::from_str("{header: X-Units}").unwrap();
        assert_eq!(
            header,
            QuotaCost::Header(http::HeaderName::from_static("x-units"))
        );
        for bad in [
            "{separator: ','}",
            "{header: X-Units, queryProduct: [a]}",
            "{header: 'a b'}",
        ] {
            assert!(serde_yaml_ng::from_str::<QuotaCost>(bad).is_err(), "{bad}");
        }
        let quota: QuotaConfig =
            serde_yaml_ng::from_str("{name: q, limit: 10, per: calendarMonth}").unwrap();
        assert_eq!(
            (quota.cost.clone(), quota.warn_at.clone()),
            (QuotaCost::One, vec![50, 80])
        );
        assert_eq!(quota.when_exhausted, WhenExhausted::Reject);
        let again: QuotaConfig =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&quota).unwrap()).unwrap();
        assert_eq!(again, quota);
    }
}
