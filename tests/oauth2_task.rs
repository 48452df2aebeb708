//! Per-task OAuth2 tokens (docs/issuers.md, "Per-task credentials") through the running proxy,
//! against the real OAuth 2.0 server (oidc-provider, tests/common/oauth2.rs): for each task grant
//! sidekey signs a subject token naming the grant's end user as `sub` and its agents as `act`
//! with its `kind: local` issuer, exchanges it (RFC 8693; the pod's identity as the actor token
//! when the issuer has one), and the server, which trusts that issuer's keys through sidekey's
//! admin JWKS, issues a token for the user with the whole delegation chain in its `act`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::grants::*;
use crate::common::oauth2::*;
use crate::common::*;

/// `iss` of the task assertions (the local issuer `tasks`).
const ASSERTION_ISSUER: &str = "sidekey-tasks";
/// The `audience` the per-task credential asks for.
const USER_API: &str = "user-api";
const WAIT: Duration = Duration::from_secs(10);

fn config(server: &OAuth2Server, pod: &Identity, keys: &Keys) -> String {
    format!(
        r#"upstream:
  extra_ca_files: ["{{test_ca}}"]
  resolve:
    "api.test.local:443": "{{upstream}}"
    "other.test.local:443": "{{upstream}}"
identity:
  token_file: "{pod}"
issuers:
  tasks: {{ kind: local, issuer: {ASSERTION_ISSUER}, algorithm: ES256 }}
  idp:
    kind: oauth2
    token_url: {token_url}
    grant: token_exchange
    client_id: {POST_CLIENT}
    client_secret_file: "{secret}"
    client_secret_auth: post
    actor_token_file: "{pod}"
  direct:                     # the same server, no actor token: the agents alone act
    kind: oauth2
    token_url: {token_url}
    grant: token_exchange
    client_id: {PUBLIC_CLIENT}
credentials:
  api:
    issuer: idp
    audience: {USER_API}
    per_task: true
    task_assertion_issuer: tasks
  direct: {{ issuer: direct, per_task: true, task_assertion_issuer: tasks }}
{grants}
routes:
  - name: api
    hosts: [api.test.local]
    methods: [GET]
    credential: api
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
  - name: other
    hosts: [other.test.local]
    methods: [GET]
    credential: direct
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
"#,
        pod = pod.token_file().display(),
        token_url = server.token_url(),
        secret = server.client_secret_file().display(),
        grants = keys.section(true),
    )
}

/// GET https://api.test.local<path> through sidekey presenting `grant`, expecting 200; the
/// bearer token the upstream received (the echo itself is masked).
#[track_caller]
fn token_for(env: &Env, sk: &Sidekey, grant: &str, path: &str) -> String {
    token_at(env, sk, grant, API, path)
}

/// [`token_for`] on `host`.
#[track_caller]
fn token_at(env: &Env, sk: &Sidekey, grant: &str, host: &str, path: &str) -> String {
    curl_granted(sk, grant, &[&format!("https://{host}{path}")]).assert_status(200);
    let seen = env.upstream.requests_to(path);
    assert_eq!(seen.len(), 1, "{path}");
    seen[0].bearer().expect("a bearer token").to_string()
}

fn claim(token: &str, name: &str) -> Value {
    decode_jwt(token).1[name].clone()
}

#[test]
fn each_grant_gets_a_token_for_its_user_naming_its_agents() {
    let env = Env::new();
    let pod = Identity::new("pod-sa", "oauth2-peer");
    let server = OAuth2Server::start(OAuth2Options::default().trust_identity(pod.public_pem()));
    let keys = Keys::new();
    let sk = env.sidekey(&config(&server, &pod, &keys));
    // The authorization server trusts the task assertions' issuer by its JWKS, which it
    // fetches from sidekey's admin listener.
    let jwks_url = format!("http://{}/.well-known/jwks.json", sk.admin);
    server.trust_jwks(&jwks_url, ASSERTION_ISSUER);

    let parent = keys.sign(
        "sk-test",
        "planner",
        "t-9",
        &["--user", "alice", "--route", "api", "--route", "other"],
    );
    let coder = derive(&sk, &parent, "coder", &[]);
    assert_eq!(coder.code, Some(0), "{coder:?}");
    let coder = coder.stdout.trim().to_string();
    let parent_jti = claim(&parent, "jti").as_str().unwrap().to_string();
    let coder_jti = claim(&coder, "jti").as_str().unwrap().to_string();

    let planners = token_for(&env, &sk, &parent, "/echo/planner-1");
    let coders = token_for(&env, &sk, &coder, "/echo/coder-1");
    assert_ne!(planners, coders, "each grant its own token");
    // Cached per grant: the planner's next request carries the same token.
    assert_eq!(token_for(&env, &sk, &parent, "/echo/planner-2"), planners);
    assert_eq!(server.issued(TOKEN_EXCHANGE), 2);

    // The server's tokens: for alice, with the agents acting, the pod outermost.
    let jwks = server.jwks();
    for (token, act) in [
        (
            &planners,
            json!({"sub": "pod-sa", "act": {"sub": "planner"}}),
        ),
        (
            &coders,
            json!({"sub": "pod-sa", "act": {"sub": "coder", "act": {"sub": "planner"}}}),
        ),
    ] {
        assert_eq!(verify_jwt(&jwks, token)["valid"], true, "{token}");
        let (_, payload) = decode_jwt(token);
        assert_eq!(payload["sub"], "alice", "{payload}");
        assert_eq!(payload["act"], act, "{payload}");
        assert_eq!(payload["aud"], USER_API, "{payload}");
        assert_eq!(payload["iss"], server.issuer().as_str(), "{payload}");
    }

    // What sidekey sent: its task assertion as the subject token, the pod as the actor.
    let sidekey_jwks: Value =
        serde_json::from_str(&http_get(sk.admin, "/.well-known/jwks.json").unwrap().1).unwrap();
    let kid = sidekey_jwks["keys"][0]["kid"].clone();
    let exchanges = server.token_requests();
    assert_eq!(exchanges.len(), 2, "{exchanges:#?}");
    for (exchange, sub, act) in [
        (&exchanges[0], "planner", json!({"sub": "planner"})),
        (
            &exchanges[1],
            "coder",
            json!({"sub": "coder", "act": {"sub": "planner"}}),
        ),
    ] {
        assert_eq!(exchange["grant_type"], TOKEN_EXCHANGE, "{exchange}");
        assert_eq!(exchange["client_auth"], "client_secret_post", "{exchange}");
        assert_eq!(
            exchange["params"]["subject_token_type"], TOKEN_TYPE_JWT,
            "{exchange}"
        );
        assert_eq!(exchange["params"]["audience"], USER_API, "{exchange}");
        let header = &exchange["subject_token_header"];
        assert_eq!(header["alg"], "ES256", "{exchange}");
        assert_eq!(header["kid"], kid, "signed by the key of {jwks_url}");
        let claims = &exchange["subject_token_claims"];
        assert_eq!(claims["sub"], "alice", "{exchange}");
        assert_eq!(claims["act"], act, "{sub}'s chain: {exchange}");
        assert_eq!(claims["iss"], ASSERTION_ISSUER, "{exchange}");
        assert_eq!(claims["aud"], server.token_url().as_str(), "{exchange}");
        assert_eq!(claims["task_id"], "t-9", "{exchange}");
        let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
        assert!(
            iat.zip(exp).is_some_and(|(i, e)| e > i && e - i <= 60),
            "short-lived: {exchange}"
        );
        assert_eq!(
            exchange["actor_token_claims"]["sub"], "pod-sa",
            "{exchange}"
        );
        assert_eq!(
            exchange["response"]["jti"],
            claim(if sub == "planner" { &planners } else { &coders }, "jti")
        );
    }

    // A grant that names no end user gets no token, and is told why.
    let solo = keys.sign("sk-test", "solo", "t-10", &["--route", "api"]);
    let refused = curl_granted(&sk, &solo, &[&format!("https://{API}/echo/solo")])
        .expect_refusal(503, "credential_unavailable");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("credential `api` is unavailable")
            && message.contains("names no end user (`on_behalf_of`)"),
        "{refused}"
    );
    assert!(env.upstream.requests_to("/echo/solo").is_empty());
    assert_eq!(server.token_requests().len(), 2, "nothing was asked for it");

    // The audit trail: each request names its grant and its own token's ID.
    let records = sk.wait_audit(|r| r["type"] == "request", 4, WAIT);
    let by_path = |path: &str| {
        records
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no record of {path}: {records:#?}"))
    };
    for (path, token, grant_id, sub) in [
        ("/echo/planner-1", &planners, &parent_jti, "planner"),
        ("/echo/planner-2", &planners, &parent_jti, "planner"),
        ("/echo/coder-1", &coders, &coder_jti, "coder"),
    ] {
        let r = by_path(path);
        assert_eq!(r["credential"], "api", "{r}");
        assert_eq!(r["issuer"], "idp", "{r}");
        assert_eq!(r["credential_id"], claim(token, "jti"), "{r}");
        assert_eq!(r["grant_id"], grant_id.as_str(), "{r}");
        assert_eq!(r["sub"], sub, "{r}");
        assert_eq!(r["on_behalf_of"], "alice", "{r}");
        assert_eq!(r["task_id"], "t-9", "{r}");
    }
    let solo_record = by_path("/echo/solo");
    assert_eq!(
        solo_record["code"], "credential_unavailable",
        "{solo_record}"
    );
    let issued = sk.wait_audit(
        |r| r["type"] == "credential" && r["event"] == "issued",
        2,
        WAIT,
    );
    for (grant_id, token) in [(&parent_jti, &planners), (&coder_jti, &coders)] {
        let event = issued
            .iter()
            .find(|e| e["grant_id"] == grant_id.as_str())
            .unwrap_or_else(|| panic!("no issued event for {grant_id}: {issued:#?}"));
        assert_eq!(event["credential_id"], claim(token, "jti"), "{event}");
        assert_eq!(event["task_id"], "t-9", "{event}");
    }
    let failed = sk.wait_audit(
        |r| r["type"] == "credential" && r["event"] == "failed",
        1,
        WAIT,
    );
    assert_eq!(failed[0]["task_id"], "t-10", "{failed:#?}");
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("names no end user")),
        "{failed:#?}"
    );

    // Without an actor token, the agents alone act for alice.
    let direct = token_at(&env, &sk, &coder, OTHER, "/echo/direct");
    let (_, payload) = decode_jwt(&direct);
    assert_eq!(payload["sub"], "alice", "{payload}");
    assert_eq!(
        payload["act"],
        json!({"sub": "coder", "act": {"sub": "planner"}}),
        "{payload}"
    );
    let last = server.stats()["last"].clone();
    assert_eq!(last["client_auth"], "none", "{last}");
    assert!(last.get("actor_token_claims").is_none(), "{last}");
    assert_eq!(last["subject_token_claims"]["sub"], "alice", "{last}");

    // Ending the parent's task ends both grants' tokens (dropped: the server's JWT access
    // tokens cannot be revoked), and the sub-agent's grant with it.
    let out = revoke(&sk, &parent, None);
    assert_eq!(out.code, Some(0), "{out:?}");
    let revoked = sk.wait_audit(
        |r| r["type"] == "credential" && r["event"] == "revoked",
        3,
        WAIT,
    );
    for (grant_id, token) in [
        (&parent_jti, &planners),
        (&coder_jti, &coders),
        (&coder_jti, &direct),
    ] {
        assert!(
            revoked
                .iter()
                .any(|e| e["grant_id"] == grant_id.as_str()
                    && e["credential_id"] == claim(token, "jti")),
            "{grant_id}: {revoked:#?}"
        );
    }
    let refused = curl_granted(&sk, &coder, &[&format!("https://{API}/echo/after")]);
    assert_eq!(refused.connect_status, 407, "{refused:#?}");

    // No token, assertion or secret in sidekey's logs or audit trail.
    let (stdout, stderr) = (sk.stdout_text(), sk.stderr());
    for token in [&planners, &coders, &direct, &parent, &coder] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!stdout.contains(signature) && !stderr.contains(signature));
    }
    assert!(!stdout.contains(server.client_secret()) && !stderr.contains(server.client_secret()));
}
