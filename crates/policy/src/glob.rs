//! Path globs for routes: `*` matches within one segment, `**` (a whole segment) matches zero or
//! more segments. Matching is case-sensitive, on the decoded path.

/// Why a glob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("path glob must start with '/'")]
    NotAbsolute,
    #[error(
        "character {0:?} is not allowed in a path glob (no '?', '#', '%', '\\', whitespace or \
         control characters); write the path decoded, without a query"
    )]
    InvalidCharacter(char),
    #[error("'**' must be a whole segment, as in \"/a/**\" or \"/a/**/b\"; found segment {0:?}")]
    DoubleStarNotWholeSegment(String),
    #[error("path glob has a '.' or '..' segment, which no request path can have")]
    DotSegment,
}

/// One '/'-separated part of a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole segments.
    AnySegments,
    /// Literal text with `*` wildcards, as a byte range into `source`.
    Pattern { start: usize, end: usize },
}

/// A compiled path glob. Examples: `/repos/acme/**` matches `/repos/acme`, `/repos/acme/`,
/// `/repos/acme/x/y`, not `/repos/acmex`; `/v1/*/items` matches `/v1/a/items` only; `/**` matches
/// every path; `/files/*.json` matches `/files/a.json`.
///
/// A non-empty glob segment never matches an empty path segment: `/v1/*/items` does not match
/// `/v1//items`, which a server that merges slashes would read as `/v1/items`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    source: String,
    segments: Vec<Segment>,
}

impl PathGlob {
    /// Compiles a glob. Must start with '/', no '?', '#', '%', '\\' or whitespace; `**` only as a whole segment.
    /// Control characters and "."/".." segments (which can never match, see
    /// [`crate::RequestPath::parse`]) are refused too.
    pub fn parse(s: &str) -> Result<Self, GlobError> {
        let Some(rest) = s.strip_prefix('/') else {
            return Err(GlobError::NotAbsolute);
        };
        if let Some(c) = s
            .chars()
            .find(|&c| matches!(c, '?' | '#' | '%' | '\\') || c.is_whitespace() || c.is_control())
        {
            return Err(GlobError::InvalidCharacter(c));
        }
        let mut segments = Vec::new();
        let mut start = 1;
        for seg in rest.split('/') {
            let end = start + seg.len();
            if seg == "**" {
                segments.push(Segment::AnySegments);
            } else if seg.contains("**") {
                return Err(GlobError::DoubleStarNotWholeSegment(seg.to_string()));
            } else if seg == "." || seg == ".." {
                return Err(GlobError::DotSegment);
            } else {
                segments.push(Segment::Pattern { start, end });
            }
            start = end + 1;
        }
        Ok(PathGlob {
            source: s.to_string(),
            segments,
        })
    }

    /// Matches a decoded request path ([`crate::RequestPath::decoded`]). No allocation.
    pub fn matches(&self, decoded_path: &str) -> bool {
        let Some(rest) = decoded_path.strip_prefix('/') else {
            return false;
        };
        let path = rest.as_bytes();
        // Path positions are byte offsets of segment starts; `done` means no segment is left
        // (distinct from one empty segment, as in "/a/").
        let done = path.len() + 1;
        let segment_at = |s: usize| -> (&[u8], usize) {
            let end = path[s..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(path.len(), |i| s + i);
            (&path[s..end], end + 1)
        };
        let source = self.source.as_bytes();
        let (mut p, mut s) = (0, 0);
        // Last `**` seen: (pattern index after it, path position it has consumed up to).
        let mut star: Option<(usize, usize)> = None;
        loop {
            match self.segments.get(p) {
                None if s == done => return true,
                Some(Segment::AnySegments) => {
                    star = Some((p + 1, s));
                    p += 1;
                    continue;
                }
                Some(Segment::Pattern { start, end }) if s < done => {
                    let (seg, next) = segment_at(s);
                    if segment_matches(&source[*start..*end], seg) {
                        p += 1;
                        s = next;
                        continue;
                    }
                }
                _ => {}
            }
            // Mismatch: let the last `**` swallow one more segment, or fail.
            match star {
                Some((after, consumed)) if consumed < done => {
                    let (_, next) = segment_at(consumed);
                    star = Some((after, next));
                    p = after;
                    s = next;
                }
                _ => return false,
            }
        }
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when every path `other` matches is matched by `self` too — decided conservatively:
    /// a false answer may be a containment this check cannot prove, never the reverse. Proven
    /// cases: the same glob; `other` names one literal path that `self` matches; `self` ends
    /// in `/**` and `other` begins with `self`'s leading segments, each the same pattern or a
    /// literal segment that pattern matches. A child grant's paths must pass this against its
    /// parent's (a grant never widens).
    pub fn covers(&self, other: &PathGlob) -> bool {
        if self.source == other.source {
            return true;
        }
        if other.is_literal() {
            return self.matches(&other.source);
        }
        let Some((Segment::AnySegments, leading)) = self.segments.split_last() else {
            return false;
        };
        if other.segments.len() < leading.len() {
            return false;
        }
        leading
            .iter()
            .zip(&other.segments)
            .all(|(mine, theirs)| match (mine, theirs) {
                (Segment::AnySegments, Segment::AnySegments) => true,
                (Segment::Pattern { start, end }, Segment::Pattern { start: s, end: e }) => {
                    let pattern = &self.source.as_bytes()[*start..*end];
                    let text = &other.source.as_bytes()[*s..*e];
                    pattern == text || (!text.contains(&b'*') && segment_matches(pattern, text))
                }
                _ => false,
            })
    }

    /// No wildcard: the glob names one path.
    fn is_literal(&self) -> bool {
        !self.source.contains('*')
    }
}

/// `*` matches any run of bytes within the segment; everything else matches itself.
fn segment_matches(pattern: &[u8], text: &[u8]) -> bool {
    if text.is_empty() {
        return pattern.is_empty();
    }
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((after, from)) => {
                    star = Some((after, from + 1));
                    p = after;
                    t = from + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matching() {
        // (glob, path, matches)
        let cases = [
            ("/repos/acme/**", "/repos/acme", true),
            ("/repos/acme/**", "/repos/acme/", true),
            ("/repos/acme/**", "/repos/acme/x", true),
            ("/repos/acme/**", "/repos/acme/x/y/z", true),
            ("/repos/acme/**", "/repos/acme//x", true),
            ("/repos/acme/**", "/repos/acmex", false),
            ("/repos/acme/**", "/repos/acmex/y", false),
            ("/repos/acme/**", "/repos", false),
            ("/repos/acme/**", "/repos/Acme/x", false),
            ("/repos/acme/**", "//repos/acme/x", false),
            ("/repos/acme/**", "/other/repos/acme/x", false),
            ("/v1/*/items", "/v1/a/items", true),
            ("/v1/*/items", "/v1/abc;x/items", true),
            ("/v1/*/items", "/v1/a/b/items", false),
            ("/v1/*/items", "/v1//items", false),
            ("/v1/*/items", "/v1/items", false),
            ("/v1/*/items", "/v1/a/items/", false),
            ("/v1/*/items", "/v1/a/itemsx", false),
            ("/v1/*", "/v1/a", true),
            ("/v1/*", "/v1/", false),
            ("/v1/*", "/v1", false),
            ("/**", "/", true),
            ("/**", "/anything/at/all", true),
            ("/**", "//", true),
            ("/**", "", false),
            ("/**", "no-slash", false),
            ("/", "/", true),
            ("/", "/a", false),
            ("/", "//", false),
            ("/files/*.json", "/files/a.json", true),
            ("/files/*.json", "/files/.json", true),
            ("/files/*.json", "/files/a.json.txt", false),
            ("/files/*.json", "/files/a.jsonx", false),
            ("/files/*.json", "/files/dir/a.json", false),
            ("/files/*.json", "/files/a.JSON", false),
            ("/a*b*c", "/abc", true),
            ("/a*b*c", "/axxbyyc", true),
            ("/a*b*c", "/axxbyy", false),
            ("/a*b*c", "/aXbXcXbXc", true),
            ("/*a", "/aaaa", true),
            ("/*a", "/aaab", false),
            ("/**/*.json", "/a.json", true),
            ("/**/*.json", "/x/y/a.json", true),
            ("/**/*.json", "/x/y/a.txt", false),
            ("/a/**/b", "/a/b", true),
            ("/a/**/b", "/a/x/b", true),
            ("/a/**/b", "/a/x/y/b", true),
            ("/a/**/b", "/a/b/c", false),
            ("/a/**/b", "/a/x/b/y/b", true),
            ("/a/**/b/**/c", "/a/1/b/2/3/c", true),
            ("/a/**/b/**/c", "/a/1/2/c", false),
            ("/a/**/**/b", "/a/b", true),
            ("/users/*/repos/**", "/users/bob/repos", true),
            ("/users/*/repos/**", "/users/bob/repos/x/y", true),
            ("/users/*/repos/**", "/users/bob/keys", false),
            ("/café/*", "/café/x", true),
            ("/caf*/x", "/café/x", true),
            ("/a/", "/a/", true),
            ("/a/", "/a", false),
            ("/a", "/a/", false),
            ("/a//b", "/a//b", true),
            ("/a//b", "/a/b", false),
            ("/v1/chat/completions", "/v1/chat/completions", true),
            ("/v1/chat/completions", "/v1/chat/completions/", false),
            ("/v1/chat/completions", "/v1/chat", false),
        ];
        for (glob, path, want) in cases {
            let g = PathGlob::parse(glob).unwrap();
            assert_eq!(g.matches(path), want, "{glob:?} matches {path:?}");
            assert_eq!(g.as_str(), glob);
        }
    }

    /// Obviously-correct (and allocating, exponential) reference matcher.
    fn reference(glob: &str, path: &str) -> bool {
        fn seg(p: &[u8], t: &[u8]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some((b'*', rest)) => (0..=t.len()).any(|i| seg(rest, &t[i..])),
                Some((c, rest)) => t.first() == Some(c) && seg(rest, &t[1..]),
            }
        }
        fn segs(p: &[&str], t: &[&str]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some((&"**", rest)) => (0..=t.len()).any(|i| segs(rest, &t[i..])),
                Some((s, rest)) => {
                    !t.is_empty()
                        && (t[0].is_empty() == s.is_empty())
                        && seg(s.as_bytes(), t[0].as_bytes())
                        && segs(rest, &t[1..])
                }
            }
        }
        let (Some(g), Some(p)) = (glob.strip_prefix('/'), path.strip_prefix('/')) else {
            return false;
        };
        let g: Vec<&str> = g.split('/').collect();
        let p: Vec<&str> = p.split('/').collect();
        segs(&g, &p)
    }

    /// Every path of up to three segments over a tiny alphabet, against a set of globs.
    #[test]
    fn glob_matches_reference() {
        let globs = [
            "/",
            "/**",
            "/a",
            "/a/**",
            "/**/a",
            "/a/**/b",
            "/*",
            "/*/*",
            "/a*",
            "/*a",
            "/*a*",
            "/a*b",
            "/**/*",
            "/*/**",
            "/**/**",
            "/a/",
            "/a//b",
            "/**/a*/**",
            "/*/b/**",
        ];
        let alphabet = ["", "a", "b", "ab", "ba", "aab"];
        let mut paths = vec![];
        for x in alphabet {
            paths.push(format!("/{x}"));
            for y in alphabet {
                paths.push(format!("/{x}/{y}"));
                for z in alphabet {
                    paths.push(format!("/{x}/{y}/{z}"));
                }
            }
        }
        let mut checked = 0;
        for glob in globs {
            let g = PathGlob::parse(glob).unwrap();
            for path in &paths {
                assert_eq!(
                    g.matches(path),
                    reference(glob, path),
                    "{glob:?} vs {path:?}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, globs.len() * paths.len());
    }

    #[test]
    fn glob_parsing() {
        use GlobError::*;
        let cases: &[(&str, Result<(), GlobError>)] = &[
            ("/", Ok(())),
            ("/**", Ok(())),
            ("/a/**/b", Ok(())),
            ("/a*", Ok(())),
            ("/a;b", Ok(())),
            ("", Err(NotAbsolute)),
            ("a/b", Err(NotAbsolute)),
            ("**", Err(NotAbsolute)),
            ("/a?b", Err(InvalidCharacter('?'))),
            ("/a#b", Err(InvalidCharacter('#'))),
            ("/a%2fb", Err(InvalidCharacter('%'))),
            ("/a\\b", Err(InvalidCharacter('\\'))),
            ("/a b", Err(InvalidCharacter(' '))),
            ("/a\tb", Err(InvalidCharacter('\t'))),
            ("/a\u{0}", Err(InvalidCharacter('\u{0}'))),
            ("/a**", Err(DoubleStarNotWholeSegment("a**".into()))),
            ("/**a/b", Err(DoubleStarNotWholeSegment("**a".into()))),
            ("/***", Err(DoubleStarNotWholeSegment("***".into()))),
            ("/a/..", Err(DotSegment)),
            ("/./a", Err(DotSegment)),
        ];
        for (glob, want) in cases {
            assert_eq!(PathGlob::parse(glob).map(|_| ()), *want, "{glob:?}");
        }
    }

    #[test]
    fn covers_is_sound_and_proves_the_common_cases() {
        let g = |s: &str| PathGlob::parse(s).unwrap();
        let yes = [
            ("/**", "/anything/**"),
            ("/**", "/a"),
            ("/repos/acme/**", "/repos/acme/api/**"),
            ("/repos/acme/**", "/repos/acme"),
            ("/repos/acme/**", "/repos/acme/*/issues"),
            ("/repos/*/**", "/repos/acme/**"),
            ("/repos/*/**", "/repos/*/issues"),
            ("/v1/*/items", "/v1/a/items"),
            ("/v1/*/items", "/v1/*/items"),
            ("/a/**/b/**", "/a/**/b/c"),
        ];
        for (parent, child) in yes {
            assert!(g(parent).covers(&g(child)), "{parent} covers {child}");
        }
        let no = [
            ("/repos/acme/**", "/repos/acmex/**"),
            ("/repos/acme/**", "/repos/**"),
            ("/repos/acme/**", "/**"),
            ("/repos/acme", "/repos/acme/**"),
            ("/v1/*/items", "/v1/*/*"),
            ("/v1/a*/items", "/v1/*/items"),
            ("/a/b", "/a/c"),
        ];
        for (parent, child) in no {
            assert!(
                !g(parent).covers(&g(child)),
                "{parent} does not cover {child}"
            );
        }
    }
}
