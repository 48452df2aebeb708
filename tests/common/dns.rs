//! A DNS server the tests control (tests/peers/dns/server.py, dnslib): names answer from
//! answer sets that change from one query to the next (TTL 0), for SSRF and DNS-rebinding
//! tests. sidekey asks it when its config says `upstream.nameservers: ["{dns}"]`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::clients::python_bin;
use super::sidekey::repo_root;

pub struct DnsServer {
    child: Child,
    /// Kept open: the server exits when it closes.
    _stdin: ChildStdin,
    addr: SocketAddr,
    /// The queries read off the server's stdout (`name qtype`), and a Condvar notified per line.
    queries: Arc<(Mutex<Vec<String>>, Condvar)>,
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
        let queries = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = Arc::clone(&queries);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(q) = line.strip_prefix("query ") {
                    sink.0.lock().unwrap().push(q.to_string());
                    sink.1.notify_all();
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

    /// Waits until at least `n` queries of `qtype` ("A", "AAAA") have asked for `name` (the
    /// server logs a query as it answers it; the reader thread may be a moment behind).
    #[track_caller]
    pub fn wait_queries(&self, name: &str, qtype: &str, n: usize) {
        let want = format!("{name} {qtype}");
        let count = |all: &Vec<String>| all.iter().filter(|q| **q == want).count();
        let (lock, changed) = &*self.queries;
        let timeout = Duration::from_secs(10);
        let (all, _) = changed
            .wait_timeout_while(lock.lock().unwrap(), timeout, |all| count(all) < n)
            .unwrap();
        assert!(
            count(&all) >= n,
            "{} queries for {want} within {timeout:?}, expected at least {n}: {all:?}",
            count(&all)
        );
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
