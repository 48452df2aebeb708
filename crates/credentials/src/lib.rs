//! Credentials: where they come from (issuers) and how long they live (the store). A credential
//! value only ever exists in memory, in a [`Secret`] that wipes itself on drop and cannot be
//! formatted; what the rest of sidekey sees is its [`CredentialId`].

mod github;
mod http;
mod issuer;
mod local;
mod oauth2;
mod pki;
mod secret;
mod store;
mod sts;
mod task;
mod uses;
mod vault;

pub use github::GitHubAppIssuer;
pub use issuer::{CredentialRequest, IssueError, Issuer};
pub use local::{Jwk, LocalIssuer};
pub use oauth2::OAuth2Issuer;
pub use secret::{ClientCertificate, Credential, CredentialId, CredentialValue, Lease, Secret};
pub use store::{
    CredentialChanges, CredentialError, CredentialStatus, CredentialStore, Lookup, Retired,
    MAX_TASK_SLOTS,
};
pub use sts::StsIssuer;
pub use task::TaskContext;
pub use vault::VaultIssuer;
