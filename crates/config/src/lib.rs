//! sidekey's configuration: one YAML file, parsed and validated in full before anything runs.
//! Every problem is reported at once, each with line, column and a hint; the types here are the
//! validated result (config types, separate from the runtime types built from them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sidekey_policy::{CanonicalHost, HostPattern, MethodSet, PathGlob, Policy, Route, Scheme};

mod cedar;
mod check;
mod describe;
mod grants;
mod inject;
mod issuers;
mod parse;
mod route;
mod section;
mod sections;
mod traces;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

pub use cedar::CedarConfig;
pub use grants::{GrantsConfig, TrustedKeys, DEFAULT_GRANT_MAX_TTL, DEFAULT_JWKS_REFRESH};
pub use parse::parse;
pub use sections::{AuditConfig, CaConfig, LimitsConfig, Listen, UpstreamConfig};
pub use traces::{TracesConfig, DEFAULT_EXPORT_TIMEOUT};

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
    /// `grants:` (task grants); None: grants are not used.
    pub grants: Option<GrantsConfig>,
    /// `cedar:` (Cedar policies after route matching); None: routes (and grants) decide alone.
    pub cedar: Option<CedarConfig>,
    /// `traces:` (OTLP span export); None: no spans are exported.
    pub traces: Option<TracesConfig>,
    pub audit: AuditConfig,
    pub limits: LimitsConfig,
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
    /// `kind: vault` — HashiCorp Vault or OpenBao.
    Vault(VaultIssuerConfig),
    /// `kind: oauth2` — an OAuth 2.0 token endpoint.
    OAuth2(OAuth2IssuerConfig),
    /// `kind: aws-sts` — AssumeRoleWithWebIdentity.
    AwsSts(AwsStsIssuerConfig),
    /// `kind: github-app` — installation access tokens of a GitHub App.
    GitHubApp(GitHubAppIssuerConfig),
}

impl IssuerKind {
    /// The `kind:` as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            IssuerKind::Local(_) => "local",
            IssuerKind::Vault(_) => "vault",
            IssuerKind::OAuth2(_) => "oauth2",
            IssuerKind::AwsSts(_) => "aws-sts",
            IssuerKind::GitHubApp(_) => "github-app",
        }
    }
}

/// An issuer's HTTP endpoint: `https://…`, or `http://…` for loopback addresses only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Without a trailing slash.
    pub url: String,
}

/// `kind: vault`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultIssuerConfig {
    pub address: Endpoint,
    /// `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// Trusted in addition to the webpki roots.
    pub ca_file: Option<PathBuf>,
    pub auth: VaultAuth,
}

/// How sidekey logs in to Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// `auth/<mount>/login` with `role` and `jwt` (the identity token, read at every login).
    /// Covers both `method: jwt` and `method: kubernetes` (same request shape).
    Jwt {
        method: VaultJwtMethod,
        mount: String,
        role: String,
        token_file: PathBuf,
    },
    /// `auth/<mount>/login` with `role_id` and `secret_id` read from files at every login.
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultJwtMethod {
    Jwt,
    Kubernetes,
}

/// `kind: oauth2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2IssuerConfig {
    pub token_url: Endpoint,
    pub grant: OAuth2Grant,
    pub client_id: String,
    pub client_auth: ClientAuth,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuth2Grant {
    ClientCredentials,
    /// RFC 8693, the identity token as `subject_token` (for a `per_task` credential, a token
    /// sidekey signs for the task's end user instead).
    TokenExchange {
        subject_token_file: PathBuf,
        actor_token_file: Option<PathBuf>,
    },
}

/// How sidekey authenticates to the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with client_id and the secret read from the file.
    SecretBasic(PathBuf),
    /// `client_secret_post`: client_id and client_secret in the form.
    SecretPost(PathBuf),
    /// `private_key_jwt` (RFC 7523): a JWT client assertion signed with the PEM key in the
    /// file (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA).
    PrivateKeyJwt {
        key_file: PathBuf,
        key_id: Option<String>,
    },
    /// A public client (token exchange only): just `client_id`.
    None,
}

/// `kind: aws-sts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsStsIssuerConfig {
    pub role_arn: String,
    pub region: String,
    pub endpoint: Endpoint,
    /// `RoleSessionName` template; `{pod}` is replaced at start.
    pub session_name: String,
    pub token_file: PathBuf,
}

/// `kind: github-app`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitHubAppIssuerConfig {
    /// The App's ID: the `iss` of the JWTs sidekey signs as the App.
    pub app_id: u64,
    /// The installation whose tokens are minted.
    pub installation_id: u64,
    /// The REST API's base URL. Default `https://api.github.com`.
    pub api_url: Endpoint,
    /// Trusted in addition to the webpki roots (GitHub Enterprise Server).
    pub ca_file: Option<PathBuf>,
    /// Where the App's private key (PEM, RSA) is read, at every mint.
    pub private_key: PrivateKeySource,
}

/// Where a private key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrivateKeySource {
    /// A field of a secret read through a `kind: vault` issuer (validated to name one), e.g.
    /// KV v2 `secret/data/github-app`, field `private_key`.
    Vault {
        issuer: String,
        path: String,
        field: String,
    },
    /// A PEM file (for development).
    File(PathBuf),
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
    /// Lifetime asked of the issuer (local: JWT lifetime; vault: how often a secret without a
    /// lease is read again; oauth2: lifetime of a token that states none; aws-sts:
    /// DurationSeconds). Default 5m (aws-sts: 1h).
    pub ttl: Duration,
    /// Fetch at start; readiness waits for it.
    pub eager: bool,
    /// vault: the API path read (`secret/data/x` for KV v2, `database/creds/role`…).
    pub path: Option<String>,
    /// vault: the field of the secret's data that is the credential.
    pub field: Option<String>,
    /// vault: sent as a JSON POST body when present (engines that take parameters).
    pub params: Vec<(String, String)>,
    /// oauth2: `scope`.
    pub scope: Option<String>,
    /// oauth2: `resource` (RFC 8707).
    pub resource: Option<String>,
    /// aws-sts: file with an inline session policy (JSON), read at start. With `per_task`, it
    /// may name `{task_id}`, `{sub}` and `{on_behalf_of}` inside its strings, filled in per task.
    pub session_policy_file: Option<PathBuf>,
    /// One credential per task grant instead of one shared by every request: each task gets
    /// its own (a JWT naming it, its own Vault lease, its own STS session, its own OAuth2 token
    /// exchanged for the task's end user), ended when its grant ends, so that what one task was
    /// given cannot serve another.
    pub per_task: bool,
    /// oauth2 with `per_task` (required there, and only there): the `kind: local` issuer whose
    /// key signs the subject token sidekey exchanges for each task (`sub` = the task's end
    /// user, `act` = its agents). Validated to name a local issuer.
    pub task_assertion_issuer: Option<String>,
    /// github-app: the repositories (names, without the owner) the token is narrowed to; empty:
    /// every repository the installation can reach.
    pub repositories: Vec<String>,
    /// github-app (required there, non-empty): the permissions the token is narrowed to, name →
    /// `read`, `write` or `admin`, in file order.
    pub permissions: Vec<(String, String)>,
    /// vault: a client certificate signed by a PKI engine (`path: <mount>/sign/<role>`) for a
    /// key sidekey generates and keeps in memory; attached by routes as `client_certificate`.
    pub certificate: Option<CertificateConfig>,
}

/// `credentials.<name>.certificate`: what the certificate names. With `per_task`, each value
/// may contain `{task_id}` and `{sub}`, filled in with the task's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertificateConfig {
    pub common_name: String,
    /// DNS names and e-mail addresses (Vault's `alt_names`).
    pub alt_names: Vec<String>,
    /// URI SANs (Vault's `uri_sans`), e.g. a SPIFFE ID.
    pub uri_sans: Vec<String>,
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
    /// Name of a `certificate` credential presented as the TLS client certificate to this
    /// route's upstreams (validated; https only).
    pub client_certificate: Option<String>,
    /// Required when `credential` is set; an error without one.
    pub inject: Option<Inject>,
    /// Only this route may reach private/loopback addresses (enforced by the SSRF guard).
    pub allow_private: bool,
    /// Largest request body (bytes) the route forwards; larger ones get 413. None: no limit.
    pub max_request_body: Option<u64>,
    /// The Cedar action of its requests (`cedar:`), `Sidekey::Action::"<action>"`; None: the
    /// method.
    pub action: Option<String>,
    /// Line of the route in the file, for messages.
    pub line: usize,
}

impl RouteConfig {
    /// The same rule, wherever it sits in the file (`line` aside).
    pub fn same_rule(&self, other: &RouteConfig) -> bool {
        RouteConfig {
            line: other.line,
            ..self.clone()
        } == *other
    }
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
    /// `inject: { sigv4: { service: s3, region: us-east-1 } }` → the request is signed with AWS
    /// Signature Version 4 (aws-sts credentials only).
    SigV4 { service: String, region: String },
}

impl Inject {
    /// Whether attaching the credential needs a hash of the whole body: SigV4 for every service
    /// but S3's, which sign `UNSIGNED-PAYLOAD` so that bodies of any size stream.
    pub fn signs_body(&self) -> bool {
        matches!(self, Inject::SigV4 { service, .. } if !is_s3_service(service))
    }
}

/// Whether a SigV4 `service` follows S3's signing rules (path signed as sent,
/// `x-amz-content-sha256` always sent, `UNSIGNED-PAYLOAD`): `s3`, `s3-object-lambda`,
/// `s3-outposts`.
pub fn is_s3_service(service: &str) -> bool {
    matches!(service, "s3" | "s3-object-lambda" | "s3-outposts")
}

/// A header value template with exactly one `{token}` placeholder, e.g. "Bearer {token}".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub prefix: String,
    pub suffix: String,
}

/// `unmatched:` — what happens to targets no route names (a policy rule, defined with the
/// policy).
pub use sidekey_policy::Unmatched;

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
                    max_request_body: r.max_request_body,
                    signs_body: r.inject.as_ref().is_some_and(Inject::signs_body),
                })
                .collect(),
        )
        .with_unmatched(self.unmatched)
        .with_grants_required(self.grants.as_ref().is_some_and(|g| g.required))
    }

    /// Human-readable effective policy for `sidekey check`: listeners, unmatched mode, then
    /// routes in match order with hosts, schemes/ports, methods, paths, credential → issuer,
    /// and how it is injected (never any secret; there are none in config anyway).
    pub fn describe(&self) -> String {
        parse::describe(self)
    }
}
