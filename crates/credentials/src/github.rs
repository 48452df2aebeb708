//! `kind: github-app` — installation access tokens of a GitHub App.
//!
//! Each mint signs a short JWT as the App (RS256, `iss` = the App ID) with its private key, read
//! at every mint (from a Vault/OpenBao secret through a `kind: vault` issuer, so that a rotated
//! key is picked up, or from a file), and asks `POST /app/installations/{id}/access_tokens` for
//! a token narrowed to the credential's `repositories` and `permissions`. An answer granting
//! more than that is refused (fail closed). The credential's ID is GitHub's own `hashed_token`
//! (base64 of the token's SHA-256), so sidekey's audit trail joins GitHub's audit log. Tokens
//! are revoked (`DELETE /installation/token`) when the store retires them (a reload, shutdown)
//! and, when a newer token of the same credential replaces one, a few seconds after; what could
//! not be revoked is tried again when the issuer shuts down.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sidekey_config::{GitHubAppIssuerConfig, PrivateKeySource};

use crate::http::{client, excerpt_without, read_secret_file, send, unix_now};
use crate::issuer::{CredentialRequest, IssueError, Issuer};
use crate::{Credential, CredentialId, CredentialValue, Lease, Secret};

/// GitHub's REST API version sidekey speaks.
const API_VERSION: &str = "2022-11-28";
/// The App JWT: `iat` this far in the past (clock drift, as GitHub recommends) and `exp` this
/// far ahead (GitHub refuses more than 10 minutes).
const JWT_BACKDATE: u64 = 60;
const JWT_LIFETIME: u64 = 9 * 60;
/// What GitHub gives an installation token (its answer's `expires_at` is what counts).
const TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// How long revoking one token may take at shutdown.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a token a newer one of the same credential replaced stays valid for the requests
/// that took it just before (each sends it at once), before it is revoked.
const REPLACED_DRAIN: Duration = Duration::from_secs(5);

pub struct GitHubAppIssuer {
    name: String,
    client: reqwest::Client,
    app_id: u64,
    installation_id: u64,
    key: KeySource,
    tokens: Arc<Tokens>,
}

/// The tokens the issuer minted and must still revoke, and how to revoke them.
struct Tokens {
    client: reqwest::Client,
    api_url: String,
    /// Minted and not yet revoked, by hashed token, with their expiry.
    live: Mutex<HashMap<String, (Secret, SystemTime)>>,
    /// The last token minted for each credential, by name: a newer one replaces it.
    latest: Mutex<HashMap<String, String>>,
}

enum KeySource {
    /// Read through this vault issuer (`path`, `field` in the request).
    Vault {
        issuer: Arc<Issuer>,
        request: Box<CredentialRequest>,
    },
    File(PathBuf),
}

#[derive(Serialize)]
struct AppClaims {
    iss: String,
    iat: u64,
    exp: u64,
}

/// The body of `POST /app/installations/{id}/access_tokens`.
#[derive(Serialize)]
struct TokenRequest<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    repositories: Vec<&'a str>,
    permissions: BTreeMap<&'a str, &'a str>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: String,
    expires_at: String,
    #[serde(default)]
    permissions: Option<BTreeMap<String, String>>,
    #[serde(default)]
    repositories: Option<Vec<Repository>>,
}

#[derive(Deserialize)]
struct Repository {
    name: String,
}

/// GitHub's error answer.
#[derive(Deserialize)]
struct ErrorAnswer {
    message: String,
}

impl GitHubAppIssuer {
    /// `issuers` must hold the vault issuer the key is read through, if any (built before).
    pub fn new(
        name: &str,
        config: &GitHubAppIssuerConfig,
        issuers: &HashMap<String, Arc<Issuer>>,
    ) -> Result<Self, IssueError> {
        let key = match &config.private_key {
            PrivateKeySource::File(path) => KeySource::File(path.clone()),
            PrivateKeySource::Vault {
                issuer,
                path,
                field,
            } => {
                let vault = issuers
                    .get(issuer)
                    .filter(|i| matches!(i.as_ref(), Issuer::Vault(_)))
                    .ok_or_else(|| {
                        IssueError::Config(format!(
                            "the private key's issuer `{issuer}` is not a configured vault issuer"
                        ))
                    })?;
                KeySource::Vault {
                    issuer: Arc::clone(vault),
                    request: Box::new(CredentialRequest {
                        name: format!("{name} (GitHub App private key)"),
                        path: Some(path.clone()),
                        field: Some(field.clone()),
                        ttl: Duration::from_secs(60),
                        ..CredentialRequest::default()
                    }),
                }
            }
        };
        let client = client(config.ca_file.as_deref(), &config.api_url.url)?;
        Ok(GitHubAppIssuer {
            name: name.to_string(),
            client: client.clone(),
            app_id: config.app_id,
            installation_id: config.installation_id,
            key,
            tokens: Arc::new(Tokens {
                client,
                api_url: config.api_url.url.clone(),
                live: Mutex::new(HashMap::new()),
                latest: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The vault issuer the key is read through, if any: a reload rebuilds this issuer when
    /// that one is rebuilt.
    pub fn key_issuer(&self) -> Option<&Arc<Issuer>> {
        match &self.key {
            KeySource::Vault { issuer, .. } => Some(issuer),
            KeySource::File(_) => None,
        }
    }

    /// Mints an installation token narrowed to the request's repositories and permissions.
    pub async fn issue(&self, request: &CredentialRequest) -> Result<Credential, IssueError> {
        if request.permissions.is_empty() {
            return Err(IssueError::Config(format!(
                "credential `{}` names no permissions",
                request.name
            )));
        }
        let jwt = self.app_jwt().await?;
        let body = serde_json::to_vec(&TokenRequest {
            repositories: request.repositories.iter().map(String::as_str).collect(),
            permissions: request
                .permissions
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        })
        .map_err(|e| IssueError::Other(format!("cannot encode the token request: {e}")))?;
        let url = format!(
            "{}/app/installations/{}/access_tokens",
            self.tokens.api_url, self.installation_id
        );
        let http = authorized(self.client.post(&url), &jwt)?
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let issued_at = SystemTime::now();
        let (status, answer) = send(http).await?;
        if status != 201 && status != 200 {
            return Err(refused(status, &answer, &jwt));
        }
        let answer: TokenAnswer = serde_json::from_slice(&answer)
            .map_err(|e| IssueError::Response(format!("access token answer: {e}")))?;
        let token = Secret::new(answer.token);
        let id = token.with(hashed_token);
        let expires_at = humantime::parse_rfc3339(&answer.expires_at).map_err(|_| {
            IssueError::Response(format!(
                "access token `expires_at` is not an RFC 3339 time: {}",
                answer.expires_at.chars().take(40).collect::<String>()
            ))
        });
        // Minted: from here on, a token that is not used is revoked, not lost.
        self.tokens.remember(
            &id,
            &token,
            *expires_at.as_ref().unwrap_or(&(issued_at + TOKEN_LIFETIME)),
        );
        let checked = expires_at.and_then(|expires_at| {
            check_narrowing(
                request,
                answer.permissions.as_ref(),
                answer.repositories.as_deref(),
            )
            .map(|()| expires_at)
        });
        let expires_at = match checked {
            Ok(expires_at) => expires_at,
            Err(e) => {
                tracing::warn!(issuer = %self.name, credential = %request.name, credential_id = %id, error = %e, "GitHub's answer is refused; revoking the token");
                let _ = self.tokens.revoke(&id).await;
                return Err(e);
            }
        };
        self.replace(&request.name, &id);
        Ok(Credential {
            id: CredentialId(id.as_str().into()),
            value: CredentialValue::Token(token),
            issued_at,
            expires_at,
            lease: Some(Lease {
                id,
                renewable: false,
                owner: None,
            }),
        })
    }

    /// Revokes the token whose hashed form is `lease.id`; nothing to do when it is no longer
    /// held (revoked already, or expired).
    pub async fn revoke(&self, lease: &Lease) -> Result<(), IssueError> {
        self.tokens.revoke(&lease.id).await
    }

    /// `id` is the credential `name`'s token now: the one it replaces (a refresh, or a token
    /// the upstream refused) is revoked after [`REPLACED_DRAIN`].
    fn replace(&self, name: &str, id: &str) {
        let previous = self
            .tokens
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), id.to_string());
        let Some(previous) = previous.filter(|p| p != id) else {
            return;
        };
        let (tokens, issuer) = (Arc::clone(&self.tokens), self.name.clone());
        tokio::spawn(async move {
            tokio::time::sleep(REPLACED_DRAIN).await;
            match tokio::time::timeout(REVOKE_TIMEOUT, tokens.revoke(&previous)).await {
                Ok(Ok(())) => {
                    tracing::info!(issuer = %issuer, credential_id = %previous, "replaced GitHub token revoked")
                }
                Ok(Err(e)) => {
                    tracing::warn!(issuer = %issuer, credential_id = %previous, error = %e, "replaced GitHub token: revocation failed (tried again at shutdown)")
                }
                Err(_) => {
                    tracing::warn!(issuer = %issuer, credential_id = %previous, "replaced GitHub token: revocation timed out (tried again at shutdown)")
                }
            }
        });
    }

    /// Revokes every token still live (replaced ones not revoked yet; the store revoked the
    /// held ones before).
    pub async fn shutdown(&self) {
        let held: Vec<String> = self.tokens.lock().keys().cloned().collect();
        for id in held {
            match tokio::time::timeout(REVOKE_TIMEOUT, self.tokens.revoke(&id)).await {
                Ok(Ok(())) => {
                    tracing::info!(issuer = %self.name, credential_id = %id, "GitHub token revoked")
                }
                Ok(Err(e)) => {
                    tracing::warn!(issuer = %self.name, credential_id = %id, error = %e, "GitHub token revocation failed")
                }
                Err(_) => {
                    tracing::warn!(issuer = %self.name, credential_id = %id, "GitHub token revocation timed out")
                }
            }
        }
    }

    /// A JWT signed as the App, with the key read now.
    async fn app_jwt(&self) -> Result<Secret, IssueError> {
        let pem = match &self.key {
            KeySource::File(path) => read_secret_file(path, "GitHub App private key")?,
            KeySource::Vault { issuer, request } => {
                let Issuer::Vault(vault) = issuer.as_ref() else {
                    return Err(IssueError::Config(
                        "the private key's issuer is not a vault issuer".into(),
                    ));
                };
                let read = vault.issue(request).await.map_err(|e| match e {
                    IssueError::Refused {
                        status,
                        code,
                        message,
                    } => IssueError::Refused {
                        status,
                        code,
                        message: format!("reading the GitHub App private key: {message}"),
                    },
                    other => other,
                })?;
                tracing::debug!(issuer = %self.name, key = %read.id, "GitHub App private key read");
                match read.value {
                    CredentialValue::Token(pem) => pem,
                    CredentialValue::Aws { .. } | CredentialValue::Certificate(_) => {
                        return Err(IssueError::Response(
                            "the private key's secret is not a PEM text".into(),
                        ))
                    }
                }
            }
        };
        let key = pem
            .with(|pem| EncodingKey::from_rsa_pem(pem.as_bytes()))
            .map_err(|_| {
                IssueError::Config(
                    "the GitHub App private key is not an RSA private key in PEM".into(),
                )
            })?;
        let now = unix_now();
        let claims = AppClaims {
            iss: self.app_id.to_string(),
            iat: now.saturating_sub(JWT_BACKDATE),
            exp: now + JWT_LIFETIME,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key)
            .map(Secret::new)
            .map_err(|e| IssueError::Signing(e.to_string()))
    }
}

impl Tokens {
    async fn revoke(&self, id: &str) -> Result<(), IssueError> {
        let Some((token, expires_at)) = self.lock().remove(id) else {
            return Ok(());
        };
        if SystemTime::now() >= expires_at {
            return Ok(());
        }
        let url = format!("{}/installation/token", self.api_url);
        let http = authorized(self.client.delete(&url), &token)?;
        let result = match send(http).await {
            // Revoked, or gone already (an expired or revoked token is a 401).
            Ok((204 | 401, _)) => Ok(()),
            Ok((status, answer)) => Err(refused(status, &answer, &token)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Kept, so that shutdown tries again.
            self.lock().insert(id.to_string(), (token, expires_at));
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Secret, SystemTime)>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, id: &str, token: &Secret, expires_at: SystemTime) {
        let now = SystemTime::now();
        let mut live = self.lock();
        live.retain(|_, (_, end)| *end > now);
        live.insert(
            id.to_string(),
            (token.with(|t| Secret::new(t.to_string())), expires_at),
        );
    }
}

/// `request` with GitHub's headers and `Authorization: Bearer <bearer>`.
fn authorized(
    request: reqwest::RequestBuilder,
    bearer: &Secret,
) -> Result<reqwest::RequestBuilder, IssueError> {
    let mut value = bearer
        .with(|b| reqwest::header::HeaderValue::from_str(&format!("Bearer {b}")))
        .map_err(|_| IssueError::Response("the token is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(request
        .header(reqwest::header::AUTHORIZATION, value)
        .header(reqwest::header::ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", API_VERSION))
}

/// GitHub's `hashed_token` of a token: base64 of its SHA-256, as GitHub's audit log shows it
/// (`echo -n TOKEN | openssl dgst -sha256 -binary | base64`).
pub(crate) fn hashed_token(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    STANDARD.encode(digest.as_ref())
}

/// An error answer: the status, and GitHub's `message` (or an excerpt) for logs and audit,
/// with `sent` (the JWT or token) scrubbed should the answer echo it.
fn refused(status: u16, answer: &[u8], sent: &Secret) -> IssueError {
    let message = sent.with(|sent| match serde_json::from_slice::<ErrorAnswer>(answer) {
        Ok(e) => excerpt_without(e.message.as_bytes(), &[sent]),
        Err(_) => excerpt_without(answer, &[sent]),
    });
    IssueError::Refused {
        status,
        code: None,
        message,
    }
}

/// How much an access level allows.
fn rank(level: &str) -> u8 {
    match level {
        "read" => 1,
        "write" => 2,
        "admin" => 3,
        _ => u8::MAX,
    }
}

/// Refuses an answer that grants more than asked: a permission not asked for (but
/// `metadata: read`, which GitHub gives every token) or at a higher level, a repository not
/// asked for, or no list of repositories when some were asked for.
fn check_narrowing(
    request: &CredentialRequest,
    permissions: Option<&BTreeMap<String, String>>,
    repositories: Option<&[Repository]>,
) -> Result<(), IssueError> {
    let granted = permissions.ok_or_else(|| {
        IssueError::Response("the access token answer lists no permissions".into())
    })?;
    for (name, level) in granted {
        let asked = request
            .permissions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| l.as_str());
        let allowed = match asked {
            Some(asked) => rank(level) <= rank(asked),
            None => name == "metadata" && level == "read",
        };
        if !allowed {
            return Err(IssueError::Response(format!(
                "GitHub granted `{}: {}`, more than asked ({})",
                name.chars().take(64).collect::<String>(),
                level.chars().take(16).collect::<String>(),
                asked.map_or("not asked".to_string(), |a| format!("asked `{a}`"))
            )));
        }
    }
    if request.repositories.is_empty() {
        return Ok(());
    }
    let repositories = repositories.ok_or_else(|| {
        IssueError::Response(
            "the access token answer lists no repositories, though some were asked for".into(),
        )
    })?;
    for repo in repositories {
        if !request
            .repositories
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&repo.name))
        {
            return Err(IssueError::Response(format!(
                "GitHub granted repository `{}`, which was not asked for",
                repo.name.chars().take(100).collect::<String>()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(perms: &[(&str, &str)], repos: &[&str]) -> CredentialRequest {
        CredentialRequest {
            name: "gh".into(),
            permissions: perms
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            repositories: repos.iter().map(|r| r.to_string()).collect(),
            ..CredentialRequest::default()
        }
    }

    fn granted(perms: &[(&str, &str)]) -> BTreeMap<String, String> {
        perms
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn repos(names: &[&str]) -> Vec<Repository> {
        names
            .iter()
            .map(|n| Repository {
                name: n.to_string(),
            })
            .collect()
    }

    #[test]
    fn hashed_token_is_githubs_form() {
        // echo -n ghs_example | openssl dgst -sha256 -binary | base64
        assert_eq!(
            hashed_token("ghs_example"),
            "UMaRjVoedd29MJgtcZ6b6jIFPLlG7OzD84ZhFi+79Cc="
        );
    }

    #[test]
    fn an_answer_granting_more_than_asked_is_refused() {
        let asked = request(
            &[("issues", "write"), ("contents", "read")],
            &["api", "web"],
        );
        let ok = |p: &[(&str, &str)], r: Option<&[&str]>| {
            let r = r.map(repos);
            check_narrowing(&asked, Some(&granted(p)), r.as_deref())
        };
        assert!(ok(
            &[("issues", "write"), ("contents", "read")],
            Some(&["api", "web"])
        )
        .is_ok());
        assert!(ok(&[("issues", "read"), ("metadata", "read")], Some(&["API"])).is_ok());
        assert!(ok(&[("issues", "admin")], Some(&["api"])).is_err());
        assert!(ok(&[("contents", "write")], Some(&["api"])).is_err());
        assert!(ok(&[("pull_requests", "read")], Some(&["api"])).is_err());
        assert!(ok(&[("metadata", "write")], Some(&["api"])).is_err());
        assert!(ok(&[("issues", "write")], Some(&["api", "secrets"])).is_err());
        assert!(ok(&[("issues", "write")], None).is_err());
        assert!(check_narrowing(&asked, None, Some(&repos(&["api"]))).is_err());
        // No repositories asked: every repository of the installation is expected.
        let all = request(&[("issues", "read")], &[]);
        assert!(check_narrowing(&all, Some(&granted(&[("issues", "read")])), None).is_ok());
    }
}
