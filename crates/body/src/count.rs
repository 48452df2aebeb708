//! [`Counted`]: a request body that counts its bytes (for the audit record) and remembers
//! whether it broke off, so that a body that breaks HTTP framing mid-stream is answered as the
//! agent's fault (`request_invalid`), not as an upstream failure.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;

/// What a [`Counted`] body saw, shared with whoever reads it after the body has gone upstream.
#[derive(Debug, Default)]
pub struct BodyMeter {
    bytes: AtomicU64,
    failed: AtomicBool,
}

impl BodyMeter {
    pub fn new() -> Arc<Self> {
        Arc::new(BodyMeter::default())
    }

    /// Data bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Adds bytes read outside a [`Counted`] (a body read whole).
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// True when the body yielded an error: the agent's stream broke off or broke framing
    /// (a bad chunk size, an HTTP/2 reset, a connection closed before the declared length).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Counts data bytes into a [`BodyMeter`] and notes an error from the inner body.
pub struct Counted<B> {
    inner: B,
    meter: Arc<BodyMeter>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, meter: Arc<BodyMeter>) -> Self {
        Counted { inner, meter }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.meter.add(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.meter.failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// Yields its frames, then ends.
    struct Frames(VecDeque<Result<Frame<Bytes>, std::io::Error>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    #[tokio::test]
    async fn counts_bytes_and_notes_a_broken_body() {
        let frames = Frames(VecDeque::from([
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::data(Bytes::from_static(b"de"))),
            Err(std::io::Error::other("bad chunk size")),
        ]));
        let meter = BodyMeter::new();
        let mut body = Counted::new(frames, Arc::clone(&meter));
        while let Some(Ok(_)) = body.frame().await {}
        assert_eq!(meter.bytes(), 5);
        assert!(meter.failed());

        let meter = BodyMeter::new();
        let ok = http_body_util::Full::new(Bytes::from_static(b"hello"));
        let collected = Counted::new(ok, Arc::clone(&meter)).collect().await;
        assert!(collected.is_ok());
        assert_eq!(meter.bytes(), 5);
        assert!(!meter.failed());
    }
}
