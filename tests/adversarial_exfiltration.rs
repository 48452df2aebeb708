//! Adversarial: exfiltration. A compromised agent tries to get the credential sent somewhere its
//! route does not name, or to read it back: by supplying its own Authorization /
//! Proxy-Authorization (never forwarded), by asking an allowed upstream to reflect the injected
//! header in its body or headers (scrubbed), and by following redirects to other hosts (passed
//! back to the agent, never followed by sidekey, and no credential goes with the agent's next
//! request unless that host's own route says so). An upstream that compresses a reflection
//! although sidekey asked for `identity` has it decoded and masked; a coding sidekey cannot
//! decode is refused (`upstream_encoding`) without passing the body on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::raw::{h2_raw, H2Case};
use crate::common::*;

/// Every spelling of `secret` an echo could carry it in, for "never seen" assertions.
fn forms(secret: &str) -> Vec<String> {
    vec![
        secret.to_string(),
        base64_encode(secret.as_bytes()),
        secret.replace('.', "%2E"),
    ]
}

/// Panics if any form of any secret occurs in `haystack`.
#[track_caller]
fn assert_absent(what: &str, haystack: &str, secrets: &[String]) {
    for secret in secrets {
        for form in forms(secret) {
            assert!(
                !haystack.contains(&form),
                "{what}: the credential (as {form:.12}...) reached the agent:\n{haystack}"
            );
        }
    }
}

/// All header lines and the body of a curl result, as text.
fn curl_text(res: &CurlResult) -> String {
    let mut s = String::new();
    for (k, v) in &res.headers {
        s.push_str(&format!("{k}: {v}\n"));
    }
    s.push('\n');
    s.push_str(&res.body_str());
    s
}

#[test]
fn agent_supplied_authorization_and_proxy_authorization_are_never_forwarded() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    // (case, extra header lines); each sent over a raw HTTP/1.1 socket inside an intercepted
    // tunnel and as plain absolute-form HTTP, so no client library tidies them up.
    let cases: &[(&str, &[&str])] = &[
        ("bearer", &["Authorization: Bearer agent-canary-1"]),
        (
            "two authorization lines",
            &[
                "Authorization: Bearer agent-canary-1",
                "Authorization: Bearer agent-canary-2",
            ],
        ),
        (
            "odd case, odd spacing",
            &[
                "AUTHORIZATION:Bearer agent-canary-1",
                "authorization:   agent-canary-2  ",
            ],
        ),
        (
            "proxy-authorization",
            &["Proxy-Authorization: Basic agent-canary-1"],
        ),
        (
            "connection names authorization (hop-by-hop trick)",
            &[
                "Connection: authorization, proxy-authorization",
                "Authorization: Bearer agent-canary-1",
            ],
        ),
        (
            "empty authorization",
            &["Authorization:", "Proxy-Authorization: agent-canary-1"],
        ),
        (
            "comma-joined values",
            &["Authorization: Bearer agent-canary-1, Basic agent-canary-2"],
        ),
    ];
    for (i, (name, extra)) in cases.iter().enumerate() {
        let head: String = extra.iter().map(|h| format!("{h}\r\n")).collect();
        // Inside the tunnel.
        let tunnel = connect_tunnel(sk.forward, "api.test.local:443").expect("CONNECT");
        let mut tls = tls_handshake(tunnel, API, Trust::Ca(sk.ca_pem())).expect("TLS");
        let req = format!(
            "GET /echo/exfil-{i} HTTP/1.1\r\nHost: api.test.local\r\n{head}Connection: close\r\n\r\n"
        );
        tls.write_all(req.as_bytes()).unwrap();
        let resp = read_response(&mut tls, false, false).expect("response");
        assert_eq!(resp.status, 200, "{name} (tunnel): {}", resp.body_str());
        // Plain HTTP.
        let req = format!(
            "GET http://plain.test.local/echo/exfil-{i} HTTP/1.1\r\nHost: plain.test.local\r\n{head}Connection: close\r\n\r\n"
        );
        let resp = raw_request(sk.forward, req.as_bytes()).expect("response");
        assert_eq!(resp.status, 200, "{name} (plain): {}", resp.body_str());
    }
    // The same over HTTP/2 (header names must be lower-case there).
    let h2_cases = vec![
        H2Case::get(
            "h2 bearer",
            API,
            "/echo/exfil-h2-0",
            &[("authorization", "Bearer agent-canary-1")],
        ),
        H2Case::get(
            "h2 two authorizations",
            API,
            "/echo/exfil-h2-1",
            &[
                ("authorization", "Bearer agent-canary-1"),
                ("authorization", "Bearer agent-canary-2"),
            ],
        ),
        H2Case::get(
            "h2 proxy-authorization",
            API,
            "/echo/exfil-h2-2",
            &[("proxy-authorization", "Basic agent-canary-1")],
        ),
    ];
    for r in h2_raw(&sk, &h2_cases) {
        assert_eq!(r.status, Some(200), "{}: {r:?}", r.name);
    }
    let seen: Vec<Recorded> = env
        .upstream
        .requests()
        .into_iter()
        .chain(env.upstream_http.requests())
        .collect();
    assert_eq!(seen.len(), cases.len() * 2 + h2_cases.len(), "{seen:#?}");
    for r in &seen {
        let auths = r.header_all("authorization");
        assert_eq!(
            auths.len(),
            1,
            "{}: one Authorization: {:?}",
            r.path,
            r.headers
        );
        assert_local_jwt(r.bearer().expect("bearer"), "demo-api");
        assert_eq!(r.header("proxy-authorization"), None, "{}", r.path);
        for (k, v) in &r.headers {
            assert!(
                !v.contains("agent-canary"),
                "{}: the agent's value reached the upstream in {k}: {v}",
                r.path
            );
        }
    }
}

fn reflect_config() -> String {
    base_config(
        &[
            ("basic.test.local:443", "{upstream}"),
            ("query.test.local:443", "{upstream}"),
        ],
        r#"  - name: basic
    hosts: [basic.test.local]
    methods: [GET]
    credential: demo
    inject: { basic: { username: x-access-token } }
    allow_private: true
  - name: query
    hosts: [query.test.local]
    methods: [GET]
    credential: demo
    inject: { query: api_key }
    allow_private: true
"#,
        "",
    )
}

/// The secrets the upstream received on its last request to `path_prefix`: the bearer or Basic
/// token, and the whole Authorization value (which is what a reflector echoes).
fn received_secrets(env: &Env, http: bool, path_prefix: &str) -> Vec<String> {
    let up = if http {
        &env.upstream_http
    } else {
        &env.upstream
    };
    let r = up
        .requests_to(path_prefix)
        .pop()
        .unwrap_or_else(|| panic!("nothing reached the upstream at {path_prefix}"));
    let mut secrets = Vec::new();
    if let Some(auth) = r.header("authorization") {
        secrets.push(auth.to_string());
        if let Some(token) = auth.strip_prefix("Bearer ") {
            secrets.push(token.to_string());
        }
        if let Some(b64) = auth.strip_prefix("Basic ") {
            secrets.push(b64.to_string());
            let plain = String::from_utf8(base64_decode(b64, false).unwrap()).unwrap();
            secrets.push(plain.split_once(':').unwrap().1.to_string());
        }
    }
    if let Some((_, q)) = r.path.split_once("api_key=") {
        let token = q.split('&').next().unwrap();
        secrets.push(token.to_string());
        secrets.push(upstream::percent_decode(token));
    }
    assert!(
        !secrets.is_empty(),
        "no credential reached {path_prefix}: {r:?}"
    );
    secrets
}

#[test]
fn credential_reflected_by_the_upstream_is_scrubbed() {
    let env = Env::new();
    let sk = env.sidekey(&reflect_config());
    let routes = sk.routes_url();
    let proxy = sk.proxy_url();
    // (case, curl arguments, plain-http upstream?, path prefix the upstream saw)
    let cases: Vec<(&str, Vec<String>, bool, &str)> = vec![
        (
            "reflect-auth h1 tunnel",
            vec![
                "--http1.1".into(),
                "https://api.test.local/reflect-auth".into(),
            ],
            false,
            "/reflect-auth",
        ),
        (
            "reflect-auth h2 tunnel",
            vec![
                "--http2".into(),
                "https://api.test.local/reflect-auth".into(),
            ],
            false,
            "/reflect-auth",
        ),
        (
            "echo (JSON with every header) h2 tunnel",
            vec!["--http2".into(), "https://api.test.local/echo/all".into()],
            false,
            "/echo/all",
        ),
        (
            "reflect-auth plain http",
            vec!["http://plain.test.local/reflect-auth".into()],
            true,
            "/reflect-auth",
        ),
        (
            "echo plain http",
            vec!["http://plain.test.local/echo/plain".into()],
            true,
            "/echo/plain",
        ),
        (
            "reflect-auth route listener",
            vec![format!("{routes}/r/api/reflect-auth")],
            false,
            "/reflect-auth",
        ),
        (
            "basic auth reflected",
            vec!["https://basic.test.local/reflect-auth".into()],
            false,
            "/reflect-auth",
        ),
        (
            "query credential echoed in the path",
            vec!["https://query.test.local/echo/q?x=1".into()],
            false,
            "/echo/q",
        ),
        (
            "reflected across chunk boundaries (7-byte frames)",
            vec!["https://api.test.local/reflect-split?size=7&interval_ms=5".into()],
            false,
            "/reflect-split",
        ),
        (
            "reflected across chunk boundaries (1-byte frames)",
            vec![
                "--http2".into(),
                "https://api.test.local/reflect-split?size=1&interval_ms=1".into(),
            ],
            false,
            "/reflect-split",
        ),
    ];
    for (name, args, http, prefix) in &cases {
        let mut all: Vec<&str> = Vec::new();
        if !args[args.len() - 1].starts_with(&routes) {
            all.extend(["-x", proxy.as_str(), "--cacert"]);
        }
        let ca = sk.ca_pem().display().to_string();
        if !all.is_empty() {
            all.push(ca.as_str());
        }
        all.extend(args.iter().map(String::as_str));
        let res = curl(&all);
        res.assert_status(200);
        assert!(res.header("x-test-upstream").is_some(), "{name}");
        let secrets = received_secrets(&env, *http, prefix);
        assert_absent(name, &curl_text(&res), &secrets);
        if prefix.starts_with("/echo") {
            // Still the upstream's JSON, of the length it announced.
            let body = res.json();
            assert!(body["headers"].is_array(), "{name}: {body}");
        }
    }
}

#[test]
fn redirects_to_other_hosts_carry_no_credential() {
    let env = Env::new();
    let evil = Upstream::http();
    let cfg = base_config(&[("evil.test.local:80", "{evil}")], "", "");
    let sk = env.sidekey_with(&cfg, &[("evil", evil.addr().to_string())]);
    // The agent follows (curl -L) redirects from an allowed route to: an unrouted host, a
    // downgrade to plain http of the same host (the route is https only), and a userinfo URL.
    let targets = [
        "http://evil.test.local/echo/landed",
        "http://api.test.local/echo/downgraded",
        "http://api.test.local@evil.test.local/echo/userinfo",
    ];
    for to in targets {
        let url = format!(
            "https://api.test.local/redirect?to={}&status=307",
            to.replace(':', "%3A")
                .replace('/', "%2F")
                .replace('@', "%40")
        );
        let res = curl_via(&sk, &["-L", "--max-redirs", "3", &url]);
        // The redirect reached the agent; what it then asked for was refused by sidekey.
        assert!(
            res.blocks.iter().any(|b| b.0 == 307),
            "{to}: the agent never saw the redirect: {res:#?}"
        );
        assert!(
            matches!(res.status, 400 | 403),
            "{to}: following the redirect was not refused: {res:#?}"
        );
        let code = res
            .header("x-sidekey-error")
            .unwrap_or_default()
            .to_string();
        assert!(
            ["host_not_allowed", "request_invalid", "target_mismatch"].contains(&code.as_str()),
            "{to}: code {code:?}"
        );
    }
    // sidekey has finished the six exchanges (three redirects, three refusals), and the
    // upstreams have read whatever they were sent.
    sk.wait_request_records(6);
    evil.wait_quiet();
    env.wait_quiet();
    assert!(evil.requests().is_empty(), "{:#?}", evil.requests());
    assert!(
        env.upstream_http.requests().is_empty(),
        "{:#?}",
        env.upstream_http.requests()
    );
    // sidekey never followed anything: the upstream saw the three redirects only.
    let paths: Vec<String> = env
        .upstream
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths.len(), 3, "{paths:?}");
    assert!(
        paths.iter().all(|p| p.starts_with("/redirect")),
        "{paths:?}"
    );
}

/// [`default_config`] plus `nocred`: https://nocred.test.local, GET, no credential.
fn coded_config(extra_resolve: &[(&str, &str)], extra_routes: &str) -> String {
    let mut resolve = vec![("nocred.test.local:443", "{upstream}")];
    resolve.extend_from_slice(extra_resolve);
    let routes = format!(
        r#"  - name: nocred
    hosts: [nocred.test.local]
    methods: [GET]
    allow_private: true
{extra_routes}"#
    );
    base_config(&resolve, &routes, "")
}

#[test]
fn a_compressed_reflection_is_decoded_and_masked() {
    let env = Env::new();
    let sk = env.sidekey(&coded_config(&[], ""));
    // (case, curl arguments, plain-http upstream?)
    let mut cases: Vec<(String, Vec<String>, bool)> = Vec::new();
    for coding in ["gzip", "x-gzip", "br", "deflate", "zstd", "gzip, br"] {
        let q = coding.replace(", ", "%2C%20");
        for version in ["--http1.1", "--http2"] {
            cases.push((
                format!("{coding} {version}"),
                vec![
                    version.into(),
                    format!("https://api.test.local/reflect-coded?coding={q}"),
                ],
                false,
            ));
        }
        cases.push((
            format!("{coding} plain http"),
            vec![format!("http://plain.test.local/reflect-coded?coding={q}")],
            true,
        ));
    }
    for (name, args, http) in &cases {
        // The agent asks for compression, as browsers and SDKs do.
        let mut all = vec!["-H", "Accept-Encoding: gzip, deflate, br, zstd"];
        all.extend(args.iter().map(String::as_str));
        let res = curl_via(&sk, &all);
        res.assert_status(200);
        assert!(res.header("x-test-upstream").is_some(), "{name}");
        let secrets = received_secrets(&env, *http, "/reflect-coded");
        assert_absent(name, &curl_text(&res), &secrets);
        // What an agent gets by undoing whatever coding the response still names.
        let mut plain = res.body.clone();
        if let Some(list) = res.header("content-encoding") {
            for coding in list.rsplit(',').map(str::trim) {
                plain = upstream::decode(if coding == "x-gzip" { "gzip" } else { coding }, &plain);
            }
        }
        assert_absent(name, &String::from_utf8_lossy(&plain), &secrets);
        // The agent got the decoded text, masked, with no coding left to undo.
        assert_eq!(res.header("content-encoding"), None, "{name}: {res:#?}");
        let body = res.body_str();
        assert!(
            body.starts_with("reflected: Bearer ***"),
            "{name}: not the decoded, masked reflection: {body:?}"
        );
        // The upstream was asked for no compression at all.
        let up = if *http {
            &env.upstream_http
        } else {
            &env.upstream
        };
        let seen = up.requests_to("/reflect-coded").pop().unwrap();
        assert_eq!(
            seen.header_all("accept-encoding"),
            ["identity"],
            "{name}: {:?}",
            seen.headers
        );
    }
}

#[test]
fn a_coding_sidekey_cannot_decode_is_refused_and_nothing_passes() {
    let env = Env::new();
    let sk = env.sidekey(&coded_config(&[], ""));
    // The upstream sends the reflection as plain text under these labels: a pass-through would
    // put the credential in front of the agent.
    for coding in [
        "compress",
        "x-made-up",
        "gzip, compress",
        "gzip,gzip,gzip,gzip,gzip",
    ] {
        let q = coding.replace(' ', "%20").replace(',', "%2C");
        for version in ["--http1.1", "--http2"] {
            let name = format!("{coding} {version}");
            let res = curl_via(
                &sk,
                &[
                    version,
                    "-H",
                    "Accept-Encoding: gzip",
                    &format!("https://api.test.local/reflect-coded?coding={q}"),
                ],
            );
            let body = res.expect_refusal(502, "upstream_encoding");
            assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("cannot decode") || m.contains("more than")),
                "{name}: {body}"
            );
            assert!(res.header("x-test-upstream").is_none(), "{name}");
            let secrets = received_secrets(&env, false, "/reflect-coded");
            assert_absent(&name, &curl_text(&res), &secrets);
        }
    }
    let records = sk.wait_audit(
        |r| r["code"] == "upstream_encoding",
        8,
        Duration::from_secs(10),
    );
    assert!(records.iter().all(|r| r["status"] == 502), "{records:?}");
}

/// A plain-HTTP upstream that reflects each request's Authorization under
/// `Transfer-Encoding: gzip, chunked` (a transfer coding hyper does not undo), and records the
/// request heads it got.
fn transfer_coding_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&heads);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let auth = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("authorization").then(|| v.trim())
                })
                .unwrap_or("")
                .to_string();
            seen.lock().unwrap().push(head);
            let coded =
                upstream::encode_blocking("gzip", format!("reflected: {auth}\n").as_bytes());
            let mut response = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\nx-test-upstream: te\r\n\r\n".to_vec();
            response.extend(format!("{:x}\r\n", coded.len()).as_bytes());
            response.extend(&coded);
            response.extend(b"\r\n0\r\n\r\n");
            let _ = stream.write_all(&response);
        }
    });
    (addr, heads)
}

#[test]
fn a_transfer_coding_other_than_chunked_is_decoded_and_masked_too() {
    let env = Env::new();
    let (te, heads) = transfer_coding_upstream();
    let route = r#"  - name: te
    hosts: [te.test.local]
    schemes: [http]
    methods: [GET]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
"#;
    let sk = env.sidekey_with(
        &coded_config(&[("te.test.local:80", "{te}")], route),
        &[("te", te.to_string())],
    );
    let res = curl_via(&sk, &["http://te.test.local/reflect"]);
    res.assert_status(200);
    assert_eq!(res.header("x-test-upstream"), Some("te"));
    let head = heads
        .lock()
        .unwrap()
        .pop()
        .expect("the upstream got the request");
    let auth = head
        .lines()
        .find_map(|l| l.strip_prefix("authorization: "))
        .expect("a credential was attached")
        .to_string();
    let token = auth.strip_prefix("Bearer ").unwrap().to_string();
    assert_absent("transfer coding", &curl_text(&res), &[auth, token]);
    assert!(
        res.body_str().starts_with("reflected: Bearer ***"),
        "{:?}",
        res.body_str()
    );
}

#[test]
fn a_compressed_event_stream_is_decoded_as_it_streams() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let tunnel = connect_tunnel(sk.forward, "api.test.local:443").expect("CONNECT");
    let mut tls = tls_handshake(tunnel, API, Trust::Ca(sk.ca_pem())).expect("TLS");
    tls.write_all(
        b"GET /sse-coded?coding=gzip&n=2&interval_ms=3000 HTTP/1.1\r\nHost: api.test.local\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut first_event = None;
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("reading the stream: {e}"),
        }
        let text = String::from_utf8_lossy(&got);
        if first_event.is_none() && text.contains("data: 0\n\n") {
            first_event = Some(started.elapsed());
        }
        if text.contains("data: 1\n\n") {
            break;
        }
    }
    let done = started.elapsed();
    let text = String::from_utf8_lossy(&got).to_string();
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{text}");
    assert!(!head.contains("content-encoding"), "decoded: {text}");
    let first = first_event.unwrap_or_else(|| panic!("event 0 never arrived decoded: {text:?}"));
    // The second event is sent 3 s after the first: the first came through on its own.
    assert!(
        done.saturating_sub(first) > Duration::from_millis(2000),
        "the first event arrived at {first:?}, with the second at {done:?}: buffered"
    );
}

#[test]
fn routes_without_a_credential_keep_the_agents_accept_encoding_and_the_coded_body() {
    let env = Env::new();
    let sk = env.sidekey(&coded_config(&[], ""));
    for coding in ["gzip", "br"] {
        let res = curl_via(
            &sk,
            &[
                "-H",
                "Accept-Encoding: gzip, br",
                "-H",
                "Authorization: Bearer agent-own-value",
                &format!("https://nocred.test.local/reflect-coded?coding={coding}"),
            ],
        );
        res.assert_status(200);
        assert_eq!(res.header("content-encoding"), Some(coding), "{res:#?}");
        // The body is the upstream's, still coded.
        let plain = upstream::decode(coding, &res.body);
        assert_eq!(
            String::from_utf8_lossy(&plain),
            "reflected: Bearer agent-own-value\n"
        );
        let seen = env.upstream.requests_to("/reflect-coded").pop().unwrap();
        assert_eq!(seen.header_all("accept-encoding"), ["gzip, br"], "{coding}");
    }
}
