//! TLS interception inside a CONNECT tunnel. The agent's TLS is terminated with a leaf minted
//! for the CONNECT host; SNI must name that same host, and every request inside must name it
//! in Host/:authority. HTTP/2 or HTTP/1.1 toward the agent, as ALPN decides; TLS 1.2 or 1.3.
//!
//! SNI policy: the CONNECT authority is the target. A ClientHello without SNI is accepted only
//! when that target is an IP literal (clients send no SNI for IPs; TLS forbids IPs in SNI, and
//! rustls reads an IP there as no SNI). For a DNS target, a missing or different SNI is a
//! `target_mismatch`: the handshake completes so that every request inside gets a readable 403.

use std::convert::Infallible;
use std::sync::Arc;

use rustls::ServerConfig;
use sidekey_tls::TlsError;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sidekey_policy::{CanonicalHost, Target};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::ProxyBody;
use crate::error::{ErrorCode, Refusal};
use crate::exchange::{self, Exchange};
use crate::forward::LISTENER;
use crate::{Limits, ProxyState, SharedState};

/// What the tunnel established, shared by the requests inside it.
struct Tunnel {
    target: Target,
    /// The SNI the agent sent, when it does not name the CONNECT host.
    sni_mismatch: Option<String>,
}

/// The leaf certificate for the CONNECT target, fetched before the CONNECT is answered so that a
/// refusal (mint budget spent, host outside the CA's scope) is still a readable HTTP response.
pub fn leaf_for(state: &ProxyState, target: &Target) -> Result<Arc<ServerConfig>, Refusal> {
    state.ca.server_config(&target.host).map_err(|e| match e {
        TlsError::MintRateExceeded { .. } => {
            tracing::warn!(target = %target, "leaf mint budget spent; CONNECT refused");
            Refusal::new(ErrorCode::RateLimited, e.to_string())
        }
        TlsError::OutOfScope(_) => Refusal::new(ErrorCode::HostNotAllowed, e.to_string()),
        other => {
            tracing::error!(target = %target, error = %other, "cannot mint a leaf certificate");
            Refusal::new(
                ErrorCode::UpstreamTls,
                format!("sidekey could not make a certificate for {}", target.host),
            )
        }
    })
}

/// Completes the CONNECT upgrade, the TLS handshake with `config` (from [`leaf_for`]), and
/// serves HTTP inside the tunnel.
/// Each request inside is decided under the config current when it arrives; `limits` are the
/// connection's, from the config current at CONNECT.
pub async fn run(
    shared: Arc<SharedState>,
    limits: Limits,
    target: Target,
    config: Arc<ServerConfig>,
    on_upgrade: OnUpgrade,
    shutdown: CancellationToken,
    _tracker: TaskTracker,
) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "CONNECT upgrade failed");
            return;
        }
    };
    let timeout = limits.handshake_timeout;
    let acceptor =
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), TokioIo::new(upgraded));
    let start = match tokio::time::timeout(timeout, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::info!(target = %target, error = %e, "agent TLS ClientHello rejected");
            return;
        }
        Err(_) => {
            tracing::info!(target = %target, "agent sent no TLS ClientHello in time");
            return;
        }
    };
    let sni = start.client_hello().server_name().map(str::to_string);
    let sni_mismatch = match &sni {
        Some(name) => match CanonicalHost::parse(name) {
            Ok(host) if host == target.host => None,
            _ => Some(name.clone()),
        },
        // Clients send no SNI for IP literals; for a DNS name, a missing SNI is a mismatch.
        None if target.host.ip().is_some() => None,
        None => Some(String::new()),
    };
    let tls = match tokio::time::timeout(timeout, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // Usually the agent does not trust sidekey's CA (see ca.cert_out).
            tracing::info!(target = %target, error = %e, "agent TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(target = %target, "agent TLS handshake timed out");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let tunnel = Arc::new(Tunnel {
        target,
        sni_mismatch,
    });
    let service = service_fn(move |request| {
        let state = shared.load();
        let tunnel = Arc::clone(&tunnel);
        async move { Ok::<_, Infallible>(inner(state, tunnel, request).await) }
    });
    let io = TokioIo::new(tls);
    if h2 {
        let connection = limits.http2_builder().serve_connection(io, service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => log_end(result),
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    } else {
        let connection = limits.http1_builder().serve_connection(io, service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => log_end(result),
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "intercepted connection ended with an error");
    }
}

/// One request inside the tunnel: the target is the CONNECT target, if SNI and Host agree.
async fn inner(
    state: Arc<ProxyState>,
    tunnel: Arc<Tunnel>,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let exchange = Exchange::new(LISTENER, tunnel.target.clone());
    let refusal = match &tunnel.sni_mismatch {
        Some(sni) if sni.is_empty() => Some(Refusal::new(
            ErrorCode::TargetMismatch,
            format!(
                "the TLS ClientHello named no server (no SNI, or an IP address, which SNI cannot \
                 carry); it must name the CONNECT target {}",
                tunnel.target.host
            ),
        )),
        Some(sni) => Some(Refusal::new(
            ErrorCode::TargetMismatch,
            format!(
                "TLS server name {sni} does not match the CONNECT target {}",
                tunnel.target.host
            ),
        )),
        None => exchange::check_host_header(&request, &tunnel.target, true).err(),
    };
    if let Some(refusal) = refusal {
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let response = exchange.refuse(&state, request.method().as_str(), path, refusal);
        return exchange::drained(request, response).await;
    }
    exchange::handle(state, exchange, request).await
}
