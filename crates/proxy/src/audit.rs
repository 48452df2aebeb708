//! Building the one audit record of a request as the exchange progresses, and writing it
//! exactly once, whichever way the exchange ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sidekey_audit::{redact_query, AuditLog, Outcome, RequestRecord};
use sidekey_policy::Target;

use crate::error::ErrorCode;

/// A request's audit record, not yet written.
pub struct PendingRecord {
    log: AuditLog,
    record: RequestRecord,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
}

impl PendingRecord {
    pub fn new(
        log: AuditLog,
        request_id: &str,
        listener: &'static str,
        method: &str,
        target: &Target,
        path_and_query: &str,
        started: Instant,
    ) -> Self {
        Self::with_target_text(
            log,
            request_id,
            listener,
            method,
            (target.scheme.as_str(), target.host.to_string(), target.port),
            path_and_query,
            started,
        )
    }

    /// For requests refused before their target could be identified: the target as the
    /// agent wrote it (scheme, host text, port).
    pub fn with_target_text(
        log: AuditLog,
        request_id: &str,
        listener: &'static str,
        method: &str,
        (scheme, host, port): (&'static str, String, u16),
        path_and_query: &str,
        started: Instant,
    ) -> Self {
        PendingRecord {
            log,
            record: RequestRecord {
                request_id: request_id.to_string(),
                listener,
                route: None,
                credential: None,
                credential_id: None,
                issuer: None,
                method: method.to_string(),
                scheme,
                host,
                port,
                path: redact_query(path_and_query),
                decision: Outcome::Deny,
                code: None,
                status: None,
                bytes_in: 0,
                bytes_out: 0,
                duration_ms: 0.0,
                task_id: None,
                error: None,
            },
            started,
            bytes_in: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The counter the request body adds to.
    pub fn bytes_in_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes_in)
    }

    pub fn set_route(&mut self, route: &str) {
        self.record.route = Some(route.to_string());
    }

    pub fn set_credential(&mut self, name: &str, issuer: Option<&str>, id: Option<&str>) {
        self.record.credential = Some(name.to_string());
        self.record.issuer = issuer.map(str::to_string);
        self.record.credential_id = id.map(str::to_string);
    }

    pub fn set_decision(&mut self, decision: Outcome) {
        self.record.decision = decision;
    }

    pub fn set_task_id(&mut self, task_id: Option<String>) {
        self.record.task_id = task_id;
    }

    pub fn set_status(&mut self, status: u16) {
        self.record.status = Some(status);
    }

    /// Writes the record of a request refused or failed before any upstream response. The
    /// decision stays what policy said: a request allowed by a route that then failed upstream
    /// is `allow` with the failure's code.
    pub fn finish_refused(mut self, code: ErrorCode, body_len: u64) {
        self.record.code = Some(code.as_str());
        self.record.status = Some(code.status().as_u16());
        self.record.bytes_out = body_len;
        self.write();
    }

    /// Writes the record of a forwarded request once its response body ended.
    pub fn finish_streamed(mut self, bytes_out: u64, error: Option<&'static str>) {
        self.record.bytes_out = bytes_out;
        self.record.error = error;
        self.write();
    }

    fn write(&mut self) {
        self.record.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.record.duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.log.request(&self.record);
    }
}
