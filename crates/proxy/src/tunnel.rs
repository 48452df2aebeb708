//! Blind CONNECT tunnels, for targets no route names when `unmatched: tunnel`
//! ([`sidekey_policy::ConnectDecision::Tunnel`]): bytes are copied both ways with no credential
//! and no inspection; one audit record when it closes. A reload after which policy would no
//! longer tunnel the target closes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sidekey_audit::Outcome;
use sidekey_body::{empty, ProxyBody};
use sidekey_grants::Grant;
use sidekey_policy::{ConnectDecision, Refusal, Target};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::PendingRecord;
use crate::exchange::Session;
use crate::{ProxyState, SharedState};

/// Connects to the target first (so a failure is a readable 502, not a dead tunnel), then
/// answers 200 and copies bytes until either side closes, shutdown, or a config reload after
/// which the target would no longer be tunnelled blindly (`unmatched` no longer `tunnel`, or
/// a route now names it).
pub async fn open(
    shared: &Arc<SharedState>,
    state: Arc<ProxyState>,
    target: Target,
    grant: Option<Arc<Grant>>,
    mut request: Request<Incoming>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let server = match state
        .upstream
        .tcp()
        .connect(&target.host.to_string(), target.port)
        .await
    {
        Ok(stream) => stream,
        Err(e) => {
            return Session::connect(&state, &target, started)
                .refuse(Refusal::new(e.code(), e.to_string()), None::<Incoming>)
                .await
        }
    };
    let mut record = PendingRecord::connect(state.audit.clone(), &target, started);
    record.set_grant(grant.as_deref());
    record.set_decision(Outcome::Tunnel);
    record.set_status(200);
    let bytes_in = record.meter();
    let idle_timeout = state.limits.idle_timeout;
    let mut reloads = shared.reloads();
    let shared = Arc::clone(shared);
    let on_upgrade = hyper::upgrade::on(&mut request);
    tracker.spawn(async move {
        let client = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                record.finish_streamed(0, Some("client_aborted"));
                return;
            }
        };
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut server_read, mut server_write) = server.into_split();
        let mut up = 0u64;
        let mut down = 0u64;
        // Milliseconds since `opened` at the last byte either way: a tunnel quiet both ways
        // for `idle_timeout` is closed, so idle tunnels cannot pile up.
        let opened = tokio::time::Instant::now();
        let last = AtomicU64::new(0);
        let copy = async {
            tokio::join!(
                pump(&mut client_read, &mut server_write, &mut up, &last, opened),
                pump(
                    &mut server_read,
                    &mut client_write,
                    &mut down,
                    &last,
                    opened
                ),
            )
        };
        let idle = async {
            loop {
                tokio::time::sleep((idle_timeout / 4).max(Duration::from_millis(100))).await;
                let active = Duration::from_millis(last.load(Ordering::Relaxed));
                if opened.elapsed().saturating_sub(active) >= idle_timeout {
                    break;
                }
            }
        };
        let revoked = async {
            while reloads.changed().await.is_ok() {
                if !tunnelled_blindly(&shared.load(), &target, grant.as_deref()) {
                    return;
                }
            }
            std::future::pending::<()>().await;
        };
        let error = tokio::select! {
            _ = copy => None,
            () = idle => Some("idle_timeout"),
            () = revoked => Some("config_reloaded"),
            _ = shutdown.cancelled() => Some("shutdown"),
        };
        bytes_in.add(up);
        record.finish_streamed(down, error);
    });
    Response::new(empty())
}

/// Whether `state` would open a blind tunnel to `target` for the grant its CONNECT presented.
fn tunnelled_blindly(state: &ProxyState, target: &Target, grant: Option<&Grant>) -> bool {
    state.policy.decide_connect(target, grant.map(|g| &g.scope)) == ConnectDecision::Tunnel
}

/// Copies until EOF or error, counting bytes and noting activity; then half-closes the writer.
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    count: &mut u64,
    last: &AtomicU64,
    opened: tokio::time::Instant,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if writer.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                *count += n as u64;
                let at = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
                last.store(at, Ordering::Relaxed);
            }
        }
    }
    let _ = writer.shutdown().await;
}
