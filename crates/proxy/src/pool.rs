//! sidekey's own pool of upstream connections (one per address class and per client
//! certificate, see [`crate::upstream`]): hyper's connection senders (`client::conn::http1` and
//! `http2`) kept per scheme and authority, and checked out directly.
//!
//! - **HTTP/1.1.** A connection carries one request at a time. Once its response body has been
//!   read to its end ([`UpstreamBody`]), its sender goes back to the host's idle list (the most
//!   recently used is taken first, like nginx's `keepalive`), at most `max_idle_per_host` per
//!   host; a response body dropped before its end takes the connection with it. No task is
//!   spawned per request to wait for the connection to become reusable, and no connect future
//!   is built when an idle connection is there.
//! - **HTTP/2.** A connection is shared: its sender stays in the list and is cloned for each
//!   request.
//! - **Which protocol: the agent's.** An HTTP/2 request goes over TLS offering h2 and HTTP/1.1
//!   (ALPN: h2 when the upstream offers it); any other request goes on HTTP/1.1, its TLS offering
//!   nothing else, so that an agent's HTTP/1.1 requests never share one h2 connection. As Envoy's
//!   `use_downstream_protocol_config`; nginx's upstreams are HTTP/1.1 only. Each has its own
//!   hosts ([`Lane`]). Why not h2 for all: a credential is sent never-indexed (RFC 7541
//!   §7.1.3), so HPACK encodes it whole, Huffman coding included, on every request (about
//!   10k instructions for a 300-byte token, a quarter of a plain request's whole cost), where
//!   HTTP/1.1 copies its bytes; and one connection's task would carry every agent connection's
//!   requests.
//! - **Stale connections.** A pooled connection the upstream closed is skipped; a request that
//!   a reused connection could not start (closed in the meantime) is tried once more, on another
//!   connection, as hyper-util's client does; a request on a fresh connection never is.
//! - **Idle timeout.** Connections idle for [`IDLE_TIMEOUT`] are closed: skipped when met on
//!   checkout, and swept every [`SWEEP_EVERY`] by a task that ends with the pool.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sidekey_body::ProxyBody;
use tower_service::Service;

use crate::upstream::Connector;

/// Idle connections are closed after this long (hyper-util's default too).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle connections past their timeout are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Resolving, connecting or the TLS handshake failed.
    #[error("could not connect to the upstream")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The HTTP handshake, or the exchange on an established connection, failed.
    #[error("the upstream connection failed")]
    Http(#[source] hyper::Error),
    /// The request's URI names no host.
    #[error("request URI has no host")]
    NoHost,
}

enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// One host's idle connections. A response body holds its host's list, so that its connection
/// goes back without a lookup.
struct Host {
    idle: Mutex<Vec<Idle>>,
    /// The `Host` header of its HTTP/1 requests, made once (a shared value each request clones).
    header: Option<HeaderValue>,
    /// `scheme://authority/`: what a new connection is made to.
    origin: Uri,
}

impl Host {
    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn origin_of(uri: &Uri, authority: &Authority) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(uri.scheme().cloned().unwrap_or(Scheme::HTTP));
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
        Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
    }

    /// `uri`'s path and query on this host, as an absolute URI.
    fn absolute(&self, uri: &Uri) -> Uri {
        let mut parts = self.origin.clone().into_parts();
        parts.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).unwrap_or_else(|_| self.origin.clone())
    }
}

/// How a request goes: plain HTTP/1.1, HTTP/1.1 over TLS, or over TLS offering h2 (an HTTP/2
/// request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Plain = 0,
    Tls = 1,
    TlsH2 = 2,
}

impl Lane {
    fn of<B>(request: &Request<B>) -> Lane {
        match (
            request.uri().scheme() == Some(&Scheme::HTTPS),
            request.version(),
        ) {
            (false, _) => Lane::Plain,
            (true, Version::HTTP_2) => Lane::TlsH2,
            (true, _) => Lane::Tls,
        }
    }

    fn https(self) -> bool {
        self != Lane::Plain
    }
}

/// Hosts by authority, one map per [`Lane`]. The authority is the URI's, which sidekey has
/// already made canonical.
type Hosts = [HashMap<Box<str>, Arc<Host>, foldhash::fast::RandomState>; 3];

pub struct Pool {
    /// TLS offering h2 and HTTP/1.1 ([`Lane::TlsH2`]).
    connector: Connector,
    /// TLS offering HTTP/1.1 only, and plain HTTP.
    connector_h1: Connector,
    hosts: Mutex<Hosts>,
    max_idle_per_host: usize,
}

impl Pool {
    /// `connector` offers h2 and HTTP/1.1 over TLS, `connector_h1` HTTP/1.1 only.
    pub fn new(
        connector: Connector,
        connector_h1: Connector,
        max_idle_per_host: usize,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            connector,
            connector_h1,
            hosts: Mutex::new(Default::default()),
            max_idle_per_host,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    fn hosts(&self) -> MutexGuard<'_, Hosts> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The idle list of `uri`'s authority, made on first use.
    fn host(&self, lane: Lane, uri: &Uri) -> Result<Arc<Host>, SendError> {
        let authority = uri.authority().ok_or(SendError::NoHost)?;
        let mut hosts = self.hosts();
        let map = &mut hosts[lane as usize];
        if let Some(host) = map.get(authority.as_str()) {
            return Ok(Arc::clone(host));
        }
        let host = Arc::new(Host {
            idle: Mutex::default(),
            header: host_header(uri, lane.https()),
            origin: Host::origin_of(uri, authority),
        });
        map.insert(authority.as_str().into(), Arc::clone(&host));
        Ok(host)
    }

    /// Keeps `sender` for the next request to `host`, unless the host has its fill.
    fn put(&self, host: &Host, sender: Sender) {
        if self.max_idle_per_host == 0 || sender.is_closed() {
            return;
        }
        let mut idle = host.idle();
        if idle.len() < self.max_idle_per_host {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Opens a connection (TCP, the address guard, TLS with ALPN) and its HTTP handshake; the
    /// connection is driven by a task of its own.
    async fn connect(&self, host: &Host, lane: Lane) -> Result<Sender, SendError> {
        let mut connector = match lane {
            Lane::TlsH2 => self.connector.clone(),
            Lane::Plain | Lane::Tls => self.connector_h1.clone(),
        };
        let io = connector
            .call(host.origin.clone())
            .await
            .map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(SendError::Http)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended with an error");
                }
            });
            // Shared at once: concurrent requests to a new h2 host need not each connect.
            self.put(host, Sender::H2(sender.clone()));
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(SendError::Http)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
            Ok(Sender::H1(sender))
        }
    }

    /// Sends `request` (absolute URI) on a pooled or new connection and returns the response,
    /// whose body gives an HTTP/1 connection back to the pool when it has been read to its end.
    /// `now` (the caller's reading of the clock) ages the idle connections.
    /// (An `async` block, not an `async fn`, which would keep a second copy of the request.)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps a second copy of the request in its future"
    )]
    pub fn send(
        self: Arc<Self>,
        mut request: Request<ProxyBody>,
        now: Instant,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + 'static {
        async move {
            let lane = Lane::of(&request);
            let host = self.host(lane, request.uri())?;
            loop {
                let (sender, reused) = match checkout(&host, now) {
                    Some(sender) => (sender, true),
                    // Boxed: a new connection is the rare path, and its handshake futures would
                    // otherwise make every request's future larger.
                    None => (Box::pin(self.connect(&host, lane)).await?, false),
                };
                let mut failed = match sender {
                    Sender::H1(mut sender) => {
                        if let Err(e) = sender.ready().await {
                            if reused {
                                continue;
                            }
                            return Err(SendError::Http(e));
                        }
                        origin_form(&mut request, host.header.clone());
                        match sender.try_send_request(request).await {
                            Ok(response) => {
                                let back = Back {
                                    sender,
                                    pool: self,
                                    host,
                                };
                                return Ok(response.map(|body| UpstreamBody::new(body, Some(back))));
                            }
                            Err(e) => e,
                        }
                    }
                    Sender::H2(mut sender) => {
                        if let Err(e) = sender.ready().await {
                            if reused {
                                continue;
                            }
                            return Err(SendError::Http(e));
                        }
                        match sender.try_send_request(request).await {
                            Ok(response) => {
                                return Ok(response.map(|body| UpstreamBody::new(body, None)))
                            }
                            Err(e) => e,
                        }
                    }
                };
                match failed.take_message() {
                    // Never started, on a connection that was reused: once more, elsewhere.
                    Some(mut unsent) if reused => {
                        // Its absolute URI again (an HTTP/1 request went in origin form).
                        *unsent.uri_mut() = host.absolute(unsent.uri());
                        request = unsent;
                    }
                    _ => return Err(SendError::Http(failed.into_error())),
                }
            }
        }
    }
}

/// An idle HTTP/1 connection (taken out) or a shared HTTP/2 one (cloned), the most recently
/// used first; closed and expired ones met on the way are dropped.
fn checkout(host: &Host, now: Instant) -> Option<Sender> {
    let mut idle = host.idle();
    while let Some(entry) = idle.pop() {
        if entry.sender.is_closed() || now.saturating_duration_since(entry.since) >= IDLE_TIMEOUT {
            continue;
        }
        return Some(match entry.sender {
            Sender::H1(s) => Sender::H1(s),
            Sender::H2(s) => {
                let shared = s.clone();
                idle.push(Idle {
                    sender: Sender::H2(s),
                    since: now,
                });
                Sender::H2(shared)
            }
        });
    }
    None
}

/// HTTP/1 requests go in origin form with a `Host` header (the absolute form is for proxies),
/// as HTTP/1.1 whatever the agent spoke (an HTTP/2 request to an upstream that offers only
/// HTTP/1.1, an HTTP/2 WebSocket): the pool's, and WebSocket upgrades
/// ([`crate::upstream::Upstream::upgrade`]).
pub(crate) fn to_origin_form(request: &mut Request<ProxyBody>, https: bool) {
    let host = host_header(request.uri(), https);
    origin_form(request, host);
}

/// The `Host` header for `uri`: its authority, without the scheme's default port.
fn host_header(uri: &Uri, https: bool) -> Option<HeaderValue> {
    let authority = uri.authority()?;
    let default_port = if https { 443 } else { 80 };
    let host = match uri.port_u16() {
        Some(port) if port != default_port => authority.as_str(),
        _ => authority.host(),
    };
    HeaderValue::from_str(host).ok()
}

/// `to_origin_form` with the `Host` header already made (unless the request has one).
fn origin_form(request: &mut Request<ProxyBody>, host: Option<HeaderValue>) {
    *request.version_mut() = Version::HTTP_11;
    if let Some(host) = host {
        request.headers_mut().entry(HOST).or_insert(host);
    }
    if request.method() == Method::CONNECT {
        return;
    }
    let origin = match request.uri().path_and_query() {
        Some(p) if p.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(p.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    };
    *request.uri_mut() = origin;
}

/// Closes idle connections past their timeout, and forgets hosts with none left that no
/// response holds, until the pool is gone.
async fn sweep(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut hosts = pool.hosts();
        for map in hosts.iter_mut() {
            map.retain(|_, host| {
                let mut idle = host.idle();
                idle.retain(|e| !e.sender.is_closed() && e.since.elapsed() < IDLE_TIMEOUT);
                !idle.is_empty() || Arc::strong_count(host) > 1
            });
        }
    }
}

/// Where an HTTP/1 connection goes back to when its response has been read.
struct Back {
    sender: http1::SendRequest<ProxyBody>,
    pool: Arc<Pool>,
    host: Arc<Host>,
}

/// An upstream response body. For HTTP/1 it holds the connection's sender and gives it back to
/// the pool once the body has been read to its end; dropped before that, the connection goes
/// with it (it is in the middle of a response).
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<Back>,
}

impl UpstreamBody {
    fn new(inner: Incoming, back: Option<Back>) -> UpstreamBody {
        let mut body = UpstreamBody { inner, back };
        if body.inner.is_end_stream() {
            body.give_back();
        }
        body
    }

    fn give_back(&mut self) {
        if let Some(back) = self.back.take() {
            back.pool.put(&back.host, Sender::H1(back.sender));
        }
    }

    /// The body of a response on a connection that is not pooled (a WebSocket upgrade's).
    pub fn unpooled(inner: Incoming) -> UpstreamBody {
        UpstreamBody { inner, back: None }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.give_back(),
            // A broken body leaves the connection unusable: drop it.
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(uri: &str) -> Host {
        let uri: Uri = uri.parse().unwrap();
        let authority = uri.authority().unwrap().clone();
        Host {
            idle: Mutex::default(),
            header: host_header(&uri, uri.scheme() == Some(&Scheme::HTTPS)),
            origin: Host::origin_of(&uri, &authority),
        }
    }

    #[test]
    fn a_host_connects_to_its_origin_and_makes_a_request_absolute_again() {
        let plain = host_of("http://api.test.local:8080/v1/items?x=1");
        assert_eq!(plain.origin, "http://api.test.local:8080/");
        let tls = host_of("https://api.test.local/v1");
        assert_eq!(tls.origin, "https://api.test.local/");
        // A request gone out in origin form (HTTP/1), or still absolute (h2), is the same
        // absolute request again for the next connection.
        for sent in ["/v1/items?x=1", "http://api.test.local:8080/v1/items?x=1"] {
            let sent: Uri = sent.parse().unwrap();
            assert_eq!(
                plain.absolute(&sent),
                "http://api.test.local:8080/v1/items?x=1"
            );
        }
        // Origin form's `/` (an empty path sent as `/`).
        assert_eq!(tls.absolute(&Uri::default()), "https://api.test.local/");
        let mut request = Request::new(sidekey_body::empty());
        *request.uri_mut() = "https://api.test.local/a?b".parse().unwrap();
        origin_form(&mut request, tls.header.clone());
        assert_eq!(request.uri(), "/a?b");
        assert_eq!(tls.absolute(request.uri()), "https://api.test.local/a?b");
    }
}
