//! sidekey's Prometheus metrics, served by the admin listener at `/metrics`. One [`Metrics`]
//! per process: it outlives config reloads, so counters never restart while the process runs.
//!
//! Most metrics are counted from the audit trail itself: [`Metrics`] is the trail's
//! [`Observer`], called for every record as it is appended, so that the trail and the metrics
//! count the same requests, credential events and config loads. The listeners hold
//! [`Metrics::agent_connection`] guards; the admin listener sets the credential expiry gauges
//! from the credential store when it is scraped.
//!
//! Labels are names from the config (listener, route, credential, issuer) and fixed words
//! (decision, error code, status class, event): never a host, a task, a credential ID or
//! anything else an agent or an issuer chooses, so the number of series is bounded by the
//! config.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use sidekey_audit::{
    ConfigEvent, ConfigEventKind, CredentialEvent, CredentialEventKind, Observer, Outcome,
    RequestRecord, Series,
};

/// The `Content-Type` of [`Metrics::render`]: the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Request duration buckets, in seconds: from a refusal (well under a millisecond) to a long
/// upstream call or stream.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// FNV-1a: the caches below are keyed by config names and fixed words (never by what an agent
/// sends), so they need no protection from chosen collisions, and SipHash would be most of a
/// lookup's cost.
type FastMap<K, V> = fnv::FnvHashMap<K, V>;

/// What one request's `sidekey_requests_total` series depends on besides its route: decision,
/// error code, status class.
type RequestKey = (Outcome, Option<&'static str>, &'static str);

/// The children of one (listener, route): resolved once, so a request's record costs a read
/// lock and a hash of a few words, not a hash of every label of every metric.
struct RouteChildren {
    duration: Histogram,
    credential_wait: Histogram,
    upstream: Histogram,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    /// `sidekey_credential_rejections_total` with `retried` false, true.
    rejected: [IntCounter; 2],
    listener: &'static str,
    route: String,
    /// `sidekey_requests_total` by (decision, code, status class).
    requests: RwLock<FastMap<RequestKey, IntCounter>>,
}

/// The registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    credential_wait: HistogramVec,
    upstream: HistogramVec,
    bytes: IntCounterVec,
    /// listener → route ("" for none) → its children.
    routes: RwLock<FastMap<&'static str, FastMap<String, Arc<RouteChildren>>>>,
    connections: IntGaugeVec,
    idle_connections: IntGaugeVec,
    credential_events: IntCounterVec,
    issuer_calls: HistogramVec,
    credential_expiry: GaugeVec,
    reloads: IntCounterVec,
    last_reload_success: IntGauge,
    audit_records: [IntCounter; 3],
    audit_dropped: IntCounter,
    grants_verified: IntCounterVec,
    /// `sidekey_credential_rejections_total{route, retried}`.
    rejections: IntCounterVec,
    /// `sidekey_tls_leaves_total{source="minted"|"cached"}`.
    tls_leaves: [IntCounter; 2],
    /// Held by [`Metrics::scrape`].
    scraping: Mutex<()>,
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    // Names are constants and distinct: registration fails only on a programming error, which
    // the unit tests below would show; a failed one leaves that metric out of /metrics.
    if let Err(e) = registry.register(Box::new(collector.clone())) {
        tracing::error!(error = %e, "metric not registered");
    }
    collector
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(registry, vec)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let requests = counter_vec(
            r,
            "sidekey_requests_total",
            "Requests recorded in the audit trail, by listener, route, decision, error code and status class.",
            &["listener", "route", "decision", "code", "status_class"],
        );
        let duration = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "sidekey_request_duration_seconds",
                    "Time from a request's arrival until its exchange ended (its audit record's duration).",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["listener", "route"],
            )
            .unwrap_or_else(|e| unreachable!("histogram: {e}")),
        );
        let phase = |name: &str, help: &str| {
            register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
                    &["listener", "route"],
                )
                .unwrap_or_else(|e| unreachable!("histogram: {e}")),
            )
        };
        let credential_wait = phase(
            "sidekey_credential_wait_seconds",
            "Time a request waited for its route's credential: none when the store had it at hand, the issuer call on a miss.",
        );
        let upstream = phase(
            "sidekey_upstream_duration_seconds",
            "Time from sending a request upstream to its response headers (connect and TLS included when no pooled connection was free).",
        );
        let bytes = counter_vec(
            r,
            "sidekey_request_bytes_total",
            "Body bytes: in from the agent, out to the agent.",
            &["direction", "route"],
        );
        let connections = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "sidekey_agent_connections",
                    "Agent connections open, by listener.",
                ),
                &["listener"],
            )
            .unwrap_or_else(|e| unreachable!("gauge: {e}")),
        );
        let idle_connections = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "sidekey_agent_connections_idle",
                    "Agent connections waiting for their next request with their HTTP buffers given back, by listener.",
                ),
                &["listener"],
            )
            .unwrap_or_else(|e| unreachable!("gauge: {e}")),
        );
        let credential_events = counter_vec(
            r,
            "sidekey_credential_events_total",
            "Credential lifecycle events (issued, renewed, refreshed, expired, revoked, failed).",
            &["credential", "issuer", "event"],
        );
        let issuer_calls = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "sidekey_issuer_call_duration_seconds",
                    "Issuer calls behind issued, refreshed and failed credential events, by issuer and result (ok, failed).",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["issuer", "result"],
            )
            .unwrap_or_else(|e| unreachable!("histogram: {e}")),
        );
        let credential_expiry = register(
            r,
            GaugeVec::new(
                Opts::new(
                    "sidekey_credential_expiry_seconds",
                    "Seconds until the held credential expires (per-task credentials: the soonest of their tasks').",
                ),
                &["credential", "issuer"],
            )
            .unwrap_or_else(|e| unreachable!("gauge: {e}")),
        );
        let reloads = counter_vec(
            r,
            "sidekey_config_reloads_total",
            "Config reloads, applied (reloaded) or refused (rejected).",
            &["result"],
        );
        let last_reload_success = register(
            r,
            IntGauge::new(
                "sidekey_config_last_reload_success",
                "1 if the last config load or reload was applied, 0 if it was rejected.",
            )
            .unwrap_or_else(|e| unreachable!("gauge: {e}")),
        );
        let audit = counter_vec(
            r,
            "sidekey_audit_records_total",
            "Records appended to the audit trail, by type.",
            &["type"],
        );
        let audit_records =
            ["request", "credential", "config"].map(|t| audit.with_label_values(&[t]));
        let audit_dropped = register(
            r,
            IntCounter::new(
                "sidekey_audit_dropped_total",
                "Audit records lost: not serializable, sent after shutdown, or in a write the sink failed.",
            )
            .unwrap_or_else(|e| unreachable!("counter: {e}")),
        );
        let grants_verified = counter_vec(
            r,
            "sidekey_grants_verified_total",
            "Task grants presented and verified: ok, or the refusal's error code.",
            &["result"],
        );
        let rejections = counter_vec(
            r,
            "sidekey_credential_rejections_total",
            "Requests whose credential the upstream refused with 401: retried with a new one, or answered with the 401 (the credential replaced for later requests).",
            &["route", "retried"],
        );
        let leaves = counter_vec(
            r,
            "sidekey_tls_leaves_total",
            "Leaf certificates for intercepted CONNECTs: minted, or served from the cache.",
            &["source"],
        );
        let tls_leaves = ["minted", "cached"].map(|s| leaves.with_label_values(&[s]));
        for result in ["reloaded", "rejected"] {
            reloads.with_label_values(&[result]);
        }
        Metrics {
            registry,
            requests,
            duration,
            credential_wait,
            upstream,
            bytes,
            routes: RwLock::new(FastMap::default()),
            connections,
            idle_connections,
            credential_events,
            issuer_calls,
            credential_expiry,
            reloads,
            last_reload_success,
            audit_records,
            audit_dropped,
            grants_verified,
            rejections,
            tls_leaves,
            scraping: Mutex::new(()),
        }
    }

    /// An agent connection on `listener`, counted open until the guard drops.
    pub fn agent_connection(&self, listener: &'static str) -> ConnectionGuard {
        let gauge = self.connections.with_label_values(&[listener]);
        gauge.inc();
        ConnectionGuard {
            open: gauge,
            idle: self.idle_connections.with_label_values(&[listener]),
        }
    }

    /// Makes the series of `listener` exist (at 0) before its first connection.
    pub fn listener(&self, listener: &'static str) {
        self.connections.with_label_values(&[listener]);
        self.idle_connections.with_label_values(&[listener]);
    }

    /// A task grant verified: `result` is `ok` or the refusal's error code.
    pub fn grant_verified(&self, result: &'static str) {
        self.grants_verified.with_label_values(&[result]).inc();
    }

    /// Sets `sidekey_credential_expiry_seconds` from what the credential store holds now:
    /// `(credential, issuer, expires_at)` for every held credential, per-task ones under their
    /// credential's name (the soonest wins). Credentials not listed lose their series.
    pub fn set_credential_expiries<'a>(
        &self,
        held: impl IntoIterator<Item = (&'a str, &'a str, Option<SystemTime>)>,
    ) {
        let now = SystemTime::now();
        let mut soonest: HashMap<(&str, &str), f64> = HashMap::new();
        for (credential, issuer, expires_at) in held {
            let Some(expires_at) = expires_at else {
                continue;
            };
            let left = match expires_at.duration_since(now) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            soonest
                .entry((credential, issuer))
                .and_modify(|s| *s = s.min(left))
                .or_insert(left);
        }
        self.credential_expiry.reset();
        for ((credential, issuer), left) in soonest {
            let gauge: Gauge = self
                .credential_expiry
                .with_label_values(&[credential, issuer]);
            gauge.set(left);
        }
    }

    /// A scrape: the expiry gauges set from `held` (see [`Metrics::set_credential_expiries`]),
    /// then every metric rendered, one scrape at a time (so that one scrape's reset of the
    /// gauges never shows in another's output).
    pub fn scrape<'a>(
        &self,
        held: impl IntoIterator<Item = (&'a str, &'a str, Option<SystemTime>)>,
    ) -> Vec<u8> {
        let _one = self.scraping.lock().unwrap_or_else(PoisonError::into_inner);
        self.set_credential_expiries(held);
        self.render()
    }

    /// Requests refused by policy (`decision="deny"`) since start, by error code, most first:
    /// what the lifecycle page lists.
    pub fn refusals_by_code(&self) -> Vec<(String, u64)> {
        let mut by_code: BTreeMap<String, u64> = BTreeMap::new();
        for family in self.requests.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                };
                if label("decision").as_deref() == Some("deny") {
                    let count = metric.get_counter().get_value() as u64;
                    *by_code
                        .entry(label("code").unwrap_or_default())
                        .or_default() += count;
                }
            }
        }
        let mut out: Vec<(String, u64)> = by_code.into_iter().filter(|(_, n)| *n > 0).collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// After a reload: the series of routes no longer configured go (their counts are history
    /// the next scrape need not carry); `""` (no route) always stays. A set, not a list: this
    /// runs on the runtime's thread, once per route with series.
    pub fn retain_routes(&self, configured: &HashSet<&str>) {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        for by_route in routes.values_mut() {
            by_route.retain(|route, children| {
                let keep = route.is_empty() || configured.contains(route.as_str());
                if !keep {
                    self.forget(children);
                }
                keep
            });
        }
    }

    /// Removes every series of one (listener, route).
    fn forget(&self, children: &RouteChildren) {
        let (listener, route) = (children.listener, children.route.as_str());
        for vec in [&self.duration, &self.credential_wait, &self.upstream] {
            let _ = vec.remove_label_values(&[listener, route]);
        }
        for direction in ["in", "out"] {
            let _ = self.bytes.remove_label_values(&[direction, route]);
        }
        for retried in ["true", "false"] {
            let _ = self.rejections.remove_label_values(&[route, retried]);
        }
        let requests = children
            .requests
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for key in requests.keys() {
            let _ = self.requests.remove_label_values(&[
                listener,
                route,
                decision(key.0),
                key.1.unwrap_or(""),
                key.2,
            ]);
        }
    }

    /// A leaf certificate for an intercepted CONNECT: minted for it, or from the cache.
    pub fn tls_leaf(&self, minted: bool) {
        self.tls_leaves[usize::from(!minted)].inc();
    }

    /// The phase timers of one (listener, route), looked up once for a request's phases.
    pub fn route_timers(&self, listener: &'static str, route: &str) -> RouteTimers {
        RouteTimers(self.route(listener, route))
    }

    /// Every metric, in the text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics could not be rendered");
        }
        out
    }

    fn route(&self, listener: &'static str, route: &str) -> Arc<RouteChildren> {
        {
            let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(children) = routes.get(listener).and_then(|m| m.get(route)) {
                return Arc::clone(children);
            }
        }
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let children = routes
            .entry(listener)
            .or_default()
            .entry(route.to_string())
            .or_insert_with(|| {
                Arc::new(RouteChildren {
                    duration: self.duration.with_label_values(&[listener, route]),
                    credential_wait: self.credential_wait.with_label_values(&[listener, route]),
                    upstream: self.upstream.with_label_values(&[listener, route]),
                    bytes_in: self.bytes.with_label_values(&["in", route]),
                    bytes_out: self.bytes.with_label_values(&["out", route]),
                    rejected: ["false", "true"]
                        .map(|retried| self.rejections.with_label_values(&[route, retried])),
                    listener,
                    route: route.to_string(),
                    requests: RwLock::new(FastMap::default()),
                })
            });
        Arc::clone(children)
    }

    fn count_request(&self, children: &RouteChildren, key: RequestKey) {
        {
            let requests = children
                .requests
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(counter) = requests.get(&key) {
                counter.inc();
                return;
            }
        }
        let mut requests = children
            .requests
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        requests
            .entry(key)
            .or_insert_with(|| {
                self.requests.with_label_values(&[
                    children.listener,
                    &children.route,
                    decision(key.0),
                    key.1.unwrap_or(""),
                    key.2,
                ])
            })
            .inc();
    }
}

/// A request's phase histograms (credential wait, upstream), resolved for its route.
#[derive(Clone)]
pub struct RouteTimers(Arc<RouteChildren>);

impl std::fmt::Debug for RouteTimers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTimers")
            .field("listener", &self.0.listener)
            .field("route", &self.0.route)
            .finish()
    }
}

impl RouteTimers {
    /// How long the request waited for its credential.
    pub fn credential_wait(&self, seconds: f64) {
        self.0.credential_wait.observe(seconds);
    }

    /// How long the upstream took to answer it (to its response headers).
    pub fn upstream(&self, seconds: f64) {
        self.0.upstream.observe(seconds);
    }
}

/// Holds one agent connection open in `sidekey_agent_connections`.
pub struct ConnectionGuard {
    open: IntGauge,
    idle: IntGauge,
}

impl ConnectionGuard {
    /// Counts the connection in `sidekey_agent_connections_idle` until the guard drops.
    pub fn idle(&self) -> IdleGuard {
        self.idle.inc();
        IdleGuard(self.idle.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Holds one agent connection in `sidekey_agent_connections_idle` ([`ConnectionGuard::idle`]).
pub struct IdleGuard(IntGauge);

impl Drop for IdleGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn decision(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allow => "allow",
        Outcome::Deny => "deny",
        Outcome::Tunnel => "tunnel",
    }
}

fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "",
    }
}

fn event(kind: CredentialEventKind) -> &'static str {
    match kind {
        CredentialEventKind::Issued => "issued",
        CredentialEventKind::Renewed => "renewed",
        CredentialEventKind::Refreshed => "refreshed",
        CredentialEventKind::Expired => "expired",
        CredentialEventKind::Revoked => "revoked",
        CredentialEventKind::Failed => "failed",
    }
}

impl Metrics {
    fn count_record(&self, record: &RequestRecord, children: &RouteChildren) {
        self.audit_records[0].inc();
        self.count_request(
            children,
            (record.decision, record.code, status_class(record.status)),
        );
        children.duration.observe(record.duration_ms / 1000.0);
        children.bytes_in.inc_by(record.bytes_in);
        children.bytes_out.inc_by(record.bytes_out);
        if record.rejected_credential_id.is_some() {
            children.rejected[usize::from(record.retried)].inc();
        }
    }
}

impl Observer for Metrics {
    fn request(&self, record: &RequestRecord) {
        let children = self.route(record.listener, record.route.as_deref().unwrap_or(""));
        self.count_record(record, &children);
    }

    /// The request's [`RouteTimers`] name the record's series: no lookup by name, if they are
    /// the series of the record's listener and route (they are, unless something is wrong).
    fn request_in(&self, record: &RequestRecord, series: &Series) {
        match series.downcast_ref::<RouteTimers>() {
            Some(RouteTimers(children))
                if children.listener == record.listener
                    && children.route == record.route.as_deref().unwrap_or("") =>
            {
                self.count_record(record, children);
            }
            _ => self.request(record),
        }
    }

    fn credential(&self, event_: &CredentialEvent) {
        self.audit_records[1].inc();
        self.credential_events
            .with_label_values(&[&event_.credential, &event_.issuer, event(event_.event)])
            .inc();
        if let Some(ms) = event_.issuer_ms {
            let result = match event_.event {
                CredentialEventKind::Failed => "failed",
                _ => "ok",
            };
            self.issuer_calls
                .with_label_values(&[&event_.issuer, result])
                .observe(ms / 1000.0);
        }
    }

    fn config(&self, config: &ConfigEvent) {
        self.audit_records[2].inc();
        match config.event {
            ConfigEventKind::Loaded => self.last_reload_success.set(1),
            ConfigEventKind::Reloaded => {
                self.reloads.with_label_values(&["reloaded"]).inc();
                self.last_reload_success.set(1);
            }
            ConfigEventKind::Rejected => {
                self.reloads.with_label_values(&["rejected"]).inc();
                self.last_reload_success.set(0);
            }
        }
    }

    fn dropped(&self, records: u64) {
        self.audit_dropped.inc_by(records);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidekey_audit::HexId;

    fn record(route: Option<&str>, decision: Outcome, code: Option<&'static str>) -> RequestRecord {
        RequestRecord {
            route: route.map(Arc::from),
            credential_id: Some("secret-id".into()),
            decision,
            code,
            status: Some(if code.is_some() { 403 } else { 200 }),
            bytes_in: 3,
            bytes_out: 5,
            duration_ms: 1.5,
            task_id: Some("task-1".into()),
            trace_id: Some(HexId::of(0x4bf9_2f35_4bf9_2f35_4bf9_2f35)),
            ..RequestRecord::new(
                HexId::of(7),
                "forward",
                "GET".into(),
                ("https", "evil.example".into(), 443),
                "/".into(),
            )
        }
    }

    #[test]
    fn a_record_with_its_route_timers_counts_in_their_series_and_only_if_they_are_its_own() {
        let m = Metrics::new();
        let api = m.route_timers("forward", "api");
        m.request_in(&record(Some("api"), Outcome::Allow, None), &api);
        // Timers of another route, or another listener, are not the record's: looked up.
        m.request_in(&record(Some("other"), Outcome::Allow, None), &api);
        m.request_in(
            &record(Some("api"), Outcome::Allow, None),
            &m.route_timers("routes", "api"),
        );
        // Not timers at all: looked up.
        m.request_in(&record(Some("api"), Outcome::Allow, None), &"api");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            r#"sidekey_requests_total{code="",decision="allow",listener="forward",route="api",status_class="2xx"} 3"#
        ), "{text}");
        assert!(text.contains(
            r#"sidekey_requests_total{code="",decision="allow",listener="forward",route="other",status_class="2xx"} 1"#
        ), "{text}");
        assert!(
            !text.contains(r#"listener="routes",route="api",status_class"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sidekey_request_bytes_total{direction="in",route="other"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sidekey_audit_records_total{type="request"} 4"#),
            "{text}"
        );
    }

    #[test]
    fn requests_are_counted_by_route_decision_code_and_class_and_nothing_secret() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.request(&record(Some("api"), Outcome::Allow, None));
        }
        m.request(&record(None, Outcome::Deny, Some("host_not_allowed")));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            r#"sidekey_requests_total{code="",decision="allow",listener="forward",route="api",status_class="2xx"} 3"#
        ), "{text}");
        assert!(text.contains(
            r#"sidekey_requests_total{code="host_not_allowed",decision="deny",listener="forward",route="",status_class="4xx"} 1"#
        ), "{text}");
        assert!(
            text.contains(r#"sidekey_request_bytes_total{direction="in",route="api"} 9"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sidekey_request_bytes_total{direction="out",route="api"} 15"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"sidekey_request_duration_seconds_count{listener="forward",route="api"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"sidekey_audit_records_total{type="request"} 4"#),
            "{text}"
        );
        for secret in ["evil.example", "task-1", "secret-id", "4bf92f354bf92f35"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn connections_go_up_and_down_and_reloads_are_counted() {
        let m = Metrics::new();
        let a = m.agent_connection("forward");
        let b = m.agent_connection("forward");
        let idle = b.idle();
        drop(a);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"sidekey_agent_connections{listener="forward"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sidekey_agent_connections_idle{listener="forward"} 1"#),
            "{text}"
        );
        drop(idle);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"sidekey_agent_connections_idle{listener="forward"} 0"#),
            "{text}"
        );
        drop(b);
        let rejected = ConfigEvent {
            event: ConfigEventKind::Rejected,
            file: "f".into(),
            sha256: None,
            changes: None,
            errors: Vec::new(),
        };
        m.config(&rejected);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"sidekey_agent_connections{listener="forward"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sidekey_config_reloads_total{result="rejected"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sidekey_config_reloads_total{result="reloaded"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("sidekey_config_last_reload_success 0"),
            "{text}"
        );
    }

    #[test]
    fn expiry_is_the_soonest_per_credential_and_forgotten_when_no_longer_held() {
        let m = Metrics::new();
        let now = SystemTime::now();
        let in_ = |s| Some(now + std::time::Duration::from_secs(s));
        m.set_credential_expiries([
            ("demo", "local", in_(300)),
            ("task", "vault", in_(600)),
            ("task", "vault", in_(100)),
            ("task", "vault", None),
        ]);
        let text = String::from_utf8(m.render()).unwrap();
        let value = |name: &str| -> f64 {
            let prefix = format!("sidekey_credential_expiry_seconds{{credential=\"{name}\"");
            let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!((298.0..=300.0).contains(&value("demo")), "{text}");
        assert!((98.0..=100.0).contains(&value("task")), "{text}");
        m.set_credential_expiries([("demo", "local", in_(300))]);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains(r#"credential="task""#), "{text}");
    }
}
