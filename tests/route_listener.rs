//! The route listener: `http://<routes>/r/<route>/<path>` forwarded over HTTPS to the route's
//! host, for clients that cannot use a proxy or trust a CA.

use std::time::Duration;

use crate::common::*;

#[test]
fn route_listener_forwards_over_https_with_injection() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = curl(&[
        "-H",
        "Authorization: Bearer agent-dummy",
        "-X",
        "POST",
        "--data-binary",
        "payload",
        &format!("{}/r/api/echo/via-route?x=1", sk.routes_url()),
    ]);
    res.assert_status(200);
    assert_eq!(res.header("x-test-upstream"), Some("https"));
    let seen = env.upstream.only_request();
    assert_eq!(seen.sni.as_deref(), Some(API), "TLS to the route's host");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/echo/via-route?x=1");
    assert_eq!(seen.body_len, "payload".len());
    let authority = seen.authority.as_deref().unwrap_or("");
    assert!(
        authority == API || authority == "api.test.local:443",
        "authority {authority:?}"
    );
    assert_eq!(seen.header_all("authorization").len(), 1);
    assert_local_jwt(seen.bearer().expect("bearer"), "demo-api");
}

#[test]
fn route_listener_maps_the_route_root() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    curl(&[&format!("{}/r/api/echo", sk.routes_url())]).assert_status(200);
    curl(&[&format!("{}/r/api/status/404", sk.routes_url())]).assert_status(404);
    let paths: Vec<String> = env
        .upstream
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, ["/echo", "/status/404"]);
}

#[test]
fn route_listener_passes_redirects_back() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = curl(&[&format!(
        "{}/r/api/redirect?to=https%3A%2F%2Fevil.test.local%2Fsteal&status=301",
        sk.routes_url()
    )]);
    res.assert_status(301);
    assert_eq!(
        res.header("location"),
        Some("https://evil.test.local/steal")
    );
    // sidekey has finished the exchange (and followed nothing); the upstream has read whatever
    // it was sent.
    sk.wait_request_records(1);
    env.upstream.wait_quiet();
    assert_eq!(env.upstream.requests().len(), 1);
}

#[test]
fn route_listener_streams_sse() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let out = curl_stream(&[&format!(
        "{}/r/api/sse?n=4&interval_ms=300",
        sk.routes_url()
    )]);
    assert_eq!(out.exit, 0, "{}", out.stderr);
    let data: Vec<_> = out
        .lines
        .iter()
        .filter(|(_, l)| l.starts_with("data:"))
        .collect();
    assert_eq!(data.len(), 4, "{:?}", out.lines);
    let spread = data[3].0 - data[0].0;
    assert!(
        spread >= Duration::from_millis(450),
        "events bunched within {spread:?}"
    );
}

#[test]
fn route_listener_with_python_and_node_clients() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let url = format!("{}/r/api/echo/lib", sk.routes_url());
    for lib in ["requests", "httpx"] {
        let res = python(lib, &Req::get(&url).header("Authorization", "Bearer dummy"));
        res.assert_status(200);
        assert_eq!(res.json()["path"], "/echo/lib");
    }
    node(&Req::get(&url).header("Authorization", "Bearer dummy")).assert_status(200);
    let seen = env.upstream.requests();
    assert_eq!(seen.len(), 3);
    for r in seen {
        assert_eq!(r.header_all("authorization").len(), 1);
        assert_local_jwt(r.bearer().expect("bearer"), "demo-api");
    }
}
