//! What each credential can be used for, from the config: the routes that name it, with their
//! hosts, schemes, ports, methods and paths, and a breadth figure — for `/credentials` and the
//! operator's question "which credential could do the most damage".

use std::collections::HashMap;

use serde_json::{json, Value};
use sidekey_config::Config;
use sidekey_policy::{HostPattern, MethodSet};

/// A route naming a wildcard host, allowing every method, or every path counts as this many.
const WIDE: u64 = 10;
/// RFC 9110's methods, what `methods: "*"` stands for.
const ALL_METHODS: u64 = 9;

/// Each credential's scope, by name. Breadth is a heuristic to sort and flag by, not a
/// measure: for each route using the credential, (exact hosts + 10 per wildcard host) × (its
/// methods, 9 for `"*"`) × (its path globs, 10 for every path), summed over the routes.
pub fn credential_scopes(config: &Config) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for credential in &config.credentials {
        let routes: Vec<_> = config
            .routes
            .iter()
            .filter(|r| {
                let name = Some(credential.name.as_str());
                r.credential.as_deref() == name || r.client_certificate.as_deref() == name
            })
            .collect();
        let mut breadth = 0u64;
        let mut wildcard_hosts = false;
        let mut any_method = false;
        let mut any_path = false;
        let listed: Vec<Value> = routes
            .iter()
            .map(|r| {
                let hosts: u64 = r
                    .hosts
                    .iter()
                    .map(|h| match h {
                        HostPattern::Exact(_) => 1,
                        HostPattern::Suffix(_) => {
                            wildcard_hosts = true;
                            WIDE
                        }
                    })
                    .sum();
                let methods = match &r.methods {
                    MethodSet::Any => {
                        any_method = true;
                        ALL_METHODS
                    }
                    MethodSet::List(list) => list.len() as u64,
                };
                let paths = if r.paths.is_empty() {
                    any_path = true;
                    WIDE
                } else {
                    r.paths.len() as u64
                };
                breadth += hosts * methods * paths;
                json!({
                    "route": r.name,
                    "hosts": r.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "schemes": r.schemes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                    "ports": r.ports,
                    "methods": match &r.methods {
                        MethodSet::Any => vec!["*".to_string()],
                        MethodSet::List(list) => list.clone(),
                    },
                    "paths": if r.paths.is_empty() {
                        vec!["/**".to_string()]
                    } else {
                        r.paths.iter().map(|p| p.as_str().to_string()).collect()
                    },
                })
            })
            .collect();
        out.insert(
            credential.name.clone(),
            json!({
                "routes": listed,
                "breadth": breadth,
                "wildcard_hosts": wildcard_hosts,
                "any_method": any_method,
                "any_path": any_path,
            }),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breadth_grows_with_hosts_methods_and_paths() {
        let config = sidekey_config::parse(
            r#"
issuers: { local: { kind: local } }
credentials:
  narrow: { issuer: local, audience: a }
  wide: { issuer: local, audience: a }
  unused: { issuer: local, audience: a }
routes:
  - { name: n, hosts: [api.example.com], methods: [GET], paths: ["/v1/items"], credential: narrow, inject: { header: Authorization, value: "Bearer {token}" } }
  - { name: w, hosts: ["*.example.com", api.example.org], methods: ["*"], credential: wide, inject: { header: Authorization, value: "Bearer {token}" } }
"#,
            "test",
        )
        .unwrap();
        let scopes = credential_scopes(&config);
        assert_eq!(scopes["narrow"]["breadth"], 1);
        assert_eq!(scopes["wide"]["breadth"], (10 + 1) * 9 * 10);
        assert_eq!(scopes["wide"]["wildcard_hosts"], true);
        assert_eq!(scopes["wide"]["routes"][0]["paths"], json!(["/**"]));
        assert_eq!(scopes["unused"]["routes"], json!([]));
        assert_eq!(scopes["unused"]["breadth"], 0);
    }
}
