//! The credential store: one slot per configured credential, holding at most one live
//! credential. A cache hit is a lock-free load; refresh happens ahead of expiry in the
//! background; concurrent misses share one issuer call; an expired credential is never handed
//! out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rand::Rng;
use sidekey_audit::{rfc3339, AuditLog, CredentialEvent, CredentialEventKind};
use sidekey_config::CredentialConfig;

use crate::issuer::{CredentialRequest, Issuer};
use crate::Credential;

/// How long one issuer call may take before the request waiting on it gets a 503.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request could not get its credential (maps to 503 `credential_unavailable`).
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("no credential named `{0}` is configured")]
    Unknown(String),
    #[error("credential `{name}` is unavailable: {reason}")]
    Unavailable { name: String, reason: String },
}

/// What `/credentials` and the status page show: never the value.
#[derive(Debug, Clone)]
pub struct CredentialStatus {
    pub name: String,
    pub issuer: String,
    pub credential_id: Option<String>,
    pub expires_at: Option<SystemTime>,
    pub uses: u64,
    pub eager: bool,
}

struct Held {
    credential: Arc<Credential>,
    refresh_at: SystemTime,
    /// Past this instant the credential is treated as expired (expiry minus a safety margin).
    usable_until: SystemTime,
}

struct Slot {
    name: String,
    issuer_name: String,
    issuer: Arc<Issuer>,
    request: CredentialRequest,
    eager: bool,
    current: ArcSwapOption<Held>,
    fetch_lock: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
    uses: AtomicU64,
}

/// Every configured credential, by name.
pub struct CredentialStore {
    slots: HashMap<String, Arc<Slot>>,
    audit: AuditLog,
}

impl CredentialStore {
    /// Builds empty slots for `credentials`; `issuers` must contain every issuer they name
    /// (the config validator guarantees it; a missing one is reported here too).
    pub fn new(
        credentials: &[CredentialConfig],
        issuers: &HashMap<String, Arc<Issuer>>,
        audit: AuditLog,
    ) -> Result<Self, CredentialError> {
        let mut slots = HashMap::new();
        for c in credentials {
            let issuer =
                issuers
                    .get(&c.issuer)
                    .cloned()
                    .ok_or_else(|| CredentialError::Unavailable {
                        name: c.name.clone(),
                        reason: format!("issuer `{}` is not configured", c.issuer),
                    })?;
            slots.insert(
                c.name.clone(),
                Arc::new(Slot {
                    name: c.name.clone(),
                    issuer_name: c.issuer.clone(),
                    issuer,
                    request: CredentialRequest {
                        audience: c.audience.clone(),
                        subject: c.subject.clone(),
                        ttl: c.ttl,
                    },
                    eager: c.eager,
                    current: ArcSwapOption::empty(),
                    fetch_lock: tokio::sync::Mutex::new(()),
                    refreshing: AtomicBool::new(false),
                    uses: AtomicU64::new(0),
                }),
            );
        }
        Ok(CredentialStore { slots, audit })
    }

    /// The credential for `name`: from memory when held and not expired (refreshing it in the
    /// background once past its refresh point), else fetched — one issuer call shared by all
    /// concurrent callers.
    pub async fn get(&self, name: &str) -> Result<Arc<Credential>, CredentialError> {
        let slot = self
            .slots
            .get(name)
            .ok_or_else(|| CredentialError::Unknown(name.to_string()))?;
        let now = SystemTime::now();
        if let Some(held) = slot.current.load().as_ref() {
            if now < held.usable_until {
                if now >= held.refresh_at && !slot.refreshing.swap(true, Ordering::AcqRel) {
                    let slot = Arc::clone(slot);
                    let audit = self.audit.clone();
                    tokio::spawn(async move {
                        let _guard = slot.fetch_lock.lock().await;
                        let _ = fetch(&slot, &audit).await;
                        slot.refreshing.store(false, Ordering::Release);
                    });
                }
                slot.uses.fetch_add(1, Ordering::Relaxed);
                return Ok(Arc::clone(&held.credential));
            }
        }
        let credential = self.fetch_shared(slot).await?;
        slot.uses.fetch_add(1, Ordering::Relaxed);
        Ok(credential)
    }

    /// Fetches every `eager` credential; readiness waits for this.
    pub async fn fetch_eager(&self) -> Result<(), CredentialError> {
        for slot in self.slots.values().filter(|s| s.eager) {
            self.fetch_shared(slot).await?;
        }
        Ok(())
    }

    /// True when every eager credential is held and usable.
    pub fn ready(&self) -> bool {
        let now = SystemTime::now();
        self.slots.values().filter(|s| s.eager).all(|s| {
            s.current
                .load()
                .as_ref()
                .is_some_and(|h| now < h.usable_until)
        })
    }

    /// Name, issuer, ID, expiry and use count of every credential, sorted by name.
    pub fn status(&self) -> Vec<CredentialStatus> {
        let mut out: Vec<_> = self
            .slots
            .values()
            .map(|s| {
                let held = s.current.load();
                CredentialStatus {
                    name: s.name.clone(),
                    issuer: s.issuer_name.clone(),
                    credential_id: held.as_ref().map(|h| h.credential.id.0.clone()),
                    expires_at: held.as_ref().map(|h| h.credential.expires_at),
                    uses: s.uses.load(Ordering::Relaxed),
                    eager: s.eager,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The issuer name of a credential.
    pub fn issuer_of(&self, name: &str) -> Option<&str> {
        self.slots.get(name).map(|s| s.issuer_name.as_str())
    }

    async fn fetch_shared(&self, slot: &Arc<Slot>) -> Result<Arc<Credential>, CredentialError> {
        let _guard = slot.fetch_lock.lock().await;
        // Someone else may have fetched while we waited for the lock.
        if let Some(held) = slot.current.load().as_ref() {
            if SystemTime::now() < held.usable_until {
                return Ok(Arc::clone(&held.credential));
            }
        }
        fetch(slot, &self.audit).await
    }
}

/// One issuer call; the caller holds `fetch_lock`. Stores and audits the result.
async fn fetch(slot: &Slot, audit: &AuditLog) -> Result<Arc<Credential>, CredentialError> {
    let result = tokio::time::timeout(ISSUE_TIMEOUT, slot.issuer.issue(&slot.request)).await;
    let credential = match result {
        Ok(Ok(c)) => Arc::new(c),
        Ok(Err(e)) => return Err(failed(slot, audit, e.to_string())),
        Err(_) => {
            return Err(failed(
                slot,
                audit,
                format!("issuer did not answer within {ISSUE_TIMEOUT:?}"),
            ))
        }
    };
    let lifetime = credential
        .expires_at
        .duration_since(credential.issued_at)
        .unwrap_or(Duration::ZERO);
    // Refresh at 60-70% of the lifetime (jittered so many pods do not refresh in lockstep);
    // stop using it a little before expiry so it never arrives expired at the upstream.
    let fraction = rand::rng().random_range(0.60..0.70);
    let refresh_at = credential.issued_at + lifetime.mul_f64(fraction);
    let margin = (lifetime / 10).min(Duration::from_secs(5));
    let usable_until = credential.expires_at - margin;
    let previous = slot.current.swap(Some(Arc::new(Held {
        credential: Arc::clone(&credential),
        refresh_at,
        usable_until,
    })));
    audit.credential(&CredentialEvent {
        event: if previous.is_some() {
            CredentialEventKind::Refreshed
        } else {
            CredentialEventKind::Issued
        },
        credential: slot.name.clone(),
        issuer: slot.issuer_name.clone(),
        credential_id: Some(credential.id.0.clone()),
        expires_at: Some(rfc3339(credential.expires_at)),
        error: None,
    });
    tracing::info!(credential = %slot.name, issuer = %slot.issuer_name, credential_id = %credential.id, "credential issued");
    Ok(credential)
}

fn failed(slot: &Slot, audit: &AuditLog, reason: String) -> CredentialError {
    tracing::warn!(credential = %slot.name, issuer = %slot.issuer_name, error = %reason, "credential fetch failed");
    audit.credential(&CredentialEvent {
        event: CredentialEventKind::Failed,
        credential: slot.name.clone(),
        issuer: slot.issuer_name.clone(),
        credential_id: None,
        expires_at: None,
        error: Some(reason.clone()),
    });
    CredentialError::Unavailable {
        name: slot.name.clone(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalIssuer;
    use sidekey_audit::AuditWriter;
    use sidekey_config::{LocalAlgorithm, LocalIssuerConfig};

    fn store(ttl: Duration) -> (CredentialStore, AuditWriter) {
        let writer = AuditWriter::spawn(Box::new(std::io::sink())).unwrap();
        let issuer = LocalIssuer::generate(&LocalIssuerConfig {
            issuer: "sidekey-local".into(),
            algorithm: LocalAlgorithm::EdDsa,
        })
        .unwrap();
        let mut issuers = HashMap::new();
        issuers.insert("local".to_string(), Arc::new(Issuer::Local(issuer)));
        let creds = vec![CredentialConfig {
            name: "demo".into(),
            issuer: "local".into(),
            audience: Some("a".into()),
            subject: None,
            ttl,
            eager: true,
        }];
        (
            CredentialStore::new(&creds, &issuers, writer.log()).unwrap(),
            writer,
        )
    }

    #[tokio::test]
    async fn hit_returns_the_same_credential_and_counts_uses() {
        let (store, _w) = store(Duration::from_secs(300));
        assert!(!store.ready());
        let a = store.get("demo").await.unwrap();
        let b = store.get("demo").await.unwrap();
        assert_eq!(a.id, b.id);
        assert!(store.ready());
        let status = store.status();
        assert_eq!(status[0].uses, 2);
        assert_eq!(status[0].credential_id.as_deref(), Some(a.id.0.as_str()));
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let (store, _w) = store(Duration::from_secs(300));
        let store = Arc::new(store);
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let s = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                s.get("demo").await.unwrap().id.clone()
            }));
        }
        let mut ids = std::collections::HashSet::new();
        for t in tasks {
            ids.insert(t.await.unwrap());
        }
        assert_eq!(
            ids.len(),
            1,
            "every caller must get the one credential fetched"
        );
    }

    #[tokio::test]
    async fn unknown_credential_is_an_error() {
        let (store, _w) = store(Duration::from_secs(300));
        assert!(matches!(
            store.get("nope").await,
            Err(CredentialError::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn refreshes_in_the_background_after_the_refresh_point() {
        // 10 s lifetime: refresh point at 6-7 s. Pretend time passed by rewriting refresh_at.
        let (store, _w) = store(Duration::from_secs(10));
        let first = store.get("demo").await.unwrap();
        let slot = store.slots.get("demo").unwrap();
        let held = slot.current.load_full().unwrap();
        slot.current.store(Some(Arc::new(Held {
            credential: Arc::clone(&held.credential),
            refresh_at: SystemTime::now() - Duration::from_secs(1),
            usable_until: held.usable_until,
        })));
        // This call still gets the held credential immediately…
        let during = store.get("demo").await.unwrap();
        assert_eq!(during.id, first.id);
        // …and a new one replaces it shortly after.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if store.get("demo").await.unwrap().id != first.id {
                return;
            }
        }
        panic!("credential was not refreshed in the background");
    }

    #[tokio::test]
    async fn an_expired_credential_is_never_returned() {
        let (store, _w) = store(Duration::from_secs(60));
        let first = store.get("demo").await.unwrap();
        let slot = store.slots.get("demo").unwrap();
        let held = slot.current.load_full().unwrap();
        slot.current.store(Some(Arc::new(Held {
            credential: Arc::clone(&held.credential),
            refresh_at: held.refresh_at,
            usable_until: SystemTime::now() - Duration::from_millis(1),
        })));
        let next = store.get("demo").await.unwrap();
        assert_ne!(next.id, first.id);
    }
}
