//! `PathPattern`: literal segments, `*` for exactly one segment and a final
//! `**` for whatever remains (zero or more segments).

use std::fmt;
use std::str::FromStr;

use crate::text::{serde_as_text, string_schema};

#[derive(Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("must start with '/'")]
    NoLeadingSlash,
    #[error("'**' may only be the last segment")]
    RestNotLast,
    #[error("'*' must be a whole segment (got {0:?})")]
    PartialWildcard(String),
    #[error("must not contain a query ('?') or fragment ('#')")]
    QueryOrFragment,
}

/// The grammar of [`PathPattern`] as a regular expression, for the CRD
/// schema; a test holds the two to the same verdicts.
pub const PATH_PATTERN: &str = r"^(/\*\*|(/([^/?#*]*|\*))+(/\*\*)?)$";

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let rest = pattern
            .strip_prefix('/')
            .ok_or(PatternError::NoLeadingSlash)?;
        if pattern.contains(['?', '#']) {
            return Err(PatternError::QueryOrFragment);
        }
        let raw: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(raw.len());
        for (i, seg) in raw.iter().enumerate() {
            segments.push(match *seg {
                "**" if i + 1 == raw.len() => Segment::Rest,
                "**" => return Err(PatternError::RestNotLast),
                "*" => Segment::One,
                s if s.contains('*') => return Err(PatternError::PartialWildcard(s.to_owned())),
                s => Segment::Literal(s.to_owned()),
            });
        }
        Ok(Self {
            text: pattern.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `path` is the raw request path without the query, compared byte for byte.
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match segment {
                Segment::Rest => return true,
                Segment::One => match parts.next() {
                    Some(part) if !part.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(literal) => match parts.next() {
                    Some(part) if part == literal => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

impl FromStr for PathPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

serde_as_text!(PathPattern);
string_schema!(PathPattern, "PathPattern", { "maxLength": 1024, "pattern": PATH_PATTERN, "description": "A path pattern: `*` matches one segment, a final `**` the rest, e.g. `/v1/shipments/*/tracking`." });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert_eq!(PathPattern::parse("v1"), Err(PatternError::NoLeadingSlash));
        assert_eq!(PathPattern::parse("/**/x"), Err(PatternError::RestNotLast));
        assert!(matches!(
            PathPattern::parse("/v1/ship*"),
            Err(PatternError::PartialWildcard(_))
        ));
        assert_eq!(
            PathPattern::parse("/v1?x=1"),
            Err(PatternError::QueryOrFragment)
        );
    }

    #[test]
    fn single_and_rest_wildcards() {
        let p = PathPattern::parse("/v1/shipments/*/tracking").unwrap();
        assert!(p.matches("/v1/shipments/123/tracking"));
        assert!(!p.matches("/v1/shipments//tracking"));
        assert!(!p.matches("/v1/shipments/123/tracking/x"));
        assert!(!p.matches("/v1/shipments/123"));
        let rest = PathPattern::parse("/v1/**").unwrap();
        assert!(rest.matches("/v1"));
        assert!(rest.matches("/v1/a/b/c"));
        assert!(!rest.matches("/v2/a"));
        let root = PathPattern::parse("/**").unwrap();
        assert!(root.matches("/anything/at/all"));
        let exact = PathPattern::parse("/v1/charges").unwrap();
        assert!(exact.matches("/v1/charges"));
        assert!(!exact.matches("/v1/charges/"));
        assert!(!exact.matches("/v1/Charges"));
    }

    #[test]
    fn encoded_paths_compare_raw() {
        let p = PathPattern::parse("/files/a%2Fb").unwrap();
        assert!(p.matches("/files/a%2Fb"));
        assert!(!p.matches("/files/a/b"));
    }

    /// The schema's regular expression and the parser agree on every short
    /// string over the characters that matter.
    #[test]
    fn the_schema_pattern_and_the_parser_agree() {
        let regex = regex::Regex::new(PATH_PATTERN).unwrap();
        let alphabet = ['/', '*', 'a', '?', '#', '.'];
        let mut checked = 0;
        for len in 0..=6u32 {
            for n in 0..alphabet.len().pow(len) {
                let mut text = String::new();
                let mut rest = n;
                for _ in 0..len {
                    text.push(alphabet[rest % alphabet.len()]);
                    rest /= alphabet.len();
                }
                assert_eq!(
                    regex.is_match(&text),
                    PathPattern::parse(&text).is_ok(),
                    "{text:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 50_000);
    }
}
