//! The real `sidekey-injector` binary served over HTTPS (certificate from files, as the chart
//! mounts them), called with AdmissionReview v1 requests shaped exactly like the API server's
//! (uid, kind, resource, requestKind, userInfo, object, oldObject, dryRun, options) by real
//! clients: reqwest over HTTP/2 (what the API server speaks) and curl over HTTP/1.1. Patched
//! pods are decoded, applied, and validated against the Kubernetes 1.32 schemas. Also: the
//! serving certificate is reloaded when its files change.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ca::TestCa;
use crate::common::*;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

/// The name the API server dials: `<service>.<namespace>.svc`.
const HOST: &str = "sidekey-injector.sidekey-system.svc";

struct Injector {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Injector {
    fn start(ca: &TestCa, extra: &[&str]) -> Injector {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        write_pair(ca, &cert, &key);
        let mut child = Command::new(env!("CARGO_BIN_EXE_sidekey-injector"))
            .args(["--listen", "127.0.0.1:0", "--tls-reload-every", "1s"])
            .args(["--image", "registry.test/sidekey:1.2.3"])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(extra)
            .env("SIDEKEY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sidekey-injector");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("addr=").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("injector did not start: {:?}", log.lock().unwrap()))
            .parse()
            .expect("listen address");
        Injector {
            child,
            addr,
            log,
            cert,
            key,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn client(&self, ca: &TestCa) -> reqwest::Client {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::ca::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .resolve(HOST, self.addr)
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("https://{HOST}:{}{path}", self.addr.port())
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- injector log ---\n{}", self.log());
        }
    }
}

fn write_pair(ca: &TestCa, cert: &Path, key: &Path) {
    let leaf = ca.issue(&[HOST]);
    // The chain as cert-manager writes it: leaf, then the CA.
    std::fs::write(cert, format!("{}{}", leaf.cert_pem, ca.cert_pem())).unwrap();
    std::fs::write(key, leaf.key_pem).unwrap();
}

/// An AdmissionReview v1 as the API server posts it for a pod CREATE.
fn review(uid: &str, object: &Value, dry_run: bool) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
            "requestResource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": "agents",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "0d4b1a4e-7d6b-4b8e-8a53-6b1f2f9a0c11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": object,
            "oldObject": null,
            "dryRun": dry_run,
            "options": { "kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1" }
        }
    })
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Value {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .json(body)
        .send()
        .await
        .expect("POST to the webhook");
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "the API server speaks h2"
    );
    assert_eq!(response.status(), 200);
    let review: Value = response.json().await.expect("JSON response");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert!(review.get("request").is_none(), "the request is not echoed");
    review
}

/// The patched pod from a response (which must carry a JSONPatch).
fn patched(object: &Value, response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("patch"))
        .expect("base64 patch");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSON patch");
    apply(object, &patch)
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_reviews_over_https() {
    let ca = TestCa::new("sidekey-injector test CA");
    let injector = Injector::start(
        &ca,
        &["--token-audience", "vault", "--no-proxy", "10.0.0.0/8"],
    );
    let client = injector.client(&ca);
    let inject = injector.url("/inject");
    let mut to_validate = Vec::new();

    // Annotated pod: allowed with a patch that adds sidekey.
    let pod = agent_pod();
    let r = post(
        &client,
        &inject,
        &review("705ab4f5-6393-11e8-b7cc-42010a800002", &pod, false),
    )
    .await;
    let response = &r["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    let out = patched(&pod, response);
    assert_eq!(out["spec"]["initContainers"][0]["name"], "sidekey");
    assert_eq!(
        out["spec"]["initContainers"][0]["image"],
        "registry.test/sidekey:1.2.3"
    );
    let audience = &volume(&out, "sidekey-token").unwrap()["projected"]["sources"][0]
        ["serviceAccountToken"]["audience"];
    assert_eq!(audience, "vault");
    let agent = &out["spec"]["containers"][0];
    assert_eq!(env(agent, "HTTPS_PROXY"), Some("http://127.0.0.1:15080"));
    assert!(env(agent, "NO_PROXY").unwrap().ends_with(",10.0.0.0/8"));
    to_validate.push(out);

    // dryRun: the same answer (the injector has no side effects).
    let r = post(&client, &inject, &review("uid-dry", &pod, true)).await;
    to_validate.push(patched(&pod, &r["response"]));

    // Not annotated: allowed, untouched, no warning.
    let plain = pod_named(json!({}));
    let r = post(&client, &inject, &review("uid-plain", &plain, false)).await;
    assert_eq!(r["response"]["allowed"], true);
    assert!(r["response"].get("patch").is_none(), "{r}");
    assert!(r["response"].get("warnings").is_none(), "{r}");

    // ... but through the namespace webhook it is injected.
    let r = post(
        &client,
        &injector.url("/inject/namespace"),
        &review("uid-ns", &plain, false),
    )
    .await;
    let out = patched(&plain, &r["response"]);
    assert_eq!(
        out["metadata"]["annotations"]["sidekey.dev/status"],
        "injected"
    );
    to_validate.push(out.clone());

    // Already injected: allowed, no patch.
    let r = post(&client, &inject, &review("uid-again", &out, false)).await;
    assert_eq!(r["response"]["allowed"], true);
    assert!(r["response"].get("patch").is_none(), "{r}");

    // hostNetwork: allowed untouched, and the author is told why.
    let mut host = agent_pod();
    host["spec"]["hostNetwork"] = json!(true);
    let r = post(&client, &inject, &review("uid-host", &host, false)).await;
    assert_eq!(r["response"]["allowed"], true);
    assert!(r["response"].get("patch").is_none());
    let warning = r["response"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("hostNetwork"), "{warning}");

    // A malformed annotation: refused, with the reason.
    let bad =
        pod_named(json!({ "sidekey.dev/inject": "true", "sidekey.dev/sidecar-mode": "sometimes" }));
    let r = post(&client, &inject, &review("uid-bad", &bad, false)).await;
    assert_eq!(r["response"]["uid"], "uid-bad");
    assert_eq!(r["response"]["allowed"], false);
    assert_eq!(r["response"]["status"]["code"], 400);
    let message = r["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("sidekey.dev/sidecar-mode"), "{message}");

    // Something the injector cannot read as a pod: admitted, never refused for its own sake.
    let odd = json!({ "kind": "Pod", "apiVersion": "v1", "metadata": { "name": "odd" }, "spec": { "containers": "not a list" } });
    let r = post(&client, &inject, &review("uid-odd", &odd, false)).await;
    assert_eq!(r["response"]["allowed"], true);
    assert!(r["response"].get("patch").is_none());

    // Not a pod CREATE (an UPDATE, a subresource): allowed untouched.
    let mut update = review("uid-update", &pod, false);
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = pod.clone();
    let r = post(&client, &inject, &update).await;
    assert_eq!(r["response"]["allowed"], true);
    assert!(r["response"].get("patch").is_none());

    // Garbage and wrong versions are the caller's error.
    for body in [
        json!({ "hello": "world" }),
        json!({ "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": { "uid": "x" } }),
    ] {
        let status = client
            .post(&inject)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 400, "{body}");
    }
    let health = client.get(injector.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let wrong = client.get(&inject).send().await.unwrap();
    assert_eq!(wrong.status(), 405);

    // One log line per review, naming the pod and what was done.
    let log = injector.log();
    assert!(
        log.contains("CREATE agents/agent-7d9c6b5f4-*: injected"),
        "{log}"
    );
    assert!(log.contains("hostNetwork pods are not injected"), "{log}");
    assert!(
        log.contains("refused: annotation sidekey.dev/sidecar-mode"),
        "{log}"
    );

    validate(&to_validate);
}

fn pod_named(annotations: Value) -> Value {
    pod(annotations, vec![container("agent", "python:3.12")])
}

#[test]
fn curl_over_http1() {
    let ca = TestCa::new("sidekey-injector curl CA");
    let injector = Injector::start(&ca, &["--sidecar-mode", "legacy"]);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("review.json");
    let pod = agent_pod();
    std::fs::write(&body, review("uid-curl", &pod, false).to_string()).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--http1.1", "--max-time", "10"])
        .arg("--cacert")
        .arg(ca.pem_path())
        .arg("--resolve")
        .arg(format!("{HOST}:{}:127.0.0.1", injector.addr.port()))
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(injector.url("/inject"))
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(r["response"]["uid"], "uid-curl");
    let patched = patched(&pod, &r["response"]);
    // The injector's --sidecar-mode reached the patch.
    assert_eq!(patched["spec"]["containers"][0]["name"], "sidekey");
    validate(&[patched]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_serving_certificate_is_reloaded_when_its_files_change() {
    let old_ca = TestCa::new("old webhook CA");
    let injector = Injector::start(&old_ca, &[]);
    let old_client = injector.client(&old_ca);
    let health = injector.url("/healthz");
    assert_eq!(old_client.get(&health).send().await.unwrap().status(), 200);

    // A half-written pair (key not matching) is not taken: the old one keeps serving.
    let new_ca = TestCa::new("new webhook CA");
    let other = new_ca.issue(&[HOST]);
    std::fs::write(&injector.key, other.key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(old_client.get(&health).send().await.unwrap().status(), 200);
    assert!(
        injector.log().contains("keeping the previous one"),
        "{}",
        injector.log()
    );

    // cert-manager renews: new files, a new CA. New connections get the new certificate.
    write_pair(&new_ca, &injector.cert, &injector.key);
    let new_client = injector.client(&new_ca);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match new_client.get(&health).send().await {
            Ok(r) if r.status() == 200 => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "new certificate never served: {other:?}\n{}",
                    injector.log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let fresh_old = injector.client(&old_ca);
    assert!(
        fresh_old.get(&health).send().await.is_err(),
        "the old certificate must no longer be presented"
    );
    assert!(injector.log().contains("reloaded the serving certificate"));
}
