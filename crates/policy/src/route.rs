//! Routes and the first-match decision. A route names hosts, schemes, ports, methods and path
//! globs; a request is allowed by the first route that matches all of them, and denied otherwise
//! with the most specific reason.

use std::collections::HashMap;

use crate::{CanonicalHost, ErrorCode, HostError, PathGlob, Refusal, RequestPath, Scheme, Target};

/// Why a host pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    #[error("a bare '*' would allow every host; name the hosts, or '*.example.com'")]
    BareWildcard,
    #[error("{0:?} has no domain after '*.'; write e.g. \"*.example.com\"")]
    MissingSuffix(String),
    #[error("{0:?}: '*' is only allowed as the whole first label, as in \"*.example.com\"")]
    WildcardNotLeading(String),
    #[error("{0:?}: IP addresses cannot be wildcards; list each address")]
    IpWildcard(String),
    #[error(
        "\"*.{0}\" would allow a whole top-level domain; name a domain under it, e.g. \
         \"*.example.{0}\""
    )]
    TopLevelDomain(String),
    #[error(
        "\"*.{0}\" would allow every domain under the public suffix \"{0}\"; name a domain \
         under it, e.g. \"*.example.{0}\""
    )]
    PublicSuffix(String),
    #[error(
        "\"*.{0}\" would allow public suffixes (every name directly under \"{0}\" is one); name a \
         domain under one of them"
    )]
    PublicSuffixParent(String),
    #[error("{0}")]
    Host(#[from] HostError),
}

/// A host in a route: exact, or `*.suffix` (one or more labels in front of suffix, never the
/// suffix itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(CanonicalHost),
    /// Stored as ".example.com" (leading dot, canonical).
    Suffix(String),
}

impl HostPattern {
    /// Parses `api.example.com`, `*.example.com`, an IP literal. The suffix of a wildcard is
    /// canonicalized like a host and must not be an ICANN public suffix (psl crate: `*.com`,
    /// `*.co.uk` rejected; private-section suffixes such as `*.s3.us-east-1.amazonaws.com` are
    /// allowed because S3 virtual-hosted buckets need them). `*` alone, `*.`, `a.*.b`, `*x.b` are
    /// rejected. IP literals cannot be wildcards.
    ///
    /// Also refused, as too broad: a wildcard over a single label (`*.internal`, `*.test`, also
    /// when the TLD is not on the list), and a wildcard whose direct children are ICANN public
    /// suffixes by a wildcard rule of the list (`*.kawasaki.jp`, since every `x.kawasaki.jp` is
    /// a public suffix). The list is consulted with both the ASCII and the Unicode form, because
    /// it holds IDN suffixes in Unicode.
    pub fn parse(s: &str) -> Result<Self, HostPatternError> {
        if s == "*" {
            return Err(HostPatternError::BareWildcard);
        }
        let Some(suffix) = s.strip_prefix("*.") else {
            if s.contains('*') {
                return Err(HostPatternError::WildcardNotLeading(s.to_string()));
            }
            return Ok(HostPattern::Exact(CanonicalHost::parse(s)?));
        };
        if suffix.is_empty() || suffix == "." {
            return Err(HostPatternError::MissingSuffix(s.to_string()));
        }
        if suffix.contains('*') {
            return Err(HostPatternError::WildcardNotLeading(s.to_string()));
        }
        let domain = match CanonicalHost::parse(suffix)? {
            CanonicalHost::Domain(d) => d.to_string(),
            CanonicalHost::V4(_) | CanonicalHost::V6(_) => {
                return Err(HostPatternError::IpWildcard(s.to_string()))
            }
        };
        if !domain.contains('.') {
            return Err(HostPatternError::TopLevelDomain(domain));
        }
        match icann_suffix_check(&domain) {
            SuffixCheck::Fine => Ok(HostPattern::Suffix(format!(".{domain}"))),
            SuffixCheck::IsPublicSuffix => Err(HostPatternError::PublicSuffix(domain)),
            SuffixCheck::ParentOfPublicSuffixes => {
                Err(HostPatternError::PublicSuffixParent(domain))
            }
        }
    }

    /// True when the canonical host matches.
    pub fn matches(&self, host: &CanonicalHost) -> bool {
        match (self, host) {
            (HostPattern::Exact(h), host) => h == host,
            // The leading-dot check guards against a hand-built `Suffix("example.com")`, which
            // would otherwise match "evilexample.com".
            (HostPattern::Suffix(suffix), CanonicalHost::Domain(d)) => {
                suffix.len() > 1
                    && suffix.starts_with('.')
                    && d.len() > suffix.len()
                    && d.ends_with(suffix.as_str())
            }
            (HostPattern::Suffix(_), CanonicalHost::V4(_) | CanonicalHost::V6(_)) => false,
        }
    }

    /// True for an exact host (a route listener needs exactly one of these).
    pub fn exact(&self) -> Option<&CanonicalHost> {
        match self {
            HostPattern::Exact(h) => Some(h),
            HostPattern::Suffix(_) => None,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => write!(f, "{h}"),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// Methods a route allows. `Any` only when the config says `"*"` explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodSet {
    Any,
    /// Upper-case method tokens (methods are case-sensitive, RFC 9110 §9.1).
    List(Vec<String>),
}

impl MethodSet {
    /// True when `method` (exactly as sent) is allowed. CONNECT is never allowed by a route
    /// (it would open a tunnel from inside an intercepted one), in any letter case, even under
    /// `Any`; neither is anything that is not an RFC 9110 token (empty, spaces, ...).
    pub fn allows(&self, method: &str) -> bool {
        if !is_token(method) {
            return false;
        }
        if method.eq_ignore_ascii_case("CONNECT") {
            return false;
        }
        match self {
            MethodSet::Any => true,
            MethodSet::List(list) => list.iter().any(|m| m == method),
        }
    }
}

/// The policy view of a route: everything the decision needs, nothing about credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub schemes: Vec<Scheme>,
    pub ports: Vec<u16>,
    pub methods: MethodSet,
    /// Empty means every path.
    pub paths: Vec<PathGlob>,
    /// The largest request body forwarded (`max_request_body`); None: no limit.
    pub max_request_body: Option<u64>,
    /// The route's injection signs a hash of the body (SigV4 for every service but S3), so the
    /// body is read whole before the credential is attached (see [`crate::BodyPlan`]).
    pub signs_body: bool,
}

impl Route {
    /// Scheme, host and port match (method and path not considered). An empty `schemes`,
    /// `ports` or `hosts` list names nothing (defaults are the config's job, never assumed here).
    pub fn names_target(&self, target: &Target) -> bool {
        self.schemes.contains(&target.scheme)
            && self.ports.contains(&target.port)
            && self.hosts.iter().any(|h| h.matches(&target.host))
    }

    /// Some path glob matches the decoded path, or the route has no path globs.
    pub fn allows_path(&self, path: &RequestPath) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|g| g.matches(path.decoded()))
    }

    /// Where `/r/<route>/` on the route listener goes: only a route naming exactly one exact
    /// host and HTTPS has one (its first port, or 443).
    pub fn base(&self) -> Option<Target> {
        let ([HostPattern::Exact(host)], true) =
            (self.hosts.as_slice(), self.schemes.contains(&Scheme::Https))
        else {
            return None;
        };
        Some(Target {
            scheme: Scheme::Https,
            host: host.clone(),
            port: self
                .ports
                .first()
                .copied()
                .unwrap_or(Scheme::Https.default_port()),
        })
    }
}

/// What happens to a target no route names (`unmatched:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unmatched {
    /// Refused with `host_not_allowed` (the default).
    #[default]
    Deny,
    /// Passed without a credential and without inspection: CONNECT becomes a blind tunnel,
    /// plain HTTP is forwarded as is. Audited as `tunnel`.
    Tunnel,
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Index of the first matching route in [`Policy::routes`].
    Allow { route: usize },
    /// `host_not_allowed`, `method_not_allowed` or `path_not_allowed`, with the most specific
    /// reason.
    Deny(Refusal),
}

/// Policies with at most this many routes are decided by a scan: cheaper than the index lookup.
const SCAN_UP_TO: usize = 16;

/// Routes in match order, indexed by host so that a decision looks at the routes that can name
/// the target only (a lookup per label of the host, not a scan of every route).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    routes: Vec<Route>,
    unmatched: Unmatched,
    /// `grants.required`: every request and CONNECT needs a valid grant.
    grants_required: bool,
    /// Exact host → indices of the routes naming it, ascending.
    exact: HashMap<CanonicalHost, Vec<usize>>,
    /// Wildcard suffix (`.example.com`) → indices of the routes naming `*.example.com`, ascending.
    suffixes: HashMap<String, Vec<usize>>,
}

impl Policy {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut exact: HashMap<CanonicalHost, Vec<usize>> = HashMap::new();
        let mut suffixes: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            for host in &route.hosts {
                let list = match host {
                    HostPattern::Exact(h) => exact.entry(h.clone()).or_default(),
                    HostPattern::Suffix(s) => suffixes.entry(s.clone()).or_default(),
                };
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        Policy {
            routes,
            unmatched: Unmatched::Deny,
            grants_required: false,
            exact,
            suffixes,
        }
    }

    /// The same routes, with `unmatched` deciding what happens to targets none of them names.
    pub fn with_unmatched(mut self, unmatched: Unmatched) -> Self {
        self.unmatched = unmatched;
        self
    }

    pub fn unmatched(&self) -> Unmatched {
        self.unmatched
    }

    /// The same routes; with `required`, a request or CONNECT without a valid grant is refused
    /// (`grant_required`).
    pub fn with_grants_required(mut self, required: bool) -> Self {
        self.grants_required = required;
        self
    }

    pub fn grants_required(&self) -> bool {
        self.grants_required
    }

    /// Indices of the routes that may name `host`, ascending, without duplicates: those naming
    /// it exactly and those with a wildcard over one of its parent domains. (Scheme and port are
    /// left to [`Route::names_target`].)
    fn candidates(&self, host: &CanonicalHost) -> Vec<usize> {
        let mut out: Vec<usize> = self.exact.get(host).cloned().unwrap_or_default();
        if let CanonicalHost::Domain(domain) = host {
            // Every proper parent: "a.b.example.com" → ".b.example.com", ".example.com", ".com".
            for (at, _) in domain.match_indices('.') {
                if let Some(list) = self.suffixes.get(&domain[at..]) {
                    out.extend_from_slice(list);
                }
            }
            out.sort_unstable();
            out.dedup();
        }
        out
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// First route that names the target and allows method and path. If none: HostNotAllowed
    /// when no route names the target; else MethodNotAllowed when none of those allows the
    /// method; else PathNotAllowed. Messages name the target as `host:port` and list the routes
    /// that name it (for PathNotAllowed: those that also allow the method); the path in a
    /// message is the raw path as sent (without query).
    pub fn decide(&self, target: &Target, method: &str, path: &RequestPath) -> Decision {
        if self.routes.len() <= SCAN_UP_TO {
            return self.decide_among(target, method, path, 0..self.routes.len());
        }
        let candidates = self.candidates(&target.host);
        self.decide_among(target, method, path, candidates.iter().copied())
    }

    /// [`Policy::decide`] among the routes at `indices` only (ascending; every route that can
    /// name the target among them). The route listener decides among its one route.
    pub(crate) fn decide_among(
        &self,
        target: &Target,
        method: &str,
        path: &RequestPath,
        indices: impl Iterator<Item = usize> + Clone,
    ) -> Decision {
        let naming = || {
            indices
                .clone()
                .filter_map(|i| self.routes.get(i))
                .filter(|r| r.names_target(target))
        };
        if let Some(route) = indices.clone().find(|&i| {
            self.routes.get(i).is_some_and(|r| {
                r.names_target(target) && r.methods.allows(method) && r.allows_path(path)
            })
        }) {
            return Decision::Allow { route };
        }
        let where_ = format!("{}:{}", target.host.to_uri_host(), target.port);
        if naming().next().is_none() {
            return Decision::Deny(Refusal::new(
                ErrorCode::HostNotAllowed,
                format!("{where_} is not in any route"),
            ));
        }
        if !naming().any(|r| r.methods.allows(method)) {
            return Decision::Deny(Refusal::new(
                ErrorCode::MethodNotAllowed,
                format!(
                    "{} is not allowed for {where_} (routes: {})",
                    printable_method(method),
                    route_names(naming())
                ),
            ));
        }
        Decision::Deny(Refusal::new(
            ErrorCode::PathNotAllowed,
            format!(
                "{} is not allowed for {where_} (routes: {})",
                path.raw(),
                route_names(naming().filter(|r| r.methods.allows(method)))
            ),
        ))
    }

    /// True when some route names the target (CONNECT to it is intercepted, not tunnelled).
    pub fn names_target(&self, target: &Target) -> bool {
        self.candidates(&target.host)
            .iter()
            .filter_map(|&i| self.routes.get(i))
            .any(|r| r.names_target(target))
    }

    /// Index of the route with this name.
    pub fn route_index(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.name == name)
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An RFC 9110 `token` (one or more `tchar`): what a method or a header name may be.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// The method for a message; anything that is not a token is quoted and escaped.
fn printable_method(method: &str) -> String {
    if is_token(method) {
        method.to_string()
    } else {
        format!("{method:?}")
    }
}

fn route_names<'a>(routes: impl Iterator<Item = &'a Route>) -> String {
    routes
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a wildcard's suffix relates to the ICANN section of the public suffix list.
enum SuffixCheck {
    Fine,
    /// The suffix itself is an ICANN public suffix (`co.uk`).
    IsPublicSuffix,
    /// Names directly under the suffix are ICANN public suffixes (`*.kawasaki.jp` rule).
    ParentOfPublicSuffixes,
}

/// `domain` is canonical ASCII; the list holds IDN suffixes in Unicode, so both forms are checked.
fn icann_suffix_check(domain: &str) -> SuffixCheck {
    let (unicode, converted) = idna::domain_to_unicode(domain);
    if converted.is_err() {
        // Cannot be looked up in its Unicode form: refuse rather than guess.
        return SuffixCheck::IsPublicSuffix;
    }
    let forms = [domain, unicode.as_str()];
    let icann_suffix = |name: &str| {
        matches!(
            psl::suffix(name.as_bytes()),
            Some(s) if s.as_bytes() == name.as_bytes() && s.typ() == Some(psl::Type::Icann)
        )
    };
    if forms.iter().any(|f| icann_suffix(f)) {
        return SuffixCheck::IsPublicSuffix;
    }
    // A label no exception rule names, to see whether a wildcard rule covers the children.
    if forms
        .iter()
        .any(|f| icann_suffix(&format!("sidekey-probe.{f}")))
    {
        return SuffixCheck::ParentOfPublicSuffixes;
    }
    SuffixCheck::Fine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_parse() {
        use HostPatternError::*;
        let exact = |h: &str| Ok(HostPattern::Exact(CanonicalHost::parse(h).unwrap()));
        let suffix = |s: &str| Ok(HostPattern::Suffix(s.to_string()));
        let s = |x: &str| x.to_string();
        let cases: Vec<(&str, Result<HostPattern, HostPatternError>)> = vec![
            ("api.github.com", exact("api.github.com")),
            ("API.GitHub.com.", exact("api.github.com")),
            ("bücher.example", exact("xn--bcher-kva.example")),
            ("127.0.0.1", exact("127.0.0.1")),
            ("[::1]", exact("::1")),
            ("co.uk", exact("co.uk")),
            ("localhost", exact("localhost")),
            ("*.example.com", suffix(".example.com")),
            ("*.Example.COM.", suffix(".example.com")),
            ("*.api.example.co.uk", suffix(".api.example.co.uk")),
            ("*.example.co.uk", suffix(".example.co.uk")),
            (
                "*.s3.us-east-1.amazonaws.com",
                suffix(".s3.us-east-1.amazonaws.com"),
            ),
            ("*.amazonaws.com", suffix(".amazonaws.com")),
            ("*.github.io", suffix(".github.io")),
            ("*.bücher.example", suffix(".xn--bcher-kva.example")),
            ("*.internal.test", suffix(".internal.test")),
            ("*.city.kawasaki.jp", suffix(".city.kawasaki.jp")),
            ("*", Err(BareWildcard)),
            ("*.", Err(MissingSuffix(s("*.")))),
            ("*..", Err(MissingSuffix(s("*..")))),
            ("*.com", Err(TopLevelDomain(s("com")))),
            ("*.COM.", Err(TopLevelDomain(s("com")))),
            ("*.internal", Err(TopLevelDomain(s("internal")))),
            ("*.test", Err(TopLevelDomain(s("test")))),
            ("*.рф", Err(TopLevelDomain(s("xn--p1ai")))),
            ("*.co.uk", Err(PublicSuffix(s("co.uk")))),
            ("*.com.au", Err(PublicSuffix(s("com.au")))),
            ("*.github.com.au", suffix(".github.com.au")),
            ("*.公司.cn", Err(PublicSuffix(s("xn--55qx5d.cn")))),
            ("*.xn--55qx5d.cn", Err(PublicSuffix(s("xn--55qx5d.cn")))),
            ("*.kawasaki.jp", Err(PublicSuffixParent(s("kawasaki.jp")))),
            ("a.*.com", Err(WildcardNotLeading(s("a.*.com")))),
            ("*foo.com", Err(WildcardNotLeading(s("*foo.com")))),
            ("foo*.com", Err(WildcardNotLeading(s("foo*.com")))),
            (
                "*.*.example.com",
                Err(WildcardNotLeading(s("*.*.example.com"))),
            ),
            (
                "**.example.com",
                Err(WildcardNotLeading(s("**.example.com"))),
            ),
            ("example.*", Err(WildcardNotLeading(s("example.*")))),
            ("*.1.2.3.4", Err(IpWildcard(s("*.1.2.3.4")))),
            ("*.[::1]", Err(IpWildcard(s("*.[::1]")))),
            ("*.1.2.3", Err(Host(HostError::AmbiguousIpv4(s("1.2.3"))))),
            (
                "*.exa mple.com",
                Err(Host(HostError::InvalidCharacter(' '))),
            ),
            ("*.a..b", Err(Host(HostError::EmptyLabel(s("a..b"))))),
            ("", Err(Host(HostError::Empty))),
            ("user@example.com", Err(Host(HostError::UserInfo))),
            (
                "2130706433",
                Err(Host(HostError::AmbiguousIpv4(s("2130706433")))),
            ),
            (
                "example.com:443",
                Err(Host(HostError::BadIpv6(s("example.com:443")))),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                HostPattern::parse(input),
                want,
                "HostPattern::parse({input:?})"
            );
        }
    }

    #[test]
    fn host_patterns_match() {
        // (pattern, host, matches)
        let cases = [
            ("api.github.com", "api.github.com", true),
            ("api.github.com", "API.GITHUB.COM.", true),
            ("api.github.com", "github.com", false),
            ("api.github.com", "x.api.github.com", false),
            ("api.github.com", "api.github.com.evil.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "A.Example.Com.", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "evilexample.com", false),
            ("*.example.com", "example.com.evil.com", false),
            ("*.example.com", "a.example.co", false),
            (
                "*.s3.us-east-1.amazonaws.com",
                "bucket.s3.us-east-1.amazonaws.com",
                true,
            ),
            (
                "*.s3.us-east-1.amazonaws.com",
                "s3.us-east-1.amazonaws.com",
                false,
            ),
            (
                "*.s3.us-east-1.amazonaws.com",
                "bucket.s3.us-west-2.amazonaws.com",
                false,
            ),
            ("*.bücher.example", "shop.xn--bcher-kva.example", true),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("[::1]", "::1", true),
            ("[::1]", "127.0.0.1", false),
            ("*.example.com", "127.0.0.1", false),
            // numeric labels are plain labels inside a name; whole labels are compared
            ("*.0.0.1.example", "127.0.0.1.example", true),
            ("*.0.0.1.example", "127.10.0.1.example", false),
            ("*.0.1.example", "a.0.1.example", true),
            ("*.0.1.example", "a.10.1.example", false),
        ];
        for (pattern, host, want) in cases {
            let p = HostPattern::parse(pattern).unwrap();
            let h = CanonicalHost::parse(host).unwrap();
            assert_eq!(p.matches(&h), want, "{pattern:?} matches {host:?}");
        }
        // A hand-built suffix without its leading dot must not match by plain string suffix.
        let bad = HostPattern::Suffix("example.com".to_string());
        let evil = CanonicalHost::parse("evilexample.com").unwrap();
        assert!(!bad.matches(&evil));
        assert!(!HostPattern::Suffix(".".to_string()).matches(&evil));
        assert!(!HostPattern::Suffix(String::new()).matches(&evil));
    }

    #[test]
    fn host_pattern_display_and_exact() {
        let cases = [
            ("*.Example.com", "*.example.com", false),
            ("Example.com.", "example.com", true),
            ("[2001:DB8::1]", "2001:db8::1", true),
        ];
        for (input, display, is_exact) in cases {
            let p = HostPattern::parse(input).unwrap();
            assert_eq!(p.to_string(), display, "{input}");
            assert_eq!(p.exact().is_some(), is_exact, "{input}");
        }
    }

    #[test]
    fn method_sets() {
        let list = MethodSet::List(vec!["GET".into(), "POST".into(), "CONNECT".into()]);
        // (set, method, allowed)
        let cases = [
            (&list, "GET", true),
            (&list, "POST", true),
            (&list, "get", false),
            (&list, "Post", false),
            (&list, "PUT", false),
            (&list, "DELETE", false),
            (&list, "CONNECT", false),
            (&list, "", false),
            (&list, "GET ", false),
            (&MethodSet::Any, "GET", true),
            (&MethodSet::Any, "DELETE", true),
            (&MethodSet::Any, "PROPFIND", true),
            (&MethodSet::Any, "CONNECT", false),
            (&MethodSet::Any, "connect", false),
            (&MethodSet::Any, "Connect", false),
            (&MethodSet::Any, "", false),
            (&MethodSet::Any, "GET /x", false),
            (&MethodSet::Any, "GE\rT", false),
            (&MethodSet::List(vec![]), "GET", false),
        ];
        for (set, method, want) in cases {
            assert_eq!(set.allows(method), want, "{set:?} allows {method:?}");
        }
    }

    fn route(name: &str, hosts: &[&str], methods: MethodSet, paths: &[&str]) -> Route {
        Route {
            name: name.to_string(),
            hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            schemes: vec![Scheme::Https],
            ports: vec![443],
            methods,
            paths: paths.iter().map(|p| PathGlob::parse(p).unwrap()).collect(),
            max_request_body: None,
            signs_body: false,
        }
    }

    fn methods(m: &[&str]) -> MethodSet {
        MethodSet::List(m.iter().map(|s| s.to_string()).collect())
    }

    fn target(scheme: Scheme, host: &str, port: u16) -> Target {
        Target {
            scheme,
            host: CanonicalHost::parse(host).unwrap(),
            port,
        }
    }

    #[test]
    fn routes_name_targets() {
        let mut r = route(
            "r",
            &["api.example.com", "*.s3.example.com"],
            MethodSet::Any,
            &[],
        );
        r.schemes = vec![Scheme::Https, Scheme::Http];
        r.ports = vec![443, 8443];
        let cases = [
            (Scheme::Https, "api.example.com", 443, true),
            (Scheme::Http, "api.example.com", 443, true),
            (Scheme::Https, "api.example.com", 8443, true),
            (Scheme::Https, "api.example.com", 80, false),
            (Scheme::Https, "b.s3.example.com", 443, true),
            (Scheme::Https, "s3.example.com", 443, false),
            (Scheme::Https, "example.com", 443, false),
        ];
        for (scheme, host, port, want) in cases {
            let t = target(scheme, host, port);
            assert_eq!(r.names_target(&t), want, "{t}");
        }
        // Empty lists name nothing.
        let t = target(Scheme::Https, "api.example.com", 443);
        for strip in 0..3 {
            let mut r = r.clone();
            match strip {
                0 => r.schemes.clear(),
                1 => r.ports.clear(),
                _ => r.hosts.clear(),
            }
            assert!(!r.names_target(&t), "strip {strip}");
        }
    }

    #[test]
    fn decisions() {
        let mut plain = route(
            "plain",
            &["api.github.com"],
            methods(&["GET"]),
            &["/public/**"],
        );
        plain.schemes = vec![Scheme::Http];
        plain.ports = vec![80];
        let policy = Policy::new(vec![
            route(
                "github-read",
                &["api.github.com"],
                methods(&["GET", "HEAD"]),
                &["/repos/acme/**", "/user"],
            ),
            route(
                "github-write",
                &["api.github.com"],
                methods(&["POST"]),
                &["/repos/acme/*/issues"],
            ),
            route(
                "github-any",
                &["api.github.com"],
                methods(&["GET", "DELETE"]),
                &["/repos/**"],
            ),
            route(
                "s3",
                &["*.s3.us-east-1.amazonaws.com"],
                methods(&["GET", "PUT"]),
                &[],
            ),
            route("everything", &["api.openai.com"], MethodSet::Any, &[]),
            plain,
        ]);
        use ErrorCode::*;
        let https = Scheme::Https;
        let allow = |route: usize| Ok(route);
        let deny = |code: ErrorCode, message: &str| Err((code, message.to_string()));
        // (scheme, host, port, method, path, want)
        type Want = Result<usize, (ErrorCode, String)>;
        let cases: Vec<(Scheme, &str, u16, &str, &str, Want)> = vec![
            (https, "api.github.com", 443, "GET", "/repos/acme/widgets", allow(0)),
            (https, "API.github.com.", 443, "GET", "/repos/acme", allow(0)),
            (https, "api.github.com", 443, "HEAD", "/user", allow(0)),
            // first match wins: GET /repos/acme/x is also in github-any, route 0 is reported
            (https, "api.github.com", 443, "GET", "/repos/acme/x/y", allow(0)),
            (https, "api.github.com", 443, "GET", "/repos/other/x", allow(2)),
            (https, "api.github.com", 443, "DELETE", "/repos/acme/x", allow(2)),
            (https, "api.github.com", 443, "POST", "/repos/acme/widgets/issues", allow(1)),
            (https, "bucket.s3.us-east-1.amazonaws.com", 443, "PUT", "/key", allow(3)),
            (https, "api.openai.com", 443, "PATCH", "/v1/anything", allow(4)),
            (Scheme::Http, "api.github.com", 80, "GET", "/public/x", allow(5)),
            (
                https, "evil.example", 443, "GET", "/",
                deny(HostNotAllowed, "evil.example:443 is not in any route"),
            ),
            (
                https, "api.github.com", 8443, "GET", "/repos/acme/x",
                deny(HostNotAllowed, "api.github.com:8443 is not in any route"),
            ),
            (
                Scheme::Http, "api.github.com", 443, "GET", "/repos/acme/x",
                deny(HostNotAllowed, "api.github.com:443 is not in any route"),
            ),
            (
                https, "s3.us-east-1.amazonaws.com", 443, "GET", "/",
                deny(HostNotAllowed, "s3.us-east-1.amazonaws.com:443 is not in any route"),
            ),
            (
                https, "::1", 443, "GET", "/",
                deny(HostNotAllowed, "[::1]:443 is not in any route"),
            ),
            (
                https, "api.github.com", 443, "PUT", "/repos/acme/x",
                deny(
                    MethodNotAllowed,
                    "PUT is not allowed for api.github.com:443 \
                     (routes: github-read, github-write, github-any)",
                ),
            ),
            (
                https, "api.github.com", 443, "get", "/repos/acme/x",
                deny(
                    MethodNotAllowed,
                    "get is not allowed for api.github.com:443 \
                     (routes: github-read, github-write, github-any)",
                ),
            ),
            (
                https, "api.openai.com", 443, "CONNECT", "/",
                deny(MethodNotAllowed, "CONNECT is not allowed for api.openai.com:443 (routes: everything)"),
            ),
            (
                https, "api.openai.com", 443, "GE T", "/",
                deny(
                    MethodNotAllowed,
                    "\"GE T\" is not allowed for api.openai.com:443 (routes: everything)",
                ),
            ),
            (
                https, "api.github.com", 443, "GET", "/admin",
                deny(
                    PathNotAllowed,
                    "/admin is not allowed for api.github.com:443 (routes: github-read, github-any)",
                ),
            ),
            (
                https, "api.github.com", 443, "POST", "/repos/acme/widgets/pulls",
                deny(
                    PathNotAllowed,
                    "/repos/acme/widgets/pulls is not allowed for api.github.com:443 \
                     (routes: github-write)",
                ),
            ),
            (
                https, "api.github.com", 443, "GET", "/user/",
                deny(
                    PathNotAllowed,
                    "/user/ is not allowed for api.github.com:443 (routes: github-read, github-any)",
                ),
            ),
            (
                https, "api.github.com", 443, "GET", "/repo%73/acme/x",
                allow(0),
            ),
            (
                Scheme::Http, "api.github.com", 80, "GET", "/private",
                deny(PathNotAllowed, "/private is not allowed for api.github.com:80 (routes: plain)"),
            ),
        ];
        for (scheme, host, port, method, raw_path, want) in cases {
            let t = target(scheme, host, port);
            let path = RequestPath::parse(raw_path).unwrap();
            let got = policy.decide(&t, method, &path);
            let want = match want {
                Ok(route) => Decision::Allow { route },
                Err((code, message)) => Decision::Deny(Refusal { code, message }),
            };
            assert_eq!(got, want, "{method} {t}{raw_path}");
        }
        assert_eq!(
            Policy::default().decide(
                &target(https, "api.github.com", 443),
                "GET",
                &RequestPath::parse("/").unwrap()
            ),
            Decision::Deny(Refusal {
                code: HostNotAllowed,
                message: "api.github.com:443 is not in any route".to_string(),
            })
        );
    }

    #[test]
    fn policy_lookups() {
        let policy = Policy::new(vec![
            route("a", &["a.example.com"], MethodSet::Any, &[]),
            route("b", &["*.example.com"], MethodSet::Any, &[]),
        ]);
        assert_eq!(policy.route_index("a"), Some(0));
        assert_eq!(policy.route_index("b"), Some(1));
        assert_eq!(policy.route_index("c"), None);
        assert_eq!(policy.routes().len(), 2);
        assert!(policy.names_target(&target(Scheme::Https, "x.example.com", 443)));
        assert!(!policy.names_target(&target(Scheme::Https, "example.com", 443)));
    }

    /// The indexed decision is the first-match decision of a plain scan over every route.
    #[test]
    fn the_host_index_decides_as_a_scan_of_every_route_would() {
        // Small (scanned) and large (indexed) policies: the same routes first, then fillers.
        let small = vec![
            route("a", &["api.example.com"], methods(&["GET"]), &["/v1/**"]),
            route("b", &["*.example.com"], methods(&["GET", "POST"]), &[]),
            route(
                "c",
                &["api.example.com", "*.deep.example.com"],
                MethodSet::Any,
                &[],
            ),
            route(
                "d",
                &["*.example.com", "other.test"],
                methods(&["DELETE"]),
                &[],
            ),
            route("e", &["10.0.0.1", "[::1]"], methods(&["GET"]), &[]),
            route("f", &["x.y.deep.example.com"], methods(&["PUT"]), &["/p"]),
        ];
        let mut large = small.clone();
        for i in 0..SCAN_UP_TO {
            large.push(route(
                &format!("filler{i}"),
                &[&format!("f{i}.example.com")],
                MethodSet::Any,
                &[],
            ));
        }
        large.push(route("late", &["*.example.com"], MethodSet::Any, &[]));
        for routes in [small, large] {
            check_index_against_scan(&routes);
        }
    }

    fn check_index_against_scan(routes: &[Route]) {
        let policy = Policy::new(routes.to_vec());
        let scan = |t: &Target, m: &str, p: &RequestPath| {
            routes
                .iter()
                .position(|r| r.names_target(t) && r.methods.allows(m) && r.allows_path(p))
        };
        let hosts = [
            "api.example.com",
            "example.com",
            "a.example.com",
            "a.b.example.com",
            "deep.example.com",
            "x.deep.example.com",
            "x.y.deep.example.com",
            "f3.example.com",
            "other.test",
            "evilexample.com",
            "api.example.com.evil",
            "10.0.0.1",
            "::1",
            "10.0.0.2",
        ];
        for host in hosts {
            for port in [443, 8443] {
                let t = target(Scheme::Https, host, port);
                for m in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
                    for p in ["/", "/v1/x", "/p"] {
                        let path = RequestPath::parse(p).unwrap();
                        let got = match policy.decide(&t, m, &path) {
                            Decision::Allow { route } => Some(route),
                            Decision::Deny(_) => None,
                        };
                        assert_eq!(got, scan(&t, m, &path), "{host}:{port} {m} {p}");
                    }
                }
                assert_eq!(
                    policy.names_target(&t),
                    routes.iter().any(|r| r.names_target(&t)),
                    "{host}:{port}"
                );
            }
        }
    }
}
