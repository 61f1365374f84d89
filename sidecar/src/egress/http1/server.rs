//! The HTTP/1.1 server side of the app's connection to an egress listener:
//! reads each request, hands it to the pipeline, writes the response, and
//! keeps the connection for the next request when both sides allow it.
//!
//! A request body streams straight from the connection: [`AppBody`] takes
//! the connection's read side while the pipeline reads it and hands it back
//! at its end. A body left unread makes the response close the connection
//! (after a bounded lingering read, so the app still sees the answer).
//!
//! Only egress listeners use this (the app on loopback is the one peer, so
//! there is no header read timeout); `egress::server` routes h2c connections
//! to hyper before any byte reaches this module.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;

use super::app_body::Reader;
pub use super::app_body::{AppBody, AppBodyError};
use super::{
    Chunked, Decoder, FieldsSeen, MAX_HEAD_BYTES, MAX_HEADERS, READ_CHUNK, chunked_is_last,
    content_length, field_spans, has_token, header_map, itoa_u64, only_chunked, put_chunk,
    put_chunk_size, put_field, put_last_chunk,
};
use crate::egress::Handle;
use crate::egress::body::ProxyBody;
use crate::egress::error::ProxyError;

/// Response bytes gathered before they are written: small frames go out
/// together, larger ones are written from their own buffer.
const WRITE_BATCH: usize = 16 * 1024;
/// After a response that closes the connection while the app is still
/// sending its request body, how much more is read and dropped (so that
/// closing does not reset the connection before the app reads the answer).
const LINGER_BYTES: usize = 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// What the connection needs to know about a request besides the request.
struct RequestFacts {
    /// A HEAD request: the response has no body.
    head: bool,
    version: Version,
    /// The app allows the connection to stay open after this request.
    keep_alive: bool,
    /// `TE: trailers`: the app reads trailer fields.
    wants_trailers: bool,
}

/// A request head, its body's framing and what the response depends on.
struct ParsedHead {
    request: Request<()>,
    body: Decoder,
    expect_continue: bool,
    facts: RequestFacts,
}

/// A request refused before it reaches the pipeline; the connection closes
/// after the answer.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: String,
    /// Whether the peer is sent an answer: not when it does not speak
    /// HTTP/1.x at all (an invalid HTTP/2 preface), which must only see
    /// the connection close (RFC 9113 §3.4).
    answered: bool,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
            answered: true,
        }
    }

    fn not_http1() -> Self {
        Refusal {
            answered: false,
            ..bad_request("the request line is not HTTP/1.x")
        }
    }
}

fn bad_request(reason: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, reason)
}

impl Refusal {
    fn into_response(self) -> Response<ProxyBody> {
        let mut response = ProxyError::BadRequest(self.reason).into_response();
        *response.status_mut() = self.status;
        response
    }
}

/// Serves HTTP/1.1 on `stream` until the app closes it, a response must
/// close it, or `stop` is set (then an idle connection closes at once and a
/// busy one after its response). `read` holds bytes already read from it.
pub async fn serve_connection<H: Handle>(
    stream: TcpStream,
    read: BytesMut,
    handler: H,
    stop: Arc<AtomicBool>,
) {
    let (io, write) = stream.into_split();
    let mut connection = AppConnection {
        reader: Some(Reader { io, buf: read }),
        write,
        out: BytesMut::with_capacity(1024),
    };
    if let Err(error) = connection.run(&handler, &stop).await {
        tracing::debug!(%error, "app connection ended with an error");
    }
}

struct AppConnection {
    /// `None` while a request body has it.
    reader: Option<Reader>,
    write: OwnedWriteHalf,
    /// Response bytes not yet written (reused from response to response).
    out: BytesMut,
}

impl AppConnection {
    async fn run<H: Handle>(&mut self, handler: &H, stop: &AtomicBool) -> io::Result<()> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(());
            };
            let head = match next_head(reader, stop).await? {
                None => return Ok(()),
                Some(Ok(head)) => head,
                Some(Err(refusal)) => {
                    tracing::debug!(status = %refusal.status, reason = %refusal.reason, "malformed request from the app");
                    if !refusal.answered {
                        return Ok(());
                    }
                    let facts = RequestFacts {
                        head: false,
                        version: Version::HTTP_11,
                        keep_alive: false,
                        wants_trailers: false,
                    };
                    self.write_response(refusal.into_response(), &facts, false)
                        .await?;
                    return Ok(());
                }
            };
            let ParsedHead {
                request,
                body,
                expect_continue,
                mut facts,
            } = head;
            let mut body_back = None;
            let body = if body.is_end() {
                ProxyBody::Empty
            } else {
                if expect_continue {
                    self.write
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await?;
                }
                let (back, returned) = oneshot::channel();
                body_back = Some(returned);
                ProxyBody::App(AppBody {
                    reader: self.reader.take(),
                    decoder: body,
                    back: Some(back),
                })
            };
            let answer = handler.handle(request.map(|()| body));
            let response = match self.reader.as_mut() {
                Some(reader) => match until_answered_or_hung_up(answer, reader).await {
                    Some(response) => response,
                    // The app is gone: dropping its request cancels it.
                    None => return Ok(()),
                },
                None => answer.await,
            };
            let mut unread_body = false;
            if let Some(mut returned) = body_back {
                match returned.try_recv() {
                    Ok((reader, complete)) => {
                        unread_body = !complete;
                        self.reader = Some(reader);
                    }
                    // Still being read (or failed): this connection cannot
                    // carry another request.
                    Err(_) => facts.keep_alive = false,
                }
            }
            let keep_alive = facts.keep_alive && !unread_body && !stop.load(Ordering::Relaxed);
            let kept = self.write_response(response, &facts, keep_alive).await?;
            if !kept {
                if unread_body && let Some(reader) = self.reader.take() {
                    self.linger(reader).await;
                }
                return Ok(());
            }
        }
    }

    /// Writes `response`; `Ok(true)` when the connection stays open for the
    /// next request. A response body that fails midway aborts the
    /// connection, so the app sees a truncated response, never a short one.
    async fn write_response(
        &mut self,
        response: Response<ProxyBody>,
        request: &RequestFacts,
        mut keep_alive: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let bodiless_status = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if request.head || bodiless_status {
            OutFraming::None
        } else {
            // The body's own length when it knows it, else the one the
            // response declares (checked as the body is written).
            let declared = || content_length(&parts.headers).ok().flatten();
            match body.size_hint().exact().or_else(declared) {
                Some(length) => OutFraming::Length(length),
                None if request.version == Version::HTTP_11 => OutFraming::Chunked,
                None => OutFraming::UntilClose,
            }
        };
        if framing == OutFraming::UntilClose {
            keep_alive = false;
        }
        // HEAD and 304 describe the body they leave out: their length stays.
        let bodiless_length = (framing == OutFraming::None
            && !status.is_informational()
            && status != StatusCode::NO_CONTENT)
            .then(|| body.size_hint().exact())
            .flatten();
        encode_head(
            &mut self.out,
            status,
            &parts.headers,
            framing,
            bodiless_length,
            keep_alive,
            request.version,
        );
        if framing == OutFraming::None {
            self.flush_out().await?;
            return Ok(keep_alive);
        }
        let mut written = 0u64;
        let mut trailers = None;
        loop {
            // Whatever the body has ready joins the head in one write.
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    self.flush_out().await?;
                    body.frame().await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(error)) => {
                    // What was read goes out before the close, so the app
                    // sees where the response broke off.
                    self.flush_out().await?;
                    return Err(io::Error::other(format!(
                        "the response body failed midway: {error}"
                    )));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        continue;
                    }
                },
            };
            if data.is_empty() {
                continue;
            }
            written += data.len() as u64;
            if let OutFraming::Length(length) = framing
                && written > length
            {
                return Err(io::Error::other(format!(
                    "the response body is longer than its length of {length}"
                )));
            }
            self.push_data(&data, framing).await?;
        }
        match framing {
            OutFraming::Length(length) if written != length => {
                return Err(io::Error::other(format!(
                    "the response body ended after {written} of its {length} bytes"
                )));
            }
            OutFraming::Chunked => put_last_chunk(
                &mut self.out,
                trailers.as_ref().filter(|_| request.wants_trailers),
            ),
            _ => {}
        }
        self.flush_out().await?;
        Ok(keep_alive)
    }

    /// Adds body data to the output: copied when small, else written from
    /// its own buffer after what is pending.
    async fn push_data(&mut self, data: &Bytes, framing: OutFraming) -> io::Result<()> {
        if data.len() <= WRITE_BATCH {
            match framing {
                OutFraming::Chunked => put_chunk(&mut self.out, data),
                _ => self.out.extend_from_slice(data),
            }
            if self.out.len() >= WRITE_BATCH {
                self.flush_out().await?;
            }
            return Ok(());
        }
        if framing == OutFraming::Chunked {
            put_chunk_size(&mut self.out, data.len());
        }
        self.flush_out().await?;
        self.write.write_all(data).await?;
        if framing == OutFraming::Chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    async fn flush_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.write.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Closes the sending side, then reads and drops what the app is still
    /// sending (bounded in bytes and time), so that closing with unread
    /// bytes does not reset the connection before the app read the answer.
    async fn linger(&mut self, mut reader: Reader) {
        let _ = self.write.shutdown().await;
        let mut dropped = 0usize;
        let drain = poll_fn(|cx| {
            while dropped < LINGER_BYTES {
                reader.buf.clear();
                match ready!(reader.poll_fill(cx)) {
                    Ok(0) | Err(_) => return Poll::Ready(()),
                    Ok(n) => dropped += n,
                }
            }
            Poll::Ready(())
        });
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    }
}

/// Awaits the pipeline's answer while watching the idle read side: an app
/// that hangs up cancels its request (`None`), as with hyper. Bytes of a
/// pipelined next request stay buffered for later.
async fn until_answered_or_hung_up(
    mut answer: Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>,
    reader: &mut Reader,
) -> Option<Response<ProxyBody>> {
    let mut watching = reader.buf.is_empty();
    poll_fn(|cx| {
        if let Poll::Ready(response) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        if watching {
            match reader.poll_fill(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                // The next request, early: read no further until it is due.
                Poll::Ready(Ok(_)) => watching = false,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// The next request head: `None` when the app closed the connection between
/// requests (or `stop` is set while it is idle), a refusal when the head
/// is malformed.
async fn next_head(
    reader: &mut Reader,
    stop: &AtomicBool,
) -> io::Result<Option<Result<ParsedHead, Refusal>>> {
    // Each head is read from the start of the buffer (reclaimed in place
    // once the last request's header values are dropped).
    if reader.buf.is_empty() && reader.buf.capacity() < READ_CHUNK {
        reader.buf.reserve(READ_CHUNK);
    }
    poll_fn(|cx| {
        loop {
            if !reader.buf.is_empty() {
                match parse_head(&mut reader.buf) {
                    Ok(Some(head)) => return Poll::Ready(Ok(Some(Ok(head)))),
                    Ok(None) => {}
                    Err(refusal) => return Poll::Ready(Ok(Some(Err(refusal)))),
                }
            } else if stop.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(None));
            }
            match ready!(reader.poll_fill(cx))? {
                0 if reader.buf.is_empty() => return Poll::Ready(Ok(None)),
                0 => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the app closed the connection in the middle of a request head",
                    )));
                }
                _ => {}
            }
        }
    })
    .await
}

/// A request head from the front of `buf`, if all of it is there.
fn parse_head(buf: &mut BytesMut) -> Result<Option<ParsedHead>, Refusal> {
    // Uninitialised: httparse fills what it parses, and a message
    // does not pay for zeroing 4 KiB of field slots.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match parsed.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES && !buf.contains(&b'\n') => {
            return Err(Refusal::new(
                StatusCode::URI_TOO_LONG,
                format!(
                    "the request line is longer than {} KiB",
                    MAX_HEAD_BYTES / 1024
                ),
            ));
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(Refusal::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "the request head is larger than {} KiB",
                    MAX_HEAD_BYTES / 1024
                ),
            ));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request has more than {MAX_HEADERS} header fields"),
            ));
        }
        Err(httparse::Error::Version) => return Err(Refusal::not_http1()),
        Err(error) => return Err(bad_request(format!("invalid request head: {error}"))),
    };
    let method = parsed.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| bad_request(format!("invalid method {method:?}")))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = buf.as_ptr() as usize;
    let path = parsed.path.unwrap_or_default();
    let target = (path.as_ptr() as usize - base, path.len());
    let spans = field_spans(buf.as_ptr(), parsed.headers);
    let head = buf.split_to(length).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1)).map_err(|_| {
        let shown: String = String::from_utf8_lossy(&head[target.0..target.0 + target.1])
            .chars()
            .take(200)
            .collect();
        bad_request(format!("invalid request target {shown:?}"))
    })?;
    // Room for what the pipeline adds (credentials, an idempotency key).
    let (headers, seen) =
        header_map(&head, &spans, 2).map_err(|error| bad_request(error.to_string()))?;
    // RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request
    // without exactly one Host (the upstream's replaces it, but a second
    // one is where proxies and servers disagree).
    if version == Version::HTTP_11 && seen.hosts != 1 {
        return Err(bad_request(if seen.hosts == 0 {
            "an HTTP/1.1 request needs a host header"
        } else {
            "the request has more than one host header"
        }));
    }
    let body = request_body(version, &headers, seen)?;
    let facts = RequestFacts {
        head: method == Method::HEAD,
        version,
        keep_alive: if version == Version::HTTP_11 {
            !(seen.connection && has_token(&headers, &header::CONNECTION, "close"))
        } else {
            seen.connection && has_token(&headers, &header::CONNECTION, "keep-alive")
        },
        wants_trailers: seen.te && has_token(&headers, &header::TE, "trailers"),
    };
    let expect_continue = version == Version::HTTP_11
        && seen.expect
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(ParsedHead {
        request,
        body,
        expect_continue,
        facts,
    }))
}

/// How the request body is delimited (RFC 9112 §6.3). Anything a proxy
/// could read differently from the next hop is refused: both framing
/// headers (the shape of request smuggling), a transfer coding that does
/// not end in chunked, Transfer-Encoding from HTTP/1.0.
fn request_body(
    version: Version,
    headers: &HeaderMap,
    seen: FieldsSeen,
) -> Result<Decoder, Refusal> {
    if seen.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(bad_request(
                "header transfer-encoding is not allowed in an HTTP/1.0 request",
            ));
        }
        if seen.content_length {
            return Err(bad_request(
                "the request has both transfer-encoding and content-length headers",
            ));
        }
        if !chunked_is_last(headers) {
            return Err(bad_request(
                "header transfer-encoding must end with chunked in a request",
            ));
        }
        if !only_chunked(headers) {
            // RFC 9112 §6.1: a coding the server does not understand is 501.
            // Decoding only the chunks would forward a body the app did
            // not mean.
            return Err(Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                "header transfer-encoding: only chunked is supported in a request",
            ));
        }
        return Ok(Decoder::Chunked(Chunked::Size));
    }
    if !seen.content_length {
        return Ok(Decoder::Done);
    }
    match content_length(headers) {
        Ok(Some(length)) => Ok(Decoder::Length(length)),
        Ok(None) => Ok(Decoder::Done),
        Err(error) => Err(bad_request(error.to_string())),
    }
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutFraming {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 and no length: the end of the connection ends the body.
    UntilClose,
}

/// The status line and fields, with this connection's framing fields in
/// place of any the response carries.
fn encode_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    framing: OutFraming,
    bodiless_length: Option<u64>,
    keep_alive: bool,
    version: Version,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    let mut has_length = false;
    for (name, value) in headers {
        match *name {
            header::CONNECTION | header::TRANSFER_ENCODING => continue,
            header::CONTENT_LENGTH if framing != OutFraming::None => continue,
            header::CONTENT_LENGTH => has_length = true,
            header::DATE => has_date = true,
            _ => {}
        }
        put_field(out, name, value);
    }
    if !has_date {
        put_date(out);
    }
    let length = match framing {
        OutFraming::Length(length) => Some(length),
        OutFraming::None if !has_length => bodiless_length.filter(|&length| length > 0),
        _ => None,
    };
    if let Some(length) = length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa_u64(length, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
    }
    if framing == OutFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// `date: <now>`, formatted once a second per thread.
fn put_date(out: &mut BytesMut) {
    thread_local! {
        static DATE: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            let text = httpdate::fmt_http_date(now);
            *date = (
                second,
                HeaderValue::from_str(&text).expect("an HTTP date is a valid header value"),
            );
        }
        put_field(out, &header::DATE, &date.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use std::net::SocketAddr;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Answers `METHOD TARGET` and the request body; a few paths behave
    /// differently (see `handle`).
    #[derive(Clone, Default)]
    struct Echo {
        /// Set when a request future is dropped before it finished.
        cancelled: Arc<AtomicBool>,
    }

    struct SetOnDrop(Arc<AtomicBool>, bool);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            if !self.1 {
                self.0.store(true, Ordering::SeqCst);
            }
        }
    }

    impl Handle for Echo {
        fn handle(
            &self,
            request: Request<ProxyBody>,
        ) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> {
            let cancelled = self.cancelled.clone();
            Box::pin(async move {
                let (parts, body) = request.into_parts();
                let path = parts.uri.path().to_string();
                let mut guard = SetOnDrop(cancelled, false);
                if path == "/forever" {
                    std::future::pending::<()>().await;
                }
                if path == "/slow" {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                guard.1 = true;
                if path == "/ignore-body" {
                    return Response::new(ProxyBody::full("not read"));
                }
                if path == "/streamed" {
                    // No length known up front: chunked (or close-delimited).
                    let (tx, rx) =
                        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
                    tokio::spawn(async move {
                        for part in ["one ", "two ", "three"] {
                            let _ = tx.send(Ok(Frame::data(Bytes::from(part)))).await;
                        }
                        let mut trailers = HeaderMap::new();
                        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
                        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                    });
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|f| (f, rx))
                    });
                    return Response::new(ProxyBody::boxed(http_body_util::StreamBody::new(
                        stream,
                    )));
                }
                if path == "/fails-midway" {
                    let stream = futures_util::stream::iter([
                        Ok(Frame::data(Bytes::from("partial"))),
                        Err(std::io::Error::other("upstream reset")),
                    ]);
                    let body = http_body_util::StreamBody::new(stream);
                    let mut response = Response::new(ProxyBody::boxed(body));
                    response
                        .headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("100"));
                    return response;
                }
                let collected = match body.collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(error) => {
                        return ProxyError::BadRequest(error.to_string()).into_response();
                    }
                };
                let mut text = format!("{} {}\n", parts.method, parts.uri).into_bytes();
                text.extend_from_slice(&collected);
                let mut response = Response::new(ProxyBody::full(text));
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
                response
            })
        }
    }

    async fn server(handler: Echo) -> (SocketAddr, Arc<AtomicBool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(
                    stream,
                    BytesMut::new(),
                    handler.clone(),
                    stopping.clone(),
                ));
            }
        });
        (addr, stop)
    }

    /// One response as the app reads it.
    #[derive(Debug)]
    struct Answer {
        status: u16,
        headers: HeaderMap,
        body: Vec<u8>,
        trailers: Vec<u8>,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).map(|v| v.to_str().unwrap())
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// A raw client connection: what the app writes and reads, byte for byte.
    struct RawApp {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    impl RawApp {
        async fn connect(addr: SocketAddr) -> Self {
            Self {
                stream: TcpStream::connect(addr).await.unwrap(),
                buf: Vec::new(),
            }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.unwrap();
        }

        /// Reads more; `false` at the end of stream.
        async fn fill(&mut self) -> bool {
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                .await
                .expect("no answer within 5 s")
                .unwrap_or(0);
            self.buf.extend_from_slice(&chunk[..n]);
            n > 0
        }

        /// Whether the server closed the connection (after anything buffered).
        async fn closed(&mut self) -> bool {
            self.buf.is_empty() && !self.fill().await
        }

        /// The next response to a request of `method`.
        async fn answer(&mut self, method: &str) -> Answer {
            let (status, headers) = loop {
                let mut fields = [httparse::EMPTY_HEADER; 64];
                let mut parsed = httparse::Response::new(&mut fields);
                if let httparse::Status::Complete(n) = parsed.parse(&self.buf).unwrap() {
                    let mut headers = HeaderMap::new();
                    for f in parsed.headers.iter() {
                        headers.append(
                            http::HeaderName::from_bytes(f.name.as_bytes()).unwrap(),
                            HeaderValue::from_bytes(f.value).unwrap(),
                        );
                    }
                    let status = parsed.code.unwrap();
                    self.buf.drain(..n);
                    break (status, headers);
                }
                assert!(
                    self.fill().await,
                    "closed before a response head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            };
            let mut answer = Answer {
                status,
                headers,
                body: Vec::new(),
                trailers: Vec::new(),
            };
            if method == "HEAD" || status == 204 || status == 304 || status < 200 {
                return answer;
            }
            if answer.header("transfer-encoding") == Some("chunked") {
                loop {
                    while !self.buf.windows(2).any(|w| w == b"\r\n") {
                        assert!(self.fill().await, "closed in a chunk size");
                    }
                    let end = self.buf.windows(2).position(|w| w == b"\r\n").unwrap();
                    let size =
                        usize::from_str_radix(std::str::from_utf8(&self.buf[..end]).unwrap(), 16)
                            .unwrap();
                    self.buf.drain(..end + 2);
                    if size == 0 {
                        while !self.buf.windows(2).any(|w| w == b"\r\n") {
                            assert!(self.fill().await, "closed in the trailers");
                        }
                        loop {
                            let end = self.buf.windows(2).position(|w| w == b"\r\n").unwrap();
                            let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                            if end == 0 {
                                return answer;
                            }
                            answer.trailers.extend_from_slice(&line);
                            while !self.buf.windows(2).any(|w| w == b"\r\n") {
                                assert!(self.fill().await, "closed in the trailers");
                            }
                        }
                    }
                    while self.buf.len() < size + 2 {
                        assert!(self.fill().await, "closed in a chunk");
                    }
                    answer.body.extend(self.buf.drain(..size));
                    assert_eq!(self.buf.drain(..2).collect::<Vec<_>>(), b"\r\n");
                }
            }
            match answer.header("content-length") {
                Some(length) => {
                    let length: usize = length.parse().unwrap();
                    while self.buf.len() < length {
                        assert!(self.fill().await, "closed in a body");
                    }
                    answer.body = self.buf.drain(..length).collect();
                }
                None => {
                    while self.fill().await {}
                    answer.body = std::mem::take(&mut self.buf);
                }
            }
            answer
        }
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (addr, _) = server(Echo::default()).await;
        let mut app = RawApp::connect(addr).await;
        app.send(b"GET /a?x=1 HTTP/1.1\r\nhost: s\r\n\r\nPOST /b HTTP/1.1\r\nhost: s\r\ncontent-length: 5\r\n\r\nhelloGET /c HTTP/1.1\r\nhost: s\r\n\r\n").await;
        for expected in ["GET /a?x=1\n", "POST /b\nhello", "GET /c\n"] {
            let answer = app.answer("GET").await;
            assert_eq!((answer.status, answer.text().as_str()), (200, expected));
            assert_eq!(
                answer.header("content-length").unwrap(),
                expected.len().to_string(),
                "the body's true length, not the one the handler wrote"
            );
            assert!(answer.header("date").is_some());
            assert!(answer.header("connection").is_none());
        }
    }

    #[tokio::test]
    async fn a_chunked_upload_after_100_continue_streams_and_keeps_the_connection() {
        let (addr, _) = server(Echo::default()).await;
        let mut app = RawApp::connect(addr).await;
        app.send(b"PUT /up HTTP/1.1\r\nhost: s\r\nexpect: 100-continue\r\ntransfer-encoding: chunked\r\n\r\n").await;
        let continued = app.answer("GET").await;
        assert_eq!(continued.status, 100);
        app.send(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n")
            .await;
        let answer = app.answer("PUT").await;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (200, "PUT /up\nhello world")
        );
        // The same connection carries the next request.
        app.send(b"GET /next HTTP/1.1\r\nhost: s\r\n\r\n").await;
        assert_eq!(app.answer("GET").await.text(), "GET /next\n");
    }

    #[tokio::test]
    async fn ambiguous_or_malformed_heads_are_refused_with_the_reason_and_a_close() {
        let (addr, _) = server(Echo::default()).await;
        let big = format!(
            "GET / HTTP/1.1\r\nhost: s\r\nx-big: {}\r\n\r\n",
            "a".repeat(70 * 1024)
        );
        let many = format!(
            "GET / HTTP/1.1\r\nhost: s\r\n{}\r\n",
            "x-f: 1\r\n".repeat(200)
        );
        let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(70 * 1024));
        let cases: [(&[u8], u16, &str); 14] = [
            (b"GET / HTTP/1.1\r\n\r\n", 400, "needs a host header"),
            (
                b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
                400,
                "more than one host header",
            ),
            (
                b"POST / HTTP/1.1\r\nhost: s\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                501,
                "only chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nhost: s\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n",
                501,
                "only chunked",
            ),
            (long_target.as_bytes(), 414, "request line is longer than 64 KiB"),
            // h2spec http2/3.5/2, with no line end: refused (closed, status
            // 0 here) as soon as it cannot become an HTTP/1.x request line.
            (b"INVALID CONNECTION PREFACE", 0, ""),
            (
                b"POST / HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\nabc",
                400,
                "both transfer-encoding and content-length",
            ),
            (
                b"POST / HTTP/1.1\r\nhost: s\r\ntransfer-encoding: gzip\r\n\r\n",
                400,
                "transfer-encoding must end with chunked",
            ),
            (
                b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
                400,
                "HTTP/1.0",
            ),
            (
                b"POST / HTTP/1.1\r\nhost: s\r\ncontent-length: 3, 4\r\n\r\nabc",
                400,
                "content-length",
            ),
            (
                b"POST / HTTP/1.1\r\nhost: s\r\ncontent-length: -3\r\n\r\n",
                400,
                "content-length",
            ),
            (
                b"GET / HTTP/1.1\r\nhost: s\r\nbad header: 1\r\n\r\n",
                400,
                "invalid request head",
            ),
            (big.as_bytes(), 431, "larger than 64 KiB"),
            (many.as_bytes(), 431, "more than 128 header fields"),
        ];
        for (request, status, reason) in cases {
            let mut app = RawApp::connect(addr).await;
            app.send(request).await;
            if status == 0 {
                // Not HTTP/1.x at all: no answer it could read, a close.
                assert!(app.closed().await, "an answer or still open");
                continue;
            }
            let answer = app.answer("GET").await;
            let shown = String::from_utf8_lossy(&request[..request.len().min(60)]);
            assert_eq!(answer.status, status, "{shown}");
            assert!(answer.text().contains(reason), "{shown}: {}", answer.text());
            assert_eq!(answer.header("x-sluice-error"), Some("bad-request"));
            assert_eq!(answer.header("connection"), Some("close"));
            assert!(app.closed().await, "{shown}: still open");
        }
    }

    #[tokio::test]
    async fn a_truncated_or_malformed_upload_fails_the_request_not_the_server() {
        let (addr, _) = server(Echo::default()).await;
        let mut app = RawApp::connect(addr).await;
        app.send(b"POST / HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
            .await;
        let answer = app.answer("POST").await;
        assert_eq!(answer.status, 400);
        assert!(
            answer.text().contains("invalid chunk size"),
            "{}",
            answer.text()
        );
        assert!(app.closed().await);

        let mut app = RawApp::connect(addr).await;
        app.send(b"POST / HTTP/1.1\r\nhost: s\r\ncontent-length: 10\r\n\r\nabc")
            .await;
        app.stream.shutdown().await.unwrap();
        let answer = app.answer("POST").await;
        assert!(
            answer
                .text()
                .contains("7 bytes of the request body still to come"),
            "{}",
            answer.text()
        );
    }

    #[tokio::test]
    async fn http_1_0_closes_unless_kept_alive_and_never_gets_chunks() {
        let (addr, _) = server(Echo::default()).await;
        let mut app = RawApp::connect(addr).await;
        app.send(b"GET /old HTTP/1.0\r\n\r\n").await;
        let answer = app.answer("GET").await;
        assert_eq!(
            (answer.status, answer.header("connection")),
            (200, Some("close"))
        );
        assert!(app.closed().await);

        let mut app = RawApp::connect(addr).await;
        app.send(b"GET /old HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await;
        assert_eq!(
            app.answer("GET").await.header("connection"),
            Some("keep-alive")
        );
        // A body of unknown length: delimited by the close for HTTP/1.0.
        app.send(b"GET /streamed HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await;
        let answer = app.answer("GET").await;
        assert_eq!(answer.header("transfer-encoding"), None);
        assert_eq!(answer.header("connection"), Some("close"));
        assert_eq!(answer.text(), "one two three");
    }

    #[tokio::test]
    async fn streamed_bodies_are_chunked_with_trailers_only_for_who_asks() {
        let (addr, _) = server(Echo::default()).await;
        let mut app = RawApp::connect(addr).await;
        app.send(b"GET /streamed HTTP/1.1\r\nhost: s\r\n\r\n").await;
        let answer = app.answer("GET").await;
        assert_eq!(
            (answer.header("transfer-encoding"), answer.text().as_str()),
            (Some("chunked"), "one two three")
        );
        assert!(answer.trailers.is_empty());
        app.send(b"GET /streamed HTTP/1.1\r\nhost: s\r\nte: trailers\r\n\r\n")
            .await;
        let answer = app.answer("GET").await;
        assert_eq!(answer.trailers, b"x-checksum: abc\r\n");
    }

    #[tokio::test]
    async fn head_answers_keep_their_length_and_send_no_body() {
        let (addr, _) = server(Echo::default()).await;
        let mut app = RawApp::connect(addr).await;
        app.send(b"HEAD /h HTTP/1.1\r\nhost: s\r\n\r\nGET /g HTTP/1.1\r\nhost: s\r\n\r\n")
            .await;
        let head = app.answer("HEAD").await;
        assert_eq!(
            (head.status, head.header("content-length")),
            (200, Some("999")),
            "as the handler said"
        );
        // Had a body been written, it would be read as the next answer.
        assert_eq!(app.answer("GET").await.text(), "GET /g\n");
    }

    #[tokio::test]
    async fn an_unread_upload_is_answered_then_the_connection_closes() {
        let (addr, _) = server(Echo::default()).await;
        let mut request =
            b"POST /ignore-body HTTP/1.1\r\nhost: s\r\ncontent-length: 300000\r\n\r\n".to_vec();
        request.extend(std::iter::repeat_n(b'x', 300_000));
        // Written while the answer is read: the server lingers over the rest.
        let (mut read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
        let writer = tokio::spawn(async move { write.write_all(&request).await });
        let mut bytes = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut bytes))
            .await
            .expect("the connection was not closed");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n")
                && text.contains("connection: close\r\n")
                && text.ends_with("not read"),
            "{text}"
        );
        let _ = writer.await;
    }

    #[tokio::test]
    async fn an_app_that_hangs_up_cancels_its_request() {
        let echo = Echo::default();
        let (addr, _) = server(echo.clone()).await;
        let mut app = RawApp::connect(addr).await;
        app.send(b"GET /forever HTTP/1.1\r\nhost: s\r\n\r\n").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!echo.cancelled.load(Ordering::SeqCst));
        drop(app);
        for _ in 0..100 {
            if echo.cancelled.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the request outlived its connection");
    }

    #[tokio::test]
    async fn a_response_body_that_fails_midway_truncates_the_answer() {
        let (addr, _) = server(Echo::default()).await;
        let mut app = RawApp::connect(addr).await;
        app.send(b"GET /fails-midway HTTP/1.1\r\nhost: s\r\n\r\n")
            .await;
        while app.fill().await {}
        let text = String::from_utf8_lossy(&app.buf);
        assert!(
            text.contains("content-length: 100\r\n") && text.ends_with("partial"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_stop_closes_idle_connections_and_busy_ones_after_their_answer() {
        let (addr, stop) = server(Echo::default()).await;
        let mut idle = RawApp::connect(addr).await;
        idle.send(b"GET /1 HTTP/1.1\r\nhost: s\r\n\r\n").await;
        assert_eq!(idle.answer("GET").await.status, 200);
        let mut busy = RawApp::connect(addr).await;
        busy.send(b"GET /slow HTTP/1.1\r\nhost: s\r\n\r\n").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.store(true, Ordering::SeqCst);
        // The busy one finishes, and says it closes.
        let answer = busy.answer("GET").await;
        assert_eq!(
            (answer.status, answer.header("connection")),
            (200, Some("close"))
        );
        assert!(busy.closed().await);
        // The drain would wake the idle one; here a late request does, and
        // it closes instead of starting another request.
        idle.send(b"GET /2 HTTP/1.1\r\nhost: s\r\n\r\n").await;
        assert!(idle.closed().await);
    }
}
