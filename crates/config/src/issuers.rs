//! Issuers that talk to something: `vault`, `oauth2`, `aws-sts`, `github-app`. Each is checked in full (URLs,
//! auth methods, files it needs) so that a typo is a start-up error with a line and column, not
//! a 503 at the first request.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sidekey_policy::{Authority, CanonicalHost};

use crate::check::{closest, Errors, Fields};
use crate::yaml::Node;
use crate::{
    AwsStsIssuerConfig, ClientAuth, Endpoint, GitHubAppIssuerConfig, IdentityConfig, OAuth2Grant,
    OAuth2IssuerConfig, PrivateKeySource, VaultAuth, VaultIssuerConfig, VaultJwtMethod,
};

const VAULT_KEYS: &[&str] = &["kind", "address", "namespace", "ca_file", "auth"];
const VAULT_AUTH_KEYS: &[&str] = &[
    "method",
    "mount",
    "role",
    "token_file",
    "role_id_file",
    "secret_id_file",
];
const VAULT_METHODS: &[&str] = &["jwt", "kubernetes", "approle"];
const OAUTH2_KEYS: &[&str] = &[
    "kind",
    "token_url",
    "grant",
    "client_id",
    "client_secret_file",
    "client_secret_auth",
    "private_key_file",
    "key_id",
    "subject_token_file",
    "actor_token_file",
    "ca_file",
];
const OAUTH2_GRANTS: &[&str] = &["client_credentials", "token_exchange"];
const AWS_KEYS: &[&str] = &[
    "kind",
    "role_arn",
    "region",
    "endpoint",
    "session_name",
    "token_file",
];

const GITHUB_APP_KEYS: &[&str] = &[
    "kind",
    "app_id",
    "installation_id",
    "api_url",
    "ca_file",
    "private_key",
];
const PRIVATE_KEY_KEYS: &[&str] = &["vault", "path", "field", "file"];
const GITHUB_API: &str = "https://api.github.com";

/// `kind: github-app`. `declared` is every issuer's `kind` by name: the private key may be read
/// through a `kind: vault` issuer declared anywhere in `issuers`.
pub(crate) fn github_app(
    f: &Fields<'_>,
    what: &str,
    declared: &BTreeMap<&str, Option<&str>>,
    e: &mut Errors,
) -> Option<GitHubAppIssuerConfig> {
    e.unknown_keys(f, what, GITHUB_APP_KEYS);
    let id = |e: &mut Errors, key: &str, hint: &str| -> Option<u64> {
        match f.value(key) {
            Some(n) => e
                .int_in(n, &format!("`{key}` of {what}"), 1, i64::MAX)
                .and_then(|v| u64::try_from(v).ok()),
            None => {
                e.error_hint(f.pos, format!("{what} has no `{key}`"), hint.to_string());
                None
            }
        }
    };
    let app_id = id(
        e,
        "app_id",
        "give the App's ID (its settings page, \"App ID\"), e.g. app_id: 12345",
    );
    let installation_id = id(
        e,
        "installation_id",
        "give the ID of the App's installation on the account, e.g. installation_id: 678 (from /settings/installations/<id>)",
    );
    let api_url = match f.value("api_url") {
        Some(n) => endpoint(n, &format!("`api_url` of {what}"), e),
        None => Some(Endpoint {
            url: GITHUB_API.to_string(),
        }),
    };
    let ca_file = f
        .value("ca_file")
        .and_then(|n| e.path(n, &format!("`ca_file` of {what}")));
    let private_key = match f.value("private_key") {
        Some(n) => private_key(n, what, declared, e),
        None => {
            e.error_hint(
                f.pos,
                format!("{what} has no `private_key`"),
                "say where the App's key is read: private_key: { vault: <vault issuer>, path: secret/data/github-app, field: private_key } (or { file: key.pem } for development)",
            );
            None
        }
    };
    Some(GitHubAppIssuerConfig {
        app_id: app_id?,
        installation_id: installation_id?,
        api_url: api_url?,
        ca_file,
        private_key: private_key?,
    })
}

/// `private_key: { vault, path, field }` or `private_key: { file }`.
fn private_key(
    node: &Node,
    issuer: &str,
    declared: &BTreeMap<&str, Option<&str>>,
    e: &mut Errors,
) -> Option<PrivateKeySource> {
    let what = format!("`private_key` of {issuer}");
    let f = e.fields(node, &what, PRIVATE_KEY_KEYS)?;
    match (f.field("vault"), f.field("file")) {
        (Some(_), Some(file)) => {
            e.error_hint(
                file.key.pos,
                format!("{what} has both `vault` and `file`"),
                "keep one: `vault` (with `path` and `field`) in production, `file` for development",
            );
            None
        }
        (None, None) => {
            e.error_hint(
                f.pos,
                format!("{what} has neither `vault` nor `file`"),
                "e.g. private_key: { vault: bao, path: secret/data/github-app, field: private_key }",
            );
            None
        }
        (None, Some(file)) => {
            for key in ["path", "field"] {
                if let Some(field) = f.field(key) {
                    e.error_hint(
                        field.key.pos,
                        format!("`{key}` in {what} applies to `vault` only"),
                        "remove it: a `file` holds the PEM key itself",
                    );
                }
            }
            e.path(file.value, &format!("`file` of {what}"))
                .map(PrivateKeySource::File)
        }
        (Some(vault), None) => {
            let name = e.nonempty_string(vault.value, &format!("`vault` of {what}"));
            let name = name.and_then(|name| match declared.get(name) {
                Some(Some("vault")) => Some(name.to_string()),
                // An issuer with no or a wrong kind has its own error.
                Some(None) => None,
                Some(Some(kind)) => {
                    e.error_hint(
                        vault.value.pos,
                        format!("`vault` of {what} must name a `kind: vault` issuer; `{name}` is a `{kind}` issuer"),
                        vault_issuers_hint(declared),
                    );
                    None
                }
                None => {
                    let vaults: Vec<&str> = vault_issuers(declared);
                    let hint = match closest(name, &vaults) {
                        Some(best) => format!("did you mean `{best}`?"),
                        None => vault_issuers_hint(declared),
                    };
                    e.error_hint(
                        vault.value.pos,
                        format!("`vault` of {what} refers to unknown issuer `{name}`"),
                        hint,
                    );
                    None
                }
            });
            let mut text = |key: &str, hint: &str| -> Option<String> {
                match f.value(key) {
                    Some(n) => e
                        .nonempty_string(n, &format!("`{key}` of {what}"))
                        .map(|s| s.trim_matches('/').to_string()),
                    None => {
                        e.error_hint(f.pos, format!("{what} has no `{key}`"), hint.to_string());
                        None
                    }
                }
            };
            let path = text(
                "path",
                "give the API path of the secret, e.g. path: secret/data/github-app (KV v2)",
            );
            let field = text(
                "field",
                "name the field holding the PEM key, e.g. field: private_key",
            );
            Some(PrivateKeySource::Vault {
                issuer: name?,
                path: path?,
                field: field?,
            })
        }
    }
}

/// The declared `kind: vault` issuers, sorted.
fn vault_issuers<'a>(declared: &BTreeMap<&'a str, Option<&str>>) -> Vec<&'a str> {
    declared
        .iter()
        .filter(|(_, k)| **k == Some("vault"))
        .map(|(n, _)| *n)
        .collect()
}

fn vault_issuers_hint(declared: &BTreeMap<&str, Option<&str>>) -> String {
    match vault_issuers(declared).as_slice() {
        [] => "declare one, e.g. `bao: { kind: vault, address: https://vault.internal:8200, auth: { method: jwt, role: sidekey } }`, and name it here".to_string(),
        some => format!("vault issuers: {}", some.join(", ")),
    }
}

/// `kind: vault`.
pub(crate) fn vault(
    f: &Fields<'_>,
    what: &str,
    identity: Option<&IdentityConfig>,
    e: &mut Errors,
) -> Option<VaultIssuerConfig> {
    e.unknown_keys(f, what, VAULT_KEYS);
    let address = match f.value("address") {
        Some(n) => endpoint(n, &format!("`address` of {what}"), e),
        None => {
            e.error_hint(
                f.pos,
                format!("{what} has no `address`"),
                "give the Vault/OpenBao URL, e.g. address: https://vault.internal:8200",
            );
            None
        }
    };
    let namespace = f.value("namespace").and_then(|n| {
        e.nonempty_string(n, &format!("`namespace` of {what}"))
            .map(|s| s.trim_matches('/').to_string())
    });
    let ca_file = f
        .value("ca_file")
        .and_then(|n| e.path(n, &format!("`ca_file` of {what}")));
    let auth = match f.value("auth") {
        Some(n) => vault_auth(n, what, identity, e),
        None => {
            e.error_hint(
                f.pos,
                format!("{what} has no `auth`"),
                "say how sidekey logs in, e.g. auth: { method: jwt, role: agent }",
            );
            None
        }
    };
    Some(VaultIssuerConfig {
        address: address?,
        namespace,
        ca_file,
        auth: auth?,
    })
}

fn vault_auth(
    node: &Node,
    issuer: &str,
    identity: Option<&IdentityConfig>,
    e: &mut Errors,
) -> Option<VaultAuth> {
    let what = format!("`auth` of {issuer}");
    let f = e.fields(node, &what, VAULT_AUTH_KEYS)?;
    let Some(method_node) = f.value("method") else {
        e.error_hint(
            f.pos,
            format!("{what} has no `method`"),
            "use `method: jwt`, `kubernetes` or `approle`",
        );
        return None;
    };
    let method = e.string(method_node, &format!("`method` of {what}"))?;
    if !VAULT_METHODS.contains(&method) {
        let hint = match closest(method, VAULT_METHODS) {
            Some(best) => format!("did you mean `{best}`?"),
            None => "supported methods: jwt, kubernetes, approle".to_string(),
        };
        e.error_hint(
            method_node.pos,
            format!("unknown Vault auth method `{method}`"),
            hint,
        );
        return None;
    }
    let mount = match f.value("mount") {
        Some(n) => e
            .nonempty_string(n, &format!("`mount` of {what}"))
            .map(|m| m.trim_matches('/').to_string())?,
        None => method.to_string(),
    };
    let not_for = |e: &mut Errors, key: &str, why: &str| {
        if let Some(field) = f.field(key) {
            e.error_hint(
                field.key.pos,
                format!("`{key}` does not apply to `method: {method}` in {what}"),
                why.to_string(),
            );
        }
    };
    if method == "approle" {
        not_for(
            e,
            "role",
            "approle logs in with role_id_file and secret_id_file",
        );
        not_for(
            e,
            "token_file",
            "approle logs in with role_id_file and secret_id_file",
        );
        let file = |e: &mut Errors, key: &str| -> Option<PathBuf> {
            match f.value(key) {
                Some(n) => e.path(n, &format!("`{key}` of {what}")),
                None => {
                    e.error_hint(
                        f.pos,
                        format!("{what} with `method: approle` has no `{key}`"),
                        "approle needs role_id_file and secret_id_file (files holding the IDs)",
                    );
                    None
                }
            }
        };
        let role_id_file = file(e, "role_id_file");
        let secret_id_file = file(e, "secret_id_file");
        return Some(VaultAuth::AppRole {
            mount,
            role_id_file: role_id_file?,
            secret_id_file: secret_id_file?,
        });
    }
    not_for(e, "role_id_file", "role_id_file is for `method: approle`");
    not_for(
        e,
        "secret_id_file",
        "secret_id_file is for `method: approle`",
    );
    let role = match f.value("role") {
        Some(n) => e
            .nonempty_string(n, &format!("`role` of {what}"))
            .map(str::to_string),
        None => {
            e.error_hint(
                f.pos,
                format!("{what} has no `role`"),
                format!("give the Vault role sidekey logs in as with `method: {method}`, e.g. role: agent"),
            );
            None
        }
    };
    let token_file = token_file(&f, &what, identity, e);
    Some(VaultAuth::Jwt {
        method: if method == "kubernetes" {
            VaultJwtMethod::Kubernetes
        } else {
            VaultJwtMethod::Jwt
        },
        mount,
        role: role?,
        token_file: token_file?,
    })
}

/// The issuer's own `token_file`, else `identity.token_file`, else an error.
fn token_file(
    f: &Fields<'_>,
    what: &str,
    identity: Option<&IdentityConfig>,
    e: &mut Errors,
) -> Option<PathBuf> {
    token_file_key(f, "token_file", what, identity, e)
}

fn token_file_key(
    f: &Fields<'_>,
    key: &str,
    what: &str,
    identity: Option<&IdentityConfig>,
    e: &mut Errors,
) -> Option<PathBuf> {
    if let Some(n) = f.value(key) {
        return e.path(n, &format!("`{key}` of {what}"));
    }
    if let Some(id) = identity {
        return Some(id.token_file.clone());
    }
    e.error_hint(
        f.pos,
        format!("{what} needs an identity token, and there is no `identity.token_file`"),
        format!("add `identity: {{ token_file: /var/run/secrets/sidekey/token }}` at the top level, or `{key}:` here"),
    );
    None
}

/// `kind: oauth2`.
pub(crate) fn oauth2(
    f: &Fields<'_>,
    what: &str,
    identity: Option<&IdentityConfig>,
    e: &mut Errors,
) -> Option<OAuth2IssuerConfig> {
    e.unknown_keys(f, what, OAUTH2_KEYS);
    let token_url = match f.value("token_url") {
        Some(n) => endpoint(n, &format!("`token_url` of {what}"), e),
        None => {
            e.error_hint(
                f.pos,
                format!("{what} has no `token_url`"),
                "give the token endpoint, e.g. token_url: https://idp.internal/oauth2/token",
            );
            None
        }
    };
    let grant_name = match f.value("grant") {
        Some(n) => {
            let g = e.string(n, &format!("`grant` of {what}"));
            match g {
                Some(g) if OAUTH2_GRANTS.contains(&g) => Some(g),
                Some(g) => {
                    let hint = match closest(
                        g,
                        &[
                            "client_credentials",
                            "token_exchange",
                            "token-exchange",
                            "client-credentials",
                        ],
                    ) {
                        Some(best) => format!("did you mean `{}`?", best.replace('-', "_")),
                        None => "use `client_credentials` or `token_exchange` (RFC 8693)".into(),
                    };
                    e.error_hint(n.pos, format!("unknown OAuth2 grant `{g}`"), hint);
                    None
                }
                None => None,
            }
        }
        None => {
            e.error_hint(
                f.pos,
                format!("{what} has no `grant`"),
                "use `grant: client_credentials` or `grant: token_exchange`",
            );
            None
        }
    };
    let client_id = match f.value("client_id") {
        Some(n) => e
            .nonempty_string(n, &format!("`client_id` of {what}"))
            .map(str::to_string),
        None => {
            e.error_hint(
                f.pos,
                format!("{what} has no `client_id`"),
                "give the OAuth2 client sidekey authenticates as",
            );
            None
        }
    };
    let ca_file = f
        .value("ca_file")
        .and_then(|n| e.path(n, &format!("`ca_file` of {what}")));

    // Client authentication: a secret or a key, never both.
    let secret = f.field("client_secret_file");
    let key = f.field("private_key_file");
    let client_auth = match (secret, key) {
        (Some(s), Some(k)) => {
            let _ = s;
            e.error_hint(
                k.key.pos,
                format!("{what} has both `client_secret_file` and `private_key_file`"),
                "keep one: a client secret (client_secret_basic/post) or a private key (private_key_jwt)",
            );
            None
        }
        (Some(s), None) => {
            let path = e.path(s.value, &format!("`client_secret_file` of {what}"));
            let post = match f.value("client_secret_auth") {
                None => Some(false),
                Some(n) => match e.string(n, &format!("`client_secret_auth` of {what}")) {
                    Some("basic") => Some(false),
                    Some("post") => Some(true),
                    Some(other) => {
                        e.error_hint(
                            n.pos,
                            format!("unknown `client_secret_auth` `{other}` in {what}"),
                            "use `basic` (client_secret_basic, the default) or `post` (client_secret_post)",
                        );
                        None
                    }
                    None => None,
                },
            };
            match (path, post) {
                (Some(p), Some(true)) => Some(ClientAuth::SecretPost(p)),
                (Some(p), Some(false)) => Some(ClientAuth::SecretBasic(p)),
                _ => None,
            }
        }
        (None, Some(k)) => {
            if let Some(field) = f.field("client_secret_auth") {
                e.error_hint(
                    field.key.pos,
                    format!("`client_secret_auth` in {what} applies to `client_secret_file` only"),
                    "remove it: a private key authenticates with a signed client assertion",
                );
            }
            let key_id = f.value("key_id").and_then(|n| {
                e.nonempty_string(n, &format!("`key_id` of {what}"))
                    .map(str::to_string)
            });
            e.path(k.value, &format!("`private_key_file` of {what}"))
                .map(|key_file| ClientAuth::PrivateKeyJwt { key_file, key_id })
        }
        (None, None) => {
            for key in ["client_secret_auth", "key_id"] {
                if let Some(field) = f.field(key) {
                    e.error_hint(
                        field.key.pos,
                        format!(
                            "`{key}` in {what} needs a `client_secret_file` or `private_key_file`"
                        ),
                        "remove it, or give the credential it describes",
                    );
                }
            }
            Some(ClientAuth::None)
        }
    };
    if let Some(field) = f.field("key_id") {
        if secret.is_some() && key.is_none() {
            e.error_hint(
                field.key.pos,
                format!("`key_id` in {what} applies to `private_key_file` only"),
                "remove it",
            );
        }
    }

    let grant = match grant_name {
        Some("client_credentials") => {
            for key in ["subject_token_file", "actor_token_file"] {
                if let Some(field) = f.field(key) {
                    e.error_hint(
                        field.key.pos,
                        format!("`{key}` in {what} applies to `grant: token_exchange` only"),
                        "remove it, or use `grant: token_exchange`",
                    );
                }
            }
            if client_auth == Some(ClientAuth::None) {
                e.error_hint(
                    f.pos,
                    format!("{what} uses client_credentials but has no client credential"),
                    "add `client_secret_file` or `private_key_file`",
                );
            }
            Some(OAuth2Grant::ClientCredentials)
        }
        Some(_) => {
            let subject = token_file_key(f, "subject_token_file", what, identity, e);
            let actor = f
                .value("actor_token_file")
                .and_then(|n| e.path(n, &format!("`actor_token_file` of {what}")));
            subject.map(|subject_token_file| OAuth2Grant::TokenExchange {
                subject_token_file,
                actor_token_file: actor,
            })
        }
        None => None,
    };
    Some(OAuth2IssuerConfig {
        token_url: token_url?,
        grant: grant?,
        client_id: client_id?,
        client_auth: client_auth?,
        ca_file,
    })
}

/// `kind: aws-sts`.
pub(crate) fn aws_sts(
    f: &Fields<'_>,
    what: &str,
    identity: Option<&IdentityConfig>,
    e: &mut Errors,
) -> Option<AwsStsIssuerConfig> {
    e.unknown_keys(f, what, AWS_KEYS);
    let role_arn = match f.value("role_arn") {
        Some(n) => {
            let arn = e.nonempty_string(n, &format!("`role_arn` of {what}"));
            arn.and_then(|arn| {
                if is_role_arn(arn) {
                    Some(arn.to_string())
                } else {
                    e.error_hint(
                        n.pos,
                        format!("`role_arn` of {what} is not an IAM role ARN: `{arn}`"),
                        "e.g. arn:aws:iam::123456789012:role/agent",
                    );
                    None
                }
            })
        }
        None => {
            e.error_hint(
                f.pos,
                format!("{what} has no `role_arn`"),
                "give the role to assume, e.g. role_arn: arn:aws:iam::123456789012:role/agent",
            );
            None
        }
    };
    let region = match f.value("region") {
        Some(n) => region(n, &format!("`region` of {what}"), e),
        None => {
            e.error_hint(
                f.pos,
                format!("{what} has no `region`"),
                "e.g. region: us-east-1",
            );
            None
        }
    };
    let endpoint = match f.value("endpoint") {
        Some(n) => endpoint(n, &format!("`endpoint` of {what}"), e).map(Some),
        None => Some(None),
    };
    let session_name = match f.value("session_name") {
        Some(n) => e
            .nonempty_string(n, &format!("`session_name` of {what}"))
            .and_then(|s| {
                let shown = s.replace("{pod}", "");
                if shown
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c))
                {
                    Some(s.to_string())
                } else {
                    e.error_hint(
                        n.pos,
                        format!("`session_name` of {what} has characters AWS does not allow"),
                        "use letters, digits and +=,.@-_ (and `{pod}`)",
                    );
                    None
                }
            }),
        None => Some("sidekey-{pod}".to_string()),
    };
    let token_file = token_file(f, what, identity, e);
    let region = region?;
    let endpoint = endpoint?.unwrap_or_else(|| Endpoint {
        url: format!("https://sts.{region}.amazonaws.com"),
    });
    Some(AwsStsIssuerConfig {
        role_arn: role_arn?,
        region,
        endpoint,
        session_name: session_name?,
        token_file: token_file?,
    })
}

/// `arn:<partition>:iam::<account>:role/<name>`.
fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if partition.starts_with("aws")
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && resource.strip_prefix("role/").is_some_and(|r| !r.is_empty()))
}

/// An AWS region name: lower-case letters, digits and dashes, e.g. `us-east-1`.
pub(crate) fn region(node: &Node, what: &str, e: &mut Errors) -> Option<String> {
    let r = e.nonempty_string(node, what)?;
    let ok = r.len() <= 32
        && r.contains('-')
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        e.error_hint(
            node.pos,
            format!("{what} is not an AWS region: `{r}`"),
            "e.g. us-east-1, eu-west-3",
        );
        return None;
    }
    Some(r.to_string())
}

/// `https://host[:port][/path]`, or `http://` for loopback hosts only: a token must not cross
/// a network in clear text.
pub(crate) fn endpoint(node: &Node, what: &str, e: &mut Errors) -> Option<Endpoint> {
    url(node, what, e, Cleartext::LoopbackOnly)
}

/// Where a URL may use plain `http://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cleartext {
    /// Loopback hosts only: what goes there carries tokens or secrets.
    LoopbackOnly,
    /// Any host: what goes there carries no secret (e.g. spans to a node-local collector).
    Anywhere,
}

/// `https://host[:port][/path]`, or `http://` where `cleartext` allows it.
pub(crate) fn url(
    node: &Node,
    what: &str,
    e: &mut Errors,
    cleartext: Cleartext,
) -> Option<Endpoint> {
    let url = e.nonempty_string(node, what)?;
    let (scheme, rest) = match url.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("https") => ("https", rest),
        Some((s, rest)) if s.eq_ignore_ascii_case("http") => ("http", rest),
        _ => {
            e.error_hint(
                node.pos,
                format!("{what} must be an https:// URL, found `{url}`"),
                "e.g. https://vault.internal:8200",
            );
            return None;
        }
    };
    if rest.contains(['?', '#']) {
        e.error_hint(
            node.pos,
            format!("{what} must not have a query or fragment"),
            "give the base URL only",
        );
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let parsed = match Authority::parse(authority) {
        Ok(a) => a,
        Err(err) => {
            e.error_hint(
                node.pos,
                format!("{what} has an invalid host `{authority}`: {err}"),
                "e.g. https://vault.internal:8200",
            );
            return None;
        }
    };
    if scheme == "http" && cleartext == Cleartext::LoopbackOnly && !is_loopback(&parsed.host) {
        e.error_hint(
            node.pos,
            format!("{what} uses plain http:// to a host that is not loopback"),
            "credentials and identity tokens must not cross the network in clear text: use https://",
        );
        return None;
    }
    Some(Endpoint {
        url: format!("{scheme}://{authority}{}", path.trim_end_matches('/')),
    })
}

fn is_loopback(host: &CanonicalHost) -> bool {
    match host {
        CanonicalHost::Domain(d) => &**d == "localhost",
        CanonicalHost::V4(ip) => ip.is_loopback(),
        CanonicalHost::V6(ip) => ip.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::is_role_arn;

    #[test]
    fn role_arns() {
        assert!(is_role_arn("arn:aws:iam::123456789012:role/agent"));
        assert!(is_role_arn("arn:aws-cn:iam::123456789012:role/path/agent"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:user/agent"));
        assert!(!is_role_arn("arn:aws:iam::12345:role/agent"));
        assert!(!is_role_arn("arn:aws:s3:::bucket"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:role/"));
    }
}
