//! WebSockets through sidekey, with real clients (Python `websockets`, Node `ws`, raw frames,
//! an HTTP/2 extended CONNECT over `h2`) against a real WebSocket upstream (Python
//! `websockets`, tests/clients/ws_upstream.py): the upgrade decided like any request and given
//! the route's credential, frames both ways, the credential masked in the upstream's frames,
//! limits, idle timeout, and one audit record per connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const WS: &str = "ws.test.local";
const WS_PLAIN: &str = "ws-plain.test.local";

/// tests/clients/ws_upstream.py, over TLS (a certificate for [`WS`] from the test CA) or
/// plain; what it prints is kept.
pub(crate) struct WsUpstream {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl WsUpstream {
    pub(crate) fn start(tls: Option<&TestCa>) -> WsUpstream {
        let mut cmd = Command::new(python_bin());
        cmd.arg(clients_dir().join("ws_upstream.py"));
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(ca) = tls {
            let leaf = ca.issue(&[WS]);
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert, format!("{}{}", leaf.cert_pem, ca.cert_pem())).unwrap();
            std::fs::write(&key, &leaf.key_pem).unwrap();
            cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start ws_upstream.py");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        out.read_line(&mut first).expect("ws_upstream.py output");
        let port = serde_json::from_str::<Value>(&first)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .unwrap_or_else(|| panic!("ws_upstream.py did not start: {first:?}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&lines);
        std::thread::spawn(move || {
            // The certificate files live as long as the server reads them (at start).
            let _dir = dir;
            for line in out.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    kept.lock().unwrap().push(v);
                }
            }
        });
        WsUpstream {
            child,
            port: u16::try_from(port).unwrap(),
            lines,
        }
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits for `n` lines matching `pred`.
    fn wait(&self, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut found = Vec::new();
        let ok = eventually(Duration::from_secs(15), || {
            found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|v| pred(v))
                .cloned()
                .collect();
            found.len() >= n
        });
        assert!(ok, "upstream: {:?}", self.lines.lock().unwrap());
        found
    }

    fn connections(&self, n: usize) -> Vec<Value> {
        self.wait(n, |v| v.get("path").is_some())
    }

    fn closes(&self, n: usize) -> Vec<Value> {
        self.wait(n, |v| v.get("closed").is_some())
    }
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Routes `ws` (wss://ws.test.local, paths `/chat`, `/chat/**`, `/reject`, `/idle`) and
/// `ws-plain` (ws://ws-plain.test.local), both GET only with the local issuer's JWT as
/// `Authorization: Bearer`; then `extra_top`.
fn config(tls: &WsUpstream, plain: &WsUpstream, extra_top: &str) -> String {
    let routes = format!(
        r#"  - name: ws
    hosts: [{WS}]
    methods: [GET]
    paths: ["/chat", "/chat/**", "/reject", "/idle"]
    credential: demo
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
  - name: ws-plain
    schemes: [http]
    hosts: [{WS_PLAIN}]
    methods: [GET]
    credential: demo
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
"#
    );
    base_config(
        &[
            (&format!("{WS}:443"), &tls.addr()),
            (&format!("{WS_PLAIN}:80"), &plain.addr()),
        ],
        &routes,
        extra_top,
    )
}

struct Setup {
    env: Env,
    tls: WsUpstream,
    plain: WsUpstream,
    sk: Sidekey,
}

fn setup(extra_top: &str) -> Setup {
    let env = Env::new();
    let tls = WsUpstream::start(Some(&env.ca));
    let plain = WsUpstream::start(None);
    let sk = env.sidekey(&config(&tls, &plain, extra_top));
    Setup {
        env,
        tls,
        plain,
        sk,
    }
}

/// tests/clients/ws_client.py: `url` through sidekey's forward listener (or directly when
/// `proxy` is None), running `steps`.
pub(crate) fn py_client(sk: &Sidekey, url: &str, proxy: bool, steps: Value) -> Value {
    let mut cmd = Command::new(python_bin());
    cmd.arg(clients_dir().join("ws_client.py"))
        .arg("--url")
        .arg(url)
        .arg("--cacert")
        .arg(sk.ca_pem())
        .arg("--protocol")
        .arg("chat.v2")
        .arg("--steps")
        .arg(steps.to_string())
        .stdin(Stdio::null());
    if proxy {
        cmd.arg("--proxy").arg(sk.proxy_url());
    }
    for v in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    let out = output_with_timeout(cmd, Duration::from_secs(60));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ws_client.py printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub(crate) fn texts(result: &Value) -> Vec<String> {
    result["received"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_string))
        .collect()
}

/// `auth=Bearer ****…`: the token the upstream echoed, masked whole.
#[track_caller]
fn assert_masked_echo(text: &str) {
    let token = text
        .strip_prefix("auth=Bearer ")
        .unwrap_or_else(|| panic!("not an echo of the header: {text:?}"));
    assert!(
        token.len() > 40 && token.bytes().all(|b| b == b'*'),
        "the echoed credential reached the agent: {text:?}"
    );
}

fn ws_record(sk: &Sidekey, listener: &str) -> Value {
    sk.wait_audit(
        |r| r["type"] == "request" && r["listener"] == listener && r["websocket"].is_object(),
        1,
        Duration::from_secs(20),
    )
    .remove(0)
}

#[test]
fn python_websocket_through_the_forward_proxy_gets_the_credential_and_never_sees_it() {
    let s = setup("");
    let result = py_client(
        &s.sk,
        &format!("wss://{WS}/chat"),
        true,
        serde_json::json!([
            ["send", "shape"],
            ["recv"],
            ["send", "whoami"],
            ["recv"],
            ["send", "whoami-fragmented"],
            ["recv"],
            ["send", "hello"],
            ["recv"],
            ["send_bytes", 70000],
            ["recv"],
            ["close", 1000]
        ]),
    );
    assert_eq!(result["status"], 101, "{result}");
    assert_eq!(result["protocol"], "chat.v2", "the subprotocol passes");
    assert_eq!(
        result["extensions"],
        Value::Null,
        "no extension: frames stay maskable"
    );
    let got = texts(&result);
    assert_eq!(got[0], "Bearer jwt:3", "the upstream got the route's JWT");
    assert_masked_echo(&got[1]);
    assert_masked_echo(&got[2]);
    assert_eq!(got[3], "hello");
    assert_eq!(result["received"][4]["bytes"], 70000);
    assert_eq!(result["close_code"], 1000, "the close handshake completed");

    let seen = s.tls.connections(1);
    assert_eq!(seen[0]["path"], "/chat");
    assert_eq!(seen[0]["authorization"], true);
    assert_eq!(
        seen[0]["extensions"],
        Value::Null,
        "the agent's permessage-deflate offer is not forwarded"
    );
    assert_eq!(s.tls.closes(1)[0]["closed"], 1000);

    let r = ws_record(&s.sk, "forward");
    assert_eq!(r["method"], "GET");
    assert_eq!(r["host"], WS);
    assert_eq!(r["route"], "ws");
    assert_eq!(r["decision"], "allow");
    assert_eq!(r["status"], 101);
    assert_eq!(r["code"], Value::Null);
    assert_eq!(r["error"], Value::Null, "{r}");
    assert!(r["credential_id"].is_string());
    assert_eq!(r["request_id"], result["request_id"]);
    assert_eq!(r["websocket"]["close_code"], 1000);
    assert_eq!(r["websocket"]["closed_by"], "agent");
    assert_eq!(r["websocket"]["messages_in"], 5);
    assert_eq!(r["websocket"]["messages_out"], 5);
    assert!(r["bytes_in"].as_u64().unwrap() > 70_000, "{r}");
    assert!(r["bytes_out"].as_u64().unwrap() > 70_000, "{r}");
    // Nothing of the credential in the trail or the logs.
    let token_part = s.sk.stdout_text();
    assert!(!token_part.contains("eyJ"), "a JWT in the audit trail");
    assert!(!s.sk.stderr().contains("eyJ"), "a JWT in the logs");
    drop(s.env);
}

#[test]
fn node_ws_through_the_route_listener() {
    let s = setup("");
    let mut cmd = Command::new("node");
    cmd.arg(clients_dir().join("ws_client.mjs"))
        .arg("--url")
        .arg(format!(
            "{}/r/ws/chat/room-1",
            s.sk.routes_url().replace("http://", "ws://")
        ))
        .args(["--send", "whoami", "--send", "ping-me", "--close", "4000"])
        .stdin(Stdio::null());
    let out = output_with_timeout(cmd, Duration::from_secs(60));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ws_client.mjs: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(result["status"], 101, "{result}");
    assert_eq!(result["extensions"], Value::Null);
    assert_masked_echo(result["received"][0]["text"].as_str().unwrap());
    assert_eq!(result["received"][1]["text"], "ping-me");
    assert_eq!(
        result["close_code"], 4000,
        "the upstream echoed the agent's code"
    );
    assert_eq!(s.tls.connections(1)[0]["path"], "/chat/room-1");
    let r = ws_record(&s.sk, "routes");
    assert_eq!(r["route"], "ws");
    assert_eq!(r["path"], "/chat/room-1");
    assert_eq!(r["websocket"]["close_code"], 4000);
    assert_eq!(r["websocket"]["closed_by"], "agent");
}

/// A WebSocket client's side of a raw connection: the handshake written by hand, frames
/// masked by hand.
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// RFC 6455 §1.3's example: the accept of [`KEY`].
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

impl RawWs {
    /// `GET http://host/path` with the upgrade headers (`extra` added) on the forward listener.
    fn open(proxy: SocketAddr, url_host: &str, path: &str, extra: &str) -> (RawWs, String) {
        let mut stream = TcpStream::connect(proxy).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        write!(
            stream,
            "GET http://{url_host}{path} HTTP/1.1\r\nHost: {url_host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            // A refusal: its body too, for the message.
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            head.extend(rest);
        }
        (
            RawWs {
                stream,
                buf: Vec::new(),
            },
            String::from_utf8_lossy(&head).into_owned(),
        )
    }

    fn send(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(m | n as u8),
            n if n < 65536 => {
                frame.push(m | 126);
                frame.extend((n as u16).to_be_bytes());
            }
            n => {
                frame.push(m | 127);
                frame.extend((n as u64).to_be_bytes());
            }
        }
        let key = [0x37, 0xfa, 0x21, 0x3d];
        if masked {
            frame.extend(key);
        }
        frame.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b }),
        );
        self.stream.write_all(&frame).unwrap();
    }

    /// The next frame: (opcode, payload), or None when the connection closed.
    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (op, len7) = (self.buf[0] & 0x0F, self.buf[1] & 0x7F);
                assert_eq!(
                    self.buf[1] & 0x80,
                    0,
                    "sidekey masks no frame toward the agent"
                );
                let (len, at) = match len7 {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if at > 0 && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((op, payload));
                }
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until a Close frame; its code.
    fn close_code(&mut self) -> Option<u16> {
        while let Some((op, payload)) = self.recv() {
            if op == 0x8 {
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}

#[test]
fn absolute_form_upgrade_on_the_forward_listener_and_a_protocol_violation() {
    let s = setup("");
    let proxy = s.sk.listener("forward").unwrap();
    let (mut ws, head) = RawWs::open(
        proxy,
        WS_PLAIN,
        "/chat",
        &format!("Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "sec-websocket-accept: {}",
            ACCEPT.to_ascii_lowercase()
        )),
        "the accept of the agent's key: {head}"
    );
    assert!(!head
        .to_ascii_lowercase()
        .contains("sec-websocket-extensions"));
    // A message in two fragments; the echo of the credential comes back masked.
    ws.send(false, 0x1, b"who", true);
    ws.send(true, 0x0, b"ami", true);
    let (op, payload) = ws.recv().expect("an answer");
    assert_eq!(op, 0x1);
    assert_masked_echo(std::str::from_utf8(&payload).unwrap());
    // An unmasked frame from the agent breaks RFC 6455: both sides get 1002.
    ws.send(true, 0x1, b"hello", false);
    assert_eq!(ws.close_code(), Some(1002));
    assert_eq!(s.plain.closes(1)[0]["closed"], 1002);
    let r = ws_record(&s.sk, "forward");
    assert_eq!(r["route"], "ws-plain");
    assert_eq!(r["status"], 101);
    assert_eq!(r["error"], "websocket_protocol_error");
    assert_eq!(r["websocket"]["closed_by"], "sidekey");
    assert_eq!(r["websocket"]["close_code"], 1002);
    assert_eq!(r["websocket"]["messages_in"], 1);
}

#[test]
fn bad_upgrades_are_refused_and_an_upstreams_refusal_passes() {
    let s = setup("");
    let proxy = s.sk.listener("forward").unwrap();
    // No key.
    let (_, head) = RawWs::open(proxy, WS_PLAIN, "/chat", "");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("x-sidekey-error: request_invalid"), "{head}");
    // A path the route does not allow: refused before anything reaches the upstream.
    let result = py_client(
        &s.sk,
        &format!("wss://{WS}/admin"),
        true,
        serde_json::json!([]),
    );
    assert_eq!(result["status"], 403, "{result}");
    // The upstream's own refusal of the upgrade reaches the agent.
    let result = py_client(
        &s.sk,
        &format!("wss://{WS}/reject"),
        true,
        serde_json::json!([]),
    );
    assert_eq!(result["status"], 403, "{result}");
    let records = s.sk.wait_request_records(3);
    let codes: Vec<&Value> = records.iter().map(|r| &r["code"]).collect();
    assert_eq!(codes[0], "request_invalid");
    assert_eq!(codes[1], "path_not_allowed");
    assert_eq!(
        codes[2],
        &Value::Null,
        "the upstream answered: {:?}",
        records[2]
    );
    assert_eq!(records[2]["status"], 403);
    // Only the last one reached the upstream (and was refused by it: no connection).
    assert!(s
        .tls
        .lines
        .lock()
        .unwrap()
        .iter()
        .all(|v| v.get("path").is_none()));
}

#[test]
fn message_limits_close_with_1009_both_ways() {
    let s = setup("limits: { websocket_max_message: 4096 }\n");
    // From the agent: past the limit.
    let result = py_client(
        &s.sk,
        &format!("wss://{WS}/chat"),
        true,
        serde_json::json!([
            ["send", "hello"],
            ["recv"],
            ["send_bytes", 5000],
            ["wait_closed"]
        ]),
    );
    assert_eq!(texts(&result), ["hello"]);
    assert_eq!(result["close_code"], 1009, "{result}");
    assert_eq!(s.tls.closes(1)[0]["closed"], 1009);
    // From the upstream.
    let result = py_client(
        &s.sk,
        &format!("wss://{WS}/chat"),
        true,
        serde_json::json!([
            ["send", "big:4096"],
            ["recv"],
            ["send", "big:4097"],
            ["wait_closed"]
        ]),
    );
    assert_eq!(result["received"][0]["bytes"], 4096, "at the limit passes");
    assert_eq!(result["close_code"], 1009, "{result}");
    let records = s.sk.wait_audit(
        |r| r["type"] == "request" && r["websocket"].is_object(),
        2,
        Duration::from_secs(20),
    );
    for r in &records {
        assert_eq!(r["error"], "websocket_too_large", "{r}");
        assert_eq!(r["websocket"]["closed_by"], "sidekey");
        assert_eq!(r["websocket"]["close_code"], 1009);
    }
}

#[test]
fn an_idle_websocket_is_closed_with_1001() {
    let s = setup("limits: { idle_timeout: 1s }\n");
    let result = py_client(
        &s.sk,
        &format!("wss://{WS}/idle"),
        true,
        serde_json::json!([["send", "hi"], ["recv"], ["wait_closed"]]),
    );
    assert_eq!(texts(&result), ["hi"]);
    assert_eq!(result["close_code"], 1001, "{result}");
    assert_eq!(s.tls.closes(1)[0]["closed"], 1001);
    let r = ws_record(&s.sk, "forward");
    assert_eq!(r["error"], "idle_timeout");
    assert_eq!(r["websocket"]["closed_by"], "sidekey");
}

#[test]
fn http2_extended_connect_carries_a_websocket() {
    let s = setup("");
    let mut cmd = Command::new(python_bin());
    cmd.arg(clients_dir().join("ws_h2.py"))
        .arg(s.sk.listener("forward").unwrap().to_string())
        .arg(s.sk.ca_pem())
        .arg(WS)
        .arg("/chat")
        .args(["whoami", "over h2"])
        .stdin(Stdio::null());
    let out = output_with_timeout(cmd, Duration::from_secs(60));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ws_h2.py: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(result["enable_connect_protocol"], 1, "{result}");
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["headers"]["sec-websocket-protocol"], "chat.v1");
    assert_masked_echo(result["received"][0].as_str().unwrap());
    assert_eq!(result["received"][1], "over h2");
    assert_eq!(result["close_code"], 1000, "{result}");
    let seen = s.tls.connections(1);
    assert_eq!(
        seen[0]["authorization"], true,
        "HTTP/1.1 Upgrade upstream, credentialed"
    );
    let r = ws_record(&s.sk, "forward");
    assert_eq!(
        r["method"], "GET",
        "decided and recorded as the GET it stands for"
    );
    assert_eq!(r["status"], 200);
    assert_eq!(r["websocket"]["close_code"], 1000);
    assert_eq!(r["websocket"]["closed_by"], "agent");
}

#[test]
fn a_reload_closes_only_the_websockets_it_no_longer_allows_and_shutdown_closes_the_rest() {
    let mut s = setup("");
    let proxy = s.sk.listener("forward").unwrap();
    let yaml = config(&s.tls, &s.plain, "");
    let open = |path: &str| {
        let (ws, head) = RawWs::open(
            proxy,
            WS_PLAIN,
            path,
            &format!("Sec-WebSocket-Key: {KEY}\r\n"),
        );
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws
    };
    let mut kept = open("/kept");
    let mut dropped = open("/dropped");
    // A reload that changes another route: both stay open.
    let other_route_changed =
        yaml.replace(r#""/reject", "/idle"]"#, r#""/reject", "/idle", "/more"]"#);
    assert_ne!(other_route_changed, yaml);
    assert_eq!(
        s.sk.reload(&other_route_changed, &s.env.vars())["event"],
        "reloaded"
    );
    for ws in [&mut kept, &mut dropped] {
        ws.send(true, 0x1, b"still here", true);
        assert_eq!(ws.recv().expect("open").1, b"still here");
    }
    // A reload after which `/dropped` is no longer allowed: it is closed with 1001, `/kept`
    // stays.
    let narrowed = other_route_changed.replace(
        &format!("hosts: [{WS_PLAIN}]\n    methods: [GET]\n"),
        &format!("hosts: [{WS_PLAIN}]\n    methods: [GET]\n    paths: [\"/kept\"]\n"),
    );
    assert_ne!(narrowed, other_route_changed);
    assert_eq!(s.sk.reload(&narrowed, &s.env.vars())["event"], "reloaded");
    assert_eq!(dropped.close_code(), Some(1001));
    kept.send(true, 0x1, b"and now", true);
    assert_eq!(kept.recv().expect("open").1, b"and now");
    // Shutdown closes the rest with 1001 and writes their records.
    s.sk.terminate();
    assert_eq!(kept.close_code(), Some(1001));
    let records: Vec<Value> =
        s.sk.request_records()
            .into_iter()
            .filter(|r| r["websocket"].is_object())
            .collect();
    let by_path = |p: &str| {
        records
            .iter()
            .find(|r| r["path"] == p)
            .unwrap_or_else(|| panic!("no record for {p}: {records:?}"))
    };
    assert_eq!(by_path("/dropped")["error"], "config_reloaded");
    assert_eq!(by_path("/kept")["error"], "shutdown");
    for p in ["/dropped", "/kept"] {
        assert_eq!(by_path(p)["websocket"]["closed_by"], "sidekey");
        assert_eq!(by_path(p)["websocket"]["close_code"], 1001);
        assert_eq!(
            by_path(p)["websocket"]["messages_in"],
            1 + u64::from(p == "/kept")
        );
    }
}
