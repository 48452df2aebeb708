//! The audit trail: one JSON line per request (allowed, denied or tunnelled) and one per
//! credential event. Records are serialized on the caller's thread and written by a dedicated
//! writer thread, so a slow sink never blocks the request path. Audit is separate from
//! diagnostic logs (those go to stderr through `tracing`) and never carries a credential value.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use serde::Serialize;

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    pub request_id: String,
    /// "forward" or "routes".
    pub listener: &'static str,
    pub route: Option<String>,
    pub credential: Option<String>,
    pub credential_id: Option<String>,
    pub issuer: Option<String>,
    pub method: String,
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
    /// Path with query values replaced by `REDACTED` (see [`redact_query`]).
    pub path: String,
    pub decision: Outcome,
    /// The error code of DESIGN.md §4 when refused or failed.
    pub code: Option<&'static str>,
    /// Status sent to the agent.
    pub status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    /// The agent's task ID, when it sent one.
    pub task_id: Option<String>,
    /// Set when the exchange broke off after the response started: `client_aborted`,
    /// `upstream_body_error`.
    pub error: Option<&'static str>,
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
}

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    ts: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    record: &'a T,
}

enum Message {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

/// A handle to the audit writer. Cheap to clone; every clone writes to the same sink.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Message>,
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
        let (tx, rx) = mpsc::channel::<Message>();
        let thread = std::thread::Builder::new()
            .name("sidekey-audit".into())
            .spawn(move || write_loop(sink, rx))?;
        Ok(AuditWriter {
            log: AuditLog { tx },
            thread: Some(thread),
        })
    }

    /// A handle for producers.
    pub fn log(&self) -> AuditLog {
        self.log.clone()
    }

    /// Waits until everything sent before this call is written and flushed.
    pub fn flush(&self) {
        self.log.flush();
    }

    /// Flushes and stops the writer once every handle is gone (or right away if flushed).
    pub fn shutdown(mut self) {
        self.log.flush();
        // Dropping our sender lets the thread exit once other handles are dropped; we do not
        // wait for those (tasks may still hold clones), only for the flush above.
        drop(self.thread.take());
    }
}

fn write_loop(sink: Box<dyn Write + Send>, rx: mpsc::Receiver<Message>) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, sink);
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Message::Line(bytes) => {
                    if let Err(e) = out.write_all(&bytes) {
                        if !failed {
                            tracing::error!(error = %e, "audit sink write failed");
                            failed = true;
                        }
                    }
                }
                Message::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        // Nothing queued: flush so a reader sees complete lines promptly.
        if let Err(e) = out.flush() {
            if !failed {
                tracing::error!(error = %e, "audit sink flush failed");
                failed = true;
            }
        }
    }
}

impl AuditLog {
    /// Records one request.
    pub fn request(&self, record: &RequestRecord) {
        self.send("request", record);
    }

    /// Records one credential event.
    pub fn credential(&self, event: &CredentialEvent) {
        self.send("credential", event);
    }

    /// Waits (bounded) until everything sent so far is written.
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::channel();
        if self.tx.send(Message::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(std::time::Duration::from_secs(5));
        }
    }

    fn send<T: Serialize>(&self, kind: &'static str, record: &T) {
        let line = Line {
            ts: now_rfc3339(),
            kind,
            record,
        };
        match serde_json::to_vec(&line) {
            Ok(mut bytes) => {
                bytes.push(b'\n');
                if self.tx.send(Message::Line(bytes)).is_err() {
                    tracing::error!("audit writer is gone; record dropped");
                }
            }
            Err(e) => tracing::error!(error = %e, "audit record could not be serialized"),
        }
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
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
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

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
        });
        log.request(&RequestRecord {
            request_id: "r1".into(),
            listener: "forward",
            route: Some("github".into()),
            credential: None,
            credential_id: None,
            issuer: None,
            method: "GET".into(),
            scheme: "https",
            host: "api.github.com".into(),
            port: 443,
            path: "/".into(),
            decision: Outcome::Deny,
            code: Some("path_not_allowed"),
            status: Some(403),
            bytes_in: 0,
            bytes_out: 10,
            duration_ms: 1.5,
            task_id: None,
            error: None,
        });
        writer.flush();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["type"], "credential");
        assert_eq!(lines[0]["event"], "issued");
        assert_eq!(lines[0]["credential_id"], "abc");
        assert_eq!(lines[1]["type"], "request");
        assert_eq!(lines[1]["decision"], "deny");
        assert_eq!(lines[1]["code"], "path_not_allowed");
        assert_eq!(lines[1]["port"], 443);
        assert!(lines[1]["ts"].as_str().unwrap().ends_with('Z'));
    }
}
