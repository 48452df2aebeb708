//! The forward listener (HTTP_PROXY / HTTPS_PROXY). Identifies the target of each request —
//! the CONNECT authority, or the URI of an absolute-form `http://` request — and does what
//! policy says: a CONNECT is intercepted ([`crate::intercept`]), tunnelled blindly
//! ([`crate::tunnel`]) or refused; a plain request goes to [`crate::exchange`].

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::Either;
use futures_util::FutureExt as _;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use sidekey_body::{empty, ProxyBody};
use sidekey_policy::{connect_target, ConnectDecision, Identified, TargetMemo};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn_timers::{watched, AgentIncoming, ConnTimers, Serving, Watched};
use crate::exchange::{self, Exchange, Session};
use crate::h1::{self, Ended, IdleWait};
use crate::websocket::Streams;
use crate::{intercept, tunnel, ProxyState, SharedState};

pub(crate) const LISTENER: &str = "forward";

/// Serves one agent connection on the forward listener until it closes or shutdown.
/// Each request is decided under the config current when it arrives.
pub async fn serve_connection<IO>(
    shared: Arc<SharedState>,
    stream: IO,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) where
    IO: IdleWait,
{
    let limits = shared.load().limits.clone();
    let shared_state = Arc::clone(&shared);
    let timers = ConnTimers::new(limits.header_read_timeout);
    let service = {
        let shutdown = shutdown.clone();
        let timers = timers.clone();
        // The connection's last absolute-form target: its next requests name it again.
        let memo = RefCell::new(TargetMemo::default());
        service_fn(move |request| {
            let request = timers.track(request);
            let shared = Arc::clone(&shared);
            let shutdown = shutdown.clone();
            let tracker = tracker.clone();
            let serving = Some(timers.serving());
            let timers = timers.clone();
            // Boxed: hyper keeps a slot the size of this future for every open connection,
            // idle ones too (benches/NOTES.md, "Binary settings and idle memory").
            Box::pin(request_future(
                shared, request, shutdown, tracker, timers, serving, &memo,
            ))
        })
    };
    match h1::serve(&limits.http1_builder(), stream, service, &timers, &shutdown).await {
        Ended::Closed(Err(e)) => {
            tracing::debug!(error = %e, "forward connection ended with an error");
            exchange::record_unparsed(&shared_state.load(), LISTENER, None, &e);
        }
        Ended::HeadTimeout => {
            tracing::debug!(
                "forward connection closed: no request head within header_read_timeout"
            );
        }
        Ended::Closed(Ok(())) | Ended::Shutdown => {}
    }
}

/// One request's future as hyper holds it, boxed, while the request is in flight: under
/// 1,032 bytes, so that glibc serves its box from the thread's cache of recently freed chunks
/// (`tcache`), which a request finds warm (benches/NOTES.md, "The request's future under 1 KB,
/// on a new machine").
fn request_future(
    shared: Arc<SharedState>,
    request: Request<AgentIncoming>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    timers: ConnTimers,
    serving: Option<Serving>,
    memo: &RefCell<TargetMemo>,
) -> impl Future<Output = Result<Response<Watched>, Infallible>> + Send {
    dispatch(shared, request, shutdown, tracker, timers, memo).map(watched(serving))
}

/// The request's future: a CONNECT's (boxed: one per tunnel, and its interception and tunnel
/// futures are large) or an exchange's. Plain functions down to [`exchange::handle`], so that no
/// layer keeps a second copy of the request in the future hyper holds.
fn dispatch(
    shared: Arc<SharedState>,
    request: Request<AgentIncoming>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    timers: ConnTimers,
    memo: &RefCell<TargetMemo>,
) -> impl Future<Output = Response<ProxyBody>> + Send {
    if request.method() == Method::CONNECT {
        let connect: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(connect(
            shared,
            request.map(AgentIncoming::into_inner),
            shutdown,
            tracker,
        ));
        Either::Left(connect)
    } else {
        let state = shared.load();
        let streams = Streams {
            shared,
            shutdown,
            tracker,
        };
        Either::Right(absolute_form(state, request, streams, timers, memo))
    }
}

/// `CONNECT host:port`.
async fn connect(
    shared: Arc<SharedState>,
    mut request: Request<Incoming>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let state = shared.load();
    // identify
    let target = match connect_target(request.uri()) {
        Ok(target) => target,
        Err(refusal) => {
            // As written: `host:port`, or the whole target when it is more than that.
            let shown = request.uri().to_string();
            return Session::unidentified(
                &state,
                LISTENER,
                request.method(),
                request.headers(),
                &shown,
            )
            .refuse(refusal, None::<Incoming>)
            .await;
        }
    };
    // The grant, read at CONNECT: it binds every request in the tunnel.
    let grant = match exchange::grant_of_proxy_credentials(&state, request.headers()).await {
        Ok(grant) => grant,
        Err(refusal) => {
            return Session::connect(&state, &target, started)
                .refuse(refusal, None::<Incoming>)
                .await
        }
    };
    // decide
    let scope = grant.as_deref().map(|g| &g.scope);
    match state.policy.decide_connect(&target, scope) {
        ConnectDecision::Intercept => {
            // The leaf comes before the CONNECT is answered, so that a refusal (mint budget
            // spent, host outside the CA's scope) is still a readable HTTP response.
            let leaf = match intercept::leaf_for(&state, &target) {
                Ok(leaf) => leaf,
                Err(refusal) => {
                    let mut session = Session::connect(&state, &target, started);
                    session.set_grant(grant.as_deref());
                    return session.refuse(refusal, None::<Incoming>).await;
                }
            };
            let on_upgrade = hyper::upgrade::on(&mut request);
            tracker.spawn(intercept::run(
                Arc::clone(&shared),
                target,
                grant,
                leaf,
                on_upgrade,
                shutdown,
                tracker.clone(),
            ));
            Response::new(empty())
        }
        ConnectDecision::Tunnel => {
            tunnel::open(&shared, state, target, grant, request, shutdown, &tracker).await
        }
        ConnectDecision::Deny(refusal) => {
            let mut session = Session::connect(&state, &target, started);
            session.set_grant(grant.as_deref());
            session.refuse(refusal, None::<Incoming>).await
        }
    }
}

/// `GET http://host/path`: the URI names the target.
fn absolute_form(
    state: Arc<ProxyState>,
    request: Request<AgentIncoming>,
    streams: Streams,
    timers: ConnTimers,
    memo: &RefCell<TargetMemo>,
) -> impl Future<Output = Response<ProxyBody>> + Send {
    // identify
    let identified = memo.borrow_mut().absolute_target(request.uri());
    match identified {
        Ok(target) => {
            let exchange = Exchange::new(Identified::Absolute(target))
                .with_streams(streams)
                .with_conn_timers(Some(timers));
            Either::Left(exchange::handle(state, exchange, request))
        }
        Err(refusal) => {
            let shown = request
                .uri()
                .authority()
                .map_or(String::new(), |a| a.to_string());
            let session = Session::unidentified(
                &state,
                LISTENER,
                request.method(),
                request.headers(),
                &shown,
            );
            Either::Right(session.refuse(refusal, Some(request.into_body())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<F, A, B, C, D, E, G, H, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D, E, G, H) -> R,
    {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_requests_future_fits_the_allocators_per_thread_cache() {
        // glibc's `tcache` keeps freed chunks of up to 1,032 bytes per thread, last freed
        // first: a request's box is then the one the request before freed, warm in the cache.
        // Past that size it comes from the shared bins, colder (benches/NOTES.md).
        let size = returned_size(request_future);
        assert!(
            size <= 1032,
            "a request's future is {size} bytes: past glibc's tcache (1,032 bytes)"
        );
    }
}
