//! The top-level sections: listeners, CA, upstream, identity, issuers, credentials, `unmatched`
//! and audit. Routes are in [`crate::route`]. Each section falls back to its defaults after an
//! error so that the rest of the file is still checked.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use sidekey_policy::Authority;

use crate::check::{check_name, closest, parse_socket_addr, Errors, Field};
use crate::yaml::{Node, Pos, Value};
use crate::{
    AuditConfig, CaConfig, Config, CredentialConfig, IdentityConfig, IssuerConfig, IssuerKind,
    Listen, LocalAlgorithm, LocalIssuerConfig, ResolveOverride, Unmatched, UpstreamConfig,
};

const TOP_KEYS: &[&str] = &[
    "listen",
    "ca",
    "upstream",
    "identity",
    "issuers",
    "credentials",
    "routes",
    "unmatched",
    "audit",
];
const LISTEN_KEYS: &[&str] = &["forward", "routes", "admin"];
const CA_KEYS: &[&str] = &["cert_out", "leaf_cache_size"];
const UPSTREAM_KEYS: &[&str] = &[
    "extra_ca_files",
    "resolve",
    "connect_timeout",
    "request_timeout",
];
const IDENTITY_KEYS: &[&str] = &["token_file"];
const LOCAL_ISSUER_KEYS: &[&str] = &["kind", "issuer", "algorithm"];
const CREDENTIAL_KEYS: &[&str] = &["issuer", "audience", "subject", "ttl", "eager"];
const AUDIT_KEYS: &[&str] = &["file"];

/// Issuer kinds that exist in the design but not yet in this build.
const PLANNED_KINDS: &[&str] = &["vault", "oauth2", "aws-sts"];
const ALL_KINDS: &[&str] = &["local", "vault", "oauth2", "aws-sts"];

pub(crate) const DEFAULT_FORWARD: &str = "127.0.0.1:15080";
pub(crate) const DEFAULT_ROUTES: &str = "127.0.0.1:15081";
pub(crate) const DEFAULT_ADMIN: &str = "127.0.0.1:15090";
const DEFAULT_LEAF_CACHE: usize = 1024;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
const MIN_TTL: Duration = Duration::from_secs(10);
const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_LOCAL_ISS: &str = "sidekey-local";

/// What a credential may refer to by issuer name. Names of issuers with errors are still
/// declared, so that their credentials do not get a second, misleading error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IssuerStatus {
    Local,
    /// Unsupported or unknown kind, or otherwise invalid.
    Invalid,
}

/// Declared credentials, by name (including those with errors).
pub(crate) type CredentialNames = BTreeSet<String>;

/// A `host:port: ip:port` entry found anywhere in the file.
pub(crate) struct ResolveEntry {
    pub pos: Pos,
    pub key: String,
    pub value: ResolveOverride,
}

/// The whole document.
pub(crate) fn config(root: Option<&Node>, e: &mut Errors) -> Config {
    let mut config = Config {
        listen: default_listen(),
        ca: CaConfig {
            cert_out: None,
            leaf_cache_size: DEFAULT_LEAF_CACHE,
        },
        upstream: UpstreamConfig {
            extra_ca_files: Vec::new(),
            resolve: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        },
        identity: None,
        issuers: Vec::new(),
        credentials: Vec::new(),
        routes: Vec::new(),
        unmatched: Unmatched::Deny,
        audit: AuditConfig::Stdout,
    };
    let Some(root) = root.filter(|r| !r.is_null()) else {
        return config;
    };
    let Some(top) = e.fields(root, "the config", TOP_KEYS) else {
        return config;
    };

    let mut resolve = Vec::new();
    if let Some(n) = top.value("listen") {
        config.listen = listen(n, e);
    }
    if let Some(n) = top.value("ca") {
        config.ca = ca(n, e);
    }
    if let Some(n) = top.value("upstream") {
        upstream(n, e, &mut config.upstream, &mut resolve);
    }
    if let Some(n) = top.value("identity") {
        config.identity = identity(n, e);
    }
    let mut issuer_names = BTreeMap::new();
    if let Some(n) = top.value("issuers") {
        config.issuers = issuers(n, e, &mut issuer_names);
    }
    let mut credential_names = CredentialNames::new();
    if let Some(n) = top.value("credentials") {
        config.credentials = credentials(n, e, &issuer_names, &mut credential_names);
    }
    if let Some(n) = top.value("routes") {
        config.routes = crate::route::routes(n, e, &credential_names, &mut resolve);
    }
    if let Some(n) = top.get("unmatched") {
        config.unmatched = unmatched(n, e);
    }
    if let Some(n) = top.value("audit") {
        config.audit = audit(n, e);
    }
    config.upstream.resolve = merge_resolve(resolve, e);
    config
}

fn default_listen() -> Listen {
    Listen {
        forward: DEFAULT_FORWARD.parse().ok(),
        routes: DEFAULT_ROUTES.parse().ok(),
        admin: DEFAULT_ADMIN.parse().ok(),
    }
}

fn listen(node: &Node, e: &mut Errors) -> Listen {
    let mut listen = default_listen();
    let Some(f) = e.fields(node, "`listen`", LISTEN_KEYS) else {
        return listen;
    };
    let mut seen: Vec<(&str, SocketAddr)> = Vec::new();
    for field in &f.entries {
        let slot = match field.name {
            "forward" => &mut listen.forward,
            "routes" => &mut listen.routes,
            "admin" => &mut listen.admin,
            _ => continue,
        };
        let addr = listen_addr(field.value, &format!("`listen.{}`", field.name), e);
        *slot = addr.unwrap_or(None);
        if let Some(Some(addr)) = addr {
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
    }
    listen
}

/// `Some(None)` for a disabled listener, `None` after an error.
fn listen_addr(node: &Node, what: &str, e: &mut Errors) -> Option<Option<SocketAddr>> {
    match &node.value {
        Value::Null => Some(None),
        Value::Str(s) if s == "off" => Some(None),
        Value::Str(s) => match parse_socket_addr(s, true) {
            Ok(addr) => Some(Some(addr)),
            Err((message, hint)) => {
                e.error_hint(node.pos, format!("{what}: {message}"), hint);
                None
            }
        },
        Value::Int(port) => {
            e.error_hint(
                node.pos,
                format!("{what} must be an ip:port address, found the bare number {port}"),
                format!("write 127.0.0.1:{port} to listen on loopback"),
            );
            None
        }
        Value::Bool(false) => {
            e.error_hint(
                node.pos,
                format!("{what} must be an ip:port address, `off` or null"),
                "write `off` to turn the listener off",
            );
            None
        }
        _ => {
            e.error_hint(
                node.pos,
                format!("{what} must be an ip:port address, found {}", node.kind()),
                "e.g. 127.0.0.1:15080; `off` or null turns the listener off",
            );
            None
        }
    }
}

fn ca(node: &Node, e: &mut Errors) -> CaConfig {
    let mut ca = CaConfig {
        cert_out: None,
        leaf_cache_size: DEFAULT_LEAF_CACHE,
    };
    let Some(f) = e.fields(node, "`ca`", CA_KEYS) else {
        return ca;
    };
    if let Some(n) = f.value("cert_out") {
        ca.cert_out = e.path(n, "`ca.cert_out`");
    }
    if let Some(n) = f.value("leaf_cache_size") {
        if let Some(size) = e.int_in(n, "`ca.leaf_cache_size`", 1, 1_000_000) {
            ca.leaf_cache_size = usize::try_from(size).unwrap_or(DEFAULT_LEAF_CACHE);
        }
    }
    ca
}

fn upstream(node: &Node, e: &mut Errors, up: &mut UpstreamConfig, resolve: &mut Vec<ResolveEntry>) {
    let Some(f) = e.fields(node, "`upstream`", UPSTREAM_KEYS) else {
        return;
    };
    if let Some(n) = f.value("extra_ca_files") {
        if let Some(items) = e.list(n, "`upstream.extra_ca_files`") {
            up.extra_ca_files = items
                .iter()
                .filter_map(|i| e.path(i, "a file in `upstream.extra_ca_files`"))
                .collect();
        }
    }
    if let Some(n) = f.value("resolve") {
        resolve_map(n, "`upstream.resolve`", e, resolve);
    }
    if let Some(n) = f.value("connect_timeout") {
        if let Some(d) = positive_duration(n, "`upstream.connect_timeout`", e) {
            up.connect_timeout = d;
        }
    }
    if let Some(n) = f.value("request_timeout") {
        if let Some(d) = positive_duration(n, "`upstream.request_timeout`", e) {
            up.request_timeout = d;
        }
    }
}

fn positive_duration(node: &Node, what: &str, e: &mut Errors) -> Option<Duration> {
    let d = e.duration(node, what)?;
    if d.is_zero() {
        e.error_hint(
            node.pos,
            format!("{what} must be greater than zero"),
            "e.g. `5s`",
        );
        return None;
    }
    Some(d)
}

/// `host:port: ip:port` entries, from `upstream.resolve` or a route's `resolve`.
pub(crate) fn resolve_map(node: &Node, what: &str, e: &mut Errors, out: &mut Vec<ResolveEntry>) {
    let Some(f) = e.map(node, what) else {
        return;
    };
    for field in &f.entries {
        let key = field.name;
        let target = match Authority::parse(key) {
            Ok(Authority {
                host,
                port: Some(port),
            }) => Some((host, port)),
            Ok(Authority { host, port: None }) => {
                e.error_hint(
                    field.key.pos,
                    format!("{what}: `{key}` has no port"),
                    format!("write the port the requests go to, e.g. `{host}:443`"),
                );
                None
            }
            Err(err) => {
                e.error_hint(
                    field.key.pos,
                    format!("{what}: invalid host:port `{key}`: {err}"),
                    "keys are host:port, e.g. `api.internal.test:443`",
                );
                None
            }
        };
        let addr = e.upstream_addr(field.value, &format!("{what} `{key}`"));
        if let (Some((host, port)), Some(addr)) = (target, addr) {
            out.push(ResolveEntry {
                pos: field.key.pos,
                key: key.to_string(),
                value: ResolveOverride { host, port, addr },
            });
        }
    }
}

/// Global and per-route overrides in file order; the same host:port twice must agree.
fn merge_resolve(mut entries: Vec<ResolveEntry>, e: &mut Errors) -> Vec<ResolveOverride> {
    entries.sort_by_key(|r| r.pos);
    let mut merged: Vec<(Pos, ResolveOverride)> = Vec::new();
    for entry in entries {
        let r = entry.value;
        match merged
            .iter()
            .find(|(_, m)| m.host == r.host && m.port == r.port)
        {
            Some((_, m)) if m.addr == r.addr => {}
            Some((first, m)) => e.error_hint(
                entry.pos,
                format!(
                    "`{}` is resolved to {} here but to {} at line {}",
                    entry.key, r.addr, m.addr, first.line
                ),
                "a host:port can be pinned to one address only; remove one of the entries",
            ),
            None => merged.push((entry.pos, r)),
        }
    }
    merged.into_iter().map(|(_, r)| r).collect()
}

fn identity(node: &Node, e: &mut Errors) -> Option<IdentityConfig> {
    let f = e.fields(node, "`identity`", IDENTITY_KEYS)?;
    match f.value("token_file") {
        Some(n) => e
            .path(n, "`identity.token_file`")
            .map(|token_file| IdentityConfig { token_file }),
        None => {
            e.error_hint(
                f.pos,
                "`identity` has no `token_file`",
                "give the file holding this pod's identity JWT, e.g. token_file: /var/run/secrets/sidekey/token",
            );
            None
        }
    }
}

fn issuers(
    node: &Node,
    e: &mut Errors,
    names: &mut BTreeMap<String, IssuerStatus>,
) -> Vec<IssuerConfig> {
    let mut out = Vec::new();
    let Some(f) = e.map(node, "`issuers`") else {
        return out;
    };
    for field in &f.entries {
        let name = check_name(e, field.key, "issuer");
        let kind = issuer(field.name, field, e);
        names.insert(
            field.name.to_string(),
            if kind.is_some() {
                IssuerStatus::Local
            } else {
                IssuerStatus::Invalid
            },
        );
        if let (Some(name), Some(kind)) = (name, kind) {
            out.push(IssuerConfig { name, kind });
        }
    }
    out
}

fn issuer(name: &str, field: &Field<'_>, e: &mut Errors) -> Option<IssuerKind> {
    let what = format!("issuer `{name}`");
    let missing_kind = "add `kind: local` (the built-in in-memory signer)";
    if field.value.is_null() {
        e.error_hint(field.key.pos, format!("{what} has no `kind`"), missing_kind);
        return None;
    }
    let f = e.map(field.value, &what)?;
    let Some(kind_node) = f.value("kind") else {
        e.error_hint(field.key.pos, format!("{what} has no `kind`"), missing_kind);
        return None;
    };
    let kind = e.string(kind_node, &format!("`kind` of {what}"))?;
    match kind {
        "local" => {}
        k if PLANNED_KINDS.contains(&k) => {
            e.error_hint(
                kind_node.pos,
                format!("issuer kind `{k}` is not supported by this build yet"),
                "use `kind: local` for now; vault, oauth2 and aws-sts issuers are planned",
            );
            return None;
        }
        k => {
            let hint = match closest(k, ALL_KINDS) {
                Some("local") => "did you mean `local`?".to_string(),
                _ => "the only kind available in this build is `local`".to_string(),
            };
            e.error_hint(kind_node.pos, format!("unknown issuer kind `{k}`"), hint);
            return None;
        }
    }
    e.unknown_keys(&f, &what, LOCAL_ISSUER_KEYS);
    let mut local = LocalIssuerConfig {
        issuer: DEFAULT_LOCAL_ISS.to_string(),
        algorithm: LocalAlgorithm::EdDsa,
    };
    if let Some(n) = f.value("issuer") {
        if let Some(iss) = e.nonempty_string(n, &format!("`issuer` of {what}")) {
            local.issuer = iss.to_string();
        }
    }
    if let Some(n) = f.value("algorithm") {
        if let Some(alg) = e.string(n, &format!("`algorithm` of {what}")) {
            match alg {
                "EdDSA" => local.algorithm = LocalAlgorithm::EdDsa,
                "ES256" => local.algorithm = LocalAlgorithm::Es256,
                other => {
                    let hint = match closest(other, &["EdDSA", "ES256"]) {
                        Some(best) => {
                            format!("did you mean `{best}`? (algorithm names are case-sensitive)")
                        }
                        None => "use `EdDSA` (default) or `ES256`".to_string(),
                    };
                    e.error_hint(
                        n.pos,
                        format!("unknown algorithm `{other}` for {what}"),
                        hint,
                    );
                }
            }
        }
    }
    Some(IssuerKind::Local(local))
}

fn credentials(
    node: &Node,
    e: &mut Errors,
    issuers: &BTreeMap<String, IssuerStatus>,
    names: &mut CredentialNames,
) -> Vec<CredentialConfig> {
    let mut out = Vec::new();
    let Some(f) = e.map(node, "`credentials`") else {
        return out;
    };
    for field in &f.entries {
        names.insert(field.name.to_string());
        let name = check_name(e, field.key, "credential");
        let cred = credential(field.name, field.key.pos, field.value, e, issuers);
        if let (Some(name), Some(mut cred)) = (name, cred) {
            cred.name = name;
            out.push(cred);
        }
    }
    out
}

fn credential(
    name: &str,
    key_pos: Pos,
    node: &Node,
    e: &mut Errors,
    issuers: &BTreeMap<String, IssuerStatus>,
) -> Option<CredentialConfig> {
    let what = format!("credential `{name}`");
    let no_issuer = |e: &mut Errors| {
        let hint = match issuers.keys().next() {
            Some(_) => format!(
                "add `issuer: <name>`, one of: {}",
                sorted_names(issuers.keys())
            ),
            None => {
                "add `issuer: local` and declare it under `issuers:` as `local: { kind: local }`"
                    .into()
            }
        };
        e.error_hint(key_pos, format!("{what} has no `issuer`"), hint);
    };
    if node.is_null() {
        no_issuer(e);
        return None;
    }
    let f = e.map(node, &what)?;
    let Some(issuer_node) = f.value("issuer") else {
        e.unknown_keys(&f, &what, CREDENTIAL_KEYS);
        no_issuer(e);
        return None;
    };
    let issuer = e.string(issuer_node, &format!("`issuer` of {what}"));
    let status = issuer.and_then(|i| issuers.get(i).copied());
    // Keys of an issuer kind this build does not have (vault `path`, oauth2 `scope`, ...) are not
    // reported: the issuer itself already is.
    if status != Some(IssuerStatus::Invalid) {
        e.unknown_keys(&f, &what, CREDENTIAL_KEYS);
    }
    if let (Some(i), None) = (issuer, status) {
        let known: Vec<&str> = issuers.keys().map(String::as_str).collect();
        let hint = match closest(i, &known) {
            Some(best) => format!("did you mean `{best}`?"),
            None if known.is_empty() => {
                format!("declare it under `issuers:`, e.g. `{i}: {{ kind: local }}`")
            }
            None => format!("declared issuers: {}", sorted_names(issuers.keys())),
        };
        e.error_hint(
            issuer_node.pos,
            format!("{what} refers to unknown issuer `{i}`"),
            hint,
        );
    }
    let mut cred = CredentialConfig {
        name: name.to_string(),
        issuer: issuer.unwrap_or_default().to_string(),
        audience: None,
        subject: None,
        ttl: DEFAULT_TTL,
        eager: false,
    };
    if let Some(n) = f.value("audience") {
        cred.audience = e
            .nonempty_string(n, &format!("`audience` of {what}"))
            .map(str::to_string);
    }
    if let Some(n) = f.value("subject") {
        cred.subject = e
            .nonempty_string(n, &format!("`subject` of {what}"))
            .map(str::to_string);
    }
    if let Some(n) = f.value("ttl") {
        if let Some(ttl) = e.duration(n, &format!("`ttl` of {what}")) {
            if ttl < MIN_TTL || ttl > MAX_TTL {
                e.error_hint(
                    n.pos,
                    format!(
                        "`ttl` of {what} is {}, out of range",
                        humantime::format_duration(ttl)
                    ),
                    "local credentials live from 10s to 24h; the default is 5m",
                );
            } else {
                cred.ttl = ttl;
            }
        }
    }
    if let Some(n) = f.value("eager") {
        if let Some(b) = e.bool(n, &format!("`eager` of {what}")) {
            cred.eager = b;
        }
    }
    issuer?;
    Some(cred)
}

/// Names of a sorted map or set, for hints.
fn sorted_names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    names.map(String::as_str).collect::<Vec<_>>().join(", ")
}

fn unmatched(node: &Node, e: &mut Errors) -> Unmatched {
    match &node.value {
        Value::Str(s) if s == "deny" => Unmatched::Deny,
        Value::Str(s) if s == "tunnel" => Unmatched::Tunnel,
        _ => {
            let found = match &node.value {
                Value::Str(s) => format!("`{s}`"),
                _ => node.kind().to_string(),
            };
            e.error_hint(
                node.pos,
                format!("`unmatched` must be `deny` or `tunnel`, found {found}"),
                "`deny` (the default) refuses hosts no route names; `tunnel` lets them through without a credential",
            );
            Unmatched::Deny
        }
    }
}

fn audit(node: &Node, e: &mut Errors) -> AuditConfig {
    const HINT: &str = "use `stdout` (the default) or `{ file: /path/to/audit.log }`";
    match &node.value {
        Value::Str(s) if s == "stdout" => AuditConfig::Stdout,
        Value::Str(s) => {
            e.error_hint(node.pos, format!("unknown audit sink `{s}`"), HINT);
            AuditConfig::Stdout
        }
        Value::Map(_) => {
            let Some(f) = e.fields(node, "`audit`", AUDIT_KEYS) else {
                return AuditConfig::Stdout;
            };
            match f.value("file") {
                Some(n) => e
                    .path(n, "`audit.file`")
                    .map_or(AuditConfig::Stdout, AuditConfig::File),
                None => {
                    let message = match f.get("file") {
                        Some(_) => "`audit.file` is empty",
                        None => "`audit` has no `file`",
                    };
                    e.error_hint(f.pos, message, HINT);
                    AuditConfig::Stdout
                }
            }
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
