//! The request path phase by phase, in-process (see `common::inprocess`): sidekey's runtime
//! built from a config, exchanges driven with `http::Request`s, the forward listener served
//! over an in-memory pipe. Every session — an exchange, a refusal, a CONNECT that carried no
//! request — leaves exactly one audit record.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use sidekey_policy::{CanonicalHost, Identified, Scheme, Sni, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::inprocess::{read_until_quiet, InProcess};
use crate::common::{base_config, default_config, Env};

/// How long a raw exchange may stay silent before the test reads what it got (an upper bound:
/// every case here ends with sidekey closing the connection).
const QUIET: Duration = Duration::from_secs(5);

fn target(scheme: Scheme, host: &str, port: u16) -> Target {
    Target {
        scheme,
        host: CanonicalHost::parse(host).unwrap(),
        port,
    }
}

fn intercepted(host: &str) -> Identified {
    Identified::Intercepted {
        target: target(Scheme::Https, host, 443),
        sni: Sni::Agrees,
    }
}

fn status_of(raw: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(raw);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A record's `code`: the code, or null for none ("").
fn code_or_null(code: &str) -> Value {
    if code.is_empty() {
        Value::Null
    } else {
        code.into()
    }
}

/// A TLS client that trusts the certificates of `pem`.
fn tls_client(pem: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Asserts `fields` of an audit record.
#[track_caller]
fn assert_record(record: &Value, fields: &[(&str, Value)]) {
    for (name, want) in fields {
        assert_eq!(&record[*name], want, "`{name}` of {record}");
    }
}

#[test]
fn the_exchange_injects_the_route_credential_and_strips_what_the_agent_sent() {
    let env = Env::new();
    let sk = InProcess::start(&env, &default_config());
    let request = Request::get("/echo/phase?x=1")
        .header("host", "api.test.local")
        .header("authorization", "Bearer dummy-from-the-agent")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-sidekey-task", "task-42")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (parts, body) = sk.exchange(intercepted("api.test.local"), request);
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(parts.headers.contains_key("x-sidekey-request-id"));

    let seen = env.upstream.only_request();
    let token = seen.bearer().expect("a bearer token reached the upstream");
    assert_ne!(token, "dummy-from-the-agent");
    for gone in [
        "proxy-authorization",
        "x-sidekey-task",
        "x-hop",
        "connection",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(seen.header("accept-encoding"), Some("identity"));

    let record = sk.audit.expect_requests(1).remove(0);
    let claims = crate::common::decode_jwt(token).1;
    assert_record(
        &record,
        &[
            ("listener", "forward".into()),
            ("route", "api".into()),
            ("decision", "allow".into()),
            ("credential", "demo".into()),
            ("credential_id", claims["jti"].clone()),
            ("task_id", "task-42".into()),
            ("status", 200.into()),
            ("path", "/echo/phase?x=REDACTED".into()),
            ("code", Value::Null),
        ],
    );
}

#[test]
fn a_refused_exchange_is_recorded_once_and_never_completes_upstream() {
    let env = Env::new();
    let sk = InProcess::start(&env, &default_config());
    let multipart =
        "--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n";
    /// (identified, method, path, headers, body, status, code)
    type Case<'a> = (
        Identified,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a str,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            intercepted("api.test.local"),
            "DELETE",
            "/echo/x",
            vec![("host", "api.test.local")],
            "",
            403,
            "method_not_allowed",
        ),
        (
            intercepted("api.test.local"),
            "GET",
            "/echo/x",
            vec![("host", "other.test.local")],
            "",
            403,
            "target_mismatch",
        ),
        (
            Identified::Intercepted {
                target: target(Scheme::Https, "api.test.local", 443),
                sni: Sni::Missing,
            },
            "GET",
            "/echo/x",
            vec![("host", "api.test.local")],
            "",
            403,
            "target_mismatch",
        ),
        (
            intercepted("paths.test.local"),
            "GET",
            "/echo/v2/x",
            vec![("host", "paths.test.local")],
            "",
            403,
            "path_not_allowed",
        ),
        (
            intercepted("api.test.local"),
            "GET",
            "/echo/x",
            vec![
                ("host", "api.test.local"),
                ("x-http-method-override", "DELETE"),
            ],
            "",
            403,
            "method_not_allowed",
        ),
        (
            intercepted("api.test.local"),
            "POST",
            "/echo/x",
            vec![
                ("host", "api.test.local"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "a=1&_method=DELETE",
            403,
            "method_not_allowed",
        ),
        (
            intercepted("api.test.local"),
            "POST",
            "/echo/x",
            vec![
                ("host", "api.test.local"),
                ("content-type", "multipart/form-data; boundary=XyZ"),
            ],
            multipart,
            403,
            "method_not_allowed",
        ),
        (
            Identified::Absolute(target(Scheme::Http, "evil.test.local", 80)),
            "GET",
            "/",
            vec![("host", "evil.test.local")],
            "",
            403,
            "host_not_allowed",
        ),
    ];
    let n = cases.len();
    for (i, (identified, method, path, headers, body, status, code)) in
        cases.into_iter().enumerate()
    {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let (parts, bytes) = sk.exchange(identified, request);
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parts.status, status, "case {i}: {answer}");
        assert_eq!(answer["error"], code, "case {i}: {answer}");
        assert_eq!(parts.headers["x-sidekey-error"], code, "case {i}");
        let records = sk.audit.expect_requests(i + 1);
        assert_record(
            &records[i],
            &[
                ("code", code.into()),
                ("status", status.into()),
                ("request_id", answer["request_id"].clone()),
            ],
        );
    }
    assert_eq!(sk.audit.expect_requests(n).len(), n);
    // Nothing reached an upstream but the head of the multipart upload, which streams: its
    // body was cut off before its end, so the upstream never got a complete request.
    assert!(env.upstream_http.requests().is_empty());
    let seen = env.upstream.requests();
    assert!(
        seen.iter()
            .all(|r| r.path == "/echo/x" && r.method == "POST" && !r.body_complete),
        "refused requests reached the upstream: {seen:?}"
    );
}

/// Every way a connection to the forward listener can go, each with one record.
#[test]
fn every_refusal_on_the_forward_listener_has_one_record() {
    let env = Env::new();
    let sk = InProcess::start(&env, &default_config());
    // (raw request, status of the answer, method, code of the record)
    let cases: &[(&str, u16, &str, &str)] = &[
        (
            "GET http://plain.test.local/echo/ok HTTP/1.1\r\nHost: plain.test.local\r\nConnection: close\r\n\r\n",
            200, "GET", "",
        ),
        (
            "GET https://api.test.local/ HTTP/1.1\r\nHost: api.test.local\r\nConnection: close\r\n\r\n",
            400, "GET", "request_invalid",
        ),
        (
            "GET /echo HTTP/1.1\r\nHost: plain.test.local\r\nConnection: close\r\n\r\n",
            400, "GET", "request_invalid",
        ),
        (
            "GET http://plain.test.local/echo HTTP/1.1\r\nHost: api.test.local\r\nConnection: close\r\n\r\n",
            403, "GET", "target_mismatch",
        ),
        ("CONNECT evil.test.local:443 HTTP/1.1\r\nHost: evil.test.local:443\r\n\r\n", 403, "CONNECT", "host_not_allowed"),
        ("CONNECT api.test.local HTTP/1.1\r\nHost: api.test.local\r\n\r\n", 400, "CONNECT", "request_invalid"),
        // A transfer coding sidekey does not implement would reach the upstream undone.
        (
            "POST http://plain.test.local/echo HTTP/1.1\r\nHost: plain.test.local\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400, "POST", "request_invalid",
        ),
    ];
    for (i, (raw, status, method, code)) in cases.iter().enumerate() {
        let answer = sk.forward_raw(raw.as_bytes(), QUIET);
        assert_eq!(
            status_of(&answer),
            Some(*status),
            "case {i}: {}",
            String::from_utf8_lossy(&answer)
        );
        let records = sk.audit.expect_requests(i + 1);
        let code = code_or_null(code);
        assert_record(
            &records[i],
            &[
                ("method", (*method).into()),
                ("code", code),
                ("status", (*status).into()),
            ],
        );
    }
    // Only the allowed request reached an upstream.
    assert_eq!(env.upstream_http.requests().len(), 1);
    // A CONNECT target that names no port is recorded as written.
    let records = sk.audit.expect_requests(cases.len());
    assert_eq!(records[5]["host"], "api.test.local", "{}", records[5]);
}

/// `chunked` applied twice (RFC 9112 §6.1 forbids it; hyper's parser lets it through) is
/// refused by policy before anything is sent.
#[test]
fn chunked_applied_twice_is_refused_before_anything_is_sent() {
    let env = Env::new();
    let sk = InProcess::start(&env, &default_config());
    let raw = "POST http://plain.test.local/echo HTTP/1.1\r\nHost: plain.test.local\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answer = sk.forward_raw(raw.as_bytes(), QUIET);
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), Some(400), "{text}");
    assert!(text.contains("chunked more than once"), "{text}");
    let record = sk.audit.expect_requests(1).remove(0);
    assert_record(
        &record,
        &[
            ("code", "request_invalid".into()),
            ("method", "POST".into()),
        ],
    );
    assert!(env.upstream_http.requests().is_empty());
}

/// A body that breaks HTTP framing mid-stream is the agent's fault: `400 request_invalid`,
/// recorded so, never `502`.
#[test]
fn a_body_that_breaks_framing_mid_stream_is_the_agents_fault() {
    let env = Env::new();
    let sk = InProcess::start(&env, &default_config());
    let raw = "POST http://plain.test.local/echo/broken HTTP/1.1\r\nHost: plain.test.local\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nnot-a-size\r\n";
    let answer = sk.forward_raw(raw.as_bytes(), QUIET);
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), Some(400), "{text}");
    assert!(text.contains("x-sidekey-error: request_invalid"), "{text}");
    let record = sk.audit.expect_requests(1).remove(0);
    assert_record(
        &record,
        &[
            ("code", "request_invalid".into()),
            ("status", 400.into()),
            ("decision", "allow".into()),
        ],
    );
}

/// A CONNECT that policy intercepts but that carries no request is one CONNECT record saying
/// why: the agent's TLS handshake failed (it does not trust sidekey's CA, or speaks no TLS),
/// timed out, or the tunnel closed before a request.
#[test]
fn an_intercepted_connect_without_a_request_is_one_record() {
    let env = Env::new();
    let yaml = base_config(&[], "", "limits:\n  handshake_timeout: 1s\n");
    let sk = InProcess::start(&env, &yaml);
    let connect = b"CONNECT api.test.local:443 HTTP/1.1\r\nHost: api.test.local:443\r\n\r\n";

    // Not TLS at all.
    let mut conn = sk.forward_connection();
    let reply = sk.rt.block_on(async {
        conn.write_all(connect).await.unwrap();
        let reply = read_head(&mut conn).await;
        conn.write_all(b"GET / HTTP/1.1\r\nHost: api.test.local\r\n\r\n")
            .await
            .unwrap();
        read_until_quiet(&mut conn, QUIET).await;
        reply
    });
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let record = sk.audit.expect_requests(1).remove(0);
    assert_record(
        &record,
        &[
            ("method", "CONNECT".into()),
            ("host", "api.test.local".into()),
            ("decision", "allow".into()),
            ("status", 200.into()),
            ("error", "tls_handshake_failed".into()),
        ],
    );

    // No ClientHello within limits.handshake_timeout.
    let mut conn = sk.forward_connection();
    sk.rt.block_on(async {
        conn.write_all(connect).await.unwrap();
        read_head(&mut conn).await;
        read_until_quiet(&mut conn, QUIET).await;
    });
    let record = sk.audit.expect_requests(2).remove(1);
    assert_record(
        &record,
        &[
            ("method", "CONNECT".into()),
            ("error", "tls_handshake_timeout".into()),
        ],
    );

    // A handshake that completes, then the agent closes without a request.
    let ca = sk.ca_pem();
    let mut conn = sk.forward_connection();
    sk.rt.block_on(async {
        conn.write_all(connect).await.unwrap();
        read_head(&mut conn).await;
        let connector = tls_client(ca.as_bytes());
        let name = rustls::pki_types::ServerName::try_from("api.test.local").unwrap();
        let mut tls = connector
            .connect(name, conn)
            .await
            .expect("handshake with sidekey's leaf");
        tls.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(QUIET, tls.read_to_end(&mut rest)).await;
    });
    let record = sk.audit.expect_requests(3).remove(2);
    assert_record(
        &record,
        &[("method", "CONNECT".into()), ("error", "no_request".into())],
    );

    // The agent closes the tunnel before a ClientHello.
    let mut conn = sk.forward_connection();
    sk.rt.block_on(async {
        conn.write_all(connect).await.unwrap();
        read_head(&mut conn).await;
        conn.shutdown().await.unwrap();
        read_until_quiet(&mut conn, QUIET).await;
    });
    let record = sk.audit.expect_requests(4).remove(3);
    assert_record(
        &record,
        &[
            ("method", "CONNECT".into()),
            ("error", "client_aborted".into()),
        ],
    );
    assert!(env.upstream.requests().is_empty());
}

/// Reads an HTTP response head (up to the blank line).
async fn read_head(stream: &mut tokio::io::DuplexStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(QUIET, stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An exchange dropped on its way — the agent closed the connection while sidekey waited on
/// the upstream — still writes its one record, as `client_aborted`.
#[test]
fn an_exchange_the_agent_abandons_is_recorded_as_aborted() {
    let env = Env::new();
    // An upstream that accepts connections (the kernel completes them) and never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = base_config(
        &[(
            "hole.test.local:80",
            &hole.local_addr().unwrap().to_string(),
        )],
        r#"  - name: hole
    hosts: [hole.test.local]
    schemes: [http]
    methods: [GET]
    allow_private: true
"#,
        "",
    );
    let sk = InProcess::start(&env, &yaml);
    let request = Request::get("/waiting")
        .header("host", "hole.test.local")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let state = sk.state();
    let abandoned = sk.rt.block_on(async move {
        let exchange = sidekey_proxy::exchange::Exchange::new(Identified::Absolute(target(
            Scheme::Http,
            "hole.test.local",
            80,
        )));
        let handle = sidekey_proxy::exchange::handle(state, exchange, request);
        tokio::time::timeout(Duration::from_millis(300), handle).await
    });
    assert!(abandoned.is_err(), "the black-hole upstream answered");
    let record = sk.audit.expect_requests(1).remove(0);
    assert_record(
        &record,
        &[
            ("route", "hole".into()),
            ("decision", "allow".into()),
            ("error", "client_aborted".into()),
            ("status", Value::Null),
        ],
    );
}

/// The route listener: `/r/<route>/…` reaches the route's one host; anything else is refused
/// and recorded under the name asked for.
#[test]
fn the_route_listener_identifies_by_route_name() {
    let env = Env::new();
    let sk = InProcess::start(&env, &default_config());
    // (request, status, host recorded, code)
    let cases: &[(&str, u16, &str, &str)] = &[
        (
            "GET /r/api/echo/r?q=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            200,
            "api.test.local",
            "",
        ),
        (
            "GET /r/scoped/echo/v2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            403,
            "paths.test.local",
            "path_not_allowed",
        ),
        (
            "GET /r/nope/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            403,
            "nope",
            "host_not_allowed",
        ),
        (
            "GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            400,
            "",
            "request_invalid",
        ),
        (
            "GET /r/plain/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            403,
            "plain",
            "host_not_allowed",
        ),
    ];
    for (i, (raw, status, host, code)) in cases.iter().enumerate() {
        let answer = sk.routes_raw(raw.as_bytes(), QUIET);
        assert_eq!(
            status_of(&answer),
            Some(*status),
            "case {i}: {}",
            String::from_utf8_lossy(&answer)
        );
        let records = sk.audit.expect_requests(i + 1);
        let code = code_or_null(code);
        assert_record(
            &records[i],
            &[
                ("listener", "routes".into()),
                ("host", (*host).into()),
                ("code", code),
            ],
        );
    }
    let seen = env.upstream.only_request();
    assert_eq!(seen.path, "/echo/r?q=1");
    assert!(seen.bearer().is_some());
}

/// `unmatched: tunnel`: a CONNECT no route names becomes a blind tunnel, bytes pass both
/// ways uninspected, and its one record is written when it closes.
#[test]
fn a_blind_tunnel_copies_bytes_and_is_recorded_when_it_closes() {
    let env = Env::new();
    let yaml = crate::common::allow_loopback_ranges(&base_config(
        &[("blind.test.local:443", "{upstream}")],
        "",
        "unmatched: tunnel\n",
    ));
    let sk = InProcess::start(&env, &yaml);
    let mut conn = sk.forward_connection();
    let reply = sk.rt.block_on(async {
        conn.write_all(
            b"CONNECT blind.test.local:443 HTTP/1.1\r\nHost: blind.test.local:443\r\n\r\n",
        )
        .await
        .unwrap();
        let reply = read_head(&mut conn).await;
        // What goes through is not HTTP to sidekey: a TLS ClientHello for the upstream, which
        // answers with its own certificate (not sidekey's).
        let connector = tls_client(&std::fs::read(env.ca.pem_path()).unwrap());
        let name = rustls::pki_types::ServerName::try_from("blind.test.local").unwrap();
        let mut tls = connector
            .connect(name, conn)
            .await
            .expect("TLS with the upstream itself");
        tls.write_all(
            b"GET /echo/blind HTTP/1.1\r\nHost: blind.test.local\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(QUIET, tls.read_to_end(&mut answer)).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        reply
    });
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = env.upstream.only_request();
    assert_eq!(
        seen.header("authorization"),
        None,
        "a blind tunnel carries no credential"
    );
    let record = sk.audit.expect_requests(1).remove(0);
    assert_record(
        &record,
        &[
            ("method", "CONNECT".into()),
            ("decision", "tunnel".into()),
            ("route", Value::Null),
        ],
    );
    assert!(
        record["bytes_in"].as_u64().unwrap() > 0 && record["bytes_out"].as_u64().unwrap() > 0,
        "{record}"
    );
}

/// A head the HTTP layer cannot parse never becomes an exchange — hyper answers a bare 400,
/// 414 or 431 (or nothing, to an HTTP/2 preface) and closes — but it is still one record.
#[test]
fn an_unparsable_head_is_answered_by_hyper_and_still_recorded() {
    let env = Env::new();
    // Heads up to 128 KiB: room for a URI longer than hyper takes (64 KiB).
    let sk = InProcess::start(
        &env,
        &base_config(&[], "", "limits:\n  max_header_bytes: 131072\n"),
    );
    let long_uri = format!(
        "GET http://plain.test.local/{} HTTP/1.1\r\nHost: plain.test.local\r\n\r\n",
        "a".repeat(70_000)
    );
    let big_head = format!(
        "GET http://plain.test.local/ HTTP/1.1\r\nHost: plain.test.local\r\nX-Big: {}\r\n\r\n",
        "b".repeat(140_000)
    );
    let cases: Vec<(String, Option<u16>)> = vec![
        (
            "GET http://plain.test.local/ HTTP/1.1\r\nthis is not a header\r\n\r\n".into(),
            Some(400),
        ),
        (
            "G@T http://plain.test.local/ HTTP/1.1\r\n\r\n".into(),
            Some(400),
        ),
        (big_head, Some(431)),
        (long_uri, Some(414)),
        ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(), None),
    ];
    for (i, (raw, status)) in cases.iter().enumerate() {
        let answer = sk.forward_raw(raw.as_bytes(), QUIET);
        assert_eq!(
            status_of(&answer),
            *status,
            "case {i}: {}",
            String::from_utf8_lossy(&answer)
        );
        let records = sk.audit.expect_requests(i + 1);
        let status: Value = status.map_or(Value::Null, Value::from);
        assert_record(
            &records[i],
            &[
                ("code", "request_invalid".into()),
                ("status", status),
                ("error", "unparsed_request".into()),
            ],
        );
    }
    assert!(env.upstream_http.requests().is_empty());
}

/// `limits.max_header_bytes` bounds the request head exactly, whatever its value (hyper's read
/// buffer alone is a soft bound, and refuses to be set below 8 KiB).
#[test]
fn max_header_bytes_is_exact_even_when_small() {
    let env = Env::new();
    let sk = InProcess::start(
        &env,
        &base_config(&[], "", "limits:\n  max_header_bytes: 1024\n"),
    );
    let head = |pad: usize| {
        format!(
            "GET http://plain.test.local/echo/h HTTP/1.1\r\nHost: plain.test.local\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "p".repeat(pad)
        )
    };
    let small = head(100);
    assert_eq!(
        status_of(&sk.forward_raw(small.as_bytes(), QUIET)),
        Some(200)
    );
    let large = head(1100);
    let answer = sk.forward_raw(large.as_bytes(), QUIET);
    assert_eq!(
        status_of(&answer),
        Some(431),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(env.upstream_http.requests().len(), 1);
}
