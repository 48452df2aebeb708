//! Connections to upstreams: name resolution (the config's `resolve` overrides, then the
//! system resolver or the configured name servers), the SSRF guard on the address about to be
//! connected to, TCP with a connect timeout, TLS verified by hyper-rustls, HTTP/1.1 or HTTP/2 by
//! ALPN, and connection pools. Redirects are never followed: every response is returned as is.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sidekey_config::UpstreamConfig;
use sidekey_policy::{AddressClass, AddressGuard};
use tokio::net::TcpStream;

use sidekey_body::ProxyBody;
use sidekey_credentials::ClientCertificate;
use sidekey_policy::{ErrorCode, Refusal};

use crate::conn_timers::{self, ConnTimers};
use crate::pool::{to_origin_form, Pool, SendError, UpstreamBody};

/// Why a TCP connection to an upstream could not be made. The message names host and port
/// only: never a URI (a query could carry an injected credential).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    #[error("connecting to {host}:{port} timed out after {timeout:?}")]
    Timeout {
        host: String,
        port: u16,
        timeout: Duration,
    },
    #[error("cannot connect to {host}:{port}: {reason}")]
    Refused {
        host: String,
        port: u16,
        reason: String,
    },
    #[error(
        "{host} is at {addr}, a {class} address: only a route with `allow_private: true` (or \
         `upstream.allow_ranges`) may connect there"
    )]
    Forbidden {
        host: String,
        addr: IpAddr,
        class: AddressClass,
    },
    #[error("request URI has no host")]
    NoHost,
}

impl ConnectError {
    /// The code the agent gets: the SSRF guard's refusal is a policy decision, the rest are
    /// failures to reach the upstream.
    pub fn code(&self) -> ErrorCode {
        match self {
            ConnectError::Forbidden { .. } => ErrorCode::AddressNotAllowed,
            _ => ErrorCode::UpstreamUnreachable,
        }
    }
}

/// Where names are looked up.
#[derive(Clone)]
enum Resolver {
    /// getaddrinfo: /etc/hosts, /etc/resolv.conf (search domains, ndots), as every other
    /// program in the pod sees them.
    System,
    /// The name servers of `upstream.nameservers`, asked directly.
    Servers(Arc<TokioResolver>),
}

impl Resolver {
    fn new(config: &UpstreamConfig) -> Resolver {
        if config.nameservers.is_empty() {
            return Resolver::System;
        }
        let mut servers = ResolverConfig::new();
        for addr in &config.nameservers {
            servers.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
            servers.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
        }
        let resolver =
            TokioResolver::builder_with_config(servers, TokioConnectionProvider::default()).build();
        Resolver::Servers(Arc::new(resolver))
    }

    async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        match self {
            Resolver::System => tokio::net::lookup_host((host, port))
                .await
                .map(|addrs| addrs.collect())
                .map_err(|e| e.to_string()),
            Resolver::Servers(resolver) => resolver
                .lookup_ip(host)
                .await
                .map(|ips| ips.iter().map(|ip| SocketAddr::new(ip, port)).collect())
                .map_err(|e| e.to_string()),
        }
    }
}

/// Resolves and connects, honouring `resolve` overrides, and refuses addresses that are not
/// public unless built for a route with `allow_private`.
#[derive(Clone)]
pub struct TcpConnector {
    overrides: Arc<HashMap<(String, u16), SocketAddr>>,
    resolver: Resolver,
    connect_timeout: Duration,
    guard: Arc<AddressGuard>,
    allow_private: bool,
}

impl TcpConnector {
    pub fn new(config: &UpstreamConfig, allow_private: bool) -> Self {
        let overrides = config
            .resolve
            .iter()
            .map(|o| ((o.host.to_string(), o.port), o.addr))
            .collect();
        TcpConnector {
            overrides: Arc::new(overrides),
            resolver: Resolver::new(config),
            connect_timeout: config.connect_timeout,
            guard: Arc::new(AddressGuard::new(config.allow_ranges.clone())),
            allow_private,
        }
    }

    /// Connects to `host:port` (`host` canonical, IPv6 without brackets). Each address is
    /// checked right before it is connected to — the address checked is the address used, so
    /// a DNS answer that changes between lookups (rebinding) cannot slip past the guard.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let addrs = self.resolve(host, port, deadline).await?;
        let mut last = None;
        let mut forbidden = None;
        for addr in addrs {
            if let Err(class) = self.guard.check(addr.ip(), self.allow_private) {
                forbidden.get_or_insert((addr.ip(), class));
                continue;
            }
            match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => {
                    return Err(ConnectError::Timeout {
                        host: host.to_string(),
                        port,
                        timeout: self.connect_timeout,
                    })
                }
            }
        }
        match (last, forbidden) {
            (None, Some((addr, class))) => Err(ConnectError::Forbidden {
                host: host.to_string(),
                addr,
                class,
            }),
            (last, _) => Err(ConnectError::Refused {
                host: host.to_string(),
                port,
                reason: last.unwrap_or_else(|| "no address to try".into()),
            }),
        }
    }

    async fn resolve(
        &self,
        host: &str,
        port: u16,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<SocketAddr>, ConnectError> {
        if let Some(addr) = self.overrides.get(&(host.to_string(), port)) {
            return Ok(vec![*addr]);
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs = match tokio::time::timeout_at(deadline, self.resolver.lookup(host, port)).await
        {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(reason)) => {
                return Err(ConnectError::Resolve {
                    host: host.to_string(),
                    reason,
                })
            }
            Err(_) => {
                return Err(ConnectError::Timeout {
                    host: host.to_string(),
                    port,
                    timeout: self.connect_timeout,
                })
            }
        };
        if addrs.is_empty() {
            return Err(ConnectError::NoAddress {
                host: host.to_string(),
            });
        }
        Ok(addrs)
    }
}

impl tower_service::Service<Uri> for TcpConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectError::NoHost)?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("http") {
                    80
                } else {
                    443
                });
            this.connect(&host, port).await.map(TokioIo::new)
        })
    }
}

pub(crate) type Connector = hyper_rustls::HttpsConnector<TcpConnector>;

/// The upstream connection pools ([`crate::pool`]): one for routes limited to public addresses, one for routes
/// with `allow_private` (separate pools, so a connection one may make is never lent to the
/// other), and one per client certificate a route presents ([`Upstream::certified`]).
#[derive(Clone)]
pub struct Upstream {
    public: Arc<Pool>,
    private: Arc<Pool>,
    /// HTTP/1.1 only (ALPN), for WebSocket upgrades: one connection each, never pooled.
    upgrade_public: Connector,
    upgrade_private: Connector,
    tcp: TcpConnector,
    tcp_private: TcpConnector,
    /// The TLS settings every client starts from (roots, versions; no client certificate).
    tls: rustls::ClientConfig,
    max_idle_per_host: usize,
    request_timeout: Duration,
}

/// Connections that present one client certificate: a pool of their own, never lent to a
/// request without that certificate (or with another), and a TLS session cache of their own —
/// a session resumed on another connection would carry the certificate's authentication with
/// it. Dropped with the certificate (see `CertifiedClients`), closing its idle connections.
#[derive(Clone)]
pub struct Certified {
    pool: Arc<Pool>,
    upgrade: Connector,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, tls: rustls::ClientConfig) -> Self {
        let tcp = TcpConnector::new(config, false);
        // Same overrides and resolver (and its cache); only the guard's allowance differs.
        let tcp_private = TcpConnector {
            allow_private: true,
            ..tcp.clone()
        };
        Upstream {
            public: pool(&tls, tcp.clone(), config.max_idle_per_host),
            private: pool(&tls, tcp_private.clone(), config.max_idle_per_host),
            upgrade_public: http1_only(&tls, tcp.clone()),
            upgrade_private: http1_only(&tls, tcp_private.clone()),
            tcp,
            tcp_private,
            tls,
            max_idle_per_host: config.max_idle_per_host,
            request_timeout: config.request_timeout,
        }
    }

    /// The raw TCP connector for blind tunnels (which no route names: public addresses only).
    pub fn tcp(&self) -> &TcpConnector {
        &self.tcp
    }

    /// Clients that present `certificate`, for a route that may (`allow_private`) or may not
    /// reach private addresses.
    pub fn certified(&self, certificate: &ClientCertificate, allow_private: bool) -> Certified {
        let mut tls = self.tls.clone();
        tls.client_auth_cert_resolver = Arc::new(rustls::sign::SingleCertAndKey::from(Arc::clone(
            certificate.certified_key(),
        )));
        // Not the shared session cache (see `Certified`).
        tls.resumption = rustls::client::Resumption::in_memory_sessions(64);
        let tcp = if allow_private {
            self.tcp_private.clone()
        } else {
            self.tcp.clone()
        };
        Certified {
            pool: pool(&tls, tcp.clone(), self.max_idle_per_host),
            upgrade: http1_only(&tls, tcp),
        }
    }

    /// The pool a route's requests go through: the clients of the client certificate it
    /// presents (`certified`), or the shared ones that may (`allow_private`) or may not reach
    /// private addresses.
    pub fn pool<'a>(
        &'a self,
        certified: Option<&'a Certified>,
        allow_private: bool,
    ) -> &'a Arc<Pool> {
        match (certified, allow_private) {
            (Some(certified), _) => &certified.pool,
            (None, true) => &self.private,
            (None, false) => &self.public,
        }
    }

    /// How long a request waits for its response head (`upstream.request_timeout`).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends the request through `pool` ([`Upstream::pool`]) and waits, `timeout` at most
    /// ([`Upstream::request_timeout`]), for the response head.
    ///
    /// `timers`: the agent's HTTP/1 connection's, whose one request timer bounds the wait
    /// ([`conn_timers::bound`]); without them (HTTP/2), a timer of the request's own. `now`:
    /// the caller's reading of the clock as it sends, from which the timeout runs (and the
    /// pool's idle connections are aged). The future owns what it uses: it is built where it
    /// is held, and borrows nothing from its caller.
    pub fn send(
        pool: Arc<Pool>,
        timeout: Duration,
        request: Request<ProxyBody>,
        timers: Option<ConnTimers>,
        now: Instant,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, Refusal>> + Send + 'static {
        conn_timers::bound(timers, timeout, now, || pool.send(request, now)).map(move |answered| {
            match answered {
                Some(Ok(response)) => Ok(response),
                Some(Err(e)) => Err(classify(&e)),
                None => Err(Refusal::new(
                    ErrorCode::UpstreamUnreachable,
                    format!("upstream did not answer within {timeout:?}"),
                )),
            }
        })
    }

    /// Sends a WebSocket upgrade request on a connection of its own, HTTP/1.1 whatever the
    /// upstream offers, and returns the response, whose upgrade (`hyper::upgrade::on`) is the
    /// connection once it is `101`. The connection is never pooled: it ends with the WebSocket.
    pub async fn upgrade(
        &self,
        mut request: Request<ProxyBody>,
        allow_private: bool,
        certified: Option<&Certified>,
    ) -> Result<Response<Incoming>, Refusal> {
        let mut connector = match (certified, allow_private) {
            (Some(certified), _) => certified.upgrade.clone(),
            (None, true) => self.upgrade_private.clone(),
            (None, false) => self.upgrade_public.clone(),
        };
        let uri = request.uri().clone();
        let work = async move {
            std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut connector, cx))
                .await
                .map_err(|e| classify_source(Some(&*e), true))?;
            let io = tower_service::Service::call(&mut connector, uri.clone())
                .await
                .map_err(|e| classify_source(Some(&*e), true))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| classify_source(Some(&e), false))?;
            tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "WebSocket upstream connection ended with an error");
                }
            });
            // Origin form, with the authority in Host, as the pool sends HTTP/1 requests.
            to_origin_form(
                &mut request,
                uri.scheme() == Some(&http::uri::Scheme::HTTPS),
            );
            sender
                .send_request(request)
                .await
                .map_err(|e| classify_source(Some(&e), false))
        };
        match tokio::time::timeout(self.request_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(Refusal::new(
                ErrorCode::UpstreamUnreachable,
                format!("upstream did not answer within {:?}", self.request_timeout),
            )),
        }
    }
}

/// A pool of connections over `tcp` with `tls`: HTTP/1.1, or h2 by ALPN for an agent's HTTP/2
/// requests (see [`Pool`]).
fn pool(tls: &rustls::ClientConfig, tcp: TcpConnector, max_idle_per_host: usize) -> Arc<Pool> {
    let h2 = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp.clone());
    Pool::new(h2, http1_only(tls, tcp), max_idle_per_host)
}

/// A connector that offers HTTP/1.1 only (an agent's HTTP/1.1 requests, WebSocket upgrades).
fn http1_only(tls: &rustls::ClientConfig, tcp: TcpConnector) -> Connector {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp)
}

/// Maps a send error to `upstream_tls` (any TLS failure: untrusted, expired or misnamed
/// certificate, no common TLS version) or `upstream_unreachable`, with a message built from
/// typed parts only: never a URI (a query could carry an injected credential).
fn classify(error: &SendError) -> Refusal {
    classify_source(
        std::error::Error::source(error),
        matches!(error, SendError::Connect(_)),
    )
}

/// [`classify`] of an error chain starting at `source`.
fn classify_source(
    mut source: Option<&(dyn std::error::Error + 'static)>,
    is_connect: bool,
) -> Refusal {
    while let Some(e) = source {
        if let Some(tls) = rustls_error_in(e) {
            return tls_refusal(tls);
        }
        if let Some(connect) = e.downcast_ref::<ConnectError>() {
            return Refusal::new(connect.code(), connect.to_string());
        }
        source = e.source();
    }
    let what = if is_connect {
        "could not connect to the upstream"
    } else {
        "the upstream connection failed"
    };
    Refusal::new(ErrorCode::UpstreamUnreachable, what)
}

/// The rustls error `e` is or wraps. tokio-rustls reports a failed handshake as
/// `io::Error(InvalidData, rustls::Error)` and hyper-rustls wraps that in another `io::Error`;
/// `io::Error::source` skips the wrapped error itself, so the wrappers are opened here.
fn rustls_error_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = e;
    for _ in 0..8 {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = current.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
    None
}

/// `upstream_tls` with what the agent's operator needs to fix it.
fn tls_refusal(error: &rustls::Error) -> Refusal {
    Refusal::new(
        ErrorCode::UpstreamTls,
        format!("upstream TLS failed: {}", describe_tls_error(error)),
    )
}

/// A precise, URI-free description of a rustls failure toward an upstream.
fn describe_tls_error(error: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error, PeerIncompatible};
    match error {
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet".into()
            }
            CertificateError::NotValidForName => "certificate not valid for name".into(),
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => {
                let names = presented_names(presented);
                format!(
                    "certificate not valid for name {} (it names: {names})",
                    expected.to_str()
                )
            }
            CertificateError::UnknownIssuer => "unknown issuer: the certificate is self-signed \
                 or from a CA that is neither a public root nor in upstream.extra_ca_files"
                .into(),
            CertificateError::BadSignature => "certificate has a bad signature".into(),
            CertificateError::Revoked => "certificate revoked".into(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "certificate is not valid for TLS server authentication".into()
            }
            CertificateError::BadEncoding => "certificate is malformed".into(),
            other => format!("certificate rejected: {other}"),
        },
        Error::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13)
        | Error::AlertReceived(AlertDescription::ProtocolVersion) => {
            "the upstream does not speak TLS 1.2 or 1.3 (older versions are refused)".into()
        }
        Error::AlertReceived(alert) => {
            format!("the upstream aborted the handshake (alert: {alert:?})")
        }
        Error::NoCertificatesPresented => "the upstream presented no certificate".into(),
        other => other.to_string(),
    }
}

/// The DNS names and IP addresses a certificate presented, from rustls-webpki's `Debug` forms
/// (`DnsName("a.example")`, `IpAddress(10.0.0.1)`); other kinds (URIs…) are left out, and a
/// long list is cut short.
fn presented_names(presented: &[String]) -> String {
    const SHOWN: usize = 8;
    let names: Vec<&str> = presented
        .iter()
        .filter_map(|p| {
            p.strip_prefix("DnsName(\"")
                .and_then(|n| n.strip_suffix("\")"))
                .or_else(|| p.strip_prefix("IpAddress(")?.strip_suffix(')'))
        })
        .collect();
    match names.len() {
        0 => "no DNS name or IP address".into(),
        n if n > SHOWN => format!("{}, and {} more", names[..SHOWN].join(", "), n - SHOWN),
        _ => names.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError, Error, PeerIncompatible};

    #[test]
    fn tls_errors_are_described_precisely() {
        let cases: Vec<(Error, &str)> =
            vec![
            (CertificateError::Expired.into(), "certificate expired"),
            (CertificateError::NotValidYet.into(), "certificate not valid yet"),
            (CertificateError::UnknownIssuer.into(), "unknown issuer"),
            (CertificateError::NotValidForName.into(), "certificate not valid for name"),
            (
                CertificateError::NotValidForNameContext {
                    expected: rustls::pki_types::ServerName::try_from("api.example").unwrap(),
                    presented: vec![
                        "DnsName(\"other.example\")".into(),
                        "IpAddress(10.0.0.1)".into(),
                        "UniformResourceIdentifier(\"https://x/?token=1\")".into(),
                    ],
                }
                .into(),
                "certificate not valid for name api.example (it names: other.example, 10.0.0.1)",
            ),
            (
                Error::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13),
                "does not speak TLS 1.2 or 1.3",
            ),
            (
                Error::AlertReceived(AlertDescription::ProtocolVersion),
                "does not speak TLS 1.2 or 1.3",
            ),
            (
                Error::AlertReceived(AlertDescription::HandshakeFailure),
                "aborted the handshake (alert: HandshakeFailure)",
            ),
        ];
        for (error, expected) in cases {
            let refusal = tls_refusal(&error);
            assert_eq!(refusal.code, ErrorCode::UpstreamTls);
            assert!(
                refusal.message.contains(expected),
                "{error:?}: {:?}",
                refusal.message
            );
            assert!(!refusal.message.contains("token"), "{}", refusal.message);
        }
        let many: Vec<String> = (0..20)
            .map(|i| format!("DnsName(\"n{i}.example\")"))
            .collect();
        assert!(presented_names(&many).ends_with("n7.example, and 12 more"));
    }

    #[test]
    fn wrapped_rustls_errors_are_found() {
        let tls = Error::InvalidCertificate(CertificateError::Expired);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = std::io::Error::other(inner);
        assert!(matches!(
            rustls_error_in(&outer),
            Some(Error::InvalidCertificate(CertificateError::Expired))
        ));
        assert!(rustls_error_in(&std::io::Error::other("plain")).is_none());
    }
}
