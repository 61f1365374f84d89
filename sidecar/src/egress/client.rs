//! The last step: the client of an integration (rustls, HTTP/1.1 and
//! HTTP/2 by ALPN, a connection pool per origin) and the rewrite of an app
//! request into an upstream request.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::body::{BodyTimeouts, ProxyBody};
use super::error::ProxyError;
use super::pool::{Connector, Pool};
use super::route::RequestContext;
use super::step::Next;
use crate::config::HttpUrl;

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("upstream.caBundle holds no usable PEM certificate: {0}")]
    CaBundle(String),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

type Origin = (Scheme, Authority);

/// An HTTP client with one trust configuration: a connection pool per
/// origin, created on first use. Cloning shares the pools.
#[derive(Clone)]
pub struct UpstreamClient {
    connector: Connector,
    pools: Arc<Mutex<HashMap<Origin, Arc<Pool>>>>,
}

impl UpstreamClient {
    /// Trusts the web PKI roots, the system's roots when present
    /// (`SSL_CERT_FILE` is honoured), and `ca_bundle`.
    pub fn new(
        ca_bundle: Option<&str>,
        connect_timeout: Duration,
    ) -> Result<Self, ClientBuildError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = ca_bundle {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| ClientBuildError::CaBundle(e.to_string()))?;
            if certs.is_empty() {
                return Err(ClientBuildError::CaBundle("no CERTIFICATE block".into()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| ClientBuildError::CaBundle(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            connector,
            pools: Arc::default(),
        })
    }

    /// The connections to one origin.
    pub fn pool(&self, scheme: &Scheme, authority: &Authority) -> Arc<Pool> {
        let mut pools = self.pools.lock().expect("pools lock poisoned");
        pools
            .entry((scheme.clone(), authority.clone()))
            .or_insert_with(|| Pool::new(scheme.clone(), authority.clone(), self.connector.clone()))
            .clone()
    }

    /// Sends a request to the absolute URI it carries; `body_limits` bound
    /// the response body.
    pub async fn request(
        &self,
        request: Request<ProxyBody>,
        body_limits: BodyTimeouts,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut head, body) = request.into_parts();
        let uri = &head.uri;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(ProxyError::BadRequest(format!(
                "{uri} is not an absolute URI"
            )));
        };
        let pool = self.pool(scheme, authority);
        let target = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        head.uri = Uri::from(target);
        pool.send(&mut head, false, body, body_limits, &|| true)
            .await
    }
}

/// Where requests go: scheme and authority, and a path prefix to put in front.
#[derive(Clone, Debug)]
pub struct Upstream {
    scheme: Scheme,
    authority: http::uri::Authority,
    prefix: String,
}

impl Upstream {
    pub fn new(base_url: &HttpUrl) -> Self {
        Self {
            scheme: base_url.scheme().clone(),
            authority: base_url.authority().clone(),
            prefix: base_url.prefix().to_owned(),
        }
    }

    /// The upstream's request target (origin-form) for an app request's
    /// target, path and query byte for byte.
    pub fn target_for(&self, app_uri: Uri) -> Result<Uri, ProxyError> {
        // The usual case: the app sent origin-form and no prefix is added.
        if self.prefix.is_empty()
            && app_uri.scheme().is_none()
            && app_uri.path_and_query().is_some()
        {
            return Ok(app_uri);
        }
        let path_and_query = app_uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let full = if self.prefix.is_empty() {
            PathAndQuery::try_from(path_and_query)
        } else {
            PathAndQuery::try_from(format!("{}{}", self.prefix, path_and_query))
        }
        .map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))?;
        Ok(Uri::from(full))
    }

    /// The connections to this upstream in `client`.
    pub fn pool(&self, client: &UpstreamClient) -> Arc<Pool> {
        client.pool(&self.scheme, &self.authority)
    }
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TRAILER,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == "keep-alive" || name == "proxy-connection"
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names (compared, not
    // hashed) instead of ten removals that each hash a name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Sends one attempt upstream.
pub struct UpstreamService {
    pool: Arc<Pool>,
    upstream: Upstream,
}

impl UpstreamService {
    pub fn new(client: &UpstreamClient, upstream: Upstream) -> Self {
        Self {
            pool: upstream.pool(client),
            upstream,
        }
    }
}

impl Next for UpstreamService {
    fn call(
        &self,
        request: Request<ProxyBody>,
        ctx: &RequestContext,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send {
        let (parts, body) = request.into_parts();
        // The retry loop only calls with a send left; a resend on a fresh
        // connection needs one of its own.
        let _ = ctx.sends.take();
        ctx.route.series.attempts.inc();
        let may_resend = || {
            let granted = ctx.sends.take();
            if granted {
                ctx.route.series.attempts.inc();
            }
            granted
        };
        // The body may pause at most as long as an attempt may take.
        let body_limits = BodyTimeouts {
            idle: ctx.route.attempt_timeout,
            total: ctx.route.body_timeout,
        };
        // Held for the whole attempt, so a retry gets it back (`replay`).
        let mut head = ctx.replay.lend(parts);
        let target = self.upstream.target_for(std::mem::take(&mut head.uri));
        // Boxed: the pool's future is large, and the steps above hold this one.
        Box::pin(async move {
            // The app's hop-by-hop fields went at the edge (`observe`).
            head.uri = target?;
            // The pool sets Host (HTTP/1.1) or :authority (HTTP/2) to the upstream's.
            let keep = head.is_kept();
            let response = self
                .pool
                .send(&mut head, keep, body, body_limits, &may_resend)
                .await?;
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, body))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_keeps_path_and_query_exact() {
        let up = Upstream::new(&"https://api.example.com/base/".parse().unwrap());
        let app: Uri = "/v1/items/a%2Fb?x=1&y=%20z&x=2".parse().unwrap();
        assert_eq!(
            up.target_for(app).unwrap().to_string(),
            "/base/v1/items/a%2Fb?x=1&y=%20z&x=2"
        );
        let plain = Upstream::new(&"http://127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            plain.target_for("/".parse().unwrap()).unwrap().to_string(),
            "/"
        );
        let absolute: Uri = "http://127.0.0.1:15001/v1/a?b=c".parse().unwrap();
        assert_eq!(plain.target_for(absolute).unwrap().to_string(), "/v1/a?b=c");
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }
}
