//! Bodies pass through as streams, never buffered: these wrappers only count bytes, mask a
//! credential an upstream echoes back, and, for responses, write the request's audit record
//! when the body ends (or the agent goes away).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

use zeroize::Zeroizing;

use crate::audit::PendingRecord;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body sidekey sends, to the agent or upstream.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Counts data bytes into a shared counter (the request body, read by the audit record).
pub struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Counted { inner, count }
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
                    self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
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

/// The response body on its way to the agent: counts bytes and finishes the audit record
/// exactly once — at end of stream, on an upstream error, or when dropped early.
pub struct Metered<B: Body> {
    inner: B,
    bytes: u64,
    record: Option<PendingRecord>,
}

impl<B: Body> Metered<B> {
    pub fn new(inner: B, record: PendingRecord) -> Self {
        Metered {
            inner,
            bytes: 0,
            record: Some(record),
        }
    }

    fn finish(&mut self, error: Option<&'static str>) {
        if let Some(record) = self.record.take() {
            record.finish_streamed(self.bytes, error);
        }
    }
}

impl<B> Body for Metered<B>
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
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Some("upstream_body_error"));
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
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

impl<B: Body> Drop for Metered<B> {
    fn drop(&mut self) {
        // Dropped before the end: the agent went away mid-stream. Bodies hyper never polls
        // (HEAD, 304, empty) are already at their end and count as complete.
        let error = if self.inner.is_end_stream() {
            None
        } else {
            Some("client_aborted")
        };
        self.finish(error);
    }
}

/// What an upstream must not hand back to the agent: every spelling of the credential that was
/// sent (raw, as the injected header value, percent-encoded). Wiped on drop.
pub type Needles = Arc<Vec<Zeroizing<Vec<u8>>>>;

/// The byte every byte of a masked credential is replaced with. Same length, so that
/// Content-Length and any framing of the upstream's body stay true.
const MASK: u8 = b'*';

/// A response body with every occurrence of a needle masked, also when an occurrence is cut
/// across frames: the longest tail of a frame that could begin a needle is held back until the
/// next frame (or the end) decides. Only such a tail is ever held, so a stream (SSE) whose
/// frames do not end in the first bytes of a credential is passed on without delay.
pub struct Scrubbed<B> {
    inner: B,
    needles: Needles,
    /// Bytes held back: a possible start of a needle.
    held: BytesMut,
    /// A trailers frame that arrived while bytes were held; sent after them.
    trailers: Option<Frame<Bytes>>,
    done: bool,
}

impl<B> Scrubbed<B> {
    pub fn new(inner: B, needles: Needles) -> Self {
        Scrubbed {
            inner,
            needles,
            held: BytesMut::new(),
            trailers: None,
            done: false,
        }
    }

    /// Masks what `held` contains of the needles, then splits off what can be sent now.
    fn release(&mut self, at_end: bool) -> Bytes {
        mask_all(&mut self.held, &self.needles);
        let keep = if at_end {
            0
        } else {
            partial_tail(&self.held, &self.needles)
        };
        let send = self.held.len() - keep;
        self.held.split_to(send).freeze()
    }
}

/// Replaces every occurrence of every needle in `buf` by [`MASK`] bytes.
fn mask_all(buf: &mut [u8], needles: &[Zeroizing<Vec<u8>>]) {
    for needle in needles.iter().filter(|n| !n.is_empty()) {
        let n = needle.len();
        let mut i = 0;
        while i + n <= buf.len() {
            if buf[i] == needle[0] && buf[i..i + n] == needle[..] {
                buf[i..i + n].fill(MASK);
                i += n;
            } else {
                i += 1;
            }
        }
    }
}

/// The length of the longest tail of `buf` that is a proper prefix of some needle.
fn partial_tail(buf: &[u8], needles: &[Zeroizing<Vec<u8>>]) -> usize {
    let mut keep = 0;
    for needle in needles.iter().filter(|n| !n.is_empty()) {
        let longest = (needle.len() - 1).min(buf.len());
        for start in buf.len() - longest..buf.len() {
            let tail = &buf[start..];
            if tail.len() > keep && needle.starts_with(tail) {
                keep = tail.len();
                break;
            }
        }
    }
    keep
}

/// Replaces every header (or trailer) value that contains a needle: an upstream reflecting the
/// credential there must not hand it to the agent.
pub(crate) fn scrub_headers(headers: &mut http::HeaderMap, needles: &[Zeroizing<Vec<u8>>]) {
    for value in headers.values_mut() {
        let bytes = value.as_bytes();
        let reflects = needles
            .iter()
            .filter(|n| !n.is_empty())
            .any(|n| bytes.windows(n.len()).any(|w| w == &n[..]));
        if reflects {
            *value = http::HeaderValue::from_static("[redacted by sidekey]");
        }
    }
}

impl<B> Body for Scrubbed<B>
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
        let this = &mut *self;
        loop {
            if this.done {
                if !this.held.is_empty() {
                    let rest = this.release(true);
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.held.extend_from_slice(&data);
                        let out = this.release(false);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        // All of it may start a credential: wait for more.
                    }
                    Err(other) => {
                        // Trailers end the body: what is held goes first. They are headers
                        // the upstream wrote: scrubbed like the response's.
                        let other = match other.into_trailers() {
                            Ok(mut trailers) => {
                                scrub_headers(&mut trailers, &this.needles);
                                Frame::trailers(trailers)
                            }
                            Err(other) => other,
                        };
                        this.trailers = Some(other);
                        this.done = true;
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => this.done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.trailers.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // Masking keeps lengths: what is held plus what is still to come.
        let mut hint = self.inner.size_hint();
        let held = self.held.len() as u64;
        hint.set_lower(hint.lower() + held);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

impl<B> Drop for Scrubbed<B> {
    fn drop(&mut self) {
        // The held bytes may be the start of a credential.
        self.held.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn needles(list: &[&str]) -> Needles {
        Arc::new(
            list.iter()
                .map(|s| Zeroizing::new(s.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// A body that yields `frames` one by one.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    /// Runs `frames` through a scrubber; returns the frames it produced.
    fn scrub(frames: &[&str], list: &[&str]) -> Vec<String> {
        let body = Frames(
            frames
                .iter()
                .map(|f| Bytes::copy_from_slice(f.as_bytes()))
                .collect(),
        );
        let mut scrubbed = Scrubbed::new(body, needles(list));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            while let Some(frame) = scrubbed.frame().await {
                let data = frame.unwrap().into_data().unwrap();
                out.push(String::from_utf8(data.to_vec()).unwrap());
            }
            out
        })
    }

    #[test]
    fn masks_whole_and_split_occurrences_keeping_lengths() {
        let cases: &[(&[&str], &[&str], &str)] = &[
            (&["a secret here"], &["secret"], "a ****** here"),
            (&["a sec", "ret here"], &["secret"], "a ****** here"),
            (&["s", "e", "c", "r", "e", "t"], &["secret"], "******"),
            (&["secretsecret"], &["secret"], "************"),
            (&["sec"], &["secret"], "sec"),
            (
                &["data: 1\n\n", "data: 2\n\n"],
                &["secret"],
                "data: 1\n\ndata: 2\n\n",
            ),
            (
                &["xx Basic c2Vj", "cmV0 yy"],
                &["secret", "Basic c2VjcmV0"],
                "xx ************** yy",
            ),
            (&["sesecret"], &["secret"], "se******"),
        ];
        for (frames, list, want) in cases {
            let got = scrub(frames, list).concat();
            assert_eq!(&got, want, "frames {frames:?} needles {list:?}");
            let sent: usize = frames.iter().map(|f| f.len()).sum();
            assert_eq!(got.len(), sent, "length kept for {frames:?}");
        }
    }

    #[test]
    fn frames_that_cannot_start_a_secret_are_not_held() {
        // SSE events pass as they come: one frame out per frame in.
        let out = scrub(&["data: 1\n\n", "data: 2\n\n", "data: 3\n\n"], &["secret"]);
        assert_eq!(out, ["data: 1\n\n", "data: 2\n\n", "data: 3\n\n"]);
    }

    #[test]
    fn header_and_trailer_values_reflecting_a_needle_are_replaced() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-echo",
            http::HeaderValue::from_static("Bearer s3cr3t-token"),
        );
        h.insert("x-encoded", http::HeaderValue::from_static("a%2Bb"));
        h.insert("x-other", http::HeaderValue::from_static("fine"));
        scrub_headers(&mut h, &needles(&["s3cr3t-token", "a%2Bb"]));
        assert_eq!(h["x-echo"], "[redacted by sidekey]");
        assert_eq!(h["x-encoded"], "[redacted by sidekey]");
        assert_eq!(h["x-other"], "fine");
    }

    /// A body of `data` then a trailers frame.
    struct WithTrailers(Option<Bytes>, Option<http::HeaderMap>);
    impl Body for WithTrailers {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if let Some(data) = self.0.take() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Poll::Ready(self.1.take().map(|t| Ok(Frame::trailers(t))))
        }
    }

    #[tokio::test]
    async fn trailers_reflecting_the_credential_are_scrubbed() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-echo", http::HeaderValue::from_static("tok-123"));
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = WithTrailers(Some(Bytes::from_static(b"body tok-")), Some(trailers));
        let collected = Scrubbed::new(body, needles(&["tok-123"]))
            .collect()
            .await
            .unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["x-echo"], "[redacted by sidekey]");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], b"body tok-");
    }
}
