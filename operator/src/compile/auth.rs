//! `spec.auth` → the credentials the sidecar adds.

use sluice_contract::config::{AuthConfig, PreviousSecret, Timestamp, defaults};

use super::Compiler;
use crate::resource::{AuthSpec, SecretKeyRef};

/// `None` when the spec sets no kind or several (the rule table reports it).
pub(super) fn compile(c: &mut Compiler<'_>, auth: &AuthSpec) -> Option<AuthConfig> {
    if let Some(h) = &auth.header {
        let path = "spec.auth.header";
        return Some(AuthConfig::Header {
            name: h.name.clone(),
            secret: c.secret_file(&format!("{path}.secretRef"), &h.secret_ref),
            previous: previous(
                c,
                &format!("{path}.previousSecretRef"),
                &h.previous_secret_ref,
                h.previous_valid_until,
            ),
        });
    }
    if let Some(b) = &auth.bearer {
        let path = "spec.auth.bearer";
        return Some(AuthConfig::Bearer {
            secret: c.secret_file(&format!("{path}.secretRef"), &b.secret_ref),
            previous: previous(
                c,
                &format!("{path}.previousSecretRef"),
                &b.previous_secret_ref,
                b.previous_valid_until,
            ),
        });
    }
    if let Some(b) = &auth.basic {
        let path = "spec.auth.basic";
        return Some(AuthConfig::Basic {
            username: c.secret_file(&format!("{path}.usernameRef"), &b.username_ref),
            password: c.secret_file(&format!("{path}.passwordRef"), &b.password_ref),
            previous_password: previous(
                c,
                &format!("{path}.previousPasswordRef"),
                &b.previous_password_ref,
                b.previous_valid_until,
            ),
        });
    }
    let o = auth.oauth2_client_credentials.as_ref()?;
    let path = "spec.auth.oauth2ClientCredentials";
    Some(AuthConfig::Oauth2ClientCredentials {
        token_url: o.token_url.clone(),
        client_id: c.secret_file(&format!("{path}.clientIdRef"), &o.client_id_ref),
        client_secret: c.secret_file(&format!("{path}.clientSecretRef"), &o.client_secret_ref),
        scopes: o.scopes.clone(),
        audience: o.audience.clone(),
        refresh_before: o.refresh_before.unwrap_or_else(defaults::refresh_before),
        client_auth: o.client_auth.unwrap_or_default(),
    })
}

/// The key being rotated out; the table checks that both fields come together.
fn previous(
    c: &mut Compiler<'_>,
    path: &str,
    reference: &Option<SecretKeyRef>,
    valid_until: Option<Timestamp>,
) -> Option<PreviousSecret> {
    match (reference, valid_until) {
        (Some(r), Some(until)) => Some(PreviousSecret {
            secret: c.secret_file(path, r),
            valid_until: until,
        }),
        _ => None,
    }
}
