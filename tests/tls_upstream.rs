//! Upstream TLS is always verified: real HTTPS upstreams presenting expired, self-signed,
//! misnamed and untrusted-CA certificates, and one that speaks only TLS 1.0/1.1, each get a
//! 502 `upstream_tls` whose message says what is wrong (and never echoes the URI), and no
//! request (so no credential) reaches them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use crate::common::ca::{crypto_provider, ServerCert};
use crate::common::*;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A rustls server config presenting `cert` (and its CA, like a real server would).
fn presenting(cert: ServerCert) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert_der, cert.ca_der],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pkcs8_der)),
        )
        .expect("server cert");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An HTTPS server that speaks only TLS 1.0/1.1 (Python's ssl module, OpenSSL at security
/// level 0), presenting a certificate from the trusted test CA. Killed on drop.
struct OldTlsServer {
    child: Child,
    port: u16,
}

impl OldTlsServer {
    fn start(ca: &TestCa, name: &str) -> OldTlsServer {
        let cert = ca.issue(&[name]);
        let cert_path = ca.dir().join(format!("{name}.pem"));
        let key_path = ca.dir().join(format!("{name}.key"));
        std::fs::write(&cert_path, &cert.cert_pem).unwrap();
        std::fs::write(&key_path, &cert.key_pem).unwrap();
        let mut child = Command::new(python_bin())
            .arg(clients_dir().join("tlsprobe.py"))
            .arg("old-server")
            .arg("--cert")
            .arg(&cert_path)
            .arg("--key")
            .arg(&key_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tlsprobe.py old-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read port");
        let port = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .unwrap_or_else(|| panic!("old-server did not print its port: {line:?}"))
            as u16;
        OldTlsServer { child, port }
    }
}

impl Drop for OldTlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The old server really completes a TLS 1.1 handshake with a client that offers it, so a
/// refusal through sidekey is sidekey's doing.
fn assert_speaks_only_tls11(port: u16) {
    let script = r#"
import socket, ssl, sys, warnings
warnings.filterwarnings("ignore")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
ctx.minimum_version = ssl.TLSVersion.TLSv1
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10))
print(s.version())
"#;
    let out = Command::new(python_bin())
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .output()
        .expect("python");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "TLSv1.1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn broken_upstream_certificates_and_old_tls_are_upstream_tls() {
    let env = Env::new();
    let expired = Upstream::https_with_config(
        presenting(env.ca.issue_with(&["expired.test.local"], |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })),
        "expired",
    );
    let self_signed = {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["selfsigned.test.local".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Upstream::https_with_config(Arc::new(config), "self-signed")
    };
    let wrong_name = Upstream::https_with_names(&env.ca, &["elsewhere.example"], "wrong-name");
    let other_ca = TestCa::new("a CA sidekey does not trust");
    let untrusted = Upstream::https_with_names(&other_ca, &["untrusted.test.local"], "untrusted");
    let old = OldTlsServer::start(&env.ca, "old.test.local");
    assert_speaks_only_tls11(old.port);

    let cases = [
        (
            "expired.test.local",
            expired.addr().to_string(),
            "certificate expired",
        ),
        (
            "selfsigned.test.local",
            self_signed.addr().to_string(),
            "unknown issuer",
        ),
        (
            "wrongname.test.local",
            wrong_name.addr().to_string(),
            "certificate not valid for name wrongname.test.local (it names: elsewhere.example)",
        ),
        (
            "untrusted.test.local",
            untrusted.addr().to_string(),
            "unknown issuer",
        ),
        (
            "old.test.local",
            format!("127.0.0.1:{}", old.port),
            "does not speak TLS 1.2 or 1.3",
        ),
    ];
    let resolve: Vec<(String, String)> = cases
        .iter()
        .map(|(host, addr, _)| (format!("{host}:443"), addr.clone()))
        .collect();
    let resolve_refs: Vec<(&str, &str)> = resolve
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let hosts: Vec<&str> = cases.iter().map(|(h, _, _)| *h).collect();
    let routes = format!(
        "  - name: broken\n    hosts: [{}]\n    methods: [GET]\n    credential: demo\n    \
         inject: {{ header: Authorization, value: \"Bearer {{token}}\" }}\n    allow_private: true\n",
        hosts.join(", ")
    );
    let sk = env.sidekey(&base_config(&resolve_refs, &routes, ""));

    for (host, _, expected) in &cases {
        let url = format!("https://{host}/echo/path-canary?q=query-canary");
        let res = curl_via(&sk, &[&url]);
        let body = res.expect_refusal(502, "upstream_tls");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(expected),
            "{host}: message {message:?} should say {expected:?}"
        );
        assert!(
            !message.contains("canary") && !message.contains("https://"),
            "{host}: the message must not echo the URI: {message:?}"
        );
    }
    // Python's requests sees the same refusal (one client besides curl is enough here).
    let res = python(
        "requests",
        &Req::get("https://expired.test.local/echo/x").via(&sk.proxy_url(), sk.ca_pem()),
    );
    res.assert_status(502);
    assert_eq!(res.header("x-sidekey-error"), Some("upstream_tls"));

    for (name, upstream) in [
        ("expired", &expired),
        ("self-signed", &self_signed),
        ("wrong-name", &wrong_name),
        ("untrusted", &untrusted),
    ] {
        assert!(
            upstream.requests().is_empty(),
            "{name}: a request reached an upstream sidekey must not trust: {:#?}",
            upstream.requests()
        );
        assert!(
            upstream.tls_failures() > 0,
            "{name}: sidekey should have aborted the handshake"
        );
    }
    let records = sk.wait_audit(
        |r| r["code"] == "upstream_tls",
        cases.len() + 1,
        sidekey::AUDIT_TIMEOUT,
    );
    assert!(records.iter().all(|r| r["status"] == 502), "{records:#?}");
}
