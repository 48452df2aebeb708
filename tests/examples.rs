//! The API examples under `examples/` run offline, each against a local stand-in for its API
//! (the test upstream, which records every request with its headers; moto for S3) that the
//! real host is pinned to: the example's issuers, credentials and routes as they are in the
//! file, with only what cannot be the same here changed — the harness's `listen:`/`ca:`, the
//! pod identity's token file, `upstream:` (the pins, the test CA, loopback opened with
//! `allow_ranges`), a Vault issuer's `address` (a real OpenBao dev server, seeded with the
//! secret the example's README says to put there) and `ca_file`, an aws-sts issuer's
//! `endpoint` (moto). Each test asserts the exact headers the real API wants, what the example
//! refuses, and what the audit trail says. The agent snippets of `examples/agents/` run as
//! they are against the examples they name.
//!
//! Needs `scripts/peers/openbao` and moto (run by `scripts/install-test-deps`), git, and the
//! test venv and Node clients.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::github_app::GitHubApi;
use crate::common::moto::{Moto, StsKeys, S3_FULL_ACCESS};
use crate::common::openbao::{OpenBao, ISSUER_POLICY_BASE};
use crate::common::sidekey::{repo_root, strip_top_level_keys, PROXY_VARS};
use crate::common::*;
use serde_json::{json, Value};

/// The audience of the pod token OpenBao's stand-in `kubernetes` auth checks.
const AUDIENCE: &str = "vault";

/// What an agent puts where a credential would go: it must never reach an upstream.
const AGENT_DUMMY: &str = "agent-dummy-credential-c0ffee";

fn example_dir(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

fn example(name: &str) -> String {
    let path = example_dir(name).join("sidekey.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with the one line whose trimmed start is `key` replaced by `key value` (same
/// indentation), or removed when `value` is None. Fails unless exactly one line has it.
#[track_caller]
fn set_line(text: &str, key: &str, value: Option<&str>) -> String {
    let hits = text
        .lines()
        .filter(|l| l.trim_start().starts_with(key))
        .count();
    assert_eq!(hits, 1, "`{key}` lines in the example:\n{text}");
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with(key) {
            if let Some(value) = value {
                let indent = &line[..line.len() - line.trim_start().len()];
                out.push_str(&format!("{indent}{key} {value}\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The example's config to run here: its own issuers, credentials and routes; `upstream:`
/// trusting the test CA, opening loopback, and pinning each `host:port` of `pins` to its
/// placeholder; `identity:` the test's token file; a Vault issuer at `{bao}`.
fn offline_config(text: &str, pins: &[(&str, &str)]) -> String {
    let mut body = strip_top_level_keys(text, &["listen", "ca", "upstream", "identity"]);
    if body.contains("kind: vault") {
        assert!(
            body.contains("auth: { method: kubernetes, role: agent }"),
            "the tests stand in for the kubernetes role `agent`:\n{body}"
        );
        body = set_line(&body, "address:", Some("\"{bao}\""));
        body = set_line(&body, "ca_file:", None);
    }
    let mut head = String::from(
        "upstream:\n  extra_ca_files: [\"{test_ca}\"]\n  allow_ranges: [127.0.0.0/8]\n  resolve:\n",
    );
    for (authority, placeholder) in pins {
        head.push_str(&format!("    \"{authority}\": \"{{{placeholder}}}\"\n"));
    }
    head.push_str("identity:\n  token_file: \"{identity_token}\"\n");
    format!("{head}{body}")
}

/// A real OpenBao dev server set up as the examples' READMEs say: the secret at
/// `secret/agents/<name>`, readable by the role `agent` of the `kubernetes` auth method (here
/// OpenBao's jwt method mounted at `kubernetes/`, which takes the same `{role, jwt}` login and
/// checks the pod token itself, as no API server is there to review it).
struct Vault {
    bao: OpenBao,
    identity: Identity,
}

impl Vault {
    fn seeded(name: &str, data: Value) -> Vault {
        let bao = OpenBao::start();
        let identity = Identity::new("system:serviceaccount:agents:agent", AUDIENCE);
        bao.write_policy(
            "agent",
            &format!(
                "{ISSUER_POLICY_BASE}\npath \"secret/data/agents/{name}\" {{ capabilities = [\"read\"] }}\n"
            ),
        );
        bao.enable_jwt_auth_at(
            "kubernetes",
            identity.public_pem(),
            "agent",
            AUDIENCE,
            "10m",
            "1h",
            &["agent"],
        );
        assert_eq!(bao.kv_put(&format!("agents/{name}"), data), 1);
        Vault { bao, identity }
    }
}

/// An example running here: its stand-in upstream (certificate for `names`), OpenBao seeded
/// with `secret`, and sidekey with the example's config.
struct Running {
    upstream: Upstream,
    sk: Sidekey,
    _vault: Vault,
    _ca: TestCa,
}

fn run_with_vault(name: &str, names: &[&str], secret: Value) -> Running {
    let ca = TestCa::new("examples test CA");
    let upstream = Upstream::https_with_names(&ca, names, name);
    let vault = Vault::seeded(name, secret);
    let pins: Vec<String> = names.iter().map(|n| format!("{n}:443")).collect();
    let pins: Vec<(&str, &str)> = pins.iter().map(|p| (p.as_str(), "upstream")).collect();
    let config = offline_config(&example(name), &pins);
    let sk = Sidekey::start(
        &config,
        &[
            ("test_ca", ca.pem_path().display().to_string()),
            ("upstream", upstream.addr().to_string()),
            ("bao", vault.bao.address()),
            (
                "identity_token",
                vault.identity.token_file().display().to_string(),
            ),
        ],
    );
    Running {
        upstream,
        sk,
        _vault: vault,
        _ca: ca,
    }
}

impl Running {
    /// Waits for `n` request records and returns them, checking that no secret in `secrets`
    /// is in sidekey's audit or logs.
    fn records(&self, n: usize, secrets: &[&str]) -> Vec<Value> {
        let records = self.sk.expect_request_records(n);
        let (out, err) = (self.sk.stdout_text(), self.sk.stderr());
        for s in secrets {
            assert!(!out.contains(s), "a secret in the audit: {out}");
            assert!(!err.contains(s), "a secret in the log: {err}");
        }
        records
    }
}

/// Every header value the upstream received, to show nothing of the agent's got through.
#[track_caller]
fn assert_no_agent_credential(seen: &Recorded) {
    for (k, v) in &seen.headers {
        assert!(
            !v.contains(AGENT_DUMMY),
            "the agent's credential reached the upstream in {k}: {seen:#?}"
        );
    }
}

/// Environment variables that point a client at a CA bundle.
const CA_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
];

/// `cmd` with no proxy or CA settings from this process, then `env`.
fn agent_command(program: impl AsRef<std::ffi::OsStr>, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(program);
    for v in PROXY_VARS.iter().chain(CA_VARS) {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion (bounded); (exit code, stdout, stderr).
fn run(cmd: Command) -> (Option<i32>, String, String) {
    let out = output_with_timeout(cmd, Duration::from_secs(60));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The proxy variables every agent gets.
fn proxy_env(sk: &Sidekey) -> Vec<(&'static str, String)> {
    let p = sk.proxy_url();
    ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"]
        .into_iter()
        .map(|k| (k, p.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// GitHub App

/// examples/github-app/: the App's key in OpenBao as its README says, api.github.com and
/// github.com pinned to a stand-in of GitHub's API (tests/clients/github_app_server.py, over
/// TLS) that verifies the App JWT and lets each token reach only what it was narrowed to; the
/// issuer's `api_url` is the stand-in's address (its `ca_file` the test CA).
#[test]
fn github_app_mints_a_narrowed_token_per_credential_from_the_key_in_vault() {
    let ca = TestCa::new("examples test CA");
    let api = GitHubApi::start_tls(&ca, &["api.github.com", "github.com"]);
    let key = std::fs::read_to_string(api.key_file()).expect("App key");
    let vault = Vault::seeded("github-app", json!({ "private_key": key }));
    let config = offline_config(
        &example("github-app"),
        &[
            ("api.github.com:443", "github"),
            ("github.com:443", "github"),
        ],
    );
    let config = set_line(
        &config,
        "api_url:",
        Some(&format!("\"{}\"\n    ca_file: \"{{test_ca}}\"", api.url())),
    );
    let mut sk = Sidekey::start(
        &config,
        &[
            ("test_ca", ca.pem_path().display().to_string()),
            ("github", api.addr()),
            ("bao", vault.bao.address()),
            (
                "identity_token",
                vault.identity.token_file().display().to_string(),
            ),
        ],
    );
    let get = |url: &str, extra: &[&str]| {
        let mut args = vec![
            "-H",
            "Accept: application/vnd.github+json",
            "-H",
            "X-GitHub-Api-Version: 2022-11-28",
        ];
        args.extend_from_slice(extra);
        args.push(url);
        curl_via(&sk, &args)
    };
    let dummy = format!("Authorization: Bearer {AGENT_DUMMY}");
    get(
        "https://api.github.com/repos/acme/widgets/issues",
        &["-H", &dummy],
    )
    .assert_status(200);
    get(
        "https://api.github.com/repos/acme/widgets/pulls",
        &["-X", "POST", "--data", "{}"],
    )
    .assert_status(200);
    get(
        "https://github.com/acme/widgets.git/info/refs?service=git-receive-pack",
        &[],
    )
    .assert_status(200);
    get("https://api.github.com/repos/acme/other/issues", &[])
        .expect_refusal(403, "path_not_allowed");

    let minted = api.events("minted");
    assert_eq!(minted.len(), 2, "one token per credential: {minted:#?}");
    let asked: Vec<&Value> = minted.iter().map(|m| &m["asked"]).collect();
    assert!(
        asked.contains(&&json!({
            "permissions": { "issues": "write", "pull_requests": "write", "metadata": "read" },
            "repositories": ["widgets"],
        })),
        "{asked:#?}"
    );
    assert!(
        asked.contains(&&json!({
            "permissions": { "contents": "write" },
            "repositories": ["widgets"],
        })),
        "{asked:#?}"
    );
    let resources = api.events("resource");
    assert_eq!(resources.len(), 3, "{resources:#?}");
    assert!(
        resources.iter().all(|r| r["status"] == 200),
        "{resources:#?}"
    );
    let records = sk.expect_request_records(4);
    for (r, m) in records.iter().take(3).zip(resources.iter()) {
        assert_eq!(r["credential_id"], m["hashed_token"], "{r}");
    }

    sk.terminate();
    let revoked = api.wait_event("revoked", 2, Duration::from_secs(10));
    let hashes: Vec<&Value> = minted.iter().map(|m| &m["hashed_token"]).collect();
    for r in &revoked {
        assert!(hashes.contains(&&r["hashed_token"]), "{r}");
    }
    let output = format!("{}\n{}", sk.stdout_text(), sk.stderr());
    for m in &minted {
        assert!(
            !output.contains(m["token"].as_str().unwrap()),
            "a token in sidekey's output"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// GitHub

const GITHUB_TOKEN: &str = "github_pat_11EXAMPLE0kv0seeded0token0a8f3";

#[test]
fn github_rest_gets_the_vault_token_as_bearer_and_git_gets_basic() {
    let ex = run_with_vault(
        "github",
        &["api.github.com", "github.com"],
        json!({ "token": GITHUB_TOKEN }),
    );
    let (sk, up) = (&ex.sk, &ex.upstream);
    let agent_auth = format!("Authorization: Bearer {AGENT_DUMMY}");
    let gh_headers = [
        "-H",
        agent_auth.as_str(),
        "-H",
        "User-Agent: acme-agent/1.0",
        "-H",
        "Accept: application/vnd.github+json",
        "-H",
        "X-GitHub-Api-Version: 2022-11-28",
    ];

    // A read, as GitHub wants it: Bearer, and the client's own headers untouched.
    let mut args = gh_headers.to_vec();
    args.push("https://api.github.com/repos/acme/widgets/issues?state=open");
    let res = curl_via(sk, &args);
    assert_eq!(res.header("x-test-upstream"), Some("github"), "{res:#?}");
    let seen = up.only_request();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.sni.as_deref(), Some("api.github.com"));
    assert_eq!(seen.path, "/repos/acme/widgets/issues?state=open");
    assert_eq!(
        seen.header_all("authorization"),
        [format!("Bearer {GITHUB_TOKEN}").as_str()]
    );
    assert_eq!(seen.header("user-agent"), Some("acme-agent/1.0"));
    assert_eq!(seen.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(seen.header("x-github-api-version"), Some("2022-11-28"));
    assert_no_agent_credential(&seen);

    // The narrower write route: an issue, a pull request update, a comment.
    for (method, path) in [
        ("POST", "/repos/acme/widgets/issues"),
        ("PATCH", "/repos/acme/widgets/pulls/7"),
        ("POST", "/repos/acme/widgets/issues/7/comments"),
    ] {
        let url = format!("https://api.github.com{path}");
        let mut args = gh_headers.to_vec();
        args.extend([
            "-X",
            method,
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"title":"found a bug"}"#,
            &url,
        ]);
        let res = curl_via(sk, &args);
        assert_eq!(res.header("x-test-upstream"), Some("github"), "{res:#?}");
        let seen = up.requests().pop().unwrap();
        assert_eq!((seen.method.as_str(), seen.path.as_str()), (method, path));
        assert_eq!(seen.bearer(), Some(GITHUB_TOKEN));
        assert_eq!(seen.body_head, r#"{"title":"found a bug"}"#);
    }

    // What the example refuses, none of it reaching GitHub.
    let url = |p: &str| format!("https://api.github.com{p}");
    curl_via(sk, &["-X", "DELETE", &url("/repos/acme/widgets")])
        .expect_refusal(403, "method_not_allowed");
    curl_via(sk, &[&url("/repos/other-org/widgets")]).expect_refusal(403, "path_not_allowed");
    curl_via(sk, &[&url("/user")]).expect_refusal(403, "path_not_allowed");
    curl_via(sk, &["-X", "POST", &url("/repos/acme/widgets/hooks")])
        .expect_refusal(403, "path_not_allowed");
    assert_eq!(up.requests().len(), 4);

    // git over HTTPS, the real git: no credential helper, no prompt; sidekey's Basic header
    // is on the first request, so git never needs one. The stand-in is no git server, so git
    // fails after that request; what matters is what reached GitHub.
    let home = tempfile::tempdir().unwrap();
    let mut env = proxy_env(sk);
    env.extend([
        ("GIT_SSL_CAINFO", sk.ca_pem().display().to_string()),
        ("GIT_TERMINAL_PROMPT", "0".to_string()),
        ("GIT_CONFIG_NOSYSTEM", "1".to_string()),
        ("HOME", home.path().display().to_string()),
    ]);
    let mut git = agent_command("git", &env);
    git.args(["ls-remote", "https://github.com/acme/widgets.git"]);
    let (code, _, stderr) = run(git);
    assert_ne!(code, Some(0), "the stand-in is no git server: {stderr}");
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.sni.as_deref(), Some("github.com"));
    assert_eq!(
        seen.path,
        "/acme/widgets.git/info/refs?service=git-upload-pack"
    );
    let basic = base64_encode(format!("x-access-token:{GITHUB_TOKEN}").as_bytes());
    assert_eq!(
        seen.header_all("authorization"),
        [format!("Basic {basic}").as_str()]
    );
    assert!(
        seen.header("user-agent")
            .is_some_and(|u| u.starts_with("git/")),
        "{seen:#?}"
    );
    // The pack request, as git sends it after the refs.
    curl_via(
        sk,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/x-git-upload-pack-request",
            "--data-binary",
            "0000",
            "https://github.com/acme/widgets.git/git-upload-pack",
        ],
    );
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.path, "/acme/widgets.git/git-upload-pack");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    // Another organisation's repository: refused, git fails without reaching GitHub.
    let mut git = agent_command("git", &env);
    git.args(["ls-remote", "https://github.com/other-org/widgets.git"]);
    let (code, _, stderr) = run(git);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("403"), "git shows the refusal: {stderr}");
    assert_eq!(up.requests().len(), 6);

    // The agent snippet for requests, unchanged: a read with no credential in its code.
    let mut env = proxy_env(sk);
    env.push(("REQUESTS_CA_BUNDLE", sk.ca_pem().display().to_string()));
    let mut py = agent_command(python_bin(), &env);
    py.arg(example_dir("agents").join("agent_requests.py"))
        .arg("https://api.github.com/repos/acme/widgets");
    let (code, stdout, stderr) = run(py);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("404 application/json"), "{stdout}");
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.path, "/repos/acme/widgets");
    assert_eq!(seen.bearer(), Some(GITHUB_TOKEN));
    assert!(
        seen.header("user-agent")
            .is_some_and(|u| u.starts_with("python-requests/")),
        "{seen:#?}"
    );
    assert_eq!(up.requests().len(), 7);

    let records = ex.records(12, &[GITHUB_TOKEN, &basic]);
    let allowed: Vec<&Value> = records
        .iter()
        .filter(|r| r["decision"] == "allow")
        .collect();
    assert_eq!(allowed.len(), 7, "{records:#?}");
    let routes: Vec<&str> = allowed
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        routes,
        [
            "github-read",
            "github-write",
            "github-write",
            "github-write",
            "git",
            "git",
            "github-read"
        ]
    );
    for r in &allowed {
        assert_eq!(r["credential_id"], "secret/data/agents/github@1", "{r}");
        assert_eq!(r["issuer"], "vault", "{r}");
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI and Anthropic

const OPENAI_KEY: &str = "sk-proj-EXAMPLE0seeded0in0kv0b7d1";
const ANTHROPIC_KEY: &str = "sk-ant-api03-EXAMPLE0seeded0in0kv0e42c";

/// A streamed POST through sidekey: each line with its arrival time.
fn stream_post(sk: &Sidekey, headers: &[&str], url: &str, body: &str) -> StreamedLines {
    let proxy = sk.proxy_url();
    let ca = sk.ca_pem().display().to_string();
    let mut args = vec!["-x", proxy.as_str(), "--cacert", ca.as_str(), "-X", "POST"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.extend(["--data", body, url]);
    curl_stream(&args)
}

/// Three SSE events, each passed on as it came (200 ms apart at the stand-in), not at the end.
#[track_caller]
fn assert_streamed(out: &StreamedLines) {
    assert_eq!(out.exit, 0, "{out:#?}");
    let events: Vec<&(Duration, String)> = out
        .lines
        .iter()
        .filter(|(_, l)| l.starts_with("data: "))
        .collect();
    let data: Vec<&str> = events.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(data, ["data: 0", "data: 1", "data: 2"], "{out:#?}");
    assert!(
        events[2].0 - events[0].0 >= Duration::from_millis(300),
        "the events arrived together, not as they were sent: {out:#?}"
    );
}

#[test]
fn openai_key_from_vault_goes_to_the_inference_endpoints_only_and_streams() {
    let ex = run_with_vault(
        "openai",
        &["api.openai.com"],
        json!({ "api_key": OPENAI_KEY }),
    );
    let (sk, up) = (&ex.sk, &ex.upstream);
    let agent_auth = format!("Authorization: Bearer {AGENT_DUMMY}");
    let body =
        r#"{"model":"gpt-4.1-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

    // A streaming chat completion: the events pass one by one.
    let out = stream_post(
        sk,
        &[&agent_auth, "Content-Type: application/json"],
        "https://api.openai.com/v1/chat/completions",
        body,
    );
    assert_streamed(&out);
    let seen = up.only_request();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.sni.as_deref(), Some("api.openai.com"));
    assert_eq!(
        seen.header_all("authorization"),
        [format!("Bearer {OPENAI_KEY}").as_str()]
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.body_head, body);
    assert_no_agent_credential(&seen);

    // The other two inference endpoints.
    for path in ["/v1/responses", "/v1/embeddings"] {
        let url = format!("https://api.openai.com{path}");
        let res = curl_via(
            sk,
            &[
                "-X",
                "POST",
                "-H",
                &agent_auth,
                "-H",
                "Content-Type: application/json",
                "--data",
                r#"{"input":"hi"}"#,
                &url,
            ],
        );
        assert_eq!(res.header("x-test-upstream"), Some("openai"), "{res:#?}");
        let seen = up.requests().pop().unwrap();
        assert_eq!(seen.path, path);
        assert_eq!(seen.bearer(), Some(OPENAI_KEY));
    }

    // GET anywhere, POST elsewhere: refused.
    let url = |p: &str| format!("https://api.openai.com{p}");
    curl_via(sk, &[&url("/v1/models")]).expect_refusal(403, "method_not_allowed");
    curl_via(sk, &[&url("/v1/chat/completions")]).expect_refusal(403, "method_not_allowed");
    curl_via(sk, &["-X", "POST", "--data", "{}", &url("/v1/files")])
        .expect_refusal(403, "path_not_allowed");
    curl_via(
        sk,
        &["-X", "POST", "--data", "{}", &url("/v1/fine_tuning/jobs")],
    )
    .expect_refusal(403, "path_not_allowed");
    assert_eq!(up.requests().len(), 3);

    // The httpx snippet, unchanged: it streams the same way with no credential in its code.
    let mut env = proxy_env(sk);
    env.push(("SSL_CERT_FILE", sk.ca_pem().display().to_string()));
    let mut py = agent_command(python_bin(), &env);
    py.arg(example_dir("agents").join("agent_httpx.py"));
    let (code, stdout, stderr) = run(py);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["200 text/event-stream", "data: 0", "data: 1", "data: 2"],
        "{stderr}"
    );
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.bearer(), Some(OPENAI_KEY));

    let records = ex.records(8, &[OPENAI_KEY]);
    for r in records.iter().filter(|r| r["decision"] == "allow") {
        assert_eq!(r["route"], "openai", "{r}");
        assert_eq!(r["credential_id"], "secret/data/agents/openai@1", "{r}");
    }
    assert_eq!(
        records.iter().filter(|r| r["decision"] == "allow").count(),
        4
    );
}

#[test]
fn anthropic_key_from_vault_is_x_api_key_on_messages_only() {
    let ex = run_with_vault(
        "anthropic",
        &["api.anthropic.com"],
        json!({ "api_key": ANTHROPIC_KEY }),
    );
    let (sk, up) = (&ex.sk, &ex.upstream);
    let agent_key = format!("x-api-key: {AGENT_DUMMY}");
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

    let out = stream_post(
        sk,
        &[
            &agent_key,
            "anthropic-version: 2023-06-01",
            "content-type: application/json",
        ],
        "https://api.anthropic.com/v1/messages",
        body,
    );
    assert_streamed(&out);
    let seen = up.only_request();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.sni.as_deref(), Some("api.anthropic.com"));
    assert_eq!(seen.header_all("x-api-key"), [ANTHROPIC_KEY]);
    // Not a secret, and sidekey cannot add it: the agent's own passes through as sent.
    assert_eq!(seen.header_all("anthropic-version"), ["2023-06-01"]);
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("authorization"), None, "{seen:#?}");
    assert_eq!(seen.body_head, body);
    assert_no_agent_credential(&seen);

    let res = curl_via(
        sk,
        &[
            "-X",
            "POST",
            "-H",
            "anthropic-version: 2023-06-01",
            "--data",
            "{}",
            "https://api.anthropic.com/v1/messages/count_tokens",
        ],
    );
    assert_eq!(res.header("x-test-upstream"), Some("anthropic"), "{res:#?}");
    assert_eq!(
        up.requests().pop().unwrap().header_all("x-api-key"),
        [ANTHROPIC_KEY]
    );

    let url = |p: &str| format!("https://api.anthropic.com{p}");
    curl_via(sk, &[&url("/v1/models")]).expect_refusal(403, "method_not_allowed");
    curl_via(sk, &[&url("/v1/messages")]).expect_refusal(403, "method_not_allowed");
    curl_via(
        sk,
        &["-X", "POST", "--data", "{}", &url("/v1/messages/batches")],
    )
    .expect_refusal(403, "path_not_allowed");
    assert_eq!(up.requests().len(), 2);

    let records = ex.records(5, &[ANTHROPIC_KEY]);
    let allowed: Vec<&Value> = records
        .iter()
        .filter(|r| r["decision"] == "allow")
        .collect();
    assert_eq!(allowed.len(), 2);
    for r in allowed {
        assert_eq!(r["credential_id"], "secret/data/agents/anthropic@1", "{r}");
    }
}

// ---------------------------------------------------------------------------------------------
// Slack

const SLACK_TOKEN: &str = "xoxb-0000000000-EXAMPLE0seeded0bot0token";

#[test]
fn slack_bot_token_from_vault_is_bearer_on_the_allowed_methods() {
    let ex = run_with_vault("slack", &["slack.com"], json!({ "bot_token": SLACK_TOKEN }));
    let (sk, up) = (&ex.sk, &ex.upstream);
    let body = r#"{"channel":"C0123456789","text":"report ready"}"#;

    let res = curl_via(
        sk,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json; charset=utf-8",
            "--data",
            body,
            "https://slack.com/api/chat.postMessage",
        ],
    );
    assert_eq!(res.header("x-test-upstream"), Some("slack"), "{res:#?}");
    let seen = up.only_request();
    assert_eq!(seen.path, "/api/chat.postMessage");
    assert_eq!(
        seen.header_all("authorization"),
        [format!("Bearer {SLACK_TOKEN}").as_str()]
    );
    assert_eq!(
        seen.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(seen.body_head, body);

    // A read with query arguments.
    curl_via(
        sk,
        &["https://slack.com/api/conversations.history?channel=C0123456789&limit=5"],
    );
    let seen = up.requests().pop().unwrap();
    assert_eq!(
        seen.path,
        "/api/conversations.history?channel=C0123456789&limit=5"
    );
    assert_eq!(seen.bearer(), Some(SLACK_TOKEN));

    let url = |p: &str| format!("https://slack.com{p}");
    curl_via(sk, &["-X", "DELETE", &url("/api/chat.postMessage")])
        .expect_refusal(403, "method_not_allowed");
    // GET is the read route's, which does not name chat.postMessage.
    curl_via(sk, &[&url("/api/chat.postMessage")]).expect_refusal(403, "path_not_allowed");
    curl_via(
        sk,
        &[
            "-X",
            "POST",
            "--data",
            "{}",
            &url("/api/conversations.invite"),
        ],
    )
    .expect_refusal(403, "path_not_allowed");
    curl_via(
        sk,
        &[
            "-X",
            "POST",
            "--data",
            "{}",
            &url("/api/admin.users.remove"),
        ],
    )
    .expect_refusal(403, "path_not_allowed");
    assert_eq!(up.requests().len(), 2);

    // The Node fetch snippet, unchanged, next to the test clients' undici.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        example_dir("agents").join("agent_fetch.mjs"),
        dir.path().join("agent_fetch.mjs"),
    )
    .unwrap();
    let modules = clients_dir().join("node_modules");
    assert!(
        modules.join("undici").exists(),
        "{} missing: run scripts/install-test-deps",
        modules.display()
    );
    std::os::unix::fs::symlink(&modules, dir.path().join("node_modules")).unwrap();
    let mut env = proxy_env(sk);
    env.push(("NODE_EXTRA_CA_CERTS", sk.ca_pem().display().to_string()));
    let mut node = agent_command("node", &env);
    node.arg(dir.path().join("agent_fetch.mjs"));
    let (code, stdout, stderr) = run(node);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("404 application/json"), "{stdout}");
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.path, "/api/chat.postMessage");
    assert_eq!(seen.bearer(), Some(SLACK_TOKEN));
    assert_eq!(seen.body_head, body);
    assert_eq!(up.requests().len(), 3);

    let records = ex.records(7, &[SLACK_TOKEN]);
    let routes: Vec<&str> = records
        .iter()
        .filter(|r| r["decision"] == "allow")
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["slack-post", "slack-read", "slack-post"]);
}

// ---------------------------------------------------------------------------------------------
// An internal service trusting the local issuer

/// `examples/internal-service/upstream.py`, killed on drop.
struct Service {
    child: Child,
}

impl Service {
    fn start(listen: std::net::SocketAddr, jwks_url: &str) -> Service {
        let mut cmd = agent_command(python_bin(), &[]);
        cmd.arg(example_dir("internal-service").join("upstream.py"))
            .args(["--listen", &listen.to_string(), "--jwks-url", jwks_url])
            .args(["--issuer", "sidekey-local", "--audience", "reports-api"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn upstream.py");
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .expect("read upstream.py");
        assert_eq!(first.trim(), format!("listening on {listen}"));
        Service { child }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn internal_service_verifies_the_local_jwt_against_sidekeys_jwks() {
    let text = example("internal-service");
    let service_addr = closed_port_addr();
    // The example's issuers, credentials and routes; its listeners and CA path are the
    // harness's, and the service's pin names the port it got here.
    let body = strip_top_level_keys(&text, &["listen", "ca", "upstream"]);
    let config = format!(
        "upstream:\n  resolve: {{ \"reports.internal.test:8080\": \"{{service}}\" }}\n{body}"
    );
    let sk = Sidekey::start(&config, &[("service", service_addr.to_string())]);
    let _service = Service::start(
        service_addr,
        &format!("http://{}/.well-known/jwks.json", sk.admin),
    );

    let res = curl_via(
        &sk,
        &[
            "-H",
            &format!("Authorization: Bearer {AGENT_DUMMY}"),
            "http://reports.internal.test:8080/v1/reports/q3",
        ],
    );
    res.assert_status(200);
    let answer = res.json();
    assert_eq!(answer["verified"], true, "{answer}");
    assert_eq!(answer["iss"], "sidekey-local", "{answer}");
    assert_eq!(answer["aud"], "reports-api", "{answer}");
    assert_eq!(answer["sub"], "research-agent", "{answer}");
    assert_eq!(answer["path"], "/v1/reports/q3", "{answer}");
    let post = curl_via(
        &sk,
        &[
            "--data",
            "{}",
            "http://reports.internal.test:8080/v1/reports",
        ],
    );
    post.assert_status(200);
    assert_eq!(post.json()["method"], "POST");

    // Without sidekey there is no token; with a made-up one, no valid signature.
    let direct = curl(&[&format!("http://{service_addr}/v1/reports/q3")]);
    assert_eq!(direct.status, 401, "{direct:#?}");
    assert_eq!(direct.json()["verified"], false);
    let forged = format!(
        "{}.{}.{}",
        base64_encode(br#"{"alg":"EdDSA","kid":"x"}"#),
        base64_encode(br#"{"aud":"reports-api"}"#),
        "AAAA"
    );
    let direct = curl(&[
        "-H",
        &format!("Authorization: Bearer {forged}"),
        &format!("http://{service_addr}/v1/reports/q3"),
    ]);
    assert_eq!(direct.status, 401, "{direct:#?}");

    // What the route does not allow.
    curl_via(
        &sk,
        &[
            "-X",
            "DELETE",
            "http://reports.internal.test:8080/v1/reports/q3",
        ],
    )
    .expect_refusal(403, "method_not_allowed");
    curl_via(&sk, &["http://reports.internal.test:8080/admin"])
        .expect_refusal(403, "path_not_allowed");

    let records = sk.expect_request_records(4);
    assert_eq!(records[0]["route"], "reports");
    assert_eq!(records[0]["credential"], "reports-api");
    assert_eq!(records[0]["credential_id"], answer["jti"]);
    assert_eq!(records[2]["code"], "method_not_allowed", "{records:#?}");
}

// ---------------------------------------------------------------------------------------------
// Amazon S3

const S3_BUCKET_HOST: &str = "acme-reports.s3.eu-west-1.amazonaws.com";
const S3_PATH_STYLE_HOST: &str = "s3.eu-west-1.amazonaws.com";
/// What the agent's SDK signed with its dummy keys: none of it may reach S3.
const AGENT_SIGNATURE: &str = "AWS4-HMAC-SHA256 Credential=AKIAAGENTDUMMY000000/20260101/eu-west-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=00000000000000000000000000000000000000000000000000000000deadbeef";

#[test]
fn aws_s3_requests_are_signed_with_the_sts_keys_for_one_bucket() {
    // moto as STS and S3, with the example's role and bucket in the example's region;
    // signatures are checked once sidekey holds its keys.
    let moto = Moto::start(None);
    moto.create_role_named("agent-reports", S3_FULL_ACCESS);
    let setup = moto.boto3(
        None,
        json!([
            {"service": "s3", "method": "create_bucket",
             "params": {"Bucket": "acme-reports",
                        "CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"}}},
        ]),
    );
    for r in &setup {
        assert_eq!(r["ok"], true, "moto setup: {setup:?}");
    }
    let identity = Identity::new("system:serviceaccount:agents:agent", "sts.amazonaws.com");

    // The example as it is, but for STS's endpoint (moto's plain-HTTP door).
    let text = example("aws-s3");
    let mut config = offline_config(
        &text,
        &[
            (&format!("{S3_BUCKET_HOST}:443"), "moto_tls"),
            (&format!("{S3_PATH_STYLE_HOST}:443"), "moto_tls"),
        ],
    );
    let issuer_region = "    region: eu-west-1\n";
    assert_eq!(config.matches(issuer_region).count(), 1, "{config}");
    config = config.replace(
        issuer_region,
        "    region: eu-west-1\n    endpoint: \"{moto_http}\"\n",
    );
    let sk = Sidekey::start(
        &config,
        &[
            ("test_ca", moto.ca_pem().display().to_string()),
            ("moto_tls", moto.tls_addr().to_string()),
            ("moto_http", moto.http_endpoint()),
            (
                "identity_token",
                identity.token_file().display().to_string(),
            ),
        ],
    );
    let agent = |args: &[&str]| {
        let mut all = vec![
            "-H".to_string(),
            format!("Authorization: {AGENT_SIGNATURE}"),
            "-H".to_string(),
            "X-Amz-Date: 20260101T000000Z".to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        curl_via(&sk, &refs)
    };

    // The first request makes sidekey assume the role; from then on moto checks signatures.
    let list = format!("https://{S3_BUCKET_HOST}/?list-type=2");
    agent(&[&list]).assert_status(200);
    let roles = moto.assumed_roles();
    assert_eq!(roles.len(), 1, "{roles:#?}");
    assert!(
        roles[0]["role_arn"]
            .as_str()
            .is_some_and(|a| a.ends_with(":role/agent-reports")),
        "{roles:#?}"
    );
    let s = |k: &str| roles[0][k].as_str().unwrap_or_default().to_string();
    let keys = StsKeys {
        access_key_id: s("access_key_id"),
        secret_access_key: s("secret_access_key"),
        session_token: s("session_token"),
        expiration: String::new(),
    };
    moto.set_no_auth_action_count(Some(0));
    let wrong = StsKeys {
        secret_access_key: "not-the-secret".into(),
        ..keys.clone()
    };
    let control = moto.curl_s3(&wrong, "GET", S3_BUCKET_HOST, "/", None);
    assert_eq!(
        control.status,
        403,
        "moto checks signatures now: {}",
        control.body_str()
    );

    // Write under outgoing/, read it back virtual-hosted and path style: moto verified each
    // signature (a wrong one is 403).
    let object = format!("https://{S3_BUCKET_HOST}/outgoing/summary.csv");
    agent(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: text/csv",
        "--data-binary",
        "quarter,total\nq3,42\n",
        &object,
    ])
    .assert_status(200);
    let got = agent(&[&object]);
    got.assert_status(200);
    assert_eq!(got.body_str(), "quarter,total\nq3,42\n");
    let got = agent(&[&format!(
        "https://{S3_PATH_STYLE_HOST}/acme-reports/outgoing/summary.csv"
    )]);
    got.assert_status(200);
    assert_eq!(got.body_str(), "quarter,total\nq3,42\n");

    let signed: Vec<_> = moto
        .recorded()
        .into_iter()
        .filter(|r| r.host().contains(".amazonaws.com") && !r.host().starts_with("sts."))
        .filter(|r| r.header("x-amz-security-token") == Some(keys.session_token.as_str()))
        .collect();
    // The listing, the negative control (signed here, with the wrong secret), then sidekey's.
    assert_eq!(signed.len(), 5, "{signed:#?}");
    for (i, r) in signed.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert_eq!(r.method, ["GET", "", "PUT", "GET", "GET"][i], "{signed:#?}");
        let auth = r.header("authorization").unwrap_or_default();
        assert!(
            auth.starts_with(&format!(
                "AWS4-HMAC-SHA256 Credential={}/",
                keys.access_key_id
            )) && auth.contains("/eu-west-1/s3/aws4_request"),
            "{r:#?}"
        );
        assert_eq!(r.header("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
        assert!(!auth.contains("AKIAAGENTDUMMY"), "{r:#?}");
        assert_ne!(r.header("x-amz-date"), Some("20260101T000000Z"), "{r:#?}");
    }

    // One bucket, writes under outgoing/ only.
    agent(&[
        "-X",
        "PUT",
        "--data-binary",
        "x",
        &format!("https://{S3_BUCKET_HOST}/other/x"),
    ])
    .expect_refusal(403, "path_not_allowed");
    agent(&["-X", "DELETE", &object]).expect_refusal(403, "method_not_allowed");
    agent(&[&format!("https://{S3_PATH_STYLE_HOST}/other-bucket/x")])
        .expect_refusal(403, "path_not_allowed");
    let other = "other-bucket.s3.eu-west-1.amazonaws.com";
    let res = agent(&[&format!("https://{other}/x")]);
    assert_eq!(res.connect_status, 403, "{res:#?}");

    let records = sk.expect_request_records(8);
    let allowed: Vec<&Value> = records
        .iter()
        .filter(|r| r["decision"] == "allow")
        .collect();
    let routes: Vec<&str> = allowed
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        routes,
        [
            "reports-read",
            "reports-write",
            "reports-read",
            "reports-read-path-style"
        ]
    );
    for r in &allowed {
        assert_eq!(r["credential_id"], keys.access_key_id.as_str(), "{r}");
    }
    let (out, err) = (sk.stdout_text(), sk.stderr());
    for secret in [&keys.secret_access_key, &keys.session_token] {
        assert!(!out.contains(secret.as_str()) && !err.contains(secret.as_str()));
    }
}
