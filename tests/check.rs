//! `sidekey check FILE`: the effective policy for a good file; every error with
//! `FILE:LINE:COL: error:` and a hint for a bad one. `sidekey run` refuses a bad file the same way.

use std::ffi::OsStr;
use std::path::Path;

use crate::common::sidekey::{repo_root, run_sidekey, substitute};
use crate::common::*;
use regex::Regex;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_a_good_config_and_prints_routes_in_match_order() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "good.yaml",
        &substitute(&default_config(), &env.vars()),
    );
    let out = run_check(&file);
    assert_eq!(
        out.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let pos = |name: &str| {
        out.stdout
            .find(name)
            .unwrap_or_else(|| panic!("{name} not in the effective policy:\n{}", out.stdout))
    };
    let order = [
        pos("api.test.local"),
        pos("other.test.local"),
        pos("paths.test.local"),
        pos("plain.test.local"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "routes not in file order:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("/echo/v1/**"),
        "paths shown:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("demo"),
        "credential shown:\n{}",
        out.stdout
    );
    assert!(!out.stdout.contains("error"), "{}", out.stdout);
}

const BAD: &str = r#"issuers:
  local: { kind: local }
credentials:
  demo: { issuer: local, audience: x }
routes:
  - name: a
    hosts: [a.example.com]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
  - name: b
    hosts: [b.example.com]
    methods: [GET]
    credential: nosuch
    inject: { header: Authorization, value: "Bearer {token}" }
    colour: blue
  - name: a
    hosts: [c.example.com]
    methods: [GET]
listen:
  forward: not-an-address
"#;

struct Diag {
    line: usize,
    col: usize,
    message: String,
}

fn diagnostics(file: &Path, stderr: &str) -> Vec<Diag> {
    let re = Regex::new(&format!(
        r"(?m)^{}:(\d+):(\d+): error: (.+)$",
        regex::escape(&file.display().to_string())
    ))
    .unwrap();
    re.captures_iter(stderr)
        .map(|c| Diag {
            line: c[1].parse().unwrap(),
            col: c[2].parse().unwrap(),
            message: c[3].to_string(),
        })
        .collect()
}

#[track_caller]
fn assert_bad_config_report(file: &Path, stderr: &str) {
    let diags = diagnostics(file, stderr);
    let show = || format!("stderr:\n{stderr}");
    assert!(
        diags.len() >= 5,
        "every error reported at once, got {}: {}",
        diags.len(),
        show()
    );
    let find = |pred: &dyn Fn(&Diag) -> bool, what: &str| {
        assert!(diags.iter().any(pred), "no error for {what}: {}", show());
    };
    find(
        &|d| d.line == 15 && d.col == 5 && d.message.contains("colour"),
        "unknown key `colour` at 15:5",
    );
    find(
        &|d| d.line == 13 && d.message.contains("nosuch"),
        "unknown credential `nosuch` on line 13",
    );
    find(
        &|d| (6..=9).contains(&d.line) && d.message.contains("methods"),
        "route `a` without methods",
    );
    find(
        &|d| {
            let m = d.message.to_lowercase();
            (16..=18).contains(&d.line)
                && ["duplicate", "twice", "already"]
                    .iter()
                    .any(|w| m.contains(w))
        },
        "duplicate route name `a`",
    );
    find(&|d| d.line == 20, "bad listen address on line 20");
    let hints = stderr.lines().filter(|l| l.starts_with("  hint: ")).count();
    assert!(hints >= 1, "errors come with hints: {}", show());
}

#[test]
fn check_reports_every_error_with_line_column_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.yaml", BAD);
    let out = run_check(&file);
    assert_eq!(
        out.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert_bad_config_report(&file, &out.stderr);
}

#[test]
fn run_refuses_an_invalid_config_with_the_same_report() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.yaml", BAD);
    let out = run_sidekey(&[OsStr::new("run"), OsStr::new("--config"), file.as_os_str()]);
    assert_ne!(
        out.code,
        Some(0),
        "sidekey run started with an invalid config"
    );
    assert!(out.code.is_some(), "killed by a signal?");
    assert_bad_config_report(&file, &out.stderr);
    assert!(
        !out.stderr.contains("listening"),
        "it listened anyway:\n{}",
        out.stderr
    );
}

#[test]
fn check_rejects_unsafe_host_patterns() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"routes:
  - name: everything
    hosts: ["*"]
    methods: [GET]
  - name: suffix
    hosts: ["*.com"]
    methods: [GET]
"#;
    let file = write(dir.path(), "hosts.yaml", text);
    let out = run_check(&file);
    assert_eq!(
        out.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let diags = diagnostics(&file, &out.stderr);
    assert!(
        diags.iter().any(|d| d.line == 3),
        "`*` rejected on line 3:\n{}",
        out.stderr
    );
    assert!(
        diags.iter().any(|d| d.line == 6),
        "`*.com` rejected on line 6:\n{}",
        out.stderr
    );
}

#[test]
fn quickstart_example_is_valid() {
    let file = repo_root().join("examples/quickstart.yaml");
    let out = run_check(&file);
    assert_eq!(
        out.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("httpbin.org"), "{}", out.stdout);
}

/// The example directories under `examples/` and a host each one's routes must name (shown
/// by `sidekey check`); `agents/` holds client snippets and no config.
const EXAMPLE_DIRS: &[(&str, Option<&str>)] = &[
    ("agents", None),
    ("anthropic", Some("api.anthropic.com")),
    ("aws-s3", Some("acme-reports.s3.eu-west-1.amazonaws.com")),
    ("github", Some("api.github.com")),
    ("github-app", Some("api.github.com")),
    ("internal-service", Some("reports.internal.test")),
    ("oauth2", Some("crm.example.com")),
    ("openai", Some("api.openai.com")),
    ("slack", Some("slack.com")),
];

/// `examples/quickstart.yaml` and every `examples/<dir>/sidekey.yaml`, each checked: exactly
/// the directories [`EXAMPLE_DIRS`] names (a new one must be listed there, a removed one
/// fails), each with a README.md, no other config file lying around.
#[test]
fn every_example_config_is_valid() {
    let root = repo_root().join("examples");
    let mut dirs = Vec::new();
    let mut loose = Vec::new();
    for entry in std::fs::read_dir(&root).expect("examples/") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            dirs.push(name);
        } else {
            loose.push(name);
        }
    }
    dirs.sort();
    loose.sort();
    assert_eq!(
        loose,
        ["quickstart.yaml"],
        "examples/ holds quickstart.yaml and one directory per API, nothing else"
    );
    let want: Vec<&str> = EXAMPLE_DIRS.iter().map(|(d, _)| *d).collect();
    assert_eq!(dirs, want, "example directories");

    let mut checked = vec![(root.join("quickstart.yaml"), Some("httpbin.org"))];
    for (dir, host) in EXAMPLE_DIRS {
        let readme = root.join(dir).join("README.md");
        let text = std::fs::read_to_string(&readme)
            .unwrap_or_else(|e| panic!("{}: {e}", readme.display()));
        assert!(
            text.starts_with("# ") && text.len() > 200,
            "{}: a short README with a title",
            readme.display()
        );
        let config = root.join(dir).join("sidekey.yaml");
        match host {
            Some(host) => checked.push((config, Some(*host))),
            None => assert!(
                !config.exists(),
                "{} has a config: name the host it routes in EXAMPLE_DIRS",
                config.display()
            ),
        }
    }
    for (path, host) in &checked {
        let out = run_check(path);
        assert_eq!(
            out.code,
            Some(0),
            "{}:\nstdout: {}\nstderr: {}",
            path.display(),
            out.stdout,
            out.stderr
        );
        if let Some(host) = host {
            assert!(
                out.stdout.contains(host),
                "{}: {host} not in the effective policy:\n{}",
                path.display(),
                out.stdout
            );
        }
    }
}

#[test]
fn check_of_a_missing_file_fails_clearly() {
    let out = run_check(Path::new("/nonexistent/sidekey.yaml"));
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("/nonexistent/sidekey.yaml"),
        "{}",
        out.stderr
    );
}
