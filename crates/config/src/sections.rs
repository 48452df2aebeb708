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
        /// `GET /metrics` alone, for a scraper outside the pod (e.g. 0.0.0.0:15091). Default
        /// off. `SIDEKEY_METRICS_LISTEN` sets it too (the Kubernetes injector does).
        pub metrics: Option<SocketAddr> = None, Listener;
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
        /// A blind tunnel, a WebSocket or an HTTP/2 connection with no traffic either way is
        /// closed after this. Default 5m.
        pub idle_timeout: Duration = Duration::from_secs(300), Positive;
        /// Payload bytes of one WebSocket frame, either way; a larger one closes the
        /// connection (1009). Default 16777216 (16 MiB).
        pub websocket_max_frame: u64 = 16 << 20, Int(125..=1 << 40);
        /// Payload bytes of one WebSocket message (all its frames), either way; a larger one
        /// closes the connection (1009). Frames stream: this bounds a message, not memory.
        /// Default 16777216 (16 MiB).
        pub websocket_max_message: u64 = 16 << 20, Int(125..=1 << 40);
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

#[cfg(test)]
mod tests {
    use std::fmt::Debug;
    use std::time::Duration;

    use super::{AuditFile, CaConfig, LimitsConfig, Listen, UpstreamConfig};
    use crate::check::Errors;
    use crate::section::{self, section, Int, Positive, Section};
    use crate::yaml::{self, Node, Value};
    use crate::ConfigError;

    /// Fields read by their section's own code, not by a rule: they have no samples.
    const EXPLICIT: &[(&str, &str)] = &[("upstream", "resolve")];

    /// `src` loaded as YAML, and the section `S` read from it, with every error.
    fn read<S: Section>(src: &str) -> (S, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let node = match yaml::load(src, &mut errors) {
            Ok(Some(node)) => node,
            other => panic!("{src:?} does not load: {other:?}"),
        };
        let value = read_node(&node, &mut errors);
        errors.sort_by_key(|e| (e.line, e.column));
        (value, errors)
    }

    fn read_node<S: Section>(node: &Node, errors: &mut Vec<ConfigError>) -> S {
        let mut e = Errors::default();
        let value = section::read::<S>(node, &mut e).value;
        errors.append(&mut e.list);
        value
    }

    /// Adding a field is one entry: name, type, default, rule and doc. The keys, the default
    /// and the reader follow.
    #[test]
    fn a_section_is_declared_in_one_place() {
        section! {
            /// A section for this test.
            #[derive(Debug, PartialEq, Eq)]
            struct Demo as "demo" {
                /// Attempts after the first. Default 3.
                retries: u8 = 3, Int(0..=10);
                /// Wait between attempts. Default 1s.
                backoff: Duration = Duration::from_secs(1), Positive;
            }
        }
        assert_eq!(Demo::KEYS, ["retries", "backoff"]);
        assert_eq!(
            Demo::default(),
            Demo {
                retries: 3,
                backoff: Duration::from_secs(1)
            }
        );
        let (demo, errors) = read::<Demo>("retries: 5\nbackoff: 250ms\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(demo.retries, 5);
        assert_eq!(demo.backoff, Duration::from_millis(250));

        // Every error at once, located and with a hint; a field with an error keeps its default
        // and the others are still read.
        let (demo, errors) = read::<Demo>("retries: 11\nbackof: 2s\nbackoff: 0s\n");
        let got: Vec<String> = errors
            .iter()
            .map(|e| {
                let hint = e.hint.as_deref().unwrap_or("");
                format!("{}:{}: {} (hint: {hint})", e.line, e.column, e.message)
            })
            .collect();
        assert_eq!(
            got,
            [
                "1:10: `demo.retries` 11 is out of range (hint: use a value from 0 to 10)",
                "2:1: unknown key `backof` in `demo` (hint: did you mean `backoff`?)",
                "3:10: `demo.backoff` must be greater than zero (hint: e.g. `5s`)",
            ]
        );
        assert_eq!(demo, Demo::default());
        let (demo, errors) = read::<Demo>("retries: 7\nbackoff: soon\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(demo.retries, 7);
        assert_eq!(demo.backoff, Duration::from_secs(1));
    }

    /// Every key a section lists is read into its own field (so the known keys and the reader
    /// cannot drift apart), and what it reads is what was written.
    fn every_key_reads_back<S: Section + PartialEq + Debug>() {
        let samples = S::samples();
        for &key in S::KEYS {
            let explicit = EXPLICIT.contains(&(S::NAME, key));
            let mine: Vec<_> = samples.iter().filter(|(k, ..)| *k == key).collect();
            assert_eq!(
                mine.is_empty(),
                explicit,
                "`{}.{key}`: samples of a field read by a rule, none for one read explicitly",
                S::NAME
            );
            if explicit {
                continue;
            }
            assert!(
                mine.iter().any(|(.., expected)| *expected != S::default()),
                "`{}.{key}`: every sample is the default, so reading it proves nothing",
                S::NAME
            );
            for (_, yaml, expected) in mine {
                let (got, errors) = read::<S>(&format!("{key}: {yaml}\n"));
                assert!(errors.is_empty(), "`{}.{key}: {yaml}`: {errors:?}", S::NAME);
                assert_eq!(&got, expected, "`{}.{key}: {yaml}`", S::NAME);
            }
        }
        assert!(samples.iter().all(|(k, ..)| S::KEYS.contains(k)));
    }

    #[test]
    fn every_key_of_every_section_reads_back() {
        every_key_reads_back::<Listen>();
        every_key_reads_back::<CaConfig>();
        every_key_reads_back::<UpstreamConfig>();
        every_key_reads_back::<LimitsConfig>();
        every_key_reads_back::<AuditFile>();
        // The explicit one, through the whole pipeline.
        let c = crate::parse(
            "upstream:\n  resolve: { \"a.test:443\": \"127.0.0.1:1\" }\n",
            "t",
        );
        assert_eq!(c.map(|c| c.upstream.resolve.len()), Ok(1));
    }

    /// `Default X.` in a field's doc, X as written in the file.
    fn documented_default(doc: &str) -> Option<&str> {
        let (_, rest) = doc.split_once("Default ")?;
        let word = rest.split_whitespace().next()?;
        Some(word.trim_end_matches(['.', ',', ';']))
    }

    /// The one-entry mapping `key: value`.
    fn entry(key: &Node, value: &Node) -> Node {
        Node {
            pos: key.pos,
            value: Value::Map(vec![(key.clone(), value.clone())]),
        }
    }

    /// Each `Default X.` in a field's doc reads as the default; how many there are.
    fn docs_state_the_defaults<S: Section + PartialEq + Debug>() -> usize {
        assert_eq!(S::DOCS.len(), S::KEYS.len());
        let mut stated = 0;
        for (key, doc) in S::KEYS.iter().zip(S::DOCS) {
            let Some(default) = documented_default(doc) else {
                continue;
            };
            let (got, errors) = read::<S>(&format!("{key}: {default}\n"));
            assert!(errors.is_empty(), "`{}.{key}`: {errors:?}", S::NAME);
            assert_eq!(
                got,
                S::default(),
                "`{}.{key}`: the doc says `Default {default}`",
                S::NAME
            );
            stated += 1;
        }
        stated
    }

    #[test]
    fn documented_defaults_are_the_defaults() {
        // At least one each, so that a change in how docs say it cannot make this vacuous.
        assert!(docs_state_the_defaults::<Listen>() > 0);
        assert!(docs_state_the_defaults::<CaConfig>() > 0);
        assert!(docs_state_the_defaults::<UpstreamConfig>() > 0);
        assert!(docs_state_the_defaults::<LimitsConfig>() > 0);
        docs_state_the_defaults::<AuditFile>();
    }

    /// README.md's config block names every key of the section, and shows its default where its
    /// doc states one (elsewhere, e.g. `ca.cert_out`, an example).
    fn readme_shows<S: Section + PartialEq + Debug>(root: &Node) {
        let Value::Map(top) = &root.value else {
            panic!("README's config block is not a mapping");
        };
        let section = top
            .iter()
            .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == S::NAME))
            .map(|(_, v)| v);
        let Some(Node {
            value: Value::Map(entries),
            ..
        }) = section
        else {
            panic!("README's config block has no `{}:` mapping", S::NAME);
        };
        let mut keys: Vec<&str> = Vec::new();
        for (k, v) in entries {
            let Value::Str(key) = &k.value else {
                panic!("a key of `{}` in README is not a string", S::NAME);
            };
            keys.push(key);
            let i = S::KEYS.iter().position(|known| known == key);
            let Some(doc) = i.and_then(|i| S::DOCS.get(i)) else {
                panic!("README shows `{}.{key}`, which is not a key", S::NAME);
            };
            let mut errors = Vec::new();
            let got: S = read_node(&entry(k, v), &mut errors);
            assert!(
                errors.is_empty(),
                "README's `{}.{key}`: {errors:?}",
                S::NAME
            );
            if documented_default(doc).is_some() {
                assert_eq!(
                    got,
                    S::default(),
                    "README.md:{}: `{}.{key}` is not the default",
                    v.pos.line,
                    S::NAME,
                );
            }
        }
        for key in S::KEYS {
            assert!(
                keys.contains(key),
                "README's config block does not show `{}.{key}`",
                S::NAME
            );
        }
    }

    #[test]
    fn readme_shows_every_key_and_the_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // The ```yaml block with a `limits:` section.
        let block = readme
            .split("```yaml\n")
            .skip(1)
            .filter_map(|b| b.split_once("```").map(|(b, _)| b))
            .find(|b| b.lines().any(|l| l.starts_with("limits:")))
            .unwrap_or_else(|| panic!("{path} has no ```yaml block with `limits:`"));
        // Preceded by as many empty lines as README has before it: positions are README's.
        let before = readme
            .find(block)
            .map_or(0, |at| readme[..at].matches('\n').count());
        let block = format!("{}{block}", "\n".repeat(before));
        if let Err(e) = crate::parse(&block, "README.md") {
            panic!("README's config block is not valid:\n{e}");
        }
        let mut errors = Vec::new();
        let Ok(Some(root)) = yaml::load(&block, &mut errors) else {
            panic!("README's config block does not load");
        };
        readme_shows::<Listen>(&root);
        readme_shows::<CaConfig>(&root);
        readme_shows::<UpstreamConfig>(&root);
        readme_shows::<LimitsConfig>(&root);
    }
}
