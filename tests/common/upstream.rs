//! `Upstream`: a real HTTP server the tests point sidekey at, HTTPS (HTTP/1.1 and h2 by ALPN,
//! certificate from a [`TestCa`]) or plain HTTP, on 127.0.0.1:0. It runs on its own thread
//! with its own tokio runtime, so tests stay plain `#[test]` functions, and it records every
//! request it receives so a test can assert what reached it — and what never did.
//!
//! What reached it is known once it has read everything sent to it: [`Upstream::wait_quiet`]
//! waits until no request is being read and no connection holds unread bytes (or an unread
//! close). A test that asserts what never arrived first waits for sidekey to finish the
//! exchanges (their audit records, written after anything sidekey forwarded), then for this.
//!
//! Endpoints (any method):
//! - `/echo/...` (and `/anything/...`, as on httpbin): 200 JSON `{method, path, version, authority, sni, headers: [[name, value]...],
//!   body_len}`, headers in the order received;
//! - `/sse?n=N&interval_ms=M`: `text/event-stream`, `data: i\n\n` for i in 0..N, one every M ms,
//!   each sent as its own frame;
//! - `/redirect?to=URL&status=302`: a redirect to URL;
//! - `/status/<code>`: that status;
//! - `/reflect-auth`: the request's Authorization header, in the body and in `x-reflected-auth`;
//! - `/reflect-split?header=NAME&size=N&interval_ms=M`: header NAME (default authorization),
//!   streamed in frames of N bytes (default 7), M ms apart (default 20), so that a reflected
//!   value arrives cut across chunk boundaries;
//! - `/bytes/<n>`: n bytes of `x`.
//! - `/close`: 200 with `Connection: close` (HTTP/1.1: the server closes the connection after
//!   answering, as a server ending keep-alive does);
//! - `/reflect-coded?coding=C`: `reflected: <Authorization>\n` coded with C (`gzip`, `x-gzip`,
//!   `deflate`, `br`, `zstd`, or a list such as `gzip, br`, applied in that order) and sent with
//!   `Content-Encoding: C` whatever the request's Accept-Encoding said; for any other coding
//!   (`compress`, made-up ones) the text is sent as is, under that Content-Encoding;
//! - `/sse-coded?coding=C&n=N&interval_ms=M`: like `/sse`, each event coded with C
//!   (`gzip`, `deflate`, `br` or `zstd`) and flushed on its own, as a compressing SSE server
//!   does.
//!
//! - any other path: a POST whose JSON body says `"stream": true` (a model API's streaming
//!   request, examples/openai) gets `/sse`'s answer (3 events, 200 ms apart); anything else
//!   404 with a JSON body.
//!
//! Every response carries `x-test-upstream: <label>` so a test can tell which server answered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::ca::TestCa;

/// Names the default HTTPS upstream's certificate covers.
pub const DEFAULT_NAMES: &[&str] = &[
    "api.test.local",
    "other.test.local",
    "*.test.local",
    "*.wild.test.local",
    "localhost",
    "127.0.0.1",
];

/// How long [`Upstream::wait_quiet`] waits.
const QUIET_TIMEOUT: Duration = Duration::from_secs(10);

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// TLS SNI (None for plain HTTP or a client that sent none).
    pub sni: Option<String>,
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// `:authority` (h2) or the Host header (HTTP/1.1).
    pub authority: Option<String>,
    /// "HTTP/1.1", "HTTP/2.0", ...
    pub version: String,
    /// Lower-case names, in the order received.
    pub headers: Vec<(String, String)>,
    /// Body bytes received (up to where it broke off, if it did).
    pub body_len: usize,
    /// The body arrived to its end (false: the connection or stream broke off mid-body).
    pub body_complete: bool,
    /// The first 64 KiB of the body, as text (lossy).
    pub body_head: String,
}

impl Recorded {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The bearer token in `Authorization: Bearer <token>`, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")?.strip_prefix("Bearer ")
    }
}

#[derive(Default)]
struct State {
    label: String,
    log: Mutex<Log>,
    /// Notified whenever `log` changes.
    changed: Condvar,
    connections: AtomicUsize,
    tls_failures: AtomicUsize,
    /// `/reject-first-token`: the Authorization value it refuses.
    rejected: Mutex<Option<String>>,
}

#[derive(Default)]
struct Log {
    requests: Vec<Recorded>,
    /// Requests whose head has been read and whose body has not been recorded yet.
    in_progress: usize,
    /// Open connections: an id and a second handle on the socket, to see whether it holds
    /// bytes, or a close, that the server has not read yet.
    open: Vec<(usize, std::net::TcpStream)>,
}

impl State {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }

    /// Changes the log and wakes the waiters.
    fn update(&self, f: impl FnOnce(&mut Log)) {
        f(&mut self.log());
        self.changed.notify_all();
    }
}

/// Counts a request in progress from its head until it is recorded, or dropped unrecorded.
struct InProgress(Arc<State>);

impl InProgress {
    fn start(state: &Arc<State>) -> InProgress {
        state.update(|log| log.in_progress += 1);
        InProgress(state.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.update(|log| log.in_progress -= 1);
    }
}

/// Removes an open connection from the log when its task ends.
struct Open(Arc<State>, usize);

impl Drop for Open {
    fn drop(&mut self) {
        let id = self.1;
        self.0.update(|log| log.open.retain(|(i, _)| *i != id));
    }
}

/// Whether `probe` (a handle on an open connection) holds nothing unread: no bytes, no close.
fn drained(probe: &std::net::TcpStream) -> bool {
    matches!(probe.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A running test upstream; stopped when dropped.
pub struct Upstream {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// HTTPS upstream with a certificate for [`DEFAULT_NAMES`] signed by `ca`.
    pub fn https(ca: &TestCa) -> Upstream {
        Upstream::https_with_names(ca, DEFAULT_NAMES, "https")
    }

    /// HTTPS upstream with a certificate for `names` signed by `ca`; `label` is sent back in
    /// `x-test-upstream`.
    pub fn https_with_names(ca: &TestCa, names: &[&str], label: &str) -> Upstream {
        let config = ca.server_config(names, &[b"h2", b"http/1.1"]);
        Upstream::start(Some(config), label)
    }

    /// HTTPS upstream that offers HTTP/1.1 only (ALPN), for requests sidekey must downgrade
    /// from HTTP/2.
    pub fn https_h1_only(ca: &TestCa, names: &[&str], label: &str) -> Upstream {
        let config = ca.server_config(names, &[b"http/1.1"]);
        Upstream::start(Some(config), label)
    }

    /// HTTPS upstream presenting whatever `config` presents (e.g. a broken certificate).
    pub fn https_with_config(config: Arc<rustls::ServerConfig>, label: &str) -> Upstream {
        Upstream::start(Some(config), label)
    }

    /// Plain HTTP upstream (HTTP/1.1, and h2c with prior knowledge).
    pub fn http() -> Upstream {
        Upstream::start(None, "http")
    }

    fn start(tls: Option<Arc<rustls::ServerConfig>>, label: &str) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("upstream addr");
        let state = Arc::new(State {
            label: label.to_string(),
            ..State::default()
        });
        let (shutdown, shutdown_rx) = oneshot::channel();
        let is_tls = tls.is_some();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{label}-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("upstream runtime");
                rt.block_on(accept_loop(listener, tls, thread_state, shutdown_rx));
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .expect("spawn upstream thread");
        Upstream {
            addr,
            tls: is_tls,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The listening address (127.0.0.1:port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:port` or `http://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Every request received so far, in arrival order (each recorded once its body ended or
    /// broke off).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.log().requests.clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }

    /// The only request received; panics (listing them) if there is not exactly one.
    pub fn only_request(&self) -> Recorded {
        let reqs = self.requests();
        assert_eq!(
            reqs.len(),
            1,
            "expected exactly one request at the upstream, got {reqs:#?}"
        );
        reqs.into_iter().next().unwrap()
    }

    /// Waits until at least `n` requests have arrived.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let (log, _) = self
            .state
            .changed
            .wait_timeout_while(self.state.log(), timeout, |log| log.requests.len() < n)
            .unwrap();
        assert!(
            log.requests.len() >= n,
            "upstream got {} requests within {timeout:?}, expected {n}: {:#?}",
            log.requests.len(),
            log.requests
        );
        log.requests.clone()
    }

    /// Waits until the upstream has read everything sent to it so far: no request is being
    /// read, and no open connection holds unread bytes or an unread close. A request whose
    /// sender broke it off is recorded by then (`body_complete: false`).
    ///
    /// The sockets are looked at every 10 ms (bytes arriving wake no one here); a request's
    /// progress wakes the wait at once.
    pub fn wait_quiet(&self) {
        let timeout = QUIET_TIMEOUT;
        let deadline = Instant::now() + timeout;
        let mut log = self.state.log();
        loop {
            if log.in_progress == 0 && log.open.iter().all(|(_, probe)| drained(probe)) {
                return;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "upstream {} not quiet within {timeout:?}: {} requests in progress, {} connections open; received so far: {:#?}",
                self.state.label,
                log.in_progress,
                log.open.len(),
                log.requests
            );
            let slice = (deadline - now).min(Duration::from_millis(10));
            log = self.state.changed.wait_timeout(log, slice).unwrap().0;
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (e.g. the client did not trust the certificate).
    pub fn tls_failures(&self) -> usize {
        self.state.tls_failures.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<State>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let id = state.connections.fetch_add(1, Ordering::SeqCst);
        // A second handle on the socket, for `wait_quiet` to peek at.
        let (tcp, probe) = match with_probe(tcp) {
            Ok(pair) => pair,
            Err(_) => continue,
        };
        state.update(|log| log.open.push((id, probe)));
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _open = Open(state.clone(), id);
            match acceptor {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let sni = tls.get_ref().1.server_name().map(str::to_owned);
                        serve(TokioIo::new(tls), sni, state).await;
                    }
                    Err(_) => {
                        state.tls_failures.fetch_add(1, Ordering::SeqCst);
                    }
                },
                None => serve(TokioIo::new(tcp), None, state).await,
            }
        });
    }
}

/// `tcp` and a duplicate handle on its socket (non-blocking, like `tcp`).
fn with_probe(
    tcp: tokio::net::TcpStream,
) -> std::io::Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let std = tcp.into_std()?;
    let probe = std.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(std)?, probe))
}

async fn serve<I>(io: I, sni: Option<String>, state: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let in_progress = InProgress::start(&state);
        handle(req, sni.clone(), state.clone(), in_progress)
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

type Body = BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

async fn handle(
    req: Request<Incoming>,
    sni: Option<String>,
    state: Arc<State>,
    in_progress: InProgress,
) -> Result<Response<Body>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let (mut body_len, mut body_complete, mut head) = (0, true, Vec::new());
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_len += data.len();
                    let room = (64usize << 10).saturating_sub(head.len());
                    head.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Err(_) => {
                body_complete = false;
                break;
            }
        }
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let authority = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    let recorded = Recorded {
        sni,
        method: parts.method.to_string(),
        path: path.clone(),
        authority,
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len,
        body_complete,
        body_head: String::from_utf8_lossy(&head).into_owned(),
    };
    state.update(|log| log.requests.push(recorded.clone()));
    drop(in_progress);

    let route = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let mut resp = if route.starts_with("/echo") || route.starts_with("/anything") {
        echo(&recorded)
    } else if route == "/sse" {
        sse(query)
    } else if route == "/redirect" {
        redirect(query)
    } else if let Some(code) = route.strip_prefix("/status/") {
        status(code)
    } else if route == "/reject-first-token" {
        // Refuses (401) the first Authorization it sees, and that one ever after; accepts
        // any other: an upstream that revoked the token sidekey holds.
        let auth = recorded.header("authorization").unwrap_or("").to_string();
        let mut rejected = state.rejected.lock().unwrap();
        if rejected.get_or_insert_with(|| auth.clone()) == &auth {
            status("401")
        } else {
            echo(&recorded)
        }
    } else if route == "/reflect-auth" {
        reflect_auth(&recorded)
    } else if route == "/reflect-split" {
        reflect_split(&recorded, query)
    } else if route == "/reflect-coded" {
        reflect_coded(&recorded, query).await
    } else if route == "/sse-coded" {
        sse_coded(query)
    } else if route == "/close" {
        Response::builder()
            .header("connection", "close")
            .body(full("closing\n"))
            .unwrap()
    } else if let Some(n) = route.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        Response::builder()
            .header("content-type", "application/octet-stream")
            .body(full(vec![b'x'; n]))
            .unwrap()
    } else if wants_stream(&recorded) {
        sse("n=3&interval_ms=200")
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("content-type", "application/json")
            .body(full(
                json!({"error": "no such test endpoint", "path": path}).to_string(),
            ))
            .unwrap()
    };
    resp.headers_mut()
        .insert("x-test-upstream", state.label.parse().unwrap());
    // No body where HTTP allows none (HTTP/2 peers reset the stream otherwise).
    let status = resp.status().as_u16();
    if parts.method == http::Method::HEAD || status == 204 || status == 304 || status < 200 {
        resp.headers_mut().remove("content-length");
        *resp.body_mut() = full(Bytes::new());
    }
    Ok(resp)
}

fn echo(r: &Recorded) -> Response<Body> {
    let body = json!({
        "method": r.method,
        "path": r.path,
        "version": r.version,
        "authority": r.authority,
        "sni": r.sni,
        "headers": r.headers.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect::<Vec<_>>(),
        "body_len": r.body_len,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

/// Query parameter `name`, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` (as a space).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response body fed from a channel: each message is sent as its own frame, so the server
/// writes (and flushes) it as soon as it is produced.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|msg| msg.map(|b| Ok(Frame::data(b))))
    }
}

/// A POST whose JSON body asks for `"stream": true`, as the model APIs' streaming requests do.
fn wants_stream(recorded: &Recorded) -> bool {
    recorded.method == "POST"
        && serde_json::from_str::<serde_json::Value>(&recorded.body_head)
            .is_ok_and(|v| v["stream"] == true)
}

fn sse(query: &str) -> Response<Body> {
    let n: usize = query_param(query, "n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let interval = Duration::from_millis(
        query_param(query, "interval_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(200),
    );
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            if tx
                .send(Bytes::from(format!("data: {i}\n\n")))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(ChannelBody(rx).boxed())
        .unwrap()
}

fn redirect(query: &str) -> Response<Body> {
    let to = query_param(query, "to").unwrap_or_else(|| "/".to_string());
    let status: u16 = query_param(query, "status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(302);
    Response::builder()
        .status(status)
        .header("location", to)
        .header("content-type", "text/plain")
        .body(full("redirecting\n"))
        .unwrap()
}

fn status(code: &str) -> Response<Body> {
    let code: u16 = code.trim_end_matches('/').parse().unwrap_or(400);
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST))
        .header("content-type", "text/plain")
        .body(full(format!("status {code}\n")))
        .unwrap()
}

fn reflect_auth(r: &Recorded) -> Response<Body> {
    let auth = r.header("authorization").unwrap_or("").to_string();
    let mut builder = Response::builder().header("content-type", "text/plain");
    if !auth.is_empty() {
        builder = builder.header("x-reflected-auth", auth.clone());
    }
    builder.body(full(auth)).unwrap()
}

fn reflect_split(r: &Recorded, query: &str) -> Response<Body> {
    let name = query_param(query, "header").unwrap_or_else(|| "authorization".to_string());
    let size: usize = query_param(query, "size")
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(7);
    let interval = Duration::from_millis(
        query_param(query, "interval_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let value = format!("reflected: {}\n", r.header(&name).unwrap_or(""));
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for piece in value.as_bytes().chunks(size) {
            if tx.send(Bytes::copy_from_slice(piece)).await.is_err() {
                return;
            }
            tokio::time::sleep(interval).await;
        }
    });
    Response::builder()
        .header("content-type", "text/plain")
        .body(ChannelBody(rx).boxed())
        .unwrap()
}

/// A streaming compressor for one content coding, flushed per write.
enum Compressor {
    Gzip(async_compression::tokio::write::GzipEncoder<Vec<u8>>),
    Deflate(async_compression::tokio::write::ZlibEncoder<Vec<u8>>),
    Brotli(Box<async_compression::tokio::write::BrotliEncoder<Vec<u8>>>),
    Zstd(async_compression::tokio::write::ZstdEncoder<Vec<u8>>),
}

impl Compressor {
    fn new(coding: &str) -> Option<Compressor> {
        use async_compression::tokio::write::*;
        Some(match coding.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Compressor::Gzip(GzipEncoder::new(Vec::new())),
            "deflate" => Compressor::Deflate(ZlibEncoder::new(Vec::new())),
            "br" => Compressor::Brotli(Box::new(BrotliEncoder::new(Vec::new()))),
            "zstd" => Compressor::Zstd(ZstdEncoder::new(Vec::new())),
            _ => return None,
        })
    }

    /// Compresses `data`, flushes, and returns what the compressor has produced so far.
    async fn write_flush(&mut self, data: &[u8]) -> Vec<u8> {
        use tokio::io::AsyncWriteExt;
        macro_rules! go {
            ($e:expr) => {{
                $e.write_all(data).await.unwrap();
                $e.flush().await.unwrap();
                std::mem::take($e.get_mut())
            }};
        }
        match self {
            Compressor::Gzip(e) => go!(e),
            Compressor::Deflate(e) => go!(e),
            Compressor::Brotli(e) => go!(e),
            Compressor::Zstd(e) => go!(e),
        }
    }

    /// Ends the stream; returns the last bytes.
    async fn finish(&mut self) -> Vec<u8> {
        use tokio::io::AsyncWriteExt;
        macro_rules! go {
            ($e:expr) => {{
                $e.shutdown().await.unwrap();
                std::mem::take($e.get_mut())
            }};
        }
        match self {
            Compressor::Gzip(e) => go!(e),
            Compressor::Deflate(e) => go!(e),
            Compressor::Brotli(e) => go!(e),
            Compressor::Zstd(e) => go!(e),
        }
    }
}

/// `data` coded with each coding of the comma-separated `codings` in turn; unknown codings
/// leave it as it is.
pub async fn encode(codings: &str, data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    for coding in codings.split(',') {
        if let Some(mut c) = Compressor::new(coding) {
            let mut coded = c.write_flush(&out).await;
            coded.extend(c.finish().await);
            out = coded;
        }
    }
    out
}

/// [`encode`] outside a runtime.
pub fn encode_blocking(codings: &str, data: &[u8]) -> Vec<u8> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(encode(codings, data))
}

/// `data` with `coding` (one of gzip, deflate, br, zstd) undone, for tests that check what an
/// agent would get by decompressing a body itself.
pub fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::*;
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut out = Vec::new();
        match coding {
            "gzip" => GzipDecoder::new(data).read_to_end(&mut out).await,
            "deflate" => ZlibDecoder::new(data).read_to_end(&mut out).await,
            "br" => BrotliDecoder::new(data).read_to_end(&mut out).await,
            "zstd" => ZstdDecoder::new(data).read_to_end(&mut out).await,
            other => panic!("no decoder for {other}"),
        }
        .unwrap_or_else(|e| panic!("{coding} body does not decode: {e}"));
        out
    })
}

async fn reflect_coded(r: &Recorded, query: &str) -> Response<Body> {
    let coding = query_param(query, "coding").unwrap_or_else(|| "gzip".to_string());
    let text = format!("reflected: {}\n", r.header("authorization").unwrap_or(""));
    Response::builder()
        .header("content-type", "text/plain")
        .header("content-encoding", coding.as_str())
        .body(full(encode(&coding, text.as_bytes()).await))
        .unwrap()
}

fn sse_coded(query: &str) -> Response<Body> {
    let coding = query_param(query, "coding").unwrap_or_else(|| "gzip".to_string());
    let n: usize = query_param(query, "n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let interval = Duration::from_millis(
        query_param(query, "interval_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(200),
    );
    let mut compressor =
        Compressor::new(&coding).unwrap_or_else(|| panic!("/sse-coded: no coding {coding}"));
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            let event = compressor
                .write_flush(format!("data: {i}\n\n").as_bytes())
                .await;
            if tx.send(Bytes::from(event)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Bytes::from(compressor.finish().await)).await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("content-encoding", coding.as_str())
        .header("cache-control", "no-cache")
        .body(ChannelBody(rx).boxed())
        .unwrap()
}
