//! Per-task credentials (`per_task: true`, docs/issuers.md "Per-task credentials") end to end:
//! agents present task grants (tests/common/grants.rs) and sidekey issues each grant its own
//! credential from the real issuer — its local signer (the JWTs checked by the upstream and by
//! Python `cryptography` against the admin JWKS) — and ends it when the grant is revoked.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::common::grants::*;
use crate::common::sidekey::AUDIT_TIMEOUT;
use crate::common::*;

/// The host of the route whose credential is issued per task.
const TASKS: &str = "tasks.test.local";

/// The `issued`/`revoked`… events of credential `credential` that name grant `grant_id`.
fn task_events(sk: &Sidekey, credential: &str, grant_id: &str) -> Vec<Value> {
    sk.audit()
        .into_iter()
        .filter(|r| {
            r["type"] == "credential" && r["credential"] == credential && r["grant_id"] == grant_id
        })
        .collect()
}

/// Waits for the `event` of credential `credential` naming grant `grant_id`; returns it.
#[track_caller]
fn wait_task_event(sk: &Sidekey, credential: &str, grant_id: &str, event: &str) -> Value {
    let (c, g, e) = (
        credential.to_string(),
        grant_id.to_string(),
        event.to_string(),
    );
    sk.wait_audit(
        move |r| {
            r["type"] == "credential"
                && r["credential"] == c.as_str()
                && r["grant_id"] == g.as_str()
                && r["event"] == e.as_str()
        },
        1,
        AUDIT_TIMEOUT,
    )
    .remove(0)
}

/// The request record of `path` (waits for it).
#[track_caller]
fn record_at(sk: &Sidekey, path: &str) -> Value {
    let p = path.to_string();
    sk.wait_audit(
        move |r| r["type"] == "request" && r["path"] == p.as_str(),
        1,
        AUDIT_TIMEOUT,
    )
    .remove(0)
}

/// The one request the upstream received at exactly `path`: the bearer token it carried.
#[track_caller]
fn bearer_at(upstream: &Upstream, path: &str) -> String {
    let seen: Vec<Recorded> = upstream
        .requests_to(path)
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    assert_eq!(seen.len(), 1, "one request at {path}: {seen:#?}");
    seen[0]
        .bearer()
        .unwrap_or_else(|| panic!("no bearer at {path}: {:?}", seen[0].headers))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// The local issuer

/// A config with the local issuer and two routes to the test upstream: `api`
/// (https://api.test.local, GET) with the shared credential `demo`, and `tasks`
/// (https://tasks.test.local, GET) with `task_jwt`, a JWT issued per task grant; grants
/// trusting `keys`; and `extra_top` (top-level keys).
fn local_config(keys: &Keys, required: bool, extra_top: &str) -> String {
    format!(
        r#"upstream:
  extra_ca_files: ["{{test_ca}}"]
  resolve:
    "api.test.local:443": "{{upstream}}"
    "{TASKS}:443": "{{upstream}}"
issuers:
  local: {{ kind: local }}
credentials:
  demo: {{ issuer: local, audience: demo-api, ttl: 5m }}
  task_jwt: {{ issuer: local, audience: demo-api, ttl: 5m, per_task: true }}
{grants}{extra_top}
routes:
  - name: api
    hosts: [api.test.local]
    methods: [GET]
    credential: demo
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
  - name: tasks
    hosts: [{TASKS}]
    methods: [GET]
    credential: task_jwt
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
"#,
        grants = keys.section(required)
    )
}

#[test]
fn local_jwts_are_issued_per_grant_with_the_delegation_chain_and_end_with_it() {
    let env = Env::new();
    let keys = Keys::new();
    let sk = env.sidekey(&local_config(&keys, false, ""));
    let planner = keys.sign(
        AUDIENCE,
        "planner",
        "t-9",
        &[
            "--user", "alice", "--route", "tasks", "--route", "api", "--ttl", "10m",
        ],
    );
    // Two sub-agents, derived at the same time; the coder derives a grandchild that lives a
    // minute (less than the credential's 5 minutes).
    let (coder, reviewer) = std::thread::scope(|s| {
        let coder = s.spawn(|| child(&sk, &planner, "coder", &["--route", "tasks"]));
        let reviewer = s.spawn(|| child(&sk, &planner, "reviewer", &["--route", "tasks"]));
        (coder.join().unwrap(), reviewer.join().unwrap())
    });
    let intern = child(&sk, &coder, "intern", &["--ttl", "1m"]);
    let agents = [
        ("coder", &coder, json!({"sub": "planner"})),
        ("reviewer", &reviewer, json!({"sub": "planner"})),
        (
            "intern",
            &intern,
            json!({"sub": "coder", "act": {"sub": "planner"}}),
        ),
    ];

    // All three at once, each with two requests at once: one issuance per grant, shared by
    // its requests, never by another grant's.
    std::thread::scope(|s| {
        for (sub, grant, _) in &agents {
            for i in 0..2 {
                let sk = &sk;
                s.spawn(move || {
                    curl_granted(sk, grant, &[&format!("https://{TASKS}/echo/{sub}/{i}")])
                        .assert_status(200);
                });
            }
        }
    });

    let (_, jwks) = http_get(sk.admin, "/.well-known/jwks.json").expect("JWKS");
    let mut jtis = BTreeSet::new();
    for (sub, grant, act) in &agents {
        let grant_claims = payload(grant);
        let token = bearer_at(&env.upstream, &format!("/echo/{sub}/0"));
        assert_eq!(
            bearer_at(&env.upstream, &format!("/echo/{sub}/1")),
            token,
            "{sub}: the grant's second request reuses its credential"
        );
        let claims = assert_local_jwt(&token, "demo-api");
        assert_eq!(claims["sub"], *sub, "{claims}");
        assert_eq!(claims["task_id"], "t-9", "{claims}");
        assert_eq!(claims["on_behalf_of"], "alice", "{claims}");
        assert_eq!(claims["act"], *act, "RFC 8693 nesting: {claims}");
        let exp = claims["exp"].as_u64().expect("exp");
        let grant_exp = grant_claims["exp"].as_u64().expect("grant exp");
        assert!(
            exp <= grant_exp,
            "{sub}: exp {exp} after the grant's {grant_exp}"
        );
        if *sub == "intern" {
            assert_eq!(exp, grant_exp, "cut to the grant's end: {claims}");
        }
        let verified = verify_jwt(&jwks, &token);
        assert_eq!(verified["valid"], true, "{sub}: {verified}");
        jtis.insert(claims["jti"].as_str().unwrap().to_string());

        // The audit names the JWT (its jti) and the grant, on both requests; one issuance.
        let grant_id = jti(grant);
        for i in 0..2 {
            let r = record_at(&sk, &format!("/echo/{sub}/{i}"));
            assert_eq!(r["credential"], "task_jwt", "{r}");
            assert_eq!(r["credential_id"], claims["jti"], "{r}");
            assert_eq!(r["grant_id"], grant_id.as_str(), "{r}");
            assert_eq!(r["sub"], *sub, "{r}");
        }
        let events = task_events(&sk, "task_jwt", &grant_id);
        assert_eq!(events.len(), 1, "{sub}: {events:#?}");
        assert_eq!(events[0]["event"], "issued", "{}", events[0]);
        assert_eq!(events[0]["credential_id"], claims["jti"], "{}", events[0]);
        assert_eq!(events[0]["task_id"], "t-9", "{}", events[0]);
    }
    assert_eq!(jtis.len(), 3, "one JWT per grant: {jtis:?}");

    // No grant: the shared credential still serves its route; the per-task one is refused
    // before anything reaches the upstream.
    curl_via(&sk, &[&format!("https://{API}/echo/shared")]).assert_status(200);
    let none = curl_via(&sk, &[&format!("https://{TASKS}/echo/none")]);
    let body = none.expect_refusal(407, "grant_required");
    assert!(
        body["message"].as_str().unwrap_or("").contains("task_jwt"),
        "{body}"
    );
    assert!(env.upstream.requests_to("/echo/none").is_empty());
    // The planner's grant on the shared route gets the shared credential, not a task's.
    curl_granted(
        &sk,
        &planner,
        &[&format!("https://{API}/echo/planner-shared")],
    )
    .assert_status(200);
    let shared = record_at(&sk, "/echo/planner-shared");
    assert_eq!(shared["credential"], "demo", "{shared}");
    assert_eq!(
        shared["credential_id"],
        record_at(&sk, "/echo/shared")["credential_id"],
        "{shared}"
    );

    // The coder ends its task: its credential and its intern's are ended, the reviewer's not.
    let out = revoke(&sk, &coder, None);
    assert_eq!(out.code, Some(0), "{out:?}");
    for (sub, grant, _) in &agents[..] {
        let grant_id = jti(grant);
        if *sub == "reviewer" {
            assert!(!out.stdout.contains(&grant_id), "{out:?}");
            continue;
        }
        assert!(out.stdout.contains(&grant_id), "{sub} revoked: {out:?}");
        let revoked = wait_task_event(&sk, "task_jwt", &grant_id, "revoked");
        let token = bearer_at(&env.upstream, &format!("/echo/{sub}/0"));
        assert_eq!(
            revoked["credential_id"],
            payload(&token)["jti"],
            "{revoked}"
        );
        assert_eq!(revoked["task_id"], "t-9", "{revoked}");
        assert_eq!(revoked["issuer"], "local", "{revoked}");
        let refused = curl_granted(&sk, grant, &[&format!("https://{TASKS}/echo/{sub}/late")]);
        assert_eq!(refused.connect_status, 407, "{sub}: {refused:#?}");
    }
    curl_granted(
        &sk,
        &reviewer,
        &[&format!("https://{TASKS}/echo/reviewer/2")],
    )
    .assert_status(200);
    assert_eq!(
        bearer_at(&env.upstream, "/echo/reviewer/2"),
        bearer_at(&env.upstream, "/echo/reviewer/0"),
        "the reviewer's credential lives on"
    );
    // HTTP/2 in the tunnel, the grant bound at CONNECT: the same credential.
    let h2 = curl_granted(
        &sk,
        &reviewer,
        &["--http2", &format!("https://{TASKS}/echo/reviewer/h2")],
    );
    h2.assert_status(200);
    assert_eq!(h2.http_version, "2", "{h2:#?}");
    assert_eq!(
        bearer_at(&env.upstream, "/echo/reviewer/h2"),
        bearer_at(&env.upstream, "/echo/reviewer/0"),
    );
    // The route listener reads the grant from x-sidekey-grant: the same credential.
    curl(&[
        "-H",
        &format!("x-sidekey-grant: {reviewer}"),
        &format!("{}/r/tasks/echo/reviewer/routed", sk.routes_url()),
    ])
    .assert_status(200);
    assert_eq!(
        bearer_at(&env.upstream, "/echo/reviewer/routed"),
        bearer_at(&env.upstream, "/echo/reviewer/0"),
    );
    let reviewer_events = task_events(&sk, "task_jwt", &jti(&reviewer));
    assert_eq!(reviewer_events.len(), 1, "{reviewer_events:#?}");
}
