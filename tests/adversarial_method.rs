//! Adversarial: method tricks. A route's method list is what the upstream executes, so sidekey
//! refuses what a server would read as another method (X-HTTP-Method-Override and friends,
//! `_method`), methods that are not in the list whatever their spelling (HEAD, OPTIONS, TRACE,
//! lower-case), CONNECT inside an intercepted tunnel, and protocol upgrades that would turn an
//! allowed request into an unchecked channel.

use std::io::Write;

use crate::common::raw::{h2_raw, H2Case};
use crate::common::*;

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
    // sidekey has finished the 27 refusals (11 twice, 3, 2 over HTTP/2); the upstreams have
    // read whatever they were sent.
    sk.wait_request_records(27);
    env.wait_quiet();
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
    // sidekey has finished the seven refusals and `OPTIONS *` (if hyper let it through); the
    // upstream has read whatever it was sent.
    sk.wait_request_records(7 + usize::from(resp.request_id().is_some()));
    env.upstream.wait_quiet();
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
    let mut answered = Vec::new();
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
            answered.extend(resp.request_id());
            // Nothing is tunnelled: bytes sent now are not relayed anywhere. They are read as
            // the next request in the tunnel (and refused: evil is not the tunnel's host), or
            // the connection is closed.
            let _ = tls.write_all(b"GET /echo/through HTTP/1.1\r\nHost: evil.test.local\r\n\r\n");
            if let Ok(resp) = read_response(&mut tls, false, false) {
                assert!(
                    resp.header("x-sidekey-error").is_some()
                        && resp.header("x-test-upstream").is_none(),
                    "{case}: the bytes after the refused CONNECT: {} {}",
                    resp.status,
                    resp.body_str()
                );
                answered.extend(resp.request_id());
            }
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
        answered.extend(r.request_id());
    }
    // sidekey has finished the exchanges it answered; the upstreams have read whatever they
    // were sent.
    sk.wait_records_of(&answered);
    evil.wait_quiet();
    env.upstream.wait_quiet();
    assert!(evil.requests().is_empty(), "{:#?}", evil.requests());
    assert_eq!(evil.connections(), 0, "something connected to evil");
    assert!(
        env.upstream.requests().is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
}

#[test]
fn websocket_upgrades_are_decided_like_requests_and_other_upgrades_are_dropped() {
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
    // To an allowed path: the handshake goes upstream (tests/websocket.rs has the rest); an
    // upstream that does not switch protocols answers like any request — the agent never gets
    // a 101 and a raw channel nobody checks.
    let req = format!("GET /echo/v1/ws HTTP/1.1\r\nHost: {SCOPED}\r\n{ws}\r\n");
    let resp = in_tunnel(&sk, SCOPED, &req);
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let seen = env.upstream.only_request();
    assert_eq!(
        seen.header("upgrade"),
        Some("websocket"),
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    // Plain HTTP on the forward listener, too.
    let req = format!(
        "GET http://plain.test.local/echo/ws HTTP/1.1\r\nHost: plain.test.local\r\n{ws}\r\n"
    );
    let resp = raw_request(sk.forward, req.as_bytes()).expect("response");
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    // h2c upgrade on plain HTTP.
    let req = "GET http://plain.test.local/echo/h2c HTTP/1.1\r\nHost: plain.test.local\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    let resp = raw_request(sk.forward, req.as_bytes()).expect("response");
    assert_ne!(resp.status, 101, "{}", resp.body_str());
    let seen = env.upstream_http.requests_to("/echo/h2c");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("upgrade"), None);
    assert_eq!(seen[0].header("http2-settings"), None);
}

/// [`default_config`] plus `any`: https://any.test.local, every method (`"*"`).
fn form_config() -> String {
    base_config(
        &[("any.test.local:443", "{upstream}")],
        r#"  - name: any
    hosts: [any.test.local]
    methods: ["*"]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
"#,
        "",
    )
}

/// `curl -X POST` of exactly `body` (from a file, so it is sent as is), with `content_type`
/// (None: no Content-Type header at all), through sidekey.
fn post(sk: &Sidekey, args: &[&str], content_type: Option<&str>, body: &[u8]) -> CurlResult {
    let file = tempfile::NamedTempFile::new_in(sk.dir()).unwrap();
    std::fs::write(file.path(), body).unwrap();
    let data = format!("@{}", file.path().display());
    let header = format!("Content-Type: {}", content_type.unwrap_or(""));
    let mut all = vec!["-X", "POST", "--data-binary", &data, "-H", &header];
    all.extend_from_slice(args);
    if args.iter().any(|a| a.starts_with("http://")) {
        curl(&[&["-x", &sk.proxy_url()][..], &all].concat())
    } else {
        curl_via(sk, &all)
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

#[test]
fn method_fields_in_urlencoded_bodies_are_checked_like_the_query_parameter() {
    let env = Env::new();
    let sk = env.sidekey(&form_config());
    // `api` allows GET, POST, HEAD; `plain` (http) GET, POST. (case, body, Content-Type)
    let refused: &[(&str, &str, Option<&str>)] = &[
        ("_method", "_method=DELETE", Some(FORM)),
        ("among others", "a=1&_method=PUT&b=2", Some(FORM)),
        ("encoded name", "a=1&%5Fmethod=delete", Some(FORM)),
        ("upper-case name", "_METHOD=PATCH", Some(FORM)),
        ("`;` separator (Rack 2)", "a=1;_method=DELETE", Some(FORM)),
        ("PHP reads `.` as `_`", ".method=DELETE", Some(FORM)),
        ("array form", "_method[]=DELETE", Some(FORM)),
        ("second of two", "_method=GET&_method=DELETE", Some(FORM)),
        (
            "no Content-Type (Rack reads a form)",
            "_method=DELETE",
            None,
        ),
        (
            "media type with parameters",
            "_method=DELETE",
            Some("Application/X-WWW-Form-Urlencoded; charset=utf-8"),
        ),
    ];
    for (i, (case, body, content_type)) in refused.iter().enumerate() {
        for (how, args) in [
            ("h1", vec!["--http1.1".to_string()]),
            ("h2", vec!["--http2".to_string()]),
            ("plain", vec![]),
        ] {
            let url = if how == "plain" {
                format!("http://plain.test.local/echo/refused-{i}")
            } else {
                format!("https://api.test.local/echo/refused-{i}")
            };
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            args.push(&url);
            let res = post(&sk, &args, *content_type, body.as_bytes());
            let json = res.expect_refusal(403, "method_not_allowed");
            assert!(
                json["message"].as_str().unwrap_or("").contains("_method"),
                "{case} ({how}): {json}"
            );
        }
    }
    for (case, body) in [
        ("two methods", "_method=DELETE%20GET"),
        ("empty", "_method="),
    ] {
        let res = post(
            &sk,
            &["https://api.test.local/echo/refused-invalid"],
            Some(FORM),
            body.as_bytes(),
        );
        assert_eq!(res.status, 400, "{case}: {res:#?}");
        res.expect_refusal(400, "request_invalid");
    }
    // sidekey has finished the 32 refusals (10 bodies three ways, 2 invalid); the upstreams
    // have read whatever they were sent.
    sk.wait_request_records(32);
    env.wait_quiet();
    assert!(
        env.upstream.requests_to("/echo/refused").is_empty(),
        "{:#?}",
        env.upstream.requests()
    );
    assert!(env.upstream_http.requests_to("/echo/refused").is_empty());

    // A method the route allows passes, the body forwarded byte for byte.
    for (case, body) in [
        ("_method=post", "a=1&_method=post"),
        ("_method=GET", "_method=GET"),
        ("no _method", "a=1&b=two"),
    ] {
        let res = post(
            &sk,
            &["https://api.test.local/echo/allowed"],
            Some(FORM),
            body.as_bytes(),
        );
        res.assert_status(200);
        let seen = env.upstream.requests_to("/echo/allowed").pop().unwrap();
        assert!(seen.body_complete, "{case}");
        assert_eq!(seen.body_head, body, "{case}");
    }

    // On a route allowing every method, nothing is checked or held.
    let res = post(
        &sk,
        &["https://any.test.local/echo/any"],
        Some(FORM),
        b"_method=DELETE",
    );
    res.assert_status(200);
    assert_eq!(
        env.upstream
            .requests_to("/echo/any")
            .pop()
            .unwrap()
            .body_head,
        "_method=DELETE"
    );
    // JSON is not a form to these frameworks' `_method` readers (Rack, Symfony): untouched.
    post(
        &sk,
        &["https://api.test.local/echo/json"],
        Some("application/json"),
        br#"{"_method":"DELETE"}"#,
    )
    .assert_status(200);
}

#[test]
fn large_or_chunked_urlencoded_bodies_are_scanned_as_they_stream() {
    let env = Env::new();
    let sk = env.sidekey(&form_config());
    // Larger than what is read whole (64 KiB), or without a declared length: scanned as it
    // streams, the end held back until the scan is done.
    let big_refused = format!("a={}&_method=DELETE", "x".repeat(70_000));
    let big_fine = format!("a={}&b=2", "x".repeat(70_000));
    let small_refused = "a=1&_method=DELETE".to_string();
    for version in ["--http1.1", "--http2"] {
        for chunked in [false, true] {
            let mut args = vec![version];
            if chunked {
                args.extend(["-H", "Transfer-Encoding: chunked"]);
            }
            let label = format!("{version}{}", if chunked { "-chunked" } else { "" });
            let mut refused = vec![(&big_refused, "big")];
            if chunked {
                refused.push((&small_refused, "small"));
            }
            for (body, size) in refused {
                let url = format!("https://api.test.local/echo/refused-{size}{label}");
                let res = post(
                    &sk,
                    &[&args[..], &[url.as_str()]].concat(),
                    Some(FORM),
                    body.as_bytes(),
                );
                let json = res.expect_refusal(403, "method_not_allowed");
                let message = json["message"].as_str().unwrap_or("");
                assert!(message.contains("DELETE"), "{label} {size}: {message}");
            }
            let url = format!("https://api.test.local/echo/fine{label}");
            post(
                &sk,
                &[&args[..], &[url.as_str()]].concat(),
                Some(FORM),
                big_fine.as_bytes(),
            )
            .assert_status(200);
        }
    }
    // sidekey has finished the ten exchanges (six refused, four fine), and the upstream has
    // read whatever it was sent: a refused body sidekey had begun to forward is recorded, cut
    // off.
    sk.wait_request_records(10);
    env.upstream.wait_quiet();
    // Nothing refused reached the upstream whole; everything else did.
    for r in env.upstream.requests_to("/echo/refused-") {
        assert!(!r.body_complete, "{} reached the upstream whole", r.path);
    }
    let fine = env.upstream.requests_to("/echo/fine");
    assert_eq!(fine.len(), 4);
    for r in fine {
        assert_eq!(
            (r.body_len, r.body_complete),
            (big_fine.len(), true),
            "{}",
            r.path
        );
    }
    // A large body that is not a form at all (curl's -d labels anything url-encoded, and a POST
    // without Content-Type reads as a form) streams through; so does a form to a route allowing
    // every method, or the same bytes as another type.
    let json = format!("{{\"prompt\": \"{}\", \"n\": 1}}", "y".repeat(300_000));
    for (url, content_type, body) in [
        (
            "https://api.test.local/echo/big-json-as-form",
            Some(FORM),
            &json,
        ),
        ("https://api.test.local/echo/big-no-type", None, &json),
        (
            "https://any.test.local/echo/big-any",
            Some(FORM),
            &big_refused,
        ),
        (
            "https://api.test.local/echo/big-binary",
            Some("application/octet-stream"),
            &big_refused,
        ),
    ] {
        post(&sk, &[url], content_type, body.as_bytes()).assert_status(200);
        let path = url
            .trim_start_matches("https://api.test.local")
            .trim_start_matches("https://any.test.local");
        let seen = env.upstream.requests_to(path).pop().unwrap();
        assert_eq!(
            (seen.body_len, seen.body_complete),
            (body.len(), true),
            "{url}"
        );
    }
}

/// A multipart/form-data body with boundary [`BOUNDARY`]: `fields` in order, each a text field
/// or (when the value is long) a file.
fn multipart(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        if value.len() > 100 {
            body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"upload.bin\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
        } else {
            body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            );
        }
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

const BOUNDARY: &str = "----sidekey-test-7MA4YWxkTrZu0gW";

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

#[test]
fn method_fields_in_multipart_bodies_stop_the_upload_before_its_end() {
    let env = Env::new();
    let sk = env.sidekey(&form_config());
    let upload: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let ct = multipart_type();
    // (case, body)
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("only field", multipart(&[("_method", b"DELETE")])),
        (
            "after a 3 MB file",
            multipart(&[("title", b"x"), ("file", &upload), ("_method", b"delete")]),
        ),
        (
            "before a 3 MB file",
            multipart(&[("_method", b"PUT"), ("file", &upload)]),
        ),
        (
            "upper-case name",
            multipart(&[("a", b"1"), ("_METHOD", b"PATCH")]),
        ),
    ];
    for (i, (case, body)) in refused.iter().enumerate() {
        for (how, url) in [
            (
                "h1",
                format!("https://api.test.local/echo/mp-refused-{i}-h1"),
            ),
            (
                "h2",
                format!("https://api.test.local/echo/mp-refused-{i}-h2"),
            ),
            (
                "plain",
                format!("http://plain.test.local/echo/mp-refused-{i}"),
            ),
        ] {
            let version = if how == "h2" { "--http2" } else { "--http1.1" };
            let res = post(&sk, &[version, &url], Some(&ct), body);
            assert_eq!(
                (res.status, res.header("x-sidekey-error")),
                (403, Some("method_not_allowed")),
                "{case} ({how}): {res:#?}"
            );
        }
    }
    // sidekey has finished the twelve refusals, and the upstreams have read whatever they were
    // sent: a body sidekey had begun to forward is recorded, cut off.
    sk.wait_request_records(12);
    env.wait_quiet();
    // Whatever reached the upstreams broke off before the end of the body.
    let seen: Vec<Recorded> = env
        .upstream
        .requests_to("/echo/mp-refused")
        .into_iter()
        .chain(env.upstream_http.requests_to("/echo/mp-refused"))
        .collect();
    for r in &seen {
        assert!(
            !r.body_complete,
            "{}: the upstream got a complete body ({} bytes)",
            r.path, r.body_len
        );
        assert!(
            !r.body_head.contains(&format!("--{BOUNDARY}--")),
            "{}: the closing boundary was forwarded",
            r.path
        );
    }

    // Allowed: a big upload without `_method`, and one whose `_method` names POST.
    for (case, body) in [
        (
            "3 MB upload, no _method",
            multipart(&[("title", b"x"), ("file", &upload)]),
        ),
        (
            "_method=post after the file",
            multipart(&[("file", &upload), ("_method", b"post")]),
        ),
    ] {
        for version in ["--http1.1", "--http2"] {
            let res = post(
                &sk,
                &[version, "https://api.test.local/echo/mp-allowed"],
                Some(&ct),
                &body,
            );
            res.assert_status(200);
            let r = env.upstream.requests_to("/echo/mp-allowed").pop().unwrap();
            assert_eq!(
                (r.body_len, r.body_complete),
                (body.len(), true),
                "{case} {version}"
            );
            assert_eq!(res.json()["body_len"], body.len(), "{case} {version}");
        }
    }
    // A route allowing every method forwards even `_method=DELETE` untouched.
    let body = multipart(&[("file", &upload), ("_method", b"DELETE")]);
    post(
        &sk,
        &["https://any.test.local/echo/mp-any"],
        Some(&ct),
        &body,
    )
    .assert_status(200);
    let r = env.upstream.requests_to("/echo/mp-any").pop().unwrap();
    assert_eq!((r.body_len, r.body_complete), (body.len(), true));
}

#[test]
fn a_multipart_upload_streams_while_it_is_scanned() {
    let env = Env::new();
    let sk = env.sidekey(&form_config());
    let ct = multipart_type();
    // A 40 MB upload with no declared length, on a route whose `_method` fields are checked:
    // it streams through (nothing is buffered), arriving whole.
    let upload = vec![b'z'; 40 << 20];
    let body = multipart(&[("file", &upload), ("note", b"done")]);
    let peak_before = sk.memory_kib("VmHWM");
    let res = post(
        &sk,
        &[
            "--http1.1",
            "-H",
            "Transfer-Encoding: chunked",
            "https://api.test.local/echo/mp-stream",
        ],
        Some(&ct),
        &body,
    );
    res.assert_status(200);
    let r = env.upstream.requests_to("/echo/mp-stream").pop().unwrap();
    assert_eq!((r.body_len, r.body_complete), (body.len(), true));
    let grown = sk.memory_kib("VmHWM").saturating_sub(peak_before);
    assert!(
        grown < 16 << 10,
        "sidekey's peak resident set grew by {grown} KiB during a 40 MB upload: buffered"
    );
}

#[test]
fn the_end_of_a_multipart_body_is_held_until_its_scan_is_done() {
    // An HTTP/2 agent declares the length, sends the whole body in one DATA frame and ends the
    // stream with an empty one; the body's last field is an unterminated `_method` (a lenient
    // parser may still read it). Toward an HTTP/1.1 upstream the declared length frames the
    // body, so forwarding the data frame before the end of the stream is known would hand the
    // upstream a complete body.
    let env = Env::new();
    let h1 = Upstream::https_h1_only(&env.ca, &["h1only.test.local"], "h1only");
    let cfg = base_config(
        &[("h1only.test.local:443", "{h1only}")],
        r#"  - name: h1only
    hosts: [h1only.test.local]
    methods: [GET, POST]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
"#,
        "",
    );
    let sk = env.sidekey_with(&cfg, &[("h1only", h1.addr().to_string())]);
    let body = |value: &str| {
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\n{value}"
        )
    };
    let ct = multipart_type();
    let case = |name: &str, path: &str, value: &str| {
        let body = body(value);
        let len = body.len().to_string();
        H2Case::raw(
            name,
            "h1only.test.local",
            &[
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "h1only.test.local"),
                (":path", path),
                ("content-type", &ct),
                ("content-length", &len),
            ],
        )
        .data(&[&body, ""])
    };
    let results = h2_raw(
        &sk,
        &[
            case("unterminated DELETE", "/echo/held", "DELETE"),
            case("unterminated POST", "/echo/passed", "POST"),
        ],
    );
    assert_eq!(results[0].status, Some(403), "{:?}", results[0]);
    assert_eq!(
        results[0].header("x-sidekey-error"),
        Some("method_not_allowed")
    );
    // sidekey has finished both exchanges, and the upstream has read whatever it was sent: a
    // body sidekey had begun to forward is recorded, cut off.
    sk.wait_request_records(2);
    h1.wait_quiet();
    let whole = body("DELETE").len();
    for r in h1.requests_to("/echo/held") {
        assert!(
            !r.body_complete && r.body_len < whole,
            "the upstream got the whole body ({} of {whole} bytes)",
            r.body_len
        );
    }
    // The same shape with a value the route allows passes whole.
    assert_eq!(results[1].status, Some(200), "{:?}", results[1]);
    let r = h1.requests_to("/echo/passed").pop().unwrap();
    assert_eq!((r.body_len, r.body_complete), (body("POST").len(), true));
}
