//! `cedar:` — Cedar policies as a gate after route matching (the files are read and checked
//! where the runtime is built, and by `sidekey check`: `sidekey_policy::CedarGate::load`).

use std::path::PathBuf;

use crate::check::Errors;
use crate::yaml::Node;

const CEDAR_KEYS: &[&str] = &["policies", "schema", "headers"];

/// Headers that carry credentials or grants: never handed to policies.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-sidekey-grant",
];

/// `cedar:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CedarConfig {
    /// The policy file (Cedar policy syntax).
    pub policies: PathBuf,
    /// The schema file (Cedar schema syntax) the policies and every request are validated
    /// against; None: not validated.
    pub schema: Option<PathBuf>,
    /// Request headers given to the policies as `context.headers` (lower-case names).
    pub headers: Vec<String>,
}

pub(crate) fn cedar(node: &Node, e: &mut Errors) -> Option<CedarConfig> {
    let f = e.fields(node, "`cedar`", CEDAR_KEYS)?;
    let policies = match f.value("policies") {
        Some(n) => e.path(n, "`cedar.policies`"),
        None => {
            e.error_hint(
                f.pos,
                "`cedar` has no `policies`",
                "name the Cedar policy file, e.g. policies: /etc/sidekey/policies.cedar",
            );
            None
        }
    };
    let schema = f.value("schema").and_then(|n| e.path(n, "`cedar.schema`"));
    let mut headers = Vec::new();
    if let Some(list) = f.value("headers") {
        for n in e.list(list, "`cedar.headers`").unwrap_or_default() {
            let Some(name) = e.nonempty_string(n, "a header of `cedar.headers`") else {
                continue;
            };
            let name = name.to_ascii_lowercase();
            if !sidekey_policy::is_token(&name) {
                e.error(
                    n.pos,
                    format!("`{name}` in `cedar.headers` is not a header name"),
                );
            } else if SECRET_HEADERS.contains(&name.as_str()) {
                e.error_hint(
                    n.pos,
                    format!("`{name}` cannot be given to Cedar policies"),
                    "it carries a credential or a grant; policies see the grant's claims as \
                     context.task, context.user and context.act",
                );
            } else if !headers.contains(&name) {
                headers.push(name);
            }
        }
    }
    Some(CedarConfig {
        policies: policies?,
        schema,
        headers,
    })
}
