//! `kind: oauth2` — an access token from an OAuth 2.0 token endpoint: the client credentials
//! grant, or RFC 8693 token exchange of the pod's identity token — or, for a per-task
//! credential, of a subject token sidekey signs for the task (its end user as `sub`, its agents
//! as `act`; see [`LocalIssuer::task_assertion`]). The client authenticates with a secret
//! (basic or post) or a signed JWT assertion (RFC 7523 `private_key_jwt`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sidekey_config::{ClientAuth, OAuth2Grant, OAuth2IssuerConfig};

use crate::http::{
    after, client, excerpt_without, form_body, form_encode, read_secret_file, send, unix_now,
};
use crate::issuer::{CredentialRequest, IssueError};
use crate::{Credential, LocalIssuer, Secret};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of a client assertion.
const ASSERTION_TTL: u64 = 60;

pub struct OAuth2Issuer {
    client: reqwest::Client,
    token_url: String,
    grant: OAuth2Grant,
    client_id: String,
    auth: Auth,
}

enum Auth {
    Basic(PathBuf),
    Post(PathBuf),
    Assertion {
        key: EncodingKey,
        algorithm: Algorithm,
        key_id: Option<String>,
    },
    None,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// A number, or a numeric string (some providers send one).
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<u64>,
    /// `Bearer` (any case), or `N_A` for a token exchange that issued something other than an
    /// access token (RFC 8693 §2.2.1). Some providers leave it out.
    #[serde(default)]
    token_type: Option<String>,
}

impl TokenAnswer {
    /// Refuses tokens sidekey cannot use as a plain header value: a DPoP- or MAC-bound token
    /// would fail upstream on every request without its proof.
    fn check_type(&self) -> Result<(), IssueError> {
        match self.token_type.as_deref() {
            None => Ok(()),
            Some(t) if t.eq_ignore_ascii_case("bearer") || t == "N_A" => Ok(()),
            Some(other) => Err(IssueError::Response(format!(
                "token_type `{}` is not supported: sidekey attaches bearer tokens",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Number(u64),
        Text(String),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(None),
        Some(N::Number(n)) => Ok(Some(n)),
        Some(N::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("expires_in is not a number")),
    }
}

/// An OAuth2 error code: short, `[a-z_]` (RFC 6749 §5.2), safe to show.
fn is_error_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

impl OAuth2Issuer {
    pub fn new(_name: &str, config: &OAuth2IssuerConfig) -> Result<Self, IssueError> {
        let auth = match &config.client_auth {
            ClientAuth::SecretBasic(p) => Auth::Basic(p.clone()),
            ClientAuth::SecretPost(p) => Auth::Post(p.clone()),
            ClientAuth::None => Auth::None,
            ClientAuth::PrivateKeyJwt { key_file, key_id } => {
                let pem = read_secret_file(key_file, "client private key")?;
                let (key, algorithm) =
                    pem.with(|pem| signing_key(pem.as_bytes())).ok_or_else(|| {
                        IssueError::Config(format!(
                            "{} is not an RSA, P-256 or Ed25519 private key in PEM",
                            key_file.display()
                        ))
                    })?;
                Auth::Assertion {
                    key,
                    algorithm,
                    key_id: key_id.clone(),
                }
            }
        };
        Ok(OAuth2Issuer {
            client: client(config.ca_file.as_deref(), &config.token_url.url)?,
            token_url: config.token_url.url.clone(),
            grant: config.grant.clone(),
            client_id: config.client_id.clone(),
            auth,
        })
    }

    /// Asks the token endpoint for a token. For a task (`request.task`), the subject token is a
    /// task assertion signed by `signer` (the credential's `task_assertion_issuer`), so that the
    /// token is for the task's end user, with its agents as actors, and it ends no later than
    /// the task's grant (as sidekey uses it: the authorization server's token may live on).
    pub async fn issue(
        &self,
        request: &CredentialRequest,
        signer: Option<&LocalIssuer>,
    ) -> Result<Credential, IssueError> {
        // Every value that may be secret lives in a Secret until the form is encoded.
        let mut secrets: Vec<(&str, Secret)> = Vec::new();
        let mut form: Vec<(&str, String)> = Vec::new();
        match &self.grant {
            OAuth2Grant::ClientCredentials => {
                if request.task.is_some() {
                    return Err(IssueError::Config(
                        "a per-task OAuth2 token needs an issuer with `grant: token_exchange`"
                            .into(),
                    ));
                }
                form.push(("grant_type", "client_credentials".into()))
            }
            OAuth2Grant::TokenExchange {
                subject_token_file,
                actor_token_file,
            } => {
                form.push(("grant_type", TOKEN_EXCHANGE.into()));
                let subject = match (&request.task, signer) {
                    (Some(task), Some(signer)) => {
                        let assertion = signer.task_assertion(task, &self.token_url)?;
                        tracing::debug!(credential = %request.name, task_id = %task.task_id, grant_id = %task.grant_id, assertion_jti = %assertion.jti, "exchanging a task assertion");
                        assertion.token
                    }
                    (Some(_), None) => {
                        return Err(IssueError::Config(format!(
                            "credential `{}` is per task but has no `task_assertion_issuer` to sign the task's subject token",
                            request.name
                        )))
                    }
                    (None, _) => read_secret_file(subject_token_file, "identity token")?,
                };
                secrets.push(("subject_token", subject));
                form.push(("subject_token_type", JWT_TOKEN_TYPE.into()));
                if let Some(actor) = actor_token_file {
                    secrets.push(("actor_token", read_secret_file(actor, "actor token")?));
                    form.push(("actor_token_type", JWT_TOKEN_TYPE.into()));
                }
            }
        }
        if let Some(v) = &request.audience {
            form.push(("audience", v.clone()));
        }
        if let Some(v) = &request.resource {
            form.push(("resource", v.clone()));
        }
        if let Some(v) = &request.scope {
            form.push(("scope", v.clone()));
        }
        let mut http = self.client.post(&self.token_url);
        // Sent in the Authorization header; kept to scrub it from error pages that echo it.
        let mut basic_sent: Vec<Secret> = Vec::new();
        match &self.auth {
            Auth::Basic(file) => {
                let secret = read_secret_file(file, "client secret")?;
                // RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
                let user = form_encode(&self.client_id);
                let pass = zeroize::Zeroizing::new(secret.with(form_encode));
                let joined = zeroize::Zeroizing::new(format!("{user}:{}", pass.as_str()));
                let encoded = zeroize::Zeroizing::new(STANDARD.encode(joined.as_bytes()));
                basic_sent.push(Secret::new(encoded.to_string()));
                basic_sent.push(secret);
                let mut value =
                    reqwest::header::HeaderValue::from_str(&format!("Basic {}", encoded.as_str()))
                        .map_err(|_| {
                            IssueError::Config("client secret is not a valid header value".into())
                        })?;
                value.set_sensitive(true);
                http = http.header(reqwest::header::AUTHORIZATION, value);
            }
            Auth::Post(file) => {
                form.push(("client_id", self.client_id.clone()));
                secrets.push(("client_secret", read_secret_file(file, "client secret")?));
            }
            Auth::Assertion {
                key,
                algorithm,
                key_id,
            } => {
                let now = unix_now();
                let claims = AssertionClaims {
                    iss: &self.client_id,
                    sub: &self.client_id,
                    aud: &self.token_url,
                    jti: uuid::Uuid::new_v4().to_string(),
                    iat: now,
                    exp: now + ASSERTION_TTL,
                };
                let mut header = Header::new(*algorithm);
                header.kid = key_id.clone();
                let assertion = jsonwebtoken::encode(&header, &claims, key)
                    .map_err(|e| IssueError::Signing(e.to_string()))?;
                form.push(("client_id", self.client_id.clone()));
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION.into()));
                secrets.push(("client_assertion", Secret::new(assertion)));
            }
            Auth::None => form.push(("client_id", self.client_id.clone())),
        }
        let secret_refs: Vec<&Secret> = secrets.iter().map(|(_, s)| s).collect();
        let body = Secret::with_all(&secret_refs, |values| {
            form_body(
                form.iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .chain(secrets.iter().map(|(k, _)| *k).zip(values.iter().copied())),
            )
        });
        let issued_at = SystemTime::now();
        let (status, answer) = send(
            http.header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body.as_bytes().to_vec()),
        )
        .await?;
        if !(200..300).contains(&status) {
            let sent: Vec<&Secret> = secret_refs
                .iter()
                .copied()
                .chain(basic_sent.iter())
                .collect();
            let (code, message) = Secret::with_all(&sent, |sent| {
                match serde_json::from_slice::<ErrorAnswer>(&answer) {
                    Ok(e) if is_error_code(&e.error) => {
                        let message = match e.error_description {
                            Some(d) => {
                                format!("{}: {}", e.error, excerpt_without(d.as_bytes(), sent))
                            }
                            None => e.error.clone(),
                        };
                        (Some(e.error), message)
                    }
                    _ => (None, excerpt_without(&answer, sent)),
                }
            });
            return Err(IssueError::Refused {
                status,
                code,
                message,
            });
        }
        let token: TokenAnswer = serde_json::from_slice(&answer)
            .map_err(|e| IssueError::Response(format!("token endpoint answer: {e}")))?;
        token.check_type()?;
        let claims = jwt_claims(&token.access_token);
        let mut expires_at = expiry(
            issued_at,
            token.expires_in,
            claims.as_ref().and_then(|c| c.exp),
            request.ttl,
        )?;
        // A task's token is not used past its grant (the store ends it then, and need not
        // refresh it before).
        if let Some(task) = &request.task {
            expires_at = expires_at.min(task.expires_at);
        }
        let id = match claims.and_then(|c| c.jti) {
            Some(jti) => jti,
            None => hash_id(&token.access_token),
        };
        Ok(Credential::token(
            id,
            Secret::new(token.access_token),
            issued_at,
            expires_at,
        ))
    }
}

/// Tries the PEM as RSA, EC (P-256) and Ed25519 in turn; the first that can sign wins.
fn signing_key(pem: &[u8]) -> Option<(EncodingKey, Algorithm)> {
    let candidates = [
        (EncodingKey::from_rsa_pem(pem), Algorithm::RS256),
        (EncodingKey::from_ec_pem(pem), Algorithm::ES256),
        (EncodingKey::from_ed_pem(pem), Algorithm::EdDSA),
    ];
    candidates.into_iter().find_map(|(key, alg)| {
        let key = key.ok()?;
        jsonwebtoken::encode(&Header::new(alg), &serde_json::json!({ "probe": 1 }), &key)
            .ok()
            .map(|_| (key, alg))
    })
}

/// When a token stops being used: the earlier of `expires_in` (counted from when it was asked
/// for) and the JWT's own `exp`, since the upstream goes by `exp` — whole seconds, usually
/// earlier than `issued_at + expires_in` by the time the request took and the rounding. Neither:
/// the credential's configured `ttl`.
fn expiry(
    issued_at: SystemTime,
    expires_in: Option<u64>,
    exp: Option<u64>,
    ttl: Duration,
) -> Result<SystemTime, IssueError> {
    // `exp` is a time (seconds since the epoch), not a lifetime: `after`'s one-year bound on
    // lifetimes does not apply to it; it must be within a year of the issue instead.
    let by_exp = exp.map(|exp| {
        let at = std::time::UNIX_EPOCH
            .checked_add(Duration::from_secs(exp))
            .ok_or_else(|| IssueError::Response("token `exp` is out of range".into()))?;
        if at > issued_at + Duration::from_secs(366 * 24 * 3600) {
            return Err(IssueError::Response("token `exp` is beyond a year".into()));
        }
        Ok(at)
    });
    let by_expires_in = expires_in
        .map(|s| after(issued_at, s, "expires_in"))
        .transpose()?;
    Ok(match (by_expires_in, by_exp) {
        // An `exp` that makes no sense next to `expires_in` is not the one to go by.
        (Some(at), Some(Err(_)) | None) => at,
        (Some(a), Some(Ok(b))) => a.min(b),
        (None, Some(exp)) => exp?,
        (None, None) => issued_at + ttl,
    })
}

#[derive(Deserialize)]
struct Claims {
    jti: Option<String>,
    exp: Option<u64>,
}

/// The claims of a JWT access token, read without verification (only for its ID and expiry;
/// the upstream verifies it).
fn jwt_claims(token: &str) -> Option<Claims> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `sha256:` and the first 12 hex digits of the token's SHA-256: enough to tell tokens apart
/// in the audit trail, too short to be used for anything else.
pub(crate) fn hash_id(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_expires_at_the_earlier_of_expires_in_and_its_exp() {
        // Real epoch times: a 2026 `exp` is far more than a year of seconds, and must still count.
        const NOW: u64 = 1_796_578_000;
        let at = |secs: u64| std::time::UNIX_EPOCH + Duration::from_secs(NOW - 1_000 + secs);
        let issued = at(1_000) + Duration::from_millis(900);
        let ttl = Duration::from_secs(300);
        // exp = floor(server time) + 4: earlier than issued + 4 s by the rounding.
        assert_eq!(
            expiry(issued, Some(4), Some(NOW + 4), ttl).unwrap(),
            at(1_004)
        );
        assert_eq!(
            expiry(issued, Some(4), Some(NOW + 1_000), ttl).unwrap(),
            issued + Duration::from_secs(4)
        );
        assert_eq!(
            expiry(issued, None, Some(NOW + 10), ttl).unwrap(),
            at(1_010)
        );
        assert_eq!(
            expiry(issued, Some(60), None, ttl).unwrap(),
            issued + Duration::from_secs(60)
        );
        assert_eq!(expiry(issued, None, None, ttl).unwrap(), issued + ttl);
        let far = NOW + 400 * 24 * 3600;
        assert!(expiry(issued, None, Some(far), ttl).is_err());
        assert_eq!(
            expiry(issued, Some(60), Some(far), ttl).unwrap(),
            issued + Duration::from_secs(60)
        );
    }

    #[test]
    fn ids_of_jwt_and_opaque_tokens() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"jti":"abc-123","exp":4102444800}"#);
        let jwt = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig");
        let claims = jwt_claims(&jwt).unwrap();
        assert_eq!(claims.jti.as_deref(), Some("abc-123"));
        assert_eq!(claims.exp, Some(4102444800));
        assert!(jwt_claims("opaque-token-value").is_none());
        let id = hash_id("opaque-token-value");
        assert!(id.starts_with("sha256:") && id.len() == 19, "{id}");
        assert!(!id.contains("opaque"));
        assert_ne!(hash_id("a"), hash_id("b"));
    }

    /// An issuer of a closed loopback port: the cases below fail before anything is sent.
    fn issuer(grant: OAuth2Grant) -> OAuth2Issuer {
        OAuth2Issuer::new(
            "idp",
            &OAuth2IssuerConfig {
                token_url: sidekey_config::Endpoint {
                    url: "http://127.0.0.1:9/token".into(),
                },
                grant,
                client_id: "c".into(),
                client_auth: ClientAuth::None,
                ca_file: None,
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_task_token_needs_token_exchange_a_signer_and_an_end_user() {
        let task = crate::TaskContext {
            grant_id: "grant-1".into(),
            task_id: "task-1".into(),
            sub: "planner".into(),
            on_behalf_of: Some("ann".into()),
            act: Vec::new(),
            expires_at: SystemTime::now() + Duration::from_secs(600),
        };
        let request = CredentialRequest {
            name: "api".into(),
            task: Some(task.clone()),
            ..CredentialRequest::default()
        };
        let signer = LocalIssuer::generate(&sidekey_config::LocalIssuerConfig {
            issuer: "sidekey-tasks".into(),
            algorithm: sidekey_config::LocalAlgorithm::EdDsa,
        })
        .unwrap();
        let message = |r: Result<Credential, IssueError>| match r {
            Err(e) => e.public(),
            Ok(c) => panic!("issued {}", c.id),
        };
        let cc = issuer(OAuth2Grant::ClientCredentials);
        assert!(message(cc.issue(&request, Some(&signer)).await).contains("grant: token_exchange"));
        let exchange = issuer(OAuth2Grant::TokenExchange {
            subject_token_file: "/nonexistent/identity".into(),
            actor_token_file: None,
        });
        assert!(message(exchange.issue(&request, None).await)
            .contains("has no `task_assertion_issuer`"));
        let nobody = CredentialRequest {
            task: Some(crate::TaskContext {
                on_behalf_of: None,
                ..task
            }),
            ..request
        };
        let refused = message(exchange.issue(&nobody, Some(&signer)).await);
        assert!(refused.contains("names no end user"), "{refused}");
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("read write"), "read+write");
        assert_eq!(form_encode("a&b=c/d"), "a%26b%3Dc%2Fd");
        assert_eq!(form_encode("x-y_z.*"), "x-y_z.*");
    }

    #[test]
    fn signing_keys_of_each_type() {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let (_, alg) = signing_key(ec.serialize_pem().as_bytes()).unwrap();
        assert_eq!(alg, Algorithm::ES256);
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let (_, alg) = signing_key(ed.serialize_pem().as_bytes()).unwrap();
        assert_eq!(alg, Algorithm::EdDSA);
        assert!(
            signing_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_none()
        );
    }
}
