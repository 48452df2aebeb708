//! OTLP export of one span per request (`traces:`). The span is built from what the request
//! already has when its audit record is written: the trace context sidekey forwarded upstream
//! (so the span's ID is the parent the upstream sees, and its parent is the agent's span) and
//! the record itself (route, decision, code, status, bytes, task and grant). Spans are handed to
//! the OpenTelemetry SDK's batch processor — a bounded queue and its own thread: a full queue
//! drops spans, never waits — and sent as OTLP/HTTP protobuf through a reqwest client with
//! sidekey's TLS settings, on sidekey's runtime.
//!
//! A span carries no credential: the record it is built from never holds one, and the credential
//! ID is left out too (the request and trace IDs lead to the audit record, which has it).

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SpanData, SpanEvents, SpanExporter, SpanLinks, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use sidekey_audit::{Outcome, RequestRecord};

/// Answers from the collector larger than this are cut (they are empty or a few bytes).
const MAX_ANSWER: usize = 64 * 1024;
/// How long shutdown waits for the last spans to be sent.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Export failures are logged at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What exporting needs to start.
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    /// OTLP/HTTP traces URL.
    pub endpoint: &'a str,
    pub ca_file: Option<&'a Path>,
    /// None: `OTEL_SERVICE_NAME`, else `sidekey`.
    pub service_name: Option<&'a str>,
    /// One export call.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("traces: {0}")]
    Setup(String),
}

/// The trace IDs of one request, as forwarded upstream (lower-case hex).
#[derive(Debug, Clone, Copy)]
pub struct SpanIds<'a> {
    pub trace_id: &'a str,
    /// sidekey's span: the upstream request's parent.
    pub span_id: &'a str,
    /// The agent's span, when sidekey continued its trace.
    pub parent_span_id: Option<&'a str>,
}

/// The span exporter: one per process.
pub struct Spans {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

impl fmt::Debug for Spans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spans").finish_non_exhaustive()
    }
}

impl Spans {
    /// Starts the batch processor and its exporter. Must be called on a tokio runtime: the
    /// exporter's requests run on it. The batch processor reads the standard `OTEL_BSP_*`
    /// variables (queue size, batch size, delay), the exporter `OTEL_EXPORTER_OTLP_HEADERS`
    /// and `OTEL_EXPORTER_OTLP_COMPRESSION`.
    pub fn start(settings: &Settings<'_>) -> Result<Spans, TracesError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| TracesError::Setup(format!("no runtime to send spans on: {e}")))?;
        let extra: Vec<&Path> = settings.ca_file.into_iter().collect();
        let mut tls = sidekey_tls::upstream_client_config(&extra)
            .map_err(|e| TracesError::Setup(e.to_string()))?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut builder = reqwest::Client::builder();
        // Spans go to the collector directly, like issuer calls over plain http: a cluster's
        // collector is not behind a corporate proxy.
        if settings.endpoint.starts_with("http://") {
            builder = builder.no_proxy();
        }
        let http = builder
            .tls_backend_preconfigured(tls)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sidekey/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TracesError::Setup(format!("cannot build the HTTP client: {e}")))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OnRuntime { http, runtime })
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.endpoint)
            .with_timeout(settings.timeout)
            .build()
            .map_err(|e| TracesError::Setup(format!("cannot build the OTLP exporter: {e}")))?;
        let mut processor = BatchSpanProcessor::builder(Logged {
            inner: exporter,
            endpoint: settings.endpoint.to_string(),
            last_logged: Mutex::new(None),
        })
        .build();
        processor.set_resource(&resource(settings.service_name));
        Ok(Spans {
            processor,
            scope: InstrumentationScope::builder("sidekey")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// Queues the span of the request `record` describes, which ran from `start` to `end`.
    /// Never blocks: a full queue drops the span.
    pub fn request(
        &self,
        record: &RequestRecord,
        ids: SpanIds<'_>,
        start: SystemTime,
        end: SystemTime,
    ) {
        let (Ok(trace_id), Ok(span_id)) = (
            TraceId::from_hex(ids.trace_id),
            SpanId::from_hex(ids.span_id),
        ) else {
            return;
        };
        let parent = ids
            .parent_span_id
            .and_then(|p| SpanId::from_hex(p).ok())
            .unwrap_or(SpanId::INVALID);
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: parent != SpanId::INVALID,
            span_kind: SpanKind::Client,
            name: name(record),
            start_time: start,
            end_time: end,
            attributes: attributes(record),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: status(record),
            instrumentation_scope: self.scope.clone(),
        });
    }

    /// Sends what is queued and stops. Blocks (up to a few seconds): call it off the runtime's
    /// worker threads (e.g. in `spawn_blocking`).
    pub fn shutdown(&self) {
        if let Err(e) = self.processor.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "traces: the last spans may not have been sent");
        }
    }
}

/// `service.name` from the config, else `OTEL_SERVICE_NAME`, else `sidekey`; the resource also
/// takes `OTEL_RESOURCE_ATTRIBUTES` (e.g. the pod and namespace, from the downward API).
fn resource(service_name: Option<&str>) -> Resource {
    let builder = Resource::builder();
    let from_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty());
    match service_name {
        Some(name) => builder.with_service_name(name.to_string()),
        None if from_env => builder,
        None => builder.with_service_name("sidekey"),
    }
    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
    .build()
}

/// `GET payments-api`: the method and the route (low-cardinality, like a URL template), or the
/// method alone for a request no route took.
fn name(record: &RequestRecord) -> Cow<'static, str> {
    match &record.route {
        Some(route) => format!("{} {route}", record.method).into(),
        None => record.method.clone(),
    }
}

/// OpenTelemetry's HTTP client attributes, then sidekey's own.
fn attributes(record: &RequestRecord) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(24);
    let (path, query) = match record.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (record.path.as_str(), None),
    };
    out.push(KeyValue::new("http.request.method", record.method.clone()));
    out.push(KeyValue::new("url.scheme", record.scheme));
    out.push(KeyValue::new("server.address", record.host.clone()));
    out.push(KeyValue::new("server.port", i64::from(record.port)));
    out.push(KeyValue::new("url.path", path.to_string()));
    if let Some(query) = query {
        // Values are already `REDACTED` in the record.
        out.push(KeyValue::new("url.query", query.to_string()));
    }
    if let Some(status) = record.status {
        out.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    out.push(KeyValue::new(
        "http.request.body.size",
        count(record.bytes_in),
    ));
    out.push(KeyValue::new(
        "http.response.body.size",
        count(record.bytes_out),
    ));
    if let Some(kind) = error_type(record) {
        out.push(KeyValue::new("error.type", kind));
    }
    out.push(KeyValue::new(
        "sidekey.request_id",
        record.request_id.to_string(),
    ));
    out.push(KeyValue::new("sidekey.listener", record.listener));
    out.push(KeyValue::new("sidekey.decision", decision(record.decision)));
    let optional = [
        ("sidekey.route", record.route.as_deref()),
        ("sidekey.credential", record.credential.as_deref()),
        ("sidekey.issuer", record.issuer.as_deref()),
        (
            "sidekey.client_certificate",
            record.client_certificate.as_deref(),
        ),
        ("sidekey.task_id", record.task_id.as_deref()),
        ("sidekey.grant.sub", record.sub.as_deref()),
        ("sidekey.grant.id", record.grant_id.as_deref()),
        ("sidekey.grant.parent", record.parent_grant.as_deref()),
        ("sidekey.on_behalf_of", record.on_behalf_of.as_deref()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            out.push(KeyValue::new(key, value.to_string()));
        }
    }
    if let Some(code) = record.code {
        out.push(KeyValue::new("sidekey.code", code));
    }
    if let Some(error) = record.error {
        out.push(KeyValue::new("sidekey.error", error));
    }
    if !record.act.is_empty() {
        let act: Vec<StringValue> = record.act.iter().cloned().map(StringValue::from).collect();
        out.push(KeyValue::new(
            "sidekey.act",
            Value::Array(Array::String(act)),
        ));
    }
    if let Some(cedar) = &record.cedar {
        out.push(KeyValue::new("sidekey.cedar.decision", cedar.decision));
        let policies: Vec<StringValue> = cedar
            .policies
            .iter()
            .cloned()
            .map(StringValue::from)
            .collect();
        out.push(KeyValue::new(
            "sidekey.cedar.policies",
            Value::Array(Array::String(policies)),
        ));
    }
    // That the upstream refused a credential, never which one (no credential ID in a span).
    if record.rejected_credential_id.is_some() {
        out.push(KeyValue::new("sidekey.credential_rejected", true));
        out.push(KeyValue::new("sidekey.retried", record.retried));
    }
    if let Some(ws) = &record.websocket {
        if let Some(code) = ws.close_code {
            out.push(KeyValue::new(
                "sidekey.websocket.close_code",
                i64::from(code),
            ));
        }
        if let Some(by) = ws.closed_by {
            out.push(KeyValue::new("sidekey.websocket.closed_by", by));
        }
        out.push(KeyValue::new(
            "sidekey.websocket.messages_in",
            count(ws.messages_in),
        ));
        out.push(KeyValue::new(
            "sidekey.websocket.messages_out",
            count(ws.messages_out),
        ));
    }
    out
}

fn count(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn decision(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allow => "allow",
        Outcome::Deny => "deny",
        Outcome::Tunnel => "tunnel",
    }
}

/// sidekey's error code (a refusal, or a failure on the way); an exchange that broke off; else
/// the status of an error answer (4xx and 5xx are errors for a client span). Only the last
/// allocates.
fn error_type(record: &RequestRecord) -> Option<Cow<'static, str>> {
    if let Some(code) = record.code {
        return Some(Cow::Borrowed(code));
    }
    if let Some(error) = record.error {
        return Some(Cow::Borrowed(error));
    }
    record
        .status
        .filter(|s| *s >= 400)
        .map(|status| Cow::Owned(status.to_string()))
}

fn status(record: &RequestRecord) -> Status {
    match (record.code, error_type(record)) {
        (Some(code), _) => Status::error(code),
        (None, Some(_)) => Status::error(""),
        (None, None) => Status::Unset,
    }
}

/// The exporter's HTTP client: sidekey's reqwest client, its requests run as tasks on sidekey's
/// runtime (the batch processor calls the exporter from a thread of its own, outside it).
#[derive(Debug)]
struct OnRuntime {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request.map(reqwest::Body::from))?;
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let mut response = http.execute(request).await?;
            let mut answer = http::Response::builder().status(response.status());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                let room = MAX_ANSWER.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if room <= chunk.len() {
                    break;
                }
            }
            if let Some(headers) = answer.headers_mut() {
                *headers = response.headers().clone();
            }
            Ok::<_, HttpError>(answer.body(Bytes::from(body))?)
        });
        sent.await?
    }
}

/// Logs failed exports (at most once a minute; the batch processor has no logger of its own
/// here) and says when they work again.
struct Logged<E> {
    inner: E,
    endpoint: String,
    /// When a failure was last logged; None while exports succeed.
    last_logged: Mutex<Option<Instant>>,
}

impl<E: fmt::Debug> fmt::Debug for Logged<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<E: SpanExporter> SpanExporter for Logged<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &result {
            Err(e) => {
                if last.is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        spans,
                        error = %e,
                        "traces: cannot export spans; they are dropped (logged at most once a minute)"
                    );
                    *last = Some(Instant::now());
                }
            }
            Ok(()) => {
                if last.take().is_some() {
                    tracing::info!(endpoint = %self.endpoint, "traces: spans are exported again");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RequestRecord {
        RequestRecord {
            route: Some("payments".into()),
            credential: Some("pay".into()),
            credential_id: Some("lease/abc".into()),
            issuer: Some("vault".into()),
            decision: Outcome::Allow,
            status: Some(201),
            bytes_in: 12,
            bytes_out: 34,
            duration_ms: 5.0,
            task_id: Some("t-9".into()),
            trace_id: sidekey_audit::HexId::parse("0af7651916cd43dd8448eb211c80319c"),
            sub: Some("planner".into()),
            grant_id: Some("g1".into()),
            on_behalf_of: Some("alice".into()),
            act: vec!["orchestrator".into()],
            ..RequestRecord::new(
                sidekey_audit::RequestId::of(1),
                "forward",
                "POST".into(),
                ("https", "api.example.com".into(), 443),
                "/v1/charges?key=REDACTED".into(),
            )
        }
    }

    fn get<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        attrs
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn attributes_follow_the_http_conventions_and_never_carry_the_credential_id() {
        let r = record();
        let attrs = attributes(&r);
        assert_eq!(get(&attrs, "url.path"), Some(&Value::from("/v1/charges")));
        assert_eq!(get(&attrs, "url.query"), Some(&Value::from("key=REDACTED")));
        assert_eq!(get(&attrs, "server.port"), Some(&Value::I64(443)));
        assert_eq!(
            get(&attrs, "http.response.status_code"),
            Some(&Value::I64(201))
        );
        assert_eq!(
            get(&attrs, "sidekey.grant.sub"),
            Some(&Value::from("planner"))
        );
        assert_eq!(get(&attrs, "error.type"), None);
        assert!(attrs.iter().all(|kv| kv.value.as_str() != "lease/abc"));
        assert_eq!(name(&r), "POST payments");
        assert_eq!(status(&r), Status::Unset);
    }

    #[test]
    fn cedar_retries_and_websockets_are_attributes_without_credential_ids() {
        let mut r = record();
        r.cedar = Some(sidekey_audit::CedarDecision {
            decision: "allow",
            policies: vec!["read-issues".into()],
        });
        r.rejected_credential_id = Some("lease/old".into());
        r.retried = true;
        r.websocket = Some(sidekey_audit::WebSocketEnd {
            close_code: Some(1000),
            closed_by: Some("agent"),
            messages_in: 3,
            messages_out: 4,
        });
        let attrs = attributes(&r);
        assert_eq!(
            get(&attrs, "sidekey.cedar.decision"),
            Some(&Value::from("allow"))
        );
        assert_eq!(
            get(&attrs, "sidekey.cedar.policies"),
            Some(&Value::Array(Array::String(vec!["read-issues".into()])))
        );
        assert_eq!(get(&attrs, "sidekey.retried"), Some(&Value::Bool(true)));
        assert_eq!(
            get(&attrs, "sidekey.websocket.close_code"),
            Some(&Value::I64(1000))
        );
        assert_eq!(
            get(&attrs, "sidekey.websocket.messages_out"),
            Some(&Value::I64(4))
        );
        assert!(attrs
            .iter()
            .all(|kv| kv.value.as_str() != "lease/old" && kv.value.as_str() != "lease/abc"));
    }

    #[test]
    fn refusals_and_error_answers_are_errors() {
        let mut refused = record();
        refused.route = None;
        refused.decision = Outcome::Deny;
        refused.code = Some("no_route");
        refused.status = Some(403);
        assert_eq!(status(&refused), Status::error("no_route"));
        assert_eq!(
            get(&attributes(&refused), "error.type"),
            Some(&Value::from("no_route"))
        );
        assert_eq!(name(&refused), "POST");

        let mut upstream_404 = record();
        upstream_404.status = Some(404);
        assert_eq!(status(&upstream_404), Status::error(""));
        assert_eq!(
            get(&attributes(&upstream_404), "error.type"),
            Some(&Value::from("404"))
        );
    }
}
