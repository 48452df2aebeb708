//! `_method` fields in POST form bodies that stream: Rails/Rack, Laravel and Symfony run a POST
//! as the method named by such a field. Policy decides which bodies to scan
//! ([`sidekey_policy::FormScan`]) and whether a value found is allowed
//! ([`sidekey_policy::Policy::check_method_field`]); a url-encoded body that declares a small
//! length is read whole and checked before anything is sent. Here: scanners that find the
//! fields of a body fed in pieces ([`UrlEncodedScanner`], [`MultipartScanner`]) keeping only a
//! bounded part of it, and [`FormGuard`], which holds the last piece back until the scan has
//! seen the end, and cuts the body off before its end if a field asks for a method the route
//! does not allow — a request whose body never ends is never acted on by these frameworks.
//!
//! Where the frameworks read a body differently, the scanner refuses it (`request_invalid`)
//! rather than pick a reading: a boundary line not preceded by CRLF (PHP also splits on a bare
//! LF, Rack does not), anything but padding after a boundary, a part header line that does not end
//! in CRLF or has no colon, content after the closing boundary.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use memchr::memmem;
use sidekey_policy::form::{is_override_name, percent_decode, urlencoded_overrides};
use sidekey_policy::{ErrorCode, FormScan, Refusal};

use crate::{BoxError, DRAIN_LIMIT, DRAIN_TIME};

/// The largest `_method` value kept while scanning; a longer one names no method.
const MAX_VALUE: usize = 1024;
/// The largest header block of one multipart part.
const MAX_PART_HEADERS: usize = 16 * 1024;

/// Why a multipart body cannot be read one way only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("a multipart boundary line must follow CRLF")]
    BareLfBoundary,
    #[error("a multipart boundary line may be followed by padding only")]
    BadBoundaryLine,
    #[error("a multipart part header line must end with CRLF")]
    BareLfHeader,
    #[error("a multipart part header line has no colon")]
    HeaderWithoutColon,
    #[error("a multipart part's headers are larger than {MAX_PART_HEADERS} bytes")]
    HeadersTooLarge,
    #[error("a `_method` field is longer than {MAX_VALUE} bytes")]
    ValueTooLong,
    #[error("a multipart body goes on after its closing boundary")]
    AfterClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first boundary: skipped.
    Preamble,
    /// After a boundary: the rest of its line.
    BoundaryLine,
    /// A part's header block.
    Headers,
    /// The value of a `_method` part.
    Value,
    /// The content of any other part: skipped.
    Content,
    /// After the closing boundary.
    Epilogue,
}

/// A form body's `_method` finder, fed the body in pieces as it streams.
pub trait FieldScanner: Send {
    /// Scans the next piece; returns the values of `_method` fields it completes.
    fn feed(&mut self, data: &[u8]) -> Result<Vec<String>, ScanError>;
    /// The body ended; returns the values of fields still open.
    fn finish(&mut self) -> Result<Vec<String>, ScanError>;
}

/// The raw bytes of a field name kept to decide whether it is `_method`: the first 8 decoded
/// bytes (`_method` and the one after it, which must be `[` or nothing) after leading
/// whitespace, at most 3 raw bytes each. What comes later cannot change the answer.
const NAME_WINDOW: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// In a field name (before `=`).
    Name,
    /// In the value of a `_method` field.
    Value,
    /// In the value of any other field: skipped to the next separator.
    Skip,
}

/// Finds the `_method` fields of a url-encoded body fed to it in pieces, with the same reading
/// as [`urlencoded_overrides`], keeping at most [`NAME_WINDOW`] bytes of a name and
/// [`MAX_VALUE`] of a `_method` value (encoded, three times that). A large body (a file sent as a
/// form, or data mislabelled as one) streams through.
pub struct UrlEncodedScanner {
    field: Field,
    /// The name so far, raw, past its leading whitespace once `started`.
    name: Vec<u8>,
    /// A byte of the name that is not leading whitespace has been seen.
    started: bool,
    /// The raw value of a `_method` field.
    value: Vec<u8>,
}

impl Default for UrlEncodedScanner {
    fn default() -> Self {
        UrlEncodedScanner {
            field: Field::Name,
            name: Vec::with_capacity(NAME_WINDOW),
            started: false,
            value: Vec::new(),
        }
    }
}

impl UrlEncodedScanner {
    /// Drops leading whitespace (` `, `+`, tab, `%20`, `%09`) from the name as it arrives, as
    /// [`is_override_name`] ignores it; waits on an incomplete `%2`/`%0`.
    fn strip_leading(&mut self) {
        while !self.started {
            match self.name.as_slice() {
                [b' ' | b'+' | b'\t', ..] => {
                    self.name.remove(0);
                }
                [b'%', b'2', b'0', ..] | [b'%', b'0', b'9', ..] => {
                    self.name.drain(..3);
                }
                [] | [b'%'] | [b'%', b'2' | b'0'] => return,
                _ => self.started = true,
            }
        }
    }

    fn is_override(&self) -> bool {
        is_override_name(&percent_decode(&self.name))
    }

    /// A separator (or the end) closes the field; a bare `_method` name counts as an empty value.
    fn close(&mut self, found: &mut Vec<String>) {
        match self.field {
            Field::Name if self.is_override() => found.push(String::new()),
            Field::Value => found.push(percent_decode(&self.value)),
            _ => {}
        }
        self.field = Field::Name;
        self.name.clear();
        self.started = false;
        self.value.clear();
    }
}

impl FieldScanner for UrlEncodedScanner {
    fn feed(&mut self, data: &[u8]) -> Result<Vec<String>, ScanError> {
        let mut found = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            match self.field {
                Field::Skip => match memchr::memchr2(b'&', b';', rest) {
                    Some(i) => {
                        rest = &rest[i + 1..];
                        self.close(&mut found);
                    }
                    None => break,
                },
                Field::Name => {
                    let b = rest[0];
                    rest = &rest[1..];
                    match b {
                        b'&' | b';' => self.close(&mut found),
                        b'=' => {
                            self.field = if self.is_override() {
                                Field::Value
                            } else {
                                Field::Skip
                            };
                        }
                        _ if self.name.len() < NAME_WINDOW => {
                            self.name.push(b);
                            self.strip_leading();
                        }
                        _ => {}
                    }
                }
                Field::Value => {
                    let end = memchr::memchr2(b'&', b';', rest).unwrap_or(rest.len());
                    if self.value.len() + end > 3 * MAX_VALUE {
                        return Err(ScanError::ValueTooLong);
                    }
                    self.value.extend_from_slice(&rest[..end]);
                    if end < rest.len() {
                        self.close(&mut found);
                        rest = &rest[end + 1..];
                    } else {
                        rest = &[];
                    }
                }
            }
        }
        Ok(found)
    }

    fn finish(&mut self) -> Result<Vec<String>, ScanError> {
        let mut found = Vec::new();
        if self.field != Field::Name || !self.name.is_empty() {
            self.close(&mut found);
        }
        Ok(found)
    }
}

/// Finds the `_method` fields of a multipart body fed to it in pieces, keeping only a bounded
/// amount of it: a boundary's length while skipping content, one part's headers, one `_method`
/// value.
pub struct MultipartScanner {
    /// `\n--boundary`; a match must be preceded by `\r`.
    delimiter: memmem::Finder<'static>,
    state: State,
    /// Bytes not yet consumed by the state machine. Starts with a virtual CRLF, so that a body
    /// opening with `--boundary` has its first boundary found like any other.
    buf: Vec<u8>,
}

impl MultipartScanner {
    pub fn new(boundary: &str) -> Self {
        let mut delimiter = b"\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        MultipartScanner {
            delimiter: memmem::Finder::new(&delimiter).into_owned(),
            state: State::Preamble,
            buf: b"\r\n".to_vec(),
        }
    }
}

impl FieldScanner for MultipartScanner {
    /// Scans the next piece of the body; returns the values of `_method` fields it completes.
    fn feed(&mut self, data: &[u8]) -> Result<Vec<String>, ScanError> {
        self.buf.extend_from_slice(data);
        let mut found = Vec::new();
        let consumed = self.run(&mut found)?;
        self.buf.drain(..consumed);
        Ok(found)
    }

    /// The body ended: a `_method` value still open counts as given (a lenient parser may take
    /// it); returns it, if any.
    fn finish(&mut self) -> Result<Vec<String>, ScanError> {
        let rest = std::mem::take(&mut self.buf);
        Ok(match self.state {
            State::Value => {
                // After the blank line's CRLF, without a line end the body may close with.
                let value = rest.get(2..).unwrap_or_default();
                let value = value.strip_suffix(b"\r\n").unwrap_or(value);
                vec![String::from_utf8_lossy(value).into_owned()]
            }
            _ => Vec::new(),
        })
    }
}

impl MultipartScanner {
    /// Runs the state machine over `buf`; returns how many bytes it is done with.
    fn run(&mut self, found: &mut Vec<String>) -> Result<usize, ScanError> {
        let needle_len = self.delimiter.needle().len();
        let mut pos = 0;
        loop {
            match self.state {
                State::Preamble | State::Content | State::Value | State::Epilogue => {
                    // The byte before a match is checked, so a match is searched from pos + 1
                    // on where pos > 0 (pos itself, when kept from the last round, was checked).
                    let from = if pos == 0 { 1 } else { pos };
                    let hit = self
                        .delimiter
                        .find(self.buf.get(from..).unwrap_or_default())
                        .map(|i| from + i);
                    let Some(at) = hit else {
                        if self.state == State::Value {
                            if self.buf.len() - pos > MAX_VALUE + needle_len + 2 {
                                return Err(ScanError::ValueTooLong);
                            }
                            return Ok(pos);
                        }
                        // Keep what could start a boundary, and the byte before it.
                        return Ok(self.buf.len().saturating_sub(needle_len).max(pos));
                    };
                    if self.buf[at - 1] != b'\r' {
                        return Err(ScanError::BareLfBoundary);
                    }
                    match self.state {
                        State::Value => {
                            // pos is at the CRLF of the blank line before the value; a boundary
                            // right after that blank line leaves the value empty.
                            let start = (pos + 2).min(at - 1);
                            let value = &self.buf[start..at - 1];
                            found.push(String::from_utf8_lossy(value).into_owned());
                        }
                        State::Epilogue => return Err(ScanError::AfterClose),
                        _ => {}
                    }
                    pos = at + needle_len;
                    self.state = State::BoundaryLine;
                }
                State::BoundaryLine => {
                    let Some(end) = memchr::memchr(b'\n', &self.buf[pos..]).map(|i| pos + i) else {
                        if self.buf.len() - pos > 256 {
                            return Err(ScanError::BadBoundaryLine);
                        }
                        return Ok(pos);
                    };
                    let line = self.buf[pos..end]
                        .strip_suffix(b"\r")
                        .ok_or(ScanError::BadBoundaryLine)?;
                    let (close, padding) = match line.strip_prefix(b"--") {
                        Some(rest) => (true, rest),
                        None => (false, line),
                    };
                    if !padding.iter().all(|&b| b == b' ' || b == b'\t') {
                        return Err(ScanError::BadBoundaryLine);
                    }
                    if close {
                        // The line's LF stays in view: a boundary right after the closing one
                        // starts with it.
                        pos = end;
                        self.state = State::Epilogue;
                    } else {
                        pos = end + 1;
                        self.state = State::Headers;
                    }
                }
                State::Headers => {
                    let Some(len) = header_block_len(&self.buf[pos..])? else {
                        if self.buf.len() - pos > MAX_PART_HEADERS {
                            return Err(ScanError::HeadersTooLarge);
                        }
                        return Ok(pos);
                    };
                    if len > MAX_PART_HEADERS {
                        return Err(ScanError::HeadersTooLarge);
                    }
                    let block = &self.buf[pos..pos + len];
                    self.state = if names_override(block) {
                        State::Value
                    } else {
                        State::Content
                    };
                    // The blank line's CRLF stays in view: a part with no content is followed
                    // by a boundary that starts with its LF (RFC 2046: the CRLF before a
                    // boundary belongs to the boundary).
                    pos += len - 2;
                }
            }
        }
    }
}

/// The length of a complete header block at the start of `buf`, up to and including the blank
/// line's CRLF; None while incomplete. Every line must end with CRLF and (but continuation lines)
/// name a header.
fn header_block_len(buf: &[u8]) -> Result<Option<usize>, ScanError> {
    let mut start = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[start..]) {
        let end = start + i;
        let line = buf[start..end]
            .strip_suffix(b"\r")
            .ok_or(ScanError::BareLfHeader)?;
        if line.is_empty() {
            return Ok(Some(end + 1));
        }
        let continued = matches!(line.first(), Some(b' ' | b'\t')) && start > 0;
        if !continued && !line.contains(&b':') {
            return Err(ScanError::HeaderWithoutColon);
        }
        start = end + 1;
    }
    Ok(None)
}

/// Whether a part's header block names it `_method`: any `name=` (or RFC 2231 `name*=`)
/// parameter anywhere in it, not only in a well-formed Content-Disposition, since parsers
/// differ on where they look (Rack matches across lines).
fn names_override(block: &[u8]) -> bool {
    let text = String::from_utf8_lossy(block);
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut from = 0;
    while let Some(i) = lower[from..].find("name") {
        let at = from + i;
        from = at + 4;
        let before = at.checked_sub(1).map(|j| bytes[j]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            continue; // filename=, x-name=...
        }
        let mut j = at + 4;
        let extended = bytes.get(j) == Some(&b'*');
        if extended {
            j += 1;
        }
        while bytes.get(j).is_some_and(|b| *b == b' ' || *b == b'\t') {
            j += 1;
        }
        if bytes.get(j) != Some(&b'=') {
            continue;
        }
        j += 1;
        while bytes.get(j).is_some_and(|b| *b == b' ' || *b == b'\t') {
            j += 1;
        }
        // The value from the original text (names are compared case-insensitively anyway).
        let value = param_value(&text.as_bytes()[j..]);
        let value = if extended {
            // charset'language'percent-encoded
            let raw = value.rsplit('\'').next().unwrap_or("");
            percent_decode(raw.as_bytes())
        } else {
            value
        };
        if is_override_name(&value) {
            return true;
        }
    }
    false
}

/// A parameter value at the start of `rest`: a quoted string (backslash escapes undone) or a
/// token.
fn param_value(rest: &[u8]) -> String {
    let mut out = Vec::new();
    if rest.first() == Some(&b'"') {
        let mut i = 1;
        while let Some(&b) = rest.get(i) {
            match b {
                b'"' => break,
                b'\\' if i + 1 < rest.len() => {
                    out.push(rest[i + 1]);
                    i += 2;
                    continue;
                }
                _ => out.push(b),
            }
            i += 1;
        }
    } else {
        out.extend(
            rest.iter()
                .take_while(|b| !b" \t\r\n;,\"".contains(b))
                .copied(),
        );
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The streaming scanner for a body policy said to scan; None for [`FormScan::None`].
pub fn scanner_for(form: &FormScan) -> Option<Box<dyn FieldScanner>> {
    match form {
        FormScan::None => None,
        FormScan::UrlEncoded => Some(Box::new(UrlEncodedScanner::default())),
        FormScan::Multipart { boundary } => Some(Box::new(MultipartScanner::new(boundary))),
    }
}

/// The `_method` values of a form body read whole (a small url-encoded form, or a body read
/// to be signed).
pub fn fields_of_whole(form: &FormScan, bytes: &[u8]) -> Result<Vec<String>, ScanError> {
    match form {
        FormScan::None => Ok(Vec::new()),
        FormScan::UrlEncoded => Ok(urlencoded_overrides(bytes)),
        FormScan::Multipart { boundary } => {
            let mut scanner = MultipartScanner::new(boundary);
            let mut values = scanner.feed(bytes)?;
            values.extend(scanner.finish()?);
            Ok(values)
        }
    }
}

/// Decides a `_method` value: Ok if the route that allowed the request allows it too.
pub type OverrideCheck = Arc<dyn Fn(&str) -> Result<(), Refusal> + Send + Sync>;

/// The refusal a [`FormGuard`] made, read by the exchange once the forward has failed.
pub type Verdict = Arc<OnceLock<Refusal>>;

/// The request body stopped because a field asked for a method the route does not allow.
#[derive(Debug, thiserror::Error)]
#[error("request body stopped: {0}")]
pub struct Stopped(String);

enum Guard {
    Scanning,
    /// Refused: reading what the agent still sends (not forwarded), then failing.
    Draining {
        seen: u64,
        deadline: Pin<Box<tokio::time::Sleep>>,
    },
    Failed,
}

/// A form request body on its way upstream, scanned for `_method` fields as it streams.
/// The last data frame is held back until the next one (or the end) shows the scan of it is
/// complete, so the upstream never receives a whole body with a refused field in it: at a
/// refusal, the body fails instead (hyper then aborts the upstream request), and the refusal is
/// left in the [`Verdict`] for the exchange to answer with.
pub struct FormGuard<B> {
    inner: B,
    scanner: Box<dyn FieldScanner>,
    check: OverrideCheck,
    verdict: Verdict,
    held: Option<Bytes>,
    trailers: Option<Frame<Bytes>>,
    ended: bool,
    guard: Guard,
}

impl<B> FormGuard<B> {
    pub fn new(
        inner: B,
        scanner: Box<dyn FieldScanner>,
        check: OverrideCheck,
        verdict: Verdict,
    ) -> Self {
        FormGuard {
            inner,
            scanner,
            check,
            verdict,
            held: None,
            trailers: None,
            ended: false,
            guard: Guard::Scanning,
        }
    }

    /// Checks what the scanner found; on a refusal, records it and starts draining.
    fn judge(&mut self, scanned: Result<Vec<String>, ScanError>) -> Result<(), ()> {
        let refusal = match scanned {
            Ok(values) => values.iter().find_map(|v| (self.check)(v).err()),
            Err(e) => Some(Refusal::new(ErrorCode::RequestInvalid, e.to_string())),
        };
        let Some(refusal) = refusal else {
            return Ok(());
        };
        let _ = self.verdict.set(refusal);
        self.held = None;
        self.trailers = None;
        self.guard = Guard::Draining {
            seen: 0,
            deadline: Box::pin(tokio::time::sleep(DRAIN_TIME)),
        };
        Err(())
    }

    fn stopped(&self) -> BoxError {
        let why = self
            .verdict
            .get()
            .map_or_else(|| "refused".to_string(), |r| r.message.clone());
        Box::new(Stopped(why))
    }
}

impl<B> Body for FormGuard<B>
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
            match &mut this.guard {
                Guard::Failed => return Poll::Ready(Some(Err(this.stopped()))),
                Guard::Draining { seen, deadline } => {
                    let timed_out = deadline.as_mut().poll(cx).is_ready();
                    if timed_out || *seen > DRAIN_LIMIT || this.ended {
                        this.guard = Guard::Failed;
                        continue;
                    }
                    match Pin::new(&mut this.inner).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Some(data) = frame.data_ref() {
                                *seen += data.len() as u64;
                            }
                        }
                        Poll::Ready(Some(Err(_)) | None) => this.ended = true,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Guard::Scanning if this.ended => {
                    if let Some(held) = this.held.take() {
                        return Poll::Ready(Some(Ok(Frame::data(held))));
                    }
                    return Poll::Ready(this.trailers.take().map(Ok));
                }
                Guard::Scanning => match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            let scanned = this.scanner.feed(&data);
                            if this.judge(scanned).is_err() {
                                continue;
                            }
                            let previous = this.held.replace(data);
                            if this.inner.is_end_stream() {
                                this.ended = true;
                                let scanned = this.scanner.finish();
                                if this.judge(scanned).is_err() {
                                    continue;
                                }
                            }
                            if let Some(previous) = previous.filter(|p| !p.is_empty()) {
                                return Poll::Ready(Some(Ok(Frame::data(previous))));
                            }
                        }
                        Err(trailers) => {
                            this.ended = true;
                            this.trailers = Some(trailers);
                            let scanned = this.scanner.finish();
                            let _ = this.judge(scanned);
                        }
                    },
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(None) => {
                        this.ended = true;
                        let scanned = this.scanner.finish();
                        let _ = this.judge(scanned);
                    }
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.guard, Guard::Scanning)
            && self.ended
            && self.held.is_none()
            && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Bytes are forwarded unchanged: what is held plus what is still to come.
        let mut hint = self.inner.size_hint();
        let held = self.held.as_ref().map_or(0, |h| h.len() as u64);
        hint.set_lower(hint.lower() + held);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streaming_urlencoded_scanner_reads_fields_as_the_whole_body_reading_does() {
        let bodies = [
            "_method=DELETE",
            "a=1&_method=put&b=2",
            "%5Fmethod=delete",
            "%5fMETHOD=PATCH",
            "a=1;_method=DELETE",
            "_method=GET&_method=DELETE",
            "_method=DEL%45TE",
            "_method",
            "x=1&_method",
            ".method=DELETE",
            "+method=DELETE",
            "%20%09+ _method=PUT",
            "%2_method=PUT",
            "%_method=PUT",
            "_method[]=PUT&_method[x]=GET",
            "_methodx=PUT&__method=PUT",
            "method=DELETE&x_method=PUT",
            "a=%5Fmethod&b=_method%3DDELETE",
            "_method=%26DELETE",
            "_method%3DDELETE=x",
            "{\"json\": \"no form at all, _method=DELETE inside a value\"}",
            "&&;=&_method==DELETE",
            "",
        ];
        for body in bodies {
            let want = urlencoded_overrides(body.as_bytes());
            // Every way of cutting the body in two, and byte by byte.
            for cut in 0..=body.len() {
                let mut scanner = UrlEncodedScanner::default();
                let mut got = scanner.feed(&body.as_bytes()[..cut]).unwrap();
                got.extend(scanner.feed(&body.as_bytes()[cut..]).unwrap());
                got.extend(scanner.finish().unwrap());
                assert_eq!(got, want, "{body:?} cut at {cut}");
            }
            let mut scanner = UrlEncodedScanner::default();
            let mut got = Vec::new();
            for b in body.as_bytes() {
                got.extend(scanner.feed(std::slice::from_ref(b)).unwrap());
            }
            got.extend(scanner.finish().unwrap());
            assert_eq!(got, want, "{body:?} byte by byte");
        }
    }

    #[test]
    fn the_streaming_urlencoded_scanner_keeps_little_of_a_large_body() {
        let mut scanner = UrlEncodedScanner::default();
        let filler = vec![b'a'; 1 << 20];
        assert!(scanner.feed(&filler).unwrap().is_empty());
        assert!(scanner.name.len() <= NAME_WINDOW);
        assert!(scanner.feed(b"=").unwrap().is_empty());
        assert!(scanner.feed(&filler).unwrap().is_empty());
        assert_eq!(scanner.feed(b"&_method=DELETE&").unwrap(), ["DELETE"]);
        // A `_method` value longer than any method is refused, not kept.
        let mut scanner = UrlEncodedScanner::default();
        assert_eq!(
            scanner
                .feed(b"_method=")
                .and_then(|_| scanner.feed(&filler)),
            Err(ScanError::ValueTooLong)
        );
    }

    /// Scans `body` cut into pieces of `size` bytes; returns the `_method` values found.
    fn scan(body: &str, size: usize) -> Result<Vec<String>, ScanError> {
        let mut scanner = MultipartScanner::new("XyZ");
        let mut found = Vec::new();
        for piece in body.as_bytes().chunks(size.max(1)) {
            found.extend(scanner.feed(piece)?);
        }
        found.extend(scanner.finish()?);
        Ok(found)
    }

    const FILE: &str = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"_method\"\r\nContent-Type: text/plain\r\n\r\nline\r\nx--XyZ\r\n-- XyZ\r\n--XyZ\r\nContent-Disposition: form-data; name=\"empty\"\r\n\r\n\r\n";

    #[test]
    fn multipart_fields_are_found_across_any_split() {
        let with = |disposition: &str, value: &str| {
            format!(
                "preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n\
                 --XyZ\r\n{disposition}\r\n\r\n{value}\r\n{}--XyZ--\r\n",
                FILE
            )
        };
        let cases: Vec<(String, Result<Vec<&str>, ScanError>)> = vec![
            (
                with("Content-Disposition: form-data; name=\"_method\"", "DELETE"),
                Ok(vec!["DELETE"]),
            ),
            (
                with("content-disposition: form-data; NAME=_method", "put"),
                Ok(vec!["put"]),
            ),
            (
                with("Content-Disposition: form-data; name=\"_meth\\od\"", "PATCH"),
                Ok(vec!["PATCH"]),
            ),
            (
                with("Content-Disposition: form-data; name*=UTF-8''%5Fmethod", "X"),
                Ok(vec!["X"]),
            ),
            (
                with("Content-Disposition: form-data;\r\n name=\"_METHOD\"", "DELETE"),
                Ok(vec!["DELETE"]),
            ),
            (
                with("Content-Disposition: form-data; name=\"_method\"", ""),
                Ok(vec![""]),
            ),
            (
                with("Content-Disposition: form-data; name=\"x_method\"", "DELETE"),
                Ok(vec![]),
            ),
            (
                // A boundary line with a bare LF before it: PHP splits there, Rack does not.
                with("Content-Disposition: form-data; name=\"b\"", "x\n--XyZ"),
                Err(ScanError::BareLfBoundary),
            ),
            (
                with("Content-Disposition: form-data; name=\"b\"\nX: y", "x"),
                Err(ScanError::BareLfHeader),
            ),
            (
                with("Content-Disposition: form-data\r\n; name=_method", "x"),
                Err(ScanError::HeaderWithoutColon),
            ),
            (
                "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ--\r\n\
                 \r\n--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--"
                    .to_string(),
                Err(ScanError::AfterClose),
            ),
            (
                "--XyZ   \r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE"
                    .to_string(),
                Ok(vec!["DELETE"]),
            ),
            (
                "--XyZ\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--XyZ--"
                    .to_string(),
                Ok(vec!["DELETE"]),
            ),
            (
                "--XyZ junk\r\n".to_string(),
                Err(ScanError::BadBoundaryLine),
            ),
            (
                // A line that starts with the boundary (PHP takes it as one, Rack does not).
                with("Content-Disposition: form-data; name=\"b\"", "x\r\n--XyZZ"),
                Err(ScanError::BadBoundaryLine),
            ),
            (
                // No blank line: a part with no content, then the next boundary.
                "--XyZ\r\nContent-Disposition: form-data; name=_method\r\n\r\n--XyZ\r\n\
                 Content-Disposition: form-data; name=\"x\"\r\n\r\nDELETE\r\n--XyZ--\r\n"
                    .to_string(),
                Ok(vec![""]),
            ),
            (FILE.to_string(), Ok(vec![])),
        ];
        for (body, want) in &cases {
            let want = want
                .clone()
                .map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            for size in [1, 2, 3, 5, 7, 64, body.len()] {
                assert_eq!(scan(body, size), want, "pieces of {size}: {body:?}");
            }
        }
    }

    #[test]
    fn multipart_keeps_little_of_a_large_part() {
        let mut scanner = MultipartScanner::new("XyZ");
        scanner
            .feed(b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n")
            .unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..64 {
            assert_eq!(scanner.feed(&chunk).unwrap(), Vec::<String>::new());
            assert!(scanner.buf.len() < 64, "{}", scanner.buf.len());
        }
        assert!(scanner.feed(b"\r\n--XyZ--").unwrap().is_empty());
        assert!(scanner.finish().unwrap().is_empty());
        let mut long = MultipartScanner::new("XyZ");
        long.feed(b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\n")
            .unwrap();
        assert_eq!(long.feed(&chunk), Err(ScanError::ValueTooLong));
    }
}
