//! The floor under sidekey's request path: the least a forward proxy built on the same
//! dependencies (tokio, hyper's HTTP/1 server and client, `http`) does for the plain-HTTP
//! scenario, and nothing else. It takes an absolute-form request, refuses any authority but
//! `--allow`, replaces `Authorization` with a fixed bearer token, puts the request in origin form,
//! and sends it on this client connection's own upstream HTTP/1.1 connection (opened at the first
//! request and kept), streaming the answer back.
//!
//! No policy, no credential, no audit record, no metrics, no limits, no hop-by-hop handling, no
//! pool shared between connections: what it costs per request is what tokio and hyper cost for
//! a two-sided proxy, which `instructions.py --targets floor` counts beside sidekey and nginx. It
//! is a measuring stick, not a proxy to use.
//!
//! Usage: `bench-floor --listen 127.0.0.1:18320 --upstream 127.0.0.1:18080
//!   --allow api.bench.test:18080 [--token-len 300]`
//! One thread, tokio's current-thread scheduler: what sidekey runs with one worker, as in the
//! benchmarks (`SIDEKEY_WORKER_THREADS=1`).

mod args;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, hyper::Error>;

struct Config {
    upstream: String,
    allow: String,
    token: HeaderValue,
}

fn main() -> Result<(), Error> {
    let cli = args::Args::from_env();
    let arg = |name: &str| cli.value(name);
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:18320".into());
    let token_len: usize = arg("--token-len").map_or(Ok(300), |n| n.parse())?;
    let config = Arc::new(Config {
        upstream: arg("--upstream").unwrap_or_else(|| "127.0.0.1:18080".into()),
        allow: arg("--allow").unwrap_or_else(|| "api.bench.test:18080".into()),
        token: HeaderValue::try_from(format!("Bearer {}", "x".repeat(token_len)))?,
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                served = serve(listen, config) => served,
                // Ends cleanly (exit code 0), so that a run that stopped it can tell a crash.
                _ = terminate.recv() => Ok(()),
            }
        })
}

async fn serve(listen: String, config: Arc<Config>) -> Result<(), Error> {
    let listener = TcpListener::bind(&listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let config = config.clone();
        tokio::spawn(async move {
            // This connection's upstream sender; HTTP/1 requests on one connection come one at a
            // time, so it is taken at a request's start and put back once the request is sent.
            let upstream: Arc<Mutex<Option<client::SendRequest<Incoming>>>> = Arc::default();
            let service = service_fn(move |req| forward(req, config.clone(), upstream.clone()));
            let _ = server::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    mut req: Request<Incoming>,
    config: Arc<Config>,
    upstream: Arc<Mutex<Option<client::SendRequest<Incoming>>>>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().authority().map(|a| a.as_str()) != Some(config.allow.as_str()) {
        return Ok(status(StatusCode::FORBIDDEN));
    }
    let origin_form = req.uri().path_and_query().map_or("/", |p| p.as_str());
    match Uri::try_from(origin_form) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    }
    req.headers_mut()
        .insert(AUTHORIZATION, config.token.clone());
    let taken = upstream.lock().ok().and_then(|mut slot| slot.take());
    let mut sender = match taken {
        Some(sender) => sender,
        None => match connect(&config.upstream).await {
            Ok(sender) => sender,
            Err(_) => return Ok(status(StatusCode::BAD_GATEWAY)),
        },
    };
    if sender.ready().await.is_err() {
        return Ok(status(StatusCode::BAD_GATEWAY));
    }
    let answer = sender.send_request(req);
    if let Ok(mut slot) = upstream.lock() {
        *slot = Some(sender);
    }
    Ok(match answer.await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    })
}

async fn connect(addr: &str) -> Result<client::SendRequest<Incoming>, Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = client::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    *response.status_mut() = code;
    response
}
