//! Secret values and the credentials that carry them.

use std::fmt;
use std::time::SystemTime;

use zeroize::Zeroizing;

/// A credential value. Wiped from memory on drop; `Debug` shows only that it is redacted and
/// there is no `Display`, so it cannot end up in a log line or an error by accident.
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }

    /// The value, for the one place that attaches it to a request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The issuer's identifier of one credential (JWT `jti`, lease ID, access key ID…): what the
/// audit trail records instead of the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialId(pub String);

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One issued credential.
#[derive(Debug)]
pub struct Credential {
    pub id: CredentialId,
    pub secret: Secret,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

impl Credential {
    /// True when `now` is at or past expiry.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2-canary".into());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let c = Credential {
            id: CredentialId("id-1".into()),
            secret: s,
            issued_at: SystemTime::UNIX_EPOCH,
            expires_at: SystemTime::UNIX_EPOCH,
        };
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("id-1"));
    }
}
