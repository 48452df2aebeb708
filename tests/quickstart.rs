//! examples/quickstart.yaml as a newcomer runs it: its routes and credential, unchanged, with
//! httpbin.org pinned (upstream.resolve) to a local HTTPS server whose CA sidekey is told to
//! trust; and `sidekey run` with no --config, which uses the embedded quickstart.

use std::path::PathBuf;

use crate::common::sidekey::{repo_root, strip_top_level_keys};
use crate::common::*;
use regex::Regex;

fn quickstart() -> String {
    std::fs::read_to_string(repo_root().join("examples/quickstart.yaml")).expect("read quickstart")
}

/// The quickstart's first credential audience (the `aud` the upstream should see).
fn quickstart_audience(text: &str) -> String {
    Regex::new(r"audience:\s*([A-Za-z0-9._:/-]+)")
        .unwrap()
        .captures(text)
        .expect("an audience")[1]
        .to_string()
}

#[test]
fn quickstart_routes_inject_end_to_end_against_a_local_httpbin() {
    let ca = TestCa::new("quickstart test CA");
    let httpbin = Upstream::https_with_names(&ca, &["httpbin.org"], "httpbin");
    let text = quickstart();
    // The quickstart's routes, issuers and credentials as they are; the harness's listen/ca;
    // httpbin.org pinned to the local server, which lives on loopback (hence allow_private).
    let body = strip_top_level_keys(&text, &["listen", "ca", "upstream"]).replace(
        "  - name: httpbin\n",
        "  - name: httpbin\n    allow_private: true\n",
    );
    assert!(
        body.contains("allow_private: true"),
        "quickstart has no `- name: httpbin` route"
    );
    let config = format!(
        "upstream:\n  extra_ca_files: [\"{{test_ca}}\"]\n  resolve:\n    \"httpbin.org:443\": \"{{httpbin}}\"\n{body}"
    );
    let sk = Sidekey::start(
        &config,
        &[
            ("test_ca", ca.pem_path().display().to_string()),
            ("httpbin", httpbin.addr().to_string()),
        ],
    );

    let res = curl_via(
        &sk,
        &[
            "-H",
            "Authorization: Bearer sk-dummy",
            "https://httpbin.org/anything/hello",
        ],
    );
    res.assert_status(200);
    let seen = httpbin.only_request();
    assert_eq!(seen.sni.as_deref(), Some("httpbin.org"));
    assert_eq!(seen.path, "/anything/hello");
    assert_eq!(seen.header_all("authorization").len(), 1);
    let token = seen.bearer().expect("bearer").to_string();
    let claims = assert_local_jwt(&token, &quickstart_audience(&text));

    // What the quickstart does not allow.
    curl_via(&sk, &["-X", "DELETE", "https://httpbin.org/anything/x"])
        .expect_refusal(403, "method_not_allowed");
    curl_via(&sk, &["https://httpbin.org/status/200"]).expect_refusal(403, "path_not_allowed");
    let res = curl_via(&sk, &["https://example.com/"]);
    assert_eq!(res.connect_status, 403, "{res:#?}");
    assert_eq!(httpbin.requests().len(), 1);

    let records = sk.expect_request_records(4);
    let allowed: Vec<_> = records
        .iter()
        .filter(|r| r["decision"] == "allow")
        .collect();
    assert_eq!(allowed.len(), 1, "{records:#?}");
    assert_eq!(allowed[0]["route"], "httpbin");
    assert_eq!(allowed[0]["credential_id"], claims["jti"]);

    // The JWKS on the admin listener verifies what the upstream got.
    let (status, jwks) = http_get(sk.admin, "/.well-known/jwks.json").unwrap();
    assert_eq!(status, 200);
    assert_eq!(verify_jwt(&jwks, &token)["valid"], true);
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[test]
fn run_without_config_uses_the_embedded_quickstart() {
    let text = quickstart();
    let ports = [15080u16, 15081, 15090];
    if !ports.iter().all(|p| port_free(*p)) {
        eprintln!("quickstart ports {ports:?} are in use here; `sidekey run` without --config not started");
        return;
    }
    let cert_out = Regex::new(r"cert_out:\s*(\S+)")
        .unwrap()
        .captures(&text)
        .map(|c| PathBuf::from(&c[1]));
    let cert_out = cert_out.expect("quickstart sets ca.cert_out");
    let _ = std::fs::remove_file(&cert_out);
    let sk = Sidekey::start_embedded_quickstart(cert_out.clone());
    assert_eq!(sk.forward.port(), 15080);
    assert_eq!(sk.routes.port(), 15081);
    assert_eq!(sk.admin.port(), 15090);
    assert_eq!(http_get(sk.admin, "/healthz").unwrap().0, 200);
    let pem = std::fs::read_to_string(&cert_out).unwrap();
    assert!(
        pem.contains("BEGIN CERTIFICATE") && !pem.contains("PRIVATE KEY"),
        "{pem}"
    );
    // The embedded policy is the quickstart's: refusals need no network.
    let res = curl_via(&sk, &["https://example.com/"]);
    assert_eq!(res.connect_status, 403, "{res:#?}");
    curl(&[&format!("{}/r/httpbin/status/200", sk.routes_url())])
        .expect_refusal(403, "path_not_allowed");
    curl(&[
        "-X",
        "DELETE",
        &format!("{}/r/httpbin/anything", sk.routes_url()),
    ])
    .expect_refusal(403, "method_not_allowed");
    sk.expect_request_records(3);
}
