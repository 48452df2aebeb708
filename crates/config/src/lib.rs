//! sidekey's configuration: one YAML file, parsed and validated in full before anything runs.
//! Every problem is reported at once, each with line, column and a hint; the types here are the
//! validated result (config types, separate from the runtime types built from them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sidekey_policy::{CanonicalHost, HostPattern, MethodSet, PathGlob, Policy, Route, Scheme};

mod check;
mod describe;
mod inject;
mod parse;
mod route;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

pub use parse::parse;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// Shown in front of each error, e.g. the file path.
    pub origin: String,
    pub errors: Vec<ConfigError>,
}

/// `origin:line:column: error: message` then `  hint: ...`, one per error, then a count line.
impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.errors {
            writeln!(
                f,
                "{}:{}:{}: error: {}",
                self.origin, e.line, e.column, e.message
            )?;
            if let Some(hint) = &e.hint {
                writeln!(f, "  hint: {hint}")?;
            }
        }
        let n = self.errors.len();
        write!(
            f,
            "{n} error{} in {}",
            if n == 1 { "" } else { "s" },
            self.origin
        )
    }
}

impl std::error::Error for ConfigErrors {}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Listen,
    pub ca: CaConfig,
    pub upstream: UpstreamConfig,
    pub identity: Option<IdentityConfig>,
    /// In file order.
    pub issuers: Vec<IssuerConfig>,
    /// In file order.
    pub credentials: Vec<CredentialConfig>,
    /// In match order.
    pub routes: Vec<RouteConfig>,
    pub unmatched: Unmatched,
    pub audit: AuditConfig,
}

/// `listen:` — each listener can be turned off with `null`/`off`. Port 0 picks a free port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Default 127.0.0.1:15080.
    pub forward: Option<SocketAddr>,
    /// Default 127.0.0.1:15081.
    pub routes: Option<SocketAddr>,
    /// Default 127.0.0.1:15090.
    pub admin: Option<SocketAddr>,
}

/// `ca:` — the interception CA. Its key never leaves memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaConfig {
    /// Where the public certificate (PEM) is written for agents to trust. None: not written.
    pub cert_out: Option<PathBuf>,
    /// Maximum leaf certificates kept in memory. Default 1024.
    pub leaf_cache_size: usize,
}

/// `upstream:` — how sidekey connects to upstream servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// PEM files trusted in addition to the webpki roots.
    pub extra_ca_files: Vec<PathBuf>,
    /// `host:port: addr:port` overrides (like curl --resolve), global and from routes merged.
    pub resolve: Vec<ResolveOverride>,
    /// Default 5s.
    pub connect_timeout: Duration,
    /// Time to the response headers. Default 60s. Bodies stream without a time limit.
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOverride {
    pub host: CanonicalHost,
    pub port: u16,
    pub addr: SocketAddr,
}

/// `identity:` — who this pod is when talking to issuers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    pub token_file: PathBuf,
}

/// `issuers.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    pub name: String,
    pub kind: IssuerKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerKind {
    /// `kind: local` — in-memory signing key, mints JWTs.
    Local(LocalIssuerConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIssuerConfig {
    /// `iss` claim. Default "sidekey-local".
    pub issuer: String,
    /// Default EdDSA.
    pub algorithm: LocalAlgorithm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalAlgorithm {
    EdDsa,
    Es256,
}

/// `credentials.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialConfig {
    pub name: String,
    /// Name of an entry in `issuers` (validated to exist).
    pub issuer: String,
    /// `aud` claim (local), audience (oauth2).
    pub audience: Option<String>,
    /// `sub` claim for local issuers. Default: "sidekey".
    pub subject: Option<String>,
    /// Lifetime asked of the issuer. Default 5m. Minimum 10s, maximum 24h for local.
    pub ttl: Duration,
    /// Fetch at start; readiness waits for it.
    pub eager: bool,
}

/// `routes[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    /// Default [https].
    pub schemes: Vec<Scheme>,
    /// Default: the default port of each scheme.
    pub ports: Vec<u16>,
    /// Required: a route without `methods` is an error.
    pub methods: MethodSet,
    /// Empty = every path.
    pub paths: Vec<PathGlob>,
    /// Name of an entry in `credentials` (validated). None: allowed egress with no credential.
    pub credential: Option<String>,
    /// Required when `credential` is set; an error without one.
    pub inject: Option<Inject>,
    /// Only this route may reach private/loopback addresses (enforced by the SSRF guard).
    pub allow_private: bool,
    /// Line of the route in the file, for messages.
    pub line: usize,
}

/// How a credential is attached. Whatever the agent sent under the same header/parameter is
/// removed first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inject {
    /// `inject: { header: Authorization, value: "Bearer {token}" }` (value defaults to
    /// "Bearer {token}" when the header is Authorization, and "{token}" otherwise).
    Header { name: String, value: Template },
    /// `inject: { basic: { username: x-access-token } }` → `Authorization: Basic base64(user:token)`.
    Basic { username: String },
    /// `inject: { query: api_key }` → `?api_key=<token>` (replacing any the agent sent).
    Query { param: String },
}

/// A header value template with exactly one `{token}` placeholder, e.g. "Bearer {token}".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub prefix: String,
    pub suffix: String,
}

/// `unmatched:` — what happens to targets no route names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unmatched {
    #[default]
    Deny,
    /// Blind tunnel / plain forward with no credential, still audited.
    Tunnel,
}

/// `audit:` — where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuditConfig {
    #[default]
    Stdout,
    File(PathBuf),
}

impl Config {
    /// The decision core's view of the routes, in match order.
    pub fn policy(&self) -> Policy {
        Policy::new(
            self.routes
                .iter()
                .map(|r| Route {
                    name: r.name.clone(),
                    hosts: r.hosts.clone(),
                    schemes: r.schemes.clone(),
                    ports: r.ports.clone(),
                    methods: r.methods.clone(),
                    paths: r.paths.clone(),
                })
                .collect(),
        )
    }

    /// Human-readable effective policy for `sidekey check`: listeners, unmatched mode, then
    /// routes in match order with hosts, schemes/ports, methods, paths, credential → issuer,
    /// and how it is injected (never any secret; there are none in config anyway).
    pub fn describe(&self) -> String {
        parse::describe(self)
    }
}
