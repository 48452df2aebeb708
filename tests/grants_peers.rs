//! Per-task credentials (`per_task: true`, docs/issuers.md "Per-task credentials") end to end:
//! agents present task grants (tests/common/grants.rs) and sidekey issues each grant its own
//! credential from the real issuer — its local signer (the JWTs checked by the upstream and by
//! Python `cryptography` against the admin JWKS), moto's STS (the session name and the task's
//! session policy as moto recorded them, the keys used by S3 and GetCallerIdentity with
//! signatures checked), OpenBao's database engine (a lease and a PostgreSQL role per task) —
//! and ends it when the grant is revoked or expires. Last, a run's audit file read back by
//! `sidekey audit trace`.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::grants::*;
use crate::common::moto::*;
use crate::common::openbao::{OpenBao, ISSUER_POLICY_BASE};
use crate::common::postgres::Postgres;
use crate::common::sidekey::{run_sidekey, CheckOutput, AUDIT_TIMEOUT};
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

// ---------------------------------------------------------------------------------------------
// AWS STS (moto)

const BUCKET: &str = "task-bucket";
const BUCKET_HOST: &str = "task-bucket.s3.us-east-1.amazonaws.com";

/// A task's session policy: S3 under the task's own prefix only.
const TASK_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
     "Resource": "arn:aws:s3:::task-bucket/{task_id}/*"},
    {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::task-bucket",
     "Condition": {"StringLike": {"s3:prefix": "{task_id}/*"}}}
  ]
}
"#;

/// docs/issuers.md's aws-sts issuer pointed at moto, its credential issued per task with
/// [`TASK_POLICY`]; the routes `s3` (the bucket) and `sts` (GetCallerIdentity), both signed
/// with it.
const AWS_CONFIG: &str = r#"upstream:
  extra_ca_files: ["{moto_ca}"]
  resolve:
    "task-bucket.s3.us-east-1.amazonaws.com:443": "{moto_tls}"
    "sts.us-east-1.amazonaws.com:443": "{moto_tls}"
identity:
  token_file: "{token_file}"
issuers:
  aws:
    kind: aws-sts
    role_arn: arn:aws:iam::123456789012:role/agent
    region: us-east-1
    endpoint: "{moto_http}"
credentials:
  s3:
    issuer: aws
    ttl: 1h
    per_task: true
    session_policy_file: "{policy_file}"
{grants}
routes:
  - name: s3
    hosts: [task-bucket.s3.us-east-1.amazonaws.com]
    methods: [GET, PUT]
    credential: s3
    inject: { sigv4: { service: s3, region: us-east-1 } }
    allow_private: true
  - name: sts
    hosts: [sts.us-east-1.amazonaws.com]
    methods: [POST]
    credential: s3
    inject: { sigv4: { service: sts, region: us-east-1 } }
    allow_private: true
"#;

#[test]
fn aws_sts_sessions_are_named_and_scoped_per_task() {
    let moto = Moto::start(None);
    moto.setup(BUCKET);
    let identity = Identity::new("system:serviceaccount:agents:agent-7", "sts.amazonaws.com");
    let policy_file = moto.dir().join("task-policy.json");
    std::fs::write(&policy_file, TASK_POLICY).expect("write the session policy");
    let keys = Keys::new();
    let sk = Sidekey::start(
        AWS_CONFIG,
        &[
            ("moto_ca", moto.ca_pem().display().to_string()),
            ("moto_tls", moto.tls_addr().to_string()),
            ("moto_http", moto.http_endpoint()),
            ("token_file", identity.token_file().display().to_string()),
            ("policy_file", policy_file.display().to_string()),
            ("grants", keys.section(true)),
        ],
    );
    assert!(
        moto.assumed_roles().is_empty(),
        "nothing is assumed before a task asks"
    );

    let tasks = ["t-aws-1", "t-aws-2"];
    let grants: Vec<String> = tasks
        .iter()
        .map(|task| {
            keys.sign(
                AUDIENCE,
                "uploader",
                task,
                &["--user", "alice", "--ttl", "30m"],
            )
        })
        .collect();
    for (task, grant) in tasks.iter().zip(&grants) {
        // The issuer's AssumeRoleWithWebIdentity is unsigned (as AWS defines it): let that one
        // request pass, then moto checks every signature.
        moto.set_no_auth_action_count(Some(1));
        let object = format!("https://{BUCKET_HOST}/{task}/notes.txt");
        curl_granted(
            &sk,
            grant,
            &[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &format!("notes of {task}"),
                &object,
            ],
        )
        .assert_status(200);
        let got = curl_granted(&sk, grant, &[&object]);
        got.assert_status(200);
        assert_eq!(got.body_str(), format!("notes of {task}"));
        // Who the keys are, as STS itself says.
        let me = curl_granted(
            &sk,
            grant,
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/x-www-form-urlencoded; charset=utf-8",
                "--data-binary",
                "Action=GetCallerIdentity&Version=2011-06-15",
                &format!("https://{STS_HOST}/"),
            ],
        );
        me.assert_status(200);
        assert_eq!(
            xml_text(&me.body_str(), "Arn").as_deref(),
            Some(format!("arn:aws:sts::123456789012:assumed-role/agent/sidekey-{task}").as_str()),
            "{}",
            me.body_str()
        );
    }
    let roles = moto.assumed_roles();
    // One session per task, named for it, with the task's own policy.
    assert_eq!(roles.len(), 2, "{roles:#?}");
    let calls = moto.web_identity_calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let mut key_of = Vec::new();
    for ((task, grant), (role, call)) in tasks.iter().zip(&grants).zip(roles.iter().zip(&calls)) {
        let session = format!("sidekey-{task}");
        assert_eq!(role["session_name"], session.as_str(), "{role}");
        assert_eq!(role["role_arn"], ROLE_ARN, "{role}");
        let want: Value =
            serde_json::from_str(&TASK_POLICY.replace("{task_id}", task)).expect("JSON");
        let sent: Value = serde_json::from_str(role["policy"].as_str().expect("a session policy"))
            .expect("the session policy is JSON");
        assert_eq!(sent, want, "{task}");
        let form = form_pairs(&call.body);
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("RoleSessionName"), Some(session.clone()));
        assert_eq!(
            get("WebIdentityToken").as_deref(),
            Some(identity.token().trim())
        );
        // The 1 h ttl is cut to what is left of the 30 min grant.
        let duration: u64 = get("DurationSeconds").unwrap().parse().unwrap();
        assert!((1780..=1800).contains(&duration), "{duration}");

        // Everything of the task was signed with its keys, and audited as such.
        let key = role["access_key_id"].as_str().unwrap().to_string();
        let signed: Vec<MotoRequest> = moto
            .recorded_s3()
            .into_iter()
            .filter(|r| r.path().starts_with(&format!("/{task}/")))
            .collect();
        assert_eq!(signed.len(), 2, "{signed:#?}");
        for r in &signed {
            assert_eq!(r.access_key_id(), Some(key.as_str()), "{r:#?}");
        }
        let records: Vec<Value> = sk
            .request_records()
            .into_iter()
            .filter(|r| r["task_id"] == *task)
            .collect();
        assert_eq!(records.len(), 3, "{records:#?}");
        for r in &records {
            assert_eq!(r["status"], 200, "{r}");
            assert_eq!(r["credential"], "s3", "{r}");
            assert_eq!(r["credential_id"], key.as_str(), "{r}");
            assert_eq!(r["grant_id"], jti(grant).as_str(), "{r}");
        }
        let issued = wait_task_event(&sk, "s3", &jti(grant), "issued");
        assert_eq!(issued["credential_id"], key.as_str(), "{issued}");
        assert_eq!(issued["task_id"], *task, "{issued}");
        key_of.push(key);
    }
    assert_ne!(key_of[0], key_of[1], "two tasks, two sessions");

    // Ending the first task drops its keys (STS keys cannot be revoked); the second goes on.
    let out = revoke(&sk, &grants[0], None);
    assert_eq!(out.code, Some(0), "{out:?}");
    let dropped = wait_task_event(&sk, "s3", &jti(&grants[0]), "revoked");
    assert_eq!(dropped["credential_id"], key_of[0].as_str(), "{dropped}");
    assert_eq!(dropped["task_id"], tasks[0], "{dropped}");
    let late = curl_granted(
        &sk,
        &grants[0],
        &[&format!("https://{BUCKET_HOST}/t-aws-1/notes.txt")],
    );
    assert_eq!(late.connect_status, 407, "{late:#?}");
    curl_granted(
        &sk,
        &grants[1],
        &[&format!("https://{BUCKET_HOST}/t-aws-2/notes.txt")],
    )
    .assert_status(200);
    assert_eq!(
        moto.assumed_roles().len(),
        2,
        "no new session for the second task"
    );
    assert!(task_events(&sk, "s3", &jti(&grants[1]))
        .iter()
        .all(|e| e["event"] == "issued"));
    // Negative control: moto has been checking signatures since each task's STS call.
    let wrong = StsKeys {
        access_key_id: roles[0]["access_key_id"].as_str().unwrap().to_string(),
        secret_access_key: "not-the-secret".into(),
        session_token: roles[0]["session_token"].as_str().unwrap().to_string(),
        expiration: String::new(),
    };
    let res = moto.curl_s3(&wrong, "GET", BUCKET_HOST, "/t-aws-1/notes.txt", None);
    assert_eq!(res.status, 403, "{}", res.body_str());
    assert_eq!(
        xml_text(&res.body_str(), "Code").as_deref(),
        Some("SignatureDoesNotMatch"),
        "{}",
        res.body_str()
    );
}

// ---------------------------------------------------------------------------------------------
// OpenBao dynamic secrets (PostgreSQL)

/// The audience of the pod identity OpenBao's jwt role binds.
const BAO_AUDIENCE: &str = "sidekey-vault-test";

/// OpenBao at `{bao}` (jwt login with the pod identity), a database password issued per task;
/// the route `db` (https://db.test.local, GET) carries it as a bearer token.
const BAO_CONFIG: &str = r#"upstream:
  extra_ca_files: ["{test_ca}"]
  resolve:
    "db.test.local:443": "{upstream}"
identity:
  token_file: "{identity_token}"
issuers:
  bao:
    kind: vault
    address: "{bao}"
    auth:
      method: jwt
      role: agent
credentials:
  db:
    issuer: bao
    path: database/creds/readonly
    field: password
    per_task: true
{grants}
routes:
  - name: db
    hosts: [db.test.local]
    methods: [GET]
    credential: db
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
"#;

#[test]
fn openbao_leases_are_one_per_task_and_end_with_its_grant() {
    let env = Env::new();
    let pg = Postgres::start();
    let bao = OpenBao::start();
    let identity = Identity::new("agent-7", BAO_AUDIENCE);
    bao.write_policy(
        "agent",
        &format!(
            "{ISSUER_POLICY_BASE}\npath \"database/creds/readonly\" {{ capabilities = [\"read\"] }}"
        ),
    );
    bao.enable_jwt_auth(
        identity.public_pem(),
        "agent",
        BAO_AUDIENCE,
        "10m",
        "30m",
        &["agent"],
    );
    // Leases that outlive the test: no renewal in between.
    bao.enable_database(&pg, "readonly", "5m", "10m");
    let keys = Keys::new();
    let mut sk = env.sidekey_with(
        BAO_CONFIG,
        &[
            ("bao", bao.address()),
            (
                "identity_token",
                identity.token_file().display().to_string(),
            ),
            ("grants", keys.section(true)),
        ],
    );
    assert!(bao.list_leases("database/creds/readonly").is_empty());

    let tasks = ["t-db-1", "t-db-2"];
    let grants: Vec<String> = tasks
        .iter()
        .map(|task| keys.sign(AUDIENCE, "migrator", task, &["--ttl", "10m"]))
        .collect();
    // Both tasks at once, each twice.
    std::thread::scope(|s| {
        for (task, grant) in tasks.iter().zip(&grants) {
            let sk = &sk;
            s.spawn(move || {
                for i in 0..2 {
                    curl_granted(
                        sk,
                        grant,
                        &[&format!("https://db.test.local/echo/{task}/{i}")],
                    )
                    .assert_status(200);
                }
            });
        }
    });

    // Each task: its own lease, whose Postgres role logs in with the password it was given.
    struct Held {
        lease: String,
        user: String,
        password: String,
    }
    let mut held = Vec::new();
    for (task, grant) in tasks.iter().zip(&grants) {
        let password = bearer_at(&env.upstream, &format!("/echo/{task}/0"));
        assert_eq!(
            bearer_at(&env.upstream, &format!("/echo/{task}/1")),
            password,
            "{task}: one lease for the grant's requests"
        );
        let user = pg
            .user_for_password(&password)
            .unwrap_or_else(|| panic!("{task}: the password logs in as no user"));
        let lease = record_at(&sk, &format!("/echo/{task}/0"))["credential_id"]
            .as_str()
            .expect("credential_id")
            .to_string();
        assert!(
            lease.starts_with("database/creds/readonly/"),
            "the lease ID: {lease}"
        );
        assert_eq!(
            record_at(&sk, &format!("/echo/{task}/1"))["credential_id"],
            lease.as_str()
        );
        let issued = wait_task_event(&sk, "db", &jti(grant), "issued");
        assert_eq!(issued["credential_id"], lease.as_str(), "{issued}");
        assert_eq!(issued["task_id"], *task, "{issued}");
        assert!(bao.lease_exists(&lease), "{lease}");
        held.push(Held {
            lease,
            user,
            password,
        });
    }
    assert_ne!(held[0].user, held[1].user);
    let live: BTreeSet<String> = bao
        .list_leases("database/creds/readonly")
        .into_iter()
        .collect();
    let ours: BTreeSet<String> = held.iter().map(|h| h.lease.clone()).collect();
    assert_eq!(live, ours, "one lease per task, nothing else");

    // The first task is revoked: its lease is revoked in OpenBao (and its role dropped) before
    // the event is written; the second task's lease and role stay.
    let out = revoke(&sk, &grants[0], None);
    assert_eq!(out.code, Some(0), "{out:?}");
    let revoked = wait_task_event(&sk, "db", &jti(&grants[0]), "revoked");
    assert_eq!(
        revoked["credential_id"],
        held[0].lease.as_str(),
        "{revoked}"
    );
    assert_eq!(revoked["task_id"], tasks[0], "{revoked}");
    assert!(
        bao.lease_lookup(&held[0].lease).is_none(),
        "lease still live"
    );
    assert!(
        !pg.role_exists(&held[0].user),
        "{} not dropped",
        held[0].user
    );
    assert!(bao.lease_exists(&held[1].lease));
    assert!(pg.can_login(&held[1].user, &held[1].password));
    assert_eq!(
        bao.list_leases("database/creds/readonly"),
        vec![held[1].lease.clone()]
    );
    let late = curl_granted(&sk, &grants[0], &["https://db.test.local/echo/t-db-1/late"]);
    assert_eq!(late.connect_status, 407, "{late:#?}");
    curl_granted(&sk, &grants[1], &["https://db.test.local/echo/t-db-2/2"]).assert_status(200);
    assert_eq!(
        bearer_at(&env.upstream, "/echo/t-db-2/2"),
        held[1].password,
        "the second task keeps its lease"
    );

    // A grant that expires takes its lease with it, at its exp.
    let brief = keys.sign(AUDIENCE, "migrator", "t-db-3", &["--ttl", "2s"]);
    curl_granted(&sk, &brief, &["https://db.test.local/echo/t-db-3/0"]).assert_status(200);
    let lease = record_at(&sk, "/echo/t-db-3/0")["credential_id"]
        .as_str()
        .expect("credential_id")
        .to_string();
    let user = pg
        .user_for_password(&bearer_at(&env.upstream, "/echo/t-db-3/0"))
        .expect("the brief task's password logs in");
    let ended = wait_task_event(&sk, "db", &jti(&brief), "revoked");
    assert_eq!(ended["credential_id"], lease.as_str(), "{ended}");
    let exp = payload(&brief)["exp"].as_u64().expect("exp");
    let at = ended["ts"].as_str().expect("ts");
    assert!(
        humantime::parse_rfc3339_weak(at.trim_end_matches('Z')).unwrap()
            >= std::time::UNIX_EPOCH + Duration::from_secs(exp),
        "revoked at {at}, before the grant's exp {exp}"
    );
    assert!(!bao.lease_exists(&lease));
    assert!(!pg.role_exists(&user));
    let late = curl_granted(&sk, &brief, &["https://db.test.local/echo/t-db-3/late"]);
    assert_eq!(late.connect_status, 407, "{late:#?}");
    assert!(
        bao.lease_exists(&held[1].lease),
        "the other task's lease stays"
    );

    // Shutdown revokes what is left.
    sk.terminate();
    let revoked = wait_task_event(&sk, "db", &jti(&grants[1]), "revoked");
    assert_eq!(
        revoked["credential_id"],
        held[1].lease.as_str(),
        "{revoked}"
    );
    assert!(!bao.lease_exists(&held[1].lease));
    assert!(!pg.role_exists(&held[1].user));
    assert!(bao.list_leases("database/creds/readonly").is_empty());
}

// ---------------------------------------------------------------------------------------------
// The audit chain of a recorded run

/// `sidekey audit trace FILE ARGS…`.
fn trace(file: &Path, args: &[&str]) -> CheckOutput {
    let mut all: Vec<&OsStr> = vec!["audit".as_ref(), "trace".as_ref(), file.as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    run_sidekey(&all)
}

/// `text` with every time of day (`12:00:01.123`) written `HH:MM:SS.mmm`.
fn without_times(text: &str) -> String {
    regex::Regex::new(r"\b\d\d:\d\d:\d\d\.\d\d\d\b")
        .unwrap()
        .replace_all(text, "HH:MM:SS.mmm")
        .into_owned()
}

#[test]
fn a_recorded_run_traces_as_user_task_planner_and_sub_agents() {
    let env = Env::new();
    let keys = Keys::new();
    let mut sk = env.sidekey(&local_config(
        &keys,
        true,
        "audit: { file: \"{dir}/audit.jsonl\" }\n",
    ));
    let planner = keys.sign(
        AUDIENCE,
        "planner",
        "t-trace",
        &[
            "--user", "alice", "--route", "tasks", "--route", "api", "--ttl", "10m",
        ],
    );
    let helper = keys.sign(AUDIENCE, "helper", "t-other", &["--user", "bob"]);
    let coder = child(&sk, &planner, "coder", &["--route", "tasks"]);
    let reviewer = child(&sk, &planner, "reviewer", &["--route", "tasks"]);
    let tester = child(&sk, &coder, "tester", &[]);

    // One request at a time, so that the file's order is known.
    let get = |grant: &str, url: &str| {
        curl_granted(&sk, grant, &[url]).assert_status(200);
    };
    get(&planner, &format!("https://{TASKS}/echo/plan"));
    get(&planner, &format!("https://{API}/echo/shared"));
    get(&coder, &format!("https://{TASKS}/echo/code"));
    get(&reviewer, &format!("https://{TASKS}/echo/review"));
    let refused = curl_granted(&sk, &reviewer, &[&format!("https://{API}/echo/review")]);
    assert_eq!(refused.connect_status, 403, "{refused:#?}");
    get(&tester, &format!("https://{TASKS}/echo/test"));
    get(&helper, &format!("https://{TASKS}/echo/other"));
    let anonymous = curl_via(&sk, &[&format!("https://{TASKS}/echo/anonymous")]);
    assert_eq!(anonymous.connect_status, 407, "{anonymous:#?}");
    // Shutdown ends every task's credential, and the trail is complete once sidekey is gone.
    sk.terminate();
    let file = sk.dir().join("audit.jsonl");
    assert!(sk.audit().is_empty(), "the audit went to the file");

    let id = |path: &str| jti(&bearer_at(&env.upstream, path));
    let (p, c, r, t, h) = (
        jti(&planner),
        jti(&coder),
        jti(&reviewer),
        jti(&tester),
        jti(&helper),
    );
    let times = "issued HH:MM:SS.mmm, revoked HH:MM:SS.mmm, 1 request";
    let alice = format!(
        "\
user alice
└─ task t-trace
   └─ agent planner  (grant {p})
      ├─ credential task_jwt  id={plan}  ({times})
      │  └─ HH:MM:SS.mmm GET {TASKS} /echo/plan  200  allow
      ├─ credential demo  id={shared}  (1 request)
      │  └─ HH:MM:SS.mmm GET {API} /echo/shared  200  allow
      ├─ agent coder  (grant {c}, from {p})
      │  ├─ credential task_jwt  id={code}  ({times})
      │  │  └─ HH:MM:SS.mmm GET {TASKS} /echo/code  200  allow
      │  └─ agent tester  (grant {t}, from {c})
      │     └─ credential task_jwt  id={test}  ({times})
      │        └─ HH:MM:SS.mmm GET {TASKS} /echo/test  200  allow
      └─ agent reviewer  (grant {r}, from {p})
         ├─ credential task_jwt  id={review}  ({times})
         │  └─ HH:MM:SS.mmm GET {TASKS} /echo/review  200  allow
         └─ HH:MM:SS.mmm CONNECT {API}:443  403 route_not_granted  deny
",
        plan = id("/echo/plan"),
        shared = id("/echo/shared"),
        code = id("/echo/code"),
        test = id("/echo/test"),
        review = id("/echo/review"),
    );
    let bob = format!(
        "\
user bob
└─ task t-other
   └─ agent helper  (grant {h})
      └─ credential task_jwt  id={other}  ({times})
         └─ HH:MM:SS.mmm GET {TASKS} /echo/other  200  allow
",
        other = id("/echo/other"),
    );

    let out = trace(&file, &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        without_times(&out.stdout),
        format!("{alice}\n{bob}\n1 request with neither task nor grant (not listed)\n"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stderr,
        format!(
            "sidekey audit trace: {}: skipped 1 \"config\" record, 1 credential event without \
             grant_id\n",
            file.display()
        )
    );
    let out = trace(&file, &["--task", "t-trace"]);
    assert_eq!(without_times(&out.stdout), alice, "{out:?}");
    let out = trace(&file, &["--user", "bob"]);
    assert_eq!(without_times(&out.stdout), bob, "{out:?}");
    let out = trace(&file, &["--user", "alice", "--task", "t-other"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    assert!(
        out.stderr
            .ends_with("no task matches --task t-other --user alice\n"),
        "{out:?}"
    );

    // The same tree as JSON: the tester's credential, two levels under the planner, with the
    // events of its life.
    let out = trace(&file, &["--task", "t-trace", "--format", "json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let doc: Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    let planner_node = &doc["users"][0]["tasks"][0]["agents"][0];
    let tester_node = &planner_node["agents"][0]["agents"][0];
    assert_eq!(tester_node["sub"], "tester", "{doc:#}");
    assert_eq!(tester_node["act"], json!(["planner", "coder"]), "{doc:#}");
    assert_eq!(tester_node["parent"]["grant_id"], c.as_str(), "{doc:#}");
    let credential = &tester_node["credentials"][0];
    assert_eq!(credential["credential_id"], id("/echo/test").as_str());
    let events: Vec<&Value> = credential["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| &e["event"])
        .collect();
    assert_eq!(events, ["issued", "revoked"], "{credential:#}");
}

#[test]
fn a_reload_keeps_unchanged_task_credentials_swaps_trusted_keys_and_retires_changed_ones() {
    let env = Env::new();
    let (keys, next_keys) = (Keys::new(), Keys::new());
    let sk = env.sidekey(&local_config(&keys, false, ""));
    let grant = keys.sign(AUDIENCE, "planner", "t-r", &["--ttl", "10m"]);
    let url = format!("https://{TASKS}/echo/reload");
    let credential_of = |sk: &Sidekey, n: usize| -> String {
        let records = sk.wait_audit(
            |r| r["type"] == "request" && r["route"] == "tasks" && r["status"] == 200,
            n,
            Duration::from_secs(10),
        );
        records[n - 1]["credential_id"]
            .as_str()
            .expect("credential_id")
            .to_string()
    };
    curl_granted(&sk, &grant, &[&url]).assert_status(200);
    let first = credential_of(&sk, 1);

    // A reload that leaves the credential as it was: the task keeps its credential, and its
    // grant is verified again under the reloaded settings (same keys: still valid).
    let reloaded = sk.reload(
        &local_config(&keys, false, "unmatched: deny\n"),
        &env.vars(),
    );
    assert_eq!(reloaded["event"], "reloaded", "{reloaded}");
    curl_granted(&sk, &grant, &[&url]).assert_status(200);
    assert_eq!(
        credential_of(&sk, 2),
        first,
        "the task's credential was kept"
    );

    // Trusting other keys: grants of the old ones are refused at once, the new ones work.
    let swapped = local_config(&next_keys, false, "");
    assert_eq!(sk.reload(&swapped, &env.vars())["event"], "reloaded");
    let refused = curl_granted(&sk, &grant, &[&url]);
    assert_eq!(refused.connect_status, 407, "{refused:#?}");
    let fresh = next_keys.sign(AUDIENCE, "planner", "t-r2", &[]);
    curl_granted(&sk, &fresh, &[&url]).assert_status(200);

    // Changing the per-task credential retires the task credentials it issued: revoked, with
    // their task and grant named.
    let changed = swapped.replace(
        "task_jwt: { issuer: local, audience: demo-api, ttl: 5m, per_task: true }",
        "task_jwt: { issuer: local, audience: other-api, ttl: 5m, per_task: true }",
    );
    assert_ne!(changed, swapped);
    assert_eq!(sk.reload(&changed, &env.vars())["event"], "reloaded");
    let revoked = sk.wait_audit(
        |r| r["type"] == "credential" && r["event"] == "revoked" && r["task_id"] == "t-r2",
        1,
        Duration::from_secs(20),
    );
    assert_eq!(revoked[0]["credential"], "task_jwt");
    assert_eq!(revoked[0]["grant_id"], jti(&fresh).as_str());
    curl_granted(&sk, &fresh, &[&url]).assert_status(200);
    let seen = env.upstream.requests_to("/echo/reload");
    let last = seen
        .last()
        .expect("request")
        .bearer()
        .expect("bearer")
        .to_string();
    assert_eq!(
        decode_jwt(&last).1["aud"],
        "other-api",
        "a new credential under the new config"
    );
}
