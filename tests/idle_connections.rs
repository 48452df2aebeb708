//! Agent connections waiting for their next request give hyper's buffers back (taken apart,
//! counted in `sidekey_agent_connections_idle`) and are made again when bytes arrive: nothing
//! an agent sends or is sent is lost or read as something else on the way.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::metrics::{labels, scrape};

/// Longer than a connection waits before it gives its buffers back (50 ms), with room for a
/// loaded machine.
const IDLE: Duration = Duration::from_millis(400);

fn idle_gauge(sk: &Sidekey, listener: &str) -> f64 {
    scrape(sk)
        .exact(
            "sidekey_agent_connections_idle",
            &labels(&[("listener", listener)]),
        )
        .unwrap_or_else(|| panic!("no sidekey_agent_connections_idle for {listener}"))
}

#[track_caller]
fn wait_idle_gauge(sk: &Sidekey, listener: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = idle_gauge(sk, listener);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sidekey_agent_connections_idle{{listener=\"{listener}\"}} is {now}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn forward_get(conn: &mut TcpStream, path: &str) -> RawResponse {
    let request =
        format!("GET http://plain.test.local{path} HTTP/1.1\r\nHost: plain.test.local\r\n\r\n");
    conn.write_all(request.as_bytes()).unwrap();
    read_response(conn, false, false).unwrap()
}

fn route_get(conn: &mut TcpStream, path: &str) -> RawResponse {
    let request = format!("GET /r/api{path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    conn.write_all(request.as_bytes()).unwrap();
    read_response(conn, false, false).unwrap()
}

#[test]
fn idle_keep_alive_connections_give_back_their_buffers_and_serve_on() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    wait_idle_gauge(&sk, "forward", 0.0);
    let mut forward: Vec<TcpStream> = (0..3).map(|_| connect(sk.forward).unwrap()).collect();
    let mut routes: Vec<TcpStream> = (0..2).map(|_| connect(sk.routes).unwrap()).collect();
    for round in 0..3 {
        for (i, conn) in forward.iter_mut().enumerate() {
            let response = forward_get(conn, &format!("/echo/f{i}-{round}"));
            assert_eq!(response.status, 200, "forward {i}, round {round}");
            assert!(
                response.body_str().contains(&format!("/echo/f{i}-{round}")),
                "{}",
                response.body_str()
            );
        }
        for (i, conn) in routes.iter_mut().enumerate() {
            let response = route_get(conn, &format!("/echo/r{i}-{round}"));
            assert_eq!(response.status, 200, "routes {i}, round {round}");
            assert!(
                response.body_str().contains(&format!("/echo/r{i}-{round}")),
                "{}",
                response.body_str()
            );
        }
        // Every one of them waits for its next request, taken apart.
        std::thread::sleep(IDLE);
        wait_idle_gauge(&sk, "forward", 3.0);
        wait_idle_gauge(&sk, "routes", 2.0);
    }
    for i in 0..3 {
        assert_eq!(
            env.upstream_http.requests_to(&format!("/echo/f{i}-")).len(),
            3,
            "each forward request reached the upstream once"
        );
    }
    // Closed while taken apart: counted out of both gauges.
    drop(forward);
    drop(routes);
    wait_idle_gauge(&sk, "forward", 0.0);
    wait_idle_gauge(&sk, "routes", 0.0);
    let open = |listener: &str| {
        scrape(&sk).exact(
            "sidekey_agent_connections",
            &labels(&[("listener", listener)]),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while open("forward") != Some(0.0) || open("routes") != Some(0.0) {
        assert!(Instant::now() < deadline, "connections still counted open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_head_begun_before_the_connection_was_taken_apart_is_read_whole() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let mut conn = connect(sk.forward).unwrap();
    assert_eq!(forward_get(&mut conn, "/echo/first").status, 200);
    std::thread::sleep(IDLE);
    wait_idle_gauge(&sk, "forward", 1.0);
    // Half a head: the connection is made again, reads it, and is taken apart again holding
    // the half it has.
    conn.write_all(b"GET http://plain.test.local/echo/split HTTP/1.1\r\nHo")
        .unwrap();
    std::thread::sleep(IDLE);
    wait_idle_gauge(&sk, "forward", 1.0);
    conn.write_all(b"st: plain.test.local\r\nX-Half: two\r\n\r\n")
        .unwrap();
    let response = read_response(&mut conn, false, false).unwrap();
    assert_eq!(response.status, 200, "{}", response.body_str());
    let seen = env.upstream_http.requests_to("/echo/split");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-half"), Some("two"));
    assert_eq!(seen[0].authority.as_deref(), Some("plain.test.local"));
}

/// An upstream that answers each request as soon as its head has arrived, before reading its
/// body, and records every byte it is sent.
struct EarlyUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
}

impl EarlyUpstream {
    fn start() -> EarlyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<u8>>> = Arc::default();
        let all = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let all = Arc::clone(&all);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    let mut answered = 0;
                    loop {
                        let n = match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let mut all = all.lock().unwrap();
                        all.extend_from_slice(&buf[..n]);
                        let heads = String::from_utf8_lossy(&all).matches("\r\n\r\n").count();
                        drop(all);
                        while answered < heads {
                            answered += 1;
                            let _ = stream.write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nearly",
                            );
                        }
                    }
                });
            }
        });
        EarlyUpstream { addr, received }
    }
}

#[test]
fn a_request_body_still_arriving_after_its_response_is_never_read_as_a_request() {
    // The response has ended, but the agent is still sending the body (not a form, so it
    // streams): the connection is not
    // waiting for a head, and must not be taken apart, or the rest of the body would be read as
    // the next request (smuggled past the request's own decision).
    let env = Env::new();
    let early = EarlyUpstream::start();
    let yaml = base_config(
        &[("early.test.local:80", &early.addr.to_string())],
        r#"  - name: early
    hosts: [early.test.local]
    schemes: [http]
    methods: [POST]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
    allow_private: true
"#,
        "",
    );
    let sk = env.sidekey(&yaml);
    let smuggled =
        "GET http://plain.test.local/echo/smuggled HTTP/1.1\r\nHost: plain.test.local\r\n\r\n";
    let first = "a".repeat(100);
    let mut conn = connect(sk.forward).unwrap();
    let head = format!(
        "POST http://early.test.local/upload HTTP/1.1\r\nHost: early.test.local\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        first.len() + smuggled.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(first.as_bytes()).unwrap();
    let response = read_response(&mut conn, false, false).unwrap();
    assert_eq!(response.status, 200, "{}", response.body_str());
    assert_eq!(response.body_str(), "early");
    std::thread::sleep(IDLE);
    assert_eq!(
        idle_gauge(&sk, "forward"),
        0.0,
        "a connection still reading a body is not idle"
    );
    conn.write_all(smuggled.as_bytes()).unwrap();
    // The body went to the upstream as a body, and the connection serves its next request.
    let after = forward_get(&mut conn, "/echo/after");
    assert_eq!(after.status, 200, "{}", after.body_str());
    assert!(
        env.upstream_http.requests_to("/echo/smuggled").is_empty(),
        "the body's bytes were read as a request"
    );
    assert_eq!(env.upstream_http.requests_to("/echo/after").len(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&early.received.lock().unwrap()).contains(smuggled) {
        assert!(
            Instant::now() < deadline,
            "the whole body reached the upstream: {:?}",
            String::from_utf8_lossy(&early.received.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_response_the_agent_reads_late_arrives_whole() {
    // The agent stops reading, so the response waits in the socket's buffers and hyper's, for
    // longer than a connection waits before it is taken apart; then it is read to the end. (The
    // moment the response's last bytes are still in hyper's buffer after its body has ended
    // depends on the kernel's buffer sizes: the unit test in `h1.rs` holds that one exactly.)
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    // More than the socket buffers on both sides can hold.
    let size = 32 * 1024 * 1024;
    let mut conn = connect(sk.forward).unwrap();
    conn.write_all(
        format!(
            "GET http://plain.test.local/bytes/{size} HTTP/1.1\r\nHost: plain.test.local\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(IDLE * 2);
    let response = read_response(&mut conn, false, false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), size);
    assert!(response.body.iter().all(|&b| b == b'x'));
    assert_eq!(forward_get(&mut conn, "/echo/next").status, 200);
}

#[test]
fn a_connection_taken_apart_is_upgraded_to_a_tunnel_when_its_next_request_is_a_connect() {
    let env = Env::new();
    let sk = env.sidekey(&allow_loopback_ranges(&base_config(
        &[("blindplain.test.local:80", "{upstream_http}")],
        "",
        "unmatched: tunnel",
    )));
    let mut conn = connect(sk.forward).unwrap();
    assert_eq!(forward_get(&mut conn, "/echo/before").status, 200);
    std::thread::sleep(IDLE);
    wait_idle_gauge(&sk, "forward", 1.0);
    conn.write_all(
        b"CONNECT blindplain.test.local:80 HTTP/1.1\r\nHost: blindplain.test.local:80\r\n\r\n",
    )
    .unwrap();
    let connected = read_response(&mut conn, false, true).unwrap();
    assert_eq!(connected.status, 200);
    // A tunnel is not a connection waiting for a request.
    wait_idle_gauge(&sk, "forward", 0.0);
    conn.write_all(b"GET /echo/through HTTP/1.1\r\nHost: blindplain.test.local\r\n\r\n")
        .unwrap();
    let through = read_response(&mut conn, false, false).unwrap();
    assert_eq!(through.status, 200, "{}", through.body_str());
    let seen = env.upstream_http.requests_to("/echo/through");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        None,
        "a blind tunnel carries no credential"
    );
}
