//! Issuer faults that no real issuer produces on demand: an issuer that accepts the connection
//! and never answers, and one that answers garbage. (Issuers that are down, refuse, or come
//! back are tested against the real servers in tests/oauth2.rs and tests/vault.rs.) The stand-ins
//! here are raw TCP servers, as small as the fault they play.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

/// A "token endpoint" that accepts connections, reads what it is sent and never answers.
struct Hanging {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Hanging {
    fn start() -> Hanging {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (a, h) = (Arc::clone(&accepted), Arc::clone(&held));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                a.fetch_add(1, Ordering::SeqCst);
                h.lock().unwrap().push(stream);
            }
        });
        Hanging {
            addr,
            accepted,
            held,
        }
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.held.lock().unwrap().clear();
    }
}

/// A "token endpoint" that answers every request with `status`, `content_type` and `body`.
fn canned(status: &'static str, content_type: &'static str, body: &'static str) -> SocketAddr {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let response = response.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 8192];
                let mut seen = Vec::new();
                // Read the head and a short form body.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response.as_bytes());
                // Close gently: read what is left of the request so the close is not a reset.
                let _ = stream.shutdown(std::net::Shutdown::Write);
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// A config with one oauth2 issuer at `token_url` (credential `remote`, route `api`) and the
/// local issuer (credential `demo`, route `other`).
fn config(token_url: &str, dir: &std::path::Path) -> String {
    let secret = dir.join("client-secret");
    std::fs::write(&secret, "fault-canary-client-secret").unwrap();
    format!(
        r#"upstream:
  extra_ca_files: ["{{test_ca}}"]
  resolve:
    "api.test.local:443": "{{upstream}}"
    "other.test.local:443": "{{upstream}}"
issuers:
  idp:
    kind: oauth2
    token_url: {token_url}
    grant: client_credentials
    client_id: sidekey
    client_secret_file: {secret}
  local: {{ kind: local }}
credentials:
  remote: {{ issuer: idp, scope: read }}
  demo: {{ issuer: local, audience: demo-api }}
routes:
  - name: api
    hosts: [api.test.local]
    methods: [GET]
    credential: remote
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
  - name: other
    hosts: [other.test.local]
    methods: [GET]
    credential: demo
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
"#,
        secret = secret.display()
    )
}

/// The base config with `upstream.request_timeout: 1s` and a route `name` to the `scheme`
/// host `<name>.test.local`, whose `port` resolves to `hanging`.
fn hanging_route_config(name: &str, scheme: &str, port: u16, hanging: &Hanging) -> String {
    let route = format!(
        "  - name: {name}
    hosts: [{name}.test.local]
    schemes: [{scheme}]
    methods: [GET]
    credential: demo
    inject: {{ header: Authorization, value: \"Bearer {{token}}\" }}
    allow_private: true
"
    );
    let authority = format!("{name}.test.local:{port}");
    let addr = hanging.addr.to_string();
    base_config(&[(authority.as_str(), addr.as_str())], &route, "").replacen(
        "upstream:\n",
        "upstream:\n  request_timeout: 1s\n",
        1,
    )
}

/// Asserts a refusal's body is the 1 s request timeout's, given after `waited`: no sooner than
/// the timeout, and before `within`.
#[track_caller]
fn assert_request_timed_out(
    body: &serde_json::Value,
    waited: Duration,
    within: Duration,
    what: &str,
) {
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("did not answer within 1s"),
        "{what}: {message}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < within,
        "{what}: refused after {waited:?}"
    );
}

#[test]
fn an_upstream_that_never_answers_is_cut_at_request_timeout_and_the_connection_serves_on() {
    // The same fault upstream: it takes the request and never answers. On an HTTP/1 agent
    // connection the wait is timed by the connection's one request timer, moved to each
    // request's deadline; it must bound every request on the connection, not only the first.
    let env = Env::new();
    let hanging = Hanging::start();
    let sk = env.sidekey_one_worker(&hanging_route_config("hang", "http", 80, &hanging));
    let mut conn = connect(sk.forward).unwrap();
    let mut get = |url: &str| {
        let host = url.split('/').nth(2).unwrap_or_default();
        let request = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        conn.write_all(request.as_bytes()).unwrap();
        let started = std::time::Instant::now();
        let response = read_response(&mut conn, false, false).unwrap();
        (response, started.elapsed())
    };
    for round in 0..2 {
        let (refused, waited) = get("http://hang.test.local/never");
        let body = refused.expect_refusal(502, "upstream_unreachable");
        assert_request_timed_out(
            &body,
            waited,
            Duration::from_secs(5),
            &format!("round {round}"),
        );
        // The connection goes on: an upstream that answers is answered.
        let (answered, _) = get("http://plain.test.local/echo/after");
        assert_eq!(answered.status, 200, "round {round}");
    }
    assert_eq!(hanging.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn an_intercepted_request_to_an_upstream_that_never_answers_is_cut_at_request_timeout() {
    // The upstream takes the connection and never answers its TLS handshake. Inside an
    // intercepted tunnel, over HTTP/1.1 (the connection's request timer) and over HTTP/2 (a
    // timer of the stream's own), the wait is bounded by `upstream.request_timeout`.
    let env = Env::new();
    let hanging = Hanging::start();
    let sk = env.sidekey_one_worker(&hanging_route_config("hangtls", "https", 443, &hanging));
    for version in ["--http1.1", "--http2"] {
        let started = std::time::Instant::now();
        let res = curl_via(
            &sk,
            &[version, "-m", "20", "https://hangtls.test.local/never"],
        );
        let waited = started.elapsed();
        assert_eq!(res.exit, 0, "{version}: curl got an answer: {}", res.stderr);
        let body = res.expect_refusal(502, "upstream_unreachable");
        assert_request_timed_out(&body, waited, Duration::from_secs(10), version);
    }
    assert_eq!(hanging.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn hanging_issuer_gives_a_bounded_503_to_every_waiter_with_one_call_and_others_keep_serving() {
    let env = Env::new();
    let hanging = Hanging::start();
    let dir = tempfile::tempdir().unwrap();
    // One worker: the current-thread runtime must not let the wait stall anything else.
    let sk = env.sidekey_one_worker(&config(
        &format!("http://{}/token", hanging.addr),
        dir.path(),
    ));

    // Eight agents ask at once; all wait on the one issuer call.
    let waiters: Vec<_> = (0..8)
        .map(|i| {
            let proxy = sk.proxy_url();
            let ca = sk.ca_pem().display().to_string();
            std::thread::spawn(move || {
                curl(&[
                    "-x",
                    &proxy,
                    "--cacert",
                    &ca,
                    "-m",
                    "40",
                    &format!("https://api.test.local/echo/waiter-{i}"),
                ])
            })
        })
        .collect();
    // Meanwhile (the issuer has the call and does not answer), a route whose issuer is fine is
    // served.
    assert!(
        eventually(Duration::from_secs(10), || hanging
            .accepted
            .load(Ordering::SeqCst)
            >= 1),
        "no call reached the issuer"
    );
    curl_via(&sk, &["-m", "5", "https://other.test.local/echo/meanwhile"]).assert_status(200);

    for w in waiters {
        let res = w.join().unwrap();
        assert_eq!(
            res.exit, 0,
            "curl got an answer, not a timeout: {}",
            res.stderr
        );
        let body = res.expect_refusal(503, "credential_unavailable");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("did not answer") || message.contains("within"),
            "{message}"
        );
    }
    assert_eq!(
        hanging.accepted.load(Ordering::SeqCst),
        1,
        "concurrent misses must share one issuer call"
    );
    let seen = env.upstream.requests();
    assert!(
        seen.iter().all(|r| r.path == "/echo/meanwhile"),
        "nothing reached the upstream without a credential: {seen:#?}"
    );
    let failed: Vec<_> = sk
        .audit()
        .into_iter()
        .filter(|l| l["event"] == "failed" && l["credential"] == "remote")
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "one failed event for one call: {failed:#?}"
    );
    assert!(!sk.stderr().contains("fault-canary-client-secret"));
}

#[test]
fn garbage_and_errors_from_the_issuer_are_clear_503s_and_nothing_panics() {
    let env = Env::new();
    // (status, content type, body, what the agent is told, what the log and audit say)
    let cases: [(&str, &str, &str, &str, &str); 6] = [
        ("200 OK", "application/json", "not json", "unexpected answer from the issuer", "unexpected answer from the issuer: token endpoint answer"),
        ("200 OK", "application/json", "{\"token_type\":\"Bearer\"}", "unexpected answer from the issuer", "missing field `access_token`"),
        // A sender-constrained token would fail upstream without its proof: refused up front.
        ("200 OK", "application/json", "{\"access_token\":\"dpop-bound-token-7c1e\",\"token_type\":\"DPoP\",\"expires_in\":300}", "unexpected answer from the issuer", "token_type `DPoP` is not supported"),
        (
            "500 Internal Server Error",
            "text/html",
            "<h1>upstream exploded</h1>",
            "issuer refused (500)",
            "issuer refused (500): <h1>upstream exploded</h1>",
        ),
        (
            "401 Unauthorized",
            "application/json",
            "{\"error\":\"invalid_client\",\"error_description\":\"client auth failed\"}",
            "issuer refused (401): invalid_client",
            "issuer refused (401): invalid_client: client auth failed",
        ),
        (
            // An error page that echoes the request it got, secret included.
            "400 Bad Request",
            "text/plain",
            "you sent Basic c2lkZWtleTpmYXVsdC1jYW5hcnktY2xpZW50LXNlY3JldA== fault-canary-client-secret",
            "issuer refused (400)",
            "issuer refused (400): you sent Basic",
        ),
    ];
    for (status, content_type, body, expected, detail) in cases {
        let addr = canned(status, content_type, body);
        let dir = tempfile::tempdir().unwrap();
        let sk = env.sidekey(&config(&format!("http://{addr}/token"), dir.path()));
        let res = curl_via(&sk, &["-m", "20", "https://api.test.local/echo/x"]);
        let body = res.expect_refusal(503, "credential_unavailable");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        assert!(!message.contains("fault-canary-client-secret"));
        // Still serving, and the failure is audited once with its reason.
        curl_via(&sk, &["https://other.test.local/echo/after"]).assert_status(200);
        let failed: Vec<_> = sk
            .audit()
            .into_iter()
            .filter(|l| l["event"] == "failed")
            .collect();
        assert_eq!(failed.len(), 1, "{failed:#?}");
        let error = failed[0]["error"].as_str().unwrap_or_default();
        assert!(error.contains(detail), "{error:?} lacks {detail:?}");
        assert!(!error.contains("fault-canary-client-secret"), "{error}");
        assert!(
            !error.contains("c2lkZWtleTpmYXVsdC1jYW5hcnktY2xpZW50LXNlY3JldA"),
            "{error}"
        );
        let log = sk.stderr();
        assert!(!log.contains("panicked"), "{log}");
        assert!(!log.contains("fault-canary-client-secret"));
    }
}
