//! The audit trail: one JSON line per request (allowed, denied or tunnelled), one per
//! credential event, and one per config load (at start, and per reload, applied or rejected),
//! so that the trail says which policy was in force when. Records are serialized on the
//! caller's thread into one shared batch and written by a dedicated writer thread: at once when
//! it is idle, in batches at most [`BATCH_WINDOW`] late under load. A slow sink never blocks
//! the request path, and a busy proxy pays one write per batch, not per record. Audit is
//! separate from diagnostic logs (those go to stderr through `tracing`) and never carries a
//! credential value.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::Serialize;

pub use id::{HexId, RequestId};

mod id;
mod json;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod ocsf;
pub mod trace;

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A route allowed it and it was forwarded (whatever the upstream answered).
    Allow,
    /// Refused by policy, or failed before reaching the upstream.
    Deny,
    /// Passed without a credential because `unmatched: tunnel`.
    Tunnel,
}

/// One request, as recorded once its response has finished (or failed).
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub request_id: RequestId,
    /// "forward" or "routes".
    pub listener: &'static str,
    /// Route, credential and issuer names are the config's, shared (not copied per request).
    pub route: Option<Arc<str>>,
    pub credential: Option<Arc<str>>,
    /// Shared with the credential (not copied per request).
    pub credential_id: Option<Arc<str>>,
    pub issuer: Option<Arc<str>>,
    /// The method's name: a standard method's is static, not copied per request.
    pub method: Cow<'static, str>,
    pub scheme: &'static str,
    /// Shared with the request's target (not copied per request).
    pub host: Arc<str>,
    pub port: u16,
    /// Path with query values replaced by `REDACTED` (see [`redact_query`]).
    pub path: String,
    pub decision: Outcome,
    /// The error code (docs/architecture.md, "Error codes") when refused or failed.
    pub code: Option<&'static str>,
    /// Status sent to the agent.
    pub status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    /// The agent's task ID, when it sent one (or the task its grant names).
    pub task_id: Option<String>,
    /// The W3C trace ID the request went upstream under: the agent's `traceparent` continued,
    /// or a trace sidekey started. Omitted when none (requests that never became exchanges).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<HexId<32>>,
    /// The task grant's `sub`: the agent or sub-agent the request was made for. This and the
    /// grant fields below are omitted, not `null`, when the request carried no grant, so that
    /// lines written without grants stay exactly as they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The grant's `jti`, which `parent_grant` of a sub-agent's grant names: the key
    /// `sidekey audit trace` builds the delegation tree on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// The `jti` of the grant this one was derived from (the parent agent's); none for a root
    /// grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_grant: Option<String>,
    /// The end user the task runs for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// The grant's RFC 8693 `act` chain as a flat list, earliest first: the root agent … the
    /// immediate parent of `sub` (`sub` itself is not repeated). Flat, unlike the nested JWT
    /// claim, so that a query can match it without recursion.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub act: Vec<String>,
    /// Set when the exchange broke off after the response started: `client_aborted`,
    /// `upstream_body_error`.
    pub error: Option<&'static str>,
    /// The credential the upstream refused with 401 (its ID), when it did: the request was
    /// sent again with a new one (`retried`) or, for a method that is not retried, answered
    /// with the 401 while the credential was replaced for later requests. Omitted otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_credential_id: Option<String>,
    /// The request was sent a second time, with the credential that replaced the rejected
    /// one (`credential_id`). Omitted when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retried: bool,
    /// The `certificate` credential presented as the TLS client certificate (a route's
    /// `client_certificate`), and its ID: the certificate's serial number. Omitted when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate_id: Option<String>,
    /// With `cedar:`, for a request a route allowed: Cedar's decision and the policies that
    /// determined it. Omitted otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cedar: Option<CedarDecision>,
    /// A WebSocket the request opened: how it ended. Omitted for every other request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocketEnd>,
}

/// Cedar's decision on a request (`cedar:` in the config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CedarDecision {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The IDs of the policies that determined it (`@id`, else Cedar's `policyN`): the permits
    /// that allowed it, or the forbids that denied it; empty when no policy permitted it.
    pub policies: Vec<String>,
}

/// How a WebSocket connection ended, in its upgrade request's record (written when it closes;
/// `bytes_in`/`bytes_out` are the frames' bytes each way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WebSocketEnd {
    /// The code of the first Close frame (sent by `closed_by`); None when it carried none or
    /// the connection ended with no Close frame.
    pub close_code: Option<u16>,
    /// Who closed first: `agent`, `upstream`, `sidekey` (a limit, a protocol error, the idle
    /// timeout, shutdown or a reload), or None when neither sent a Close frame.
    pub closed_by: Option<&'static str>,
    /// Data messages each way: from the agent, from the upstream.
    pub messages_in: u64,
    pub messages_out: u64,
}

impl RequestRecord {
    /// The record of a request to `scheme://host:port` + `path` as it arrives: refused until
    /// something says otherwise, nothing sent, no route, credential, grant or trace yet.
    /// `path` is stored as given (callers redact its query with [`redact_query`]).
    pub fn new(
        request_id: RequestId,
        listener: &'static str,
        method: Cow<'static, str>,
        (scheme, host, port): (&'static str, Arc<str>, u16),
        path: String,
    ) -> RequestRecord {
        RequestRecord {
            request_id,
            listener,
            route: None,
            credential: None,
            credential_id: None,
            issuer: None,
            method,
            scheme,
            host,
            port,
            path,
            decision: Outcome::Deny,
            code: None,
            status: None,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0.0,
            task_id: None,
            trace_id: None,
            sub: None,
            grant_id: None,
            parent_grant: None,
            on_behalf_of: None,
            act: Vec::new(),
            error: None,
            rejected_credential_id: None,
            retried: false,
            client_certificate: None,
            client_certificate_id: None,
            cedar: None,
            websocket: None,
        }
    }
}

/// A credential lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialEventKind {
    Issued,
    Renewed,
    Refreshed,
    Expired,
    Revoked,
    Failed,
}

/// One credential event. `credential_id` is the issuer's ID (jti, lease ID, …), never the value.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialEvent {
    pub event: CredentialEventKind,
    pub credential: String,
    pub issuer: String,
    pub credential_id: Option<String>,
    pub expires_at: Option<String>,
    /// Why it failed, for `failed`; never contains a secret.
    pub error: Option<String>,
    /// For a per-task credential: the task it was issued for, and the grant (its `jti`) that
    /// asked for it. Absent for shared credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// How long the issuer call behind an `issued`, `refreshed` or `failed` event took, in
    /// milliseconds. Absent for events without a call (expired, revoked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer_ms: Option<f64>,
}

/// What happened to a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigEventKind {
    /// At start.
    Loaded,
    /// A reload was applied.
    Reloaded,
    /// A reload was refused; the running config stays.
    Rejected,
}

/// One config load. `sha256` is of the file's bytes, so the policy in force can be matched to
/// a file in version control; absent when the file could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigEvent {
    pub event: ConfigEventKind,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<ConfigChanges>,
    /// For `rejected`: every reason, `line:column: error: message` for file errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// What a reload changed, by name (each list sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigChanges {
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    pub credentials_added: Vec<String>,
    pub credentials_removed: Vec<String>,
    pub credentials_changed: Vec<String>,
    pub issuers_added: Vec<String>,
    pub issuers_removed: Vec<String>,
    pub issuers_changed: Vec<String>,
    /// `reissued` (the intercepted hosts changed: new name constraints, same key) or `kept`.
    pub ca: &'static str,
}

/// One audit line into `out`: `{"ts":…,"type":kind,` then the record's own fields, then a
/// newline. The record is serialized as itself and its opening brace replaced, rather than
/// flattened by serde (which goes through a map serializer, field by field, at several times
/// the cost on every request).
fn write_line<T: Serialize>(
    out: &mut Vec<u8>,
    ts: SystemTime,
    kind: &'static str,
    record: &T,
) -> Result<(), serde_json::Error> {
    write_line_with(out, ts, kind, |out| serde_json::to_writer(out, record))
}

/// [`write_line`] with the record written as a JSON object by `object`.
fn write_line_with(
    out: &mut Vec<u8>,
    ts: SystemTime,
    kind: &'static str,
    object: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Result<(), serde_json::Error> {
    let start = out.len();
    out.extend_from_slice(b"{\"ts\":\"");
    write_rfc3339_millis(out, ts).map_err(|e| serde_json::Error::io(io::Error::other(e)))?;
    out.extend_from_slice(b"\",\"type\":");
    serde_json::to_writer(&mut *out, kind)?;
    let at = out.len();
    if let Err(e) = object(out) {
        out.truncate(start);
        return Err(e);
    }
    match out.get(at..at + 2) {
        Some(b"{}") => {
            out.truncate(at);
            out.push(b'}');
        }
        Some([b'{', _]) => out[at] = b',',
        _ => {
            out.truncate(start);
            return Err(serde::ser::Error::custom(
                "an audit record must be a JSON object",
            ));
        }
    }
    out.push(b'\n');
    Ok(())
}

/// After each write the writer rests this long, letting the next records gather. A record that
/// finds the writer idle is written at once; under load this turns one wake-up and one `write`
/// per record into one per window, and a record is at most this late. A flush (and shutdown)
/// writes at once.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// A batch this large is written without waiting for the window to end.
const BATCH_BYTES: usize = 64 * 1024;

/// Records serialized by producers, waiting for the writer thread. One mutex-guarded buffer
/// keeps the trail in the order records were finished, which a hash chain will need.
struct Batch {
    /// Serialized lines, each ending in `\n`.
    buf: Vec<u8>,
    /// Records appended since start; `written` catches up with it.
    appended: u64,
    /// Records written to the sink and flushed.
    written: u64,
    /// A caller waits in [`AuditLog::flush`]: write now, do not wait for the window.
    flush_wanted: bool,
    /// The writer has been asked to stop once the buffer is written.
    closed: bool,
    /// The writer is resting after a write: producers need not wake it for a new batch.
    resting: bool,
}

/// What an [`Observer`] handed out for a request's series, given back with its record
/// ([`AuditLog::request_in`]).
pub type Series = dyn std::any::Any + Send + Sync;

/// Sees every record the trail takes, as it is appended, so that what counts records (the
/// metrics) counts exactly what the trail holds. Called on the producer's thread, outside the
/// batch lock: it must be cheap and must not block.
pub trait Observer: Send + Sync {
    fn request(&self, _record: &RequestRecord) {}
    /// A request record with what the observer gave the request for its series earlier (the
    /// metrics' route timers): the record's series without looking them up again.
    fn request_in(&self, record: &RequestRecord, _series: &Series) {
        self.request(record);
    }
    fn credential(&self, _event: &CredentialEvent) {}
    fn config(&self, _event: &ConfigEvent) {}
    /// `records` were lost: not serializable, sent after shutdown, or in a batch the sink
    /// failed to take.
    fn dropped(&self, _records: u64) {}
}

struct Shared {
    batch: Mutex<Batch>,
    /// Set once, by [`AuditWriter::observe`].
    observer: OnceLock<Arc<dyn Observer>>,
    /// Wakes the writer: a batch was started, grew past [`BATCH_BYTES`], or a flush is wanted.
    to_writer: Condvar,
    /// Wakes flushers: `written` moved.
    to_flushers: Condvar,
}

impl Shared {
    /// The batch, even if a thread panicked holding it (its bytes are still whole lines:
    /// producers append a complete line in one call).
    fn lock(&self) -> MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle to the audit writer. Cheap to clone; every clone writes to the same sink.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

/// Owns the writer thread; [`AuditWriter::shutdown`] flushes what was written so far.
pub struct AuditWriter {
    log: AuditLog,
    thread: Option<JoinHandle<()>>,
}

impl AuditWriter {
    /// Audit to standard output (the default: the cluster's log pipeline carries it).
    pub fn stdout() -> io::Result<Self> {
        Self::spawn(Box::new(io::stdout()))
    }

    /// Audit appended to a file (created 0600 if missing).
    pub fn file(path: &Path) -> io::Result<Self> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path)?;
        Self::spawn(Box::new(file))
    }

    /// Audit into any writer (tests, sockets).
    pub fn spawn(sink: Box<dyn Write + Send>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            batch: Mutex::new(Batch {
                buf: Vec::with_capacity(BATCH_BYTES),
                appended: 0,
                written: 0,
                flush_wanted: false,
                closed: false,
                resting: false,
            }),
            to_writer: Condvar::new(),
            to_flushers: Condvar::new(),
            observer: OnceLock::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("sidekey-audit".into())
                .spawn(move || write_loop(sink, &shared))?
        };
        Ok(AuditWriter {
            log: AuditLog { shared },
            thread: Some(thread),
        })
    }

    /// Shows every record appended from now on to `observer` (once; a second call is ignored).
    pub fn observe(&self, observer: Arc<dyn Observer>) {
        if self.log.shared.observer.set(observer).is_err() {
            tracing::warn!("audit observer already set");
        }
    }

    /// A handle for producers.
    pub fn log(&self) -> AuditLog {
        self.log.clone()
    }

    /// Waits until everything sent before this call is written and flushed.
    pub fn flush(&self) {
        self.log.flush();
    }

    /// Writes everything recorded so far, then stops the writer. Records sent after this are
    /// dropped with an error in the diagnostic log.
    pub fn shutdown(mut self) {
        self.log.shared.lock().closed = true;
        self.log.shared.to_writer.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("audit writer thread panicked");
            }
        }
    }
}

fn write_loop(sink: Box<dyn Write + Send>, shared: &Shared) {
    let mut out = sink;
    let mut spare: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut failed = false;
    loop {
        let (lines, upto, last, from) = {
            let batch = shared.lock();
            // Sleep until a record comes (no wake-ups while idle); it is written at once.
            let mut batch = shared
                .to_writer
                .wait_while(batch, |b| b.buf.is_empty() && !b.flush_wanted && !b.closed)
                .unwrap_or_else(PoisonError::into_inner);
            batch.flush_wanted = false;
            std::mem::swap(&mut batch.buf, &mut spare);
            (
                std::mem::take(&mut spare),
                batch.appended,
                batch.closed,
                batch.written,
            )
        };
        let mut lines = lines;
        if !lines.is_empty() {
            if let Err(e) = out.write_all(&lines).and_then(|()| out.flush()) {
                if !failed {
                    tracing::error!(error = %e, "audit sink write failed");
                    failed = true;
                }
                // Some of the batch may have reached the sink; count it all as lost.
                if let Some(observer) = shared.observer.get() {
                    observer.dropped(upto - from);
                }
            }
        }
        lines.clear();
        spare = lines;
        let mut batch = shared.lock();
        batch.written = upto;
        shared.to_flushers.notify_all();
        if last {
            return;
        }
        // Rest for one window while the next batch gathers, unless someone needs it now.
        batch.resting = true;
        let (mut batch, _) = shared
            .to_writer
            .wait_timeout_while(batch, BATCH_WINDOW, |b| {
                !b.flush_wanted && !b.closed && b.buf.len() < BATCH_BYTES
            })
            .unwrap_or_else(PoisonError::into_inner);
        batch.resting = false;
    }
}

impl AuditLog {
    /// Records one request.
    pub fn request(&self, record: &RequestRecord) {
        self.send(
            |out, ts| {
                write_line_with(out, ts, "request", |out| {
                    json::request(out, record);
                    Ok(())
                })
            },
            |o| o.request(record),
        );
    }

    /// Records one request whose series the observer handed out earlier ([`Series`]).
    pub fn request_in(&self, record: &RequestRecord, series: &Series) {
        self.send(
            |out, ts| {
                write_line_with(out, ts, "request", |out| {
                    json::request(out, record);
                    Ok(())
                })
            },
            |o| o.request_in(record, series),
        );
    }

    /// Records one credential event.
    pub fn credential(&self, event: &CredentialEvent) {
        self.send(
            |out, ts| write_line(out, ts, "credential", event),
            |o| o.credential(event),
        );
    }

    /// Records one config load.
    pub fn config(&self, event: &ConfigEvent) {
        self.send(
            |out, ts| write_line(out, ts, "config", event),
            |o| o.config(event),
        );
    }

    /// Waits (bounded) until everything sent so far is written.
    pub fn flush(&self) {
        let mut batch = self.shared.lock();
        let target = batch.appended;
        if batch.written >= target || batch.closed {
            return;
        }
        batch.flush_wanted = true;
        self.shared.to_writer.notify_one();
        let (_batch, waited) = self
            .shared
            .to_flushers
            .wait_timeout_while(batch, Duration::from_secs(5), |b| b.written < target)
            .unwrap_or_else(PoisonError::into_inner);
        if waited.timed_out() {
            tracing::warn!("audit flush timed out; the sink is slow");
        }
    }

    /// Appends the record, and shows it to the observer (if any) under the batch lock, so that
    /// the observer has counted every line the writer can have written; or counts it dropped.
    fn send(
        &self,
        write: impl FnOnce(&mut Vec<u8>, SystemTime) -> Result<(), serde_json::Error>,
        observe: impl FnOnce(&dyn Observer),
    ) {
        let observer = self.shared.observer.get().map(|o| &**o);
        // Serialize outside the lock, into this thread's reusable buffer.
        LINE.with_borrow_mut(|bytes| {
            bytes.clear();
            if let Err(e) = write(bytes, SystemTime::now()) {
                tracing::error!(error = %e, "audit record could not be serialized");
                if let Some(o) = observer {
                    o.dropped(1);
                }
                return;
            }
            let wake = {
                let mut batch = self.shared.lock();
                if batch.closed {
                    drop(batch);
                    tracing::error!("audit writer is gone; record dropped");
                    if let Some(o) = observer {
                        o.dropped(1);
                    }
                    return;
                }
                let was_empty = batch.buf.is_empty();
                let was_small = batch.buf.len() < BATCH_BYTES;
                batch.buf.extend_from_slice(bytes);
                batch.appended += 1;
                if let Some(o) = observer {
                    observe(o);
                }
                (was_empty && !batch.resting) || (was_small && batch.buf.len() >= BATCH_BYTES)
            };
            if wake {
                self.shared.to_writer.notify_one();
            }
            // Do not let one huge record keep a huge buffer alive on this thread.
            if bytes.capacity() > 64 * 1024 {
                *bytes = Vec::with_capacity(1024);
            }
        });
    }
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

thread_local! {
    /// The last second a record was stamped in, and its `YYYY-MM-DDTHH:MM:SS` text.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// `t` as [`rfc3339`] writes it, appended to `out` without the formatter: the date and time of
/// day are formatted once per second (per thread), the milliseconds each time. An error, as
/// humantime's, for a time it cannot write (before 1970, after 9999).
fn write_rfc3339_millis(out: &mut Vec<u8>, t: SystemTime) -> std::fmt::Result {
    use std::fmt::Write as _;
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| std::fmt::Error)?;
    let secs = since.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        let mut whole = String::with_capacity(20);
        let second = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        write!(whole, "{}", humantime::format_rfc3339_seconds(second))?;
        // `YYYY-MM-DDTHH:MM:SSZ`.
        let [date_time @ .., b'Z'] = whole.as_bytes() else {
            return Err(std::fmt::Error);
        };
        text = date_time.try_into().map_err(|_| std::fmt::Error)?;
        SECOND.set((secs, text));
    }
    let millis = since.subsec_millis();
    out.extend_from_slice(&text);
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
    Ok(())
}

/// RFC 3339 UTC with milliseconds. A time RFC 3339 cannot write (before 1970, after 9999: an
/// issuer's answer can say anything) comes out as `SystemTime`'s `Debug` text instead of a panic
/// (humantime panics on the first and errs on the second).
pub fn rfc3339(t: SystemTime) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(24);
    if t < SystemTime::UNIX_EPOCH || write!(out, "{}", humantime::format_rfc3339_millis(t)).is_err()
    {
        return format!("{t:?}");
    }
    out
}

/// Replaces every query value with `REDACTED`, keeping names: `/p?a=1&b` → `/p?a=REDACTED&b`.
/// Query values routinely carry tokens and personal data; names are enough to audit.
pub fn redact_query(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) => {
                out.push_str(name);
                out.push_str("=REDACTED");
            }
            None => out.push_str(pair),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_is_humantimes_to_the_millisecond() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut stamps = vec![
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + Duration::from_millis(999),
            SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799),
            SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800),
            SystemTime::now(),
        ];
        let now = SystemTime::now();
        for _ in 0..5_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Mostly near one another (the cached second is reused), sometimes anywhere.
            let nanos = if seed.is_multiple_of(4) {
                seed % 4_000_000_000_000_000_000
            } else {
                seed % 3_000_000_000
            };
            stamps.push(now + Duration::from_nanos(nanos));
            stamps.push(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos));
        }
        // What humantime cannot write is said another way, never a panic.
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert!(
            rfc3339(before).contains("tv_sec: -1"),
            "{}",
            rfc3339(before)
        );
        let after = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert!(
            rfc3339(after).contains("253402300800"),
            "{}",
            rfc3339(after)
        );
        assert!(write_rfc3339_millis(&mut Vec::new(), before).is_err());
        for t in stamps {
            use std::fmt::Write as _;
            let mut out = Vec::new();
            let mut want = String::new();
            let wanted = write!(want, "{}", humantime::format_rfc3339_millis(t));
            match write_rfc3339_millis(&mut out, t) {
                Ok(()) => {
                    assert_eq!(String::from_utf8(out).unwrap(), want, "{t:?}");
                    assert_eq!(rfc3339(t), want);
                }
                Err(_) => assert!(wanted.is_err(), "{t:?}: refused, humantime wrote {want}"),
            }
        }
    }

    #[test]
    fn a_line_is_time_type_then_the_records_fields() {
        #[derive(Serialize)]
        struct Two {
            a: u8,
            b: &'static str,
        }
        #[derive(Serialize)]
        struct Empty {}
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_500);
        let mut out = b"kept".to_vec();
        write_line(&mut out, at, "request", &Two { a: 1, b: "x\"y" }).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "kept{\"ts\":\"1970-01-01T00:00:01.500Z\",\"type\":\"request\",\"a\":1,\"b\":\"x\\\"y\"}\n"
        );
        out.clear();
        write_line(&mut out, at, "config", &Empty {}).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ts": "1970-01-01T00:00:01.500Z", "type": "config"})
        );
        out.clear();
        assert!(write_line(&mut out, at, "request", &[1, 2]).is_err());
        assert!(out.is_empty(), "nothing half-written");
    }
    use std::sync::Arc;
    use std::time::Instant;

    use crate::memory::MemorySink as Shared;

    #[test]
    fn redacts_query_values_only() {
        let cases = [
            ("/p", "/p"),
            ("/p?", "/p?"),
            ("/p?a=1", "/p?a=REDACTED"),
            ("/p?a=1&b=2", "/p?a=REDACTED&b=REDACTED"),
            ("/p?flag&token=abc", "/p?flag&token=REDACTED"),
            ("/p?a==x", "/p?a=REDACTED"),
            ("/p?a=1?b=2", "/p?a=REDACTED"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_query(input), want, "{input}");
        }
    }

    #[test]
    fn writes_one_json_line_per_record() {
        let buf = Shared::default();
        let writer = AuditWriter::spawn(Box::new(buf.clone())).unwrap();
        let log = writer.log();
        log.credential(&CredentialEvent {
            event: CredentialEventKind::Issued,
            credential: "demo".into(),
            issuer: "local".into(),
            credential_id: Some("abc".into()),
            expires_at: None,
            error: None,
            task_id: None,
            grant_id: None,
            issuer_ms: None,
        });
        log.request(&denied());
        writer.flush();
        let lines = buf.records();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["type"], "credential");
        assert_eq!(lines[0]["event"], "issued");
        assert_eq!(lines[0]["credential_id"], "abc");
        assert!(
            lines[0].get("task_id").is_none(),
            "absent for a shared credential"
        );
        assert_eq!(lines[1]["type"], "request");
        assert_eq!(lines[1]["decision"], "deny");
        assert_eq!(lines[1]["code"], "path_not_allowed");
        assert_eq!(lines[1]["port"], 443);
        assert!(lines[1]["ts"].as_str().unwrap().ends_with('Z'));
    }

    /// A denied request, as the proxy records one without a grant.
    fn denied() -> RequestRecord {
        RequestRecord {
            route: Some("github".into()),
            code: Some("path_not_allowed"),
            status: Some(403),
            bytes_out: 10,
            duration_ms: 1.5,
            ..RequestRecord::new(
                RequestId::of(1),
                "forward",
                "GET".into(),
                ("https", "api.github.com".into(), 443),
                "/".into(),
            )
        }
    }

    #[test]
    fn a_request_without_a_grant_keeps_the_fields_it_always_had() {
        let line = serde_json::to_value(denied()).unwrap();
        let mut keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec![
            "request_id",
            "listener",
            "route",
            "credential",
            "credential_id",
            "issuer",
            "method",
            "scheme",
            "host",
            "port",
            "path",
            "decision",
            "code",
            "status",
            "bytes_in",
            "bytes_out",
            "duration_ms",
            "task_id",
            "error",
        ];
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want, "{line}");
        assert!(
            line["task_id"].is_null(),
            "old fields still say null: {line}"
        );
    }

    #[test]
    fn a_request_under_a_grant_names_the_grant_its_parent_user_and_act_chain() {
        let record = RequestRecord {
            task_id: Some("t-42".into()),
            sub: Some("coder".into()),
            grant_id: Some("g-2".into()),
            parent_grant: Some("g-1".into()),
            on_behalf_of: Some("alice".into()),
            act: vec!["root".into(), "planner".into()],
            ..denied()
        };
        let line = serde_json::to_value(record).unwrap();
        assert_eq!(line["task_id"], "t-42");
        assert_eq!(line["sub"], "coder");
        assert_eq!(line["grant_id"], "g-2");
        assert_eq!(line["parent_grant"], "g-1");
        assert_eq!(line["on_behalf_of"], "alice");
        assert_eq!(line["act"], serde_json::json!(["root", "planner"]));

        // A root grant: no parent, no act chain; those two stay out of the line.
        let root = RequestRecord {
            task_id: Some("t-42".into()),
            sub: Some("planner".into()),
            grant_id: Some("g-1".into()),
            ..denied()
        };
        let line = serde_json::to_value(root).unwrap();
        assert_eq!(line["grant_id"], "g-1");
        for absent in ["parent_grant", "on_behalf_of", "act"] {
            assert!(line.get(absent).is_none(), "{absent}: {line}");
        }
    }

    fn event(id: usize) -> CredentialEvent {
        CredentialEvent {
            event: CredentialEventKind::Renewed,
            credential: "demo".into(),
            issuer: "local".into(),
            credential_id: Some(format!("id-{id}")),
            expires_at: None,
            error: None,
            task_id: None,
            grant_id: None,
            issuer_ms: None,
        }
    }

    #[test]
    fn records_from_many_threads_arrive_whole_and_in_each_threads_order() {
        let buf = Shared::default();
        let writer = AuditWriter::spawn(Box::new(buf.clone())).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = writer.log();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        log.credential(&event(t * 10_000 + i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        writer.flush();
        let ids: Vec<usize> = buf
            .records()
            .iter()
            .map(|l| l["credential_id"].as_str().unwrap()[3..].parse().unwrap())
            .collect();
        assert_eq!(ids.len(), 8000);
        for t in 0..4 {
            let mine: Vec<usize> = ids.iter().copied().filter(|i| i / 10_000 == t).collect();
            let want: Vec<usize> = (0..2000).map(|i| t * 10_000 + i).collect();
            assert_eq!(mine, want, "thread {t}");
        }
    }

    #[test]
    fn a_record_is_written_without_a_flush_within_the_batch_window() {
        let buf = Shared::default();
        let writer = AuditWriter::spawn(Box::new(buf.clone())).unwrap();
        writer.log().credential(&event(1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while buf.records().is_empty() {
            assert!(Instant::now() < deadline, "the record was never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(buf.records().len(), 1);
        drop(writer);
    }

    #[test]
    fn shutdown_writes_everything_recorded_before_it_and_drops_what_comes_after() {
        let buf = Shared::default();
        let writer = AuditWriter::spawn(Box::new(buf.clone())).unwrap();
        let log = writer.log();
        for i in 0..100 {
            log.credential(&event(i));
        }
        writer.shutdown();
        assert_eq!(buf.records().len(), 100);
        log.credential(&event(100));
        log.flush();
        std::thread::sleep(BATCH_WINDOW * 2);
        assert_eq!(buf.records().len(), 100);
    }

    #[derive(Default)]
    struct Counts {
        requests: std::sync::atomic::AtomicU64,
        credentials: std::sync::atomic::AtomicU64,
        dropped: std::sync::atomic::AtomicU64,
    }
    impl Observer for Counts {
        fn request(&self, _: &RequestRecord) {
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn credential(&self, _: &CredentialEvent) {
            self.credentials
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn dropped(&self, n: u64) {
            self.dropped
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn get(a: &std::sync::atomic::AtomicU64) -> u64 {
        a.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn the_observer_sees_each_record_appended_and_counts_what_is_lost() {
        let buf = Shared::default();
        let writer = AuditWriter::spawn(Box::new(buf.clone())).unwrap();
        let counts = Arc::new(Counts::default());
        writer.observe(Arc::clone(&counts) as Arc<dyn Observer>);
        let log = writer.log();
        log.request(&denied());
        log.request(&denied());
        log.credential(&event(1));
        // Every line written has been observed already.
        assert!(
            get(&counts.requests)
                >= buf
                    .records()
                    .iter()
                    .filter(|l| l["type"] == "request")
                    .count() as u64
        );
        log.flush();
        assert_eq!(get(&counts.requests), 2);
        assert_eq!(get(&counts.credentials), 1);
        assert_eq!(get(&counts.dropped), 0);
        writer.shutdown();
        log.request(&denied());
        assert_eq!(
            get(&counts.requests),
            2,
            "a record after shutdown is not counted as taken"
        );
        assert_eq!(get(&counts.dropped), 1);
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_a_failing_sink_did_not_take_are_counted_dropped() {
        let writer = AuditWriter::spawn(Box::new(Broken)).unwrap();
        let counts = Arc::new(Counts::default());
        writer.observe(Arc::clone(&counts) as Arc<dyn Observer>);
        let log = writer.log();
        for i in 0..5 {
            log.credential(&event(i));
        }
        log.flush();
        assert_eq!(get(&counts.credentials), 5);
        assert_eq!(get(&counts.dropped), 5);
    }
}
