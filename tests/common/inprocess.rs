//! sidekey in-process: the runtime the binary builds from a config
//! ([`sidekey::runtime::Runtime`]: local issuer, credential store, interception CA, upstream
//! client, proxy state), with the audit trail in memory. Tests drive it without a process or
//! a listening socket of sidekey's own:
//!
//! - [`InProcess::exchange`] hands one `http::Request` to `sidekey_proxy::exchange::handle`
//!   with an identified target, for phase-level tests (decide, body, credential, rewrite,
//!   forward, respond, audit);
//! - [`InProcess::forward_raw`] serves the forward listener over an in-memory pipe and writes
//!   raw bytes into it, for what only the HTTP layer sees (framing, CONNECT, the TLS handshake
//!   inside a tunnel).
//!
//! Upstreams are the real test servers of [`super::upstream`] (over loopback). Waits are on
//! events (an audit record arriving), never fixed sleeps.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use sidekey::runtime::{Runtime, Source};
use sidekey_audit::AuditWriter;
use sidekey_policy::Identified;
use sidekey_proxy::exchange::{self, Exchange};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sidekey::{substitute, AUDIT_TIMEOUT};
use super::Env;

/// The audit trail, in memory: every line sidekey's writer thread writes.
#[derive(Clone, Default)]
pub struct MemoryAudit(Arc<(Mutex<Vec<u8>>, Condvar)>);

impl Write for MemoryAudit {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (bytes, changed) = &*self.0;
        bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        changed.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl MemoryAudit {
    fn records_in(bytes: &[u8]) -> Vec<Value> {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(|line| serde_json::from_str(line).expect("audit lines are JSON"))
            .collect()
    }

    /// Waits until there are `n` request records (at most [`AUDIT_TIMEOUT`]), then returns
    /// them; fails if there are more.
    #[track_caller]
    pub fn expect_requests(&self, n: usize) -> Vec<Value> {
        let (bytes, changed) = &*self.0;
        let guard = bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = |b: &Vec<u8>| {
            Self::records_in(b)
                .iter()
                .filter(|r| r["type"] == "request")
                .count()
        };
        let (guard, _) = changed
            .wait_timeout_while(guard, AUDIT_TIMEOUT, |b| count(b) < n)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let records: Vec<Value> = Self::records_in(&guard)
            .into_iter()
            .filter(|r| r["type"] == "request")
            .collect();
        assert_eq!(
            records.len(),
            n,
            "expected {n} request records, got {}:\n{}",
            records.len(),
            records
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        records
    }
}

/// sidekey's runtime in this process.
pub struct InProcess {
    pub rt: tokio::runtime::Runtime,
    runtime: Option<Runtime>,
    writer: Option<AuditWriter>,
    pub audit: MemoryAudit,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// Builds the runtime from `yaml` (with the placeholders of [`Env::vars`] and `{dir}`
    /// filled in), as `sidekey run` would.
    pub fn start(env: &Env, yaml: &str) -> InProcess {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut vars = env.vars();
        vars.push(("dir", dir.path().display().to_string()));
        let text = substitute(yaml, &vars);
        let config = sidekey_config::parse(&text, "in-process.yaml")
            .unwrap_or_else(|e| panic!("invalid test config:\n{e}\n{text}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let audit = MemoryAudit::default();
        let writer = AuditWriter::spawn(Box::new(audit.clone())).expect("audit writer");
        let metrics = Arc::new(sidekey_metrics::Metrics::new());
        writer.observe(Arc::clone(&metrics) as Arc<dyn sidekey_audit::Observer>);
        let shutdown = CancellationToken::new();
        let runtime = {
            let _entered = rt.enter();
            Runtime::start(
                Source::BuiltIn,
                &text,
                config,
                writer.log(),
                metrics,
                shutdown.clone(),
            )
            .expect("runtime starts")
        };
        InProcess {
            rt,
            runtime: Some(runtime),
            writer: Some(writer),
            audit,
            shutdown,
            tracker: TaskTracker::new(),
            _dir: dir,
        }
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("running")
    }

    /// The current config generation, as a request arriving now would get it.
    pub fn state(&self) -> Arc<sidekey_proxy::ProxyState> {
        self.runtime().shared.load()
    }

    /// The interception CA's certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.runtime().shared.load().ca.cert_pem().to_string()
    }

    /// Runs one exchange for `request`, identified as `identified`, and reads the whole
    /// response (so its audit record is written).
    pub fn exchange(
        &self,
        identified: Identified,
        request: Request<Full<Bytes>>,
    ) -> (http::response::Parts, Bytes) {
        let state = self.runtime().shared.load();
        self.rt.block_on(async move {
            let response: Response<_> =
                exchange::handle(state, Exchange::new(identified), request).await;
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.expect("response body").to_bytes();
            (parts, bytes)
        })
    }

    /// A connection to the forward listener over an in-memory pipe: the client's end.
    pub fn forward_connection(&self) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let shared = Arc::clone(&self.runtime().shared);
        let shutdown = self.shutdown.clone();
        let tracker = self.tracker.clone();
        self.rt.spawn(sidekey_proxy::forward::serve_connection(
            shared, server, shutdown, tracker,
        ));
        client
    }

    /// A connection to the route listener over an in-memory pipe: the client's end.
    pub fn routes_connection(&self) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let shared = Arc::clone(&self.runtime().shared);
        self.rt.spawn(sidekey_proxy::routes::serve_connection(
            shared,
            server,
            self.shutdown.clone(),
            self.tracker.clone(),
        ));
        client
    }

    /// Writes `bytes` to a fresh route-listener connection and reads one response (as
    /// [`InProcess::forward_raw`] does).
    pub fn routes_raw(&self, bytes: &[u8], wait: Duration) -> Vec<u8> {
        let mut client = self.routes_connection();
        self.rt.block_on(async move {
            let _ = client.write_all(bytes).await;
            read_response(&mut client, wait).await
        })
    }

    /// Writes `bytes` to a fresh forward-listener connection, then reads one response: its
    /// head and a body of its Content-Length (or, chunked, to the last chunk; or to EOF). An
    /// empty result: sidekey closed the connection without an answer, or said nothing for
    /// `wait`.
    pub fn forward_raw(&self, bytes: &[u8], wait: Duration) -> Vec<u8> {
        let mut client = self.forward_connection();
        self.rt.block_on(async move {
            // sidekey may answer and close before it has read everything (a head too large):
            // what it answered is still there to read.
            let _ = client.write_all(bytes).await;
            read_response(&mut client, wait).await
        })
    }
}

/// Reads one HTTP/1.1 response (see [`InProcess::forward_raw`]).
pub async fn read_response(stream: &mut DuplexStream, wait: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let complete = |out: &[u8]| -> bool {
        let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
        let body = &out[end + 4..];
        if let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            return body.len() >= len;
        }
        if head.contains("transfer-encoding: chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
        // No length: a CONNECT answer (or a body to EOF, which the caller waits out).
        head.starts_with("http/1.1 200") && !head.contains("connection: close")
    };
    while !complete(&out) {
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// Reads until EOF, or until `wait` passes with nothing new.
pub async fn read_until_quiet(stream: &mut DuplexStream, wait: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(runtime) = self.runtime.take() {
            let credentials = Arc::clone(runtime.credentials());
            self.rt
                .block_on(async move { credentials.shutdown().await });
            drop(runtime);
        }
        if let Some(writer) = self.writer.take() {
            writer.shutdown();
        }
    }
}
