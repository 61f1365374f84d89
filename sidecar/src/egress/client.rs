//! The last step: one pooled HTTP/1.1 + HTTP/2 (ALPN) rustls client per
//! integration, and the rewrite of an app request into an upstream request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::body::ProxyBody;
use super::error::ProxyError;
use super::route::RequestContext;
use super::step::Next;

pub type HttpsClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("upstream.baseUrl {0:?} must be an absolute http:// or https:// URL without query")]
    BaseUrl(String),
    #[error("upstream.caBundle holds no usable PEM certificate: {0}")]
    CaBundle(String),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Builds the shared client: web PKI roots, the system's roots when present
/// (`SSL_CERT_FILE` is honoured), and the integration's own CA bundle.
pub fn build_client(
    ca_bundle: Option<&str>,
    connect_timeout: Duration,
) -> Result<HttpsClient, ClientBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca_bundle {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
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
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}

/// Where requests go: scheme and authority, and a path prefix to put in front.
#[derive(Clone, Debug)]
pub struct Upstream {
    scheme: Scheme,
    authority: http::uri::Authority,
    prefix: String,
}

impl Upstream {
    pub fn parse(base_url: &str) -> Result<Self, ClientBuildError> {
        let bad = || ClientBuildError::BaseUrl(base_url.to_owned());
        let uri: Uri = base_url.parse().map_err(|_| bad())?;
        let scheme = uri.scheme().cloned().ok_or_else(bad)?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(bad());
        }
        let authority = uri.authority().cloned().ok_or_else(bad)?;
        if uri.query().is_some() {
            return Err(bad());
        }
        Ok(Self {
            scheme,
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The upstream URI for an app request's path and query, byte for byte.
    pub fn uri_for(&self, app_uri: &Uri) -> Result<Uri, ProxyError> {
        let path_and_query = app_uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let full = if self.prefix.is_empty() {
            PathAndQuery::try_from(path_and_query)
        } else {
            PathAndQuery::try_from(format!("{}{}", self.prefix, path_and_query))
        }
        .map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(full)
            .build()
            .map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))
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
#[derive(Clone)]
pub struct UpstreamService {
    client: HttpsClient,
    upstream: Upstream,
}

impl UpstreamService {
    pub fn new(client: HttpsClient, upstream: Upstream) -> Self {
        Self { client, upstream }
    }
}

impl Next for UpstreamService {
    fn call(
        &self,
        request: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send {
        let (mut parts, body) = request.into_parts();
        // The body may pause at most as long as an attempt may take.
        let idle = parts
            .extensions
            .get::<RequestContext>()
            .map_or(Duration::from_secs(30), |ctx| ctx.route.attempt_timeout);
        if let Some(ctx) = parts.extensions.get::<RequestContext>() {
            ctx.series.attempts.inc();
        }
        let sent = self.upstream.uri_for(&parts.uri).map(|uri| {
            parts.uri = uri;
            // The client negotiates the version with the upstream (ALPN).
            parts.version = http::Version::HTTP_11;
            strip_hop_by_hop(&mut parts.headers);
            // The app addressed 127.0.0.1; the client sets Host / :authority from the URI.
            parts.headers.remove(header::HOST);
            self.client.request(Request::from_parts(parts, body))
        });
        async move {
            match sent?.await {
                Ok(response) => {
                    let (mut parts, incoming) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Ok(Response::from_parts(
                        parts,
                        ProxyBody::watched(incoming, idle),
                    ))
                }
                Err(error) => Err(ProxyError::from_client_error(&error, error.is_connect())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_keeps_path_and_query_exact() {
        let up = Upstream::parse("https://api.example.com/base/").unwrap();
        let app: Uri = "/v1/items/a%2Fb?x=1&y=%20z&x=2".parse().unwrap();
        assert_eq!(
            up.uri_for(&app).unwrap().to_string(),
            "https://api.example.com/base/v1/items/a%2Fb?x=1&y=%20z&x=2"
        );
        let plain = Upstream::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            plain.uri_for(&"/".parse().unwrap()).unwrap().to_string(),
            "http://127.0.0.1:8080/"
        );
    }

    #[test]
    fn rejects_unusable_base_urls() {
        for bad in ["api.example.com", "ftp://x", "https://x/?a=1", "/relative"] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
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
