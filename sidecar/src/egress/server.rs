//! Serving a listener: HTTP/1.1 and h2c (prior knowledge) from the app, with
//! graceful shutdown that stops accepting and then drains in-flight requests.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
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
    let graceful = GracefulShutdown::new();
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
                let connection = graceful.watch(connection);
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
        _ = graceful.shutdown() => tracing::debug!(listener = %name, "drained"),
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(listener = %name, drain_timeout = ?drain, "requests still in flight at the drain timeout were cut off");
        }
    }
}
