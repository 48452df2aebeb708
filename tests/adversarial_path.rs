//! Adversarial: path tricks against a path-scoped route (`scoped`: paths.test.local, GET,
//! `/echo/v1/**`). Paths are matched decoded, and every form servers disagree on (dot segments
//! in any encoding, encoded separators, double encoding, `;` dot tricks, overlong UTF-8,
//! control bytes, fragments) is refused rather than normalised (docs/threat-model.md); what is
//! allowed is forwarded exactly as sent, so the upstream sees the path that was checked.
//! tests/denials.rs covers the basic dot-segment and %2f cases through curl; these go over raw
//! HTTP/1.1 in the tunnel, raw HTTP/2 `:path`, and the route listener.

use std::io::Write;

use crate::common::raw::{h2_raw, H2Case};
use crate::common::*;

/// (case, path, refused with this code; None = allowed)
const CASES: &[(&str, &str, Option<&str>)] = &[
    ("dot-dot", "/echo/v1/../v2/x", Some("path_not_allowed")),
    (
        "encoded dot-dot",
        "/echo/v1/%2e%2e/v2/x",
        Some("path_not_allowed"),
    ),
    (
        "mixed-case encoded dot-dot",
        "/echo/v1/%2E%2e/v2/x",
        Some("path_not_allowed"),
    ),
    (
        "half-encoded dot-dot",
        "/echo/v1/.%2E/v2/x",
        Some("path_not_allowed"),
    ),
    ("single dot", "/echo/v1/./x", Some("path_not_allowed")),
    (
        "encoded single dot",
        "/echo/v1/%2e/x",
        Some("path_not_allowed"),
    ),
    (
        "encoded slash",
        "/echo/v1%2f..%2fv2/x",
        Some("path_not_allowed"),
    ),
    (
        "encoded backslash",
        "/echo/v1/..%5cv2/x",
        Some("path_not_allowed"),
    ),
    (
        "double-encoded dot-dot",
        "/echo/v1/%252e%252e/v2/x",
        Some("path_not_allowed"),
    ),
    (
        "double-encoded slash",
        "/echo/v1%252f..%252fv2/x",
        Some("path_not_allowed"),
    ),
    (
        "; after dot-dot (Tomcat)",
        "/echo/v1/..;/v2/x",
        Some("path_not_allowed"),
    ),
    (
        "; parameter on dot-dot",
        "/echo/v1/..;jsessionid=1/v2/x",
        Some("path_not_allowed"),
    ),
    (
        "; in the prefix segment",
        "/echo/v1;x/../v2/x",
        Some("path_not_allowed"),
    ),
    (
        "; makes another segment",
        "/echo;/v1/x",
        Some("path_not_allowed"),
    ),
    (
        "dot-dot with trailing space",
        "/echo/v1/..%20/v2/x",
        Some("path_not_allowed"),
    ),
    ("three dots", "/echo/v1/.../v2", Some("path_not_allowed")),
    (
        "overlong UTF-8 dot",
        "/echo/v1/%c0%ae%c0%ae/v2/x",
        Some("path_not_allowed"),
    ),
    (
        "overlong UTF-8 slash",
        "/echo/v1%c0%af..%c0%afv2/x",
        Some("path_not_allowed"),
    ),
    ("invalid UTF-8", "/echo/v1/%ff", Some("path_not_allowed")),
    (
        "encoded NUL",
        "/echo/v1/x%00/../../v2",
        Some("path_not_allowed"),
    ),
    (
        "encoded CRLF",
        "/echo/v1/x%0d%0aHost:%20evil",
        Some("path_not_allowed"),
    ),
    ("case of the prefix", "/ECHO/V1/x", Some("path_not_allowed")),
    (
        "case of one segment",
        "/echo/V1/x",
        Some("path_not_allowed"),
    ),
    (
        "leading double slash",
        "//echo/v1/x",
        Some("path_not_allowed"),
    ),
    (
        "prefix without separator",
        "/echo/v1x",
        Some("path_not_allowed"),
    ),
    ("broken escape", "/echo/v1/%zz", Some("request_invalid")),
    ("truncated escape", "/echo/v1/%2", Some("request_invalid")),
    // Allowed, and forwarded exactly as sent.
    ("plain", "/echo/v1/x", None),
    ("; parameter in a normal segment", "/echo/v1/a;b=c", None),
    ("encoded space", "/echo/v1/a%20b", None),
    ("encoded percent", "/echo/v1/100%25", None),
    ("dots inside a name", "/echo/v1/a..b/.well-known", None),
    (
        "query with dot-dot (not a path)",
        "/echo/v1/x?p=../../v2",
        None,
    ),
];

fn in_tunnel(sk: &Sidekey, request: &str) -> RawResponse {
    let tunnel = connect_tunnel(sk.forward, "paths.test.local:443").expect("CONNECT");
    let mut tls = tls_handshake(tunnel, SCOPED, Trust::Ca(sk.ca_pem())).expect("TLS");
    tls.write_all(request.as_bytes()).unwrap();
    read_response(&mut tls, false, false).expect("response")
}

#[track_caller]
fn check(case: &str, path: &str, want: Option<&str>, status: Option<u16>, code: Option<&str>) {
    match want {
        Some(want) => {
            let want_status = if want == "request_invalid" { 400 } else { 403 };
            assert_eq!(
                (status, code),
                (Some(want_status), Some(want)),
                "{case} ({path})"
            );
        }
        None => assert_eq!((status, code), (Some(200), None), "{case} ({path})"),
    }
}

/// The paths the upstream saw must be exactly the allowed ones, byte for byte.
#[track_caller]
fn assert_only_allowed_reached(up: &Upstream, copies: usize, also: &[&str]) {
    let mut seen: Vec<String> = up
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| !also.contains(&p.as_str()))
        .collect();
    let mut want: Vec<String> = CASES
        .iter()
        .filter(|c| c.2.is_none())
        .flat_map(|c| std::iter::repeat_n(c.1.to_string(), copies))
        .collect();
    seen.sort();
    want.sort();
    assert_eq!(seen, want, "what reached the upstream");
}

#[test]
fn path_tricks_in_the_tunnel_over_http1_and_http2() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    // The requests sidekey answered, to wait for their records.
    let mut answered = Vec::new();
    for (case, path, want) in CASES {
        let resp = in_tunnel(
            &sk,
            &format!("GET {path} HTTP/1.1\r\nHost: {SCOPED}\r\nConnection: close\r\n\r\n"),
        );
        check(
            case,
            path,
            *want,
            Some(resp.status),
            resp.header("x-sidekey-error"),
        );
        answered.extend(resp.request_id());
    }
    let h2: Vec<H2Case> = CASES
        .iter()
        .map(|(case, path, _)| H2Case::get(case, SCOPED, path, &[]))
        .collect();
    for (r, (case, path, want)) in h2_raw(&sk, &h2).iter().zip(CASES) {
        check(
            &format!("h2 {case}"),
            path,
            *want,
            r.status,
            r.header("x-sidekey-error"),
        );
        answered.extend(r.request_id());
    }
    // Forms only HTTP/2 can carry, or a raw request line can: all refused.
    let odd = h2_raw(
        &sk,
        &[
            H2Case::get("h2 relative :path", SCOPED, "echo/v1/x", &[]),
            H2Case::get("h2 asterisk :path", SCOPED, "*", &[]),
            H2Case::get("h2 backslash", SCOPED, "/echo/v1\\..\\v2/x", &[]),
        ],
    );
    for r in &odd {
        assert!(r.was_refused(), "{}: {r:?}", r.name);
        answered.extend(r.request_id());
    }
    // A fragment in `:path` is cut off by the HTTP/2 layer (the `http` crate) before sidekey
    // sees the request: what is checked and what is forwarded is the part before '#', so the
    // trick gains nothing — the upstream sees the checked path, never the `..` after it.
    let frag = h2_raw(
        &sk,
        &[H2Case::get(
            "h2 fragment in :path",
            SCOPED,
            "/echo/v1/frag#/../../v2",
            &[],
        )],
    );
    answered.extend(frag[0].request_id());
    let resp = in_tunnel(
        &sk,
        &format!(
            "GET /echo/v1/frag#/../v2 HTTP/1.1\r\nHost: {SCOPED}\r\nConnection: close\r\n\r\n"
        ),
    );
    answered.extend(resp.request_id());
    if !frag[0].was_refused() || resp.status == 200 {
        let seen = env.upstream.requests_to("/echo/v1/frag");
        assert!(!seen.is_empty(), "{seen:#?}");
        for r in seen {
            assert_eq!(
                r.path, "/echo/v1/frag",
                "the fragment must not be forwarded"
            );
        }
    }
    for (case, target) in [
        ("backslash", "/echo/v1\\..\\v2/x"),
        (
            "absolute https URL to another host",
            "https://evil.test.local/echo/v1/x",
        ),
    ] {
        let resp = in_tunnel(
            &sk,
            &format!("GET {target} HTTP/1.1\r\nHost: {SCOPED}\r\nConnection: close\r\n\r\n"),
        );
        assert!(
            matches!(resp.status, 400 | 403) && resp.header("x-test-upstream").is_none(),
            "{case}: {} {}",
            resp.status,
            resp.body_str()
        );
        answered.extend(resp.request_id());
    }
    // sidekey has finished the exchanges it answered; the upstream has read whatever it was
    // sent.
    sk.wait_records_of(&answered);
    env.upstream.wait_quiet();
    assert_only_allowed_reached(&env.upstream, 2, &["/echo/v1/frag"]);
}

#[test]
fn path_tricks_through_the_route_listener() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let mut answered = Vec::new();
    for (case, path, want) in CASES {
        let req = format!(
            "GET /r/scoped{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            sk.routes
        );
        let resp = raw_request(sk.routes, req.as_bytes()).expect("response");
        check(
            case,
            path,
            *want,
            Some(resp.status),
            resp.header("x-sidekey-error"),
        );
        answered.extend(resp.request_id());
    }
    // Escaping the route name itself.
    for target in [
        "/r/scoped/../api/echo/x",
        "/r/scoped%2f..%2fapi/echo/x",
        "/r/./scoped/echo/v1/x",
        "/r/%73coped/echo/v2/x",
        "/r/SCOPED/echo/v2/x",
    ] {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            sk.routes
        );
        let resp = raw_request(sk.routes, req.as_bytes()).expect("response");
        assert!(
            matches!(resp.status, 400 | 403 | 404) && resp.header("x-sidekey-error").is_some(),
            "{target}: {} {}",
            resp.status,
            resp.body_str()
        );
        answered.extend(resp.request_id());
    }
    // sidekey has finished every exchange; the upstream has read whatever it was sent.
    sk.wait_records_of(&answered);
    env.upstream.wait_quiet();
    assert_only_allowed_reached(&env.upstream, 1, &[]);
}
