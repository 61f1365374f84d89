//! The one body type that flows through the egress pipeline, so every layer
//! has the same `Service<Request<ProxyBody>>` signature.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use super::http1::server::AppBody;
use super::pool::Http1Body;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body: buffered (replayable) or streamed.
#[derive(Default)]
pub enum ProxyBody {
    #[default]
    Empty,
    /// Fully in memory; cloning it is cheap, so a retry can resend it.
    Full(Option<Bytes>),
    /// Straight from the app over HTTP/1.1, sent once.
    App(AppBody),
    /// Straight from a peer over HTTP/2, sent once.
    Incoming(Incoming),
    /// The part read while deciding whether to buffer, then the rest as it comes.
    Prefixed {
        prefix: Option<Bytes>,
        rest: Box<ProxyBody>,
    },
    /// An upstream response body: fails if the upstream sends nothing for
    /// `idle` (a stalled provider must not hang the app).
    Upstream {
        body: UpstreamBody,
        idle: Duration,
        /// Armed the first time the body has nothing to give: most bodies
        /// arrive whole and never need a timer.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// Anything else (e.g. a response being copied into the cache).
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

/// A response body as the upstream connection delivers it.
pub enum UpstreamBody {
    /// Read from its HTTP/1.1 connection, which goes back to the pool at the end.
    Http1(Http1Body),
    Http2(Incoming),
    /// Cut off (it stalled): its connection is closed.
    Closed,
}

impl UpstreamBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            UpstreamBody::Http1(body) => body.poll_frame(cx),
            UpstreamBody::Http2(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Closed => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(body) => body.is_end_stream(),
            UpstreamBody::Http2(incoming) => incoming.is_end_stream(),
            UpstreamBody::Closed => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http1(body) => body.size_hint(),
            UpstreamBody::Http2(incoming) => incoming.size_hint(),
            UpstreamBody::Closed => SizeHint::with_exact(0),
        }
    }
}

/// The error a [`ProxyBody::Upstream`] body ends with when the upstream stalls.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no response data for {0:?}")]
pub struct BodyIdleTimeout(pub Duration);

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::Full(Some(bytes))
        }
    }

    /// An HTTP/1.1 upstream body that errors after `idle` without data.
    pub fn upstream_http1(body: Http1Body, idle: Duration) -> Self {
        ProxyBody::Upstream {
            body: UpstreamBody::Http1(body),
            idle,
            deadline: None,
        }
    }

    /// An HTTP/2 upstream body that errors after `idle` without data.
    pub fn upstream_http2(incoming: Incoming, idle: Duration) -> Self {
        ProxyBody::Upstream {
            body: UpstreamBody::Http2(incoming),
            idle,
            deadline: None,
        }
    }

    pub fn boxed<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        ProxyBody::Boxed(body.map_err(Into::into).boxed_unsync())
    }

    /// A copy for another attempt, if this body can be replayed.
    pub fn try_clone(&self) -> Option<ProxyBody> {
        match self {
            ProxyBody::Empty => Some(ProxyBody::Empty),
            ProxyBody::Full(bytes) => Some(ProxyBody::Full(bytes.clone())),
            _ => None,
        }
    }

    pub fn is_replayable(&self) -> bool {
        matches!(self, ProxyBody::Empty | ProxyBody::Full(_))
    }

    /// Reads a body streamed from the app into memory if it has at most
    /// `limit` bytes; a larger one keeps streaming (with what was read in
    /// front) and stays non-replayable. Errors are the app's (a reset or a
    /// malformed body while reading).
    pub async fn buffer_up_to(self, limit: u64) -> Result<ProxyBody, BoxError> {
        if !matches!(self, ProxyBody::App(_) | ProxyBody::Incoming(_)) {
            return Ok(self);
        }
        let mut body = self;
        if body.is_end_stream() {
            return Ok(ProxyBody::Empty);
        }
        if body.size_hint().lower() > limit {
            return Ok(body);
        }
        let mut buffer = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            // Trailers on requests are rare and not replayed; data is what matters.
            if let Ok(data) = frame?.into_data() {
                buffer.extend_from_slice(&data);
                if buffer.len() as u64 > limit {
                    return Ok(ProxyBody::Prefixed {
                        prefix: Some(buffer.freeze()),
                        rest: Box::new(body),
                    });
                }
            }
        }
        Ok(ProxyBody::full(buffer.freeze()))
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            ProxyBody::Empty => "Empty",
            ProxyBody::Full(_) => "Full",
            ProxyBody::App(_) => "App",
            ProxyBody::Incoming(_) => "Incoming",
            ProxyBody::Prefixed { .. } => "Prefixed",
            ProxyBody::Upstream { .. } => "Upstream",
            ProxyBody::Boxed(_) => "Boxed",
        };
        f.write_str(kind)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::App(body) => body.poll_frame(cx).map_err(Into::into),
            ProxyBody::Incoming(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            ProxyBody::Prefixed { prefix, rest } => match prefix.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
            ProxyBody::Upstream {
                body,
                idle,
                deadline,
            } => match body.poll_frame(cx) {
                Poll::Ready(frame) => {
                    // Progress: the next pause gets a fresh `idle`.
                    if let Some(timer) = deadline.as_mut() {
                        timer.as_mut().reset(tokio::time::Instant::now() + *idle);
                    }
                    Poll::Ready(frame)
                }
                Poll::Pending => {
                    let timer = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(*idle)));
                    match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            // Dropping the body closes its connection.
                            *body = UpstreamBody::Closed;
                            Poll::Ready(Some(Err(Box::new(BodyIdleTimeout(*idle)))))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
            ProxyBody::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::App(body) => body.is_end_stream(),
            ProxyBody::Incoming(incoming) => incoming.is_end_stream(),
            ProxyBody::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::App(body) => body.size_hint(),
            ProxyBody::Incoming(incoming) => incoming.size_hint(),
            ProxyBody::Prefixed { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Boxed(body) => body.size_hint(),
        }
    }
}

/// A copy of `request` for another attempt, when its body can be replayed.
pub fn try_clone_request(request: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
    let body = request.body().try_clone()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}
