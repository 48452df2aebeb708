//! Agents' HTTP libraries through sidekey, configured the way an agent's environment does it:
//! Python requests and httpx (HTTPS_PROXY + REQUESTS_CA_BUNDLE / SSL_CERT_FILE) and Node's
//! undici (ProxyAgent). Each gets the credential injected and sees refusals it can act on.

use crate::common::*;

fn via(sk: &Sidekey, req: Req) -> Req {
    req.via(&sk.proxy_url(), sk.ca_pem())
}

#[test]
fn python_requests_gets_injection_through_the_tunnel() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let req = via(
        &sk,
        Req::get("https://api.test.local/echo/requests").header("Authorization", "Bearer sk-dummy"),
    );
    let res = python("requests", &req);
    res.assert_status(200);
    assert_eq!(res.json()["path"], "/echo/requests");
    let seen = env.upstream.only_request();
    assert_eq!(seen.header_all("authorization").len(), 1);
    assert_local_jwt(seen.bearer().expect("bearer"), "demo-api");
    assert_eq!(
        sk.only_request_record()["credential_id"],
        decode_jwt(seen.bearer().unwrap()).1["jti"]
    );
}

#[test]
fn python_requests_plain_http_via_http_proxy() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let req = via(
        &sk,
        Req::new("POST", "http://plain.test.local/echo/requests-plain").body("hello"),
    );
    python("requests", &req).assert_status(200);
    let seen = env.upstream_http.only_request();
    assert_eq!(seen.body_len, 5);
    assert_local_jwt(seen.bearer().expect("bearer"), "demo-api");
}

#[test]
fn httpx_http1_and_http2_get_injection() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = python(
        "httpx",
        &via(&sk, Req::get("https://api.test.local/echo/httpx1")),
    );
    res.assert_status(200);
    assert_eq!(res.http_version.as_deref(), Some("HTTP/1.1"));
    let res = python(
        "httpx",
        &via(
            &sk,
            Req::get("https://api.test.local/echo/httpx2")
                .header("Authorization", "Bearer sk-dummy")
                .http2(),
        ),
    );
    res.assert_status(200);
    assert_eq!(
        res.http_version.as_deref(),
        Some("HTTP/2"),
        "httpx negotiated h2 inside the tunnel"
    );
    let seen = env.upstream.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.header_all("authorization").len(), 1, "{:?}", r.headers);
        assert_local_jwt(r.bearer().expect("bearer"), "demo-api");
    }
}

#[test]
fn node_undici_proxy_agent_gets_injection() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = node(&via(
        &sk,
        Req::new("POST", "https://api.test.local/echo/undici")
            .header("Authorization", "Bearer sk-dummy")
            .header("Content-Type", "application/json")
            .body(r#"{"hello":"world"}"#),
    ));
    res.assert_status(200);
    assert_eq!(res.json()["method"], "POST");
    let seen = env.upstream.only_request();
    assert_eq!(seen.body_len, 17);
    assert_eq!(seen.header_all("authorization").len(), 1);
    assert_local_jwt(seen.bearer().expect("bearer"), "demo-api");
}

#[test]
fn httpx_streams_sse_as_produced() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    for http2 in [false, true] {
        let mut req = via(
            &sk,
            Req::get("https://api.test.local/sse?n=4&interval_ms=400").stream(),
        );
        req.http2 = http2;
        let res = python("httpx", &req);
        res.assert_status(200);
        assert_eq!(res.body, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
        let first = res.chunks.first().expect("chunks").0;
        assert!(
            res.t_end - first >= 0.6,
            "http2={http2}: first chunk at {first:.3}s, stream ended at {:.3}s: buffered? {:?}",
            res.t_end,
            res.chunks
        );
    }
}

#[test]
fn node_streams_sse_as_produced() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = node(&via(
        &sk,
        Req::get("https://api.test.local/sse?n=4&interval_ms=400").stream(),
    ));
    res.assert_status(200);
    assert_eq!(res.body, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
    let first = res.chunks.first().expect("chunks").0;
    assert!(
        res.t_end - first >= 0.6,
        "first chunk at {first:.3}s, end {:.3}s",
        res.t_end
    );
}

#[test]
fn clients_see_refusals() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    // A refused CONNECT surfaces as the library's proxy error, with the status.
    for lib in ["requests", "httpx"] {
        let res = python(lib, &via(&sk, Req::get("https://evil.test.local/")));
        let err = res.error.clone().unwrap_or_default();
        assert!(err.contains("403"), "{lib}: {res:#?}");
    }
    let res = node(&via(&sk, Req::get("https://evil.test.local/")));
    assert!(
        res.error.as_deref().unwrap_or("").contains("403"),
        "{res:#?}"
    );

    // Inside an allowed tunnel the refusal is an HTTP response the agent can read.
    for lib in ["requests", "httpx"] {
        let res = python(
            lib,
            &via(&sk, Req::new("DELETE", "https://api.test.local/echo/x")),
        );
        res.assert_status(403);
        assert_eq!(res.header("x-sidekey-error"), Some("method_not_allowed"));
        assert_eq!(res.json()["error"], "method_not_allowed");
    }
    let res = node(&via(
        &sk,
        Req::new("DELETE", "https://api.test.local/echo/x"),
    ));
    res.assert_status(403);
    assert_eq!(res.header("x-sidekey-error"), Some("method_not_allowed"));
    // sidekey has finished the six refusals; the upstream has read whatever it was sent.
    sk.wait_request_records(6);
    env.upstream.wait_quiet();
    assert!(env.upstream.requests().is_empty());
}
