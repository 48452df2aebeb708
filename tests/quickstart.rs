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

/// Set in the process that runs [`run_without_config_uses_the_embedded_quickstart`] inside
/// network and mount namespaces of its own.
const IN_OWN_NAMESPACES: &str = "SIDEKEY_TEST_QUICKSTART_IN_OWN_NAMESPACES";

/// The quickstart's fixed ports: its listeners and the demo API.
const PORTS: [u16; 4] = [15080, 15081, 15090, 15099];

/// `sidekey run` without --config listens on the quickstart's fixed ports and writes its CA to
/// a fixed path, so the test runs in a copy of this test process that has a network namespace
/// of its own (the ports are free there, whatever holds them here) and a mount namespace with
/// an empty tmpfs on the CA's directory (another run's sidekey cannot write over it). Where
/// namespaces cannot be made (not root, no `unshare` or `ip`), it runs here if the ports are
/// free, and fails naming what holds them if not: it never passes without running.
#[test]
fn run_without_config_uses_the_embedded_quickstart() {
    let cert_out = quickstart_cert_out();
    if std::env::var_os(IN_OWN_NAMESPACES).is_some() {
        return embedded_quickstart(cert_out);
    }
    let ca_dir = cert_out.parent().expect("ca.cert_out has a directory");
    match namespaces_unavailable() {
        None => rerun_in_own_namespaces(ca_dir),
        Some(why) => {
            let taken: Vec<String> = PORTS
                .iter()
                .filter(|p| std::net::TcpListener::bind(("127.0.0.1", **p)).is_err())
                .map(|p| format!("{p} (held by {})", port_holders(*p)))
                .collect();
            assert!(
                taken.is_empty(),
                "`sidekey run` without --config needs the quickstart's ports {PORTS:?}; taken \
                 here: {}; and the test cannot run in a network namespace of its own ({why})",
                taken.join(", ")
            );
            embedded_quickstart(cert_out);
        }
    }
}

/// The test itself: the quickstart's listeners, CA file and policy, with no config given.
fn embedded_quickstart(cert_out: PathBuf) {
    let _ = std::fs::remove_file(&cert_out);
    let sk = Sidekey::start_embedded_quickstart(cert_out.clone());
    assert_eq!(sk.forward.port(), PORTS[0]);
    assert_eq!(sk.routes.port(), PORTS[1]);
    assert_eq!(sk.admin.port(), PORTS[2]);
    assert_eq!(http_get(sk.admin, "/healthz").unwrap().0, 200);
    let pem = std::fs::read_to_string(&cert_out).unwrap();
    assert!(
        pem.contains("BEGIN CERTIFICATE") && !pem.contains("PRIVATE KEY"),
        "{pem}"
    );
    // An allowed, credentialed request without internet: the demo API sidekey serves next to
    // the built-in config verifies the token sidekey attached (the agent's own is dropped).
    let res = curl_via(
        &sk,
        &[
            "-H",
            "Authorization: Bearer agent-made-up",
            "http://demo.sidekey.test/whoami",
        ],
    );
    res.assert_status(200);
    let whoami = res.json();
    assert_eq!(whoami["verified"], true, "{whoami}");
    assert_eq!(whoami["aud"], "demo-api", "{whoami}");
    assert_eq!(whoami["iss"], "sidekey-local", "{whoami}");
    let direct = curl(&["--noproxy", "*", "http://127.0.0.1:15099/whoami"]);
    assert_eq!(
        direct.status, 401,
        "without sidekey there is no token: {direct:#?}"
    );
    assert_eq!(direct.json()["verified"], false);
    let record = sk.expect_request_records(1).remove(0);
    assert_eq!(record["route"], "demo");
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["credential"], "demo-api");
    assert_eq!(record["credential_id"], whoami["jti"]);
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
    sk.expect_request_records(4);
}

/// The quickstart's `ca.cert_out`.
fn quickstart_cert_out() -> PathBuf {
    let text = quickstart();
    let cert_out = Regex::new(r"cert_out:\s*(\S+)")
        .unwrap()
        .captures(&text)
        .map(|c| PathBuf::from(&c[1]));
    cert_out.expect("quickstart sets ca.cert_out")
}

/// Why this process cannot make network and mount namespaces (with loopback up), if it cannot.
fn namespaces_unavailable() -> Option<String> {
    let out = std::process::Command::new("unshare")
        .args(["--net", "--mount", "--", "ip", "link", "set", "lo", "up"])
        .output();
    match out {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`unshare --net --mount ip link set lo up`: {}, {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("`unshare`: {e}")),
    }
}

/// Runs this test again, alone, in a copy of this test binary inside new network and mount
/// namespaces: loopback up, an empty tmpfs on `ca_dir`. Fails with its output if it fails, or
/// if it did not run the test.
fn rerun_in_own_namespaces(ca_dir: &std::path::Path) {
    // The tmpfs needs a mount point; sidekey would create the directory anyway.
    std::fs::create_dir_all(ca_dir).expect("create the CA's directory");
    let name = format!(
        "{}::run_without_config_uses_the_embedded_quickstart",
        module_path!().split_once("::").expect("a module path").1
    );
    let exe = std::env::current_exe().expect("this test binary");
    let out = crate::common::clients::output_with_timeout(
        {
            let mut cmd = std::process::Command::new("unshare");
            cmd.args(["--net", "--mount", "--", "sh", "-ec"])
                .arg(r#"ip link set lo up; mount -t tmpfs sidekey-quickstart "$1"; shift; exec "$@""#)
                .arg("sh")
                .arg(ca_dir)
                .arg(exe)
                .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
                .env(IN_OWN_NAMESPACES, "1")
                .stdin(std::process::Stdio::null());
            cmd
        },
        std::time::Duration::from_secs(120),
    );
    let text = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{name} in its own namespaces failed ({}):\n{text}",
        out.status
    );
    assert!(
        text.contains("test result: ok. 1 passed"),
        "{name} did not run in its own namespaces:\n{text}"
    );
}

/// What holds TCP `port` listening: the processes with a listening socket on it (from
/// /proc/net/tcp{,6} and /proc/*/fd), or why that is not known.
fn port_holders(port: u16) -> String {
    let port_hex = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local address, state (0A: listening), inode
            if fields.len() > 9 && fields[1].ends_with(&port_hex) && fields[3] == "0A" {
                inodes.push(format!("socket:[{}]", fields[9]));
            }
        }
    }
    let mut holders = Vec::new();
    for proc_dir in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(fds) = std::fs::read_dir(proc_dir.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|t| inodes.iter().any(|i| t.to_string_lossy() == i.as_str()))
        });
        if holds {
            let cmdline = std::fs::read(proc_dir.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            holders.push(format!(
                "pid {} `{}`",
                proc_dir.file_name().to_string_lossy(),
                cmdline.trim()
            ));
        }
    }
    if holders.is_empty() {
        "a process this test cannot see".to_string()
    } else {
        holders.join(", ")
    }
}
