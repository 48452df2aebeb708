//! Adversarial: host confusion. The target is decided once, from one source, and every other
//! source must agree (docs/architecture.md, "Decisions, in order"); hosts are compared in one
//! canonical form and anything ambiguous is refused. Each payload here tries to make sidekey
//! route by one host while the request names, or would be read by a URL parser as, another — and
//! the credential must never reach `evil.test.local` (a recording upstream), nor any upstream
//! for a refused request. (tests/target_identity.rs covers the spellings that must be *accepted*
//! as the same host.)

use std::io::Write;

use crate::common::raw::{h2_raw, H2Case};
use crate::common::*;

fn config() -> String {
    base_config(
        &[
            ("evil.test.local:80", "{evil}"),
            ("evil.test.local:443", "{upstream}"),
        ],
        "",
        "",
    )
}

#[track_caller]
fn assert_refused(case: &str, resp: &RawResponse) {
    assert!(
        matches!(resp.status, 400 | 403) && resp.header("x-test-upstream").is_none(),
        "{case}: {} {}",
        resp.status,
        resp.body_str()
    );
    // hyper answers an unparsable request line with a bare 400 before sidekey sees it; every
    // refusal sidekey makes carries its code.
    if resp.status == 403 || resp.header("x-sidekey-error").is_some() {
        let code = resp.header("x-sidekey-error").unwrap_or_default();
        assert!(
            ["host_not_allowed", "target_mismatch", "request_invalid"].contains(&code),
            "{case}: code {code:?}: {}",
            resp.body_str()
        );
    }
}

#[test]
fn absolute_form_and_host_header_confusion_is_refused() {
    let env = Env::new();
    let evil = Upstream::http();
    let sk = env.sidekey_with(&config(), &[("evil", evil.addr().to_string())]);
    // (case, request-target, Host header lines)
    let cases: &[(&str, &str, &str)] = &[
        (
            "userinfo: allowed@evil",
            "http://plain.test.local@evil.test.local/echo/x",
            "Host: evil.test.local\r\n",
        ),
        (
            "userinfo with port",
            "http://plain.test.local:80@evil.test.local/echo/x",
            "Host: evil.test.local\r\n",
        ),
        (
            "userinfo, Host says allowed",
            "http://plain.test.local@evil.test.local/echo/x",
            "Host: plain.test.local\r\n",
        ),
        (
            "encoded @ in host",
            "http://plain.test.local%40evil.test.local/echo/x",
            "Host: plain.test.local\r\n",
        ),
        (
            "backslash before @",
            "http://plain.test.local\\@evil.test.local/echo/x",
            "Host: plain.test.local\r\n",
        ),
        (
            "backslash as separator",
            "http://evil.test.local\\plain.test.local/echo/x",
            "Host: evil.test.local\r\n",
        ),
        (
            "percent-encoded host",
            "http://%70lain.test.local/echo/x",
            "Host: plain.test.local\r\n",
        ),
        (
            "percent-encoded dot",
            "http://plain%2etest.local/echo/x",
            "Host: plain.test.local\r\n",
        ),
        (
            "NUL in host",
            "http://plain.test.local%00.evil.test.local/echo/x",
            "Host: plain.test.local\r\n",
        ),
        (
            "fragment before @",
            "http://evil.test.local#@plain.test.local/echo/x",
            "Host: plain.test.local\r\n",
        ),
        (
            "question mark before @",
            "http://evil.test.local?@plain.test.local/echo/x",
            "Host: plain.test.local\r\n",
        ),
        (
            "URI evil, Host allowed",
            "http://evil.test.local/echo/x",
            "Host: plain.test.local\r\n",
        ),
        (
            "URI allowed, Host evil",
            "http://plain.test.local/echo/x",
            "Host: evil.test.local\r\n",
        ),
        (
            "two Host headers",
            "http://plain.test.local/echo/x",
            "Host: plain.test.local\r\nHost: evil.test.local\r\n",
        ),
        (
            "Host with userinfo",
            "http://plain.test.local/echo/x",
            "Host: x@plain.test.local\r\n",
        ),
        (
            "Host with a path",
            "http://plain.test.local/echo/x",
            "Host: plain.test.local/evil\r\n",
        ),
        (
            "Host with a space",
            "http://plain.test.local/echo/x",
            "Host: plain.test.local evil.test.local\r\n",
        ),
        (
            "Host with two ports",
            "http://plain.test.local/echo/x",
            "Host: plain.test.local:80:80\r\n",
        ),
        (
            "Host with another port",
            "http://plain.test.local/echo/x",
            "Host: plain.test.local:8080\r\n",
        ),
        ("empty Host", "http://plain.test.local/echo/x", "Host:\r\n"),
        ("no Host", "http://plain.test.local/echo/x", ""),
        (
            "trailing dots",
            "http://plain.test.local../echo/x",
            "Host: plain.test.local..\r\n",
        ),
        (
            "leading dot",
            "http://.plain.test.local/echo/x",
            "Host: .plain.test.local\r\n",
        ),
        (
            "homograph (Cyrillic a, punycode)",
            "http://xn--pln-8cd.test.local/echo/x",
            "Host: xn--pln-8cd.test.local\r\n",
        ),
        (
            "raw UTF-8 host",
            "http://pl\u{0430}in.test.local/echo/x",
            "Host: pl\u{0430}in.test.local\r\n",
        ),
        (
            "invalid punycode",
            "http://xn--.test.local/echo/x",
            "Host: xn--.test.local\r\n",
        ),
        (
            "port 0",
            "http://plain.test.local:0/echo/x",
            "Host: plain.test.local:0\r\n",
        ),
        (
            "port with leading zero",
            "http://plain.test.local:080/echo/x",
            "Host: plain.test.local:080\r\n",
        ),
        (
            "port out of range",
            "http://plain.test.local:65616/echo/x",
            "Host: plain.test.local:65616\r\n",
        ),
        (
            "port with sign",
            "http://plain.test.local:+80/echo/x",
            "Host: plain.test.local:+80\r\n",
        ),
        (
            "empty port",
            "http://plain.test.local:/echo/x",
            "Host: plain.test.local:\r\n",
        ),
        (
            "other port",
            "http://plain.test.local:8080/echo/x",
            "Host: plain.test.local:8080\r\n",
        ),
        (
            "https scheme on the forward listener",
            "https://plain.test.local/echo/x",
            "Host: plain.test.local\r\n",
        ),
        (
            "other scheme",
            "ftp://plain.test.local/echo/x",
            "Host: plain.test.local\r\n",
        ),
        (
            "scheme-relative",
            "//plain.test.local/echo/x",
            "Host: plain.test.local\r\n",
        ),
        (
            "origin-form to the proxy",
            "/echo/x",
            "Host: plain.test.local\r\n",
        ),
        // IPv4 and IPv6 spellings: none names a route, none may be guessed into one.
        (
            "decimal IPv4",
            "http://2130706433/echo/x",
            "Host: 2130706433\r\n",
        ),
        (
            "octal IPv4",
            "http://0177.0.0.1/echo/x",
            "Host: 0177.0.0.1\r\n",
        ),
        (
            "hex IPv4",
            "http://0x7f.0x0.0x0.0x1/echo/x",
            "Host: 0x7f.0x0.0x0.0x1\r\n",
        ),
        ("short IPv4", "http://127.1/echo/x", "Host: 127.1\r\n"),
        (
            "IPv4 with trailing dot",
            "http://127.0.0.1./echo/x",
            "Host: 127.0.0.1.\r\n",
        ),
        (
            "unspecified IPv4",
            "http://0.0.0.0/echo/x",
            "Host: 0.0.0.0\r\n",
        ),
        (
            "IPv4-mapped IPv6",
            "http://[::ffff:127.0.0.1]/echo/x",
            "Host: [::ffff:127.0.0.1]\r\n",
        ),
        (
            "IPv4-mapped IPv6, hex",
            "http://[::ffff:7f00:1]/echo/x",
            "Host: [::ffff:7f00:1]\r\n",
        ),
        (
            "IPv4-compatible IPv6",
            "http://[::127.0.0.1]/echo/x",
            "Host: [::127.0.0.1]\r\n",
        ),
        ("IPv6 loopback", "http://[::1]/echo/x", "Host: [::1]\r\n"),
        ("IPv6 unspecified", "http://[::]/echo/x", "Host: [::]\r\n"),
        (
            "IPv6 zone id",
            "http://[fe80::1%25eth0]/echo/x",
            "Host: [fe80::1%25eth0]\r\n",
        ),
        (
            "IPv6 without brackets",
            "http://::1/echo/x",
            "Host: ::1\r\n",
        ),
        (
            "metadata address",
            "http://169.254.169.254/latest/meta-data/",
            "Host: 169.254.169.254\r\n",
        ),
    ];
    // The requests sidekey answered (not hyper's bare 400s), to wait for their records.
    let mut answered = Vec::new();
    for (case, target, host) in cases {
        let req = format!("GET {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
        match raw_request(sk.forward, req.as_bytes()) {
            Ok(resp) => {
                assert_refused(case, &resp);
                answered.extend(resp.request_id());
            }
            Err(e) => panic!("{case}: no response at all ({e}): a refusal must be readable"),
        }
    }
    // Control: the same host in canonical-equivalent spellings is the allowed target.
    for (case, target, host) in [
        (
            "upper case",
            "http://PLAIN.Test.Local/echo/ok1",
            "Host: plain.TEST.local\r\n",
        ),
        (
            "one trailing dot",
            "http://plain.test.local./echo/ok2",
            "Host: plain.test.local.\r\n",
        ),
        (
            "explicit default port",
            "http://plain.test.local:80/echo/ok3",
            "Host: plain.test.local\r\n",
        ),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
        let resp = raw_request(sk.forward, req.as_bytes()).expect("response");
        assert_eq!(resp.status, 200, "{case}: {}", resp.body_str());
        answered.extend(resp.request_id());
    }
    // sidekey has finished those exchanges; the upstreams have read whatever they were sent.
    sk.wait_records_of(&answered);
    evil.wait_quiet();
    env.wait_quiet();
    assert!(evil.requests().is_empty(), "{:#?}", evil.requests());
    assert_eq!(evil.connections(), 0);
    let seen = env.upstream_http.requests();
    assert_eq!(
        seen.len(),
        3,
        "only the controls reached the upstream: {seen:#?}"
    );
    for r in &seen {
        assert_eq!(
            r.authority.as_deref(),
            Some("plain.test.local"),
            "canonical Host upstream"
        );
    }
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
}

#[test]
fn connect_authority_confusion_is_refused() {
    let env = Env::new();
    let evil = Upstream::http();
    let sk = env.sidekey_with(&config(), &[("evil", evil.addr().to_string())]);
    let cases = [
        ("userinfo", "api.test.local:443@evil.test.local:443"),
        ("userinfo 2", "evil.test.local:443@api.test.local:443"),
        ("fragment", "evil.test.local:443#api.test.local:443"),
        ("path", "api.test.local:443/evil"),
        ("backslash", "api.test.local\\evil.test.local:443"),
        ("percent-encoded", "api%2etest.local:443"),
        ("two ports", "api.test.local:443:443"),
        ("no port", "api.test.local"),
        ("port 0", "api.test.local:0"),
        ("other port", "api.test.local:8443"),
        ("absolute URL", "https://api.test.local:443"),
        ("empty", ":443"),
        ("IPv4-mapped", "[::ffff:127.0.0.1]:443"),
        ("decimal IP", "2130706433:443"),
        ("unrouted", "evil.test.local:443"),
    ];
    let mut answered = Vec::new();
    for (case, authority) in cases {
        let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        match raw_request(sk.forward, req.as_bytes()) {
            Ok(resp) => {
                assert_refused(case, &resp);
                answered.extend(resp.request_id());
            }
            Err(e) => panic!("{case}: no response ({e})"),
        }
    }
    // sidekey has finished the refusals it made (hyper's bare 400s never reached it).
    sk.wait_records_of(&answered);
    assert_eq!(evil.connections(), 0);
    assert_eq!(
        env.upstream.connections(),
        0,
        "a refused CONNECT reached an upstream"
    );
}

#[test]
fn connect_sni_and_inner_host_must_all_agree() {
    let env = Env::new();
    let evil = Upstream::http();
    let sk = env.sidekey_with(&config(), &[("evil", evil.addr().to_string())]);
    // HTTP/1.1 inside a CONNECT to api.test.local with a matching SNI.
    let inner: &[(&str, &str)] = &[
        (
            "Host evil",
            "GET /echo/x HTTP/1.1\r\nHost: evil.test.local\r\n",
        ),
        (
            "Host other routed host",
            "GET /echo/x HTTP/1.1\r\nHost: other.test.local\r\n",
        ),
        (
            "absolute-form evil",
            "GET https://evil.test.local/echo/x HTTP/1.1\r\nHost: api.test.local\r\n",
        ),
        (
            "absolute-form http",
            "GET http://evil.test.local/echo/x HTTP/1.1\r\nHost: evil.test.local\r\n",
        ),
        (
            "Host other port",
            "GET /echo/x HTTP/1.1\r\nHost: api.test.local:8443\r\n",
        ),
        (
            "two Host",
            "GET /echo/x HTTP/1.1\r\nHost: api.test.local\r\nHost: evil.test.local\r\n",
        ),
        (
            "Host userinfo",
            "GET /echo/x HTTP/1.1\r\nHost: api.test.local@evil.test.local\r\n",
        ),
        ("no Host", "GET /echo/x HTTP/1.1\r\n"),
    ];
    let mut answered = Vec::new();
    for (case, head) in inner {
        let tunnel = connect_tunnel(sk.forward, "api.test.local:443").expect("CONNECT");
        let mut tls = tls_handshake(tunnel, API, Trust::Ca(sk.ca_pem())).expect("TLS");
        tls.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
            .unwrap();
        let resp = read_response(&mut tls, false, false).expect("response");
        assert_refused(case, &resp);
        answered.extend(resp.request_id());
    }
    // HTTP/2: :authority and Host against the CONNECT.
    let h2 = h2_raw(
        &sk,
        &[
            H2Case::get(":authority evil", "api.test.local", "/echo/x", &[])
                .with_authority("evil.test.local"),
            H2Case::get(":authority other routed", "api.test.local", "/echo/x", &[])
                .with_authority("other.test.local"),
            H2Case::get(":authority userinfo", "api.test.local", "/echo/x", &[])
                .with_authority("api.test.local@evil.test.local"),
            H2Case::get(":authority other port", "api.test.local", "/echo/x", &[])
                .with_authority("api.test.local:8443"),
            H2Case::get(
                "host evil",
                "api.test.local",
                "/echo/x",
                &[("host", "evil.test.local")],
            ),
            H2Case::raw(
                "no :authority, host evil",
                "api.test.local",
                &[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/echo/x"),
                    ("host", "evil.test.local"),
                ],
            ),
            H2Case::get(":scheme http", "api.test.local", "/echo/x", &[])
                .with_authority("evil.test.local:80"),
            // SNI disagreeing with the CONNECT (both routed).
            H2Case::get("SNI other", "api.test.local", "/echo/x", &[]).with_sni(OTHER),
        ],
    );
    for r in &h2 {
        assert!(r.was_refused(), "{}: {r:?}", r.name);
        answered.extend(r.request_id());
    }
    // sidekey has finished the exchanges it answered; the upstreams have read whatever they
    // were sent.
    sk.wait_records_of(&answered);
    evil.wait_quiet();
    env.wait_quiet();
    assert!(evil.requests().is_empty());
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
}
