//! Every refusal an agent can get (docs/architecture.md, "Error codes"): the stable code in a JSON body and in
//! `x-sidekey-error`, the right status, and nothing reaching the upstream it was refused for.

use crate::common::*;

#[test]
fn connect_to_an_unrouted_host_is_refused_on_the_connect() {
    let env = Env::new();
    let sk = env.sidekey(&base_config(
        &[("evil.test.local:443", "{upstream}")],
        "",
        "",
    ));
    let res = curl_via(&sk, &["https://evil.test.local/echo/canary"]);
    assert_eq!(res.exit, 56, "curl should fail on the CONNECT: {res:#?}");
    assert_eq!(res.connect_status, 403);
    assert!(
        res.stderr.contains("CONNECT tunnel failed, response 403"),
        "{}",
        res.stderr
    );

    let resp = connect_tunnel(sk.forward, "evil.test.local:443").expect_err("CONNECT refused");
    resp.expect_refusal(403, "host_not_allowed");

    // sidekey has finished both refusals (anything it had done for them, connecting included).
    sk.wait_request_records(2);
    assert_eq!(
        env.upstream.connections(),
        0,
        "sidekey connected to the refused host"
    );
}

#[test]
fn plain_http_to_an_unrouted_host_is_refused() {
    let env = Env::new();
    let sk = env.sidekey(&base_config(
        &[("evil.test.local:80", "{upstream_http}")],
        "",
        "",
    ));
    let res = curl(&["-x", &sk.proxy_url(), "http://evil.test.local/echo/canary"]);
    let body = res.expect_refusal(403, "host_not_allowed");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("evil.test.local"),
        "{body}"
    );
    // A routed host on a scheme its route does not name is not allowed either.
    let res = curl(&["-x", &sk.proxy_url(), "http://api.test.local/echo/canary"]);
    res.expect_refusal(403, "host_not_allowed");
    assert_eq!(env.upstream_http.connections(), 0);
    assert!(env.upstream.requests().is_empty());
}

#[test]
fn method_not_in_the_route_is_refused() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    for method in ["DELETE", "PUT", "PATCH"] {
        let res = curl_via(&sk, &["-X", method, "https://api.test.local/echo/canary"]);
        res.expect_refusal(403, "method_not_allowed");
    }
    let res = curl(&[
        "-x",
        &sk.proxy_url(),
        "-X",
        "DELETE",
        "http://plain.test.local/echo/canary",
    ]);
    res.expect_refusal(403, "method_not_allowed");
    // `other` allows GET only. (No body here: refusing a request whose body is still being
    // uploaded is refusal_of_a_request_with_a_large_body_is_readable.)
    let res = curl_via(&sk, &["-X", "POST", "https://other.test.local/echo/canary"]);
    res.expect_refusal(403, "method_not_allowed");
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
    assert!(env.upstream_http.requests().is_empty());
}

#[test]
fn path_outside_the_route_is_refused() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    curl_via(&sk, &["https://paths.test.local/echo/v1/allowed/deep"]).assert_status(200);
    for path in ["/echo/v2/x", "/echo/v10/x", "/echo/v1x", "/", "/ECHO/v1/x"] {
        let res = curl_via(&sk, &[&format!("https://paths.test.local{path}")]);
        res.expect_refusal(403, "path_not_allowed");
    }
    let seen = env.upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].path, "/echo/v1/allowed/deep");
}

#[test]
fn dot_segments_and_encoded_separators_never_escape_a_path_scoped_route() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let tricks = [
        "/echo/v1/../v2/x",
        "/echo/v1/../../v2/x",
        "/echo/v1/%2e%2e/v2/x",
        "/echo/v1/%2E%2E/v2/x",
        "/echo/v1/.%2e/v2/x",
        "/echo/v1/..%2fv2/x",
        "/echo/v1/..%2Fv2/x",
        "/echo/v1%2f..%2fv2/x",
        "/echo/v1/%2e%2e%2fv2/x",
        "/echo/v1/..%5cv2/x",
        "/echo/v2/../v1/x",
        "/echo/v1%2fx",
    ];
    for path in tricks {
        let res = curl_via(
            &sk,
            &["--path-as-is", &format!("https://paths.test.local{path}")],
        );
        assert_eq!(res.exit, 0, "{path}: {}", res.stderr);
        let body = serde_json::from_slice::<serde_json::Value>(&res.body).unwrap_or_default();
        assert_eq!(
            (
                res.status,
                res.header("x-sidekey-error"),
                body["error"].as_str()
            ),
            (403, Some("path_not_allowed"), Some("path_not_allowed")),
            "{path}: got {} {}",
            res.status,
            res.body_str()
        );
    }
    // The same through plain HTTP on a raw socket (no client normalisation at all).
    let raw_cfg = base_config(
        &[],
        r#"  - name: plain-scoped
    hosts: [plainscoped.test.local]
    schemes: [http]
    methods: [GET]
    paths: ["/echo/v1/**"]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
"#,
        "",
    )
    .replace(
        "    \"plain.test.local:80\"",
        "    \"plainscoped.test.local:80\": \"{upstream_http}\"\n    \"plain.test.local:80\"",
    );
    let sk2 = env.sidekey(&raw_cfg);
    for path in tricks {
        let req = format!(
            "GET http://plainscoped.test.local{path} HTTP/1.1\r\nHost: plainscoped.test.local\r\nConnection: close\r\n\r\n"
        );
        let resp = raw_request(sk2.forward, req.as_bytes()).expect("response");
        assert_eq!(
            (resp.status, resp.header("x-sidekey-error")),
            (403, Some("path_not_allowed")),
            "{path}: {}",
            resp.body_str()
        );
    }
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
    assert!(
        env.upstream_http.requests().is_empty(),
        "{:#?}",
        env.upstream_http.requests()
    );
}

#[test]
fn absolute_uri_authority_must_match_the_host_header() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    // Both hosts are routed: the mismatch itself is the refusal.
    let res = curl(&[
        "-x",
        &sk.proxy_url(),
        "-H",
        "Host: api.test.local",
        "http://plain.test.local/echo/canary",
    ]);
    res.expect_refusal(403, "target_mismatch");
    let resp = raw_request(
        sk.forward,
        b"GET http://plain.test.local/echo/canary HTTP/1.1\r\nHost: evil.test.local\r\nConnection: close\r\n\r\n",
    )
    .expect("response");
    resp.expect_refusal(403, "target_mismatch");
    let resp = raw_request(
        sk.forward,
        b"GET http://plain.test.local/echo/canary HTTP/1.1\r\nHost: plain.test.local:8080\r\nConnection: close\r\n\r\n",
    )
    .expect("response");
    resp.expect_refusal(403, "target_mismatch");
    // Same host in another spelling is the same target.
    let resp = raw_request(
        sk.forward,
        b"GET http://plain.test.local/echo/same HTTP/1.1\r\nHost: PLAIN.test.local.\r\nConnection: close\r\n\r\n",
    )
    .expect("response");
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let seen = env.upstream_http.requests();
    assert_eq!(
        seen.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/echo/same"]
    );
}

#[test]
fn host_inside_the_tunnel_must_match_the_connect() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    for version in ["--http1.1", "--http2"] {
        let res = curl_via(
            &sk,
            &[
                version,
                "-H",
                "Host: other.test.local",
                "https://api.test.local/echo/canary",
            ],
        );
        res.expect_refusal(403, "target_mismatch");
    }
    // A raw HTTP/1.1 request in an intercepted tunnel to api.test.local naming another host.
    let tunnel = connect_tunnel(sk.forward, "api.test.local:443").expect("CONNECT allowed");
    let mut tls = tls_handshake(tunnel, API, Trust::Ca(sk.ca_pem())).expect("TLS with sidekey");
    use std::io::Write;
    tls.write_all(
        b"GET /echo/canary HTTP/1.1\r\nHost: other.test.local\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    read_response(&mut tls, false, false)
        .expect("response")
        .expect_refusal(403, "target_mismatch");
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
}

#[test]
fn sni_must_match_the_connect() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    // CONNECT to api, TLS SNI other (also routed), Host api: the SNI disagrees with the CONNECT.
    // sidekey may refuse the handshake, or finish it and refuse the request; nothing may pass.
    let tunnel = connect_tunnel(sk.forward, "api.test.local:443").expect("CONNECT allowed");
    match tls_handshake(tunnel, OTHER, Trust::Any) {
        Err(_) => {}
        Ok(mut tls) => {
            use std::io::Write;
            let sent = tls.write_all(
                b"GET /echo/canary HTTP/1.1\r\nHost: api.test.local\r\nConnection: close\r\n\r\n",
            );
            if sent.is_ok() {
                if let Ok(resp) = read_response(&mut tls, false, false) {
                    resp.expect_refusal(403, "target_mismatch");
                    // sidekey has finished that exchange.
                    sk.wait_records_of(&[resp.request_id().expect("a request ID")]);
                }
            }
        }
    }
    // The upstream has read whatever it was sent.
    env.upstream.wait_quiet();
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
    // And a client that checks certificates never gets one for the other name: sidekey's leaf
    // names the CONNECT's host.
    let tunnel = connect_tunnel(sk.forward, "api.test.local:443").expect("CONNECT allowed");
    match tls_handshake(tunnel, OTHER, Trust::Ca(sk.ca_pem())) {
        Ok(_) => panic!("a certificate-checking client accepted sidekey's leaf for {OTHER}"),
        Err(e) => assert!(
            e.to_string().contains("certificate not valid for name"),
            "the handshake failed, but not on the certificate's name: {e}"
        ),
    }
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
}

#[test]
fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    // CONNECT needs host:port.
    raw_request(
        sk.forward,
        b"CONNECT api.test.local HTTP/1.1\r\nHost: api.test.local\r\n\r\n",
    )
    .expect("response")
    .expect_refusal(400, "request_invalid");
    // Userinfo in the authority is never accepted.
    raw_request(
        sk.forward,
        b"GET http://user:pw@plain.test.local/echo/canary HTTP/1.1\r\nHost: plain.test.local\r\nConnection: close\r\n\r\n",
    )
    .expect("response")
    .expect_refusal(400, "request_invalid");
    // Not HTTP at all.
    let resp =
        raw_request(sk.forward, b"THIS IS NOT HTTP\r\n\r\n").expect("a response, not a reset");
    assert_eq!(resp.status, 400, "{}", resp.body_str());
    assert!(env.upstream.requests().is_empty());
    assert!(env.upstream_http.requests().is_empty());

    curl_via(&sk, &["https://api.test.local/echo/still-serving"]).assert_status(200);
    curl(&[
        "-x",
        &sk.proxy_url(),
        "http://plain.test.local/echo/still-serving",
    ])
    .assert_status(200);
}

#[test]
fn a_refused_request_that_expects_100_continue_is_answered_without_asking_for_its_body() {
    // An agent that sent `Expect: 100-continue` sends its body only once told to: a refusal is
    // its answer, with no `100 Continue` first (which would make it upload a body that is only
    // thrown away) and no wait for a body that is not coming. Refused after identification (a
    // method the route does not allow) and before it (userinfo in the authority).
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let refused = [
        (
            "DELETE http://plain.test.local/echo/canary HTTP/1.1\r\nHost: plain.test.local\r\n",
            403,
            "method_not_allowed",
        ),
        (
            "POST http://user:pw@plain.test.local/echo/canary HTTP/1.1\r\nHost: plain.test.local\r\n",
            400,
            "request_invalid",
        ),
    ];
    for (head, status, code) in refused {
        let request = format!("{head}Content-Length: 64\r\nExpect: 100-continue\r\n\r\n");
        let resp = raw_request(sk.forward, request.as_bytes()).expect("a response");
        // A `100 Continue` would be read here as the response, and fail the check.
        resp.expect_refusal(status, code);
    }
    sk.wait_request_records(2);
    assert!(env.upstream_http.requests().is_empty());
    curl(&[
        "-x",
        &sk.proxy_url(),
        "http://plain.test.local/echo/still-serving",
    ])
    .assert_status(200);
}

#[test]
fn closed_upstream_port_is_upstream_unreachable() {
    let env = Env::new();
    let closed = closed_port_addr().to_string();
    let cfg = base_config(
        &[
            ("down.test.local:443", "{closed}"),
            ("plaindown.test.local:80", "{closed}"),
        ],
        r#"  - name: down
    hosts: [down.test.local]
    methods: [GET]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
  - name: plaindown
    hosts: [plaindown.test.local]
    schemes: [http]
    methods: [GET]
    allow_private: true
"#,
        "",
    );
    let sk = env.sidekey_with(&cfg, &[("closed", closed)]);
    expect_https_refusal(
        &sk,
        &["https://down.test.local/echo/x"],
        "down.test.local:443",
        502,
        "upstream_unreachable",
    );
    let res = curl(&["-x", &sk.proxy_url(), "http://plaindown.test.local/echo/x"]);
    res.expect_refusal(502, "upstream_unreachable");
    let res = curl(&[&format!("{}/r/down/echo/x", sk.routes_url())]);
    res.expect_refusal(502, "upstream_unreachable");
}

#[test]
fn untrusted_upstream_certificate_is_upstream_tls() {
    let env = Env::new();
    let stranger_ca = TestCa::new("CA sidekey does not trust");
    let untrusted =
        Upstream::https_with_names(&stranger_ca, &["untrusted.test.local"], "untrusted");
    let cfg = base_config(
        &[
            ("untrusted.test.local:443", "{untrusted}"),
            ("api.wrong.local:443", "{upstream}"),
        ],
        r#"  - name: untrusted
    hosts: [untrusted.test.local]
    methods: [GET]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
  - name: wrongname
    hosts: [api.wrong.local]
    methods: [GET]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
"#,
        "",
    );
    let sk = env.sidekey_with(&cfg, &[("untrusted", untrusted.addr().to_string())]);
    // Certificate from a CA sidekey does not trust.
    expect_https_refusal(
        &sk,
        &["https://untrusted.test.local/echo/x"],
        "untrusted.test.local:443",
        502,
        "upstream_tls",
    );
    assert!(
        untrusted.requests().is_empty(),
        "a request went to an unverified upstream"
    );
    assert!(
        untrusted.tls_failures() >= 1,
        "sidekey never tried the handshake"
    );
    // Trusted CA, but the certificate does not name the host.
    expect_https_refusal(
        &sk,
        &["https://api.wrong.local/echo/x"],
        "api.wrong.local:443",
        502,
        "upstream_tls",
    );
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
}

#[test]
fn route_listener_refusals_use_the_same_codes() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let base = sk.routes_url();
    curl(&["-X", "DELETE", &format!("{base}/r/api/echo/x")])
        .expect_refusal(403, "method_not_allowed");
    curl(&[&format!("{base}/r/scoped/echo/v2/x")]).expect_refusal(403, "path_not_allowed");
    curl(&["--path-as-is", &format!("{base}/r/scoped/echo/v1/../v2/x")])
        .expect_refusal(403, "path_not_allowed");
    curl(&[
        "--path-as-is",
        &format!("{base}/r/scoped/echo/v1/%2e%2e/v2/x"),
    ])
    .expect_refusal(403, "path_not_allowed");
    // A route that does not exist: refused with a code, never guessed.
    let res = curl(&[&format!("{base}/r/no-such-route/echo/x")]);
    assert!(matches!(res.status, 403 | 404), "{res:#?}");
    let code = res
        .header("x-sidekey-error")
        .expect("x-sidekey-error")
        .to_string();
    assert_eq!(res.json()["error"], code.as_str());
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
}

#[test]
fn refusal_of_a_request_with_a_large_body_is_readable() {
    // sidekey refuses before reading the body; the agent must still get the 403, not a reset
    // stream or connection, over HTTP/1.1 and HTTP/2 alike (docs/architecture.md, "Error codes"). Over HTTP/2 an
    // early response followed by RST_STREAM(NO_ERROR) is allowed by RFC 9113 §8.1, but the
    // curl of Debian 12 (7.88) then fails with error 92 instead of showing the 403: the
    // refusal must reach agents using it too.
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let body = sk.dir().join("upload.bin");
    std::fs::write(&body, vec![b'b'; 1 << 20]).unwrap();
    let data = format!("@{}", body.display());
    for version in ["--http1.1", "--http2"] {
        for attempt in 0..5 {
            let res = curl_via(
                &sk,
                &[
                    version,
                    "-X",
                    "POST",
                    "--data-binary",
                    &data,
                    "https://other.test.local/echo/big",
                ],
            );
            assert_eq!(
                (res.exit, res.status),
                (0, 403),
                "{version} attempt {attempt}: {}",
                res.stderr.trim()
            );
            res.expect_refusal(403, "method_not_allowed");
        }
    }
    assert!(env.upstream.requests().is_empty());
}
