//! `OtlpReceiver`: an OTLP/HTTP traces receiver (tests/clients/otlp_receiver.py, built on the
//! OpenTelemetry project's `opentelemetry-proto` Python package) on a free loopback port. It
//! decodes every `ExportTraceServiceRequest` it gets and keeps one JSON value per span (see the
//! script's header for the shape). Killed on drop; its stderr is printed if the test panics.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::clients::{clients_dir, python_bin};
use super::sidekey::PROXY_VARS;

#[derive(Default)]
struct Seen {
    lines: Vec<Value>,
    stderr: Vec<String>,
}

pub struct OtlpReceiver {
    child: Child,
    pub port: u16,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl OtlpReceiver {
    /// Starts the receiver; it answers the first `fail` exports with 503.
    pub fn start(fail: usize) -> OtlpReceiver {
        let mut cmd = Command::new(python_bin());
        cmd.arg(clients_dir().join("otlp_receiver.py"))
            .args(["--fail", &fail.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let mut child = cmd.spawn().expect("spawn otlp_receiver.py");
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let out = child.stdout.take().expect("stdout");
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| Value::String(format!("not JSON: {line}")));
                s.0.lock().unwrap().lines.push(value);
                s.1.notify_all();
            }
        });
        let err = child.stderr.take().expect("stderr");
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                s.0.lock().unwrap().stderr.push(line);
            }
        });
        let mut receiver = OtlpReceiver {
            child,
            port: 0,
            seen,
        };
        let ready = receiver.wait_line(Duration::from_secs(20), |v| v["event"] == "ready");
        receiver.port = ready["port"].as_u64().expect("port") as u16;
        receiver
    }

    /// `http://127.0.0.1:<port>/v1/traces`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// Answers the next `n` exports with 503.
    pub fn fail_next(&self, n: usize) {
        let res = super::clients::curl(&[
            "--noproxy",
            "*",
            "-X",
            "POST",
            "--data",
            &n.to_string(),
            &format!("http://127.0.0.1:{}/_fail", self.port),
        ]);
        assert_eq!(res.status, 204, "{res:#?}");
    }

    /// Every line the receiver printed so far.
    pub fn lines(&self) -> Vec<Value> {
        self.seen.0.lock().unwrap().lines.clone()
    }

    /// The spans received so far (`{"resource", "scope", "span"}` each).
    pub fn spans(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v.get("span").is_some())
            .collect()
    }

    /// Lines that report a request the receiver could not take (wrong path, content type,
    /// undecodable body).
    pub fn errors(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v.get("error").is_some())
            .collect()
    }

    /// Waits for the first line `matches` accepts, up to `timeout`.
    pub fn wait_line(&self, timeout: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.seen;
        let mut seen = lock.lock().unwrap();
        loop {
            if let Some(v) = seen.lines.iter().find(|v| matches(v)) {
                return v.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "otlp receiver: no matching line within {timeout:?}; got {:#?}\nstderr: {}",
                seen.lines,
                seen.stderr.join("\n")
            );
            seen = changed.wait_timeout(seen, left).unwrap().0;
        }
    }

    /// Waits for the span whose `sidekey.request_id` attribute is `request_id`.
    pub fn wait_span_of(&self, request_id: &str, timeout: Duration) -> Value {
        self.wait_line(timeout, |v| {
            v["span"]["attributes"]["sidekey.request_id"] == request_id
        })
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failed wait panicked holding the lock.
            let seen = self.seen.0.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("--- otlp receiver stderr ---\n{}", seen.stderr.join("\n"));
        }
    }
}
