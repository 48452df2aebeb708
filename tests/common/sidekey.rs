//! `Sidekey`: the real `sidekey` binary, started with a config the test writes, on free ports.
//!
//! The harness prepends `listen:` (all three listeners on 127.0.0.1:0) and `ca: {cert_out:}` to
//! the test's YAML, replaces `{name}` placeholders, learns the ports from the `listening
//! listener=<name> addr=<ip:port>` lines on stderr, waits for `/readyz` and the CA file, and
//! collects stdout (audit JSON, one object per line) and stderr on background threads. The
//! child is killed on drop; if the test is panicking, its stderr and audit are printed first.
//!
//! Config reload: [`Sidekey::rewrite_config`] replaces the file (same header, atomically),
//! [`Sidekey::reload`] also sends SIGHUP and returns the `"type": "config"` audit record that
//! reports the outcome.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;

use super::clients::{eventually, http_get};

/// How long sidekey may take to listen and become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Default wait for audit records.
pub const AUDIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reload may take to report its outcome (the `config` audit record).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the built binary under test.
pub fn sidekey_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sidekey")
}

/// The repository root (where `examples/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Default)]
struct Output {
    /// Parsed stdout lines that were JSON objects.
    audit: Vec<Value>,
    /// Stdout lines that were not JSON (stdout must carry only audit).
    stdout_other: Vec<String>,
    stderr: Vec<String>,
    /// `listener name -> address`, from the stderr lines.
    listening: HashMap<String, SocketAddr>,
    stdout_closed: bool,
    stderr_closed: bool,
}

impl Output {
    fn audit_lines(&self) -> String {
        let lines: Vec<String> = self.audit.iter().map(Value::to_string).collect();
        lines.join("\n")
    }
}

struct Shared {
    out: Mutex<Output>,
    changed: Condvar,
}

/// A running sidekey.
pub struct Sidekey {
    child: Child,
    dir: tempfile::TempDir,
    shared: Arc<Shared>,
    config_path: PathBuf,
    /// What the harness wrote before the test's YAML (`listen:` and `ca:`); empty for
    /// [`Sidekey::start_raw`]. [`Sidekey::rewrite_config`] writes it again.
    header: String,
    ca_pem: PathBuf,
    pub forward: SocketAddr,
    pub routes: SocketAddr,
    pub admin: SocketAddr,
}

/// Replaces `{key}` by value for every pair.
pub fn substitute(text: &str, vars: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// Removes the top-level keys `keys` (and the indented block under each) from a YAML text.
/// Enough for the block- and flow-style files this project writes; not a YAML parser.
pub fn strip_top_level_keys(yaml: &str, keys: &[&str]) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in yaml.lines() {
        if line.starts_with('#') {
            // A comment at column 0 introduces whatever follows, not the skipped block.
            skipping = false;
        } else if !line.is_empty() && !line.starts_with([' ', '\t']) {
            let key = line.split(':').next().unwrap_or("").trim();
            skipping = keys.contains(&key);
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl Sidekey {
    /// Starts sidekey with `yaml` (placeholders from `vars` and `{dir}` replaced) after the
    /// harness's `listen:` and `ca:` sections.
    pub fn start(yaml: &str, vars: &[(&str, String)]) -> Sidekey {
        Sidekey::start_inner(yaml, vars, true, &[])
    }

    /// Like [`Sidekey::start`] but the YAML is used as is (after substitution): it must set
    /// `listen:` (three listeners) and `ca.cert_out: {dir}/ca.pem` itself.
    pub fn start_raw(yaml: &str, vars: &[(&str, String)]) -> Sidekey {
        Sidekey::start_inner(yaml, vars, false, &[])
    }

    /// Like [`Sidekey::start`], with extra environment variables for the process (e.g.
    /// `("SIDEKEY_CONFIG_POLL", "0s")`).
    pub fn start_with_env(yaml: &str, vars: &[(&str, String)], env: &[(&str, &str)]) -> Sidekey {
        Sidekey::start_inner(yaml, vars, true, env)
    }

    /// Like [`Sidekey::start_raw`], with extra environment variables for the process.
    pub fn start_raw_with_env(
        yaml: &str,
        vars: &[(&str, String)],
        env: &[(&str, &str)],
    ) -> Sidekey {
        Sidekey::start_inner(yaml, vars, false, env)
    }

    fn start_inner(
        yaml: &str,
        vars: &[(&str, String)],
        prepend: bool,
        env: &[(&str, &str)],
    ) -> Sidekey {
        let dir = tempfile::Builder::new()
            .prefix("sidekey-test-")
            .tempdir()
            .expect("tempdir");
        let ca_pem = dir.path().join("ca.pem");
        let header = if prepend {
            format!(
                "# written by tests/common/sidekey.rs\n\
                 listen: {{ forward: 127.0.0.1:0, routes: 127.0.0.1:0, admin: 127.0.0.1:0 }}\n\
                 ca: {{ cert_out: \"{}\" }}\n",
                ca_pem.display()
            )
        } else {
            String::new()
        };
        let config_path = dir.path().join("sidekey.yaml");
        let config = config_text(&header, dir.path(), yaml, vars);
        std::fs::write(&config_path, &config).expect("write config");

        let mut cmd = Command::new(sidekey_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .envs(env.iter().copied());
        Sidekey::spawn(cmd, dir, config_path, header, ca_pem, &config)
    }

    /// Starts `sidekey run` with no `--config` (the embedded quickstart), in a temp dir, and
    /// waits for the CA at `ca_pem` (the quickstart's `ca.cert_out`). The listen addresses are
    /// the quickstart's, so this only works where its ports are free (tests/quickstart.rs runs
    /// it in a network namespace of its own).
    pub fn start_embedded_quickstart(ca_pem: PathBuf) -> Sidekey {
        let dir = tempfile::Builder::new()
            .prefix("sidekey-test-")
            .tempdir()
            .expect("tempdir");
        let mut cmd = Command::new(sidekey_bin());
        cmd.arg("run").current_dir(dir.path());
        Sidekey::spawn(
            cmd,
            dir,
            PathBuf::new(),
            String::new(),
            ca_pem,
            "(embedded quickstart)",
        )
    }

    fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        header: String,
        ca_pem: PathBuf,
        config_text: &str,
    ) -> Sidekey {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        // sidekey's own crates log at debug level in tests, so that every test that checks the
        // log for leaked secrets covers the most talkative level too.
        let filter = std::env::var("SIDEKEY_TEST_LOG").unwrap_or_else(|_| {
            "info,sidekey=debug,sidekey_proxy=debug,sidekey_credentials=debug,sidekey_tls=debug,sidekey_admin=debug"
                .to_string()
        });
        cmd.env("SIDEKEY_LOG", filter);
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", sidekey_bin()));
        let shared = Arc::new(Shared {
            out: Mutex::new(Output::default()),
            changed: Condvar::new(),
        });
        spawn_reader(child.stdout.take().unwrap(), shared.clone(), Stream::Stdout);
        spawn_reader(child.stderr.take().unwrap(), shared.clone(), Stream::Stderr);

        let mut sk = Sidekey {
            child,
            dir,
            shared,
            config_path,
            header,
            ca_pem,
            forward: "0.0.0.0:0".parse().unwrap(),
            routes: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        sk.wait_started(config_text);
        sk
    }

    fn wait_started(&mut self, config_text: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        let fail = |sk: &mut Sidekey, why: String| -> ! {
            let _ = sk.child.kill();
            let _ = sk.child.wait();
            sk.wait_closed(Duration::from_secs(2));
            panic!(
                "sidekey did not start: {why}\n--- config ---\n{config_text}\n--- stderr ---\n{}\n--- stdout ---\n{}",
                sk.stderr(),
                sk.stdout_text()
            );
        };
        // 1. The three listening lines.
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                fail(self, format!("exited early with {status}"));
            }
            let listening = self.shared.out.lock().unwrap().listening.clone();
            if ["forward", "routes", "admin"]
                .iter()
                .all(|l| listening.contains_key(*l))
            {
                self.forward = listening["forward"];
                self.routes = listening["routes"];
                self.admin = listening["admin"];
                break;
            }
            if Instant::now() > deadline {
                fail(self, format!("no `listening listener=.. addr=..` line for every listener within {START_TIMEOUT:?} (saw {listening:?})"));
            }
            let out = self.shared.out.lock().unwrap();
            let _ = self
                .shared
                .changed
                .wait_timeout(out, Duration::from_millis(50))
                .unwrap();
        }
        // 2. /readyz answers 200.
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                fail(self, format!("exited early with {status}"));
            }
            let last = match http_get(self.admin, "/readyz") {
                Ok((200, _)) => break,
                Ok((s, b)) => format!("/readyz answered {s}: {b}"),
                Err(e) => format!("/readyz: {e}"),
            };
            if Instant::now() > deadline {
                fail(
                    self,
                    format!("not ready within {START_TIMEOUT:?}; last: {last}"),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // 3. The CA certificate has been written.
        loop {
            let pem = std::fs::read_to_string(&self.ca_pem).unwrap_or_default();
            if pem.contains("-----END CERTIFICATE-----") {
                break;
            }
            if Instant::now() > deadline {
                let path = self.ca_pem.clone();
                fail(
                    self,
                    format!("CA certificate not written to {}", path.display()),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of the listener `name` (`forward`, `routes`, `admin`, `metrics`), from its
    /// `listening` line (waited for up to 5 s); None if it logged none.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.wait_output(Duration::from_secs(5), |out| {
            out.listening.get(name).copied()
        })
        .ok()
    }

    /// `http://127.0.0.1:port` of the forward listener, for `curl -x` and HTTPS_PROXY.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.forward)
    }

    /// `http://127.0.0.1:port` of the route listener.
    pub fn routes_url(&self) -> String {
        format!("http://{}", self.routes)
    }

    /// Path of sidekey's interception CA certificate (PEM), for clients to trust.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// The config file sidekey was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temp dir sidekey runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every audit record (stdout JSON line) so far.
    pub fn audit(&self) -> Vec<Value> {
        self.shared.out.lock().unwrap().audit.clone()
    }

    /// Audit records with `"type": "request"`.
    pub fn request_records(&self) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["type"] == "request")
            .collect()
    }

    /// Stdout lines that were not JSON objects (there should be none).
    pub fn stdout_non_json(&self) -> Vec<String> {
        self.shared.out.lock().unwrap().stdout_other.clone()
    }

    /// All of stdout so far, as text.
    pub fn stdout_text(&self) -> String {
        let out = self.shared.out.lock().unwrap();
        let mut s: Vec<String> = out.audit.iter().map(|v| v.to_string()).collect();
        s.extend(out.stdout_other.iter().cloned());
        s.join("\n")
    }

    /// All of stderr so far.
    pub fn stderr(&self) -> String {
        self.shared.out.lock().unwrap().stderr.join("\n")
    }

    /// Waits until at least `n` audit records satisfy `pred`; returns those records.
    pub fn wait_audit(
        &self,
        pred: impl Fn(&Value) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Vec<Value> {
        self.wait_output(timeout, |out| {
            let found: Vec<Value> = out.audit.iter().filter(|r| pred(r)).cloned().collect();
            (found.len() >= n).then_some(found)
        })
        .unwrap_or_else(|(why, out)| {
            let found = out.audit.iter().filter(|r| pred(r)).count();
            panic!(
                "expected {n} matching audit records, found {found}: {why}\n--- audit ---\n{}\n--- stderr ---\n{}",
                out.audit_lines(),
                out.stderr.join("\n")
            )
        })
    }

    /// Waits until `found` gives a value for the output collected so far; fails with the
    /// reason and the output if `timeout` passes first, or if sidekey exits (both its stdout
    /// and stderr closed: nothing more will come).
    fn wait_output<T>(
        &self,
        timeout: Duration,
        mut found: impl FnMut(&Output) -> Option<T>,
    ) -> Result<T, (String, MutexGuard<'_, Output>)> {
        let out = self.shared.out.lock().unwrap();
        let (out, _) = self
            .shared
            .changed
            .wait_timeout_while(out, timeout, |out| {
                found(out).is_none() && !(out.stdout_closed && out.stderr_closed)
            })
            .unwrap();
        match found(&out) {
            Some(value) => Ok(value),
            None if out.stdout_closed && out.stderr_closed => Err((
                "sidekey exited (its stdout and stderr closed)".to_string(),
                out,
            )),
            None => Err((format!("nothing more within {timeout:?}"), out)),
        }
    }

    /// Waits until sidekey has written at least `n` request records, i.e. finished `n`
    /// exchanges: a request's record is written when its exchange ends, after anything sidekey
    /// forwarded for it (a refusal's before the refusal is sent). Returns every request record.
    pub fn wait_request_records(&self, n: usize) -> Vec<Value> {
        self.wait_audit(|r| r["type"] == "request", n, AUDIT_TIMEOUT)
    }

    /// Waits for the request record of each of `ids` (the `x-sidekey-request-id` of sidekey's
    /// responses: `RawResponse::request_id`, `H2Result::request_id`):
    /// those exchanges are over on sidekey's side, as for [`Sidekey::wait_request_records`].
    /// Returns the records, in the order of `ids`.
    pub fn wait_records_of(&self, ids: &[String]) -> Vec<Value> {
        let wanted = |r: &Value| {
            r["type"] == "request" && ids.iter().any(|id| r["request_id"] == id.as_str())
        };
        let found = self.wait_audit(wanted, ids.len(), AUDIT_TIMEOUT);
        ids.iter()
            .map(|id| {
                found
                    .iter()
                    .find(|r| r["request_id"] == id.as_str())
                    .cloned()
                    .unwrap_or_else(|| panic!("no record of request {id}"))
            })
            .collect()
    }

    /// Waits for `n` request records, then for the log to settle, and asserts there are
    /// exactly `n` (one audit line per request, not more). Returns them in order.
    pub fn expect_request_records(&self, n: usize) -> Vec<Value> {
        self.wait_request_records(n);
        // Not an event wait: no event says that no further record is coming; a duplicate
        // record would be written at once, well within this.
        std::thread::sleep(Duration::from_millis(300));
        let records = self.request_records();
        assert_eq!(
            records.len(),
            n,
            "expected exactly {n} request audit records, got:\n{}",
            records
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        records
    }

    /// The single request record, after the log settles.
    pub fn only_request_record(&self) -> Value {
        self.expect_request_records(1).remove(0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Sidekey {
    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A memory figure of the process from /proc/PID/status, in KiB: `VmRSS` (resident now)
    /// or `VmHWM` (the peak resident set so far).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
    }

    /// Every page the admin listener serves, and its 404, as (description, body), each with the
    /// status it must have: for the tests that search everything sidekey writes for secrets.
    pub fn admin_pages(&self) -> Vec<(String, String)> {
        [
            ("/healthz", 200),
            ("/readyz", 200),
            ("/.well-known/jwks.json", 200),
            ("/metrics", 200),
            ("/credentials", 200),
            ("/", 200),
            ("/no-such-page", 404),
        ]
        .into_iter()
        .map(|(path, want)| {
            let (status, body) =
                http_get(self.admin, path).unwrap_or_else(|e| panic!("admin {path}: {e}"));
            assert_eq!(status, want, "admin {path}: {body}");
            (format!("admin {path} ({status})"), body)
        })
        .collect()
    }

    /// TCP connections sidekey holds on the listener at `addr` (one of [`Sidekey::forward`],
    /// [`Sidekey::routes`], [`Sidekey::admin`]): its sockets with that local address, from
    /// /proc. A connection counts from the moment sidekey accepts it (a client's connect
    /// returns before that) until sidekey closes it (a client's close comes before that).
    pub fn open_connections(&self, addr: SocketAddr) -> usize {
        let pid = self.pid();
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("read /proc/PID/fd")
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter_map(|target| {
                let target = target.to_string_lossy().into_owned();
                Some(
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .to_string(),
                )
            })
            .collect();
        let SocketAddr::V4(v4) = addr else {
            panic!("open_connections: {addr} is not IPv4")
        };
        // /proc/net/tcp shows the address as the u32 in host order, the port big-endian.
        let local = format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        );
        std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
            .expect("read /proc/PID/net/tcp")
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local address, state (0A: listening), inode
                fields.len() > 9
                    && fields[1] == local
                    && fields[3] != "0A"
                    && inodes.iter().any(|i| i == fields[9])
            })
            .count()
    }

    /// Waits until sidekey holds exactly `n` connections on the listener at `addr` (see
    /// [`Sidekey::open_connections`]).
    #[track_caller]
    pub fn wait_open_connections(&self, addr: SocketAddr, n: usize) {
        let mut now = 0;
        assert!(
            eventually(Duration::from_secs(10), || {
                now = self.open_connections(addr);
                now == n
            }),
            "sidekey holds {now} connections on {addr}, not {n}"
        );
    }

    /// Sends SIGTERM (graceful shutdown: drain, revoke leases and tokens) and waits up to 20 s
    /// for the process to exit; the output read so far stays available.
    pub fn terminate(&mut self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(e) => panic!("wait for sidekey: {e}"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sidekey did not exit within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The reader threads have read stdout and stderr to their ends.
        assert!(
            self.wait_closed(Duration::from_secs(5)),
            "sidekey exited but its stdout and stderr did not close"
        );
    }

    /// Waits until the reader threads have read stdout and stderr to their ends (after the
    /// process exited); false if they have not within `timeout`.
    fn wait_closed(&self, timeout: Duration) -> bool {
        let out = self.shared.out.lock().unwrap();
        let (out, _) = self
            .shared
            .changed
            .wait_timeout_while(out, timeout, |out| {
                !(out.stdout_closed && out.stderr_closed)
            })
            .unwrap();
        out.stdout_closed && out.stderr_closed
    }
}

/// Config reload.
impl Sidekey {
    /// Replaces the config file with `yaml` (placeholders from `vars` and `{dir}` replaced)
    /// after the same `listen:`/`ca:` header the harness wrote at start (none after
    /// [`Sidekey::start_raw`]). Atomic: a temp file in the same directory, renamed over it.
    pub fn rewrite_config(&self, yaml: &str, vars: &[(&str, String)]) {
        self.write_config(&config_text(&self.header, self.dir(), yaml, vars));
    }

    /// Like [`Sidekey::rewrite_config`] with no header: `yaml` is the whole file (after
    /// substitution), `listen:` and `ca:` included.
    pub fn rewrite_config_raw(&self, yaml: &str, vars: &[(&str, String)]) {
        self.write_config(&config_text("", self.dir(), yaml, vars));
    }

    fn write_config(&self, text: &str) {
        let tmp = self.config_path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).expect("write new config");
        std::fs::rename(&tmp, &self.config_path).expect("rename new config over the old one");
    }

    /// Sends SIGHUP (reload the config file).
    pub fn sighup(&self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP {pid}");
    }

    /// [`Sidekey::rewrite_config`], SIGHUP, and the `config` audit record that reports the
    /// outcome (`"event"`: `"reloaded"` or `"rejected"`).
    pub fn reload(&self, yaml: &str, vars: &[(&str, String)]) -> Value {
        let seen = self.config_records_before_change();
        self.rewrite_config(yaml, vars);
        self.sighup();
        self.wait_config_record(seen + 1, RELOAD_TIMEOUT)
    }

    /// [`Sidekey::reload`] of a whole file (see [`Sidekey::rewrite_config_raw`]).
    pub fn reload_raw(&self, yaml: &str, vars: &[(&str, String)]) -> Value {
        let seen = self.config_records_before_change();
        self.rewrite_config_raw(yaml, vars);
        self.sighup();
        self.wait_config_record(seen + 1, RELOAD_TIMEOUT)
    }

    /// How many config records there are before a change: at least the `loaded` one of the
    /// start, even if the audit writer has not delivered it yet.
    fn config_records_before_change(&self) -> usize {
        self.config_records().len().max(1)
    }

    /// Audit records with `"type": "config"` (`loaded`, `reloaded`, `rejected`), in order.
    pub fn config_records(&self) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["type"] == "config")
            .collect()
    }

    /// Waits for the `n`-th (1-based) config record and returns it. Fails at once if sidekey
    /// exits first (e.g. killed by a SIGHUP it does not handle).
    pub fn wait_config_record(&self, n: usize, timeout: Duration) -> Value {
        self.wait_output(timeout, |out| {
            let mut records = out.audit.iter().filter(|r| r["type"] == "config");
            records.nth(n - 1).cloned()
        })
        .unwrap_or_else(|(why, out)| {
            panic!(
                "expected config record #{n} (`\"type\": \"config\"`): {why}\n--- audit ---\n{}\n--- stderr ---\n{}",
                out.audit_lines(),
                out.stderr.join("\n")
            )
        })
    }

    /// Waits until at least `n` stderr lines satisfy `pred`; returns those lines.
    pub fn wait_stderr(
        &self,
        pred: impl Fn(&str) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Vec<String> {
        self.wait_output(timeout, |out| {
            let found: Vec<String> = out.stderr.iter().filter(|l| pred(l)).cloned().collect();
            (found.len() >= n).then_some(found)
        })
        .unwrap_or_else(|(why, out)| {
            let found = out.stderr.iter().filter(|l| pred(l)).count();
            panic!(
                "expected {n} matching stderr lines, found {found}: {why}\n--- stderr ---\n{}",
                out.stderr.join("\n")
            )
        })
    }
}

/// A config file's text: `header`, then `yaml` with `{dir}` and `vars` substituted.
fn config_text(header: &str, dir: &Path, yaml: &str, vars: &[(&str, String)]) -> String {
    let mut all_vars: Vec<(&str, String)> = vars.to_vec();
    all_vars.push(("dir", dir.display().to_string()));
    format!("{header}{}", substitute(yaml, &all_vars))
}

impl Drop for Sidekey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // Print everything it wrote: the reader threads read the pipes to their ends.
            self.wait_closed(Duration::from_secs(2));
            eprintln!(
                "--- sidekey stderr ---\n{}\n--- sidekey stdout ---\n{}\n--- end sidekey ---",
                self.stderr(),
                self.stdout_text()
            );
        }
    }
}

/// Environment variables that would send a client (or sidekey) through some other proxy.
pub const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

fn listening_regex() -> Regex {
    Regex::new(
        r#"listening\b.*?\blistener="?(forward|routes|admin|metrics)"?\s+addr="?([0-9a-fA-F.:\[\]]+)"?"#,
    )
    .unwrap()
}

/// Removes ANSI escape sequences (in case the logger colours its output anyway).
pub fn strip_ansi(s: &str) -> String {
    Regex::new(r"\x1b\[[0-9;?]*[A-Za-z]")
        .unwrap()
        .replace_all(s, "")
        .into_owned()
}

fn spawn_reader(pipe: impl Read + Send + 'static, shared: Arc<Shared>, which: Stream) {
    std::thread::spawn(move || {
        let re = listening_regex();
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            let mut out = shared.out.lock().unwrap();
            match which {
                Stream::Stdout => match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => out.audit.push(v),
                    _ => out.stdout_other.push(line),
                },
                Stream::Stderr => {
                    let plain = strip_ansi(&line);
                    if let Some(c) = re.captures(&plain) {
                        if let Ok(addr) = c[2].parse::<SocketAddr>() {
                            out.listening.insert(c[1].to_string(), addr);
                        }
                    }
                    out.stderr.push(plain);
                }
            }
            drop(out);
            shared.changed.notify_all();
        }
        let mut out = shared.out.lock().unwrap();
        match which {
            Stream::Stdout => out.stdout_closed = true,
            Stream::Stderr => out.stderr_closed = true,
        }
        drop(out);
        shared.changed.notify_all();
    });
}

/// Result of `sidekey check FILE`.
#[derive(Debug)]
pub struct CheckOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `sidekey check <file>` and returns its exit code and output.
pub fn run_check(file: &Path) -> CheckOutput {
    run_sidekey(&["check".as_ref(), file.as_os_str()])
}

/// Runs the binary with `args` to completion (bounded: killed after 20 s).
pub fn run_sidekey(args: &[&std::ffi::OsStr]) -> CheckOutput {
    let mut cmd = Command::new(sidekey_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    let out = super::clients::output_with_timeout(cmd, Duration::from_secs(20));
    CheckOutput {
        code: out.status.code(),
        stdout: strip_ansi(&String::from_utf8_lossy(&out.stdout)),
        stderr: strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    }
}
