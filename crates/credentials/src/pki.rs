//! Client certificates from a PKI engine's `sign` endpoint: sidekey makes an ECDSA P-256 key in
//! memory, sends only a CSR for it, and keeps the key inside aws-lc (its PKCS#8 bytes are wiped
//! as soon as rustls has loaded them). What comes back is checked to be a certificate for that
//! key before it is used.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use sidekey_config::CertificateConfig;

use crate::issuer::IssueError;
use crate::TaskContext;

/// A certificate and the key it certifies, ready for a TLS handshake. The key cannot be read
/// back out: it signs handshakes and nothing else.
#[derive(Clone)]
pub struct ClientCertificate {
    certified: Arc<CertifiedKey>,
}

impl ClientCertificate {
    /// What rustls presents: the chain (leaf first) and the signing key.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClientCertificate(chain of {}, key <in memory>)",
            self.certified.cert.len()
        )
    }
}

/// A fresh key, before its certificate exists.
pub(crate) struct NewKey {
    /// PKCS#8, zeroed on drop (aws-lc-rs `Document`).
    pkcs8: aws_lc_rs::pkcs8::Document,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl NewKey {
    pub fn generate() -> Result<NewKey, IssueError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| IssueError::Signing("cannot generate a key".into()))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
            .map_err(|_| IssueError::Signing("cannot load the generated key".into()))?;
        Ok(NewKey { pkcs8, pair, rng })
    }

    /// A PEM CSR for this key naming `names.common_name` (the SANs go as sign parameters, which
    /// the role checks; Vault takes the subject's CN from the parameters too).
    pub fn csr(&self, common_name: &str) -> Result<String, IssueError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params
            .serialize_request(self)
            .and_then(|csr| csr.pem())
            .map_err(|e| IssueError::Signing(format!("cannot make the CSR: {e}")))
    }

    /// The certificate `chain_pem` (leaf first, then its CAs) with this key; refused unless
    /// the leaf certifies this key.
    pub fn certify(self, chain_pem: &[&str]) -> Result<ClientCertificate, IssueError> {
        let mut chain: Vec<CertificateDer<'static>> = Vec::new();
        for pem in chain_pem {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| {
                    IssueError::Response(format!("the certificate is not valid PEM: {e}"))
                })?;
                if !chain.contains(&cert) {
                    chain.push(cert);
                }
            }
        }
        if chain.is_empty() {
            return Err(IssueError::Response("the answer has no certificate".into()));
        }
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.as_ref()));
        let key = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&der)
            .map_err(|e| IssueError::Signing(format!("cannot load the generated key: {e}")))?;
        let certified = CertifiedKey::new(chain, key);
        certified.keys_match().map_err(|e| {
            IssueError::Response(format!(
                "the certificate is not for the key sidekey sent a CSR for: {e}"
            ))
        })?;
        Ok(ClientCertificate {
            certified: Arc::new(certified),
        })
    }
}

impl rcgen::PublicKeyData for NewKey {
    fn der_bytes(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for NewKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.pair
            .sign(&self.rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// The names a certificate is asked for: `{task_id}` and `{sub}` filled in for a per-task one.
pub(crate) fn names(config: &CertificateConfig, task: Option<&TaskContext>) -> CertificateConfig {
    let fill = |s: &String| match task {
        Some(t) => s.replace("{task_id}", &t.task_id).replace("{sub}", &t.sub),
        None => s.clone(),
    };
    CertificateConfig {
        common_name: fill(&config.common_name),
        alt_names: config.alt_names.iter().map(fill).collect(),
        uri_sans: config.uri_sans.iter().map(fill).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate for `key`'s public key, signed by `ca` (what a PKI engine does with the
    /// CSR; OpenBao reading sidekey's CSRs is tested in tests/client_certificate.rs).
    fn sign(key: &NewKey, ca: &rcgen::Issuer<'_, rcgen::KeyPair>) -> String {
        let params = rcgen::CertificateParams::new(vec!["agent.internal".to_string()]).unwrap();
        params.signed_by(key, ca).unwrap().pem()
    }

    fn ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (rcgen::Issuer::new(params, key), cert.pem())
    }

    #[test]
    fn a_certificate_for_the_key_is_a_certified_key_and_one_for_another_key_is_refused() {
        let (ca, ca_pem) = ca();
        let key = NewKey::generate().unwrap();
        let csr = key.csr("agent.internal").unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let leaf = sign(&key, &ca);
        let cert = key.certify(&[&leaf, &ca_pem, &ca_pem]).unwrap();
        assert_eq!(cert.certified_key().cert.len(), 2, "duplicates dropped");
        assert!(!format!("{cert:?}").contains("BEGIN"));

        // A certificate for some other key (an answer mixed up, or tampered with).
        let other = NewKey::generate().unwrap();
        let leaf = sign(&other, &ca);
        let key = NewKey::generate().unwrap();
        let err = key.certify(&[&leaf]).unwrap_err().to_string();
        assert!(err.contains("not for the key"), "{err}");

        let err = NewKey::generate().unwrap().certify(&[]).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }

    #[test]
    fn per_task_names_are_filled_in() {
        let config = CertificateConfig {
            common_name: "{task_id}.tasks.internal".into(),
            alt_names: vec!["agent.internal".into()],
            uri_sans: vec!["spiffe://acme/agent/{sub}/task/{task_id}".into()],
        };
        let task = TaskContext {
            grant_id: "g".into(),
            task_id: "t-42".into(),
            sub: "planner".into(),
            on_behalf_of: None,
            act: Vec::new(),
            expires_at: std::time::SystemTime::UNIX_EPOCH,
        };
        let filled = names(&config, Some(&task));
        assert_eq!(filled.common_name, "t-42.tasks.internal");
        assert_eq!(filled.uri_sans, ["spiffe://acme/agent/planner/task/t-42"]);
        assert_eq!(names(&config, None), config);
    }
}
