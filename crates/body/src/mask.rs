//! Every echo of the credential an upstream hands back is masked before the agent sees it:
//! response header and trailer values that contain it are replaced, and each occurrence in a
//! body is overwritten with `*` (same length, so framing and streaming hold), also when it is
//! cut across frames. What to look for — the [`Needles`] — is every spelling of the credential
//! that was sent.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use sidekey_secret::Secret;
use zeroize::Zeroizing;

use crate::BoxError;

/// What an upstream must not hand back to the agent: every spelling of the credential that was
/// sent (each secret raw and percent-encoded, and the injected header value as sent). Wiped on
/// drop; `Debug` shows only how many there are. Cheap to clone (shared).
#[derive(Clone)]
pub struct Needles(Arc<Vec<Zeroizing<Vec<u8>>>>);

impl Needles {
    /// The needles of a credential made of `secrets`, attached as `sent_header` (the injected
    /// header's value as it went out, if the route injects a header: for Basic, the base64 of
    /// `user:token`, which contains no raw secret).
    pub fn for_credential(secrets: &[&Secret], sent_header: Option<&[u8]>) -> Needles {
        let mut out: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for secret in secrets {
            secret.with(|raw| {
                let raw = raw.as_bytes();
                out.push(Zeroizing::new(raw.to_vec()));
                let encoded = percent_encoded(raw);
                if encoded[..] != raw[..] {
                    out.push(encoded);
                }
            });
        }
        if let Some(value) = sent_header {
            out.push(Zeroizing::new(value.to_vec()));
        }
        out.retain(|n| !n.is_empty());
        Needles(Arc::new(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|n| n.as_slice())
    }
}

impl fmt::Debug for Needles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Needles(<{} redacted>)", self.0.len())
    }
}

/// `bytes` with everything but RFC 3986 unreserved characters percent-encoded (upper-case hex),
/// as the query injection writes it.
fn percent_encoded(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len() * 3));
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    out
}

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

/// Replaces every occurrence of every needle in `buf` by [`MASK`] bytes (left to right, not
/// overlapping). Candidates are found with `memchr` on the needle's first byte (SIMD), so a
/// body costs a scan per needle, not a comparison per byte.
pub(crate) fn mask_all(buf: &mut [u8], needles: &Needles) {
    for needle in needles.iter() {
        let n = needle.len();
        let mut i = 0;
        while i + n <= buf.len() {
            let Some(offset) = memchr::memchr(needle[0], &buf[i..=buf.len() - n]) else {
                break;
            };
            let at = i + offset;
            if buf[at..at + n] == needle[..] {
                buf[at..at + n].fill(MASK);
                i = at + n;
            } else {
                i = at + 1;
            }
        }
    }
}

/// Whether `hay` contains `needle` (by `memchr` on its first byte: no searcher is built, which
/// would cost more than the short header values it is asked about).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let n = needle.len();
    if n == 0 || hay.len() < n {
        return false;
    }
    memchr::memchr_iter(needle[0], &hay[..=hay.len() - n]).any(|at| hay[at..at + n] == *needle)
}

/// The length of the longest tail of `buf` that is a proper prefix of some needle: such a tail
/// must start with the needle's first byte, so only those positions are compared.
pub(crate) fn partial_tail(buf: &[u8], needles: &Needles) -> usize {
    let mut keep = 0;
    for needle in needles.iter() {
        let longest = (needle.len() - 1).min(buf.len());
        if longest <= keep {
            continue;
        }
        let window = buf.len() - longest;
        // Ascending positions: the first match is the longest tail.
        for offset in memchr::memchr_iter(needle[0], &buf[window..]) {
            let tail = &buf[window + offset..];
            if tail.len() <= keep {
                break;
            }
            if needle.starts_with(tail) {
                keep = tail.len();
                break;
            }
        }
    }
    keep
}

/// Replaces every header (or trailer) value that contains a needle: an upstream reflecting the
/// credential there must not hand it to the agent.
pub fn scrub_headers(headers: &mut http::HeaderMap, needles: &Needles) {
    for value in headers.values_mut() {
        let bytes = value.as_bytes();
        let reflects = needles.iter().any(|n| contains(bytes, n));
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
                        // The last frame (known by the length the upstream gave): nothing can
                        // follow it, so no tail has to wait.
                        let at_end = this.inner.is_end_stream();
                        if this.held.is_empty() && !this.needles.iter().any(|n| contains(&data, n))
                        {
                            // Nothing to mask: the frame goes as it is (no copy), less a tail
                            // that may begin a needle.
                            let keep = if at_end {
                                0
                            } else {
                                partial_tail(&data, &this.needles)
                            };
                            let send = data.len() - keep;
                            if keep > 0 {
                                this.held.extend_from_slice(&data[send..]);
                            }
                            if send > 0 {
                                return Poll::Ready(Some(Ok(Frame::data(data.slice(..send)))));
                            }
                            continue;
                        }
                        this.held.extend_from_slice(&data);
                        let out = this.release(at_end);
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
        Needles(Arc::new(
            list.iter()
                .map(|s| Zeroizing::new(s.as_bytes().to_vec()))
                .collect(),
        ))
    }

    /// The byte-by-byte versions the memchr-based ones replaced: the reference they must agree
    /// with.
    fn mask_all_naive(buf: &mut [u8], needles: &Needles) {
        for needle in needles.iter() {
            let n = needle.len();
            let mut i = 0;
            while i + n <= buf.len() {
                if buf[i..i + n] == needle[..] {
                    buf[i..i + n].fill(MASK);
                    i += n;
                } else {
                    i += 1;
                }
            }
        }
    }

    fn partial_tail_naive(buf: &[u8], needles: &Needles) -> usize {
        (1..=buf.len())
            .filter(|&k| {
                needles
                    .iter()
                    .any(|n| k < n.len() && n.starts_with(&buf[buf.len() - k..]))
            })
            .max()
            .unwrap_or(0)
    }

    /// A repeatable random number below its argument.
    fn xorshift(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        }
    }

    /// `len` letters of `a`, `b`, `c`: a small alphabet, so that needles, their prefixes and
    /// near misses are everywhere.
    fn word(len: u64, next: &mut impl FnMut(u64) -> u64) -> String {
        (0..len).map(|_| (b'a' + next(3) as u8) as char).collect()
    }

    #[test]
    fn the_scans_agree_with_the_byte_by_byte_reference() {
        // Small alphabets so that needles, their prefixes and near misses are everywhere.
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..5_000 {
            let count = 1 + next(3);
            let list: Vec<String> = (0..count)
                .map(|_| {
                    let len = 1 + next(6);
                    word(len, &mut next)
                })
                .collect();
            let refs: Vec<&str> = list.iter().map(String::as_str).collect();
            let set = needles(&refs);
            let len = next(40);
            let original = word(len, &mut next).into_bytes();
            let (mut fast, mut slow) = (original.clone(), original.clone());
            mask_all(&mut fast, &set);
            mask_all_naive(&mut slow, &set);
            assert_eq!(
                fast,
                slow,
                "{list:?} in {:?}",
                String::from_utf8_lossy(&original)
            );
            for n in set.iter() {
                assert_eq!(
                    contains(&original, n),
                    original.windows(n.len()).any(|w| w == n),
                    "{n:?} in {original:?}"
                );
            }
            assert_eq!(
                partial_tail(&original, &set),
                partial_tail_naive(&original, &set),
                "{list:?} at the end of {:?}",
                String::from_utf8_lossy(&original)
            );
        }
    }

    #[test]
    fn needles_are_every_spelling_sent_and_never_printed() {
        let token = Secret::new("a+b/c=".into());
        let plain = Secret::new("plain".into());
        let n = Needles::for_credential(&[&token, &plain], Some(b"Bearer a+b/c="));
        let all: Vec<&[u8]> = n.iter().collect();
        assert_eq!(
            all,
            [&b"a+b/c="[..], b"a%2Bb%2Fc%3D", b"plain", b"Bearer a+b/c="]
        );
        assert_eq!(format!("{n:?}"), "Needles(<4 redacted>)");
        assert!(Needles::for_credential(&[], None).is_empty());
    }

    /// A body that yields `frames` one by one; `ends` says whether it tells its end with its
    /// last frame, as a body of known length does (else only by a last poll answering None, as a
    /// chunked one does).
    struct Frames {
        frames: std::collections::VecDeque<Bytes>,
        ends: bool,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.frames.pop_front().map(|b| Ok(Frame::data(b))))
        }
        fn is_end_stream(&self) -> bool {
            self.ends && self.frames.is_empty()
        }
    }

    /// Runs `frames` through a scrubber; returns the frames it produced. Checks that a body
    /// telling its end gives the same bytes.
    fn scrub(frames: &[&str], list: &[&str]) -> Vec<String> {
        let run = |ends: bool| {
            let body = Frames {
                frames: frames
                    .iter()
                    .map(|f| Bytes::copy_from_slice(f.as_bytes()))
                    .collect(),
                ends,
            };
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
        };
        let told = run(true);
        let untold = run(false);
        assert_eq!(told.concat(), untold.concat(), "frames {frames:?}");
        untold
    }

    #[test]
    fn a_body_split_anywhere_is_masked_as_if_whole() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3_000 {
            // One needle: with several that overlap each other, which one is masked first
            // depends on where the frames split (the needles of one credential are its
            // spellings, which do not overlap that way).
            let list = [word(1 + next(5), &mut next)];
            let refs: Vec<&str> = list.iter().map(String::as_str).collect();
            let whole = word(next(30), &mut next);
            let mut frames = Vec::new();
            let mut rest = whole.as_str();
            while !rest.is_empty() {
                let at = 1 + next(rest.len() as u64) as usize;
                frames.push(&rest[..at]);
                rest = &rest[at..];
            }
            let mut want = whole.clone().into_bytes();
            mask_all(&mut want, &needles(&refs));
            let got = scrub(&frames, &refs).concat();
            assert_eq!(
                got.as_bytes(),
                &want[..],
                "frames {frames:?} needles {refs:?}"
            );
        }
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
