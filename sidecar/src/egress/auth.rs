//! Credential injection: the app never holds the provider's secret.
//!
//! Static keys come from watched files; while they rotate, `rotation.rs`
//! picks the order keys are tried in (a 401 is sent again with a fallback,
//! and counted), so a key the provider has not activated yet, or files
//! written one after the other, cost no failed request.
//! OAuth2 client-credentials tokens are cached and refreshed ahead of expiry,
//! one refresh at a time.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use futures_util::future::Either;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::body::{BodyTimeouts, ProxyBody, try_clone_request};
use super::client::UpstreamClient;
use super::credential::Static;
use super::error::ProxyError;
use super::rotation::{Key, KeyRing, Plan};
use super::route::RequestContext;
use super::step::{Next, PipelineResult, Step};
use crate::config::{AuthConfig, ClientAuthMethod};
use crate::metrics::{
    Fallback, FallbackLabels, IntegrationLabels, Metrics, Name, TokenRefresh, TokenRefreshLabels,
};
use crate::secrets::{Secret, SecretError, SecretStore};

#[derive(Clone, Debug)]
pub struct Rotating {
    current: Secret,
    previous: Option<(Secret, SystemTime)>,
}

/// The credentials of one integration.
#[derive(Clone)]
pub enum Credentials {
    Static {
        kind: Static,
        secret: Rotating,
        keys: Arc<KeyRing>,
    },
    OAuth2(Arc<TokenSource>),
}

impl Credentials {
    pub fn new(
        config: &AuthConfig,
        store: &SecretStore,
        integration: &Name,
        client: UpstreamClient,
        token_timeout: Duration,
        rotation_grace: Duration,
        metrics: Metrics,
    ) -> Result<Self, CredentialsError> {
        let load = |file: &crate::config::SecretFile| store.load(file.path(), integration);
        // At 0 from the start, like every series a panel or alert reads.
        match config {
            AuthConfig::Oauth2ClientCredentials { .. } => {
                for &result in TokenRefresh::ALL {
                    metrics
                        .token_refresh
                        .get_or_create_owned(&TokenRefreshLabels {
                            integration: integration.clone(),
                            result,
                        });
                }
            }
            _ => {
                for &result in Fallback::ALL {
                    metrics
                        .credential_fallback
                        .get_or_create_owned(&FallbackLabels {
                            integration: integration.clone(),
                            result,
                        });
                }
            }
        }
        let keys = || {
            let active = metrics
                .credential_fallback_active
                .get_or_create(&IntegrationLabels {
                    integration: integration.clone(),
                })
                .clone();
            Arc::new(KeyRing::new(rotation_grace, integration.clone(), active))
        };
        let rotating = |current, previous: &Option<crate::config::PreviousSecret>| {
            Ok::<_, CredentialsError>(Rotating {
                current,
                previous: match previous {
                    Some(p) => Some((load(&p.secret)?, p.valid_until.to_system_time())),
                    None => None,
                },
            })
        };
        Ok(match config {
            AuthConfig::Header {
                name,
                secret,
                previous,
            } => Credentials::Static {
                kind: Static::Header(
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| CredentialsError::HeaderName(name.clone()))?,
                ),
                secret: rotating(load(secret)?, previous)?,
                keys: keys(),
            },
            AuthConfig::Bearer { secret, previous } => Credentials::Static {
                kind: Static::Bearer,
                secret: rotating(load(secret)?, previous)?,
                keys: keys(),
            },
            AuthConfig::Basic {
                username,
                password,
                previous_password,
            } => Credentials::Static {
                kind: Static::Basic {
                    username: load(username)?,
                },
                secret: rotating(load(password)?, previous_password)?,
                keys: keys(),
            },
            AuthConfig::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scopes,
                audience,
                refresh_before,
                client_auth,
            } => Credentials::OAuth2(Arc::new(TokenSource {
                token_url: token_url.uri().clone(),
                client_id: load(client_id)?,
                client_secret: load(client_secret)?,
                scopes: scopes.join(" "),
                audience: audience.clone(),
                refresh_before: refresh_before.get(),
                client_auth: *client_auth,
                client,
                timeout: token_timeout,
                cached: Mutex::new(None),
                refresh: tokio::sync::Mutex::new(()),
                integration: integration.clone(),
                metrics,
            })),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("auth.header.name {0:?} is not a valid header name")]
    HeaderName(String),
}

struct CachedToken {
    header: HeaderValue,
    refresh_at: Instant,
    expires_at: Instant,
}

/// OAuth2 client-credentials tokens (RFC 6749 §4.4).
pub struct TokenSource {
    token_url: http::Uri,
    client_id: Secret,
    client_secret: Secret,
    scopes: String,
    audience: Option<String>,
    refresh_before: Duration,
    client_auth: ClientAuthMethod,
    client: UpstreamClient,
    timeout: Duration,
    cached: Mutex<Option<CachedToken>>,
    /// Held while a refresh is in flight: one refresh at a time.
    refresh: tokio::sync::Mutex<()>,
    integration: Name,
    metrics: Metrics,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenSource {
    fn fresh(&self, now: Instant) -> Option<HeaderValue> {
        let cached = self.cached.lock().expect("token lock poisoned");
        cached
            .as_ref()
            .filter(|t| now < t.refresh_at)
            .map(|t| t.header.clone())
    }

    fn count(&self, result: TokenRefresh) {
        self.metrics
            .token_refresh
            .get_or_create(&TokenRefreshLabels {
                integration: self.integration.clone(),
                result,
            })
            .inc();
    }

    /// Forgets the cached token (after the upstream refused it).
    pub fn invalidate(&self) {
        *self.cached.lock().expect("token lock poisoned") = None;
    }

    /// A valid `Authorization` value, refreshing when due. A failed refresh is
    /// logged and counted; a token that has not expired yet is still used.
    pub async fn authorization(&self) -> Result<HeaderValue, ProxyError> {
        if let Some(header) = self.fresh(Instant::now()) {
            return Ok(header);
        }
        let _guard = self.refresh.lock().await;
        if let Some(header) = self.fresh(Instant::now()) {
            return Ok(header);
        }
        match self.request_token().await {
            Ok((header, lifetime)) => {
                self.count(TokenRefresh::Success);
                let now = Instant::now();
                let refresh_in = lifetime
                    .saturating_sub(self.refresh_before)
                    .max(lifetime / 2);
                *self.cached.lock().expect("token lock poisoned") = Some(CachedToken {
                    header: header.clone(),
                    refresh_at: now + refresh_in,
                    expires_at: now + lifetime,
                });
                Ok(header)
            }
            Err(message) => {
                self.count(TokenRefresh::Error);
                tracing::error!(integration = %self.integration, error = %message, "OAuth2 token refresh failed");
                let cached = self.cached.lock().expect("token lock poisoned");
                match cached.as_ref() {
                    Some(t) if Instant::now() < t.expires_at => Ok(t.header.clone()),
                    _ => Err(ProxyError::TokenRefresh(message)),
                }
            }
        }
    }

    async fn request_token(&self) -> Result<(HeaderValue, Duration), String> {
        let request = self.token_request()?;
        let exchange = async {
            let response = self
                .client
                .request(request, BodyTimeouts::within(self.timeout))
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the token response: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                format!(
                    "no answer from the token endpoint within {:?}",
                    self.timeout
                )
            })??;
        parse_token_response(status, &body)
    }

    /// The token request (RFC 6749 §4.4.2), with the credentials where configured.
    fn token_request(&self) -> Result<Request<ProxyBody>, String> {
        let (id, secret) = (self.client_id.current(), self.client_secret.current());
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if !self.scopes.is_empty() {
            form.append_pair("scope", &self.scopes);
        }
        if let Some(audience) = &self.audience {
            form.append_pair("audience", audience);
        }
        let mut request = Request::post(self.token_url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json");
        match self.client_auth {
            ClientAuthMethod::Basic => {
                // RFC 6749 §2.3.1: form-encode each part before joining.
                let encode =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", encode(id.expose()), encode(secret.expose()));
                let mut value = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
                .map_err(|_| "client credentials are not valid header text".to_owned())?;
                value.set_sensitive(true);
                request = request.header(header::AUTHORIZATION, value);
            }
            ClientAuthMethod::RequestBody => {
                form.append_pair("client_id", id.expose());
                form.append_pair("client_secret", secret.expose());
            }
        }
        request
            .body(ProxyBody::full(Bytes::from(form.finish())))
            .map_err(|e| format!("building the token request: {e}"))
    }
}

/// The access token and its lifetime from a token endpoint's answer (RFC 6749 §5.1).
fn parse_token_response(
    status: StatusCode,
    body: &[u8],
) -> Result<(HeaderValue, Duration), String> {
    {
        if !status.is_success() {
            // The error body of a token endpoint (RFC 6749 §5.2) holds no secret.
            let detail: String = String::from_utf8_lossy(body).chars().take(200).collect();
            return Err(format!("token endpoint answered {status}: {detail}"));
        }
        let token: TokenResponse = serde_json::from_slice(body).map_err(|_| {
            "token response is not the expected JSON (access_token, token_type, expires_in)"
                .to_owned()
        })?;
        if let Some(kind) = &token.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(format!(
                "token_type {kind:?} is not supported (only Bearer)"
            ));
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {}", token.access_token))
            .map_err(|_| "access_token is not valid header text".to_owned())?;
        header.set_sensitive(true);
        Ok((
            header,
            Duration::from_secs(token.expires_in.unwrap_or(3600).max(1)),
        ))
    }
}

/// Pipeline step: sets the credential header on each attempt.
#[derive(Clone)]
pub struct AuthStep {
    credentials: Option<Credentials>,
    integration: Name,
    metrics: Metrics,
}

impl AuthStep {
    pub fn new(credentials: Option<Credentials>, integration: Name, metrics: Metrics) -> Self {
        Self {
            credentials,
            integration,
            metrics,
        }
    }
}

fn with_header(
    mut request: Request<ProxyBody>,
    (name, value): (HeaderName, HeaderValue),
) -> Request<ProxyBody> {
    // Whatever the app sent under this name is replaced: Sluice owns the
    // credential, in the trailers too (the well-known credential fields
    // are dropped from every trailer section already).
    if request.body().may_have_trailers() {
        let (parts, body) = request.into_parts();
        request = Request::from_parts(parts, body.without_trailer(&name));
    }
    request.headers_mut().insert(name, value);
    request
}

/// Sends `request` with a bearer token; a 401 fetches a new token and
/// tries once more.
async fn call_with_token<S: Next>(
    tokens: &TokenSource,
    request: Request<ProxyBody>,
    ctx: &RequestContext,
    next: &S,
) -> PipelineResult {
    let spare = try_clone_request(&request);
    // Lent while the token may be fetched, so that a retry gets the head
    // back even if the attempt times out here (`replay`).
    let (head, body) = request.into_parts();
    let head = ctx.replay.lend(head);
    let header = tokens.authorization().await?;
    let request = Request::from_parts(head.reclaim(), body);
    let response = next
        .call(with_header(request, (header::AUTHORIZATION, header)), ctx)
        .await?;
    match (response.status(), spare) {
        // A revoked or rotated token: fetch a new one and try once more.
        (StatusCode::UNAUTHORIZED, Some(spare)) => {
            tokens.invalidate();
            let header = tokens.authorization().await?;
            next.call(with_header(spare, (header::AUTHORIZATION, header)), ctx)
                .await
        }
        _ => Ok(response),
    }
}

impl Step for AuthStep {
    /// The common case, no credential or a static one with nothing rotating,
    /// returns the next step's own future: nothing of this step's is held
    /// per request, so its boxing copies a pointer, not a state machine
    /// holding the request twice (measured: 1.5 KB). The rest is boxed.
    fn call<S: Next>(
        &self,
        request: Request<ProxyBody>,
        ctx: &RequestContext,
        next: &S,
    ) -> impl Future<Output = PipelineResult> + Send {
        let plan = match &self.credentials {
            None => return Either::Left(next.call(request, ctx)),
            Some(Credentials::Static { kind, secret, keys }) => {
                let previous = rotation_window(secret);
                match keys.plan(kind, &secret.current, previous, Instant::now()) {
                    // Set in place: whatever the app sent under this name
                    // is replaced, Sluice owns the credential.
                    Ok(Plan::Quiet(header)) => {
                        return Either::Left(next.call(with_header(request, header), ctx));
                    }
                    Ok(Plan::Ordered(order)) => Ok(order),
                    Err(error) => Err(error),
                }
            }
            Some(Credentials::OAuth2(_)) => Ok(Vec::new()),
        };
        Either::Right(Box::pin(async move {
            match (&self.credentials, plan?) {
                (Some(Credentials::OAuth2(tokens)), _) => {
                    call_with_token(tokens, request, ctx, next).await
                }
                (Some(Credentials::Static { keys, .. }), order) => {
                    self.call_in_order(keys, order, request, ctx, next).await
                }
                (None, _) => next.call(request, ctx).await,
            }
        }))
    }
}

/// The previous key of a static credential, while it is still accepted.
fn rotation_window(secret: &Rotating) -> Option<&Secret> {
    secret
        .previous
        .as_ref()
        .filter(|(_, until)| SystemTime::now() < *until)
        .map(|(old, _)| old)
}

impl AuthStep {
    /// Sends with each key of `order` in turn while the provider answers
    /// 401 and the request can be sent again; tells `keys` which one it
    /// accepted.
    async fn call_in_order<S: Next>(
        &self,
        keys: &KeyRing,
        order: Vec<Key>,
        request: Request<ProxyBody>,
        ctx: &RequestContext,
        next: &S,
    ) -> PipelineResult {
        let count = |result: Fallback| {
            self.metrics
                .credential_fallback
                .get_or_create(&FallbackLabels {
                    integration: self.integration.clone(),
                    result,
                })
                .inc();
        };
        let mut order = order.into_iter();
        let mut key = order.next().expect("a plan has a key");
        let mut spare = if order.len() > 0 {
            try_clone_request(&request)
        } else {
            None
        };
        let mut response = next
            .call(with_header(request, key.header.clone()), ctx)
            .await?;
        let mut fell_back = false;
        loop {
            if response.status() != StatusCode::UNAUTHORIZED {
                keys.accepted(&key, Instant::now());
                if fell_back {
                    count(Fallback::Success);
                }
                return Ok(response);
            }
            let (Some(next_key), Some(request)) = (order.next(), spare.take()) else {
                if fell_back {
                    count(Fallback::Failure);
                }
                return Ok(response);
            };
            spare = if order.len() > 0 {
                try_clone_request(&request)
            } else {
                None
            };
            key = next_key;
            fell_back = true;
            response = next
                .call(with_header(request, key.header.clone()), ctx)
                .await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn the_credential_header_is_built_once_per_secret_value() {
        let dir = std::env::temp_dir().join(format!("sluice-header-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "first\n").unwrap();
        let store = SecretStore::new();
        let secret = store.load(&file, &Name::from("test")).unwrap();
        let ring = KeyRing::new(Duration::ZERO, Name::from("test"), Default::default());
        let kind = Static::Bearer;
        let quiet = |ring: &KeyRing| match ring.plan(&kind, &secret, None, Instant::now()) {
            Ok(Plan::Quiet(header)) => header,
            _ => panic!("nothing is rotating"),
        };
        let (name, first) = quiet(&ring);
        assert_eq!(
            (name.as_str(), first.as_bytes()),
            ("authorization", &b"Bearer first"[..])
        );
        assert!(first.is_sensitive());
        let (_, again) = quiet(&ring);
        // The same bytes, shared rather than rebuilt.
        assert_eq!(again.as_bytes().as_ptr(), first.as_bytes().as_ptr());
        std::fs::write(&file, "second").unwrap();
        store.reload(&Metrics::default());
        // No grace: the replaced value is not kept.
        let (_, rotated) = quiet(&ring);
        assert_eq!(rotated, "Bearer second");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
