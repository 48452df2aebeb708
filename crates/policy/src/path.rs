//! Request paths as the policy sees them. A path is matched in decoded form; any encoding trick
//! that could make the upstream see a different path than the one we matched is refused, never
//! normalized into an allowed route.

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    // variants chosen by the implementation, e.g. NotAbsolute, DotSegment, EncodedSlash,
    // EncodedDot (e.g. "%2e" forming a dot segment), DoubleEncoding, Backslash, InvalidUtf8,
    // BadPercentEncoding, Fragment, ControlCharacter, ...
    #[error("path must start with '/'")]
    NotAbsolute,
}

impl PathError {
    /// True when the request is simply malformed (maps to 400 `request_invalid`), false when it
    /// is a well-formed request using a path trick (maps to 403 `path_not_allowed`).
    pub fn is_malformed(&self) -> bool {
        todo!()
    }
}

/// A request path (the part before `?`), validated and decoded once for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath {
    raw: String,
    decoded: String,
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
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        todo!("{raw}")
    }

    /// The path exactly as the agent sent it (what is forwarded upstream).
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The percent-decoded path that routes are matched against.
    pub fn decoded(&self) -> &str {
        &self.decoded
    }
}
