//! Connections to one upstream origin (scheme and authority), reused
//! across requests.
//!
//! An HTTP/1.1 connection (`http1.rs`) is driven by the request that holds
//! it, not by a task of its own: the request's future writes the request
//! and reads the response head, and the response body reads the rest while
//! the app reads. The connection goes back to the pool when its response
//! body has been read to the end — the only point at which HTTP/1.1 can
//! reuse it — and is closed in every other case (an attempt timed out, the
//! app went away mid-body, the upstream said `Connection: close`). Compared
//! with a connection task per connection, this saves per request a task
//! spawned to return the connection when it is idle again and the wakeups
//! between the request's task and the connection's.
//!
//! HTTP/2 (negotiated by ALPN) multiplexes, so its connection has a task and
//! requests share its sender.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version, request};
use http_body::Body as _;
use hyper::client::conn::http2;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::ServiceExt;

use super::body::{BodyTimeouts, Http1Body, ProxyBody, UpstreamIo, UpstreamStream};
use super::error::ProxyError;
use super::http1::client::CheckIn;
use super::http1::{self, Http1Error, RequestHead};

pub type Connector = HttpsConnector<HttpConnector>;
type Io = UpstreamStream;
type Http1 = http1::Connection<UpstreamIo>;

/// Idle connections older than this are closed: most servers close theirs
/// after 60-75 s, and a connection they closed is detected before use anyway.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections per origin; a burst beyond it closes
/// the oldest when it settles.
const MAX_IDLE: usize = 512;
/// A request whose reused connection turns out to have been closed by the
/// upstream (before it answered anything) tries the next one; this bounds
/// how many.
const MAX_STALE: usize = 8;

/// The connections to one origin.
pub struct Pool {
    scheme: Scheme,
    authority: Authority,
    /// `scheme://authority/`, what the connector connects to.
    origin: Uri,
    /// `Host` for HTTP/1.1: host and port, without the scheme's default port.
    host: HeaderValue,
    connector: Connector,
    idle: Mutex<VecDeque<Idle>>,
    http2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

struct Idle {
    conn: Box<Http1>,
    since: Instant,
}

enum Checkout {
    Http1 { conn: Box<Http1>, fresh: bool },
    Http2(http2::SendRequest<ProxyBody>),
}

impl Pool {
    pub fn new(scheme: Scheme, authority: Authority, connector: Connector) -> Arc<Self> {
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .expect("scheme and authority make a URI");
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        // Host and port only: never the URL's userinfo.
        let host = match authority.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        let host = HeaderValue::from_str(&host).expect("a host and port are a valid header value");
        let pool = Arc::new(Self {
            scheme,
            authority,
            origin,
            host,
            connector,
            idle: Mutex::default(),
            http2: Mutex::default(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Sends a request (its target in origin-form: path and query only)
    /// and returns the response head; its body streams from the connection.
    ///
    /// The head is borrowed: with `keep`, it is left as it was, for the
    /// caller to send again; without, it may be emptied. `body` bounds
    /// the response body's pauses and its length in time. A request the
    /// upstream closed a reused connection on is sent again on the next one
    /// only if `may_resend` says so (it counts the send).
    pub async fn send(
        self: &Arc<Self>,
        parts: &mut request::Parts,
        keep: bool,
        mut body: ProxyBody,
        body_limits: BodyTimeouts,
        may_resend: &(dyn Fn() -> bool + Sync),
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // A body already at its end (an h2c GET's, straight from the app)
        // can be sent again; as `Empty` it says so.
        if body.is_end_stream() {
            body = ProxyBody::Empty;
        }
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        for _ in 0..MAX_STALE {
            let (mut conn, fresh) = match self.checkout().await? {
                // Boxed, like `connect`: rare paths with large futures would
                // otherwise make every request's future large to move.
                Checkout::Http2(sender) => {
                    let request = owned_request(parts, keep, body);
                    return Box::pin(self.send_http2(sender, request, body_limits)).await;
                }
                Checkout::Http1 { conn, fresh } => (conn, fresh),
            };
            // A reused connection may have been closed by the upstream just
            // as the request went out; a request that can be sent again
            // safely then goes on the next connection.
            let spare = if !fresh && parts.method.is_idempotent() {
                body.try_clone()
            } else {
                None
            };
            let head = RequestHead {
                method: &parts.method,
                target,
                host: &self.host,
                headers: &parts.headers,
            };
            match conn.exchange(head, &mut body).await {
                Ok(head) => {
                    let (response, ()) = head.response.into_parts();
                    let mut upstream = Http1Body::new(conn, head.decoder, self.clone());
                    let body = if upstream.is_end_stream() {
                        upstream.release();
                        ProxyBody::Empty
                    } else {
                        ProxyBody::upstream_http1(upstream, body_limits)
                    };
                    return Ok(Response::from_parts(response, body));
                }
                Err(error) => match spare {
                    Some(spare)
                        if conn.received_nothing() && !error.is_protocol() && may_resend() =>
                    {
                        tracing::debug!(%error, "a pooled connection was closed by the upstream; trying the next");
                        body = spare;
                    }
                    _ => return Err(upstream_error(error)),
                },
            }
        }
        Err(ProxyError::Reset(format!(
            "{MAX_STALE} pooled connections in a row were closed by the upstream"
        )))
    }

    async fn send_http2(
        &self,
        mut sender: http2::SendRequest<ProxyBody>,
        mut request: Request<ProxyBody>,
        body_limits: BodyTimeouts,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // HTTP/2 carries the target as :scheme, :authority and :path.
        let mut uri = std::mem::take(request.uri_mut()).into_parts();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        *request.uri_mut() = Uri::from_parts(uri)
            .map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))?;
        *request.version_mut() = Version::HTTP_2;
        request.headers_mut().remove(header::HOST);
        sender
            .ready()
            .await
            .map_err(|e| ProxyError::from_client_error(&e, false))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ProxyError::from_client_error(&e, false))?;
        let (parts, incoming) = response.into_parts();
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream_http2(incoming, body_limits),
        ))
    }

    async fn checkout(&self) -> Result<Checkout, ProxyError> {
        if let Some(sender) = self.http2_sender() {
            return Ok(Checkout::Http2(sender));
        }
        while let Some(mut conn) = self.take_idle() {
            // Nobody read it while idle: this is where a close by the
            // upstream is noticed.
            if poll_fn(|cx| Poll::Ready(conn.poll_usable(cx))).await {
                return Ok(Checkout::Http1 { conn, fresh: false });
            }
        }
        Box::pin(self.connect()).await
    }

    fn http2_sender(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let mut shared = self.http2.lock().expect("pool lock poisoned");
        match shared.as_ref() {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                *shared = None;
                None
            }
            None => None,
        }
    }

    async fn connect(&self) -> Result<Checkout, ProxyError> {
        let io: Io = self
            .connector
            .clone()
            .oneshot(self.origin.clone())
            .await
            .map_err(|e| ProxyError::from_client_error(&*e, true))?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| ProxyError::from_client_error(&e, true))?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection closed with an error");
                }
            });
            *self.http2.lock().expect("pool lock poisoned") = Some(sender.clone());
            return Ok(Checkout::Http2(sender));
        }
        Ok(Checkout::Http1 {
            conn: Box::new(http1::Connection::new(TokioIo::new(io))),
            fresh: true,
        })
    }

    /// The most recently used idle connection (warm, and least likely to
    /// have been closed by the upstream).
    fn take_idle(&self) -> Option<Box<Http1>> {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        let Idle { conn, since } = idle.pop_back()?;
        if since.elapsed() < IDLE_TIMEOUT {
            return Some(conn);
        }
        // The newest is too old, so are all the others.
        idle.clear();
        None
    }

    fn put(&self, conn: Box<Http1>) {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        if idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }

    fn evict_expired(&self) {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        while idle
            .front()
            .is_some_and(|idle| idle.since.elapsed() >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
    }
}

/// A request hyper can own (HTTP/2 takes its request by value): a copy of
/// `head` if it is to be kept, else its contents.
fn owned_request(head: &mut request::Parts, keep: bool, body: ProxyBody) -> Request<ProxyBody> {
    let mut request = Request::new(body);
    *request.version_mut() = head.version;
    if keep {
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = head.uri.clone();
        *request.headers_mut() = head.headers.clone();
    } else {
        *request.method_mut() = std::mem::take(&mut head.method);
        *request.uri_mut() = std::mem::take(&mut head.uri);
        *request.headers_mut() = std::mem::take(&mut head.headers);
        *request.extensions_mut() = std::mem::take(&mut head.extensions);
    }
    request
}

/// The error a request gets for an HTTP/1.1 exchange that failed.
fn upstream_error(error: Http1Error) -> ProxyError {
    match error {
        Http1Error::RequestBody(message) => ProxyError::BadRequest(message),
        Http1Error::Invalid(message) => ProxyError::Protocol(message),
        // `Reset` says "the upstream closed the connection" itself.
        Http1Error::Closed(when) => ProxyError::Reset(when),
        // A TLS failure is told apart from a plain reset by its cause.
        Http1Error::Io(error) => ProxyError::from_client_error(&error, false),
    }
}

/// Closes expired idle connections while the pool exists, so a quiet
/// integration does not hold sockets the upstream has long closed.
async fn sweep(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(IDLE_TIMEOUT / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.evict_expired(),
            None => return,
        }
    }
}

impl CheckIn<UpstreamIo> for Pool {
    fn check_in(&self, conn: Box<Http1>) {
        self.put(conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(url: &str) -> HeaderValue {
        let uri: Uri = url.parse().unwrap();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let pool = Pool::new(
            uri.scheme().unwrap().clone(),
            uri.authority().unwrap().clone(),
            connector,
        );
        pool.host.clone()
    }

    #[test]
    fn host_header_is_host_and_non_default_port_only() {
        assert_eq!(host_of("https://api.example.com"), "api.example.com");
        assert_eq!(host_of("https://api.example.com:443"), "api.example.com");
        assert_eq!(host_of("http://api.example.com:80"), "api.example.com");
        assert_eq!(host_of("http://127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(
            host_of("https://user:secret@api.example.com:8443"),
            "api.example.com:8443"
        );
        assert_eq!(host_of("http://[::1]:9000"), "[::1]:9000");
    }
}
