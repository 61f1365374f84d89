//! The one body type that flows through the egress pipeline, so every layer
//! has the same `Service<Request<ProxyBody>>` signature.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::header::HeaderName;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use super::error::ProxyError;
use super::http1::app_body::AppBody;
use super::http1::client::{OutgoingBody, ResponseBody};

pub use super::error::BoxError;

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
    /// An upstream response body: fails if the upstream pauses longer than
    /// `limits.idle` or has not finished by `ends_by` (a stalled or
    /// trickling provider must not hold the app).
    Upstream {
        body: UpstreamBody,
        limits: BodyTimeouts,
        ends_by: tokio::time::Instant,
        /// Armed the first time the body has nothing to give: most bodies
        /// arrive whole and never need a timer.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        /// Told how the body ended (the breaker, the request's metrics).
        watch: Watch,
    },
    /// Anything else (e.g. a response being copied into the cache).
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

/// The transport of upstream connections (`pool.rs` makes them): TCP, or TLS over it.
pub type UpstreamStream =
    hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;
pub type UpstreamIo = hyper_util::rt::TokioIo<UpstreamStream>;
/// An upstream HTTP/1.1 response body, read from its pooled connection.
pub type Http1Body = ResponseBody<UpstreamIo>;

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
            UpstreamBody::Http2(incoming) => {
                sanitized(Pin::new(incoming).poll_frame(cx)).map_err(Into::into)
            }
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

/// The error a [`ProxyBody::Upstream`] body ends with when it is still
/// arriving `upstream.bodyTimeout` after its headers.
#[derive(Debug, thiserror::Error)]
#[error("the response body did not end within upstream.bodyTimeout ({0:?} after its headers)")]
pub struct BodyTimeout(pub Duration);

/// How long an upstream response body may take.
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeouts {
    /// The longest pause between two reads.
    pub idle: Duration,
    /// From the response headers to the end of the body.
    pub total: Duration,
}

impl BodyTimeouts {
    /// A body that must be whole within `limit`, however it pauses.
    pub fn within(limit: Duration) -> Self {
        Self {
            idle: limit,
            total: limit,
        }
    }
}

/// How an upstream response body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// Read to its end.
    Complete,
    /// Cut short by the upstream or a timeout: the `x-sluice-error` code
    /// that names why (`upstream-reset`, `upstream-timeout`, ...).
    Failed(&'static str),
    /// Dropped before its end by the reader (the app hung up or stopped
    /// reading): says nothing about the upstream.
    Abandoned,
}

/// Something to do once an upstream response body has ended.
pub trait OnBodyEnd: Send {
    fn ended(self: Box<Self>, end: BodyEnd);
}

/// Two of them, in order.
struct Both(Box<dyn OnBodyEnd>, Box<dyn OnBodyEnd>);

impl OnBodyEnd for Both {
    fn ended(self: Box<Self>, end: BodyEnd) {
        self.0.ended(end);
        self.1.ended(end);
    }
}

/// Who is told how a body ended; told at most once (dropped unfinished:
/// [`BodyEnd::Abandoned`]).
#[derive(Default)]
pub struct Watch(Option<Box<dyn OnBodyEnd>>);

impl Watch {
    fn fire(&mut self, end: BodyEnd) {
        if let Some(watcher) = self.0.take() {
            watcher.ended(end);
        }
    }

    fn add(&mut self, watcher: Box<dyn OnBodyEnd>) {
        self.0 = Some(match self.0.take() {
            Some(first) => Box::new(Both(first, watcher)),
            None => watcher,
        });
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.fire(BodyEnd::Abandoned);
    }
}

/// The code that names why an upstream response body failed.
fn failure_code(error: &BoxError) -> &'static str {
    if error.is::<BodyIdleTimeout>() || error.is::<BodyTimeout>() {
        return "upstream-timeout";
    }
    match ProxyError::from_client_error(&**error, false) {
        ProxyError::Protocol(_) => "upstream-protocol",
        ProxyError::Tls(_) => "upstream-tls",
        _ => "upstream-reset",
    }
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::Full(Some(bytes))
        }
    }

    /// An HTTP/1.1 upstream response body, bounded by `limits`.
    pub fn upstream_http1(body: Http1Body, limits: BodyTimeouts) -> Self {
        Self::upstream(UpstreamBody::Http1(body), limits)
    }

    /// An HTTP/2 upstream response body, bounded by `limits`.
    pub fn upstream_http2(incoming: Incoming, limits: BodyTimeouts) -> Self {
        Self::upstream(UpstreamBody::Http2(incoming), limits)
    }

    fn upstream(body: UpstreamBody, limits: BodyTimeouts) -> Self {
        ProxyBody::Upstream {
            body,
            limits,
            ends_by: tokio::time::Instant::now() + limits.total,
            deadline: None,
            watch: Watch::default(),
        }
    }

    /// Runs `watcher` when this upstream response body ends. `Err` gives it
    /// back when the body is not one still streaming from the upstream:
    /// the caller accounts for the response now.
    pub fn on_end(&mut self, watcher: Box<dyn OnBodyEnd>) -> Result<(), Box<dyn OnBodyEnd>> {
        match self {
            ProxyBody::Upstream { body, watch, .. } if !body.is_end_stream() => {
                watch.add(watcher);
                Ok(())
            }
            _ => Err(watcher),
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

impl OutgoingBody for ProxyBody {
    fn whole(&self) -> Option<&Bytes> {
        match self {
            ProxyBody::Full(Some(bytes)) => Some(bytes),
            _ => None,
        }
    }

    fn clear(&mut self) {
        *self = ProxyBody::Empty;
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        ProxyBody::full(bytes)
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
            ProxyBody::Incoming(incoming) => {
                sanitized(Pin::new(incoming).poll_frame(cx)).map_err(Into::into)
            }
            ProxyBody::Prefixed { prefix, rest } => match prefix.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
            ProxyBody::Upstream {
                body,
                limits,
                ends_by,
                deadline,
                watch,
            } => match body.poll_frame(cx) {
                Poll::Ready(frame) => {
                    // Progress: the next pause gets a fresh `idle`, up to
                    // the body's end time.
                    if let Some(timer) = deadline.as_mut() {
                        let next = (tokio::time::Instant::now() + limits.idle).min(*ends_by);
                        timer.as_mut().reset(next);
                    }
                    match &frame {
                        None => watch.fire(BodyEnd::Complete),
                        Some(Err(error)) => watch.fire(BodyEnd::Failed(failure_code(error))),
                        Some(Ok(_)) if body.is_end_stream() => watch.fire(BodyEnd::Complete),
                        Some(Ok(_)) => {}
                    }
                    Poll::Ready(frame)
                }
                Poll::Pending => {
                    let timer = deadline.get_or_insert_with(|| {
                        let at = (tokio::time::Instant::now() + limits.idle).min(*ends_by);
                        Box::pin(tokio::time::sleep_until(at))
                    });
                    match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            // Dropping the body closes its connection.
                            *body = UpstreamBody::Closed;
                            let error: BoxError = if tokio::time::Instant::now() >= *ends_by {
                                Box::new(BodyTimeout(limits.total))
                            } else {
                                Box::new(BodyIdleTimeout(limits.idle))
                            };
                            watch.fire(BodyEnd::Failed("upstream-timeout"));
                            Poll::Ready(Some(Err(error)))
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

/// An HTTP/2 frame with the fields not allowed in trailers removed (the
/// HTTP/1.1 codec does the same as it parses a trailer section).
fn sanitized<E>(
    frame: Poll<Option<Result<Frame<Bytes>, E>>>,
) -> Poll<Option<Result<Frame<Bytes>, E>>> {
    frame.map_ok(|mut frame| {
        if let Some(trailers) = frame.trailers_mut() {
            super::trailers::sanitize(trailers);
        }
        frame
    })
}

/// A streamed body whose trailer section loses one field: the credential's
/// header, which only Sluice may send.
struct WithoutTrailer {
    inner: ProxyBody,
    name: HeaderName,
}

impl Body for WithoutTrailer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map_ok(|mut frame| {
                if let Some(trailers) = frame.trailers_mut() {
                    trailers.remove(&this.name);
                }
                frame
            })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl ProxyBody {
    /// Whether trailer fields may still come: a chunked or HTTP/2 body
    /// still streaming.
    pub fn may_have_trailers(&self) -> bool {
        match self {
            ProxyBody::App(body) => body.may_have_trailers(),
            ProxyBody::Incoming(incoming) => !incoming.is_end_stream(),
            ProxyBody::Prefixed { rest, .. } => rest.may_have_trailers(),
            ProxyBody::Boxed(body) => !body.is_end_stream(),
            ProxyBody::Empty | ProxyBody::Full(_) | ProxyBody::Upstream { .. } => false,
        }
    }

    /// This body without `name` in its trailers (boxed only when it may
    /// have trailers at all).
    pub fn without_trailer(self, name: &HeaderName) -> ProxyBody {
        if !self.may_have_trailers() {
            return self;
        }
        ProxyBody::boxed(WithoutTrailer {
            inner: self,
            name: name.clone(),
        })
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
