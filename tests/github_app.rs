//! The `kind: github-app` issuer against a stand-in for GitHub's API
//! (tests/clients/github_app_server.py, see tests/common/github_app.rs), with the App's private
//! key in a real OpenBao KV v2 secret (or, for development, a file). Through sidekey to the
//! server's repository resources: the App JWT verified (RS256, `iss`, `iat`/`exp`), tokens
//! narrowed per credential and refused outside their narrowing, cached (one mint for many
//! requests), revoked at retirement (a reload that changes the credential) and at shutdown
//! (SIGTERM), the credential ID GitHub's `hashed_token` and the token never in the audit trail;
//! an answer granting more than asked refused (503) and its token revoked; a key rotated in
//! OpenBao used at the next mint; a token replaced (here: refused by the upstream) revoked
//! once the requests that took it are done.
//!
//! Needs `scripts/peers/openbao` (run by `scripts/install-test-deps`) and the test venv.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::github_app::{rsa_key_pair, GitHubApi, APP_ID, INSTALLATION_ID};
use crate::common::openbao::{OpenBao, ISSUER_POLICY_BASE};
use crate::common::*;

const AUDIENCE: &str = "sidekey-vault-test";
const WAIT: Duration = Duration::from_secs(10);

/// The private key's source for the `github` issuer.
const VAULT_KEY: &str = "{ vault: bao, path: secret/data/github-app, field: private_key }";
const FILE_KEY: &str = "{ file: \"{key_file}\" }";

/// Two credentials of the `github` issuer and a route each to `http://github.test.local`
/// (pinned to the server): `issues` (Bearer) with `gh-issues` = `{gh_issues}`, and `code`
/// (Basic `x-access-token`, as git over HTTPS) with `gh-code` = `{gh_code}`. `key` is the
/// issuer's `private_key`.
fn config(key: &str, gh_issues: &str, gh_code: &str) -> String {
    format!(
        r#"upstream:
  resolve:
    "github.test.local:80": "{{github}}"
identity:
  token_file: "{{identity_token}}"
issuers:
  github:
    kind: github-app
    app_id: {APP_ID}
    installation_id: {INSTALLATION_ID}
    api_url: "{{github_url}}"
    private_key: {key}
  bao:
    kind: vault
    address: "{{bao}}"
    auth: {{ method: jwt, role: agent }}
credentials:
  gh-issues: {gh_issues}
  gh-code: {gh_code}
routes:
  - name: issues
    hosts: [github.test.local]
    schemes: [http]
    methods: [GET, POST]
    paths: ["/repos/acme/*/issues", "/repos/acme/*/issues/**"]
    credential: gh-issues
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
  - name: code
    hosts: [github.test.local]
    schemes: [http]
    methods: [GET]
    paths: ["/repos/acme/*/contents/**"]
    credential: gh-code
    inject: {{ basic: {{ username: x-access-token }} }}
    allow_private: true
"#
    )
}

const GH_ISSUES: &str =
    "{ issuer: github, repositories: [api, web], permissions: { issues: write } }";
const GH_CODE: &str = "{ issuer: github, repositories: [api], permissions: { contents: read } }";

/// OpenBao with jwt auth for `identity` (role `agent`, allowed to read the App's key) and the
/// key `pem` at `secret/github-app`, field `private_key`.
fn openbao_with_key(identity: &Identity, pem: &str) -> OpenBao {
    let bao = OpenBao::start();
    bao.write_policy(
        "agent",
        &format!(
            "{ISSUER_POLICY_BASE}\npath \"secret/data/github-app\" {{ capabilities = [\"read\"] }}"
        ),
    );
    bao.enable_jwt_auth(
        identity.public_pem(),
        "agent",
        AUDIENCE,
        "5m",
        "1h",
        &["agent"],
    );
    bao.kv_put("github-app", json!({ "private_key": pem }));
    bao
}

fn vars(api: &GitHubApi, bao: &OpenBao, identity: &Identity) -> Vec<(&'static str, String)> {
    vec![
        ("github", api.addr()),
        ("github_url", api.url()),
        ("bao", bao.address()),
        (
            "identity_token",
            identity.token_file().display().to_string(),
        ),
        ("key_file", api.key_file().display().to_string()),
    ]
}

/// `METHOD http://github.test.local<path>` through the forward listener.
fn call(sk: &Sidekey, method: &str, path: &str) -> CurlResult {
    curl_via(
        sk,
        &["-X", method, &format!("http://github.test.local{path}")],
    )
}

fn credential_events(sk: &Sidekey, event: &str) -> Vec<Value> {
    sk.audit()
        .into_iter()
        .filter(|r| r["type"] == "credential" && r["event"] == event)
        .collect()
}

/// The minted event whose asked permissions are `permissions`.
#[track_caller]
fn minted_for(api: &GitHubApi, permissions: Value) -> Vec<Value> {
    api.events("minted")
        .into_iter()
        .filter(|m| m["asked"]["permissions"] == permissions)
        .collect()
}

#[test]
fn tokens_are_minted_narrowed_per_credential_cached_and_revoked_at_retirement_and_shutdown() {
    let env = Env::new();
    let identity = Identity::new("agent-7", AUDIENCE);
    let (private_pem, public_pem) = rsa_key_pair();
    let (rotated_pem, rotated_public) = rsa_key_pair();
    let api =
        GitHubApi::start_with_keys((private_pem.clone(), public_pem), &[&rotated_public], false);
    let bao = openbao_with_key(&identity, &private_pem);
    let vars = vars(&api, &bao, &identity);
    let mut sk = env.sidekey_with(&config(VAULT_KEY, GH_ISSUES, GH_CODE), &vars);

    // Issues of both repositories the credential names, read and written: one token.
    call(&sk, "GET", "/repos/acme/api/issues").assert_status(200);
    call(&sk, "POST", "/repos/acme/web/issues").assert_status(200);
    // Outside its narrowing: another repository, whatever sidekey's route allows.
    call(&sk, "GET", "/repos/acme/secrets/issues").assert_status(403);
    // The code route's credential: contents of `api` only, read only.
    call(&sk, "GET", "/repos/acme/api/contents/README.md").assert_status(200);
    call(&sk, "GET", "/repos/acme/web/contents/README.md").assert_status(403);

    let minted = api.events("minted");
    assert_eq!(minted.len(), 2, "one token per credential: {minted:#?}");
    let issues = &minted_for(&api, json!({ "issues": "write" }))[0];
    let code = &minted_for(&api, json!({ "contents": "read" }))[0];
    assert_eq!(issues["asked"]["repositories"], json!(["api", "web"]));
    assert_eq!(code["asked"]["repositories"], json!(["api"]));
    for m in [issues, code] {
        assert_eq!(m["alg"], "RS256", "{m}");
        assert_eq!(m["key"], 0, "signed with the key in OpenBao: {m}");
        assert_eq!(m["iss"], APP_ID.to_string(), "{m}");
        assert_eq!(m["installation_id"], INSTALLATION_ID, "{m}");
        let (iat, exp) = (m["iat"].as_u64().unwrap(), m["exp"].as_u64().unwrap());
        assert_eq!(exp - iat, 600, "iat now - 60 s, exp now + 9 min: {m}");
        let now = now_unix();
        assert!(iat <= now && exp > now, "{m}");
    }
    assert!(api.events("refused").is_empty(), "{:#?}", api.lines());
    assert_ne!(issues["token"], code["token"]);

    // The audit trail names each token by GitHub's hashed_token, never by itself.
    let records = sk.wait_request_records(5);
    let by_route =
        |route: &str| -> Vec<&Value> { records.iter().filter(|r| r["route"] == route).collect() };
    for r in by_route("issues") {
        assert_eq!(r["credential_id"], issues["hashed_token"], "{r}");
    }
    for r in by_route("code") {
        assert_eq!(r["credential_id"], code["hashed_token"], "{r}");
    }
    let issued = credential_events(&sk, "issued");
    assert_eq!(issued.len(), 2, "{issued:#?}");
    assert!(issued
        .iter()
        .any(|e| e["credential"] == "gh-issues" && e["credential_id"] == issues["hashed_token"]));

    // The key is rotated in OpenBao; a reload that changes `gh-code` retires its token (revoked
    // at GitHub) and the next one is minted with the new key.
    bao.kv_put("github-app", json!({ "private_key": rotated_pem }));
    let reloaded = sk.reload(
        &config(
            VAULT_KEY,
            GH_ISSUES,
            "{ issuer: github, repositories: [api], permissions: { contents: read, pull_requests: read } }",
        ),
        &vars,
    );
    assert_eq!(reloaded["event"], "reloaded", "{reloaded}");
    let revoked = api.wait_event("revoked", 1, WAIT);
    assert_eq!(revoked[0]["hashed_token"], code["hashed_token"]);
    call(&sk, "GET", "/repos/acme/api/contents/README.md").assert_status(200);
    let code2 = &minted_for(&api, json!({ "contents": "read", "pull_requests": "read" }))[0];
    assert_eq!(
        code2["key"], 1,
        "the rotated key signed the new JWT: {code2}"
    );
    // gh-issues was unchanged: its token is kept, not minted again.
    call(&sk, "GET", "/repos/acme/api/issues").assert_status(200);
    assert_eq!(api.events("minted").len(), 3);

    // SIGTERM revokes what is held.
    sk.terminate();
    let revoked: Vec<Value> = api
        .wait_event("revoked", 3, WAIT)
        .into_iter()
        .map(|r| r["hashed_token"].clone())
        .collect();
    for m in [issues, code, code2] {
        assert!(revoked.contains(&m["hashed_token"]), "{m} in {revoked:?}");
    }
    let audited: Vec<Value> = credential_events(&sk, "revoked")
        .into_iter()
        .map(|e| e["credential_id"].clone())
        .collect();
    for m in [issues, code, code2] {
        assert!(audited.contains(&m["hashed_token"]), "{m} in {audited:?}");
    }
    // A revoked token reaches nothing any more.
    let res = curl(&[
        "--noproxy",
        "*",
        "-H",
        &format!(
            "Authorization: Bearer {}",
            issues["token"].as_str().unwrap()
        ),
        &format!("{}/repos/acme/api/issues", api.url()),
    ]);
    assert_eq!(res.status, 401);

    // No token in sidekey's output, audit trail included.
    let output = format!("{}\n{}", sk.stdout_text(), sk.stderr());
    for m in api.events("minted") {
        let token = m["token"].as_str().unwrap();
        assert!(!output.contains(token), "token {token} in sidekey's output");
    }
}

#[test]
fn an_answer_granting_more_than_asked_is_refused_and_its_token_revoked() {
    let env = Env::new();
    let identity = Identity::new("agent-7", AUDIENCE);
    let api = GitHubApi::start(true);
    // No OpenBao: the key is a file, and the vault issuer is never called.
    let vars: Vec<(&'static str, String)> = vec![
        ("github", api.addr()),
        ("github_url", api.url()),
        ("bao", "http://127.0.0.1:9".to_string()),
        (
            "identity_token",
            identity.token_file().display().to_string(),
        ),
        ("key_file", api.key_file().display().to_string()),
    ];
    let sk = env.sidekey_with(&config(FILE_KEY, GH_ISSUES, GH_CODE), &vars);

    let res = call(&sk, "GET", "/repos/acme/api/issues");
    res.expect_refusal(503, "credential_unavailable");
    let minted = api.wait_event("minted", 1, WAIT);
    let revoked = api.wait_event("revoked", 1, WAIT);
    assert_eq!(revoked[0]["hashed_token"], minted[0]["hashed_token"]);
    let failed = credential_events(&sk, "failed");
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("more than asked")),
        "{failed:#?}"
    );
    // The agent is not told GitHub's answer.
    assert!(
        !res.body_str().contains("administration"),
        "{}",
        res.body_str()
    );
    // Nothing reached the resources.
    assert!(api.events("resource").is_empty());

    // GitHub behaves again: after the backoff, the file key works.
    api.set_overgrant(false);
    std::thread::sleep(Duration::from_millis(1500));
    call(&sk, "GET", "/repos/acme/api/issues").assert_status(200);
    let minted = api.events("minted");
    assert_eq!(minted.len(), 2);
    assert_eq!(minted[1]["alg"], "RS256");
}

#[test]
fn a_replaced_token_is_revoked_after_the_requests_that_took_it() {
    let env = Env::new();
    let identity = Identity::new("agent-7", AUDIENCE);
    let api = GitHubApi::start(false);
    let vars: Vec<(&'static str, String)> = vec![
        ("github", api.addr()),
        ("github_url", api.url()),
        ("bao", "http://127.0.0.1:9".to_string()),
        (
            "identity_token",
            identity.token_file().display().to_string(),
        ),
        ("key_file", api.key_file().display().to_string()),
    ];
    let sk = env.sidekey_with(&config(FILE_KEY, GH_ISSUES, GH_CODE), &vars);
    call(&sk, "GET", "/repos/acme/api/issues").assert_status(200);
    let first = api.wait_event("minted", 1, WAIT)[0].clone();

    // GitHub stops taking the token: sidekey mints another and sends the GET again with it.
    api.reject_next();
    call(&sk, "GET", "/repos/acme/api/issues").assert_status(200);
    let second = api.wait_event("minted", 2, WAIT)[1].clone();
    let records = sk.wait_request_records(2);
    assert_eq!(records[1]["retried"], true, "{}", records[1]);
    assert_eq!(records[1]["rejected_credential_id"], first["hashed_token"]);
    assert_eq!(records[1]["credential_id"], second["hashed_token"]);
    assert!(api.events("revoked").is_empty(), "not before the drain");

    // The replaced token is revoked a few seconds later; the new one stays live.
    let revoked = api.wait_event("revoked", 1, WAIT);
    assert_eq!(revoked[0]["hashed_token"], first["hashed_token"]);
    call(&sk, "GET", "/repos/acme/web/issues").assert_status(200);
    assert_eq!(api.events("minted").len(), 2);
    assert_eq!(api.events("revoked").len(), 1);
}

/// A reload that rebuilds the vault issuer the key is read through rebuilds the github-app
/// issuer too (it must not keep reading through the old one, which is shut down): its
/// credentials are retired (their tokens revoked) and new tokens minted through the new one.
#[test]
fn a_rebuilt_vault_issuer_rebuilds_the_github_app_issuer_that_reads_its_key() {
    let env = Env::new();
    let identity = Identity::new("agent-7", AUDIENCE);
    let (private_pem, public_pem) = rsa_key_pair();
    let api = GitHubApi::start_with_keys((private_pem.clone(), public_pem), &[], false);
    let bao = openbao_with_key(&identity, &private_pem);
    let mut vars = vars(&api, &bao, &identity);
    let sk = env.sidekey_with(&config(VAULT_KEY, GH_ISSUES, GH_CODE), &vars);
    call(&sk, "GET", "/repos/acme/api/issues").assert_status(200);
    let first = api.wait_event("minted", 1, WAIT)[0].clone();

    // The same OpenBao under another loopback name: the vault issuer's config changed.
    let address = bao.address().replace("127.0.0.1", "localhost");
    vars.retain(|(k, _)| *k != "bao");
    vars.push(("bao", address));
    let reloaded = sk.reload(&config(VAULT_KEY, GH_ISSUES, GH_CODE), &vars);
    assert_eq!(reloaded["event"], "reloaded", "{reloaded}");
    let changed = &reloaded["changes"]["credentials_changed"];
    assert_eq!(changed, &json!(["gh-code", "gh-issues"]), "{reloaded}");
    let revoked = api.wait_event("revoked", 1, WAIT);
    assert_eq!(revoked[0]["hashed_token"], first["hashed_token"]);

    call(&sk, "GET", "/repos/acme/api/issues").assert_status(200);
    let minted = api.wait_event("minted", 2, WAIT);
    assert_ne!(minted[1]["hashed_token"], first["hashed_token"]);
}

/// The stand-in refuses what GitHub would (so that the tests above prove something): a JWT not
/// RS256-signed with the App's key, another `iss`, `iat` in the future, `exp` passed or more
/// than 10 minutes after `iat`, another installation, no permissions asked for.
#[test]
fn the_stand_in_refuses_app_jwts_and_requests_github_would_refuse() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    let (private_pem, public_pem) = rsa_key_pair();
    let api = GitHubApi::start_with_keys((private_pem.clone(), public_pem.clone()), &[], false);
    let der = rustls_pemfile::private_key(&mut private_pem.as_bytes())
        .expect("PEM")
        .expect("a key");
    let key = EncodingKey::from_rsa_der(der.secret_der());
    let now = now_unix();
    let sign = |claims: Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).expect("sign")
    };
    let app = |iat: u64, exp: u64| json!({ "iss": APP_ID.to_string(), "iat": iat, "exp": exp });
    let mint = |jwt: &str, installation: u64, body: Value| {
        curl(&[
            "--noproxy",
            "*",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {jwt}"),
            "-H",
            "Accept: application/vnd.github+json",
            "-H",
            "X-GitHub-Api-Version: 2022-11-28",
            "--data-binary",
            &body.to_string(),
            &format!(
                "{}/app/installations/{installation}/access_tokens",
                api.url()
            ),
        ])
        .status
    };
    let asked = json!({ "permissions": { "issues": "read" } });
    let good = sign(app(now - 60, now + 540));
    assert_eq!(mint(&good, INSTALLATION_ID, asked.clone()), 201);

    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(app(now - 60, now + 540).to_string())
    );
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &app(now - 60, now + 540),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .expect("sign HS256");
    let (other_key, _) = rsa_key_pair();
    let other_der = rustls_pemfile::private_key(&mut other_key.as_bytes())
        .expect("PEM")
        .expect("a key");
    let other = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &app(now - 60, now + 540),
        &EncodingKey::from_rsa_der(other_der.secret_der()),
    )
    .expect("sign");
    let refused: &[(&str, String, u64, Value, u16)] = &[
        ("alg none", unsigned, INSTALLATION_ID, asked.clone(), 401),
        (
            "HS256 with the public key",
            hs256,
            INSTALLATION_ID,
            asked.clone(),
            401,
        ),
        ("another key", other, INSTALLATION_ID, asked.clone(), 401),
        (
            "another iss",
            sign(json!({ "iss": "999", "iat": now - 60, "exp": now + 540 })),
            INSTALLATION_ID,
            asked.clone(),
            401,
        ),
        (
            "iss as a number",
            sign(json!({ "iss": APP_ID, "iat": now - 60, "exp": now + 540 })),
            INSTALLATION_ID,
            asked.clone(),
            401,
        ),
        (
            "iat in the future",
            sign(app(now + 120, now + 540)),
            INSTALLATION_ID,
            asked.clone(),
            401,
        ),
        (
            "exp passed",
            sign(app(now - 600, now - 1)),
            INSTALLATION_ID,
            asked.clone(),
            401,
        ),
        (
            "over 10 minutes",
            sign(app(now - 60, now + 600)),
            INSTALLATION_ID,
            asked.clone(),
            401,
        ),
        (
            "another installation",
            good.clone(),
            INSTALLATION_ID + 1,
            asked.clone(),
            404,
        ),
        (
            "no permissions",
            good.clone(),
            INSTALLATION_ID,
            json!({ "repositories": ["api"] }),
            422,
        ),
    ];
    for (name, jwt, installation, body, status) in refused {
        assert_eq!(mint(jwt, *installation, body.clone()), *status, "{name}");
    }
    assert_eq!(api.events("minted").len(), 1);
    assert_eq!(
        api.wait_event("refused", refused.len(), WAIT).len(),
        refused.len()
    );
}
