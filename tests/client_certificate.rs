//! TLS client certificates as a credential (README "Client certificates"): a route's
//! `client_certificate` names a `certificate` credential that a real OpenBao's PKI engine signs
//! (`pki/sign/<role>`, for a key sidekey made in memory), presented to a real nginx that
//! requires and checks client certificates. The serial nginx verified is the serial in the audit
//! record; another route to the same nginx never presents it (not even through a resumed TLS
//! session); a certificate replaced before it expires is presented from then on; its lease is
//! revoked in OpenBao, which revokes the certificate.
//!
//! Needs `scripts/peers/openbao` and nginx (both installed by `scripts/install-test-deps`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::common::grants::{curl_granted, revoke, Keys};
use crate::common::nginx::Nginx;
use crate::common::openbao::{OpenBao, ISSUER_POLICY_BASE};
use crate::common::*;
use crate::websocket::{py_client, texts, WsUpstream};

const AUDIENCE: &str = "sidekey-mtls-test";

/// Serial numbers compared as nginx and OpenBao spell them: hex digits, lower case.
fn serial(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_ascii_lowercase()
        .trim_start_matches('0')
        .to_string()
}

/// OpenBao with the PKI engine (role `agent`: `*.internal`, `*.test.local`, leases), jwt auth
/// for a fresh pod identity whose tokens may sign with the role; nginx requiring certificates
/// from that PKI.
struct Pki {
    bao: OpenBao,
    identity: Identity,
    nginx: Nginx,
    /// Behind nginx's `/ws/`.
    _ws: WsUpstream,
}

impl Pki {
    fn start(env: &Env) -> Pki {
        let bao = OpenBao::start();
        bao.enable_pki("agent", "20s");
        bao.write_policy(
            "agent",
            &format!(
                "{ISSUER_POLICY_BASE}\npath \"pki/sign/agent\" {{ capabilities = [\"create\", \"update\"] }}\n"
            ),
        );
        let identity = Identity::new("agent-7", AUDIENCE);
        bao.enable_jwt_auth(
            identity.public_pem(),
            "agent",
            AUDIENCE,
            "5m",
            "10m",
            &["agent"],
        );
        let ca = bao.api_ok("GET", "pki/cert/ca", None);
        let ca_pem = ca["data"]["certificate"]
            .as_str()
            .expect("PKI CA")
            .to_string();
        let ws = WsUpstream::start(None);
        let nginx = Nginx::mtls(&env.ca, &["mtls.test.local"], &ca_pem, Some(&ws.addr()));
        Pki {
            bao,
            identity,
            nginx,
            _ws: ws,
        }
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("bao", self.bao.address()),
            (
                "identity_token",
                self.identity.token_file().display().to_string(),
            ),
            ("nginx", self.nginx.addr().to_string()),
        ]
    }

    /// Serial numbers OpenBao has revoked (`LIST pki/certs/revoked`).
    fn revoked(&self) -> BTreeSet<String> {
        let (status, v) = self.bao.api("LIST", "pki/certs/revoked", None);
        if status == 404 {
            return BTreeSet::new();
        }
        assert_eq!(status, 200, "{v}");
        v["data"]["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(serial)
            .collect()
    }
}

const CONFIG: &str = r#"upstream:
  extra_ca_files: ["{test_ca}"]
  resolve:
    "mtls.test.local:443": "{nginx}"
    "refused.test.local:443": "{nginx}"
identity:
  token_file: "{identity_token}"
issuers:
  bao:
    kind: vault
    address: "{bao}"
    auth: { method: jwt, role: agent }
credentials:
  agent-cert:
    issuer: bao
    path: pki/sign/agent
    certificate:
      common_name: agent.internal
      alt_names: [agent.test.local]
    ttl: 12s
  # The role only signs names under internal and test.local.
  outside:
    issuer: bao
    path: pki/sign/agent
    certificate: { common_name: agent.example.com }
routes:
  # Same host as `mtls` (same TLS server name, so a session could be resumed across them).
  - name: nocert
    hosts: [mtls.test.local]
    paths: ["/open/**"]
    methods: [GET]
    allow_private: true
  - name: mtls
    hosts: [mtls.test.local]
    methods: [GET]
    client_certificate: agent-cert
    allow_private: true
  - name: refused
    hosts: [refused.test.local]
    methods: [GET]
    client_certificate: outside
    allow_private: true
"#;

fn get(sk: &Sidekey, host: &str, path: &str) -> CurlResult {
    curl_via(sk, &[&format!("https://{host}{path}")])
}

/// The record of the request to `path`.
fn record_of(sk: &Sidekey, path: &str) -> Value {
    let p = path.to_string();
    sk.wait_audit(
        move |r| r["type"] == "request" && r["path"] == p.as_str(),
        1,
        Duration::from_secs(10),
    )
    .remove(0)
}

/// A request through the mTLS route: what nginx verified, checked against the audit record.
/// Returns the serial.
#[track_caller]
fn verified(sk: &Sidekey, path: &str) -> String {
    let res = get(sk, "mtls.test.local", path);
    res.assert_status(200);
    let seen = res.json();
    assert_eq!(seen["verify"], "SUCCESS", "{seen}");
    let subject = seen["subject"].as_str().unwrap_or_default();
    assert!(subject.contains("CN=agent.internal"), "{seen}");
    let record = record_of(sk, path);
    assert_eq!(record["route"], "mtls", "{record}");
    assert_eq!(record["client_certificate"], "agent-cert", "{record}");
    assert!(
        record.get("credential").is_none_or(Value::is_null),
        "{record}"
    );
    let id = record["client_certificate_id"]
        .as_str()
        .expect("serial in the record");
    assert!(
        id.contains(':'),
        "OpenBao's spelling of the serial: {record}"
    );
    let presented = serial(seen["serial"].as_str().unwrap_or_default());
    assert_eq!(
        serial(id),
        presented,
        "the audit names the certificate nginx verified"
    );
    presented
}

#[test]
fn a_route_presents_its_pki_certificate_and_only_that_route_does() {
    let env = Env::new();
    let pki = Pki::start(&env);
    let mut sk = env.sidekey_with(CONFIG, &pki.vars());

    let first = verified(&sk, "/one");
    // The same certificate on the next requests (one per credential generation, not per
    // request).
    assert_eq!(verified(&sk, "/two"), first);

    // Another route to the same server name presents nothing, even though a TLS session
    // established with the certificate could be resumed: nginx refuses it.
    let res = get(&sk, "mtls.test.local", "/open/three");
    assert_eq!(
        res.status,
        400,
        "nginx requires a certificate: {}",
        res.body_str()
    );
    assert!(
        res.body_str()
            .contains("No required SSL certificate was sent"),
        "{}",
        res.body_str()
    );
    let record = record_of(&sk, "/open/three");
    assert_eq!(record["route"], "nocert", "{record}");
    assert!(record.get("client_certificate").is_none(), "{record}");

    // A certificate the PKI will not sign: the request is refused, nothing is sent.
    let res = get(&sk, "refused.test.local", "/four");
    let body = res.expect_refusal(503, "credential_unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("issuer refused"),
        "{body}"
    );
    let record = record_of(&sk, "/four");
    assert_eq!(record["client_certificate"], "outside", "{record}");
    assert!(record.get("client_certificate_id").is_none(), "{record}");

    // A WebSocket through the route: its upgrade goes on a connection of its own that presents
    // the certificate (nginx proxies it and passes on the serial it verified).
    let result = py_client(
        &sk,
        "wss://mtls.test.local/ws/chat",
        true,
        serde_json::json!([["send", "whoami"], ["recv"], ["close", 1000]]),
    );
    assert_eq!(result["status"], 101, "{result}");
    let seen = texts(&result)
        .first()
        .map(|t| serial(t.trim_start_matches("auth=serial=")))
        .unwrap_or_default();
    let record = record_of(&sk, "/ws/chat");
    assert_eq!(record["status"], 101, "{record}");
    assert_eq!(record["client_certificate"], "agent-cert", "{record}");
    assert!(!seen.is_empty(), "{result}");
    assert_eq!(
        serial(record["client_certificate_id"].as_str().unwrap_or_default()),
        seen,
        "the audit names the certificate nginx verified for the WebSocket: {record}"
    );

    // The 12 s certificate is replaced before it expires, and the new one is presented from
    // then on (not a pooled connection made with the old one).
    sk.wait_audit(
        |r| {
            r["type"] == "credential"
                && r["credential"] == "agent-cert"
                && r["event"] == "refreshed"
        },
        1,
        Duration::from_secs(20),
    );
    let second = verified(&sk, "/five");
    assert_ne!(second, first, "a new certificate after the refresh");
    let events: Vec<Value> = sk
        .audit()
        .into_iter()
        .filter(|r| r["type"] == "credential" && r["credential"] == "agent-cert")
        .collect();
    let ids: BTreeSet<String> = events
        .iter()
        .filter_map(|e| e["credential_id"].as_str())
        .map(serial)
        .collect();
    assert!(
        ids.contains(&first) && ids.contains(&second),
        "credential events are keyed by the serial: {events:#?}"
    );

    // At shutdown every certificate's lease is revoked, and with it the certificate.
    sk.terminate();
    let leases = pki.bao.list_leases("pki/sign/agent");
    assert!(leases.is_empty(), "leases left: {leases:?}");
    let revoked = pki.revoked();
    assert!(
        revoked.contains(&first) && revoked.contains(&second),
        "{first} and {second} revoked: {revoked:?}"
    );

    // The key never left sidekey: nothing PEM-shaped in what it wrote.
    for (what, text) in [("stderr", sk.stderr()), ("audit", sk.stdout_text())] {
        assert!(!text.contains("PRIVATE KEY"), "{what}:\n{text}");
        assert!(!text.contains("BEGIN CERTIFICATE"), "{what}:\n{text}");
    }
}

#[test]
fn each_task_gets_a_certificate_of_its_own_naming_it() {
    let env = Env::new();
    let pki = Pki::start(&env);
    let keys = Keys::new();
    let config = format!(
        r#"upstream:
  extra_ca_files: ["{{test_ca}}"]
  resolve:
    "mtls.test.local:443": "{{nginx}}"
identity:
  token_file: "{{identity_token}}"
issuers:
  bao:
    kind: vault
    address: "{{bao}}"
    auth: {{ method: jwt, role: agent }}
credentials:
  task-cert:
    issuer: bao
    path: pki/sign/agent
    certificate: {{ common_name: "{{task_id}}.tasks.internal" }}
    per_task: true
routes:
  - name: mtls
    hosts: [mtls.test.local]
    methods: [GET]
    client_certificate: task-cert
    allow_private: true
{}"#,
        keys.section(false)
    );
    let mut sk = env.sidekey_with(&config, &pki.vars());
    let url = |path: &str| format!("https://mtls.test.local{path}");
    let grant_1 = keys.sign(crate::common::grants::AUDIENCE, "agent-a", "t-1", &[]);
    let grant_2 = keys.sign(crate::common::grants::AUDIENCE, "agent-a", "t-2", &[]);

    let mut serials = Vec::new();
    for (grant, task, path) in [
        (&grant_1, "t-1", "/task-one"),
        (&grant_2, "t-2", "/task-two"),
        (&grant_1, "t-1", "/task-one-again"),
    ] {
        let res = curl_granted(&sk, grant, &[&url(path)]);
        res.assert_status(200);
        let seen = res.json();
        assert_eq!(seen["verify"], "SUCCESS", "{seen}");
        assert!(
            seen["subject"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("CN={task}.tasks.internal")),
            "{seen}"
        );
        let record = record_of(&sk, path);
        assert_eq!(record["task_id"], task, "{record}");
        let id = record["client_certificate_id"].as_str().unwrap_or_default();
        assert_eq!(
            serial(id),
            serial(seen["serial"].as_str().unwrap_or_default())
        );
        serials.push(serial(id));
    }
    assert_ne!(serials[0], serials[1], "one certificate per task");
    assert_eq!(serials[0], serials[2], "a task keeps its certificate");

    // No grant, no certificate.
    curl_via(&sk, &[&url("/no-grant")]).expect_refusal(407, "grant_required");

    // A revoked grant's certificate is revoked with it.
    let out = revoke(&sk, &grant_1, None);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        eventually(Duration::from_secs(10), || pki
            .revoked()
            .contains(&serials[0])),
        "task t-1's certificate revoked with its grant: {:?}",
        pki.revoked()
    );
    assert!(!pki.revoked().contains(&serials[1]), "t-2's still valid");
    sk.terminate();
    assert!(
        pki.revoked().contains(&serials[1]),
        "t-2's revoked at shutdown"
    );
}

#[test]
fn the_certificate_config_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidekey.yaml");
    std::fs::write(
        &file,
        r#"issuers:
  bao:
    kind: vault
    address: "http://127.0.0.1:8200"
    auth: { method: jwt, role: agent, token_file: /dev/null }
credentials:
  issued:
    issuer: bao
    path: pki/issue/agent
    field: certificate
    certificate: { common_name: agent.internal }
  token:
    issuer: bao
    path: secret/data/api
    field: token
  templated:
    issuer: bao
    path: pki/sign/agent
    certificate: { common_name: "{task_id}.internal" }
routes:
  - name: both
    hosts: [mtls.test.local]
    schemes: [http, https]
    methods: [GET]
    client_certificate: token
  - name: as-token
    hosts: [other.test.local]
    methods: [GET]
    credential: issued
    inject: { header: Authorization }
"#,
    )
    .unwrap();
    let out = run_check(&file);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    for expected in [
        "`path` of credential `issued` is not a PKI `sign` path: `pki/issue/agent`",
        "use `pki/sign/agent`",
        "`field` does not apply to credential `issued`: it is a `certificate`",
        "credential `token` is not a certificate",
        "presents a client certificate but allows `http`",
        "attaches certificate credential `issued` as a token",
        "names `{task_id}.internal`, but credential `templated` is not `per_task`",
    ] {
        assert!(
            out.stderr.contains(expected),
            "{expected:?} in:\n{}",
            out.stderr
        );
    }
}
