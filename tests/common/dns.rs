//! A DNS server the tests control (tests/peers/dns/server.py, dnslib): names answer from
//! answer sets that change from one query to the next (TTL 0), for SSRF and DNS-rebinding
//! tests. sidekey asks it when its config says `upstream.nameservers: ["{dns}"]`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::clients::python_bin;
use super::sidekey::repo_root;

pub struct DnsServer {
    child: Child,
    /// Kept open: the server exits when it closes.
    _stdin: ChildStdin,
    addr: SocketAddr,
    queries: Arc<Mutex<Vec<String>>>,
}

impl DnsServer {
    /// `answers`: name → answer sets (each a list of IPv4/IPv6 addresses); the n-th query of a
    /// type gets set n (cycling).
    pub fn start(answers: &[(&str, &[&[&str]])]) -> DnsServer {
        let map: serde_json::Map<String, serde_json::Value> = answers
            .iter()
            .map(|(name, sets)| ((*name).to_string(), serde_json::json!(sets)))
            .collect();
        let mut child = Command::new(python_bin())
            .arg(repo_root().join("tests/peers/dns/server.py"))
            .arg(serde_json::Value::Object(map).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the test DNS server");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("the test DNS server printed nothing"));
        let port: u16 = first
            .strip_prefix("port ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the DNS server: {first:?}"));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&queries);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(q) = line.strip_prefix("query ") {
                    sink.lock().unwrap().push(q.to_string());
                }
            }
        });
        DnsServer {
            child,
            _stdin: stdin,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            queries,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many queries of `qtype` ("A", "AAAA") asked for `name` so far.
    pub fn queries(&self, name: &str, qtype: &str) -> usize {
        // The reader thread may be a moment behind the answer.
        std::thread::sleep(Duration::from_millis(50));
        let want = format!("{name} {qtype}");
        self.queries
            .lock()
            .unwrap()
            .iter()
            .filter(|q| **q == want)
            .count()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
