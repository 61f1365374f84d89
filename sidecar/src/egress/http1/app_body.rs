//! A request body read straight from the app's connection: the read half
//! and its buffer travel with the body and go back to the connection when
//! the body ends. No other egress type is needed here, so `ProxyBody` can
//! hold one without a cycle.

use std::io;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::oneshot;

use super::{BodyError, Decoder, FramingError, poll_fill};

/// The read side of the app's connection and the bytes read ahead.
pub struct Reader {
    pub(super) io: OwnedReadHalf,
    pub(super) buf: BytesMut,
}

impl Reader {
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.buf, cx)
    }
}

/// A request body read straight from the app's connection, sent once.
pub struct AppBody {
    /// `None` once the body failed: the connection closes.
    pub(super) reader: Option<Reader>,
    pub(super) decoder: Decoder,
    /// Where the reader goes at the end (or drop) of the body, with whether
    /// the whole body was read.
    pub(super) back: Option<oneshot::Sender<(Reader, bool)>>,
}

/// Why a request body could not be read from the app.
#[derive(Debug, thiserror::Error)]
pub enum AppBodyError {
    #[error("the app closed the connection with {0} bytes of the request body still to come")]
    Truncated(u64),
    #[error("the app closed the connection in the middle of a chunked request body")]
    TruncatedChunked,
    #[error("invalid chunked request body: {0}")]
    Framing(FramingError),
    #[error("{0}")]
    Io(io::Error),
}

impl AppBody {
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AppBodyError>>> {
        let Some(reader) = self.reader.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(super::poll_body(
            cx,
            &mut reader.io,
            &mut reader.buf,
            &mut self.decoder
        ));
        match frame {
            None => {
                self.give_back();
                Poll::Ready(None)
            }
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(error)) => {
                // The connection cannot be read on: dropping the sender
                // tells it so.
                self.reader = None;
                self.back = None;
                Poll::Ready(Some(Err(match error {
                    BodyError::Truncated(Some(missing)) => AppBodyError::Truncated(missing),
                    BodyError::Truncated(None) => AppBodyError::TruncatedChunked,
                    BodyError::Framing(error) => AppBodyError::Framing(error),
                    BodyError::Io(error) => AppBodyError::Io(error),
                })))
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.decoder.is_end() || self.reader.is_none()
    }

    /// A chunked body still being read: a trailer section may follow.
    pub fn may_have_trailers(&self) -> bool {
        matches!(self.decoder, Decoder::Chunked(_)) && self.reader.is_some()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }

    fn give_back(&mut self) {
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            let _ = back.send((reader, self.decoder.is_end()));
        }
    }
}

impl Drop for AppBody {
    fn drop(&mut self) {
        self.give_back();
    }
}
