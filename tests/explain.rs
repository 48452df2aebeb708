//! `sidekey explain`: what the proxy would do with a request, said without sending it. A table
//! of requests against the config the proxy runs in the other tests (each answer and exit
//! code), grants checked offline, and the running proxy doing what explain said.

use std::ffi::OsStr;
use std::path::Path;

use serde_json::Value;

use crate::common::grants::{self, Keys, AUDIENCE};
use crate::common::sidekey::{run_sidekey, substitute, CheckOutput};
use crate::common::*;

/// A route with a small `max_request_body`, for `body_too_large`.
const SMALL: &str = "  - name: small
    hosts: [small.test.local]
    methods: [POST]
    max_request_body: 100
    allow_private: true
";

fn config(env: &Env, extra_top: &str) -> String {
    substitute(
        &base_config(&[("small.test.local:443", "{upstream}")], SMALL, extra_top),
        &env.vars(),
    )
}

/// `sidekey explain --config FILE --format json ARGS…`: exit code, the JSON document.
fn explain(file: &Path, args: &[&str]) -> (Option<i32>, Value, CheckOutput) {
    let mut all: Vec<&OsStr> = vec![
        "explain".as_ref(),
        "--config".as_ref(),
        file.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ];
    all.extend(args.iter().map(OsStr::new));
    let out = run_sidekey(&all);
    let json = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
    (out.code, json, out)
}

/// What one request should get: allowed by `route` (`Ok`), or refused with `code` (`Err`).
type Want = Result<&'static str, &'static str>;

#[track_caller]
fn assert_explained(file: &Path, args: &[&str], want: Want) -> Value {
    let (code, json, out) = explain(file, args);
    match want {
        Ok(route) => {
            assert_eq!(code, Some(0), "{args:?}: {out:?}");
            assert_eq!(json["decision"], "allow", "{args:?}: {json}");
            assert_eq!(json["route"]["name"], route, "{args:?}: {json}");
            assert!(json["refusal"].is_null(), "{json}");
        }
        Err(wanted) => {
            assert_eq!(code, Some(1), "{args:?}: {out:?}");
            assert_eq!(json["decision"], "deny", "{args:?}: {json}");
            assert_eq!(json["refusal"]["code"], wanted, "{args:?}: {json}");
            assert!(json["refusal"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            assert!(json["refusal"]["step"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            assert!(json["route"].is_null(), "{json}");
        }
    }
    json
}

#[test]
fn explain_answers_each_request_of_the_table_with_its_exit_code() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidekey.yaml");
    std::fs::write(&file, config(&env, "")).unwrap();
    let cases: &[(&[&str], Want)] = &[
        (&["GET", "https://api.test.local/echo/a"], Ok("api")),
        (&["HEAD", "https://api.test.local/"], Ok("api")),
        (&["GET", "https://paths.test.local/echo/v1/x"], Ok("scoped")),
        (&["GET", "http://plain.test.local/echo"], Ok("plain")),
        (
            &[
                "--listener",
                "routes",
                "GET",
                "http://127.0.0.1:15081/r/other/echo",
            ],
            Ok("other"),
        ),
        (&["--listener", "routes", "GET", "/r/api/echo"], Ok("api")),
        (
            &["GET", "https://evil.test.local/"],
            Err("host_not_allowed"),
        ),
        (&["GET", "http://api.test.local/"], Err("host_not_allowed")),
        (
            &["--listener", "routes", "GET", "/r/nope/x"],
            Err("host_not_allowed"),
        ),
        (
            &["DELETE", "https://api.test.local/echo"],
            Err("method_not_allowed"),
        ),
        (
            &["POST", "https://other.test.local/echo"],
            Err("method_not_allowed"),
        ),
        (
            &[
                "POST",
                "https://api.test.local/echo",
                "-H",
                "X-HTTP-Method-Override: DELETE",
            ],
            Err("method_not_allowed"),
        ),
        (
            &["GET", "https://paths.test.local/echo/v2"],
            Err("path_not_allowed"),
        ),
        (
            &["GET", "https://api.test.local/echo/a%2Fb"],
            Err("path_not_allowed"),
        ),
        (
            &["GET", "https://api.test.local/echo/%zz"],
            Err("request_invalid"),
        ),
        (
            &[
                "GET",
                "https://api.test.local/echo",
                "-H",
                "Host: other.test.local",
            ],
            Err("target_mismatch"),
        ),
        (
            &[
                "POST",
                "https://api.test.local/echo",
                "-H",
                "Transfer-Encoding: gzip, chunked",
            ],
            Err("request_invalid"),
        ),
        (
            &[
                "POST",
                "https://small.test.local/up",
                "--body-length",
                "101",
            ],
            Err("body_too_large"),
        ),
        (
            &[
                "POST",
                "https://small.test.local/up",
                "--body-length",
                "100",
            ],
            Ok("small"),
        ),
    ];
    for (args, want) in cases {
        assert_explained(&file, args, *want);
    }

    // What is attached, and how, is named; a value never (there is none to name).
    let json = assert_explained(&file, &["GET", "https://api.test.local/echo"], Ok("api"));
    assert_eq!(json["connect"], "intercept");
    assert_eq!(json["credential"]["name"], "demo");
    assert_eq!(json["credential"]["issuer"], "local");
    assert_eq!(json["credential"]["issuer_kind"], "local");
    assert_eq!(json["inject"]["header"], "Authorization");
    assert_eq!(json["inject"]["template"], "Bearer {token}");
    assert_eq!(json["route"]["index"], 1);
    assert_eq!(json["target"]["host"], "api.test.local");

    // Text: the same answer, for a person.
    let out = run_sidekey(&[
        "explain".as_ref(),
        "--config".as_ref(),
        file.as_os_str(),
        "DELETE".as_ref(),
        "https://api.test.local/echo".as_ref(),
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("decision:   deny"), "{}", out.stdout);
    assert!(
        out.stdout.contains("answer:     403 method_not_allowed"),
        "{}",
        out.stdout
    );

    // Usage errors: exit 2.
    for args in [
        &["GET", "https://api.test.local/", "-H", "no colon"][..],
        &["G E T", "https://api.test.local/"][..],
    ] {
        let (code, _, out) = explain(&file, args);
        assert_eq!(code, Some(2), "{args:?}: {out:?}");
    }
}

#[test]
fn an_invalid_config_is_reported_as_check_reports_it_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "routes:\n  - name: a\n    hosts: [a.example.com]\n").unwrap();
    let (code, _, out) = explain(&file, &["GET", "https://a.example.com/"]);
    assert_eq!(code, Some(2), "{out:?}");
    let check = run_check(&file);
    assert!(!check.stderr.is_empty());
    assert_eq!(
        out.stderr, check.stderr,
        "the same report as `sidekey check`"
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn explain_checks_grants_offline() {
    let env = Env::new();
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let optional = dir.path().join("optional.yaml");
    std::fs::write(&optional, config(&env, &keys.section(false))).unwrap();
    let required = dir.path().join("required.yaml");
    std::fs::write(&required, config(&env, &keys.section(true))).unwrap();

    let scoped = keys.sign(AUDIENCE, "agent", "t1", &["--route", "scoped"]);
    let every = keys.sign(AUDIENCE, "agent", "t1", &[]);
    // Signed by a key the config does not trust.
    let forged = Keys::new().sign(AUDIENCE, "agent", "t1", &[]);
    let other_audience = keys.sign("another-sidekey", "agent", "t1", &[]);

    let g = |grant: &str| ["--grant".to_string(), grant.to_string()];
    let cases: Vec<(&Path, Vec<String>, Want)> = vec![
        (&optional, vec![], Ok("api")),
        (&required, vec![], Err("grant_required")),
        (&required, g(&every).to_vec(), Ok("api")),
        (&required, g(&scoped).to_vec(), Err("route_not_granted")),
        (&optional, g(&forged).to_vec(), Err("grant_invalid")),
        (&optional, g(&other_audience).to_vec(), Err("grant_invalid")),
        (&optional, g("garbage").to_vec(), Err("grant_invalid")),
    ];
    for (file, mut args, want) in cases {
        args.extend(["GET".into(), "https://api.test.local/echo".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_explained(file, &args, want);
    }
    // A scoped grant, inside its scope: verified, the route ∩ grant named.
    let json = assert_explained(
        &required,
        &[
            "--grant",
            &scoped,
            "GET",
            "https://paths.test.local/echo/v1/a",
        ],
        Ok("scoped"),
    );
    assert_eq!(json["grant"]["verified"], true, "{json}");
    assert_eq!(json["grant"]["task_id"], "t1");
    assert_eq!(
        json["route"]["grant"],
        "the grant names scoped with the route's methods, the route's paths"
    );
    // Where an agent presents it: the proxy credentials, x-sidekey-grant on the route listener.
    let bearer = format!("Proxy-Authorization: Bearer {scoped}");
    assert_explained(
        &required,
        &["GET", "https://api.test.local/echo", "-H", &bearer],
        Err("route_not_granted"),
    );
    let header = format!("x-sidekey-grant: {every}");
    assert_explained(
        &required,
        &["--listener", "routes", "GET", "/r/api/echo", "-H", &header],
        Ok("api"),
    );
    assert_explained(
        &required,
        &[
            "--listener",
            "routes",
            "GET",
            "/r/api/echo",
            "-H",
            "x-sidekey-grant: forged",
        ],
        Err("grant_invalid"),
    );
    // A task header is not accepted under grants.required.
    assert_explained(
        &required,
        &[
            "--grant",
            &every,
            "GET",
            "https://api.test.local/",
            "-H",
            "x-sidekey-task: t",
        ],
        Err("request_invalid"),
    );

    // Keys served by a URL are not fetched: the scope is applied unverified, and says so.
    let url = dir.path().join("url.yaml");
    let section = format!(
        "grants:\n  audience: {AUDIENCE}\n  trusted:\n    - jwks_url: https://keys.test.local/jwks.json\n"
    );
    std::fs::write(&url, config(&env, &section)).unwrap();
    let json = assert_explained(
        &url,
        &[
            "--grant",
            &scoped,
            "GET",
            "https://paths.test.local/echo/v1/a",
        ],
        Ok("scoped"),
    );
    assert_eq!(json["grant"]["verified"], false, "{json}");
    assert!(
        json["grant"]["unverified_because"]
            .as_str()
            .is_some_and(|m| m.contains("https://keys.test.local/jwks.json")),
        "{json}"
    );
    assert_explained(
        &url,
        &["--grant", &scoped, "GET", "https://api.test.local/"],
        Err("route_not_granted"),
    );
}

/// For each request, what explain says is what the running proxy does: allowed by the same
/// route, or refused with the same code.
#[test]
fn the_running_proxy_does_what_explain_says() {
    let env = Env::new();
    let sk = env.sidekey(&base_config(
        &[("small.test.local:443", "{upstream}")],
        SMALL,
        "",
    ));
    let body = "x".repeat(200);
    // explain's arguments, and curl's for the same request.
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["GET", "https://api.test.local/echo/a"],
            vec!["https://api.test.local/echo/a"],
        ),
        (
            vec!["GET", "http://plain.test.local/echo/b"],
            vec!["http://plain.test.local/echo/b"],
        ),
        (
            vec!["GET", "https://paths.test.local/echo/v1/c"],
            vec!["https://paths.test.local/echo/v1/c"],
        ),
        (
            vec!["GET", "https://paths.test.local/echo/v2/c"],
            vec!["https://paths.test.local/echo/v2/c"],
        ),
        (
            vec!["DELETE", "https://api.test.local/echo"],
            vec!["-X", "DELETE", "https://api.test.local/echo"],
        ),
        (
            vec![
                "POST",
                "https://api.test.local/echo",
                "-H",
                "X-HTTP-Method-Override: DELETE",
            ],
            vec![
                "-X",
                "POST",
                "-H",
                "X-HTTP-Method-Override: DELETE",
                "https://api.test.local/echo",
            ],
        ),
        (
            vec![
                "GET",
                "https://api.test.local/echo",
                "-H",
                "Host: other.test.local",
            ],
            vec![
                "-H",
                "Host: other.test.local",
                "https://api.test.local/echo",
            ],
        ),
        (
            vec!["GET", "https://api.test.local/echo/a%2Fb"],
            vec!["--path-as-is", "https://api.test.local/echo/a%2Fb"],
        ),
        (
            vec![
                "POST",
                "https://small.test.local/up",
                "--body-length",
                "200",
            ],
            vec!["--data-binary", &body, "https://small.test.local/up"],
        ),
        (
            vec!["GET", "https://evil.test.local/"],
            vec!["https://evil.test.local/"],
        ),
    ];
    for (i, (args, curl_args)) in cases.iter().enumerate() {
        let (code, json, out) = explain(sk.config_path(), args);
        assert!(matches!(code, Some(0 | 1)), "{args:?}: {out:?}");
        let _ = curl_via(&sk, curl_args);
        let records = sk.wait_request_records(i + 1);
        let record = &records[i];
        match json["decision"].as_str() {
            Some("allow") => {
                assert_eq!(record["decision"], "allow", "{args:?}: {record} vs {json}");
                assert_eq!(record["route"], json["route"]["name"], "{args:?}: {record}");
                assert_eq!(record["credential"], json["credential"]["name"], "{record}");
            }
            _ => {
                assert_eq!(record["decision"], "deny", "{args:?}: {record} vs {json}");
                assert_eq!(
                    record["code"], json["refusal"]["code"],
                    "{args:?}: {record}"
                );
                assert_eq!(record["status"], json["refusal"]["status"], "{record}");
            }
        }
    }
}

/// The same with grants required: what explain says of each grant is what the proxy does.
#[test]
fn the_running_proxy_treats_grants_as_explain_says() {
    let env = Env::new();
    let keys = Keys::new();
    let sk = env.sidekey(&base_config(&[], "", &keys.section(true)));
    let every = keys.sign(AUDIENCE, "agent", "t1", &[]);
    let scoped = keys.sign(
        AUDIENCE,
        "agent",
        "t2",
        &["--route", "scoped:GET:/echo/v1/**"],
    );
    let forged = Keys::new().sign(AUDIENCE, "agent", "t3", &[]);
    let cases: [(Option<&str>, &str, &str); 6] = [
        (Some(&every), "https://api.test.local/echo/a", "allow"),
        (Some(&scoped), "https://paths.test.local/echo/v1/x", "allow"),
        (Some(&scoped), "https://paths.test.local/echo/v2/x", "deny"),
        (Some(&scoped), "https://api.test.local/echo/a", "deny"),
        (Some(&forged), "https://api.test.local/echo/a", "deny"),
        (None, "https://api.test.local/echo/a", "deny"),
    ];
    for (i, (grant, url, decision)) in cases.iter().enumerate() {
        let mut args = vec![];
        if let Some(grant) = grant {
            args.extend(["--grant", grant]);
        }
        args.extend(["GET", url]);
        let (_, json, out) = explain(sk.config_path(), &args);
        assert_eq!(json["decision"], *decision, "{url}: {out:?}");
        match grant {
            Some(grant) => drop(grants::curl_granted(&sk, grant, &[url])),
            None => drop(curl_via(&sk, &[url])),
        }
        let record = sk.wait_request_records(i + 1).remove(i);
        assert_eq!(record["decision"], *decision, "{url}: {record} vs {json}");
        if *decision == "allow" {
            assert_eq!(record["route"], json["route"]["name"], "{url}: {record}");
            assert_eq!(record["task_id"], json["grant"]["task_id"], "{record}");
        } else {
            assert_eq!(record["code"], json["refusal"]["code"], "{url}: {record}");
        }
    }
}
