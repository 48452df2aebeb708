//! Self-tests of the OpenBao and PostgreSQL test peers (`tests/common/openbao.rs`,
//! `tests/common/postgres.rs`): they prove the setup `tests/vault.rs` relies on is right, with
//! no sidekey involved. Needs `scripts/peers/openbao` (run by `scripts/install-test-deps`).

use std::time::{Duration, Instant};

use crate::common::openbao::{OpenBao, ISSUER_POLICY_BASE};
use crate::common::postgres::Postgres;
use crate::common::*;
use serde_json::{json, Value};

const AUDIENCE: &str = "sidekey-vault-test";

fn policy(extra: &str) -> String {
    format!("{ISSUER_POLICY_BASE}\n{extra}")
}

/// Logs in at `auth/jwt/login` with real curl, as any HTTP client would.
fn curl_jwt_login(bao: &OpenBao, role: &str, jwt: &str) -> (u16, Value) {
    let body = json!({ "role": role, "jwt": jwt }).to_string();
    let url = format!("{}/v1/auth/jwt/login", bao.address());
    let res = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        &url,
    ]);
    assert_eq!(res.exit, 0, "curl: {}", res.stderr);
    (res.status, res.json())
}

#[test]
fn openbao_starts_and_a_jwt_login_with_the_identity_token_reads_kv_v2() {
    let bao = OpenBao::start();
    assert!(bao.address().starts_with("http://127.0.0.1:"));
    let health = bao.api_ok("GET", "sys/health", None);
    assert_eq!(health["initialized"], true, "{health}");
    assert_eq!(health["sealed"], false, "{health}");

    let identity = Identity::new("agent-7", AUDIENCE);
    bao.write_policy(
        "agent",
        &policy(r#"path "secret/data/agents/*" { capabilities = ["read"] }"#),
    );
    bao.enable_jwt_auth(
        identity.public_pem(),
        "agent",
        AUDIENCE,
        "30s",
        "2m",
        &["agent"],
    );
    assert_eq!(
        bao.kv_put("agents/github", json!({ "token": "ghp_one" })),
        1
    );
    assert_eq!(
        bao.kv_put(
            "agents/github",
            json!({ "token": "ghp_two", "user": "bot" })
        ),
        2
    );

    let (status, login) = curl_jwt_login(&bao, "agent", &identity.token());
    assert_eq!(status, 200, "jwt login: {login}");
    let auth = &login["auth"];
    let token = auth["client_token"]
        .as_str()
        .expect("client_token")
        .to_string();
    assert!(!token.is_empty());
    assert_eq!(auth["lease_duration"], 30, "token_ttl: {login}");
    assert_eq!(auth["renewable"], true, "{login}");
    assert_eq!(auth["token_type"], "service", "{login}");
    assert!(
        auth["token_policies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x == "agent")),
        "{login}"
    );
    assert_eq!(
        login["lease_id"], "",
        "a login has no lease of its own: {login}"
    );

    // KV v2 read with the token: the latest version, field by field.
    let (status, kv) = bao.api_as(Some(&token), "GET", "secret/data/agents/github", None);
    assert_eq!(status, 200, "{kv}");
    assert_eq!(kv["data"]["data"]["token"], "ghp_two", "{kv}");
    assert_eq!(kv["data"]["metadata"]["version"], 2, "{kv}");
    assert_eq!(kv["lease_id"], "", "KV v2 has no lease: {kv}");
    assert_eq!(kv["lease_duration"], 0, "{kv}");
    // Older versions stay readable by number.
    let (_, v1) = bao.api_as(
        Some(&token),
        "GET",
        "secret/data/agents/github?version=1",
        None,
    );
    assert_eq!(v1["data"]["data"]["token"], "ghp_one", "{v1}");
    // A missing secret is a 404 with an empty error list; outside the policy a 403.
    let (status, missing) = bao.api_as(Some(&token), "GET", "secret/data/agents/none", None);
    assert_eq!((status, missing.clone()), (404, json!({ "errors": [] })));
    let (status, _) = bao.api_as(Some(&token), "GET", "secret/data/other/x", None);
    assert_eq!(status, 403);

    // The token renews itself (default policy), capped by token_max_ttl.
    let (status, renewed) = bao.api_as(
        Some(&token),
        "POST",
        "auth/token/renew-self",
        Some(json!({ "increment": "1h" })),
    );
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["auth"]["client_token"], token.as_str());
    let ttl = renewed["auth"]["lease_duration"].as_u64().unwrap();
    assert!(
        (100..=120).contains(&ttl),
        "capped by max ttl 2m: {renewed}"
    );
    let (status, me) = bao.api_as(Some(&token), "GET", "auth/token/lookup-self", None);
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["data"]["path"], "auth/jwt/login");
    assert_eq!(bao.tokens_from("auth/jwt/login").len(), 1);

    // Wrong role, wrong audience, untrusted key: 400 with an `errors` list.
    let (status, err) = curl_jwt_login(&bao, "nope", &identity.token());
    assert_eq!(status, 400, "{err}");
    assert!(err["errors"][0].as_str().unwrap().contains("nope"), "{err}");
    let wrong_aud = identity.mint(
        "agent-7",
        "someone-else",
        Duration::from_secs(60),
        json!({}),
    );
    let (status, err) = curl_jwt_login(&bao, "agent", &wrong_aud);
    assert_eq!(status, 400, "{err}");
    let stranger = Identity::new("agent-7", AUDIENCE);
    let (status, err) = curl_jwt_login(&bao, "agent", &stranger.token());
    assert_eq!(status, 400, "{err}");

    // Revoking the token ends it.
    let (status, _) = bao.api_as(Some(&token), "POST", "auth/token/revoke-self", None);
    assert_eq!(status, 204);
    let (status, _) = bao.api_as(Some(&token), "GET", "auth/token/lookup-self", None);
    assert_eq!(status, 403);
    assert!(bao.tokens_from("auth/jwt/login").is_empty());
}

#[test]
fn approle_login_with_role_and_secret_ids() {
    let bao = OpenBao::start();
    bao.write_policy(
        "agent",
        &policy(r#"path "secret/data/agents/*" { capabilities = ["read"] }"#),
    );
    bao.kv_put("agents/ci", json!({ "token": "ci-secret" }));
    let (role_id, secret_id) = bao.enable_approle_at("ci-approle", "ci", &["agent"]);
    assert!(!role_id.is_empty() && !secret_id.is_empty());
    let (status, login) = bao.api_as(
        None,
        "POST",
        "auth/ci-approle/login",
        Some(json!({ "role_id": role_id, "secret_id": secret_id })),
    );
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["auth"]["lease_duration"], 60, "{login}");
    let token = login["auth"]["client_token"].as_str().unwrap();
    let (status, kv) = bao.api_as(Some(token), "GET", "secret/data/agents/ci", None);
    assert_eq!(status, 200, "{kv}");
    assert_eq!(kv["data"]["data"]["token"], "ci-secret");
    let (status, err) = bao.api_as(
        None,
        "POST",
        "auth/ci-approle/login",
        Some(json!({ "role_id": role_id, "secret_id": "wrong" })),
    );
    assert_eq!(status, 400, "{err}");
}

#[test]
fn database_creds_are_a_renewable_lease_backed_by_a_postgres_role() {
    let pg = Postgres::start();
    assert_eq!(pg.psql("SELECT 1"), "1");
    assert!(pg.role_exists("postgres"));
    assert!(!pg.role_exists("nobody"));

    let bao = OpenBao::start();
    bao.enable_database(&pg, "readonly", "6s", "20s");
    bao.enable_database(&pg, "long", "1m", "2m"); // a second role: the mount is reused
    bao.write_policy(
        "db",
        &policy(r#"path "database/creds/*" { capabilities = ["read"] }"#),
    );
    let (role_id, secret_id) = bao.enable_approle("db", &["db"]);
    let login = |ttl: &str| -> String {
        bao.api_ok(
            "POST",
            "auth/approle/role/db",
            Some(json!({ "token_policies": ["db"], "token_ttl": ttl, "token_max_ttl": ttl })),
        );
        let (s, v) = bao.api_as(
            None,
            "POST",
            "auth/approle/login",
            Some(json!({ "role_id": role_id, "secret_id": secret_id })),
        );
        assert_eq!(s, 200, "{v}");
        v["auth"]["client_token"].as_str().unwrap().to_string()
    };
    let token = login("10m");

    let (status, creds) = bao.api_as(Some(&token), "GET", "database/creds/readonly", None);
    assert_eq!(status, 200, "{creds}");
    let lease = creds["lease_id"].as_str().unwrap().to_string();
    assert!(lease.starts_with("database/creds/readonly/"), "{creds}");
    assert_eq!(creds["lease_duration"], 6, "default_ttl: {creds}");
    assert_eq!(creds["renewable"], true, "{creds}");
    let user = creds["data"]["username"].as_str().unwrap().to_string();
    let password = creds["data"]["password"].as_str().unwrap().to_string();
    assert!(user.starts_with("v-"), "{creds}");
    assert!(pg.role_exists(&user), "role {user} created in Postgres");
    assert!(
        pg.can_login(&user, &password),
        "{user} logs in with its password"
    );
    assert!(
        !pg.can_login(&user, "wrong-password"),
        "SCRAM really checks"
    );
    assert_eq!(pg.user_for_password(&password), Some(user.clone()));
    assert!(bao.lease_exists(&lease));
    assert_eq!(
        bao.list_leases("database/creds/readonly"),
        vec![lease.clone()]
    );
    let looked = bao.lease_lookup(&lease).unwrap();
    assert_eq!(looked["renewable"], true, "{looked}");
    assert!(looked["ttl"].as_u64().unwrap() <= 6, "{looked}");

    // Renewal with the token that got the lease (default policy): same lease, TTL again.
    let (status, renewed) = bao.api_as(
        Some(&token),
        "PUT",
        "sys/leases/renew",
        Some(json!({ "lease_id": lease })),
    );
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["lease_id"], lease.as_str(), "{renewed}");
    assert_eq!(renewed["lease_duration"], 6, "{renewed}");
    assert!(
        renewed["data"].is_null(),
        "a renewal carries no secret: {renewed}"
    );

    // Revocation (allowed by ISSUER_POLICY_BASE) drops the role.
    let (status, body) = bao.api_as(
        Some(&token),
        "PUT",
        "sys/leases/revoke",
        Some(json!({ "lease_id": lease })),
    );
    assert_eq!(status, 204, "{body}");
    assert!(!bao.lease_exists(&lease));
    assert!(!pg.role_exists(&user), "revocation dropped {user}");
    assert!(bao.list_leases("database/creds/readonly").is_empty());
    let (status, err) = bao.api_as(
        Some(&token),
        "PUT",
        "sys/leases/renew",
        Some(json!({ "lease_id": lease })),
    );
    assert_eq!(status, 400, "renewing a revoked lease: {err}");

    // An unknown role is a 400.
    let (status, err) = bao.api_as(Some(&token), "GET", "database/creds/nope", None);
    assert_eq!(status, 400, "{err}");

    // A lease dies with the token that created it, whatever its own TTL (1m here).
    let short = login("3s");
    let (status, creds) = bao.api_as(Some(&short), "GET", "database/creds/long", None);
    assert_eq!(status, 200, "{creds}");
    assert_eq!(
        creds["lease_duration"], 60,
        "not capped by the token's ttl: {creds}"
    );
    let long_lease = creds["lease_id"].as_str().unwrap().to_string();
    let long_user = creds["data"]["username"].as_str().unwrap().to_string();
    assert!(pg.role_exists(&long_user));
    assert!(
        eventually(Duration::from_secs(10), || !bao.lease_exists(&long_lease)),
        "lease outlived its token"
    );
    assert!(
        eventually(Duration::from_secs(5), || !pg.role_exists(&long_user)),
        "role {long_user} outlived its lease"
    );
}

#[test]
fn a_renewable_lease_stops_at_max_ttl() {
    let pg = Postgres::start();
    let bao = OpenBao::start();
    bao.enable_database(&pg, "readonly", "3s", "8s");
    let (status, creds) = bao.api("GET", "database/creds/readonly", None);
    assert_eq!(status, 200, "{creds}");
    let lease = creds["lease_id"].as_str().unwrap().to_string();
    let user = creds["data"]["username"].as_str().unwrap().to_string();
    let password = creds["data"]["password"].as_str().unwrap().to_string();
    let mut durations = Vec::new();
    let started = Instant::now();
    let mut tick = 0;
    let last = loop {
        // Renew about every second (on a fixed schedule, whatever the checks cost).
        tick += 1;
        let next = started + Duration::from_secs(tick);
        // Not an event wait: the renewal schedule is the scenario.
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let (status, r) = bao.api(
            "PUT",
            "sys/leases/renew",
            Some(json!({ "lease_id": lease })),
        );
        if status != 200 {
            break (status, r);
        }
        let d = r["lease_duration"].as_u64().unwrap();
        if d < 3 {
            assert!(
                r["warnings"][0].as_str().unwrap_or("").contains("max_ttl"),
                "a capped renewal says so: {r}"
            );
        }
        durations.push(d);
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "renewed past max ttl"
        );
        // Past the first 3 s the role still logs in: renewal moved its VALID UNTIL.
        assert!(pg.can_login(&user, &password), "{user} after renewal {r}");
    };
    // Renewals give the full 3 s, then what is left of max ttl (with a warning), then fail.
    assert!(durations.first() == Some(&3), "{durations:?}");
    assert!(durations.iter().any(|d| *d < 3), "{durations:?}");
    assert!(started.elapsed() >= Duration::from_secs(7), "{durations:?}");
    assert_eq!(last.0, 400, "{}", last.1);
    // "lease not found" once it is gone; "lease expired" while it is being revoked; "failed to
    // renew entry: … past the max TTL, cannot renew" in the moment before.
    let why = last.1["errors"][0].as_str().unwrap_or("");
    assert!(
        why == "lease not found" || why == "lease expired" || why.contains("past the max TTL"),
        "{}",
        last.1
    );
    assert!(
        eventually(Duration::from_secs(5), || !pg.role_exists(&user)),
        "expired lease's role dropped"
    );
}

#[test]
fn pki_issue_with_generate_lease_gives_a_non_renewable_lease() {
    let bao = OpenBao::start();
    bao.enable_pki("agent", "15s");
    bao.write_policy(
        "pki",
        &policy(r#"path "pki/issue/agent" { capabilities = ["create", "update"] }"#),
    );
    let identity = Identity::new("agent-7", AUDIENCE);
    bao.enable_jwt_auth(
        identity.public_pem(),
        "agent",
        AUDIENCE,
        "1m",
        "5m",
        &["pki"],
    );
    let (status, login) = curl_jwt_login(&bao, "agent", &identity.token());
    assert_eq!(status, 200, "{login}");
    let token = login["auth"]["client_token"].as_str().unwrap().to_string();

    let (status, cert) = bao.api_as(
        Some(&token),
        "POST",
        "pki/issue/agent",
        Some(json!({ "common_name": "agent.internal", "ttl": "10s" })),
    );
    assert_eq!(status, 200, "{cert}");
    let lease = cert["lease_id"].as_str().unwrap().to_string();
    assert!(lease.starts_with("pki/issue/agent/"), "{cert}");
    assert_eq!(cert["renewable"], false, "{cert}");
    let d = cert["lease_duration"].as_u64().unwrap();
    assert!(
        (8..=10).contains(&d),
        "lease_duration about the ttl: {cert}"
    );
    let serial = cert["data"]["serial_number"].as_str().unwrap();
    assert!(serial.contains(':') && !serial.contains('\n'), "{cert}");
    assert!(cert["data"]["certificate"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(cert["data"]["expiration"].is_u64(), "{cert}");
    assert!(bao.lease_exists(&lease));
    assert_eq!(bao.list_leases("pki/issue/agent"), vec![lease.clone()]);

    let (status, err) = bao.api_as(
        Some(&token),
        "PUT",
        "sys/leases/renew",
        Some(json!({ "lease_id": lease })),
    );
    assert_eq!(status, 400, "{err}");
    assert!(
        err["errors"][0].as_str().unwrap().contains("not renewable"),
        "{err}"
    );
    let (status, _) = bao.api_as(
        Some(&token),
        "PUT",
        "sys/leases/revoke",
        Some(json!({ "lease_id": lease })),
    );
    assert_eq!(status, 204);
    assert!(!bao.lease_exists(&lease));
}

#[test]
fn a_stopped_openbao_refuses_connections() {
    let mut bao = OpenBao::start();
    assert!(bao.is_running());
    bao.stop();
    assert!(!bao.is_running());
    assert!(bao.try_api(None, "GET", "sys/health", None).is_err());
    assert!(
        bao.output().contains("OpenBao server configuration"),
        "{}",
        bao.output()
    );
}
