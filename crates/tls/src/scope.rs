//! What the interception CA may vouch for: the hosts of the routes sidekey intercepts (routes
//! that allow `https`). The CA certificate carries them as critical X.509 name constraints
//! (RFC 5280 §4.2.1.10), so a copy of the CA certificate trusted by an agent is worthless for
//! any other name, even to someone who got hold of the CA's key; and the CA refuses to mint a
//! leaf outside them.
//!
//! How route hosts become constraints:
//! - `api.example.com` → permitted dNSName `api.example.com`. RFC 5280 has no "exact name only"
//!   form: this also permits names *under* it (`x.api.example.com`), never its parent or
//!   siblings;
//! - `*.example.com` → permitted dNSName `.example.com` (leading dot: subdomains only, not
//!   `example.com` itself — the route's own meaning). Understood by rustls-webpki, OpenSSL (so
//!   curl, Python, Node), Go, NSS and SChannel;
//! - an IP literal → permitted iPAddress `a.b.c.d/32` or `…/128`;
//! - a kind with no permitted entry is excluded outright (dNSName `""` excludes every name;
//!   `0.0.0.0/0` and `::/0` every address): otherwise RFC 5280 leaves that kind unconstrained.
//!
//! Hosts that match no route are never intercepted (blind tunnel with `unmatched: tunnel`, or
//! refused), so they are not in the scope. Routes that allow only `http` are not either: their
//! traffic is never TLS-terminated by sidekey.

use std::collections::BTreeSet;
use std::net::IpAddr;

use rcgen::{CidrSubnet, GeneralSubtree, NameConstraints};
use sidekey_policy::{CanonicalHost, HostPattern, Policy, Scheme};

/// The names the interception CA may issue for. Build it from the policy with
/// [`InterceptScope::from_policy`]; a config reload that changes hosts needs a new CA (the
/// constraints are signed into the CA certificate), built from the new scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterceptScope {
    /// Exact DNS names (canonical: lower-case ASCII, no trailing dot).
    exact: BTreeSet<String>,
    /// Parents of wildcard routes, without the leading dot: `example.com` for `*.example.com`.
    subdomains_of: BTreeSet<String>,
    ips: BTreeSet<IpAddr>,
}

impl InterceptScope {
    /// The hosts of every route that allows `https` (only those are ever intercepted).
    pub fn from_policy(policy: &Policy) -> Self {
        Self::from_patterns(
            policy
                .routes()
                .iter()
                .filter(|r| r.schemes.contains(&Scheme::Https))
                .flat_map(|r| r.hosts.iter()),
        )
    }

    /// The scope naming exactly these host patterns.
    pub fn from_patterns<'a>(patterns: impl IntoIterator<Item = &'a HostPattern>) -> Self {
        let mut scope = InterceptScope::default();
        for pattern in patterns {
            match pattern {
                HostPattern::Exact(CanonicalHost::Domain(d)) => {
                    scope.exact.insert(d.to_string());
                }
                HostPattern::Exact(host) => {
                    if let Some(ip) = host.ip() {
                        scope.ips.insert(ip);
                    }
                }
                HostPattern::Suffix(suffix) => {
                    let parent = suffix.trim_start_matches('.');
                    if !parent.is_empty() {
                        scope.subdomains_of.insert(parent.to_string());
                    }
                }
            }
        }
        scope
    }

    /// True when a leaf for `host` is inside the scope: the same test the name constraints
    /// make (a name under an exact host counts, as RFC 5280 says; a wildcard parent does not).
    pub fn permits(&self, host: &CanonicalHost) -> bool {
        match host {
            CanonicalHost::Domain(d) => {
                self.exact
                    .iter()
                    .any(|e| **d == **e || is_strictly_under(d, e))
                    || self.subdomains_of.iter().any(|p| is_strictly_under(d, p))
            }
            other => other.ip().is_some_and(|ip| self.ips.contains(&ip)),
        }
    }

    /// True for a host a route names exactly. There are only as many of these as the config
    /// lists, so minting their leaves needs no rate limit; names under a wildcard are unbounded.
    pub fn is_listed(&self, host: &CanonicalHost) -> bool {
        match host {
            CanonicalHost::Domain(d) => self.exact.contains(&**d),
            other => other.ip().is_some_and(|ip| self.ips.contains(&ip)),
        }
    }

    /// True when no route is intercepted.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.subdomains_of.is_empty() && self.ips.is_empty()
    }

    /// The X.509 name constraints for the CA certificate (see the module docs).
    pub fn name_constraints(&self) -> NameConstraints {
        let mut permitted: Vec<GeneralSubtree> = self
            .exact
            .iter()
            .map(|d| GeneralSubtree::DnsName(d.clone()))
            .chain(
                self.subdomains_of
                    .iter()
                    .map(|p| GeneralSubtree::DnsName(format!(".{p}"))),
            )
            .collect();
        let mut excluded = Vec::new();
        if permitted.is_empty() {
            // The empty dNSName matches every name (RFC 5280: "zero or more labels" added).
            excluded.push(GeneralSubtree::DnsName(String::new()));
        }
        if self.ips.is_empty() {
            excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])));
            excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])));
        } else {
            permitted.extend(self.ips.iter().map(|ip| {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(*ip, prefix))
            }));
        }
        NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: excluded,
        }
    }
}

/// `name` is `parent` with one or more labels in front.
fn is_strictly_under(name: &str, parent: &str) -> bool {
    name.len() > parent.len() + 1
        && name.ends_with(parent)
        && name.as_bytes()[name.len() - parent.len() - 1] == b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(hosts: &[&str]) -> InterceptScope {
        let patterns: Vec<HostPattern> = hosts
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect();
        InterceptScope::from_patterns(&patterns)
    }

    fn host(s: &str) -> CanonicalHost {
        CanonicalHost::parse(s).unwrap()
    }

    #[test]
    fn permits_what_the_constraints_permit() {
        let s = scope(&["api.example.com", "*.svc.example.org", "10.0.0.7", "::1"]);
        for ok in [
            "api.example.com",
            "x.api.example.com",
            "a.svc.example.org",
            "b.a.svc.example.org",
            "10.0.0.7",
            "::1",
        ] {
            assert!(s.permits(&host(ok)), "{ok}");
        }
        for no in [
            "example.com",
            "evilapi.example.com",
            "api.example.com.evil.test",
            "svc.example.org",
            "xsvc.example.org",
            "10.0.0.8",
            "2001:db8::2",
        ] {
            assert!(!s.permits(&host(no)), "{no}");
        }
        assert!(s.is_listed(&host("api.example.com")));
        assert!(s.is_listed(&host("10.0.0.7")));
        assert!(!s.is_listed(&host("a.svc.example.org")));
        assert!(!s.is_listed(&host("x.api.example.com")));
    }

    #[test]
    fn constraints_name_each_host_and_exclude_kinds_without_hosts() {
        let nc = scope(&["api.example.com", "*.svc.example.org"]).name_constraints();
        assert_eq!(
            nc.permitted_subtrees,
            vec![
                GeneralSubtree::DnsName("api.example.com".into()),
                GeneralSubtree::DnsName(".svc.example.org".into()),
            ]
        );
        assert_eq!(
            nc.excluded_subtrees,
            vec![
                GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
                GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
            ]
        );

        let nc = scope(&["192.0.2.1"]).name_constraints();
        assert_eq!(
            nc.permitted_subtrees,
            vec![GeneralSubtree::IpAddress(CidrSubnet::V4(
                [192, 0, 2, 1],
                [255; 4]
            ))]
        );
        assert_eq!(
            nc.excluded_subtrees,
            vec![GeneralSubtree::DnsName(String::new())]
        );

        let empty = InterceptScope::default();
        assert!(empty.is_empty());
        assert!(!empty.permits(&host("example.com")));
        let nc = empty.name_constraints();
        assert!(nc.permitted_subtrees.is_empty());
        assert_eq!(nc.excluded_subtrees.len(), 3);
    }

    #[test]
    fn only_https_routes_are_in_scope() {
        use sidekey_policy::{MethodSet, Route};
        let route = |name: &str, host: &str, scheme: Scheme| Route {
            name: name.into(),
            hosts: vec![HostPattern::parse(host).unwrap()],
            schemes: vec![scheme],
            ports: vec![scheme.default_port()],
            methods: MethodSet::Any,
            paths: vec![],
            max_request_body: None,
            signs_body: false,
        };
        let policy = Policy::new(vec![
            route("tls", "api.example.com", Scheme::Https),
            route("plain", "plain.example.com", Scheme::Http),
        ]);
        let s = InterceptScope::from_policy(&policy);
        assert!(s.permits(&host("api.example.com")));
        assert!(!s.permits(&host("plain.example.com")));
    }
}
