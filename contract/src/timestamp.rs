//! RFC 3339 timestamps (`2026-12-01T00:00:00Z`), as Kubernetes writes them.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, written in RFC 3339 form with `Z` or a numeric offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (may be negative for dates before 1970).
    unix_seconds: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 timestamp (use e.g. 2026-12-01T00:00:00Z)")]
pub struct ParseTimestampError(String);

impl Timestamp {
    pub fn from_unix_seconds(unix_seconds: i64) -> Self {
        Self { unix_seconds }
    }
    pub fn unix_seconds(self) -> i64 {
        self.unix_seconds
    }
    pub fn to_system_time(self) -> SystemTime {
        if self.unix_seconds >= 0 {
            UNIX_EPOCH + Duration::from_secs(self.unix_seconds as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.unix_seconds.unsigned_abs())
        }
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The calendar month (UTC) holding the instant `unix_seconds`: the Unix
/// seconds of its first midnight and of the next month's.
pub(crate) fn month_around(unix_seconds: i64) -> (i64, i64) {
    let (year, month, _) = civil_from_days(unix_seconds.div_euclid(86_400));
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    (
        days_from_civil(year, month, 1) * 86_400,
        days_from_civil(next_year, next_month, 1) * 86_400,
    )
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

impl FromStr for Timestamp {
    type Err = ParseTimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseTimestampError(s.to_owned());
        let b = s.as_bytes();
        let num = |range: std::ops::Range<usize>| -> Result<u32, ParseTimestampError> {
            let part = s.get(range).ok_or_else(err)?;
            if part.bytes().all(|c| c.is_ascii_digit()) {
                part.parse().map_err(|_| err())
            } else {
                Err(err())
            }
        };
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return Err(err());
        }
        if b[13] != b':' || b[16] != b':' {
            return Err(err());
        }
        let (year, month, day) = (i64::from(num(0..4)?), num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return Err(err());
        }
        let mut rest = &s[19..];
        if let Some(after_dot) = rest.strip_prefix('.') {
            let digits = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err());
            }
            rest = &after_dot[digits..];
        }
        let offset_seconds: i64 = match rest {
            "Z" | "z" => 0,
            _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
                let sign = match rest.as_bytes()[0] {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return Err(err()),
                };
                let oh = num(s.len() - 5..s.len() - 3)?;
                let om = num(s.len() - 2..s.len())?;
                if oh > 23 || om > 59 {
                    return Err(err());
                }
                sign * i64::from(oh * 3600 + om * 60)
            }
            _ => return Err(err()),
        };
        let days = days_from_civil(year, month, day);
        let unix_seconds =
            days * 86_400 + i64::from(hour * 3600 + minute * 60 + second.min(59)) - offset_seconds;
        Ok(Timestamp { unix_seconds })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.unix_seconds.div_euclid(86_400);
        let secs = self.unix_seconds.rem_euclid(86_400);
        let (y, mo, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

crate::text::string_schema!(Timestamp, "Timestamp", { "format": "date-time", "description": "An RFC 3339 timestamp such as 2026-12-01T00:00:00Z." });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_and_offsets() {
        let t: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        assert_eq!(t.unix_seconds(), 1_796_083_200);
        let offset: Timestamp = "2026-12-01T01:30:00+01:30".parse().unwrap();
        assert_eq!(offset, t);
        let frac: Timestamp = "2026-12-01T00:00:00.123456Z".parse().unwrap();
        assert_eq!(frac, t);
        assert_eq!(
            "1970-01-01T00:00:00Z"
                .parse::<Timestamp>()
                .unwrap()
                .unix_seconds(),
            0
        );
        assert_eq!(
            "2024-02-29T12:00:00-00:00"
                .parse::<Timestamp>()
                .unwrap()
                .to_string(),
            "2024-02-29T12:00:00Z"
        );
    }

    #[test]
    fn round_trips_through_display() {
        for secs in [0, 951_782_400, 1_796_083_200, 4_102_444_799, -86_400] {
            let t = Timestamp::from_unix_seconds(secs);
            assert_eq!(t.to_string().parse::<Timestamp>().unwrap(), t);
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "2026-12-01",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-12-01T00:00:00",
            "2026-12-01T24:00:00Z",
            "2026-12-01T00:00:00+0100",
            "tomorrow",
            "2026-12-01T00:00:00.Z",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
    }
}
