//! Task grants as the tests hand them out: a key pair made by `sidekey grant keygen` and the
//! `grants:` section trusting it, root grants signed with `sidekey grant sign`, child grants and
//! revocations asked of a running sidekey (`sidekey grant derive|revoke` on its admin listener),
//! and curl presenting a grant the way an agent does (the proxy password in HTTPS_PROXY).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::clients::{curl, decode_jwt, CurlResult};
use super::sidekey::{run_sidekey, CheckOutput, Sidekey};

/// The `grants.audience` of [`Keys::section`]: grants are signed for it.
pub const AUDIENCE: &str = "sk-test";

/// A grant key pair made by `sidekey grant keygen`, in a temp dir of its own.
pub struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    pub fn new() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = keygen(dir.path());
        assert_eq!(out.code, Some(0), "keygen: {out:?}");
        Keys { dir }
    }

    /// The private key (`grant-key.pem`).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("grant-key.pem")
    }

    /// The public keys (`grant-jwks.json`), for `grants.trusted[].jwks_file`.
    pub fn jwks(&self) -> PathBuf {
        self.dir.path().join("grant-jwks.json")
    }

    /// The top-level `grants:` section trusting these keys, audience [`AUDIENCE`].
    pub fn section(&self, required: bool) -> String {
        format!(
            "grants:\n  audience: {AUDIENCE}\n  required: {required}\n  trusted:\n    - jwks_file: {}\n",
            self.jwks().display()
        )
    }

    /// `sidekey grant sign` with these keys: a root grant of `task` for the agent `sub`;
    /// `extra` are more options (`--user`, `--route`, `--ttl`).
    pub fn sign(&self, audience: &str, sub: &str, task: &str, extra: &[&str]) -> String {
        sign_with(&self.key(), audience, sub, task, extra)
    }
}

/// `sidekey grant keygen --dir DIR`.
pub fn keygen(dir: &Path) -> CheckOutput {
    run_sidekey(&[
        "grant".as_ref(),
        "keygen".as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
    ])
}

/// `sidekey grant sign` with the private key `key`; the grant it printed.
pub fn sign_with(key: &Path, audience: &str, sub: &str, task: &str, extra: &[&str]) -> String {
    let mut args: Vec<&OsStr> = vec![
        "grant".as_ref(),
        "sign".as_ref(),
        "--key".as_ref(),
        key.as_os_str(),
        "--audience".as_ref(),
        audience.as_ref(),
        "--sub".as_ref(),
        sub.as_ref(),
        "--task".as_ref(),
        task.as_ref(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let out = run_sidekey(&args);
    assert_eq!(out.code, Some(0), "sign: {out:?}");
    out.stdout.trim().to_string()
}

/// `http://task:<grant>@<forward>`: what an agent's HTTPS_PROXY says.
pub fn proxy_with(sk: &Sidekey, grant: &str) -> String {
    format!("http://task:{grant}@{}", sk.forward)
}

/// curl through sidekey presenting `grant` as the proxy password, trusting sidekey's CA.
pub fn curl_granted(sk: &Sidekey, grant: &str, args: &[&str]) -> CurlResult {
    let proxy = proxy_with(sk, grant);
    let ca = sk.ca_pem().display().to_string();
    let mut all = vec!["-x", proxy.as_str(), "--cacert", ca.as_str()];
    all.extend_from_slice(args);
    curl(&all)
}

/// A JWT's payload (not verified).
pub fn payload(token: &str) -> Value {
    decode_jwt(token).1
}

/// A JWT's `jti`.
#[track_caller]
pub fn jti(token: &str) -> String {
    payload(token)["jti"]
        .as_str()
        .unwrap_or_else(|| panic!("no jti in {}", payload(token)))
        .to_string()
}

/// `sidekey grant derive` against the running sidekey: the output and exit code.
pub fn derive(sk: &Sidekey, parent: &str, sub: &str, extra: &[&str]) -> CheckOutput {
    let admin = sk.admin.to_string();
    let mut args: Vec<&OsStr> = vec![
        "grant".as_ref(),
        "derive".as_ref(),
        "--admin".as_ref(),
        admin.as_ref(),
        "--grant".as_ref(),
        parent.as_ref(),
        "--sub".as_ref(),
        sub.as_ref(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    run_sidekey(&args)
}

/// [`derive`] that must succeed: the child grant.
#[track_caller]
pub fn child(sk: &Sidekey, parent: &str, sub: &str, extra: &[&str]) -> String {
    let out = derive(sk, parent, sub, extra);
    assert_eq!(out.code, Some(0), "derive {sub}: {out:?}");
    out.stdout.trim().to_string()
}

/// `sidekey grant revoke --grant BY [JTI]` against the running sidekey (no `jti`: `by` itself).
pub fn revoke(sk: &Sidekey, by: &str, jti: Option<&str>) -> CheckOutput {
    let admin = sk.admin.to_string();
    let mut args: Vec<&OsStr> = vec![
        "grant".as_ref(),
        "revoke".as_ref(),
        "--admin".as_ref(),
        admin.as_ref(),
        "--grant".as_ref(),
        by.as_ref(),
    ];
    if let Some(jti) = jti {
        args.push(jti.as_ref());
    }
    run_sidekey(&args)
}

/// [`crate::common::base_config`] with grants trusting `keys` and a route `tasks`
/// (https://tasks.test.local, GET) whose credential `task_jwt` is a local JWT issued per task.
pub fn per_task_config(keys: &Keys) -> String {
    crate::common::base_config(
        &[("tasks.test.local:443", "{upstream}")],
        "  - name: tasks\n    hosts: [tasks.test.local]\n    methods: [GET]\n    credential: task_jwt\n    inject: { header: Authorization, value: \"Bearer {token}\" }\n    allow_private: true\n",
        &format!(
            "  task_jwt: {{ issuer: local, audience: demo-api, ttl: 5m, per_task: true }}\n{}",
            keys.section(false)
        ),
    )
}
