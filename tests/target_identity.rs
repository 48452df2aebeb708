//! Target identity (docs/architecture.md, "Decisions, in order"): one canonical form for hosts —
//! case, trailing dot, IDNA, IP literals parsed strictly — and ports, so that no spelling of a
//! target slips past the routes or gets another route's credential.

use crate::common::*;

fn identity_config() -> String {
    base_config(
        &[
            ("xn--bcher-kva.test.local:443", "{upstream}"),
            ("a.wild.test.local:443", "{upstream}"),
            ("wild.test.local:443", "{upstream}"),
        ],
        r#"  - name: ip
    hosts: ["127.0.0.1"]
    ports: [{upstream_port}]
    methods: [GET]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
  - name: idn
    hosts: ["bücher.test.local"]
    methods: [GET]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
  - name: wild
    hosts: ["*.wild.test.local"]
    methods: [GET]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
"#,
        "",
    )
}

fn start(env: &Env) -> Sidekey {
    env.sidekey_with(
        &identity_config(),
        &[("upstream_port", env.upstream.addr().port().to_string())],
    )
}

/// GET /echo/<tag> inside a CONNECT to `authority`, Host header `host`, trusting sidekey's
/// CA for `sni`; the response, or the CONNECT refusal.
fn via_connect(sk: &Sidekey, authority: &str, sni: &str, host: &str, tag: &str) -> RawResponse {
    let tunnel = match connect_tunnel(sk.forward, authority) {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    let mut tls = tls_handshake(tunnel, sni, Trust::Ca(sk.ca_pem())).expect("TLS with sidekey");
    use std::io::Write;
    let req = format!("GET /echo/{tag} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).unwrap();
    read_response(&mut tls, false, false).expect("response")
}

#[test]
fn host_case_and_trailing_dot_are_the_same_target() {
    let env = Env::new();
    let sk = start(&env);
    let r = via_connect(&sk, "API.Test.Local:443", API, "API.Test.Local", "upper");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let r = via_connect(&sk, "api.test.local.:443", API, "api.test.local.", "dot");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = env.upstream.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_local_jwt(s.bearer().expect("bearer"), "demo-api");
    }
    let records = sk.expect_request_records(2);
    for r in records {
        assert_eq!(r["host"], API, "audit keeps the canonical host: {r}");
        assert_eq!(r["route"], "api");
    }
}

#[test]
fn idna_hosts_match_in_ascii_form() {
    let env = Env::new();
    let sk = start(&env);
    // What an IDNA-aware client sends for bücher.test.local.
    let r = via_connect(
        &sk,
        "xn--bcher-kva.test.local:443",
        "xn--bcher-kva.test.local",
        "xn--bcher-kva.test.local",
        "idn",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = env.upstream.only_request();
    assert_eq!(seen.sni.as_deref(), Some("xn--bcher-kva.test.local"));
    assert_local_jwt(seen.bearer().expect("bearer"), "demo-api");
    assert_eq!(sk.only_request_record()["route"], "idn");
}

#[test]
fn ip_literals_are_parsed_strictly() {
    let env = Env::new();
    let sk = start(&env);
    let port = env.upstream.addr().port();
    // The canonical spelling matches the `ip` route.
    let ok = via_connect(
        &sk,
        &format!("127.0.0.1:{port}"),
        "127.0.0.1",
        &format!("127.0.0.1:{port}"),
        "ip",
    );
    assert_eq!(ok.status, 200, "{}", ok.body_str());
    assert_eq!(env.upstream.requests().len(), 1);
    // Decimal, hex, octal and short forms of 127.0.0.1 are not 127.0.0.1.
    let mut answered = Vec::new();
    for alias in [
        "2130706433",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "127.1",
        "0x7f000001",
        "127.0.0.01",
    ] {
        let resp = raw_request(
            sk.forward,
            format!("CONNECT {alias}:{port} HTTP/1.1\r\nHost: {alias}:{port}\r\n\r\n").as_bytes(),
        )
        .expect("a response");
        assert!(
            matches!(resp.status, 400 | 403),
            "CONNECT {alias}:{port} answered {}: {}",
            resp.status,
            resp.body_str()
        );
        let code = resp.header("x-sidekey-error").unwrap_or("").to_string();
        assert!(
            code == "request_invalid" || code == "host_not_allowed",
            "CONNECT {alias}: code {code:?}"
        );
        answered.extend(resp.request_id());
        let resp = raw_request(
            sk.forward,
            format!("GET http://{alias}:{port}/echo/x HTTP/1.1\r\nHost: {alias}:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .expect("a response");
        assert!(
            matches!(resp.status, 400 | 403),
            "GET http://{alias}: {}",
            resp.status
        );
        answered.extend(resp.request_id());
    }
    // sidekey has finished the refusals it made; the upstream has read whatever it was sent.
    sk.wait_records_of(&answered);
    env.upstream.wait_quiet();
    assert_eq!(
        env.upstream.requests().len(),
        1,
        "an alias reached the upstream"
    );
}

#[test]
fn ports_are_part_of_the_target() {
    let env = Env::new();
    let sk = start(&env);
    // `api` names https on its default port only.
    let refused = connect_tunnel(sk.forward, "api.test.local:8443").expect_err("port 8443 refused");
    assert_eq!(refused.status, 403, "{}", refused.body_str());
    let code = refused
        .header("x-sidekey-error")
        .expect("x-sidekey-error")
        .to_string();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&refused.body).unwrap()["error"],
        code.as_str()
    );
    // An explicit default port is the default port.
    let r = via_connect(
        &sk,
        "api.test.local:443",
        API,
        "api.test.local:443",
        "explicit-port",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(env.upstream.requests().len(), 1);
}

#[test]
fn wildcard_routes_match_subdomains_only() {
    let env = Env::new();
    let sk = start(&env);
    let r = via_connect(
        &sk,
        "a.wild.test.local:443",
        "a.wild.test.local",
        "a.wild.test.local",
        "sub",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let refused = connect_tunnel(sk.forward, "wild.test.local:443").expect_err("apex not matched");
    refused.expect_refusal(403, "host_not_allowed");
    let refused =
        connect_tunnel(sk.forward, "evilwild.test.local:443").expect_err("not a subdomain");
    refused.expect_refusal(403, "host_not_allowed");
    assert_eq!(env.upstream.requests().len(), 1);
    assert_eq!(
        sk.wait_audit(|r| r["route"] == "wild", 1, sidekey::AUDIT_TIMEOUT)
            .len(),
        1
    );
}

#[test]
fn userinfo_in_a_connect_authority_is_refused() {
    let env = Env::new();
    let sk = start(&env);
    let resp = raw_request(
        sk.forward,
        b"CONNECT user:pw@api.test.local:443 HTTP/1.1\r\nHost: api.test.local:443\r\n\r\n",
    )
    .expect("a response");
    assert!(
        matches!(resp.status, 400 | 403),
        "{} {}",
        resp.status,
        resp.body_str()
    );
    assert!(
        resp.header("x-sidekey-error").is_some() || resp.status == 400,
        "{resp:?}"
    );
    assert!(env.upstream.requests().is_empty());
}
