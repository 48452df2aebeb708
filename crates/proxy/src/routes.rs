//! The route listener: `/r/<route>/<path>` goes to `https://<the route's host>/<path>`, for
//! clients that cannot use a proxy or trust a CA. Only the named route applies.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sidekey_policy::{Scheme, Target};
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;
use crate::error::{ErrorCode, Refusal};
use crate::exchange::{self, refuse_unidentified, Exchange};
use crate::{ProxyState, SharedState};

const LISTENER: &str = "routes";

/// Serves one client connection on the route listener.
/// Each request is decided under the config current when it arrives.
pub async fn serve_connection(
    shared: Arc<SharedState>,
    stream: crate::AgentStream,
    shutdown: CancellationToken,
) {
    let limits = shared.load().limits.clone();
    let service = service_fn(move |request| {
        let state = shared.load();
        async move { Ok::<_, Infallible>(route(state, request).await) }
    });
    let connection = limits
        .http1_builder()
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "route connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

async fn route(state: Arc<ProxyState>, mut request: Request<Incoming>) -> Response<ProxyBody> {
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/r/") else {
        let refusal = Refusal::new(
            ErrorCode::RequestInvalid,
            "the route listener serves /r/<route>/<path>",
        );
        return exchange::drained(
            request,
            refuse_unidentified(&state, LISTENER, &method, "", refusal),
        )
        .await;
    };
    let (name, tail) = match rest.split_once('/') {
        Some((name, tail)) => (name, format!("/{tail}")),
        None => (rest, "/".to_string()),
    };
    let Some(index) = state.policy.route_index(name) else {
        let refusal = Refusal::new(
            ErrorCode::HostNotAllowed,
            format!("no route is named `{name}`"),
        );
        return exchange::drained(
            request,
            refuse_unidentified(&state, LISTENER, &method, name, refusal),
        )
        .await;
    };
    let Some((host, port)) = state.routes[index].base.clone() else {
        let refusal = Refusal::new(
            ErrorCode::HostNotAllowed,
            format!("route `{name}` names several hosts or a wildcard; reach it through the forward listener"),
        );
        return exchange::drained(
            request,
            refuse_unidentified(&state, LISTENER, &method, name, refusal),
        )
        .await;
    };
    let mut exchange = Exchange::new(
        LISTENER,
        Target {
            scheme: Scheme::Https,
            host,
            port,
        },
    );
    exchange.only_route = Some(index);
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{tail}?{query}"),
        None => tail,
    };
    match Uri::try_from(path_and_query.as_str()) {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => {
            let refusal = Refusal::new(ErrorCode::RequestInvalid, "request path is invalid");
            let response = exchange.refuse(&state, &method, &path_and_query, refusal);
            return exchange::drained(request, response).await;
        }
    }
    // The Host header names this listener, not the upstream: it is replaced, not checked.
    request.headers_mut().remove(http::header::HOST);
    exchange::handle(state, exchange, request).await
}
