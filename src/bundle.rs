//! `ca.bundle_out`: sidekey's CA certificate followed by the system's trusted roots, for agents
//! whose trust setting *replaces* their roots (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`): hosts in
//! NO_PROXY and `unmatched: tunnel` traffic are not intercepted, so they present their real
//! certificates and must still verify.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where distributions keep their PEM bundle, in the order tried.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine, distroless
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
    "/etc/ssl/cert.pem",                  // Alpine (LibreSSL), macOS
];

/// Overrides [`SYSTEM_BUNDLES`] (a file path): for images that keep their roots elsewhere.
const SYSTEM_BUNDLE_ENV: &str = "SIDEKEY_SYSTEM_CA_BUNDLE";

/// Writes `ca_pem` then the system roots to `path`: atomically (temp file + rename, so an agent
/// never reads half a bundle), mode 0644 (public; read by other containers). Without a system
/// bundle, the CA alone is written and a warning logged.
pub fn write(ca_pem: &str, path: &Path) -> anyhow::Result<()> {
    let mut bundle = ca_pem.trim_end().to_string();
    bundle.push('\n');
    match system_bundle() {
        Some((source, roots)) => {
            bundle.push_str(&roots);
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            tracing::info!(
                path = %path.display(),
                roots = %source.display(),
                "wrote the CA bundle (interception CA + system roots)"
            );
        }
        None => tracing::warn!(
            path = %path.display(),
            "no system CA bundle found (tried {SYSTEM_BUNDLE_ENV} and {}); the bundle holds only \
             the interception CA, so agents using it cannot verify hosts reached directly",
            SYSTEM_BUNDLES.join(", ")
        ),
    }
    write_atomically(path, bundle.as_bytes())
        .with_context(|| format!("cannot write the CA bundle to {}", path.display()))
}

fn system_bundle() -> Option<(PathBuf, String)> {
    let candidates: Vec<PathBuf> = match std::env::var_os(SYSTEM_BUNDLE_ENV) {
        Some(path) => vec![PathBuf::from(path)],
        None => SYSTEM_BUNDLES.iter().map(PathBuf::from).collect(),
    };
    candidates.into_iter().find_map(|path| {
        let text = std::fs::read_to_string(&path).ok()?;
        text.contains("-----BEGIN CERTIFICATE-----")
            .then_some((path, text))
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::rename(&tmp, path)
}
