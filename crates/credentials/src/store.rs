//! The credential store: one slot per configured credential, holding at most one live
//! credential, with one lifecycle for every kind of issuer:
//!
//! - a cache hit is a lock-free load; a miss fetches, and concurrent misses share one issuer
//!   call (single flight); after a failure, misses fail fast until the next attempt is due
//!   (exponential backoff with jitter) instead of piling onto a struggling issuer;
//! - once held, a background task keeps the credential fresh: at 60-70 % of its life it renews
//!   the lease (where the issuer has one and will extend it) or fetches a new credential, so no
//!   request ever waits for a refresh; failures are retried with backoff while the held
//!   credential is still valid, and it keeps being served meanwhile;
//! - a credential is never handed out past its expiry (minus a margin): when it runs out before
//!   a replacement arrives it is dropped (`expired` event) and requests get 503;
//! - at shutdown, leases are revoked, then the issuers' own tokens.
//!
//! A config reload builds the next generation of the store with [`CredentialStore::successor`]:
//! a credential whose config, request and issuer are unchanged keeps its slot (and the value
//! it holds); one removed or changed is retired — no new fetch, its maintenance stopped, its
//! lease revoked once the requests using it are done — and the issuers no longer configured
//! give up their own tokens after that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use rand::Rng;
use sidekey_audit::{rfc3339, AuditLog, CredentialEvent, CredentialEventKind};
use sidekey_config::CredentialConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::issuer::{CredentialRequest, Issuer};
use crate::Credential;

/// How long one issuer call may take before the request waiting on it gets a 503.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between failed attempts: doubles from MIN to MAX, with jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long revoking one lease at shutdown may take.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a retired credential's in-flight requests get before its lease is revoked anyway.
const RETIRE_DRAIN: Duration = Duration::from_secs(10);
/// A credential with less usable life than this is refused as if the issuer had failed (it
/// would expire in flight, and refreshing it would spin).
const MIN_USABLE: Duration = Duration::from_secs(2);

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

/// The credential a slot holds, with its (possibly renewed) schedule.
struct Held {
    credential: Arc<Credential>,
    /// Current expiry: the credential's own, or later after lease renewals.
    expires_at: SystemTime,
    refresh_at: SystemTime,
    /// Past this instant the credential is treated as expired (expiry minus a safety margin).
    usable_until: SystemTime,
    /// The lease can be renewed further (false once the issuer stops extending it).
    renewable: bool,
    /// The lifetime it was issued with: what a renewal asks for.
    lifetime: Duration,
}

impl Held {
    fn new(credential: Arc<Credential>) -> Held {
        let lifetime = credential
            .expires_at
            .duration_since(credential.issued_at)
            .unwrap_or(Duration::ZERO);
        let renewable = credential.lease.as_ref().is_some_and(|l| l.renewable);
        let (refresh_at, usable_until) = schedule(credential.issued_at, credential.expires_at);
        Held {
            expires_at: credential.expires_at,
            credential,
            refresh_at,
            usable_until,
            renewable,
            lifetime,
        }
    }
}

/// Refresh at 60-70 % of the remaining life (jittered, so that many pods do not refresh in
/// lockstep); stop using it a little before expiry so that it never arrives expired upstream.
fn schedule(from: SystemTime, expires_at: SystemTime) -> (SystemTime, SystemTime) {
    let life = expires_at.duration_since(from).unwrap_or(Duration::ZERO);
    let fraction = rand::rng().random_range(0.60..0.70);
    let margin = (life / 10).min(Duration::from_secs(5));
    (from + life.mul_f64(fraction), expires_at - margin)
}

struct Failure {
    reason: String,
    attempts: u32,
    retry_at: Instant,
}

struct Slot {
    name: String,
    issuer_name: String,
    issuer: Arc<Issuer>,
    /// What it was built from: a reload keeps the slot only if this is unchanged.
    config: CredentialConfig,
    request: CredentialRequest,
    eager: bool,
    /// Cancelled when the slot is retired by a reload, or at shutdown (a child of the store's
    /// token): stops its maintenance and any new fetch.
    stop: CancellationToken,
    current: ArcSwapOption<Held>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// The last failed fetch, until one succeeds.
    failure: StdMutex<Option<Failure>>,
    /// A maintenance task is running for this slot.
    maintained: AtomicBool,
    uses: AtomicU64,
}

impl Slot {
    /// An empty slot for `config`; `issuers` must contain the issuer it names (the config
    /// validator guarantees it; a missing one is reported here too).
    fn build(
        config: &CredentialConfig,
        issuers: &HashMap<String, Arc<Issuer>>,
        core: &Core,
    ) -> Result<Slot, CredentialError> {
        let issuer =
            issuers
                .get(&config.issuer)
                .cloned()
                .ok_or_else(|| CredentialError::Unavailable {
                    name: config.name.clone(),
                    reason: format!("issuer `{}` is not configured", config.issuer),
                })?;
        let request =
            CredentialRequest::from_config(config).map_err(|e| CredentialError::Unavailable {
                name: config.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(Slot {
            name: config.name.clone(),
            issuer_name: config.issuer.clone(),
            issuer,
            config: config.clone(),
            request,
            eager: config.eager,
            stop: core.stop.child_token(),
            current: ArcSwapOption::empty(),
            fetch_lock: tokio::sync::Mutex::new(()),
            failure: StdMutex::new(None),
            maintained: AtomicBool::new(false),
            uses: AtomicU64::new(0),
        })
    }

    fn event(
        &self,
        event: CredentialEventKind,
        id: Option<&str>,
        expires_at: Option<SystemTime>,
    ) -> CredentialEvent {
        CredentialEvent {
            event,
            credential: self.name.clone(),
            issuer: self.issuer_name.clone(),
            credential_id: id.map(str::to_string),
            expires_at: expires_at.map(rfc3339),
            error: None,
            task_id: None,
            grant_id: None,
        }
    }
}

/// What every generation of the store shares.
struct Core {
    audit: AuditLog,
    /// Cancelled at shutdown; each slot's token is a child of it.
    stop: CancellationToken,
    /// Maintenance and retirement tasks, waited for at shutdown.
    tasks: TaskTracker,
    /// Set at shutdown: no new fetch, so that no lease is taken after revocation began.
    closed: Arc<AtomicBool>,
}

/// Every configured credential, by name: one generation per loaded config.
pub struct CredentialStore {
    slots: HashMap<String, Arc<Slot>>,
    core: Arc<Core>,
}

/// The slots and issuers a reload left behind, to be retired with [`Retired::retire`].
#[must_use = "retired credentials keep their leases until retire() runs"]
pub struct Retired {
    slots: Vec<Arc<Slot>>,
    issuers: Vec<Arc<Issuer>>,
    core: Arc<Core>,
}

/// What a reload changed in the credentials, by name (sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl CredentialStore {
    /// Builds empty slots for `credentials`; `issuers` must contain every issuer they name
    /// (the config validator guarantees it; a missing one is reported here too).
    pub fn new(
        credentials: &[CredentialConfig],
        issuers: &HashMap<String, Arc<Issuer>>,
        audit: AuditLog,
    ) -> Result<Self, CredentialError> {
        let core = Arc::new(Core {
            audit,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            closed: Arc::new(AtomicBool::new(false)),
        });
        let mut slots = HashMap::new();
        for c in credentials {
            slots.insert(c.name.clone(), Arc::new(Slot::build(c, issuers, &core)?));
        }
        Ok(CredentialStore { slots, core })
    }

    /// The next generation, for a reloaded config: slots whose config, request and issuer
    /// (the same `Arc`, i.e. an unchanged issuer config) are unchanged are carried over with
    /// what they hold; the others are new and empty. Fails, changing nothing, when a request
    /// cannot be built (an unreadable session policy file). The old generation keeps working
    /// for requests that began under it until [`Retired::retire`] runs.
    pub fn successor(
        &self,
        credentials: &[CredentialConfig],
        issuers: &HashMap<String, Arc<Issuer>>,
    ) -> Result<(CredentialStore, Retired, CredentialChanges), CredentialError> {
        let mut slots = HashMap::new();
        let mut changes = CredentialChanges::default();
        for c in credentials {
            let fresh = Slot::build(c, issuers, &self.core)?;
            let slot = match self.slots.get(&c.name) {
                Some(old)
                    if old.config == fresh.config
                        && old.request == fresh.request
                        && Arc::ptr_eq(&old.issuer, &fresh.issuer) =>
                {
                    Arc::clone(old)
                }
                Some(_) => {
                    changes.changed.push(c.name.clone());
                    Arc::new(fresh)
                }
                None => {
                    changes.added.push(c.name.clone());
                    Arc::new(fresh)
                }
            };
            slots.insert(c.name.clone(), slot);
        }
        let retired_slots: Vec<Arc<Slot>> = self
            .slots
            .values()
            .filter(|old| !slots.values().any(|new| Arc::ptr_eq(old, new)))
            .cloned()
            .collect();
        changes.removed = self
            .slots
            .keys()
            .filter(|name| !slots.contains_key(*name))
            .cloned()
            .collect();
        let mut retired_issuers: Vec<Arc<Issuer>> = Vec::new();
        for slot in &retired_slots {
            if !issuers.values().any(|i| Arc::ptr_eq(i, &slot.issuer)) {
                push_once(&mut retired_issuers, &slot.issuer);
            }
        }
        changes.added.sort();
        changes.removed.sort();
        changes.changed.sort();
        Ok((
            CredentialStore {
                slots,
                core: Arc::clone(&self.core),
            },
            Retired {
                slots: retired_slots,
                issuers: retired_issuers,
                core: Arc::clone(&self.core),
            },
            changes,
        ))
    }

    /// The credential for `name`: from memory when held and usable, else fetched — one issuer
    /// call shared by all concurrent callers.
    pub async fn get(&self, name: &str) -> Result<Arc<Credential>, CredentialError> {
        let slot = self
            .slots
            .get(name)
            .ok_or_else(|| CredentialError::Unknown(name.to_string()))?;
        if let Some(held) = slot.current.load().as_ref() {
            if SystemTime::now() < held.usable_until {
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
                    expires_at: held.as_ref().map(|h| h.expires_at),
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

    /// Stops refreshing, revokes every held lease (audited as `revoked`), then lets each issuer
    /// give up its own token. Waits for credentials retired by reloads to be revoked too.
    /// Bounded in time.
    pub async fn shutdown(&self) {
        self.core.closed.store(true, Ordering::Release);
        self.core.stop.cancel();
        self.core.tasks.close();
        self.core.tasks.wait().await;
        for slot in self.slots.values() {
            revoke_held(slot, &self.core.audit).await;
        }
        let mut issuers: Vec<Arc<Issuer>> = Vec::new();
        for slot in self.slots.values() {
            push_once(&mut issuers, &slot.issuer);
        }
        for issuer in issuers {
            let _ = tokio::time::timeout(REVOKE_TIMEOUT, issuer.shutdown()).await;
        }
    }

    /// Runs the shared fetch in its own task, so that an agent that goes away mid-fetch does
    /// not cancel the issuer call the others wait for (nor lose its outcome).
    async fn fetch_shared(&self, slot: &Arc<Slot>) -> Result<Arc<Credential>, CredentialError> {
        let task = {
            let slot = Arc::clone(slot);
            let core = Arc::clone(&self.core);
            tokio::spawn(async move { fetch_shared(&slot, &core).await })
        };
        task.await.unwrap_or_else(|e| {
            Err(CredentialError::Unavailable {
                name: slot.name.clone(),
                reason: format!("credential fetch aborted: {e}"),
            })
        })
    }
}

impl Retired {
    /// Nothing to retire.
    fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.issuers.is_empty()
    }

    /// Retires the slots in the background (on the store's task tracker, so that shutdown
    /// waits for it): no new fetch or refresh; once the requests using a held credential are
    /// done (at most [`RETIRE_DRAIN`], less at shutdown) its lease is revoked and audited;
    /// then the issuers no longer configured give up their own tokens.
    pub fn retire(self) {
        if self.is_empty() {
            return;
        }
        for slot in &self.slots {
            slot.stop.cancel();
        }
        let tasks = self.core.tasks.clone();
        tasks.spawn(async move {
            let deadline = tokio::time::Instant::now() + RETIRE_DRAIN;
            // A held credential's only other owners are requests that took it before the
            // reload: wait for them to finish with it.
            let in_use = |slots: &[Arc<Slot>]| {
                slots.iter().any(|s| {
                    s.current
                        .load()
                        .as_ref()
                        .is_some_and(|h| Arc::strong_count(&h.credential) > 1)
                })
            };
            while in_use(&self.slots) && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    () = self.core.stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            for slot in &self.slots {
                revoke_held(slot, &self.core.audit).await;
                tracing::info!(credential = %slot.name, issuer = %slot.issuer_name, "credential retired by a config reload");
            }
            for issuer in &self.issuers {
                let _ = tokio::time::timeout(REVOKE_TIMEOUT, issuer.shutdown()).await;
            }
        });
    }
}

/// Adds `issuer` to `list` unless it is there already (the same `Arc`: several credentials
/// share one issuer).
fn push_once(list: &mut Vec<Arc<Issuer>>, issuer: &Arc<Issuer>) {
    if !list.iter().any(|i| Arc::ptr_eq(i, issuer)) {
        list.push(Arc::clone(issuer));
    }
}

/// Drops what the slot holds and revokes its lease, if it has one (audited `revoked`, or
/// `failed` when the issuer says no). The slot's token is cancelled, so no fetch follows.
async fn revoke_held(slot: &Slot, audit: &AuditLog) {
    // After the lock, no fetch is in flight, and none starts (stopped).
    let _guard = slot.fetch_lock.lock().await;
    let Some(held) = slot.current.swap(None) else {
        return;
    };
    let Some(lease) = &held.credential.lease else {
        return;
    };
    let failure = match tokio::time::timeout(REVOKE_TIMEOUT, slot.issuer.revoke(lease)).await {
        Ok(Ok(())) => {
            tracing::info!(credential = %slot.name, issuer = %slot.issuer_name, credential_id = %held.credential.id, "lease revoked");
            audit.credential(&slot.event(
                CredentialEventKind::Revoked,
                Some(&held.credential.id.0),
                None,
            ));
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {REVOKE_TIMEOUT:?}"),
    };
    tracing::warn!(credential = %slot.name, issuer = %slot.issuer_name, credential_id = %held.credential.id, error = %failure, "lease revocation failed");
    let mut event = slot.event(
        CredentialEventKind::Failed,
        Some(&held.credential.id.0),
        None,
    );
    event.error = Some(format!("revocation failed: {failure}"));
    audit.credential(&event);
}

async fn fetch_shared(
    slot: &Arc<Slot>,
    core: &Arc<Core>,
) -> Result<Arc<Credential>, CredentialError> {
    let _guard = slot.fetch_lock.lock().await;
    // Someone else may have fetched while we waited for the lock.
    if let Some(held) = slot.current.load().as_ref() {
        if SystemTime::now() < held.usable_until {
            return Ok(Arc::clone(&held.credential));
        }
    }
    if core.closed.load(Ordering::Acquire) {
        return Err(CredentialError::Unavailable {
            name: slot.name.clone(),
            reason: "sidekey is shutting down".into(),
        });
    }
    if slot.stop.is_cancelled() {
        return Err(CredentialError::Unavailable {
            name: slot.name.clone(),
            reason: "the credential was removed or changed by a config reload".into(),
        });
    }
    // After a failure, fail fast until the next attempt is due.
    if let Some(f) = slot.failure.lock().ok().as_deref().and_then(Option::as_ref) {
        let now = Instant::now();
        if now < f.retry_at {
            return Err(CredentialError::Unavailable {
                name: slot.name.clone(),
                reason: format!(
                    "{} (next attempt in {:.1}s)",
                    f.reason,
                    (f.retry_at - now).as_secs_f64()
                ),
            });
        }
    }
    match fetch(slot, &core.audit).await {
        Ok(credential) => {
            maintain(slot, core);
            Ok(credential)
        }
        Err(reason) => {
            if let Ok(mut f) = slot.failure.lock() {
                let attempts = f.as_ref().map_or(0, |f| f.attempts) + 1;
                *f = Some(Failure {
                    reason: reason.clone(),
                    attempts,
                    retry_at: Instant::now() + backoff(attempts),
                });
            }
            Err(CredentialError::Unavailable {
                name: slot.name.clone(),
                reason,
            })
        }
    }
}

/// Starts the slot's maintenance task unless one runs. It stops with the slot's token.
fn maintain(slot: &Arc<Slot>, core: &Core) {
    if slot.maintained.swap(true, Ordering::AcqRel) {
        return;
    }
    let slot = Arc::clone(slot);
    let audit = core.audit.clone();
    let stop = slot.stop.clone();
    core.tasks.spawn(async move {
        // Cleared if the task unwinds, so that a later fetch starts a new one.
        struct Unmark(Arc<Slot>);
        impl Drop for Unmark {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.maintained.store(false, Ordering::Release);
                }
            }
        }
        let _unmark = Unmark(Arc::clone(&slot));
        loop {
            keep_fresh(&slot, &audit, &stop).await;
            slot.maintained.store(false, Ordering::Release);
            // A fetch may have stored a new credential just as the loop ended.
            if stop.is_cancelled()
                || slot.current.load().is_none()
                || slot.maintained.swap(true, Ordering::AcqRel)
            {
                return;
            }
        }
    });
}

/// The delay before attempt `attempts + 1`: 0.5 s doubling to 10 s, ±20 % jitter.
fn backoff(attempts: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(10))
        .min(BACKOFF_MAX);
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// Keeps the slot's credential fresh until it is gone (expired) or sidekey stops.
async fn keep_fresh(slot: &Arc<Slot>, audit: &AuditLog, stop: &CancellationToken) {
    let mut lease_ends = slot.issuer.lease_ends();
    loop {
        let Some(mut held) = slot.current.load_full() else {
            return;
        };
        if let Some(capped) = cap_to_lease_end(slot, &held) {
            held = capped;
        }
        let wait = held
            .refresh_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            // A lease's end became known (its Vault token's renewal came back capped): look
            // again before the refresh point, which may now be too late.
            () = lease_end_changed(&mut lease_ends) => continue,
        }
        let mut attempts = 0;
        loop {
            // A request may have replaced the credential meanwhile: start over with it.
            match slot.current.load().as_ref() {
                Some(now) if Arc::ptr_eq(now, &held) => {}
                _ => break,
            }
            match refresh(slot, &held, audit).await {
                Ok(()) => break,
                Err(_) => {
                    attempts += 1;
                    let delay = backoff(attempts);
                    if SystemTime::now() + delay >= held.usable_until {
                        if !sleep_until(held.usable_until, stop).await {
                            return;
                        }
                        if slot
                            .current
                            .compare_and_swap(&held, None::<Arc<Held>>)
                            .as_ref()
                            .is_some_and(|h| Arc::ptr_eq(h, &held))
                        {
                            tracing::warn!(credential = %slot.name, issuer = %slot.issuer_name, credential_id = %held.credential.id, "credential expired before it could be replaced");
                            audit.credential(&slot.event(
                                CredentialEventKind::Expired,
                                Some(&held.credential.id.0),
                                Some(held.expires_at),
                            ));
                        }
                        break;
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Resolves when the issuer's lease ends may have changed; never, for issuers without them.
async fn lease_end_changed(receiver: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match receiver {
        Some(rx) => {
            if rx.changed().await.is_err() {
                // The issuer is gone (shutdown): nothing will change any more.
                *receiver = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// When the issuer says the held lease ends before its own expiry (Vault: the token that
/// created it was capped after the lease was read), shortens the schedule to that end and
/// stops renewing, so that a new secret is read in time. Returns the capped slot content.
fn cap_to_lease_end(slot: &Slot, held: &Arc<Held>) -> Option<Arc<Held>> {
    let lease = held.credential.lease.as_ref()?;
    let end = slot.issuer.lease_end(lease)?;
    if end >= held.expires_at {
        return None;
    }
    let (refresh_at, usable_until) = schedule(SystemTime::now(), end);
    let capped = Arc::new(Held {
        credential: Arc::clone(&held.credential),
        expires_at: end,
        refresh_at,
        usable_until,
        renewable: false,
        lifetime: held.lifetime,
    });
    let previous = slot
        .current
        .compare_and_swap(held, Some(Arc::clone(&capped)));
    if !previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, held)) {
        return None;
    }
    tracing::info!(credential = %slot.name, issuer = %slot.issuer_name, credential_id = %held.credential.id, expires_at = %rfc3339(end), "lease capped at the end of the token that created it");
    Some(capped)
}

/// Sleeps until `at` (wall clock); false when sidekey is stopping.
async fn sleep_until(at: SystemTime, stop: &CancellationToken) -> bool {
    let wait = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// Renews the held lease when the issuer will extend it, else fetches a new credential.
async fn refresh(slot: &Slot, held: &Arc<Held>, audit: &AuditLog) -> Result<(), String> {
    let _guard = slot.fetch_lock.lock().await;
    // A request may have replaced it while we waited for the lock.
    match slot.current.load().as_ref() {
        Some(now) if Arc::ptr_eq(now, held) => {}
        _ => return Ok(()),
    }
    if held.renewable {
        if let Some(lease) = &held.credential.lease {
            let asked = held.lifetime.max(Duration::from_secs(1));
            let now = SystemTime::now();
            match tokio::time::timeout(ISSUE_TIMEOUT, slot.issuer.renew(lease, asked)).await {
                Ok(Ok(remaining)) => {
                    let expires_at = now + remaining;
                    if expires_at > held.expires_at + Duration::from_secs(1) {
                        let (refresh_at, usable_until) = schedule(now, expires_at);
                        slot.current.store(Some(Arc::new(Held {
                            credential: Arc::clone(&held.credential),
                            expires_at,
                            refresh_at,
                            usable_until,
                            // Capped well short of what was asked: the max TTL is near; the
                            // next refresh reads a new secret.
                            renewable: remaining * 2 >= asked,
                            lifetime: held.lifetime,
                        })));
                        tracing::info!(credential = %slot.name, issuer = %slot.issuer_name, credential_id = %held.credential.id, ttl = ?remaining, "lease renewed");
                        audit.credential(&slot.event(
                            CredentialEventKind::Renewed,
                            Some(&held.credential.id.0),
                            Some(expires_at),
                        ));
                        return Ok(());
                    }
                    tracing::info!(credential = %slot.name, credential_id = %held.credential.id, "lease not extended (max TTL reached); reading a new secret");
                }
                Ok(Err(e)) => {
                    tracing::info!(credential = %slot.name, credential_id = %held.credential.id, error = %e, "lease renewal failed; reading a new secret");
                }
                Err(_) => {
                    tracing::info!(credential = %slot.name, credential_id = %held.credential.id, "lease renewal timed out; reading a new secret");
                }
            }
        }
    }
    fetch(slot, audit).await.map(|_| ())
}

/// One issuer call; the caller holds `fetch_lock`. Stores and audits the result; the error is
/// audited as `failed` and returned as text that is safe to show.
async fn fetch(slot: &Slot, audit: &AuditLog) -> Result<Arc<Credential>, String> {
    let result = tokio::time::timeout(ISSUE_TIMEOUT, slot.issuer.issue(&slot.request)).await;
    let credential = match result {
        Ok(Ok(c)) => Arc::new(c),
        Ok(Err(e)) => return Err(failed(slot, audit, e.public(), e.to_string())),
        Err(_) => {
            let reason = format!("issuer did not answer within {ISSUE_TIMEOUT:?}");
            return Err(failed(slot, audit, reason.clone(), reason));
        }
    };
    let held = Arc::new(Held::new(Arc::clone(&credential)));
    if held.usable_until < SystemTime::now() + MIN_USABLE {
        let reason = format!(
            "the issuer gave credential {} that expires at {}, too soon to use",
            credential.id,
            rfc3339(credential.expires_at)
        );
        return Err(failed(slot, audit, reason.clone(), reason));
    }
    let expires_at = held.expires_at;
    let previous = slot.current.swap(Some(held));
    if let Ok(mut f) = slot.failure.lock() {
        *f = None;
    }
    let kind = if previous.is_some() {
        CredentialEventKind::Refreshed
    } else {
        CredentialEventKind::Issued
    };
    audit.credential(&slot.event(kind, Some(&credential.id.0), Some(expires_at)));
    tracing::info!(credential = %slot.name, issuer = %slot.issuer_name, credential_id = %credential.id, "credential issued");
    Ok(credential)
}

/// Logs and audits the full `detail`; returns `public`, what the agent is told.
fn failed(slot: &Slot, audit: &AuditLog, public: String, detail: String) -> String {
    tracing::warn!(credential = %slot.name, issuer = %slot.issuer_name, error = %detail, "credential fetch failed");
    let mut event = slot.event(CredentialEventKind::Failed, None, None);
    event.error = Some(detail);
    audit.credential(&event);
    public
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalIssuer;
    use sidekey_audit::AuditWriter;
    use sidekey_config::{LocalAlgorithm, LocalIssuerConfig};

    fn local_issuers() -> HashMap<String, Arc<Issuer>> {
        let issuer = LocalIssuer::generate(&LocalIssuerConfig {
            issuer: "sidekey-local".into(),
            algorithm: LocalAlgorithm::EdDsa,
        })
        .unwrap();
        let mut issuers = HashMap::new();
        issuers.insert("local".to_string(), Arc::new(Issuer::Local(issuer)));
        issuers
    }

    fn credential(name: &str, audience: &str, ttl: Duration) -> CredentialConfig {
        CredentialConfig {
            name: name.into(),
            issuer: "local".into(),
            audience: Some(audience.into()),
            subject: None,
            ttl,
            eager: true,
            path: None,
            field: None,
            params: Vec::new(),
            scope: None,
            resource: None,
            session_policy_file: None,
            per_task: false,
        }
    }

    fn store(ttl: Duration) -> (CredentialStore, AuditWriter) {
        let writer = AuditWriter::spawn(Box::new(std::io::sink())).unwrap();
        let creds = vec![credential("demo", "a", ttl)];
        (
            CredentialStore::new(&creds, &local_issuers(), writer.log()).unwrap(),
            writer,
        )
    }

    #[tokio::test]
    async fn a_successor_keeps_unchanged_credentials_and_retires_the_others() {
        let writer = AuditWriter::spawn(Box::new(std::io::sink())).unwrap();
        let issuers = local_issuers();
        let ttl = Duration::from_secs(300);
        let first = vec![
            credential("kept", "a", ttl),
            credential("changed", "a", ttl),
            credential("removed", "a", ttl),
        ];
        let old = CredentialStore::new(&first, &issuers, writer.log()).unwrap();
        let kept = old.get("kept").await.unwrap();
        let changed = old.get("changed").await.unwrap();
        let removed = old.get("removed").await.unwrap();

        let second = vec![
            credential("kept", "a", ttl),
            credential("changed", "b", ttl),
            credential("added", "a", ttl),
        ];
        let (new, retired, changes) = old.successor(&second, &issuers).unwrap();
        assert_eq!(
            changes,
            CredentialChanges {
                added: vec!["added".into()],
                removed: vec!["removed".into()],
                changed: vec!["changed".into()],
            }
        );
        // The unchanged credential is carried over with its value.
        assert_eq!(new.get("kept").await.unwrap().id, kept.id);
        // The changed one is fetched anew, for the new audience.
        let fresh = new.get("changed").await.unwrap();
        assert_ne!(fresh.id, changed.id);
        assert!(matches!(
            new.get("removed").await,
            Err(CredentialError::Unknown(_))
        ));
        assert!(new.get("added").await.is_ok());

        // Retiring stops the old slots: the old generation no longer fetches for them once
        // what they held is gone.
        drop((changed, removed));
        retired.retire();
        tokio::time::sleep(Duration::from_millis(200)).await;
        for name in ["changed", "removed"] {
            match old.get(name).await {
                Err(CredentialError::Unavailable { reason, .. }) => {
                    assert!(reason.contains("config reload"), "{reason}")
                }
                other => panic!("{name}: {:?}", other.map(|c| c.id.clone())),
            }
        }
        // The kept slot is shared by both generations and unaffected.
        assert_eq!(old.get("kept").await.unwrap().id, kept.id);
    }

    #[tokio::test]
    async fn a_changed_issuer_replaces_its_credentials() {
        let writer = AuditWriter::spawn(Box::new(std::io::sink())).unwrap();
        let ttl = Duration::from_secs(300);
        let creds = vec![credential("demo", "a", ttl)];
        let old = CredentialStore::new(&creds, &local_issuers(), writer.log()).unwrap();
        let before = old.get("demo").await.unwrap();
        // Same config, but a rebuilt issuer (its config changed): a new slot.
        let (new, retired, changes) = old.successor(&creds, &local_issuers()).unwrap();
        assert_eq!(changes.changed, vec!["demo".to_string()]);
        assert_eq!(retired.slots.len(), 1);
        assert_eq!(retired.issuers.len(), 1, "the old issuer is given up");
        assert_ne!(new.get("demo").await.unwrap().id, before.id);
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
        // 10 s lifetime: refreshed by the maintenance task at 6-7 s, without any request.
        let (store, _w) = store(Duration::from_secs(10));
        let first = store.get("demo").await.unwrap();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(9) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let held = store.slots["demo"].current.load_full().unwrap();
            if held.credential.id != first.id {
                assert!(
                    started.elapsed() >= Duration::from_secs(5),
                    "refreshed too early"
                );
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
        let mut stale = Held::new(Arc::clone(&held.credential));
        stale.usable_until = SystemTime::now() - Duration::from_millis(1);
        slot.current.store(Some(Arc::new(stale)));
        let next = store.get("demo").await.unwrap();
        assert_ne!(next.id, first.id);
    }
}
