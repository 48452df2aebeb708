//! sidekey's data plane. A request enters through a listener ([`forward`] for HTTP_PROXY
//! clients, with CONNECT interception in [`intercept`] and blind tunnels in [`tunnel`];
//! [`routes`] for `/r/<route>/…` base URLs), which identifies its target; [`exchange`] then runs
//! the phases: decide → credential → rewrite → forward → respond → audit.

mod audit;
mod body;
mod error;
pub mod exchange;
pub mod forward;
pub mod intercept;
pub mod routes;
pub mod tunnel;
mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sidekey_audit::AuditLog;
use sidekey_config::{Config, Inject, Unmatched};
use sidekey_credentials::CredentialStore;
use sidekey_policy::{CanonicalHost, Policy, Scheme};
use sidekey_tls::CertificateAuthority;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::ErrorCode;
pub use upstream::Upstream;

/// Bounds on what a client may send before sidekey gives up on it.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time to read a request head (slowloris).
    pub header_read_timeout: Duration,
    /// Time for the agent to finish a TLS handshake inside CONNECT.
    pub handshake_timeout: Duration,
    /// Maximum number of request headers.
    pub max_headers: usize,
    /// Read buffer bound for HTTP/1 request heads.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
        }
    }
}

impl Limits {
    /// The HTTP/1 server settings every agent-facing listener uses.
    pub fn http1_builder(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_headers(self.max_headers)
            .max_buf_size(self.max_header_bytes);
        builder
    }
}

/// What the data plane needs of a route besides its policy.
#[derive(Debug, Clone)]
pub struct RouteRuntime {
    pub name: String,
    pub credential: Option<String>,
    pub issuer: Option<String>,
    pub inject: Option<Inject>,
    pub allow_private: bool,
    /// `(host, port)` for the route listener: only routes naming exactly one exact host over
    /// HTTPS can be reached as `/r/<route>/`.
    pub base: Option<(CanonicalHost, u16)>,
}

/// Everything shared by the listeners.
pub struct ProxyState {
    pub policy: Policy,
    /// One single-route policy per route, for the route listener (which addresses one route).
    pub route_policies: Vec<Policy>,
    /// Index-aligned with `policy.routes()`.
    pub routes: Vec<RouteRuntime>,
    pub credentials: Arc<CredentialStore>,
    pub ca: Arc<CertificateAuthority>,
    pub upstream: Upstream,
    pub audit: AuditLog,
    pub unmatched: Unmatched,
    pub limits: Limits,
}

impl ProxyState {
    pub fn new(
        config: &Config,
        credentials: Arc<CredentialStore>,
        ca: Arc<CertificateAuthority>,
        upstream_tls: rustls::ClientConfig,
        audit: AuditLog,
    ) -> Self {
        let routes = config
            .routes
            .iter()
            .map(|r| RouteRuntime {
                name: r.name.clone(),
                credential: r.credential.clone(),
                issuer: r
                    .credential
                    .as_deref()
                    .and_then(|c| credentials.issuer_of(c))
                    .map(str::to_string),
                inject: r.inject.clone(),
                allow_private: r.allow_private,
                base: match (r.hosts.as_slice(), r.schemes.contains(&Scheme::Https)) {
                    ([only], true) => only.exact().map(|h| {
                        let port = r
                            .ports
                            .first()
                            .copied()
                            .unwrap_or(Scheme::Https.default_port());
                        (h.clone(), port)
                    }),
                    _ => None,
                },
            })
            .collect();
        let policy = config.policy();
        let route_policies = policy
            .routes()
            .iter()
            .map(|r| Policy::new(vec![r.clone()]))
            .collect();
        ProxyState {
            policy,
            route_policies,
            routes,
            credentials,
            ca,
            upstream: Upstream::new(&config.upstream, upstream_tls),
            audit,
            unmatched: config.unmatched,
            limits: Limits::default(),
        }
    }
}

/// Accepts connections until `shutdown`, handing each to `serve` on `tracker` (so shutdown can
/// wait for them to drain).
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    serve: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    tracker.spawn(serve(stream));
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
