//! An upstream that refuses the credential (401): the credential is replaced — once, however
//! many requests saw it refused, and at most once per `REJECT_MIN_INTERVAL` (5 s) — and a GET, HEAD
//! or OPTIONS with no body is sent again, once, with the new one; other methods get the 401.
//! Audited (`rejected_credential_id`, `retried`) and counted
//! (`sidekey_credential_rejections_total`).

use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::metrics::{labels, scrape};

const URL: &str = "https://api.test.local/reject-first-token";

fn bearer_jti(r: &Recorded) -> String {
    let token = r.bearer().expect("a bearer token");
    assert_local_jwt(token, "demo-api")["jti"]
        .as_str()
        .unwrap()
        .to_string()
}

fn credential_events(sk: &Sidekey, event: &str) -> Vec<Value> {
    sk.audit()
        .into_iter()
        .filter(|r| r["type"] == "credential" && r["event"] == event)
        .collect()
}

fn rejections(sk: &Sidekey, retried: &str) -> f64 {
    scrape(sk)
        .exact(
            "sidekey_credential_rejections_total",
            &labels(&[("route", "api"), ("retried", retried)]),
        )
        .unwrap_or(0.0)
}

#[test]
fn a_refused_credential_is_replaced_and_a_get_is_sent_again_once() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = curl_via(&sk, &[URL]);
    res.assert_status(200);
    let seen = env.upstream.requests_to("/reject-first-token");
    assert_eq!(seen.len(), 2, "refused, then sent again");
    let (first, second) = (bearer_jti(&seen[0]), bearer_jti(&seen[1]));
    assert_ne!(first, second, "the second attempt carries a new credential");
    let r = sk.wait_request_records(1).remove(0);
    assert_eq!(r["status"], 200);
    assert_eq!(r["retried"], true);
    assert_eq!(r["rejected_credential_id"], first.as_str());
    assert_eq!(
        r["credential_id"],
        second.as_str(),
        "the record names the one that worked"
    );
    assert_eq!(credential_events(&sk, "issued").len(), 1);
    let refreshed = credential_events(&sk, "refreshed");
    assert_eq!(refreshed.len(), 1);
    assert_eq!(refreshed[0]["credential_id"], second.as_str());
    assert_eq!(rejections(&sk, "true"), 1.0);

    // The replacement is kept: the next request uses it, with no retry.
    curl_via(&sk, &[URL]).assert_status(200);
    let seen = env.upstream.requests_to("/reject-first-token");
    assert_eq!(seen.len(), 3);
    assert_eq!(bearer_jti(&seen[2]), second);
    let r = sk.wait_request_records(2).remove(1);
    assert_eq!(r.get("retried"), None, "{r}");
    assert_eq!(r.get("rejected_credential_id"), None, "{r}");
}

#[test]
fn a_post_gets_the_401_and_the_credential_is_replaced_for_later_requests() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = curl_via(&sk, &["-X", "POST", "--data-binary", "x", URL]);
    res.assert_status(401);
    assert_eq!(
        env.upstream.requests_to("/reject-first-token").len(),
        1,
        "not sent again"
    );
    let r = sk.wait_request_records(1).remove(0);
    assert_eq!(r["status"], 401);
    assert_eq!(r.get("retried"), None, "{r}");
    let first = bearer_jti(&env.upstream.requests_to("/reject-first-token")[0]);
    assert_eq!(r["rejected_credential_id"], first.as_str());
    // Replaced in the background: the next request has a new credential, first time.
    sk.wait_audit(
        |r| r["type"] == "credential" && r["event"] == "refreshed",
        1,
        Duration::from_secs(10),
    );
    curl_via(&sk, &[URL]).assert_status(200);
    let seen = env.upstream.requests_to("/reject-first-token");
    assert_eq!(seen.len(), 2);
    assert_ne!(bearer_jti(&seen[1]), first);
    assert_eq!(rejections(&sk, "false"), 1.0);
    assert_eq!(rejections(&sk, "true"), 0.0);
}

#[test]
fn an_upstream_refusing_every_credential_costs_one_retry_and_never_a_loop() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let url = "https://api.test.local/status/401";
    curl_via(&sk, &[url]).assert_status(401);
    assert_eq!(
        env.upstream.requests_to("/status/401").len(),
        2,
        "one retry"
    );
    // Right after: a refused credential was replaced less than 5 s ago, so this one is not
    // (an upstream that refuses everything must not turn each request into an issuer call),
    // and the request is not sent again.
    curl_via(&sk, &[url]).assert_status(401);
    curl_via(&sk, &["-I", url]).assert_status(401);
    assert_eq!(env.upstream.requests_to("/status/401").len(), 4);
    let records = sk.wait_request_records(3);
    assert_eq!(records[0]["retried"], true);
    for r in &records[1..] {
        assert_eq!(r.get("retried"), None, "{r}");
        assert!(r["rejected_credential_id"].is_string(), "{r}");
    }
    assert_eq!(credential_events(&sk, "issued").len(), 1);
    assert_eq!(
        credential_events(&sk, "refreshed").len(),
        1,
        "one issuer call for the 401s"
    );
    assert_eq!(rejections(&sk, "true"), 1.0);
    assert_eq!(rejections(&sk, "false"), 2.0);
}

#[test]
fn a_per_task_credential_is_replaced_for_its_own_task_only() {
    use crate::common::grants::*;
    let env = Env::new();
    let keys = Keys::new();
    let sk = env.sidekey(&per_task_config(&keys));
    let url = "https://tasks.test.local/reject-first-token";
    let first = keys.sign(AUDIENCE, "agent-a", "task-a", &["--route", "tasks"]);
    let second = keys.sign(AUDIENCE, "agent-b", "task-b", &["--route", "tasks"]);
    curl_granted(&sk, &first, &[url]).assert_status(200);
    curl_granted(&sk, &second, &[url]).assert_status(200);
    let seen = env.upstream.requests_to("/reject-first-token");
    assert_eq!(
        seen.len(),
        3,
        "task a's first token refused and replaced; task b's accepted"
    );
    let jti = |r: &Recorded| decode_jwt(r.bearer().expect("bearer")).1["jti"].clone();
    assert_ne!(jti(&seen[0]), jti(&seen[1]));
    assert_ne!(jti(&seen[1]), jti(&seen[2]));
    let records = sk.wait_request_records(2);
    assert_eq!(records[0]["retried"], true);
    assert_eq!(records[0]["task_id"], "task-a");
    assert_eq!(records[1].get("retried"), None, "{}", records[1]);
    let refreshed = credential_events(&sk, "refreshed");
    assert_eq!(refreshed.len(), 1, "{refreshed:?}");
    assert_eq!(refreshed[0]["task_id"], "task-a");
}
