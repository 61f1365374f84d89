//! Serving a listener, with graceful shutdown that stops accepting and then
//! drains in-flight requests.
//!
//! Two kinds of listener:
//! - [`serve_app`] for egress: the app over loopback. HTTP/1.1 through the
//!   proxy's own codec (`http1::server`), h2c (prior knowledge) through hyper,
//!   told apart by the first bytes. No header read timeout: the app is the
//!   only peer, and a timer per request would cost more than it protects.
//! - [`serve`] for webhooks and admin: anyone who can reach the pod, through
//!   hyper; a client that never finishes its headers is cut off after 30 s.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::Service;

use super::Handle;
use super::body::ProxyBody;
use super::http1;

/// Set to `true` once to begin a graceful shutdown of every server.
pub type ShutdownSignal = watch::Receiver<bool>;

/// Serves a network-facing listener (webhooks, admin) with hyper until
/// `shutdown`, then waits up to `drain` for the requests in flight.
/// `service_for` makes the service of each connection from the peer's
/// address.
pub async fn serve<S, B, F>(
    listener: TcpListener,
    service_for: F,
    shutdown: ShutdownSignal,
    drain: Duration,
    name: String,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: Fn(std::net::SocketAddr) -> S,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A client that never finishes its headers must not hold a task forever.
        .header_read_timeout(Duration::from_secs(30));
    accept_until_shutdown(listener, shutdown, drain, name, |stream, peer, drain| {
        let connection = builder
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(service_for(peer)),
            )
            .into_owned();
        let connection = drain.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    })
    .await;
}

/// Serves an egress listener: each request goes to `handler` (the
/// integration's pipeline); see the module docs.
pub async fn serve_app<H: Handle + Clone>(
    listener: TcpListener,
    handler: H,
    shutdown: ShutdownSignal,
    drain: Duration,
    name: String,
) {
    accept_until_shutdown(listener, shutdown, drain, name, |stream, _, drain| {
        let stop = Arc::new(AtomicBool::new(false));
        let connection = serve_app_connection(stream, handler.clone(), stop.clone());
        tokio::spawn(drain.watch(StopFlag { connection, stop }));
    })
    .await;
}

/// Accepts connections until `shutdown`, handing each to `spawn`, then
/// waits up to `drain` for the connections to finish.
async fn accept_until_shutdown(
    listener: TcpListener,
    mut shutdown: ShutdownSignal,
    drain: Duration,
    name: String,
    mut spawn: impl FnMut(TcpStream, std::net::SocketAddr, &Arc<Drain>),
) {
    let connections = Arc::new(Drain::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, listener = %name, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                spawn(stream, peer, &connections);
            }
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = connections.shutdown() => tracing::debug!(listener = %name, "drained"),
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(listener = %name, drain_timeout = ?drain, "requests still in flight at the drain timeout were cut off");
        }
    }
}

/// The HTTP/2 connection preface a prior-knowledge (h2c) client opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One connection from the app: h2c to hyper, anything else to the HTTP/1.1
/// codec (which answers malformed input itself).
async fn serve_app_connection<H: Handle + Clone>(
    mut stream: TcpStream,
    handler: H,
    stop: Arc<AtomicBool>,
) {
    let mut read = BytesMut::with_capacity(16 * 1024);
    // Reads until the bytes differ from the preface or are all of it: one
    // read nearly always. The stop flag is read on every wake-up, so a
    // connection that never sends anything does not hold up a drain.
    let opened = poll_fn(|cx| {
        loop {
            let seen = read.len().min(H2_PREFACE.len());
            if read[..seen] != H2_PREFACE[..seen] || seen == H2_PREFACE.len() {
                return Poll::Ready(true);
            }
            if stop.load(Ordering::Relaxed) && read.is_empty() {
                return Poll::Ready(false);
            }
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut stream),
                cx,
                &mut read
            )) {
                Ok(0) | Err(_) => return Poll::Ready(false),
                Ok(_) => {}
            }
        }
    })
    .await;
    if !opened {
        return;
    }
    if !read.starts_with(H2_PREFACE) {
        return http1::server::serve_connection(stream, read, handler, stop).await;
    }
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        handler
            .handle(request.map(ProxyBody::Incoming))
            .map(Ok::<_, Infallible>)
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(Rewound { read, stream }), service);
    let mut connection = std::pin::pin!(connection);
    let mut shutting_down = false;
    let result = poll_fn(|cx| {
        if !shutting_down && stop.load(Ordering::Relaxed) {
            connection.as_mut().graceful_shutdown();
            shutting_down = true;
        }
        connection.as_mut().poll(cx)
    })
    .await;
    if let Err(error) = result {
        tracing::debug!(%error, "h2c connection ended with an error");
    }
}

/// A stream whose first bytes were already read: they are read again first.
struct Rewound {
    read: BytesMut,
    stream: TcpStream,
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

pin_project! {
    /// An app connection asked to finish through a flag it reads whenever
    /// it is polled (the drain wakes it).
    struct StopFlag<F> {
        #[pin]
        connection: F,
        stop: Arc<AtomicBool>,
    }
}

impl<F: Future> Future for StopFlag<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().connection.poll(cx)
    }
}

impl<F> GracefulConnection for StopFlag<F> {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Drains a listener's connections at shutdown. hyper-util's
/// `GracefulShutdown` polls a watch channel every time a connection is
/// polled (about 800 instructions per proxied request); here a connection
/// registers its task's waker once and then reads a flag.
#[derive(Default)]
struct Drain {
    draining: AtomicBool,
    /// The open connections' wakers, by connection number.
    open: Mutex<HashMap<u64, Waker>>,
    next_id: AtomicU64,
    all_closed: Notify,
}

impl Drain {
    fn watch<C>(self: &Arc<Self>, conn: C) -> Drained<C> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Counted from now: a shutdown before its first poll still waits for it.
        self.lock().insert(id, Waker::noop().clone());
        Drained {
            conn,
            drain: self.clone(),
            id,
            registered: None,
            shutting_down: false,
        }
    }

    /// Asks every connection to finish its requests and close; returns when
    /// all have.
    async fn shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = self.lock().values().cloned().collect();
        for waker in wakers {
            waker.wake();
        }
        loop {
            // Created before the check, so a close in between is not missed.
            let closed = self.all_closed.notified();
            if self.lock().is_empty() {
                return;
            }
            closed.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        self.open.lock().expect("drain lock poisoned")
    }
}

/// A connection that can be asked to finish what it is doing and close.
trait GracefulConnection {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, E, B> GracefulConnection for auto::Connection<'_, I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: auto::HttpServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::Connection::graceful_shutdown(self);
    }
}

pin_project! {
    /// A connection under a [`Drain`].
    struct Drained<C> {
        #[pin]
        conn: C,
        drain: Arc<Drain>,
        id: u64,
        registered: Option<Waker>,
        shutting_down: bool,
    }

    impl<C> PinnedDrop for Drained<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut open = this.drain.lock();
            open.remove(this.id);
            if open.is_empty() && this.drain.draining.load(Ordering::SeqCst) {
                drop(open);
                this.drain.all_closed.notify_waiters();
            }
        }
    }
}

impl<C: GracefulConnection + Future> Future for Drained<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.shutting_down {
            if !this
                .registered
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
            {
                this.drain.lock().insert(*this.id, cx.waker().clone());
                *this.registered = Some(cx.waker().clone());
            }
            // Read after registering: a shutdown either sees this waker or
            // is seen here.
            if this.drain.draining.load(Ordering::SeqCst) {
                this.conn.as_mut().graceful_shutdown();
                *this.shutting_down = true;
            }
        }
        this.conn.poll(cx)
    }
}
