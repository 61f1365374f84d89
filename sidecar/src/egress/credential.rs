//! A static credential (a key in a header, a bearer token, Basic) and the
//! header it makes from a secret value: what `auth` injects and what
//! `rotation` orders while keys rotate.

use base64::Engine;
use http::header::{self, HeaderName, HeaderValue};

use super::error::ProxyError;
use crate::secrets::{Secret, SecretValue};

/// A static credential: how to turn secret file contents into a header.
#[derive(Clone, Debug)]
pub enum Static {
    Header(HeaderName),
    Bearer,
    Basic { username: Secret },
}

impl Static {
    /// The current username, for Basic.
    pub(super) fn username(&self) -> Option<SecretValue> {
        match self {
            Static::Basic { username } => Some(username.current()),
            _ => None,
        }
    }
}

/// The credential header for a secret value (and, for Basic, a username).
pub(super) fn build_header(
    kind: &Static,
    value: &SecretValue,
    username: Option<&SecretValue>,
    path: &std::path::Path,
) -> Result<(HeaderName, HeaderValue), ProxyError> {
    let (name, text) = match kind {
        Static::Header(name) => (name.clone(), value.expose().to_owned()),
        Static::Bearer => (header::AUTHORIZATION, format!("Bearer {}", value.expose())),
        Static::Basic { .. } => {
            let user = username.map_or("", SecretValue::expose);
            let pair = format!("{user}:{}", value.expose());
            (
                header::AUTHORIZATION,
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ),
            )
        }
    };
    let mut header_value = HeaderValue::from_str(&text).map_err(|_| {
        // Name the file, never the value.
        ProxyError::Credentials(format!(
            "secret file {} holds characters not allowed in a header",
            path.display()
        ))
    })?;
    header_value.set_sensitive(true);
    Ok((name, header_value))
}
