//! The admin listener (loopback by default): `/healthz` (the process serves), `/readyz`
//! (listeners are up and every eager credential is held), the local issuers' JWKS at
//! `/.well-known/jwks.json` so upstreams can verify the JWTs sidekey mints, and the grant
//! endpoints (`POST /grants`, `DELETE /grants/{jti}`: a grant holder derives a child grant for
//! a sub-agent, or ends its task early), answered only to loopback clients, and `/metrics`
//! (Prometheus text format 0.0.4, [`sidekey_metrics`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sidekey_credentials::{CredentialStore, Jwk};
use sidekey_grants::Grants;
use sidekey_metrics::Metrics;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

mod credentials;
pub mod demo;
mod grants;
mod page;

/// What the admin endpoints report on.
pub struct AdminState {
    /// Set once every listener is bound and serving.
    pub serving: AtomicBool,
    /// The current generation of the credential store (replaced by a config reload).
    credentials: ArcSwap<CredentialStore>,
    /// JWKS body, rendered when the local issuers change (at start and at reloads).
    jwks: ArcSwap<Bytes>,
    /// Task grants, when configured.
    grants: ArcSwapOption<Grants>,
    /// The forward listener as bound, for the proxy URL handed out with a child grant.
    forward: std::sync::Mutex<Option<SocketAddr>>,
    /// Each credential's scope (the routes that use it and a breadth figure), from the config.
    scopes: ArcSwap<HashMap<String, serde_json::Value>>,
    /// The process's metrics, once [`AdminState::set_metrics`] is called; `/metrics` is 404
    /// before that.
    metrics: std::sync::OnceLock<Arc<Metrics>>,
}

impl AdminState {
    pub fn new(
        credentials: Arc<CredentialStore>,
        keys: &[Jwk],
        grants: Option<Arc<Grants>>,
    ) -> Self {
        AdminState {
            serving: AtomicBool::new(false),
            credentials: ArcSwap::new(credentials),
            jwks: ArcSwap::from_pointee(render_jwks(keys)),
            grants: ArcSwapOption::new(grants),
            forward: std::sync::Mutex::new(None),
            scopes: ArcSwap::from_pointee(HashMap::new()),
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// The JWKS document of the local issuers, as `/.well-known/jwks.json` serves it.
    pub fn jwks(&self) -> Bytes {
        Bytes::clone(&self.jwks.load())
    }

    /// After a config reload: the new credential store, the local issuers' keys, the grants.
    pub fn update(
        &self,
        credentials: Arc<CredentialStore>,
        keys: &[Jwk],
        grants: Option<Arc<Grants>>,
    ) {
        self.credentials.store(credentials);
        self.jwks.store(Arc::new(render_jwks(keys)));
        self.grants.store(grants);
    }

    /// The credentials' scopes of the current config (at start and at each reload).
    pub fn set_scopes(&self, scopes: HashMap<String, serde_json::Value>) {
        self.scopes.store(Arc::new(scopes));
    }

    /// The forward listener's address once bound (a configured port 0 is known only then).
    pub fn set_forward(&self, addr: SocketAddr) {
        *self
            .forward
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(addr);
    }

    /// The metrics `/metrics` serves (set once; later calls are ignored).
    pub fn set_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// `/metrics`: the credential expiry gauges from the store as it is now, then everything.
    fn metrics(&self) -> Option<Vec<u8>> {
        let metrics = self.metrics.get()?;
        let status = self.credentials.load().status();
        Some(
            metrics.scrape(
                status
                    .iter()
                    .map(|c| (c.name.as_str(), c.issuer.as_str(), c.expires_at)),
            ),
        )
    }

    fn forward(&self) -> Option<SocketAddr> {
        *self
            .forward
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ready(&self) -> Result<(), &'static str> {
        if !self.serving.load(Ordering::Acquire) {
            return Err("listeners are not serving yet");
        }
        if !self.credentials.load().ready() {
            return Err("eager credentials are not held yet");
        }
        Ok(())
    }
}

/// What a listener of the admin state serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `listen.admin`: every endpoint (the grant endpoints to loopback clients only).
    Admin,
    /// `listen.metrics`: `GET /metrics` and nothing else, for a scraper outside the pod: no
    /// credential IDs, scopes, keys or grant endpoints.
    MetricsOnly,
    /// The quickstart's demo API ([`demo`]): `GET /whoami` and nothing else.
    DemoApi,
}

/// Serves `surface` until shutdown.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    surface: Surface,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(Arc::clone(&state), surface, stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn connection(state: Arc<AdminState>, surface: Surface, stream: TcpStream) {
    let loopback = stream.peer_addr().is_ok_and(|a| a.ip().is_loopback());
    let service = service_fn(move |request: Request<Incoming>| {
        let state = Arc::clone(&state);
        async move {
            let response = if surface == Surface::DemoApi {
                demo::answer(&state, &request)
            } else if surface == Surface::MetricsOnly && request.uri().path() != "/metrics" {
                text(StatusCode::NOT_FOUND, "not found\n")
            } else if request.uri().path() == "/grants"
                || request.uri().path().starts_with("/grants/")
            {
                grants::serve(&state, loopback, request).await
            } else {
                route(&state, &request)
            };
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

fn route(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match state.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        "/" => {
            let document = credentials::document(&state.credentials.load(), &state.scopes.load());
            let refusals = state
                .metrics
                .get()
                .map(|m| m.refusals_by_code())
                .unwrap_or_default();
            let html = page::render(&document, &refusals);
            let mut response = Response::new(Full::new(Bytes::from(html)));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            // Nothing from elsewhere, nothing scripted.
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
            );
            response
        }
        "/credentials" => {
            let document = credentials::document(&state.credentials.load(), &state.scopes.load());
            let mut response = Response::new(Full::new(Bytes::from(document.to_string())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        "/.well-known/jwks.json" => {
            let mut response = Response::new(Full::new(Bytes::clone(&state.jwks.load())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            );
            response
        }
        "/metrics" => match state.metrics() {
            Some(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(sidekey_metrics::CONTENT_TYPE),
                );
                response
            }
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The JWKS document for `keys`.
fn render_jwks(keys: &[Jwk]) -> Bytes {
    Bytes::from(serde_json::json!({ "keys": keys }).to_string())
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
