//! Config reload of `sidekey run --config FILE`, without a restart:
//!
//! - triggers: SIGHUP reloads at once, even an unchanged file; with `SIDEKEY_CONFIG_POLL` the
//!   file is re-read on a timer and reloaded when its bytes changed (`0s`: never);
//! - the outcome, in the audit (`"type": "config"` records: `loaded`, `reloaded` with the
//!   changes by name, `rejected` with every error as `sidekey check` prints it) and on stderr;
//! - refused reloads apply nothing: an invalid file, a `listen.*` or `audit` change (they need
//!   a restart); the running config keeps serving;
//! - requests are decided under the config current when they arrive, on keep-alive
//!   connections and inside intercepted tunnels opened before the reload; requests in flight
//!   finish; blind tunnels the new config would not open are closed, the others stay;
//! - the interception CA is re-issued (same key and subject, new name constraints, files
//!   rewritten) when the intercepted hosts change, and kept byte for byte otherwise;
//! - credentials: unchanged ones keep their value, changed ones are replaced, removed ones are
//!   retired (a Vault database lease is revoked);
//! - `limits.max_connections` follows the reloaded value.
//!
//! Every test but the polling one runs with `SIDEKEY_CONFIG_POLL=0s`, so only SIGHUP reloads.
//! The Vault test needs `scripts/peers/openbao` (run by `scripts/install-test-deps`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::openbao::{OpenBao, ISSUER_POLICY_BASE};
use crate::common::postgres::Postgres;
use crate::common::sidekey::{AUDIT_TIMEOUT, RELOAD_TIMEOUT};
use crate::common::*;
use serde_json::Value;

/// Hosts the tests add by reload, blind tunnel targets, and the Vault route's host: all
/// resolved from the start, so that a reload changes only what the test means to change.
const RESOLVE: &[(&str, &str)] = &[
    ("fresh.test.local:443", "{upstream}"),
    ("zeta.test.local:443", "{upstream}"),
    ("db.test.local:443", "{upstream}"),
    ("blind.test.local:443", "{upstream}"),
    ("blind2.test.local:443", "{upstream}"),
    ("freshplain.test.local:80", "{upstream_http}"),
];

/// An HTTPS host no route names at start.
const FRESH: &str = "fresh.test.local";
/// A plain-HTTP host no route names at start.
const FRESH_PLAIN: &str = "freshplain.test.local";
/// Blind tunnel targets (`unmatched: tunnel`).
const BLIND: &str = "blind.test.local";
const BLIND2: &str = "blind2.test.local";

/// The poll interval variable; see [`start`].
const POLL: &str = "SIDEKEY_CONFIG_POLL";

// ---------------------------------------------------------------------------------------------
// Triggers and the outcome records

#[test]
fn sighup_reloads_even_an_unchanged_file_and_polling_off_never_reloads() {
    let env = Env::new();
    let yaml = config("", "");
    let sk = start(&env, &yaml);
    let loaded = sk.wait_config_record(1, AUDIT_TIMEOUT);
    assert_eq!(
        loaded["event"], "loaded",
        "the first config record: {loaded}"
    );
    assert_file_and_digest(&sk, &loaded);

    // With polling off, a rewritten file waits for the signal.
    let with_route = config(&http_route("freshplain", FRESH_PLAIN), "");
    sk.rewrite_config(&with_route, &env.vars());
    // Not an event wait: with polling off nothing happens, so time must pass to show it.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sk.config_records().len(),
        1,
        "{POLL}=0s: nothing reloads without SIGHUP: {:#?}",
        sk.config_records()
    );
    plain_get(&sk, FRESH_PLAIN, "/echo/not-yet").expect_refusal(403, "host_not_allowed");

    sk.sighup();
    let record = sk.wait_config_record(2, RELOAD_TIMEOUT);
    check_reloaded(&sk, &record);
    assert_changes(&record, &[("routes_added", &["freshplain"])], "kept");

    // SIGHUP with the same bytes still reloads, and reports no change.
    sk.sighup();
    let again = sk.wait_config_record(3, RELOAD_TIMEOUT);
    check_reloaded(&sk, &again);
    assert_changes(&again, &[], "kept");
    assert_eq!(again["sha256"], record["sha256"], "same file: {again}");
    plain_get(&sk, FRESH_PLAIN, "/echo/now").assert_status(200);
}

#[test]
fn polling_applies_a_changed_file_and_ignores_an_identical_rewrite() {
    let env = Env::new();
    let yaml = config("", "");
    let sk = Sidekey::start_with_env(&yaml, &env.vars(), &[(POLL, "200ms")]);
    sk.wait_config_record(1, AUDIT_TIMEOUT);

    let with_route = config(&http_route("freshplain", FRESH_PLAIN), "");
    sk.rewrite_config(&with_route, &env.vars());
    let record = sk.wait_config_record(2, Duration::from_secs(5));
    check_reloaded(&sk, &record);
    assert_changes(&record, &[("routes_added", &["freshplain"])], "kept");
    plain_get(&sk, FRESH_PLAIN, "/echo/polled").assert_status(200);

    // The same bytes again (a new file, renamed over the old one): no reload.
    sk.rewrite_config(&with_route, &env.vars());
    // Not an event wait: five poll intervals pass, in which the poller must not reload.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        sk.config_records().len(),
        2,
        "an identical file is not reloaded: {:#?}",
        sk.config_records()
    );

    // And the poller is still at work.
    sk.rewrite_config(&yaml, &env.vars());
    let record = sk.wait_config_record(3, Duration::from_secs(5));
    check_reloaded(&sk, &record);
    assert_changes(&record, &[("routes_removed", &["freshplain"])], "kept");
    plain_get(&sk, FRESH_PLAIN, "/echo/gone").expect_refusal(403, "host_not_allowed");
}

#[test]
fn every_reload_record_lists_its_changes_by_name_sorted() {
    let env = Env::new();
    let sk = start(&env, &config("", ""));

    // Routes: `other` removed and `scoped` changed from here on; `zeta` and `alpha` added (in
    // that order), with an issuer and a credential.
    let edited = |extra_routes: &str| {
        drop_route(&config(extra_routes, ""), "other").replace_once(SCOPED_PATHS, SCOPED_V2)
    };
    let added = format!(
        "{}{}",
        https_route_with("zeta", "zeta.test.local", "extra"),
        http_route("alpha", "alpha.test.local")
    );
    let first = add_credential(
        &add_issuer(&edited(&added), "  second: { kind: local }\n"),
        "  extra: { issuer: second, audience: extra-api, ttl: 5m }\n",
    );
    let record = reload_ok(&sk, &first, &env.vars());
    assert_changes(
        &record,
        &[
            ("routes_added", &["alpha", "zeta"]),
            ("routes_removed", &["other"]),
            ("routes_changed", &["scoped"]),
            ("credentials_added", &["extra"]),
            ("issuers_added", &["second"]),
        ],
        "reissued",
    );
    curl_via(&sk, &["https://zeta.test.local/echo/zeta"]).assert_status(200);
    let token = bearer_at(&env.upstream, "/echo/zeta");
    assert_local_jwt(&token, "extra-api");

    // The new issuer changed, the credential using it and its route removed.
    let second = add_issuer(
        &edited(""),
        "  second: { kind: local, issuer: second-issuer }\n",
    );
    let record = reload_ok(&sk, &second, &env.vars());
    assert_changes(
        &record,
        &[
            ("routes_removed", &["alpha", "zeta"]),
            ("credentials_removed", &["extra"]),
            ("issuers_changed", &["second"]),
        ],
        "reissued",
    );

    // The issuer removed.
    let record = reload_ok(&sk, &edited(""), &env.vars());
    assert_changes(&record, &[("issuers_removed", &["second"])], "kept");
    assert_no_token_in_logs(&sk, &[&token]);
}

// ---------------------------------------------------------------------------------------------
// Refused reloads

#[test]
fn an_invalid_file_is_rejected_with_every_error_and_the_running_config_keeps_serving() {
    let env = Env::new();
    let sk = start(&env, &config("", ""));
    curl_via(&sk, &["https://api.test.local/echo/before"]).assert_status(200);

    // Two errors: an unknown credential and an unknown key, in a route that would serve
    // freshplain.test.local.
    let bad_route = format!(
        "{}    colour: blue\n",
        http_route("freshplain", FRESH_PLAIN).replace("credential: demo", "credential: nosuch")
    );
    let record = sk.reload(&config(&bad_route, ""), &env.vars());
    let errors = check_rejected(&sk, &record);

    // The same errors, in the same words and places, as `sidekey check` reports.
    let file = sk.config_path().display().to_string();
    let check = run_check(sk.config_path());
    assert_eq!(check.code, Some(1), "sidekey check: {}", check.stderr);
    let prefix = format!("{file}:");
    let check_errors: Vec<&str> = check
        .stderr
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(": error: "))
        .collect();
    assert!(
        check_errors.len() >= 2,
        "sidekey check reports both errors: {}",
        check.stderr
    );
    let first_lines: Vec<&str> = errors
        .iter()
        .map(|e| e.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(
        first_lines, check_errors,
        "the rejected record lists every error as `sidekey check` prints it: {record}"
    );
    let line_col =
        regex::Regex::new(&format!(r"^{}:\d+:\d+: error: \S", regex::escape(&file))).unwrap();
    for e in &errors {
        assert!(line_col.is_match(e), "FILE:LINE:COL: error: MESSAGE: {e:?}");
    }
    let stderr = sk.stderr();
    for e in &check_errors {
        assert!(
            stderr.contains(e),
            "stderr reports the error {e:?}:\n{stderr}"
        );
    }

    // Nothing was applied; what worked before still works.
    plain_get(&sk, FRESH_PLAIN, "/echo/rejected").expect_refusal(403, "host_not_allowed");
    curl_via(&sk, &["https://api.test.local/echo/after-rejection"]).assert_status(200);
    assert!(env.upstream_http.requests().is_empty());

    // A valid file is applied as usual.
    let record = reload_ok(
        &sk,
        &config(&http_route("freshplain", FRESH_PLAIN), ""),
        &env.vars(),
    );
    assert_changes(&record, &[("routes_added", &["freshplain"])], "kept");
    plain_get(&sk, FRESH_PLAIN, "/echo/valid").assert_status(200);
}

#[test]
fn a_file_that_cannot_be_read_is_rejected_and_the_running_config_stays() {
    let env = Env::new();
    let sk = start(&env, &config("", ""));
    let text = std::fs::read_to_string(sk.config_path()).unwrap();
    // The start's `loaded` record first: counting the records delivered so far could miss it.
    sk.wait_config_record(1, AUDIT_TIMEOUT);
    std::fs::remove_file(sk.config_path()).unwrap();
    sk.sighup();
    let record = sk.wait_config_record(2, RELOAD_TIMEOUT);
    assert_eq!(record["event"], "rejected", "{record}");
    assert!(
        record.get("sha256").is_none(),
        "no bytes, no digest: {record}"
    );
    let errors = record["errors"].to_string();
    assert!(
        errors.contains("cannot read") && errors.contains(&sk.config_path().display().to_string()),
        "{record}"
    );
    curl_via(&sk, &["https://api.test.local/echo/without-a-file"]).assert_status(200);

    // Put back, changed: SIGHUP applies it.
    std::fs::write(sk.config_path(), text.replace_once(SCOPED_PATHS, SCOPED_V2)).unwrap();
    sk.sighup();
    let record = sk.wait_config_record(3, RELOAD_TIMEOUT);
    check_reloaded(&sk, &record);
    assert_changes(&record, &[("routes_changed", &["scoped"])], "kept");
}

#[test]
fn listen_audit_and_traces_changes_are_rejected_as_needing_a_restart() {
    let env = Env::new();
    let sk = start(&env, &config("", ""));
    let with_route = config(&http_route("freshplain", FRESH_PLAIN), "");

    // A new forward address, with a route added: the whole file is refused.
    let header = format!(
        "listen: {{ forward: 127.0.0.1:1, routes: 127.0.0.1:0, admin: 127.0.0.1:0 }}\n\
         ca: {{ cert_out: \"{}\" }}\n",
        sk.ca_pem().display()
    );
    let record = sk.reload_raw(&format!("{header}{with_route}"), &env.vars());
    let errors = check_rejected(&sk, &record);
    let restart = restart_errors(&errors);
    assert_eq!(restart.len(), 1, "one key needs a restart: {errors:#?}");
    assert!(
        restart[0].contains("listen.forward"),
        "the error names the key: {errors:#?}"
    );
    plain_get(&sk, FRESH_PLAIN, "/echo/after-listen").expect_refusal(403, "host_not_allowed");
    curl_via(&sk, &["https://api.test.local/echo/after-listen"]).assert_status(200);

    // The audit sink.
    let audit_file = sk.dir().join("audit.jsonl");
    let with_sink = config(
        &http_route("freshplain", FRESH_PLAIN),
        "audit: { file: \"{dir}/audit.jsonl\" }",
    );
    let record = sk.reload(&with_sink, &env.vars());
    let errors = check_rejected(&sk, &record);
    let restart = restart_errors(&errors);
    assert_eq!(restart.len(), 1, "one key needs a restart: {errors:#?}");
    assert!(
        restart[0].contains("audit") && !restart[0].contains("listen"),
        "the error names the key: {errors:#?}"
    );
    assert!(
        !audit_file.exists(),
        "the audit sink did not change: {} exists",
        audit_file.display()
    );
    plain_get(&sk, FRESH_PLAIN, "/echo/after-audit").expect_refusal(403, "host_not_allowed");

    // The span exporter.
    let with_traces = config(
        &http_route("freshplain", FRESH_PLAIN),
        "traces: { otlp_endpoint: \"http://127.0.0.1:4318\" }",
    );
    let record = sk.reload(&with_traces, &env.vars());
    let errors = check_rejected(&sk, &record);
    let restart = restart_errors(&errors);
    assert_eq!(restart.len(), 1, "one key needs a restart: {errors:#?}");
    assert!(
        restart[0].contains("traces"),
        "the error names the key: {errors:#?}"
    );
    plain_get(&sk, FRESH_PLAIN, "/echo/after-traces").expect_refusal(403, "host_not_allowed");

    // The same change without them is applied.
    let record = reload_ok(&sk, &with_route, &env.vars());
    assert_changes(&record, &[("routes_added", &["freshplain"])], "kept");
    plain_get(&sk, FRESH_PLAIN, "/echo/applied").assert_status(200);
    assert_eq!(
        env.upstream_http.requests().len(),
        1,
        "{:#?}",
        env.upstream_http.requests()
    );
}

// ---------------------------------------------------------------------------------------------
// Requests under the current config

#[test]
fn a_route_added_by_reload_serves_its_host_with_the_credential() {
    let env = Env::new();
    let sk = start(&env, &config("", ""));
    plain_get(&sk, FRESH_PLAIN, "/echo/before").expect_refusal(403, "host_not_allowed");
    assert_eq!(env.upstream_http.connections(), 0);

    let record = reload_ok(
        &sk,
        &config(&http_route("freshplain", FRESH_PLAIN), ""),
        &env.vars(),
    );
    assert_changes(&record, &[("routes_added", &["freshplain"])], "kept");

    plain_get(&sk, FRESH_PLAIN, "/echo/after").assert_status(200);
    let seen = env.upstream_http.only_request();
    assert_eq!(seen.header("host"), Some(FRESH_PLAIN));
    let token = seen.bearer().expect("the credential was injected");
    assert_local_jwt(token, "demo-api");
    let r = sk.wait_audit(
        |r| r["type"] == "request" && r["path"] == "/echo/after",
        1,
        AUDIT_TIMEOUT,
    );
    assert_eq!(r[0]["route"], "freshplain", "{}", r[0]);
    assert_no_token_in_logs(&sk, &[token]);
}

#[test]
fn a_route_removed_by_reload_refuses_the_next_request_on_a_keep_alive_connection() {
    let env = Env::new();
    let sk = start(&env, &config("", ""));
    // One connection, opened before the reload, carries both requests.
    let mut conn = connect(sk.forward).expect("connect to the forward listener");
    let target = |path: &str| format!("http://{PLAIN}{path}");

    let first = exchange(&mut conn, "GET", &target("/echo/ka/1"), PLAIN);
    assert_eq!(first.status, 200, "{}", first.body_str());
    assert_ne!(
        first.header("connection").map(str::to_ascii_lowercase),
        Some("close".into()),
        "the connection is kept alive: {first:?}"
    );
    let token = bearer_at(&env.upstream_http, "/echo/ka/1");

    let record = reload_ok(&sk, &drop_route(&config("", ""), "plain"), &env.vars());
    assert_changes(&record, &[("routes_removed", &["plain"])], "kept");

    let second = exchange(&mut conn, "GET", &target("/echo/ka/2"), PLAIN);
    second.expect_refusal(403, "host_not_allowed");
    assert!(
        env.upstream_http.requests_to("/echo/ka/2").is_empty(),
        "{:#?}",
        env.upstream_http.requests()
    );
    assert_no_token_in_logs(&sk, &[&token]);
}

#[test]
fn narrowed_methods_and_paths_apply_inside_tunnels_opened_before_the_reload() {
    let env = Env::new();
    let sk = start(&env, &config("", ""));
    let ca_before = std::fs::read(sk.ca_pem()).expect("read CA");
    let mut api = intercepted(&sk, API);
    let mut scoped = intercepted(&sk, SCOPED);
    assert_eq!(exchange(&mut api, "POST", "/echo/a/1", API).status, 200);
    assert_eq!(
        exchange(&mut scoped, "GET", "/echo/v1/other/1", SCOPED).status,
        200
    );

    // `api`: GET/POST/HEAD -> GET; `scoped`: /echo/v1/** -> /echo/v1/public/**.
    let narrowed = config("", "")
        .replace_once("methods: [GET, POST, HEAD]", "methods: [GET]")
        .replace_once(SCOPED_PATHS, r#"paths: ["/echo/v1/public/**"]"#);
    let record = reload_ok(&sk, &narrowed, &env.vars());
    assert_changes(&record, &[("routes_changed", &["api", "scoped"])], "kept");
    assert_eq!(
        std::fs::read(sk.ca_pem()).expect("read CA"),
        ca_before,
        "the intercepted hosts did not change: the CA file is left as it was"
    );

    // Same TLS connections: what is still allowed first, the refusal last.
    assert_eq!(exchange(&mut api, "GET", "/echo/a/2", API).status, 200);
    exchange(&mut api, "POST", "/echo/a/3", API).expect_refusal(403, "method_not_allowed");
    assert_eq!(
        exchange(&mut scoped, "GET", "/echo/v1/public/2", SCOPED).status,
        200
    );
    exchange(&mut scoped, "GET", "/echo/v1/other/2", SCOPED)
        .expect_refusal(403, "path_not_allowed");

    let reached: Vec<String> = env
        .upstream
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        reached,
        [
            "/echo/a/1",
            "/echo/v1/other/1",
            "/echo/a/2",
            "/echo/v1/public/2"
        ],
        "the refused requests never reached the upstream"
    );
}

#[test]
fn a_request_in_flight_during_a_reload_finishes_under_its_config() {
    let env = Env::new();
    let sk = start(&env, &config("", ""));
    let proxy = sk.proxy_url();
    let started = Instant::now();
    let stream = std::thread::spawn(move || {
        curl_stream(&[
            "-x",
            &proxy,
            "http://plain.test.local/sse?n=8&interval_ms=400",
        ])
    });
    env.upstream_http.wait_requests(1, Duration::from_secs(10));
    // The route the stream runs on goes away while it runs.
    let record = reload_ok(&sk, &drop_route(&config("", ""), "plain"), &env.vars());
    assert_changes(&record, &[("routes_removed", &["plain"])], "kept");
    let reloaded_at = started.elapsed();

    let streamed = stream.join().expect("curl thread");
    assert!(
        reloaded_at < streamed.end,
        "the reload ({reloaded_at:?}) came before the stream ended ({:?})",
        streamed.end
    );
    assert_eq!(streamed.exit, 0, "{streamed:#?}");
    let events: Vec<&str> = streamed
        .lines
        .iter()
        .map(|(_, l)| l.as_str())
        .filter(|l| !l.is_empty())
        .collect();
    let expected: Vec<String> = (0..8).map(|i| format!("data: {i}")).collect();
    assert_eq!(events, expected, "the whole stream arrived: {streamed:#?}");

    // New requests are refused.
    plain_get(&sk, PLAIN, "/echo/after").expect_refusal(403, "host_not_allowed");
}

// ---------------------------------------------------------------------------------------------
// Blind tunnels

#[test]
fn blind_tunnels_are_closed_when_unmatched_becomes_deny() {
    let env = Env::new();
    let sk = start(&env, &tunnel_config(""));
    let mut tunnel = blind_tunnel(&sk, &env, BLIND);
    assert_eq!(
        exchange(&mut tunnel, "GET", "/echo/blind/1", BLIND).status,
        200
    );

    let record = reload_ok(&sk, &allow_loopback_ranges(&config("", "")), &env.vars());
    assert_changes(&record, &[], "kept");
    tunnel.sock.set_read_timeout(Some(SHORT)).unwrap();
    assert!(
        closed_within(&mut tunnel, Duration::from_secs(5)),
        "the tunnel to {BLIND} is closed: `unmatched` is `deny` now"
    );
    connect_tunnel(sk.forward, &format!("{BLIND}:443"))
        .expect_err("a new CONNECT is refused")
        .expect_refusal(403, "host_not_allowed");
    curl_via(&sk, &["https://api.test.local/echo/routed"]).assert_status(200);
}

#[test]
fn a_blind_tunnel_to_a_host_a_route_now_names_is_closed_and_others_stay_open() {
    let env = Env::new();
    let sk = start(&env, &tunnel_config(""));
    let mut named = blind_tunnel(&sk, &env, BLIND);
    let mut other = blind_tunnel(&sk, &env, BLIND2);
    assert_eq!(
        exchange(&mut named, "GET", "/echo/blind/1", BLIND).status,
        200
    );
    assert_eq!(
        exchange(&mut other, "GET", "/echo/blind2/1", BLIND2).status,
        200
    );

    let record = reload_ok(
        &sk,
        &tunnel_config(&https_route("blind", BLIND)),
        &env.vars(),
    );
    assert_changes(&record, &[("routes_added", &["blind"])], "reissued");
    named.sock.set_read_timeout(Some(SHORT)).unwrap();
    assert!(
        closed_within(&mut named, Duration::from_secs(5)),
        "the blind tunnel to {BLIND} is closed: a route names it now"
    );
    // The reload has reached the tunnels (the named one is closed). The other one is still open
    // and works: its task checks the reload each time it runs, so it relays this exchange only
    // if the reload left it open.
    let res = exchange(&mut other, "GET", "/echo/blind2/2", BLIND2);
    assert_eq!(res.status, 200, "{}", res.body_str());
    let seen = env.upstream.requests_to("/echo/blind2/2");
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].header("authorization"), None, "still blind");

    // The host is intercepted now, with the route's credential.
    curl_via(&sk, &[&format!("https://{BLIND}/echo/routed")]).assert_status(200);
    let token = bearer_at(&env.upstream, "/echo/routed");
    assert_local_jwt(&token, "demo-api");
    assert_no_token_in_logs(&sk, &[&token]);
}

// ---------------------------------------------------------------------------------------------
// The interception CA

#[test]
fn new_intercepted_hosts_reissue_the_ca_with_the_same_key_and_new_name_constraints() {
    let env = Env::new();
    let header = "listen: { forward: 127.0.0.1:0, routes: 127.0.0.1:0, admin: 127.0.0.1:0 }\n\
                  ca: { cert_out: \"{dir}/ca.pem\", bundle_out: \"{dir}/bundle.pem\" }\n";
    let sk = Sidekey::start_raw_with_env(
        &format!("{header}{}", config("", "")),
        &env.vars(),
        &[(POLL, "0s")],
    );
    let bundle = sk.dir().join("bundle.pem");
    let old_ca = std::fs::read_to_string(sk.ca_pem()).expect("read CA");
    let old_bundle = std::fs::read_to_string(&bundle).expect("read bundle");
    let old_permitted = permitted_names(sk.ca_pem());
    assert!(
        old_permitted.contains(&"DNS:other.test.local".to_string())
            && !old_permitted.contains(&format!("DNS:{FRESH}")),
        "{old_permitted:#?}"
    );
    let old_key = openssl_x509(sk.ca_pem(), &["-pubkey"]);
    let old_subject = openssl_x509(sk.ca_pem(), &["-subject"]);

    // `fresh` added, `other` removed.
    let yaml = format!(
        "{header}{}",
        drop_route(&config(&https_route("fresh", FRESH), ""), "other")
    );
    let record = sk.reload_raw(&yaml, &env.vars());
    check_reloaded(&sk, &record);
    assert_changes(
        &record,
        &[("routes_added", &["fresh"]), ("routes_removed", &["other"])],
        "reissued",
    );

    let new_ca = std::fs::read_to_string(sk.ca_pem()).expect("read CA");
    assert_ne!(new_ca, old_ca, "ca.cert_out was rewritten");
    assert_eq!(
        openssl_x509(sk.ca_pem(), &["-pubkey"]),
        old_key,
        "same key pair"
    );
    assert_eq!(
        openssl_x509(sk.ca_pem(), &["-subject"]),
        old_subject,
        "same subject"
    );
    let permitted = permitted_names(sk.ca_pem());
    for name in [format!("DNS:{FRESH}"), format!("DNS:{API}")] {
        assert!(
            permitted.contains(&name),
            "{name} permitted: {permitted:#?}"
        );
    }
    assert!(
        !permitted.contains(&"DNS:other.test.local".to_string()),
        "the removed route's host is no longer permitted: {permitted:#?}"
    );
    let new_bundle = std::fs::read_to_string(&bundle).expect("read bundle");
    assert_ne!(new_bundle, old_bundle, "ca.bundle_out was rewritten");
    assert_eq!(
        pem_certs(&new_bundle).first(),
        pem_certs(&new_ca).first(),
        "the bundle starts with the new CA certificate"
    );

    // Clients trusting the new certificate reach the new host, intercepted, with the
    // credential.
    curl_via(&sk, &[&format!("https://{FRESH}/echo/fresh")]).assert_status(200);
    let seen = env.upstream.requests_to("/echo/fresh");
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].sni.as_deref(), Some(FRESH));
    let token = seen[0].bearer().expect("the credential was injected");
    assert_local_jwt(token, "demo-api");
    // The removed host is refused, as any unrouted host.
    expect_https_refusal(
        &sk,
        &["https://other.test.local/echo/removed"],
        "other.test.local:443",
        403,
        "host_not_allowed",
    );
    assert!(env.upstream.requests_to("/echo/removed").is_empty());
    assert_no_token_in_logs(&sk, &[token]);
}

#[test]
fn clients_trusting_the_ca_certificate_from_before_a_reload_still_connect() {
    let env = Env::new();
    let sk = start(&env, &config("", ""));
    let old_ca = sk.dir().join("old-ca.pem");
    std::fs::copy(sk.ca_pem(), &old_ca).expect("copy the CA certificate away");

    let record = reload_ok(&sk, &config(&https_route("fresh", FRESH), ""), &env.vars());
    assert_changes(&record, &[("routes_added", &["fresh"])], "reissued");
    assert_ne!(
        std::fs::read(sk.ca_pem()).unwrap(),
        std::fs::read(&old_ca).unwrap(),
        "the CA certificate was re-issued"
    );

    // An agent that read the CA certificate before the reload, to a host it could reach then.
    let res = curl(&[
        "-x",
        &sk.proxy_url(),
        "--cacert",
        &old_ca.display().to_string(),
        "https://api.test.local/echo/old-anchor",
    ]);
    res.assert_status(200);
    let token = bearer_at(&env.upstream, "/echo/old-anchor");
    assert_local_jwt(&token, "demo-api");
    assert_no_token_in_logs(&sk, &[&token]);
}

// ---------------------------------------------------------------------------------------------
// Credentials

#[test]
fn an_unchanged_credential_keeps_its_token_across_a_reload() {
    let env = Env::new();
    let sk = start(&env, &config("", ""));
    curl_via(&sk, &["https://api.test.local/echo/before"]).assert_status(200);
    let before = bearer_at(&env.upstream, "/echo/before");
    let jti_before = assert_local_jwt(&before, "demo-api")["jti"].clone();

    let yaml = config("", "").replace_once(SCOPED_PATHS, SCOPED_V2);
    let record = reload_ok(&sk, &yaml, &env.vars());
    assert_changes(&record, &[("routes_changed", &["scoped"])], "kept");

    curl_via(&sk, &["https://api.test.local/echo/after"]).assert_status(200);
    let after = bearer_at(&env.upstream, "/echo/after");
    let jti_after = assert_local_jwt(&after, "demo-api")["jti"].clone();
    assert_eq!(jti_after, jti_before, "the held token is kept");
    assert_eq!(after, before, "the held token is kept");
    let ids: Vec<Value> = ["/echo/before", "/echo/after"]
        .iter()
        .map(|p| request_record(&sk, p)["credential_id"].clone())
        .collect();
    assert_eq!(ids[0], jti_before, "credential_id is the jti: {ids:?}");
    assert_eq!(ids[1], jti_before, "credential_id is the jti: {ids:?}");
    assert_no_token_in_logs(&sk, &[&before]);
}

#[test]
fn a_changed_credential_is_replaced_with_a_token_for_its_new_config() {
    let env = Env::new();
    let sk = start(&env, &config("", ""));
    curl_via(&sk, &["https://api.test.local/echo/before"]).assert_status(200);
    let before = bearer_at(&env.upstream, "/echo/before");
    let jti_before = assert_local_jwt(&before, "demo-api")["jti"].clone();

    let yaml = config("", "").replace_once("audience: demo-api,", "audience: demo-api-v2,");
    let record = reload_ok(&sk, &yaml, &env.vars());
    // Whether the routes that use `demo` count as changed is left open.
    let expected: [(&str, &[&str]); 8] = [
        ("credentials_changed", &["demo"]),
        ("credentials_added", &[]),
        ("credentials_removed", &[]),
        ("routes_added", &[]),
        ("routes_removed", &[]),
        ("issuers_added", &[]),
        ("issuers_removed", &[]),
        ("issuers_changed", &[]),
    ];
    for (key, want) in expected {
        assert_eq!(change_list(&record, key), want, "{key}: {record}");
    }
    assert_eq!(record["changes"]["ca"], "kept", "{record}");

    curl_via(&sk, &["https://api.test.local/echo/after"]).assert_status(200);
    let after = bearer_at(&env.upstream, "/echo/after");
    let jti_after = assert_local_jwt(&after, "demo-api-v2")["jti"].clone();
    assert_ne!(jti_after, jti_before, "a new token: {after}");
    assert_eq!(
        request_record(&sk, "/echo/after")["credential_id"],
        jti_after,
        "the request record names the new token"
    );
    // Every route using the credential gets the new one.
    plain_get(&sk, PLAIN, "/echo/plain-after").assert_status(200);
    let plain = bearer_at(&env.upstream_http, "/echo/plain-after");
    assert_local_jwt(&plain, "demo-api-v2");
    assert_no_token_in_logs(&sk, &[&before, &after, &plain]);
}

/// The audience OpenBao's jwt role is bound to.
const BAO_AUDIENCE: &str = "sidekey-reload-test";
/// What sidekey's OpenBao token may read besides [`ISSUER_POLICY_BASE`].
const DB_POLICY: &str = r#"path "database/creds/readonly" { capabilities = ["read"] }"#;
/// `issuers.bao`: OpenBao at `{bao}`, jwt login with the identity token.
const BAO_ISSUER: &str = "  bao:
    kind: vault
    address: \"{bao}\"
    auth:
      method: jwt
      role: agent
";
/// `credentials.db`: a PostgreSQL password from a database lease.
const DB_CREDENTIAL: &str = "  db:
    issuer: bao
    path: database/creds/readonly
    field: password
";
/// `identity:` (top level), for the jwt login.
const IDENTITY: &str = "identity:\n  token_file: \"{identity_token}\"";

#[test]
fn a_removed_vault_credential_has_its_lease_revoked() {
    let env = Env::new();
    let pg = Postgres::start();
    let bao = OpenBao::start();
    let identity = Identity::new("agent-7", BAO_AUDIENCE);
    bao.write_policy("agent", &format!("{ISSUER_POLICY_BASE}\n{DB_POLICY}"));
    bao.enable_jwt_auth(
        identity.public_pem(),
        "agent",
        BAO_AUDIENCE,
        "5m",
        "30m",
        &["agent"],
    );
    // Long TTLs: a lease that goes away in this test was revoked, not expired.
    bao.enable_database(&pg, "readonly", "5m", "30m");
    let mut vars = env.vars();
    vars.push(("bao", bao.address()));
    vars.push((
        "identity_token",
        identity.token_file().display().to_string(),
    ));

    let with_db = add_credential(
        &add_issuer(
            &config(&https_route_with("db", "db.test.local", "db"), IDENTITY),
            BAO_ISSUER,
        ),
        DB_CREDENTIAL,
    );
    let without_db = add_issuer(&config("", IDENTITY), BAO_ISSUER);
    let sk = Sidekey::start_with_env(&with_db, &vars, &[(POLL, "0s")]);

    curl_via(&sk, &["https://db.test.local/echo/db/1"]).assert_status(200);
    let password = bearer_at(&env.upstream, "/echo/db/1");
    let lease = request_record(&sk, "/echo/db/1")["credential_id"]
        .as_str()
        .expect("credential_id")
        .to_string();
    assert!(
        lease.starts_with("database/creds/readonly/"),
        "the credential ID is the lease ID: {lease}"
    );
    assert!(bao.lease_exists(&lease), "lease {lease} is live");
    let user = pg
        .user_for_password(&password)
        .expect("the injected password logs in");

    let record = reload_ok(&sk, &without_db, &vars);
    assert_changes(
        &record,
        &[
            ("routes_removed", &["db"]),
            ("credentials_removed", &["db"]),
        ],
        "reissued",
    );
    let revoked = sk.wait_audit(
        |r| r["type"] == "credential" && r["event"] == "revoked" && r["credential"] == "db",
        1,
        Duration::from_secs(15),
    );
    assert_eq!(revoked[0]["credential_id"], lease.as_str(), "{revoked:#?}");
    assert!(
        eventually(Duration::from_secs(15), || !bao.lease_exists(&lease)),
        "lease {lease} outlived its credential"
    );
    assert!(
        eventually(Duration::from_secs(5), || !pg.role_exists(&user)),
        "Postgres role {user} outlived its lease"
    );

    expect_https_refusal(
        &sk,
        &["https://db.test.local/echo/db/2"],
        "db.test.local:443",
        403,
        "host_not_allowed",
    );
    curl_via(&sk, &["https://api.test.local/echo/still"]).assert_status(200);
    assert_no_token_in_logs(&sk, &[&password]);
}

// ---------------------------------------------------------------------------------------------
// Limits

#[test]
fn max_connections_follows_the_reloaded_limit() {
    let env = Env::new();
    let limit = |n: usize| config("", &format!("limits: {{ max_connections: {n} }}"));
    let sk = start(&env, &limit(4));
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| connect(sk.forward).expect("connect"))
        .collect();
    sk.wait_open_connections(sk.forward, 2);
    assert_served(&sk, "/echo/third-of-4");
    // The third connection is closed on sidekey's side too: the two held ones remain.
    sk.wait_open_connections(sk.forward, 2);

    let record = reload_ok(&sk, &limit(2), &env.vars());
    assert_changes(&record, &[], "kept");
    let mut third = connect(sk.forward).expect("connect");
    third.set_read_timeout(Some(SHORT)).unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(3)),
        "a third connection is closed at once under max_connections: 2"
    );
    // The two held ones were not closed, and work.
    let res = exchange(
        &mut held[0],
        "GET",
        &format!("http://{PLAIN}/echo/held"),
        PLAIN,
    );
    assert_eq!(res.status, 200, "{}", res.body_str());

    let record = reload_ok(&sk, &limit(4), &env.vars());
    assert_changes(&record, &[], "kept");
    assert_served(&sk, "/echo/third-of-4-again");
    assert_eq!(
        env.upstream_http
            .requests_to("/echo/third-of-4-again")
            .len(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers: configs

/// `paths:` of the `scoped` route of [`base_config`], and another value for it.
const SCOPED_PATHS: &str = r#"paths: ["/echo/v1/**"]"#;
const SCOPED_V2: &str = r#"paths: ["/echo/v2/**"]"#;

/// Text replacement that must hit exactly once (a config edit that silently did nothing would
/// make a test pass for the wrong reason).
trait ReplaceOnce {
    fn replace_once(&self, from: &str, to: &str) -> String;
}

impl ReplaceOnce for str {
    #[track_caller]
    fn replace_once(&self, from: &str, to: &str) -> String {
        assert_eq!(self.matches(from).count(), 1, "{from:?} once in:\n{self}");
        self.replacen(from, to, 1)
    }
}

/// [`base_config`] with every host of [`RESOLVE`] resolved.
fn config(extra_routes: &str, extra_top: &str) -> String {
    base_config(RESOLVE, extra_routes, extra_top)
}

/// [`config`] with `unmatched: tunnel` (and loopback open to tunnels, where the upstreams
/// live).
fn tunnel_config(extra_routes: &str) -> String {
    allow_loopback_ranges(&config(extra_routes, "unmatched: tunnel"))
}

/// An HTTPS route `name` for `host`, GET/POST, credential `credential` as a bearer token.
fn https_route_with(name: &str, host: &str, credential: &str) -> String {
    format!(
        "  - name: {name}\n    hosts: [{host}]\n    methods: [GET, POST]\n    \
         credential: {credential}\n    \
         inject: {{ header: Authorization, value: \"Bearer {{token}}\" }}\n    \
         allow_private: true\n"
    )
}

/// [`https_route_with`] credential `demo`.
fn https_route(name: &str, host: &str) -> String {
    https_route_with(name, host, "demo")
}

/// A plain-HTTP route `name` for `host` (port 80), GET/POST, credential `demo`.
fn http_route(name: &str, host: &str) -> String {
    https_route(name, host).replace("    methods:", "    schemes: [http]\n    methods:")
}

/// `yaml` without the route item `- name: <name>` (up to the next item or top-level key).
#[track_caller]
fn drop_route(yaml: &str, name: &str) -> String {
    let item = format!("  - name: {name}");
    let mut out = String::new();
    let mut skipping = false;
    let mut found = false;
    for line in yaml.lines() {
        if line == item {
            skipping = true;
            found = true;
        } else if line.starts_with("  - ") || !line.starts_with(' ') {
            skipping = false;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(found, "no route {name} in:\n{yaml}");
    out
}

/// `yaml` with `item` (a map entry indented by two spaces) first under the top-level `key:`.
#[track_caller]
fn add_to_map(yaml: &str, key: &str, item: &str) -> String {
    let anchor = format!("\n{key}:\n");
    assert!(yaml.contains(&anchor), "no top-level {key}: in:\n{yaml}");
    yaml.replacen(&anchor, &format!("{anchor}{item}"), 1)
}

fn add_issuer(yaml: &str, item: &str) -> String {
    add_to_map(yaml, "issuers", item)
}

fn add_credential(yaml: &str, item: &str) -> String {
    add_to_map(yaml, "credentials", item)
}

// ---------------------------------------------------------------------------------------------
// Helpers: sidekey and its reload records

/// Starts sidekey with polling off: only SIGHUP reloads.
/// On one worker: the current-thread runtime, where a reload's parse runs on a blocking thread
/// and its build on the one thread that serves requests (the other tests run the default, a
/// worker per core, and reload there too).
fn start(env: &Env, yaml: &str) -> Sidekey {
    Sidekey::start_with_env(
        yaml,
        &env.vars(),
        &[(POLL, "0s"), ("SIDEKEY_WORKER_THREADS", "1")],
    )
}

/// The lists of a `reloaded` record's `changes`, besides `ca`.
const CHANGE_LISTS: [&str; 9] = [
    "routes_added",
    "routes_removed",
    "routes_changed",
    "credentials_added",
    "credentials_removed",
    "credentials_changed",
    "issuers_added",
    "issuers_removed",
    "issuers_changed",
];

/// [`Sidekey::reload`], checked to be `reloaded` (see [`check_reloaded`]).
#[track_caller]
fn reload_ok(sk: &Sidekey, yaml: &str, vars: &[(&str, String)]) -> Value {
    let record = sk.reload(yaml, vars);
    check_reloaded(sk, &record);
    record
}

/// A `reloaded` record for the file as it is now, with every change list (sorted names) and
/// `ca`; stderr says `config reloaded` (once per reload so far).
#[track_caller]
fn check_reloaded(sk: &Sidekey, record: &Value) {
    assert_eq!(
        record["event"],
        "reloaded",
        "the reload was not applied: {record}\n--- stderr ---\n{}",
        sk.stderr()
    );
    assert_file_and_digest(sk, record);
    let changes = &record["changes"];
    for key in CHANGE_LISTS {
        let names = changes[key]
            .as_array()
            .unwrap_or_else(|| panic!("changes.{key} is an array: {record}"));
        let names: Vec<&str> = names
            .iter()
            .map(|n| n.as_str().unwrap_or_else(|| panic!("names: {record}")))
            .collect();
        assert!(names.is_sorted(), "changes.{key} is sorted: {record}");
    }
    assert!(
        changes["ca"] == "reissued" || changes["ca"] == "kept",
        "changes.ca: {record}"
    );
    let reloads = sk
        .config_records()
        .iter()
        .filter(|r| r["event"] == "reloaded")
        .count();
    sk.wait_stderr(|l| l.contains("config reloaded"), reloads, AUDIT_TIMEOUT);
}

/// A `rejected` record for the file as it is now, with its errors (returned); stderr says
/// `config reload failed; keeping the running config` (once per rejection so far).
#[track_caller]
fn check_rejected(sk: &Sidekey, record: &Value) -> Vec<String> {
    assert_eq!(
        record["event"],
        "rejected",
        "the reload should have been rejected: {record}\n--- stderr ---\n{}",
        sk.stderr()
    );
    assert_file_and_digest(sk, record);
    let errors: Vec<String> = record["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("errors is an array: {record}"))
        .iter()
        .map(|e| e.as_str().unwrap_or_else(|| panic!("{record}")).to_string())
        .collect();
    assert!(!errors.is_empty(), "a rejection says why: {record}");
    let rejections = sk
        .config_records()
        .iter()
        .filter(|r| r["event"] == "rejected")
        .count();
    sk.wait_stderr(
        |l| l.contains("config reload failed; keeping the running config"),
        rejections,
        AUDIT_TIMEOUT,
    );
    errors
}

/// The errors that say a key needs a restart.
fn restart_errors(errors: &[String]) -> Vec<&String> {
    errors
        .iter()
        .filter(|e| e.contains("needs a restart"))
        .collect()
}

/// The record names the config file and the SHA-256 of its current bytes.
#[track_caller]
fn assert_file_and_digest(sk: &Sidekey, record: &Value) {
    assert_eq!(
        record["file"],
        sk.config_path().display().to_string(),
        "{record}"
    );
    let digest = record["sha256"].as_str().unwrap_or_default();
    assert_eq!(
        digest.to_ascii_lowercase(),
        sha256_hex(sk.config_path()),
        "sha256 of the file: {record}"
    );
}

/// `changes.<key>` of a `reloaded` record.
fn change_list(record: &Value, key: &str) -> Vec<String> {
    record["changes"][key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Every change list of `record` is empty but those in `expected` (equal to the names
/// given), and `changes.ca` is `ca`.
#[track_caller]
fn assert_changes(record: &Value, expected: &[(&str, &[&str])], ca: &str) {
    for key in CHANGE_LISTS {
        let want: &[&str] = expected
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(&[], |(_, names)| names);
        assert_eq!(change_list(record, key), want, "changes.{key}: {record}");
    }
    assert_eq!(record["changes"]["ca"], ca, "changes.ca: {record}");
}

/// The request record of `path` (waits for it).
fn request_record(sk: &Sidekey, path: &str) -> Value {
    sk.wait_audit(
        |r| r["type"] == "request" && r["path"] == path,
        1,
        AUDIT_TIMEOUT,
    )
    .remove(0)
}

/// None of `tokens` is in sidekey's stderr or audit.
#[track_caller]
fn assert_no_token_in_logs(sk: &Sidekey, tokens: &[&str]) {
    let (stderr, stdout) = (sk.stderr(), sk.stdout_text());
    for token in tokens {
        assert!(!token.is_empty());
        assert!(!stderr.contains(token), "a token in stderr:\n{stderr}");
        assert!(!stdout.contains(token), "a token in the audit:\n{stdout}");
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: clients and certificates

/// Read timeout while waiting for a close.
const SHORT: Duration = Duration::from_millis(200);

/// `curl -x <forward> http://<host><path>`.
fn plain_get(sk: &Sidekey, host: &str, path: &str) -> CurlResult {
    curl(&["-x", &sk.proxy_url(), &format!("http://{host}{path}")])
}

/// The bearer token of the one request the upstream received at exactly `path`.
#[track_caller]
fn bearer_at(upstream: &Upstream, path: &str) -> String {
    let seen: Vec<Recorded> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    assert_eq!(seen.len(), 1, "one request at {path}: {seen:#?}");
    seen[0]
        .bearer()
        .unwrap_or_else(|| panic!("no bearer token at {path}: {:?}", seen[0].headers))
        .to_string()
}

/// One HTTP/1.1 request on `stream` (kept alive), its response read: `target` is a path, or an
/// absolute URL for the forward listener.
#[track_caller]
fn exchange(
    stream: &mut (impl Read + Write),
    method: &str,
    target: &str,
    host: &str,
) -> RawResponse {
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\
         Content-Length: 0\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("send {method} {target}: {e}"));
    read_response(stream, method == "HEAD", false)
        .unwrap_or_else(|e| panic!("response to {method} {target}: {e}"))
}

/// A CONNECT tunnel to `host:443`, intercepted: TLS trusting sidekey's CA.
fn intercepted(sk: &Sidekey, host: &str) -> TlsStream {
    let tcp = connect_tunnel(sk.forward, &format!("{host}:443"))
        .unwrap_or_else(|r| panic!("CONNECT {host}: {} {}", r.status, r.body_str()));
    tls_handshake(tcp, host, Trust::Ca(sk.ca_pem()))
        .unwrap_or_else(|e| panic!("TLS with sidekey for {host}: {e}"))
}

/// A blind CONNECT tunnel to `host:443`: TLS with the upstream itself, trusting only the test
/// CA that signed its certificate.
fn blind_tunnel(sk: &Sidekey, env: &Env, host: &str) -> TlsStream {
    let tcp = connect_tunnel(sk.forward, &format!("{host}:443"))
        .unwrap_or_else(|r| panic!("CONNECT {host}: {} {}", r.status, r.body_str()));
    tls_handshake(tcp, host, Trust::Ca(env.ca.pem_path()))
        .unwrap_or_else(|e| panic!("TLS with the upstream through the tunnel to {host}: {e}"))
}

/// A new connection to the forward listener is served: a plain GET of `path` gets 200.
#[track_caller]
fn assert_served(sk: &Sidekey, path: &str) {
    let mut conn = connect(sk.forward).expect("connect");
    let res = exchange(&mut conn, "GET", &format!("http://{PLAIN}{path}"), PLAIN);
    assert_eq!(res.status, 200, "{}", res.body_str());
}

/// `openssl x509 -in <cert> -noout <args>`.
fn openssl_x509(cert: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .arg("x509")
        .arg("-in")
        .arg(cert)
        .arg("-noout")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl x509 {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The permitted subtrees of the certificate's Name Constraints (`DNS:api.test.local`,
/// `IP:127.0.0.1/255.255.255.255`), as OpenSSL prints them.
fn permitted_names(cert: &Path) -> Vec<String> {
    let text = openssl_x509(cert, &["-text"]);
    let lines = text
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("X509v3 Name Constraints"))
        .skip(1);
    let mut names = Vec::new();
    let mut permitted = false;
    for line in lines {
        match line {
            "Permitted:" => permitted = true,
            "Excluded:" => permitted = false,
            l if l.starts_with("X509v3") || l.starts_with("Signature Algorithm") => break,
            l if permitted && !l.is_empty() => names.push(l.to_string()),
            _ => {}
        }
    }
    names
}

/// SHA-256 of a file, lower-case hex (`sha256sum`).
fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
