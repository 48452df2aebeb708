//! `kind: vault` — HashiCorp Vault and OpenBao (same HTTP API).
//!
//! sidekey logs in (jwt, kubernetes or approle), keeps its token alive in the background
//! (renewed while renewable, a new login otherwise) so that the leases it holds are not revoked
//! with it, and reads secrets: KV v2 fields (ID `path@version`) and dynamic secrets with leases
//! (ID = lease ID), which the store renews and, at shutdown, revokes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;
use sidekey_config::{CertificateConfig, VaultAuth, VaultIssuerConfig, VaultJwtMethod};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::http::{clamp_secs, client, excerpt, read_secret_file, send};
use crate::issuer::{CredentialRequest, IssueError};
use crate::pki;
use crate::{Credential, CredentialId, CredentialValue, Lease, Secret};

/// Retry delays of the token keeper after a failed renewal or login.
const KEEPER_RETRY_MIN: Duration = Duration::from_secs(1);
const KEEPER_RETRY_MAX: Duration = Duration::from_secs(30);

pub struct VaultIssuer {
    session: Arc<Session>,
    keeper_started: std::sync::atomic::AtomicBool,
    stop: CancellationToken,
}

/// What the background token keeper shares with the issuer.
struct Session {
    name: String,
    client: reqwest::Client,
    address: String,
    namespace: Option<String>,
    auth: VaultAuth,
    /// The current token. The lock also makes concurrent logins one login.
    token: Mutex<Option<Arc<Token>>>,
    /// Accessor → hard expiry of tokens (current or past) whose end is known: leases they
    /// created cannot outlive them.
    doomed: std::sync::Mutex<HashMap<String, SystemTime>>,
    /// Bumped whenever a token's end becomes known or moves: the store then re-reads the end
    /// of every lease it holds, so a lease read before the cap was known is capped too.
    ends: tokio::sync::watch::Sender<u64>,
}

struct Token {
    secret: Secret,
    accessor: String,
    obtained: SystemTime,
    lease: Duration,
    renewable: bool,
    /// The TTL the login gave: what a renewal asks for.
    ttl: Duration,
    /// When the token dies for good: known once it cannot be renewed, or a renewal came back
    /// capped by its max TTL. Every lease it created dies with it.
    hard_expiry: Option<SystemTime>,
}

impl Token {
    /// Renew (or log in again) at two thirds of the token's life; a token whose end is known
    /// is replaced at half its life, before the store (which refreshes leases it created at
    /// 60-70 % of the time left) reads a new secret, so the new lease gets the new token.
    fn refresh_at(&self) -> SystemTime {
        let fraction = if self.hard_expiry.is_some() {
            0.5
        } else {
            2.0 / 3.0
        };
        self.obtained + self.lease.mul_f64(fraction)
    }

    fn expires_at(&self) -> SystemTime {
        self.obtained + self.lease
    }

    /// Tokens with a zero TTL (root tokens) never expire.
    fn is_periodic_or_root(&self) -> bool {
        self.lease.is_zero()
    }
}

#[derive(Deserialize)]
struct AuthAnswer {
    auth: AuthBody,
}

#[derive(Deserialize)]
struct AuthBody {
    client_token: String,
    #[serde(default)]
    accessor: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct SecretAnswer {
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
    data: Option<Value>,
}

/// The data of a PKI `sign` answer.
#[derive(Deserialize)]
struct SignedCertificate {
    certificate: String,
    #[serde(default)]
    issuing_ca: Option<String>,
    #[serde(default)]
    ca_chain: Vec<String>,
    serial_number: String,
    /// Unix seconds.
    expiration: u64,
}

#[derive(Deserialize)]
struct LeaseAnswer {
    #[serde(default)]
    lease_duration: u64,
}

impl VaultIssuer {
    pub fn new(name: &str, config: &VaultIssuerConfig) -> Result<Self, IssueError> {
        Ok(VaultIssuer {
            session: Arc::new(Session {
                name: name.to_string(),
                client: client(config.ca_file.as_deref(), &config.address.url)?,
                address: config.address.url.clone(),
                namespace: config.namespace.clone(),
                auth: config.auth.clone(),
                token: Mutex::new(None),
                doomed: std::sync::Mutex::new(HashMap::new()),
                ends: tokio::sync::watch::Sender::new(0),
            }),
            keeper_started: std::sync::atomic::AtomicBool::new(false),
            stop: CancellationToken::new(),
        })
    }

    /// Reads the credential's path: a KV v2 field, or a dynamic secret with a lease.
    pub async fn issue(&self, request: &CredentialRequest) -> Result<Credential, IssueError> {
        let path = request
            .path
            .as_deref()
            .ok_or_else(|| IssueError::Config("vault credential has no path".into()))?;
        if let Some(certificate) = &request.certificate {
            return self.sign(request, path, certificate).await;
        }
        let field = request
            .field
            .as_deref()
            .ok_or_else(|| IssueError::Config("vault credential has no field".into()))?;
        let token = self.token().await?;
        let issued_at = SystemTime::now();
        let (method, body) = if request.params.is_empty() {
            (reqwest::Method::GET, None)
        } else {
            let map: serde_json::Map<String, Value> = request
                .params
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            (reqwest::Method::POST, Some(Value::Object(map)))
        };
        let answer: SecretAnswer = self
            .session
            .call(method, path, &token, body.as_ref())
            .await?
            .ok_or_else(|| IssueError::Response(format!("{path} returned no data")))?;
        let data = answer
            .data
            .ok_or_else(|| IssueError::Response(format!("{path} has no data")))?;
        // KV v2 wraps the fields in data.data and says which version it read.
        let (fields, version) = match (data.get("data"), data.get("metadata")) {
            (Some(Value::Object(inner)), Some(meta)) if meta.get("version").is_some() => (
                Value::Object(inner.clone()),
                meta.get("version").and_then(Value::as_u64),
            ),
            _ => (data, None),
        };
        let value = match fields.get(field) {
            Some(Value::String(s)) => Secret::new(s.clone()),
            Some(Value::Number(n)) => Secret::new(n.to_string()),
            Some(_) => {
                return Err(IssueError::Response(format!(
                    "field `{field}` of {path} is not a string"
                )))
            }
            None => {
                let mut names: Vec<&str> = fields
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                names.sort_unstable();
                return Err(IssueError::Response(format!(
                    "{path} has no field `{field}` (fields: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )));
            }
        };
        let mut expires_at;
        let (id, lease) = if answer.lease_id.is_empty() {
            // No lease (KV): read again every `ttl`, or as often as Vault suggests.
            let every = if answer.lease_duration > 0 {
                clamp_secs(answer.lease_duration).min(request.ttl)
            } else {
                request.ttl
            };
            expires_at = issued_at + every;
            let id = match version {
                Some(v) => format!("{path}@{v}"),
                None => path.to_string(),
            };
            (id, None)
        } else {
            expires_at = issued_at + clamp_secs(answer.lease_duration);
            let lease = Lease {
                id: answer.lease_id.clone(),
                renewable: answer.renewable,
                owner: Some(token.accessor.clone()).filter(|a| !a.is_empty()),
            };
            // A lease dies with the token that created it, whatever its own TTL says.
            if let Some(end) = token.hard_expiry {
                expires_at = expires_at.min(end);
            }
            (answer.lease_id, Some(lease))
        };
        Ok(Credential {
            id: CredentialId(id.into()),
            value: CredentialValue::Token(value),
            issued_at,
            expires_at,
            lease,
        })
    }

    /// A client certificate from a PKI engine's sign endpoint (`path`): a key made here, a CSR
    /// for it sent, the certificate checked to be for that key. Its ID is the serial number;
    /// with a lease (the role's `generate_lease`), revoking the lease revokes the certificate.
    async fn sign(
        &self,
        request: &CredentialRequest,
        path: &str,
        certificate: &CertificateConfig,
    ) -> Result<Credential, IssueError> {
        let names = pki::names(certificate, request.task.as_ref());
        let key = pki::NewKey::generate()?;
        let csr = key.csr(&names.common_name)?;
        let mut body: serde_json::Map<String, Value> = request
            .params
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        body.insert("csr".into(), Value::String(csr));
        body.insert("common_name".into(), Value::String(names.common_name));
        if !names.alt_names.is_empty() {
            body.insert("alt_names".into(), Value::String(names.alt_names.join(",")));
        }
        if !names.uri_sans.is_empty() {
            body.insert("uri_sans".into(), Value::String(names.uri_sans.join(",")));
        }
        body.insert(
            "ttl".into(),
            Value::String(format!("{}s", request.ttl.as_secs())),
        );
        body.insert("format".into(), Value::String("pem".into()));
        let token = self.token().await?;
        let issued_at = SystemTime::now();
        let answer: SecretAnswer = self
            .session
            .call(
                reqwest::Method::POST,
                path,
                &token,
                Some(&Value::Object(body)),
            )
            .await?
            .ok_or_else(|| IssueError::Response(format!("{path} returned no data")))?;
        let signed: SignedCertificate = answer
            .data
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| IssueError::Response(format!("{path}: {e}")))?
            .ok_or_else(|| IssueError::Response(format!("{path} has no data")))?;
        let mut chain = vec![signed.certificate.as_str()];
        chain.extend(signed.ca_chain.iter().map(String::as_str));
        if signed.ca_chain.is_empty() {
            chain.extend(signed.issuing_ca.as_deref());
        }
        let value = key.certify(&chain)?;
        let mut expires_at = SystemTime::UNIX_EPOCH + Duration::from_secs(signed.expiration);
        let lease = (!answer.lease_id.is_empty()).then(|| Lease {
            id: answer.lease_id.clone(),
            renewable: answer.renewable,
            owner: Some(token.accessor.clone()).filter(|a| !a.is_empty()),
        });
        if lease.is_some() {
            // The lease dies with the token that created it, and revokes the certificate then.
            expires_at = expires_at.min(issued_at + clamp_secs(answer.lease_duration));
            if let Some(end) = token.hard_expiry {
                expires_at = expires_at.min(end);
            }
        }
        if expires_at <= issued_at {
            return Err(IssueError::Response(format!(
                "{path} signed a certificate that has already expired"
            )));
        }
        Ok(Credential {
            id: CredentialId(signed.serial_number.into()),
            value: CredentialValue::Certificate(value),
            issued_at,
            expires_at,
            lease,
        })
    }

    /// `sys/leases/renew`: the lease's new remaining duration.
    pub async fn renew(&self, lease: &Lease, increment: Duration) -> Result<Duration, IssueError> {
        let token = self.token().await?;
        let body = serde_json::json!({ "lease_id": lease.id, "increment": increment.as_secs() });
        let now = SystemTime::now();
        let answer: LeaseAnswer = self
            .session
            .call(
                reqwest::Method::PUT,
                "sys/leases/renew",
                &token,
                Some(&body),
            )
            .await?
            .ok_or_else(|| IssueError::Response("lease renewal returned nothing".into()))?;
        let mut remaining = clamp_secs(answer.lease_duration);
        // The token that created the lease may end sooner: the lease goes with it, and the
        // store reads a new secret (with the current token) before that.
        if let Some(end) = lease
            .owner
            .as_ref()
            .and_then(|owner| self.session.doomed_at(owner))
        {
            remaining = remaining.min(end.duration_since(now).unwrap_or(Duration::ZERO));
        }
        Ok(remaining)
    }

    /// When `lease` ends for good because the token that created it does, if known.
    pub fn lease_end(&self, lease: &Lease) -> Option<SystemTime> {
        lease
            .owner
            .as_deref()
            .and_then(|owner| self.session.doomed_at(owner))
    }

    /// Changes whenever [`VaultIssuer::lease_end`] may give a new answer.
    pub fn lease_ends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.session.ends.subscribe()
    }

    /// `sys/leases/revoke`.
    pub async fn revoke(&self, lease: &Lease) -> Result<(), IssueError> {
        let token = self.token().await?;
        let body = serde_json::json!({ "lease_id": lease.id });
        self.session
            .call::<Value>(
                reqwest::Method::PUT,
                "sys/leases/revoke",
                &token,
                Some(&body),
            )
            .await?;
        Ok(())
    }

    /// Stops the token keeper and revokes the token.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let token = self.session.token.lock().await.take();
        if let Some(token) = token {
            if token.is_periodic_or_root() {
                return;
            }
            match self
                .session
                .call::<Value>(
                    reqwest::Method::POST,
                    "auth/token/revoke-self",
                    &token,
                    None,
                )
                .await
            {
                Ok(_) => tracing::info!(issuer = %self.session.name, "vault token revoked"),
                Err(e) => {
                    tracing::warn!(issuer = %self.session.name, error = %e, "vault token revocation failed")
                }
            }
        }
    }

    /// A valid token (logging in or renewing as needed), and the keeper started.
    async fn token(&self) -> Result<Arc<Token>, IssueError> {
        let token = self.session.current_token().await?;
        if !self
            .keeper_started
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tokio::spawn(keep_alive(Arc::clone(&self.session), self.stop.clone()));
        }
        Ok(token)
    }
}

/// Keeps the token alive: renews it at two thirds of its life while it is renewable, logs in
/// again otherwise or when renewal fails. Retries with backoff on failure.
async fn keep_alive(session: Arc<Session>, stop: CancellationToken) {
    let mut retry = KEEPER_RETRY_MIN;
    loop {
        let wait = {
            let held = session.token.lock().await.clone();
            match held {
                Some(t) if t.is_periodic_or_root() => return,
                Some(t) => t
                    .refresh_at()
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
                None => Duration::ZERO,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match session.current_token().await {
            Ok(_) => retry = KEEPER_RETRY_MIN,
            Err(e) => {
                tracing::warn!(issuer = %session.name, error = %e, retry_in = ?retry, "vault token renewal failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(KEEPER_RETRY_MAX);
            }
        }
    }
}

impl Session {
    /// When the token with this accessor ends for good, if known.
    fn doomed_at(&self, accessor: &str) -> Option<SystemTime> {
        self.doomed.lock().ok()?.get(accessor).copied()
    }

    /// Records a token's end (and forgets tokens long gone).
    fn doom(&self, token: &Token) {
        if let (Some(end), Ok(mut doomed)) = (token.hard_expiry, self.doomed.lock()) {
            let now = SystemTime::now();
            doomed.retain(|_, t| *t > now);
            if doomed.insert(token.accessor.clone(), end) != Some(end) {
                drop(doomed);
                self.ends.send_modify(|generation| *generation += 1);
            }
        }
    }

    /// The held token if it is before its refresh point; else renewed; else a new login.
    async fn current_token(&self) -> Result<Arc<Token>, IssueError> {
        let mut slot = self.token.lock().await;
        let now = SystemTime::now();
        if let Some(t) = slot.as_ref() {
            if t.is_periodic_or_root() || now < t.refresh_at() {
                return Ok(Arc::clone(t));
            }
            if t.renewable && now < t.expires_at() {
                match self.renew_self(t).await {
                    Ok(renewed) => {
                        // A capped renewal (max TTL reached) is followed by a new login at its
                        // refresh point, well before the hard expiry.
                        self.doom(&renewed);
                        let renewed = Arc::new(renewed);
                        *slot = Some(Arc::clone(&renewed));
                        tracing::debug!(issuer = %self.name, "vault token renewed");
                        return Ok(renewed);
                    }
                    Err(e) => {
                        tracing::info!(issuer = %self.name, error = %e, "vault token renewal failed; logging in again");
                    }
                }
            }
        }
        let token = Arc::new(self.login().await?);
        self.doom(&token);
        tracing::info!(issuer = %self.name, ttl = ?token.lease, renewable = token.renewable, "logged in to vault");
        *slot = Some(Arc::clone(&token));
        Ok(token)
    }

    async fn login(&self) -> Result<Token, IssueError> {
        let (mount, body) = match &self.auth {
            VaultAuth::Jwt {
                method,
                mount,
                role,
                token_file,
            } => {
                let what = match method {
                    VaultJwtMethod::Jwt => "identity token",
                    VaultJwtMethod::Kubernetes => "service account token",
                };
                let jwt = read_secret_file(token_file, what)?;
                let body = jwt.with(|jwt| login_body(&JwtLogin { role, jwt }))?;
                (mount, body)
            }
            VaultAuth::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let role_id = read_secret_file(role_id_file, "AppRole role ID")?;
                let secret_id = read_secret_file(secret_id_file, "AppRole secret ID")?;
                let body = Secret::with_all(&[&role_id, &secret_id], |ids| {
                    login_body(&AppRoleLogin {
                        role_id: ids[0],
                        secret_id: ids[1],
                    })
                })?;
                (mount, body)
            }
        };
        let path = format!("auth/{mount}/login");
        let obtained = SystemTime::now();
        let answer: AuthAnswer = self
            .request(reqwest::Method::POST, &path, None, Some(body.to_vec()))
            .await?
            .ok_or_else(|| IssueError::Response(format!("{path} returned no token")))?;
        Ok(token_from(answer.auth, obtained))
    }

    async fn renew_self(&self, token: &Token) -> Result<Token, IssueError> {
        let obtained = SystemTime::now();
        let asked = token.ttl.as_secs().max(1);
        let body = serde_json::json!({ "increment": asked });
        let answer: AuthAnswer = self
            .call(
                reqwest::Method::POST,
                "auth/token/renew-self",
                token,
                Some(&body),
            )
            .await?
            .ok_or_else(|| IssueError::Response("token renewal returned no token".into()))?;
        let mut renewed = token_from(answer.auth, obtained);
        if renewed.lease.is_zero() {
            // Only a root or periodic token has no TTL, and that is known at login.
            return Err(IssueError::Response("token renewal gave no TTL".into()));
        }
        renewed.ttl = token.ttl;
        // Vault rounds; a renewal short of what was asked by more than that is capped by the
        // token's max TTL: the token (and every lease it created) ends then.
        if renewed.lease.as_secs() + 1 < asked || !renewed.renewable {
            renewed.renewable = false;
            renewed.hard_expiry = Some(renewed.expires_at());
        }
        Ok(renewed)
    }

    /// An authenticated API call.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &Token,
        body: Option<&Value>,
    ) -> Result<Option<T>, IssueError> {
        let body = body.map(|b| b.to_string().into_bytes());
        self.request(method, path, Some(token), body).await
    }

    /// One request to `{address}/v1/{path}`. `Ok(None)` for 204 No Content.
    async fn request<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&Token>,
        body: Option<Vec<u8>>,
    ) -> Result<Option<T>, IssueError> {
        let url = format!("{}/v1/{path}", self.address);
        let mut request = self
            .client
            .request(method, &url)
            .header("X-Vault-Request", "true");
        if let Some(ns) = &self.namespace {
            request = request.header("X-Vault-Namespace", ns);
        }
        if let Some(token) = token {
            let mut value = token
                .secret
                .with(reqwest::header::HeaderValue::from_str)
                .map_err(|_| IssueError::Response("vault token is not a valid header".into()))?;
            value.set_sensitive(true);
            request = request.header("X-Vault-Token", value);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let (status, answer) = send(request).await?;
        if status == 204 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(IssueError::Refused {
                status,
                code: None,
                message: format!("{path}: {}", vault_errors(&answer)),
            });
        }
        serde_json::from_slice(&answer)
            .map(Some)
            .map_err(|e| IssueError::Response(format!("{path}: not the JSON expected ({e})")))
    }
}

/// `auth/jwt/login` (and `auth/kubernetes/login`) body.
#[derive(serde::Serialize)]
struct JwtLogin<'a> {
    role: &'a str,
    jwt: &'a str,
}

/// `auth/approle/login` body.
#[derive(serde::Serialize)]
struct AppRoleLogin<'a> {
    role_id: &'a str,
    secret_id: &'a str,
}

/// A login body serialized straight into a buffer that is wiped on drop (no intermediate JSON
/// value holding a copy of the secret).
fn login_body<T: serde::Serialize>(body: &T) -> Result<zeroize::Zeroizing<Vec<u8>>, IssueError> {
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(256));
    serde_json::to_writer(&mut *out, body)
        .map_err(|e| IssueError::Config(format!("cannot encode the login request: {e}")))?;
    Ok(out)
}

fn token_from(auth: AuthBody, obtained: SystemTime) -> Token {
    let lease = clamp_secs(auth.lease_duration);
    Token {
        secret: Secret::new(auth.client_token),
        accessor: auth.accessor,
        obtained,
        lease,
        renewable: auth.renewable,
        ttl: lease,
        hard_expiry: (!auth.renewable && !lease.is_zero()).then(|| obtained + lease),
    }
}

/// Vault's `{"errors": [...]}`, joined; otherwise an excerpt.
fn vault_errors(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<String>,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => e.errors.join("; "),
        Ok(_) => "no reason given".to_string(),
        Err(_) => excerpt(body),
    }
}
