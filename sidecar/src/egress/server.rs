//! Serving a listener: HTTP/1.1 and h2c (prior knowledge) from the app, with
//! graceful shutdown that stops accepting and then drains in-flight requests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower::Service;

/// Set to `true` once to begin a graceful shutdown of every server.
pub type ShutdownSignal = watch::Receiver<bool>;

/// Who may connect to a listener, which decides how wary it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peers {
    /// The app, over loopback (egress): no header read timeout, which
    /// would cost a timer entry per request.
    App,
    /// Anyone who can reach the pod (webhooks, admin): a client that never
    /// finishes its headers is cut off after 30 s.
    Network,
}

/// Accepts connections on `listener` until `shutdown`, then waits up to
/// `drain` for the requests in flight to finish. `service_for` makes the
/// service of each connection from the peer's address.
pub async fn serve<S, B, F>(
    listener: TcpListener,
    service_for: F,
    mut shutdown: ShutdownSignal,
    drain: Duration,
    name: String,
    peers: Peers,
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
    let connections = Arc::new(Drain::default());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if peers == Peers::Network {
        builder
            .http1()
            .timer(TokioTimer::new())
            // A client that never finishes its headers must not hold a task forever.
            .header_read_timeout(Duration::from_secs(30));
    }
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
                let connection = builder
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service_for(peer)))
                    .into_owned();
                let connection = connections.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
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
