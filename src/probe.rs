//! `sidekey probe [ready|live]`: one GET to the admin listener's `/readyz` or `/healthz`, exit 0
//! on 200 and 1 otherwise. Kubernetes exec probes and the legacy sidecar's `postStart` hook use
//! it, because the admin listener stays on loopback (docs/architecture.md, "Listeners") where
//! kubelet's HTTP probes cannot reach it. Plain blocking std I/O: no runtime to start on every
//! probe.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::ProbeKind;

/// sidekey's default admin address.
const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15090);
/// Pause between attempts with `--wait`.
const RETRY_EVERY: Duration = Duration::from_millis(200);

pub fn run(
    kind: ProbeKind,
    admin: Option<SocketAddr>,
    config: Option<&Path>,
    timeout: Duration,
    wait: Option<Duration>,
) -> ExitCode {
    let addr = match admin_addr(admin, config) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("sidekey probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = match kind {
        ProbeKind::Ready => "/readyz",
        ProbeKind::Live => "/healthz",
    };
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        let outcome = get(addr, path, timeout);
        match &outcome {
            Ok((200, body)) => {
                println!("{addr}{path}: {}", body.trim());
                return ExitCode::SUCCESS;
            }
            _ if deadline.is_some_and(|d| Instant::now() + RETRY_EVERY < d) => {
                std::thread::sleep(RETRY_EVERY);
            }
            Ok((status, body)) => {
                eprintln!(
                    "sidekey probe: {addr}{path} answered {status}: {}",
                    body.trim()
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("sidekey probe: {addr}{path}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}

/// `--admin`, else the config's `listen.admin` (an unspecified address is asked on loopback),
/// else sidekey's default.
pub(crate) fn admin_addr(
    admin: Option<SocketAddr>,
    config: Option<&Path>,
) -> Result<SocketAddr, String> {
    if let Some(addr) = admin {
        return Ok(addr);
    }
    let Some(path) = config else {
        return Ok(DEFAULT_ADMIN);
    };
    let origin = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| format!("cannot read {origin}: {e}"))?;
    let config = sidekey_config::parse(&source, &origin).map_err(|e| e.to_string())?;
    let mut addr = config
        .listen
        .admin
        .ok_or_else(|| format!("{origin} turns the admin listener off: nothing to probe"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// One HTTP/1.1 GET; the status code and (at most 4 KiB of) the body.
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    request(addr, "GET", path, &[], b"", timeout)
}

/// One HTTP/1.1 request to the admin listener (`Connection: close`); the status code and (at
/// most 64 KiB of) the body.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sidekey-cli\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.take(64 << 10).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response")
        })?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}
