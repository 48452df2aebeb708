//! The flat sections, each declared once with [`section!`] (see [`crate::section`]), followed by
//! its reader: the generated one, plus the checks that span fields or sections, written out.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use sidekey_policy::IpNet;

use crate::check::Errors;
use crate::section::{
    self, section, AllowRange, Explicit, Int, List, Listener, Path, Positive, Rule, UpstreamAddr,
};
use crate::validate::{resolve_map, ResolveEntry};
use crate::yaml::{Node, Value};
use crate::ResolveOverride;

section! {
    /// `listen:` — each listener can be turned off with `null`/`off`. Port 0 picks a free port.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Listen as "listen" {
        /// Default 127.0.0.1:15080.
        pub forward: Option<SocketAddr> = loopback(15080), Listener;
        /// Default 127.0.0.1:15081.
        pub routes: Option<SocketAddr> = loopback(15081), Listener;
        /// Default 127.0.0.1:15090.
        pub admin: Option<SocketAddr> = loopback(15090), Listener;
    }
}

const fn loopback(port: u16) -> Option<SocketAddr> {
    Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)))
}

pub(crate) fn listen(node: &Node, e: &mut Errors) -> Listen {
    let read = section::read::<Listen>(node, e);
    // Two listeners on one address, except port 0 (each gets a free port of its own). Every
    // field of `listen` is a listener, and one read without error reads again without one.
    let mut seen: Vec<(&str, SocketAddr)> = Vec::new();
    for field in &read.valid {
        let Some(Some(addr)) = Listener.read(field.value, "", &mut Errors::default()) else {
            continue;
        };
        if addr.port() != 0 {
            if let Some((other, _)) = seen.iter().find(|(_, a)| *a == addr) {
                e.error_hint(
                    field.value.pos,
                    format!(
                        "`listen.{}` uses {addr}, the same address as `listen.{other}`",
                        field.name
                    ),
                    "give each listener its own port",
                );
            }
        }
        seen.push((field.name, addr));
    }
    read.value
}

section! {
    /// `ca:` — the interception CA. Its key never leaves memory.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CaConfig as "ca" {
        /// Where the public certificate (PEM) is written for agents to trust. None: not written.
        pub cert_out: Option<PathBuf> = None, Path;
        /// Where sidekey's CA certificate followed by the system's trusted roots is written (for
        /// `SSL_CERT_FILE`/`REQUESTS_CA_BUNDLE`, which replace rather than extend a client's trust:
        /// hosts reached directly or tunnelled must still verify). None: not written.
        pub bundle_out: Option<PathBuf> = None, Path;
        /// Maximum leaf certificates kept in memory. Default 1024.
        pub leaf_cache_size: usize = 1024, Int(1..=1_000_000);
        /// New leaves per second (sustained) for names no route lists exactly, i.e. names under
        /// wildcard routes. Default 10.
        pub leaf_mint_rate: u32 = 10, Int(1..=10_000);
        /// New leaves at once (burst) for such names. Default 50.
        pub leaf_mint_burst: u32 = 50, Int(1..=100_000);
    }
}

pub(crate) fn ca(node: &Node, e: &mut Errors) -> CaConfig {
    let read = section::read::<CaConfig>(node, e);
    let ca = read.value;
    if let Some(bundle) = read.valid.iter().find(|f| f.name == "bundle_out") {
        if ca.bundle_out == ca.cert_out {
            e.error_hint(
                bundle.value.pos,
                "`ca.bundle_out` is the same file as `ca.cert_out`",
                "the bundle (CA + public roots) and the CA alone need two files",
            );
        }
    }
    ca
}

section! {
    /// `upstream:` — how sidekey connects to upstream servers.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct UpstreamConfig as "upstream" {
        /// PEM files trusted in addition to the webpki roots.
        pub extra_ca_files: Vec<PathBuf> = Vec::new(), List("a file", Path);
        /// `host:port: addr:port` overrides (like curl --resolve), global and from routes merged.
        pub resolve: Vec<ResolveOverride> = Vec::new(), Explicit;
        /// DNS servers (`ip:port`) to ask instead of the system resolver (`/etc/resolv.conf`,
        /// `/etc/hosts`). Empty: the system resolver.
        pub nameservers: Vec<SocketAddr> = Vec::new(), List("a name server", UpstreamAddr);
        /// Non-public address ranges every upstream connection may reach (routes and unmatched
        /// tunnels), on top of routes' `allow_private`.
        pub allow_ranges: Vec<IpNet> = Vec::new(), List("a range", AllowRange);
        /// Default 5s.
        pub connect_timeout: Duration = Duration::from_secs(5), Positive;
        /// Time to the response headers. Default 60s. Bodies stream without a time limit.
        pub request_timeout: Duration = Duration::from_secs(60), Positive;
        /// Idle upstream connections kept per host for reuse; busier moments open more, and
        /// those close once their request is done. 0: no reuse. Default 256.
        pub max_idle_per_host: usize = 256, Int(0..=100_000);
    }
}

/// `upstream:`; its `resolve` entries go to `resolve`, to be merged with the routes' ones.
pub(crate) fn upstream(
    node: &Node,
    e: &mut Errors,
    resolve: &mut Vec<ResolveEntry>,
) -> UpstreamConfig {
    let read = section::read::<UpstreamConfig>(node, e);
    if let Some(n) = read.fields.as_ref().and_then(|f| f.value("resolve")) {
        resolve_map(n, "`upstream.resolve`", e, resolve);
    }
    read.value
}

section! {
    /// `limits:` — what one agent connection may cost sidekey. Every value has a safe default.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LimitsConfig as "limits" {
        /// Agent connections open at once, over all listeners; more are closed on accept.
        /// Default 1024.
        pub max_connections: usize = 1024, Int(1..=1_000_000);
        /// Time to receive a whole request head (slowloris). Default 30s.
        pub header_read_timeout: Duration = Duration::from_secs(30), Positive;
        /// Time for the agent's TLS handshake inside CONNECT. Default 10s.
        pub handshake_timeout: Duration = Duration::from_secs(10), Positive;
        /// Request headers per request. Default 100.
        pub max_headers: usize = 100, Int(8..=10_000);
        /// Bytes of a request head (request line + headers; HTTP/2: the header list).
        /// Default 65536 (64 KiB).
        pub max_header_bytes: usize = 64 * 1024, Int(1024..=16 << 20);
        /// Concurrent HTTP/2 streams per agent connection. Default 100.
        pub max_concurrent_streams: u32 = 100, Int(1..=10_000);
        /// A blind tunnel or an HTTP/2 connection with no traffic either way is closed after
        /// this. Default 5m.
        pub idle_timeout: Duration = Duration::from_secs(300), Positive;
    }
}

pub(crate) fn limits(node: &Node, e: &mut Errors) -> LimitsConfig {
    section::read::<LimitsConfig>(node, e).value
}

/// `audit:` — where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuditConfig {
    #[default]
    Stdout,
    File(PathBuf),
}

section! {
    /// `audit: { file: … }`, the mapping form of [`AuditConfig::File`].
    #[derive(Debug, PartialEq, Eq)]
    struct AuditFile as "audit" {
        /// The file audit lines are appended to. Required.
        file: Option<PathBuf> = None, Path;
    }
}

/// `audit:` — `stdout`, or a mapping declared by [`AuditFile`].
pub(crate) fn audit(node: &Node, e: &mut Errors) -> AuditConfig {
    const HINT: &str = "use `stdout` (the default) or `{ file: /path/to/audit.log }`";
    match &node.value {
        Value::Str(s) if s == "stdout" => AuditConfig::Stdout,
        Value::Str(s) => {
            e.error_hint(node.pos, format!("unknown audit sink `{s}`"), HINT);
            AuditConfig::Stdout
        }
        Value::Map(_) => {
            let read = section::read::<AuditFile>(node, e);
            let Some(f) = read.fields else {
                return AuditConfig::Stdout;
            };
            if let Some(path) = read.value.file {
                return AuditConfig::File(path);
            }
            match f.get("file") {
                // A bad path, reported by its rule.
                Some(n) if !n.is_null() => {}
                Some(_) => e.error_hint(f.pos, "`audit.file` is empty", HINT),
                None => e.error_hint(f.pos, "`audit` has no `file`", HINT),
            }
            AuditConfig::Stdout
        }
        _ => {
            e.error_hint(
                node.pos,
                format!(
                    "`audit` must be `stdout` or a mapping, found {}",
                    node.kind()
                ),
                HINT,
            );
            AuditConfig::Stdout
        }
    }
}
