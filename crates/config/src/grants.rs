//! `grants:` — task grants: which keys may sign them, the audience this sidekey accepts, whether
//! every request needs one, and the longest lifetime one may have.

use std::path::PathBuf;
use std::time::Duration;

use crate::check::Errors;
use crate::yaml::Node;
use crate::Endpoint;

const GRANTS_KEYS: &[&str] = &["audience", "required", "max_ttl", "trusted"];
const TRUSTED_KEYS: &[&str] = &["jwks_file", "jwks_url", "ca_file", "refresh"];

/// A grant may live at most this long by default (`exp` − `iat`).
pub const DEFAULT_GRANT_MAX_TTL: Duration = Duration::from_secs(60 * 60);
const MAX_GRANT_MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How often a `jwks_url` is fetched again by default.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(5 * 60);

/// `grants:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantsConfig {
    /// The `aud` a grant must name to be accepted here: a grant minted for another sidekey is
    /// worthless to this one.
    pub audience: String,
    /// Every request (and CONNECT) needs a valid grant; without one it gets
    /// `407 grant_required`.
    pub required: bool,
    /// The longest life a grant may have (`exp` − `iat`); longer ones are refused.
    pub max_ttl: Duration,
    /// Keys trusted to sign root grants (sidekey's own in-memory key signs child grants).
    pub trusted: Vec<TrustedKeys>,
}

/// One source of keys that sign root grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustedKeys {
    /// A JWKS document on disk (public keys only), read at start and at each reload.
    JwksFile(PathBuf),
    /// A JWKS served over HTTPS (e.g. by the orchestrator that starts tasks), fetched at start
    /// and every `refresh`.
    JwksUrl {
        url: Endpoint,
        ca_file: Option<PathBuf>,
        refresh: Duration,
    },
}

pub(crate) fn grants(node: &Node, e: &mut Errors) -> Option<GrantsConfig> {
    let f = e.fields(node, "`grants`", GRANTS_KEYS)?;
    let audience = match f.value("audience") {
        Some(n) => e
            .nonempty_string(n, "`grants.audience`")
            .map(str::to_string),
        None => {
            e.error_hint(
                f.pos,
                "`grants` has no `audience`",
                "name this sidekey, e.g. audience: sidekey-payments-agent; a grant must carry it \
                 in `aud`, so that a grant leaked from here is worthless at any other sidekey",
            );
            None
        }
    };
    let required = match f.value("required") {
        Some(n) => e.bool(n, "`grants.required`").unwrap_or(false),
        None => false,
    };
    let max_ttl = match f.value("max_ttl") {
        Some(n) => match e.duration(n, "`grants.max_ttl`") {
            Some(d) if d.is_zero() || d > MAX_GRANT_MAX_TTL => {
                e.error_hint(
                    n.pos,
                    "`grants.max_ttl` must be between 1s and 24h",
                    "grants name one task: minutes to hours, e.g. max_ttl: 1h",
                );
                DEFAULT_GRANT_MAX_TTL
            }
            Some(d) => d,
            None => DEFAULT_GRANT_MAX_TTL,
        },
        None => DEFAULT_GRANT_MAX_TTL,
    };
    let mut trusted = Vec::new();
    match f.value("trusted") {
        Some(n) => {
            if let Some(list) = e.list(n, "`grants.trusted`") {
                if list.is_empty() {
                    e.error_hint(n.pos, "`grants.trusted` is empty", TRUSTED_HINT);
                }
                for (i, item) in list.iter().enumerate() {
                    if let Some(t) = trusted_keys(item, &format!("`grants.trusted[{i}]`"), e) {
                        trusted.push(t);
                    }
                }
            }
        }
        None => e.error_hint(f.pos, "`grants` has no `trusted` keys", TRUSTED_HINT),
    }
    Some(GrantsConfig {
        audience: audience?,
        required,
        max_ttl,
        trusted,
    })
}

const TRUSTED_HINT: &str =
    "name who signs root grants: `- jwks_file: /etc/sidekey/grant-jwks.json` \
     (made by `sidekey grant keygen`) or `- jwks_url: https://orchestrator/.well-known/jwks.json`";

fn trusted_keys(node: &Node, what: &str, e: &mut Errors) -> Option<TrustedKeys> {
    let f = e.fields(node, what, TRUSTED_KEYS)?;
    match (f.value("jwks_file"), f.value("jwks_url")) {
        (Some(file), None) => {
            for key in ["ca_file", "refresh"] {
                if let Some(field) = f.field(key) {
                    e.error_hint(
                        field.key.pos,
                        format!("`{key}` in {what} goes with `jwks_url` only"),
                        "a jwks_file is read at start and at each reload",
                    );
                }
            }
            e.path(file, &format!("`jwks_file` of {what}"))
                .map(TrustedKeys::JwksFile)
        }
        (None, Some(url)) => {
            let url = crate::issuers::endpoint(url, &format!("`jwks_url` of {what}"), e);
            let ca_file = f
                .value("ca_file")
                .and_then(|n| e.path(n, &format!("`ca_file` of {what}")));
            let refresh = match f.value("refresh") {
                Some(n) => match e.duration(n, &format!("`refresh` of {what}")) {
                    Some(d) if d < Duration::from_secs(10) => {
                        e.error_hint(
                            n.pos,
                            format!("`refresh` of {what} must be at least 10s"),
                            "keys change rarely; an unknown key also triggers a fetch",
                        );
                        DEFAULT_JWKS_REFRESH
                    }
                    Some(d) => d,
                    None => DEFAULT_JWKS_REFRESH,
                },
                None => DEFAULT_JWKS_REFRESH,
            };
            Some(TrustedKeys::JwksUrl {
                url: url?,
                ca_file,
                refresh,
            })
        }
        (Some(_), Some(_)) => {
            e.error_hint(
                f.pos,
                format!("{what} has both `jwks_file` and `jwks_url`"),
                "one source per entry: write two entries",
            );
            None
        }
        (None, None) => {
            e.error_hint(f.pos, format!("{what} names no keys"), TRUSTED_HINT);
            None
        }
    }
}
