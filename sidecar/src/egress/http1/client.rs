//! The HTTP/1.1 client side of an upstream connection: writes a request,
//! reads the response head, then decodes the response body.
//!
//! The connection's lifecycle (the pool, reuse, idle timeouts) is not here:
//! see `pool.rs`. Nor is the pipeline's body type: a connection sends any
//! [`OutgoingBody`] and hands its response body back as a [`ResponseBody`],
//! so `body.rs` can hold one without this module knowing it.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    BodyError, Chunked, Decoder, FieldsSeen, FramingError, MAX_HEAD_BYTES, MAX_HEADERS, READ_CHUNK,
    chunked_is_last, content_length, field_spans, has_token, header_map, itoa_u64, put_chunk,
    put_field, put_last_chunk,
};
use crate::egress::error::BoxError;

/// A request body a connection can send: any body whose errors can be
/// shown, plus a look at a small body held whole, which then goes out in
/// the same write as the head.
pub trait OutgoingBody: Body<Data = Bytes, Error: fmt::Display> + Unpin {
    /// The whole body, when it is in memory.
    fn whole(&self) -> Option<&Bytes>;
    /// Called once `whole` went out with the head: nothing is left to send.
    fn clear(&mut self);
}

/// Where a connection goes when its response body has been read to the end.
pub trait CheckIn<T>: Send + Sync {
    fn check_in(&self, conn: Box<Connection<T>>);
}

/// An HTTP/1.1 response body: read from its connection, which goes back to
/// where it came from (`CheckIn`) once the body has been read to the end.
pub struct ResponseBody<T> {
    /// `None` once the body has ended (the connection returned or closed).
    conn: Option<Box<Connection<T>>>,
    decoder: Decoder,
    home: Arc<dyn CheckIn<T>>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> ResponseBody<T> {
    pub fn new(conn: Box<Connection<T>>, decoder: Decoder, home: Arc<dyn CheckIn<T>>) -> Self {
        Self {
            conn: Some(conn),
            decoder,
            home,
        }
    }

    /// Gives the connection back, if it can carry another request.
    pub fn release(&mut self) {
        if let Some(conn) = self.conn.take()
            && conn.reusable()
        {
            self.home.check_in(conn);
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match conn.poll_body(cx, &mut self.decoder) {
            Poll::Ready(None) => {
                self.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                // Free the connection as soon as the last byte is in hand:
                // an app may stop reading at the exact end.
                if self.decoder.is_end() {
                    self.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                self.conn = None;
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.is_end()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}

/// A request body known in full and at most this big goes out in the same
/// write as the head.
const COALESCE_BODY: usize = 16 * 1024;

/// Why an exchange or a response body failed.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection too early.
    #[error("the upstream closed the connection {0}")]
    Closed(String),
    /// The upstream broke the protocol.
    #[error("{0}")]
    Invalid(String),
    /// The request body (from the app) failed or did not match its length.
    #[error("{0}")]
    RequestBody(String),
}

impl Http1Error {
    /// A protocol violation by the upstream (as opposed to a closed or reset
    /// connection).
    pub fn is_protocol(&self) -> bool {
        matches!(self, Http1Error::Invalid(_))
    }
}

fn invalid(message: impl Into<String>) -> Http1Error {
    Http1Error::Invalid(message.into())
}

impl From<FramingError> for Http1Error {
    fn from(error: FramingError) -> Self {
        Http1Error::Invalid(error.0)
    }
}

/// How a request body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestFraming {
    /// No body and no length header (GET, HEAD, DELETE ... without a body).
    None,
    Length(u64),
    Chunked,
}

impl RequestFraming {
    fn of(method: &Method, body: &impl OutgoingBody) -> Self {
        match body.size_hint().exact() {
            // Methods that define a body say "empty" explicitly.
            Some(0) if body.is_end_stream() => {
                if [Method::POST, Method::PUT, Method::PATCH].contains(method) {
                    RequestFraming::Length(0)
                } else {
                    RequestFraming::None
                }
            }
            Some(length) => RequestFraming::Length(length),
            None => RequestFraming::Chunked,
        }
    }
}

/// What a request needs on the wire: its method, origin-form target and
/// fields. `Host`, `Content-Length`, `Transfer-Encoding` and `Connection`
/// in `headers` are ignored: the connection writes its own.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub target: &'a str,
    pub host: &'a HeaderValue,
    pub headers: &'a HeaderMap,
}

/// A response head and how its body is framed.
pub struct ResponseHead {
    pub response: Response<()>,
    pub decoder: Decoder,
}

/// One HTTP/1.1 connection to an upstream.
pub struct Connection<T> {
    io: T,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// Bytes to write (reused from request to request).
    out: BytesMut,
    written: usize,
    /// Whether any byte of the current response has arrived.
    received: bool,
    /// Set when the connection cannot carry another request.
    done: bool,
}

/// Where sending a request stands.
struct Sending {
    framing: RequestFraming,
    /// Body bytes sent so far.
    sent: u64,
    /// The body has ended and its last bytes are in `out`.
    body_ended: bool,
    /// Everything is written and flushed.
    finished: bool,
    /// The write that failed, reported if no response arrives either.
    write_error: Option<io::Error>,
    trailers: Option<HeaderMap>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            out: BytesMut::new(),
            written: 0,
            received: false,
            done: false,
        }
    }

    /// Whether the connection can carry another request. Nothing may arrive
    /// on an idle connection: an end of stream, an error or unsolicited
    /// bytes (a 408 before the upstream closes) all mean it cannot.
    pub fn poll_usable(&mut self, cx: &mut Context<'_>) -> bool {
        if self.done || !self.read.is_empty() {
            return false;
        }
        self.poll_fill(cx).is_pending()
    }

    /// Whether the current (failed) exchange received nothing at all: the
    /// upstream closed the connection without reading the request.
    pub fn received_nothing(&self) -> bool {
        !self.received
    }

    /// Whether the connection may carry another request once the current
    /// response body has been read to the end.
    pub fn reusable(&self) -> bool {
        !self.done && self.read.is_empty()
    }

    /// Sends a request and reads the response head. The request body streams
    /// while the head is awaited: an upstream may answer (e.g. 413) before it
    /// has read all of it, and then the connection is not reused.
    pub async fn exchange<B: OutgoingBody>(
        &mut self,
        head: RequestHead<'_>,
        body: &mut B,
    ) -> Result<ResponseHead, Http1Error> {
        let framing = RequestFraming::of(head.method, body);
        // Each response is read from the start of the buffer, not from
        // wherever the last one ended: the same few cache lines per
        // connection instead of a walk through all of its buffer. (Moves
        // nothing when the buffer is no longer shared; allocates when the
        // last response's header values still hold it.)
        if self.read.is_empty() && self.read.capacity() < READ_CHUNK {
            self.read.reserve(READ_CHUNK);
        }
        self.out.clear();
        self.written = 0;
        self.received = false;
        encode_head(&mut self.out, &head, framing);
        let mut sending = Sending {
            framing,
            sent: 0,
            body_ended: framing == RequestFraming::None,
            finished: false,
            write_error: None,
            trailers: None,
        };
        if let Some(bytes) = body.whole()
            && bytes.len() <= COALESCE_BODY
            && framing == RequestFraming::Length(bytes.len() as u64)
        {
            self.out.extend_from_slice(bytes);
            sending.sent = bytes.len() as u64;
            sending.body_ended = true;
            body.clear();
        }
        let expects_body = head.method != Method::HEAD;
        poll_fn(|cx| self.poll_exchange(cx, body, &mut sending, expects_body)).await
    }

    fn poll_exchange<B: OutgoingBody>(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut B,
        sending: &mut Sending,
        expects_body: bool,
    ) -> Poll<Result<ResponseHead, Http1Error>> {
        if !sending.finished {
            match self.poll_send(cx, body, sending) {
                Poll::Ready(Ok(())) => sending.finished = true,
                Poll::Ready(Err(Http1Error::Io(error))) => {
                    // The upstream may have answered before it stopped
                    // reading: look for its response before failing.
                    self.done = true;
                    sending.finished = true;
                    sending.write_error = Some(error);
                }
                Poll::Ready(Err(error)) => {
                    self.done = true;
                    return Poll::Ready(Err(error));
                }
                Poll::Pending => {}
            }
        }
        match ready!(self.poll_head(cx, expects_body)) {
            Ok(head) => {
                if !sending.finished {
                    // Answered before the whole request was sent.
                    self.done = true;
                }
                Poll::Ready(Ok(head))
            }
            Err(error) => {
                self.done = true;
                Poll::Ready(Err(match sending.write_error.take() {
                    Some(write) if !self.received => Http1Error::Io(write),
                    _ => error,
                }))
            }
        }
    }

    /// Writes the head and the body; `Ready(Ok)` once all of it is written
    /// and flushed.
    fn poll_send<B: OutgoingBody>(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut B,
        sending: &mut Sending,
    ) -> Poll<Result<(), Http1Error>> {
        loop {
            while self.written < self.out.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.written += n;
            }
            self.out.clear();
            self.written = 0;
            if sending.body_ended {
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                return Poll::Ready(Ok(()));
            }
            let frame = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => {
                    // Whatever was written must reach the upstream while the
                    // app takes its time.
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    return Poll::Pending;
                }
                Poll::Ready(frame) => frame,
            };
            match frame {
                None => {
                    self.encode_body_end(sending)?;
                    sending.body_ended = true;
                }
                Some(Err(error)) => {
                    return Poll::Ready(Err(Http1Error::RequestBody(format!(
                        "reading the request body: {error}"
                    ))));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.encode_body_data(sending, &data)?,
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            sending.trailers = Some(trailers);
                        }
                    }
                },
            }
        }
    }

    fn encode_body_data(&mut self, sending: &mut Sending, data: &Bytes) -> Result<(), Http1Error> {
        if data.is_empty() {
            return Ok(());
        }
        sending.sent += data.len() as u64;
        match sending.framing {
            RequestFraming::Length(length) if sending.sent > length => {
                Err(Http1Error::RequestBody(format!(
                    "the request body is longer than its content-length of {length}"
                )))
            }
            RequestFraming::Chunked => {
                put_chunk(&mut self.out, data);
                Ok(())
            }
            _ => {
                self.out.extend_from_slice(data);
                Ok(())
            }
        }
    }

    fn encode_body_end(&mut self, sending: &mut Sending) -> Result<(), Http1Error> {
        match sending.framing {
            RequestFraming::Length(length) if sending.sent != length => {
                Err(Http1Error::RequestBody(format!(
                    "the request body ended after {} of its {length} bytes",
                    sending.sent
                )))
            }
            RequestFraming::Chunked => {
                put_last_chunk(&mut self.out, sending.trailers.as_ref());
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Reads until a final (non-1xx) response head has arrived.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        expects_body: bool,
    ) -> Poll<Result<ResponseHead, Http1Error>> {
        loop {
            if !self.read.is_empty() {
                if let Some(head) = self.parse_head(expects_body)? {
                    return Poll::Ready(Ok(head));
                }
                if self.read.len() >= MAX_HEAD_BYTES {
                    return Poll::Ready(Err(invalid(format!(
                        "the response head is larger than {} KiB",
                        MAX_HEAD_BYTES / 1024
                    ))));
                }
            }
            match ready!(self.poll_fill(cx))? {
                0 if self.received => {
                    return Poll::Ready(Err(Http1Error::Closed(
                        "in the middle of the response head".into(),
                    )));
                }
                0 => {
                    return Poll::Ready(Err(Http1Error::Closed(
                        "before sending a response".into(),
                    )));
                }
                _ => self.received = true,
            }
        }
    }

    /// A final response head from the front of the read buffer, if all of it
    /// is there; informational (1xx) heads are consumed and skipped.
    fn parse_head(&mut self, expects_body: bool) -> Result<Option<ResponseHead>, Http1Error> {
        loop {
            // Uninitialised: httparse fills what it parses, and a message
            // does not pay for zeroing 4 KiB of field slots.
            let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let parse = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                &self.read,
                &mut fields,
            );
            let length = match parse {
                Ok(httparse::Status::Complete(length)) => length,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(invalid(format!(
                        "the response has more than {MAX_HEADERS} header fields"
                    )));
                }
                Err(error) => return Err(invalid(format!("invalid response head: {error}"))),
            };
            let code = parsed.code.unwrap_or_default();
            let version = match parsed.version {
                Some(0) => Version::HTTP_10,
                _ => Version::HTTP_11,
            };
            let spans = field_spans(self.read.as_ptr(), parsed.headers);
            let head = self.read.split_to(length).freeze();
            if (100..200).contains(&code) {
                if code == 101 {
                    return Err(invalid(
                        "101 Switching Protocols, though no upgrade was asked for",
                    ));
                }
                // 100 Continue, 103 Early Hints: the final answer follows.
                continue;
            }
            let status = StatusCode::from_u16(code)
                .map_err(|_| invalid(format!("invalid status code {code}")))?;
            // Room for the fields the sidecar adds on the way back
            // (x-request-id), so adding them does not grow the map.
            let (mut headers, seen) = header_map(&head, &spans, 2)?;
            let decoder = response_decoder(status, version, expects_body, &mut headers, seen)?;
            if version == Version::HTTP_10
                || matches!(decoder, Decoder::UntilClose)
                || (seen.connection && has_token(&headers, &header::CONNECTION, "close"))
            {
                self.done = true;
            }
            let mut response = Response::new(());
            *response.status_mut() = status;
            *response.version_mut() = version;
            *response.headers_mut() = headers;
            return Ok(Some(ResponseHead { response, decoder }));
        }
    }

    /// The next frame of the response body that `decoder` delimits.
    pub fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        decoder: &mut Decoder,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        let frame = ready!(super::poll_body(cx, &mut self.io, &mut self.read, decoder));
        Poll::Ready(frame.map(|frame| {
            frame.map_err(|error| match error {
                BodyError::Io(error) => Http1Error::Io(error),
                BodyError::Framing(error) => error.into(),
                BodyError::Truncated(missing) => {
                    self.done = true;
                    Http1Error::Closed(match missing {
                        Some(missing) => {
                            format!("with {missing} bytes of the response body still to come")
                        }
                        None => "in the middle of a chunked response body".into(),
                    })
                }
            })
        }))
    }

    /// Reads more bytes into the buffer; `Ready(Ok(0))` at the end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        super::poll_fill(&mut self.io, &mut self.read, cx)
    }
}

/// The request line and fields, with the framing header for `framing`.
fn encode_head(out: &mut BytesMut, head: &RequestHead<'_>, framing: RequestFraming) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(head.host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in head.headers {
        if matches!(
            *name,
            header::HOST | header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION
        ) {
            continue;
        }
        put_field(out, name, value);
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(length) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa_u64(length, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// How the body of a response is delimited (RFC 9112 §6.3). A
/// `Transfer-Encoding` overrides a `Content-Length`, which is then removed;
/// conflicting or malformed lengths are refused.
fn response_decoder(
    status: StatusCode,
    version: Version,
    expects_body: bool,
    headers: &mut HeaderMap,
    seen: FieldsSeen,
) -> Result<Decoder, Http1Error> {
    if !expects_body || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Decoder::Done);
    }
    if seen.transfer_encoding {
        headers.remove(header::CONTENT_LENGTH);
        return Ok(if chunked_is_last(headers) && version == Version::HTTP_11 {
            Decoder::Chunked(Chunked::Size)
        } else {
            Decoder::UntilClose
        });
    }
    if !seen.content_length {
        return Ok(Decoder::UntilClose);
    }
    Ok(match content_length(headers)? {
        Some(length) => Decoder::Length(length),
        None => Decoder::UntilClose,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::body::BoxError;
    use crate::egress::body::ProxyBody;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A connection whose upstream end is returned for the test to drive.
    fn pair() -> (Connection<DuplexStream>, DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 20);
        (Connection::new(client), server)
    }

    fn request_head<'a>(
        method: &'a Method,
        target: &'a str,
        host: &'a HeaderValue,
        headers: &'a HeaderMap,
    ) -> RequestHead<'a> {
        RequestHead {
            method,
            target,
            host,
            headers,
        }
    }

    /// Reads what the client wrote until `until` appears.
    async fn read_until(server: &mut DuplexStream, until: &[u8]) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(until.len()).any(|w| w == until) {
            let n = server.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before {until:?}: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    }

    async fn body_of(
        conn: &mut Connection<DuplexStream>,
        mut decoder: Decoder,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), Http1Error> {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = poll_fn(|cx| conn.poll_body(cx, &mut decoder)).await {
            let frame = frame?;
            match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok((data, trailers))
    }

    #[tokio::test]
    async fn writes_the_head_with_host_first_and_no_length_for_a_bodiless_get() {
        let (mut conn, mut server) = pair();
        let host = HeaderValue::from_static("api.example.com");
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("k"));
        headers.insert(header::HOST, HeaderValue::from_static("app-chose-this"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let exchange = tokio::spawn(async move {
            let mut body = ProxyBody::Empty;
            let head = conn
                .exchange(
                    request_head(&Method::GET, "/v1/things?a=1", &host, &headers),
                    &mut body,
                )
                .await
                .unwrap();
            (conn, head)
        });
        let request = read_until(&mut server, b"\r\n\r\n").await;
        assert_eq!(
            String::from_utf8(request).unwrap(),
            "GET /v1/things?a=1 HTTP/1.1\r\nhost: api.example.com\r\nx-api-key: k\r\n\r\n"
        );
        server
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Multi: a\r\nx-multi: b\r\n\r\nhello",
            )
            .await
            .unwrap();
        let (mut conn, head) = exchange.await.unwrap();
        assert_eq!(head.response.status(), 200);
        let values: Vec<_> = head.response.headers().get_all("x-multi").iter().collect();
        assert_eq!(values, ["a", "b"]);
        let (data, _) = body_of(&mut conn, head.decoder).await.unwrap();
        assert_eq!(data, b"hello");
        assert!(conn.reusable());
    }

    #[tokio::test]
    async fn sends_a_known_body_with_its_length_and_a_streamed_one_chunked() {
        let (mut conn, mut server) = pair();
        let host = HeaderValue::from_static("h");
        let headers = HeaderMap::new();
        let upload = tokio::spawn(async move {
            let mut body = ProxyBody::full("{\"a\":1}");
            let head = request_head(&Method::POST, "/", &host, &headers);
            let response = conn.exchange(head, &mut body).await.unwrap();
            let _ = body_of(&mut conn, response.decoder).await.unwrap();
            let stream = futures_util::stream::iter(vec![
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"abc"))),
                Ok(Frame::data(Bytes::from_static(b"0123456789abcdefX"))),
            ]);
            let mut body = ProxyBody::boxed(http_body_util::StreamBody::new(stream));
            let head = request_head(&Method::POST, "/stream", &host, &headers);
            conn.exchange(head, &mut body).await.unwrap();
        });
        let first = read_until(&mut server, b"{\"a\":1}").await;
        assert!(
            String::from_utf8_lossy(&first).contains("content-length: 7\r\n\r\n{\"a\":1}"),
            "{}",
            String::from_utf8_lossy(&first)
        );
        server
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        let second = read_until(&mut server, b"0\r\n\r\n").await;
        assert!(
            String::from_utf8_lossy(&second).ends_with(
                "transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n11\r\n0123456789abcdefX\r\n0\r\n\r\n"
            ),
            "{}",
            String::from_utf8_lossy(&second)
        );
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        upload.await.unwrap();
    }

    /// The outcome of a GET (or HEAD) answered with `raw`, the upstream
    /// closing its end after writing it when `close` is set.
    async fn answer(
        method: Method,
        raw: &'static [u8],
        close: bool,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>, Option<HeaderMap>, bool), Http1Error> {
        let (mut conn, mut server) = pair();
        let host = HeaderValue::from_static("h");
        let headers = HeaderMap::new();
        let upstream = tokio::spawn(async move {
            read_until(&mut server, b"\r\n\r\n").await;
            // Byte by byte: every parser state must survive a short read.
            for byte in raw {
                server.write_all(std::slice::from_ref(byte)).await.unwrap();
            }
            if close {
                drop(server);
                None
            } else {
                Some(server)
            }
        });
        let head = request_head(&method, "/", &host, &headers);
        let result = conn.exchange(head, &mut ProxyBody::Empty).await;
        let _server = upstream.await.unwrap();
        let head = result?;
        let (parts, ()) = head.response.into_parts();
        let (data, trailers) = body_of(&mut conn, head.decoder).await?;
        Ok((parts.status, parts.headers, data, trailers, conn.reusable()))
    }

    fn protocol_error(result: Result<impl std::fmt::Debug, Http1Error>) -> String {
        match result {
            Err(Http1Error::Invalid(message)) => message,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn decodes_chunked_bodies_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1 \r\n!\r\n0\r\nx-checksum: abc\r\n\r\n";
        let (status, headers, data, trailers, reusable) =
            answer(Method::GET, raw, false).await.unwrap();
        assert_eq!(status, 200);
        assert!(headers.contains_key(header::TRANSFER_ENCODING));
        assert_eq!(data, b"hello!");
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");
        assert!(reusable);
        let plain = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (_, _, data, trailers, reusable) = answer(Method::GET, plain, false).await.unwrap();
        assert_eq!(
            (data.as_slice(), trailers, reusable),
            (&b"abc"[..], None, true)
        );
    }

    #[tokio::test]
    async fn informational_answers_are_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok";
        let (status, headers, data, _, _) = answer(Method::GET, raw, false).await.unwrap();
        assert_eq!((status, data.as_slice()), (StatusCode::CREATED, &b"ok"[..]));
        assert!(!headers.contains_key("link"));
        let switching = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n";
        assert!(protocol_error(answer(Method::GET, switching, false).await).contains("101"));
    }

    #[tokio::test]
    async fn bodiless_answers_ignore_their_length() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n";
        let (_, headers, data, _, reusable) = answer(Method::HEAD, head, false).await.unwrap();
        assert_eq!(
            (headers["content-length"].as_bytes(), data.len(), reusable),
            (&b"1234"[..], 0, true)
        );
        for raw in [
            &b"HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\n\r\n",
        ] {
            let (_, _, data, _, reusable) = answer(Method::GET, raw, false).await.unwrap();
            assert_eq!((data.len(), reusable), (0, true));
        }
    }

    #[tokio::test]
    async fn a_body_without_length_ends_at_close_and_the_connection_with_it() {
        let raw = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        let (_, _, data, _, reusable) = answer(Method::GET, raw, true).await.unwrap();
        assert_eq!((data.as_slice(), reusable), (&b"all of it"[..], false));
        let old = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (_, _, data, _, reusable) = answer(Method::GET, old, false).await.unwrap();
        assert_eq!((data.as_slice(), reusable), (&b"ok"[..], false));
        let close =
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 2\r\n\r\nok";
        let (_, _, _, _, reusable) = answer(Method::GET, close, false).await.unwrap();
        assert!(!reusable);
    }

    #[tokio::test]
    async fn transfer_encoding_overrides_content_length_and_forbids_reuse_unless_chunked() {
        let both = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (_, headers, data, _, _) = answer(Method::GET, both, false).await.unwrap();
        assert_eq!(data, b"ok");
        assert!(!headers.contains_key(header::CONTENT_LENGTH));
        let gzip = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nraw";
        let (_, _, data, _, reusable) = answer(Method::GET, gzip, true).await.unwrap();
        assert_eq!((data.as_slice(), reusable), (&b"raw"[..], false));
    }

    #[tokio::test]
    async fn ambiguous_or_malformed_framing_is_refused() {
        let cases: [(&[u8], &str); 8] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
                "content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\r\n",
                "CRLF",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokX\r\n",
                "CRLF",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\n",
                "chunk size",
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "response head"),
        ];
        for (raw, expected) in cases {
            let raw: &'static [u8] = Box::leak(raw.to_vec().into_boxed_slice());
            let message = protocol_error(answer(Method::GET, raw, false).await);
            assert!(
                message.contains(expected),
                "{message:?} for {:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // Two identical lengths are one length.
        let same = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(answer(Method::GET, same, false).await.unwrap().2, b"ok");
    }

    #[tokio::test]
    async fn a_response_cut_short_is_an_error_not_a_shorter_body() {
        let short = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc";
        assert!(
            matches!(answer(Method::GET, short, true).await, Err(Http1Error::Closed(m)) if m.contains("7 bytes"))
        );
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab";
        assert!(matches!(
            answer(Method::GET, chunked, true).await,
            Err(Http1Error::Closed(_))
        ));
        let head = b"HTTP/1.1 200 OK\r\ncontent-";
        assert!(
            matches!(answer(Method::GET, head, true).await, Err(Http1Error::Closed(m)) if m.contains("head"))
        );
        assert!(
            matches!(answer(Method::GET, b"", true).await, Err(Http1Error::Closed(m)) if m.contains("before"))
        );
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused() {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        while raw.len() <= MAX_HEAD_BYTES {
            raw.extend_from_slice(b"x-filler: 0123456789012345678901234567890123456789\r\n");
        }
        let raw: &'static [u8] = Box::leak(raw.into_boxed_slice());
        let message = protocol_error(answer(Method::GET, raw, false).await);
        assert!(
            message.contains("header fields") || message.contains("KiB"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn an_answer_before_the_upload_ends_stops_the_upload_and_the_reuse() {
        let (mut conn, mut server) = pair();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let mut body = ProxyBody::boxed(http_body_util::StreamBody::new(tokio_stream_from(rx)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"first part"))))
            .await
            .unwrap();
        let upstream = tokio::spawn(async move {
            read_until(&mut server, b"first part").await;
            server
                .write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            server
        });
        let host = HeaderValue::from_static("h");
        let headers = HeaderMap::new();
        let head = request_head(&Method::POST, "/upload", &host, &headers);
        let response = conn.exchange(head, &mut body).await.unwrap();
        assert_eq!(response.response.status(), 413);
        assert!(
            !conn.reusable(),
            "the rest of the upload would be read as a request"
        );
        drop((upstream.await.unwrap(), tx));
    }

    /// A stream of the frames sent on `rx`.
    fn tokio_stream_from(
        rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) })
    }

    #[tokio::test]
    async fn an_idle_connection_is_unusable_once_the_upstream_closed_or_spoke() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (mut conn, server) = pair();
        assert!(conn.poll_usable(&mut cx));
        drop(server);
        assert!(!conn.poll_usable(&mut cx));
        let (mut conn, mut server) = pair();
        server
            .write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await
            .unwrap();
        assert!(!conn.poll_usable(&mut cx));
    }
}
