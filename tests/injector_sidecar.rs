//! What the Kubernetes sidecar relies on in the `sidekey` binary itself:
//! - `sidekey probe [ready|live]`, the exec probes (the admin listener stays on loopback, out of
//!   kubelet's reach): exit 0 against a ready sidekey, non-zero against a closed port or a
//!   not-ready answer, the admin address taken from the config, `--wait` for postStart hooks;
//! - `ca.bundle_out`: sidekey's CA followed by the system roots, for SSL_CERT_FILE and
//!   REQUESTS_CA_BUNDLE, usable by a real client both through sidekey and directly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn probe(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(crate::common::sidekey::sidekey_bin());
    cmd.arg("probe").args(args).env_remove("SIDEKEY_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run sidekey probe")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn probe_against_a_running_sidekey() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let admin = sk.admin.to_string();

    for kind in ["ready", "live"] {
        let out = probe(&[kind, "--admin", &admin], &[]);
        assert!(out.status.success(), "{kind}: {}", text(&out));
    }
    // No kind: ready.
    let out = probe(&["--admin", &admin], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("/readyz"), "{}", text(&out));

    // The admin address from the config, given as the sidecar gives it: SIDEKEY_CONFIG.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidekey.yaml");
    std::fs::write(&config, format!("listen: {{ admin: \"{admin}\" }}\n")).unwrap();
    let out = probe(&["ready"], &[("SIDEKEY_CONFIG", &config)]);
    assert!(out.status.success(), "{}", text(&out));

    // `--wait` returns at once when ready.
    let start = Instant::now();
    let out = probe(&["ready", "--admin", &admin, "--wait", "30s"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn probe_fails_against_a_closed_port_or_a_not_ready_answer() {
    let closed = closed_port().to_string();
    for kind in ["ready", "live"] {
        let out = probe(&[kind, "--admin", &closed, "--timeout", "1s"], &[]);
        assert_eq!(out.status.code(), Some(1), "{kind}: {}", text(&out));
        assert!(text(&out).contains(&closed), "{}", text(&out));
    }

    // `--wait` keeps asking, then gives up.
    let start = Instant::now();
    let out = probe(&["ready", "--admin", &closed, "--wait", "1s"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        start.elapsed() >= Duration::from_millis(700),
        "{:?}",
        start.elapsed()
    );

    // A listener that answers 503 (what /readyz says before eager credentials are held).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut head = String::new();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let body = "not ready: eager credentials are not held yet\n";
        write!(
            stream,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        head
    });
    let out = probe(&["ready", "--admin", &addr], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("503"), "{}", text(&out));
    assert!(text(&out).contains("eager credentials"), "{}", text(&out));
    let head = server.join().unwrap();
    assert!(head.starts_with("GET /readyz HTTP/1.1\r\n"), "{head}");

    // A config with the admin listener off: nothing to probe, said so.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidekey.yaml");
    std::fs::write(&config, "listen: { admin: off }\n").unwrap();
    let out = probe(&["live", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("admin listener off"), "{}", text(&out));
}

/// Starts `sidekey run` with `config` and `env`, waits until `file` holds a certificate, and
/// returns the child and its stderr so far.
fn run_until_written(
    config: &Path,
    file: &Path,
    env: &[(&str, &Path)],
) -> (std::process::Child, String) {
    let mut cmd = Command::new(crate::common::sidekey::sidekey_bin());
    cmd.args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("SIDEKEY_LOG", "info")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn sidekey");
    // sidekey writes the file atomically, after logging about it (stderr is unbuffered): once
    // it is there, so is its log line.
    assert!(
        eventually(Duration::from_secs(20), || {
            std::fs::read_to_string(file).is_ok_and(|t| t.contains("END CERTIFICATE"))
        }),
        "{} not written",
        file.display()
    );
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child, stderr)
}

#[test]
fn bundle_out_holds_the_ca_then_the_system_roots() {
    let env = Env::new();
    let yaml = base_config(&[], "", "").replacen(
        "upstream:",
        "ca:\n  cert_out: \"{dir}/ca.pem\"\n  bundle_out: \"{dir}/trust/bundle.pem\"\nupstream:",
        1,
    );
    let yaml = format!(
        "listen: {{ forward: 127.0.0.1:0, routes: 127.0.0.1:0, admin: 127.0.0.1:0 }}\n{yaml}"
    );
    let sk = Sidekey::start_raw(&yaml, &env.vars());
    let bundle_path = sk.dir().join("trust/bundle.pem");
    let bundle = std::fs::read_to_string(&bundle_path).expect("bundle written at start");
    let ca = std::fs::read_to_string(sk.ca_pem()).unwrap();
    assert!(
        bundle.starts_with(ca.trim_end()),
        "the bundle starts with sidekey's CA"
    );
    let system = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
        .expect("Debian's ca-certificates (installed by scripts/install-test-deps)");
    assert!(bundle.ends_with(&system), "then the system roots, whole");
    assert_eq!(
        bundle.matches("BEGIN CERTIFICATE").count(),
        system.matches("BEGIN CERTIFICATE").count() + 1
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&bundle_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
    // No temp file left behind (written atomically).
    let leftovers: Vec<_> = std::fs::read_dir(sk.dir().join("trust"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // A client given the bundle alone verifies sidekey's intercepted connections.
    let bundle_arg = bundle_path.display().to_string();
    let proxy = sk.proxy_url();
    let res = curl(&[
        "-x",
        &proxy,
        "--cacert",
        &bundle_arg,
        "https://api.test.local/echo/x",
    ]);
    assert_eq!(res.status, 200, "{res:#?}");
}

#[test]
fn bundle_out_verifies_hosts_reached_directly() {
    // The "system roots" are the test CA here, so a direct (NO_PROXY) connection to the test
    // upstream must verify with the bundle, and sidekey's interception too.
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    let config = dir.path().join("sidekey.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {{ forward: 127.0.0.1:0, routes: off, admin: 127.0.0.1:0 }}\nca: {{ bundle_out: \"{}\" }}\n",
            bundle.display()
        ),
    )
    .unwrap();
    let (_, _) = run_until_written(
        &config,
        &bundle,
        &[("SIDEKEY_SYSTEM_CA_BUNDLE", env.ca.pem_path())],
    );
    let text = std::fs::read_to_string(&bundle).unwrap();
    assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 2, "{text}");
    assert!(text.ends_with(env.ca.cert_pem()), "{text}");
    let direct = format!(
        "https://upstream.test.local:{}/echo/direct",
        env.upstream.addr().port()
    );
    let resolve = format!(
        "upstream.test.local:{}:127.0.0.1",
        env.upstream.addr().port()
    );
    let res = curl(&[
        "--cacert",
        bundle.to_str().unwrap(),
        "--resolve",
        &resolve,
        &direct,
    ]);
    // The test upstream's certificate covers *.test.local.
    assert_eq!(res.status, 200, "{res:#?}");

    // Without any system bundle: the CA alone, and a warning.
    let lone = dir.path().join("lone.pem");
    std::fs::write(
        &config,
        format!(
            "listen: {{ forward: 127.0.0.1:0, routes: off, admin: 127.0.0.1:0 }}\nca: {{ bundle_out: \"{}\" }}\n",
            lone.display()
        ),
    )
    .unwrap();
    let missing = dir.path().join("no-such-bundle.pem");
    let (_, stderr) = run_until_written(&config, &lone, &[("SIDEKEY_SYSTEM_CA_BUNDLE", &missing)]);
    let text = std::fs::read_to_string(&lone).unwrap();
    assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 1, "{text}");
    assert!(stderr.contains("no system CA bundle found"), "{stderr}");
}
