//! The forward listener (HTTP_PROXY / HTTPS_PROXY): identifies the target of each request —
//! from the CONNECT authority, or from an absolute-form URI that its Host header must agree
//! with — then intercepts, tunnels, refuses, or hands the request to [`crate::exchange`].

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sidekey_config::Unmatched;
use sidekey_policy::{Authority, Scheme, Target};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{empty, ProxyBody};
use crate::error::{ErrorCode, Refusal};
use crate::exchange::{self, refuse_unidentified, Exchange};
use crate::{intercept, tunnel, ProxyState, SharedState};

pub(crate) const LISTENER: &str = "forward";

/// Serves one agent connection on the forward listener until it closes or shutdown.
/// Each request is decided under the config current when it arrives.
pub async fn serve_connection(
    shared: Arc<SharedState>,
    stream: crate::AgentStream,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let limits = shared.load().limits.clone();
    let service = {
        let shutdown = shutdown.clone();
        service_fn(move |request| {
            let shared = Arc::clone(&shared);
            let shutdown = shutdown.clone();
            let tracker = tracker.clone();
            async move { Ok::<_, Infallible>(dispatch(shared, request, shutdown, tracker).await) }
        })
    };
    let connection = limits
        .http1_builder()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "forward connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

async fn dispatch(
    shared: Arc<SharedState>,
    request: Request<Incoming>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Response<ProxyBody> {
    if request.method() == Method::CONNECT {
        connect(shared, request, shutdown, tracker).await
    } else {
        absolute_form(shared.load(), request).await
    }
}

/// `CONNECT host:port`: intercept when a route names the target, tunnel blindly when
/// `unmatched: tunnel`, refuse otherwise.
async fn connect(
    shared: Arc<SharedState>,
    mut request: Request<Incoming>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Response<ProxyBody> {
    let state = shared.load();
    let raw = request
        .uri()
        .authority()
        .map_or("", |a| a.as_str())
        .to_string();
    // Only the authority-form (RFC 9110 §9.3.6): an absolute URL or a path would be a second
    // description of the target, and one of them would have to be ignored.
    let uri = request.uri();
    if uri.scheme().is_some() || !uri.path().is_empty() || uri.query().is_some() {
        let shown = uri.to_string();
        let refusal = Refusal::new(
            ErrorCode::RequestInvalid,
            format!("CONNECT target `{shown}` must be host:port, with no scheme or path"),
        );
        return refuse_unidentified(&state, LISTENER, "CONNECT", &shown, refusal);
    }
    let authority = match Authority::parse(&raw) {
        Ok(a) => a,
        Err(e) => {
            let refusal = Refusal::new(
                ErrorCode::RequestInvalid,
                format!("CONNECT target `{raw}` is invalid: {e}"),
            );
            return refuse_unidentified(&state, LISTENER, "CONNECT", &raw, refusal);
        }
    };
    let Some(port) = authority.port else {
        let refusal = Refusal::new(
            ErrorCode::RequestInvalid,
            format!("CONNECT target `{raw}` needs a port"),
        );
        return refuse_unidentified(&state, LISTENER, "CONNECT", &raw, refusal);
    };
    let target = Target {
        scheme: Scheme::Https,
        host: authority.host,
        port,
    };
    if state.policy.names_target(&target) {
        let leaf = match intercept::leaf_for(&state, &target) {
            Ok(leaf) => leaf,
            Err(refusal) => {
                return Exchange::new(LISTENER, target).refuse(&state, "CONNECT", "", refusal)
            }
        };
        let on_upgrade = hyper::upgrade::on(&mut request);
        tracker.spawn(intercept::run(
            Arc::clone(&shared),
            state.limits.clone(),
            target,
            leaf,
            on_upgrade,
            shutdown,
            tracker.clone(),
        ));
        return Response::new(empty());
    }
    if state.unmatched == Unmatched::Tunnel {
        return tunnel::open(&shared, state, target, request, shutdown, &tracker).await;
    }
    let message = format!("{}:{} is not in any route", target.host, target.port);
    Exchange::new(LISTENER, target).refuse(
        &state,
        "CONNECT",
        "",
        Refusal::new(ErrorCode::HostNotAllowed, message),
    )
}

/// `GET http://host/path`: the URI names the target; the Host header must name the same.
async fn absolute_form(state: Arc<ProxyState>, request: Request<Incoming>) -> Response<ProxyBody> {
    let method = request.method().as_str().to_string();
    let uri = request.uri();
    let raw = uri.authority().map_or("", |a| a.as_str()).to_string();
    let invalid = |message: String| Refusal::new(ErrorCode::RequestInvalid, message);
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => {}
        (Some("https"), Some(_)) => {
            let refusal = invalid(
                "https:// URLs go through CONNECT: set HTTPS_PROXY to this listener".into(),
            );
            return exchange::drained(
                request,
                refuse_unidentified(&state, LISTENER, &method, &raw, refusal),
            )
            .await;
        }
        (None, None) => {
            let refusal = invalid(
                "this is sidekey's forward proxy: send absolute-form requests (HTTP_PROXY) or CONNECT; \
                 clients that need a base URL use the route listener's /r/<route>/"
                    .into(),
            );
            return exchange::drained(
                request,
                refuse_unidentified(&state, LISTENER, &method, &raw, refusal),
            )
            .await;
        }
        _ => {
            let refusal = invalid(format!("unsupported request target `{uri}`"));
            return exchange::drained(
                request,
                refuse_unidentified(&state, LISTENER, &method, &raw, refusal),
            )
            .await;
        }
    }
    let authority = match Authority::parse(&raw) {
        Ok(a) => a,
        Err(e) => {
            let refusal = invalid(format!("request target host `{raw}` is invalid: {e}"));
            return exchange::drained(
                request,
                refuse_unidentified(&state, LISTENER, &method, &raw, refusal),
            )
            .await;
        }
    };
    let target = Target {
        scheme: Scheme::Http,
        port: authority.port_or_default(Scheme::Http),
        host: authority.host,
    };
    let mut exchange = Exchange::new(LISTENER, target);
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Err(refusal) = exchange::check_host_header(&request, &exchange.target, false) {
        let response = exchange.refuse(&state, &method, &path, refusal);
        return exchange::drained(request, response).await;
    }
    exchange.may_pass_unmatched = true;
    exchange::handle(state, exchange, request).await
}
