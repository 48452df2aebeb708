//! The audit trail on stdout: exactly one JSON record per request, keyed by the credential ID
//! the upstream actually received (the JWT's `jti`), credential events, redacted queries, and
//! never the credential itself.

use std::collections::HashSet;

use crate::common::*;
use regex::Regex;
use serde_json::Value;

fn jti_of(r: &Recorded) -> String {
    let token = r.bearer().expect("bearer upstream");
    decode_jwt(token).1["jti"]
        .as_str()
        .expect("jti")
        .to_string()
}

#[track_caller]
fn assert_common_fields(r: &Value) {
    let rfc3339 = Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$").unwrap();
    assert!(rfc3339.is_match(r["ts"].as_str().unwrap_or("")), "ts: {r}");
    assert_eq!(r["type"], "request", "{r}");
    assert!(
        r["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "request_id: {r}"
    );
    for k in ["bytes_in", "bytes_out", "port"] {
        assert!(r[k].is_u64(), "{k} should be an unsigned integer: {r}");
    }
    assert!(
        r["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "duration_ms: {r}"
    );
    for k in [
        "route",
        "credential",
        "credential_id",
        "issuer",
        "code",
        "status",
    ] {
        assert!(r.get(k).is_some(), "field {k} missing (null is fine): {r}");
    }
}

#[test]
fn one_record_per_request_with_the_jti_the_upstream_saw() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    curl_via(&sk, &["https://api.test.local/echo/one"]).assert_status(200);
    curl_via(
        &sk,
        &[
            "-X",
            "POST",
            "--data-binary",
            "abc",
            "https://api.test.local/echo/two",
        ],
    )
    .assert_status(200);
    curl(&["-x", &sk.proxy_url(), "http://plain.test.local/echo/three"]).assert_status(200);

    let records = sk.expect_request_records(3);
    let mut ids = HashSet::new();
    let seen: Vec<Recorded> = env
        .upstream
        .requests()
        .into_iter()
        .chain(env.upstream_http.requests())
        .collect();
    assert_eq!(seen.len(), 3);
    for (path, method, scheme, port) in [
        ("/echo/one", "GET", "https", 443),
        ("/echo/two", "POST", "https", 443),
        ("/echo/three", "GET", "http", 80),
    ] {
        let r = records
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no record for {path}: {records:#?}"));
        assert_common_fields(r);
        assert_eq!(r["listener"], "forward", "{r}");
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["method"], method, "{r}");
        assert_eq!(r["scheme"], scheme, "{r}");
        assert_eq!(r["port"], port, "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert!(r["code"].is_null(), "{r}");
        assert_eq!(r["credential"], "demo", "{r}");
        assert_eq!(r["issuer"], "local", "{r}");
        let upstream_req = seen
            .iter()
            .find(|s| s.path == path)
            .expect("upstream got it");
        assert_eq!(
            r["credential_id"],
            jti_of(upstream_req).as_str(),
            "credential_id = jti: {r}"
        );
        assert!(
            ids.insert(r["request_id"].as_str().unwrap().to_string()),
            "request_id reused"
        );
    }
    let route_of = |p: &str| records.iter().find(|r| r["path"] == p).unwrap()["route"].clone();
    assert_eq!(route_of("/echo/one"), "api");
    assert_eq!(route_of("/echo/three"), "plain");
    let host_of = |p: &str| records.iter().find(|r| r["path"] == p).unwrap()["host"].clone();
    assert_eq!(host_of("/echo/one"), API);
    assert_eq!(host_of("/echo/three"), PLAIN);
}

#[test]
fn issued_credential_event_matches_the_token_used() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    curl_via(&sk, &["https://api.test.local/echo/a"]).assert_status(200);
    curl_via(&sk, &["https://api.test.local/echo/b"]).assert_status(200);
    let seen = env.upstream.requests();
    // Cached: the second request reuses the first token.
    assert_eq!(
        jti_of(&seen[0]),
        jti_of(&seen[1]),
        "token not reused from the cache"
    );
    let issued = sk.wait_audit(
        |r| r["type"] == "credential" && r["event"] == "issued",
        1,
        sidekey::AUDIT_TIMEOUT,
    );
    assert_eq!(
        issued.len(),
        1,
        "one issuance for two requests: {issued:#?}"
    );
    let ev = &issued[0];
    assert_eq!(ev["credential"], "demo", "{ev}");
    assert_eq!(ev["issuer"], "local", "{ev}");
    assert_eq!(ev["credential_id"], jti_of(&seen[0]).as_str(), "{ev}");
    assert!(ev["ts"].is_string(), "{ev}");
}

#[test]
fn refusals_are_audited_once_with_code_status_and_request_id() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let b1 = curl_via(&sk, &["-X", "DELETE", "https://api.test.local/echo/x"])
        .expect_refusal(403, "method_not_allowed");
    let b2 = curl(&["-x", &sk.proxy_url(), "http://evil.test.local/x"])
        .expect_refusal(403, "host_not_allowed");
    let b3 = connect_tunnel(sk.forward, "evil.test.local:443")
        .expect_err("refused")
        .expect_refusal(403, "host_not_allowed");
    let b4 = curl_via(&sk, &["https://paths.test.local/echo/v2/x"])
        .expect_refusal(403, "path_not_allowed");

    let records = sk.expect_request_records(4);
    for (body, code, method, host) in [
        (&b1, "method_not_allowed", "DELETE", API),
        (&b2, "host_not_allowed", "GET", "evil.test.local"),
        (&b3, "host_not_allowed", "CONNECT", "evil.test.local"),
        (&b4, "path_not_allowed", "GET", SCOPED),
    ] {
        let id = body["request_id"].as_str().unwrap();
        let r = records
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| {
                panic!("no record with the refusal's request_id {id}: {records:#?}")
            });
        assert_common_fields(r);
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["code"], code, "{r}");
        assert_eq!(r["status"], 403, "{r}");
        assert_eq!(r["method"], method, "{r}");
        assert_eq!(r["host"], host, "{r}");
        assert!(
            r["credential_id"].is_null(),
            "no credential for a refused request: {r}"
        );
    }
    assert!(
        !sk.audit().iter().any(|r| r["type"] == "credential"),
        "no credential should be issued when every request is refused"
    );
}

#[test]
fn query_values_are_redacted() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    curl_via(
        &sk,
        &["https://api.test.local/echo/q?token=s3cr3t-value&page=2"],
    )
    .assert_status(200);
    let r = sk.only_request_record();
    assert_eq!(r["path"], "/echo/q?token=REDACTED&page=REDACTED", "{r}");
    assert!(!sk.stdout_text().contains("s3cr3t-value"));
    assert!(
        !sk.stderr().contains("s3cr3t-value"),
        "query value in the logs"
    );
}

#[test]
fn audit_and_logs_never_contain_the_credential() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    curl_via(&sk, &["https://api.test.local/echo/x"]).assert_status(200);
    curl(&["-x", &sk.proxy_url(), "http://plain.test.local/echo/y"]).assert_status(200);
    curl(&[&format!("{}/r/api/echo/z", sk.routes_url())]).assert_status(200);
    sk.expect_request_records(3);
    let token = env.upstream.requests()[0].bearer().unwrap().to_string();
    let signature = token.rsplit('.').next().unwrap();
    assert!(!sk.stdout_text().contains(signature), "token in the audit");
    assert!(!sk.stderr().contains(signature), "token in the logs");
    for (what, body) in sk.admin_pages() {
        assert!(
            !body.contains(signature),
            "token on the admin listener: {what}"
        );
    }
}

#[test]
fn stdout_carries_only_audit_json() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    curl_via(&sk, &["https://api.test.local/echo/x"]).assert_status(200);
    curl(&["-x", &sk.proxy_url(), "http://evil.test.local/"])
        .expect_refusal(403, "host_not_allowed");
    sk.expect_request_records(2);
    assert_eq!(
        sk.stdout_non_json(),
        Vec::<String>::new(),
        "non-JSON lines on stdout"
    );
    for r in sk.audit() {
        assert!(
            matches!(
                r["type"].as_str(),
                Some("request") | Some("credential") | Some("config")
            ),
            "unknown record type: {r}"
        );
    }
    // The diagnostics went to stderr.
    assert!(sk.stderr().contains("listening"));
}

#[test]
fn bytes_in_and_out_are_counted() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let upload = "u".repeat(3000);
    curl_via(
        &sk,
        &[
            "-X",
            "POST",
            "--data-binary",
            &upload,
            "https://api.test.local/echo/up",
        ],
    )
    .assert_status(200);
    let res = curl_via(&sk, &["https://api.test.local/bytes/50000"]);
    res.assert_status(200);
    let records = sk.expect_request_records(2);
    let up = records
        .iter()
        .find(|r| r["path"] == "/echo/up")
        .expect("upload record");
    let down = records
        .iter()
        .find(|r| r["path"] == "/bytes/50000")
        .expect("download record");
    assert!(
        up["bytes_in"].as_u64().unwrap() >= 3000,
        "bytes_in of a 3000-byte upload: {up}"
    );
    assert!(up["bytes_in"].as_u64().unwrap() < 10_000, "{up}");
    assert!(
        down["bytes_out"].as_u64().unwrap() >= 50_000,
        "bytes_out of a 50000-byte body: {down}"
    );
    assert!(down["bytes_in"].as_u64().unwrap() < 3000, "{down}");
}

#[test]
fn route_listener_requests_are_audited() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    curl(&[&format!("{}/r/api/echo/r?k=v", sk.routes_url())]).assert_status(200);
    let r = sk.only_request_record();
    assert_common_fields(&r);
    assert_eq!(r["listener"], "routes", "{r}");
    assert_eq!(r["route"], "api", "{r}");
    assert_eq!(r["scheme"], "https", "{r}");
    assert_eq!(r["host"], API, "{r}");
    assert_eq!(r["port"], 443, "{r}");
    assert_eq!(r["path"], "/echo/r?k=REDACTED", "{r}");
    assert_eq!(
        r["credential_id"],
        jti_of(&env.upstream.only_request()).as_str(),
        "{r}"
    );
}

#[test]
fn http2_requests_in_one_tunnel_are_audited_one_by_one() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = curl_via(
        &sk,
        &[
            "--http2",
            "https://api.test.local/echo/1",
            "https://api.test.local/echo/2",
            "https://api.test.local/echo/3",
        ],
    );
    assert_eq!(res.exit, 0, "{}", res.stderr);
    let records = sk.expect_request_records(3);
    let mut paths: Vec<&str> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/echo/1", "/echo/2", "/echo/3"]);
}

#[test]
fn concurrent_first_requests_share_one_issuance() {
    // Single flight: concurrent misses for the same credential make one issuer call.
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let urls: Vec<String> = (0..12)
        .map(|i| format!("https://api.test.local/echo/c{i}"))
        .collect();
    let mut args = vec![
        "--http1.1",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "12",
    ];
    args.extend(urls.iter().map(String::as_str));
    let res = curl_via(&sk, &args);
    assert_eq!(res.exit, 0, "{}", res.stderr);
    let seen = env.upstream.requests();
    assert_eq!(seen.len(), 12);
    let jtis: HashSet<String> = seen.iter().map(jti_of).collect();
    assert_eq!(jtis.len(), 1, "one token for all: {jtis:?}");
    let records = sk.expect_request_records(12);
    let ids: HashSet<&str> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 12, "request ids are unique");
    for r in &records {
        assert_eq!(
            r["credential_id"],
            jtis.iter().next().unwrap().as_str(),
            "{r}"
        );
    }
    let issued: Vec<Value> = sk
        .audit()
        .into_iter()
        .filter(|r| r["type"] == "credential" && r["event"] == "issued")
        .collect();
    assert_eq!(issued.len(), 1, "{issued:#?}");
}

/// `decision` is policy's verdict; `code` says how the request ended when it did not end with
/// the upstream's answer. A request policy allowed that then failed keeps `allow` with its
/// failure's code, so that refusals (`deny`) and failures (`allow` + a code) are told apart
/// the same way in the trail and in counts taken from it.
#[test]
fn decision_is_policys_verdict_and_code_how_the_request_ended() {
    let env = Env::new();
    let sk = env.sidekey(&base_config(
        &[("down.test.local:443", "127.0.0.1:1")],
        "  - name: down\n    hosts: [down.test.local]\n    methods: [GET]\n    credential: demo\n    inject: { header: Authorization, value: \"Bearer {token}\" }\n    allow_private: true\n",
        "",
    ));
    curl_via(&sk, &[&format!("https://{API}/echo/ok")]).assert_status(200);
    curl_via(
        &sk,
        &["-X", "DELETE", &format!("https://{API}/echo/refused")],
    )
    .expect_refusal(403, "method_not_allowed");
    curl_via(&sk, &["https://down.test.local/echo/failed"])
        .expect_refusal(502, "upstream_unreachable");
    let records = sk.wait_request_records(3);
    let by_path = |path: &str| {
        records
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("{path}: {records:#?}"))
    };
    let ok = by_path("/echo/ok");
    assert_eq!(
        (&ok["decision"], &ok["code"]),
        (&"allow".into(), &Value::Null)
    );
    let refused = by_path("/echo/refused");
    assert_eq!(refused["decision"], "deny");
    assert_eq!(refused["code"], "method_not_allowed");
    let failed = by_path("/echo/failed");
    assert_eq!(failed["decision"], "allow");
    assert_eq!(failed["code"], "upstream_unreachable");
    assert_eq!(failed["status"], 502);
    assert_eq!(failed["route"], "down");
}
