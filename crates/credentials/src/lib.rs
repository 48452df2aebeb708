//! Credentials: where they come from (issuers) and how long they live (the store). A credential
//! value only ever exists in memory, in a [`Secret`] that wipes itself on drop and cannot be
//! formatted; what the rest of sidekey sees is its [`CredentialId`].

mod issuer;
mod local;
mod secret;
mod store;

pub use issuer::{CredentialRequest, IssueError, Issuer};
pub use local::{Jwk, LocalIssuer};
pub use secret::{Credential, CredentialId, Secret};
pub use store::{CredentialError, CredentialStatus, CredentialStore};
