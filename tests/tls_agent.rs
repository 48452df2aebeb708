//! TLS toward the agent: the interception CA is name-constrained to the routes' hosts and real
//! clients (curl, Python, Node: OpenSSL and Node's TLS; rustls in the other suites) accept its
//! leaves for exact, wildcard and IP routes; only TLS 1.2+ is spoken; the SNI policy (none, an
//! IP, a different name); and fresh names under a wildcard route cannot make sidekey mint
//! leaves without bound.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

/// `openssl x509 -text` of sidekey's CA certificate.
fn ca_text(sk: &Sidekey) -> String {
    let out = Command::new("openssl")
        .arg("x509")
        .arg("-in")
        .arg(sk.ca_pem())
        .arg("-noout")
        .arg("-text")
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The lines of the Name Constraints extension, trimmed.
fn name_constraints(text: &str) -> Vec<String> {
    let mut lines = text.lines().skip_while(|l| !l.contains("Name Constraints"));
    let header = lines.next().unwrap_or_default().trim().to_string();
    let mut out = vec![header];
    for line in lines {
        let t = line.trim();
        if t.starts_with("X509v3") || t.starts_with("Signature Algorithm") {
            break;
        }
        if !t.is_empty() {
            out.push(t.to_string());
        }
    }
    out
}

/// `tests/clients/tlsprobe.py client …` through sidekey's forward listener.
fn probe(sk: &Sidekey, connect: &str, args: &[&str]) -> Value {
    let mut cmd = Command::new(python_bin());
    cmd.arg(clients_dir().join("tlsprobe.py"))
        .arg("client")
        .arg("--proxy")
        .arg(sk.forward.to_string())
        .arg("--connect")
        .arg(connect)
        .args(args);
    let out = output_with_timeout(cmd, Duration::from_secs(30));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "tlsprobe.py printed no JSON: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `openssl s_client` through sidekey's CONNECT with SNI `servername` (OpenSSL sends it as
/// given, even an IP literal, which Python and rustls refuse to do); one GET with `host`.
fn s_client(sk: &Sidekey, connect: &str, servername: &str, host: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-ign_eof", "-proxy"])
        .arg(sk.forward.to_string())
        .arg("-connect")
        .arg(connect)
        .arg("-servername")
        .arg(servername)
        .arg("-alpn")
        .arg("http/1.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let request =
        format!("GET /echo/sclient HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.as_bytes())
        .expect("write request");
    let out = child.wait_with_output().expect("s_client output");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn ip_route(port: u16) -> String {
    format!(
        "  - name: by-ip\n    hosts: [\"127.0.0.1\"]\n    ports: [{port}]\n    methods: [GET]\n    \
         credential: demo\n    inject: {{ header: Authorization, value: \"Bearer {{token}}\" }}\n    \
         allow_private: true\n"
    )
}

const WILD_ROUTE: &str = "  - name: wild
    hosts: [\"*.wild.test.local\"]
    methods: [GET]
    credential: demo
    inject: { header: Authorization, value: \"Bearer {token}\" }
    allow_private: true
";

#[test]
fn the_ca_is_name_constrained_and_clients_accept_its_leaves() {
    let env = Env::new();
    let port = env.upstream.addr().port();
    let routes = format!("{WILD_ROUTE}{}", ip_route(port));
    let upstream = env.upstream.addr().to_string();
    let sk = env.sidekey(&base_config(
        &[("a.wild.test.local:443", upstream.as_str())],
        &routes,
        "",
    ));

    let nc = name_constraints(&ca_text(&sk));
    assert_eq!(nc[0], "X509v3 Name Constraints: critical", "{nc:#?}");
    assert_eq!(
        nc[1..],
        [
            "Permitted:",
            "DNS:api.test.local",
            "DNS:other.test.local",
            "DNS:paths.test.local",
            "DNS:.wild.test.local",
            "IP:127.0.0.1/255.255.255.255",
        ],
        "the http-only route's host (plain.test.local) is never intercepted, so not permitted"
    );

    let ip_base = format!("https://127.0.0.1:{port}");
    let urls = [
        format!("https://{API}/echo/exact"),
        "https://a.wild.test.local/echo/wildcard".to_string(),
        format!("{ip_base}/echo/ip"),
    ];
    let mut expected = 0;
    for url in &urls {
        curl_via(&sk, &[url]).assert_status(200);
        python("requests", &Req::get(url).via(&sk.proxy_url(), sk.ca_pem())).assert_status(200);
        node(&Req::get(url).via(&sk.proxy_url(), sk.ca_pem())).assert_status(200);
        expected += 3;
    }
    let seen = env
        .upstream
        .wait_requests(expected, Duration::from_secs(10));
    assert_eq!(seen.len(), expected, "{seen:#?}");
    assert!(
        seen.iter().all(|r| r.bearer().is_some()),
        "every request carried the credential: {seen:#?}"
    );
}

#[test]
fn agents_must_speak_tls_1_2_or_newer() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let connect = format!("{API}:443");
    let ca = sk.ca_pem().display().to_string();
    let common = ["--sni", API, "--host", API, "--cafile", ca.as_str()];

    for (min, max) in [("1.0", "1.1"), ("1.1", "1.1"), ("1.0", "1.0")] {
        let mut args = common.to_vec();
        args.extend(["--min-version", min, "--max-version", max]);
        let r = probe(&sk, &connect, &args);
        assert_eq!(r["connect_status"], 200, "{r}");
        assert_eq!(r["handshake"], "failed", "TLS {min}..{max} accepted: {r}");
        // rustls answers an old ClientHello with a fatal alert (handshake_failure, as a TLS
        // 1.0/1.1 hello lacks signature_algorithms); the alert proves that the client did
        // offer the old version and sidekey refused it.
        let error = r["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("ALERT_HANDSHAKE_FAILURE") || error.contains("ALERT_PROTOCOL_VERSION"),
            "sidekey should refuse with a TLS alert: {error}"
        );
    }
    for (version, reported) in [("1.2", "TLSv1.2"), ("1.3", "TLSv1.3")] {
        let mut args = common.to_vec();
        args.extend(["--min-version", version, "--max-version", version]);
        let r = probe(&sk, &connect, &args);
        assert_eq!(r["version"], reported, "{r}");
        assert_eq!(r["status"], 200, "{r}");
    }
    assert_eq!(
        env.upstream.requests().len(),
        2,
        "only the TLS 1.2 and 1.3 requests passed"
    );
}

#[test]
fn sni_policy() {
    let env = Env::new();
    let port = env.upstream.addr().port();
    let sk = env.sidekey(&base_config(&[], &ip_route(port), ""));
    let ca = sk.ca_pem().display().to_string();
    let api = format!("{API}:443");
    let ip = format!("127.0.0.1:{port}");

    // No SNI to a DNS target: the handshake completes, every request gets a readable 403.
    let r = probe(
        &sk,
        &api,
        &["--sni", "none", "--host", API, "--cafile", &ca],
    );
    assert_eq!(r["handshake"], "ok", "{r}");
    assert_eq!(r["status"], 403, "{r}");
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap_or_default()).expect("JSON");
    assert_eq!(body["error"], "target_mismatch", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no SNI"),
        "{body}"
    );
    assert!(env.upstream.requests().is_empty());

    // An IP target: clients send no SNI for it (Python, like curl and Node, leaves it out for
    // an IP literal), and that is fine; the leaf has the IP as SAN and verifies.
    let r = probe(
        &sk,
        &ip,
        &["--sni", "127.0.0.1", "--host", &ip, "--cafile", &ca],
    );
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(env.upstream.requests().len(), 1);

    // An IP literal in SNI (forbidden by RFC 6066, sent anyway by OpenSSL when told to) counts
    // as no SNI: refused for a DNS target, fine for that same IP target.
    let out = s_client(&sk, &api, "127.0.0.1", API);
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("target_mismatch"),
        "{out}"
    );
    assert_eq!(env.upstream.requests().len(), 1);
    let out = s_client(&sk, &ip, "127.0.0.1", &ip);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(env.upstream.requests().len(), 2);
}

#[test]
fn fresh_names_under_a_wildcard_are_rate_limited() {
    let env = Env::new();
    let config = format!(
        "listen: {{ forward: 127.0.0.1:0, routes: 127.0.0.1:0, admin: 127.0.0.1:0 }}\n\
         ca: {{ cert_out: \"{{dir}}/ca.pem\", leaf_mint_rate: 1, leaf_mint_burst: 5 }}\n{}",
        base_config(&[], WILD_ROUTE, "")
    );
    let sk = Sidekey::start_raw(&config, &env.vars());

    // No IP route: the CA excludes every address.
    let nc = name_constraints(&ca_text(&sk));
    assert!(
        nc.contains(&"Excluded:".to_string())
            && nc.contains(&"IP:0.0.0.0/0.0.0.0".to_string())
            && nc.contains(&"IP:0:0:0:0:0:0:0:0/0:0:0:0:0:0:0:0".to_string()),
        "{nc:#?}"
    );

    let mut minted = Vec::new();
    let mut refused = 0;
    let started = std::time::Instant::now();
    for i in 0..40 {
        let authority = format!("n{i}.wild.test.local:443");
        match connect_tunnel(sk.forward, &authority) {
            Ok(_tunnel) => minted.push(authority),
            Err(resp) => {
                let body = resp.expect_refusal(429, "rate_limited");
                let message = body["message"].as_str().unwrap_or_default();
                assert!(message.contains("1/s (burst 5)"), "{message}");
                refused += 1;
            }
        }
    }
    // The burst of 5, plus whatever the bucket refilled (1/s) while the loop ran.
    let refilled = started.elapsed().as_secs() as usize + 1;
    assert!(
        (5..=5 + refilled).contains(&minted.len()),
        "{} minted, {refused} refused in {:?}",
        minted.len(),
        started.elapsed()
    );
    // Leaves already minted are served from the cache; hosts a route lists exactly never
    // wait for the budget; the proxy keeps serving.
    assert!(connect_tunnel(sk.forward, &minted[0]).is_ok());
    curl_via(&sk, &[&format!("https://{API}/echo/after-the-flood")]).assert_status(200);
    let records = sk.wait_audit(
        |r| r["code"] == "rate_limited",
        refused,
        sidekey::AUDIT_TIMEOUT,
    );
    assert!(
        records.iter().all(|r| r["method"] == "CONNECT"),
        "{records:#?}"
    );
}

#[test]
fn a_client_hello_sent_with_the_connect_reaches_the_tunnels_tls() {
    // The bytes hyper read past the CONNECT's head are the start of the tunnel: given to its TLS
    // before anything the socket still holds.
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let mut tls = connect_tunnel_pipelined(
        sk.forward,
        "api.test.local:443",
        "api.test.local",
        Trust::Ca(sk.ca_pem()),
    )
    .unwrap();
    tls.write_all(b"GET /echo/pipelined HTTP/1.1\r\nHost: api.test.local\r\n\r\n")
        .unwrap();
    let response = read_response(&mut tls, false, false).unwrap();
    assert_eq!(response.status, 200, "{}", response.body_str());
    assert_eq!(env.upstream.requests_to("/echo/pipelined").len(), 1);
}
