//! The stable error codes: every refusal or failure an agent sees is one of these, with the
//! same HTTP status everywhere, a JSON body and an `x-sidekey-error` header (the table is in
//! docs/architecture.md). Policy decides most of them; the data plane adds the failures it
//! meets on the way (an issuer or an upstream that fails).

use std::fmt;

/// What went wrong, as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No route names the scheme, host and port.
    HostNotAllowed,
    /// Routes name the target; none allows the method (also one named by an override).
    MethodNotAllowed,
    /// No route allows the path, or the path uses an encoding trick.
    PathNotAllowed,
    /// CONNECT authority, SNI, Host and URI disagree on the target.
    TargetMismatch,
    /// The SSRF guard: the upstream's address is not public and the route does not allow it.
    AddressNotAllowed,
    /// The issuer could not provide a valid credential.
    CredentialUnavailable,
    /// Resolving or connecting failed, or the upstream timed out.
    UpstreamUnreachable,
    /// The upstream's certificate did not verify, or it speaks no TLS 1.2+.
    UpstreamTls,
    /// The upstream coded a credentialed response in a way sidekey cannot decode, so the
    /// credential mask could not see into it: the body is not passed on.
    UpstreamEncoding,
    /// A malformed request, or wrong use of a listener.
    RequestInvalid,
    /// The body is larger than the route's `max_request_body`.
    BodyTooLarge,
    /// The agent asks for more than a configured rate allows (e.g. fresh TLS server names).
    RateLimited,
    /// `grants.required` and the request (or its CONNECT) presented no grant; or the route's
    /// credential is issued per task and the request presented none.
    GrantRequired,
    /// The grant presented does not verify: malformed, signed by an untrusted key or with an
    /// algorithm not allowed, for another audience, missing a required claim, or living longer
    /// than `grants.max_ttl`.
    GrantInvalid,
    /// The grant's `exp` has passed (or its `nbf` is still ahead).
    GrantExpired,
    /// The grant, or one it was derived from, was revoked.
    GrantRevoked,
    /// A route allows the request but the grant does not name that route for this method and
    /// path.
    RouteNotGranted,
    /// A route allows the request but the Cedar policies (`cedar:`) do not: no permit, or a
    /// forbid.
    PolicyDenied,
}

impl ErrorCode {
    /// Every code, in the order of the documented table.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::HostNotAllowed,
        ErrorCode::MethodNotAllowed,
        ErrorCode::PathNotAllowed,
        ErrorCode::TargetMismatch,
        ErrorCode::AddressNotAllowed,
        ErrorCode::CredentialUnavailable,
        ErrorCode::UpstreamUnreachable,
        ErrorCode::UpstreamTls,
        ErrorCode::UpstreamEncoding,
        ErrorCode::RequestInvalid,
        ErrorCode::BodyTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::GrantRequired,
        ErrorCode::GrantInvalid,
        ErrorCode::GrantExpired,
        ErrorCode::GrantRevoked,
        ErrorCode::RouteNotGranted,
        ErrorCode::PolicyDenied,
    ];

    /// The code as the agent and the audit trail see it, e.g. `host_not_allowed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::HostNotAllowed => "host_not_allowed",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PathNotAllowed => "path_not_allowed",
            ErrorCode::TargetMismatch => "target_mismatch",
            ErrorCode::AddressNotAllowed => "address_not_allowed",
            ErrorCode::CredentialUnavailable => "credential_unavailable",
            ErrorCode::UpstreamUnreachable => "upstream_unreachable",
            ErrorCode::UpstreamTls => "upstream_tls",
            ErrorCode::UpstreamEncoding => "upstream_encoding",
            ErrorCode::RequestInvalid => "request_invalid",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::GrantRequired => "grant_required",
            ErrorCode::GrantInvalid => "grant_invalid",
            ErrorCode::GrantExpired => "grant_expired",
            ErrorCode::GrantRevoked => "grant_revoked",
            ErrorCode::RouteNotGranted => "route_not_granted",
            ErrorCode::PolicyDenied => "policy_denied",
        }
    }

    /// The HTTP status the agent gets with this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::HostNotAllowed
            | ErrorCode::MethodNotAllowed
            | ErrorCode::PathNotAllowed
            | ErrorCode::TargetMismatch
            | ErrorCode::AddressNotAllowed
            | ErrorCode::RouteNotGranted
            | ErrorCode::PolicyDenied => 403,
            // Proxy authentication: clients that hold a grant for the proxy (HTTPS_PROXY with
            // user:grant, Proxy-Authorization) know to present one or a fresh one.
            ErrorCode::GrantRequired
            | ErrorCode::GrantInvalid
            | ErrorCode::GrantExpired
            | ErrorCode::GrantRevoked => 407,
            ErrorCode::CredentialUnavailable => 503,
            ErrorCode::UpstreamUnreachable
            | ErrorCode::UpstreamTls
            | ErrorCode::UpstreamEncoding => 502,
            ErrorCode::RequestInvalid => 400,
            ErrorCode::BodyTooLarge => 413,
            ErrorCode::RateLimited => 429,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: a code and a message that is safe to show the agent (it names hosts, methods,
/// paths and routes, never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    /// Human-readable, e.g. "evil.example:443 is not in any route", "POST is not allowed for
    /// api.github.com:443 (routes: github)".
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case_with_client_or_server_statuses() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert!((400..600).contains(&code.status()), "{s}");
        }
        assert_eq!(ErrorCode::RequestInvalid.status(), 400);
        assert_eq!(ErrorCode::TargetMismatch.status(), 403);
    }
}
