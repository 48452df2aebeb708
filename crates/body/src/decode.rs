//! Response bodies an upstream compressed, decoded as they stream, so that the credential mask
//! ([`crate::mask::Scrubbed`]) sees the bytes the agent would see after decompressing them.
//!
//! sidekey asks for `Accept-Encoding: identity` on every request it attaches a credential to;
//! this is for upstreams that compress anyway. Nothing is buffered: each decoder holds only its
//! codec's window (gzip/deflate 32 KiB, brotli at most 16 MiB, zstd capped at 8 MiB as RFC 9659
//! allows), and decoded bytes reach the agent at the pace it reads them, so a decompression bomb
//! costs the agent's bandwidth, never sidekey's memory.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
use bytes::{Buf, Bytes};
use http::header::{HeaderMap, CONTENT_ENCODING, TRANSFER_ENCODING};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncBufRead, AsyncRead, BufReader, ReadBuf};

use crate::BoxError;

/// At most this many codings are decoded, one inside the other; a longer list is refused.
const MAX_CODINGS: usize = 4;

/// The largest zstd window accepted: 2^23 = 8 MiB, the limit RFC 9659 sets for HTTP.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Bytes read from a decoder per frame sent on.
const CHUNK: usize = 16 * 1024;

/// A content (or transfer) coding sidekey can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip`, `x-gzip` (RFC 1952).
    Gzip,
    /// `deflate`: the zlib format (RFC 1950), as RFC 9110 §8.4.1.2 defines it.
    Deflate,
    /// `br` (RFC 7932).
    Brotli,
    /// `zstd` (RFC 8878).
    Zstd,
}

impl Coding {
    fn parse(token: &str) -> Option<Coding> {
        match token.to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            "br" => Some(Coding::Brotli),
            "zstd" => Some(Coding::Zstd),
            _ => None,
        }
    }
}

/// Why a response's codings cannot be undone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodingError {
    #[error(
        "the upstream answered with {header} `{coding}`, which sidekey cannot decode (it asked \
         for identity): the body could carry the credential in a form sidekey cannot mask"
    )]
    Unknown {
        header: &'static str,
        /// The coding as named (printable ASCII only, at most 64 characters).
        coding: String,
    },
    #[error("the upstream applied more than {MAX_CODINGS} codings to the body")]
    TooMany,
    #[error("the upstream's {header} header is not ASCII")]
    NotAscii { header: &'static str },
}

/// The codings applied to a response body, in the order they were applied: every
/// `Content-Encoding`, then every `Transfer-Encoding` but `chunked` (which hyper has already
/// undone). `identity` and empty list elements are skipped. Empty: the body is as sent.
pub fn applied_codings(headers: &HeaderMap) -> Result<Vec<Coding>, CodingError> {
    let mut codings = Vec::new();
    for (name, header) in [
        (CONTENT_ENCODING, "Content-Encoding"),
        (TRANSFER_ENCODING, "Transfer-Encoding"),
    ] {
        for value in headers.get_all(name) {
            let text = value
                .to_str()
                .map_err(|_| CodingError::NotAscii { header })?;
            for token in text.split(',').map(str::trim) {
                if token.is_empty()
                    || token.eq_ignore_ascii_case("identity")
                    || (header == "Transfer-Encoding" && token.eq_ignore_ascii_case("chunked"))
                {
                    continue;
                }
                let coding = Coding::parse(token).ok_or_else(|| CodingError::Unknown {
                    header,
                    coding: token
                        .chars()
                        .filter(|c| c.is_ascii_graphic() || *c == ' ')
                        .take(64)
                        .collect(),
                })?;
                codings.push(coding);
                if codings.len() > MAX_CODINGS {
                    return Err(CodingError::TooMany);
                }
            }
        }
    }
    Ok(codings)
}

/// `body` with `codings` (as returned by [`applied_codings`]) undone, last applied first.
pub fn decoded<B>(body: B, codings: &[Coding]) -> Decoded
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut reader: Pin<Box<dyn AsyncBufRead + Send>> = Box::pin(BodyReader {
        body,
        chunk: Bytes::new(),
    });
    for coding in codings.iter().rev() {
        let decoder: Pin<Box<dyn AsyncRead + Send>> = match coding {
            Coding::Gzip => {
                let mut decoder = GzipDecoder::new(reader);
                // Concatenated members are one body (RFC 1952 §2.2), as zcat reads them.
                decoder.multiple_members(true);
                Box::pin(decoder)
            }
            Coding::Deflate => Box::pin(ZlibDecoder::new(reader)),
            Coding::Brotli => Box::pin(BrotliDecoder::new(reader)),
            Coding::Zstd => {
                let params = [async_compression::zstd::DParameter::window_log_max(
                    ZSTD_WINDOW_LOG_MAX,
                )];
                let mut decoder = ZstdDecoder::with_params(reader, &params);
                decoder.multiple_members(true);
                Box::pin(decoder)
            }
        };
        reader = Box::pin(BufReader::with_capacity(CHUNK, decoder));
    }
    Decoded {
        reader,
        done: false,
    }
}

/// The decoded body: each frame is what the decoders could produce from what had arrived, so a
/// stream whose upstream flushes its compressor per event (SSE) stays a stream.
pub struct Decoded {
    reader: Pin<Box<dyn AsyncBufRead + Send>>,
    done: bool,
}

impl Body for Decoded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let result = ready!(self.reader.as_mut().poll_fill_buf(cx));
        match result {
            Ok([]) => {
                self.done = true;
                Poll::Ready(None)
            }
            Ok(available) => {
                let data = Bytes::copy_from_slice(available);
                let n = data.len();
                self.reader.as_mut().consume(n);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Err(e) => {
                self.done = true;
                Poll::Ready(Some(Err(Box::new(DecodeError(e)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A coded response body that could not be decoded (corrupt, truncated, or the upstream's body
/// failed underneath): the response to the agent is cut off there.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode the upstream's compressed body: {0}")]
pub struct DecodeError(io::Error);

/// A body's data frames as an `AsyncBufRead`, for the decoders. Trailers are dropped: they
/// cannot be placed in a decoded stream.
struct BodyReader<B> {
    body: B,
    chunk: Bytes,
}

impl<B> AsyncRead for BodyReader<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<B> AsyncBufRead for BodyReader<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.chunk.is_empty() {
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.chunk = data;
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e.into()))),
                None => break,
            }
        }
        Poll::Ready(Ok(&this.chunk[..]))
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        self.chunk.advance(amt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// Response headers, and the codings they name or (Err) a word of the refusal.
    type Case<'a> = (&'a [(&'a str, &'a str)], Result<Vec<Coding>, &'a str>);

    #[test]
    fn codings_are_listed_in_the_order_applied() {
        use Coding::*;
        let cases: &[Case] = &[
            (&[], Ok(vec![])),
            (&[("content-encoding", "identity")], Ok(vec![])),
            (&[("content-encoding", "GZIP")], Ok(vec![Gzip])),
            (&[("content-encoding", "x-gzip")], Ok(vec![Gzip])),
            (&[("content-encoding", "gzip, br")], Ok(vec![Gzip, Brotli])),
            (
                &[
                    ("content-encoding", "deflate"),
                    ("content-encoding", "zstd"),
                ],
                Ok(vec![Deflate, Zstd]),
            ),
            (&[("content-encoding", " , br ,")], Ok(vec![Brotli])),
            (
                &[
                    ("content-encoding", "br"),
                    ("transfer-encoding", "gzip, chunked"),
                ],
                Ok(vec![Brotli, Gzip]),
            ),
            (&[("transfer-encoding", "chunked")], Ok(vec![])),
            (&[("content-encoding", "compress")], Err("compress")),
            (&[("content-encoding", "gzip, x-made-up")], Err("x-made-up")),
            (
                &[("transfer-encoding", "x-compress, chunked")],
                Err("x-compress"),
            ),
            (
                &[("content-encoding", "gzip,gzip,gzip,gzip,gzip")],
                Err("more than"),
            ),
        ];
        for (list, want) in cases {
            let got = applied_codings(&headers(list));
            match want {
                Ok(codings) => assert_eq!(got.as_ref(), Ok(codings), "{list:?}"),
                Err(text) => {
                    let message = got.expect_err("refused").to_string();
                    assert!(message.contains(text), "{list:?}: {message}");
                }
            }
        }
    }

    /// Encodes `data` with async-compression's encoder for `coding`.
    async fn encode(coding: Coding, data: &[u8]) -> Vec<u8> {
        use async_compression::tokio::write::{
            BrotliEncoder, GzipEncoder, ZlibEncoder, ZstdEncoder,
        };
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => {
                let mut e = GzipEncoder::new(&mut out);
                e.write_all(data).await.unwrap();
                e.shutdown().await.unwrap();
            }
            Coding::Deflate => {
                let mut e = ZlibEncoder::new(&mut out);
                e.write_all(data).await.unwrap();
                e.shutdown().await.unwrap();
            }
            Coding::Brotli => {
                let mut e = BrotliEncoder::new(&mut out);
                e.write_all(data).await.unwrap();
                e.shutdown().await.unwrap();
            }
            Coding::Zstd => {
                let mut e = ZstdEncoder::new(&mut out);
                e.write_all(data).await.unwrap();
                e.shutdown().await.unwrap();
            }
        }
        out
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn every_coding_and_a_stack_of_them_decode() {
        runtime().block_on(async {
            let plain = b"reflected: Bearer secret-token\n".repeat(100);
            for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd] {
                let coded = encode(coding, &plain).await;
                let body = http_body_util::Full::new(Bytes::from(coded));
                let out = decoded(body, &[coding]).collect().await.unwrap().to_bytes();
                assert_eq!(&out[..], &plain[..], "{coding:?}");
            }
            // gzip applied first, then br: br is undone first.
            let coded = encode(Coding::Brotli, &encode(Coding::Gzip, &plain).await).await;
            let body = http_body_util::Full::new(Bytes::from(coded));
            let out = decoded(body, &[Coding::Gzip, Coding::Brotli])
                .collect()
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(&out[..], &plain[..]);
        });
    }

    #[test]
    fn a_corrupt_body_ends_in_an_error() {
        runtime().block_on(async {
            let body = http_body_util::Full::new(Bytes::from_static(b"not gzip at all"));
            let result = decoded(body, &[Coding::Gzip]).collect().await;
            assert!(result.is_err());
        });
    }
}
