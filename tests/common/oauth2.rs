//! `OAuth2Server`: a real OAuth 2.0 authorization server (oidc-provider 9, run by
//! `tests/peers/oauth2/server.mjs` under Node) on a free loopback port, for the `kind: oauth2`
//! issuer tests. Installed by `scripts/peers/oauth2`.
//!
//! What it serves (see the header of server.mjs for the whole contract):
//! - `POST /token`: `client_credentials` and RFC 8693 token exchange ([`TOKEN_EXCHANGE`]) for the
//!   clients [`BASIC_CLIENT`] (client_secret_basic), [`POST_CLIENT`] (client_secret_post),
//!   [`PKJWT_CLIENT`] (private_key_jwt, with the keys this fixture generates) and
//!   [`PUBLIC_CLIENT`] (no client auth, token exchange only). Access tokens are ES256 JWTs with a
//!   `jti` (`aud` = the `audience` values then the `resource` values, default
//!   [`DEFAULT_RESOURCE`]), except when a resource or audience contains `opaque`: then the token
//!   is opaque. Any requested scope is granted. Token exchange needs a `subject_token` signed by
//!   one of [`OAuth2Options::identity_keys`] or by a key of a JWKS URL given to
//!   [`OAuth2Server::trust_jwks`]; the issued token's `sub` is its `sub`, and its `act` is
//!   `{sub: <actor token's sub>, act: <the subject token's act>}` (RFC 8693 §4.1), or the
//!   subject token's `act` alone when no actor token is given.
//! - `GET /jwks`: the signing key (kept across [`OAuth2Server::restart`]).
//! - `GET /_stats`: what reached the token endpoint, secrets removed ([`OAuth2Server::stats`]).
//!
//! The server is killed on drop; if the test is panicking, its stderr (one JSON line per token
//! request) is printed first.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::clients::http_get;
use super::now_unix;
use super::sidekey::{repo_root, PROXY_VARS};

/// client_secret_basic client.
pub const BASIC_CLIENT: &str = "sidekey-basic";
/// client_secret_post client.
pub const POST_CLIENT: &str = "sidekey-post";
/// private_key_jwt client (public keys: [`OAuth2Server::client_key`]).
pub const PKJWT_CLIENT: &str = "sidekey-pkjwt";
/// Public client (token_endpoint_auth_method `none`), token exchange only.
pub const PUBLIC_CLIENT: &str = "sidekey-public";
/// RFC 8693 grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type of a JWT (what sidekey sends as `subject_token_type`).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 token type the server answers with (`issued_token_type`).
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 7523 `client_assertion_type`.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// `aud` of a token requested with neither `audience` nor `resource`.
pub const DEFAULT_RESOURCE: &str = "https://default.test.local/";
/// How long the server may take to print its ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Key types of the private_key_jwt client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// P-256, ES256.
    Es256,
    /// Ed25519, EdDSA.
    Ed25519,
    /// RSA 2048, RS256.
    Rsa,
}

impl KeyType {
    /// The `kid` the key is registered under at the server.
    pub fn kid(self) -> &'static str {
        match self {
            KeyType::Es256 => "client-es256",
            KeyType::Ed25519 => "client-ed25519",
            KeyType::Rsa => "client-rsa",
        }
    }

    /// The JWS `alg` of an assertion signed with this key.
    pub fn alg(self) -> &'static str {
        match self {
            KeyType::Es256 => "ES256",
            KeyType::Ed25519 => "EdDSA",
            KeyType::Rsa => "RS256",
        }
    }

    fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::Es256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
            KeyType::Rsa => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// How to start the server.
#[derive(Clone, Debug)]
pub struct OAuth2Options {
    /// Lifetime of every access token (`expires_in`, JWT `exp - iat`). Whole seconds.
    pub access_token_ttl: Duration,
    /// Secret of [`BASIC_CLIENT`] and [`POST_CLIENT`]. Default: a fresh random canary
    /// (`oauth2-canary-secret-<hex>`), to search logs for.
    pub client_secret: Option<String>,
    /// Keys generated for [`PKJWT_CLIENT`] (all registered at the server under
    /// [`KeyType::kid`]). Default: ES256 and Ed25519 (RSA takes longer to generate).
    pub client_keys: Vec<KeyType>,
    /// SPKI PEMs trusted to sign subject and actor tokens ([`super::Identity::public_pem`]).
    pub identity_keys: Vec<String>,
    /// If set, subject/actor tokens must carry this `aud`.
    pub identity_audience: Option<String>,
    /// If set, subject/actor tokens must carry this `iss`.
    pub identity_issuer: Option<String>,
}

impl Default for OAuth2Options {
    fn default() -> Self {
        OAuth2Options {
            access_token_ttl: Duration::from_secs(300),
            client_secret: None,
            client_keys: vec![KeyType::Es256, KeyType::Ed25519],
            identity_keys: Vec::new(),
            identity_audience: None,
            identity_issuer: None,
        }
    }
}

impl OAuth2Options {
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.access_token_ttl = ttl;
        self
    }
    pub fn secret(mut self, secret: &str) -> Self {
        self.client_secret = Some(secret.to_string());
        self
    }
    pub fn keys(mut self, keys: &[KeyType]) -> Self {
        self.client_keys = keys.to_vec();
        self
    }
    /// Trusts `pem` (an [`super::Identity::public_pem`]) for subject and actor tokens.
    pub fn trust_identity(mut self, pem: &str) -> Self {
        self.identity_keys.push(pem.to_string());
        self
    }
}

struct ClientKey {
    kind: KeyType,
    private_pem: String,
    /// PKCS#8.
    private_der: Vec<u8>,
    file: PathBuf,
}

/// The `privateKey` OCTET STRING of a PKCS#8 `PrivateKeyInfo` (for RSA: the PKCS#1 key).
fn pkcs8_inner_key(der: &[u8]) -> &[u8] {
    // One DER TLV at `at`: (tag, content start, content end).
    fn tlv(der: &[u8], at: usize) -> (u8, usize, usize) {
        let tag = der[at];
        let first = der[at + 1] as usize;
        if first < 0x80 {
            return (tag, at + 2, at + 2 + first);
        }
        let n = first & 0x7f;
        let len = der[at + 2..at + 2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (tag, at + 2 + n, at + 2 + n + len)
    }
    let (tag, body, _) = tlv(der, 0);
    assert_eq!(tag, 0x30, "PKCS#8: not a SEQUENCE");
    let (_, _, version_end) = tlv(der, body); // version INTEGER
    let (_, _, alg_end) = tlv(der, version_end); // AlgorithmIdentifier
    let (tag, start, end) = tlv(der, alg_end);
    assert_eq!(tag, 0x04, "PKCS#8: privateKey is not an OCTET STRING");
    &der[start..end]
}

/// A running (or stopped, see [`OAuth2Server::stop`]) oidc-provider.
pub struct OAuth2Server {
    child: Option<Child>,
    port: u16,
    secret: String,
    keys: Vec<ClientKey>,
    dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
    stderr: Arc<Mutex<Vec<String>>>,
    starts: usize,
}

/// `tests/peers/oauth2/`.
pub fn peer_dir() -> PathBuf {
    repo_root().join("tests/peers/oauth2")
}

/// `n` random bytes, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl OAuth2Server {
    /// Generates the client keys, writes the secret and key files into a temp dir, and starts
    /// the server on a free port (waits for its ready line).
    pub fn start(opts: OAuth2Options) -> OAuth2Server {
        assert!(
            peer_dir().join("node_modules/oidc-provider").exists(),
            "{}/node_modules/oidc-provider missing: run scripts/peers/oauth2 (or scripts/install-test-deps)",
            peer_dir().display()
        );
        let dir = tempfile::Builder::new()
            .prefix("sidekey-oauth2-")
            .tempdir()
            .expect("tempdir");
        let secret = opts
            .client_secret
            .clone()
            .unwrap_or_else(|| format!("oauth2-canary-secret-{}", random_hex(12)));
        let secret_file = dir.path().join("client-secret");
        std::fs::write(&secret_file, &secret).expect("write client secret");

        let mut keys = Vec::new();
        let mut registered = Vec::new();
        for &kind in &opts.client_keys {
            let key = rcgen::KeyPair::generate_for(kind.rcgen_alg())
                .unwrap_or_else(|e| panic!("generate {kind:?} client key: {e}"));
            let file = dir.path().join(format!("{}.pem", kind.kid()));
            let private_pem = key.serialize_pem();
            std::fs::write(&file, &private_pem).expect("write client key");
            registered.push(json!({"kid": kind.kid(), "pem": key.public_key_pem()}));
            keys.push(ClientKey {
                kind,
                private_pem,
                private_der: key.serialize_der(),
                file,
            });
        }

        let mut env = vec![
            (
                "OAUTH2_ACCESS_TOKEN_TTL",
                opts.access_token_ttl.as_secs().max(1).to_string(),
            ),
            ("OAUTH2_CLIENT_SECRET", secret.clone()),
            (
                "OAUTH2_SIGNING_KEY_FILE",
                dir.path().join("signing-key.json").display().to_string(),
            ),
        ];
        if !registered.is_empty() {
            let f = dir.path().join("client-keys.json");
            std::fs::write(&f, Value::Array(registered).to_string()).expect("write client keys");
            env.push(("OAUTH2_CLIENT_KEYS_FILE", f.display().to_string()));
        }
        if !opts.identity_keys.is_empty() {
            let f = dir.path().join("identity-keys.pem");
            std::fs::write(&f, opts.identity_keys.join("\n")).expect("write identity keys");
            env.push(("OAUTH2_IDENTITY_KEYS_FILE", f.display().to_string()));
        }
        if let Some(a) = &opts.identity_audience {
            env.push(("OAUTH2_IDENTITY_AUDIENCE", a.clone()));
        }
        if let Some(i) = &opts.identity_issuer {
            env.push(("OAUTH2_IDENTITY_ISSUER", i.clone()));
        }

        let mut server = OAuth2Server {
            child: None,
            port: 0,
            secret,
            keys,
            dir,
            env,
            stderr: Arc::new(Mutex::new(Vec::new())),
            starts: 0,
        };
        server.spawn(0);
        server
    }

    fn spawn(&mut self, port: u16) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.try_spawn(port, deadline) {
                Ok(()) => return,
                // The old process's port can take a moment to be free again.
                Err(why) if port != 0 && Instant::now() < deadline => {
                    eprintln!("oauth2 server restart on port {port} failed ({why}); retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(why) => panic!(
                    "oauth2 server did not start: {why}\n--- stderr ---\n{}",
                    self.stderr()
                ),
            }
        }
    }

    fn try_spawn(&mut self, port: u16, deadline: Instant) -> Result<(), String> {
        let mut cmd = Command::new("node");
        cmd.arg(peer_dir().join("server.mjs"))
            .arg(port.to_string())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("DEBUG")
            .env_remove("NODE_OPTIONS");
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawn node: {e}"))?;
        self.starts += 1;
        let start_no = self.starts;

        let stderr = self.stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                stderr.lock().unwrap().push(format!("[{start_no}] {line}"));
            }
        });
        let (tx, rx) = mpsc::channel::<Value>();
        let pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["event"] == "ready" {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(ready) => {
                    let got = ready["port"].as_u64().unwrap_or(0) as u16;
                    if port != 0 && got != port {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!("listening on {got}, not {port}"));
                    }
                    self.port = got;
                    self.child = Some(child);
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!("exited with {status} before its ready line"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no ready line within {START_TIMEOUT:?}"));
            }
        }
    }

    /// Kills the server (as a crash would). Its port stays reserved for [`OAuth2Server::restart`]
    /// only by convention: nothing else on the machine is expected to take it meanwhile.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port, with the same clients, keys and signing key
    /// (the same JWKS). Tokens it issued before are not remembered (opaque ones stop
    /// introspecting); the stats start from zero.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.spawn(port);
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:port`: the server's issuer identifier (the `iss` of its tokens).
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:port/token`.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer())
    }

    /// The JWKS document (fetched from the running server).
    pub fn jwks(&self) -> String {
        self.get_json("/jwks").to_string()
    }

    /// The secret of [`BASIC_CLIENT`] and [`POST_CLIENT`].
    pub fn client_secret(&self) -> &str {
        &self.secret
    }

    /// A file holding the right client secret (no trailing newline), for `client_secret_file`.
    pub fn client_secret_file(&self) -> PathBuf {
        self.dir.path().join("client-secret")
    }

    /// Writes `content` to a new file in the server's temp dir (a wrong secret, a key of
    /// another client…) and returns its path.
    pub fn write_file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write file");
        p
    }

    fn key(&self, kind: KeyType) -> &ClientKey {
        self.keys
            .iter()
            .find(|k| k.kind == kind)
            .unwrap_or_else(|| {
                panic!("no {kind:?} client key: add it to OAuth2Options::client_keys")
            })
    }

    /// The PKCS#8 PEM file of the private key registered for [`PKJWT_CLIENT`] under
    /// `kind.kid()`, for `private_key_file`.
    pub fn client_key_file(&self, kind: KeyType) -> &Path {
        &self.key(kind).file
    }

    /// The PKCS#8 PEM text of that key (to search logs for).
    pub fn client_key_pem(&self, kind: KeyType) -> &str {
        &self.key(kind).private_pem
    }

    /// A client assertion (RFC 7523) for [`PKJWT_CLIENT`] signed with the `kind` key, exactly
    /// as the server accepts it: `iss` = `sub` = client_id, `aud` = `aud`, a fresh `jti`, `iat`,
    /// `exp` = now + 60 s; header `kid` when `with_kid`.
    pub fn client_assertion(&self, kind: KeyType, aud: &str, with_kid: bool) -> String {
        let der = self.key(kind).private_der.as_slice();
        let (alg, key) = match kind {
            KeyType::Es256 => (Algorithm::ES256, EncodingKey::from_ec_der(der)),
            KeyType::Ed25519 => (Algorithm::EdDSA, EncodingKey::from_ed_der(der)),
            KeyType::Rsa => (
                Algorithm::RS256,
                EncodingKey::from_rsa_der(pkcs8_inner_key(der)),
            ),
        };
        let mut header = Header::new(alg);
        if with_kid {
            header.kid = Some(kind.kid().to_string());
        }
        let now = now_unix();
        let claims = json!({
            "iss": PKJWT_CLIENT,
            "sub": PKJWT_CLIENT,
            "aud": aud,
            "jti": random_hex(16),
            "iat": now,
            "exp": now + 60,
        });
        jsonwebtoken::encode(&header, &claims, &key).expect("sign client assertion")
    }

    fn get_json(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr(), path)
            .unwrap_or_else(|e| panic!("GET {path} on the oauth2 server: {e}"));
        assert_eq!(status, 200, "GET {path} on the oauth2 server: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// `GET /_stats`:
    /// `{"token_requests": n, "issued": {grant: n}, "failed": {grant: n}, "requests": [..], "last": ..}`
    /// where each request is `{time, grant_type, client_auth, client_id, params, status,
    /// response | error, error_description, error_detail, ...}` (see server.mjs).
    pub fn stats(&self) -> Value {
        self.get_json("/_stats")
    }

    /// Every token request since the (re)start or the last reset, oldest first.
    pub fn token_requests(&self) -> Vec<Value> {
        self.stats()["requests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// How many tokens were issued for `grant` (`client_credentials` or [`TOKEN_EXCHANGE`]).
    pub fn issued(&self, grant: &str) -> u64 {
        self.stats()["issued"][grant].as_u64().unwrap_or(0)
    }

    /// Trusts the keys of the JWKS at `jwks_url` (fetched by the server, as for a trusted
    /// issuer's `jwks_uri`) to sign subject and actor tokens that carry `iss` = `issuer` and
    /// `aud` = [`OAuth2Server::token_url`]: how the server is told about sidekey's task
    /// assertions (its admin listener's `/.well-known/jwks.json`). Not kept across a restart.
    pub fn trust_jwks(&self, jwks_url: &str, issuer: &str) {
        let body = json!({"jwks_url": jwks_url, "issuer": issuer}).to_string();
        let req = format!(
            "POST /_trust_jwks HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr(),
            body.len()
        );
        let r = super::clients::raw_request(self.addr(), req.as_bytes()).expect("trust a JWKS");
        assert_eq!(r.status, 200, "trust a JWKS: {}", r.body_str());
    }

    /// Clears the stats.
    pub fn reset_stats(&self) {
        let req = format!(
            "POST /_stats/reset HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr()
        );
        let r = super::clients::raw_request(self.addr(), req.as_bytes()).expect("reset stats");
        assert_eq!(r.status, 200, "reset stats: {}", r.body_str());
    }

    /// The server's stderr so far (its warnings, one JSON line per token request).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for OAuth2Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(50));
            eprintln!(
                "--- oauth2 server stderr ---\n{}\n--- end oauth2 server ---",
                self.stderr()
            );
        }
    }
}
