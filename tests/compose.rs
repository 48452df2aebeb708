//! `deploy/compose/`: the docker compose stack for local development.
//!
//! - [`compose_file_topology`] validates `compose.yaml` with `docker-compose config` (v1, no
//!   engine needed) and checks the parsed result: who is on which network, what the agent is
//!   given, where the dev root token may appear.
//! - [`native_twin`] runs the same stack without containers, from the same files: OpenBao with
//!   the `openbao` service's command line, `seed.sh` with `openbao-init`'s environment,
//!   `upstream.py` with `upstream`'s command, sidekey with `sidekey.yaml`, and the README's
//!   `docker compose exec agent curl …` lines with the agent's environment. Only what compose
//!   provides is substituted — service names become loopback addresses, volumes temp
//!   directories — and every substitution must hit.
//!
//! Running the stack in a container engine is not tested here (see deploy/compose/README.md).
//!
//! Needs `docker-compose` (apt, with python3-yaml) and `scripts/peers/openbao` (both from
//! `scripts/install-test-deps`), curl and python3.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::openbao::{bao_bin, free_port_pair};
use crate::common::sidekey::{repo_root, sidekey_bin, PROXY_VARS};
use crate::common::*;
use serde_json::Value;

/// The dev server's root token in compose.yaml: the only secret-like value the file may hold.
const DEV_ROOT_TOKEN: &str = "dev-only-root-token";
/// sidekey's user in its image (deploy/Dockerfile).
const SIDEKEY_UID: &str = "65532:65532";

fn compose_dir() -> PathBuf {
    repo_root().join("deploy").join("compose")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `docker-compose -f compose.yaml config`, checked with `-q` first, as JSON.
fn compose_config() -> Value {
    let file = compose_dir().join("compose.yaml");
    let run = |args: &[&str]| {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("-f").arg(&file).args(args).stdin(Stdio::null());
        let out = output_with_timeout(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "docker-compose {args:?} (install it with scripts/install-test-deps): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert!(run(&["config", "-q"]).is_empty());
    let yaml = run(&["config"]);
    // docker-compose's own YAML library (python3-yaml) turns it into JSON.
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args([
        "-c",
        "import sys, json, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn python3");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &yaml).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("compose config as JSON")
}

fn service<'a>(config: &'a Value, name: &str) -> &'a Value {
    let s = &config["services"][name];
    assert!(s.is_object(), "no service {name} in compose.yaml");
    s
}

/// The networks a service is on (compose writes them as a map or a list).
fn networks_of(svc: &Value) -> BTreeSet<String> {
    match &svc["networks"] {
        Value::Object(m) => m.keys().cloned().collect(),
        Value::Array(a) => a.iter().map(|n| n.as_str().unwrap().to_string()).collect(),
        Value::Null => ["default".to_string()].into(), // compose's default network
        other => panic!("networks: {other}"),
    }
}

/// A service's environment as a map (`docker-compose config` writes a map).
fn env_of(svc: &Value) -> BTreeMap<String, String> {
    svc["environment"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A list of strings (`command`, `entrypoint`, `healthcheck.test`).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// A service's volumes as (source, target, read-only); relative binds are made absolute by
/// `docker-compose config`.
fn volumes_of(svc: &Value) -> Vec<(String, String, bool)> {
    svc["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                (
                    parts[0].to_string(),
                    parts[1].to_string(),
                    parts.get(2) == Some(&"ro"),
                )
            }
            Value::Object(m) => (
                m["source"].as_str().unwrap().to_string(),
                m["target"].as_str().unwrap().to_string(),
                m.get("read_only").and_then(Value::as_bool).unwrap_or(false),
            ),
            other => panic!("volume: {other}"),
        })
        .collect()
}

/// What `target` is mounted from in `svc`, and whether read-only.
#[track_caller]
fn mount_at(svc: &Value, target: &str) -> (String, bool) {
    volumes_of(svc)
        .into_iter()
        .find(|(_, t, _)| t == target)
        .map(|(s, _, ro)| (s, ro))
        .unwrap_or_else(|| panic!("nothing mounted at {target}: {svc}"))
}

/// The value of the one line of `yaml` whose trimmed start is `key` (e.g. `cert_out:`),
/// without a trailing comment.
#[track_caller]
fn yaml_value(yaml: &str, key: &str) -> String {
    let hits: Vec<&str> = yaml
        .lines()
        .filter(|l| l.trim_start().starts_with(key))
        .collect();
    assert_eq!(hits.len(), 1, "`{key}` lines: {hits:?}");
    let rest = hits[0].trim_start()[key.len()..].trim();
    rest.split(" #").next().unwrap().trim().to_string()
}

/// `text` with `from` replaced by `to`, which must occur exactly `n` times.
#[track_caller]
fn replace_n(text: &str, from: &str, to: &str, n: usize) -> String {
    assert_eq!(text.matches(from).count(), n, "`{from}` in:\n{text}");
    text.replace(from, to)
}

#[test]
fn compose_file_topology() {
    let c = compose_config();
    let services: BTreeSet<&str> = c["services"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        services,
        ["agent", "openbao", "openbao-init", "sidekey", "upstream"].into()
    );

    // Networks: the agent is alone with sidekey on an internal network; only sidekey is on a
    // network with a way out; nothing publishes a port or shares the host's network.
    let internal = |n: &str| c["networks"][n]["internal"] == true;
    assert!(
        internal("agent-net") && internal("backend"),
        "{}",
        c["networks"]
    );
    assert!(!internal("egress"));
    let agent = service(&c, "agent");
    let sk = service(&c, "sidekey");
    assert_eq!(networks_of(agent), ["agent-net".to_string()].into());
    assert_eq!(
        networks_of(sk),
        ["agent-net", "backend", "egress"].map(String::from).into()
    );
    for name in &services {
        let svc = service(&c, name);
        assert!(svc.get("ports").is_none(), "{name} publishes ports");
        assert!(svc.get("network_mode").is_none(), "{name}: network_mode");
        let nets = networks_of(svc);
        if *name != "sidekey" {
            assert!(
                nets.iter().all(|n| internal(n)),
                "{name} is on a network that reaches out: {nets:?}"
            );
            assert!(
                !nets.contains("agent-net") || *name == "agent",
                "{name} on agent-net"
            );
        }
    }

    // The agent: the injector's variables (crates/injector/src/sidecar.rs, agent_env), pointing
    // at sidekey's forward listener and the CA files sidekey.yaml writes.
    let sk_yaml = read(&compose_dir().join("sidekey.yaml"));
    let forward = yaml_value(&sk_yaml, "forward:");
    assert_eq!(forward, "0.0.0.0:15080");
    assert_eq!(yaml_value(&sk_yaml, "admin:"), "127.0.0.1:15090");
    let cert_out = yaml_value(&sk_yaml, "cert_out:");
    let bundle_out = yaml_value(&sk_yaml, "bundle_out:");
    let sidecar = read(&repo_root().join("crates/injector/src/sidecar.rs"));
    assert!(sidecar.contains(&format!("pub const CA_FILE: &str = \"{cert_out}\";")));
    assert!(sidecar.contains(&format!("pub const BUNDLE_FILE: &str = \"{bundle_out}\";")));
    let env = env_of(agent);
    let proxy = "http://sidekey:15080";
    let no_proxy = "localhost,127.0.0.1,::1";
    let want: BTreeMap<String, String> = [
        ("HTTP_PROXY", proxy),
        ("http_proxy", proxy),
        ("HTTPS_PROXY", proxy),
        ("https_proxy", proxy),
        ("NO_PROXY", no_proxy),
        ("no_proxy", no_proxy),
        ("SSL_CERT_FILE", bundle_out.as_str()),
        ("REQUESTS_CA_BUNDLE", bundle_out.as_str()),
        ("NODE_EXTRA_CA_CERTS", cert_out.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, want);
    // The CA directory: sidekey writes it, the agent reads it, the same volume.
    let ca_dir = Path::new(&cert_out).parent().unwrap().display().to_string();
    assert_eq!(
        Path::new(&bundle_out)
            .parent()
            .unwrap()
            .display()
            .to_string(),
        ca_dir
    );
    let (agent_ca, agent_ro) = mount_at(agent, &ca_dir);
    let (sk_ca, sk_ro) = mount_at(sk, &ca_dir);
    assert_eq!((agent_ca.as_str(), agent_ro), ("sidekey-ca", true));
    assert_eq!((sk_ca.as_str(), sk_ro), ("sidekey-ca", false));
    assert_eq!(volumes_of(agent).len(), 1, "the agent gets only the CA");
    assert_eq!(
        agent["depends_on"]["sidekey"]["condition"],
        "service_healthy"
    );

    // sidekey: its config mounted where SIDEKEY_CONFIG says, the healthcheck is the probe, it
    // starts once OpenBao is seeded; the AppRole IDs and OpenBao's CA are read-only to it.
    let sk_env = env_of(sk);
    assert_eq!(sk_env.keys().collect::<Vec<_>>(), ["SIDEKEY_CONFIG"]);
    let (src, ro) = mount_at(sk, &sk_env["SIDEKEY_CONFIG"]);
    assert_eq!(Path::new(&src), compose_dir().join("sidekey.yaml"));
    assert!(ro);
    assert_eq!(
        strings(&sk["healthcheck"]["test"]),
        ["CMD", "sidekey", "probe", "ready"]
    );
    assert_eq!(
        sk["depends_on"]["openbao-init"]["condition"],
        "service_completed_successfully"
    );
    assert_eq!(sk["build"]["target"], "sidekey");
    assert_eq!(
        Path::new(sk["build"]["context"].as_str().unwrap()),
        repo_root(),
        "{}",
        sk["build"]
    );
    let approle_dir = Path::new(&yaml_value(&sk_yaml, "role_id_file:"))
        .parent()
        .unwrap()
        .display()
        .to_string();
    assert_eq!(mount_at(sk, &approle_dir), ("sidekey-approle".into(), true));
    let bao_ca = yaml_value(&sk_yaml, "ca_file:");
    let bao_tls_dir = Path::new(&bao_ca).parent().unwrap().display().to_string();
    assert_eq!(mount_at(sk, &bao_tls_dir), ("openbao-tls".into(), true));
    assert_eq!(yaml_value(&sk_yaml, "address:"), "https://openbao:8200");
    assert!(
        !sk_yaml.contains("\nupstream:"),
        "no upstream: section to stand in for"
    );
    let check = run_check(&compose_dir().join("sidekey.yaml"));
    assert_eq!(check.code, Some(0), "sidekey check: {check:#?}");
    let dockerfile = read(&repo_root().join("deploy/Dockerfile"));
    assert!(dockerfile.contains(&format!("USER {SIDEKEY_UID}")));

    // openbao-init: seed.sh with the dev root token, handing the AppRole IDs to sidekey's user.
    let init = service(&c, "openbao-init");
    let init_env = env_of(init);
    assert_eq!(init_env["APPROLE_DIR"], approle_dir);
    assert_eq!(init_env["SIDEKEY_UID"], SIDEKEY_UID);
    assert_eq!(init_env["BAO_CACERT"], bao_ca);
    assert_eq!(
        mount_at(init, &approle_dir),
        ("sidekey-approle".into(), false)
    );
    assert_eq!(mount_at(init, &ca_dir), ("sidekey-ca".into(), false));
    let (seed, ro) = mount_at(init, "/seed/seed.sh");
    assert_eq!(
        (Path::new(&seed), ro),
        (compose_dir().join("seed.sh").as_path(), true)
    );
    assert_eq!(
        strings(&init["entrypoint"]),
        [
            "/bin/sh",
            "-c",
            &format!("chown {SIDEKEY_UID} {ca_dir} && exec /bin/sh /seed/seed.sh")
        ]
    );
    assert_eq!(
        init["depends_on"]["openbao"]["condition"],
        "service_healthy"
    );

    // Secrets: the dev root token is the only one, and only OpenBao and its init job have it.
    for name in &services {
        let svc = service(&c, name);
        for (k, v) in env_of(svc) {
            let upper = k.to_ascii_uppercase();
            if upper
                .split('_')
                .any(|w| ["TOKEN", "SECRET", "PASSWORD", "KEY", "PASS"].contains(&w))
            {
                assert_eq!(
                    (name.to_string(), k.as_str(), v.as_str()),
                    ("openbao-init".to_string(), "BAO_TOKEN", DEV_ROOT_TOKEN)
                );
            }
        }
        let text = svc.to_string();
        if !["openbao", "openbao-init"].contains(name) {
            assert!(!text.contains(DEV_ROOT_TOKEN), "{name} has the root token");
        }
    }
    let raw = read(&compose_dir().join("compose.yaml"));
    assert_eq!(
        raw.matches(DEV_ROOT_TOKEN).count(),
        2,
        "root token in compose.yaml"
    );
    assert!(!sk_yaml.contains(DEV_ROOT_TOKEN));

    // The OpenBao image is the version the native twin runs.
    let out = Command::new(bao_bin()).arg("version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    let version = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.strip_prefix('v'))
        .unwrap_or_else(|| panic!("bao version: {version}"));
    let image = format!("quay.io/openbao/openbao:{version}");
    assert_eq!(service(&c, "openbao")["image"], image.as_str());
    assert_eq!(init["image"], image.as_str());
}

/// A process killed on drop (OpenBao, the upstream).
struct Proc {
    child: std::process::Child,
    name: &'static str,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { child, name, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}\n--- end {} ---",
                self.name,
                self.output(),
                self.name
            );
        }
    }
}

/// Runs until `ok` or panics after 30 s with the last answer.
#[track_caller]
fn wait_until(what: &str, mut ok: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ok() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => panic!("{what}: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A command with no proxy or Vault variables from the test's environment.
fn clean(mut cmd: Command) -> Command {
    for var in PROXY_VARS.iter().chain(&[
        "BAO_ADDR",
        "BAO_TOKEN",
        "BAO_CACERT",
        "VAULT_ADDR",
        "VAULT_TOKEN",
    ]) {
        cmd.env_remove(var);
    }
    cmd
}

/// `bao` on PATH first (seed.sh and the healthcheck call it by name).
fn path_with_bao() -> String {
    let bin = bao_bin();
    format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn native_twin() {
    let c = compose_config();
    let tmp = tempfile::Builder::new()
        .prefix("sidekey-compose-")
        .tempdir()
        .unwrap();
    let tls = tmp.path().join("openbao-tls");
    let approle = tmp.path().join("sidekey-approle");
    for d in [&tls, &approle] {
        std::fs::create_dir(d).unwrap();
    }
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();

    // 1. OpenBao: the service's entrypoint and command; its volume and listen address here.
    let bao_svc = service(&c, "openbao");
    let port = free_port_pair();
    let bao_addr = format!("127.0.0.1:{port}");
    let argv: Vec<String> = strings(&bao_svc["entrypoint"])
        .into_iter()
        .chain(strings(&bao_svc["command"]))
        .collect();
    let argv = replace_n(
        &argv.join("\n"),
        "-dev-tls-cert-dir=/openbao-tls",
        &format!("-dev-tls-cert-dir={}", tls.display()),
        1,
    );
    let argv = replace_n(
        &argv,
        "-dev-listen-address=0.0.0.0:8200",
        &format!("-dev-listen-address={bao_addr}"),
        1,
    );
    let argv: Vec<&str> = argv.lines().collect();
    assert_eq!(argv[0], "bao");
    assert!(
        argv.contains(&"-dev") && argv.contains(&"-dev-tls"),
        "{argv:?}"
    );
    let mut cmd = clean(Command::new(bao_bin()));
    cmd.args(&argv[1..])
        .current_dir(&home)
        .env("HOME", &home)
        .env("PATH", path_with_bao());
    let bao = Proc::spawn("openbao", cmd, tmp.path());

    // Its healthcheck, run here: `bao status` over TLS with the generated CA.
    let health = strings(&bao_svc["healthcheck"]["test"]);
    assert_eq!(health[..2], ["CMD", "bao"]);
    let health = replace_n(
        &health[2..].join("\n"),
        "/openbao-tls/",
        &format!("{}/", tls.display()),
        1,
    );
    let health = replace_n(&health, "127.0.0.1:8200", &bao_addr, 1);
    wait_until("the openbao healthcheck", || {
        let mut cmd = clean(Command::new(bao_bin()));
        cmd.args(health.lines()).env("HOME", &home);
        let out = output_with_timeout(cmd, Duration::from_secs(10));
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                bao.output()
            ))
        }
    });

    // 2. openbao-init: seed.sh with the service's environment (BAO_ADDR → here; the volumes →
    // temp dirs; no chown, sidekey runs as the test's user here).
    let mut init_env = env_of(service(&c, "openbao-init"));
    let bao_url = format!("https://{bao_addr}");
    for (key, from, to) in [
        ("BAO_ADDR", "https://openbao:8200", bao_url.clone()),
        (
            "BAO_CACERT",
            "/openbao-tls/vault-ca.pem",
            tls.join("vault-ca.pem").display().to_string(),
        ),
        (
            "APPROLE_DIR",
            "/var/run/sidekey-approle",
            approle.display().to_string(),
        ),
    ] {
        assert_eq!(init_env[key], from, "{key}");
        init_env.insert(key.to_string(), to);
    }
    assert_eq!(init_env.remove("SIDEKEY_UID").as_deref(), Some(SIDEKEY_UID));
    assert_eq!(init_env["BAO_TOKEN"], DEV_ROOT_TOKEN);
    let mut cmd = clean(Command::new("/bin/sh"));
    cmd.arg(compose_dir().join("seed.sh"))
        .envs(&init_env)
        .env("HOME", &home)
        .env("PATH", path_with_bao())
        .stdin(Stdio::null());
    let seeded = output_with_timeout(cmd, Duration::from_secs(90));
    let seed_out = format!(
        "{}{}",
        String::from_utf8_lossy(&seeded.stdout),
        String::from_utf8_lossy(&seeded.stderr)
    );
    assert!(
        seeded.status.success(),
        "seed.sh: {}\n{seed_out}",
        seeded.status
    );
    for f in ["role-id", "secret-id"] {
        let meta = std::fs::metadata(approle.join(f)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
        assert_eq!(read(&approle.join(f)).trim().len(), 36, "{f} is a UUID");
    }
    // The seeded key, read as the README says (root token, not sidekey's).
    let bao_root = |args: &[&str]| -> String {
        let mut cmd = clean(Command::new(bao_bin()));
        cmd.args(args).envs(&init_env).env("HOME", &home);
        let out = output_with_timeout(cmd, Duration::from_secs(10));
        assert!(
            out.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let key = bao_root(&["kv", "get", "-field=key", "-mount=secret", "demo/api"]);
    assert!(
        key.starts_with("demo-") && key.len() == 37,
        "seeded key shape"
    );
    assert!(!seed_out.contains(&key), "seed.sh printed the key");
    let want_fp = {
        let mut cmd = Command::new("sha256sum");
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), key.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)[..12].to_string()
    };
    // sidekey's AppRole token reads the key and nothing else.
    let login: Value = serde_json::from_str(&bao_root(&[
        "write",
        "-format=json",
        "auth/approle/login",
        &format!("role_id={}", read(&approle.join("role-id")).trim()),
        &format!("secret_id={}", read(&approle.join("secret-id")).trim()),
    ]))
    .unwrap();
    assert_eq!(
        login["auth"]["token_policies"],
        serde_json::json!(["default", "sidekey"])
    );

    // 3. upstream: the service's command, listening here.
    let up_svc = service(&c, "upstream");
    let up_addr = closed_port_addr();
    let up_cmd = replace_n(
        &strings(&up_svc["command"]).join("\n"),
        "0.0.0.0:8080",
        &up_addr.to_string(),
        1,
    );
    let up_cmd: Vec<&str> = up_cmd.lines().collect();
    let (script, ro) = mount_at(up_svc, up_cmd[1]);
    assert_eq!(Path::new(&script), compose_dir().join("upstream.py"));
    assert!(ro);
    let mut cmd = clean(Command::new(up_cmd[0]));
    cmd.arg(&script).args(&up_cmd[2..]);
    let upstream = Proc::spawn("upstream", cmd, tmp.path());
    wait_until("the upstream listening", || {
        std::net::TcpStream::connect(up_addr)
            .map(drop)
            .map_err(|e| format!("{e}: {}", upstream.output()))
    });

    // 4. sidekey with sidekey.yaml: listeners on free loopback ports (the harness needs all
    // three), the volumes → temp dirs, `openbao` and `upstream` → here (compose's DNS becomes a
    // pin).
    let text = read(&compose_dir().join("sidekey.yaml"));
    let text = replace_n(&text, "forward: 0.0.0.0:15080", "forward: 127.0.0.1:0", 1);
    let text = replace_n(&text, "routes: off", "routes: 127.0.0.1:0", 1);
    let text = replace_n(&text, "admin: 127.0.0.1:15090", "admin: 127.0.0.1:0", 1);
    let text = replace_n(&text, "/var/run/sidekey/", "{dir}/", 2);
    let text = replace_n(
        &text,
        "/var/run/sidekey-approle/",
        &format!("{}/", approle.display()),
        2,
    );
    let text = replace_n(&text, "/openbao-tls/", &format!("{}/", tls.display()), 1);
    let text = replace_n(&text, "https://openbao:8200", &bao_url, 1);
    let config = format!("upstream:\n  resolve: {{ \"upstream:8080\": \"{up_addr}\" }}\n{text}");
    let sk = Sidekey::start_raw(&config, &[]);
    // The compose healthcheck: `sidekey probe ready` (given the address: the port is free here).
    let probe = Command::new(sidekey_bin())
        .args(["probe", "ready", "--admin", &sk.admin.to_string()])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let bundle = sk.dir().join("bundle.pem");
    assert!(
        read(&bundle).matches("BEGIN CERTIFICATE").count() > 1,
        "bundle: CA + roots"
    );

    // 5. The agent: the README's `docker compose exec agent …` lines, with the agent's
    // environment (sidekey:15080 → the forward listener, the CA volume → sidekey's dir).
    let readme = read(&compose_dir().join("README.md"));
    let lines: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("docker compose exec agent "))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let mut agent_env = env_of(service(&c, "agent"));
    let sk_dir = sk.dir().display().to_string();
    for v in agent_env.values_mut() {
        *v = v
            .replace("http://sidekey:15080", &sk.proxy_url())
            .replace("/var/run/sidekey/", &format!("{sk_dir}/"));
    }
    assert!(agent_env
        .values()
        .all(|v| !v.contains("sidekey:") && !v.contains("/var/run")));
    let run_agent = |line: &str| {
        assert!(
            !line.contains(['\'', '"', '\\', '$']),
            "plain words only: {line}"
        );
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut cmd = Command::new(words[0]);
        cmd.args(&words[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap());
        cmd.envs(&agent_env).env("HOME", &home);
        let out = output_with_timeout(cmd, Duration::from_secs(30));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Allowed: the demo key, as Bearer, reached the upstream; the agent never saw it.
    assert_eq!(lines[0], "curl -sS http://upstream:8080/v1/hello");
    let (exit, stdout, stderr) = run_agent(lines[0]);
    assert_eq!(exit, 0, "{stderr}");
    assert!(!stdout.contains(&key));
    let got: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(got["path"], "/v1/hello");
    assert_eq!(got["authorization"], true, "{got}");
    assert_eq!(got["scheme"], "Bearer", "{got}");
    assert_eq!(
        got["sha256_12"],
        want_fp.as_str(),
        "the seeded key, not another"
    );

    // Refused: POST on the route's host.
    assert_eq!(
        lines[1],
        "curl -sS -i -X POST http://upstream:8080/v1/hello"
    );
    let (exit, stdout, stderr) = run_agent(lines[1]);
    assert_eq!(exit, 0, "{stderr}");
    let (head, body) = stdout.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let header = head
        .lines()
        .find_map(|l| l.strip_prefix("x-sidekey-error: "))
        .map(str::trim);
    check_refusal(
        "POST",
        403,
        header,
        body.as_bytes(),
        403,
        "method_not_allowed",
    );

    // Refused: a host no route names (at the CONNECT).
    assert_eq!(lines[2], "curl -sS https://example.com/");
    let (exit, _, stderr) = run_agent(lines[2]);
    assert_eq!(exit, 56, "{stderr}");
    assert!(
        stderr.contains("CONNECT tunnel failed, response 403"),
        "{stderr}"
    );

    // The audit lines (`docker compose logs sidekey`): one per request, the key never in them.
    let records = sk.wait_request_records(3);
    assert_eq!(records.len(), 3, "{records:#?}");
    let audit = sk.stdout_text();
    assert!(
        !audit.contains(&key) && !sk.stderr().contains(&key),
        "the key leaked"
    );
    let allowed = &records[0];
    assert_eq!(allowed["decision"], "allow", "{allowed}");
    assert_eq!(allowed["route"], "demo");
    assert_eq!(allowed["status"], 200);
    assert_eq!(
        allowed["credential_id"], "secret/data/demo/api@1",
        "{allowed}"
    );
    assert_eq!(
        (
            &records[1]["decision"],
            &records[1]["code"],
            &records[1]["method"]
        ),
        (
            &Value::from("deny"),
            &Value::from("method_not_allowed"),
            &Value::from("POST")
        ),
        "{}",
        records[1]
    );
    assert_eq!(
        (
            &records[2]["decision"],
            &records[2]["code"],
            &records[2]["host"]
        ),
        (
            &Value::from("deny"),
            &Value::from("host_not_allowed"),
            &Value::from("example.com")
        ),
        "{}",
        records[2]
    );
    drop(sk);
    drop(upstream);
    drop(bao);
}
