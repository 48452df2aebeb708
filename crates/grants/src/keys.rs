//! Keys that sign grants: trusted public keys from JWKS documents, sidekey's own in-memory key
//! (it signs the child grants it derives), and Ed25519 key files for `sidekey grant sign`.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use zeroize::Zeroizing;

/// The asymmetric signature algorithms a grant may use. HMAC is never accepted (a shared
/// secret would let the verifier mint), nor `none` (jsonwebtoken has no such algorithm).
const ALLOWED: &[Algorithm] = &[
    Algorithm::EdDSA,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// One public key, pinned to one algorithm.
#[derive(Clone)]
pub(crate) struct TrustedKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// The public keys of one source (a JWKS file or URL).
#[derive(Clone, Default)]
pub(crate) struct KeySet {
    pub keys: Vec<TrustedKey>,
}

impl KeySet {
    /// Reads a JWKS document. Keys for encryption (`use: enc`) are skipped; symmetric keys and
    /// keys whose algorithm is not an allowed signature algorithm are refused, so that a
    /// misconfigured source fails loudly instead of silently trusting less or more.
    pub fn from_jwks(json: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let inferred = match &jwk.algorithm {
                AlgorithmParameters::OctetKey(_) => {
                    return Err(format!(
                    "key {i} is a symmetric (oct) key: grants are verified with public keys only"
                ))
                }
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    _ => return Err(format!("key {i}: curve {:?} is not supported", ec.curve)),
                },
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
            };
            let alg = match jwk.common.key_algorithm {
                None => inferred,
                Some(alg) => {
                    let named: Algorithm = alg.to_string().parse().map_err(|_| {
                        format!("key {i}: algorithm {alg} is not a signature algorithm")
                    })?;
                    named
                }
            };
            if !ALLOWED.contains(&alg) {
                return Err(format!(
                    "key {i}: algorithm {alg:?} is not allowed for grants (asymmetric only)"
                ));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i}: {e}"))?;
            keys.push(TrustedKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err("the JWKS has no signature keys".into());
        }
        Ok(KeySet { keys })
    }

    /// The keys that may have signed a token with this header: by `kid` when it names one,
    /// else every key of the header's algorithm.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a TrustedKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.alg == alg
                && match (kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) | (None, _) => true,
                }
        })
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// An Ed25519 signing key: sidekey's own (generated at start, in memory only) or one read from
/// a file by `sidekey grant sign`.
pub struct SigningKey {
    pub(crate) kid: String,
    pub(crate) encoding: EncodingKey,
    pub(crate) public: KeySet,
    jwk: serde_json::Value,
}

impl SigningKey {
    /// A fresh key that lives only in this process.
    pub fn generate() -> Result<SigningKey, String> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| "Ed25519 key generation failed".to_string())?;
        SigningKey::from_pkcs8(pkcs8.as_ref())
    }

    /// Reads a PKCS#8 PEM Ed25519 private key (as `sidekey grant keygen` writes it).
    pub fn from_pem_file(path: &Path) -> Result<SigningKey, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the key {}: {e}", path.display()))?,
        );
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let der = Zeroizing::new(
            STANDARD
                .decode(body.trim())
                .map_err(|_| format!("{} is not a PEM private key", path.display()))?,
        );
        SigningKey::from_pkcs8(&der).map_err(|e| {
            format!(
                "{}: {e} (an Ed25519 PKCS#8 key is expected)",
                path.display()
            )
        })
    }

    fn from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
        let pair =
            Ed25519KeyPair::from_pkcs8(der).map_err(|_| "not an Ed25519 PKCS#8 key".to_string())?;
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#).as_bytes(),
        );
        // RFC 7638 thumbprint.
        let kid = URL_SAFE_NO_PAD.encode(digest.as_ref());
        let jwk = serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"
        });
        let public =
            KeySet::from_jwks(serde_json::json!({ "keys": [jwk] }).to_string().as_bytes())?;
        Ok(SigningKey {
            kid,
            encoding: EncodingKey::from_ed_der(der),
            public,
            jwk,
        })
    }

    /// The JWKS document of the public key, as trusted by `grants.trusted[].jwks_file`.
    pub fn jwks(&self) -> String {
        serde_json::to_string_pretty(&serde_json::json!({ "keys": [self.jwk] })).unwrap_or_default()
    }

    /// A new key as PKCS#8 PEM, for `sidekey grant keygen`.
    pub fn generate_pem() -> Result<Zeroizing<String>, String> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| "Ed25519 key generation failed".to_string())?;
        let b64 = Zeroizing::new(STANDARD.encode(pkcs8.as_ref()));
        Ok(Zeroizing::new(format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            b64.as_str()
        )))
    }
}
