//! Routes and the first-match decision. A route names hosts, schemes, ports, methods and path
//! globs; a request is allowed by the first route that matches all of them, and denied otherwise
//! with the most specific reason.

use crate::{CanonicalHost, PathGlob, RequestPath, Scheme, Target};

/// Why a host pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    // e.g. BareWildcard ("*" alone), PublicSuffix("*.com" / "*.co.uk"), WildcardNotLeading
    // ("a.*.com", "*foo.com"), Host(HostError), IpWildcard ...
    #[error("a bare '*' would allow every host")]
    BareWildcard,
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
    pub fn parse(s: &str) -> Result<Self, HostPatternError> {
        todo!("{s}")
    }

    /// True when the canonical host matches.
    pub fn matches(&self, host: &CanonicalHost) -> bool {
        todo!("{host}")
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
    /// (it would open a tunnel from inside an intercepted one).
    pub fn allows(&self, method: &str) -> bool {
        todo!("{method}")
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
}

impl Route {
    /// Scheme, host and port match (method and path not considered).
    pub fn names_target(&self, target: &Target) -> bool {
        todo!("{target}")
    }
}

/// The stable deny codes of DESIGN.md §4 that the policy can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyCode {
    HostNotAllowed,
    MethodNotAllowed,
    PathNotAllowed,
}

impl DenyCode {
    /// "host_not_allowed", "method_not_allowed", "path_not_allowed".
    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::HostNotAllowed => "host_not_allowed",
            DenyCode::MethodNotAllowed => "method_not_allowed",
            DenyCode::PathNotAllowed => "path_not_allowed",
        }
    }
}

/// A refusal with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: DenyCode,
    /// Human-readable, safe to return to the agent, e.g. "evil.example:443 is not in any route",
    /// "POST is not allowed for api.github.com:443 (routes: github)", "/admin is not allowed for
    /// api.github.com:443 (routes: github)".
    pub message: String,
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Index of the first matching route in [`Policy::routes`].
    Allow { route: usize },
    Deny(Denial),
}

/// Routes in match order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    routes: Vec<Route>,
}

impl Policy {
    pub fn new(routes: Vec<Route>) -> Self {
        Policy { routes }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// First route that names the target and allows method and path. If none: HostNotAllowed
    /// when no route names the target; else MethodNotAllowed when none of those allows the
    /// method; else PathNotAllowed.
    pub fn decide(&self, target: &Target, method: &str, path: &RequestPath) -> Decision {
        todo!("{target}{method}{path:?}")
    }

    /// True when some route names the target (CONNECT to it is intercepted, not tunnelled).
    pub fn names_target(&self, target: &Target) -> bool {
        self.routes.iter().any(|r| r.names_target(target))
    }

    /// Index of the route with this name.
    pub fn route_index(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.name == name)
    }
}
