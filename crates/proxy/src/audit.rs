//! The one audit record of a request, built as the exchange progresses and written exactly
//! once, whichever way the exchange ends: by [`PendingRecord::finish`] for a refusal, by
//! [`Metered`] when a response body ends, or when either is dropped first (the agent went
//! away: `client_aborted`).

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use sidekey_audit::{redact_query, AuditLog, Outcome, RequestId, RequestRecord};
use sidekey_body::count::BodyMeter;
use sidekey_body::BoxError;
use sidekey_grants::Grant;
use sidekey_inject::trace::{HexId, TraceContext};
use sidekey_metrics::RouteTimers;
use sidekey_policy::{ErrorCode, Target};
use sidekey_traces::{SpanIds, Spans};

/// A request's audit record, not yet written.
pub struct PendingRecord {
    log: AuditLog,
    /// Boxed: the record (about 600 bytes) moves with the exchange — into the session, the
    /// response body, the WebSocket's task — and a pointer moves cheaper than a copy of it.
    record: Box<RequestRecord>,
    started: Instant,
    /// The request body's bytes (and whether it broke off): made when a body that streams
    /// asks for it ([`PendingRecord::meter`]), so that a request without one (most of them)
    /// allocates none. Bytes known without one are in the record already.
    meter: Option<Arc<BodyMeter>>,
    /// The span exported with the record, when spans are exported and the trace is sampled.
    span: Option<PendingSpan>,
    /// The metrics' series of its route, once known: counted without a lookup by name.
    series: Option<RouteTimers>,
    written: bool,
}

/// What a request's span needs besides its record.
struct PendingSpan {
    spans: Arc<Spans>,
    span_id: HexId<16>,
    parent_span_id: Option<HexId<16>>,
}

impl PendingRecord {
    pub fn new(
        log: AuditLog,
        request_id: RequestId,
        listener: &'static str,
        method: Cow<'static, str>,
        target: &Target,
        path_and_query: &str,
        started: Instant,
    ) -> Self {
        Self::with_target_text(
            log,
            request_id,
            listener,
            method,
            (
                target.scheme.as_str(),
                target.host.shared_text(),
                target.port,
            ),
            path_and_query,
            started,
        )
    }

    /// The record of a CONNECT to `target` on the forward listener, with a fresh request ID.
    pub fn connect(log: AuditLog, target: &Target, started: Instant) -> Self {
        Self::connect_as(log, crate::exchange::new_request_id(), target, started)
    }

    /// [`PendingRecord::connect`] under an ID taken earlier ([`PendingConnect`]).
    fn connect_as(log: AuditLog, request_id: RequestId, target: &Target, started: Instant) -> Self {
        Self::new(
            log,
            request_id,
            crate::forward::LISTENER,
            Cow::Borrowed("CONNECT"),
            target,
            "",
            started,
        )
    }

    /// The request ID this record carries.
    pub fn request_id(&self) -> &RequestId {
        &self.record.request_id
    }

    /// For requests refused before their target could be identified: the target as the
    /// agent wrote it (scheme, host text, port).
    pub fn with_target_text(
        log: AuditLog,
        request_id: RequestId,
        listener: &'static str,
        method: Cow<'static, str>,
        (scheme, host, port): (&'static str, Arc<str>, u16),
        path_and_query: &str,
        started: Instant,
    ) -> Self {
        PendingRecord {
            log,
            record: Box::new(RequestRecord::new(
                request_id,
                listener,
                method,
                (scheme, host, port),
                redact_query(path_and_query),
            )),
            started,
            meter: None,
            span: None,
            series: None,
            written: false,
        }
    }

    /// What a streaming request body adds its bytes to (the same meter for every call).
    pub fn meter(&mut self) -> Arc<BodyMeter> {
        Arc::clone(self.meter.get_or_insert_with(BodyMeter::new))
    }

    /// Request body bytes counted without a meter (a body read whole).
    pub fn add_bytes_in(&mut self, n: u64) {
        self.record.bytes_in += n;
    }

    pub fn set_route(&mut self, route: &Arc<str>) {
        self.record.route = Some(Arc::clone(route));
    }

    /// The metrics' series the record counts in (those of its listener and route).
    pub fn set_series(&mut self, series: &RouteTimers) {
        self.series = Some(series.clone());
    }

    pub fn set_credential(
        &mut self,
        name: &Arc<str>,
        issuer: Option<&Arc<str>>,
        id: Option<&Arc<str>>,
    ) {
        self.record.credential = Some(Arc::clone(name));
        self.record.issuer = issuer.map(Arc::clone);
        self.record.credential_id = id.map(Arc::clone);
    }

    /// The client certificate the request was sent with: its credential's name and serial.
    pub fn set_client_certificate(&mut self, name: &Arc<str>, id: Option<&str>) {
        self.record.client_certificate = Some(Arc::clone(name));
        self.record.client_certificate_id = id.map(str::to_string);
    }

    pub fn set_decision(&mut self, decision: Outcome) {
        self.record.decision = decision;
    }

    pub fn set_task_id(&mut self, task_id: Option<String>) {
        self.record.task_id = task_id;
    }

    /// The trace the request went upstream under; its span is exported with the record when
    /// `spans` is set and the trace is sampled.
    pub fn set_trace(&mut self, trace: &TraceContext, spans: Option<&Arc<Spans>>) {
        self.record.trace_id = Some(trace.trace_id);
        self.span = spans.filter(|_| trace.sampled).map(|spans| PendingSpan {
            spans: Arc::clone(spans),
            span_id: trace.span_id,
            parent_span_id: trace.parent_span_id,
        });
    }

    /// The grant the request or CONNECT went under: task, agent, user and delegation chain.
    pub fn set_grant(&mut self, grant: Option<&Grant>) {
        let Some(grant) = grant else { return };
        let record = &mut self.record;
        record.task_id = Some(grant.task_id.clone());
        record.sub = Some(grant.sub.clone());
        record.grant_id = Some(grant.jti.clone());
        record.parent_grant = grant.parent.clone();
        record.on_behalf_of = grant.on_behalf_of.clone();
        record.act = grant.act.clone();
    }

    pub fn set_status(&mut self, status: u16) {
        self.record.status = Some(status);
    }

    /// The status sent, or None when nothing was.
    pub fn set_status_opt(&mut self, status: Option<u16>) {
        self.record.status = status;
    }

    /// Marks the request refused (or failed before any upstream response) with `code`, its
    /// answer `body_len` bytes long. The decision stays what policy said: a request allowed by
    /// a route that then failed upstream is `allow` with the failure's code.
    pub fn set_refused(&mut self, code: ErrorCode, body_len: u64) {
        self.record.code = Some(code.as_str());
        self.record.status = Some(code.status());
        self.record.bytes_out = body_len;
    }

    /// Writes the record as it stands.
    pub fn finish(mut self) {
        self.write();
    }

    /// Writes the record of a forwarded request or tunnel once its response has ended.
    pub fn finish_streamed(mut self, bytes_out: u64, error: Option<&'static str>) {
        self.record.bytes_out = bytes_out;
        self.record.error = error;
        self.write();
    }

    /// Notes that the upstream refused the credential `id` with 401, and whether the request
    /// was sent again with a new one.
    pub fn set_rejected(&mut self, id: &str, retried: bool) {
        self.record.rejected_credential_id = Some(id.to_string());
        self.record.retried = retried;
    }

    /// Notes Cedar's decision on the request.
    pub fn set_cedar(&mut self, decision: sidekey_audit::CedarDecision) {
        self.record.cedar = Some(decision);
    }

    /// Notes how the WebSocket this request opened ended (written by `finish_streamed`).
    pub fn set_websocket(&mut self, end: sidekey_audit::WebSocketEnd) {
        self.record.websocket = Some(end);
    }

    fn write(&mut self) {
        if self.written {
            return;
        }
        self.written = true;
        if let Some(meter) = &self.meter {
            self.record.bytes_in += meter.bytes();
        }
        let elapsed = self.started.elapsed();
        self.record.duration_ms = elapsed.as_secs_f64() * 1000.0;
        match &self.series {
            Some(series) => self.log.request_in(&self.record, series),
            None => self.log.request(&self.record),
        }
        if let (Some(span), Some(trace_id)) = (self.span.take(), &self.record.trace_id) {
            let end = SystemTime::now();
            let ids = SpanIds {
                trace_id,
                span_id: &span.span_id,
                parent_span_id: span.parent_span_id.as_deref(),
            };
            let start = end.checked_sub(elapsed).unwrap_or(end);
            span.spans.request(&self.record, ids, start, end);
        }
    }
}

impl Drop for PendingRecord {
    /// A record nobody finished: the exchange was dropped on its way (the agent closed the
    /// connection or reset the stream while sidekey waited on an issuer or the upstream).
    fn drop(&mut self) {
        if !self.written {
            self.record.error.get_or_insert("client_aborted");
            self.write();
        }
    }
}

/// The record of an intercepted CONNECT, made only when it is written: held for the tunnel's
/// life (most tunnels serve requests, whose records say what the tunnel did, and this one is
/// never written), it keeps what the record needs — its request ID and start taken at the
/// CONNECT, the target, the grant — instead of the record itself (about 600 bytes). Written as a
/// CONNECT allowed with 200, by [`PendingConnect::finish`], or when dropped unfinished
/// (`client_aborted`, as a [`PendingRecord`] would).
pub struct PendingConnect {
    log: AuditLog,
    request_id: RequestId,
    started: Instant,
    target: Target,
    grant: Option<Arc<Grant>>,
    done: bool,
}

impl PendingConnect {
    pub fn new(log: AuditLog, target: Target, grant: Option<Arc<Grant>>, started: Instant) -> Self {
        PendingConnect {
            log,
            request_id: crate::exchange::new_request_id(),
            started,
            target,
            grant,
            done: false,
        }
    }

    /// The record, as [`PendingRecord::connect`] would have made it at the CONNECT.
    fn record(&self) -> PendingRecord {
        let mut record = PendingRecord::connect_as(
            self.log.clone(),
            self.request_id,
            &self.target,
            self.started,
        );
        record.set_grant(self.grant.as_deref());
        record.set_decision(Outcome::Allow);
        record.set_status(200);
        record
    }

    /// Writes the record: the tunnel ended, no request served, for `error`.
    pub fn finish(mut self, error: &'static str) {
        self.done = true;
        self.record().finish_streamed(0, Some(error));
    }

    /// The tunnel's requests have their records: none for the CONNECT.
    pub fn discard(mut self) {
        self.done = true;
    }
}

impl Drop for PendingConnect {
    fn drop(&mut self) {
        if !self.done {
            // Dropped unwritten, the record writes itself as `client_aborted`.
            drop(self.record());
        }
    }
}

/// The response body on its way to the agent: counts bytes and finishes the audit record
/// exactly once — at end of stream, on an upstream error, or when dropped early.
pub struct Metered<B: Body> {
    inner: B,
    bytes: u64,
    record: Option<PendingRecord>,
}

impl<B: Body> Metered<B> {
    pub fn new(inner: B, record: PendingRecord) -> Self {
        Metered {
            inner,
            bytes: 0,
            record: Some(record),
        }
    }

    fn finish(&mut self, error: Option<&'static str>) {
        if let Some(record) = self.record.take() {
            record.finish_streamed(self.bytes, error);
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Some("upstream_body_error"));
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Metered<B> {
    fn drop(&mut self) {
        // Dropped before the end: the agent went away mid-stream. Bodies hyper never polls
        // (HEAD, 304, empty) are already at their end and count as complete.
        let error = if self.inner.is_end_stream() {
            None
        } else {
            Some("client_aborted")
        };
        self.finish(error);
    }
}

#[cfg(test)]
mod tests {
    use sidekey_audit::memory::MemorySink;
    use sidekey_audit::AuditWriter;
    use sidekey_policy::{CanonicalHost, Scheme};

    use super::*;

    /// An intercepted CONNECT's record is written once when the tunnel ends without a request,
    /// as a CONNECT allowed with 200 and the reason; never when the tunnel's requests have
    /// their own; and as `client_aborted` when dropped unfinished (the task went away).
    #[test]
    fn a_connect_record_is_written_only_when_finished_or_dropped() {
        let sink = MemorySink::default();
        let writer = AuditWriter::spawn(Box::new(sink.clone())).unwrap();
        let target = Target {
            scheme: Scheme::Https,
            host: CanonicalHost::parse("api.test.local").unwrap(),
            port: 443,
        };
        let pending = || PendingConnect::new(writer.log(), target.clone(), None, Instant::now());

        pending().discard();
        let finished = pending();
        let finished_id = finished.request_id;
        finished.finish("no_request");
        let dropped = pending();
        let dropped_id = dropped.request_id;
        drop(dropped);
        writer.flush();

        let records = sink.records();
        assert_eq!(records.len(), 2, "{records:?}");
        for (record, (id, error)) in records
            .iter()
            .zip([(finished_id, "no_request"), (dropped_id, "client_aborted")])
        {
            assert_eq!(record["request_id"], id.as_str(), "{record}");
            assert_eq!(record["method"], "CONNECT", "{record}");
            assert_eq!(record["host"], "api.test.local", "{record}");
            assert_eq!(record["port"], 443, "{record}");
            assert_eq!(record["decision"], "allow", "{record}");
            assert_eq!(record["status"], 200, "{record}");
            assert_eq!(record["error"], error, "{record}");
        }
    }
}
