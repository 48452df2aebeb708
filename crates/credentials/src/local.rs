//! `kind: local` — sidekey's own issuer: an in-memory signing key (generated at start, never
//! written anywhere) that mints short-lived JWTs. Upstreams verify them with the JWKS served on
//! the admin listener. Meant for development, the quickstart, and services that trust sidekey.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use sidekey_config::{LocalAlgorithm, LocalIssuerConfig};

use crate::issuer::{CredentialRequest, IssueError};
use crate::{Credential, Secret, TaskContext};

/// The longest a task assertion (the subject token of a per-task token exchange) lives: it is
/// used once, at once.
pub(crate) const TASK_ASSERTION_TTL: Duration = Duration::from_secs(60);

/// One public key of a local issuer, as a JWK (RFC 7517 / RFC 8037).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Jwk {
    pub kty: &'static str,
    pub crv: &'static str,
    pub x: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    pub kid: String,
    pub alg: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
}

/// An in-memory JWT issuer.
pub struct LocalIssuer {
    iss: String,
    algorithm: Algorithm,
    key: EncodingKey,
    jwk: Jwk,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: &'a str,
    /// Per task: the task, the end user it works for, and who delegated it (RFC 8693 §4.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_behalf_of: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<serde_json::Value>,
}

/// The claims of a task assertion: the end user as `sub`, the agents acting for them as `act`.
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: &'a str,
    task_id: &'a str,
    act: serde_json::Value,
}

/// A task assertion just signed: the JWT, and its `jti` (for logs; the JWT is a secret).
pub(crate) struct TaskAssertion {
    pub(crate) token: Secret,
    pub(crate) jti: String,
}

/// The RFC 8693 §4.1 `act` claim for a chain of delegators, earliest first: the outermost
/// `act` is the most recent actor (the immediate delegator), each older one nested inside the
/// next (`{"sub": parent, "act": {"sub": grandparent}}`). `None` for no delegators.
fn act_claim(delegators: &[String]) -> Option<serde_json::Value> {
    delegators.iter().fold(None, |older, actor| {
        let mut act = serde_json::Map::new();
        act.insert("sub".into(), serde_json::Value::String(actor.clone()));
        if let Some(older) = older {
            act.insert("act".into(), older);
        }
        Some(serde_json::Value::Object(act))
    })
}

impl LocalIssuer {
    /// Generates a fresh key pair. The private key lives only inside this value.
    pub fn generate(config: &LocalIssuerConfig) -> Result<Self, IssueError> {
        let rng = SystemRandom::new();
        let (algorithm, key, mut jwk) = match config.algorithm {
            LocalAlgorithm::EdDsa => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| IssueError::Signing("Ed25519 key generation failed".into()))?;
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                    .map_err(|_| IssueError::Signing("Ed25519 key rejected".into()))?;
                let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
                let jwk = Jwk {
                    kty: "OKP",
                    crv: "Ed25519",
                    x,
                    y: None,
                    kid: String::new(),
                    alg: "EdDSA",
                    use_: "sig",
                };
                (
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_der(pkcs8.as_ref()),
                    jwk,
                )
            }
            LocalAlgorithm::Es256 => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| IssueError::Signing("P-256 key generation failed".into()))?;
                let pair =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                        .map_err(|_| IssueError::Signing("P-256 key rejected".into()))?;
                // Uncompressed point: 0x04 || X (32) || Y (32).
                let point = pair.public_key().as_ref();
                if point.len() != 65 {
                    return Err(IssueError::Signing(
                        "unexpected P-256 public key size".into(),
                    ));
                }
                let jwk = Jwk {
                    kty: "EC",
                    crv: "P-256",
                    x: URL_SAFE_NO_PAD.encode(&point[1..33]),
                    y: Some(URL_SAFE_NO_PAD.encode(&point[33..65])),
                    kid: String::new(),
                    alg: "ES256",
                    use_: "sig",
                };
                (
                    Algorithm::ES256,
                    EncodingKey::from_ec_der(pkcs8.as_ref()),
                    jwk,
                )
            }
        };
        // kid: a short, stable name for this key (RFC 7638-style thumbprint input, truncated).
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("{}:{}:{}", jwk.crv, jwk.x, jwk.y.as_deref().unwrap_or("")).as_bytes(),
        );
        jwk.kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        Ok(LocalIssuer {
            iss: config.issuer.clone(),
            algorithm,
            key,
            jwk,
        })
    }

    /// The public key, for the JWKS endpoint.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs the subject token of a per-task RFC 8693 token exchange: the task's end user
    /// (`on_behalf_of`) is the subject, and the agents acting for them are the RFC 8693 §4.1
    /// `act` chain — the grant's `sub` outermost (the current actor), then its delegators, most
    /// recent first. `aud` names the authorization server (its token endpoint), `exp` is at
    /// most [`TASK_ASSERTION_TTL`] away and never after the grant's end; `task_id` names the
    /// task. Refused for a grant without an end user (whom would the token be for?) and for an
    /// ended grant.
    pub(crate) fn task_assertion(
        &self,
        task: &TaskContext,
        audience: &str,
    ) -> Result<TaskAssertion, IssueError> {
        let user = task.on_behalf_of.as_deref().ok_or_else(|| {
            IssueError::Other(format!(
                "the grant of task `{}` names no end user (`on_behalf_of`): a per-task OAuth2 token is exchanged for the user the task works for",
                task.task_id
            ))
        })?;
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IssueError::Signing("system clock is before 1970".into()))?
            .as_secs();
        let grant_exp = task
            .expires_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if grant_exp <= iat {
            return Err(IssueError::Other("the task's grant has expired".into()));
        }
        let mut actors = task.act.clone();
        actors.push(task.sub.clone());
        let act = act_claim(&actors).ok_or_else(|| {
            IssueError::Other("a task grant without `sub` cannot act for anyone".into())
        })?;
        let jti = uuid::Uuid::new_v4().to_string();
        let claims = AssertionClaims {
            iss: &self.iss,
            sub: user,
            aud: audience,
            iat,
            nbf: iat,
            exp: grant_exp.min(iat + TASK_ASSERTION_TTL.as_secs()),
            jti: &jti,
            task_id: &task.task_id,
            act,
        };
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.jwk.kid.clone());
        header.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok(TaskAssertion {
            token: Secret::new(token),
            jti,
        })
    }

    /// Mints a JWT with `iss`, `sub`, `aud`, `iat`, `nbf`, `exp` and a fresh `jti`. For a task,
    /// `sub` is the task's (the agent or sub-agent it was granted to), `task_id`,
    /// `on_behalf_of` and `act` name the task, and `exp` is no later than the grant's: a
    /// task's JWT cannot be revoked, so it must not outlive the grant it was issued under.
    pub fn issue(&self, request: &CredentialRequest) -> Result<Credential, IssueError> {
        let issued_at = SystemTime::now();
        let iat = issued_at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IssueError::Signing("system clock is before 1970".into()))?
            .as_secs();
        let ttl = request.ttl.max(Duration::from_secs(1));
        let mut exp = iat + ttl.as_secs();
        if let Some(task) = &request.task {
            let grant_exp = task
                .expires_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if grant_exp <= iat {
                return Err(IssueError::Other("the task's grant has expired".into()));
            }
            exp = exp.min(grant_exp);
        }
        let jti = uuid::Uuid::new_v4().to_string();
        let task = request.task.as_ref();
        let claims = Claims {
            iss: &self.iss,
            sub: match task {
                Some(task) => &task.sub,
                None => request.subject.as_deref().unwrap_or("sidekey"),
            },
            aud: request.audience.as_deref(),
            iat,
            nbf: iat,
            exp,
            jti: &jti,
            task_id: task.map(|t| t.task_id.as_str()),
            on_behalf_of: task.and_then(|t| t.on_behalf_of.as_deref()),
            act: task.and_then(|t| act_claim(&t.act)),
        };
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.jwk.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok(Credential::token(
            jti,
            Secret::new(token),
            issued_at,
            UNIX_EPOCH + Duration::from_secs(exp),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskContext;
    use jsonwebtoken::{DecodingKey, Validation};

    fn request() -> CredentialRequest {
        CredentialRequest {
            audience: Some("demo-api".into()),
            subject: Some("agent-7".into()),
            ttl: Duration::from_secs(300),
            ..CredentialRequest::default()
        }
    }

    fn verify(issuer: &LocalIssuer, token: &str) -> serde_json::Value {
        let jwk = issuer.jwk();
        let key = match jwk.kty {
            "OKP" => DecodingKey::from_ed_components(&jwk.x).unwrap(),
            _ => DecodingKey::from_ec_components(&jwk.x, jwk.y.as_deref().unwrap()).unwrap(),
        };
        let mut validation = Validation::new(issuer.algorithm);
        validation.set_audience(&["demo-api"]);
        validation.set_issuer(&["sidekey-local"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .unwrap()
            .claims
    }

    #[test]
    fn mints_verifiable_jwts_with_every_claim() {
        for algorithm in [LocalAlgorithm::EdDsa, LocalAlgorithm::Es256] {
            let issuer = LocalIssuer::generate(&LocalIssuerConfig {
                issuer: "sidekey-local".into(),
                algorithm,
            })
            .unwrap();
            let cred = issuer.issue(&request()).unwrap();
            let claims = verify(&issuer, &cred.token_value().unwrap().with(str::to_string));
            assert_eq!(claims["jti"], cred.id.as_str());
            assert_eq!(claims["sub"], "agent-7");
            assert_eq!(claims["aud"], "demo-api");
            let exp = claims["exp"].as_u64().unwrap();
            let iat = claims["iat"].as_u64().unwrap();
            assert_eq!(exp - iat, 300);
            let header =
                jsonwebtoken::decode_header(cred.token_value().unwrap().with(str::to_string))
                    .unwrap();
            assert_eq!(header.kid.as_deref(), Some(issuer.jwk().kid.as_str()));
        }
    }

    #[test]
    fn a_tasks_jwt_names_the_task_and_ends_with_its_grant() {
        let issuer = LocalIssuer::generate(&LocalIssuerConfig {
            issuer: "sidekey-local".into(),
            algorithm: LocalAlgorithm::EdDsa,
        })
        .unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let grant_exp = now + 120;
        let task = TaskContext {
            grant_id: "grant-1".into(),
            task_id: "task-42".into(),
            sub: "sub-agent-3".into(),
            on_behalf_of: Some("ann@example.com".into()),
            act: vec!["root-agent".into(), "agent-2".into()],
            expires_at: UNIX_EPOCH + Duration::from_secs(grant_exp),
        };
        let cred = issuer
            .issue(&CredentialRequest {
                task: Some(task.clone()),
                ..request()
            })
            .unwrap();
        let claims = verify(&issuer, &cred.token_value().unwrap().with(str::to_string));
        assert_eq!(
            claims["sub"], "sub-agent-3",
            "the task's sub, not `subject`"
        );
        assert_eq!(claims["task_id"], "task-42");
        assert_eq!(claims["on_behalf_of"], "ann@example.com");
        assert_eq!(
            claims["act"],
            serde_json::json!({"sub": "agent-2", "act": {"sub": "root-agent"}}),
            "the immediate delegator outermost"
        );
        assert_eq!(claims["aud"], "demo-api");
        // ttl is 5m; the grant ends in 2.
        assert_eq!(claims["exp"].as_u64(), Some(grant_exp));
        assert_eq!(cred.expires_at, task.expires_at);

        // A root grant, with no end user: no `act`, no `on_behalf_of`; a grant that ends
        // after the ttl leaves the ttl.
        let root = TaskContext {
            on_behalf_of: None,
            act: Vec::new(),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
            ..task.clone()
        };
        let cred = issuer
            .issue(&CredentialRequest {
                task: Some(root),
                ..request()
            })
            .unwrap();
        let claims = verify(&issuer, &cred.token_value().unwrap().with(str::to_string));
        assert!(claims.get("act").is_none(), "{claims}");
        assert!(claims.get("on_behalf_of").is_none(), "{claims}");
        let (exp, iat) = (claims["exp"].as_u64(), claims["iat"].as_u64());
        assert_eq!(exp.zip(iat).map(|(e, i)| e - i), Some(300));

        // No JWT for a grant that has ended.
        let ended = TaskContext {
            expires_at: SystemTime::now() - Duration::from_secs(1),
            ..task
        };
        assert!(issuer
            .issue(&CredentialRequest {
                task: Some(ended),
                ..request()
            })
            .is_err());
    }

    #[test]
    fn a_task_assertion_names_the_user_as_subject_and_the_agents_as_actors() {
        let issuer = LocalIssuer::generate(&LocalIssuerConfig {
            issuer: "sidekey-tasks".into(),
            algorithm: LocalAlgorithm::Es256,
        })
        .unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token_url = "https://idp.test/oauth2/token";
        let decode = |token: &Secret| {
            let jwk = issuer.jwk();
            let key = DecodingKey::from_ec_components(&jwk.x, jwk.y.as_deref().unwrap()).unwrap();
            let mut validation = Validation::new(Algorithm::ES256);
            validation.set_audience(&[token_url]);
            validation.set_issuer(&["sidekey-tasks"]);
            let token = token.with(str::to_string);
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.kid.as_deref(), Some(jwk.kid.as_str()));
            jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation)
                .unwrap()
                .claims
        };
        // A sub-agent's grant: root-agent → planner → coder, for ann.
        let task = TaskContext {
            grant_id: "grant-3".into(),
            task_id: "task-42".into(),
            sub: "coder".into(),
            on_behalf_of: Some("ann@example.com".into()),
            act: vec!["root-agent".into(), "planner".into()],
            expires_at: UNIX_EPOCH + Duration::from_secs(now + 3600),
        };
        let assertion = issuer.task_assertion(&task, token_url).unwrap();
        let claims = decode(&assertion.token);
        assert_eq!(claims["sub"], "ann@example.com", "the user is the subject");
        assert_eq!(
            claims["act"],
            serde_json::json!({"sub": "coder", "act": {"sub": "planner", "act": {"sub": "root-agent"}}}),
            "the grant's sub outermost, then its delegators, most recent first"
        );
        assert_eq!(claims["task_id"], "task-42");
        assert_eq!(claims["jti"], assertion.jti.as_str());
        assert_eq!(claims["aud"], token_url);
        assert!(claims.get("on_behalf_of").is_none(), "{claims}");
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 60, "short-lived: {claims}");
        assert_eq!(claims["nbf"].as_u64(), Some(iat));
        assert_ne!(
            issuer.task_assertion(&task, token_url).unwrap().jti,
            assertion.jti,
            "each is new"
        );

        // A root grant: the agent alone acts; a grant ending sooner ends it sooner.
        let root = TaskContext {
            sub: "planner".into(),
            act: Vec::new(),
            expires_at: UNIX_EPOCH + Duration::from_secs(now + 20),
            ..task.clone()
        };
        let claims = decode(&issuer.task_assertion(&root, token_url).unwrap().token);
        assert_eq!(claims["act"], serde_json::json!({"sub": "planner"}));
        assert_eq!(claims["exp"].as_u64(), Some(now + 20));

        // No user, no assertion: the error says why. Nor for an ended grant.
        let nobody = TaskContext {
            on_behalf_of: None,
            ..task.clone()
        };
        let Err(err) = issuer.task_assertion(&nobody, token_url) else {
            panic!("an assertion for nobody");
        };
        assert!(
            err.public().contains("names no end user (`on_behalf_of`)"),
            "{err}"
        );
        assert!(err.public().contains("task-42"), "{err}");
        let ended = TaskContext {
            expires_at: SystemTime::now() - Duration::from_secs(1),
            ..task
        };
        assert!(issuer.task_assertion(&ended, token_url).is_err());
    }

    #[test]
    fn each_credential_has_a_fresh_id_and_another_key_cannot_verify_it() {
        let config = LocalIssuerConfig {
            issuer: "sidekey-local".into(),
            algorithm: LocalAlgorithm::EdDsa,
        };
        let a = LocalIssuer::generate(&config).unwrap();
        let b = LocalIssuer::generate(&config).unwrap();
        let c1 = a.issue(&request()).unwrap();
        let c2 = a.issue(&request()).unwrap();
        assert_ne!(c1.id, c2.id);
        assert_ne!(a.jwk().x, b.jwk().x);
        let key = DecodingKey::from_ed_components(&b.jwk().x).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["demo-api"]);
        assert!(jsonwebtoken::decode::<serde_json::Value>(
            &c1.token_value().unwrap().with(str::to_string),
            &key,
            &validation
        )
        .is_err());
    }
}
