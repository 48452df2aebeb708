//! Tests of the test fixtures themselves, without sidekey: the upstream servers answer real
//! clients (curl, Python, Node) the way the other tests rely on, and the harness's helpers
//! parse what they should. If these fail, the failures elsewhere say nothing about sidekey.

use std::time::Duration;

use crate::common::*;

fn resolve_arg(host: &str, up: &Upstream) -> String {
    format!("{host}:{}:127.0.0.1", up.addr().port())
}

#[test]
fn https_upstream_echoes_over_http1_and_h2_with_sni() {
    let env = Env::new();
    let url = format!(
        "https://api.test.local:{}/echo/a?b=1",
        env.upstream.addr().port()
    );
    let ca = env.ca.pem_path().display().to_string();
    let res = curl(&[
        "--resolve",
        &resolve_arg(API, &env.upstream),
        "--cacert",
        &ca,
        "--http1.1",
        "-H",
        "X-Probe: one",
        &url,
    ]);
    res.assert_status(200);
    assert_eq!(res.header("x-test-upstream"), Some("https"));
    let echo = res.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/echo/a?b=1");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["sni"], API);
    assert!(echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h[0] == "x-probe" && h[1] == "one"));

    let res = curl(&[
        "--resolve",
        &resolve_arg(API, &env.upstream),
        "--cacert",
        &ca,
        "--http2",
        &url,
    ]);
    res.assert_status(200);
    assert_eq!(res.http_version, "2");
    assert_eq!(res.json()["version"], "HTTP/2.0");

    // HEAD and 204 carry no body (an HTTP/2 client resets the stream otherwise).
    let head = curl(&[
        "--resolve",
        &resolve_arg(API, &env.upstream),
        "--cacert",
        &ca,
        "--http2",
        "-I",
        &url,
    ]);
    head.assert_status(200);
    let url204 = url.replace("/echo/a?b=1", "/status/204");
    curl(&[
        "--resolve",
        &resolve_arg(API, &env.upstream),
        "--cacert",
        &ca,
        "--http2",
        &url204,
    ])
    .assert_status(204);

    let reqs = env.upstream.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0].sni.as_deref(), Some(API));
    assert_eq!(reqs[0].header("x-probe"), Some("one"));
    assert_eq!(reqs[1].version, "HTTP/2.0");
    assert_eq!(
        reqs[1].authority.as_deref(),
        Some(format!("api.test.local:{}", env.upstream.addr().port()).as_str())
    );
}

#[test]
fn https_upstream_is_not_trusted_without_its_ca() {
    let env = Env::new();
    let other_ca = TestCa::new("unrelated CA");
    let url = format!(
        "https://api.test.local:{}/echo/",
        env.upstream.addr().port()
    );
    let res = curl(&[
        "--resolve",
        &resolve_arg(API, &env.upstream),
        "--cacert",
        &other_ca.pem_path().display().to_string(),
        &url,
    ]);
    assert_eq!(res.exit, 60, "curl should reject the certificate: {res:#?}");
    assert!(env.upstream.requests().is_empty());
    assert!(env.upstream.tls_failures() >= 1);
}

#[test]
fn plain_upstream_redirect_status_and_reflect() {
    let env = Env::new();
    let base = env.upstream_http.base_url();
    let res = curl(&[&format!(
        "{base}/redirect?to=https%3A%2F%2Fother.test.local%2Fx&status=307"
    )]);
    res.assert_status(307);
    assert_eq!(res.header("location"), Some("https://other.test.local/x"));

    curl(&[&format!("{base}/status/418")]).assert_status(418);

    let res = curl(&[
        "-H",
        "Authorization: Bearer abc",
        &format!("{base}/reflect-auth"),
    ]);
    res.assert_status(200);
    assert_eq!(res.body_str(), "Bearer abc");
    assert_eq!(res.header("x-reflected-auth"), Some("Bearer abc"));

    let res = curl(&[&format!("{base}/bytes/12345")]);
    res.assert_status(200);
    assert_eq!(res.body.len(), 12345);

    let res = curl(&[
        "-X",
        "POST",
        "--data-binary",
        "hello",
        &format!("{base}/echo/post"),
    ]);
    assert_eq!(res.json()["body_len"], 5);
    assert_eq!(env.upstream_http.requests().len(), 5);
    assert_eq!(env.upstream_http.requests()[0].sni, None);
}

#[test]
fn sse_events_are_spread_over_time() {
    let env = Env::new();
    let url = format!("{}/sse?n=4&interval_ms=300", env.upstream_http.base_url());
    let out = curl_stream(&[&url]);
    assert_eq!(out.exit, 0, "{}", out.stderr);
    let data: Vec<_> = out
        .lines
        .iter()
        .filter(|(_, l)| l.starts_with("data:"))
        .collect();
    assert_eq!(
        data.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>(),
        ["data: 0", "data: 1", "data: 2", "data: 3"]
    );
    let spread = data[3].0 - data[0].0;
    assert!(
        spread >= Duration::from_millis(600),
        "events arrived {spread:?} apart: {data:?}"
    );
}

#[test]
fn python_and_node_clients_reach_the_upstream_directly() {
    let env = Env::new();
    let url = format!("https://127.0.0.1:{}/echo/py", env.upstream.addr().port());
    for lib in ["requests", "httpx"] {
        let mut req = Req::get(&url).header("X-Lib", lib);
        req.ca = Some(env.ca.pem_path().to_path_buf());
        let res = python(lib, &req);
        res.assert_status(200);
        assert_eq!(res.json()["path"], "/echo/py");
    }
    let mut req = Req::get(&url).http2();
    req.ca = Some(env.ca.pem_path().to_path_buf());
    let res = python("httpx", &req);
    res.assert_status(200);
    assert_eq!(res.http_version.as_deref(), Some("HTTP/2"));

    let mut req = Req::get(&url);
    req.ca = Some(env.ca.pem_path().to_path_buf());
    let res = node(&req);
    res.assert_status(200);
    assert_eq!(res.json()["path"], "/echo/py");

    // Without the CA, each client refuses the certificate.
    let res = python("requests", &Req::get(&url));
    assert!(
        res.error.as_deref().unwrap_or("").contains("SSL"),
        "{res:#?}"
    );
    let res = node(&Req::get(&url));
    assert!(res.error.is_some(), "{res:#?}");
    assert_eq!(env.upstream.requests().len(), 4);
}

#[test]
fn python_stream_mode_timestamps_chunks() {
    let env = Env::new();
    let url = format!("{}/sse?n=3&interval_ms=400", env.upstream_http.base_url());
    for lib in ["requests", "httpx"] {
        let res = python(lib, &Req::get(&url).stream());
        res.assert_status(200);
        assert_eq!(res.body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
        let first = res.chunks.first().expect("chunks").0;
        assert!(
            res.t_end - first >= 0.6,
            "{lib}: first chunk at {first}, end at {}",
            res.t_end
        );
    }
}

#[test]
fn raw_client_reads_chunked_and_sized_responses() {
    let env = Env::new();
    let addr = env.upstream_http.addr();
    let r = raw_request(
        addr,
        b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!((r.status, r.body.len()), (200, 10));
    let r = raw_request(
        addr,
        b"GET /sse?n=2&interval_ms=10 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "data: 0\n\ndata: 1\n\n");
    let (status, body) = http_get(addr, "/status/404").unwrap();
    assert_eq!((status, body.as_str()), (404, "status 404\n"));
}

#[test]
fn raw_tls_client_checks_the_certificate_name() {
    let env = Env::new();
    let tcp = connect(env.upstream.addr()).unwrap();
    let mut tls = tls_handshake(tcp, API, Trust::Ca(env.ca.pem_path())).expect("handshake");
    use std::io::Write;
    tls.write_all(b"GET /echo/tls HTTP/1.1\r\nHost: api.test.local\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_response(&mut tls, false, false).unwrap();
    assert_eq!(r.status, 200);
    let tcp = connect(env.upstream.addr()).unwrap();
    assert!(tls_handshake(tcp, "api.wrong.example", Trust::Ca(env.ca.pem_path())).is_err());
    let tcp = connect(env.upstream.addr()).unwrap();
    assert!(tls_handshake(tcp, "api.wrong.example", Trust::Any).is_ok());
}

#[test]
fn helpers_decode_base64_and_jwt_and_strip_yaml_keys() {
    assert_eq!(base64_decode("aGVsbG8", true).unwrap(), b"hello");
    assert_eq!(base64_decode("aGk/Pz8-", false), None);
    assert_eq!(
        base64_encode(b"x-access-token:abc"),
        "eC1hY2Nlc3MtdG9rZW46YWJj"
    );
    assert_eq!(base64_decode(&base64_encode(b"ab"), false).unwrap(), b"ab");
    let (h, p) = decode_jwt("eyJhbGciOiJFZERTQSJ9.eyJhdWQiOiJ4In0.c2ln");
    assert_eq!(
        (h["alg"].as_str(), p["aud"].as_str()),
        (Some("EdDSA"), Some("x"))
    );

    let yaml =
        "listen:\n  forward: 1\nca: { cert_out: x }\n# c\nroutes:\n  - name: a\nunmatched: deny\n";
    assert_eq!(
        crate::common::sidekey::strip_top_level_keys(yaml, &["listen", "ca"]),
        "# c\nroutes:\n  - name: a\nunmatched: deny\n"
    );
    assert_eq!(upstream::percent_decode("a%2Fb+c%zz"), "a/b c%zz");
}

#[test]
fn jwt_verifier_accepts_good_and_rejects_tampered_signatures() {
    // RFC 8037 A.4: an Ed25519-signed JWS and its public key (no kid on either side).
    let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    let signed = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
    let sig =
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    let v = verify_jwt(jwks, &format!("{signed}.{sig}"));
    assert_eq!(v["valid"], true, "{v}");
    // One flipped signature character.
    let v = verify_jwt(jwks, &format!("{signed}.{}A", &sig[..sig.len() - 1]));
    assert_eq!(v["valid"], false, "{v}");
    let v = verify_jwt(
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"other","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
        &format!("{signed}.{sig}"),
    );
    assert_eq!(v["valid"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no key"), "{v}");
}
