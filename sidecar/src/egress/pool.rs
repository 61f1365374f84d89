//! Connections to one upstream origin (scheme and authority), reused
//! across requests.
//!
//! An HTTP/1.1 connection is driven by the request that holds it, not by a
//! task of its own: the request's future polls the connection while it
//! waits for the response head, and the response body polls it while the
//! app reads. The connection goes back to the pool when its response body
//! has been read to the end — the only point at which HTTP/1.1 can reuse it —
//! and is closed in every other case (an attempt timed out, the app went
//! away mid-body, the upstream said `Connection: close`). Compared with a
//! connection task per connection, this saves per request a task spawned to
//! return the connection when it is idle again and the wakeups between the
//! request's task and the connection's.
//!
//! HTTP/2 (negotiated by ALPN) multiplexes, so its connection has a task and
//! requests share its sender.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::body::ProxyBody;
use super::error::ProxyError;

pub type Connector = HttpsConnector<HttpConnector>;
type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Idle connections older than this are closed: most servers close theirs
/// after 60-75 s, and a connection they closed is detected before use anyway.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections per origin; a burst beyond it closes
/// the oldest when it settles.
const MAX_IDLE: usize = 512;
/// A request that finds its reused connection closed before it was written
/// tries the next one; this bounds how many.
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
    idle: Mutex<VecDeque<Box<Http1>>>,
    http2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

/// An HTTP/1.1 connection and the handle that sends requests on it.
struct Http1 {
    sender: http1::SendRequest<ProxyBody>,
    connection: http1::Connection<Io, ProxyBody>,
    /// The connection's future has finished: it is closed for good.
    closed: bool,
    idle_since: Instant,
}

impl Http1 {
    /// Reads and writes whatever the connection can; `Ready` once it has
    /// closed (and from then on without polling it again).
    fn poll_connection(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.closed {
            return Poll::Ready(());
        }
        match Pin::new(&mut self.connection).poll(cx) {
            Poll::Ready(result) => {
                if let Err(error) = result {
                    tracing::debug!(%error, "upstream connection closed with an error");
                }
                self.closed = true;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Whether the next request can go on this connection now.
    fn reusable(&self) -> bool {
        !self.closed && self.sender.is_ready()
    }
}

/// An HTTP/1.1 connection lent to one response body; returned to its pool
/// when the body has been read to the end.
pub struct Lease {
    conn: Box<Http1>,
    pool: Arc<Pool>,
}

impl Lease {
    /// Drives the connection so the response body makes progress.
    pub fn poll_connection(&mut self, cx: &mut Context<'_>) {
        let _ = self.conn.poll_connection(cx);
    }

    /// The body was read to the end: the connection is reused if it is
    /// ready for another request, closed otherwise.
    pub fn release(self) {
        if self.conn.reusable() {
            self.pool.put(self.conn);
        }
    }
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

    /// Sends `request` (origin-form: path and query only) and returns the
    /// response head; its body streams from the connection.
    ///
    /// `body_idle` bounds each pause of the response body.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<ProxyBody>,
        body_idle: Duration,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        for _ in 0..MAX_STALE {
            let (mut conn, fresh) = match self.checkout().await? {
                // Boxed, like `connect`: rare paths with large futures would
                // otherwise make every request's future large to move.
                Checkout::Http2(sender) => {
                    return Box::pin(self.send_http2(sender, request, body_idle)).await;
                }
                Checkout::Http1 { conn, fresh } => (conn, fresh),
            };
            *request.version_mut() = Version::HTTP_11;
            request
                .headers_mut()
                .insert(header::HOST, self.host.clone());
            let mut sent = std::pin::pin!(conn.sender.try_send_request(request));
            let result = poll_fn(|cx| {
                // Drive the connection first: it is what delivers the response.
                let _ = conn.poll_connection(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(response) => {
                    let (parts, incoming) = response.into_parts();
                    let mut lease = Lease {
                        conn,
                        pool: self.clone(),
                    };
                    let lease = if incoming.is_end_stream() {
                        // No body to read: the connection is free already,
                        // or after one more turn of its state machine.
                        if !lease.conn.reusable() {
                            poll_fn(|cx| {
                                lease.poll_connection(cx);
                                Poll::Ready(())
                            })
                            .await;
                        }
                        lease.release();
                        None
                    } else {
                        Some(lease)
                    };
                    return Ok(Response::from_parts(
                        parts,
                        ProxyBody::upstream(incoming, lease, body_idle),
                    ));
                }
                // A reused connection closed before the request was written
                // (the upstream timed it out): the request goes on another.
                Err(mut error) if !fresh => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(ProxyError::from_client_error(error.error(), false)),
                },
                Err(error) => return Err(ProxyError::from_client_error(error.error(), false)),
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
        body_idle: Duration,
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
            ProxyBody::upstream(incoming, None, body_idle),
        ))
    }

    async fn checkout(&self) -> Result<Checkout, ProxyError> {
        if let Some(sender) = self.http2_sender() {
            return Ok(Checkout::Http2(sender));
        }
        while let Some(mut conn) = self.take_idle() {
            // Nobody polled it while idle: this is where a close by the
            // upstream is noticed.
            let open = poll_fn(|cx| Poll::Ready(conn.poll_connection(cx).is_pending())).await;
            if open && conn.sender.is_ready() {
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
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|e| ProxyError::from_client_error(&e, true))?;
        Ok(Checkout::Http1 {
            conn: Box::new(Http1 {
                sender,
                connection,
                closed: false,
                idle_since: Instant::now(),
            }),
            fresh: true,
        })
    }

    /// The most recently used idle connection (warm, and least likely to
    /// have been closed by the upstream).
    fn take_idle(&self) -> Option<Box<Http1>> {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        let conn = idle.pop_back()?;
        if conn.idle_since.elapsed() < IDLE_TIMEOUT {
            return Some(conn);
        }
        // The newest is too old, so are all the others.
        idle.clear();
        None
    }

    fn put(&self, mut conn: Box<Http1>) {
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        if idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(conn);
    }

    fn evict_expired(&self) {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        while idle
            .front()
            .is_some_and(|conn| conn.idle_since.elapsed() >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
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
