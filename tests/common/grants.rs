//! Task grants for the integration tests, made the way an orchestrator and an agent make them:
//! `sidekey grant keygen|sign` for the keys and root grants, `sidekey grant derive|revoke`
//! against the running sidekey's admin listener, and the grant given to clients as the proxy
//! password.

use std::path::{Path, PathBuf};

use super::clients::{curl, CurlResult};
use super::sidekey::{run_sidekey, CheckOutput, Sidekey};

/// A grant key pair made by `sidekey grant keygen`, and the config block trusting it.
pub struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    pub fn new() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = run_sidekey(&[
            "grant".as_ref(),
            "keygen".as_ref(),
            "--dir".as_ref(),
            dir.path().as_os_str(),
        ]);
        assert_eq!(out.code, Some(0), "keygen: {out:?}");
        let key = dir.path().join("grant-key.pem");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).expect("key").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the private key is the owner's only");
        // Keygen does not overwrite.
        let again = run_sidekey(&[
            "grant".as_ref(),
            "keygen".as_ref(),
            "--dir".as_ref(),
            dir.path().as_os_str(),
        ]);
        assert_eq!(again.code, Some(1), "{again:?}");
        Keys { dir }
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("grant-key.pem")
    }

    pub fn jwks(&self) -> PathBuf {
        self.dir.path().join("grant-jwks.json")
    }

    /// The `grants:` section trusting these keys (a top-level block).
    pub fn grants_yaml(&self, audience: &str, required: bool) -> String {
        format!(
            "grants:\n  audience: {audience}\n  required: {required}\n  trusted:\n    - jwks_file: {}\n",
            self.jwks().display()
        )
    }

    /// `sidekey grant sign` with these keys.
    pub fn sign(&self, audience: &str, sub: &str, task: &str, extra: &[&str]) -> String {
        sign_with(&self.key(), audience, sub, task, extra)
    }
}

/// `sidekey grant sign --key <key> --audience … --sub … --task … <extra>`: a root grant.
pub fn sign_with(key: &Path, audience: &str, sub: &str, task: &str, extra: &[&str]) -> String {
    let mut args: Vec<&std::ffi::OsStr> = vec![
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
    args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    let out = run_sidekey(&args);
    assert_eq!(out.code, Some(0), "sign: {out:?}");
    out.stdout.trim().to_string()
}

/// `http://task:<grant>@<forward>`.
pub fn proxy_with(sk: &Sidekey, grant: &str) -> String {
    format!("http://task:{grant}@{}", sk.forward)
}

/// curl through sidekey presenting `grant` as the proxy password.
pub fn curl_granted(sk: &Sidekey, grant: &str, args: &[&str]) -> CurlResult {
    let proxy = proxy_with(sk, grant);
    let ca = sk.ca_pem().display().to_string();
    let mut all = vec!["-x", proxy.as_str(), "--cacert", ca.as_str()];
    all.extend_from_slice(args);
    curl(&all)
}

/// `sidekey grant derive` against the running sidekey; the output and exit code.
pub fn derive(sk: &Sidekey, parent: &str, sub: &str, extra: &[&str]) -> CheckOutput {
    let admin = sk.admin.to_string();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "grant".as_ref(),
        "derive".as_ref(),
        "--admin".as_ref(),
        admin.as_ref(),
        "--grant".as_ref(),
        parent.as_ref(),
        "--sub".as_ref(),
        sub.as_ref(),
    ];
    args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    run_sidekey(&args)
}

/// `sidekey grant revoke` against the running sidekey: `jti`, or the presented grant itself.
pub fn revoke(sk: &Sidekey, by: &str, jti: Option<&str>) -> CheckOutput {
    let admin = sk.admin.to_string();
    let mut args: Vec<&std::ffi::OsStr> = vec![
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
