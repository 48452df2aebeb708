//! The benchmarks' load generator for what wrk cannot do: HTTPS through a CONNECT tunnel
//! (intercepted or blind), HTTP/2 multiplexing, new-connection handshake rates, SSE time to
//! first byte, and thousands of idle keep-alive connections. One thread: it is pinned to its
//! own core, apart from the proxy under test.
//!
//! How a connection is made: TCP to `--connect ADDR`; then, with `--tunnel HOST:PORT`, a
//! `CONNECT` through the proxy at ADDR; then, with `--tls SNI`, TLS trusting `--ca FILE`
//! (ALPN h2 with `--h2`, else http/1.1; no session resumption, so every new connection is a
//! full handshake). Requests are `GET --uri` with `Host: --host`; `--uri` may be absolute
//! (`http://host/…`) to speak to a plain-HTTP forward proxy.
//!
//! Modes (`--mode`):
//! - `load`: `-c` connections (× `--streams` concurrent streams each with `--h2`) send requests
//!   back to back for `-d` seconds;
//! - `handshake`: `-c` workers each open a connection, send one request, close, repeat;
//! - `sse`: `--count` requests one after another on one connection, timing the first body byte;
//! - `idle`: opens `-c` connections, one request each, prints `ready`, holds them `--hold`
//!   seconds (or until stdin closes).
//!
//! Prints one JSON object on stdout: requests (answered 2xx), errors, seconds, rps, and latency
//! percentiles in microseconds (p50, p90, p99, p999, max). `errors` counts every request that
//! did not get a 2xx answer; of them, `bad_status` got an answer with another status (the last
//! one seen is `bad_status_code`) and `timeouts` got nothing within `--timeout` seconds (default
//! 10: connecting, CONNECT, TLS handshake, or the whole exchange), so a proxy that stops
//! answering shows up as errors instead of hanging the run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
struct Opts {
    mode: String,
    connect: String,
    tunnel: Option<String>,
    /// `Proxy-Authorization` (a task grant): sent with the CONNECT through a tunnel, else with
    /// every request.
    proxy_auth: Option<String>,
    tls: Option<String>,
    ca: Option<String>,
    h2: bool,
    uri: String,
    host: String,
    connections: usize,
    streams: usize,
    duration: Duration,
    count: usize,
    hold: Duration,
    /// How long opening a connection, or one exchange, may take before it counts as a timeout.
    timeout: Duration,
}

impl Opts {
    fn parse() -> Result<Opts, Error> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let get = |name: &str| -> Option<String> {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let num = |name: &str, default: u64| -> Result<u64, Error> {
            match get(name) {
                Some(v) => Ok(v.parse()?),
                None => Ok(default),
            }
        };
        Ok(Opts {
            mode: get("--mode").unwrap_or_else(|| "load".into()),
            connect: get("--connect").ok_or("--connect ADDR is required")?,
            tunnel: get("--tunnel"),
            proxy_auth: get("--proxy-auth"),
            tls: get("--tls"),
            ca: get("--ca"),
            h2: args.iter().any(|a| a == "--h2"),
            uri: get("--uri").unwrap_or_else(|| "/".into()),
            host: get("--host").ok_or("--host is required")?,
            connections: num("-c", 1)? as usize,
            streams: num("--streams", 1)? as usize,
            duration: Duration::from_secs_f64(get("-d").map_or(Ok(5.0), |v| v.parse())?),
            count: num("--count", 10)? as usize,
            hold: Duration::from_secs(num("--hold", 30)?),
            timeout: Duration::from_secs(num("--timeout", 10)?),
        })
    }
}

/// An answer whose status is not 2xx.
#[derive(Debug)]
struct BadStatus(u16);

impl std::fmt::Display for BadStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "answered {}, not 2xx", self.0)
    }
}

impl std::error::Error for BadStatus {}

/// Latencies (µs) and errors, merged from every worker.
#[derive(Default)]
struct Tally {
    latencies: Vec<u32>,
    errors: u64,
    bad_status: u64,
    bad_status_code: u16,
    timeouts: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.bad_status += other.bad_status;
        self.timeouts += other.timeouts;
        if other.bad_status_code != 0 {
            self.bad_status_code = other.bad_status_code;
        }
    }

    /// Counts a request that got no 2xx answer, and what it got instead.
    fn error(&mut self, e: &Error) {
        self.errors += 1;
        if let Some(BadStatus(code)) = e.downcast_ref::<BadStatus>() {
            self.bad_status += 1;
            self.bad_status_code = *code;
        } else if e.is::<tokio::time::error::Elapsed>() {
            self.timeouts += 1;
        }
    }

    fn report(mut self, seconds: f64, extra: &str) -> String {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        let pct = |p: f64| -> u32 {
            if n == 0 {
                return 0;
            }
            let i = ((p / 100.0) * n as f64).ceil() as usize;
            self.latencies[i.clamp(1, n) - 1]
        };
        format!(
            "{{\"requests\":{n},\"errors\":{},\"bad_status\":{},\"bad_status_code\":{},\
             \"timeouts\":{},\"seconds\":{seconds:.3},\"rps\":{:.1},\
             \"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}{extra}}}",
            self.errors,
            self.bad_status,
            self.bad_status_code,
            self.timeouts,
            n as f64 / seconds.max(1e-9),
            pct(50.0),
            pct(90.0),
            pct(99.0),
            pct(99.9),
            self.latencies.last().copied().unwrap_or(0),
        )
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// What every connection shares: options and the TLS client.
struct Dialer {
    opts: Opts,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Dialer {
    fn new(opts: Opts) -> Result<Dialer, Error> {
        let tls = match &opts.tls {
            None => None,
            Some(sni) => {
                let mut roots = rustls::RootCertStore::empty();
                let ca = opts.ca.as_ref().ok_or("--tls needs --ca FILE")?;
                let pem = std::fs::read(ca)?;
                for cert in rustls_pemfile_certs(&pem)? {
                    roots.add(cert)?;
                }
                let mut config = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = if opts.h2 {
                    vec![b"h2".to_vec()]
                } else {
                    vec![b"http/1.1".to_vec()]
                };
                // Every new connection pays a full handshake, as a fresh agent process would.
                config.resumption = rustls::client::Resumption::disabled();
                let name = rustls::pki_types::ServerName::try_from(sni.clone())?;
                Some((
                    tokio_rustls::TlsConnector::from(Arc::new(config)),
                    name.to_owned(),
                ))
            }
        };
        Ok(Dialer { opts, tls })
    }

    async fn dial(&self) -> Result<Box<dyn Io>, Error> {
        let mut tcp = TcpStream::connect(&self.opts.connect).await?;
        tcp.set_nodelay(true)?;
        if let Some(target) = &self.opts.tunnel {
            connect_through(&mut tcp, target, self.opts.proxy_auth.as_deref()).await?;
        }
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => Ok(Box::new(connector.connect(name.clone(), tcp).await?)),
        }
    }

    fn request(&self) -> Result<Request<Empty<Bytes>>, Error> {
        // HTTP/2 carries the authority in the URI (`:authority`), not in a Host header.
        let uri: Uri = if self.opts.h2 && self.opts.uri.starts_with('/') {
            format!("https://{}{}", self.opts.host, self.opts.uri).parse()?
        } else {
            self.opts.uri.parse()?
        };
        let mut builder = Request::get(uri);
        if !self.opts.h2 {
            builder = builder.header("host", &self.opts.host);
        }
        // A forward proxy's grant: sent with the CONNECT through a tunnel, else with each request.
        if let (None, Some(auth)) = (&self.opts.tunnel, &self.opts.proxy_auth) {
            builder = builder.header("proxy-authorization", auth);
        }
        // Agents' SDKs send a dummy key: every proxy under test must replace it.
        Ok(builder
            .header("authorization", "Bearer agent-dummy-key")
            .header("user-agent", "sidekey-bench")
            .body(Empty::new())?)
    }
}

/// Parses the certificates of a PEM file (no dependency on rustls-pemfile here).
fn rustls_pemfile_certs(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::PemObject;
    let mut out = Vec::new();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        out.push(cert?);
    }
    Ok(out)
}

/// Sends `CONNECT target` and reads the proxy's answer head; anything but 2xx is an error.
async fn connect_through(
    tcp: &mut TcpStream,
    target: &str,
    proxy_auth: Option<&str>,
) -> Result<(), Error> {
    let auth = proxy_auth.map_or(String::new(), |a| format!("Proxy-Authorization: {a}\r\n"));
    let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n");
    tcp.write_all(head.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // Byte by byte: nothing past the head may be consumed (the TLS handshake follows).
    while !buf.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await? == 0 {
            return Err("proxy closed the connection during CONNECT".into());
        }
        buf.push(byte[0]);
        if buf.len() > 8192 {
            return Err("CONNECT answer head too long".into());
        }
    }
    let status = buf.get(9..12).unwrap_or_default();
    if !status.starts_with(b"2") {
        return Err(format!(
            "CONNECT refused: {}",
            String::from_utf8_lossy(&buf)
                .lines()
                .next()
                .unwrap_or_default()
        )
        .into());
    }
    Ok(())
}

/// A connection ready to send requests.
enum Conn {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Conn {
    /// Opens a connection (TCP, CONNECT, TLS, HTTP handshake) within `--timeout`.
    async fn open(dialer: &Dialer) -> Result<Conn, Error> {
        tokio::time::timeout(dialer.opts.timeout, Conn::open_now(dialer)).await?
    }

    async fn open_now(dialer: &Dialer) -> Result<Conn, Error> {
        let io = TokioIo::new(dialer.dial().await?);
        if dialer.opts.h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(Conn::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Conn::H1(sender))
        }
    }

    /// One request, whole body read, within `--timeout`. Returns the time to the first body
    /// byte and in total; a non-2xx answer is a `BadStatus` error.
    async fn exchange(&mut self, dialer: &Dialer) -> Result<(Duration, Duration), Error> {
        tokio::time::timeout(dialer.opts.timeout, self.exchange_now(dialer)).await?
    }

    async fn exchange_now(&mut self, dialer: &Dialer) -> Result<(Duration, Duration), Error> {
        let request = dialer.request()?;
        let start = Instant::now();
        let response = match self {
            Conn::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Conn::H2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let status = response.status();
        let mut body = response.into_body();
        let mut first = None;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                first = Some(start.elapsed());
            }
        }
        let total = start.elapsed();
        if !status.is_success() {
            return Err(BadStatus(status.as_u16()).into());
        }
        Ok((first.unwrap_or(total), total))
    }

    fn clone_h2(&self) -> Option<Conn> {
        match self {
            Conn::H2(sender) => Some(Conn::H2(sender.clone())),
            Conn::H1(_) => None,
        }
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

async fn run_load(dialer: Arc<Dialer>) -> Result<String, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let start = Instant::now();
    for _ in 0..dialer.opts.connections {
        let conn = match Conn::open(&dialer).await {
            Ok(conn) => conn,
            Err(e) => return Err(format!("cannot open a connection: {e}").into()),
        };
        let streams = if dialer.opts.h2 {
            dialer.opts.streams
        } else {
            1
        };
        let mut conns = Vec::with_capacity(streams);
        for _ in 1..streams {
            conns.extend(conn.clone_h2());
        }
        conns.push(conn);
        for mut conn in conns {
            let (dialer, stop) = (Arc::clone(&dialer), Arc::clone(&stop));
            workers.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    match conn.exchange(&dialer).await {
                        Ok((_, total)) => tally.latencies.push(micros(total)),
                        Err(e) => {
                            tally.error(&e);
                            // A broken connection is replaced, as a client pool would.
                            match Conn::open(&dialer).await {
                                Ok(fresh) => conn = fresh,
                                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                    }
                }
                tally
            }));
        }
    }
    tokio::time::sleep(dialer.opts.duration).await;
    stop.store(true, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await?);
    }
    Ok(tally.report(seconds, ""))
}

async fn run_handshake(dialer: Arc<Dialer>) -> Result<String, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..dialer.opts.connections {
        let (dialer, stop) = (Arc::clone(&dialer), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let result = async {
                    let mut conn = Conn::open(&dialer).await?;
                    conn.exchange(&dialer).await
                }
                .await;
                match result {
                    Ok(_) => tally.latencies.push(micros(began.elapsed())),
                    Err(e) => {
                        tally.error(&e);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            tally
        }));
    }
    tokio::time::sleep(dialer.opts.duration).await;
    stop.store(true, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await?);
    }
    Ok(tally.report(seconds, ""))
}

async fn run_sse(dialer: Arc<Dialer>) -> Result<String, Error> {
    let mut conn = Conn::open(&dialer).await?;
    let mut ttfb = Tally::default();
    let mut totals = Vec::new();
    let start = Instant::now();
    for _ in 0..dialer.opts.count {
        match conn.exchange(&dialer).await {
            Ok((first, total)) => {
                ttfb.latencies.push(micros(first));
                totals.push(micros(total));
            }
            Err(e) => {
                ttfb.error(&e);
                if e.is::<tokio::time::error::Elapsed>() {
                    // A stream that does not end within --timeout: no point in waiting again.
                    break;
                }
                conn = Conn::open(&dialer).await?;
            }
        }
    }
    totals.sort_unstable();
    let median_total = totals.get(totals.len() / 2).copied().unwrap_or(0);
    Ok(ttfb.report(
        start.elapsed().as_secs_f64(),
        &format!(",\"stream_total_p50_us\":{median_total}"),
    ))
}

async fn run_idle(dialer: Arc<Dialer>) -> Result<String, Error> {
    // Bounded concurrency while opening, so the proxy's accept backlog never overflows.
    let gate = Arc::new(tokio::sync::Semaphore::new(128));
    let opened = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..dialer.opts.connections {
        let (dialer, gate, opened) = (Arc::clone(&dialer), Arc::clone(&gate), Arc::clone(&opened));
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.ok()?;
            let mut conn = Conn::open(&dialer).await.ok()?;
            conn.exchange(&dialer).await.ok()?;
            drop(permit);
            opened.fetch_add(1, Ordering::Relaxed);
            Some(conn)
        }));
    }
    let mut held = Vec::new();
    for task in tasks {
        if let Ok(Some(conn)) = task.await {
            held.push(conn);
        }
    }
    let took = start.elapsed().as_secs_f64();
    let open = held.len();
    println!("ready {open}");
    // Hold until the harness closes stdin or the time is up.
    // A plain thread watches stdin (tokio's io-std feature is not enabled in this workspace).
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while matches!(std::io::Read::read(&mut std::io::stdin(), &mut buf), Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
    });
    tokio::select! {
        _ = closed_rx => {}
        _ = tokio::time::sleep(dialer.opts.hold) => {}
    }
    drop(held);
    Ok(format!(
        "{{\"opened\":{open},\"wanted\":{},\"seconds_to_open\":{took:.3}}}",
        dialer.opts.connections
    ))
}

fn main() -> Result<(), Error> {
    let opts = Opts::parse()?;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dialer = Arc::new(Dialer::new(opts)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async move {
        match dialer.opts.mode.as_str() {
            "load" => run_load(dialer).await,
            "handshake" => run_handshake(dialer).await,
            "sse" => run_sse(dialer).await,
            "idle" => run_idle(dialer).await,
            other => Err(format!("unknown --mode {other}").into()),
        }
    })?;
    println!("{report}");
    Ok(())
}
