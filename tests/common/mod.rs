//! Shared fixtures for sidekey's integration tests, in one place: `tests/main.rs` declares
//! `mod common;` once, and every test module uses `crate::common::...`.
//!
//! - [`ca::TestCa`]: a test CA that signs the upstreams' certificates;
//! - [`upstream::Upstream`]: real HTTPS (h1 + h2) and HTTP servers that echo, stream SSE,
//!   redirect, and record what reached them;
//! - [`sidekey::Sidekey`]: the real binary on free ports, its audit (stdout) and logs (stderr);
//! - [`clients`]: curl, Python (requests, httpx), Node (undici) and raw-socket clients;
//! - [`grants`]: task grants (`sidekey grant keygen|sign|derive|revoke`) and curl presenting one.
//!
//! [`Env`] bundles a CA and the two upstreams and starts sidekey with the placeholders
//! `{test_ca}`, `{upstream}`, `{upstream_http}` (and `{dir}`) filled in.

pub mod ca;
pub mod clients;
pub mod dns;
pub mod github_app;
pub mod grants;
pub mod identity;
pub mod inprocess;
pub mod moto;
pub mod nginx;
pub mod oauth2;
pub mod openbao;
pub mod otlp;
pub mod postgres;
pub mod raw;
pub mod sidekey;
pub mod upstream;

pub use ca::TestCa;
pub use clients::*;
pub use identity::Identity;
pub use sidekey::{run_check, Sidekey};
pub use upstream::{Recorded, Upstream};

/// A test CA, an HTTPS upstream whose certificate it signed, and a plain HTTP upstream.
pub struct Env {
    pub ca: TestCa,
    pub upstream: Upstream,
    pub upstream_http: Upstream,
}

impl Env {
    pub fn new() -> Env {
        let ca = TestCa::new("sidekey test upstream CA");
        let upstream = Upstream::https(&ca);
        let upstream_http = Upstream::http();
        Env {
            ca,
            upstream,
            upstream_http,
        }
    }

    /// The placeholders every config may use.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("test_ca", self.ca.pem_path().display().to_string()),
            ("upstream", self.upstream.addr().to_string()),
            ("upstream_http", self.upstream_http.addr().to_string()),
        ]
    }

    /// Waits until both upstreams have read everything sent to them ([`Upstream::wait_quiet`]).
    pub fn wait_quiet(&self) {
        self.upstream.wait_quiet();
        self.upstream_http.wait_quiet();
    }

    /// Starts sidekey with `yaml` (see [`Sidekey::start`]).
    pub fn sidekey(&self, yaml: &str) -> Sidekey {
        Sidekey::start(yaml, &self.vars())
    }

    /// Starts sidekey with `yaml` on one worker thread: tokio's current-thread runtime, where
    /// anything that blocks would stall every connection.
    pub fn sidekey_one_worker(&self, yaml: &str) -> Sidekey {
        Sidekey::start_with_env(yaml, &self.vars(), &[("SIDEKEY_WORKER_THREADS", "1")])
    }

    /// Starts sidekey with `yaml` and extra placeholders.
    pub fn sidekey_with(&self, yaml: &str, extra: &[(&'static str, String)]) -> Sidekey {
        let mut vars = self.vars();
        vars.extend(extra.iter().cloned());
        Sidekey::start(yaml, &vars)
    }
}

/// Hosts of [`base_config`], all resolved to the test upstreams.
pub const API: &str = "api.test.local";
pub const OTHER: &str = "other.test.local";
pub const SCOPED: &str = "paths.test.local";
pub const PLAIN: &str = "plain.test.local";

/// The config most tests use: the local issuer, one credential (`demo`, audience `demo-api`),
/// and routes
/// - `api`: https://api.test.local, GET/POST/HEAD, `Authorization: Bearer {token}`;
/// - `other`: https://other.test.local, GET, same credential;
/// - `scoped`: https://paths.test.local, GET, paths `/echo/v1/**` only;
/// - `plain`: http://plain.test.local (port 80), GET/POST;
///
/// then `extra_routes` (YAML list items, indented by two spaces) and `extra_top` (top-level
/// keys). `extra_resolve` adds `host:port: placeholder-or-addr` pins.
pub fn base_config(extra_resolve: &[(&str, &str)], extra_routes: &str, extra_top: &str) -> String {
    let mut resolve = String::new();
    for (k, v) in extra_resolve {
        resolve.push_str(&format!("    \"{k}\": \"{v}\"\n"));
    }
    format!(
        r#"upstream:
  extra_ca_files: ["{{test_ca}}"]
  resolve:
    "api.test.local:443": "{{upstream}}"
    "other.test.local:443": "{{upstream}}"
    "paths.test.local:443": "{{upstream}}"
    "plain.test.local:80": "{{upstream_http}}"
{resolve}issuers:
  local: {{ kind: local }}
credentials:
  demo: {{ issuer: local, audience: demo-api, ttl: 5m }}
{extra_top}
routes:
  - name: api
    hosts: [api.test.local]
    methods: [GET, POST, HEAD]
    credential: demo
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
  - name: other
    hosts: [other.test.local]
    methods: [GET]
    credential: demo
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
  - name: scoped
    hosts: [paths.test.local]
    methods: [GET]
    paths: ["/echo/v1/**"]
    credential: demo
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
  - name: plain
    hosts: [plain.test.local]
    schemes: [http]
    methods: [GET, POST]
    credential: demo
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
{extra_routes}"#
    )
}

/// `yaml` (a [`base_config`]) with `upstream.allow_ranges: [127.0.0.0/8]`: the test upstreams
/// live on loopback, which the SSRF guard opens to blind tunnels (no route) only this way.
pub fn allow_loopback_ranges(yaml: &str) -> String {
    yaml.replacen(
        "upstream:\n",
        "upstream:\n  allow_ranges: [127.0.0.0/8]\n",
        1,
    )
}

/// [`base_config`] with nothing added.
pub fn default_config() -> String {
    base_config(&[], "", "")
}

/// `curl -x <forward> --cacert <sidekey CA> <args>`: an agent using sidekey as its proxy.
pub fn curl_via(sk: &Sidekey, args: &[&str]) -> CurlResult {
    let proxy = sk.proxy_url();
    let ca = sk.ca_pem().display().to_string();
    let mut all = vec!["-x", proxy.as_str(), "--cacert", ca.as_str()];
    all.extend_from_slice(args);
    curl(&all)
}

/// Asserts a JWT minted by the local issuer for credential `demo`: three parts, EdDSA,
/// `aud` = `audience`, `iss`, `sub`, `jti` present, `iat` <= now < `exp` <= iat + 5 min.
/// Returns the payload.
#[track_caller]
pub fn assert_local_jwt(token: &str, audience: &str) -> serde_json::Value {
    let (header, payload) = decode_jwt(token);
    assert_eq!(header["alg"], "EdDSA", "JWT header {header}");
    assert!(header["kid"].is_string(), "JWT header has a kid: {header}");
    let aud_ok = payload["aud"] == audience
        || payload["aud"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == audience));
    assert!(aud_ok, "aud should be {audience}: {payload}");
    for claim in ["iss", "sub", "jti"] {
        assert!(
            payload[claim].as_str().is_some_and(|s| !s.is_empty()),
            "claim {claim} missing: {payload}"
        );
    }
    let now = now_unix();
    let iat = payload["iat"].as_u64().expect("iat");
    let exp = payload["exp"].as_u64().expect("exp");
    assert!(iat <= now + 5, "iat {iat} in the future (now {now})");
    assert!(exp > now, "exp {exp} already passed (now {now})");
    assert!(
        exp <= iat + 5 * 60 + 5,
        "exp {exp} beyond ttl 5m from iat {iat}"
    );
    payload
}

/// A refused HTTPS request through the forward listener, wherever sidekey refuses it: on the
/// CONNECT itself (curl then only reports the status, so the body is read off a raw CONNECT),
/// or inside the intercepted tunnel. Checks status, header and JSON body; returns the body.
/// Sends up to two requests: do not use where audit records are counted.
#[track_caller]
pub fn expect_https_refusal(
    sk: &Sidekey,
    args: &[&str],
    authority: &str,
    status: u16,
    code: &str,
) -> serde_json::Value {
    let res = curl_via(sk, args);
    if res.connect_status == 200 {
        return res.expect_refusal(status, code);
    }
    assert_eq!(
        res.connect_status, status,
        "CONNECT refused with the wrong status: {res:#?}"
    );
    match connect_tunnel(sk.forward, authority) {
        Ok(_) => panic!("curl's CONNECT to {authority} was refused but a raw one was not"),
        Err(resp) => resp.expect_refusal(status, code),
    }
}
