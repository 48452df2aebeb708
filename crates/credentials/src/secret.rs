//! The credentials issuers hand out: an ID for the audit trail, and the values, each a
//! [`Secret`] (see `sidekey-secret`).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

pub use sidekey_secret::Secret;

pub use crate::pki::ClientCertificate;

/// The issuer's identifier of one credential (JWT `jti`, lease ID, access key ID…): what the
/// audit trail records instead of the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialId(pub Arc<str>);

impl CredentialId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a credential is made of.
#[derive(Debug)]
pub enum CredentialValue {
    /// A bearer token, API key or password: what `{token}` stands for in `inject`.
    Token(Secret),
    /// Temporary AWS keys, used to sign requests (SigV4), never sent as such.
    Aws {
        access_key_id: String,
        secret_access_key: Secret,
        session_token: Secret,
    },
    /// A TLS client certificate and its key (made in memory, never sent): presented to the
    /// upstreams of routes that name it as `client_certificate`.
    Certificate(ClientCertificate),
}

/// A lease the issuer can renew or revoke (Vault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Not a secret: it is the credential's ID in the audit trail.
    pub id: String,
    pub renewable: bool,
    /// Accessor of the issuer token that created the lease (Vault revokes a lease with its
    /// token). Not a secret: an accessor cannot be used as the token.
    pub owner: Option<String>,
}

/// One issued credential.
#[derive(Debug)]
pub struct Credential {
    pub id: CredentialId,
    pub value: CredentialValue,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    pub lease: Option<Lease>,
}

impl Credential {
    /// A token credential without a lease.
    pub fn token(
        id: impl Into<String>,
        secret: Secret,
        issued_at: SystemTime,
        expires_at: SystemTime,
    ) -> Self {
        Credential {
            id: CredentialId(Arc::from(id.into())),
            value: CredentialValue::Token(secret),
            issued_at,
            expires_at,
            lease: None,
        }
    }

    /// True when `now` is at or past expiry.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }

    /// The token, for credentials that are one.
    pub fn token_value(&self) -> Option<&Secret> {
        match &self.value {
            CredentialValue::Token(s) => Some(s),
            CredentialValue::Aws { .. } | CredentialValue::Certificate(_) => None,
        }
    }

    /// Every secret part, for scrubbing them out of what comes back from upstreams.
    pub fn secrets(&self) -> Vec<&Secret> {
        match &self.value {
            CredentialValue::Token(s) => vec![s],
            CredentialValue::Aws {
                secret_access_key,
                session_token,
                ..
            } => vec![secret_access_key, session_token],
            // The key never leaves sidekey: nothing an upstream could echo.
            CredentialValue::Certificate(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2-canary".into());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let c = Credential::token("id-1", s, SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("id-1"));
        let aws = Credential {
            id: CredentialId("ASIAEXAMPLE".into()),
            value: CredentialValue::Aws {
                access_key_id: "ASIAEXAMPLE".into(),
                secret_access_key: Secret::new("aws-secret-canary".into()),
                session_token: Secret::new("aws-session-canary".into()),
            },
            issued_at: SystemTime::UNIX_EPOCH,
            expires_at: SystemTime::UNIX_EPOCH,
            lease: None,
        };
        let dbg = format!("{aws:?}");
        assert!(!dbg.contains("canary"), "{dbg}");
    }
}
