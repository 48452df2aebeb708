//! The interception CA. Generated at start, its private key lives only in this process's
//! memory; only the public certificate is written out, for agents to trust. Leaf certificates
//! are minted per host on first use and kept in a bounded LRU cache; all leaves share one key
//! pair (as mitmproxy does), so minting is one signature, not a key generation.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::{provider, TlsError};

/// How long a minted leaf is valid, and when a cached one is replaced.
const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
const LEAF_REMINT_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The CA outlives any reasonable process lifetime; it is regenerated at every start.
const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Clock skew tolerated for agents whose clocks run behind.
const BACKDATE: Duration = Duration::from_secs(3600);

struct CachedLeaf {
    config: Arc<ServerConfig>,
    minted: Instant,
}

/// The in-memory interception CA and its leaf cache.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    leaf_key: KeyPair,
    leaf_signing_key: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<LruCache<String, CachedLeaf>>,
}

impl CertificateAuthority {
    /// A fresh CA (ECDSA P-256) and leaf key; `cache_size` bounds the leaf cache.
    pub fn generate(cache_size: usize) -> Result<Self, TlsError> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            "sidekey interception CA (pod-local, in-memory key)",
        );
        dn.push(DnType::OrganizationName, "sidekey");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&ca_key)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        let issuer = Issuer::new(params, ca_key);

        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signing_key = provider().key_provider.load_private_key(der)?;
        let cap = NonZeroUsize::new(cache_size.max(1)).unwrap_or(NonZeroUsize::MIN);
        Ok(CertificateAuthority {
            issuer,
            cert_der,
            cert_pem,
            leaf_key,
            leaf_signing_key,
            cache: Mutex::new(LruCache::new(cap)),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Writes the public certificate to `path` atomically (temp file + rename), creating the
    /// parent directory. Mode 0644: it is public, and agents in other containers read it.
    pub fn write_cert(&self, path: &Path) -> Result<(), TlsError> {
        let wrap = |source| TlsError::WriteCert {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(wrap)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, self.cert_pem.as_bytes()).map_err(wrap)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(wrap)?;
        }
        std::fs::rename(&tmp, path).map_err(wrap)
    }

    /// A server config presenting a leaf for `host` (a canonical host: DNS name or IP literal),
    /// offering h2 and http/1.1. Cached; minted on a miss or when the cached leaf is old.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        if let Some(config) = self.cached(host) {
            return Ok(config);
        }
        // Mint outside the lock: a signature is cheap but not free, and other hosts must not wait.
        let config = Arc::new(self.mint(host)?);
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(
                host.to_string(),
                CachedLeaf {
                    config: Arc::clone(&config),
                    minted: Instant::now(),
                },
            );
        }
        Ok(config)
    }

    /// Number of leaves currently cached.
    pub fn cached_leaves(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    fn cached(&self, host: &str) -> Option<Arc<ServerConfig>> {
        let mut cache = self.cache.lock().ok()?;
        let leaf = cache.get(host)?;
        (leaf.minted.elapsed() < LEAF_REMINT_AFTER).then(|| Arc::clone(&leaf.config))
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, TlsError> {
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(random_serial());
        let leaf = params.signed_by(&self.leaf_key, &self.issuer)?;
        let chain = vec![leaf.der().clone(), self.cert_der.clone()];
        let certified = Arc::new(CertifiedKey::new(chain, Arc::clone(&self.leaf_signing_key)));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(certified)));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// Always the same certificate: the one for the CONNECT host, whatever SNI says (a mismatch is
/// refused by the proxy after the handshake, with a readable error).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_cached_and_bounded() {
        let ca = CertificateAuthority::generate(2).unwrap();
        let a1 = ca.server_config("a.example").unwrap();
        let a2 = ca.server_config("a.example").unwrap();
        assert!(Arc::ptr_eq(&a1, &a2), "second lookup must hit the cache");
        ca.server_config("b.example").unwrap();
        ca.server_config("c.example").unwrap();
        assert_eq!(ca.cached_leaves(), 2);
        let a3 = ca.server_config("a.example").unwrap();
        assert!(!Arc::ptr_eq(&a1, &a3), "evicted leaf is minted again");
        assert_eq!(
            a3.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn mints_for_ip_literals_and_writes_only_the_public_cert() {
        let ca = CertificateAuthority::generate(8).unwrap();
        ca.server_config("127.0.0.1").unwrap();
        ca.server_config("::1").unwrap();
        let dir = std::env::temp_dir().join(format!("sidekey-ca-test-{}", std::process::id()));
        let path = dir.join("sub/ca.pem");
        ca.write_cert(&path).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!written.contains("PRIVATE KEY"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
