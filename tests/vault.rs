//! The `kind: vault` issuer (docs/issuers.md) against a real OpenBao (`bao server -dev`) and, for
//! dynamic database secrets, a real PostgreSQL: KV v2 fields (jwt and approle login), renewable
//! leases renewed then replaced at max TTL, non-renewable (PKI) leases replaced ahead of
//! expiry, tokens that reach their max TTL, refusals when the issuer cannot deliver, and
//! revocation of leases and token at shutdown. The agent's view is checked through the proxy
//! (what the upstream received), the audit trail (request records and credential events) and
//! OpenBao/PostgreSQL themselves. No secret may reach sidekey's logs or audit.
//!
//! Needs `scripts/peers/openbao` (run by `scripts/install-test-deps`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::openbao::{OpenBao, ISSUER_POLICY_BASE};
use crate::common::postgres::Postgres;
use crate::common::*;
use regex::Regex;
use serde_json::{json, Value};

/// The audience the identity token is minted for, bound by OpenBao's jwt role.
const AUDIENCE: &str = "sidekey-vault-test";
/// The jwt role sidekey logs in as.
const ROLE: &str = "agent";

// ---------------------------------------------------------------------------------------------
// Setup

/// An OpenBao with jwt auth trusting a fresh pod identity.
struct Bao {
    bao: OpenBao,
    identity: Identity,
}

impl Bao {
    /// OpenBao, jwt auth (role [`ROLE`], audience [`AUDIENCE`]) whose tokens get a policy
    /// `agent` = [`ISSUER_POLICY_BASE`] + `policy`.
    fn start(policy: &str, token_ttl: &str, token_max_ttl: &str) -> Bao {
        let bao = OpenBao::start();
        let identity = Identity::new("agent-7", AUDIENCE);
        bao.write_policy("agent", &format!("{ISSUER_POLICY_BASE}\n{policy}"));
        bao.enable_jwt_auth(
            identity.public_pem(),
            ROLE,
            AUDIENCE,
            token_ttl,
            token_max_ttl,
            &["agent"],
        );
        Bao { bao, identity }
    }

    /// The placeholders of [`vault_config`]: `{bao}`, `{identity_token}`.
    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("bao", self.bao.address()),
            (
                "identity_token",
                self.identity.token_file().display().to_string(),
            ),
        ]
    }
}

/// `issuers.bao`: OpenBao at `{bao}`, jwt login as [`ROLE`] with `identity.token_file`.
const JWT_ISSUER: &str = r#"  bao:
    kind: vault
    address: "{bao}"
    auth:
      method: jwt
      role: agent
"#;

/// A config with the local issuer and its `api` route (https://api.test.local, credential
/// `demo`), `identity.token_file: {identity_token}`, the given `issuers` and `credentials`
/// (YAML map items indented by two spaces), and one route per `(name, credential)`:
/// https://<name>.test.local, GET, `Authorization: Bearer {token}`, resolved to the upstream.
fn vault_config(issuers: &str, credentials: &str, routes: &[(&str, &str)]) -> String {
    let mut resolve = String::new();
    let mut route_items = String::new();
    for (name, credential) in routes {
        resolve.push_str(&format!(
            "    \"{name}.test.local:443\": \"{{upstream}}\"\n"
        ));
        route_items.push_str(&format!(
            "  - name: {name}\n    hosts: [{name}.test.local]\n    methods: [GET]\n    \
             credential: {credential}\n    \
             inject: {{ header: Authorization, value: \"Bearer {{token}}\" }}\n    \
             allow_private: true\n"
        ));
    }
    format!(
        r#"upstream:
  extra_ca_files: ["{{test_ca}}"]
  resolve:
    "api.test.local:443": "{{upstream}}"
{resolve}identity:
  token_file: "{{identity_token}}"
issuers:
  local: {{ kind: local }}
{issuers}credentials:
  demo: {{ issuer: local, audience: demo-api, ttl: 5m }}
{credentials}routes:
  - name: api
    hosts: [api.test.local]
    methods: [GET]
    credential: demo
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
{route_items}"#
    )
}

fn start_sidekey(env: &Env, bao: &Bao, yaml: &str) -> Sidekey {
    env.sidekey_with(yaml, &bao.vars())
}

// ---------------------------------------------------------------------------------------------
// Requests

/// `GET https://<route>.test.local<path>` through the forward listener.
fn get(sk: &Sidekey, route: &str, path: &str) -> CurlResult {
    curl_via(sk, &[&format!("https://{route}.test.local{path}")])
}

/// The bearer token the upstream received on `path` (paths are unique per request).
#[track_caller]
fn bearer_at(env: &Env, path: &str) -> String {
    let seen = env.upstream.requests_to(path);
    let exact: Vec<&Recorded> = seen.iter().filter(|r| r.path == path).collect();
    assert_eq!(exact.len(), 1, "one request at {path}: {seen:#?}");
    exact[0]
        .bearer()
        .unwrap_or_else(|| panic!("no bearer at {path}: {:?}", exact[0].headers))
        .to_string()
}

/// One request of a [`run_for`] loop.
#[derive(Debug)]
struct Sample {
    path: String,
    /// Since the loop started (shown when a request fails).
    #[allow(dead_code)]
    at: Duration,
    status: u16,
    /// What the upstream received in `Authorization: Bearer`.
    value: Option<String>,
    /// A failed check on the value (e.g. the password does not log in).
    problem: Option<String>,
}

/// Sends `GET https://<route>.test.local/echo/<route>/<i>` every `interval` for `total`,
/// calls `check` on every injected value (right after the request), and returns them all.
fn run_for(
    sk: &Sidekey,
    env: &Env,
    route: &str,
    total: Duration,
    interval: Duration,
    mut check: impl FnMut(&str) -> Result<(), String>,
) -> Vec<Sample> {
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut i = 0;
    while start.elapsed() < total {
        let path = format!("/echo/{route}/{i}");
        i += 1;
        let at = start.elapsed();
        let res = get(sk, route, &path);
        let (value, problem) = if res.exit == 0 && res.status == 200 {
            let v = bearer_at(env, &path);
            let p = check(&v).err();
            (Some(v), p)
        } else {
            (
                None,
                Some(format!(
                    "curl exit {} status {}: {} {}",
                    res.exit,
                    res.status,
                    res.stderr,
                    res.body_str()
                )),
            )
        };
        samples.push(Sample {
            path,
            at,
            status: res.status,
            value,
            problem,
        });
        // Not an event wait: the sampling interval (the agent's pace over the lease's life).
        std::thread::sleep(interval);
    }
    samples
}

#[track_caller]
fn assert_all_ok(samples: &[Sample]) {
    let bad: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status != 200 || s.problem.is_some())
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed:\n{bad:#?}",
        bad.len(),
        samples.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Audit

/// Credential events for `credential`, optionally of one kind, in order.
fn events(sk: &Sidekey, credential: &str, kind: Option<&str>) -> Vec<Value> {
    sk.audit()
        .into_iter()
        .filter(|r| r["type"] == "credential" && r["credential"] == credential)
        .filter(|r| kind.is_none_or(|k| r["event"] == k))
        .collect()
}

/// Waits for a credential event of `kind` for `credential`; returns them all.
fn wait_event(sk: &Sidekey, credential: &str, kind: &str, timeout: Duration) -> Vec<Value> {
    let (c, k) = (credential.to_string(), kind.to_string());
    sk.wait_audit(
        move |r| {
            r["type"] == "credential" && r["credential"] == c.as_str() && r["event"] == k.as_str()
        },
        1,
        timeout,
    )
}

/// The request record for `path` (waits for it).
fn record_for(sk: &Sidekey, path: &str) -> Value {
    let p = path.to_string();
    sk.wait_audit(
        move |r| r["type"] == "request" && r["path"] == p.as_str(),
        1,
        sidekey::AUDIT_TIMEOUT,
    )
    .remove(0)
}

/// Request records of route `route`, in order.
fn route_records(sk: &Sidekey, route: &str) -> Vec<Value> {
    sk.request_records()
        .into_iter()
        .filter(|r| r["route"] == route)
        .collect()
}

/// Seconds since the epoch of an RFC 3339 timestamp (`2026-11-23T09:39:58.038Z`, or with an
/// offset).
fn unix_time(ts: &str) -> f64 {
    let re = Regex::new(
        r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|([+-])(\d\d):(\d\d))$",
    )
    .unwrap();
    let c = re
        .captures(ts)
        .unwrap_or_else(|| panic!("not an RFC 3339 timestamp: {ts:?}"));
    let n = |i: usize| c[i].parse::<i64>().unwrap();
    let (y, m, d) = (n(1), n(2), n(3));
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let mut secs = days * 86400 + n(4) * 3600 + n(5) * 60 + n(6);
    if c.get(9).is_some() {
        let off = n(10) * 3600 + n(11) * 60;
        secs -= if &c[9] == "+" { off } else { -off };
    }
    let frac = c
        .get(7)
        .map(|f| f.as_str().parse::<f64>().unwrap())
        .unwrap_or(0.0);
    secs as f64 + frac
}

/// Every lease-backed request of `credential` was made while its lease was valid: walking the
/// audit in order, each `issued`/`renewed`/`refreshed` event sets its lease's `expires_at`,
/// and each successful request record of `credential` must end before the `expires_at` of the
/// lease it names (1 s of slack). Also checks that every lease ID used was announced by an
/// event. Returns the distinct lease IDs the requests used, in order of first use.
#[track_caller]
fn assert_leases_valid_when_used(sk: &Sidekey, credential: &str) -> Vec<String> {
    let mut expiry: BTreeMap<String, f64> = BTreeMap::new();
    let mut used: Vec<String> = Vec::new();
    for r in sk.audit() {
        if r["credential"] != credential {
            continue;
        }
        let Some(id) = r["credential_id"].as_str() else {
            continue;
        };
        if r["type"] == "credential" {
            if ["issued", "renewed", "refreshed"].contains(&r["event"].as_str().unwrap_or("")) {
                let exp = r["expires_at"].as_str().unwrap_or_else(|| {
                    panic!("a lease event needs expires_at (the lease's end): {r}")
                });
                expiry.insert(id.to_string(), unix_time(exp));
            }
        } else if r["type"] == "request" && r["status"] == 200 {
            let exp = expiry.get(id).unwrap_or_else(|| {
                panic!("request used lease {id} before any credential event named it: {r}")
            });
            let ts = unix_time(r["ts"].as_str().expect("ts"));
            assert!(
                ts <= exp + 1.0,
                "request used lease {id} {:.1}s after its expiry: {r}",
                ts - exp
            );
            if !used.iter().any(|u| u == id) {
                used.push(id.to_string());
            }
        }
    }
    used
}

/// Each request record's credential ID maps to exactly one injected value and back.
#[track_caller]
fn assert_ids_match_values(sk: &Sidekey, samples: &[Sample]) {
    let mut id_to_value: BTreeMap<String, String> = BTreeMap::new();
    let mut value_to_id: BTreeMap<String, String> = BTreeMap::new();
    for s in samples {
        let Some(v) = &s.value else { continue };
        let rec = record_for(sk, &s.path);
        let id = rec["credential_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no credential_id: {rec}"))
            .to_string();
        let a = id_to_value.entry(id.clone()).or_insert_with(|| v.clone());
        assert_eq!(a, v, "credential_id {id} names two different values");
        let b = value_to_id.entry(v.clone()).or_insert_with(|| id.clone());
        assert_eq!(b, &id, "one value under two credential IDs");
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets must not leak

/// What an OpenBao/Vault token looks like (`s.…`, `hvs.…`, batch `b.…`, recovery `r.…`).
fn vault_token_regex() -> Regex {
    Regex::new(r"\b(?:hv[sbr]|[sbr])\.[A-Za-z0-9]{20,}\b").unwrap()
}

/// None of `secrets`, the identity token, nor anything shaped like a Vault token appears in
/// sidekey's stderr or stdout (audit).
#[track_caller]
fn assert_no_leak(sk: &Sidekey, bao: &Bao, secrets: &[&str]) {
    let identity_token = bao.identity.token();
    let stderr = sk.stderr();
    let stdout = sk.stdout_text();
    for (what, text) in [("stderr", &stderr), ("stdout (audit)", &stdout)] {
        for s in secrets.iter().copied().chain([identity_token.trim()]) {
            assert!(!s.is_empty());
            assert!(
                !text.contains(s),
                "secret {s:?} leaked into sidekey's {what}:\n{text}"
            );
        }
        if let Some(m) = vault_token_regex().find(text) {
            panic!(
                "something shaped like a Vault token ({}) in sidekey's {what}:\n{text}",
                m.as_str()
            );
        }
    }
}

/// Neither `secrets` nor a Vault token is in `body` (a response to the agent).
#[track_caller]
fn assert_body_clean(body: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!body.contains(s), "secret {s:?} in a response body: {body}");
    }
    assert!(
        !vault_token_regex().is_match(body),
        "a Vault token in a response body: {body}"
    );
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown (SIGTERM)

/// Sends SIGTERM to sidekey and waits for it to exit.
fn terminate(sk: &mut Sidekey) {
    sk.terminate();
}

fn write_secret_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write secret file");
    path
}

// ---------------------------------------------------------------------------------------------
// KV v2

#[test]
fn kubernetes_method_logs_in_at_its_own_mount_with_the_pod_token() {
    // Vault's kubernetes method takes the same `{role, jwt}` login as the jwt method, at
    // auth/kubernetes/login; OpenBao cannot review tokens without an API server, so its jwt
    // method mounted at `kubernetes/` stands in for it and checks the pod token itself.
    let env = Env::new();
    let bao = Bao::start(
        r#"path "secret/data/agents/*" { capabilities = ["read"] }"#,
        "1m",
        "10m",
    );
    bao.bao.enable_jwt_auth_at(
        "kubernetes",
        bao.identity.public_pem(),
        ROLE,
        AUDIENCE,
        "1m",
        "10m",
        &["agent"],
    );
    bao.bao
        .kv_put("agents/k8s", json!({ "token": "kv-via-k8s-auth-93d0" }));
    let issuer = JWT_ISSUER.replace("method: jwt", "method: kubernetes");
    let yaml = vault_config(
        &issuer,
        "  k8s:\n    issuer: bao\n    path: secret/data/agents/k8s\n    field: token\n",
        &[("k8s", "k8s")],
    );
    let sk = start_sidekey(&env, &bao, &yaml);
    get(&sk, "k8s", "/echo/k8s").assert_status(200);
    assert_eq!(bearer_at(&env, "/echo/k8s"), "kv-via-k8s-auth-93d0");
    let tokens = bao.bao.tokens_from("auth/kubernetes/login");
    assert_eq!(tokens.len(), 1, "one login at auth/kubernetes: {tokens:#?}");
    assert!(
        bao.bao.tokens_from("auth/jwt/login").is_empty(),
        "nothing at auth/jwt"
    );
}

#[test]
fn kv_v2_field_via_jwt_login_is_injected_and_read_again_after_ttl() {
    let env = Env::new();
    let bao = Bao::start(
        r#"path "secret/data/agents/*" { capabilities = ["read"] }"#,
        "1m",
        "10m",
    );
    let v1 = bao.bao.kv_put(
        "agents/github",
        json!({ "token": "ghp_kv_first_6c1e", "user": "bot" }),
    );
    assert_eq!(v1, 1);
    let yaml = vault_config(
        JWT_ISSUER,
        "  github:\n    issuer: bao\n    path: secret/data/agents/github\n    field: token\n    ttl: 10s\n",
        &[("kv", "github")],
    );
    let sk = start_sidekey(&env, &bao, &yaml);

    let first_at = Instant::now();
    get(&sk, "kv", "/echo/kv/first").assert_status(200);
    assert_eq!(bearer_at(&env, "/echo/kv/first"), "ghp_kv_first_6c1e");
    let rec = record_for(&sk, "/echo/kv/first");
    assert_eq!(rec["credential"], "github", "{rec}");
    assert_eq!(rec["issuer"], "bao", "{rec}");
    assert_eq!(rec["credential_id"], "secret/data/agents/github@1", "{rec}");
    assert_eq!(rec["status"], 200, "{rec}");
    let issued = wait_event(&sk, "github", "issued", sidekey::AUDIT_TIMEOUT);
    assert_eq!(
        issued.len(),
        1,
        "one read for the first request: {issued:#?}"
    );
    assert_eq!(issued[0]["issuer"], "bao", "{}", issued[0]);
    assert_eq!(
        issued[0]["credential_id"], "secret/data/agents/github@1",
        "{}",
        issued[0]
    );
    // Logged in with the pod identity at auth/jwt/login.
    let tokens = bao.bao.tokens_from("auth/jwt/login");
    assert_eq!(tokens.len(), 1, "one login: {tokens:#?}");
    assert_eq!(tokens[0]["display_name"], "jwt-agent-7", "{}", tokens[0]);

    // A response header echoing the credential is redacted (the body is the upstream's).
    let echoed = get(&sk, "kv", "/reflect-auth");
    echoed.assert_status(200);
    assert_eq!(
        echoed.header("x-reflected-auth"),
        Some("[redacted by sidekey]"),
        "{:?}",
        echoed.headers
    );

    // A new version is not seen before the ttl: the value is cached, not read per request.
    let v2 = bao.bao.kv_put(
        "agents/github",
        json!({ "token": "ghp_kv_second_93ab", "user": "bot" }),
    );
    assert_eq!(v2, 2);
    get(&sk, "kv", "/echo/kv/cached").assert_status(200);
    if first_at.elapsed() < Duration::from_secs(8) {
        assert_eq!(
            bearer_at(&env, "/echo/kv/cached"),
            "ghp_kv_first_6c1e",
            "re-read before the ttl"
        );
    }

    // Within the ttl (10 s, plus slack) the new version is injected; no request fails meanwhile.
    let mut switched = None;
    let mut i = 0;
    while first_at.elapsed() < Duration::from_secs(20) {
        let path = format!("/echo/kv/poll-{i}");
        i += 1;
        get(&sk, "kv", &path).assert_status(200);
        if bearer_at(&env, &path) == "ghp_kv_second_93ab" {
            switched = Some((path, first_at.elapsed()));
            break;
        }
        // The pace of this poll: each try is an agent request; the re-read is due on
        // sidekey's schedule (the KV ttl), which is what is measured.
        std::thread::sleep(Duration::from_millis(300));
    }
    let (path, after) =
        switched.expect("the new KV version was not injected within 20 s of the first read");
    assert!(
        after >= Duration::from_secs(6),
        "re-read after {after:?}, well before the 10 s ttl"
    );
    let rec = record_for(&sk, &path);
    assert_eq!(rec["credential_id"], "secret/data/agents/github@2", "{rec}");
    let v2_events: Vec<Value> = events(&sk, "github", None)
        .into_iter()
        .filter(|e| e["credential_id"] == "secret/data/agents/github@2")
        .collect();
    assert!(
        v2_events
            .iter()
            .any(|e| e["event"] == "issued" || e["event"] == "refreshed"),
        "a credential event for version 2: {:#?}",
        events(&sk, "github", None)
    );
    // Every later request gets the new version.
    get(&sk, "kv", "/echo/kv/after").assert_status(200);
    assert_eq!(bearer_at(&env, "/echo/kv/after"), "ghp_kv_second_93ab");

    assert_no_leak(&sk, &bao, &["ghp_kv_first_6c1e", "ghp_kv_second_93ab"]);
}

#[test]
fn kv_v2_via_approle_login_with_role_and_secret_id_files() {
    let env = Env::new();
    let bao = Bao::start(
        r#"path "secret/data/agents/*" { capabilities = ["read"] }"#,
        "1m",
        "10m",
    );
    bao.bao
        .kv_put("agents/ci", json!({ "token": "ci-kv-secret-77d0" }));
    let (role_id, secret_id) = bao
        .bao
        .enable_approle_at("sidekey-approle", "sidekey", &["agent"]);
    let files = tempfile::tempdir().unwrap();
    let role_id_file = write_secret_file(files.path(), "role-id", &role_id);
    let secret_id_file = write_secret_file(files.path(), "secret-id", &format!("{secret_id}\n"));
    let issuer = format!(
        "  bao-ci:\n    kind: vault\n    address: \"{{bao}}\"\n    auth:\n      method: approle\n      \
         mount: sidekey-approle\n      role_id_file: \"{}\"\n      secret_id_file: \"{}\"\n",
        role_id_file.display(),
        secret_id_file.display()
    );
    let yaml = vault_config(
        &issuer,
        "  ci:\n    issuer: bao-ci\n    path: secret/data/agents/ci\n    field: token\n",
        &[("ci", "ci")],
    );
    let mut sk = start_sidekey(&env, &bao, &yaml);

    let res = get(&sk, "ci", "/echo/ci/1");
    res.assert_status(200);
    assert_eq!(bearer_at(&env, "/echo/ci/1"), "ci-kv-secret-77d0");
    let rec = record_for(&sk, "/echo/ci/1");
    assert_eq!(rec["issuer"], "bao-ci", "{rec}");
    assert_eq!(rec["credential"], "ci", "{rec}");
    assert_eq!(rec["credential_id"], "secret/data/agents/ci@1", "{rec}");
    let tokens = bao.bao.tokens_from("auth/sidekey-approle/login");
    assert_eq!(tokens.len(), 1, "one approle login: {tokens:#?}");
    // The local issuer's route works alongside.
    curl_via(&sk, &["https://api.test.local/echo/local"]).assert_status(200);

    assert_no_leak(&sk, &bao, &["ci-kv-secret-77d0", &secret_id]);

    // At shutdown the token is revoked.
    terminate(&mut sk);
    assert!(
        eventually(Duration::from_secs(3), || bao
            .bao
            .tokens_from("auth/sidekey-approle/login")
            .is_empty()),
        "sidekey's token outlived it: {:#?}",
        bao.bao.tokens_from("auth/sidekey-approle/login")
    );
    assert_no_leak(&sk, &bao, &["ci-kv-secret-77d0", &secret_id]);
}

#[test]
fn kv_v2_in_a_namespace_is_read_there_and_the_same_path_without_namespace_from_the_root() {
    // The same KV path holds one value in the root namespace and another in `team-a`; only the
    // issuer with `namespace: team-a` (X-Vault-Namespace) reaches the latter, and it logs in
    // with an approle that exists only inside the namespace.
    const NS: &str = "team-a";
    let env = Env::new();
    let bao = Bao::start(
        r#"path "secret/data/agents/*" { capabilities = ["read"] }"#,
        "1m",
        "10m",
    );
    bao.bao.create_namespace_with_kv(NS);
    let root_version = bao
        .bao
        .kv_put("agents/shared", json!({ "token": "root-kv-secret-5d21" }));
    assert_eq!(root_version, 1);
    let written = bao.bao.api_ok(
        "POST",
        &format!("{NS}/secret/data/agents/shared"),
        Some(json!({ "data": { "token": "ns-kv-secret-a83f" } })),
    );
    assert_eq!(written["data"]["version"], 1, "{written}");
    // Policy and approle inside the namespace (the root namespace has no approle at all).
    bao.bao.api_ok(
        "PUT",
        &format!("{NS}/sys/policies/acl/agent-ns"),
        Some(json!({ "policy": format!(
            "{ISSUER_POLICY_BASE}\npath \"secret/data/agents/*\" {{ capabilities = [\"read\"] }}\n"
        ) })),
    );
    bao.bao.api_ok(
        "POST",
        &format!("{NS}/sys/auth/approle"),
        Some(json!({ "type": "approle" })),
    );
    bao.bao.api_ok(
        "POST",
        &format!("{NS}/auth/approle/role/sidekey"),
        Some(json!({ "token_policies": ["agent-ns"], "token_ttl": "1m", "token_max_ttl": "10m" })),
    );
    let role_id = bao.bao.api_ok(
        "GET",
        &format!("{NS}/auth/approle/role/sidekey/role-id"),
        None,
    )["data"]["role_id"]
        .as_str()
        .expect("role_id")
        .to_string();
    let secret_id = bao.bao.api_ok(
        "POST",
        &format!("{NS}/auth/approle/role/sidekey/secret-id"),
        Some(json!({})),
    )["data"]["secret_id"]
        .as_str()
        .expect("secret_id")
        .to_string();
    assert_eq!(
        bao.bao.api("GET", "sys/auth/approle", None).0,
        400,
        "approle is enabled only inside the namespace"
    );

    let files = tempfile::tempdir().unwrap();
    let role_id_file = write_secret_file(files.path(), "role-id", &role_id);
    let secret_id_file = write_secret_file(files.path(), "secret-id", &secret_id);
    let issuers = format!(
        "{JWT_ISSUER}  bao-ns:\n    kind: vault\n    address: \"{{bao}}\"\n    namespace: {NS}\n    \
         auth:\n      method: approle\n      role_id_file: \"{}\"\n      secret_id_file: \"{}\"\n",
        role_id_file.display(),
        secret_id_file.display()
    );
    let credentials = "  in-ns:\n    issuer: bao-ns\n    path: secret/data/agents/shared\n    \
                       field: token\n  in-root:\n    issuer: bao\n    \
                       path: secret/data/agents/shared\n    field: token\n";
    let yaml = vault_config(
        &issuers,
        credentials,
        &[("ns", "in-ns"), ("root", "in-root")],
    );
    let mut sk = start_sidekey(&env, &bao, &yaml);

    // With `namespace:`: the namespace's value.
    get(&sk, "ns", "/echo/ns/1").assert_status(200);
    assert_eq!(bearer_at(&env, "/echo/ns/1"), "ns-kv-secret-a83f");
    let rec = record_for(&sk, "/echo/ns/1");
    assert_eq!(rec["issuer"], "bao-ns", "{rec}");
    assert_eq!(rec["credential"], "in-ns", "{rec}");
    assert_eq!(rec["credential_id"], "secret/data/agents/shared@1", "{rec}");
    let issued = wait_event(&sk, "in-ns", "issued", sidekey::AUDIT_TIMEOUT);
    assert_eq!(issued[0]["issuer"], "bao-ns", "{}", issued[0]);
    assert_eq!(
        issued[0]["credential_id"], "secret/data/agents/shared@1",
        "{}",
        issued[0]
    );
    // Without it, same path: the root namespace's value.
    get(&sk, "root", "/echo/root/1").assert_status(200);
    assert_eq!(bearer_at(&env, "/echo/root/1"), "root-kv-secret-5d21");
    let rec = record_for(&sk, "/echo/root/1");
    assert_eq!(rec["issuer"], "bao", "{rec}");
    assert_eq!(rec["credential_id"], "secret/data/agents/shared@1", "{rec}");

    // The login happened inside the namespace, the other one in the root namespace.
    let ns_tokens = bao.bao.tokens_in_namespace(NS, "auth/approle/login");
    assert_eq!(
        ns_tokens.len(),
        1,
        "one approle login in {NS}: {ns_tokens:#?}"
    );
    assert_eq!(bao.bao.tokens_from("auth/jwt/login").len(), 1);

    let secrets = [
        "ns-kv-secret-a83f",
        "root-kv-secret-5d21",
        secret_id.as_str(),
    ];
    assert_no_leak(&sk, &bao, &secrets);

    // At shutdown the namespace's token is revoked too (revoke-self carries the namespace).
    terminate(&mut sk);
    assert!(
        eventually(Duration::from_secs(3), || bao
            .bao
            .tokens_in_namespace(NS, "auth/approle/login")
            .is_empty()),
        "sidekey's namespace token outlived it: {:#?}",
        bao.bao.tokens_in_namespace(NS, "auth/approle/login")
    );
    assert_no_leak(&sk, &bao, &secrets);
}

// ---------------------------------------------------------------------------------------------
// Dynamic secrets with leases

const DB_POLICY: &str = r#"path "database/creds/readonly" { capabilities = ["read"] }"#;
const DB_CREDENTIAL: &str =
    "  db:\n    issuer: bao\n    path: database/creds/readonly\n    field: password\n";

/// The injected password must log in to PostgreSQL (as the lease's user) when it is used.
fn password_works(pg: &Postgres) -> impl FnMut(&str) -> Result<(), String> + '_ {
    move |password: &str| match pg.user_for_password(password) {
        Some(_) => Ok(()),
        None => Err(format!(
            "the injected password logs in as no user (live users: {:?})",
            pg.roles_with_prefix("v-")
        )),
    }
}

#[test]
fn database_lease_is_renewed_replaced_at_max_ttl_and_revoked_at_shutdown() {
    let env = Env::new();
    let pg = Postgres::start();
    let bao = Bao::start(DB_POLICY, "1m", "10m");
    bao.bao.enable_database(&pg, "readonly", "6s", "20s");
    let yaml = vault_config(JWT_ISSUER, DB_CREDENTIAL, &[("db", "db")]);
    let mut sk = start_sidekey(&env, &bao, &yaml);

    // Several times the lease TTL (6 s) and past its max TTL (20 s).
    let samples = run_for(
        &sk,
        &env,
        "db",
        Duration::from_secs(30),
        Duration::from_millis(250),
        password_works(&pg),
    );
    assert!(samples.len() >= 30, "too few requests: {}", samples.len());
    assert_all_ok(&samples);
    assert_ids_match_values(&sk, &samples);

    let leases = assert_leases_valid_when_used(&sk, "db");
    assert!(
        leases
            .iter()
            .all(|l| l.starts_with("database/creds/readonly/")),
        "credential_id is the lease ID: {leases:?}"
    );
    assert!(
        leases.len() >= 2,
        "a new lease after the 20 s max TTL: {leases:?}"
    );
    let renewed = events(&sk, "db", Some("renewed"));
    assert!(
        !renewed.is_empty(),
        "the 6 s lease was renewed: {:#?}",
        events(&sk, "db", None)
    );
    assert!(renewed.iter().all(|e| e["issuer"] == "bao"), "{renewed:#?}");
    for r in route_records(&sk, "db") {
        assert_eq!(r["issuer"], "bao", "{r}");
    }

    // The lease in use now (one more request, right before the shutdown).
    get(&sk, "db", "/echo/db/last").assert_status(200);
    let password = bearer_at(&env, "/echo/db/last");
    let held = record_for(&sk, "/echo/db/last")["credential_id"]
        .as_str()
        .expect("credential_id")
        .to_string();
    assert!(bao.bao.lease_exists(&held), "held lease {held} is live");
    let user = pg
        .user_for_password(&password)
        .expect("the held password logs in");
    assert_eq!(bao.bao.tokens_from("auth/jwt/login").len(), 1);
    let mut passwords: BTreeSet<String> = samples.iter().filter_map(|s| s.value.clone()).collect();
    passwords.insert(password.clone());
    let secrets: Vec<&str> = passwords.iter().map(String::as_str).collect();
    assert_no_leak(&sk, &bao, &secrets);

    // Shutdown: the lease is revoked (its Postgres role dropped), then the token.
    terminate(&mut sk);
    let revoked = wait_event(&sk, "db", "revoked", Duration::from_secs(5));
    assert!(
        revoked.iter().any(|e| e["credential_id"] == held.as_str()),
        "a revoked event for {held}: {revoked:#?}"
    );
    assert!(
        !bao.bao.lease_exists(&held),
        "lease {held} outlived sidekey"
    );
    assert!(
        eventually(Duration::from_secs(3), || !pg.role_exists(&user)),
        "Postgres role {user} outlived sidekey"
    );
    assert!(
        eventually(Duration::from_secs(3), || bao
            .bao
            .list_leases("database/creds/readonly")
            .is_empty()),
        "leases left after shutdown: {:?}",
        bao.bao.list_leases("database/creds/readonly")
    );
    assert!(
        bao.bao.tokens_from("auth/jwt/login").is_empty(),
        "sidekey's token outlived it"
    );
    assert_no_leak(&sk, &bao, &secrets);
}

/// Database leases (default TTL `lease_ttl`, max 1m) read with a token that renews every 8 s
/// but cannot live past 16 s, used every 250 ms for `run`: every request succeeds with a lease
/// that is valid when used, and the first lease (dead with the first token) was replaced.
struct CappedTokenRun {
    sk: Sidekey,
    bao: Bao,
    samples: Vec<Sample>,
    started: u64,
    _pg: Postgres,
    _env: Env,
}

impl CappedTokenRun {
    fn run(lease_ttl: &str, run: Duration) -> CappedTokenRun {
        let env = Env::new();
        let pg = Postgres::start();
        let bao = Bao::start(DB_POLICY, "8s", "16s");
        bao.bao.enable_database(&pg, "readonly", lease_ttl, "1m");
        let yaml = vault_config(JWT_ISSUER, DB_CREDENTIAL, &[("db", "db")]);
        let sk = start_sidekey(&env, &bao, &yaml);
        let started = now_unix();
        let samples = run_for(
            &sk,
            &env,
            "db",
            run,
            Duration::from_millis(250),
            password_works(&pg),
        );
        assert_all_ok(&samples);
        assert_ids_match_values(&sk, &samples);
        let leases = assert_leases_valid_when_used(&sk, "db");
        assert!(
            leases.len() >= 2,
            "the first lease died with the first token at 16 s: {leases:?}"
        );
        CappedTokenRun {
            sk,
            bao,
            samples,
            started,
            _pg: pg,
            _env: env,
        }
    }

    /// No password sidekey injected shows up in its output or OpenBao's.
    fn assert_no_leak(&self) {
        let passwords: Vec<String> = self
            .samples
            .iter()
            .filter_map(|s| s.value.clone())
            .collect();
        let secrets: Vec<&str> = passwords.iter().map(String::as_str).collect();
        assert_no_leak(&self.sk, &self.bao, &secrets);
    }
}

#[test]
fn leases_stay_valid_when_the_vault_token_reaches_its_max_ttl() {
    // OpenBao revokes every lease with the token that created it. The token here cannot live
    // past 16 s while the lease could live a minute: sidekey must log in again and get a new
    // lease before the old token (and with it the old lease) goes.
    let run = CappedTokenRun::run("6s", Duration::from_secs(26));
    let tokens = run.bao.bao.tokens_from("auth/jwt/login");
    assert!(
        tokens
            .iter()
            .any(|t| t["creation_time"].as_u64().unwrap_or(0) >= run.started + 8),
        "sidekey logged in again: {tokens:#?}"
    );
    run.assert_no_leak();
}

#[test]
fn a_long_lease_read_before_its_token_was_capped_is_replaced_before_the_token_ends() {
    // The lease could live 40 s, but it dies with the token that read it, whose end (16 s)
    // only becomes known when a renewal comes back capped, long after the lease was read and
    // scheduled. sidekey must re-plan the lease then, not at its own refresh point (~26 s).
    let run = CappedTokenRun::run("40s", Duration::from_secs(24));
    let failed = events(&run.sk, "db", Some("failed"));
    assert!(failed.is_empty(), "no failed fetch on the way: {failed:#?}");
    run.assert_no_leak();
}

#[test]
fn pki_non_renewable_lease_is_replaced_before_expiry() {
    let env = Env::new();
    let bao = Bao::start(
        r#"path "pki/issue/agent" { capabilities = ["create", "update"] }"#,
        "1m",
        "10m",
    );
    bao.bao.enable_pki("agent", "15s");
    let credential = "  cert:\n    issuer: bao\n    path: pki/issue/agent\n    \
                      params: { common_name: agent.internal, ttl: 12s }\n    \
                      field: serial_number\n";
    let yaml = vault_config(JWT_ISSUER, credential, &[("cert", "cert")]);
    let sk = start_sidekey(&env, &bao, &yaml);

    let serial = Regex::new(r"^[0-9a-f]{2}(:[0-9a-f]{2})+$").unwrap();
    let samples = run_for(
        &sk,
        &env,
        "cert",
        Duration::from_secs(27),
        Duration::from_millis(250),
        |v| {
            serial
                .is_match(v)
                .then_some(())
                .ok_or_else(|| format!("not a serial number: {v:?}"))
        },
    );
    assert_all_ok(&samples);
    assert_ids_match_values(&sk, &samples);
    let leases = assert_leases_valid_when_used(&sk, "cert");
    assert!(
        leases.iter().all(|l| l.starts_with("pki/issue/agent/")),
        "credential_id is the lease ID: {leases:?}"
    );
    assert!(
        leases.len() >= 2,
        "the 12 s certificate lease was replaced: {leases:?}"
    );
    let all = events(&sk, "cert", None);
    assert!(
        all.iter().all(|e| e["event"] != "renewed"),
        "a non-renewable lease is never renewed: {all:#?}"
    );
    let refreshed = events(&sk, "cert", Some("refreshed"));
    assert!(!refreshed.is_empty(), "a refreshed event: {all:#?}");
    // Each replacement happened while the lease it replaced was still valid.
    let mut expiry_of_current: Option<f64> = None;
    for e in &all {
        let exp = e["expires_at"].as_str().map(unix_time);
        if e["event"] == "refreshed" {
            let ts = unix_time(e["ts"].as_str().unwrap());
            let prev = expiry_of_current.expect("refreshed after an issued lease");
            assert!(
                ts < prev,
                "replaced {:.1}s after the previous lease expired: {e}",
                ts - prev
            );
        }
        if exp.is_some() {
            expiry_of_current = exp;
        }
    }
    let serials: BTreeSet<String> = samples.iter().filter_map(|s| s.value.clone()).collect();
    assert!(serials.len() >= 2, "{serials:?}");
    assert_no_leak(&sk, &bao, &[]);
}

// ---------------------------------------------------------------------------------------------
// Failures

#[test]
fn issuer_failures_are_refused_as_credential_unavailable_and_cached_values_outlive_openbao() {
    let env = Env::new();
    let mut bao = Bao::start(
        r#"path "secret/data/agents/*" { capabilities = ["read"] }"#,
        "1m",
        "10m",
    );
    bao.bao
        .kv_put("agents/ok", json!({ "token": "ok-kv-secret-41f2" }));
    bao.bao
        .kv_put("agents/nofield", json!({ "other": "nofield-value-0c3d" }));
    bao.bao
        .kv_put("agents/later", json!({ "token": "later-kv-secret-e5a9" }));
    let issuers = format!(
        "{JWT_ISSUER}  bao-badrole:\n    kind: vault\n    address: \"{{bao}}\"\n    auth:\n      \
         method: jwt\n      role: nope\n"
    );
    let kv = |name: &str, issuer: &str, path: &str| {
        format!(
            "  {name}:\n    issuer: {issuer}\n    path: secret/data/{path}\n    field: token\n    ttl: 5m\n"
        )
    };
    let credentials = [
        kv("ok", "bao", "agents/ok"),
        kv("missing", "bao", "agents/missing"),
        kv("nofield", "bao", "agents/nofield"),
        kv("forbidden", "bao", "other/x"),
        kv("badrole", "bao-badrole", "agents/ok"),
        kv("later", "bao", "agents/later"),
    ]
    .concat();
    let routes = [
        ("ok", "ok"),
        ("missing", "missing"),
        ("nofield", "nofield"),
        ("forbidden", "forbidden"),
        ("badrole", "badrole"),
        ("later", "later"),
    ];
    let yaml = vault_config(&issuers, &credentials, &routes);
    let sk = start_sidekey(&env, &bao, &yaml);
    let secrets = [
        "ok-kv-secret-41f2",
        "nofield-value-0c3d",
        "later-kv-secret-e5a9",
    ];

    get(&sk, "ok", "/echo/ok/1").assert_status(200);
    assert_eq!(bearer_at(&env, "/echo/ok/1"), "ok-kv-secret-41f2");

    for (route, issuer) in [
        ("missing", "bao"),
        ("nofield", "bao"),
        ("forbidden", "bao"),
        ("badrole", "bao-badrole"),
    ] {
        let path = format!("/echo/{route}/1");
        let res = get(&sk, route, &path);
        let body = res.expect_refusal(503, "credential_unavailable");
        assert_body_clean(&res.body_str(), &secrets);
        let rec = sk
            .wait_audit(
                |r| r["type"] == "request" && r["request_id"] == body["request_id"],
                1,
                sidekey::AUDIT_TIMEOUT,
            )
            .remove(0);
        assert_eq!(rec["code"], "credential_unavailable", "{rec}");
        assert_eq!(rec["status"], 503, "{rec}");
        assert_eq!(rec["route"], route, "{rec}");
        assert_eq!(rec["credential"], route, "{rec}");
        assert!(rec["credential_id"].is_null(), "{rec}");
        let failed = wait_event(&sk, route, "failed", sidekey::AUDIT_TIMEOUT);
        let ev = &failed[0];
        assert_eq!(ev["issuer"], issuer, "{ev}");
        assert!(
            ev["error"].as_str().is_some_and(|e| !e.is_empty()),
            "a failed event says why: {ev}"
        );
        assert!(
            env.upstream.requests_to(&path).is_empty(),
            "nothing forwarded without a credential"
        );
    }
    assert!(
        events(&sk, "ok", Some("failed")).is_empty(),
        "{:#?}",
        sk.audit()
    );

    // The proxy keeps serving the other routes.
    get(&sk, "ok", "/echo/ok/2").assert_status(200);
    assert_eq!(bearer_at(&env, "/echo/ok/2"), "ok-kv-secret-41f2");
    curl_via(&sk, &["https://api.test.local/echo/local"]).assert_status(200);

    // Once the secret exists, the credential becomes available (no permanent failure).
    bao.bao.kv_put(
        "agents/missing",
        json!({ "token": "missing-now-there-8b7e" }),
    );
    let mut i = 0;
    let recovered = eventually(Duration::from_secs(20), || {
        i += 1;
        let path = format!("/echo/missing/retry-{i}");
        let res = get(&sk, "missing", &path);
        // The pace of this poll: each try is an agent request, and a fetch sidekey retries.
        std::thread::sleep(Duration::from_millis(400));
        res.status == 200 && bearer_at(&env, &path) == "missing-now-there-8b7e"
    });
    assert!(
        recovered,
        "the credential never recovered once the secret existed"
    );

    // OpenBao goes away: the cached KV value (ttl 5m) keeps working ...
    bao.bao.stop();
    for n in 0..3 {
        let path = format!("/echo/ok/down-{n}");
        get(&sk, "ok", &path).assert_status(200);
        assert_eq!(bearer_at(&env, &path), "ok-kv-secret-41f2");
    }
    // ... a credential never fetched is refused promptly, not hung ...
    let t = Instant::now();
    let res = get(&sk, "later", "/echo/later/1");
    res.expect_refusal(503, "credential_unavailable");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "refusal took {:?}",
        t.elapsed()
    );
    assert_body_clean(&res.body_str(), &secrets);
    // ... and other routes are unaffected.
    curl_via(&sk, &["https://api.test.local/echo/local-2"]).assert_status(200);

    assert_no_leak(
        &sk,
        &bao,
        &[
            "ok-kv-secret-41f2",
            "nofield-value-0c3d",
            "later-kv-secret-e5a9",
            "missing-now-there-8b7e",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// The helpers above, on what works without the vault issuer

#[test]
fn helpers_parse_rfc3339_and_stop_sidekey_with_sigterm() {
    assert_eq!(unix_time("1970-01-01T00:00:00Z"), 0.0);
    assert_eq!(unix_time("2026-11-23T09:39:58Z"), 1_795_426_798.0);
    assert_eq!(unix_time("2026-11-23T10:39:58.5+01:00"), 1_795_426_798.5);
    assert_eq!(unix_time("2000-02-29T00:00:00-00:30"), 951_784_200.0);
    assert!(vault_token_regex().is_match("token s.Xe9ozD3gzNyYN0SuThEo96z2 here"));
    assert!(vault_token_regex().is_match("hvs.CAESIJ0aB6kq0lWfJ7cRu2a1yFQ"));
    assert!(!vault_token_regex().is_match("database/creds/readonly/wECt5ylT6OXfPeZVaoUTXFNZ"));
    assert!(!vault_token_regex().is_match("listeners.forwardroutesadminlisteners"));

    let env = Env::new();
    let mut sk = env.sidekey(&default_config());
    curl_via(&sk, &["https://api.test.local/echo/x"]).assert_status(200);
    let ts = sk.only_request_record()["ts"].as_str().unwrap().to_string();
    assert!((unix_time(&ts) - now_unix() as f64).abs() < 30.0, "{ts}");
    terminate(&mut sk);
    assert!(!sk.is_running());
}
