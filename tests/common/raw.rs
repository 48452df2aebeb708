//! Peers for the adversarial suite that no well-behaved library would be:
//!
//! - [`h2_raw`]: HTTP/2 requests with exactly the header block and DATA frames a test wants
//!   (CRLF in values, duplicated pseudo-headers, a content-length that lies), sent through a
//!   CONNECT tunnel by `tests/clients/h2raw.py` (python `h2` with validation switched off);
//! - [`RawUpstream`]: a plain-TCP "server" that records the exact bytes sidekey sends it, so a
//!   test can check the framing sidekey puts on the wire (one Content-Length or chunked, never
//!   both; no second request hidden in the first), which a strict HTTP server would hide by
//!   rejecting it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use super::clients::{clients_dir, output_with_timeout, python_bin, CLIENT_TIMEOUT};
use super::sidekey::Sidekey;

/// One raw HTTP/2 request, on its own tunnel.
#[derive(Clone, Debug)]
pub struct H2Case {
    /// A name for failure messages.
    pub name: String,
    pub connect: String,
    pub sni: String,
    pub headers: Vec<(String, String)>,
    pub data: Vec<String>,
}

impl H2Case {
    /// A GET of `path` to `host:443` with the four pseudo-headers in order, then `extra`.
    pub fn get(name: &str, host: &str, path: &str, extra: &[(&str, &str)]) -> H2Case {
        let mut headers = vec![
            (":method".to_string(), "GET".to_string()),
            (":scheme".to_string(), "https".to_string()),
            (":authority".to_string(), host.to_string()),
            (":path".to_string(), path.to_string()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        H2Case {
            name: name.to_string(),
            connect: format!("{host}:443"),
            sni: host.to_string(),
            headers,
            data: Vec::new(),
        }
    }

    /// Exactly these headers (pseudo-headers included), in this order.
    pub fn raw(name: &str, host: &str, headers: &[(&str, &str)]) -> H2Case {
        H2Case {
            name: name.to_string(),
            connect: format!("{host}:443"),
            sni: host.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            data: Vec::new(),
        }
    }

    /// Replaces the `:authority` value (keeping the CONNECT and SNI).
    pub fn with_authority(mut self, authority: &str) -> H2Case {
        for (k, v) in &mut self.headers {
            if k == ":authority" {
                *v = authority.to_string();
            }
        }
        self
    }

    /// TLS server name to send instead of the CONNECT host.
    pub fn with_sni(mut self, sni: &str) -> H2Case {
        self.sni = sni.to_string();
        self
    }

    /// DATA frames after the headers (END_STREAM on the last).
    pub fn data(mut self, frames: &[&str]) -> H2Case {
        self.data = frames.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// What came back for one [`H2Case`].
#[derive(Clone, Debug)]
pub struct H2Result {
    pub name: String,
    /// Shown in failure messages (through `Debug`), like `error`.
    #[allow(dead_code, reason = "read through Debug, in failure messages")]
    pub connect_status: Option<u16>,
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// RST_STREAM error code, if the stream was reset.
    pub reset: Option<u64>,
    /// GOAWAY error code, if the connection was ended.
    pub goaway: Option<u64>,
    pub closed: bool,
    /// What the Python client reported (a timeout, its own protocol error, the connection's).
    #[allow(dead_code, reason = "read through Debug, in failure messages")]
    pub error: Option<String>,
}

impl H2Result {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// sidekey's ID of the request this answers (none for a reset or a closed connection).
    pub fn request_id(&self) -> Option<String> {
        self.header(super::clients::REQUEST_ID).map(str::to_owned)
    }

    /// The request got no upstream answer: a sidekey refusal (4xx with `x-sidekey-error`),
    /// or the stream or connection was torn down. Returns a description for messages.
    pub fn was_refused(&self) -> bool {
        match self.status {
            Some(s) if (400..500).contains(&s) => {
                self.header("x-test-upstream").is_none() && self.header("x-sidekey-error").is_some()
            }
            Some(_) => false,
            None => self.reset.is_some() || self.goaway.is_some() || self.closed,
        }
    }
}

/// Runs every case through sidekey's forward listener (one python process for all).
pub fn h2_raw(sk: &Sidekey, cases: &[H2Case]) -> Vec<H2Result> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cases.json");
    let list: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({
                "connect": c.connect,
                "sni": c.sni,
                "headers": c.headers.iter().map(|(k, v)| vec![k, v]).collect::<Vec<_>>(),
                "data": c.data,
            })
        })
        .collect();
    std::fs::write(&file, Value::Array(list).to_string()).expect("write cases");
    let mut cmd = Command::new(python_bin());
    cmd.arg(clients_dir().join("h2raw.py"))
        .arg(sk.forward.to_string())
        .arg(sk.ca_pem())
        .arg(&file)
        .env_remove("SSL_CERT_FILE");
    let out = output_with_timeout(cmd, CLIENT_TIMEOUT * 2);
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "h2raw.py printed no JSON ({e}); stdout: {} stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(results.len(), cases.len(), "one result per case");
    results
        .into_iter()
        .zip(cases)
        .map(|(r, c)| H2Result {
            name: c.name.clone(),
            connect_status: r["connect_status"].as_u64().map(|s| s as u16),
            status: r["status"].as_u64().map(|s| s as u16),
            headers: r["headers"]
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
            body: r["body"].as_str().unwrap_or("").to_string(),
            reset: r["reset"].as_u64(),
            goaway: r["goaway"].as_u64(),
            closed: r["closed"].as_bool().unwrap_or(false),
            error: r["error"].as_str().map(str::to_owned),
        })
        .collect()
}

/// A plain-TCP upstream that records every byte each connection sends. It answers each
/// connection once, after the client has been quiet for [`RawUpstream::QUIET`], with a fixed
/// `200` and `Connection: close`, so every connection carries exactly the bytes of what sidekey
/// meant as one request (and whatever else it let through).
pub struct RawUpstream {
    addr: SocketAddr,
    conns: Arc<Conns>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Conns {
    /// Per connection: the bytes received, and whether it has been answered (and closed).
    all: Mutex<Vec<(Vec<u8>, bool)>>,
    /// Notified when a connection is answered.
    answered: Condvar,
}

impl RawUpstream {
    /// How long a connection must be idle before the request is taken as complete.
    pub const QUIET: Duration = Duration::from_millis(300);

    pub fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw upstream");
        let addr = listener.local_addr().expect("addr");
        let conns: Arc<Conns> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (conns.clone(), stop.clone());
        // Blocking accepts: a connection is taken (and counted) as soon as it arrives. Drop
        // wakes the loop with a connection of its own.
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    let index = {
                        let mut all = c.all.lock().unwrap();
                        all.push((Vec::new(), false));
                        all.len() - 1
                    };
                    let c = c.clone();
                    std::thread::spawn(move || serve(stream, &c, index));
                }
            }
        });
        RawUpstream {
            addr,
            conns,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bytes received on each connection so far (connections still open included).
    pub fn connections(&self) -> Vec<Vec<u8>> {
        let all = self.conns.all.lock().unwrap();
        all.iter().map(|(bytes, _)| bytes.clone()).collect()
    }

    /// Waits until every connection accepted so far has been answered: each has been quiet
    /// for [`RawUpstream::QUIET`] or closed, so its bytes are all in [`RawUpstream::connections`].
    pub fn wait_answered(&self) {
        let timeout = Duration::from_secs(10);
        let all = self.conns.all.lock().unwrap();
        let (all, _) = self
            .conns
            .answered
            .wait_timeout_while(all, timeout, |all| all.iter().any(|(_, done)| !done))
            .unwrap();
        let open = all.iter().filter(|(_, done)| !done).count();
        assert_eq!(
            open, 0,
            "raw upstream: {open} connections still open after {timeout:?}"
        );
    }
}

fn serve(mut stream: TcpStream, conns: &Conns, index: usize) {
    let _ = stream.set_read_timeout(Some(RawUpstream::QUIET));
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => conns.all.lock().unwrap()[index]
                .0
                .extend_from_slice(&buf[..n]),
            Err(_) => break, // quiet for QUIET: the request is complete
        }
    }
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nx-test-upstream: raw\r\nconnection: close\r\n\r\nraw",
    );
    let _ = stream.shutdown(std::net::Shutdown::Both);
    conns.all.lock().unwrap()[index].1 = true;
    conns.answered.notify_all();
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Request heads found in `bytes`: every line that looks like an HTTP/1 request line
/// (`METHOD SP target SP HTTP/1.x`), wherever it is.
pub fn request_lines(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let re = regex::Regex::new(r"(?m)^[A-Z]+ \S+ HTTP/1\.[01]\r?$").unwrap();
    re.find_iter(&text)
        .map(|m| m.as_str().trim_end().to_string())
        .collect()
}
