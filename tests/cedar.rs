//! `cedar:`: Cedar policies after route matching, through the running proxy with curl —
//! permit, forbid over permit, no permit, context from task grants (the agent, the user it
//! acts for), a reload with a broken policy set keeping the last good one — and in
//! `sidekey check` and `sidekey explain`.

use std::path::Path;

use serde_json::Value;

use crate::common::grants::{curl_granted, Keys, AUDIENCE};
use crate::common::*;

const POLICIES: &str = r#"
// Reads of /echo on the api route, by anyone.
@id("api-reads")
permit(principal, action == Sidekey::Action::"GET", resource == Sidekey::Route::"api")
when { context.path like "/echo/*" };

// Posts only by agent-1, and only for alice.
@id("posts-for-alice")
permit(principal == Sidekey::Agent::"agent-1", action == Sidekey::Action::"POST",
       resource == Sidekey::Route::"api")
when { context.has_grant && context.user == "alice" };

// Never anything under a `secret` segment, whatever permits it.
@id("no-secrets")
forbid(principal, action, resource) when { context.segments.contains("secret") };
"#;

fn config(policies: &Path, extra: &str) -> String {
    base_config(
        &[],
        "",
        &format!("cedar:\n  policies: {}\n{extra}", policies.display()),
    )
}

fn cedar_of(r: &Value) -> (String, Vec<String>) {
    (
        r["cedar"]["decision"].as_str().unwrap_or("").to_string(),
        r["cedar"]["policies"]
            .as_array()
            .map(|a| a.iter().map(|p| p.as_str().unwrap().to_string()).collect())
            .unwrap_or_default(),
    )
}

#[test]
fn cedar_permits_forbids_and_sees_grant_claims() {
    let env = Env::new();
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.cedar");
    std::fs::write(&policies, POLICIES).unwrap();
    let sk = env.sidekey(&config(&policies, &keys.section(false)));

    curl_via(&sk, &["https://api.test.local/echo/a"]).assert_status(200);
    let body = curl_via(&sk, &["https://api.test.local/echo/secret/a"])
        .expect_refusal(403, "policy_denied");
    assert!(
        body["message"].as_str().unwrap().contains("no-secrets"),
        "{body}"
    );
    let body =
        curl_via(&sk, &["https://api.test.local/status/200"]).expect_refusal(403, "policy_denied");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no Cedar policy permits it"),
        "{body}"
    );
    curl_via(
        &sk,
        &["-X", "POST", "-d", "x", "https://api.test.local/echo/a"],
    )
    .expect_refusal(403, "policy_denied");
    // The principal and the user come from the task grant.
    let alice = keys.sign(AUDIENCE, "agent-1", "t-1", &["--user", "alice"]);
    let bob = keys.sign(AUDIENCE, "agent-1", "t-2", &["--user", "bob"]);
    let other = keys.sign(AUDIENCE, "agent-2", "t-3", &["--user", "alice"]);
    let post = ["-X", "POST", "-d", "x", "https://api.test.local/echo/a"];
    curl_granted(&sk, &alice, &post).assert_status(200);
    curl_granted(&sk, &bob, &post).expect_refusal(403, "policy_denied");
    curl_granted(&sk, &other, &post).expect_refusal(403, "policy_denied");

    let records = sk.wait_request_records(7);
    let got: Vec<(String, Vec<String>)> = records.iter().map(cedar_of).collect();
    let permit = |p: &str| ("allow".to_string(), vec![p.to_string()]);
    let deny = |p: &[&str]| {
        (
            "deny".to_string(),
            p.iter().map(|s| s.to_string()).collect(),
        )
    };
    assert_eq!(
        got,
        [
            permit("api-reads"),
            deny(&["no-secrets"]),
            deny(&[]),
            deny(&[]),
            permit("posts-for-alice"),
            deny(&[]),
            deny(&[]),
        ]
    );
    for r in &records[1..4] {
        assert_eq!(r["decision"], "deny");
        assert_eq!(r["code"], "policy_denied");
    }
    // Only the two permitted requests reached the upstream.
    let reached: Vec<String> = env
        .upstream
        .requests()
        .into_iter()
        .map(|r| r.method)
        .collect();
    assert_eq!(reached, ["GET", "POST"]);
}

#[test]
fn a_broken_policy_set_is_refused_at_reload_and_the_last_good_one_kept() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.cedar");
    std::fs::write(&policies, POLICIES).unwrap();
    let yaml = config(&policies, "");
    let sk = env.sidekey(&yaml);
    curl_via(&sk, &["https://api.test.local/echo/a"]).assert_status(200);
    // A syntax error: rejected, the running policies stay.
    std::fs::write(
        &policies,
        "permit(principal, action, resource) when { context.path like };",
    )
    .unwrap();
    let rejected = sk.reload(&yaml, &env.vars());
    assert_eq!(rejected["event"], "rejected", "{rejected}");
    assert!(
        rejected["errors"][0]
            .as_str()
            .unwrap_or("")
            .contains("policies.cedar: 1:62:"),
        "{rejected}"
    );
    curl_via(&sk, &["https://api.test.local/echo/a"]).assert_status(200);
    curl_via(&sk, &["https://api.test.local/status/200"]).expect_refusal(403, "policy_denied");
    // A good new set: in force from the reload on.
    std::fs::write(
        &policies,
        r#"@id("status-only") permit(principal, action, resource) when { context.path like "/status/*" };"#,
    )
    .unwrap();
    assert_eq!(sk.reload(&yaml, &env.vars())["event"], "reloaded");
    curl_via(&sk, &["https://api.test.local/status/200"]).assert_status(200);
    curl_via(&sk, &["https://api.test.local/echo/a"]).expect_refusal(403, "policy_denied");
}

#[test]
fn check_and_explain_read_the_policies() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.cedar");
    let file = dir.path().join("sidekey.yaml");
    std::fs::write(
        &file,
        crate::common::sidekey::substitute(&config(&policies, ""), &env.vars()),
    )
    .unwrap();
    std::fs::write(
        &policies,
        "permit(principal, action, resource)\nwhen { context.path == };",
    )
    .unwrap();
    let out = run_check(&file);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("policies.cedar: 2:"), "{}", out.stderr);
    std::fs::write(&policies, POLICIES).unwrap();
    let out = run_check(&file);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("cedar: policies"), "{}", out.stdout);
    let explain = |args: &[&str]| {
        let mut all: Vec<&std::ffi::OsStr> = vec![
            "explain".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
            "--format".as_ref(),
            "json".as_ref(),
        ];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        let out = crate::common::sidekey::run_sidekey(&all);
        let json: Value = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
        (out.code, json)
    };
    let (code, json) = explain(&["GET", "https://api.test.local/echo/a"]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["cedar"]["decision"], "allow");
    assert_eq!(json["cedar"]["policies"][0], "api-reads");
    let (code, json) = explain(&["GET", "https://api.test.local/echo/secret"]);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["refusal"]["code"], "policy_denied");
    assert_eq!(json["cedar"]["policies"][0], "no-secrets");
}

#[test]
fn a_route_can_name_its_action_and_policies_see_selected_headers() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.cedar");
    std::fs::write(
        &policies,
        r#"@id("comments") permit(principal, action == Sidekey::Action::"comment", resource == Sidekey::Route::"gh")
           when { context.method == "POST" && context.headers has "x-github-event"
                  && context.headers["x-github-event"] == "issue_comment" };"#,
    )
    .unwrap();
    let yaml = base_config(
        &[("gh.test.local:443", "{upstream}")],
        r#"  - name: gh
    hosts: [gh.test.local]
    methods: [POST]
    action: comment
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
"#,
        &format!(
            "cedar:\n  policies: {}\n  headers: [x-github-event]\n",
            policies.display()
        ),
    );
    let sk = env.sidekey(&yaml);
    let post = |event: Option<&str>| {
        let header = format!("X-GitHub-Event: {}", event.unwrap_or(""));
        let mut args = vec!["-X", "POST", "-d", "x"];
        if event.is_some() {
            args.extend(["-H", header.as_str()]);
        }
        args.push("https://gh.test.local/echo/repos/acme/api/issues/7/comments");
        curl_via(&sk, &args)
    };
    post(Some("issue_comment")).assert_status(200);
    post(Some("push")).expect_refusal(403, "policy_denied");
    post(None).expect_refusal(403, "policy_denied");
    let records = sk.wait_request_records(3);
    assert_eq!(
        cedar_of(&records[0]),
        ("allow".into(), vec!["comments".into()])
    );
    assert_eq!(env.upstream.requests().len(), 1);
    // The header reached the upstream as sent; it is not consumed by the check.
    assert_eq!(
        env.upstream.requests()[0].header("x-github-event"),
        Some("issue_comment")
    );
}
