//! `GitHubApi`: a stand-in for GitHub's REST API as a GitHub App sees it
//! (tests/clients/github_app_server.py: installation tokens minted after verifying the App JWT,
//! revocation, and repository resources that check a token's narrowing), on a free loopback
//! port, with a fresh RSA key pair as the App's key. Every event the server prints (`minted`,
//! `revoked`, `refused`, `resource`) is kept. Killed on drop; its stderr is printed if the test
//! panics.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ca::{ServerCert, TestCa};
use super::clients::{clients_dir, curl, python_bin};
use super::sidekey::PROXY_VARS;

pub const APP_ID: u64 = 12345;
pub const INSTALLATION_ID: u64 = 678;

#[derive(Default)]
struct Seen {
    lines: Vec<Value>,
    stderr: Vec<String>,
}

pub struct GitHubApi {
    child: Child,
    pub port: u16,
    scheme: &'static str,
    seen: Arc<(Mutex<Seen>, Condvar)>,
    key_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// A new RSA private key, PKCS#1 PEM as GitHub hands them out, and its public key (SPKI PEM).
pub fn rsa_key_pair() -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key.pem");
    let status = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .expect("openssl genrsa");
    assert!(status.success());
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .stderr(Stdio::null())
        .output()
        .expect("openssl rsa -pubout");
    assert!(public.status.success());
    (
        std::fs::read_to_string(&key).expect("read key"),
        String::from_utf8(public.stdout).expect("PEM"),
    )
}

impl GitHubApi {
    /// The server, trusting a new App key (see [`GitHubApi::key_file`]); with
    /// `overgrant`, it grants more than asked.
    pub fn start(overgrant: bool) -> GitHubApi {
        Self::start_with_keys(rsa_key_pair(), &[], overgrant)
    }

    /// The server, trusting the public half of `key` (private, public PEM) — the key
    /// [`GitHubApi::key_file`] holds — and the public keys `more` (PEM) after it: a
    /// minted event's `key` is the index of the one that verified the App JWT.
    pub fn start_with_keys(key: (String, String), more: &[&str], overgrant: bool) -> GitHubApi {
        Self::spawn(key, more, overgrant, None)
    }

    /// The server over HTTPS with a certificate of `ca` for `names` (and 127.0.0.1), trusting
    /// a new App key.
    pub fn start_tls(ca: &TestCa, names: &[&str]) -> GitHubApi {
        let mut all: Vec<&str> = names.to_vec();
        all.push("127.0.0.1");
        Self::spawn(rsa_key_pair(), &[], false, Some(ca.issue(&all)))
    }

    fn spawn(
        key: (String, String),
        more: &[&str],
        overgrant: bool,
        tls: Option<ServerCert>,
    ) -> GitHubApi {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("app-key.pem");
        std::fs::write(&key_file, &key.0).expect("write key");
        let mut cmd = Command::new(python_bin());
        cmd.arg(clients_dir().join("github_app_server.py"));
        for (i, public) in std::iter::once(key.1.as_str())
            .chain(more.iter().copied())
            .enumerate()
        {
            let public_file = dir.path().join(format!("app-key-{i}.pub.pem"));
            std::fs::write(&public_file, public).expect("write public key");
            cmd.arg("--public-key").arg(&public_file);
        }
        cmd.args(["--app-id", &APP_ID.to_string()])
            .args(["--installation-id", &INSTALLATION_ID.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if overgrant {
            cmd.arg("--overgrant");
        }
        if let Some(cert) = &tls {
            let (cert_file, key_file) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
            std::fs::write(&cert_file, &cert.cert_pem).expect("write certificate");
            std::fs::write(&key_file, &cert.key_pem).expect("write TLS key");
            cmd.arg("--tls-cert")
                .arg(&cert_file)
                .arg("--tls-key")
                .arg(&key_file);
        }
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let mut child = cmd.spawn().expect("spawn github_app_server.py");
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let out = child.stdout.take().expect("stdout");
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| Value::String(format!("not JSON: {line}")));
                s.0.lock().unwrap().lines.push(value);
                s.1.notify_all();
            }
        });
        let err = child.stderr.take().expect("stderr");
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                s.0.lock().unwrap().stderr.push(line);
            }
        });
        let mut api = GitHubApi {
            child,
            port: 0,
            scheme: if tls.is_some() { "https" } else { "http" },
            seen,
            key_file,
            _dir: dir,
        };
        let ready = api.wait_event("ready", 1, Duration::from_secs(20));
        api.port = ready[0]["port"].as_u64().expect("port") as u16;
        api
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A file holding the App's private key.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// Grants more than asked from now on (`true`), or exactly what is asked.
    pub fn set_overgrant(&self, overgrant: bool) {
        let res = curl(&[
            "--noproxy",
            "*",
            "-X",
            "POST",
            "--data",
            if overgrant { "overgrant" } else { "normal" },
            &format!("{}/_mode", self.url()),
        ]);
        assert_eq!(res.status, 204, "{res:#?}");
    }

    /// Answers the next resource request 401, whatever its token.
    pub fn reject_next(&self) {
        let res = curl(&[
            "--noproxy",
            "*",
            "-X",
            "POST",
            &format!("{}/_reject_next", self.url()),
        ]);
        assert_eq!(res.status, 204, "{res:#?}");
    }

    /// Every line the server printed so far.
    pub fn lines(&self) -> Vec<Value> {
        self.seen.0.lock().unwrap().lines.clone()
    }

    /// The events of kind `event` so far.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// Waits until at least `n` events of kind `event` were printed; returns them all.
    pub fn wait_event(&self, event: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.seen;
        let mut seen = lock.lock().unwrap();
        loop {
            let found: Vec<Value> = seen
                .lines
                .iter()
                .filter(|v| v["event"] == event)
                .cloned()
                .collect();
            if found.len() >= n {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "github api: fewer than {n} `{event}` events within {timeout:?}; got {:#?}\nstderr: {}",
                seen.lines,
                seen.stderr.join("\n")
            );
            seen = changed.wait_timeout(seen, left).unwrap().0;
        }
    }
}

impl Drop for GitHubApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let seen = self.seen.0.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("--- github api stderr ---\n{}", seen.stderr.join("\n"));
        }
    }
}
