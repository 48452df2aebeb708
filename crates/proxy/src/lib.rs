//! sidekey's data plane: listeners, the exchange, upstream connections. A request enters
//! through a listener — [`forward`] for HTTP_PROXY clients (CONNECT interception in
//! [`intercept`], blind tunnels in [`tunnel`]), [`routes`] for `/r/<route>/…` base URLs — which
//! identifies its target; [`exchange`] then runs the phases: decide → body → credential →
//! rewrite → forward → respond → audit. Every decision is policy's (`sidekey-policy`); bodies
//! stream through `sidekey-body`'s wrappers.

mod audit;
mod conn_timers;
mod error;
pub mod exchange;
pub mod forward;
mod h1;
pub mod intercept;
mod pool;
pub mod routes;
pub mod tunnel;
mod upstream;
pub mod websocket;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use sidekey_audit::AuditLog;
use sidekey_body::mask::Needles;
use sidekey_config::{Config, Inject, LimitsConfig};
use sidekey_credentials::{ClientCertificate, Credential, CredentialStore, CredentialValue};
use sidekey_grants::Grants;
use sidekey_metrics::{ConnectionGuard, Metrics, RouteTimers};
use sidekey_policy::{CedarGate, Policy};
use sidekey_tls::CertificateAuthority;
use sidekey_traces::Spans;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::refusal_response;
pub use h1::IdleWait;
pub use sidekey_policy::ErrorCode;
pub use upstream::{Certified, Upstream};

/// hyper's smallest HTTP/1 read buffer (it panics below it).
const MIN_READ_BUFFER: usize = 8192;

/// Bounds on what a client may send or hold before sidekey gives up on it (`limits:`), with
/// the HTTP server settings they make.
#[derive(Debug, Clone, Default)]
pub struct Limits(pub LimitsConfig);

impl std::ops::Deref for Limits {
    type Target = LimitsConfig;

    fn deref(&self) -> &LimitsConfig {
        &self.0
    }
}

impl Limits {
    /// The HTTP/1 server settings every agent-facing listener uses. `max_header_bytes` bounds the
    /// head exactly (`max_header_size`, checked on the parsed head); the read buffer, which hyper
    /// will not set below 8 KiB, only bounds memory. `header_read_timeout` is not hyper's: each
    /// connection's [`conn_timers::ConnTimers`] keeps it, for a fraction of the cost.
    pub fn http1_builder(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .header_read_timeout(None)
            .max_headers(self.max_headers)
            .max_header_size(self.max_header_bytes)
            .max_buf_size(self.max_header_bytes.max(MIN_READ_BUFFER));
        builder
    }

    /// The HTTP/2 server settings for intercepted connections: bounded streams and header
    /// lists, and the h2 crate's guards against rapid reset (CVE-2023-44487) and streams the
    /// client keeps making the server reset; idle connections are pinged and closed.
    pub fn http2_builder(&self) -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(1024))
            .enable_connect_protocol()
            .keep_alive_interval(Some(self.idle_timeout))
            .keep_alive_timeout(Duration::from_secs(20));
        builder
    }
}

/// `limits.max_connections`: one permit per open agent connection, over all listeners, shared
/// by every config generation so that a reload can resize it without forgetting the
/// connections already open.
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: std::sync::Mutex<usize>,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max)),
            max: std::sync::Mutex::new(max),
        }
    }

    /// What the accept loops draw on.
    pub fn permits(&self) -> Arc<Semaphore> {
        Arc::clone(&self.permits)
    }

    /// Sets a new maximum. Raising it frees permits at once. Lowering it takes back the free
    /// permits at once and the rest as open connections close (none is cut): until then, new
    /// connections are refused.
    pub fn resize(&self, new_max: usize) {
        let mut max = self
            .max
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if new_max > *max {
            self.permits.add_permits(new_max - *max);
        } else if new_max < *max {
            let excess = *max - new_max;
            let taken = self.permits.forget_permits(excess);
            if taken < excess {
                let owed = u32::try_from(excess - taken).unwrap_or(u32::MAX);
                let permits = Arc::clone(&self.permits);
                tokio::spawn(async move {
                    if let Ok(p) = permits.acquire_many_owned(owed).await {
                        p.forget();
                    }
                });
            }
        }
        *max = new_max;
    }
}

/// The current [`ProxyState`], replaced whole by a config reload. Each request loads it when
/// it arrives and keeps that generation to its end, so a request is decided under one config
/// — the one current when it came, even on a connection opened before the reload.
pub struct SharedState {
    current: ArcSwap<ProxyState>,
    reloads: tokio::sync::watch::Sender<u64>,
}

impl SharedState {
    pub fn new(state: ProxyState) -> Self {
        SharedState {
            current: ArcSwap::from_pointee(state),
            reloads: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The current generation.
    pub fn load(&self) -> Arc<ProxyState> {
        self.current.load_full()
    }

    /// Makes `state` current for new requests; requests already running keep theirs. Returns
    /// the state it replaced, for the caller to drop where it likes.
    pub fn replace(&self, state: ProxyState) -> Arc<ProxyState> {
        let old = self.current.swap(Arc::new(state));
        self.reloads.send_modify(|n| *n += 1);
        old
    }

    /// Changes every time [`SharedState::replace`] runs: long-lived connections whose
    /// admission depended on the config (blind tunnels) check it again.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }
}

/// An accepted agent connection, holding its place in `limits.max_connections` for as long
/// as it is open — through CONNECT upgrades and tunnels, since the permit travels with the
/// socket.
pub struct AgentStream {
    pub(crate) inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Counts the connection in `sidekey_agent_connections` while it is open.
    open: ConnectionGuard,
}

impl AsyncRead for AgentStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What the data plane needs of a route besides its policy: which credential, from which
/// issuer, attached how, and whether the SSRF guard lets it reach private addresses.
#[derive(Debug, Clone)]
pub struct RouteRuntime {
    pub name: Arc<str>,
    pub credential: Option<Arc<str>>,
    pub issuer: Option<Arc<str>>,
    pub inject: Option<Inject>,
    pub allow_private: bool,
    /// Cedar's action for its requests (`action:`); None: the method.
    pub action: Option<Arc<str>>,
    /// What this route attaches of the credential it last used (the header as it goes out,
    /// the masking needles): computed once per credential, not per request.
    pub attached: AttachCache,
    /// The `certificate` credential presented as the TLS client certificate (https only).
    pub client_certificate: Option<Arc<str>>,
    /// The upstream clients of the client certificates this route presents.
    pub certified: CertifiedClients,
    /// Its phase histograms on the forward and the routes listener, looked up in the metrics
    /// on its first request there, not on each.
    pub timers: [std::sync::OnceLock<RouteTimers>; 2],
}

impl RouteRuntime {
    /// This route's phase timers on `listener` (`forward` or `routes`).
    pub fn timers(&self, metrics: &Metrics, listener: &'static str) -> RouteTimers {
        let slot = &self.timers[usize::from(listener != "forward")];
        slot.get_or_init(|| metrics.route_timers(listener, &self.name))
            .clone()
    }
}

/// A route's upstream clients, one per client certificate it presents (a shared certificate's
/// generations, or one per task for a per-task one), so that building a TLS config and a pool
/// is paid once per certificate, not per request: a request looks its certificate's clients up
/// by the credential's address. Holds each certificate's credential weakly (while the `Weak` is
/// held, the address cannot be reused by another credential); when clients are added, those of
/// certificates the store has dropped (replaced, retired, their task ended) are dropped,
/// closing their idle connections and freeing their key.
#[derive(Default)]
pub struct CertifiedClients(
    std::sync::Mutex<std::collections::HashMap<usize, (std::sync::Weak<Credential>, Certified)>>,
);

impl Clone for CertifiedClients {
    /// A copy starts empty: it fills on its first request.
    fn clone(&self) -> Self {
        CertifiedClients::default()
    }
}

impl std::fmt::Debug for CertifiedClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertifiedClients(<redacted>)")
    }
}

impl CertifiedClients {
    /// The clients of `credential` (a certificate), made by `make` the first time; None when
    /// the credential is not a certificate.
    pub fn get(
        &self,
        credential: &Arc<Credential>,
        make: impl FnOnce(&ClientCertificate) -> Certified,
    ) -> Option<Certified> {
        let CredentialValue::Certificate(certificate) = &credential.value else {
            return None;
        };
        let key = Arc::as_ptr(credential) as usize;
        let mut clients = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, certified)) = clients.get(&key) {
            return Some(certified.clone());
        }
        clients.retain(|_, (held, _)| held.strong_count() > 0);
        let certified = make(certificate);
        clients.insert(key, (Arc::downgrade(credential), certified.clone()));
        Some(certified)
    }
}

/// One credential as one route attaches it: computed once per credential, then shared by its
/// requests.
pub struct Attached {
    /// The injected header, name and value (sensitive, wiped when dropped), inserted into each
    /// request as it is. None for query and SigV4 injection, or when the credential cannot be
    /// a header value (each request then says why).
    pub header: Option<(http::HeaderName, http::HeaderValue)>,
    /// Every spelling of the credential that must not come back to the agent.
    pub needles: Needles,
}

/// What one credential comes to as one route attaches it (it depends on the credential and the
/// route's `inject` only). Holds the credential weakly: a credential dropped (refreshed,
/// retired) is never matched again, and what was computed for it goes with the next one.
#[derive(Default)]
pub struct AttachCache(std::sync::Mutex<Option<(std::sync::Weak<Credential>, Arc<Attached>)>>);

impl Clone for AttachCache {
    /// A copy starts empty: it fills on its first request.
    fn clone(&self) -> Self {
        AttachCache::default()
    }
}

impl std::fmt::Debug for AttachCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttachCache(<redacted>)")
    }
}

impl AttachCache {
    /// What was computed for `credential`, or what `make` computes (then kept).
    pub fn get(
        &self,
        credential: &Arc<Credential>,
        make: impl FnOnce() -> Attached,
    ) -> Arc<Attached> {
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // While the Weak is held, its allocation cannot be reused: equal pointers are the same
        // credential.
        if let Some((cached, attached)) = slot.as_ref() {
            if std::sync::Weak::as_ptr(cached) == Arc::as_ptr(credential) {
                return Arc::clone(attached);
            }
        }
        let attached = Arc::new(make());
        *slot = Some((Arc::downgrade(credential), Arc::clone(&attached)));
        attached
    }
}

/// One config generation: everything the listeners and exchanges use.
pub struct ProxyState {
    /// Every decision (routes, `unmatched`, body rules).
    pub policy: Policy,
    /// Index-aligned with `policy.routes()`.
    pub routes: Vec<RouteRuntime>,
    pub credentials: Arc<CredentialStore>,
    pub ca: Arc<CertificateAuthority>,
    pub upstream: Upstream,
    pub audit: AuditLog,
    pub limits: Limits,
    /// Task grants (`grants:`); None when the config has none. Lives across reloads (its
    /// signing key and revocations), reconfigured by them.
    pub grants: Option<Arc<Grants>>,
    /// The process's metrics (the same registry in every generation).
    pub metrics: Arc<Metrics>,
    /// The span exporter (`traces:`); None when spans are not exported. One per process.
    pub spans: Option<Arc<Spans>>,
    /// Cedar policies after route matching (`cedar:`); None: routes and grants decide alone.
    pub cedar: Option<Arc<CedarGate>>,
}

impl ProxyState {
    pub fn new(
        config: &Config,
        credentials: Arc<CredentialStore>,
        ca: Arc<CertificateAuthority>,
        upstream: Upstream,
        audit: AuditLog,
        grants: Option<Arc<Grants>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let routes = config
            .routes
            .iter()
            .map(|r| RouteRuntime {
                name: Arc::from(r.name.as_str()),
                credential: r.credential.as_deref().map(Arc::from),
                issuer: r
                    .credential
                    .as_deref()
                    .and_then(|c| credentials.issuer_of(c))
                    .map(Arc::from),
                inject: r.inject.clone(),
                allow_private: r.allow_private,
                action: r.action.as_deref().map(Arc::from),
                attached: AttachCache::default(),
                client_certificate: r.client_certificate.as_deref().map(Arc::from),
                certified: CertifiedClients::default(),
                timers: Default::default(),
            })
            .collect();
        ProxyState {
            policy: config.policy(),
            routes,
            credentials,
            ca,
            upstream,
            audit,
            limits: Limits(config.limits.clone()),
            grants,
            metrics,
            spans: None,
            cedar: None,
        }
    }

    /// Gates every request a route allows with `cedar`, when set.
    pub fn with_cedar(mut self, cedar: Option<Arc<CedarGate>>) -> Self {
        self.cedar = cedar;
        self
    }

    /// Exports a span per request to `spans` (the process's exporter), when set.
    pub fn with_spans(mut self, spans: Option<Arc<Spans>>) -> Self {
        self.spans = spans;
        self
    }
}

/// Accepts connections until `shutdown`, handing each to `serve` on `tracker` (so shutdown can
/// wait for them to drain). Past `limits.max_connections` open connections, a new one is
/// closed at once: the agent sees a reset connection, and the ones already open keep working.
/// Each open connection counts in `metrics`' `sidekey_agent_connections{listener=name}`.
pub fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    connections: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    serve: F,
) -> impl Future<Output = ()>
where
    F: Fn(AgentStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // The listener's series exists (at 0) from now on, not from the task's first poll: a
    // scrape right after start already sees it.
    metrics.listener(name);
    async move {
        let mut refused: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                            refused += 1;
                            // One line per 100 refusals: a flood must not become a log flood.
                            if refused % 100 == 1 {
                                tracing::warn!(listener = name, refused, "connection limit reached (limits.max_connections); closing new connections");
                            }
                            drop(stream);
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let open = metrics.agent_connection(name);
                        tracker.spawn(serve(AgentStream { inner: stream, _permit: permit, open }));
                    }
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        tracing::debug!(listener = name, "stopped accepting");
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::SystemTime;

    use sidekey_credentials::Secret;

    use super::*;

    fn credential(value: &str) -> Arc<Credential> {
        let now = SystemTime::now();
        Arc::new(Credential::token(
            value,
            Secret::new(value.to_string()),
            now,
            now,
        ))
    }

    #[test]
    fn what_a_route_attaches_is_computed_once_per_credential() {
        let cache = AttachCache::default();
        let made = Cell::new(0);
        let make = |c: &Arc<Credential>| {
            made.set(made.get() + 1);
            Attached {
                header: None,
                needles: Needles::for_credential(&c.secrets(), None),
            }
        };
        let first = credential("tok-first");
        for _ in 0..3 {
            let n = cache.get(&first, || make(&first));
            assert!(!n.needles.is_empty());
        }
        assert_eq!(made.get(), 1, "the same credential: computed once");
        let second = credential("tok-second");
        cache.get(&second, || make(&second));
        assert_eq!(made.get(), 2, "a new credential: computed again");
        cache.get(&first, || make(&first));
        assert_eq!(made.get(), 3, "only the last credential is kept");
        // A credential dropped is never matched by a later one.
        drop(first);
        let third = credential("tok-third");
        cache.get(&third, || make(&third));
        assert_eq!(made.get(), 4);
        assert_eq!(format!("{:?}", cache.clone()), "AttachCache(<redacted>)");
    }
}
