//! The route listener: `/r/<route>/<path>` goes to `https://<the route's host>/<path>`, for
//! clients that cannot use a proxy or trust a CA. Only the named route applies
//! ([`sidekey_policy::route_target`], [`sidekey_policy::Identified::Route`]).

use std::future::Future;
use std::sync::Arc;

use futures_util::future::Either;
use futures_util::FutureExt as _;
use http::{Request, Response, Uri};
use hyper::service::service_fn;
use sidekey_body::ProxyBody;
use sidekey_policy::{route_target, ErrorCode, Refusal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn_timers::{watched, AgentIncoming, ConnTimers};
use crate::exchange::{self, Exchange, Session};
use crate::h1::{self, Ended, IdleWait};
use crate::websocket::Streams;
use crate::{ProxyState, SharedState};

const LISTENER: &str = "routes";

/// Serves one client connection on the route listener.
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
    let streams = Streams {
        shared: Arc::clone(&shared),
        shutdown: shutdown.clone(),
        tracker,
    };
    let timers = ConnTimers::new(limits.header_read_timeout);
    let service = {
        let timers = timers.clone();
        service_fn(move |request| {
            let request = timers.track(request);
            let state = shared.load();
            let streams = streams.clone();
            let serving = Some(timers.serving());
            let timers = timers.clone();
            // Boxed, as on the forward listener (forward::serve_connection).
            Box::pin(route(state, request, streams, timers).map(watched(serving)))
        })
    };
    match h1::serve(&limits.http1_builder(), stream, service, &timers, &shutdown).await {
        Ended::Closed(Err(e)) => {
            tracing::debug!(error = %e, "route connection ended with an error");
            exchange::record_unparsed(&shared_state.load(), LISTENER, None, &e);
        }
        Ended::HeadTimeout => {
            tracing::debug!("route connection closed: no request head within header_read_timeout");
        }
        Ended::Closed(Ok(())) | Ended::Shutdown => {}
    }
}

/// The request's future: its exchange, or its refusal (see `forward::dispatch`).
fn route(
    state: Arc<ProxyState>,
    mut request: Request<AgentIncoming>,
    streams: Streams,
    timers: ConnTimers,
) -> impl Future<Output = Response<ProxyBody>> + Send {
    // identify
    let address = match route_target(&state.policy, request.uri().path()) {
        Ok(address) => address,
        Err(refusal) => {
            // Recorded under the route name the agent asked for, if it named one.
            let path = request.uri().path();
            let name = path
                .strip_prefix("/r/")
                .map_or("", |rest| rest.split('/').next().unwrap_or(rest))
                .to_string();
            let session =
                Session::unidentified(&state, LISTENER, request.method(), request.headers(), &name);
            return Either::Right(session.refuse(refusal, Some(request.into_body())));
        }
    };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{}?{query}", address.path),
        None => address.path,
    };
    let exchange = Exchange::new(address.identified)
        .with_streams(streams)
        .with_conn_timers(Some(timers));
    match Uri::try_from(path_and_query.as_str()) {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => {
            // Cut from a URI that parsed, so this does not happen; refused all the same.
            let refusal = Refusal::new(ErrorCode::RequestInvalid, "request path is invalid");
            let session =
                Session::unidentified(&state, LISTENER, request.method(), request.headers(), "");
            return Either::Right(session.refuse(refusal, Some(request.into_body())));
        }
    }
    // The Host header names this listener, not the upstream: it is replaced, not checked.
    request.headers_mut().remove(http::header::HOST);
    Either::Left(exchange::handle(state, exchange, request))
}
