//! Adversarial: request smuggling and desync. sidekey checks each request it parses; the danger
//! is a request it did not parse — hidden in a body whose framing sidekey and the upstream read
//! differently — reaching the upstream with the credential's connection (or the credential).
//! Every payload here hides `GET /admin` (outside the route's paths) and the tests assert that no
//! such request line ever reaches an upstream, that what sidekey writes upstream has exactly one
//! framing, and that the agent gets a refusal or a closed connection, never a smuggled answer.
//!
//! HTTP/1.1 payloads go over raw sockets (curl and requests would normalise them); HTTP/2 ones
//! through `tests/clients/h2raw.py` with header validation off, to an upstream that only speaks
//! HTTP/1.1, so that sidekey must downgrade them.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::raw::{h2_raw, request_lines, H2Case, RawUpstream};
use crate::common::*;

const RAW_HOST: &str = "raw.test.local";
const H1_HOST: &str = "h1.test.local";

fn config() -> String {
    base_config(
        &[
            ("raw.test.local:80", "{raw}"),
            ("h1.test.local:443", "{h1}"),
        ],
        r#"  - name: raw
    hosts: [raw.test.local]
    schemes: [http]
    methods: [GET, POST]
    paths: ["/ok/**"]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
  - name: h1
    hosts: [h1.test.local]
    methods: [GET, POST]
    paths: ["/ok/**"]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
"#,
        "",
    )
}

const SMUGGLED: &str = "GET /admin HTTP/1.1\r\nHost: raw.test.local\r\n\r\n";

/// Sends `payload` on a fresh connection to the forward listener and reads everything that
/// comes back until the connection closes (or 5 s pass).
fn send_raw(sk: &Sidekey, payload: &[u8]) -> String {
    let mut s = connect(sk.forward).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let _ = s.write_all(payload);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                // Quiet: if a full response is there, the connection may just be kept alive.
                if !got.is_empty() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// sidekey's request IDs (`x-sidekey-request-id`) of every response in `text`: the exchanges
/// sidekey answered.
fn request_ids(text: &str) -> Vec<String> {
    regex::Regex::new(&format!(r"(?im)^{REQUEST_ID}:\s*(\S+)"))
        .unwrap()
        .captures_iter(text)
        .map(|c| c[1].to_string())
        .collect()
}

/// Waits until sidekey has finished the exchanges it answered in `got` (their audit records)
/// and `raw` has answered every connection it accepted: what reached it is all recorded.
fn wait_settled(sk: &Sidekey, raw: &RawUpstream, got: &str) {
    sk.wait_records_of(&request_ids(got));
    raw.wait_answered();
}

/// Status codes of every response in `text`.
fn statuses(text: &str) -> Vec<u16> {
    regex::Regex::new(r"HTTP/1\.[01] (\d{3})")
        .unwrap()
        .captures_iter(text)
        .map(|c| c[1].parse().unwrap())
        .collect()
}

/// Asserts what `raw` has received so far is made of well-framed single requests to /ok/...
#[track_caller]
fn assert_upstream_clean(raw: &RawUpstream, case: &str) {
    for conn in raw.connections() {
        let lines = request_lines(&conn);
        let text = String::from_utf8_lossy(&conn).to_ascii_lowercase();
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        assert!(
            lines.len() <= 1,
            "{case}: more than one request on one upstream connection: {lines:?}\n{text}"
        );
        assert!(
            lines.iter().all(|l| !l.contains("/admin")),
            "{case}: a smuggled request reached the upstream:\n{text}"
        );
        let cl = head.matches("\r\ncontent-length:").count();
        let te = head.matches("\r\ntransfer-encoding:").count();
        assert!(
            cl + te <= 1,
            "{case}: sidekey sent ambiguous framing upstream:\n{head}"
        );
    }
}

#[test]
fn http1_framing_attacks_never_smuggle_a_request_upstream() {
    let env = Env::new();
    let raw = RawUpstream::start();
    let h1 = Upstream::https_h1_only(&env.ca, &[H1_HOST], "h1");
    let sk = env.sidekey_with(
        &config(),
        &[
            ("raw", raw.addr().to_string()),
            ("h1", h1.addr().to_string()),
        ],
    );
    let start = format!("POST http://{RAW_HOST}/ok/x HTTP/1.1\r\nHost: {RAW_HOST}\r\n");
    let chunked_smuggle = format!("0\r\n\r\n{SMUGGLED}");
    let n = chunked_smuggle.len();
    // (case, head lines after Host, body) — each on its own connection.
    let cases: Vec<(&str, String, String)> = vec![
        (
            "CL.TE",
            format!("Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n"),
            chunked_smuggle.clone(),
        ),
        (
            "TE.CL",
            format!("Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n"),
            chunked_smuggle.clone(),
        ),
        (
            "TE.CL short length",
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n".into(),
            format!("5c\r\n{}\r\n0\r\n\r\n", "a".repeat(0x5c)),
        ),
        (
            "two different Content-Length",
            "Content-Length: 0\r\nContent-Length: 44\r\n".into(),
            SMUGGLED.into(),
        ),
        (
            "Content-Length list",
            "Content-Length: 0, 44\r\n".into(),
            SMUGGLED.into(),
        ),
        (
            "Content-Length with sign",
            "Content-Length: +44\r\n".into(),
            SMUGGLED.into(),
        ),
        (
            "Content-Length hex",
            "Content-Length: 0x2c\r\n".into(),
            SMUGGLED.into(),
        ),
        (
            "Content-Length with space inside",
            "Content-Length: 4 4\r\n".into(),
            SMUGGLED.into(),
        ),
        (
            "Content-Length huge",
            "Content-Length: 99999999999999999999\r\n".into(),
            SMUGGLED.into(),
        ),
        (
            "TE xchunked",
            "Transfer-Encoding: xchunked\r\n".into(),
            chunked_smuggle.clone(),
        ),
        (
            "TE chunked, identity",
            "Transfer-Encoding: chunked, identity\r\n".into(),
            chunked_smuggle.clone(),
        ),
        (
            "TE identity",
            "Transfer-Encoding: identity\r\nContent-Length: 0\r\n".into(),
            SMUGGLED.into(),
        ),
        (
            "TE space before colon",
            "Transfer-Encoding : chunked\r\nContent-Length: 0\r\n".into(),
            chunked_smuggle.clone(),
        ),
        (
            "TE tab",
            "Transfer-Encoding:\tchunked\r\n".into(),
            chunked_smuggle.clone(),
        ),
        (
            "TE upper-case",
            "Transfer-Encoding: CHUNKED\r\n".into(),
            chunked_smuggle.clone(),
        ),
        (
            "TE quoted",
            "Transfer-Encoding: \"chunked\"\r\n".into(),
            chunked_smuggle.clone(),
        ),
        (
            "TE twice, last not chunked",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n".into(),
            chunked_smuggle.clone(),
        ),
        (
            "TE obs-fold",
            "Transfer-Encoding:\r\n chunked\r\n".into(),
            chunked_smuggle.clone(),
        ),
        (
            "obs-fold other header",
            "X-Folded: a\r\n b\r\nContent-Length: 0\r\n".into(),
            SMUGGLED.into(),
        ),
        (
            "bare CR in a header",
            "X-A: a\rContent-Length: 44\r\nContent-Length: 0\r\n".into(),
            SMUGGLED.into(),
        ),
        (
            "bare LF line end",
            "Content-Length: 0\nTransfer-Encoding: chunked\r\n".into(),
            chunked_smuggle.clone(),
        ),
        (
            "NUL in a header",
            "X-A: a\0b\r\nContent-Length: 0\r\n".into(),
            SMUGGLED.into(),
        ),
        (
            "chunk size overflow",
            "Transfer-Encoding: chunked\r\n".into(),
            format!("ffffffffffffffff1\r\n{SMUGGLED}\r\n0\r\n\r\n"),
        ),
        (
            "chunk size negative",
            "Transfer-Encoding: chunked\r\n".into(),
            format!("-1\r\n{SMUGGLED}\r\n0\r\n\r\n"),
        ),
        (
            "chunk size 0x prefix",
            "Transfer-Encoding: chunked\r\n".into(),
            format!("0x2c\r\n{SMUGGLED}\r\n0\r\n\r\n"),
        ),
        (
            "chunk size with space",
            "Transfer-Encoding: chunked\r\n".into(),
            format!("2 c\r\n{SMUGGLED}\r\n0\r\n\r\n"),
        ),
        (
            "chunk longer than its size",
            "Transfer-Encoding: chunked\r\n".into(),
            format!("2\r\nab{SMUGGLED}\r\n0\r\n\r\n"),
        ),
        (
            "chunk size bare LF",
            "Transfer-Encoding: chunked\r\n".into(),
            format!("2\nab\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE in HTTP/1.0",
            "Transfer-Encoding: chunked\r\n".into(),
            chunked_smuggle.clone(),
        ),
    ];
    for (case, head, body) in &cases {
        let mut first = start.clone();
        if *case == "TE in HTTP/1.0" {
            first = first.replace("HTTP/1.1", "HTTP/1.0");
        }
        let payload = format!("{first}{head}\r\n{body}");
        let got = send_raw(&sk, payload.as_bytes());
        let codes = statuses(&got);
        // The smuggled request, if sidekey parsed it as a request at all, is refused by the
        // route's paths: any response past the first must be a refusal.
        for (i, code) in codes.iter().enumerate().skip(1) {
            assert!(
                matches!(code, 400 | 403),
                "{case}: response {i} is {code}, not a refusal:\n{got}"
            );
        }
        assert!(
            !got.contains("x-test-upstream: raw") || codes.first() == Some(&200),
            "{case}: {got}"
        );
        wait_settled(&sk, &raw, &got);
        assert_upstream_clean(&raw, case);
    }
    // Pipelined: the second request is parsed and checked on its own (and refused).
    let payload = format!(
        "GET http://{RAW_HOST}/ok/a HTTP/1.1\r\nHost: {RAW_HOST}\r\n\r\nGET http://{RAW_HOST}/admin HTTP/1.1\r\nHost: {RAW_HOST}\r\n\r\n"
    );
    let got = send_raw(&sk, payload.as_bytes());
    assert_eq!(statuses(&got), [200, 403], "pipelined: {got}");
    assert!(got.contains("path_not_allowed"), "{got}");
    wait_settled(&sk, &raw, &got);
    assert_upstream_clean(&raw, "pipelined");
    // Still serving.
    let got = send_raw(
        &sk,
        format!("GET http://{RAW_HOST}/ok/after HTTP/1.1\r\nHost: {RAW_HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(statuses(&got), [200], "{got}");
}

#[test]
fn http1_framing_attacks_inside_the_tunnel() {
    let env = Env::new();
    let raw = RawUpstream::start();
    let h1 = Upstream::https_h1_only(&env.ca, &[H1_HOST], "h1");
    let sk = env.sidekey_with(
        &config(),
        &[
            ("raw", raw.addr().to_string()),
            ("h1", h1.addr().to_string()),
        ],
    );
    let smuggled = "GET /admin HTTP/1.1\r\nHost: h1.test.local\r\n\r\n";
    let chunked = format!("0\r\n\r\n{smuggled}");
    let cases: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}",
                chunked.len()
            ),
        ),
        (
            "two Content-Length",
            format!(
                "Content-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "TE not chunked",
            format!("Transfer-Encoding: gzip\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold",
            format!("Transfer-Encoding:\r\n chunked\r\n\r\n{chunked}"),
        ),
    ];
    let mut answered = Vec::new();
    for (case, rest) in &cases {
        let tunnel = connect_tunnel(sk.forward, "h1.test.local:443").expect("CONNECT");
        let mut tls = tls_handshake(tunnel, H1_HOST, Trust::Ca(sk.ca_pem())).expect("TLS");
        let req = format!("POST /ok/x HTTP/1.1\r\nHost: {H1_HOST}\r\n{rest}");
        tls.write_all(req.as_bytes()).unwrap();
        let mut got = Vec::new();
        let _ = tls.sock.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = tls.read_to_end(&mut got);
        let got = String::from_utf8_lossy(&got).into_owned();
        for (i, code) in statuses(&got).iter().enumerate().skip(1) {
            assert!(
                matches!(code, 400 | 403),
                "{case}: response {i} is {code}:\n{got}"
            );
        }
        answered.extend(request_ids(&got));
    }
    // sidekey has finished the exchanges it answered; the upstream has read whatever it was
    // sent.
    sk.wait_records_of(&answered);
    h1.wait_quiet();
    let seen = h1.requests();
    assert!(
        seen.iter().all(|r| r.path.starts_with("/ok/")),
        "a smuggled request reached the upstream: {seen:#?}"
    );
}

#[test]
fn http2_downgrade_attacks_never_reach_an_http1_upstream() {
    let env = Env::new();
    let raw = RawUpstream::start();
    let h1 = Upstream::https_h1_only(&env.ca, &[H1_HOST], "h1");
    let sk = env.sidekey_with(
        &config(),
        &[
            ("raw", raw.addr().to_string()),
            ("h1", h1.addr().to_string()),
        ],
    );
    let get = |name: &str, extra: &[(&str, &str)]| H2Case::get(name, H1_HOST, "/ok/x", extra);
    let post = |name: &str, extra: &[(&str, &str)]| {
        let mut c = H2Case::get(name, H1_HOST, "/ok/x", extra);
        c.headers[0].1 = "POST".into();
        c
    };
    let smuggle = "GET /admin HTTP/1.1\r\nHost: h1.test.local\r\n\r\n";
    let cases = vec![
        get(
            "CRLF in a header value",
            &[("x-a", "b\r\nGET /admin HTTP/1.1\r\nx-c: d")],
        ),
        get("LF in a header value", &[("x-a", "b\nx-injected: 1")]),
        get("CR in a header value", &[("x-a", "b\rx-injected: 1")]),
        get("NUL in a header value", &[("x-a", "b\0c")]),
        get("colon in a header name", &[("x-a:b", "c")]),
        get("space in a header name", &[("x-a b", "c")]),
        get("upper-case header name", &[("X-Upper", "c")]),
        get(
            "CRLF in a header name",
            &[("x-a\r\ntransfer-encoding", "chunked")],
        ),
        get(
            "transfer-encoding (connection-specific)",
            &[("transfer-encoding", "chunked")],
        ),
        get("connection header", &[("connection", "keep-alive")]),
        get("keep-alive header", &[("keep-alive", "timeout=5")]),
        get("te other than trailers", &[("te", "gzip")]),
        post(
            "content-length shorter than DATA",
            &[("content-length", "1")],
        )
        .data(&[smuggle]),
        post(
            "content-length longer than DATA",
            &[("content-length", "999")],
        )
        .data(&["abc"]),
        post(
            "two different content-lengths",
            &[("content-length", "0"), ("content-length", "43")],
        )
        .data(&[smuggle]),
        post("content-length list", &[("content-length", "0, 43")]).data(&[smuggle]),
        post("content-length with sign", &[("content-length", "+43")]).data(&[smuggle]),
        H2Case::raw(
            "space and CRLF in :path",
            H1_HOST,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", H1_HOST),
                (
                    ":path",
                    "/ok/x HTTP/1.1\r\nHost: h1.test.local\r\n\r\nGET /admin",
                ),
            ],
        ),
        H2Case::raw(
            "request line in :method",
            H1_HOST,
            &[
                (
                    ":method",
                    "GET /admin HTTP/1.1\r\nHost: h1.test.local\r\n\r\nGET",
                ),
                (":scheme", "https"),
                (":authority", H1_HOST),
                (":path", "/ok/x"),
            ],
        ),
        H2Case::raw(
            "CRLF in :authority",
            H1_HOST,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "h1.test.local\r\nx-injected: 1"),
                (":path", "/ok/x"),
            ],
        ),
        H2Case::raw(
            "two :path",
            H1_HOST,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", H1_HOST),
                (":path", "/ok/x"),
                (":path", "/admin"),
            ],
        ),
        H2Case::raw(
            "two :authority",
            H1_HOST,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", H1_HOST),
                (":authority", "evil.test.local"),
                (":path", "/ok/x"),
            ],
        ),
        H2Case::raw(
            "pseudo-header after a regular one",
            H1_HOST,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                ("x-a", "b"),
                (":authority", H1_HOST),
                (":path", "/ok/x"),
            ],
        ),
        H2Case::raw(
            "unknown pseudo-header",
            H1_HOST,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", H1_HOST),
                (":path", "/ok/x"),
                (":admin", "/admin"),
            ],
        ),
        H2Case::raw(
            "no :path",
            H1_HOST,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", H1_HOST),
            ],
        ),
        H2Case::raw(
            "absolute URL in :path",
            H1_HOST,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", H1_HOST),
                (":path", "https://evil.test.local/admin"),
            ],
        ),
        H2Case::raw(
            ":path outside the route",
            H1_HOST,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", H1_HOST),
                (":path", "/admin"),
            ],
        ),
        H2Case::raw(
            "extended CONNECT (:protocol websocket)",
            H1_HOST,
            &[
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "https"),
                (":authority", H1_HOST),
                (":path", "/ok/ws"),
            ],
        ),
        get(
            "host header disagreeing with :authority",
            &[("host", "evil.test.local")],
        ),
    ];
    let results = h2_raw(&sk, &cases);
    for r in &results {
        assert!(
            r.was_refused(),
            "{}: not refused — status {:?}, body {}",
            r.name,
            r.status,
            r.body
        );
    }
    // sidekey has finished the exchanges it answered, and the upstream has read whatever it was
    // sent. (A stream the HTTP/2 layer reset carries no request ID to wait for; sidekey refuses
    // those before forwarding anything.)
    let answered: Vec<String> = results.iter().filter_map(|r| r.request_id()).collect();
    sk.wait_records_of(&answered);
    h1.wait_quiet();
    for r in h1.requests() {
        assert!(r.path.starts_with("/ok/"), "reached the upstream: {r:#?}");
        for (k, v) in &r.headers {
            assert!(
                !k.contains(['\r', '\n', ':', ' ']) && !v.contains(['\r', '\n', '\0']),
                "an injected header reached the upstream: {k}: {v:?}"
            );
            assert_ne!(k, "x-injected", "{r:#?}");
        }
        assert!(r.header_all("content-length").len() <= 1, "{r:#?}");
    }
    // Still serving HTTP/2, and downgrading a clean request.
    let ok = h2_raw(&sk, &[get("clean", &[])]);
    // (The test upstream has no /ok/ endpoint: its 404 is the answer.)
    assert_eq!(ok[0].header("x-test-upstream"), Some("h1"), "{:?}", ok[0]);
    let last = h1.requests().pop().expect("the clean request");
    assert_eq!(last.version, "HTTP/1.1");
    assert_eq!(last.path, "/ok/x");
}
