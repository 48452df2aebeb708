//! `unmatched: tunnel`: hosts no route names pass as blind tunnels (or plain forwards) with no
//! credential, still audited; routed hosts are still intercepted and injected.

use crate::common::*;

fn tunnel_config() -> String {
    // The blind targets live on loopback, which only `allow_ranges` opens to tunnels.
    allow_loopback_ranges(&base_config(
        &[
            ("blind.test.local:443", "{upstream}"),
            ("blindplain.test.local:80", "{upstream_http}"),
        ],
        "",
        "unmatched: tunnel",
    ))
}

#[test]
fn unmatched_tunnel_is_blind_and_carries_no_credential() {
    let env = Env::new();
    let sk = env.sidekey(&tunnel_config());
    // The client trusts only the upstream's own CA: it talks TLS with the upstream itself.
    let res = curl(&[
        "-x",
        &sk.proxy_url(),
        "--cacert",
        &env.ca.pem_path().display().to_string(),
        "-H",
        "Authorization: Bearer agents-own-token",
        "https://blind.test.local/echo/blind",
    ]);
    res.assert_status(200);
    assert_eq!(res.connect_status, 200);
    let seen = env.upstream.only_request();
    assert_eq!(seen.sni.as_deref(), Some("blind.test.local"));
    assert_eq!(
        seen.header_all("authorization"),
        ["Bearer agents-own-token"],
        "a blind tunnel neither adds nor removes anything"
    );

    // Trusting only sidekey's CA fails: nothing was intercepted.
    let res = curl_via(&sk, &["https://blind.test.local/echo/blind2"]);
    assert_eq!(
        res.exit, 60,
        "certificate should be the upstream's, not sidekey's: {res:#?}"
    );
    assert_eq!(env.upstream.requests().len(), 1);

    let records = sk.expect_request_records(2);
    for r in &records {
        assert_eq!(r["method"], "CONNECT", "{r}");
        assert_eq!(r["decision"], "tunnel", "{r}");
        assert_eq!(r["listener"], "forward", "{r}");
        assert_eq!(r["host"], "blind.test.local", "{r}");
        assert_eq!(r["port"], 443, "{r}");
        assert!(r["route"].is_null(), "{r}");
        assert!(r["credential"].is_null(), "{r}");
        assert!(r["credential_id"].is_null(), "{r}");
    }
    assert!(
        !sk.audit().iter().any(|r| r["type"] == "credential"),
        "no credential should be issued for a blind tunnel: {:?}",
        sk.audit()
    );
}

#[test]
fn routed_hosts_are_still_intercepted_when_unmatched_is_tunnel() {
    let env = Env::new();
    let sk = env.sidekey(&tunnel_config());
    curl_via(
        &sk,
        &[
            "-H",
            "Authorization: Bearer dummy",
            "https://api.test.local/echo/routed",
        ],
    )
    .assert_status(200);
    let seen = env.upstream.only_request();
    assert_local_jwt(seen.bearer().expect("bearer"), "demo-api");
    // A routed host still gets its method and path rules.
    curl_via(&sk, &["-X", "DELETE", "https://api.test.local/echo/x"])
        .expect_refusal(403, "method_not_allowed");
    assert_eq!(env.upstream.requests().len(), 1);
}

#[test]
fn unmatched_plain_http_is_forwarded_without_credential() {
    let env = Env::new();
    let sk = env.sidekey(&tunnel_config());
    let res = curl(&["-x", &sk.proxy_url(), "http://blindplain.test.local/echo/p"]);
    res.assert_status(200);
    let seen = env.upstream_http.only_request();
    assert_eq!(seen.path, "/echo/p");
    assert_eq!(
        seen.header("authorization"),
        None,
        "no credential for unmatched traffic"
    );
    let r = sk.only_request_record();
    assert!(
        matches!(r["decision"].as_str(), Some("tunnel") | Some("allow")),
        "{r}"
    );
    assert!(
        r["route"].is_null() && r["credential"].is_null() && r["credential_id"].is_null(),
        "{r}"
    );
    assert_eq!(r["host"], "blindplain.test.local");
}

#[test]
fn unmatched_deny_is_the_default() {
    let env = Env::new();
    let sk = env.sidekey(&base_config(
        &[("blind.test.local:443", "{upstream}")],
        "",
        "",
    ));
    let res = curl(&[
        "-x",
        &sk.proxy_url(),
        "--cacert",
        &env.ca.pem_path().display().to_string(),
        "https://blind.test.local/echo/blind",
    ]);
    assert_eq!(res.connect_status, 403, "{res:#?}");
    assert_eq!(env.upstream.connections(), 0);
    let r = sk.only_request_record();
    assert_eq!(r["decision"], "deny");
    assert_eq!(r["code"], "host_not_allowed");
    assert_eq!(r["method"], "CONNECT");
}
