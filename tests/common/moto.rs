//! `Moto`: a local AWS (`moto_server` from PyPI `moto[server]`: STS, IAM, S3) for the
//! `kind: aws-sts` issuer and `inject: { sigv4: … }` tests. Installed with boto3 (the SDK the
//! tests' agent uses) by `scripts/peers/moto` into
//! `${XDG_CACHE_HOME:-$HOME/.cache}/sidekey/peers/moto/venv`.
//!
//! Two doors to one server:
//! - plain HTTP on 127.0.0.1 ([`Moto::http_endpoint`]): the setup calls, the moto API, and
//!   sidekey's STS call (`endpoint: http://127.0.0.1:…`: the issuer trusts only the webpki
//!   roots, and plain http:// is accepted for loopback);
//! - HTTPS ([`Moto::tls_addr`]): a TLS front (rustls, certificate for [`TLS_NAMES`] from the
//!   fixture's own [`TestCa`], HTTP/1.1 only as S3 itself) relaying bytes to the server. Routes
//!   pin the AWS host names to it with `upstream.resolve`, so the agent talks HTTPS to
//!   `*.s3.us-east-1.amazonaws.com` through sidekey as it would to AWS.
//!
//! Every request reaching moto is recorded (moto's recorder: method, URL, headers, body) and
//! read back with [`Moto::recorded`]. The server is killed on drop; its log is printed if the
//! test is panicking.
//!
//! Moto facts the tests rely on (checked against moto 5.2.5, boto3 1.44.5):
//! - signatures are checked only after `INITIAL_NO_AUTH_ACTION_COUNT` requests: each request
//!   that reaches a service action (STS, IAM, S3, …; not the moto API) counts one, signed or
//!   not, until the budget is spent; after that a bad signature gets `403
//!   SignatureDoesNotMatch`, an unknown key `403 InvalidAccessKeyId` (S3) or `403
//!   InvalidClientTokenId` (STS/IAM), a wrong session token `400 InvalidToken` (S3), and a
//!   request the role's IAM policies do not allow `403 AccessDenied`. `POST
//!   /moto-api/reset-auth` (text/plain body `N` or `inf`) sets the budget and restarts the
//!   count at run time ([`Moto::set_no_auth_action_count`]);
//! - an unsigned request after the budget gets a 500 (moto looks up the missing Authorization
//!   header): that includes `AssumeRoleWithWebIdentity`, which AWS defines as unsigned, so the
//!   issuer's STS call must happen within the budget;
//! - `AssumeRoleWithWebIdentity` validates nothing (the token, the role ARN, DurationSeconds):
//!   it answers 200 with keys `ASIA…` whose expiry is now + DurationSeconds (with microseconds:
//!   `2026-11-23T12:20:34.548381Z`). The keys act as the role: after the budget, the role must
//!   exist in IAM with a policy allowing the action ([`Moto::create_role`]), else S3 answers 500.
//!   The session `Policy` is recorded (`/moto-api/data.json`, `sts.AssumedRole[].policy`) but
//!   not enforced;
//! - moto verifies a signature by recomputing it with botocore from the request as received
//!   (raw path, raw query sorted but not re-encoded, the headers named in SignedHeaders, and
//!   `x-amz-content-sha256` as the payload hash when present). An S3 request signed without
//!   `x-amz-content-sha256` fails (moto hashes the parsed query as the body), as it would on
//!   AWS, which requires the header; so curl's `--aws-sigv4` needs `-H
//!   'x-amz-content-sha256: UNSIGNED-PAYLOAD'`;
//! - a PUT body sent as `application/x-www-form-urlencoded` (curl's `--data` default) is read as
//!   a form and the object is stored empty: send another content type;
//! - moto picks the service from the credential scope of the Authorization header, else from
//!   the host, else from the form's `Action` (an unsigned `AssumeRoleWithWebIdentity` POST to
//!   127.0.0.1 reaches STS; an unsigned IAM call there does not, hence boto3 for setup);
//! - boto3 (≥ 1.36) uploads to S3 over HTTPS as `Content-Encoding: aws-chunked`, `x-amz-content-sha256:
//!   STREAMING-UNSIGNED-PAYLOAD-TRAILER`, `Transfer-Encoding: chunked`, `Expect: 100-continue`,
//!   with a CRC32 trailer; moto accepts that.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::ca::TestCa;
use super::clients::{
    base64_decode, closed_port_addr, curl, http_get, output_with_timeout, CurlResult,
    CLIENT_TIMEOUT,
};
use super::sidekey::PROXY_VARS;

/// The region every test uses.
pub const REGION: &str = "us-east-1";
/// The role [`Moto::create_role`] creates and the issuer assumes.
pub const ROLE_NAME: &str = "agent";
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/agent";
pub const S3_HOST: &str = "s3.us-east-1.amazonaws.com";
pub const STS_HOST: &str = "sts.us-east-1.amazonaws.com";
/// Names the TLS front's certificate covers.
pub const TLS_NAMES: &[&str] = &[
    S3_HOST,
    "*.s3.us-east-1.amazonaws.com",
    STS_HOST,
    // examples/aws-s3's region.
    "s3.eu-west-1.amazonaws.com",
    "*.s3.eu-west-1.amazonaws.com",
    "localhost",
    "127.0.0.1",
];
/// A role policy allowing every S3 action on everything.
pub const S3_FULL_ACCESS: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
/// Requests [`Moto::create_role`] + [`Moto::create_bucket`] spend of the budget (CreateRole,
/// PutRolePolicy, CreateBucket).
pub const SETUP_ACTIONS: u32 = 3;
/// Dummy keys of an agent (or of the setup calls, which moto does not check within the budget).
pub const DUMMY_ACCESS_KEY_ID: &str = "AKIAAGENTDUMMYKEY000";
pub const DUMMY_SECRET_ACCESS_KEY: &str = "agent-dummy-secret-never-valid";

/// How long moto may take to answer.
pub const MOTO_START_TIMEOUT: Duration = Duration::from_secs(40);

/// `${XDG_CACHE_HOME:-$HOME/.cache}/sidekey/peers/moto/venv/bin`.
pub fn moto_bin_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set");
    let dir = cache.join("sidekey/peers/moto/venv/bin");
    assert!(
        dir.join("moto_server").exists(),
        "moto is not installed in {}: run scripts/install-test-deps (or scripts/peers/moto)",
        dir.display()
    );
    dir
}

/// The moto venv's Python (with boto3).
pub fn moto_python() -> PathBuf {
    moto_bin_dir().join("python")
}

/// Temporary keys from STS.
#[derive(Clone, Debug)]
pub struct StsKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// `Expiration` as STS wrote it.
    pub expiration: String,
}

/// Text of the first `<tag>…</tag>` in `xml` (enough for STS and S3 answers).
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(xml[start..start + len].to_string())
}

impl StsKeys {
    /// The `Credentials` of an `AssumeRole*Response`.
    pub fn parse(xml: &str) -> Option<StsKeys> {
        Some(StsKeys {
            access_key_id: xml_text(xml, "AccessKeyId")?,
            secret_access_key: xml_text(xml, "SecretAccessKey")?,
            session_token: xml_text(xml, "SessionToken")?,
            expiration: xml_text(xml, "Expiration")?,
        })
    }
}

/// Decodes an `application/x-www-form-urlencoded` body.
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// One request as moto received it (from its recorder).
#[derive(Clone, Debug)]
pub struct MotoRequest {
    pub method: String,
    /// `scheme://host/path?query` as moto saw it (the host is the Host header).
    pub url: String,
    /// Names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    /// Empty for bodies sent without Content-Length (chunked).
    pub body: Vec<u8>,
}

impl MotoRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The access key ID of the `Authorization: AWS4-HMAC-SHA256 Credential=<id>/…` header.
    pub fn access_key_id(&self) -> Option<&str> {
        let auth = self.header("authorization")?;
        let rest = auth.split_once("Credential=")?.1;
        rest.split('/').next()
    }

    /// The `SignedHeaders=` list of the Authorization header.
    pub fn signed_headers(&self) -> Vec<&str> {
        self.header("authorization")
            .and_then(|a| a.split_once("SignedHeaders=").map(|(_, r)| r))
            .map(|r| {
                r.split([',', ' '])
                    .next()
                    .unwrap_or("")
                    .split(';')
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Path and query of the URL.
    pub fn path(&self) -> &str {
        let after_scheme = self.url.split_once("://").map_or(&self.url[..], |(_, r)| r);
        after_scheme.find('/').map_or("/", |i| &after_scheme[i..])
    }

    /// Host of the URL (the Host header moto saw).
    pub fn host(&self) -> &str {
        let after_scheme = self.url.split_once("://").map_or(&self.url[..], |(_, r)| r);
        after_scheme.split('/').next().unwrap_or("")
    }
}

/// A running moto_server and its TLS front.
pub struct Moto {
    child: Option<Child>,
    addr: SocketAddr,
    tls_addr: SocketAddr,
    ca: TestCa,
    dir: tempfile::TempDir,
    recording: PathBuf,
    output: Arc<Mutex<Vec<String>>>,
    tls_connections: Arc<AtomicUsize>,
    front_shutdown: Option<oneshot::Sender<()>>,
    front: Option<JoinHandle<()>>,
}

impl Moto {
    /// Starts moto_server on a free 127.0.0.1 port. `initial_no_auth_action_count`: how many
    /// requests pass before signatures are checked (`None`: never checked). Waits until it
    /// answers.
    pub fn start(initial_no_auth_action_count: Option<u32>) -> Moto {
        let bin = moto_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("sidekey-moto-")
            .tempdir()
            .expect("tempdir");
        let recording = dir.path().join("recording.jsonl");
        let ca = TestCa::new("sidekey test moto CA");
        let addr = closed_port_addr();

        let mut cmd = Command::new(bin.join("moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p"])
            .arg(addr.port().to_string())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("MOTO_ENABLE_RECORDING", "1")
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .env("PYTHONUNBUFFERED", "1");
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        match initial_no_auth_action_count {
            Some(n) => cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string()),
            None => cmd.env_remove("INITIAL_NO_AUTH_ACTION_COUNT"),
        };
        let mut child = cmd.spawn().expect("spawn moto_server");
        let output = Arc::new(Mutex::new(Vec::new()));
        collect_lines(child.stdout.take().unwrap(), output.clone());
        collect_lines(child.stderr.take().unwrap(), output.clone());

        let tls_connections = Arc::new(AtomicUsize::new(0));
        let config = ca.server_config(TLS_NAMES, &[b"http/1.1"]);
        let (tls_addr, front_shutdown, front) =
            start_tls_front(config, addr, tls_connections.clone());

        let mut moto = Moto {
            child: Some(child),
            addr,
            tls_addr,
            ca,
            dir,
            recording,
            output,
            tls_connections,
            front_shutdown: Some(front_shutdown),
            front: Some(front),
        };
        moto.wait_ready();
        moto
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + MOTO_START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "moto_server exited early with {status}\n--- moto output ---\n{}",
                    self.output()
                );
            }
            let last = match http_get(self.addr, "/moto-api/data.json") {
                Ok((200, _)) => return,
                Ok((s, b)) => format!("{s}: {b}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "moto_server not ready within {MOTO_START_TIMEOUT:?} (last: {last})\n--- moto output ---\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:port`: for setup, the moto API and the issuer's `endpoint:`.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The TLS front (certificate for [`TLS_NAMES`], signed by the CA of [`Moto::ca_pem`]).
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
    }

    /// PEM file of the CA that signed the TLS front's certificate, for `upstream.extra_ca_files` and clients.
    pub fn ca_pem(&self) -> &Path {
        self.ca.pem_path()
    }

    /// TLS connections the front accepted so far.
    pub fn tls_connections(&self) -> usize {
        self.tls_connections.load(Ordering::SeqCst)
    }

    /// A scratch directory that lives as long as the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything moto printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    fn api_post(&self, path: &str, body: &str) -> CurlResult {
        let url = format!("{}{path}", self.http_endpoint());
        let res = curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            body,
            &url,
        ]);
        res.assert_status(200);
        res
    }

    /// Sets the number of requests that pass before signatures are checked, and restarts the
    /// count (`None`: never check). Returns the previous setting as moto reports it ("inf",
    /// "3.0").
    pub fn set_no_auth_action_count(&self, n: Option<u32>) -> String {
        let body = n.map_or_else(|| "inf".to_string(), |n| n.to_string());
        let res = self.api_post("/moto-api/reset-auth", &body);
        res.json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// `/moto-api/data.json`: every model moto holds (`sts.AssumedRole`, `iam.Role`, `s3.FakeKey`…).
    pub fn data(&self) -> Value {
        let (status, body) =
            http_get(self.addr, "/moto-api/data.json").expect("GET /moto-api/data.json");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("data.json is JSON")
    }

    /// Every `AssumeRole*` moto answered: `access_key_id`, `session_name`, `role_arn`,
    /// `policy` (the session policy as sent, or null)…
    pub fn assumed_roles(&self) -> Vec<Value> {
        self.data()["sts"]["AssumedRole"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The requests moto received so far, in order (the moto API's own excluded).
    pub fn recorded(&self) -> Vec<MotoRequest> {
        let text = std::fs::read_to_string(&self.recording).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|e| {
                let headers = e["headers"]
                    .as_object()
                    .map(|h| {
                        h.iter()
                            .map(|(k, v)| {
                                (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let raw = e["body"].as_str().unwrap_or("");
                let body = if e["body_encoded"] == true {
                    base64_decode(raw, false).unwrap_or_default()
                } else {
                    raw.as_bytes().to_vec()
                };
                MotoRequest {
                    method: e["method"].as_str().unwrap_or("").to_string(),
                    url: e["url"].as_str().unwrap_or("").to_string(),
                    headers,
                    body,
                }
            })
            .filter(|r| !r.path().starts_with("/moto-api"))
            .collect()
    }

    /// Recorded `AssumeRoleWithWebIdentity` calls (POSTs whose form names that action), in order.
    pub fn web_identity_calls(&self) -> Vec<MotoRequest> {
        self.recorded()
            .into_iter()
            .filter(|r| {
                r.method == "POST"
                    && form_pairs(&r.body)
                        .iter()
                        .any(|(k, v)| k == "Action" && v == "AssumeRoleWithWebIdentity")
            })
            .collect()
    }

    /// Recorded requests that reached S3 through the TLS front (Host `…s3.us-east-1.amazonaws.com`).
    pub fn recorded_s3(&self) -> Vec<MotoRequest> {
        self.recorded()
            .into_iter()
            .filter(|r| {
                let host = r.host().split(':').next().unwrap_or("");
                host == S3_HOST || host.ends_with(".s3.us-east-1.amazonaws.com")
            })
            .collect()
    }

    /// Runs `calls` with boto3 straight against moto's plain-HTTP door, with `keys` (dummy keys
    /// when `None`). See [`boto3`].
    pub fn boto3(&self, keys: Option<&StsKeys>, calls: Value) -> Vec<Value> {
        let agent = Boto3 {
            endpoint_url: Some(self.http_endpoint()),
            addressing_style: "path",
            ..Boto3::with_keys(keys)
        };
        boto3(&agent, calls)
    }

    /// Creates the IAM role [`ROLE_NAME`] (trusting web identities) with the inline policy
    /// `policy` (2 requests of the budget).
    pub fn create_role(&self, policy: &str) {
        self.create_role_named(ROLE_NAME, policy);
    }

    /// Creates the IAM role `name`, trusting web identities, with the inline policy `policy`
    /// (2 requests of the budget).
    pub fn create_role_named(&self, name: &str, policy: &str) {
        let trust = json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/identity.test.local"},
                "Action": "sts:AssumeRoleWithWebIdentity"
            }]
        });
        let out = self.boto3(
            None,
            json!([
                {"service": "iam", "method": "create_role",
                 "params": {"RoleName": name, "AssumeRolePolicyDocument": trust.to_string()}},
                {"service": "iam", "method": "put_role_policy",
                 "params": {"RoleName": name, "PolicyName": "sidekey-test", "PolicyDocument": policy}},
            ]),
        );
        for r in &out {
            assert_eq!(r["ok"], true, "IAM setup failed: {out:?}");
        }
    }

    /// Creates an S3 bucket (1 request of the budget).
    pub fn create_bucket(&self, bucket: &str) {
        let out = self.boto3(
            None,
            json!([{"service": "s3", "method": "create_bucket", "params": {"Bucket": bucket}}]),
        );
        assert_eq!(out[0]["ok"], true, "create_bucket {bucket}: {out:?}");
    }

    /// The role with full S3 access and `bucket` ([`SETUP_ACTIONS`] requests of the budget).
    pub fn setup(&self, bucket: &str) {
        self.create_role(S3_FULL_ACCESS);
        self.create_bucket(bucket);
    }

    /// An unsigned `AssumeRoleWithWebIdentity` (as sidekey's issuer sends it), form-encoded
    /// POST to the plain-HTTP door. Returns the raw answer.
    pub fn assume_role_with_web_identity(
        &self,
        token: &str,
        session_name: &str,
        duration_seconds: u32,
        policy: Option<&str>,
    ) -> CurlResult {
        let mut args = vec![
            "-X".to_string(),
            "POST".to_string(),
            "-H".to_string(),
            "Content-Type: application/x-www-form-urlencoded; charset=utf-8".to_string(),
        ];
        for (k, v) in [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", ROLE_ARN),
            ("RoleSessionName", session_name),
            ("DurationSeconds", &duration_seconds.to_string()),
            ("WebIdentityToken", token),
        ]
        .into_iter()
        .chain(policy.map(|p| ("Policy", p)))
        {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        args.push(format!("{}/", self.http_endpoint()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs)
    }

    /// [`Moto::assume_role_with_web_identity`] that must succeed (1 request of the budget).
    pub fn assume(&self, token: &str, session_name: &str) -> StsKeys {
        let res = self.assume_role_with_web_identity(token, session_name, 3600, None);
        res.assert_status(200);
        StsKeys::parse(&res.body_str())
            .unwrap_or_else(|| panic!("no credentials in {}", res.body_str()))
    }

    /// An S3 request signed by curl (`--aws-sigv4`) with `keys`, over HTTPS to the TLS front:
    /// `https://<host><path>` (host e.g. `bucket.s3.us-east-1.amazonaws.com`, or [`S3_HOST`]
    /// with `/bucket/key`). `body` is sent as `application/octet-stream`.
    pub fn curl_s3(
        &self,
        keys: &StsKeys,
        method: &str,
        host: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> CurlResult {
        let connect_to = format!("{host}:443:127.0.0.1:{}", self.tls_addr.port());
        let user = format!("{}:{}", keys.access_key_id, keys.secret_access_key);
        let token = format!("x-amz-security-token: {}", keys.session_token);
        let url = format!("https://{host}{path}");
        let ca = self.ca_pem().display().to_string();
        let body_file = self.dir().join(format!("body-{}", unique()));
        let mut args = vec![
            "--cacert",
            ca.as_str(),
            "--connect-to",
            connect_to.as_str(),
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            user.as_str(),
            "-H",
            token.as_str(),
            "-H",
            "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            "-X",
            method,
        ];
        let body_arg;
        if let Some(body) = body {
            std::fs::write(&body_file, body).expect("write body");
            body_arg = format!("@{}", body_file.display());
            args.extend([
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                body_arg.as_str(),
            ]);
        }
        args.push(url.as_str());
        curl(&args)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(tx) = self.front_shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.front.take() {
            let _ = t.join();
        }
        if std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(100));
            eprintln!("--- moto output ---\n{}\n--- end moto ---", self.output());
        }
    }
}

fn unique() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst) as u64
}

fn collect_lines(pipe: impl Read + Send + 'static, out: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            out.lock().unwrap().push(line);
        }
    });
}

/// Accepts TLS on 127.0.0.1:0 and relays the plaintext, both ways, to `backend`.
fn start_tls_front(
    config: Arc<rustls::ServerConfig>,
    backend: SocketAddr,
    connections: Arc<AtomicUsize>,
) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind TLS front");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("TLS front addr");
    let (tx, mut rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("moto-tls-front-{}", addr.port()))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("TLS front runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let acceptor = acceptor.clone();
                            let connections = connections.clone();
                            tokio::spawn(async move {
                                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                                connections.fetch_add(1, Ordering::SeqCst);
                                let Ok(mut back) = tokio::net::TcpStream::connect(backend).await else {
                                    return;
                                };
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
                            });
                        }
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        })
        .expect("spawn TLS front");
    (addr, tx, thread)
}

// ---------------------------------------------------------------------------------------------
// boto3

/// How a boto3 client is set up: its keys (dummy for an agent behind sidekey), where it sends
/// requests, and the proxy and CA an agent's environment gives it (`HTTPS_PROXY`,
/// `AWS_CA_BUNDLE`).
#[derive(Clone, Debug)]
pub struct Boto3 {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// `None`: the AWS endpoint for the region (`https://s3.us-east-1.amazonaws.com`…).
    pub endpoint_url: Option<String>,
    /// `virtual` (`bucket.s3…/key`) or `path` (`s3…/bucket/key`).
    pub addressing_style: &'static str,
    pub proxy: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    /// `request_checksum_calculation="when_required"`: plain uploads instead of aws-chunked
    /// with a CRC32 trailer.
    pub checksum_when_required: bool,
}

impl Boto3 {
    /// A client with `keys`, or the dummy keys an agent holds.
    pub fn with_keys(keys: Option<&StsKeys>) -> Boto3 {
        Boto3 {
            access_key_id: keys.map_or(DUMMY_ACCESS_KEY_ID.into(), |k| k.access_key_id.clone()),
            secret_access_key: keys.map_or(DUMMY_SECRET_ACCESS_KEY.into(), |k| {
                k.secret_access_key.clone()
            }),
            session_token: keys.map(|k| k.session_token.clone()),
            endpoint_url: None,
            addressing_style: "virtual",
            proxy: None,
            ca_bundle: None,
            checksum_when_required: false,
        }
    }

    /// An agent with dummy keys using sidekey as its proxy and trusting sidekey's CA, talking
    /// to `https://s3.us-east-1.amazonaws.com` (virtual-hosted buckets).
    pub fn agent_via(proxy_url: &str, sidekey_ca: &Path) -> Boto3 {
        Boto3 {
            endpoint_url: Some(format!("https://{S3_HOST}")),
            proxy: Some(proxy_url.to_string()),
            ca_bundle: Some(sidekey_ca.to_path_buf()),
            ..Boto3::with_keys(None)
        }
    }
}

/// The bytes boto3 sends for `{"body_size": n}`: 0, 1, …, 255, 0, 1, … (n bytes).
pub fn pattern_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 256) as u8).collect()
}

const BOTO3_SCRIPT: &str = r#"
import hashlib, json, sys
import boto3, botocore
from botocore.config import Config

spec = json.loads(sys.argv[1])
extra = {}
if spec.get("checksum_when_required"):
    extra["request_checksum_calculation"] = "when_required"
    extra["response_checksum_validation"] = "when_required"
config = Config(
    region_name=spec["region"],
    retries={"max_attempts": 1, "mode": "standard"},
    s3={"addressing_style": spec["addressing_style"]},
    connect_timeout=10,
    read_timeout=30,
    **extra,
)
session = boto3.session.Session(
    aws_access_key_id=spec["access_key_id"],
    aws_secret_access_key=spec["secret_access_key"],
    aws_session_token=spec.get("session_token"),
    region_name=spec["region"],
)
clients = {}
out = []
for call in spec["calls"]:
    service = call["service"]
    endpoint = call.get("endpoint_url", spec.get("endpoint_url"))
    if (service, endpoint) not in clients:
        clients[(service, endpoint)] = session.client(service, endpoint_url=endpoint, config=config)
    client = clients[(service, endpoint)]
    params = dict(call.get("params", {}))
    sent = None
    if "body_size" in call:
        n = call["body_size"]
        sent = (bytes(range(256)) * (n // 256 + 1))[:n]
    elif "body" in call:
        sent = call["body"].encode()
    if sent is not None:
        params["Body"] = sent
    res = {"method": call["method"]}
    if sent is not None:
        res["sent_len"] = len(sent)
        res["sent_sha256"] = hashlib.sha256(sent).hexdigest()
    try:
        r = getattr(client, call["method"])(**params)
        res["ok"] = True
        res["status"] = r["ResponseMetadata"]["HTTPStatusCode"]
        body = r.pop("Body", None)
        if body is not None:
            data = body.read()
            res["body_len"] = len(data)
            res["body_sha256"] = hashlib.sha256(data).hexdigest()
            res["body"] = data[:512].decode("utf-8", "replace")
        r.pop("ResponseMetadata", None)
        res["result"] = json.loads(json.dumps(r, default=str))
    except botocore.exceptions.ClientError as e:
        res["ok"] = False
        res["status"] = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        res["code"] = e.response.get("Error", {}).get("Code")
        res["message"] = e.response.get("Error", {}).get("Message")
    except Exception as e:
        res["ok"] = False
        res["status"] = None
        res["code"] = type(e).__name__
        res["message"] = str(e)[:2000]
    out.append(res)
print(json.dumps(out))
"#;

/// Runs boto3 `calls` (a JSON list of `{"service", "method", "params", "body" | "body_size",
/// "endpoint_url"?}`) as `client`. Returns one object per call: `ok`, `status`, `code` and
/// `message` (errors), `result` (the response without its body), `body_len`, `body_sha256` and
/// `body` (first 512 bytes as text) for a streamed body, `sent_len` and `sent_sha256` for an
/// upload. The environment is cleared but for what the client is given: no `~/.aws`, no
/// instance metadata, no stray proxy or CA variables.
pub fn boto3(client: &Boto3, calls: Value) -> Vec<Value> {
    let spec = json!({
        "region": REGION,
        "access_key_id": client.access_key_id,
        "secret_access_key": client.secret_access_key,
        "session_token": client.session_token,
        "endpoint_url": client.endpoint_url,
        "addressing_style": client.addressing_style,
        "checksum_when_required": client.checksum_when_required,
        "calls": calls,
    });
    let mut cmd = Command::new(moto_python());
    cmd.arg("-c").arg(BOTO3_SCRIPT).arg(spec.to_string());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("LANG", "C.UTF-8")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null());
    if let Some(p) = &client.proxy {
        for v in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
            cmd.env(v, p);
        }
    }
    if let Some(ca) = &client.ca_bundle {
        cmd.env("AWS_CA_BUNDLE", ca);
    }
    let out = output_with_timeout(cmd, CLIENT_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "boto3 printed no JSON; exit {:?}\nstdout: {stdout}\nstderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    parsed.as_array().cloned().unwrap_or_default()
}
