//! Upstream TLS: certificates are always verified, against the webpki roots plus any extra CA
//! files the config names. TLS 1.2 and 1.3 only.

use std::path::Path;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::{provider, TlsError};

/// A client config trusting webpki roots and every certificate in `extra_ca_files`.
pub fn upstream_client_config<P: AsRef<Path>>(
    extra_ca_files: &[P],
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra_ca_files {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let mut added = 0;
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| TlsError::CaFile {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| TlsError::CaFile {
                path: shown.clone(),
                message: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| TlsError::CaFile {
                path: shown.clone(),
                message: e.to_string(),
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::EmptyCaFile(shown));
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_ca_files_are_loaded_or_refused_clearly() {
        let dir = std::env::temp_dir().join(format!("sidekey-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = crate::CertificateAuthority::generate(
            crate::InterceptScope::default(),
            crate::LeafLimits::default(),
        )
        .unwrap();
        let good = dir.join("good.pem");
        std::fs::write(&good, ca.cert_pem()).unwrap();
        assert!(upstream_client_config(&[&good]).is_ok());

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a pem\n").unwrap();
        let err = upstream_client_config(&[&empty]).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");

        let missing = dir.join("missing.pem");
        let err = upstream_client_config(&[&missing]).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
