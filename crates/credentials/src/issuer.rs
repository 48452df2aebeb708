//! The issuers a credential can come from. One enum, so adding a kind is one variant and one
//! match arm, and the hot path pays no dynamic dispatch.

use std::time::Duration;

use crate::{Credential, LocalIssuer};

/// Why an issuer could not produce a credential. Messages never contain secret material.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("issuer did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Other(String),
}

/// A configured credential source.
pub enum Issuer {
    Local(LocalIssuer),
}

/// What a credential is asked for: everything an issuer needs besides its own config.
#[derive(Debug, Clone)]
pub struct CredentialRequest {
    pub audience: Option<String>,
    pub subject: Option<String>,
    pub ttl: Duration,
}

impl Issuer {
    /// Fetches a new credential.
    pub async fn issue(&self, request: &CredentialRequest) -> Result<Credential, IssueError> {
        match self {
            Issuer::Local(local) => local.issue(request),
        }
    }

    /// The issuer's kind, for status pages and audit.
    pub fn kind(&self) -> &'static str {
        match self {
            Issuer::Local(_) => "local",
        }
    }
}
