//! The HTTPS endpoint the API server calls:
//!
//! - `POST /inject` — pods annotated `sidekey.dev/inject: "true"` (webhook `pods.sidekey.dev`);
//! - `POST /inject/namespace` — pods in namespaces labelled for injection: injected unless
//!   annotated `"false"` (webhook `namespaces.sidekey.dev`). Two paths instead of a namespace
//!   lookup keep the injector free of any RBAC permission;
//! - `GET /healthz` — kubelet's probes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission;
use crate::inject::Trigger;
use crate::settings::Settings;

/// The API server caps request bodies at 3 MiB; an AdmissionReview carries one object.
const BODY_LIMIT: usize = 4 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The webhook's own `timeoutSeconds` is at most 30 s; nothing takes longer than that.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts TLS connections until `shutdown`, then lets in-flight reviews finish.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        };
        let (acceptor, settings, shutdown) =
            (acceptor.clone(), Arc::clone(&settings), shutdown.clone());
        tracker.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            connection(tls, peer, settings, shutdown).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let settings = Arc::clone(&settings);
        async move { Ok::<_, Infallible>(handle(request, &settings).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle(request: Request<Incoming>, settings: &Settings) -> Response<Full<Bytes>> {
    let trigger = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::POST, "/inject") => Trigger::PodAnnotation,
        (&Method::POST, "/inject/namespace") => Trigger::Namespace,
        (_, "/inject" | "/inject/namespace" | "/healthz") => {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let body = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        Limited::new(request.into_body(), BODY_LIMIT).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}\n"),
            )
        }
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "body not received in time\n"),
    };
    match admission::review(&body, settings, trigger) {
        Ok(reviewed) => {
            let response = reviewed.review.response.as_ref();
            let allowed = response.is_some_and(|r| r.allowed);
            let patched = response.is_some_and(|r| r.patch.is_some());
            tracing::info!(allowed, patched, "{}", reviewed.summary);
            match serde_json::to_vec(&reviewed.review) {
                Ok(json) => {
                    let mut response = Response::new(Full::new(Bytes::from(json)));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode the review: {e}\n"),
                ),
            }
        }
        Err(why) => {
            tracing::warn!("bad request: {why}");
            text(StatusCode::BAD_REQUEST, &format!("{why}\n"))
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
