//! TLS interception inside a CONNECT tunnel that policy decided to intercept. The agent's TLS
//! is terminated with a leaf minted for the CONNECT host; HTTP/2 or HTTP/1.1 toward the agent
//! as ALPN decides, TLS 1.2 or 1.3. Each request inside is an exchange of its own, decided under
//! the config current when it arrives, with the CONNECT target as its target and the TLS server
//! name the agent sent ([`sidekey_policy::check_sni`]): a mismatch is answered per request
//! (`target_mismatch`), so the handshake completes and the agent gets a readable 403.
//!
//! A tunnel is recorded through the requests made in it. One that carries no request — the
//! upgrade failed, the handshake failed or timed out (usually: the agent does not trust
//! sidekey's CA), or the agent closed it first — is one `CONNECT` record saying why.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt as _;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use sidekey_body::ProxyBody;
use sidekey_grants::Grant;
use sidekey_policy::{check_sni, ErrorCode, Identified, Refusal, Sni, Target};
use sidekey_tls::TlsError;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::PendingConnect;
use crate::conn_timers::{watched, ConnTimers};
use crate::exchange::{self, Exchange};
use crate::forward::LISTENER;
use crate::h1::{self, Ended};
use crate::websocket::Streams;
use crate::{ProxyState, SharedState};

/// The leaf certificate for the CONNECT target, fetched before the CONNECT is answered so that a
/// refusal (mint budget spent, host outside the CA's scope) is still a readable HTTP response.
pub fn leaf_for(state: &ProxyState, target: &Target) -> Result<Arc<ServerConfig>, Refusal> {
    let leaf = state.ca.leaf(&target.host);
    if let Ok((_, minted)) = &leaf {
        state.metrics.tls_leaf(*minted);
    }
    leaf.map(|(config, _)| config).map_err(|e| match e {
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
/// serves HTTP inside the tunnel. The connection's limits are those of the config current at
/// CONNECT.
pub async fn run(
    shared: Arc<SharedState>,
    target: Target,
    grant: Option<Arc<Grant>>,
    config: Arc<ServerConfig>,
    on_upgrade: OnUpgrade,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let state = shared.load();
    let limits = state.limits.clone();
    let record = PendingConnect::new(
        state.audit.clone(),
        target.clone(),
        grant.clone(),
        Instant::now(),
    );
    drop(state);

    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "CONNECT upgrade failed");
            record.finish("client_aborted");
            return;
        }
    };
    let timeout = limits.handshake_timeout;
    let acceptor =
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), TokioIo::new(upgraded));
    // The handshake's futures boxed too, for the same reason as the connections below.
    let start = match Box::pin(tokio::time::timeout(timeout, acceptor)).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            tracing::debug!(target = %target, "agent closed the tunnel before a ClientHello");
            record.finish("client_aborted");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(target = %target, error = %e, "agent TLS ClientHello rejected");
            record.finish("tls_handshake_failed");
            return;
        }
        Err(_) => {
            tracing::info!(target = %target, "agent sent no TLS ClientHello in time");
            record.finish("tls_handshake_timeout");
            return;
        }
    };
    let sni = check_sni(&target, start.client_hello().server_name());
    let tls = match Box::pin(tokio::time::timeout(timeout, start.into_stream(config))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // Usually the agent does not trust sidekey's CA (see ca.cert_out).
            tracing::info!(target = %target, error = %e, "agent TLS handshake failed");
            record.finish("tls_handshake_failed");
            return;
        }
        Err(_) => {
            tracing::info!(target = %target, "agent TLS handshake timed out");
            record.finish("tls_handshake_timeout");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let served = Arc::new(AtomicBool::new(false));
    let tunnel = Arc::new(Tunnel {
        target,
        sni,
        grant,
        streams: Streams {
            shared: Arc::clone(&shared),
            shutdown: shutdown.clone(),
            tracker,
        },
    });
    // HTTP/1 waits for each request head (`header_read_timeout`); HTTP/2 has its own limits.
    let timers = (!h2).then(|| ConnTimers::new(limits.header_read_timeout));
    let service = {
        let (served, shared, tunnel, timers) = (
            Arc::clone(&served),
            Arc::clone(&shared),
            Arc::clone(&tunnel),
            timers.clone(),
        );
        service_fn(move |request| {
            served.store(true, Ordering::Relaxed);
            let state = shared.load();
            let tunnel = Arc::clone(&tunnel);
            let serving = timers.as_ref().map(ConnTimers::serving);
            // Boxed, as on the forward listener (forward::serve_connection).
            Box::pin(inner(state, &tunnel, request, timers.clone()).map(watched(serving)))
        })
    };
    // Each protocol's connection boxed: the task is sized for its largest state, and an idle
    // tunnel would otherwise hold room for the other protocol's connection and the handshake's.
    if h2 {
        let mut connection = Box::pin(
            limits
                .http2_builder()
                .serve_connection(TokioIo::new(tls), service),
        );
        tokio::select! {
            result = connection.as_mut() => log_end(result),
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    } else if let Some(timers) = &timers {
        let builder = limits.http1_builder();
        match Box::pin(h1::serve_whole(&builder, tls, service, timers, &shutdown)).await {
            Ended::Closed(result) => {
                if let Err(e) = &result {
                    // A request head that does not parse: recorded under the tunnel's target.
                    if exchange::record_unparsed(&shared.load(), LISTENER, Some(&tunnel.target), e)
                    {
                        served.store(true, Ordering::Relaxed);
                    }
                }
                log_end(result);
            }
            Ended::HeadTimeout => {
                tracing::debug!(
                    "intercepted connection closed: no request head within header_read_timeout"
                );
            }
            Ended::Shutdown => {}
        }
    }
    if !served.load(Ordering::Relaxed) {
        record.finish("no_request");
    } else {
        // The requests have their records; the tunnel needs none of its own.
        record.discard();
    }
}

/// What the tunnel established, shared by the requests inside it.
struct Tunnel {
    target: Target,
    sni: Sni,
    /// The grant the CONNECT presented: it binds every request inside (each checked live).
    grant: Option<Arc<Grant>>,
    /// For WebSockets opened inside.
    streams: Streams,
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "intercepted connection ended with an error");
    }
}

/// One request inside the tunnel: its exchange's future (see `forward::dispatch`).
fn inner(
    state: Arc<ProxyState>,
    tunnel: &Tunnel,
    request: Request<Incoming>,
    timers: Option<ConnTimers>,
) -> impl Future<Output = Response<ProxyBody>> + Send {
    let exchange = Exchange::new(Identified::Intercepted {
        target: tunnel.target.clone(),
        sni: tunnel.sni.clone(),
    })
    .with_grant(tunnel.grant.clone())
    .with_streams(tunnel.streams.clone())
    .with_conn_timers(timers);
    exchange::handle(state, exchange, request)
}
