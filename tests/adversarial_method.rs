//! Adversarial: method tricks. A route's method list is what the upstream executes, so sidekey
//! refuses what a server would read as another method (X-HTTP-Method-Override and friends,
//! `_method`), methods that are not in the list whatever their spelling (HEAD, OPTIONS, TRACE,
//! lower-case), CONNECT inside an intercepted tunnel, and protocol upgrades that would turn an
//! allowed request into an unchecked channel.

mod common;

use std::io::Write;
use std::time::Duration;

use common::raw::{h2_raw, H2Case};
use common::*;

/// One raw HTTP/1.1 request inside an intercepted tunnel to `host`.
fn in_tunnel(sk: &Sidekey, host: &str, request: &str) -> RawResponse {
    let tunnel = connect_tunnel(sk.forward, &format!("{host}:443")).expect("CONNECT");
    let mut tls = tls_handshake(tunnel, host, Trust::Ca(sk.ca_pem())).expect("TLS");
    tls.write_all(request.as_bytes()).unwrap();
    read_response(&mut tls, request.starts_with("HEAD "), false).expect("response")
}

#[track_caller]
fn expect_code(case: &str, resp: &RawResponse, status: u16, code: &str) {
    assert_eq!(
        (resp.status, resp.header("x-sidekey-error")),
        (status, Some(code)),
        "{case}: {}",
        resp.body_str()
    );
}

#[test]
fn method_override_headers_and_parameters_cannot_widen_the_route() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    // `other` allows GET only; `api` allows GET, POST, HEAD.
    let refused: &[(&str, &str, &str, &str)] = &[
        // (case, host, request target, extra header lines)
        (
            "X-HTTP-Method-Override",
            OTHER,
            "/echo/o1",
            "X-HTTP-Method-Override: DELETE\r\n",
        ),
        ("X-HTTP-Method", OTHER, "/echo/o2", "X-HTTP-Method: PUT\r\n"),
        (
            "X-Method-Override",
            OTHER,
            "/echo/o3",
            "X-Method-Override: PATCH\r\n",
        ),
        (
            "lower-case value",
            OTHER,
            "/echo/o4",
            "x-http-method-override: delete\r\n",
        ),
        (
            "padded value",
            OTHER,
            "/echo/o5",
            "X-HTTP-Method-Override:   DELETE  \r\n",
        ),
        (
            "second of two headers",
            OTHER,
            "/echo/o6",
            "X-HTTP-Method-Override: GET\r\nX-HTTP-Method-Override: DELETE\r\n",
        ),
        (
            "_method query parameter",
            OTHER,
            "/echo/o7?_method=DELETE",
            "",
        ),
        (
            "encoded _method name",
            OTHER,
            "/echo/o8?%5Fmethod=delete",
            "",
        ),
        ("upper-case _METHOD", OTHER, "/echo/o9?a=1&_METHOD=PUT", ""),
        (
            "override to CONNECT",
            API,
            "/echo/o10",
            "X-HTTP-Method-Override: CONNECT\r\n",
        ),
        (
            "override to TRACE",
            API,
            "/echo/o11",
            "X-HTTP-Method: TRACE\r\n",
        ),
    ];
    for (case, host, target, extra) in refused {
        let req =
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
        expect_code(case, &in_tunnel(&sk, host, &req), 403, "method_not_allowed");
        // And as plain HTTP on the forward listener (`plain` allows GET and POST).
        let req = format!(
            "GET http://plain.test.local{target} HTTP/1.1\r\nHost: plain.test.local\r\n{}Connection: close\r\n\r\n",
            extra.replace("PATCH", "DELETE").replace(": GET\r\n", ": POST\r\n")
        );
        let resp = raw_request(sk.forward, req.as_bytes()).expect("response");
        expect_code(&format!("{case} (plain)"), &resp, 403, "method_not_allowed");
    }
    // Values that are not one method: the upstream's reading cannot be predicted.
    for (case, value) in [
        ("two methods", "DELETE, GET"),
        ("empty", ""),
        ("space inside", "GET X"),
    ] {
        let req = format!(
            "GET /echo/bad HTTP/1.1\r\nHost: {API}\r\nX-HTTP-Method-Override: {value}\r\nConnection: close\r\n\r\n"
        );
        expect_code(case, &in_tunnel(&sk, API, &req), 400, "request_invalid");
    }
    // Over HTTP/2 too.
    let h2 = h2_raw(
        &sk,
        &[
            H2Case::get(
                "h2 x-http-method-override",
                OTHER,
                "/echo/h2o",
                &[("x-http-method-override", "DELETE")],
            ),
            H2Case::get("h2 _method", OTHER, "/echo/h2o?_method=DELETE", &[]),
        ],
    );
    for r in &h2 {
        assert_eq!(r.status, Some(403), "{}: {r:?}", r.name);
        assert_eq!(
            r.header("x-sidekey-error"),
            Some("method_not_allowed"),
            "{}",
            r.name
        );
    }
    std::thread::sleep(Duration::from_millis(200));
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

    // An override the route allows is legitimate (POST with GET semantics, as Google APIs use).
    let req = format!(
        "POST /echo/allowed HTTP/1.1\r\nHost: {API}\r\nX-HTTP-Method-Override: GET\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let resp = in_tunnel(&sk, API, &req);
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(env.upstream.requests().len(), 1);
}

#[test]
fn methods_outside_the_route_are_refused_in_every_spelling() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    // `other` allows GET only: HEAD is not implied; methods are case-sensitive (RFC 9110 §9.1).
    for method in [
        "HEAD", "OPTIONS", "TRACE", "get", "Get", "PROPFIND", "DELETE",
    ] {
        let req =
            format!("{method} /echo/m HTTP/1.1\r\nHost: {OTHER}\r\nConnection: close\r\n\r\n");
        expect_code(
            method,
            &in_tunnel(&sk, OTHER, &req),
            403,
            "method_not_allowed",
        );
    }
    // `OPTIONS *` (asterisk form) names no path a route could allow.
    let resp = in_tunnel(
        &sk,
        API,
        &format!("OPTIONS * HTTP/1.1\r\nHost: {API}\r\nConnection: close\r\n\r\n"),
    );
    assert!(
        matches!(resp.status, 400 | 403) && resp.header("x-test-upstream").is_none(),
        "OPTIONS *: {} {}",
        resp.status,
        resp.body_str()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
}

#[test]
fn connect_inside_an_intercepted_tunnel_never_opens_another() {
    let env = Env::new();
    let evil = Upstream::http();
    let cfg = base_config(&[("evil.test.local:80", "{evil}")], "", "");
    let sk = env.sidekey_with(&cfg, &[("evil", evil.addr().to_string())]);
    // HTTP/1.1: CONNECT to another host, to the same host, and with an absolute-form target.
    for (case, target) in [
        ("CONNECT other host", "evil.test.local:80"),
        ("CONNECT same host", "api.test.local:443"),
        ("CONNECT absolute-form", "http://evil.test.local/"),
    ] {
        let tunnel = connect_tunnel(sk.forward, "api.test.local:443").expect("CONNECT");
        let mut tls = tls_handshake(tunnel, API, Trust::Ca(sk.ca_pem())).expect("TLS");
        let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        tls.write_all(req.as_bytes()).unwrap();
        // A closed connection (Err) is also safe.
        if let Ok(resp) = read_response(&mut tls, false, true) {
            assert!(
                matches!(resp.status, 400 | 403) && resp.header("x-sidekey-error").is_some(),
                "{case}: {} {}",
                resp.status,
                resp.body_str()
            );
            // Nothing is tunnelled: bytes sent now are not relayed anywhere.
            let _ = tls.write_all(b"GET /echo/through HTTP/1.1\r\nHost: evil.test.local\r\n\r\n");
        }
    }
    // HTTP/2: a CONNECT stream (`:method CONNECT` + `:authority`, no :scheme/:path).
    let h2 = h2_raw(
        &sk,
        &[H2Case::raw(
            "h2 CONNECT",
            API,
            &[(":method", "CONNECT"), (":authority", "evil.test.local:80")],
        )],
    );
    for r in &h2 {
        assert!(r.was_refused(), "{}: {r:?}", r.name);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(evil.requests().is_empty(), "{:#?}", evil.requests());
    assert_eq!(evil.connections(), 0, "something connected to evil");
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
}

#[test]
fn websocket_upgrades_are_checked_and_never_passed_through() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let ws = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    // To a path outside the scoped route: refused like any request.
    for path in ["/echo/v2/ws", "/ws", "/echo/v1/../v2/ws"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {SCOPED}\r\n{ws}\r\n");
        expect_code(path, &in_tunnel(&sk, SCOPED, &req), 403, "path_not_allowed");
    }
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
    // To an allowed path: forwarded as a plain request, the upgrade stripped — the agent never
    // gets a 101 and a raw channel nobody checks.
    let req = format!("GET /echo/v1/ws HTTP/1.1\r\nHost: {SCOPED}\r\n{ws}\r\n");
    let resp = in_tunnel(&sk, SCOPED, &req);
    assert_ne!(resp.status, 101, "{}", resp.body_str());
    let seen = env.upstream.only_request();
    assert_eq!(seen.header("upgrade"), None, "{:?}", seen.headers);
    // Plain HTTP on the forward listener, too.
    let req = format!(
        "GET http://plain.test.local/echo/ws HTTP/1.1\r\nHost: plain.test.local\r\n{ws}\r\n"
    );
    let resp = raw_request(sk.forward, req.as_bytes()).expect("response");
    assert_ne!(resp.status, 101, "{}", resp.body_str());
    let seen = env.upstream_http.only_request();
    assert_eq!(seen.header("upgrade"), None, "{:?}", seen.headers);
    // h2c upgrade on plain HTTP.
    let req = "GET http://plain.test.local/echo/h2c HTTP/1.1\r\nHost: plain.test.local\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    let resp = raw_request(sk.forward, req.as_bytes()).expect("response");
    assert_ne!(resp.status, 101, "{}", resp.body_str());
    let seen = env.upstream_http.requests_to("/echo/h2c");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("upgrade"), None);
    assert_eq!(seen[0].header("http2-settings"), None);
}
