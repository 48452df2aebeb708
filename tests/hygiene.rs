//! Secret hygiene (docs/threat-model.md: nothing secret is ever logged, put in a metric, or
//! returned to the agent). One sidekey is driven through allowed, denied, failing and reflecting traffic on every
//! listener; the credentials actually injected are captured at the upstreams, and every byte
//! sidekey wrote — stdout (audit), stderr (logs, at debug level), every admin endpoint, every
//! response and refusal the agent got — is searched for them in raw, base64, base64url,
//! URL-encoded and hex form. Also: the running process cannot dump core.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::common::raw::{h2_raw, H2Case};
use crate::common::*;

fn config() -> String {
    base_config(
        &[
            ("basic.test.local:443", "{upstream}"),
            ("query.test.local:443", "{upstream}"),
            ("down.test.local:443", "{closed}"),
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
  - name: down
    hosts: [down.test.local]
    methods: [GET]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
"#,
        "",
    )
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every encoding of `secret` searched for.
fn forms(secret: &str) -> Vec<(String, String)> {
    let b64 = base64_encode(secret.as_bytes());
    let b64url = b64
        .replace('+', "-")
        .replace('/', "_")
        .trim_end_matches('=')
        .to_string();
    vec![
        ("raw".into(), secret.to_string()),
        ("base64".into(), b64.trim_end_matches('=').to_string()),
        ("base64url".into(), b64url),
        ("url-encoded".into(), percent_encode(secret)),
        ("hex".into(), hex(secret.as_bytes(), false)),
        ("HEX".into(), hex(secret.as_bytes(), true)),
    ]
}

#[test]
fn no_byte_sidekey_writes_contains_the_credential() {
    let env = Env::new();
    let closed = closed_port_addr().to_string();
    let mut sk = env.sidekey_with(&config(), &[("closed", closed)]);
    let proxy = sk.proxy_url();
    let ca = sk.ca_pem().display().to_string();
    let mut seen_by_agent: Vec<String> = Vec::new();
    let mut keep = |what: &str, res: &CurlResult| {
        let mut s = format!("== {what}\n{}\n", res.stderr);
        for (status, headers) in &res.blocks {
            s.push_str(&format!("{status}\n"));
            for (k, v) in headers {
                s.push_str(&format!("{k}: {v}\n"));
            }
        }
        s.push_str(&res.body_str());
        seen_by_agent.push(s);
    };
    let via = |args: &[&str]| {
        let mut all = vec!["-x", proxy.as_str(), "--cacert", ca.as_str()];
        all.extend_from_slice(args);
        curl(&all)
    };
    // Allowed, on every listener and protocol; with a dummy key and a task id.
    for args in [
        vec![
            "--http1.1",
            "-H",
            "Authorization: Bearer sk-dummy",
            "-H",
            "x-sidekey-task: t-1",
            "https://api.test.local/echo/a",
        ],
        vec!["--http2", "https://api.test.local/echo/b?secret=q"],
        vec!["http://plain.test.local/echo/c"],
        vec!["https://basic.test.local/echo/d"],
        vec!["https://query.test.local/echo/e?api_key=dummy"],
        vec![
            "-X",
            "POST",
            "--data",
            "x=1",
            "https://api.test.local/echo/f",
        ],
        vec!["https://api.test.local/sse?n=2&interval_ms=10"],
    ] {
        let res = via(&args);
        assert_eq!(res.status, 200, "{args:?}: {}", res.body_str());
        keep(&format!("{args:?}"), &res);
    }
    let res = curl(&[&format!("{}/r/api/echo/g", sk.routes_url())]);
    res.assert_status(200);
    keep("route listener", &res);
    // Reflecting upstreams.
    for args in [
        vec!["https://api.test.local/reflect-auth"],
        vec![
            "--http2",
            "https://api.test.local/reflect-split?size=3&interval_ms=1",
        ],
        vec!["https://basic.test.local/reflect-auth"],
        vec!["http://plain.test.local/reflect-auth"],
    ] {
        let res = via(&args);
        res.assert_status(200);
        keep(&format!("{args:?}"), &res);
    }
    // Denied and invalid.
    for args in [
        vec!["-X", "DELETE", "https://api.test.local/echo/x"],
        vec!["https://paths.test.local/echo/v2/x"],
        vec![
            "-H",
            "Host: other.test.local",
            "https://api.test.local/echo/x",
        ],
        vec![
            "-H",
            "X-HTTP-Method-Override: DELETE",
            "https://other.test.local/echo/x",
        ],
        vec!["http://evil.test.local/echo/x"],
        vec!["--path-as-is", "https://paths.test.local/echo/v1/../v2"],
    ] {
        let res = via(&args);
        assert!(
            matches!(res.status, 400 | 403) || res.connect_status == 403,
            "{args:?}"
        );
        keep(&format!("{args:?}"), &res);
    }
    // Failing upstream (502 after the credential was fetched and attached).
    let res = via(&["https://down.test.local/echo/x"]);
    keep("down", &res);
    // Raw HTTP/2 refusals and a refusal inside a tunnel.
    for r in h2_raw(
        &sk,
        &[
            H2Case::get(
                "h2 mismatch",
                API,
                "/echo/x",
                &[("host", "evil.test.local")],
            ),
            H2Case::get("h2 ok", API, "/echo/h2raw", &[]),
        ],
    ) {
        seen_by_agent.push(format!("== {}\n{:?}\n{}", r.name, r.headers, r.body));
    }
    let tunnel = connect_tunnel(sk.forward, "api.test.local:443").expect("CONNECT");
    let mut tls = tls_handshake(tunnel, API, Trust::Ca(sk.ca_pem())).expect("TLS");
    tls.write_all(b"GET /echo/x HTTP/1.1\r\nHost: evil.test.local\r\nConnection: close\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut tls, false, false).expect("response");
    seen_by_agent.push(format!("{:?}\n{}", resp.headers, resp.body_str()));

    // What reached the upstreams: the credentials to look for.
    let mut secrets: Vec<String> = Vec::new();
    for r in env
        .upstream
        .requests()
        .into_iter()
        .chain(env.upstream_http.requests())
    {
        if let Some(auth) = r.header("authorization") {
            if let Some(t) = auth.strip_prefix("Bearer ") {
                secrets.push(t.to_string());
                // The signature alone is what makes a JWT unforgeable.
                secrets.push(t.rsplit('.').next().unwrap().to_string());
            }
            if let Some(b) = auth.strip_prefix("Basic ") {
                secrets.push(b.to_string());
                let plain = String::from_utf8(base64_decode(b, false).unwrap()).unwrap();
                secrets.push(plain.split_once(':').unwrap().1.to_string());
            }
        }
        if let Some((_, q)) = r.path.split_once("api_key=") {
            secrets.push(upstream::percent_decode(q.split('&').next().unwrap()));
        }
    }
    secrets.sort();
    secrets.dedup();
    secrets.retain(|s| s != "sk-dummy" && s != "dummy");
    assert!(
        secrets.len() >= 2,
        "no credential reached the upstreams: {secrets:?}"
    );

    // Everything sidekey wrote: every admin page (the JWKS holds the local issuer's keys),
    let mut outputs: Vec<(String, String)> = sk.admin_pages();
    assert!(
        outputs
            .iter()
            .any(|(what, body)| what.contains("jwks") && body.contains("\"keys\"")),
        "{outputs:?}"
    );
    // and everything it writes to its end: it shuts down (draining every exchange, writing its
    // last records and log lines) and the harness reads its stdout and stderr until they close.
    sk.terminate();
    outputs.push(("stdout (audit)".into(), sk.stdout_text()));
    outputs.push(("stderr (logs)".into(), sk.stderr()));
    for (i, s) in seen_by_agent.iter().enumerate() {
        outputs.push((format!("agent response {i}"), s.clone()));
    }
    assert!(
        sk.stderr().contains("DEBUG"),
        "the logs were not at debug level: the most talkative level must be covered too"
    );
    for secret in &secrets {
        for (form, needle) in forms(secret) {
            for (what, text) in &outputs {
                assert!(
                    !text.contains(&needle),
                    "the credential ({form}, {:.10}…) appears in {what}",
                    needle
                );
            }
        }
    }
}

/// Fields of /proc/<pid>/limits for "Max core file size": (soft, hard).
fn core_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    let fields: Vec<&str> = line["Max core file size".len()..]
        .split_whitespace()
        .collect();
    (fields[0].to_string(), fields[1].to_string())
}

#[test]
fn the_running_process_cannot_dump_core() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    assert_eq!(
        core_limit(sk.pid()),
        ("0".into(), "0".into()),
        "RLIMIT_CORE"
    );

    // PR_SET_DUMPABLE 0 shows from outside as the files in /proc/<pid> owned by root instead of the
    // process's user. So run sidekey as an unprivileged user (possible when the tests run as
    // root, as in CI) and look at the owner; otherwise this test's own uid is that user.
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self")
        .expect("stat /proc/self")
        .uid();
    if me != 0 {
        let owner = std::fs::metadata(format!("/proc/{}/status", sk.pid()))
            .unwrap()
            .uid();
        assert_eq!(
            owner, 0,
            "/proc/<pid>/status of a non-dumpable process belongs to root"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let cfg = dir.path().join("sidekey.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: {{ forward: 127.0.0.1:0, routes: 127.0.0.1:0, admin: 127.0.0.1:0 }}\n\
             ca: {{ cert_out: \"{}/ca.pem\" }}\nissuers:\n  local: {{ kind: local }}\n\
             credentials:\n  demo: {{ issuer: local, audience: a, ttl: 5m }}\nroutes: []\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // The build's binary may sit where that user cannot reach (e.g. under /root/.cache): run
    // a copy from the shared temp dir.
    let bin = dir.path().join("sidekey");
    std::fs::copy(sidekey::sidekey_bin(), &bin).expect("copy the sidekey binary");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .current_dir(dir.path())
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sidekey as nobody");
    let pid = child.id();
    // Wait until it has started (the CA file appears once it runs), or has exited.
    let ca_pem = dir.path().join("ca.pem");
    let started = eventually(Duration::from_secs(20), || {
        ca_pem.exists() || !matches!(child.try_wait(), Ok(None))
    });
    if let Ok(Some(status)) = child.try_wait() {
        panic!("sidekey as nobody exited early: {status}");
    }
    assert!(started, "sidekey as nobody did not start");
    let owner = std::fs::metadata(format!("/proc/{pid}/status")).map(|m| m.uid());
    let limit = core_limit(pid);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        owner.expect("stat /proc/<pid>"),
        0,
        "sidekey running as uid 65534 is still dumpable (/proc/<pid>/status not owned by root)"
    );
    assert_eq!(limit, ("0".into(), "0".into()));
}
