//! The pod identity the issuer tests log in with: an ES256 key pair the tests own, and JWTs
//! signed with it written to a file (as the kubelet writes a projected service-account token).
//! Issuers under test are told to trust [`Identity::public_pem`] (OpenBao's
//! `jwt_validation_pubkeys`, the OAuth2 server's token-exchange check).

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::now_unix;

/// Issuer (`iss`) of every identity token minted here.
pub const IDENTITY_ISSUER: &str = "https://identity.test.local";

pub struct Identity {
    key_der: Vec<u8>,
    public_pem: String,
    token_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Identity {
    /// A fresh key pair and a token file holding a token for `subject` with audience
    /// `audience`, valid for an hour.
    pub fn new(subject: &str, audience: &str) -> Identity {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate identity key");
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Identity {
            key_der: key.serialize_der(),
            public_pem: key.public_key_pem(),
            token_file: dir.path().join("token"),
            _dir: dir,
        };
        id.write(subject, audience, Duration::from_secs(3600));
        id
    }

    /// SPKI PEM of the verification key.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// Where the current token is (the path sidekey's `identity.token_file` names).
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// The token currently in the file.
    pub fn token(&self) -> String {
        std::fs::read_to_string(&self.token_file).expect("read identity token")
    }

    /// Signs a token with the given claims (plus iss, iat, nbf, exp) and returns it.
    pub fn mint(&self, subject: &str, audience: &str, ttl: Duration, extra: Value) -> String {
        let now = now_unix();
        let mut claims = json!({
            "iss": IDENTITY_ISSUER,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now - 5,
            "exp": now + ttl.as_secs(),
        });
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("test-identity".into());
        let key = EncodingKey::from_ec_der(&self.key_der);
        jsonwebtoken::encode(&header, &claims, &key).expect("sign identity token")
    }

    /// Mints a token and atomically replaces the token file with it (as the kubelet rotates
    /// it). Returns the token.
    pub fn write(&self, subject: &str, audience: &str, ttl: Duration) -> String {
        let token = self.mint(subject, audience, ttl, json!({}));
        let tmp = self.token_file.with_extension("tmp");
        std::fs::write(&tmp, &token).expect("write identity token");
        std::fs::rename(&tmp, &self.token_file).expect("rename identity token");
        token
    }
}
