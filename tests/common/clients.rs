//! Real clients the tests drive sidekey with: curl, Python (requests, httpx) and Node (undici)
//! through the scripts in `tests/clients/`, and raw sockets (std TCP + rustls) for requests
//! no well-behaved client would send.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ca::crypto_provider;
use super::sidekey::{repo_root, PROXY_VARS};

/// The header on every response sidekey sends an agent, its refusals and the upstreams'
/// answers alike: the `request_id` of the request's audit record.
pub const REQUEST_ID: &str = "x-sidekey-request-id";

/// Every client gets at most this long.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);

/// Environment variables that point TLS clients at some CA bundle; cleared so each test says
/// exactly what its client trusts.
const CA_VARS: &[&str] = &[
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
];

fn clean_env(cmd: &mut Command) {
    for v in PROXY_VARS.iter().chain(CA_VARS) {
        cmd.env_remove(v);
    }
}

/// Runs `cmd` to completion, killing it after `timeout` (and then panicking).
pub fn output_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err_t.join().unwrap_or_default();
            panic!(
                "{desc} did not finish within {timeout:?}\nstderr: {}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals

/// Checks a refusal as docs/architecture.md ("Error codes") describes it: status, `x-sidekey-error: code`, a JSON body
/// `{"error": code, "message": .., "request_id": ..}`. Returns the body.
pub fn check_refusal(
    what: &str,
    status: u16,
    header: Option<&str>,
    body: &[u8],
    want_status: u16,
    want_code: &str,
) -> Value {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, want_status, "{what}: status (body: {text})");
    assert_eq!(
        header,
        Some(want_code),
        "{what}: x-sidekey-error header (body: {text})"
    );
    let json: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: refusal body is not JSON ({e}): {text:?}"));
    assert_eq!(
        json["error"], want_code,
        "{what}: error code in body {json}"
    );
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: refusal body needs a message: {json}"
    );
    assert!(
        json["request_id"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: refusal body needs a request_id: {json}"
    );
    json
}

// ---------------------------------------------------------------------------------------------
// curl

/// What curl did: the final response, every header block (CONNECT responses included) and
/// curl's own `--write-out '%{json}'` variables (of the last transfer, when given several URLs).
#[derive(Debug)]
pub struct CurlResult {
    pub exit: i32,
    /// `http_code` of the last response (0 if none).
    pub status: u16,
    /// Status of the proxy's CONNECT response (0 if no CONNECT).
    pub connect_status: u16,
    /// "1.1", "2", ...
    pub http_version: String,
    /// Headers of the last response, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Every response head curl saw (status, headers), in order.
    pub blocks: Vec<(u16, Vec<(String, String)>)>,
    pub body: Vec<u8>,
    pub stderr: String,
    pub write_out: Value,
}

impl CurlResult {
    /// First value of header `name` in the last response.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("curl body is not JSON ({e}): {self:#?}"))
    }

    /// Asserts curl finished and got a response with `status`.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            (self.exit, self.status),
            (0, status),
            "curl exit/status; stderr: {}; body: {}",
            self.stderr,
            self.body_str()
        );
        self
    }

    /// Asserts the response is a sidekey refusal (status, header, JSON body); returns the body.
    #[track_caller]
    pub fn expect_refusal(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.exit, 0, "curl failed: {}", self.stderr);
        check_refusal(
            "curl",
            self.status,
            self.header("x-sidekey-error"),
            &self.body,
            status,
            code,
        )
    }
}

/// Runs `curl -sS --max-time 30 -D <headers> -o <body> -w '%{json}' <args>` with no proxy or CA
/// taken from the environment.
pub fn curl(args: &[&str]) -> CurlResult {
    let tmp = tempfile::tempdir().expect("tempdir");
    let head_path = tmp.path().join("headers");
    let body_path = tmp.path().join("body");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-D"])
        .arg(&head_path)
        .arg("-o")
        .arg(&body_path)
        .args(["-w", "%{json}\n"])
        .args(args)
        .stdin(Stdio::null());
    clean_env(&mut cmd);
    let out = output_with_timeout(cmd, CLIENT_TIMEOUT);
    // One `%{json}` line per transfer; the last one describes the response kept in `body`.
    let write_out: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    let heads = std::fs::read(&head_path).unwrap_or_default();
    let blocks = parse_header_blocks(&String::from_utf8_lossy(&heads));
    let num = |k: &str| write_out[k].as_u64().unwrap_or(0) as u16;
    CurlResult {
        exit: out.status.code().unwrap_or(-1),
        status: num("http_code"),
        connect_status: num("http_connect"),
        http_version: write_out["http_version"].as_str().unwrap_or("").to_string(),
        headers: blocks.last().map(|b| b.1.clone()).unwrap_or_default(),
        blocks,
        body: std::fs::read(&body_path).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        write_out,
    }
}

/// Splits a `curl -D` dump into (status, headers) blocks.
fn parse_header_blocks(text: &str) -> Vec<(u16, Vec<(String, String)>)> {
    let mut blocks: Vec<(u16, Vec<(String, String)>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            let status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            blocks.push((status, Vec::new()));
        } else if let (Some((k, v)), Some(block)) = (line.split_once(':'), blocks.last_mut()) {
            block
                .1
                .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    blocks
}

/// Lines curl wrote to stdout as they arrived, each with its arrival time since curl started.
#[derive(Debug)]
pub struct StreamedLines {
    pub lines: Vec<(Duration, String)>,
    /// When curl exited.
    pub end: Duration,
    pub exit: i32,
    pub stderr: String,
}

/// Runs `curl -sS -N --max-time 30 <args>` and timestamps each stdout line as it arrives.
pub fn curl_stream(args: &[&str]) -> StreamedLines {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-N", "--max-time", "30"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    clean_env(&mut cmd);
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn curl");
    let mut stderr = child.stderr.take().unwrap();
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        let at = start.elapsed();
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            lines.push((at, String::from_utf8_lossy(&line).trim_end().to_string()));
        }
    }
    let status = child.wait().expect("wait curl");
    StreamedLines {
        lines,
        end: start.elapsed(),
        exit: status.code().unwrap_or(-1),
        stderr: err_t.join().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Python and Node clients

/// One HTTP request for the Python and Node client scripts.
#[derive(Clone, Debug, Default)]
pub struct Req {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub http2: bool,
    pub stream: bool,
    /// Proxy URL (Python: HTTPS_PROXY/HTTP_PROXY; Node: undici ProxyAgent).
    pub proxy: Option<String>,
    /// CA bundle to trust (Python: REQUESTS_CA_BUNDLE/SSL_CERT_FILE; Node: the agent's `ca`).
    pub ca: Option<PathBuf>,
}

impl Req {
    pub fn new(method: &str, url: &str) -> Req {
        Req {
            method: method.to_string(),
            url: url.to_string(),
            ..Req::default()
        }
    }
    pub fn get(url: &str) -> Req {
        Req::new("GET", url)
    }
    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    /// The request body; `@PATH` sends the contents of the file at PATH.
    pub fn body(mut self, b: &str) -> Req {
        self.body = Some(b.to_string());
        self
    }
    pub fn http2(mut self) -> Req {
        self.http2 = true;
        self
    }
    pub fn stream(mut self) -> Req {
        self.stream = true;
        self
    }
    /// Through `proxy`, trusting `ca` (sidekey's interception CA).
    pub fn via(mut self, proxy: &str, ca: &Path) -> Req {
        self.proxy = Some(proxy.to_string());
        self.ca = Some(ca.to_path_buf());
        self
    }
    fn script_args(&self) -> Vec<String> {
        let mut a = vec![
            "--method".into(),
            self.method.clone(),
            "--url".into(),
            self.url.clone(),
        ];
        for (k, v) in &self.headers {
            a.push("--header".into());
            a.push(format!("{k}: {v}"));
        }
        if let Some(b) = &self.body {
            a.push("--data".into());
            a.push(b.clone());
        }
        if self.http2 {
            a.push("--http2".into());
        }
        if self.stream {
            a.push("--stream".into());
        }
        a
    }
}

/// What a client script printed.
#[derive(Debug)]
pub struct ClientResult {
    pub status: Option<u16>,
    /// "HTTP/1.1", "HTTP/2", as the client library reports it.
    pub http_version: Option<String>,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// (seconds since the request started, data) per chunk, in stream mode.
    pub chunks: Vec<(f64, String)>,
    /// Seconds since the request started when the body ended.
    pub t_end: f64,
    /// The client library's error, if the request failed.
    pub error: Option<String>,
}

impl ClientResult {
    fn from_json(raw: Value) -> ClientResult {
        let s = |v: &Value| v.as_str().map(str::to_owned);
        ClientResult {
            status: raw["status"].as_u64().map(|s| s as u16),
            http_version: s(&raw["http_version"]),
            headers: raw["headers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|kv| {
                            (
                                kv[0].as_str().unwrap_or("").to_ascii_lowercase(),
                                kv[1].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            body: s(&raw["body"]).unwrap_or_default(),
            chunks: raw["chunks"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| {
                            (
                                c[0].as_f64().unwrap_or(0.0),
                                c[1].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            t_end: raw["t_end"].as_f64().unwrap_or(0.0),
            error: s(&raw["error"]),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("client body is not JSON ({e}): {self:#?}"))
    }

    /// Asserts the request completed with `status`.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.error, None, "client error: {self:#?}");
        assert_eq!(self.status, Some(status), "client status: {self:#?}");
        self
    }
}

/// The Python interpreter of the test venv (`$SIDEKEY_TEST_PYTHON`, else
/// `~/.cache/sidekey/venv/bin/python`, where scripts/install-test-deps puts it).
pub fn python_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SIDEKEY_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    let p = cache.join("sidekey/venv/bin/python");
    assert!(
        p.exists(),
        "{} not found: run scripts/install-test-deps (or set SIDEKEY_TEST_PYTHON)",
        p.display()
    );
    p
}

/// `tests/clients/`.
pub fn clients_dir() -> PathBuf {
    repo_root().join("tests/clients")
}

fn run_json(mut cmd: Command, what: &str) -> Value {
    cmd.stdin(Stdio::null());
    let out = output_with_timeout(cmd, CLIENT_TIMEOUT);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what} printed no JSON ({e}); exit {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `req` with Python `lib` ("requests" or "httpx"), configured the way an agent's
/// environment configures it: HTTPS_PROXY/HTTP_PROXY and REQUESTS_CA_BUNDLE/SSL_CERT_FILE.
pub fn python(lib: &str, req: &Req) -> ClientResult {
    let mut cmd = Command::new(python_bin());
    cmd.arg(clients_dir().join("pyclient.py"))
        .arg("--lib")
        .arg(lib)
        .args(req.script_args());
    clean_env(&mut cmd);
    if let Some(p) = &req.proxy {
        for v in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
            cmd.env(v, p);
        }
    }
    if let Some(ca) = &req.ca {
        cmd.env("REQUESTS_CA_BUNDLE", ca).env("SSL_CERT_FILE", ca);
    }
    ClientResult::from_json(run_json(cmd, &format!("pyclient.py ({lib})")))
}

/// Runs `req` with Node's undici (`ProxyAgent` when `req.proxy` is set).
pub fn node(req: &Req) -> ClientResult {
    let script = clients_dir().join("nodeclient.mjs");
    assert!(
        clients_dir().join("node_modules/undici").exists(),
        "tests/clients/node_modules/undici missing: run scripts/install-test-deps"
    );
    let mut cmd = Command::new("node");
    cmd.arg(script).args(req.script_args());
    clean_env(&mut cmd);
    if let Some(p) = &req.proxy {
        cmd.arg("--proxy").arg(p);
    }
    if let Some(ca) = &req.ca {
        cmd.arg("--cacert").arg(ca);
    }
    ClientResult::from_json(run_json(cmd, "nodeclient.mjs"))
}

/// Verifies a JWT's signature against a JWKS document with Python `cryptography`
/// (tests/clients/jwtverify.py). Returns `{"valid": bool, "header":.., "payload":.., "error":..}`.
pub fn verify_jwt(jwks: &str, token: &str) -> Value {
    let mut cmd = Command::new(python_bin());
    cmd.arg(clients_dir().join("jwtverify.py"))
        .arg(jwks)
        .arg(token);
    clean_env(&mut cmd);
    run_json(cmd, "jwtverify.py")
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 over std sockets (and rustls, inside a CONNECT tunnel)

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// sidekey's ID of the request this answers ([`REQUEST_ID`]); none for an answer sidekey's
    /// code never saw (hyper's bare 400 to an unparsable request).
    pub fn request_id(&self) -> Option<String> {
        self.header(REQUEST_ID).map(str::to_owned)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts this is a sidekey refusal (status, header, JSON body); returns the body.
    #[track_caller]
    pub fn expect_refusal(&self, status: u16, code: &str) -> Value {
        check_refusal(
            "raw",
            self.status,
            self.header("x-sidekey-error"),
            &self.body,
            status,
            code,
        )
    }
}

const RAW_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects to `addr` with read/write timeouts set.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, RAW_TIMEOUT)?;
    s.set_read_timeout(Some(RAW_TIMEOUT))?;
    s.set_write_timeout(Some(RAW_TIMEOUT))?;
    Ok(s)
}

/// Sends `request` (raw bytes) on a new connection to `addr` and reads one response.
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> io::Result<RawResponse> {
    let mut s = connect(addr)?;
    s.write_all(request)?;
    let no_body = request.starts_with(b"HEAD ");
    read_response(&mut s, no_body, request.starts_with(b"CONNECT "))
}

/// `GET path` on a new connection; (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let r = raw_request(addr, req.as_bytes())?;
    Ok((r.status, r.body_str()))
}

/// Reads one HTTP/1.x response. The head is read byte by byte so nothing past it is consumed
/// (a CONNECT's tunnel data stays in the stream).
pub fn read_response(
    r: &mut impl Read,
    head_only: bool,
    is_connect: bool,
) -> io::Result<RawResponse> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if r.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed in response head: {:?}",
                    String::from_utf8_lossy(&head)
                ),
            ));
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("response head too large"));
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    let no_body = head_only
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || (is_connect && (200..300).contains(&status));
    if !no_body {
        if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(len, 0);
            r.read_exact(&mut body)?;
        } else if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            body = read_chunked(r)?;
        } else {
            r.read_to_end(&mut body)?;
        }
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn read_line(r: &mut impl Read) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if r.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof in chunked body",
            ));
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line[..line.len() - 2]).into_owned())
}

fn read_chunked(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(r)?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size_line:?}")))?;
        if size == 0 {
            // Trailers, then the empty line.
            while !read_line(r)?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        read_line(r)?;
    }
}

/// Sends `CONNECT authority` to the forward proxy at `proxy`. On a 2xx, returns the open
/// tunnel; otherwise the proxy's response.
pub fn connect_tunnel(proxy: SocketAddr, authority: &str) -> Result<TcpStream, RawResponse> {
    let mut s = connect(proxy).expect("connect to forward listener");
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send CONNECT");
    let resp = read_response(&mut s, false, true).expect("read CONNECT response");
    if (200..300).contains(&resp.status) {
        Ok(s)
    } else {
        Err(resp)
    }
}

/// Which certificates a raw TLS client accepts.
pub enum Trust<'a> {
    /// Certificates chaining to this PEM CA file, for the SNI name.
    Ca(&'a Path),
    /// Anything (to get past the handshake and see what the server does next).
    Any,
}

/// A blocking TLS stream.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Performs a TLS handshake over `tcp` with SNI `sni`, ALPN http/1.1.
pub fn tls_handshake(tcp: TcpStream, sni: &str, trust: Trust<'_>) -> Result<TlsStream, io::Error> {
    let mut stream = rustls::StreamOwned::new(tls_client(sni, trust), tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// `CONNECT authority` and the TLS ClientHello in one write, as a client that does not wait for
/// the proxy's answer sends them; then the rest of the handshake, as [`tls_handshake`].
pub fn connect_tunnel_pipelined(
    proxy: SocketAddr,
    authority: &str,
    sni: &str,
    trust: Trust<'_>,
) -> Result<TlsStream, io::Error> {
    let mut conn = tls_client(sni, trust);
    let mut sent =
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes();
    while conn.wants_write() {
        conn.write_tls(&mut sent)?;
    }
    let mut s = connect(proxy)?;
    s.write_all(&sent)?;
    let resp = read_response(&mut s, false, true)?;
    if resp.status != 200 {
        return Err(io::Error::other(format!(
            "CONNECT answered {}",
            resp.status
        )));
    }
    let mut stream = rustls::StreamOwned::new(conn, s);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// A TLS client for SNI `sni`, ALPN http/1.1, trusting `trust`.
fn tls_client(sni: &str, trust: Trust<'_>) -> rustls::ClientConnection {
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let mut config = match trust {
        Trust::Ca(path) => {
            let pem = std::fs::read_to_string(path).expect("read CA");
            let mut roots = rustls::RootCertStore::empty();
            for der in pem_certs(&pem) {
                roots.add(der).expect("add root");
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Any => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(crypto_provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("server name");
    rustls::ClientConnection::new(Arc::new(config), name).expect("client conn")
}

/// DER certificates in a PEM text.
pub fn pem_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let mut out = Vec::new();
    let mut b64 = String::new();
    let mut inside = false;
    for line in pem.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            inside = true;
            b64.clear();
        } else if line == "-----END CERTIFICATE-----" {
            inside = false;
            out.push(base64_decode(&b64, false).expect("PEM base64").into());
        } else if inside {
            b64.push_str(line);
        }
    }
    out
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the peer closes `stream` (EOF, or a read error other than a timeout), throwing
/// away whatever it sends meanwhile; false if it is still open after `within`. Give the socket
/// a short read timeout first (e.g. 200 ms): each read may overrun `within` by that much.
pub fn closed_within(stream: &mut impl Read, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            }
            Err(_) => return true,
        }
    }
    false
}

/// Decodes standard (`url_safe == false`) or URL-safe base64, padded or not.
pub fn base64_decode(s: &str, url_safe: bool) -> Option<Vec<u8>> {
    let (c62, c63) = if url_safe { (b'-', b'_') } else { (b'+', b'/') };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in s
        .as_bytes()
        .iter()
        .filter(|c| !c.is_ascii_whitespace() && **c != b'=')
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            _ if c == c62 => 62,
            _ if c == c63 => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A decoded (not verified) JWT: (header, payload).
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(
        parts.len(),
        3,
        "not a JWT (three dot-separated parts): {token:?}"
    );
    let part = |p: &str| -> Value {
        let bytes =
            base64_decode(p, true).unwrap_or_else(|| panic!("JWT part is not base64url: {p}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT part is not JSON ({e})"))
    };
    (part(parts[0]), part(parts[1]))
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
