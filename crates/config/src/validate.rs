//! The whole document, and the sections that are not flat: identity, issuers, credentials and
//! `unmatched`. The flat ones (listen, CA, upstream, limits, audit) are in [`crate::sections`],
//! routes in [`crate::route`]. Each section falls back to its defaults after an error so that
//! the rest of the file is still checked.

use std::collections::BTreeMap;
use std::time::Duration;

use sidekey_policy::Authority;

use crate::check::{check_name, closest, Errors, Field, Fields};
use crate::sections;
use crate::yaml::{Node, Pos, Value};
use crate::{
    AuditConfig, CaConfig, Config, CredentialConfig, IdentityConfig, IssuerConfig, IssuerKind,
    LimitsConfig, Listen, LocalAlgorithm, LocalIssuerConfig, OAuth2Grant, ResolveOverride,
    Unmatched, UpstreamConfig,
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
    "grants",
    "cedar",
    "traces",
    "audit",
    "limits",
];
const IDENTITY_KEYS: &[&str] = &["token_file"];
const LOCAL_ISSUER_KEYS: &[&str] = &["kind", "issuer", "algorithm"];
const CREDENTIAL_KEYS: &[&str] = &[
    "issuer",
    "audience",
    "subject",
    "ttl",
    "eager",
    "path",
    "field",
    "params",
    "scope",
    "resource",
    "session_policy_file",
    "per_task",
    "task_assertion_issuer",
    "repositories",
    "permissions",
    "certificate",
];
/// Keys of a credential's `certificate`.
const CERTIFICATE_KEYS: &[&str] = &["common_name", "alt_names", "uri_sans"];
/// Parameters of `<mount>/sign/<role>` that a certificate credential sets itself.
const CERTIFICATE_PARAMS: &[&str] = &[
    "csr",
    "common_name",
    "alt_names",
    "uri_sans",
    "ttl",
    "format",
];
const ALL_KINDS: &[&str] = &["local", "vault", "oauth2", "aws-sts", "github-app"];
/// What a github-app credential's permission may be set to.
const GITHUB_ACCESS: &[&str] = &["read", "write", "admin"];

const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
const MIN_TTL: Duration = Duration::from_secs(10);
const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// AssumeRoleWithWebIdentity's DurationSeconds: 15 minutes to 12 hours, default 1 hour.
const AWS_DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);
const AWS_MIN_TTL: Duration = Duration::from_secs(15 * 60);
const AWS_MAX_TTL: Duration = Duration::from_secs(12 * 60 * 60);
const DEFAULT_LOCAL_ISS: &str = "sidekey-local";

/// What a credential may refer to by issuer name. Names of issuers with errors are still
/// declared, so that their credentials do not get a second, misleading error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IssuerStatus {
    Local,
    Vault,
    /// With `grant: token_exchange` or not (`per_task` needs it).
    OAuth2 {
        token_exchange: bool,
    },
    AwsSts,
    GitHubApp,
    /// Unknown kind, or otherwise invalid.
    Invalid,
}

impl IssuerStatus {
    fn of(kind: &IssuerKind) -> IssuerStatus {
        match kind {
            IssuerKind::Local(_) => IssuerStatus::Local,
            IssuerKind::Vault(_) => IssuerStatus::Vault,
            IssuerKind::OAuth2(o) => IssuerStatus::OAuth2 {
                token_exchange: matches!(o.grant, OAuth2Grant::TokenExchange { .. }),
            },
            IssuerKind::AwsSts(_) => IssuerStatus::AwsSts,
            IssuerKind::GitHubApp(_) => IssuerStatus::GitHubApp,
        }
    }

    fn kind_name(self) -> &'static str {
        match self {
            IssuerStatus::Local => "local",
            IssuerStatus::Vault => "vault",
            IssuerStatus::OAuth2 { .. } => "oauth2",
            IssuerStatus::AwsSts => "aws-sts",
            IssuerStatus::GitHubApp => "github-app",
            IssuerStatus::Invalid => "invalid",
        }
    }

    /// The credential keys this kind of issuer takes, besides `issuer`, `ttl` and `eager`.
    fn credential_keys(self) -> &'static [&'static str] {
        match self {
            IssuerStatus::Local => &["audience", "subject", "per_task"],
            IssuerStatus::Vault => &["path", "field", "params", "per_task", "certificate"],
            IssuerStatus::OAuth2 { .. } => &[
                "audience",
                "scope",
                "resource",
                "per_task",
                "task_assertion_issuer",
            ],
            IssuerStatus::AwsSts => &["session_policy_file", "per_task"],
            IssuerStatus::GitHubApp => &["repositories", "permissions"],
            IssuerStatus::Invalid => CREDENTIAL_KEYS,
        }
    }
}

/// Declared credentials, by name (including those with errors), with the kind of their issuer
/// (routes check that `inject: sigv4` goes with aws-sts credentials and only with them).
pub(crate) type CredentialNames = BTreeMap<String, CredentialKind>;

/// What a route may do with a declared credential: its issuer's kind, and whether it is a
/// client certificate (`certificate:`), which routes attach as `client_certificate` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CredentialKind {
    pub issuer: IssuerStatus,
    pub certificate: bool,
}

/// A `host:port: ip:port` entry found anywhere in the file.
pub(crate) struct ResolveEntry {
    pub pos: Pos,
    pub key: String,
    pub value: ResolveOverride,
}

/// The whole document.
pub(crate) fn config(root: Option<&Node>, e: &mut Errors) -> Config {
    let mut config = Config {
        listen: Listen::default(),
        ca: CaConfig::default(),
        upstream: UpstreamConfig::default(),
        identity: None,
        issuers: Vec::new(),
        credentials: Vec::new(),
        routes: Vec::new(),
        unmatched: Unmatched::Deny,
        grants: None,
        cedar: None,
        traces: None,
        audit: AuditConfig::Stdout,
        limits: LimitsConfig::default(),
    };
    let Some(root) = root.filter(|r| !r.is_null()) else {
        return config;
    };
    let Some(top) = e.fields(root, "the config", TOP_KEYS) else {
        return config;
    };

    let mut resolve = Vec::new();
    if let Some(n) = top.value("listen") {
        config.listen = sections::listen(n, e);
    }
    if let Some(n) = top.value("ca") {
        config.ca = sections::ca(n, e);
    }
    if let Some(n) = top.value("upstream") {
        config.upstream = sections::upstream(n, e, &mut resolve);
    }
    if let Some(n) = top.value("identity") {
        config.identity = identity(n, e);
    }
    let mut issuer_names = BTreeMap::new();
    if let Some(n) = top.value("issuers") {
        config.issuers = issuers(n, e, config.identity.as_ref(), &mut issuer_names);
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
    if let Some(n) = top.value("grants") {
        config.grants = crate::grants::grants(n, e);
    }
    if let Some(n) = top.value("cedar") {
        config.cedar = crate::cedar::cedar(n, e);
    }
    if let Some(n) = top.value("traces") {
        config.traces = crate::traces::traces(n, e);
    }
    if let Some(n) = top.value("audit") {
        config.audit = sections::audit(n, e);
    }
    if let Some(n) = top.value("limits") {
        config.limits = sections::limits(n, e);
    }
    config.upstream.resolve = merge_resolve(resolve, e);
    config
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
    identity: Option<&IdentityConfig>,
    names: &mut BTreeMap<String, IssuerStatus>,
) -> Vec<IssuerConfig> {
    let mut out = Vec::new();
    let Some(f) = e.map(node, "`issuers`") else {
        return out;
    };
    // Every issuer's `kind` as written: a github-app issuer may read its key through a vault
    // issuer declared after it.
    let declared: BTreeMap<&str, Option<&str>> = f
        .entries
        .iter()
        .map(|field| (field.name, declared_kind(field.value)))
        .collect();
    for field in &f.entries {
        let name = check_name(e, field.key, "issuer");
        let kind = issuer(field.name, field, identity, &declared, e);
        names.insert(
            field.name.to_string(),
            kind.as_ref()
                .map_or(IssuerStatus::Invalid, IssuerStatus::of),
        );
        if let (Some(name), Some(kind)) = (name, kind) {
            out.push(IssuerConfig { name, kind });
        }
    }
    out
}

/// The `kind:` string of an issuer's mapping, if it has one.
fn declared_kind(node: &Node) -> Option<&str> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find_map(|(k, v)| match (&k.value, &v.value) {
                (Value::Str(k), Value::Str(v)) if k == "kind" => Some(v.as_str()),
                _ => None,
            }),
        _ => None,
    }
}

fn issuer(
    name: &str,
    field: &Field<'_>,
    identity: Option<&IdentityConfig>,
    declared: &BTreeMap<&str, Option<&str>>,
    e: &mut Errors,
) -> Option<IssuerKind> {
    let what = format!("issuer `{name}`");
    let missing_kind =
        "add `kind:` vault, oauth2, aws-sts or github-app, or `kind: local` (the built-in in-memory signer)";
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
        "vault" => return crate::issuers::vault(&f, &what, identity, e).map(IssuerKind::Vault),
        "oauth2" => return crate::issuers::oauth2(&f, &what, identity, e).map(IssuerKind::OAuth2),
        "aws-sts" => {
            return crate::issuers::aws_sts(&f, &what, identity, e).map(IssuerKind::AwsSts)
        }
        "github-app" => {
            return crate::issuers::github_app(&f, &what, declared, e).map(IssuerKind::GitHubApp)
        }
        k => {
            let hint = match closest(k, ALL_KINDS) {
                Some(best) => format!("did you mean `{best}`?"),
                None => "kinds: vault, oauth2, aws-sts, github-app, local".to_string(),
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
        let entry = |key: &str| match &field.value.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        };
        let status = entry("issuer")
            .and_then(|v| match &v.value {
                Value::Str(s) => issuers.get(s).copied(),
                _ => None,
            })
            .unwrap_or(IssuerStatus::Invalid);
        let certificate = entry("certificate").is_some_and(|v| !v.is_null());
        names.insert(
            field.name.to_string(),
            CredentialKind {
                issuer: status,
                certificate,
            },
        );
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
    // Keys of an invalid issuer's credential are not checked against its kind: the issuer
    // itself already has an error.
    if status != Some(IssuerStatus::Invalid) {
        e.unknown_keys(&f, &what, CREDENTIAL_KEYS);
    }
    if let Some(kind) = status.filter(|s| *s != IssuerStatus::Invalid) {
        let allowed = kind.credential_keys();
        for field in &f.entries {
            let common = ["issuer", "ttl", "eager"].contains(&field.name);
            if !common && CREDENTIAL_KEYS.contains(&field.name) && !allowed.contains(&field.name) {
                e.error_hint(
                    field.key.pos,
                    format!(
                        "`{}` does not apply to {what}: its issuer is a `{}` issuer",
                        field.name,
                        kind.kind_name()
                    ),
                    format!(
                        "{} credentials take: {}, {}eager",
                        kind.kind_name(),
                        allowed.join(", "),
                        // GitHub fixes the tokens' lifetime.
                        if kind == IssuerStatus::GitHubApp {
                            ""
                        } else {
                            "ttl, "
                        }
                    ),
                );
            }
        }
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
    let aws = status == Some(IssuerStatus::AwsSts);
    let mut cred = CredentialConfig {
        name: name.to_string(),
        issuer: issuer.unwrap_or_default().to_string(),
        audience: None,
        subject: None,
        ttl: if aws { AWS_DEFAULT_TTL } else { DEFAULT_TTL },
        eager: false,
        path: None,
        field: None,
        params: Vec::new(),
        scope: None,
        resource: None,
        session_policy_file: None,
        per_task: false,
        task_assertion_issuer: None,
        repositories: Vec::new(),
        permissions: Vec::new(),
        certificate: None,
    };
    let text = |e: &mut Errors, key: &str| -> Option<String> {
        f.value(key).and_then(|n| {
            e.nonempty_string(n, &format!("`{key}` of {what}"))
                .map(str::to_string)
        })
    };
    cred.audience = text(e, "audience");
    cred.subject = text(e, "subject");
    cred.scope = text(e, "scope");
    cred.resource = text(e, "resource");
    cred.field = text(e, "field");
    cred.path = text(e, "path").map(|p| p.trim_matches('/').to_string());
    cred.session_policy_file = f
        .value("session_policy_file")
        .and_then(|n| e.path(n, &format!("`session_policy_file` of {what}")));
    if let Some(n) = f.value("params") {
        if let Some(params) = e.map(n, &format!("`params` of {what}")) {
            for p in &params.entries {
                match &p.value.value {
                    Value::Str(v) => cred.params.push((p.name.to_string(), v.clone())),
                    Value::Int(v) => cred.params.push((p.name.to_string(), v.to_string())),
                    Value::Bool(v) => cred.params.push((p.name.to_string(), v.to_string())),
                    _ => e.wrong_type(
                        p.value,
                        &format!("`params.{}` of {what}", p.name),
                        "a string, number or boolean",
                    ),
                }
            }
        }
    }
    if status == Some(IssuerStatus::Vault) && f.value("certificate").is_some() {
        certificate(&f, &what, key_pos, &mut cred, e);
    } else if status == Some(IssuerStatus::Vault) {
        for key in ["path", "field"] {
            if f.get(key).is_none() {
                let hint = if key == "path" {
                    "give the API path to read, e.g. path: secret/data/agents/github (KV v2) or database/creds/readonly"
                } else {
                    "name the field of the secret that is the credential, e.g. field: token"
                };
                e.error_hint(key_pos, format!("{what} has no `{key}`"), hint);
            }
        }
    }
    if status == Some(IssuerStatus::GitHubApp) {
        github_narrowing(&f, &what, key_pos, &mut cred, e);
        if let Some(ttl) = f.field("ttl") {
            e.error_hint(
                ttl.key.pos,
                format!("`ttl` does not apply to {what}: its issuer is a `github-app` issuer"),
                "GitHub installation tokens last one hour, fixed by GitHub; sidekey replaces them before that. Remove `ttl`",
            );
        }
    } else if let Some(n) = f.value("ttl") {
        if let Some(ttl) = e.duration(n, &format!("`ttl` of {what}")) {
            let (min, max, hint) = if aws {
                (
                    AWS_MIN_TTL,
                    AWS_MAX_TTL,
                    "AWS STS sessions last from 15m to 12h; the default is 1h",
                )
            } else {
                (
                    MIN_TTL,
                    MAX_TTL,
                    "credential ttl goes from 10s to 24h; the default is 5m",
                )
            };
            if ttl < min || ttl > max {
                e.error_hint(
                    n.pos,
                    format!(
                        "`ttl` of {what} is {}, out of range",
                        humantime::format_duration(ttl)
                    ),
                    hint,
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
    per_task(&f, &what, status, &mut cred, e);
    task_assertion_issuer(&f, &what, status, issuers, &mut cred, e);
    issuer?;
    Some(cred)
}

/// A github-app credential's `repositories` (optional: names without the owner) and
/// `permissions` (required, non-empty: name → read, write or admin): what the token is
/// narrowed to.
fn github_narrowing(
    f: &Fields<'_>,
    what: &str,
    key_pos: Pos,
    cred: &mut CredentialConfig,
    e: &mut Errors,
) {
    if let Some(n) = f.value("repositories") {
        let label = format!("`repositories` of {what}");
        if let Some(items) = e.list(n, &label) {
            if items.is_empty() {
                e.error_hint(
                    n.pos,
                    format!("{label} is empty"),
                    "name the repositories the token may reach, or remove `repositories` for every repository of the installation",
                );
            }
            for item in items {
                let Some(repo) = e.nonempty_string(item, &format!("an entry of {label}")) else {
                    continue;
                };
                if let Some((owner, name)) = repo.split_once('/') {
                    e.error_hint(
                        item.pos,
                        format!("{label}: `{repo}` names an owner"),
                        format!("give the name alone (`{name}`): the owner is the installation's account (`{owner}`)"),
                    );
                } else if !is_repository_name(repo) {
                    e.error_hint(
                        item.pos,
                        format!("{label}: `{repo}` is not a repository name"),
                        "repository names are letters, digits, `-`, `_` and `.`, at most 100",
                    );
                } else if cred
                    .repositories
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(repo))
                {
                    e.error_hint(
                        item.pos,
                        format!("{label} names `{repo}` twice"),
                        "remove one",
                    );
                } else {
                    cred.repositories.push(repo.to_string());
                }
            }
        }
    }
    let Some(n) = f.value("permissions") else {
        e.error_hint(
            key_pos,
            format!("{what} has no `permissions`"),
            "narrow the token to what the routes need, e.g. permissions: { issues: write, metadata: read }",
        );
        return;
    };
    let label = format!("`permissions` of {what}");
    let Some(map) = e.map(n, &label) else {
        return;
    };
    if map.entries.is_empty() {
        e.error_hint(
            n.pos,
            format!("{label} is empty"),
            "name at least one, e.g. permissions: { contents: read }",
        );
    }
    for p in &map.entries {
        let ok_name = !p.name.is_empty()
            && p.name.len() <= 64
            && p.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok_name {
            e.error_hint(
                p.key.pos,
                format!("{label}: `{}` is not a GitHub permission name", p.name),
                "names are lower case with underscores, as GitHub spells them: contents, issues, pull_requests, metadata…",
            );
            continue;
        }
        let Some(level) = e.string(p.value, &format!("`permissions.{}` of {what}", p.name)) else {
            continue;
        };
        if GITHUB_ACCESS.contains(&level) {
            cred.permissions
                .push((p.name.to_string(), level.to_string()));
        } else {
            e.error_hint(
                p.value.pos,
                format!("`permissions.{}` of {what} is `{level}`", p.name),
                "use `read`, `write` or `admin`",
            );
        }
    }
}

/// A vault credential's `certificate`: a client certificate from a PKI engine's `sign`
/// endpoint, for a key sidekey generates. Its path must be a `sign` path (an `issue` path would
/// have Vault make the key and send it over the wire), it has no `field`, and `params` cannot
/// set what sidekey sends itself.
fn certificate(
    f: &Fields<'_>,
    what: &str,
    key_pos: Pos,
    cred: &mut CredentialConfig,
    e: &mut Errors,
) {
    let Some(n) = f.value("certificate") else {
        return;
    };
    let label = format!("`certificate` of {what}");
    match f.field("path") {
        None => e.error_hint(
            key_pos,
            format!("{what} has no `path`"),
            "name the PKI role's sign endpoint, e.g. path: pki/sign/agent",
        ),
        Some(p) => {
            let path = cred.path.as_deref().unwrap_or_default();
            let segments: Vec<&str> = path.split('/').collect();
            let sign = segments.len() >= 3
                && segments[segments.len() - 2] == "sign"
                && !segments[segments.len() - 1].is_empty();
            if !sign && !path.is_empty() {
                let hint = match path.replace("/issue/", "/sign/") {
                    fixed if fixed != path => format!(
                        "use `{fixed}`: with `sign`, sidekey makes the key and sends only a CSR; with `issue`, Vault would make the key and send it back"
                    ),
                    _ => "name the PKI role's sign endpoint, e.g. path: pki/sign/agent".into(),
                };
                e.error_hint(
                    p.value.pos,
                    format!("`path` of {what} is not a PKI `sign` path: `{path}`"),
                    hint,
                );
            }
        }
    }
    if let Some(field) = f.field("field") {
        e.error_hint(
            field.key.pos,
            format!("`field` does not apply to {what}: it is a `certificate`"),
            "sidekey reads the certificate, its chain and its serial number from the answer; remove `field`",
        );
    }
    if let Some(Value::Map(params)) = f.value("params").map(|n| &n.value) {
        for (key, _) in params {
            if let Value::Str(name) = &key.value {
                if CERTIFICATE_PARAMS.contains(&name.as_str()) {
                    e.error_hint(
                        key.pos,
                        format!("`params.{name}` of {what} is set by sidekey"),
                        "the CSR comes from the key sidekey makes, the names from `certificate`, `ttl` from the credential's `ttl`, and the answer is read as PEM; remove it",
                    );
                }
            }
        }
    }
    let Some(c) = e.map(n, &label) else {
        return;
    };
    e.unknown_keys(&c, &label, CERTIFICATE_KEYS);
    let mut config = crate::CertificateConfig::default();
    match c.value("common_name") {
        Some(v) => {
            if let Some(name) = e.nonempty_string(v, &format!("`common_name` of {label}")) {
                config.common_name = name.to_string();
            }
        }
        None => e.error_hint(
            c.pos,
            format!("{label} has no `common_name`"),
            "name the identity the upstream sees, e.g. common_name: agent.payments.internal",
        ),
    }
    for (key, out) in [
        ("alt_names", &mut config.alt_names),
        ("uri_sans", &mut config.uri_sans),
    ] {
        let Some(v) = c.value(key) else { continue };
        let sub = format!("`{key}` of {label}");
        if let Some(items) = e.list(v, &sub) {
            for item in items {
                if let Some(name) = e.nonempty_string(item, &format!("an entry of {sub}")) {
                    if name.contains(',') {
                        e.error_hint(
                            item.pos,
                            format!("an entry of {sub} contains `,`"),
                            "give one name per entry",
                        );
                    } else {
                        out.push(name.to_string());
                    }
                }
            }
        }
    }
    let per_task = f
        .value("per_task")
        .is_some_and(|n| matches!(n.value, Value::Bool(true)));
    if !per_task {
        let names = std::iter::once(&config.common_name)
            .chain(&config.alt_names)
            .chain(&config.uri_sans);
        if let Some(name) = names
            .into_iter()
            .find(|n| n.contains("{task_id}") || n.contains("{sub}"))
        {
            e.error_hint(
                n.pos,
                format!("{label} names `{name}`, but {what} is not `per_task`"),
                "`{task_id}` and `{sub}` are filled in per task: add `per_task: true`, or write the name out",
            );
        }
    }
    cred.certificate = Some(config);
}

/// A GitHub repository name: letters, digits, `-`, `_`, `.`; at most 100; not `.` or `..`.
fn is_repository_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `per_task`, and what it rules out: an oauth2 issuer without token exchange (its token could
/// name no task), `eager` (there is no task at start) and `subject` (the task's `sub` is the
/// JWT's).
fn per_task(
    f: &Fields<'_>,
    what: &str,
    status: Option<IssuerStatus>,
    cred: &mut CredentialConfig,
    e: &mut Errors,
) {
    let Some(n) = f.value("per_task") else {
        return;
    };
    let Some(per_task) = e.bool(n, &format!("`per_task` of {what}")) else {
        return;
    };
    if per_task
        && status
            == Some(IssuerStatus::OAuth2 {
                token_exchange: false,
            })
    {
        e.error_hint(
            n.pos,
            format!("{what} is `per_task`, but its issuer uses `grant: client_credentials`"),
            "a per-task OAuth2 token is an RFC 8693 token exchange for the task's end user: use an issuer with `grant: token_exchange` (and `task_assertion_issuer` here), or remove `per_task` to share one token among tasks",
        );
        return;
    }
    cred.per_task = per_task;
    if !per_task {
        return;
    }
    if let Some(eager) = f.field("eager").filter(|_| cred.eager) {
        e.error_hint(
            eager.key.pos,
            format!("`eager` does not apply to {what}: it is `per_task`"),
            "a per-task credential is fetched when a task's first request needs it (there is no task at start); remove `eager`",
        );
    }
    if let Some(subject) = f.field("subject") {
        e.error_hint(
            subject.key.pos,
            format!("`subject` does not apply to {what}: it is `per_task`"),
            "the JWT's `sub` is the task grant's `sub` (the agent or sub-agent); remove `subject`",
        );
    }
}

/// `task_assertion_issuer`: required by a `per_task` credential of a token-exchange issuer,
/// meaningless elsewhere (other kinds are refused by their key lists), and the name of a
/// `kind: local` issuer.
fn task_assertion_issuer(
    f: &Fields<'_>,
    what: &str,
    status: Option<IssuerStatus>,
    issuers: &BTreeMap<String, IssuerStatus>,
    cred: &mut CredentialConfig,
    e: &mut Errors,
) {
    let exchange = status
        == Some(IssuerStatus::OAuth2 {
            token_exchange: true,
        });
    let Some(field) = f.field("task_assertion_issuer") else {
        if exchange && cred.per_task {
            let key = f.field("per_task").map_or(f.pos, |p| p.key.pos);
            e.error_hint(
                key,
                format!("{what} is `per_task` and has no `task_assertion_issuer`"),
                format!(
                    "name the `kind: local` issuer whose key signs each task's subject token (the authorization server must trust its JWKS), e.g. task_assertion_issuer: {}",
                    local_issuers(issuers).first().map_or("local", String::as_str)
                ),
            );
        }
        return;
    };
    let Some(name) = e.nonempty_string(field.value, &format!("`task_assertion_issuer` of {what}"))
    else {
        return;
    };
    if !matches!(status, Some(IssuerStatus::OAuth2 { .. })) {
        // Not an oauth2 credential: its key list said so already.
        return;
    }
    // `per_task: true` of a client_credentials issuer has its error already.
    let refused_per_task = f
        .value("per_task")
        .is_some_and(|n| matches!(n.value, Value::Bool(true)));
    if !cred.per_task && !refused_per_task {
        e.error_hint(
            field.key.pos,
            format!("`task_assertion_issuer` of {what} applies to `per_task` credentials only"),
            "add `per_task: true` to exchange a token per task for its end user, or remove it",
        );
    }
    let locals = local_issuers(issuers);
    match issuers.get(name) {
        Some(IssuerStatus::Local) => cred.task_assertion_issuer = Some(name.to_string()),
        // Its own error is reported already.
        Some(IssuerStatus::Invalid) => {}
        Some(other) => e.error_hint(
            field.value.pos,
            format!(
                "`task_assertion_issuer` of {what} must name a `kind: local` issuer; `{name}` is a `{}` issuer",
                other.kind_name()
            ),
            match locals.as_slice() {
                [] => "declare one, e.g. `issuers: { tasks: { kind: local, issuer: sidekey-tasks } }`, and name it here".to_string(),
                some => format!("local issuers: {}", some.join(", ")),
            },
        ),
        None => {
            let known: Vec<&str> = locals.iter().map(String::as_str).collect();
            let hint = match closest(name, &known) {
                Some(best) => format!("did you mean `{best}`?"),
                None if known.is_empty() => format!(
                    "declare it under `issuers:`, e.g. `{name}: {{ kind: local, issuer: sidekey-tasks }}`"
                ),
                None => format!("local issuers: {}", known.join(", ")),
            };
            e.error_hint(
                field.value.pos,
                format!("`task_assertion_issuer` of {what} refers to unknown issuer `{name}`"),
                hint,
            );
        }
    }
}

/// The names of the `kind: local` issuers, sorted.
fn local_issuers(issuers: &BTreeMap<String, IssuerStatus>) -> Vec<String> {
    issuers
        .iter()
        .filter(|(_, s)| **s == IssuerStatus::Local)
        .map(|(n, _)| n.clone())
        .collect()
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
