//! `TestCa`: a throw-away certificate authority (ECDSA P-256, rcgen) that signs the test
//! upstreams' server certificates. Its PEM is written to a temp dir so sidekey can be told to
//! trust it (`upstream.extra_ca_files`) and clients can trust it in blind-tunnel tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test certificate authority. The files live as long as the value.
pub struct TestCa {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    pem_path: PathBuf,
}

/// A server certificate issued by a [`TestCa`].
pub struct ServerCert {
    pub cert_der: CertificateDer<'static>,
    pub ca_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pkcs8_der: Vec<u8>,
    pub key_pem: String,
}

impl TestCa {
    /// A CA whose subject CN is `name` (shows up in TLS errors, which helps when debugging).
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "sidekey tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        let issuer = Issuer::new(params, key);

        let dir = tempfile::Builder::new()
            .prefix("sidekey-test-ca-")
            .tempdir()
            .expect("tempdir");
        let pem_path = dir.path().join("test-ca.pem");
        std::fs::write(&pem_path, &cert_pem).expect("write CA PEM");
        TestCa {
            dir,
            issuer,
            cert_der,
            cert_pem,
            pem_path,
        }
    }

    /// Path of the CA certificate (PEM).
    pub fn pem_path(&self) -> &Path {
        &self.pem_path
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Directory the CA's files live in (removed when the CA is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a server certificate for `names`: DNS names, wildcards (`*.test.local`) or IP
    /// literals (which become IP SANs).
    pub fn issue(&self, names: &[&str]) -> ServerCert {
        self.issue_with(names, |_| {})
    }

    /// Like [`TestCa::issue`], with `adjust` applied to the parameters before signing (to make
    /// e.g. an expired certificate).
    pub fn issue_with(
        &self,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> ServerCert {
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        ServerCert {
            cert_der: cert.der().clone(),
            ca_der: self.cert_der.clone(),
            cert_pem: cert.pem(),
            key_pkcs8_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls server config presenting a certificate for `names`, offering ALPN `alpn`.
    pub fn server_config(&self, names: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let leaf = self.issue(names);
        let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.cert_der, leaf.ca_der],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_pkcs8_der)),
            )
            .expect("server cert");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// The crypto provider every test TLS config uses (aws-lc-rs, like sidekey).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
