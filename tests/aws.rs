//! `kind: aws-sts` and `inject: { sigv4: … }` end to end, against moto (tests/common/moto.rs):
//! sidekey assumes the role with the pod's identity token (unsigned AssumeRoleWithWebIdentity,
//! once), and signs every S3 request an agent sends with dummy keys — curl or boto3, through
//! the forward proxy over intercepted HTTPS — with the temporary keys.
//!
//! moto checks signatures only once its no-auth budget is spent: sidekey fetches its keys at
//! start (`eager: true`), then the budget is set to zero, so every request the tests send
//! afterwards is verified, and each test shows moto rejecting a bad signature at that point.

use std::path::PathBuf;

use crate::common::moto::*;
use crate::common::sidekey::substitute;
use crate::common::*;
use serde_json::{json, Value};

const BUCKET: &str = "agent-bucket";
/// Hosts the tests' requests go to; each is pinned to moto's TLS front.
const VHOST: &str = "agent-bucket.s3.us-east-1.amazonaws.com";
const OUTSIDE_REGION: &str = "s3.us-west-2.amazonaws.com";

/// What the agent puts where a signature goes; none of it may reach moto.
const AGENT_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIAAGENTDUMMYKEY000/20260101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const AGENT_TOKEN: &str = "agent-dummy-session-token-canary";
const AGENT_DATE: &str = "20000101T000000Z";
const AGENT_SHA: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
const AGENT_CANARIES: &[&str] = &[
    "AKIAAGENTDUMMYKEY000",
    DUMMY_ACCESS_KEY_ID,
    AGENT_TOKEN,
    AGENT_DATE,
    AGENT_SHA,
    "0123456789abcdef0123456789abcdef",
];

/// The session policy sidekey sends with AssumeRoleWithWebIdentity.
const SESSION_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
     "Resource": ["arn:aws:s3:::agent-bucket", "arn:aws:s3:::agent-bucket/*"]}
  ]
}
"#;

/// The config of every test: docs/issuers.md's `aws-sts` example pointed at moto.
const CONFIG: &str = r#"upstream:
  extra_ca_files: ["{moto_ca}"]
  resolve:
    "s3.us-east-1.amazonaws.com:443": "{moto_tls}"
    "agent-bucket.s3.us-east-1.amazonaws.com:443": "{moto_tls}"
    "s3.us-west-2.amazonaws.com:443": "{moto_tls}"
    "sts.us-east-1.amazonaws.com:443": "{moto_tls}"
identity:
  token_file: "{token_file}"
issuers:
  aws:
    kind: aws-sts
    role_arn: arn:aws:iam::123456789012:role/agent
    region: us-east-1
    endpoint: "{moto_http}"
    session_name: "sidekey-test-{pod}"
credentials:
  s3:
    issuer: aws
    ttl: 1h
    eager: true
    session_policy_file: "{policy_file}"
routes:
  - name: s3
    hosts: ["*.s3.us-east-1.amazonaws.com", s3.us-east-1.amazonaws.com]
    methods: [GET, PUT, HEAD]
    credential: s3
    inject: { sigv4: { service: s3, region: us-east-1 } }
    allow_private: true
"#;

struct AwsEnv {
    moto: Moto,
    identity: Identity,
    sk: Sidekey,
}

/// The placeholders of [`CONFIG`].
fn vars(
    moto: &Moto,
    identity: &Identity,
    policy_file: &std::path::Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("moto_ca", moto.ca_pem().display().to_string()),
        ("moto_tls", moto.tls_addr().to_string()),
        ("moto_http", moto.http_endpoint()),
        ("token_file", identity.token_file().display().to_string()),
        ("policy_file", policy_file.display().to_string()),
    ]
}

impl AwsEnv {
    /// moto with the role and [`BUCKET`], sidekey started (and holding its keys), and moto
    /// checking every signature from now on.
    fn start() -> AwsEnv {
        let moto = Moto::start(None);
        moto.setup(BUCKET);
        let identity = Identity::new("system:serviceaccount:agents:agent-7", "sts.amazonaws.com");
        let policy_file = moto.dir().join("session-policy.json");
        std::fs::write(&policy_file, SESSION_POLICY).expect("write session policy");
        let sk = Sidekey::start(CONFIG, &vars(&moto, &identity, &policy_file));
        moto.set_no_auth_action_count(Some(0));
        AwsEnv { moto, identity, sk }
    }

    /// The keys moto issued to sidekey (there must be exactly one set).
    fn issued(&self) -> StsKeys {
        let roles = self.moto.assumed_roles();
        assert_eq!(roles.len(), 1, "STS calls: {roles:#?}");
        let s = |k: &str| roles[0][k].as_str().unwrap_or_default().to_string();
        StsKeys {
            access_key_id: s("access_key_id"),
            secret_access_key: s("secret_access_key"),
            session_token: s("session_token"),
            expiration: String::new(),
        }
    }

    /// Negative control: right now moto rejects a bad signature and the agent's dummy keys.
    #[track_caller]
    fn assert_moto_rejects_bad_signatures(&self) {
        let wrong = StsKeys {
            secret_access_key: "not-the-secret".into(),
            ..self.issued()
        };
        let res = self
            .moto
            .curl_s3(&wrong, "GET", VHOST, "/negative-control", None);
        assert_eq!(res.status, 403, "{}", res.body_str());
        assert_eq!(
            xml_text(&res.body_str(), "Code").as_deref(),
            Some("SignatureDoesNotMatch"),
            "{}",
            res.body_str()
        );
        let out = self.moto.boto3(
            None,
            json!([{"service": "s3", "method": "head_bucket", "params": {"Bucket": BUCKET}}]),
        );
        assert_eq!(out[0]["ok"], false, "{out:?}");
        assert_eq!(out[0]["status"], 403, "{out:?}");
    }

    /// Request audit records of route `s3`.
    fn s3_records(&self) -> Vec<Value> {
        self.sk
            .request_records()
            .into_iter()
            .filter(|r| r["route"] == "s3")
            .collect()
    }

    /// Recorded STS calls (POSTs carrying `Action=AssumeRoleWithWebIdentity`).
    fn sts_calls(&self) -> Vec<MotoRequest> {
        self.moto.web_identity_calls()
    }
}

/// The headers of an agent that signed with its dummy keys.
fn agent_signature_args() -> Vec<String> {
    vec![
        "-H".into(),
        format!("Authorization: {AGENT_AUTH}"),
        "-H".into(),
        format!("X-Amz-Security-Token: {AGENT_TOKEN}"),
        "-H".into(),
        format!("X-Amz-Date: {AGENT_DATE}"),
        "-H".into(),
        format!("X-Amz-Content-Sha256: {AGENT_SHA}"),
    ]
}

fn curl_agent(sk: &Sidekey, args: &[&str]) -> CurlResult {
    let mut all = agent_signature_args();
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    curl_via(sk, &refs)
}

/// Asserts a request moto recorded carries sidekey's signature with `keys`, and nothing of the
/// agent's.
#[track_caller]
fn assert_signed_by_sidekey(r: &MotoRequest, keys: &StsKeys) {
    assert_eq!(
        r.access_key_id(),
        Some(keys.access_key_id.as_str()),
        "{r:#?}"
    );
    assert!(
        r.header("authorization")
            .is_some_and(|a| a.starts_with(&format!(
                "AWS4-HMAC-SHA256 Credential={}/",
                keys.access_key_id
            )) && a.contains("/us-east-1/s3/aws4_request")),
        "{r:#?}"
    );
    assert_eq!(
        r.header("x-amz-security-token"),
        Some(keys.session_token.as_str()),
        "{r:#?}"
    );
    let signed = r.signed_headers();
    for h in [
        "host",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amz-security-token",
    ] {
        assert!(signed.contains(&h), "{h} not signed: {signed:?}");
    }
    for (name, value) in &r.headers {
        for canary in AGENT_CANARIES {
            assert!(
                !value.contains(canary),
                "the agent's {canary} reached moto in {name}: {r:#?}"
            );
        }
    }
}

#[test]
fn the_config_follows_the_documented_schema() {
    let ca = TestCa::new("unused");
    let identity = Identity::new("agent-7", "sts.amazonaws.com");
    let dir = tempfile::tempdir().expect("tempdir");
    let policy_file = dir.path().join("policy.json");
    std::fs::write(&policy_file, SESSION_POLICY).unwrap();
    let all = vec![
        ("moto_ca", ca.pem_path().display().to_string()),
        ("moto_tls", "127.0.0.1:9".to_string()),
        ("moto_http", "http://127.0.0.1:9".to_string()),
        ("token_file", identity.token_file().display().to_string()),
        ("policy_file", policy_file.display().to_string()),
    ];
    let text = format!(
        "listen: {{ forward: 127.0.0.1:0, routes: 127.0.0.1:0, admin: 127.0.0.1:0 }}\n\
         ca: {{ cert_out: \"{}/ca.pem\" }}\n{}",
        dir.path().display(),
        substitute(CONFIG, &all)
    );
    let file = dir.path().join("sidekey.yaml");
    std::fs::write(&file, text).unwrap();
    let out = run_check(&file);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("AWS SigV4 signature, service s3, region us-east-1"),
        "{}",
        out.stdout
    );
}

#[test]
fn curl_put_and_get_are_signed_with_the_sts_keys() {
    let env = AwsEnv::start();
    env.assert_moto_rejects_bad_signatures();
    let keys = env.issued();
    assert!(keys.access_key_id.starts_with("ASIA"), "{keys:?}");

    let put_url = format!("https://{VHOST}/notes/hello.txt");
    curl_agent(
        &env.sk,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "hello from the agent",
            &put_url,
        ],
    )
    .assert_status(200);
    let got = curl_agent(&env.sk, &[&put_url]);
    got.assert_status(200);
    assert_eq!(got.body_str(), "hello from the agent");
    // Path-style addressing, the bucket in the path.
    let path_style = format!("https://{S3_HOST}/{BUCKET}/notes/hello.txt");
    let got = curl_agent(&env.sk, &[&path_style]);
    got.assert_status(200);
    assert_eq!(got.body_str(), "hello from the agent");
    // A listing with a query.
    let list = format!("https://{VHOST}/?list-type=2&prefix=notes%2F");
    let got = curl_agent(&env.sk, &[&list]);
    got.assert_status(200);
    assert!(
        got.body_str().contains("<Key>notes/hello.txt</Key>"),
        "{}",
        got.body_str()
    );

    let recorded = env.moto.recorded_s3();
    let methods: Vec<&str> = recorded.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        methods,
        ["GET", "PUT", "GET", "GET", "GET"],
        "{recorded:#?}"
    );
    // The first one is the negative control, signed by the test with a wrong secret.
    for r in &recorded[1..] {
        assert_signed_by_sidekey(r, &keys);
        assert_eq!(r.header("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
    }
    let put = &recorded[1];
    assert_eq!(put.host(), VHOST);
    assert_eq!(put.path(), "/notes/hello.txt");
    assert_eq!(put.body, b"hello from the agent");
    assert!(put.signed_headers().contains(&"content-type"), "{put:#?}");
    assert_eq!(recorded[3].host(), S3_HOST);
    assert_eq!(recorded[3].path(), "/agent-bucket/notes/hello.txt");

    let records = env.s3_records();
    assert_eq!(records.len(), 4, "{records:#?}");
    for r in &records {
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["credential"], "s3", "{r}");
        assert_eq!(r["issuer"], "aws", "{r}");
        assert_eq!(r["credential_id"], keys.access_key_id.as_str(), "{r}");
    }
    let audit = env.sk.stdout_text();
    assert!(
        !audit.contains(&keys.secret_access_key),
        "secret in the audit"
    );
    assert!(
        !audit.contains(&keys.session_token),
        "session token in the audit"
    );
    let log = env.sk.stderr();
    assert!(!log.contains(&keys.secret_access_key), "secret in the log");
    assert!(
        !log.contains(&keys.session_token),
        "session token in the log"
    );
}

#[test]
fn boto3_with_dummy_keys_works_through_sidekey() {
    let env = AwsEnv::start();
    env.assert_moto_rejects_bad_signatures();
    let keys = env.issued();
    let agent = Boto3::agent_via(&env.sk.proxy_url(), env.sk.ca_pem());
    let out = boto3(
        &agent,
        json!([
            // boto3's default upload: aws-chunked body, CRC32 trailer, STREAMING-UNSIGNED-PAYLOAD-TRAILER.
            {"service": "s3", "method": "put_object", "params": {"Bucket": BUCKET, "Key": "boto3/data.bin", "ContentType": "application/octet-stream", "Metadata": {"owner": "agent-7"}}, "body_size": 100_000},
            {"service": "s3", "method": "get_object", "params": {"Bucket": BUCKET, "Key": "boto3/data.bin"}},
            {"service": "s3", "method": "head_object", "params": {"Bucket": BUCKET, "Key": "boto3/data.bin"}},
            {"service": "s3", "method": "list_objects_v2", "params": {"Bucket": BUCKET, "Prefix": "boto3/"}},
        ]),
    );
    for r in &out {
        assert_eq!(r["ok"], true, "{out:#?}");
    }
    assert_eq!(out[1]["body_sha256"], out[0]["sent_sha256"], "{out:#?}");
    assert_eq!(out[1]["body_len"], 100_000);
    assert_eq!(out[2]["result"]["Metadata"]["owner"], "agent-7", "{out:#?}");
    assert_eq!(out[3]["result"]["KeyCount"], 1, "{out:#?}");

    // A plain upload too (checksums only when required).
    let plain = Boto3 {
        checksum_when_required: true,
        ..agent.clone()
    };
    let out = boto3(
        &plain,
        json!([
            {"service": "s3", "method": "put_object", "params": {"Bucket": BUCKET, "Key": "boto3/plain.txt"}, "body": "plain upload"},
            {"service": "s3", "method": "get_object", "params": {"Bucket": BUCKET, "Key": "boto3/plain.txt"}},
        ]),
    );
    assert_eq!(out[0]["ok"], true, "{out:#?}");
    assert_eq!(out[1]["body"], "plain upload", "{out:#?}");

    let recorded = env.moto.recorded_s3();
    let signed_by_sidekey: Vec<&MotoRequest> = recorded
        .iter()
        .filter(|r| r.path() != "/negative-control")
        .collect();
    assert_eq!(signed_by_sidekey.len(), 6, "{recorded:#?}");
    for r in &signed_by_sidekey {
        assert_signed_by_sidekey(r, &keys);
    }
    // The aws-chunked upload keeps its framing mode; the x-amz-* headers boto3 sent are signed.
    let chunked = signed_by_sidekey[0];
    assert_eq!(chunked.method, "PUT");
    assert_eq!(
        chunked.header("x-amz-content-sha256"),
        Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        "{chunked:#?}"
    );
    let signed = chunked.signed_headers();
    for h in [
        "content-encoding",
        "x-amz-decoded-content-length",
        "x-amz-meta-owner",
        "x-amz-trailer",
    ] {
        assert!(signed.contains(&h), "{h} not signed: {signed:?}");
    }

    let records = env.s3_records();
    assert_eq!(records.len(), 6, "{records:#?}");
    for r in &records {
        assert_eq!(r["credential_id"], keys.access_key_id.as_str(), "{r}");
        assert_eq!(r["status"], 200, "{r}");
    }
    // The same agent straight to moto, without sidekey: its dummy keys are refused.
    let direct = Boto3 {
        endpoint_url: Some(env.moto.http_endpoint()),
        addressing_style: "path",
        proxy: None,
        ca_bundle: None,
        ..agent
    };
    let out = boto3(
        &direct,
        json!([{"service": "s3", "method": "get_object", "params": {"Bucket": BUCKET, "Key": "boto3/plain.txt"}}]),
    );
    assert_eq!(out[0]["ok"], false, "{out:#?}");
    assert_eq!(out[0]["code"], "InvalidAccessKeyId", "{out:#?}");
}

#[test]
fn keys_and_queries_with_special_characters_are_signed_as_s3_expects() {
    // S3 signs the path as sent (no second encoding) and the query decoded and encoded again;
    // boto3 percent-encodes the key (`%20`, `%2B`, `%3D`, `%40`, UTF-8) and the query values.
    const KEY: &str = "dir/a b+c=d@e\u{e9}~(1).txt";
    let env = AwsEnv::start();
    let keys = env.issued();
    let agent = Boto3::agent_via(&env.sk.proxy_url(), env.sk.ca_pem());
    let out = boto3(
        &agent,
        json!([
            {"service": "s3", "method": "put_object", "params": {"Bucket": BUCKET, "Key": KEY}, "body": "special"},
            {"service": "s3", "method": "get_object", "params": {"Bucket": BUCKET, "Key": KEY}},
            {"service": "s3", "method": "list_objects_v2", "params": {"Bucket": BUCKET, "Prefix": "dir/a b+c", "StartAfter": "dir/0 =&?"}},
        ]),
    );
    for r in &out {
        assert_eq!(r["ok"], true, "{out:#?}");
    }
    assert_eq!(out[1]["body"], "special");
    assert_eq!(out[2]["result"]["KeyCount"], 1, "{out:#?}");
    let recorded = env.moto.recorded_s3();
    assert_eq!(recorded.len(), 3, "{recorded:#?}");
    for r in &recorded {
        assert_signed_by_sidekey(r, &keys);
    }
    assert!(
        recorded[0]
            .path()
            .starts_with("/dir/a%20b%2Bc%3Dd%40e%C3%A9~%281%29.txt"),
        "{:?}",
        recorded[0].path()
    );
}

#[test]
fn sts_is_called_once_for_many_requests() {
    let env = AwsEnv::start();
    let keys = env.issued();
    let url = format!("https://{VHOST}/many.txt");
    curl_agent(
        &env.sk,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "many",
            &url,
        ],
    )
    .assert_status(200);
    // Ten GETs on one connection, then five HEADs on new ones.
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 10).collect();
    let res = curl_agent(&env.sk, &urls);
    res.assert_status(200);
    for _ in 0..5 {
        curl_agent(&env.sk, &["-I", &url]).assert_status(200);
    }
    assert_eq!(env.sts_calls().len(), 1, "{:#?}", env.sts_calls());
    assert_eq!(env.moto.assumed_roles().len(), 1);
    let recorded = env.moto.recorded_s3();
    assert_eq!(recorded.len(), 16, "{recorded:#?}");
    for r in &recorded {
        assert_signed_by_sidekey(r, &keys);
    }
    let records = env.s3_records();
    assert_eq!(records.len(), 16);
    for r in &records {
        assert_eq!(r["credential_id"], keys.access_key_id.as_str(), "{r}");
    }
}

#[test]
fn the_agents_signature_never_reaches_moto() {
    let env = AwsEnv::start();
    let keys = env.issued();
    // Several spellings and copies of what the agent may send in place of the signature.
    let url = format!("https://{VHOST}/canary.txt");
    curl_via(
        &env.sk,
        &[
            "-X",
            "PUT",
            "-H",
            &format!("authorization: {AGENT_AUTH}"),
            "-H",
            &format!("X-AMZ-SECURITY-TOKEN: {AGENT_TOKEN}"),
            "-H",
            &format!("x-amz-date: {AGENT_DATE}"),
            "-H",
            &format!("x-amz-content-sha256: {AGENT_SHA}"),
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "canary",
            &url,
        ],
    )
    .assert_status(200);
    // HTTP/1.1 with the headers twice.
    let mut args = agent_signature_args();
    args.extend(agent_signature_args());
    args.extend(["--http1.1".to_string(), url.clone()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl_via(&env.sk, &refs).assert_status(200);

    // Everything sidekey sent: its STS call at start and the two PUTs (the setup calls before
    // it, made by the test with dummy keys, are left out).
    let recorded = env.moto.recorded_s3();
    assert_eq!(recorded.len(), 2, "{recorded:#?}");
    for r in recorded.iter().chain(env.sts_calls().iter()) {
        for (name, value) in &r.headers {
            for canary in AGENT_CANARIES {
                assert!(
                    !value.contains(canary),
                    "{canary} reached moto in {name}: {r:#?}"
                );
            }
        }
    }
    for r in &recorded {
        assert_signed_by_sidekey(r, &keys);
        assert_eq!(
            r.headers
                .iter()
                .filter(|(k, _)| k == "authorization")
                .count(),
            1
        );
        assert_eq!(
            r.headers
                .iter()
                .filter(|(k, _)| k == "x-amz-security-token")
                .count(),
            1
        );
    }
}

#[test]
fn hosts_and_methods_outside_the_route_are_refused_and_nothing_signed_leaves() {
    let env = AwsEnv::start();
    // Another region's S3 and STS are pinned to moto too: were anything forwarded, it would
    // show up there.
    expect_https_refusal(
        &env.sk,
        &[&format!(
            "https://{OUTSIDE_REGION}/{BUCKET}/notes/hello.txt"
        )],
        &format!("{OUTSIDE_REGION}:443"),
        403,
        "host_not_allowed",
    );
    expect_https_refusal(
        &env.sk,
        &[
            "-X",
            "POST",
            "--data",
            "Action=GetCallerIdentity&Version=2011-06-15",
            &format!("https://{STS_HOST}/"),
        ],
        &format!("{STS_HOST}:443"),
        403,
        "host_not_allowed",
    );
    // The route's host with a method it does not allow.
    let res = curl_agent(
        &env.sk,
        &["-X", "DELETE", &format!("https://{VHOST}/notes/hello.txt")],
    );
    res.expect_refusal(403, "method_not_allowed");

    assert_eq!(
        env.moto.tls_connections(),
        0,
        "something reached moto's HTTPS door"
    );
    assert!(
        env.moto.recorded_s3().is_empty(),
        "{:#?}",
        env.moto.recorded_s3()
    );
    assert_eq!(env.sts_calls().len(), 1, "only the issuer's call at start");
    let denied: Vec<Value> = env
        .sk
        .request_records()
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .collect();
    assert!(!denied.is_empty());
    for r in &denied {
        assert!(r["credential_id"].is_null(), "{r}");
    }
}

#[test]
fn the_session_policy_and_the_identity_token_are_sent_to_sts() {
    let env = AwsEnv::start();
    let roles = env.moto.assumed_roles();
    assert_eq!(roles.len(), 1, "{roles:#?}");
    let role = &roles[0];
    assert_eq!(role["role_arn"], ROLE_ARN);
    let session = role["session_name"].as_str().unwrap_or_default();
    assert!(
        session.starts_with("sidekey-test-") && session.len() > "sidekey-test-".len(),
        "{role}"
    );
    let sent: Value = serde_json::from_str(role["policy"].as_str().expect("a session policy"))
        .expect("the session policy is JSON");
    let file: Value = serde_json::from_str(SESSION_POLICY).unwrap();
    assert_eq!(sent, file);

    let calls = env.sts_calls();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let call = &calls[0];
    assert_eq!(
        call.header("authorization"),
        None,
        "AssumeRoleWithWebIdentity is unsigned"
    );
    assert!(
        call.header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")),
        "{call:#?}"
    );
    let form: Vec<(String, String)> = form_pairs(&call.body);
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("Version"), Some("2011-06-15"));
    assert_eq!(get("RoleArn"), Some(ROLE_ARN));
    assert_eq!(get("RoleSessionName"), Some(session));
    assert_eq!(get("DurationSeconds"), Some("3600"), "ttl: 1h");
    assert_eq!(get("WebIdentityToken"), Some(env.identity.token().trim()));
    assert_eq!(
        get("Policy").map(|p| serde_json::from_str::<Value>(p).unwrap()),
        Some(file)
    );
}

#[test]
fn a_12_mib_upload_streams_with_unsigned_payload() {
    // More than the 10 MiB a hashed payload may have: S3 bodies are never buffered.
    const SIZE: usize = 12 * 1024 * 1024;
    let env = AwsEnv::start();
    env.assert_moto_rejects_bad_signatures();
    let keys = env.issued();
    let body = pattern_body(SIZE);
    let file: PathBuf = env.moto.dir().join("big.bin");
    std::fs::write(&file, &body).unwrap();
    let url = format!("https://{VHOST}/big/curl.bin");
    curl_agent(
        &env.sk,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
            &url,
        ],
    )
    .assert_status(200);
    let got = curl_agent(&env.sk, &[&url]);
    got.assert_status(200);
    assert!(
        got.body == body,
        "GET returned {} bytes, not the upload",
        got.body.len()
    );

    let put = env
        .moto
        .recorded_s3()
        .into_iter()
        .find(|r| r.method == "PUT")
        .expect("PUT recorded");
    assert_signed_by_sidekey(&put, &keys);
    assert_eq!(put.header("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));

    // boto3's aws-chunked upload of the same size.
    let agent = Boto3::agent_via(&env.sk.proxy_url(), env.sk.ca_pem());
    let out = boto3(
        &agent,
        json!([
            {"service": "s3", "method": "put_object", "params": {"Bucket": BUCKET, "Key": "big/boto3.bin"}, "body_size": SIZE},
            {"service": "s3", "method": "get_object", "params": {"Bucket": BUCKET, "Key": "big/boto3.bin"}},
        ]),
    );
    assert_eq!(out[0]["ok"], true, "{out:#?}");
    assert_eq!(out[1]["body_len"], SIZE, "{out:#?}");
    assert_eq!(out[1]["body_sha256"], out[0]["sent_sha256"]);

    let records = env.s3_records();
    assert_eq!(records.len(), 4, "{records:#?}");
    assert!(
        records
            .iter()
            .any(|r| r["method"] == "PUT" && r["bytes_in"].as_u64().unwrap_or(0) >= SIZE as u64),
        "{records:#?}"
    );
}
