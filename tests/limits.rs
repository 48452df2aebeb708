//! `limits:`: one misbehaving client (slow heads, too many connections, idle tunnels, HTTP/2
//! floods) is cut off while everybody else keeps being served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// Waits until the server closes `stream` (EOF or reset); false if it is still open after
/// `within`.
fn closed_in_time(stream: &mut TcpStream, within: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    closed_within(stream, within)
}

fn plain_get(sk: &Sidekey, path: &str) -> CurlResult {
    curl(&[
        "-x",
        &sk.proxy_url(),
        "-m",
        "10",
        &format!("http://plain.test.local{path}"),
    ])
}

#[test]
fn a_slow_request_head_is_cut_off_and_others_are_served_meanwhile() {
    let env = Env::new();
    // One worker (the current-thread runtime): the slow head must not hold the only thread.
    let sk = env.sidekey_one_worker(&base_config(&[], "", "limits: { header_read_timeout: 1s }"));
    let mut slow = TcpStream::connect(sk.forward).unwrap();
    slow.write_all(b"GET http://plain.test.local/echo/slow HTTP/1.1\r\nHost: pla")
        .unwrap();
    plain_get(&sk, "/echo/meanwhile").assert_status(200);
    let started = Instant::now();
    assert!(
        closed_in_time(&mut slow, Duration::from_secs(5)),
        "a head that never ends is dropped"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(env.upstream_http.requests_to("/echo/slow").is_empty());
    plain_get(&sk, "/echo/after").assert_status(200);
}

#[test]
fn connections_past_the_limit_are_closed_and_the_open_ones_keep_working() {
    let env = Env::new();
    let sk = env.sidekey(&base_config(&[], "", "limits: { max_connections: 3 }"));
    // Three idle connections take every place.
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(sk.forward).unwrap())
        .collect();
    sk.wait_open_connections(sk.forward, 3);
    let mut extra = TcpStream::connect(sk.forward).unwrap();
    assert!(
        closed_in_time(&mut extra, Duration::from_secs(3)),
        "the fourth connection is closed at once"
    );
    // The held ones still work.
    let first = &mut held[0];
    first
        .write_all(
            b"GET http://plain.test.local/echo/held HTTP/1.1\r\nHost: plain.test.local\r\n\r\n",
        )
        .unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = [0u8; 12];
    first.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Closing one frees its place (once sidekey has closed its end too).
    held.truncate(2);
    sk.wait_open_connections(sk.forward, 2);
    plain_get(&sk, "/echo/freed").assert_status(200);
    let log = sk.stderr();
    assert!(log.contains("connection limit reached"), "{log}");
}

#[test]
fn an_idle_blind_tunnel_is_closed_after_idle_timeout() {
    let env = Env::new();
    let yaml = allow_loopback_ranges(&base_config(
        &[("blind.test.local:443", "{upstream}")],
        "",
        "unmatched: tunnel\nlimits: { idle_timeout: 1s }",
    ));
    let sk = env.sidekey(&yaml);
    let mut tunnel = connect_tunnel(sk.forward, "blind.test.local:443")
        .unwrap_or_else(|r| panic!("CONNECT refused: {}", r.status));
    assert!(
        closed_in_time(&mut tunnel, Duration::from_secs(6)),
        "a tunnel with no traffic either way is closed"
    );
    let records = sk.expect_request_records(1);
    assert_eq!(records[0]["error"], "idle_timeout", "{}", records[0]);
}

/// Runs tests/clients/h2flood.py against `sk`'s interception of api.test.local.
fn h2flood(sk: &Sidekey, mode: &str, count: usize) -> serde_json::Value {
    let mut cmd = Command::new(python_bin());
    cmd.arg(clients_dir().join("h2flood.py"))
        .args(["--proxy", &sk.forward.to_string()])
        .args(["--ca", &sk.ca_pem().display().to_string()])
        .args(["--host", "api.test.local", "--mode", mode])
        .args(["--count", &count.to_string()]);
    let out = output_with_timeout(cmd, Duration::from_secs(60));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "h2flood printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn http2_rapid_reset_and_continuation_floods_lose_their_connection_not_the_proxy() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());

    let reset = h2flood(&sk, "rapid-reset", 5000);
    let sent = reset["sent"].as_u64().unwrap_or(0);
    assert!(
        reset["closed"] == true || !reset["goaway"].is_null(),
        "the flooding connection was stopped: {reset}"
    );
    assert!(sent < 5000, "stopped before the end of the flood: {reset}");
    let reached = env.upstream.requests_to("/echo/flood").len();
    assert!(
        reached < 500,
        "cancelled streams are not all forwarded ({reached} reached the upstream): {reset}"
    );

    let cont = h2flood(&sk, "continuation", 2000);
    assert!(
        cont["closed"] == true || !cont["goaway"].is_null(),
        "an endless header block was stopped: {cont}"
    );
    assert!(
        cont["sent"].as_u64().unwrap_or(u64::MAX) < 2000,
        "stopped long before 32 MB of headers: {cont}"
    );
    assert!(env.upstream.requests_to("/echo/cont").is_empty());

    // Everybody else is still served.
    curl_via(&sk, &["--http2", "https://api.test.local/echo/after"]).assert_status(200);
    assert!(!sk.stderr().contains("panicked"));
}

#[test]
fn a_route_with_max_request_body_refuses_larger_bodies_with_413() {
    let env = Env::new();
    let route = r#"  - name: small
    hosts: [small.test.local]
    methods: [POST]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
    max_request_body: 1024
"#;
    let sk = env.sidekey(&base_config(
        &[("small.test.local:443", "{upstream}")],
        route,
        "",
    ));
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 4000]).unwrap();
    let big_arg = format!("@{}", big.display());

    let ok = "y".repeat(1000);
    curl_via(
        &sk,
        &["--data-binary", &ok, "https://small.test.local/echo/ok"],
    )
    .assert_status(200);

    // Declared too large: refused before a credential is fetched or anything is sent.
    let res = curl_via(
        &sk,
        &[
            "--data-binary",
            &big_arg,
            "https://small.test.local/echo/declared",
        ],
    );
    res.expect_refusal(413, "body_too_large");
    assert!(env.upstream.requests_to("/echo/declared").is_empty());

    // No length given: cut off once it passes the limit.
    let res = curl_via(
        &sk,
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &big_arg,
            "https://small.test.local/echo/chunked",
        ],
    );
    res.expect_refusal(413, "body_too_large");
    assert!(
        env.upstream
            .requests_to("/echo/chunked")
            .iter()
            .all(|r| r.body_len <= 1024),
        "no more than the limit was forwarded"
    );
    // Other routes are unaffected.
    curl_via(
        &sk,
        &["--data-binary", &big_arg, "https://api.test.local/echo/big"],
    )
    .assert_status(200);
}

#[test]
fn an_idle_http1_keep_alive_connection_is_closed_after_header_read_timeout() {
    let env = Env::new();
    let sk = env.sidekey(&base_config(&[], "", "limits: { header_read_timeout: 1s }"));
    let mut conn = TcpStream::connect(sk.forward).unwrap();
    conn.write_all(
        b"GET http://plain.test.local/echo/ka HTTP/1.1\r\nHost: plain.test.local\r\n\r\n",
    )
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Kept alive, then nothing more: the wait for the next head is bounded too.
    assert!(
        closed_in_time(&mut conn, Duration::from_secs(6)),
        "an idle keep-alive connection is closed"
    );
}

#[test]
fn each_wait_for_a_head_gets_the_whole_timeout_and_a_late_slow_head_is_still_cut() {
    // One timer per connection, moved to each wait's deadline: a wait must neither inherit an
    // earlier wait's deadline (the connection closed early) nor lose its own (never closed).
    let env = Env::new();
    let sk = env.sidekey_one_worker(&base_config(&[], "", "limits: { header_read_timeout: 1s }"));
    let mut conn = connect(sk.forward).unwrap();
    let started = Instant::now();
    for i in 0..6 {
        let request = format!(
            "GET http://plain.test.local/echo/ka{i} HTTP/1.1\r\nHost: plain.test.local\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).unwrap();
        let response = read_response(&mut conn, false, false).unwrap();
        assert_eq!(
            response.status, 200,
            "request {i} on the kept-alive connection"
        );
        std::thread::sleep(Duration::from_millis(600));
    }
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "the connection outlived three timeouts"
    );
    assert_eq!(env.upstream_http.requests_to("/echo/ka5").len(), 1);
    conn.write_all(b"GET http://plain.test.local/echo/late HTTP/1.1\r\nHost: pla")
        .unwrap();
    let slow = Instant::now();
    assert!(
        closed_in_time(&mut conn, Duration::from_secs(5)),
        "a head that never ends is dropped, late in the connection too"
    );
    // Cut by this wait's own deadline: 0.6 s of it had passed before the partial head.
    assert!(slow.elapsed() < Duration::from_secs(3));
    assert!(env.upstream_http.requests_to("/echo/late").is_empty());
}

#[test]
fn a_response_streaming_past_the_timeout_is_not_cut_and_the_connection_serves_on() {
    // The timeout bounds the wait for a head, not the time a request takes to be answered.
    let env = Env::new();
    let sk = env.sidekey_one_worker(&base_config(&[], "", "limits: { header_read_timeout: 1s }"));
    let mut conn = connect(sk.forward).unwrap();
    conn.write_all(
        b"GET http://plain.test.local/sse?n=6&interval_ms=500 HTTP/1.1\r\nHost: plain.test.local\r\n\r\n",
    )
    .unwrap();
    let started = Instant::now();
    let streamed = read_response(&mut conn, false, false).unwrap();
    assert_eq!(streamed.status, 200);
    assert!(
        streamed.body_str().contains("data: 5"),
        "{}",
        streamed.body_str()
    );
    assert!(started.elapsed() > Duration::from_millis(2400));
    conn.write_all(
        b"GET http://plain.test.local/echo/next HTTP/1.1\r\nHost: plain.test.local\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut conn, false, false).unwrap().status, 200);
}

#[test]
fn connections_idle_after_a_response_longer_than_the_timeout_are_closed() {
    // Each connection's timer goes off while its response streams; the wait that follows the
    // response is bounded all the same, from the response's end. Several connections at once:
    // the connection and its timer are polled in either order.
    let env = Env::new();
    let sk = env.sidekey_one_worker(&base_config(&[], "", "limits: { header_read_timeout: 1s }"));
    let forward = sk.forward;
    let waits: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let mut conn = connect(forward).unwrap();
                let request = format!(
                    "GET http://plain.test.local/sse?n=4&interval_ms=400&c={i} HTTP/1.1\r\n\
                     Host: plain.test.local\r\n\r\n"
                );
                conn.write_all(request.as_bytes()).unwrap();
                let streamed = read_response(&mut conn, false, false).unwrap();
                assert!(
                    streamed.body_str().contains("data: 3"),
                    "{}",
                    streamed.body_str()
                );
                let idle = Instant::now();
                let closed = closed_in_time(&mut conn, Duration::from_secs(5));
                (closed, idle.elapsed())
            })
        })
        .collect();
    for wait in waits {
        let (closed, after) = wait.join().unwrap();
        assert!(closed, "a connection idle after a long response is closed");
        assert!(
            after > Duration::from_millis(800),
            "closed {after:?} after its response"
        );
    }
}

#[test]
fn a_slow_head_inside_an_intercepted_tunnel_is_cut_off() {
    let env = Env::new();
    let sk = env.sidekey(&base_config(&[], "", "limits: { header_read_timeout: 1s }"));
    let tunnel = connect_tunnel(sk.forward, "api.test.local:443").unwrap();
    let mut tls = tls_handshake(tunnel, "api.test.local", Trust::Ca(sk.ca_pem())).unwrap();
    // A first request is answered, then the next head never ends.
    tls.write_all(b"GET /echo/first HTTP/1.1\r\nHost: api.test.local\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut tls, false, false).unwrap().status, 200);
    tls.write_all(b"GET /echo/slow HTTP/1.1\r\nHost: api.tes")
        .unwrap();
    let started = Instant::now();
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        closed_within(&mut tls, Duration::from_secs(5)),
        "a head that never ends is dropped inside a tunnel too"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(env.upstream.requests_to("/echo/first").len(), 1);
    assert!(env.upstream.requests_to("/echo/slow").is_empty());
}

/// The largest of the kernel's TCP buffer sizes (`tcp_rmem` or `tcp_wmem`, third field): what
/// autotuning may grow one socket's buffer to.
fn tcp_buffer_max(which: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{which}")).unwrap();
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("/proc/sys/net/ipv4/{which}: {text:?}"))
}

/// A running ACK flood (tests/clients/h2flood.py `ping-flood` / `settings-flood`): its report
/// arrives once writes have blocked (or it gave up), and its connection stays open, unread,
/// until [`AckFlood::stop`].
struct AckFlood {
    child: std::process::Child,
    report: std::sync::mpsc::Receiver<String>,
}

impl AckFlood {
    fn start(sk: &Sidekey, mode: &str, max_bytes: u64) -> AckFlood {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = Command::new(python_bin())
            .arg(clients_dir().join("h2flood.py"))
            .args(["--proxy", &sk.forward.to_string()])
            .args(["--ca", &sk.ca_pem().display().to_string()])
            .args(["--host", "api.test.local", "--mode", mode])
            .args(["--max-bytes", &max_bytes.to_string()])
            .args(["--block-seconds", "3"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn h2flood.py");
        let stdout = child.stdout.take().unwrap();
        let (tx, report) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        AckFlood { child, report }
    }

    /// Closes the flooder's stdin (it then exits, closing its connection) and waits for it.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for AckFlood {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn http2_ping_and_settings_floods_meet_backpressure_and_cost_no_memory() {
    // h2 keeps one PING ACK and one SETTINGS ACK pending, and reads no further frame until it
    // has written that ACK (h2 0.4 proto/ping_pong.rs, settings.rs, Connection::poll_ready): a
    // client that floods PINGs or SETTINGS and never reads fills the socket buffers with ACKs,
    // then sidekey stops reading, then the client's writes block. Unbounded queueing of ACKs
    // would let the flood run on and show in sidekey's memory instead.
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    curl_via(&sk, &["--http2", "https://api.test.local/echo/warm"]).assert_status(200);
    // What the four socket buffers between the flooder and sidekey can hold at most: sidekey's
    // two autotuned to the kernel's maxima, the flooder's two as it set them (reported).
    let kernel = tcp_buffer_max("tcp_rmem") + tcp_buffer_max("tcp_wmem");
    let give_up = kernel + (24 << 20);
    for mode in ["ping-flood", "settings-flood"] {
        let rss_before = sk.memory_kib("VmRSS");
        let flood = AckFlood::start(&sk, mode, give_up);
        // Everybody else is served while the flood runs.
        let mut served = 0;
        let report = loop {
            match flood.report.try_recv() {
                Ok(line) => break line,
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(e) => panic!("{mode}: the flooder died: {e}"),
            }
            let res = curl_via(
                &sk,
                &["--http2", "-m", "10", "https://api.test.local/echo/during"],
            );
            res.assert_status(200);
            served += 1;
            assert!(served < 200, "{mode}: the flood did not end");
        };
        let report: serde_json::Value = serde_json::from_str(&report)
            .unwrap_or_else(|e| panic!("{mode}: h2flood.py printed no JSON ({e}): {report:?}"));
        let sent = report["sent_bytes"].as_u64().unwrap_or(u64::MAX);
        let bound = kernel
            + report["sndbuf"].as_u64().unwrap_or(0)
            + report["rcvbuf"].as_u64().unwrap_or(0)
            + (4 << 20);
        // (b) sidekey's memory did not grow with the flood.
        let rss_during = sk.memory_kib("VmRSS");
        let grown = rss_during.saturating_sub(rss_before);
        assert!(
            grown < 4 << 10,
            "{mode}: sidekey's resident set grew by {grown} KiB while {sent} bytes of frames \
             waited for ACKs: {report}"
        );
        // (a) Backpressure, after a bounded amount.
        assert!(
            report["blocked"] == true,
            "{mode}: the flooder's writes never blocked: {report}"
        );
        assert!(
            sent < bound,
            "{mode}: {sent} bytes of frames were taken before writes blocked (bound {bound}): {report}"
        );
        // (c) Still served, with the flooding connection held open and unread.
        curl_via(
            &sk,
            &["--http2", "-m", "10", "https://api.test.local/echo/after"],
        )
        .assert_status(200);
        eprintln!(
            "{mode}: {report}; {served} requests served during the flood; RSS {rss_before} -> \
             {rss_during} KiB"
        );
        flood.stop();
    }
    assert!(!sk.stderr().contains("panicked"));
}

/// One worker thread runs tokio's current-thread scheduler (as linkerd2-proxy does on one core);
/// more, the work-stealing one with that many workers. Both serve.
#[test]
fn one_worker_runs_the_current_thread_scheduler_and_more_the_multi_thread_one() {
    let env = Env::new();
    for (workers, scheduler) in [("1", "current-thread"), ("3", "multi-thread")] {
        let sk = Sidekey::start_with_env(
            &base_config(&[], "", ""),
            &env.vars(),
            &[("SIDEKEY_WORKER_THREADS", workers)],
        );
        plain_get(&sk, "/echo/workers").assert_status(200);
        let said = format!("runtime workers={workers} scheduler={scheduler}");
        assert!(sk.stderr().contains(&said), "{said}: {}", sk.stderr());
    }
}
