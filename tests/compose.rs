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
//! - [`podman_stack`] runs the file for real: podman builds the `sidekey` image from
//!   deploy/Dockerfile (its runtime stage, on the binary these tests run), podman-compose brings
//!   the services up on `scripts/peers/podman`'s local stand-ins of the other base images, and
//!   the README's `docker compose exec …` lines run in the containers; then `down -v`.
//!
//! Needs `docker-compose` (apt, with python3-yaml), `scripts/peers/openbao` and
//! `scripts/peers/podman` (all from `scripts/install-test-deps`), curl and python3.

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

/// The first 12 hex characters of the SHA-256 of `text`, as upstream.py reports a credential.
fn sha256_12(text: &str) -> String {
    let mut cmd = Command::new("sha256sum");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..12].to_string()
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
    let want_fp = sha256_12(&key);
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
    assert_readme_records(&records);
    drop(sk);
    drop(upstream);
    drop(bao);
}

// --- podman_stack: the stack in containers -----------------------------------------------------

/// scripts/peers/podman's directory: podman-compose's venv and the tests' podman configuration.
fn podman_peer() -> PathBuf {
    crate::common::openbao::peer_dir().with_file_name("podman")
}

/// What `podman_stack` runs (podman-compose included): the tests' podman configuration (storage,
/// runtime, networks under the cache, not the machine's), no proxy or Vault variables.
fn podman_cmd(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let peer = podman_peer();
    let mut cmd = clean(Command::new(program));
    cmd.env("CONTAINERS_CONF", peer.join("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", peer.join("storage.conf"))
        .stdin(Stdio::null());
    cmd
}

/// A finished command: exit code (-1 if killed), stdout, stderr.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\\n--- stdout\\n{}\\n--- stderr\\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn ran(cmd: Command, timeout: Duration) -> Ran {
    let out = output_with_timeout(cmd, timeout);
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Like [`ran`], for the teardown: never panics, gives up on the command after `timeout`.
fn ran_quietly(mut cmd: Command, timeout: Duration) -> Option<Ran> {
    let dir = tempfile::tempdir().ok()?;
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    cmd.stdout(std::fs::File::create(&out).ok()?)
        .stderr(std::fs::File::create(&err).ok()?);
    let mut child = cmd.spawn().ok()?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    Some(Ran {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(out).unwrap_or_default(),
        stderr: std::fs::read_to_string(err).unwrap_or_default(),
    })
}

/// One compose project run by podman-compose from compose.yaml, and the image it runs that the
/// test built. Dropping it removes them all, containers, pod, networks, volumes and image, also
/// when the test failed (after printing every container's log).
struct PodmanStack {
    project: String,
    file: PathBuf,
    image: String,
}

impl PodmanStack {
    fn podman(&self, args: &[&str]) -> Command {
        let mut cmd = podman_cmd("podman");
        cmd.args(args);
        cmd
    }

    /// `podman-compose -f compose.yaml -p <project> …`
    fn compose(&self, args: &[&str]) -> Command {
        let mut cmd = podman_cmd(podman_peer().join("venv/bin/podman-compose"));
        cmd.arg("-f")
            .arg(&self.file)
            .args(["-p", &self.project])
            .args(args);
        cmd
    }

    /// podman's `--filter` for what podman-compose labelled as this project's.
    fn label(&self) -> String {
        format!("label=io.podman.compose.project={}", self.project)
    }

    /// The names of what `podman <kind> ls|ps` lists of this project.
    fn leftovers(&self, kind: &str) -> Vec<String> {
        let label = self.label();
        // The pod has no label: podman-compose names it pod_<project>.
        let pod = format!("name=^pod_{}$", self.project);
        let args: Vec<&str> = match kind {
            "container" => vec!["ps", "-a", "--filter", &label, "--format", "{{.Names}}"],
            "pod" => vec!["pod", "ps", "--filter", &pod, "--format", "{{.Name}}"],
            _ => vec![kind, "ls", "--filter", &label, "--format", "{{.Name}}"],
        };
        ran_quietly(self.podman(&args), Duration::from_secs(30))
            .map(|r| r.stdout.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The container of `service`.
    #[track_caller]
    fn container(&self, service: &str) -> String {
        let label = self.label();
        let filter = format!("label=com.docker.compose.service={service}");
        let r = ran(
            self.podman(&[
                "ps",
                "-a",
                "--filter",
                &label,
                "--filter",
                &filter,
                "--format",
                "{{.Names}}",
            ]),
            Duration::from_secs(30),
        );
        let names: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(names.len(), 1, "the container of {service}: {r:?}");
        names[0].to_string()
    }

    /// `podman logs`: (stdout, stderr) of the service's container.
    fn logs(&self, service: &str) -> (String, String) {
        let r = ran(
            self.podman(&["logs", &self.container(service)]),
            Duration::from_secs(30),
        );
        assert_eq!(r.code, 0, "podman logs {service}: {r:?}");
        (r.stdout, r.stderr)
    }

    /// `podman-compose exec -T <service> <argv>` (no TTY: the output as the command wrote it).
    fn exec(&self, service: &str, env: &[&str], argv: &[&str]) -> Ran {
        let mut args = vec!["exec", "-T"];
        for e in env {
            args.extend(["-e", e]);
        }
        args.push(service);
        args.extend(argv);
        ran(self.compose(&args), Duration::from_secs(60))
    }

    /// Waits until the compose `condition` of `service` holds, as compose checks it before
    /// starting a dependent service: service_healthy runs the service's healthcheck (podman's
    /// timers need systemd, absent here, so `podman healthcheck run` runs it on demand).
    fn wait_condition(&self, service: &str, condition: &str) {
        let name = self.container(service);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let last = match condition {
                "service_started" => {
                    let r = ran(
                        self.podman(&["inspect", "--format", "{{.State.Status}}", &name]),
                        Duration::from_secs(30),
                    );
                    if r.stdout.trim() == "running" {
                        return;
                    }
                    r
                }
                "service_healthy" => {
                    let r = ran(
                        self.podman(&["healthcheck", "run", &name]),
                        Duration::from_secs(30),
                    );
                    if r.code == 0 {
                        return;
                    }
                    r
                }
                "service_completed_successfully" => {
                    let r = ran(self.podman(&["wait", &name]), Duration::from_secs(90));
                    assert_eq!(r.stdout.trim(), "0", "{service} did not complete: {r:?}");
                    return;
                }
                other => panic!("depends_on condition {other}"),
            };
            assert!(
                Instant::now() < deadline,
                "{service}: {condition} not reached: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `podman-compose down -v`, then checks that nothing of the project is left.
    fn down(&self) {
        let kinds = ["container", "pod", "network", "volume"];
        let before: Vec<usize> = kinds.iter().map(|k| self.leftovers(k).len()).collect();
        // The file's 5 services, the pod, its 3 networks and 3 volumes: what down must remove.
        assert_eq!(before, [5, 1, 3, 3], "{kinds:?} of the project before down");
        let r = ran(
            self.compose(&["down", "-v", "-t", "1"]),
            Duration::from_secs(120),
        );
        assert_eq!(r.code, 0, "podman-compose down -v: {r:?}");
        for kind in kinds {
            assert_eq!(self.leftovers(kind), Vec::<String>::new(), "{kind}s left");
        }
    }
}

impl Drop for PodmanStack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in self.leftovers("container") {
                if let Some(r) = ran_quietly(self.podman(&["logs", &name]), Duration::from_secs(30))
                {
                    eprintln!("--- {name} ---\n{}{}--- end {name} ---", r.stdout, r.stderr);
                }
            }
        }
        // What `down -v` would have removed, by label (also after a failed or partial `up`).
        let t = Duration::from_secs(60);
        let containers = self.leftovers("container");
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v", "-t", "0"];
            args.extend(containers.iter().map(String::as_str));
            ran_quietly(self.podman(&args), t);
        }
        for kind in ["pod", "network", "volume"] {
            for name in self.leftovers(kind) {
                ran_quietly(self.podman(&[kind, "rm", "-f", &name]), t);
            }
        }
        // The image, and the build's intermediate stage image (untagged; this store is the
        // tests' own).
        ran_quietly(self.podman(&["rmi", "-f", &self.image]), t);
        ran_quietly(self.podman(&["image", "prune", "-f"]), t);
    }
}

/// The commands of the README's `docker compose exec …` examples (lines ending in `\` joined),
/// as words: `[service, argv…]` with `-e` options kept in front.
fn readme_exec_commands(readme: &str) -> Vec<Vec<String>> {
    let joined = readme.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|l| l.strip_prefix("docker compose exec "))
        .map(|l| {
            assert!(!l.contains(['\'', '"', '$']), "plain words only: {l}");
            l.split_whitespace().map(str::to_string).collect()
        })
        .collect()
}

/// The stack of compose.yaml run for real: podman builds the `sidekey` image from
/// deploy/Dockerfile (its runtime stage, on a binary built outside: `BINARIES=prebuilt`),
/// podman-compose brings the file's services up on scripts/peers/podman's stand-in base images,
/// and the README's `docker compose exec …` lines run in the containers.
///
/// podman 4.3 (Debian 12) with podman-compose cannot honour `depends_on` by itself:
/// podman-compose skips `service_healthy` below podman 4.6, and podman's `--requires` fails on a
/// transitive dependency that is already running (podman-compose issue 921). So the services
/// come up in waves of `up -d --no-deps`, in the file's dependency order, each wave once the
/// conditions it names hold — healthchecks run with `podman healthcheck run`.
#[test]
fn podman_stack() {
    let started = Instant::now();
    let c = compose_config();
    let install = "run scripts/install-test-deps (scripts/peers/podman)";
    let podman_ok = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(podman_ok, "podman is not installed: {install}");
    let peer = podman_peer();
    for f in ["containers.conf", "storage.conf", "venv/bin/podman-compose"] {
        assert!(
            peer.join(f).exists(),
            "no {}: {install}",
            peer.join(f).display()
        );
    }

    // The base images: the Dockerfile's runtime stage and every service's but sidekey's.
    let sk_svc = service(&c, "sidekey");
    let build = &sk_svc["build"];
    let context = PathBuf::from(build["context"].as_str().unwrap());
    let dockerfile = context.join(build["dockerfile"].as_str().unwrap());
    let target = build["target"].as_str().unwrap();
    let runtime_base = read(&dockerfile)
        .lines()
        .find_map(|l| {
            l.strip_prefix("FROM ")?
                .strip_suffix(&format!(" AS {target}"))
                .map(str::to_string)
        })
        .expect("the target's FROM line");
    let mut bases = vec![runtime_base];
    for (name, svc) in c["services"].as_object().unwrap() {
        if name != "sidekey" {
            bases.push(svc["image"].as_str().unwrap().to_string());
        }
    }
    for base in &bases {
        let mut cmd = podman_cmd("podman");
        cmd.args(["image", "exists", base]);
        let r = ran(cmd, Duration::from_secs(30));
        assert_eq!(r.code, 0, "no local image {base}: {install}\n{r:?}");
    }

    let stack = PodmanStack {
        project: format!("sidekey-test-{}", std::process::id()),
        file: compose_dir().join("compose.yaml"),
        image: sk_svc["image"].as_str().unwrap().to_string(),
    };

    // 1. The image: the Dockerfile's `sidekey` target, tagged as compose.yaml names it, on the
    // binary these tests run (stripped of its debug info: 290 MB → 27 MB; same code).
    let ctx = tempfile::Builder::new()
        .prefix("sidekey-image-")
        .tempdir()
        .unwrap();
    let mut strip = Command::new("strip");
    strip
        .arg("-o")
        .arg(ctx.path().join("sidekey"))
        .arg(sidekey_bin());
    let r = ran(strip, Duration::from_secs(60));
    assert_eq!(r.code, 0, "strip (binutils: {install}): {r:?}");
    let mut cmd = stack.podman(&[
        "build",
        "--pull=never",
        "--target",
        target,
        "--build-arg",
        "BINARIES=prebuilt",
        "-t",
        &stack.image,
    ]);
    cmd.arg("-f").arg(&dockerfile).arg(ctx.path());
    let r = ran(cmd, Duration::from_secs(300));
    assert_eq!(r.code, 0, "podman build: {r:?}");
    let built = Instant::now();
    let r = ran(
        stack.podman(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}} {{json .Config.Entrypoint}}",
            &stack.image,
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(
        r.stdout.trim(),
        format!("{SIDEKEY_UID} [\"/usr/local/bin/sidekey\"]"),
        "{r:?}"
    );

    // 2. The services in waves, as compose starts them: each wave is every service whose
    // dependencies are up, started once their `depends_on` conditions hold. (One service at a
    // time would start `upstream` while seed.sh runs: aardvark-dns reloads when a container
    // joins `backend`, and a lookup of `openbao` during the reload failed once.)
    let services = c["services"].as_object().unwrap();
    let mut up: Vec<&str> = Vec::new();
    let mut waves: Vec<Vec<&str>> = Vec::new();
    while up.len() < services.len() {
        let wave: Vec<(&str, &Value)> = services
            .iter()
            .filter(|(name, svc)| {
                !up.contains(&name.as_str())
                    && svc["depends_on"]
                        .as_object()
                        .is_none_or(|deps| deps.keys().all(|d| up.contains(&d.as_str())))
            })
            .map(|(name, svc)| (name.as_str(), svc))
            .collect();
        assert!(!wave.is_empty(), "a dependency cycle");
        for (_, svc) in &wave {
            for (dep, how) in svc["depends_on"].as_object().into_iter().flatten() {
                stack.wait_condition(dep, how["condition"].as_str().unwrap());
            }
        }
        let names: Vec<&str> = wave.iter().map(|(name, _)| *name).collect();
        let mut args = vec!["up", "-d", "--no-deps"];
        args.extend(&names);
        let r = ran(stack.compose(&args), Duration::from_secs(120));
        assert_eq!(r.code, 0, "podman-compose {args:?}: {r:?}");
        up.extend(&names);
        waves.push(names);
    }
    assert_eq!(
        waves,
        [
            vec!["openbao", "upstream"],
            vec!["openbao-init"],
            vec!["sidekey"],
            vec!["agent"]
        ],
        "the README's podman sequence"
    );
    // Everything up: the long-running services running, sidekey healthy (the agent waited for
    // it), the one-shot done.
    for name in ["openbao", "upstream", "sidekey", "agent"] {
        stack.wait_condition(name, "service_started");
    }
    let stack_up = Instant::now();

    // 3. The seeded key, read as the README says (root token, in the openbao container).
    let commands = readme_exec_commands(&read(&compose_dir().join("README.md")));
    let exec_readme = |words: &[String]| {
        let mut env = Vec::new();
        let mut rest = words;
        while rest[0] == "-e" {
            env.push(rest[1].as_str());
            rest = &rest[2..];
        }
        let argv: Vec<&str> = rest[1..].iter().map(String::as_str).collect();
        stack.exec(&rest[0], &env, &argv)
    };
    let bao_line = commands
        .iter()
        .find(|w| w.contains(&"openbao".to_string()))
        .expect("the README's openbao exec line");
    let r = exec_readme(bao_line);
    assert_eq!(r.code, 0, "{bao_line:?}: {r:?}");
    let key = r.stdout.trim().to_string();
    assert!(
        key.starts_with("demo-") && key.len() == 37,
        "seeded key shape"
    );

    // 4. The agent: the README's lines, in the agent container, through sidekey.
    let agent_lines: Vec<&Vec<String>> = commands.iter().filter(|w| w[0] == "agent").collect();
    assert_eq!(agent_lines.len(), 3, "{agent_lines:?}");
    assert_eq!(
        agent_lines[0].join(" "),
        "agent curl -sS http://upstream:8080/v1/hello"
    );
    let r = exec_readme(agent_lines[0]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains(&key));
    let got: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    assert_eq!(got["path"], "/v1/hello");
    assert_eq!(got["authorization"], true, "{got}");
    assert_eq!(got["scheme"], "Bearer", "{got}");
    assert_eq!(
        got["sha256_12"],
        sha256_12(&key).as_str(),
        "the seeded key, not another"
    );

    assert_eq!(
        agent_lines[1].join(" "),
        "agent curl -sS -i -X POST http://upstream:8080/v1/hello"
    );
    let r = exec_readme(agent_lines[1]);
    assert_eq!(r.code, 0, "{r:?}");
    let (head, body) = r.stdout.split_once("\r\n\r\n").expect("head and body");
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

    assert_eq!(
        agent_lines[2].join(" "),
        "agent curl -sS https://example.com/"
    );
    let r = exec_readme(agent_lines[2]);
    assert_eq!(r.code, 56, "{r:?}");
    assert!(
        r.stderr.contains("CONNECT tunnel failed, response 403"),
        "{r:?}"
    );

    // 5. The isolation holds in the engine: without the proxy the agent reaches neither the
    // upstream nor OpenBao, by name (agent-net's DNS knows only sidekey and the agent) or by
    // address (no route), and nothing outside (no default route). The same address answers
    // from the backend network, so the refusals are the network's.
    let direct = |url: &str| {
        stack.exec(
            "agent",
            &[],
            &["curl", "--noproxy", "*", "-sS", "-m", "5", "-k", url],
        )
    };
    for url in [
        "http://upstream:8080/v1/hello",
        "https://openbao:8200/v1/sys/health",
    ] {
        let r = direct(url);
        assert_eq!(r.code, 6, "{url} resolved from the agent: {r:?}");
    }
    let ip_on_backend = |service: &str| {
        let r = ran(
            stack.podman(&[
                "inspect",
                "--format",
                &format!(
                    "{{{{(index .NetworkSettings.Networks \"{}_backend\").IPAddress}}}}",
                    stack.project
                ),
                &stack.container(service),
            ]),
            Duration::from_secs(30),
        );
        let ip = r.stdout.trim().to_string();
        assert!(
            ip.parse::<std::net::Ipv4Addr>().is_ok(),
            "{service}'s address: {r:?}"
        );
        ip
    };
    let up_url = format!("http://{}:8080/v1/hello", ip_on_backend("upstream"));
    let bao_url = format!("https://{}:8200/v1/sys/health", ip_on_backend("openbao"));
    for url in [&up_url, &bao_url] {
        let r = direct(url);
        assert!(
            r.code != 0 && r.stdout.is_empty(),
            "{url} reached from the agent without sidekey: {r:?}"
        );
    }
    let probe = format!("import urllib.request; print(urllib.request.urlopen('{up_url}').status)");
    let r = stack.exec("upstream", &[], &["python3", "-c", &probe]);
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, "200"),
        "{up_url} from the backend: {r:?}"
    );
    let r = stack.exec("agent", &[], &["cat", "/proc/net/route"]);
    assert_eq!(r.code, 0, "{r:?}");
    let routes: Vec<&str> = r.stdout.lines().skip(1).collect();
    assert!(!routes.is_empty(), "{r:?}");
    assert!(
        routes
            .iter()
            .all(|l| l.split_whitespace().nth(1) != Some("00000000")),
        "the agent has a default route: {r:?}"
    );

    // 6. The audit trail (`docker compose logs sidekey`): one record per request through
    // sidekey (the direct attempts are not), the credential named, its value nowhere.
    let (audit, sk_log) = stack.logs("sidekey");
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l}: {e}")))
        .filter(|r: &Value| r["type"] == "request")
        .collect();
    assert_eq!(records.len(), 3, "{records:#?}");
    assert_readme_records(&records);
    assert!(
        !audit.contains(&key) && !sk_log.contains(&key),
        "the key leaked"
    );
    for name in ["openbao", "openbao-init", "upstream", "agent"] {
        let (out, err) = stack.logs(name);
        assert!(
            !out.contains(&key) && !err.contains(&key),
            "the key in {name}'s log"
        );
    }

    // 7. `down -v` removes everything (the Drop guard only if something failed before this).
    stack.down();
    eprintln!(
        "podman_stack: config and image {:.1?}, stack up {:.1?}, checks and down {:.1?}",
        built - started,
        stack_up - built,
        stack_up.elapsed()
    );
}

/// The audit records of the README's three requests, natively or in containers: the allowed
/// GET with the seeded key's ID, the POST refused by method, example.com refused by host.
#[track_caller]
fn assert_readme_records(records: &[Value]) {
    let allowed = &records[0];
    assert_eq!(
        (&allowed["decision"], &allowed["route"], &allowed["status"]),
        (
            &Value::from("allow"),
            &Value::from("demo"),
            &Value::from(200)
        ),
        "{allowed}"
    );
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
}
