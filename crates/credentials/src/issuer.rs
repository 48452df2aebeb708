//! The issuers a credential can come from. One enum, so adding a kind is one variant and one
//! match arm, and the hot path pays no dynamic dispatch (issuers are only called off it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sidekey_config::{CredentialConfig, IssuerConfig, IssuerKind};

use crate::github::GitHubAppIssuer;
use crate::oauth2::OAuth2Issuer;
use crate::sts::{check_session_policy, StsIssuer};
use crate::vault::VaultIssuer;
use crate::{Credential, Lease, LocalIssuer, TaskContext};

/// Why an issuer could not produce, renew or revoke a credential. Messages never contain
/// secret material: no token, no request body, and only the parts of an issuer's answer that
/// are documented to be error descriptions.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("issuer did not answer within {0:?}")]
    Timeout(Duration),
    /// The identity token, client secret, key or policy file could not be read.
    #[error("{0}")]
    File(String),
    /// Connection, TLS or protocol failure talking to the issuer.
    #[error("cannot reach the issuer: {0}")]
    Transport(String),
    /// The issuer answered with an error status. `code` is a short, standard error code
    /// (OAuth2 `error`, STS `Code`); `message` the rest, for logs and audit only.
    #[error("issuer refused ({status}): {message}")]
    Refused {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// The issuer answered, but not with what was expected.
    #[error("unexpected answer from the issuer: {0}")]
    Response(String),
    /// A setting the issuer cannot work with (found at start).
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Other(String),
}

impl IssueError {
    /// What the agent is told: the kind of failure and standard codes, never the issuer's free
    /// text (an error page may echo what sidekey sent it). The full text goes to the log and
    /// the audit trail.
    pub fn public(&self) -> String {
        match self {
            IssueError::Refused {
                status,
                code: Some(code),
                ..
            } => format!("issuer refused ({status}): {code}"),
            IssueError::Refused { status, .. } => format!("issuer refused ({status})"),
            IssueError::Response(_) => "unexpected answer from the issuer".to_string(),
            IssueError::Transport(_) => "cannot reach the issuer".to_string(),
            other => other.to_string(),
        }
    }
}

/// A configured credential source.
pub enum Issuer {
    Local(LocalIssuer),
    Vault(VaultIssuer),
    OAuth2(OAuth2Issuer),
    AwsSts(StsIssuer),
    GitHubApp(GitHubAppIssuer),
}

/// What a credential is asked for: everything an issuer needs besides its own config. Built
/// from the credential's config (the part a reload compares), plus, for a per-task
/// credential, the task it is issued for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialRequest {
    /// The credential's name (for messages).
    pub name: String,
    pub audience: Option<String>,
    pub subject: Option<String>,
    pub ttl: Duration,
    pub path: Option<String>,
    pub field: Option<String>,
    pub params: Vec<(String, String)>,
    pub scope: Option<String>,
    pub resource: Option<String>,
    /// The session policy document (read at start); for a per-task credential, a template
    /// whose `{task_id}`, `{sub}` and `{on_behalf_of}` are filled in per task.
    pub session_policy: Option<String>,
    /// github-app: the repositories the token is narrowed to (empty: all of the installation's).
    pub repositories: Vec<String>,
    /// github-app: the permissions the token is narrowed to.
    pub permissions: Vec<(String, String)>,
    /// vault: a client certificate for a key made in memory, signed at `path`.
    pub certificate: Option<sidekey_config::CertificateConfig>,
    /// The task a per-task credential is issued for; `None` for a shared credential, and for
    /// the request a per-task credential is configured with (its tasks' requests carry one).
    pub task: Option<TaskContext>,
}

impl CredentialRequest {
    /// From the config; reads and checks the session policy file, so that a missing or
    /// malformed one stops the start (or the reload).
    pub fn from_config(c: &CredentialConfig) -> Result<Self, IssueError> {
        let session_policy = match &c.session_policy_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    IssueError::File(format!(
                        "cannot read session policy {}: {e}",
                        path.display()
                    ))
                })?;
                check_session_policy(&text, c.per_task).map_err(|reason| {
                    IssueError::Config(format!("session policy {}: {reason}", path.display()))
                })?;
                Some(text)
            }
            None => None,
        };
        Ok(CredentialRequest {
            name: c.name.clone(),
            audience: c.audience.clone(),
            subject: c.subject.clone(),
            ttl: c.ttl,
            path: c.path.clone(),
            field: c.field.clone(),
            params: c.params.clone(),
            scope: c.scope.clone(),
            resource: c.resource.clone(),
            session_policy,
            repositories: c.repositories.clone(),
            permissions: c.permissions.clone(),
            certificate: c.certificate.clone(),
            task: None,
        })
    }
}

impl Issuer {
    /// Builds the issuer for `config`: keys generated or loaded, HTTP clients ready. Nothing is
    /// fetched yet. `built` holds the issuers built before it: a github-app issuer reads its
    /// key through one of them (see [`Issuer::build_order`]).
    pub fn build(
        config: &IssuerConfig,
        built: &HashMap<String, Arc<Issuer>>,
    ) -> Result<Issuer, IssueError> {
        Ok(match &config.kind {
            IssuerKind::Local(c) => Issuer::Local(LocalIssuer::generate(c)?),
            IssuerKind::Vault(c) => Issuer::Vault(VaultIssuer::new(&config.name, c)?),
            IssuerKind::OAuth2(c) => Issuer::OAuth2(OAuth2Issuer::new(&config.name, c)?),
            IssuerKind::AwsSts(c) => Issuer::AwsSts(StsIssuer::new(&config.name, c)?),
            IssuerKind::GitHubApp(c) => {
                Issuer::GitHubApp(GitHubAppIssuer::new(&config.name, c, built)?)
            }
        })
    }

    /// `configs` in the order they can be built: issuers that use another issuer (github-app,
    /// whose key is read through a vault issuer) after the others.
    pub fn build_order(configs: &[IssuerConfig]) -> Vec<&IssuerConfig> {
        let (dependent, independent): (Vec<_>, Vec<_>) = configs
            .iter()
            .partition(|c| matches!(c.kind, IssuerKind::GitHubApp(_)));
        independent.into_iter().chain(dependent).collect()
    }

    /// The issuer this one uses (github-app: the vault issuer its key is read through): it must
    /// be rebuilt when that one is.
    pub fn uses(&self) -> Option<&Arc<Issuer>> {
        match self {
            Issuer::GitHubApp(github) => github.key_issuer(),
            _ => None,
        }
    }

    /// Builds every configured issuer, by name.
    pub fn build_all(
        configs: &[IssuerConfig],
    ) -> Result<HashMap<String, Arc<Issuer>>, (String, IssueError)> {
        let mut out = HashMap::new();
        for c in Issuer::build_order(configs) {
            let issuer = Issuer::build(c, &out).map_err(|e| (c.name.clone(), e))?;
            out.insert(c.name.clone(), Arc::new(issuer));
        }
        Ok(out)
    }

    /// Fetches a new credential. `signer` is the credential's `task_assertion_issuer` (a
    /// per-task oauth2 credential's; ignored by the other kinds).
    pub async fn issue(
        &self,
        request: &CredentialRequest,
        signer: Option<&LocalIssuer>,
    ) -> Result<Credential, IssueError> {
        match self {
            Issuer::Local(local) => local.issue(request),
            Issuer::Vault(vault) => vault.issue(request).await,
            Issuer::OAuth2(oauth2) => oauth2.issue(request, signer).await,
            Issuer::AwsSts(sts) => sts.issue(request).await,
            Issuer::GitHubApp(github) => github.issue(request).await,
        }
    }

    /// The local issuer this is, if it is one.
    pub fn as_local(&self) -> Option<&LocalIssuer> {
        match self {
            Issuer::Local(local) => Some(local),
            _ => None,
        }
    }

    /// Extends a lease by `increment`; returns the lease's new remaining duration (which the
    /// issuer may have capped).
    pub async fn renew(&self, lease: &Lease, increment: Duration) -> Result<Duration, IssueError> {
        match self {
            Issuer::Vault(vault) => vault.renew(lease, increment).await,
            _ => Err(IssueError::Other(format!(
                "{} issuers have no leases to renew",
                self.kind()
            ))),
        }
    }

    /// When `lease` must be given up whatever its own TTL says (Vault: the token that created
    /// it ends then), if the issuer knows.
    pub fn lease_end(&self, lease: &Lease) -> Option<SystemTime> {
        match self {
            Issuer::Vault(vault) => vault.lease_end(lease),
            _ => None,
        }
    }

    /// A receiver that changes whenever [`Issuer::lease_end`] may answer differently; `None`
    /// for issuers whose leases never end early.
    pub fn lease_ends(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match self {
            Issuer::Vault(vault) => Some(vault.lease_ends()),
            _ => None,
        }
    }

    /// Revokes a lease (at shutdown and retirement; github-app: the installation token).
    pub async fn revoke(&self, lease: &Lease) -> Result<(), IssueError> {
        match self {
            Issuer::Vault(vault) => vault.revoke(lease).await,
            Issuer::GitHubApp(github) => github.revoke(lease).await,
            _ => Ok(()),
        }
    }

    /// Gives up what the issuer holds for itself (Vault: revokes its token; github-app:
    /// revokes the tokens refreshes replaced). After the credentials' leases are revoked, at
    /// shutdown.
    pub async fn shutdown(&self) {
        match self {
            Issuer::Vault(vault) => vault.shutdown().await,
            Issuer::GitHubApp(github) => github.shutdown().await,
            _ => {}
        }
    }

    /// The issuer's kind, for status pages and audit.
    pub fn kind(&self) -> &'static str {
        match self {
            Issuer::Local(_) => "local",
            Issuer::Vault(_) => "vault",
            Issuer::OAuth2(_) => "oauth2",
            Issuer::AwsSts(_) => "aws-sts",
            Issuer::GitHubApp(_) => "github-app",
        }
    }
}
