//! Connections to upstreams: name resolution (with the config's `resolve` overrides), TCP with
//! a connect timeout, TLS verified by hyper-rustls, HTTP/1.1 or HTTP/2 by ALPN, and a
//! connection pool. Redirects are never followed: the client returns every response as is.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sidekey_config::UpstreamConfig;
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::error::{ErrorCode, Refusal};

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
    #[error("request URI has no host")]
    NoHost,
}

/// Resolves and connects, honouring `resolve` overrides.
#[derive(Clone)]
pub struct TcpConnector {
    overrides: Arc<HashMap<(String, u16), SocketAddr>>,
    connect_timeout: Duration,
}

impl TcpConnector {
    pub fn new(config: &UpstreamConfig) -> Self {
        let overrides = config
            .resolve
            .iter()
            .map(|o| ((o.host.to_string(), o.port), o.addr))
            .collect();
        TcpConnector {
            overrides: Arc::new(overrides),
            connect_timeout: config.connect_timeout,
        }
    }

    /// Connects to `host:port` (`host` canonical, IPv6 without brackets).
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let addrs = self.resolve(host, port, deadline).await?;
        let mut last = None;
        for addr in addrs {
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
        Err(ConnectError::Refused {
            host: host.to_string(),
            port,
            reason: last.unwrap_or_else(|| "no address to try".into()),
        })
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
        let lookup = tokio::net::lookup_host((host, port));
        let addrs: Vec<SocketAddr> = match tokio::time::timeout_at(deadline, lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => {
                return Err(ConnectError::Resolve {
                    host: host.to_string(),
                    reason: e.to_string(),
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

type Connector = hyper_rustls::HttpsConnector<TcpConnector>;

/// The pooled upstream client.
#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, ProxyBody>,
    tcp: TcpConnector,
    request_timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, tls: rustls::ClientConfig) -> Self {
        let tcp = TcpConnector::new(config);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp.clone());
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Upstream {
            client,
            tcp,
            request_timeout: config.request_timeout,
        }
    }

    /// The raw TCP connector, for blind tunnels.
    pub fn tcp(&self) -> &TcpConnector {
        &self.tcp
    }

    /// Sends the request and waits (bounded by `request_timeout`) for the response head.
    pub async fn send(&self, request: Request<ProxyBody>) -> Result<Response<Incoming>, Refusal> {
        match tokio::time::timeout(self.request_timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(Refusal::new(
                ErrorCode::UpstreamUnreachable,
                format!("upstream did not answer within {:?}", self.request_timeout),
            )),
        }
    }
}

/// Maps a client error to `upstream_tls` (any TLS failure, e.g. an untrusted or expired
/// certificate) or `upstream_unreachable`, with a message built from known parts only.
fn classify(error: &hyper_util::client::legacy::Error) -> Refusal {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Refusal::new(
                ErrorCode::UpstreamTls,
                format!("upstream TLS failed: {tls}"),
            );
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Refusal::new(
                    ErrorCode::UpstreamTls,
                    format!("upstream TLS failed: {tls}"),
                );
            }
        }
        if let Some(connect) = e.downcast_ref::<ConnectError>() {
            return Refusal::new(ErrorCode::UpstreamUnreachable, connect.to_string());
        }
        // hyper-rustls may carry the handshake failure as text only; rustls' own messages
        // name certificates and alerts.
        let text = e.to_string();
        if text.contains("invalid peer certificate") || text.contains("received fatal alert") {
            return Refusal::new(
                ErrorCode::UpstreamTls,
                format!("upstream TLS failed: {text}"),
            );
        }
        source = e.source();
    }
    let what = if error.is_connect() {
        "could not connect to the upstream"
    } else {
        "the upstream connection failed"
    };
    Refusal::new(ErrorCode::UpstreamUnreachable, what)
}
