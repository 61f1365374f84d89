//! Durations in the Kubernetes string form (`500ms`, `30s`, `5m`, `1h30m`, `72h`).
//!
//! This is Go's `time.ParseDuration` grammar without negative values, which is
//! what `kubectl` users already write in every other manifest.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A non-negative duration written as `30s`, `5m`, `1h30m` or `250ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

/// Why a string is not a duration; the message quotes the input and hints at the form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a duration (use a number and a unit such as 500ms, 30s, 1m or 72h)")]
pub struct ParseDurationError {
    input: String,
}

const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || ParseDurationError {
            input: input.to_owned(),
        };
        if input == "0" {
            return Ok(Duration::default());
        }
        let mut rest = input;
        if rest.is_empty() {
            return Err(err());
        }
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            if number_len == 0 {
                return Err(err());
            }
            let (number, after) = rest.split_at(number_len);
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            let scale = UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, scale)| *scale)
                .ok_or_else(err)?;
            total_nanos = total_nanos
                .checked_add(scaled(number, scale).ok_or_else(err)?)
                .ok_or_else(err)?;
            rest = after;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err())?;
        let nanos = (total_nanos % 1_000_000_000) as u32;
        Ok(Duration(std::time::Duration::new(secs, nanos)))
    }
}

/// `number` (digits with at most one '.') times `scale` nanoseconds, truncated.
fn scaled(number: &str, scale: u128) -> Option<u128> {
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) if !f.contains('.') => (w, f),
        Some(_) => return None,
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(scale)?;
    let mut place = scale;
    for digit in frac.bytes() {
        place /= 10;
        nanos = nanos.checked_add(u128::from(digit - b'0') * place)?;
    }
    Some(nanos)
}

impl fmt::Display for Duration {
    /// Canonical form: the largest units first, e.g. `1h30m`, `90s` → `1m30s`, `250ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        let secs = d.as_secs();
        let sub_nanos = d.subsec_nanos();
        if secs == 0 {
            return if sub_nanos.is_multiple_of(1_000_000) {
                write!(f, "{}ms", sub_nanos / 1_000_000)
            } else if sub_nanos.is_multiple_of(1_000) {
                write!(f, "{}us", sub_nanos / 1_000)
            } else {
                write!(f, "{sub_nanos}ns")
            };
        }
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 || sub_nanos > 0 {
            if sub_nanos == 0 {
                write!(f, "{s}s")?;
            } else {
                let frac = format!("{sub_nanos:09}");
                write!(f, "{s}.{}s", frac.trim_end_matches('0'))?;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 30s, 5m or 72h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::default())
                } else {
                    Err(E::custom(format!(
                        "{v} is not a duration (add a unit, e.g. {v}s or {v}ms)"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!("{v} is not a duration (use e.g. 30s)")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(E::custom(format!("{v} is not a duration (use e.g. 1.5s)")))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// The grammar of [`Duration`] as a regular expression, for the CRD schema.
pub const DURATION_PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$";

crate::text::string_schema!(Duration, "Duration", { "maxLength": 32, "pattern": DURATION_PATTERN, "description": "A duration such as 500ms, 30s, 5m, 1h30m or 72h." });

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> std::time::Duration {
        s.parse::<Duration>().unwrap().0
    }

    #[test]
    fn parses_kubernetes_forms() {
        assert_eq!(d("30s"), std::time::Duration::from_secs(30));
        assert_eq!(d("5m"), std::time::Duration::from_secs(300));
        assert_eq!(d("72h"), std::time::Duration::from_secs(72 * 3600));
        assert_eq!(d("1h30m"), std::time::Duration::from_secs(5400));
        assert_eq!(d("250ms"), std::time::Duration::from_millis(250));
        assert_eq!(d("1.5s"), std::time::Duration::from_millis(1500));
        assert_eq!(d(".5s"), std::time::Duration::from_millis(500));
        assert_eq!(d("0"), std::time::Duration::ZERO);
        assert_eq!(d("10us"), std::time::Duration::from_micros(10));
    }

    #[test]
    fn rejects_prose_with_a_hint() {
        for bad in [
            "1 minute", "", "s", "10", "1.2.3s", "-1s", "5 m", "1d", "m5", "1.s.",
        ] {
            let err = bad.parse::<Duration>().unwrap_err().to_string();
            assert!(err.contains("is not a duration"), "{bad}: {err}");
        }
        assert_eq!(
            "1 minute".parse::<Duration>().unwrap_err().to_string(),
            "\"1 minute\" is not a duration (use a number and a unit such as 500ms, 30s, 1m or 72h)"
        );
    }

    #[test]
    fn displays_canonically_and_round_trips() {
        for (input, shown) in [
            ("90s", "1m30s"),
            ("1h", "1h"),
            ("250ms", "250ms"),
            ("1.5s", "1.5s"),
            ("0s", "0s"),
            ("72h", "72h"),
        ] {
            let parsed: Duration = input.parse().unwrap();
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(shown.parse::<Duration>().unwrap(), parsed);
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        assert!("99999999999999999999999h".parse::<Duration>().is_err());
    }
}
