//! What one request costs a quota (pure): 1, the product of query
//! parameters' element counts, or a number the app put in a header.

use http::HeaderMap;

use crate::config::QuotaCost;

/// Why a request's cost cannot be read; the message names the header.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("header {header}: {value:?} is not a whole number of quota units")]
pub struct CostError {
    pub header: String,
    pub value: String,
}

/// The cost of a request with this query string and these headers.
pub fn cost_of(
    rule: &QuotaCost,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<u64, CostError> {
    match rule {
        QuotaCost::One => Ok(1),
        QuotaCost::QueryProduct { params, separator } => Ok(params
            .iter()
            .map(|name| elements(query.unwrap_or(""), name, separator).max(1))
            .fold(1u64, u64::saturating_mul)),
        QuotaCost::Header(name) => {
            let Some(value) = headers.get(name) else {
                return Ok(1);
            };
            let text = value.to_str().unwrap_or("").trim();
            // Digits only: "+5", "1e3" and "-1" are not a cost.
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CostError {
                    header: name.as_str().to_owned(),
                    value: String::from_utf8_lossy(value.as_bytes())
                        .chars()
                        .take(64)
                        .collect(),
                });
            }
            // More digits than a u64 holds: more than any quota's limit.
            Ok(text.parse().unwrap_or(u64::MAX))
        }
    }
}

/// Non-empty elements of every `name=` value in `query`, each value
/// percent-decoded and split at `separator` (`origins=a|b&origins=c` is 3).
fn elements(query: &str, name: &str, separator: &str) -> u64 {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == name)
        .map(|(_, value)| {
            value
                .split(separator)
                .filter(|part| !part.trim().is_empty())
                .count() as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> QuotaCost {
        QuotaCost::QueryProduct {
            params: vec!["origins".into(), "destinations".into()],
            separator: "|".into(),
        }
    }

    #[test]
    fn a_distance_matrix_costs_its_elements() {
        let none = HeaderMap::new();
        let q = "origins=Paris|Lyon|Nice&destinations=a%7Cb%7Cc%7Cd&key=x";
        assert_eq!(cost_of(&product(), Some(q), &none), Ok(12));
        assert_eq!(
            cost_of(
                &product(),
                Some("origins=a&origins=b|c&destinations=d"),
                &none
            ),
            Ok(3),
            "repeated parameters add up"
        );
        assert_eq!(
            cost_of(&product(), Some("origins=a||b|&destinations="), &none),
            Ok(2),
            "empty elements and an empty parameter count nothing, a factor at least 1"
        );
        assert_eq!(cost_of(&product(), None, &none), Ok(1));
        assert_eq!(cost_of(&QuotaCost::One, Some(q), &none), Ok(1));
    }

    #[test]
    fn a_header_cost_is_a_whole_number() {
        let rule = QuotaCost::Header(http::HeaderName::from_static("x-units"));
        let mut headers = HeaderMap::new();
        assert_eq!(cost_of(&rule, None, &headers), Ok(1), "absent: 1");
        for (value, cost) in [("7", 7), (" 0 ", 0), ("99999999999999999999999", u64::MAX)] {
            headers.insert("x-units", value.parse().unwrap());
            assert_eq!(cost_of(&rule, None, &headers), Ok(cost), "{value}");
        }
        for bad in ["-1", "1.5", "+3", "ten", ""] {
            headers.insert("x-units", bad.parse().unwrap());
            let error = cost_of(&rule, None, &headers).unwrap_err();
            assert!(error.to_string().starts_with("header x-units: "), "{error}");
        }
    }
}
