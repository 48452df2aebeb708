//! Path globs for routes: `*` matches within one segment, `**` (a whole segment) matches zero or
//! more segments. Matching is case-sensitive, on the decoded path.

/// Why a glob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    // e.g. NotAbsolute ("must start with '/'"), DoubleStarNotWholeSegment, QueryNotAllowed,
    // InvalidCharacter, Empty ...
    #[error("path glob must start with '/'")]
    NotAbsolute,
}

/// A compiled path glob. Examples: `/repos/acme/**` matches `/repos/acme`, `/repos/acme/`,
/// `/repos/acme/x/y`, not `/repos/acmex`; `/v1/*/items` matches `/v1/a/items` only; `/**` matches
/// every path; `/files/*.json` matches `/files/a.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    source: String,
    // compiled form chosen by the implementation
}

impl PathGlob {
    /// Compiles a glob. Must start with '/', no '?', '#', '%', '\\' or whitespace; `**` only as a whole segment.
    pub fn parse(s: &str) -> Result<Self, GlobError> {
        todo!("{s}")
    }

    /// Matches a decoded request path ([`crate::RequestPath::decoded`]). No allocation.
    pub fn matches(&self, decoded_path: &str) -> bool {
        todo!("{decoded_path}")
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}
