//! Task grants: short-lived signed JWTs that name what one task may do. This crate verifies the
//! grant an agent presents (signature by a trusted key, audience, lifetime, revocation),
//! derives child grants for sub-agents (always a subset of the parent, signed by sidekey's own
//! in-memory key) and keeps the revocations. What a grant allows is policy's question
//! ([`sidekey_policy::GrantScope`]); which credentials a task gets is the credential store's.
//!
//! The hot path is a lookup: a verified grant is cached by its token, so a request presenting
//! a grant already seen pays a hash-map probe and two comparisons (expiry, revocation).

mod claims;
mod keys;
mod present;
mod registry;
mod sources;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use sidekey_config::GrantsConfig;
use sidekey_policy::{ErrorCode, Refusal};

pub use claims::{Act, Grant, GrantClaims, RouteClaim};
pub use keys::SigningKey;
pub use present::{presented_by_header, presented_by_proxy_authorization, GRANT_HEADER};

use crate::claims::{scope_of, unix};
use crate::registry::Registry;
use crate::sources::Source;

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN: usize = 8 << 10;
/// Clock skew tolerated on `iat` and `nbf` (an orchestrator's clock may run ahead).
const SKEW: u64 = 30;
/// Verified grants cached by token, at most.
const CACHE_MAX: usize = 4096;
/// The issuer sidekey puts in the grants it signs.
pub const OWN_ISSUER: &str = "sidekey";

/// Why a presented grant is refused. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("grant invalid: {0}")]
    Invalid(String),
    #[error("grant expired: {0}")]
    Expired(String),
    #[error("grant revoked: {0}")]
    Revoked(String),
    /// A valid grant asked for what it may not: a child wider than itself, revoking a grant
    /// that is neither its own nor derived from it (admin endpoints only).
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// A child grant request that is malformed (admin endpoints only).
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl GrantError {
    /// The refusal the agent gets.
    pub fn refusal(&self) -> Refusal {
        let code = match self {
            GrantError::Invalid(_) | GrantError::Forbidden(_) | GrantError::BadRequest(_) => {
                ErrorCode::GrantInvalid
            }
            GrantError::Expired(_) => ErrorCode::GrantExpired,
            GrantError::Revoked(_) => ErrorCode::GrantRevoked,
        };
        Refusal::new(code, self.to_string())
    }
}

/// What a grant holder asks for when deriving a child grant (`POST /grants`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildRequest {
    /// The sub-agent's id.
    pub sub: String,
    /// A subset of the parent's routes; absent: the parent's, unchanged.
    #[serde(default)]
    pub routes: Option<Vec<RouteClaim>>,
    /// How long the child lives, in seconds (capped by the parent's `exp` and
    /// `grants.max_ttl`); absent: until the parent expires.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// A grant sidekey just signed.
pub struct Minted {
    pub token: String,
    pub grant: Arc<Grant>,
}

/// Settings read for a reloaded config, to be installed with [`Grants::install`].
pub struct Prepared(Settings);

/// The settings of the current config generation.
struct Settings {
    audience: String,
    max_ttl: Duration,
    sources: Vec<Source>,
}

/// Everything about grants that lives as long as the process: sidekey's own key (child
/// grants stay valid across reloads), the revocations, the cache, and the current settings.
pub struct Grants {
    own: SigningKey,
    settings: ArcSwap<Settings>,
    registry: Mutex<Registry>,
    /// Revocations ever made: while none, a liveness check takes no lock.
    revocations: AtomicUsize,
    cache: Mutex<HashMap<Box<str>, Arc<Grant>>>,
}

impl Grants {
    /// Reads the trusted keys (JWKS files now; URLs are fetched in the background at once and
    /// kept fresh, and the first grant waits for that first fetch) and generates sidekey's own
    /// key. Needs a tokio runtime context for URL sources.
    pub fn new(config: &GrantsConfig) -> Result<Arc<Grants>, String> {
        let settings = settings(config, &[])?;
        Ok(Arc::new(Grants {
            own: SigningKey::generate()?,
            settings: ArcSwap::from_pointee(settings),
            registry: Mutex::new(Registry::default()),
            revocations: AtomicUsize::new(0),
            cache: Mutex::new(HashMap::new()),
        }))
    }

    /// Reads what a reloaded config's grant settings need (JWKS files; a URL source that did
    /// not change keeps its keys and schedule), changing nothing yet: a reload is all or
    /// nothing, so this may fail and [`Grants::install`] may not.
    pub fn prepare(&self, config: &GrantsConfig) -> Result<Prepared, String> {
        let old = self.settings.load();
        Ok(Prepared(settings(config, &old.sources)?))
    }

    /// Makes prepared settings current. Grants verified under the old ones are verified again.
    pub fn install(&self, prepared: Prepared) {
        self.settings.store(Arc::new(prepared.0));
        self.lock_cache().clear();
    }

    /// Verifies a presented grant, or finds it verified already, and checks it is still live.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Grant>, GrantError> {
        if let Some(grant) = self.lock_cache().get(token).cloned() {
            self.check_live(&grant)?;
            return Ok(grant);
        }
        let grant = Arc::new(self.verify(token).await?);
        self.check_live(&grant)?;
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_MAX {
            let now = SystemTime::now();
            cache.retain(|_, g| g.expires_at > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.into(), Arc::clone(&grant));
        Ok(grant)
    }

    /// Still live: not expired, and neither it nor a grant it derives from is revoked. Called
    /// for every request, including each request of a tunnel whose CONNECT presented it.
    pub fn check_live(&self, grant: &Grant) -> Result<(), GrantError> {
        if SystemTime::now() >= grant.expires_at {
            return Err(GrantError::Expired(format!(
                "task {} grant expired at {}",
                grant.task_id,
                unix(grant.expires_at)
            )));
        }
        if self.revocations.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        if let Some(jti) = self.lock_registry().revoked_in_chain(grant) {
            return Err(GrantError::Revoked(if jti == grant.jti {
                format!("task {} grant was revoked", grant.task_id)
            } else {
                format!("task {} grant derives from a revoked grant", grant.task_id)
            }));
        }
        Ok(())
    }

    /// Verifies a grant without the cache (what [`Grants::authenticate`] does on a miss):
    /// signature, claims, lifetime cap. Liveness is not checked. For measurements and tools.
    pub async fn verify_uncached(&self, token: &str) -> Result<Grant, GrantError> {
        self.verify(token).await
    }

    async fn verify(&self, token: &str) -> Result<Grant, GrantError> {
        if token.len() > MAX_TOKEN {
            return Err(GrantError::Invalid(format!(
                "longer than {MAX_TOKEN} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| GrantError::Invalid("not a signed JWT".into()))?;
        if !keys_allow(header.alg) {
            return Err(GrantError::Invalid(format!(
                "algorithm {:?} is not accepted (asymmetric signatures only)",
                header.alg
            )));
        }
        let settings = self.settings.load_full();
        let kid = header.kid.as_deref();
        // sidekey's own key signs only the child grants it derives.
        if kid == Some(self.own.kid.as_str()) {
            let claims = decode(token, &self.own.public, kid, header.alg, &settings)?;
            if !self.lock_registry().minted_here(&claims.jti) {
                return Err(GrantError::Invalid(
                    "signed by sidekey's own key but not derived here".into(),
                ));
            }
            return finish(claims, &settings);
        }
        let mut last = None;
        for source in &settings.sources {
            let keys = source.keys_for(kid).await;
            match decode(token, &keys, kid, header.alg, &settings) {
                Ok(claims) => return finish(claims, &settings),
                Err(NoKey) => {}
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || GrantError::Invalid("signed by no trusted key".into()),
            |e| e.into_error(),
        ))
    }

    /// Derives a child grant from `parent` for a sub-agent: a subset of the parent's routes,
    /// methods and paths, expiring no later than the parent, its `act` chain extended with
    /// the parent's `sub`. Signed by sidekey's own key and registered, so that revoking the
    /// parent revokes it too. The error says what would widen.
    pub fn derive(&self, parent: &Grant, request: &ChildRequest) -> Result<Minted, GrantError> {
        let settings = self.settings.load_full();
        let now = SystemTime::now();
        let routes = match &request.routes {
            Some(routes) => Some(routes.clone()),
            None => parent.claims.routes.clone(),
        };
        if request.ttl_seconds == Some(0) {
            return Err(GrantError::BadRequest(
                "ttl_seconds must be at least 1".into(),
            ));
        }
        let bad = |e: GrantError| match e {
            GrantError::Invalid(why) => GrantError::BadRequest(why),
            other => other,
        };
        let scope = scope_of(routes.as_deref()).map_err(bad)?;
        scope.check_within(&parent.scope).map_err(|why| {
            GrantError::Invalid(format!("the child would widen its parent: {why}"))
        })?;
        let iat = unix(now);
        let mut exp = unix(parent.expires_at).min(iat + settings.max_ttl.as_secs());
        if let Some(ttl) = request.ttl_seconds {
            exp = exp.min(iat.saturating_add(ttl));
        }
        if exp <= iat {
            return Err(GrantError::Expired(
                "the parent grant has no time left to give".into(),
            ));
        }
        let claims = GrantClaims {
            iss: Some(OWN_ISSUER.into()),
            sub: request.sub.clone(),
            task_id: parent.task_id.clone(),
            aud: serde_json::Value::String(settings.audience.clone()),
            iat,
            exp,
            nbf: None,
            jti: uuid::Uuid::new_v4().to_string(),
            routes,
            on_behalf_of: parent.on_behalf_of.clone(),
            act: Some(Act {
                sub: parent.sub.clone(),
                act: parent.claims.act.clone().map(Box::new),
            }),
            parent: Some(parent.jti.clone()),
        };
        let grant = Arc::new(Grant::from_claims(claims, settings.max_ttl).map_err(bad)?);
        let token = sign(&self.own, grant.claims())
            .map_err(|e| GrantError::Invalid(format!("cannot sign the child: {e}")))?;
        self.lock_registry()
            .record_child(&grant.jti, &parent.jti, grant.expires_at);
        Ok(Minted { token, grant })
    }

    /// Revokes `jti` and every grant known to derive from it. `by` must be that grant or one
    /// it derives from (a holder revokes its own task or its sub-agents', never a sibling's).
    /// Returns the revoked grant IDs (for ending their per-task credentials).
    pub fn revoke(&self, by: &Grant, jti: &str) -> Result<Vec<String>, GrantError> {
        let mut registry = self.lock_registry();
        if by.jti != jti && !registry.descends_from(jti, &by.jti) {
            return Err(GrantError::Forbidden(format!(
                "grant {jti} is neither yours nor derived from yours"
            )));
        }
        // A grant sidekey did not derive has no recorded expiry: keep its revocation as long
        // as the longest a grant may live.
        let max_ttl = self.settings.load().max_ttl;
        let until = registry
            .expiry_of(jti)
            .unwrap_or_else(|| SystemTime::now() + max_ttl);
        let ended = registry.revoke(jti, until);
        self.revocations.fetch_add(1, Ordering::Release);
        drop(registry);
        self.lock_cache().retain(|_, g| !ended.contains(&g.jti));
        Ok(ended)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Arc<Grant>>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A grant's claims read WITHOUT checking its signature, audience or lifetime (only what
/// [`Grant`] itself requires: identifiers, `exp` after `iat` within `max_ttl`, the routes).
/// For `sidekey explain` when the trusted keys are served by a URL it does not fetch, to show
/// the scope a grant claims, labelled unverified. Never for deciding a request.
pub fn decode_unverified(token: &str, max_ttl: Duration) -> Result<Grant, GrantError> {
    use base64::Engine as _;
    if token.len() > MAX_TOKEN {
        return Err(GrantError::Invalid(format!(
            "longer than {MAX_TOKEN} bytes"
        )));
    }
    let not_jwt = || GrantError::Invalid("not a signed JWT".into());
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(not_jwt());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| not_jwt())?;
    let claims: GrantClaims =
        serde_json::from_slice(&bytes).map_err(|e| GrantError::Invalid(format!("claims: {e}")))?;
    Grant::from_claims(claims, max_ttl)
}

/// Signs grant claims with an Ed25519 key (`sidekey grant sign`, and child grants).
pub fn sign(key: &SigningKey, claims: &GrantClaims) -> Result<String, String> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, claims, &key.encoding).map_err(|e| e.to_string())
}

fn keys_allow(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Why one source did not verify a token.
enum DecodeFailure {
    /// No key of the source can have signed it (kid/alg): try the next source.
    NoKey,
    Failed(GrantError),
}
use DecodeFailure::NoKey;

impl DecodeFailure {
    fn into_error(self) -> GrantError {
        match self {
            NoKey => GrantError::Invalid("signed by no trusted key".into()),
            DecodeFailure::Failed(e) => e,
        }
    }
}

/// Verifies the token against the keys of one source: signature, `exp` (no leeway: a grant
/// ends when it says), `aud`; claims present and well-typed.
fn decode(
    token: &str,
    keys: &keys::KeySet,
    kid: Option<&str>,
    alg: Algorithm,
    settings: &Settings,
) -> Result<GrantClaims, DecodeFailure> {
    let mut validation = Validation::new(alg);
    validation.leeway = 0;
    validation.validate_nbf = false;
    validation.set_audience(&[&settings.audience]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let mut tried = false;
    let mut bad_signature = false;
    for key in keys.candidates(kid, alg) {
        tried = true;
        match jsonwebtoken::decode::<GrantClaims>(token, &key.key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::InvalidSignature => bad_signature = true,
                ErrorKind::ExpiredSignature => {
                    return Err(DecodeFailure::Failed(GrantError::Expired(
                        "its exp has passed".into(),
                    )))
                }
                ErrorKind::InvalidAudience => {
                    return Err(DecodeFailure::Failed(GrantError::Invalid(
                        "it is for another audience (aud must name this sidekey)".into(),
                    )))
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    return Err(DecodeFailure::Failed(GrantError::Invalid(format!(
                        "the claim `{claim}` is missing"
                    ))))
                }
                ErrorKind::Json(_) | ErrorKind::InvalidClaimFormat(_) => {
                    return Err(DecodeFailure::Failed(GrantError::Invalid(
                        "its claims are malformed (sub, task_id, jti, iat, exp are required)"
                            .into(),
                    )))
                }
                _ => bad_signature = true,
            },
        }
    }
    if tried && bad_signature {
        return Err(DecodeFailure::Failed(GrantError::Invalid(
            "the signature does not verify".into(),
        )));
    }
    Err(NoKey)
}

/// The checks after the signature: `iat`/`nbf` not ahead of the clock, the lifetime cap, the
/// claims' shapes.
fn finish(claims: GrantClaims, settings: &Settings) -> Result<Grant, GrantError> {
    let now = unix(SystemTime::now());
    if claims.iat > now + SKEW {
        return Err(GrantError::Invalid(
            "it was issued in the future (iat)".into(),
        ));
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + SKEW) {
        return Err(GrantError::Expired("it is not valid yet (nbf)".into()));
    }
    Grant::from_claims(claims, settings.max_ttl)
}

impl From<DecodeFailure> for GrantError {
    fn from(f: DecodeFailure) -> GrantError {
        f.into_error()
    }
}

fn settings(config: &GrantsConfig, previous: &[Source]) -> Result<Settings, String> {
    let mut sources = Vec::with_capacity(config.trusted.len());
    for trusted in &config.trusted {
        sources.push(Source::build(trusted, previous)?);
    }
    Ok(Settings {
        audience: config.audience.clone(),
        max_ttl: config.max_ttl,
        sources,
    })
}

#[cfg(test)]
mod tests;
