//! HTTP/1.1 on the egress hot path, without hyper: the [`client`] side of
//! upstream connections and the [`server`] side of the app's connections.
//! This module holds what both sides share: limits, field parsing and body
//! framing (RFC 9112 §6-7).
//!
//! Why our own codec: hyper's client connection cost 13.5k of the 37k
//! instructions per proxied request (a dispatch channel, a state machine
//! polled from both ends, header maps rebuilt on encode), and its server
//! connection a fifth of the instruction-cache misses; these write heads
//! from the message's parts into one reused buffer and hand header values
//! out as slices of the bytes read (bench/results.md has the before/after).
//! The parser is the one hyper uses (httparse), and framing is strict: a
//! message whose length is ambiguous is refused, never guessed.

pub mod app_body;
pub mod client;
pub mod server;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncRead;

pub use client::{Connection, Http1Error, RequestHead, ResponseHead};

/// The largest message head (start line and fields), and trailer section.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields a message head may have.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Read granularity: one read takes up to this much.
const READ_CHUNK: usize = 16 * 1024;

/// A message that breaks HTTP/1.1's syntax or framing rules.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FramingError(String);

fn framing(message: impl Into<String>) -> FramingError {
    FramingError(message.into())
}

/// How a message body is delimited on the wire (RFC 9112 §6.3).
#[derive(Debug)]
pub enum Decoder {
    /// `Content-Length`: this many bytes still to give.
    Length(u64),
    Chunked(Chunked),
    /// No length (responses only): the body ends when the peer closes.
    UntilClose,
    Done,
}

#[derive(Debug)]
pub enum Chunked {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Decoder {
    pub fn is_end(&self) -> bool {
        matches!(self, Decoder::Done | Decoder::Length(0))
    }

    pub fn size_hint(&self) -> SizeHint {
        match self {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(remaining) => SizeHint::with_exact(*remaining),
            _ => SizeHint::default(),
        }
    }
}

/// Why a body could not be decoded.
#[derive(Debug)]
enum BodyError {
    Io(io::Error),
    Framing(FramingError),
    /// The peer closed before the end: `Some(bytes missing)` for a body of
    /// known length, `None` in the middle of a chunked one.
    Truncated(Option<u64>),
}

impl From<FramingError> for BodyError {
    fn from(error: FramingError) -> Self {
        BodyError::Framing(error)
    }
}

/// Reads more bytes from `io` into `read`; `Ready(Ok(0))` at the end of stream.
fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < READ_CHUNK / 4 {
        read.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, read)
}

/// The next frame of the body that `decoder` delimits, from `read` and then
/// from `io`.
fn poll_body<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut R,
    read: &mut BytesMut,
    decoder: &mut Decoder,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    loop {
        match decoder {
            Decoder::Done | Decoder::Length(0) => {
                *decoder = Decoder::Done;
                return Poll::Ready(None);
            }
            Decoder::Length(remaining) => {
                if !read.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(take_data(read, remaining)))));
                }
                let missing = *remaining;
                match ready!(poll_fill(io, read, cx)) {
                    Ok(0) => return Poll::Ready(Some(Err(BodyError::Truncated(Some(missing))))),
                    Ok(_) => {}
                    Err(error) => return Poll::Ready(Some(Err(BodyError::Io(error)))),
                }
            }
            Decoder::UntilClose => {
                if !read.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(read.split().freeze()))));
                }
                match ready!(poll_fill(io, read, cx)) {
                    Ok(0) => {
                        *decoder = Decoder::Done;
                        return Poll::Ready(None);
                    }
                    Ok(_) => {}
                    Err(error) => return Poll::Ready(Some(Err(BodyError::Io(error)))),
                }
            }
            Decoder::Chunked(state) => {
                match decode_chunked(read, state) {
                    Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Ok(None) => {}
                    Err(error) => return Poll::Ready(Some(Err(error.into()))),
                }
                if matches!(state, Chunked::Trailers) && read.starts_with(b"\r\n") {
                    read.advance(2);
                    *decoder = Decoder::Done;
                    continue;
                }
                if let Chunked::Trailers = state {
                    match parse_trailers(read) {
                        Ok(Some(trailers)) => {
                            *decoder = Decoder::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(None) => {}
                        Err(error) => return Poll::Ready(Some(Err(error.into()))),
                    }
                }
                match ready!(poll_fill(io, read, cx)) {
                    Ok(0) => return Poll::Ready(Some(Err(BodyError::Truncated(None)))),
                    Ok(_) => {}
                    Err(error) => return Poll::Ready(Some(Err(BodyError::Io(error)))),
                }
            }
        }
    }
}

/// Up to `remaining` bytes from the read buffer, as a slice of it.
fn take_data(read: &mut BytesMut, remaining: &mut u64) -> Bytes {
    let n = (*remaining).min(read.len() as u64) as usize;
    *remaining -= n as u64;
    read.split_to(n).freeze()
}

/// Advances the chunked decoder over what is buffered; a data frame when
/// there is one, `None` when more bytes are needed (or the trailer section
/// is next).
fn decode_chunked(
    read: &mut BytesMut,
    state: &mut Chunked,
) -> Result<Option<Frame<Bytes>>, FramingError> {
    loop {
        match state {
            Chunked::Size => {
                let window = &read[..read.len().min(MAX_CHUNK_LINE)];
                let Some(end) = window.iter().position(|&b| b == b'\n') else {
                    if read.len() >= MAX_CHUNK_LINE {
                        return Err(framing(format!(
                            "a chunk-size line is longer than {MAX_CHUNK_LINE} bytes"
                        )));
                    }
                    return Ok(None);
                };
                if end == 0 || read[end - 1] != b'\r' {
                    return Err(framing("a chunk-size line does not end with CRLF"));
                }
                let size = parse_chunk_size(&read[..end - 1])?;
                read.advance(end + 1);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(remaining) => {
                if read.is_empty() {
                    return Ok(None);
                }
                let data = take_data(read, remaining);
                if *remaining == 0 {
                    *state = Chunked::DataEnd;
                }
                return Ok(Some(Frame::data(data)));
            }
            Chunked::DataEnd => {
                if read.len() < 2 {
                    return Ok(None);
                }
                if &read[..2] != b"\r\n" {
                    return Err(framing("chunk data is not followed by CRLF"));
                }
                read.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers => return Ok(None),
        }
    }
}

/// The trailer section, once all of it (up to its empty line) is buffered.
fn parse_trailers(read: &mut BytesMut) -> Result<Option<HeaderMap>, FramingError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(read, &mut fields) {
        Ok(httparse::Status::Complete((length, parsed))) => {
            let mut trailers = HeaderMap::with_capacity(parsed.len());
            for field in parsed {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| framing("invalid trailer field name"))?;
                let value = HeaderValue::from_bytes(field.value)
                    .map_err(|_| framing(format!("invalid value of trailer field {name}")))?;
                trailers.append(name, value);
            }
            read.advance(length);
            crate::egress::trailers::sanitize(&mut trailers);
            Ok(Some(trailers))
        }
        Ok(httparse::Status::Partial) if read.len() >= MAX_HEAD_BYTES => Err(framing(format!(
            "the trailer section is larger than {} KiB",
            MAX_HEAD_BYTES / 1024
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(error) => Err(framing(format!("invalid trailer section: {error}"))),
    }
}

/// Where one parsed field sits in the head's bytes: name offset and length,
/// value offset and length. Offsets outlive the parser's borrow of the
/// buffer, so values can be slices of the head once it is split off.
type FieldSpan = (usize, usize, usize, usize);

fn field_spans(base: *const u8, fields: &[httparse::Header<'_>]) -> Vec<FieldSpan> {
    let base = base as usize;
    fields
        .iter()
        .map(|f| {
            let name = f.name.as_ptr() as usize - base;
            let value = f.value.as_ptr() as usize - base;
            (name, f.name.len(), value, f.value.len())
        })
        .collect()
}

/// Which of the fields that decide framing and connection reuse a message
/// has, noted while its header map is built: most messages carry only
/// `Content-Length`, and each field known absent is a hash lookup saved.
#[derive(Clone, Copy, Debug, Default)]
struct FieldsSeen {
    content_length: bool,
    transfer_encoding: bool,
    connection: bool,
    te: bool,
    expect: bool,
    /// How many `Host` fields (saturating): a request needs exactly one.
    hosts: u8,
}

impl FieldsSeen {
    fn note(&mut self, name: &HeaderName) {
        use http::header;
        // Standard names compare as enum values: no byte comparison.
        if name == header::CONTENT_LENGTH {
            self.content_length = true;
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == header::CONNECTION {
            self.connection = true;
        } else if name == header::TE {
            self.te = true;
        } else if name == header::EXPECT {
            self.expect = true;
        } else if name == header::HOST {
            self.hosts = self.hosts.saturating_add(1);
        }
    }
}

/// The fields at `spans` in `head`, values sharing its bytes, and which
/// framing fields are among them. `room` more fields fit without growing
/// the map.
fn header_map(
    head: &Bytes,
    spans: &[FieldSpan],
    room: usize,
) -> Result<(HeaderMap, FieldsSeen), FramingError> {
    let mut headers = HeaderMap::with_capacity(spans.len() + room);
    let mut seen = FieldsSeen::default();
    for &(name_at, name_len, value_at, value_len) in spans {
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
            .map_err(|_| framing("invalid header field name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| framing(format!("invalid value of header field {name}")))?;
        seen.note(&name);
        headers.append(name, value);
    }
    Ok((headers, seen))
}

/// The message's `Content-Length`, if it has one. Repeated identical values
/// (`5, 5`) are one; different or malformed values are refused.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, FramingError> {
    let mut length: Option<u64> = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            let parsed =
                (!item.is_empty() && item.len() <= 19 && item.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(item).ok()?.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| {
                        framing(format!(
                            "invalid content-length {:?}",
                            String::from_utf8_lossy(value.as_bytes())
                        ))
                    })?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(framing("conflicting content-length values"));
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// Whether the last transfer coding of a (possibly repeated)
/// `Transfer-Encoding` is `chunked`.
fn chunked_is_last(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|last| last.to_str().ok()?.rsplit(',').next().map(str::trim))
        .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"))
}

/// Whether `chunked` is the only transfer coding (however often the field
/// is repeated).
fn only_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty())
        .all(|coding| coding.eq_ignore_ascii_case(b"chunked"))
}

/// Whether a (possibly repeated) comma-separated field holds `token`.
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `1a`, `1A;name=value`, `1a  ;ext`: the hex size; anything else is refused.
fn parse_chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(framing("invalid chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';')
        || rest.iter().any(|&b| b.is_ascii_control() && b != b'\t')
    {
        return Err(framing("invalid chunk extension"));
    }
    let text = std::str::from_utf8(&line[..digits]).expect("hex digits are ASCII");
    u64::from_str_radix(text, 16).map_err(|_| framing("invalid chunk size"))
}

fn put_field(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of a chunked body: its size line, the data and CRLF.
fn put_chunk(out: &mut BytesMut, data: &[u8]) {
    put_chunk_size(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The size line of a chunk of `length` bytes.
fn put_chunk_size(out: &mut BytesMut, mut length: usize) {
    let mut size = [0u8; 16];
    let mut at = size.len();
    loop {
        at -= 1;
        size[at] = b"0123456789abcdef"[length & 0xf];
        length >>= 4;
        if length == 0 {
            break;
        }
    }
    out.extend_from_slice(&size[at..]);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and the trailer section that ends a chunked body.
fn put_last_chunk(out: &mut BytesMut, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        put_field(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, without allocating.
fn itoa_u64(mut n: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buffer[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"FF;name=\"v\"").unwrap(), 255);
        assert_eq!(parse_chunk_size(b"10 \t;x").unwrap(), 16);
        for bad in [
            &b""[..],
            b";x",
            b"-1",
            b"1 2",
            b"0x10",
            b"1\x00",
            b"12345678901234567",
        ] {
            assert!(
                parse_chunk_size(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(itoa_u64(0, &mut [0; 20]), b"0");
        assert_eq!(itoa_u64(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        let mut out = BytesMut::new();
        put_chunk(&mut out, &[7u8; 0x1a2]);
        assert!(out.starts_with(b"1a2\r\n\x07") && out.ends_with(b"\x07\r\n"));
    }

    #[test]
    fn content_lengths() {
        let with = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(http::header::CONTENT_LENGTH, v.parse().unwrap());
            }
            content_length(&headers)
        };
        assert_eq!(with(&[]).unwrap(), None);
        assert_eq!(with(&["12"]).unwrap(), Some(12));
        assert_eq!(with(&["5, 5", "5"]).unwrap(), Some(5));
        for bad in [&["5", "6"][..], &["-1"], &["1e3"], &[""], &["+5"], &["5,"]] {
            assert!(with(bad).is_err(), "{bad:?}");
        }
    }
}
