//! Request paths as the policy sees them. A path is matched in decoded form; any encoding trick
//! that could make the upstream see a different path than the one we matched is refused, never
//! normalized into an allowed route.

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("a request path must not contain a fragment ('#')")]
    Fragment,
    #[error("path contains '?': the query must be split off before the path is checked")]
    Query,
    #[error("path contains whitespace or a control character (byte {0:#04x}); percent-encode it")]
    ControlCharacter(u8),
    #[error("path contains a raw non-ASCII character; percent-encode it")]
    NonAscii,
    #[error("path has a '%' that is not followed by two hex digits")]
    BadPercentEncoding,
    #[error("'\\' is not allowed in a path (some servers treat it as '/'); use '/'")]
    Backslash,
    #[error(
        "an encoded '/' (%2F) in a path segment is refused: servers disagree on whether it \
         separates segments"
    )]
    EncodedSlash,
    #[error("an encoded '\\' (%5C) in a path is refused (some servers treat it as '/')")]
    EncodedBackslash,
    #[error(
        "'.' and '..' path segments (also percent-encoded, as in %2e%2e, or with ';' parameters, \
         as in ..;) are refused; send the normalized path"
    )]
    DotSegment,
    #[error("double percent-encoding (e.g. %252e) in a path is refused; encode once")]
    DoubleEncoding,
    #[error("an encoded control character (e.g. %00, %0a) in a path is refused")]
    EncodedControl,
    #[error(
        "the percent-decoded path is not valid UTF-8 (overlong forms such as %c0%ae are refused)"
    )]
    InvalidUtf8,
}

impl PathError {
    /// True when the request is simply malformed (maps to 400 `request_invalid`), false when it
    /// is a well-formed request using a path trick (maps to 403 `path_not_allowed`).
    ///
    /// Malformed means not a valid RFC 3986 origin-form path: not absolute, a fragment or a
    /// query left in, raw whitespace/control/non-ASCII bytes, a broken '%' escape. Everything
    /// else (dot segments, encoded separators, double encoding, encoded control bytes, invalid
    /// UTF-8 after decoding, and a raw '\\', which only ever serves as a separator trick) is a
    /// trick.
    pub fn is_malformed(&self) -> bool {
        match self {
            PathError::NotAbsolute
            | PathError::Fragment
            | PathError::Query
            | PathError::ControlCharacter(_)
            | PathError::NonAscii
            | PathError::BadPercentEncoding => true,
            PathError::Backslash
            | PathError::EncodedSlash
            | PathError::EncodedBackslash
            | PathError::DotSegment
            | PathError::DoubleEncoding
            | PathError::EncodedControl
            | PathError::InvalidUtf8 => false,
        }
    }
}

/// A request path (the part before `?`), validated and decoded once for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath {
    raw: String,
    /// None when decoding changed nothing (no `%`-escape): the common case costs no copy.
    decoded: Option<String>,
}

impl RequestPath {
    /// Validates `raw` (origin-form path, WITHOUT the query; callers split at the first '?').
    /// Rules: must start with '/'; no '#', no whitespace/control bytes, no '\\'; every '%' must be
    /// followed by two hex digits; per '/'-separated segment: "%2F"/"%2f"/"%5C"/"%5c" (encoded
    /// slash/backslash) rejected; a segment that is "." or ".." literally or after decoding
    /// (e.g. "%2e%2E", ".%2e") rejected; after decoding, a segment still containing "%" followed
    /// by two hex digits (double encoding, e.g. "%252e") rejected; decoded bytes must be valid
    /// UTF-8 (overlong forms like "%c0%ae" are invalid UTF-8 and rejected). Empty segments ("//")
    /// are kept as they are (they only ever make a path match less).
    ///
    /// Where servers differ, this refuses as well:
    /// - a '?' (the caller did not split the query off) and raw non-ASCII bytes;
    /// - encoded control characters (%00-%1f, %7f), which some servers truncate at;
    /// - dot segments in the forms some servers also read as "..": with path parameters
    ///   ("..;x", as Tomcat does), with trailing spaces (".. ", as Windows does), and runs of
    ///   more dots ("..."): a segment whose part before the first ';', with trailing spaces
    ///   removed, is made only of dots.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let bytes = raw.as_bytes();
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(PathError::NotAbsolute);
        };
        for &b in bytes {
            match b {
                b'#' => return Err(PathError::Fragment),
                b'?' => return Err(PathError::Query),
                b'\\' => return Err(PathError::Backslash),
                0..=0x20 | 0x7f => return Err(PathError::ControlCharacter(b)),
                0x80..=0xff => return Err(PathError::NonAscii),
                _ => {}
            }
        }
        if !raw.contains('%') {
            // Nothing to decode: the checks below that remain are on the raw segments.
            for segment in rest.split('/') {
                if is_dot_segment(segment.as_bytes()) {
                    return Err(PathError::DotSegment);
                }
            }
            return Ok(RequestPath {
                raw: raw.to_string(),
                decoded: None,
            });
        }
        let mut decoded = Vec::with_capacity(bytes.len());
        for segment in rest.split('/') {
            decoded.push(b'/');
            let start = decoded.len();
            decode_segment(segment.as_bytes(), &mut decoded)?;
            let seg = &decoded[start..];
            if is_dot_segment(seg) {
                return Err(PathError::DotSegment);
            }
            if has_percent_escape(seg) {
                return Err(PathError::DoubleEncoding);
            }
        }
        let decoded = String::from_utf8(decoded).map_err(|_| PathError::InvalidUtf8)?;
        Ok(RequestPath {
            raw: raw.to_string(),
            decoded: Some(decoded),
        })
    }

    /// The path exactly as the agent sent it (what is forwarded upstream).
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The percent-decoded path that routes are matched against.
    pub fn decoded(&self) -> &str {
        self.decoded.as_deref().unwrap_or(&self.raw)
    }
}

/// Percent-decodes one segment (no '/' in it) onto `out`.
fn decode_segment(seg: &[u8], out: &mut Vec<u8>) -> Result<(), PathError> {
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            seg.get(i + 1).and_then(|&h| hex_value(h)),
            seg.get(i + 2).and_then(|&l| hex_value(l)),
        ) else {
            return Err(PathError::BadPercentEncoding);
        };
        let v = (hi << 4) | lo;
        match v {
            b'/' => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::EncodedBackslash),
            0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
            _ => out.push(v),
        }
        i += 3;
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// ".", "..", and what some servers read as one of them ("..;x", ".. ", "...").
fn is_dot_segment(seg: &[u8]) -> bool {
    let base = match seg.iter().position(|&b| b == b';') {
        Some(i) => &seg[..i],
        None => seg,
    };
    let end = base.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    let base = &base[..end];
    !base.is_empty() && base.iter().all(|&b| b == b'.')
}

/// A '%' followed by two hex digits, in already-decoded bytes.
fn has_percent_escape(seg: &[u8]) -> bool {
    seg.windows(3)
        .any(|w| w[0] == b'%' && hex_value(w[1]).is_some() && hex_value(w[2]).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths() {
        use PathError::*;
        // (raw, Ok(decoded) or Err(error))
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/repos/acme/widgets", Ok("/repos/acme/widgets")),
            ("/a/b/", Ok("/a/b/")),
            ("//", Ok("//")),
            ("/a//b", Ok("/a//b")),
            ("/a;b", Ok("/a;b")),
            ("/a;b=c/d", Ok("/a;b=c/d")),
            ("/a%20b", Ok("/a b")),
            ("/a%41b", Ok("/aAb")),
            ("/%7euser", Ok("/~user")),
            ("/caf%C3%A9", Ok("/café")),
            ("/a%2eb", Ok("/a.b")),
            (
                "/.well-known/openid-configuration",
                Ok("/.well-known/openid-configuration"),
            ),
            ("/a.", Ok("/a.")),
            ("/..a", Ok("/..a")),
            ("/a..", Ok("/a..")),
            ("/%2e%2ea", Ok("/..a")),
            ("/v1/items:batchGet", Ok("/v1/items:batchGet")),
            ("/a@b", Ok("/a@b")),
            ("/%25", Ok("/%")),
            ("/%25zz", Ok("/%zz")),
            ("/%3F", Ok("/?")),
            ("/%23", Ok("/#")),
            ("/%20", Ok("/ ")),
            ("/;", Ok("/;")),
            // not absolute
            ("", Err(NotAbsolute)),
            ("a/b", Err(NotAbsolute)),
            ("*", Err(NotAbsolute)),
            ("http://evil.com/", Err(NotAbsolute)),
            ("%2fa", Err(NotAbsolute)),
            // fragment, query, raw bytes
            ("/a#b", Err(Fragment)),
            ("/#", Err(Fragment)),
            ("/a?b", Err(Query)),
            ("/a b", Err(ControlCharacter(b' '))),
            ("/a\tb", Err(ControlCharacter(b'\t'))),
            ("/a\r\nHost: evil", Err(ControlCharacter(b'\r'))),
            ("/a\u{0}", Err(ControlCharacter(0))),
            ("/a\u{7f}", Err(ControlCharacter(0x7f))),
            ("/café", Err(NonAscii)),
            ("/a\u{a0}b", Err(NonAscii)),
            ("/a\\b", Err(Backslash)),
            ("/..\\admin", Err(Backslash)),
            // bad percent-encoding
            ("/%ZZ", Err(BadPercentEncoding)),
            ("/%", Err(BadPercentEncoding)),
            ("/a%2", Err(BadPercentEncoding)),
            ("/%u002e", Err(BadPercentEncoding)),
            ("/%%32%65", Err(BadPercentEncoding)),
            ("/%g0", Err(BadPercentEncoding)),
            // dot segments, literal and encoded
            ("/.", Err(DotSegment)),
            ("/..", Err(DotSegment)),
            ("/a/../admin", Err(DotSegment)),
            ("/a/./b", Err(DotSegment)),
            ("/a/..", Err(DotSegment)),
            ("/%2e%2e/admin", Err(DotSegment)),
            ("/%2E%2E/admin", Err(DotSegment)),
            ("/a/.%2e/admin", Err(DotSegment)),
            ("/a/%2e./admin", Err(DotSegment)),
            ("/a/%2e/b", Err(DotSegment)),
            ("/a/..;/admin", Err(DotSegment)),
            ("/a/..;x=1/admin", Err(DotSegment)),
            ("/a/.;/admin", Err(DotSegment)),
            ("/a/%2e%2e%3b/admin", Err(DotSegment)),
            ("/a/..%20/admin", Err(DotSegment)),
            ("/a/.../admin", Err(DotSegment)),
            // encoded separators
            ("/a%2fb", Err(EncodedSlash)),
            ("/a%2Fb", Err(EncodedSlash)),
            ("/repos/acme%2f..%2fother", Err(EncodedSlash)),
            ("/a%5cb", Err(EncodedBackslash)),
            ("/a%5C..%5Cadmin", Err(EncodedBackslash)),
            // double encoding
            ("/%252e%252e/admin", Err(DoubleEncoding)),
            ("/a%252fb", Err(DoubleEncoding)),
            ("/a%255cb", Err(DoubleEncoding)),
            ("/%2541", Err(DoubleEncoding)),
            ("/a/%25%32%65", Err(DoubleEncoding)),
            // encoded control bytes
            ("/a%00", Err(EncodedControl)),
            ("/a%00.json", Err(EncodedControl)),
            ("/a%0d%0aX:1", Err(EncodedControl)),
            ("/a%09", Err(EncodedControl)),
            ("/a%7f", Err(EncodedControl)),
            // invalid UTF-8 after decoding
            ("/%c0%ae%c0%ae/admin", Err(InvalidUtf8)),
            ("/%c0%af", Err(InvalidUtf8)),
            ("/%e0%80%ae", Err(InvalidUtf8)),
            ("/%ff", Err(InvalidUtf8)),
            ("/caf%e9", Err(InvalidUtf8)),
            ("/%C3", Err(InvalidUtf8)),
            ("/%ed%a0%80", Err(InvalidUtf8)), // surrogate
        ];
        for (raw, want) in cases {
            let got = RequestPath::parse(raw);
            match (&got, want) {
                (Ok(p), Ok(decoded)) => {
                    assert_eq!(p.decoded(), *decoded, "decoded({raw:?})");
                    assert_eq!(p.raw(), *raw, "raw({raw:?})");
                }
                (Err(e), Err(w)) => assert_eq!(e, w, "parse({raw:?})"),
                _ => panic!("parse({raw:?}) = {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn malformed_versus_trick() {
        use PathError::*;
        let cases = [
            (NotAbsolute, true),
            (Fragment, true),
            (Query, true),
            (ControlCharacter(b' '), true),
            (NonAscii, true),
            (BadPercentEncoding, true),
            (Backslash, false),
            (EncodedSlash, false),
            (EncodedBackslash, false),
            (DotSegment, false),
            (DoubleEncoding, false),
            (EncodedControl, false),
            (InvalidUtf8, false),
        ];
        for (err, malformed) in cases {
            assert_eq!(err.is_malformed(), malformed, "{err:?}");
            assert!(!err.to_string().is_empty());
        }
    }
}
