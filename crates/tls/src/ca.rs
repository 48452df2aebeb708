//! The interception CA. Generated at start, its private key lives only in this process's
//! memory; only the public certificate is written out, for agents to trust. The certificate is
//! name-constrained to the intercepted routes' hosts ([`InterceptScope`]), so it vouches for
//! nothing else. Leaf certificates are minted per host on first use and kept in a bounded LRU
//! cache; all leaves share one key pair (as mitmproxy does), so minting is one signature, not a
//! key generation. Minting for names a route does not list exactly (names under a wildcard
//! route, of which an agent can invent any number) draws on a token bucket, so a flood of fresh
//! names is refused instead of burning CPU and churning the cache.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sidekey_policy::CanonicalHost;
use time::OffsetDateTime;

use crate::{provider, InterceptScope, TlsError};

/// How long a minted leaf is valid, and when a cached one is replaced.
const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
const LEAF_REMINT_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The CA outlives any reasonable process lifetime; it is regenerated at every start.
const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Clock skew tolerated for agents whose clocks run behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Bounds on the leaf cache and on minting (config `ca:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafLimits {
    /// Leaves kept in memory (LRU). At least 1.
    pub cache_size: usize,
    /// New leaves per second, sustained, for names no route lists exactly.
    pub mint_rate: u32,
    /// New leaves at once (bucket size) for names no route lists exactly.
    pub mint_burst: u32,
}

impl Default for LeafLimits {
    fn default() -> Self {
        LeafLimits {
            cache_size: 1024,
            mint_rate: 10,
            mint_burst: 50,
        }
    }
}

struct CachedLeaf {
    config: Arc<ServerConfig>,
    minted: Instant,
}

/// The CA's key pair, shared between the certificates a reload re-issues.
#[derive(Clone)]
struct SharedKey(Arc<KeyPair>);

impl rcgen::PublicKeyData for SharedKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen::PublicKeyData::algorithm(&*self.0)
    }
}

impl rcgen::SigningKey for SharedKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

/// The key pairs, kept for the life of the process (re-issued certificates reuse them).
#[derive(Clone)]
struct Keys {
    ca: SharedKey,
    leaf: Arc<KeyPair>,
    /// `leaf`, loaded for rustls.
    leaf_signing: Arc<dyn rustls::sign::SigningKey>,
}

/// One CA certificate and what it was made from.
#[derive(Clone)]
struct CaCert {
    params: CertificateParams,
    der: CertificateDer<'static>,
    pem: String,
}

/// The in-memory interception CA and its leaf cache.
pub struct CertificateAuthority {
    scope: InterceptScope,
    keys: Keys,
    cert: CaCert,
    issuer: Issuer<'static, SharedKey>,
    cache: Mutex<LruCache<CanonicalHost, CachedLeaf>>,
    budget: Mutex<MintBudget>,
    limits: LeafLimits,
}

impl CertificateAuthority {
    /// A fresh CA (ECDSA P-256), name-constrained to `scope`, and a leaf key.
    pub fn generate(scope: InterceptScope, limits: LeafLimits) -> Result<Self, TlsError> {
        let ca = SharedKey(Arc::new(KeyPair::generate_for(
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )?));
        let leaf = Arc::new(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?);
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.serialize_der()));
        let leaf_signing = provider().key_provider.load_private_key(der)?;
        let keys = Keys {
            ca,
            leaf,
            leaf_signing,
        };
        let cert = ca_certificate(&scope, &keys.ca)?;
        Ok(CertificateAuthority::assemble(scope, keys, cert, limits))
    }

    /// The CA for a reloaded config, with the same key pairs and subject. When `scope`
    /// differs, the certificate is re-issued with the new name constraints (the constraints
    /// are part of the signed certificate): agents that trust the old certificate keep
    /// reaching the hosts both scopes share, since leaves chain to either by subject and key;
    /// a new host needs the new certificate. When it does not, the certificate is kept. The
    /// leaf cache and mint budget start afresh with `limits`.
    pub fn reconfigured(
        &self,
        scope: InterceptScope,
        limits: LeafLimits,
    ) -> Result<Self, TlsError> {
        let cert = if scope == self.scope {
            self.cert.clone()
        } else {
            ca_certificate(&scope, &self.keys.ca)?
        };
        Ok(CertificateAuthority::assemble(
            scope,
            self.keys.clone(),
            cert,
            limits,
        ))
    }

    fn assemble(scope: InterceptScope, keys: Keys, cert: CaCert, limits: LeafLimits) -> Self {
        let cap = NonZeroUsize::new(limits.cache_size).unwrap_or(NonZeroUsize::MIN);
        CertificateAuthority {
            scope,
            issuer: Issuer::new(cert.params.clone(), keys.ca.clone()),
            keys,
            cert,
            cache: Mutex::new(LruCache::new(cap)),
            budget: Mutex::new(MintBudget::new(limits, Instant::now())),
            limits,
        }
    }

    /// The bounds on the leaf cache and minting.
    pub fn limits(&self) -> LeafLimits {
        self.limits
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert.pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert.der
    }

    /// The hosts this CA may issue for.
    pub fn scope(&self) -> &InterceptScope {
        &self.scope
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
        std::fs::write(&tmp, self.cert.pem.as_bytes()).map_err(wrap)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(wrap)?;
        }
        std::fs::rename(&tmp, path).map_err(wrap)
    }

    /// A server config presenting a leaf for `host`, offering h2 and http/1.1, TLS 1.2 and 1.3
    /// only. Cached; minted on a miss or when the cached leaf is old. Refused for a host outside
    /// the scope, and when the mint budget is spent (hosts a route lists exactly are exempt).
    pub fn server_config(&self, host: &CanonicalHost) -> Result<Arc<ServerConfig>, TlsError> {
        self.leaf(host).map(|(config, _)| config)
    }

    /// [`CertificateAuthority::server_config`], saying whether the leaf was minted for this call
    /// (true) or came from the cache (false): what the metrics count.
    pub fn leaf(&self, host: &CanonicalHost) -> Result<(Arc<ServerConfig>, bool), TlsError> {
        if let Some(config) = self.cached(host) {
            return Ok((config, false));
        }
        if !self.scope.permits(host) {
            return Err(TlsError::OutOfScope(host.to_string()));
        }
        if !self.scope.is_listed(host) && !self.take_mint_token() {
            return Err(TlsError::MintRateExceeded {
                rate: self.limits.mint_rate,
                burst: self.limits.mint_burst,
            });
        }
        // Mint outside the lock: a signature is cheap but not free, and other hosts must not wait.
        let config = Arc::new(self.server_config_for(self.sign_leaf(host)?.der().clone())?);
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(
                host.clone(),
                CachedLeaf {
                    config: Arc::clone(&config),
                    minted: Instant::now(),
                },
            );
        }
        Ok((config, true))
    }

    /// Number of leaves currently cached.
    pub fn cached_leaves(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    fn cached(&self, host: &CanonicalHost) -> Option<Arc<ServerConfig>> {
        let mut cache = self.cache.lock().ok()?;
        let leaf = cache.get(host)?;
        (leaf.minted.elapsed() < LEAF_REMINT_AFTER).then(|| Arc::clone(&leaf.config))
    }

    fn take_mint_token(&self) -> bool {
        self.budget
            .lock()
            .map(|mut b| b.try_take(Instant::now()))
            .unwrap_or(false)
    }

    /// Signs a leaf for `host`, whatever the scope says (the caller checks it; tests use this
    /// to show that verifiers reject out-of-scope leaves).
    fn sign_leaf(&self, host: &CanonicalHost) -> Result<rcgen::Certificate, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        match host {
            CanonicalHost::Domain(d) => {
                params.subject_alt_names = vec![SanType::DnsName(d.to_string().try_into()?)];
                dn.push(DnType::CommonName, &**d);
            }
            // No CN for an IP leaf: OpenSSL checks a CN that looks like a DNS name ("10.0.0.7"
            // does) against the CA's dNSName constraints when the leaf has no DNS SAN, and
            // would reject it. An empty subject makes rcgen mark the SAN critical, as RFC 5280
            // requires.
            other => {
                if let Some(ip) = other.ip() {
                    params.subject_alt_names = vec![SanType::IpAddress(ip)];
                }
            }
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(random_serial());
        Ok(params.signed_by(&*self.keys.leaf, &self.issuer)?)
    }

    fn server_config_for(&self, leaf: CertificateDer<'static>) -> Result<ServerConfig, TlsError> {
        let chain = vec![leaf, self.cert.der.clone()];
        let certified = Arc::new(CertifiedKey::new(
            chain,
            Arc::clone(&self.keys.leaf_signing),
        ));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(certified)));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug)]
struct MintBudget {
    tokens: f64,
    refilled: Instant,
    rate: f64,
    burst: f64,
}

impl MintBudget {
    fn new(limits: LeafLimits, now: Instant) -> Self {
        let burst = f64::from(limits.mint_burst.max(1));
        MintBudget {
            tokens: burst,
            refilled: now,
            rate: f64::from(limits.mint_rate),
            burst,
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A self-signed CA certificate for `key`, name-constrained to `scope`. The subject is fixed,
/// so that every certificate of one key is the same issuer to a verifier.
fn ca_certificate(scope: &InterceptScope, key: &SharedKey) -> Result<CaCert, TlsError> {
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
    // rcgen marks the extension critical (RFC 5280 §4.2.1.10: "MUST be critical").
    params.name_constraints = Some(scope.name_constraints());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(key)?;
    Ok(CaCert {
        der: cert.der().clone(),
        pem: cert.pem(),
        params,
    })
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
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::{CertificateError, RootCertStore};
    use rustls_pki_types::{ServerName, UnixTime};
    use sidekey_policy::HostPattern;

    fn host(s: &str) -> CanonicalHost {
        CanonicalHost::parse(s).unwrap()
    }

    fn ca_for(hosts: &[&str], limits: LeafLimits) -> CertificateAuthority {
        let patterns: Vec<HostPattern> = hosts
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect();
        CertificateAuthority::generate(InterceptScope::from_patterns(&patterns), limits).unwrap()
    }

    fn limits(cache_size: usize) -> LeafLimits {
        LeafLimits {
            cache_size,
            ..LeafLimits::default()
        }
    }

    /// rustls-webpki's verdict on `leaf` for `name`, trusting only `ca`.
    fn webpki_verify(
        ca: &CertificateAuthority,
        leaf: &CertificateDer<'static>,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn leaves_are_cached_and_bounded() {
        let ca = ca_for(&["a.example", "b.example", "c.example"], limits(2));
        let a1 = ca.server_config(&host("a.example")).unwrap();
        let a2 = ca.server_config(&host("a.example")).unwrap();
        assert!(Arc::ptr_eq(&a1, &a2), "second lookup must hit the cache");
        ca.server_config(&host("b.example")).unwrap();
        ca.server_config(&host("c.example")).unwrap();
        assert_eq!(ca.cached_leaves(), 2);
        let a3 = ca.server_config(&host("a.example")).unwrap();
        assert!(!Arc::ptr_eq(&a1, &a3), "evicted leaf is minted again");
        assert_eq!(
            a3.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn mints_for_ip_literals_and_writes_only_the_public_cert() {
        let ca = ca_for(&["127.0.0.1", "::1"], limits(8));
        ca.server_config(&host("127.0.0.1")).unwrap();
        ca.server_config(&host("::1")).unwrap();
        let dir = std::env::temp_dir().join(format!("sidekey-ca-test-{}", std::process::id()));
        let path = dir.join("sub/ca.pem");
        ca.write_cert(&path).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!written.contains("PRIVATE KEY"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_to_mint_outside_the_scope() {
        let ca = ca_for(&["api.example.com", "*.svc.example.org"], limits(8));
        for name in ["evil.example", "example.com", "svc.example.org", "10.0.0.1"] {
            match ca.server_config(&host(name)) {
                Err(TlsError::OutOfScope(h)) => assert_eq!(h, name),
                Err(e) => panic!("{name}: wrong error {e}"),
                Ok(_) => panic!("{name}: minted a leaf outside the scope"),
            }
        }
        assert_eq!(ca.cached_leaves(), 0);
        ca.server_config(&host("a.svc.example.org")).unwrap();
    }

    /// The name constraints hold even against a leaf the CA's own key signed: webpki accepts
    /// leaves for the routes' hosts and rejects everything else.
    #[test]
    fn webpki_rejects_leaves_outside_the_constraints() {
        let ca = ca_for(
            &["api.example.com", "*.svc.example.org", "10.0.0.7"],
            limits(8),
        );
        for name in ["api.example.com", "a.svc.example.org", "10.0.0.7"] {
            let leaf = ca.sign_leaf(&host(name)).unwrap();
            webpki_verify(&ca, leaf.der(), name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for name in [
            "evil.example",
            "example.com",
            "svc.example.org",
            "10.0.0.8",
            "::1",
        ] {
            let leaf = ca.sign_leaf(&host(name)).unwrap();
            let err = webpki_verify(&ca, leaf.der(), name).expect_err(name);
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(CertificateError::Other(_))
                ),
                "{name}: {err:?}"
            );
            assert!(
                format!("{err:?}").contains("NameConstraintViolation"),
                "{err:?}"
            );
        }
    }

    /// The same with OpenSSL (curl, Python and Node verify with it), through `openssl verify`.
    #[test]
    fn openssl_rejects_leaves_outside_the_constraints() {
        let ca = ca_for(
            &["api.example.com", "*.svc.example.org", "10.0.0.7"],
            limits(8),
        );
        let dir = std::env::temp_dir().join(format!("sidekey-nc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        let verify = |name: &str| {
            let leaf = ca.sign_leaf(&host(name)).unwrap();
            let leaf_path = dir.join("leaf.pem");
            std::fs::write(&leaf_path, leaf.pem()).unwrap();
            let out = std::process::Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(&ca_path)
                .arg(&leaf_path)
                .output()
                .expect("openssl is installed");
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), text)
        };
        for name in ["api.example.com", "a.svc.example.org", "10.0.0.7"] {
            let (ok, text) = verify(name);
            assert!(ok, "{name}: {text}");
        }
        for name in ["evil.example", "svc.example.org", "10.0.0.8", "::1"] {
            let (ok, text) = verify(name);
            assert!(!ok, "{name}: openssl accepted it: {text}");
            assert!(text.contains("subtree violation"), "{name}: {text}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn scope_of(hosts: &[&str]) -> InterceptScope {
        let patterns: Vec<HostPattern> = hosts
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect();
        InterceptScope::from_patterns(&patterns)
    }

    /// A reload that changes the hosts re-issues the certificate with the new constraints and
    /// the same key and subject: leaves from the new CA chain to the old certificate for the
    /// hosts both share (agents that loaded it keep working), the new host needs the new one.
    #[test]
    fn a_new_scope_reissues_the_certificate_with_the_same_key() {
        let old = ca_for(&["kept.example", "gone.example"], limits(8));
        let new = old
            .reconfigured(scope_of(&["kept.example", "new.example"]), limits(8))
            .unwrap();
        assert_ne!(old.cert_der(), new.cert_der());
        let spki = |ca: &CertificateAuthority| {
            let (_, cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
            (
                cert.public_key().raw.to_vec(),
                cert.subject().to_string(),
                cert.tbs_certificate.serial.clone(),
            )
        };
        let (old_key, old_subject, old_serial) = spki(&old);
        let (new_key, new_subject, new_serial) = spki(&new);
        assert_eq!(old_key, new_key, "same key pair");
        assert_eq!(old_subject, new_subject, "same subject");
        assert_ne!(old_serial, new_serial, "a new certificate");

        let leaf = new.sign_leaf(&host("kept.example")).unwrap();
        webpki_verify(&old, leaf.der(), "kept.example").expect("old anchor, shared host");
        webpki_verify(&new, leaf.der(), "kept.example").expect("new anchor, shared host");
        let leaf = new.sign_leaf(&host("new.example")).unwrap();
        webpki_verify(&new, leaf.der(), "new.example").expect("new anchor, new host");
        let err = webpki_verify(&old, leaf.der(), "new.example").expect_err("old anchor");
        assert!(
            format!("{err:?}").contains("NameConstraintViolation"),
            "{err:?}"
        );
        assert!(matches!(
            new.server_config(&host("gone.example")),
            Err(TlsError::OutOfScope(_))
        ));
    }

    #[test]
    fn the_same_scope_keeps_the_certificate() {
        let old = ca_for(&["a.example"], limits(8));
        old.server_config(&host("a.example")).unwrap();
        let new = old
            .reconfigured(scope_of(&["a.example"]), limits(2))
            .unwrap();
        assert_eq!(old.cert_der(), new.cert_der());
        assert_eq!(old.cert_pem(), new.cert_pem());
        assert_eq!(new.limits().cache_size, 2);
        assert_eq!(new.cached_leaves(), 0, "the leaf cache starts afresh");
    }

    #[test]
    fn minting_for_unlisted_names_is_rate_limited() {
        let ca = ca_for(
            &["api.example.com", "*.svc.example.org"],
            LeafLimits {
                cache_size: 1000,
                mint_rate: 1,
                mint_burst: 5,
            },
        );
        let mut refused = 0;
        for i in 0..50 {
            match ca.server_config(&host(&format!("n{i}.svc.example.org"))) {
                Ok(_) => {}
                Err(TlsError::MintRateExceeded { rate: 1, burst: 5 }) => refused += 1,
                Err(e) => panic!("wrong error: {e}"),
            }
        }
        // 5 from the bucket, perhaps one more refilled while the loop ran.
        assert!((44..=45).contains(&refused), "{refused} refused");
        // Cached names still work, and so do hosts a route lists exactly.
        ca.server_config(&host("n0.svc.example.org")).unwrap();
        ca.server_config(&host("api.example.com")).unwrap();
    }

    #[test]
    fn the_budget_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = MintBudget::new(
            LeafLimits {
                cache_size: 1,
                mint_rate: 2,
                mint_burst: 3,
            },
            t0,
        );
        assert!((0..3).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_millis(500)));
        assert!(!b.try_take(t0 + Duration::from_millis(600)));
        // Never more than the burst, however long it was idle.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
    }
}
