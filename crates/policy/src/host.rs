//! Canonical hosts and targets. A host is compared in exactly one form: lower-case ASCII
//! (IDNA-mapped), no trailing dot, IP literals parsed strictly. Anything ambiguous is rejected.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// Longest host name DNS can carry (without the trailing dot).
const MAX_HOST_LEN: usize = 253;
/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

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
        if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }
}

/// Why a host or authority was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error(
        "userinfo ('user@host') is not allowed in a host: the agent sends no credentials, \
         sidekey attaches them"
    )]
    UserInfo,
    #[error(
        "'%' is not allowed in a host: percent-encoded hosts are refused; send the plain host name"
    )]
    PercentEncoded,
    #[error("character {0:?} is not allowed in a host name (letters, digits, '-', '_' and '.')")]
    InvalidCharacter(char),
    #[error("{0:?} is not a valid internationalized domain name (IDNA/UTS-46)")]
    Idna(String),
    #[error(
        "host {0:?} has an empty label (\"..\", a leading dot, or more than one trailing dot)"
    )]
    EmptyLabel(String),
    #[error("label {0:?} is longer than 63 characters")]
    LabelTooLong(String),
    #[error("host is {0} characters long; DNS allows at most 253")]
    TooLong(usize),
    #[error("label {0:?} starts or ends with '-'")]
    BadHyphen(String),
    #[error(
        "{0:?} ends in a number but is not a dotted-quad IPv4 address (four decimal octets \
         0-255, no leading zeros, no trailing dot, e.g. 192.0.2.1); other IPv4 spellings are refused"
    )]
    AmbiguousIpv4(String),
    #[error("{0:?} is not a valid IPv6 address")]
    BadIpv6(String),
    #[error("IPv6 zone ids (e.g. \"%eth0\") are not allowed in a host")]
    Ipv6ZoneId,
    #[error("{0} embeds an IPv4 address in IPv6; write the IPv4 address {1} instead")]
    Ipv4InIpv6(Ipv6Addr, Ipv4Addr),
    #[error("{0} is the unspecified address and cannot be a destination")]
    Unspecified(IpAddr),
    #[error(
        "brackets are only allowed around a whole IPv6 address, as in \"[::1]\" or \"[::1]:443\""
    )]
    BadBrackets,
    #[error("port is empty: remove the ':' or give a port")]
    EmptyPort,
    #[error("port {0:?} is not a decimal number from 1 to 65535 (no sign, no leading zeros)")]
    BadPort(String),
    #[error("an IPv6 address in an authority must be in brackets, as in \"[::1]:443\"")]
    Ipv6NeedsBrackets,
}

/// A host in canonical form. Construct with [`CanonicalHost::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CanonicalHost {
    /// Lower-case ASCII DNS name (punycode for IDNs), no trailing dot.
    Domain(Arc<str>),
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
    ///
    /// Where the rules above leave room, this refuses:
    /// - an IPv4 literal with a trailing dot (`127.0.0.1.`) or spelled with non-ASCII digits
    ///   (full-width `１２７.０.０.１`) is rejected, not mapped;
    /// - IPv6 literals that embed an IPv4 address (IPv4-mapped `::ffff:127.0.0.1`, also written
    ///   `::ffff:7f00:1`, and the deprecated IPv4-compatible `::127.0.0.1`) are rejected: the
    ///   IPv4 form is the one canonical spelling of such an address;
    /// - the unspecified addresses `0.0.0.0` and `::` are rejected (they reach the local host);
    /// - any ASCII character outside letters, digits, '-', '_', '.' is rejected before IDNA, and
    ///   the IDNA output is checked again, so a Unicode character that maps to '/', '@', ':' …
    ///   (e.g. full-width '／') cannot smuggle one in.
    pub fn parse(s: &str) -> Result<Self, HostError> {
        if let Some(name) = plain_name(s) {
            return Ok(CanonicalHost::Domain(name.into()));
        }
        if s.is_empty() {
            return Err(HostError::Empty);
        }
        if s.contains('@') {
            return Err(HostError::UserInfo);
        }
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(HostError::BadBrackets)?;
            return parse_ipv6(inner);
        }
        if s.contains(':') {
            return parse_ipv6(s);
        }
        parse_name(s)
    }

    /// The IP address, for IP literals.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            CanonicalHost::Domain(_) => None,
            CanonicalHost::V4(a) => Some(IpAddr::V4(*a)),
            CanonicalHost::V6(a) => Some(IpAddr::V6(*a)),
        }
    }

    /// Host as it appears in a URI authority: IPv6 in brackets.
    pub fn to_uri_host(&self) -> String {
        let mut out = String::with_capacity(self.uri_host_len());
        self.push_uri_host(&mut out);
        out
    }

    /// Appends [`CanonicalHost::to_uri_host`] to `out`.
    pub fn push_uri_host(&self, out: &mut String) {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = match self {
            CanonicalHost::Domain(d) => {
                out.push_str(d);
                Ok(())
            }
            CanonicalHost::V4(a) => write!(out, "{a}"),
            CanonicalHost::V6(a) => write!(out, "[{a}]"),
        };
    }

    /// An upper bound of the length of [`CanonicalHost::to_uri_host`] (exact for domains).
    pub fn uri_host_len(&self) -> usize {
        match self {
            CanonicalHost::Domain(d) => d.len(),
            CanonicalHost::V4(_) => 15,
            CanonicalHost::V6(_) => 41,
        }
    }

    /// The canonical text (as [`Display`](fmt::Display) writes it), shared: a domain's own name
    /// without a copy, an address written out.
    pub fn shared_text(&self) -> Arc<str> {
        match self {
            CanonicalHost::Domain(d) => Arc::clone(d),
            CanonicalHost::V4(_) | CanonicalHost::V6(_) => self.to_string().into(),
        }
    }
}

/// Canonical text: the domain, dotted-quad, or RFC 5952 IPv6 without brackets.
impl fmt::Display for CanonicalHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CanonicalHost::Domain(d) => f.write_str(d),
            CanonicalHost::V4(a) => write!(f, "{a}"),
            CanonicalHost::V6(a) => write!(f, "{a}"),
        }
    }
}

/// An IPv6 literal without brackets.
fn parse_ipv6(s: &str) -> Result<CanonicalHost, HostError> {
    if s.contains('%') {
        return Err(HostError::Ipv6ZoneId);
    }
    let addr: Ipv6Addr = s.parse().map_err(|_| HostError::BadIpv6(s.to_string()))?;
    if addr.is_unspecified() {
        return Err(HostError::Unspecified(IpAddr::V6(addr)));
    }
    if let Some(v4) = addr.to_ipv4_mapped() {
        return Err(HostError::Ipv4InIpv6(addr, v4));
    }
    // IPv4-compatible (::a.b.c.d, deprecated by RFC 4291); `::1` is loopback, not one of them.
    let seg = addr.segments();
    if seg[..6].iter().all(|&g| g == 0) && !addr.is_loopback() {
        let [_, _, _, _, _, _, hi, lo] = seg;
        let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
        return Err(HostError::Ipv4InIpv6(addr, v4));
    }
    Ok(CanonicalHost::V6(addr))
}

/// A DNS name or a dotted-quad IPv4 address.
fn parse_name(s: &str) -> Result<CanonicalHost, HostError> {
    for c in s.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => {}
            '%' => return Err(HostError::PercentEncoded),
            c if c.is_ascii() || c.is_whitespace() || c.is_control() => {
                return Err(HostError::InvalidCharacter(c))
            }
            _ => {} // other non-ASCII: IDNA decides
        }
    }
    let ascii = Uts46::new()
        .to_ascii(
            s.as_bytes(),
            AsciiDenyList::URL,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map_err(|_| HostError::Idna(s.to_string()))?;
    let (name, trailing_dot) = match ascii.strip_suffix('.') {
        Some(n) => (n, true),
        None => (&*ascii, false),
    };
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong(name.len()));
    }
    for label in name.split('.') {
        check_label(name, label)?;
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if is_numeric_label(last) {
        if trailing_dot || !s.is_ascii() {
            return Err(HostError::AmbiguousIpv4(s.to_string()));
        }
        let addr =
            parse_dotted_quad(name).ok_or_else(|| HostError::AmbiguousIpv4(s.to_string()))?;
        if addr.is_unspecified() {
            return Err(HostError::Unspecified(IpAddr::V4(addr)));
        }
        return Ok(CanonicalHost::V4(addr));
    }
    Ok(CanonicalHost::Domain(name.into()))
}

/// The name `s` stands for, when `s` is already canonical or for a trailing dot, in one pass
/// over its bytes: lower-case ASCII letters, digits, `-`, `_` and dots; labels of 1..=63 with no
/// hyphen at either end, none an IDNA (`xn--`) label; at most 253 bytes; the last label not
/// numeric. For such a name IDNA changes nothing and every other rule holds, so `parse_name`
/// would give the same (a test holds the two together). None: anything else, which
/// `parse_name` decides (and says why it refuses).
fn plain_name(s: &str) -> Option<&str> {
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return None;
    }
    let bytes = name.as_bytes();
    let mut start = 0;
    let mut numeric = true;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'_' => numeric = false,
            b'0'..=b'9' => {}
            b'-' => {
                numeric = false;
                if i == start || bytes.get(i + 1).is_none_or(|&next| next == b'.') {
                    return None;
                }
            }
            b'.' => {
                let label = &bytes[start..i];
                if label.is_empty() || label.len() > MAX_LABEL_LEN || label.starts_with(b"xn--") {
                    return None;
                }
                start = i + 1;
                numeric = true;
            }
            _ => return None,
        }
    }
    let last = &bytes[start..];
    // A numeric last label (digits, or `0x` hex: the `x` makes it non-numeric here, so `0x…`
    // never comes this way either) is an IPv4 address or refused: `parse_name` decides.
    if last.is_empty() || last.len() > MAX_LABEL_LEN || last.starts_with(b"xn--") || numeric {
        return None;
    }
    if is_numeric_label(std::str::from_utf8(last).ok()?) {
        return None;
    }
    Some(name)
}

/// One label of an IDNA-mapped (ASCII, lower-case) name.
fn check_label(name: &str, label: &str) -> Result<(), HostError> {
    if label.is_empty() {
        return Err(HostError::EmptyLabel(name.to_string()));
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(HostError::LabelTooLong(label.to_string()));
    }
    // Checked again after IDNA: mapping must not have produced anything outside [a-z0-9-_].
    if let Some(c) = label
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'))
    {
        return Err(HostError::InvalidCharacter(c));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(HostError::BadHyphen(label.to_string()));
    }
    Ok(())
}

/// The URL standard's "ends in a number": all decimal digits, or `0x` followed by hex digits.
fn is_numeric_label(label: &str) -> bool {
    if let Some(hex) = label.strip_prefix("0x") {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit())
}

/// Exactly four decimal octets, each 0..=255, no leading zeros, no sign, nothing else.
fn parse_dotted_quad(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        let strict = !part.is_empty()
            && part.len() <= 3
            && part.bytes().all(|b| b.is_ascii_digit())
            && (part == "0" || !part.starts_with('0'));
        if !strict {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
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
    ///
    /// Where that leaves room, this refuses: an unbracketed IPv6 address is rejected even without
    /// a port (`::1:443` could be either), and a port must be 1-5 decimal digits with no sign and
    /// no leading zero (`080` is refused rather than guessed at).
    pub fn parse(s: &str) -> Result<Self, HostError> {
        if s.is_empty() {
            return Err(HostError::Empty);
        }
        if s.contains('@') {
            return Err(HostError::UserInfo);
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let close = rest.find(']').ok_or(HostError::BadBrackets)?;
            let (host, after) = s.split_at(close + 2);
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(HostError::BadBrackets),
            }
        } else {
            match s.split_once(':') {
                Some((_, port)) if port.contains(':') => return Err(HostError::Ipv6NeedsBrackets),
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            }
        };
        let port = port.map(parse_port).transpose()?;
        let host = CanonicalHost::parse(host)?;
        Ok(Authority { host, port })
    }

    /// The port, or the scheme's default.
    pub fn port_or_default(&self, scheme: Scheme) -> u16 {
        self.port.unwrap_or(scheme.default_port())
    }
}

/// 1..=65535, plain decimal.
fn parse_port(s: &str) -> Result<u16, HostError> {
    if s.is_empty() {
        return Err(HostError::EmptyPort);
    }
    let bad = || HostError::BadPort(s.to_string());
    if s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
        return Err(bad());
    }
    s.parse::<u16>().map_err(|_| bad())
}

/// Where a request goes: decided once, from one source (the CONNECT authority, the absolute
/// URI, or the route), and every other naming of it must agree ([`crate::decide`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub scheme: Scheme,
    pub host: CanonicalHost,
    pub port: u16,
}

impl Target {
    /// Whether `authority` is this target's own authority, spelled as sidekey writes it: the
    /// canonical domain, with its port unless it is the scheme's default (`api.example`,
    /// `api.example:8443`). The common case (a client writes the `Host` or absolute URI it was
    /// given), checked without parsing: the canonical spelling parses to itself. Anything else,
    /// IP literals included, says false and is parsed (or written) the long way.
    pub fn is_written_as(&self, authority: &str) -> bool {
        let CanonicalHost::Domain(domain) = &self.host else {
            return false;
        };
        let Some(rest) = authority.strip_prefix(&**domain) else {
            return false;
        };
        if rest.is_empty() {
            return self.port == self.scheme.default_port();
        }
        let Some(port) = rest.strip_prefix(':') else {
            return false;
        };
        self.port != self.scheme.default_port()
            && !port.starts_with('0')
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>() == Ok(self.port)
    }
}

/// `scheme://host:port` with the port always written, IPv6 bracketed.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}",
            self.scheme.as_str(),
            self.host.to_uri_host(),
            self.port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_name_shortcut_gives_what_parsing_gives() {
        // Every host over a small alphabet up to 4 characters, and random longer ones: wherever
        // the shortcut answers, the full parse answers the same.
        let alphabet: Vec<char> = "aZ09-_.x@:%n".chars().collect();
        let mut hosts: Vec<String> = vec![String::new()];
        let mut frontier = hosts.clone();
        for _ in 0..4 {
            frontier = frontier
                .iter()
                .flat_map(|h| alphabet.iter().map(move |c| format!("{h}{c}")))
                .collect();
            hosts.extend(frontier.iter().cloned());
        }
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces = [
            "api",
            "example",
            "com",
            "xn--",
            "xn--bcher-kva",
            "-",
            "_",
            ".",
            "..",
            "0x1f",
            "127",
            "1",
            "a",
            "Z",
            "09",
            "é",
            "ａ",
            "x",
        ];
        for _ in 0..20_000 {
            let n = 1 + next() % 8;
            let host: String = (0..n)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            hosts.push(host);
        }
        hosts.push(format!("{}.com", "a".repeat(63)));
        hosts.push(format!("{}.com", "a".repeat(64)));
        hosts.push(["abcdefghi"; 26].join("."));
        let mut taken = 0;
        for host in &hosts {
            if let Some(name) = plain_name(host) {
                taken += 1;
                assert_eq!(
                    parse_name(host).ok(),
                    Some(CanonicalHost::Domain(name.into())),
                    "{host:?}"
                );
            }
        }
        assert!(taken > 1000, "the shortcut answered only {taken} times");
        assert_eq!(plain_name("api.example.com"), Some("api.example.com"));
        assert_eq!(plain_name("api.example.com."), Some("api.example.com"));
        for refused in [
            "API.example.com",
            "127.0.0.1",
            "a.0x1f",
            "xn--bcher-kva.de",
            "a-.b",
        ] {
            assert_eq!(plain_name(refused), None, "{refused}");
        }
    }

    /// What a host string must canonicalize to.
    #[derive(Debug)]
    enum Want {
        Domain(&'static str),
        V4(&'static str),
        V6(&'static str),
        Rejected(HostError),
    }
    use Want::*;

    fn s(x: &str) -> String {
        x.to_string()
    }

    fn check_host(input: &str, want: &Want) {
        let got = CanonicalHost::parse(input);
        let ok = match (&got, want) {
            (Ok(CanonicalHost::Domain(d)), Domain(w)) => **d == **w,
            (Ok(CanonicalHost::V4(a)), V4(w)) => a.to_string() == *w,
            (Ok(CanonicalHost::V6(a)), V6(w)) => a.to_string() == *w,
            (Err(e), Rejected(w)) => e == w,
            _ => false,
        };
        assert!(ok, "parse({input:?}) = {got:?}, want {want:?}");
    }

    #[test]
    fn canonical_hosts() {
        let long_label = "a".repeat(64);
        let max_label = "a".repeat(63);
        // 4 labels of 63 + 3 dots = 255 > 253; 3 of 63 + one of 61 + 3 dots = 253.
        let too_long = [max_label.as_str(); 4].join(".");
        let max_host = format!("{0}.{0}.{0}.{1}", max_label, "b".repeat(61));
        let cases: Vec<(&str, Want)> = vec![
            // case, trailing dot
            ("api.github.com", Domain("api.github.com")),
            ("API.GitHub.COM", Domain("api.github.com")),
            ("api.github.com.", Domain("api.github.com")),
            (
                "api.github.com..",
                Rejected(HostError::EmptyLabel(s("api.github.com."))),
            ),
            ("localhost", Domain("localhost")),
            (".", Rejected(HostError::Empty)),
            ("", Rejected(HostError::Empty)),
            // IDN
            ("BÜCHER.example", Domain("xn--bcher-kva.example")),
            ("bücher.example.", Domain("xn--bcher-kva.example")),
            ("xn--bcher-kva.example", Domain("xn--bcher-kva.example")),
            ("XN--BCHER-KVA.EXAMPLE", Domain("xn--bcher-kva.example")),
            ("münchen.de", Domain("xn--mnchen-3ya.de")),
            ("例え.テスト", Domain("xn--r8jz45g.xn--zckzah")),
            ("ex\u{ad}ample.com", Domain("example.com")), // soft hyphen is ignored by UTS-46
            (
                "xn--a.example",
                Rejected(HostError::Idna(s("xn--a.example"))),
            ),
            ("xn--ls8h.example", Domain("xn--ls8h.example")), // 💩, valid punycode kept
            // Unicode that maps to forbidden ASCII must not get through IDNA
            (
                "evil\u{ff0f}x.com",
                Rejected(HostError::Idna(s("evil\u{ff0f}x.com"))),
            ),
            (
                "a\u{2100}b.com",
                Rejected(HostError::Idna(s("a\u{2100}b.com"))),
            ), // ℀ -> "a/c"
            ("example\u{ff0e}com", Domain("example.com")), // full-width dot
            ("\u{ff21}pi.com", Domain("api.com")),         // full-width A
            // characters
            ("exa mple.com", Rejected(HostError::InvalidCharacter(' '))),
            (" example.com", Rejected(HostError::InvalidCharacter(' '))),
            ("example.com\t", Rejected(HostError::InvalidCharacter('\t'))),
            ("exam\nple.com", Rejected(HostError::InvalidCharacter('\n'))),
            (
                "exam\u{0}ple.com",
                Rejected(HostError::InvalidCharacter('\u{0}')),
            ),
            (
                "exam\u{a0}ple.com",
                Rejected(HostError::InvalidCharacter('\u{a0}')),
            ),
            ("evil.com\\@good.com", Rejected(HostError::UserInfo)),
            (
                "evil.com\\good.com",
                Rejected(HostError::InvalidCharacter('\\')),
            ),
            ("user@example.com", Rejected(HostError::UserInfo)),
            ("evil.com/x", Rejected(HostError::InvalidCharacter('/'))),
            ("evil.com?x", Rejected(HostError::InvalidCharacter('?'))),
            ("evil.com#x", Rejected(HostError::InvalidCharacter('#'))),
            ("a[b].com", Rejected(HostError::InvalidCharacter('['))),
            ("a*b.com", Rejected(HostError::InvalidCharacter('*'))),
            ("%65vil.com", Rejected(HostError::PercentEncoded)),
            ("evil%2ecom", Rejected(HostError::PercentEncoded)),
            ("_dmarc.example.com", Domain("_dmarc.example.com")),
            ("my_host.example.com", Domain("my_host.example.com")),
            // labels and lengths
            ("a..b", Rejected(HostError::EmptyLabel(s("a..b")))),
            (
                ".example.com",
                Rejected(HostError::EmptyLabel(s(".example.com"))),
            ),
            ("-a.example.com", Rejected(HostError::BadHyphen(s("-a")))),
            ("a-.example.com", Rejected(HostError::BadHyphen(s("a-")))),
            ("a--b.example.com", Domain("a--b.example.com")),
            (
                "r3---sn-abc.googlevideo.com",
                Domain("r3---sn-abc.googlevideo.com"),
            ),
            // IPv4: only strict dotted-quad
            ("127.0.0.1", V4("127.0.0.1")),
            ("192.0.2.255", V4("192.0.2.255")),
            ("1.2.3.4", V4("1.2.3.4")),
            (
                "0.0.0.0",
                Rejected(HostError::Unspecified(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
            ),
            (
                "2130706433",
                Rejected(HostError::AmbiguousIpv4(s("2130706433"))),
            ),
            (
                "0x7f000001",
                Rejected(HostError::AmbiguousIpv4(s("0x7f000001"))),
            ),
            (
                "0X7F000001",
                Rejected(HostError::AmbiguousIpv4(s("0X7F000001"))),
            ),
            (
                "0x7f.0.0.1",
                Rejected(HostError::AmbiguousIpv4(s("0x7f.0.0.1"))),
            ),
            ("0x7f.1", Rejected(HostError::AmbiguousIpv4(s("0x7f.1")))),
            (
                "0177.0.0.1",
                Rejected(HostError::AmbiguousIpv4(s("0177.0.0.1"))),
            ),
            (
                "127.0.0.01",
                Rejected(HostError::AmbiguousIpv4(s("127.0.0.01"))),
            ),
            ("127.1", Rejected(HostError::AmbiguousIpv4(s("127.1")))),
            ("127.0.1", Rejected(HostError::AmbiguousIpv4(s("127.0.1")))),
            (
                "127.0.0.1.",
                Rejected(HostError::AmbiguousIpv4(s("127.0.0.1."))),
            ),
            (
                "1.2.3.4.5",
                Rejected(HostError::AmbiguousIpv4(s("1.2.3.4.5"))),
            ),
            (
                "256.1.1.1",
                Rejected(HostError::AmbiguousIpv4(s("256.1.1.1"))),
            ),
            (
                "1.2.3.256",
                Rejected(HostError::AmbiguousIpv4(s("1.2.3.256"))),
            ),
            (
                "1.2.3.0x4",
                Rejected(HostError::AmbiguousIpv4(s("1.2.3.0x4"))),
            ),
            (
                "1.2.3.4444",
                Rejected(HostError::AmbiguousIpv4(s("1.2.3.4444"))),
            ),
            (
                "example.123",
                Rejected(HostError::AmbiguousIpv4(s("example.123"))),
            ),
            (
                "example.0x",
                Rejected(HostError::AmbiguousIpv4(s("example.0x"))),
            ),
            (
                "example.0x1f",
                Rejected(HostError::AmbiguousIpv4(s("example.0x1f"))),
            ),
            (
                "１２７.０.０.１",
                Rejected(HostError::AmbiguousIpv4(s("１２７.０.０.１"))),
            ),
            ("123.example", Domain("123.example")),
            ("0x7f.example", Domain("0x7f.example")),
            ("example.0xg", Domain("example.0xg")),
            ("1e3.example.1a", Domain("1e3.example.1a")),
            ("127.0.0.1.nip.io", Domain("127.0.0.1.nip.io")),
            // IPv6
            ("[::1]", V6("::1")),
            ("::1", V6("::1")),
            ("[2001:DB8::1]", V6("2001:db8::1")),
            (
                "[2001:0db8:0000:0000:0000:0000:0000:0001]",
                V6("2001:db8::1"),
            ),
            ("[2001:db8:0:0:1:0:0:1]", V6("2001:db8::1:0:0:1")),
            ("[fe80::1]", V6("fe80::1")),
            ("[64:ff9b::c000:201]", V6("64:ff9b::c000:201")),
            (
                "[::]",
                Rejected(HostError::Unspecified(IpAddr::V6(Ipv6Addr::UNSPECIFIED))),
            ),
            (
                "[::ffff:127.0.0.1]",
                Rejected(HostError::Ipv4InIpv6(
                    "::ffff:7f00:1".parse().unwrap(),
                    Ipv4Addr::LOCALHOST,
                )),
            ),
            (
                "[::ffff:7f00:1]",
                Rejected(HostError::Ipv4InIpv6(
                    "::ffff:7f00:1".parse().unwrap(),
                    Ipv4Addr::LOCALHOST,
                )),
            ),
            (
                "[::127.0.0.1]",
                Rejected(HostError::Ipv4InIpv6(
                    "::7f00:1".parse().unwrap(),
                    Ipv4Addr::LOCALHOST,
                )),
            ),
            ("[fe80::1%25eth0]", Rejected(HostError::Ipv6ZoneId)),
            ("[fe80::1%eth0]", Rejected(HostError::Ipv6ZoneId)),
            ("fe80::1%eth0", Rejected(HostError::Ipv6ZoneId)),
            ("[::1", Rejected(HostError::BadBrackets)),
            ("[]", Rejected(HostError::BadIpv6(s("")))),
            ("[127.0.0.1]", Rejected(HostError::BadIpv6(s("127.0.0.1")))),
            ("[v1.fe]", Rejected(HostError::BadIpv6(s("v1.fe")))),
            (
                "[example.com]",
                Rejected(HostError::BadIpv6(s("example.com"))),
            ),
            ("[1::2::3]", Rejected(HostError::BadIpv6(s("1::2::3")))),
            (
                "[1:2:3:4:5:6:7:8:9]",
                Rejected(HostError::BadIpv6(s("1:2:3:4:5:6:7:8:9"))),
            ),
            ("[00001::1]", Rejected(HostError::BadIpv6(s("00001::1")))),
            ("[ ::1]", Rejected(HostError::BadIpv6(s(" ::1")))),
            (
                "example.com:443",
                Rejected(HostError::BadIpv6(s("example.com:443"))),
            ),
        ];
        let long_cases = vec![
            (
                long_label.clone() + ".com",
                Rejected(HostError::LabelTooLong(long_label.clone())),
            ),
            (max_label.clone() + ".com", Domain("")),
            (too_long.clone(), Rejected(HostError::TooLong(255))),
            (max_host.clone(), Domain("")),
            (max_host.clone() + ".", Domain("")),
        ];
        for (input, want) in &cases {
            check_host(input, want);
        }
        for (input, want) in long_cases {
            match want {
                // the expected domain is the input itself, without its trailing dot
                Domain(_) => assert_eq!(
                    CanonicalHost::parse(&input),
                    Ok(CanonicalHost::Domain(input.trim_end_matches('.').into())),
                    "{input}"
                ),
                want => check_host(&input, &want),
            }
        }
    }

    #[test]
    fn display_ip_and_uri_host() {
        let cases = [
            ("Example.COM.", "example.com", "example.com", None),
            ("10.1.2.3", "10.1.2.3", "10.1.2.3", Some("10.1.2.3")),
            (
                "[2001:DB8::1]",
                "2001:db8::1",
                "[2001:db8::1]",
                Some("2001:db8::1"),
            ),
            ("::1", "::1", "[::1]", Some("::1")),
        ];
        for (input, display, uri, ip) in cases {
            let h = CanonicalHost::parse(input).unwrap();
            assert_eq!(h.to_string(), display, "{input}");
            assert_eq!(h.to_uri_host(), uri, "{input}");
            assert_eq!(h.ip(), ip.map(|i| i.parse().unwrap()), "{input}");
        }
    }

    #[test]
    fn authorities() {
        let d = |h: &str| CanonicalHost::Domain(h.into());
        let v6 = |h: &str| CanonicalHost::V6(h.parse().unwrap());
        type Want = Result<(CanonicalHost, Option<u16>), HostError>;
        let cases: Vec<(&str, Want)> = vec![
            ("example.com", Ok((d("example.com"), None))),
            ("Example.com:443", Ok((d("example.com"), Some(443)))),
            ("example.com.:8443", Ok((d("example.com"), Some(8443)))),
            ("example.com:1", Ok((d("example.com"), Some(1)))),
            ("example.com:65535", Ok((d("example.com"), Some(65535)))),
            (
                "127.0.0.1:80",
                Ok((CanonicalHost::V4(Ipv4Addr::LOCALHOST), Some(80))),
            ),
            ("[::1]", Ok((v6("::1"), None))),
            ("[::1]:443", Ok((v6("::1"), Some(443)))),
            ("[2001:db8::1]:8080", Ok((v6("2001:db8::1"), Some(8080)))),
            ("example.com:", Err(HostError::EmptyPort)),
            ("[::1]:", Err(HostError::EmptyPort)),
            ("example.com:0", Err(HostError::BadPort(s("0")))),
            ("example.com:00", Err(HostError::BadPort(s("00")))),
            ("example.com:080", Err(HostError::BadPort(s("080")))),
            ("example.com:65536", Err(HostError::BadPort(s("65536")))),
            ("example.com:99999", Err(HostError::BadPort(s("99999")))),
            ("example.com:100000", Err(HostError::BadPort(s("100000")))),
            ("example.com:+80", Err(HostError::BadPort(s("+80")))),
            ("example.com:-1", Err(HostError::BadPort(s("-1")))),
            ("example.com:0x50", Err(HostError::BadPort(s("0x50")))),
            ("example.com: 80", Err(HostError::BadPort(s(" 80")))),
            ("example.com:80 ", Err(HostError::BadPort(s("80 ")))),
            ("example.com:http", Err(HostError::BadPort(s("http")))),
            ("example.com:８０", Err(HostError::BadPort(s("８０")))),
            ("example.com:80:80", Err(HostError::Ipv6NeedsBrackets)),
            ("::1:443", Err(HostError::Ipv6NeedsBrackets)),
            ("::1", Err(HostError::Ipv6NeedsBrackets)),
            ("2001:db8::1", Err(HostError::Ipv6NeedsBrackets)),
            ("[::1]443", Err(HostError::BadBrackets)),
            ("[::1]]:443", Err(HostError::BadBrackets)),
            ("[::1:443", Err(HostError::BadBrackets)),
            ("[fe80::1%25eth0]:443", Err(HostError::Ipv6ZoneId)),
            ("[127.0.0.1]:443", Err(HostError::BadIpv6(s("127.0.0.1")))),
            ("user@example.com", Err(HostError::UserInfo)),
            ("user:pass@example.com:443", Err(HostError::UserInfo)),
            ("example.com@evil.com", Err(HostError::UserInfo)),
            ("", Err(HostError::Empty)),
            (":443", Err(HostError::Empty)),
            (
                "2130706433:443",
                Err(HostError::AmbiguousIpv4(s("2130706433"))),
            ),
            ("example.com/:443", Err(HostError::InvalidCharacter('/'))),
            ("example.com\\:443", Err(HostError::InvalidCharacter('\\'))),
        ];
        for (input, want) in cases {
            let got = Authority::parse(input);
            let want = want.map(|(host, port)| Authority { host, port });
            assert_eq!(got, want, "Authority::parse({input:?})");
        }
    }

    #[test]
    fn schemes_ports_and_targets() {
        let schemes = [
            ("http", Some(Scheme::Http)),
            ("HTTPS", Some(Scheme::Https)),
            ("HtTp", Some(Scheme::Http)),
            ("ftp", None),
            ("https:", None),
            ("", None),
        ];
        for (input, want) in schemes {
            assert_eq!(Scheme::parse(input), want, "{input}");
        }
        let a = Authority::parse("example.com").unwrap();
        assert_eq!(a.port_or_default(Scheme::Http), 80);
        assert_eq!(a.port_or_default(Scheme::Https), 443);
        let a = Authority::parse("example.com:8443").unwrap();
        assert_eq!(a.port_or_default(Scheme::Https), 8443);
        let t = Target {
            scheme: Scheme::Https,
            host: CanonicalHost::parse("::1").unwrap(),
            port: 443,
        };
        assert_eq!(t.to_string(), "https://[::1]:443");
        let t = Target {
            scheme: Scheme::Http,
            host: CanonicalHost::parse("Example.com.").unwrap(),
            port: 80,
        };
        assert_eq!(t.to_string(), "http://example.com:80");
    }

    #[test]
    fn error_messages_are_actionable() {
        let cases = [
            (
                HostError::BadPort(s("080")),
                "port \"080\" is not a decimal number from 1 to 65535",
            ),
            (HostError::AmbiguousIpv4(s("127.1")), "e.g. 192.0.2.1"),
            (HostError::UserInfo, "userinfo"),
            (
                HostError::Ipv4InIpv6("::ffff:7f00:1".parse().unwrap(), Ipv4Addr::LOCALHOST),
                "write the IPv4 address 127.0.0.1 instead",
            ),
        ];
        for (err, part) in cases {
            assert!(err.to_string().contains(part), "{err}");
        }
    }
}
