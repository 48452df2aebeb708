//! `cedar:` — Cedar policies as a gate after route matching (the files are read and checked
//! where the runtime is built, and by `sidekey check`: `sidekey_policy::CedarGate::load`).

use std::path::PathBuf;

use crate::check::Errors;
use crate::yaml::Node;

const CEDAR_KEYS: &[&str] = &["policies", "schema"];

/// `cedar:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CedarConfig {
    /// The policy file (Cedar policy syntax).
    pub policies: PathBuf,
    /// The schema file (Cedar schema syntax) the policies and every request are validated
    /// against; None: not validated.
    pub schema: Option<PathBuf>,
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
    Some(CedarConfig {
        policies: policies?,
        schema,
    })
}
