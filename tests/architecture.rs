//! The crate map's dependency rules (docs/architecture.md, "Crates"), checked against what
//! cargo resolves: a test fails the day a pure crate gains a runtime dependency or a crate
//! starts to depend on one it must not.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

/// Crates that do I/O or run tasks: an async runtime, sockets, TLS, HTTP clients and servers.
const RUNTIME: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "hyper",
    "hyper-util",
    "h2",
    "reqwest",
    "rustls",
    "tokio-rustls",
    "hyper-rustls",
    "hickory-resolver",
    "async-compression",
    "futures-util",
];

/// The resolved normal (non-dev, non-build) dependency graph for this host, by package name.
struct Graph {
    deps: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    fn load() -> Graph {
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let version = Command::new(&rustc).arg("-vV").output().expect("rustc -vV");
        let version = String::from_utf8_lossy(&version.stdout);
        let host = version
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .expect("rustc -vV names the host");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let run = |offline: bool| {
            let mut command = Command::new(&cargo);
            command
                .args([
                    "metadata",
                    "--format-version",
                    "1",
                    "--filter-platform",
                    host,
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if offline {
                command.arg("--offline");
            }
            command.output().expect("cargo metadata")
        };
        // Offline first: everything a build needed is already here.
        let mut output = run(true);
        if !output.status.success() {
            output = run(false);
        }
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
        let name_of = |id: &str| -> String {
            // `path+file:///…/crates/inject#sidekey-inject@0.1.0`, `registry+…#tokio@1.54.1`
            let tail = id.rsplit('#').next().unwrap_or(id);
            tail.split('@').next().unwrap_or(tail).to_string()
        };
        let mut deps: HashMap<String, BTreeSet<String>> = HashMap::new();
        for node in metadata["resolve"]["nodes"]
            .as_array()
            .expect("resolve nodes")
        {
            let name = name_of(node["id"].as_str().expect("node id"));
            let entry = deps.entry(name).or_default();
            for dep in node["deps"].as_array().expect("deps") {
                let normal = dep["dep_kinds"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()));
                if normal {
                    entry.insert(name_of(dep["pkg"].as_str().expect("dep pkg")));
                }
            }
        }
        Graph { deps }
    }

    /// Every package `root` links (normal dependencies, transitively), not descending into
    /// packages for which `skip` is true.
    fn closure(&self, root: &str, skip: impl Fn(&str) -> bool) -> BTreeSet<String> {
        assert!(self.deps.contains_key(root), "no package {root}");
        let mut seen = BTreeSet::new();
        let mut stack = vec![root.to_string()];
        while let Some(name) = stack.pop() {
            for dep in self.deps.get(&name).into_iter().flatten() {
                if !skip(dep) && seen.insert(dep.clone()) {
                    stack.push(dep.clone());
                }
            }
        }
        seen
    }

    fn links(&self, root: &str) -> BTreeSet<String> {
        self.closure(root, |_| false)
    }
}

fn forbidden<'a>(links: &'a BTreeSet<String>, names: &[&str]) -> Vec<&'a str> {
    links
        .iter()
        .filter(|l| names.contains(&l.as_str()))
        .map(String::as_str)
        .collect()
}

#[test]
fn pure_crates_link_no_runtime() {
    let graph = Graph::load();
    for pure in ["sidekey-policy", "sidekey-config", "sidekey-secret"] {
        let links = graph.links(pure);
        let bad = forbidden(&links, RUNTIME);
        assert!(
            bad.is_empty(),
            "{pure} must stay pure (no I/O, no runtime) but links {bad:?}"
        );
    }
    // The one type that holds secrets depends on nothing but zeroize (and, through the
    // workspace's `zeroize_derive` feature, the proc-macro crates its derive is built with).
    let secret = graph.links("sidekey-secret");
    let macros = ["proc-macro2", "quote", "syn", "unicode-ident"];
    let other: Vec<&String> = secret
        .iter()
        .filter(|d| !d.starts_with("zeroize") && !macros.contains(&d.as_str()))
        .collect();
    assert!(other.is_empty(), "sidekey-secret links {other:?}");
}

#[test]
fn sidekey_crates_depend_one_way() {
    let graph = Graph::load();
    // (crate, crates it must never link)
    let rules: &[(&str, &[&str])] = &[
        (
            "sidekey-policy",
            &["sidekey-config", "sidekey-credentials", "sidekey-proxy"],
        ),
        (
            "sidekey-config",
            &["sidekey-credentials", "sidekey-proxy", "sidekey-tls"],
        ),
        (
            "sidekey-credentials",
            &[
                "sidekey-proxy",
                "sidekey-body",
                "sidekey-admin",
                "sidekey-grants",
            ],
        ),
        (
            "sidekey-inject",
            &["sidekey-credentials", "sidekey-proxy", "reqwest"],
        ),
        (
            "sidekey-body",
            &["sidekey-credentials", "sidekey-proxy", "sidekey-config"],
        ),
        (
            "sidekey-audit",
            &["sidekey-proxy", "sidekey-credentials", "sidekey-metrics"],
        ),
        // Grants are verified beside the credential store, not through it: a grant names a
        // task, the store issues for it; neither knows the data plane.
        (
            "sidekey-grants",
            &[
                "sidekey-proxy",
                "sidekey-credentials",
                "sidekey-admin",
                "sidekey-audit",
            ],
        ),
        ("sidekey-tls", &["sidekey-proxy", "sidekey-credentials"]),
        // Metrics count what the audit trail takes and what the listeners hold; they know no
        // credential store, grant or data plane (the admin listener hands them the expiries).
        (
            "sidekey-metrics",
            &[
                "sidekey-proxy",
                "sidekey-credentials",
                "sidekey-admin",
                "sidekey-grants",
                "sidekey-config",
            ],
        ),
        // Spans are built from the request's record and trace IDs: the exporter knows no
        // credential store, grant, config or data plane.
        (
            "sidekey-traces",
            &[
                "sidekey-proxy",
                "sidekey-credentials",
                "sidekey-admin",
                "sidekey-grants",
                "sidekey-config",
            ],
        ),
        // Nothing but the data plane and the binary talks to the exporter.
        ("sidekey-audit", &["sidekey-traces"]),
        ("sidekey-metrics", &["sidekey-traces"]),
    ];
    for (krate, never) in rules {
        let links = graph.links(krate);
        let bad = forbidden(&links, never);
        assert!(bad.is_empty(), "{krate} must not link {bad:?}");
    }
}

#[test]
fn header_rewriting_links_no_runtime_of_its_own() {
    let graph = Graph::load();
    // aws-sigv4 (through aws-smithy-async) links tokio for its `sync` types only; nothing else
    // may bring a runtime into the rewriting crate, which is fuzzed on its own.
    let links = graph.closure("sidekey-inject", |name| name.starts_with("aws-"));
    let bad = forbidden(&links, RUNTIME);
    assert!(
        bad.is_empty(),
        "sidekey-inject links {bad:?} outside aws-sigv4"
    );
    // And the rule can fail: the data plane does link a runtime.
    assert!(!forbidden(&graph.links("sidekey-proxy"), RUNTIME).is_empty());
}
