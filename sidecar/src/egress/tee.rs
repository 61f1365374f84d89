//! A response body passed through to the app while a bounded copy is kept
//! for someone else (the cache, a response contract): the app's bytes are
//! never held back or changed.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};

use super::body::{BoxError, ProxyBody};

/// How a copied body ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Copied {
    /// Whole, within the limit.
    Whole(Bytes),
    /// Longer than the limit: the copy stopped there.
    TooLarge,
    /// The body failed or carried trailers: no whole copy to give.
    Incomplete,
}

/// Passes `inner` through and calls `done` once, when the body ends.
pub struct TeeBody {
    inner: ProxyBody,
    copy: BytesMut,
    limit: u64,
    done: Option<Box<dyn FnOnce(Copied) + Send>>,
}

impl TeeBody {
    pub fn new(inner: ProxyBody, limit: u64, done: Box<dyn FnOnce(Copied) + Send>) -> Self {
        Self {
            inner,
            copy: BytesMut::new(),
            limit,
            done: Some(done),
        }
    }

    fn finish(&mut self, how: impl FnOnce(&mut BytesMut) -> Copied) {
        if let Some(done) = self.done.take() {
            done(how(&mut self.copy));
        }
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if this.copy.len() as u64 + data.len() as u64 > this.limit {
                        this.finish(|_| Copied::TooLarge);
                    } else if this.done.is_some() {
                        this.copy.extend_from_slice(data);
                    }
                    // With a Content-Length, the server stops polling after
                    // the last byte: hand the copy over once it is whole.
                    if this.inner.is_end_stream() {
                        this.finish(|copy| Copied::Whole(std::mem::take(copy).freeze()));
                    }
                } else {
                    this.finish(|_| Copied::Incomplete);
                }
            }
            Poll::Ready(None) => this.finish(|copy| Copied::Whole(std::mem::take(copy).freeze())),
            Poll::Ready(Some(Err(_))) => this.finish(|_| Copied::Incomplete),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.done.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TeeBody {
    /// The app went away before the end: nothing whole to hand over.
    fn drop(&mut self) {
        self.finish(|_| Copied::Incomplete);
    }
}
