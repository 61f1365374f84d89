//! `Method`: an upper-case HTTP method name (RFC 9110 token), as rules match it.

use std::fmt;
use std::str::FromStr;

use crate::text::{serde_as_text, string_schema};

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Method(http::Method);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an upper-case HTTP method such as GET or POST")]
pub struct ParseMethodError(pub String);

/// What the CRD's schema says of a method, the same rule as [`Method::from_str`].
pub const METHOD_PATTERN: &str = r"^[A-Z0-9!#$%&'*+.^_`|~-]+$";

impl Method {
    pub fn get(&self) -> &http::Method {
        &self.0
    }
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl FromStr for Method {
    type Err = ParseMethodError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper_token = !s.is_empty()
            && s.len() <= 32
            && s.bytes().all(|c| {
                c.is_ascii_uppercase() || c.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&c)
            });
        match http::Method::from_bytes(s.as_bytes()) {
            Ok(method) if upper_token => Ok(Self(method)),
            _ => Err(ParseMethodError(s.to_owned())),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

serde_as_text!(Method);
string_schema!(Method, "Method", { "maxLength": 32, "pattern": METHOD_PATTERN, "description": "An upper-case HTTP method, e.g. GET or POST." });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_case_tokens_only() {
        assert_eq!("POST".parse::<Method>().unwrap().get(), http::Method::POST);
        assert!("PROPFIND".parse::<Method>().is_ok());
        for bad in ["get", "Get", "", "GE T", "GET\n"] {
            assert!(bad.parse::<Method>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_schema_pattern_and_the_parser_agree() {
        let regex = regex::Regex::new(METHOD_PATTERN).unwrap();
        for byte in 0..=255u8 {
            let text = format!("GE{}", byte as char);
            assert_eq!(
                regex.is_match(&text),
                text.parse::<Method>().is_ok(),
                "{text:?}"
            );
        }
    }
}
