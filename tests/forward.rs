//! The forward listener as an agent uses it with curl: CONNECT with TLS interception and
//! absolute-form plain HTTP, the credential attached on the way, responses passed back as the
//! upstream sent them (redirects not followed, SSE streamed).

use std::time::Duration;

use crate::common::*;

#[test]
fn connect_interception_injects_a_local_jwt_and_drops_agent_auth() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = curl_via(
        &sk,
        &[
            "-H",
            "Authorization: Bearer sk-agent-dummy-key",
            "-H",
            "Proxy-Authorization: Basic YWdlbnQ6aHVudGVyMg==",
            // And credentials for the proxy itself, on the CONNECT.
            "--proxy-user",
            "proxyuser:proxypass",
            "https://api.test.local/echo/hello?x=1",
        ],
    );
    // curl trusted only sidekey's CA: the tunnel was intercepted.
    res.assert_status(200);
    assert_eq!(res.connect_status, 200);
    assert_eq!(
        res.header("x-test-upstream"),
        Some("https"),
        "answered by the test upstream"
    );

    let seen = env.upstream.only_request();
    assert_eq!(seen.sni.as_deref(), Some(API));
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/echo/hello?x=1");
    let authority = seen.authority.as_deref().unwrap_or("");
    assert!(
        authority == API || authority == "api.test.local:443",
        "upstream saw authority {authority:?}"
    );
    let auths = seen.header_all("authorization");
    assert_eq!(
        auths.len(),
        1,
        "exactly one Authorization upstream: {auths:?}"
    );
    assert!(
        !auths[0].contains("sk-agent-dummy-key"),
        "agent's key leaked: {auths:?}"
    );
    let token = seen.bearer().expect("Bearer token upstream");
    assert_local_jwt(token, "demo-api");
    assert_eq!(
        seen.header("proxy-authorization"),
        None,
        "Proxy-Authorization forwarded"
    );
    assert!(
        !seen
            .headers
            .iter()
            .any(|(_, v)| v.contains("YWdlbnQ6aHVudGVyMg")
                || v.contains("cHJveHl1c2VyOnByb3h5cGFzcw")),
        "agent's proxy credentials reached the upstream: {:?}",
        seen.headers
    );
}

#[test]
fn injected_jwt_verifies_against_the_admin_jwks() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    curl_via(&sk, &["https://api.test.local/echo/jwks"]).assert_status(200);
    let token = env
        .upstream
        .only_request()
        .bearer()
        .expect("token")
        .to_string();

    let (status, jwks) = http_get(sk.admin, "/.well-known/jwks.json").expect("GET jwks");
    assert_eq!(status, 200, "{jwks}");
    let doc: serde_json::Value = serde_json::from_str(&jwks).expect("JWKS is JSON");
    let keys = doc["keys"].as_array().expect("keys array");
    assert!(!keys.is_empty(), "{doc}");
    for k in keys {
        assert_eq!(k["kty"], "OKP", "{k}");
        assert_eq!(k["crv"], "Ed25519", "{k}");
        assert_eq!(k["alg"], "EdDSA", "{k}");
        assert_eq!(k["use"], "sig", "{k}");
        assert!(k["kid"].is_string() && k["x"].is_string(), "{k}");
        assert!(
            k.get("d").is_none(),
            "private key material in the JWKS: {k}"
        );
    }

    let v = verify_jwt(&jwks, &token);
    assert_eq!(v["valid"], true, "signature check against JWKS: {v}");
    assert_eq!(v["payload"]["aud"], "demo-api");

    // The same token with a different payload must not verify.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = decode_jwt(&token).1;
    claims["aud"] = "some-other-api".into();
    let forged_payload = base64_encode(claims.to_string().as_bytes())
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let v = verify_jwt(&jwks, &forged);
    assert_eq!(v["valid"], false, "forged token verified: {v}");
}

#[test]
fn admin_health_and_readiness() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    assert_eq!(http_get(sk.admin, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(sk.admin, "/readyz").unwrap().0, 200);
    // The admin listener is not a proxy.
    let r = raw_request(
        sk.admin,
        b"GET http://api.test.local/echo/x HTTP/1.1\r\nHost: api.test.local\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_ne!(
        r.status,
        200,
        "admin listener proxied a request: {}",
        r.body_str()
    );
    assert!(env.upstream.requests().is_empty());
}

#[test]
fn plain_http_absolute_form_is_forwarded_with_injection() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = curl(&[
        "-x",
        &sk.proxy_url(),
        "-H",
        "Authorization: Bearer agent-plain",
        "-H",
        "Proxy-Authorization: Basic YWdlbnQ6aHVudGVyMg==",
        "-X",
        "POST",
        "--data-binary",
        "plain body",
        "http://plain.test.local/echo/plain?q=1",
    ]);
    res.assert_status(200);
    assert_eq!(res.header("x-test-upstream"), Some("http"));
    assert!(
        env.upstream.requests().is_empty(),
        "went to the HTTPS upstream"
    );
    let seen = env.upstream_http.only_request();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/echo/plain?q=1", "origin-form path upstream");
    assert_eq!(seen.body_len, "plain body".len());
    assert_eq!(
        seen.header("host"),
        Some(PLAIN),
        "Host header kept as the agent's target"
    );
    assert_eq!(seen.header_all("authorization").len(), 1);
    assert_local_jwt(seen.bearer().expect("bearer"), "demo-api");
    assert_eq!(seen.header("proxy-authorization"), None);
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let hop = [
        "-H",
        "Connection: X-Hop-Secret",
        "-H",
        "X-Hop-Secret: must-not-pass",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "Proxy-Connection: keep-alive",
        "-H",
        "X-End-To-End: kept",
    ];
    let mut args = vec!["--http1.1"];
    args.extend_from_slice(&hop);
    args.push("https://api.test.local/echo/hop");
    curl_via(&sk, &args).assert_status(200);

    let proxy = sk.proxy_url();
    let mut args = vec!["-x", proxy.as_str()];
    args.extend_from_slice(&hop);
    args.push("http://plain.test.local/echo/hop");
    curl(&args).assert_status(200);

    let mut seen = env.upstream.requests();
    seen.extend(env.upstream_http.requests());
    assert_eq!(seen.len(), 2);
    for r in seen {
        for h in ["x-hop-secret", "keep-alive", "proxy-connection"] {
            assert_eq!(
                r.header(h),
                None,
                "{h} forwarded to {} upstream: {:?}",
                r.version,
                r.headers
            );
        }
        assert!(
            !r.header_all("connection")
                .iter()
                .any(|v| v.to_ascii_lowercase().contains("x-hop")),
            "Connection option forwarded: {:?}",
            r.headers
        );
        assert_eq!(r.header("x-end-to-end"), Some("kept"));
    }
}

fn inject_variants_config() -> String {
    base_config(
        &[
            ("basic.test.local:443", "{upstream}"),
            ("query.test.local:443", "{upstream}"),
            ("custom.test.local:443", "{upstream}"),
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
  - name: custom
    hosts: [custom.test.local]
    methods: [GET]
    credential: demo
    inject: { header: X-Api-Key, value: "{token}" }
    allow_private: true
"#,
        "",
    )
}

#[test]
fn basic_auth_injection_replaces_the_agents_authorization() {
    let env = Env::new();
    let sk = env.sidekey(&inject_variants_config());
    curl_via(
        &sk,
        &["-u", "agent:dummy", "https://basic.test.local/echo/basic"],
    )
    .assert_status(200);
    let seen = env.upstream.only_request();
    let auths = seen.header_all("authorization");
    assert_eq!(auths.len(), 1, "{auths:?}");
    let b64 = auths[0].strip_prefix("Basic ").expect("Basic scheme");
    let decoded = String::from_utf8(base64_decode(b64, false).expect("base64")).unwrap();
    let (user, token) = decoded.split_once(':').expect("user:token");
    assert_eq!(user, "x-access-token");
    assert_local_jwt(token, "demo-api");
}

#[test]
fn query_injection_replaces_the_agents_parameter() {
    let env = Env::new();
    let sk = env.sidekey(&inject_variants_config());
    curl_via(
        &sk,
        &["https://query.test.local/echo/q?api_key=agent-dummy&page=2"],
    )
    .assert_status(200);
    let seen = env.upstream.only_request();
    let (path, query) = seen.path.split_once('?').expect("query upstream");
    assert_eq!(path, "/echo/q");
    let keys: Vec<_> = query
        .split('&')
        .filter(|kv| kv.starts_with("api_key="))
        .collect();
    assert_eq!(keys.len(), 1, "one api_key parameter upstream: {query}");
    assert!(
        !query.contains("agent-dummy"),
        "agent's key reached upstream: {query}"
    );
    assert!(
        query.split('&').any(|kv| kv == "page=2"),
        "other parameters kept: {query}"
    );
    let token = upstream::percent_decode(keys[0].trim_start_matches("api_key="));
    assert_local_jwt(&token, "demo-api");
}

#[test]
fn custom_header_injection_replaces_the_agents_value() {
    let env = Env::new();
    let sk = env.sidekey(&inject_variants_config());
    curl_via(
        &sk,
        &[
            "-H",
            "X-Api-Key: agent-dummy",
            "https://custom.test.local/echo/c",
        ],
    )
    .assert_status(200);
    let seen = env.upstream.only_request();
    let keys = seen.header_all("x-api-key");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_local_jwt(keys[0], "demo-api");
}

#[test]
fn http2_inside_the_tunnel() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = curl_via(&sk, &["--http2", "https://api.test.local/echo/h2"]);
    res.assert_status(200);
    assert_eq!(
        res.http_version, "2",
        "curl negotiated HTTP/2 with sidekey: {res:#?}"
    );
    let res = curl_via(&sk, &["--http1.1", "https://api.test.local/echo/h1"]);
    res.assert_status(200);
    assert_eq!(res.http_version, "1.1");

    let seen = env.upstream.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_local_jwt(r.bearer().expect("bearer"), "demo-api");
    }
    assert_eq!(seen[0].path, "/echo/h2");
}

#[test]
fn requests_sharing_a_tunnel_are_each_checked_and_injected() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    // Three requests on one connection (curl reuses it for URLs on the same host), over HTTP/2
    // streams and over HTTP/1.1 keep-alive.
    for version in ["--http2", "--http1.1"] {
        let res = curl_via(
            &sk,
            &[
                version,
                "-H",
                "Authorization: Bearer agent",
                "https://api.test.local/echo/s1",
                "https://api.test.local/echo/s2",
                "https://api.test.local/status/204",
            ],
        );
        assert_eq!(res.exit, 0, "{version}: {}", res.stderr);
        assert_eq!(
            res.write_out["num_connects"], 0,
            "{version}: the last transfer reused the connection"
        );
    }
    let seen = env.upstream.requests();
    assert_eq!(
        seen.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        [
            "/echo/s1",
            "/echo/s2",
            "/status/204",
            "/echo/s1",
            "/echo/s2",
            "/status/204"
        ]
    );
    for r in &seen {
        assert_eq!(r.header_all("authorization").len(), 1);
        assert_local_jwt(r.bearer().expect("bearer"), "demo-api");
    }
    sk.expect_request_records(6);
}

#[test]
fn chunked_uploads_are_forwarded() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let file = sk.dir().join("chunked.bin");
    std::fs::write(&file, vec![b'c'; 100_000]).unwrap();
    let data = format!("@{}", file.display());
    // Labelled as what it is: curl calls any --data-binary a url-encoded form, and a form body
    // that large is refused on routes that do not allow every method (tests/adversarial_method.rs).
    let chunked = [
        "-H",
        "Content-Type: application/octet-stream",
        "-H",
        "Transfer-Encoding: chunked",
        "-X",
        "POST",
        "--data-binary",
        data.as_str(),
    ];
    let mut args = vec!["--http1.1"];
    args.extend_from_slice(&chunked);
    args.push("https://api.test.local/echo/chunked");
    curl_via(&sk, &args).assert_status(200);
    let proxy = sk.proxy_url();
    let mut args = vec!["-x", proxy.as_str()];
    args.extend_from_slice(&chunked);
    args.push("http://plain.test.local/echo/chunked");
    curl(&args).assert_status(200);
    let mut seen = env.upstream.requests();
    seen.extend(env.upstream_http.requests());
    assert_eq!(seen.len(), 2);
    for r in seen {
        assert_eq!(r.body_len, 100_000, "{r:?}");
    }
}

#[test]
fn redirects_are_passed_back_not_followed() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = curl_via(
        &sk,
        &["https://api.test.local/redirect?to=https%3A%2F%2Fother.test.local%2Fecho%2Flanded&status=302"],
    );
    res.assert_status(302);
    assert_eq!(
        res.header("location"),
        Some("https://other.test.local/echo/landed")
    );
    let res = curl_via(
        &sk,
        &["https://api.test.local/redirect?to=%2Fecho%2Frelative&status=307"],
    );
    res.assert_status(307);
    assert_eq!(res.header("location"), Some("/echo/relative"));
    let res = curl(&[
        "-x",
        &sk.proxy_url(),
        "http://plain.test.local/redirect?to=http%3A%2F%2Fplain.test.local%2Fecho%2Flanded",
    ]);
    res.assert_status(302);

    // sidekey has finished the three exchanges (and followed nothing); the upstreams have read
    // whatever they were sent.
    sk.wait_request_records(3);
    env.wait_quiet();
    let paths: Vec<String> = env
        .upstream
        .requests()
        .into_iter()
        .chain(env.upstream_http.requests())
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths.len(),
        3,
        "no request besides the three redirects: {paths:?}"
    );
    assert!(
        paths.iter().all(|p| p.starts_with("/redirect")),
        "{paths:?}"
    );
}

#[test]
fn sse_events_stream_through_the_tunnel_as_produced() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let out = curl_stream(&[
        "-x",
        &sk.proxy_url(),
        "--cacert",
        &sk.ca_pem().display().to_string(),
        "https://api.test.local/sse?n=5&interval_ms=300",
    ]);
    assert_sse_streamed(&out, 5, Duration::from_millis(300));
}

#[test]
fn sse_events_stream_through_plain_http_as_produced() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let out = curl_stream(&[
        "-x",
        &sk.proxy_url(),
        "http://plain.test.local/sse?n=5&interval_ms=300",
    ]);
    assert_sse_streamed(&out, 5, Duration::from_millis(300));
}

#[track_caller]
fn assert_sse_streamed(out: &StreamedLines, n: usize, interval: Duration) {
    assert_eq!(out.exit, 0, "curl: {}", out.stderr);
    let data: Vec<&(Duration, String)> = out
        .lines
        .iter()
        .filter(|(_, l)| l.starts_with("data:"))
        .collect();
    let expected: Vec<String> = (0..n).map(|i| format!("data: {i}")).collect();
    assert_eq!(
        data.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(),
        expected
    );
    // Produced over (n-1) * interval; a buffering proxy delivers them all at once at the end.
    let produced_over = interval * (n as u32 - 1);
    let spread = data[n - 1].0 - data[0].0;
    assert!(
        spread >= produced_over / 2,
        "events arrived within {spread:?}, produced over {produced_over:?}: {data:?}"
    );
    assert!(
        out.end - data[0].0 >= produced_over / 2,
        "first event arrived only {:?} before the stream ended",
        out.end - data[0].0
    );
}

#[test]
fn upstream_statuses_and_bodies_pass_through() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    for code in [201u16, 404, 500, 503] {
        let res = curl_via(&sk, &[&format!("https://api.test.local/status/{code}")]);
        res.assert_status(code);
        assert_eq!(res.body_str(), format!("status {code}\n"));
        assert_eq!(
            res.header("x-sidekey-error"),
            None,
            "upstream {code} is not a sidekey error"
        );
    }
    let res = curl_via(&sk, &["https://api.test.local/bytes/300000"]);
    res.assert_status(200);
    assert_eq!(res.body.len(), 300_000);
    assert!(res.body.iter().all(|&b| b == b'x'));
    let res = curl_via(&sk, &["-I", "https://api.test.local/echo/head"]);
    res.assert_status(200);
}

#[test]
fn large_uploads_and_downloads_pass_intact() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let file = sk.dir().join("upload.bin");
    std::fs::write(&file, vec![b'u'; 5 << 20]).unwrap();
    let data = format!("@{}", file.display());
    // (Not a url-encoded form, as curl would label it by default: see chunked_uploads_are_forwarded.)
    let binary = "Content-Type: application/octet-stream";
    for version in ["--http1.1", "--http2"] {
        let res = curl_via(
            &sk,
            &[
                version,
                "-H",
                binary,
                "-X",
                "POST",
                "--data-binary",
                &data,
                "https://api.test.local/echo/upload",
            ],
        );
        res.assert_status(200);
        assert_eq!(res.json()["body_len"], 5 << 20, "{version}");
    }
    let res = curl(&[
        "-x",
        &sk.proxy_url(),
        "-H",
        binary,
        "-X",
        "POST",
        "--data-binary",
        &data,
        "http://plain.test.local/echo/upload",
    ]);
    res.assert_status(200);
    assert_eq!(res.json()["body_len"], 5 << 20);
    let res = curl_via(&sk, &["--http2", "https://api.test.local/bytes/8000000"]);
    res.assert_status(200);
    assert_eq!(res.body.len(), 8_000_000);
}

/// HTTP/1.1 connections go back to the pool when their response has been read to its end:
/// three concurrent streams need three connections, the requests after them reuse those; a
/// connection the upstream closed (`Connection: close`) is replaced, not reused. Over h2 (an
/// agent's HTTP/2 requests, curl's default inside a tunnel, to an HTTPS upstream that offers h2)
/// one connection carries every request, concurrent ones too.
#[test]
fn pooled_connections_come_back_after_their_response_and_h2_is_shared() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let proxy = sk.proxy_url();
    let streams: Vec<_> = (0..3)
        .map(|i| {
            let proxy = proxy.clone();
            std::thread::spawn(move || {
                curl(&[
                    "-x",
                    &proxy,
                    &format!("http://plain.test.local/sse?n=3&interval_ms=150&i={i}"),
                ])
            })
        })
        .collect();
    for s in streams {
        s.join().unwrap().assert_status(200);
    }
    assert_eq!(env.upstream_http.connections(), 3, "three at once");
    for i in 0..4 {
        curl(&[
            "-x",
            &proxy,
            &format!("http://plain.test.local/echo/after{i}"),
        ])
        .assert_status(200);
    }
    assert_eq!(env.upstream_http.connections(), 3, "the pooled ones reused");
    curl(&["-x", &proxy, "http://plain.test.local/close"]).assert_status(200);
    for i in 0..2 {
        curl(&[
            "-x",
            &proxy,
            &format!("http://plain.test.local/echo/closed{i}"),
        ])
        .assert_status(200);
    }
    assert_eq!(
        env.upstream_http.connections(),
        3,
        "the closed one is not reused; the others still are"
    );

    curl_via(&sk, &["https://api.test.local/echo/first"]).assert_status(200);
    let together: Vec<_> = (0..6)
        .map(|i| {
            let sk_proxy = proxy.clone();
            let ca = sk.ca_pem().display().to_string();
            std::thread::spawn(move || {
                curl(&[
                    "-x",
                    &sk_proxy,
                    "--cacert",
                    &ca,
                    &format!("https://api.test.local/sse?n=2&interval_ms=100&i={i}"),
                ])
            })
        })
        .collect();
    for t in together {
        t.join().unwrap().assert_status(200);
    }
    let h2: Vec<_> = env
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.version == "HTTP/2.0")
        .collect();
    assert_eq!(h2.len(), 7, "every request went upstream over h2");
    assert_eq!(env.upstream.connections(), 1, "one h2 connection for all");
}

/// Upstream, each request goes in the agent's own protocol, although the HTTPS upstream offers
/// h2: HTTP/1.1 inside an intercepted tunnel and on the route listener goes on HTTP/1.1 (one
/// pooled connection, reused, also after h2 requests), HTTP/2 inside a tunnel on h2 (one
/// connection of its own). The two never share a connection.
#[test]
fn upstream_requests_go_in_the_agents_protocol() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    for (flag, label, version) in [("--http1.1", "h1", "1.1"), ("--http2", "h2", "2")] {
        for i in 0..2 {
            let sent = curl_via(
                &sk,
                &[flag, &format!("https://api.test.local/echo/{label}-{i}")],
            );
            sent.assert_status(200);
            assert_eq!(sent.http_version, version, "the agent spoke {flag}");
        }
    }
    curl(&[&format!("{}/r/api/echo/h1-routes", sk.routes_url())]).assert_status(200);
    let seen: Vec<(String, String)> = env
        .upstream
        .requests()
        .into_iter()
        .map(|r| (r.path, r.version))
        .collect();
    let want: Vec<(String, String)> = [
        ("/echo/h1-0", "HTTP/1.1"),
        ("/echo/h1-1", "HTTP/1.1"),
        ("/echo/h2-0", "HTTP/2.0"),
        ("/echo/h2-1", "HTTP/2.0"),
        ("/echo/h1-routes", "HTTP/1.1"),
    ]
    .iter()
    .map(|(p, v)| (p.to_string(), v.to_string()))
    .collect();
    assert_eq!(seen, want, "each request upstream in its agent's protocol");
    assert_eq!(
        env.upstream.connections(),
        2,
        "one HTTP/1.1 connection for the three HTTP/1.1 requests, one h2 for the two HTTP/2"
    );
}

/// Upstream connections are pooled per host for reuse, up to `upstream.max_idle_per_host`.
#[test]
fn upstream_connections_are_reused_up_to_max_idle_per_host() {
    for (setting, want) in [("", 1), ("  max_idle_per_host: 0\n", 3)] {
        let env = Env::new();
        let yaml = default_config().replacen("upstream:\n", &format!("upstream:\n{setting}"), 1);
        let sk = env.sidekey(&yaml);
        for i in 0..3 {
            let res = curl(&[
                "-x",
                &sk.proxy_url(),
                &format!("http://plain.test.local/echo/pool{i}"),
            ]);
            res.assert_status(200);
        }
        assert_eq!(env.upstream_http.requests().len(), 3);
        assert_eq!(
            env.upstream_http.connections(),
            want,
            "upstream connections with {setting:?}"
        );
    }
}
