//! Canonical hosts and targets. A host is compared in exactly one form: lower-case ASCII
//! (IDNA-mapped), no trailing dot, IP literals parsed strictly. Anything ambiguous is rejected.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The two schemes sidekey forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
    /// "http" or "https".
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
    /// Parses "http"/"https" (ASCII case-insensitive).
    pub fn parse(s: &str) -> Option<Scheme> {
        todo!("{s}")
    }
}

/// Why a host or authority was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    // variants chosen by the implementation, each with a Display a user can act on, e.g.
    // Empty, UserInfo, BadPort(String), AmbiguousIpv4(String), BadIpv6(String),
    // InvalidCharacter(char), Idna(String), LabelTooLong, TooLong, EmptyLabel, ...
    #[error("host is empty")]
    Empty,
}

/// A host in canonical form. Construct with [`CanonicalHost::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CanonicalHost {
    /// Lower-case ASCII DNS name (punycode for IDNs), no trailing dot.
    Domain(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl CanonicalHost {
    /// Parses the host part of an authority (no port, no userinfo). IPv6 literals may come with
    /// or without brackets. Rules: reject empty, '@', '%', '\\', whitespace, control characters;
    /// strip ONE trailing dot; IDNA (UTS-46, strict, as in the URL standard) to ASCII lower-case;
    /// labels 1..=63 of [a-z0-9-] (underscore allowed, as real DNS names use it), no leading or
    /// trailing '-', total <= 253; if the last label is numeric (all digits, or 0x/0X hex) the
    /// whole host must be a strict dotted-quad IPv4 (four decimal octets, no leading zeros, each
    /// <= 255) — so `2130706433`, `0x7f.1`, `127.1`, `0177.0.0.1` are all rejected, never
    /// reinterpreted. IPv6 zone ids are rejected.
    pub fn parse(s: &str) -> Result<Self, HostError> {
        todo!("{s}")
    }

    /// The IP address, for IP literals.
    pub fn ip(&self) -> Option<IpAddr> {
        todo!()
    }

    /// Host as it appears in a URI authority: IPv6 in brackets.
    pub fn to_uri_host(&self) -> String {
        todo!()
    }
}

/// Canonical text: the domain, dotted-quad, or RFC 5952 IPv6 without brackets.
impl fmt::Display for CanonicalHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let _ = f;
        todo!()
    }
}

/// `host[:port]` as found in a CONNECT request line, an absolute URI or a Host header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    pub host: CanonicalHost,
    pub port: Option<u16>,
}

impl Authority {
    /// Parses `host`, `host:port`, `[v6]`, `[v6]:port`. Rejects userinfo (`user@host`), an empty
    /// port (`host:`), port 0, non-decimal ports, and a bare unbracketed IPv6 with a port.
    pub fn parse(s: &str) -> Result<Self, HostError> {
        todo!("{s}")
    }

    /// The port, or the scheme's default.
    pub fn port_or_default(&self, scheme: Scheme) -> u16 {
        self.port.unwrap_or(scheme.default_port())
    }
}

/// Where a request goes: decided once, from one source (see DESIGN.md §1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub scheme: Scheme,
    pub host: CanonicalHost,
    pub port: u16,
}

/// `scheme://host:port` with the port always written, IPv6 bracketed.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme.as_str(), self.host.to_uri_host(), self.port)
    }
}
