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
//!
//! A per-task credential (`per_task: true`) has no shared value: its slot holds one slot per
//! task grant, by the grant's ID, each a slot like any other (the request it fetches with names
//! the task), with the same single flight, refresh, expiry and revocation. A task's credential
//! is never handed to another grant's request, and it ends with its grant: at the grant's
//! expiry (or [`CredentialStore::end_task`]) its lease is revoked, or, for what cannot be
//! revoked (JWTs, STS keys, OAuth2 access tokens), it is dropped and never used again; either
//! way audited `revoked`.
//! At most [`MAX_TASK_SLOTS`] task slots live at once. A reload carries them over with their
//! credential, or retires them with it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use fnv::FnvHashMap;
use rand::Rng;
use sidekey_audit::{rfc3339, AuditLog, CredentialEvent, CredentialEventKind};
use sidekey_config::CredentialConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::issuer::{CredentialRequest, Issuer};
use crate::uses::Uses;
use crate::{Credential, TaskContext};

/// A credential an upstream refuses (401) is replaced at most this often: an upstream that
/// refuses every credential costs one issuer call per credential this often, not one per
/// request.
pub const REJECT_MIN_INTERVAL: Duration = Duration::from_secs(5);
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
/// Live per-task credentials, across credentials and generations: a flood of grants cannot
/// exhaust memory (or flood the issuers); past it, a new task gets 503 until others end.
pub const MAX_TASK_SLOTS: usize = 10_000;
/// Grants ended by [`CredentialStore::end_task`] are refused new credentials until they expire;
/// this long when none of their credentials told when that is.
const ENDED_MEMORY: Duration = Duration::from_secs(60 * 60);
/// At most this many ended grants are remembered (the soonest to expire are forgotten first).
const MAX_ENDED_GRANTS: usize = 10_000;
/// Leases revoked at once at shutdown and retirement: thousands of tasks' leases one at a time
/// could outlast the shutdown grace period; all at once would flood the issuer.
const REVOKE_CONCURRENCY: usize = 16;
/// What a request for a credential of an ended grant is told.
const GRANT_EXPIRED: &str = "the task's grant has expired";
const GRANT_ENDED: &str = "the task's grant was ended";

/// Why a request could not get its credential (maps to 503 `credential_unavailable`).
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("no credential named `{0}` is configured")]
    Unknown(String),
    #[error("credential `{name}` is unavailable: {reason}")]
    Unavailable { name: String, reason: String },
    /// A per-task credential asked for without a task ([`CredentialStore::get_scoped`]).
    #[error("this route's credential `{0}` is issued per task: present the task's grant")]
    TaskRequired(String),
}

/// What `/credentials` and the status page show: never the value. A per-task credential has
/// one entry of its own (no ID: it holds no value) and one per live task.
#[derive(Debug, Clone)]
pub struct CredentialStatus {
    pub name: String,
    pub issuer: String,
    pub credential_id: Option<String>,
    /// When the held credential was issued (or last renewed to its current expiry).
    pub issued_at: Option<SystemTime>,
    pub expires_at: Option<SystemTime>,
    /// When the background refresh (or renewal) is due.
    pub refresh_at: Option<SystemTime>,
    /// The last failed fetch, as the agent would be told it (never the issuer's free text),
    /// until a fetch succeeds.
    pub last_error: Option<String>,
    pub uses: u64,
    /// Uses in the last 5 minutes and the last hour.
    pub uses_5m: u64,
    pub uses_1h: u64,
    pub eager: bool,
    pub per_task: bool,
    /// The task and grant of a task's entry.
    pub task_id: Option<String>,
    pub grant_id: Option<String>,
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

/// Whom a slot's value is for.
enum Scope {
    /// Every request of the credential.
    Shared,
    /// A per-task credential: no value of its own, its tasks' slots by grant ID. Only grows
    /// while the slot runs (under the lock, [`Slot::stop`] is checked before an insert).
    PerTask(StdMutex<HashMap<String, Arc<Slot>>>),
    /// One task of a per-task credential, named by its request's `task`.
    Task,
}

struct Slot {
    name: String,
    issuer_name: String,
    issuer: Arc<Issuer>,
    /// The local issuer that signs a per-task oauth2 credential's subject tokens
    /// (`task_assertion_issuer`): a reload keeps the slot only if it is the same `Arc` (a
    /// rebuilt one has a new key, and the old one's is no longer published).
    signer: Option<Arc<Issuer>>,
    /// What it was built from: a reload keeps the slot only if this is unchanged.
    config: CredentialConfig,
    /// What the issuer is asked for; a task's slot's names the task.
    request: CredentialRequest,
    eager: bool,
    scope: Scope,
    /// Cancelled when the slot is retired by a reload, or at shutdown (a child of the store's
    /// token; a task's slot, of its credential's), or when its task ends: stops its
    /// maintenance and any new fetch.
    stop: CancellationToken,
    /// Why a task's slot was stopped (its grant expired or was ended), for the requests that
    /// still find it; unset when a reload or shutdown stopped it.
    ended: OnceLock<&'static str>,
    current: ArcSwapOption<Held>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// The last failed fetch, until one succeeds.
    failure: StdMutex<Option<Failure>>,
    /// A maintenance task is running for this slot.
    maintained: AtomicBool,
    uses: Uses,
    /// When a credential an upstream refused was last replaced.
    replaced_rejected: StdMutex<Option<Instant>>,
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
        let signer = match &config.task_assertion_issuer {
            None => None,
            Some(name) => match issuers.get(name) {
                Some(signer) if signer.as_local().is_some() => Some(Arc::clone(signer)),
                found => {
                    return Err(CredentialError::Unavailable {
                        name: config.name.clone(),
                        reason: format!(
                            "task_assertion_issuer `{name}` is {}",
                            if found.is_some() {
                                "not a local issuer"
                            } else {
                                "not configured"
                            }
                        ),
                    })
                }
            },
        };
        let request =
            CredentialRequest::from_config(config).map_err(|e| CredentialError::Unavailable {
                name: config.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(Slot {
            name: config.name.clone(),
            issuer_name: config.issuer.clone(),
            issuer,
            signer,
            config: config.clone(),
            request,
            eager: config.eager,
            scope: if config.per_task {
                Scope::PerTask(StdMutex::new(HashMap::new()))
            } else {
                Scope::Shared
            },
            stop: core.stop.child_token(),
            ended: OnceLock::new(),
            current: ArcSwapOption::empty(),
            fetch_lock: tokio::sync::Mutex::new(()),
            failure: StdMutex::new(None),
            maintained: AtomicBool::new(false),
            replaced_rejected: StdMutex::new(None),
            uses: Uses::default(),
        })
    }

    /// An empty slot for one task of the per-task credential `parent`; stopped with it.
    fn for_task(parent: &Slot, task: &TaskContext) -> Slot {
        Slot {
            name: parent.name.clone(),
            issuer_name: parent.issuer_name.clone(),
            issuer: Arc::clone(&parent.issuer),
            signer: parent.signer.clone(),
            config: parent.config.clone(),
            request: CredentialRequest {
                task: Some(task.clone()),
                ..parent.request.clone()
            },
            eager: false,
            scope: Scope::Task,
            stop: parent.stop.child_token(),
            ended: OnceLock::new(),
            current: ArcSwapOption::empty(),
            fetch_lock: tokio::sync::Mutex::new(()),
            failure: StdMutex::new(None),
            maintained: AtomicBool::new(false),
            replaced_rejected: StdMutex::new(None),
            uses: Uses::default(),
        }
    }

    /// Fetched at start (a per-task credential never is: there is no task then).
    fn is_eager(&self) -> bool {
        self.eager && matches!(self.scope, Scope::Shared)
    }

    /// The task of a task's slot.
    fn task(&self) -> Option<&TaskContext> {
        self.request.task.as_ref()
    }

    /// The task slots of a per-task credential.
    fn tasks(&self) -> Option<MutexGuard<'_, HashMap<String, Arc<Slot>>>> {
        match &self.scope {
            // A panic while it was held left the map whole (single inserts and removes).
            Scope::PerTask(tasks) => Some(tasks.lock().unwrap_or_else(PoisonError::into_inner)),
            Scope::Shared | Scope::Task => None,
        }
    }

    /// Stops a task's slot for good: no fetch, no refresh; `reason` is what requests that
    /// still find it are told.
    fn end(&self, reason: &'static str) {
        let _ = self.ended.set(reason);
        self.stop.cancel();
    }

    /// What status pages show of this slot.
    fn status(&self) -> CredentialStatus {
        let held = self.current.load();
        CredentialStatus {
            name: self.name.clone(),
            issuer: self.issuer_name.clone(),
            credential_id: held.as_ref().map(|h| h.credential.id.to_string()),
            issued_at: held.as_ref().map(|h| h.credential.issued_at),
            expires_at: held.as_ref().map(|h| h.expires_at),
            refresh_at: held.as_ref().map(|h| h.refresh_at),
            last_error: self
                .failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .map(|f| f.reason.clone()),
            uses: self.uses.total(),
            uses_5m: self.uses.recent(5),
            uses_1h: self.uses.recent(60),
            eager: self.eager,
            per_task: !matches!(self.scope, Scope::Shared),
            task_id: self.task().map(|t| t.task_id.clone()),
            grant_id: self.task().map(|t| t.grant_id.clone()),
        }
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
            task_id: self.task().map(|t| t.task_id.clone()),
            grant_id: self.task().map(|t| t.grant_id.clone()),
            issuer_ms: None,
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
    /// Live task slots, in every generation (at most [`MAX_TASK_SLOTS`]).
    task_slots: AtomicUsize,
    /// The per-task credentials of every generation, so that ending a task reaches its
    /// credentials whichever generation made them.
    families: StdMutex<Vec<Weak<Slot>>>,
    /// Grants ended by [`CredentialStore::end_task`], until when they are refused.
    ended_grants: StdMutex<HashMap<String, SystemTime>>,
}

impl Core {
    fn new(audit: AuditLog) -> Core {
        Core {
            audit,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            closed: Arc::new(AtomicBool::new(false)),
            task_slots: AtomicUsize::new(0),
            families: StdMutex::new(Vec::new()),
            ended_grants: StdMutex::new(HashMap::new()),
        }
    }

    /// A credential's slot, ready to be shared by generations; a per-task credential's is
    /// registered in `families`.
    fn adopt(&self, slot: Slot) -> Arc<Slot> {
        let slot = Arc::new(slot);
        if matches!(slot.scope, Scope::PerTask(_)) {
            let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
            families.retain(|f| f.strong_count() > 0);
            families.push(Arc::downgrade(&slot));
        }
        slot
    }

    /// The per-task credentials still in use by some generation.
    fn families(&self) -> Vec<Arc<Slot>> {
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        families.retain(|f| f.strong_count() > 0);
        families.iter().filter_map(Weak::upgrade).collect()
    }

    /// Takes one of the [`MAX_TASK_SLOTS`]; false when none is left.
    fn reserve_task_slot(&self) -> bool {
        self.task_slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_TASK_SLOTS).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether `grant_id` was ended and may still be presented.
    fn grant_ended(&self, grant_id: &str) -> bool {
        let ended = self
            .ended_grants
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ended
            .get(grant_id)
            .is_some_and(|until| SystemTime::now() < *until)
    }

    /// Refuses `grant_id` new credentials until `until` (or a later time already set).
    fn remember_ended(&self, grant_id: &str, until: SystemTime) {
        let now = SystemTime::now();
        let mut ended = self
            .ended_grants
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = ended.get_mut(grant_id) {
            *known = (*known).max(until);
            return;
        }
        ended.retain(|_, until| now < *until);
        if ended.len() >= MAX_ENDED_GRANTS {
            let soonest = ended
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(grant, _)| grant.clone());
            if let Some(grant) = soonest {
                ended.remove(&grant);
            }
        }
        ended.insert(grant_id.to_string(), until);
    }
}

/// Removes `grant_id`'s slot from the per-task credential `parent` — only if it is `only`,
/// when given — and gives its place back.
fn take_task(
    core: &Core,
    parent: &Slot,
    grant_id: &str,
    only: Option<&Arc<Slot>>,
) -> Option<Arc<Slot>> {
    let mut tasks = parent.tasks()?;
    if let Some(only) = only {
        if !tasks.get(grant_id).is_some_and(|s| Arc::ptr_eq(s, only)) {
            return None;
        }
    }
    let slot = tasks.remove(grant_id)?;
    core.task_slots.fetch_sub(1, Ordering::AcqRel);
    Some(slot)
}

/// Removes every task slot of `parent` (retired, or at shutdown) and gives their places back.
fn take_all_tasks(core: &Core, parent: &Slot) -> Vec<Arc<Slot>> {
    let Some(mut tasks) = parent.tasks() else {
        return Vec::new();
    };
    let slots: Vec<Arc<Slot>> = tasks.drain().map(|(_, slot)| slot).collect();
    core.task_slots.fetch_sub(slots.len(), Ordering::AcqRel);
    slots
}

/// Every configured credential, by name: one generation per loaded config.
pub struct CredentialStore {
    /// By the config's names (looked up on every request; never keyed by what an agent sends,
    /// so FNV rather than SipHash).
    slots: FnvHashMap<String, Arc<Slot>>,
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

/// A credential from [`CredentialStore::get_scoped`]: the one held (or why there is none),
/// there at once, or the fetch from the issuer under way.
pub enum Lookup<'a> {
    /// Answered without waiting; taken at the first poll.
    Done(Option<Result<Arc<Credential>, CredentialError>>),
    /// The issuer call (single flight with every other request waiting for the same slot).
    Fetching(Pin<Box<dyn Future<Output = Result<Arc<Credential>, CredentialError>> + Send + 'a>>),
}

impl Lookup<'_> {
    fn done(result: Result<Arc<Credential>, CredentialError>) -> Self {
        Lookup::Done(Some(result))
    }
}

impl Future for Lookup<'_> {
    type Output = Result<Arc<Credential>, CredentialError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Lookup::Done(result) => match result.take() {
                Some(result) => Poll::Ready(result),
                None => Poll::Ready(Err(CredentialError::Unavailable {
                    name: String::new(),
                    reason: "the lookup was polled after it had answered".into(),
                })),
            },
            Lookup::Fetching(fetch) => fetch.as_mut().poll(cx),
        }
    }
}

impl CredentialStore {
    /// Builds empty slots for `credentials`; `issuers` must contain every issuer they name
    /// (the config validator guarantees it; a missing one is reported here too).
    pub fn new(
        credentials: &[CredentialConfig],
        issuers: &HashMap<String, Arc<Issuer>>,
        audit: AuditLog,
    ) -> Result<Self, CredentialError> {
        let core = Arc::new(Core::new(audit));
        let mut slots = FnvHashMap::default();
        for c in credentials {
            let slot = core.adopt(Slot::build(c, issuers, &core)?);
            slots.insert(c.name.clone(), slot);
        }
        Ok(CredentialStore { slots, core })
    }

    /// The next generation, for a reloaded config: slots whose config, request and issuer
    /// (the same `Arc`, i.e. an unchanged issuer config) are unchanged are carried over with
    /// what they hold (a per-task credential, with its tasks'); the others are new and empty.
    /// Fails, changing nothing, when a request cannot be built (an unreadable session policy
    /// file). The old generation keeps working for requests that began under it until
    /// [`Retired::retire`] runs.
    pub fn successor(
        &self,
        credentials: &[CredentialConfig],
        issuers: &HashMap<String, Arc<Issuer>>,
    ) -> Result<(CredentialStore, Retired, CredentialChanges), CredentialError> {
        let mut slots = FnvHashMap::default();
        let mut changes = CredentialChanges::default();
        for c in credentials {
            let fresh = Slot::build(c, issuers, &self.core)?;
            let slot = match self.slots.get(&c.name) {
                Some(old)
                    if old.config == fresh.config
                        && old.request == fresh.request
                        && Arc::ptr_eq(&old.issuer, &fresh.issuer)
                        && same_signer(&old.signer, &fresh.signer) =>
                {
                    Arc::clone(old)
                }
                Some(_) => {
                    changes.changed.push(c.name.clone());
                    self.core.adopt(fresh)
                }
                None => {
                    changes.added.push(c.name.clone());
                    self.core.adopt(fresh)
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
    /// call shared by all concurrent callers. A per-task credential has no shared value: it is
    /// refused here (see [`CredentialStore::get_for_task`]).
    pub async fn get(&self, name: &str) -> Result<Arc<Credential>, CredentialError> {
        let slot = self
            .slots
            .get(name)
            .ok_or_else(|| CredentialError::Unknown(name.to_string()))?;
        if !matches!(slot.scope, Scope::Shared) {
            return Err(CredentialError::Unavailable {
                name: name.to_string(),
                reason: "it is issued per task, and the request presents no task grant".into(),
            });
        }
        self.shared(slot).await
    }

    /// The credential `name` as its scope says: the shared one, or for a per-task credential
    /// the one of the task `task` gives (none: [`CredentialError::TaskRequired`]). What
    /// [`CredentialStore::get`] and [`CredentialStore::get_for_task`] do, with one lookup of
    /// the name: the request path's way in. A credential held and usable is answered at once
    /// (nearly every request); only a fetch from the issuer is a future of its own, boxed, so
    /// that the request's future does not carry one.
    pub fn get_scoped(&self, name: &str, task: impl FnOnce() -> Option<TaskContext>) -> Lookup<'_> {
        let Some(slot) = self.slots.get(name) else {
            return Lookup::done(Err(CredentialError::Unknown(name.to_string())));
        };
        match slot.scope {
            Scope::Shared => self.shared(slot),
            Scope::PerTask(_) => match task() {
                Some(task) => self.for_task(slot, &task),
                None => Lookup::done(Err(CredentialError::TaskRequired(name.to_string()))),
            },
            // A task's slot is found through its per-task credential, never by name.
            Scope::Task => Lookup::done(Err(CredentialError::Unknown(name.to_string()))),
        }
    }

    /// A shared slot's credential: from memory when usable (one reading of the clock for the
    /// check and the use), else fetched.
    fn shared<'a>(&'a self, slot: &'a Arc<Slot>) -> Lookup<'a> {
        if let Some(held) = slot.current.load().as_ref() {
            let now = SystemTime::now();
            if now < held.usable_until {
                slot.uses.add_at_time(now);
                return Lookup::done(Ok(Arc::clone(&held.credential)));
            }
        }
        Lookup::Fetching(Box::pin(async move {
            let credential = self.fetch_shared(slot).await?;
            slot.uses.add();
            Ok(credential)
        }))
    }

    /// An upstream refused `rejected` (401): replaces it with a new one from the issuer, once
    /// however many requests saw it refused — the first fetches (under the slot's fetch lock,
    /// the same single flight as a miss), the others get what it fetched. `task` names the
    /// grant for a per-task credential. None when there is nothing better to offer: the last
    /// replacement of a refused credential was less than [`REJECT_MIN_INTERVAL`] ago (an
    /// upstream refusing every credential would otherwise turn each request into an issuer
    /// call), or none is held.
    pub async fn replace_rejected(
        &self,
        name: &str,
        task: Option<&TaskContext>,
        rejected: &Arc<Credential>,
    ) -> Result<Option<Arc<Credential>>, CredentialError> {
        let parent = self
            .slots
            .get(name)
            .ok_or_else(|| CredentialError::Unknown(name.to_string()))?;
        let slot = match task {
            Some(task) => self.task_slot(parent, task)?,
            None => Arc::clone(parent),
        };
        let rejected = Arc::clone(rejected);
        let replaced = self
            .detached(&slot, |slot, core| async move {
                replace_rejected(&slot, &core, &rejected).await
            })
            .await?;
        if replaced.is_some() {
            slot.uses.add();
        }
        Ok(replaced)
    }

    /// Whether `name` is a per-task credential: [`CredentialStore::get_for_task`] gets it, and
    /// [`CredentialStore::get`] refuses it. False for unknown names.
    pub fn is_per_task(&self, name: &str) -> bool {
        self.slots
            .get(name)
            .is_some_and(|s| matches!(s.scope, Scope::PerTask(_)))
    }

    /// The per-task credential `name` for `task`: its grant's own credential, from memory when
    /// held and usable, else fetched for the task (concurrent requests of the grant share one
    /// issuer call). Never another grant's credential, even for the same task. Refused when
    /// `name` is shared (see [`CredentialStore::get`]), when the grant has expired or was
    /// ended, and when [`MAX_TASK_SLOTS`] tasks hold credentials already.
    pub async fn get_for_task(
        &self,
        name: &str,
        task: &TaskContext,
    ) -> Result<Arc<Credential>, CredentialError> {
        let parent = self
            .slots
            .get(name)
            .ok_or_else(|| CredentialError::Unknown(name.to_string()))?;
        self.for_task(parent, task).await
    }

    /// `task`'s credential of the per-task slot `parent`: at once when held and usable, else
    /// fetched; the task's slot and `parent` count the use at the time of the check.
    fn for_task<'a>(&'a self, parent: &'a Arc<Slot>, task: &TaskContext) -> Lookup<'a> {
        let slot = match self.task_slot(parent, task) {
            Ok(slot) => slot,
            Err(e) => return Lookup::done(Err(e)),
        };
        let now = SystemTime::now();
        let held = slot
            .current
            .load()
            .as_ref()
            .filter(|held| now < held.usable_until)
            .map(|held| Arc::clone(&held.credential));
        let counted = move |slot: &Slot| {
            slot.uses.add_at_time(now);
            parent.uses.add_at_time(now);
        };
        match held {
            Some(credential) => {
                counted(&slot);
                Lookup::done(Ok(credential))
            }
            None => Lookup::Fetching(Box::pin(async move {
                let credential = self.fetch_shared(&slot).await?;
                counted(&slot);
                Ok(credential)
            })),
        }
    }

    /// Ends every credential of the grant `grant_id` now (it was revoked): each is stopped at
    /// once, then revoked, or dropped if it cannot be, in the background (audited `revoked`);
    /// the grant gets no new credential afterwards, in any generation. Idempotent.
    pub fn end_task(&self, grant_id: &str) {
        self.core
            .remember_ended(grant_id, SystemTime::now() + ENDED_MEMORY);
        let slots: Vec<Arc<Slot>> = self
            .core
            .families()
            .iter()
            .filter_map(|parent| take_task(&self.core, parent, grant_id, None))
            .collect();
        if let Some(until) = slots
            .iter()
            .filter_map(|s| s.task())
            .map(|t| t.expires_at)
            .max()
        {
            self.core.remember_ended(grant_id, until);
        }
        if slots.is_empty() {
            return;
        }
        for slot in &slots {
            slot.end(GRANT_ENDED);
        }
        let audit = self.core.audit.clone();
        self.core
            .tasks
            .spawn(async move { revoke_each(slots, &audit).await });
    }

    /// The slot of `task` in the per-task credential `parent`, made (empty) on its first use.
    fn task_slot(
        &self,
        parent: &Arc<Slot>,
        task: &TaskContext,
    ) -> Result<Arc<Slot>, CredentialError> {
        let refuse = |reason: String| CredentialError::Unavailable {
            name: parent.name.clone(),
            reason,
        };
        let Some(mut tasks) = parent.tasks() else {
            return Err(refuse(
                "it is shared by every task, not issued per task".into(),
            ));
        };
        if SystemTime::now() >= task.expires_at {
            return Err(refuse(GRANT_EXPIRED.into()));
        }
        if let Some(slot) = tasks.get(&task.grant_id) {
            // A grant ID names one grant: anything else presenting it is not that grant.
            if slot.task() != Some(task) {
                return Err(refuse(format!(
                    "grant `{}` was presented before with other claims",
                    task.grant_id
                )));
            }
            return Ok(Arc::clone(slot));
        }
        if self.core.closed.load(Ordering::Acquire) {
            return Err(refuse("sidekey is shutting down".into()));
        }
        if parent.stop.is_cancelled() {
            return Err(refuse(
                "the credential was removed or changed by a config reload".into(),
            ));
        }
        if self.core.grant_ended(&task.grant_id) {
            return Err(refuse(GRANT_ENDED.into()));
        }
        if !self.core.reserve_task_slot() {
            return Err(refuse(format!(
                "{MAX_TASK_SLOTS} tasks hold credentials already; try again when some have ended"
            )));
        }
        let slot = Arc::new(Slot::for_task(parent, task));
        tasks.insert(task.grant_id.clone(), Arc::clone(&slot));
        drop(tasks);
        end_with_grant(parent, &slot, &self.core);
        Ok(slot)
    }

    /// Fetches every `eager` credential; readiness waits for this.
    pub async fn fetch_eager(&self) -> Result<(), CredentialError> {
        for slot in self.slots.values().filter(|s| s.is_eager()) {
            self.fetch_shared(slot).await?;
        }
        Ok(())
    }

    /// True when every eager credential is held and usable.
    pub fn ready(&self) -> bool {
        let now = SystemTime::now();
        self.slots.values().filter(|s| s.is_eager()).all(|s| {
            s.current
                .load()
                .as_ref()
                .is_some_and(|h| now < h.usable_until)
        })
    }

    /// Name, issuer, ID, expiry and use count of every credential, and of every task of the
    /// per-task ones, sorted by name (then grant ID, a credential's own entry first).
    pub fn status(&self) -> Vec<CredentialStatus> {
        let mut out = Vec::new();
        for slot in self.slots.values() {
            out.push(slot.status());
            if let Some(tasks) = slot.tasks() {
                out.extend(tasks.values().map(|t| t.status()));
            }
        }
        out.sort_by(|a, b| (&a.name, &a.grant_id).cmp(&(&b.name, &b.grant_id)));
        out
    }

    /// The issuer name of a credential.
    pub fn issuer_of(&self, name: &str) -> Option<&str> {
        self.slots.get(name).map(|s| s.issuer_name.as_str())
    }

    /// Stops refreshing, revokes every held lease, tasks' included (audited as `revoked`; tasks'
    /// credentials without a lease are dropped and audited alike), then lets each issuer give
    /// up its own token. Waits for credentials retired by reloads to be revoked too.
    /// Bounded in time.
    pub async fn shutdown(&self) {
        self.core.closed.store(true, Ordering::Release);
        self.core.stop.cancel();
        self.core.tasks.close();
        self.core.tasks.wait().await;
        for slot in self.slots.values() {
            revoke_all(slot, &self.core).await;
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
        self.detached(slot, |slot, core| async move {
            fetch_shared(&slot, &core).await
        })
        .await
    }

    /// Runs `work` on `slot` in a task of its own, so that a request that goes away does not
    /// cancel an issuer call other requests wait on.
    async fn detached<T, F>(
        &self,
        slot: &Arc<Slot>,
        work: impl FnOnce(Arc<Slot>, Arc<Core>) -> F,
    ) -> Result<T, CredentialError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, CredentialError>> + Send + 'static,
    {
        let task = tokio::spawn(work(Arc::clone(slot), Arc::clone(&self.core)));
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
            while self.slots.iter().any(|s| in_use(s)) && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    () = self.core.stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            for slot in &self.slots {
                revoke_all(slot, &self.core).await;
                tracing::info!(credential = %slot.name, issuer = %slot.issuer_name, "credential retired by a config reload");
            }
            for issuer in &self.issuers {
                let _ = tokio::time::timeout(REVOKE_TIMEOUT, issuer.shutdown()).await;
            }
        });
    }
}

/// The same task assertion signer (the same `Arc`), or none in both.
fn same_signer(a: &Option<Arc<Issuer>>, b: &Option<Arc<Issuer>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Adds `issuer` to `list` unless it is there already (the same `Arc`: several credentials
/// share one issuer).
fn push_once(list: &mut Vec<Arc<Issuer>>, issuer: &Arc<Issuer>) {
    if !list.iter().any(|i| Arc::ptr_eq(i, issuer)) {
        list.push(Arc::clone(issuer));
    }
}

/// Whether requests still use what the slot (or, for a per-task credential, any of its tasks)
/// holds: a held credential's only other owners are requests that took it.
fn in_use(slot: &Slot) -> bool {
    let held = slot
        .current
        .load()
        .as_ref()
        .is_some_and(|h| Arc::strong_count(&h.credential) > 1);
    held || slot.tasks().is_some_and(|t| t.values().any(|t| in_use(t)))
}

/// Revokes what the slot holds and, for a per-task credential, what each of its tasks holds
/// (the task slots are removed). The slot is stopped, so nothing new is fetched.
async fn revoke_all(slot: &Slot, core: &Core) {
    revoke_held(slot, &core.audit).await;
    revoke_each(take_all_tasks(core, slot), &core.audit).await;
}

/// [`revoke_held`] for each slot, [`REVOKE_CONCURRENCY`] at a time.
async fn revoke_each(slots: Vec<Arc<Slot>>, audit: &AuditLog) {
    let mut running = tokio::task::JoinSet::new();
    for slot in slots {
        if running.len() >= REVOKE_CONCURRENCY {
            running.join_next().await;
        }
        let audit = audit.clone();
        running.spawn(async move { revoke_held(&slot, &audit).await });
    }
    while running.join_next().await.is_some() {}
}

/// Drops what the slot holds and revokes its lease, if it has one (audited `revoked`, or
/// `failed` when the issuer says no). A task's credential without a lease (a JWT, STS keys, an
/// OAuth2 access token) cannot be revoked: it is dropped, never used again, and audited `revoked` too, as the end
/// of its use (it expires on its own: a JWT no later than its grant). The slot's token is
/// cancelled, so no fetch follows.
async fn revoke_held(slot: &Slot, audit: &AuditLog) {
    // After the lock, no fetch is in flight, and none starts (stopped).
    let _guard = slot.fetch_lock.lock().await;
    let Some(held) = slot.current.swap(None) else {
        return;
    };
    let Some(lease) = &held.credential.lease else {
        if matches!(slot.scope, Scope::Task) {
            tracing::info!(credential = %slot.name, issuer = %slot.issuer_name, credential_id = %held.credential.id, task_id = ?slot.task().map(|t| &t.task_id), "task credential dropped (it has no lease to revoke)");
            audit.credential(&slot.event(
                CredentialEventKind::Revoked,
                Some(&held.credential.id.0),
                None,
            ));
        }
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
        let reason = slot
            .ended
            .get()
            .copied()
            .unwrap_or("the credential was removed or changed by a config reload");
        return Err(CredentialError::Unavailable {
            name: slot.name.clone(),
            reason: reason.into(),
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

/// [`CredentialStore::replace_rejected`] on the slot (run detached).
async fn replace_rejected(
    slot: &Arc<Slot>,
    core: &Arc<Core>,
    rejected: &Arc<Credential>,
) -> Result<Option<Arc<Credential>>, CredentialError> {
    let _guard = slot.fetch_lock.lock().await;
    let held = slot.current.load_full();
    match held.as_ref() {
        // Replaced already (by another request's rejection, or a refresh): use that one.
        Some(now) if !Arc::ptr_eq(&now.credential, rejected) => {
            if SystemTime::now() < now.usable_until {
                return Ok(Some(Arc::clone(&now.credential)));
            }
        }
        Some(_) => {}
        None => return Ok(None),
    }
    if core.closed.load(Ordering::Acquire) || slot.stop.is_cancelled() {
        return Ok(None);
    }
    {
        let mut last = slot
            .replaced_rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < REJECT_MIN_INTERVAL) {
            return Ok(None);
        }
        *last = Some(Instant::now());
    }
    tracing::info!(credential = %slot.name, issuer = %slot.issuer_name, credential_id = %rejected.id, "the upstream refused the credential (401); fetching a new one");
    match fetch(slot, &core.audit).await {
        Ok(credential) => {
            maintain(slot, core);
            Ok(Some(credential))
        }
        Err(reason) => Err(CredentialError::Unavailable {
            name: slot.name.clone(),
            reason,
        }),
    }
}

/// Ends a task's slot when its grant expires: removed from its credential, its credential
/// revoked or dropped (audited `revoked`), so later requests of the grant are refused. Gives
/// up when the slot is stopped otherwise (the task ended, a reload, shutdown): whoever stopped
/// it revokes.
fn end_with_grant(parent: &Arc<Slot>, slot: &Arc<Slot>, core: &Arc<Core>) {
    let Some(task) = slot.task() else {
        return;
    };
    let (end, grant_id) = (task.expires_at, task.grant_id.clone());
    let (parent, slot, core) = (Arc::clone(parent), Arc::clone(slot), Arc::clone(core));
    core.tasks.clone().spawn(async move {
        if !sleep_until(end, &slot.stop).await {
            return;
        }
        take_task(&core, &parent, &grant_id, Some(&slot));
        slot.end(GRANT_EXPIRED);
        tracing::info!(credential = %slot.name, issuer = %slot.issuer_name, grant_id = %grant_id, "task grant expired; ending its credential");
        revoke_held(&slot, &core.audit).await;
    });
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
        // A task's credential that lasts as long as its grant (JWT times are whole seconds) is
        // not refreshed: the grant's end ends it. Refreshing it would only bring shorter ones.
        let lasts = slot
            .task()
            .is_some_and(|t| held.expires_at + Duration::from_secs(1) >= t.expires_at);
        let refresh_due = async {
            if lasts {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(wait).await;
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = refresh_due => {}
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
    let signer = slot.signer.as_deref().and_then(Issuer::as_local);
    let called = Instant::now();
    let result =
        tokio::time::timeout(ISSUE_TIMEOUT, slot.issuer.issue(&slot.request, signer)).await;
    let issuer_ms = Some(called.elapsed().as_secs_f64() * 1000.0);
    let credential = match result {
        Ok(Ok(c)) => Arc::new(c),
        Ok(Err(e)) => return Err(failed(slot, audit, e.public(), e.to_string(), issuer_ms)),
        Err(_) => {
            let reason = format!("issuer did not answer within {ISSUE_TIMEOUT:?}");
            return Err(failed(slot, audit, reason.clone(), reason, issuer_ms));
        }
    };
    let held = Arc::new(Held::new(Arc::clone(&credential)));
    if held.usable_until < SystemTime::now() + MIN_USABLE {
        let reason = format!(
            "the issuer gave credential {} that expires at {}, too soon to use",
            credential.id,
            rfc3339(credential.expires_at)
        );
        return Err(failed(slot, audit, reason.clone(), reason, issuer_ms));
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
    let mut event = slot.event(kind, Some(&credential.id.0), Some(expires_at));
    event.issuer_ms = issuer_ms;
    audit.credential(&event);
    tracing::info!(credential = %slot.name, issuer = %slot.issuer_name, credential_id = %credential.id, "credential issued");
    Ok(credential)
}

/// Logs and audits the full `detail`; returns `public`, what the agent is told.
fn failed(
    slot: &Slot,
    audit: &AuditLog,
    public: String,
    detail: String,
    issuer_ms: Option<f64>,
) -> String {
    tracing::warn!(credential = %slot.name, issuer = %slot.issuer_name, error = %detail, "credential fetch failed");
    let mut event = slot.event(CredentialEventKind::Failed, None, None);
    event.error = Some(detail);
    event.issuer_ms = issuer_ms;
    audit.credential(&event);
    public
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CredentialId, LocalIssuer};
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
            task_assertion_issuer: None,
            repositories: Vec::new(),
            permissions: Vec::new(),
            certificate: None,
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

    fn per_task(name: &str, audience: &str) -> CredentialConfig {
        CredentialConfig {
            per_task: true,
            eager: false,
            ..credential(name, audience, Duration::from_secs(300))
        }
    }

    /// A grant of task `task_id` ending `life` from now (whole seconds, as a JWT's `exp`).
    fn grant(grant_id: &str, task_id: &str, life: Duration) -> TaskContext {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        TaskContext {
            grant_id: grant_id.into(),
            task_id: task_id.into(),
            sub: "agent-7".into(),
            on_behalf_of: None,
            act: Vec::new(),
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs()) + life,
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    /// The audit trail, in memory.
    #[derive(Clone, Default)]
    struct Trail(sidekey_audit::memory::MemorySink);

    impl Trail {
        fn writer(&self) -> AuditWriter {
            AuditWriter::spawn(Box::new(self.0.clone())).unwrap()
        }

        /// The `event` credential events of `grant_id`, once the writer has written them.
        fn events(
            &self,
            writer: &AuditWriter,
            event: &str,
            grant_id: &str,
        ) -> Vec<serde_json::Value> {
            writer.flush();
            self.0
                .records()
                .into_iter()
                .filter(|l| {
                    l["type"] == "credential" && l["event"] == event && l["grant_id"] == grant_id
                })
                .collect()
        }

        /// Waits (up to 10 s) until there are `n` such events, and returns them.
        async fn wait_for(
            &self,
            writer: &AuditWriter,
            n: usize,
            event: &str,
            grant_id: &str,
        ) -> Vec<serde_json::Value> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let events = self.events(writer, event, grant_id);
                if events.len() >= n {
                    return events;
                }
                assert!(
                    Instant::now() < deadline,
                    "no {n} `{event}` events of {grant_id}: {events:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn reason(result: Result<Arc<Credential>, CredentialError>) -> String {
        match result {
            Err(CredentialError::Unavailable { reason, .. }) => reason,
            other => panic!("expected a refusal, got {:?}", other.map(|c| c.id.clone())),
        }
    }

    #[tokio::test]
    async fn a_held_credential_is_looked_up_at_once_and_only_a_fetch_waits() {
        let writer = AuditWriter::spawn(Box::new(std::io::sink())).unwrap();
        let creds = vec![
            CredentialConfig {
                eager: false,
                ..credential("demo", "a", MINUTE)
            },
            per_task("tasks", "b"),
        ];
        let store = CredentialStore::new(&creds, &local_issuers(), writer.log()).unwrap();
        let task = grant("grant-a", "task-1", MINUTE);
        let no_task = || None;
        for (name, scoped) in [("demo", None), ("tasks", Some(&task))] {
            let first = store.get_scoped(name, || scoped.cloned());
            assert!(
                matches!(first, Lookup::Fetching(_)),
                "{name}: nothing held yet"
            );
            let fetched = first.await.unwrap();
            let held = store.get_scoped(name, || scoped.cloned());
            assert!(
                matches!(held, Lookup::Done(Some(Ok(_)))),
                "{name}: held now"
            );
            assert_eq!(held.await.unwrap().id, fetched.id, "{name}");
        }
        // What cannot be had is answered at once too, with the reason.
        for (name, scoped) in [("tasks", no_task()), ("nope", None)] {
            let refused = store.get_scoped(name, || scoped);
            assert!(matches!(refused, Lookup::Done(Some(Err(_)))), "{name}");
        }
        assert!(matches!(
            store.get_scoped("tasks", no_task).await,
            Err(CredentialError::TaskRequired(_))
        ));
        assert!(matches!(
            store.get_scoped("nope", no_task).await,
            Err(CredentialError::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn each_grant_gets_its_own_credential_and_keeps_it() {
        let writer = AuditWriter::spawn(Box::new(std::io::sink())).unwrap();
        let creds = vec![per_task("tasks", "a")];
        let store = Arc::new(CredentialStore::new(&creds, &local_issuers(), writer.log()).unwrap());
        let a = grant("grant-a", "task-1", MINUTE);
        // Another grant for the same task (a sub-agent's, say) is another credential.
        let b = grant("grant-b", "task-1", MINUTE);
        let mut tasks = Vec::new();
        for i in 0..32 {
            let (store, task) = (
                Arc::clone(&store),
                if i % 2 == 0 { a.clone() } else { b.clone() },
            );
            tasks.push(tokio::spawn(async move {
                let c = store.get_for_task("tasks", &task).await.unwrap();
                (task.grant_id, c.id.clone())
            }));
        }
        let mut ids: HashMap<String, std::collections::HashSet<CredentialId>> = HashMap::new();
        for t in tasks {
            let (grant, id) = t.await.unwrap();
            ids.entry(grant).or_default().insert(id);
        }
        assert_eq!(ids["grant-a"].len(), 1, "one fetch per grant: {ids:?}");
        assert_eq!(ids["grant-b"].len(), 1, "one fetch per grant: {ids:?}");
        assert_ne!(ids["grant-a"], ids["grant-b"]);
        let again = store.get_for_task("tasks", &a).await.unwrap();
        assert!(ids["grant-a"].contains(&again.id), "cached for the grant");

        let status = store.status();
        let grants: Vec<Option<&str>> = status.iter().map(|s| s.grant_id.as_deref()).collect();
        assert_eq!(grants, [None, Some("grant-a"), Some("grant-b")]);
        assert!(status.iter().all(|s| s.per_task && s.name == "tasks"));
        assert_eq!(
            status[0].credential_id, None,
            "a per-task credential holds no value"
        );
        assert_eq!(status[0].uses, 33);
        assert_eq!(status[1].task_id.as_deref(), Some("task-1"));
        assert_eq!(status[1].credential_id.as_deref(), Some(again.id.as_str()));
        assert_eq!(status[1].uses, 17);

        // A grant ID presented again with other claims is not that grant.
        let forged = TaskContext {
            sub: "someone-else".into(),
            ..a.clone()
        };
        assert!(reason(store.get_for_task("tasks", &forged).await).contains("other claims"));
    }

    #[tokio::test]
    async fn shared_and_per_task_credentials_are_not_mixed_up() {
        let writer = AuditWriter::spawn(Box::new(std::io::sink())).unwrap();
        let creds = vec![
            credential("shared", "a", Duration::from_secs(300)),
            per_task("tasks", "a"),
        ];
        let store = CredentialStore::new(&creds, &local_issuers(), writer.log()).unwrap();
        assert!(store.is_per_task("tasks"));
        assert!(!store.is_per_task("shared"));
        assert!(!store.is_per_task("nope"));
        let task = grant("grant-a", "task-1", MINUTE);
        assert!(reason(store.get("tasks").await).contains("issued per task"));
        assert!(reason(store.get_for_task("shared", &task).await).contains("shared by every task"));
        assert!(matches!(
            store.get_for_task("nope", &task).await,
            Err(CredentialError::Unknown(_))
        ));
        // Readiness does not wait for a per-task credential (there is no task at start).
        store.fetch_eager().await.unwrap();
        assert!(store.ready());
        // Nor is an expired grant given one.
        let expired = TaskContext {
            expires_at: SystemTime::now() - Duration::from_secs(1),
            ..task
        };
        assert_eq!(
            reason(store.get_for_task("tasks", &expired).await),
            GRANT_EXPIRED
        );
    }

    #[tokio::test]
    async fn a_tasks_credential_ends_when_its_grant_expires() {
        let trail = Trail::default();
        let writer = trail.writer();
        let creds = vec![per_task("tasks", "a")];
        let store = CredentialStore::new(&creds, &local_issuers(), writer.log()).unwrap();
        // The JWT's exp is the grant's, 3-4 s from now (its ttl is 5m).
        let task = grant("grant-a", "task-1", Duration::from_secs(4));
        let credential = store.get_for_task("tasks", &task).await.unwrap();
        assert_eq!(credential.expires_at, task.expires_at);
        let issued = trail.wait_for(&writer, 1, "issued", "grant-a").await;
        assert_eq!(issued[0]["task_id"], "task-1");

        let revoked = trail.wait_for(&writer, 1, "revoked", "grant-a").await;
        assert!(SystemTime::now() >= task.expires_at);
        assert_eq!(revoked[0]["task_id"], "task-1");
        assert_eq!(revoked[0]["credential"], "tasks");
        assert_eq!(revoked[0]["credential_id"], credential.id.as_str());
        assert_eq!(
            reason(store.get_for_task("tasks", &task).await),
            GRANT_EXPIRED
        );
        assert!(
            store.status().iter().all(|s| s.grant_id.is_none()),
            "the slot is gone"
        );
        assert_eq!(store.core.task_slots.load(Ordering::Acquire), 0);
        // It was never refreshed: it lasted as long as the grant.
        assert!(trail.events(&writer, "refreshed", "grant-a").is_empty());
    }

    #[tokio::test]
    async fn ending_a_task_ends_every_credential_of_its_grant() {
        let trail = Trail::default();
        let writer = trail.writer();
        let creds = vec![per_task("one", "a"), per_task("two", "b")];
        let store = CredentialStore::new(&creds, &local_issuers(), writer.log()).unwrap();
        let (a, b) = (
            grant("grant-a", "task-1", MINUTE),
            grant("grant-b", "task-2", MINUTE),
        );
        let a1 = store.get_for_task("one", &a).await.unwrap();
        let a2 = store.get_for_task("two", &a).await.unwrap();
        let b1 = store.get_for_task("one", &b).await.unwrap();

        store.end_task("grant-a");
        // Refused at once, before the background revocation is done.
        assert_eq!(reason(store.get_for_task("one", &a).await), GRANT_ENDED);
        let revoked = trail.wait_for(&writer, 2, "revoked", "grant-a").await;
        let mut ids: Vec<&str> = revoked
            .iter()
            .filter_map(|e| e["credential_id"].as_str())
            .collect();
        ids.sort_unstable();
        let mut want = [a1.id.as_str(), a2.id.as_str()];
        want.sort_unstable();
        assert_eq!(ids, want);
        assert_eq!(reason(store.get_for_task("two", &a).await), GRANT_ENDED);

        // Idempotent; the other grant is untouched.
        store.end_task("grant-a");
        store.end_task("never-seen");
        assert_eq!(store.get_for_task("one", &b).await.unwrap().id, b1.id);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(trail.events(&writer, "revoked", "grant-a").len(), 2);
        assert!(trail.events(&writer, "revoked", "grant-b").is_empty());
        assert_eq!(store.core.task_slots.load(Ordering::Acquire), 1);

        // Shutdown ends the rest.
        store.shutdown().await;
        assert_eq!(trail.events(&writer, "revoked", "grant-b").len(), 1);
    }

    #[tokio::test]
    async fn live_task_credentials_are_bounded() {
        let writer = AuditWriter::spawn(Box::new(std::io::sink())).unwrap();
        let creds = vec![per_task("tasks", "a")];
        let store = CredentialStore::new(&creds, &local_issuers(), writer.log()).unwrap();
        // As if that many tasks held credentials already (in any credential or generation).
        store
            .core
            .task_slots
            .store(MAX_TASK_SLOTS - 1, Ordering::Release);
        let a = grant("grant-a", "task-1", MINUTE);
        let b = grant("grant-b", "task-2", MINUTE);
        store.get_for_task("tasks", &a).await.unwrap();
        let refused = reason(store.get_for_task("tasks", &b).await);
        assert!(
            refused.contains("10000 tasks hold credentials already"),
            "{refused}"
        );
        // A grant that has its slot keeps it; one that ends makes room.
        store.get_for_task("tasks", &a).await.unwrap();
        store.end_task("grant-a");
        store.get_for_task("tasks", &b).await.unwrap();
    }

    #[tokio::test]
    async fn a_successor_carries_task_credentials_over_or_retires_them() {
        let trail = Trail::default();
        let writer = trail.writer();
        let issuers = local_issuers();
        let first = vec![
            per_task("kept", "a"),
            per_task("changed", "a"),
            per_task("removed", "a"),
        ];
        let old = CredentialStore::new(&first, &issuers, writer.log()).unwrap();
        let task = grant("grant-a", "task-1", MINUTE);
        let kept = old.get_for_task("kept", &task).await.unwrap();
        let changed = old.get_for_task("changed", &task).await.unwrap();
        let removed = old.get_for_task("removed", &task).await.unwrap();
        let (kept_id, changed_id, removed_id) =
            (kept.id.clone(), changed.id.clone(), removed.id.clone());
        drop((kept, changed, removed));

        let second = vec![per_task("kept", "a"), per_task("changed", "b")];
        let (new, retired, changes) = old.successor(&second, &issuers).unwrap();
        assert_eq!(changes.changed, ["changed"]);
        assert_eq!(changes.removed, ["removed"]);
        assert_eq!(new.get_for_task("kept", &task).await.unwrap().id, kept_id);
        assert_ne!(
            new.get_for_task("changed", &task).await.unwrap().id,
            changed_id
        );

        retired.retire();
        let revoked = trail.wait_for(&writer, 2, "revoked", "grant-a").await;
        let mut ids: Vec<&str> = revoked
            .iter()
            .filter_map(|e| e["credential_id"].as_str())
            .collect();
        ids.sort_unstable();
        let mut want = [changed_id.as_str(), removed_id.as_str()];
        want.sort_unstable();
        assert_eq!(ids, want);
        assert!(reason(old.get_for_task("removed", &task).await).contains("config reload"));
        // The carried-over one is the same in both generations.
        assert_eq!(old.get_for_task("kept", &task).await.unwrap().id, kept_id);
        assert_eq!(new.core.task_slots.load(Ordering::Acquire), 2);

        // Ending the task reaches it through either generation.
        old.end_task("grant-a");
        assert_eq!(
            trail.wait_for(&writer, 4, "revoked", "grant-a").await.len(),
            4
        );
        assert!(new.status().iter().all(|s| s.grant_id.is_none()));
        assert_eq!(new.core.task_slots.load(Ordering::Acquire), 0);
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
    async fn a_rebuilt_task_assertion_signer_replaces_the_credentials_it_signs_for() {
        let writer = AuditWriter::spawn(Box::new(std::io::sink())).unwrap();
        let ttl = Duration::from_secs(300);
        let signed = CredentialConfig {
            task_assertion_issuer: Some("tasks".into()),
            ..credential("signed", "a", ttl)
        };
        let creds = vec![signed.clone(), credential("plain", "a", ttl)];
        let mut issuers = local_issuers();
        let tasks = |issuers: &HashMap<String, Arc<Issuer>>| {
            let mut issuers = issuers.clone();
            let signer = local_issuers().remove("local").unwrap();
            issuers.insert("tasks".to_string(), signer);
            issuers
        };
        issuers = tasks(&issuers);
        let old = CredentialStore::new(&creds, &issuers, writer.log()).unwrap();
        let (_, _, changes) = old.successor(&creds, &issuers).unwrap();
        assert_eq!(changes, CredentialChanges::default(), "the same signer");
        // The same issuers but a rebuilt signer (its config changed: a new key).
        let (_, retired, changes) = old.successor(&creds, &tasks(&issuers)).unwrap();
        assert_eq!(changes.changed, ["signed"]);
        assert_eq!(retired.slots.len(), 1);
        // A signer that is missing, or not a local issuer, is refused.
        let mut missing = issuers.clone();
        missing.remove("tasks");
        assert!(
            CredentialStore::new(std::slice::from_ref(&signed), &missing, writer.log()).is_err()
        );
        let mut wrong = issuers.clone();
        wrong.insert("tasks".into(), Arc::new(Issuer::OAuth2(oauth2_issuer())));
        match CredentialStore::new(&[signed], &wrong, writer.log()) {
            Err(CredentialError::Unavailable { reason, .. }) => {
                assert!(reason.contains("not a local issuer"), "{reason}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    /// An oauth2 issuer that is never called (a public client of a closed loopback port).
    fn oauth2_issuer() -> crate::OAuth2Issuer {
        crate::OAuth2Issuer::new(
            "idp",
            &sidekey_config::OAuth2IssuerConfig {
                token_url: sidekey_config::Endpoint {
                    url: "http://127.0.0.1:9/token".into(),
                },
                grant: sidekey_config::OAuth2Grant::ClientCredentials,
                client_id: "c".into(),
                client_auth: sidekey_config::ClientAuth::None,
                ca_file: None,
            },
        )
        .unwrap()
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
        assert_eq!(status[0].credential_id.as_deref(), Some(a.id.as_str()));
    }

    #[tokio::test]
    async fn a_refused_credential_is_replaced_once_for_all_who_saw_it_and_not_again_soon() {
        let (store, _w) = store(Duration::from_secs(300));
        let store = Arc::new(store);
        let rejected = store.get("demo").await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (s, r) = (Arc::clone(&store), Arc::clone(&rejected));
            tasks.push(tokio::spawn(async move {
                s.replace_rejected("demo", None, &r).await.unwrap()
            }));
        }
        let mut ids = std::collections::HashSet::new();
        for t in tasks {
            let fresh = t.await.unwrap().expect("a replacement");
            assert_ne!(fresh.id, rejected.id);
            ids.insert(fresh.id.clone());
        }
        assert_eq!(ids.len(), 1, "one fetch for every request that saw the 401");
        let fresh = store.get("demo").await.unwrap();
        assert!(
            ids.contains(&fresh.id),
            "the replacement is what the slot holds"
        );
        // The replacement refused too, right away: not replaced again (an upstream refusing
        // everything must not make every request an issuer call).
        assert!(store
            .replace_rejected("demo", None, &fresh)
            .await
            .unwrap()
            .is_none());
        assert_eq!(store.get("demo").await.unwrap().id, fresh.id);
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
