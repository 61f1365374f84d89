//! `HttpUrl`: an absolute `http://` or `https://` URL without a query, as
//! an upstream's base URL, a token endpoint or a webhook's `forwardTo`.

use std::fmt;
use std::str::FromStr;

use crate::text::{serde_as_text, string_schema};
use http::Uri;
use http::uri::{Authority, Scheme};

/// Checked when read; the text is kept as written, for `/config` and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    text: String,
    uri: Uri,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an absolute http:// or https:// URL without a query")]
pub struct ParseUrlError(pub String);

/// The grammar of [`HttpUrl`] (RFC 3986 characters, no query or fragment):
/// the CRD schema's pattern and the first check of [`HttpUrl::from_str`].
pub const URL_PATTERN: &str =
    r"^https?://[A-Za-z0-9._~%!$&'()*+,;=:@\[\]-]+(/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?$";

fn grammar() -> &'static regex::Regex {
    static GRAMMAR: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(URL_PATTERN).expect("a valid pattern"));
    &GRAMMAR
}

impl HttpUrl {
    pub fn as_str(&self) -> &str {
        &self.text
    }
    pub fn uri(&self) -> &Uri {
        &self.uri
    }
    pub fn is_https(&self) -> bool {
        self.uri.scheme() == Some(&Scheme::HTTPS)
    }
    pub fn scheme(&self) -> &Scheme {
        self.uri.scheme().expect("checked when parsed")
    }
    pub fn authority(&self) -> &Authority {
        self.uri.authority().expect("checked when parsed")
    }
    /// The path without a trailing `/`: what an app's path is appended to.
    pub fn prefix(&self) -> &str {
        self.uri.path().trim_end_matches('/')
    }
}

impl FromStr for HttpUrl {
    type Err = ParseUrlError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ParseUrlError(text.to_owned());
        if !grammar().is_match(text) {
            return Err(bad());
        }
        let uri: Uri = text.parse().map_err(|_| bad())?;
        let scheme = uri.scheme().ok_or_else(bad)?;
        if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
            return Err(bad());
        }
        if uri.authority().is_none_or(|a| a.host().is_empty()) || uri.query().is_some() {
            return Err(bad());
        }
        Ok(Self {
            text: text.to_owned(),
            uri,
        })
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

serde_as_text!(HttpUrl);
string_schema!(HttpUrl, "HttpUrl", { "maxLength": 2048, "pattern": URL_PATTERN, "description": "An absolute http:// or https:// URL without a query or fragment." });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_text_and_splits_the_parts() {
        let url: HttpUrl = "https://api.example:8443/v2/".parse().unwrap();
        assert_eq!(url.as_str(), "https://api.example:8443/v2/");
        assert_eq!(url.authority().as_str(), "api.example:8443");
        assert_eq!(url.prefix(), "/v2");
        assert!(url.is_https());
        for good in [
            "http://127.0.0.1:8080/hooks/carrier",
            "https://[::1]:443",
            "https://api.stripe.com",
            "https://x.example/v1/a%20b/",
        ] {
            assert!(good.parse::<HttpUrl>().is_ok(), "{good}");
        }
    }

    #[test]
    fn refuses_what_cannot_be_a_base() {
        for bad in [
            "ftp://x",
            "/v1",
            "https://x/?a=1",
            "https://x/#top",
            "api.example",
            "http://",
            "",
            "https://exa mple",
            "https://x/a b",
        ] {
            assert!(bad.parse::<HttpUrl>().is_err(), "{bad}");
        }
    }
}
