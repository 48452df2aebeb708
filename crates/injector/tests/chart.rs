//! The Helm chart (helm/sidekey) and the plain manifests (deploy/kubernetes/), with the real
//! `helm` 3 binary (scripts/peers/k8s): `helm lint --strict`, `helm template` in every TLS mode
//! and a few value sets, every rendered object validated against the Kubernetes 1.32 schemas,
//! and the parts that must agree checked against each other — the webhook paths and the
//! injector's routes, the Deployment's flags and the injector binary (started with them and the
//! chart-generated certificate, then called through the `caBundle` the chart wrote), the default
//! sidekey config and the paths the injector mounts. No kube-apiserver is installable here, so
//! this is as far as the chart can be taken without a cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use sidekey_injector::{plan, sidecar, Outcome, Settings, Trigger};

const NS: &str = "sidekey-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart() -> PathBuf {
    repo().join("helm/sidekey")
}

fn helm(args: &[&str]) -> String {
    let out = Command::new(k8s_tool("helm"))
        .args(args)
        .output()
        .expect("run helm");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// YAML stream → JSON documents (PyYAML from kubernetes-validate's venv).
fn yaml_docs(yaml: &str) -> Vec<Value> {
    let python = k8s_tool("kubernetes-validate")
        .canonicalize()
        .unwrap()
        .parent()
        .unwrap()
        .join("python");
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "YAML did not parse:\n{yaml}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Renders the chart with `set` values, validates the output, returns its objects.
fn render(set: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "sidekey",
        chart.to_str().unwrap(),
        "--namespace",
        NS,
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    let yaml = helm(&args);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &yaml).unwrap();
    validate_file(&file);
    yaml_docs(&yaml)
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objects, kind);
    assert_eq!(found.len(), 1, "one {kind} expected: {found:?}");
    found[0]
}

#[test]
fn chart_lints_clean() {
    let out = helm(&["lint", "--strict", chart().to_str().unwrap()]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let out = helm(&[
        "lint",
        "--strict",
        chart().to_str().unwrap(),
        "--set",
        "tls.certManager.enabled=true",
    ]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn self_signed_install_serves_the_webhook_through_its_ca_bundle() {
    let objects = render(&["config.namespaces={agents,research}"]);

    // Least privilege: no RBAC at all, no token in the injector.
    for kind in ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"] {
        assert!(find(&objects, kind).is_empty(), "{kind} rendered");
    }
    let sa = one(&objects, "ServiceAccount");
    assert_eq!(sa["automountServiceAccountToken"], false);

    let deploy = one(&objects, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    let pdb = one(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let svc = one(&objects, "Service");
    assert_eq!(
        svc["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    // The webhook configuration.
    let webhook = one(&objects, "MutatingWebhookConfiguration");
    let entries = webhook["webhooks"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let paths: Vec<&str> = entries
        .iter()
        .map(|w| w["clientConfig"]["service"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/inject", "/inject/namespace"]);
    for w in entries {
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
        assert_eq!(w["timeoutSeconds"], 10);
        assert_eq!(
            w["clientConfig"]["service"]["name"],
            svc["metadata"]["name"]
        );
        assert_eq!(w["clientConfig"]["service"]["namespace"], NS);
        assert_eq!(w["rules"][0]["operations"], json!(["CREATE"]));
        assert_eq!(w["rules"][0]["resources"], json!(["pods"]));
        let excluded = &w["namespaceSelector"]["matchExpressions"][0];
        assert_eq!(excluded["key"], "kubernetes.io/metadata.name");
        assert_eq!(excluded["operator"], "NotIn");
        let names: Vec<&str> = excluded["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"kube-system") && names.contains(&NS),
            "{names:?}"
        );
        let not_self = &w["objectSelector"]["matchExpressions"][0];
        assert_eq!(not_self["operator"], "NotIn");
        assert_eq!(not_self["values"], json!(["sidekey-injector"]));
    }
    assert_eq!(
        entries[0]["namespaceSelector"]["matchExpressions"][1]["operator"],
        "NotIn"
    );
    assert_eq!(
        entries[1]["namespaceSelector"]["matchExpressions"][1]["operator"],
        "In"
    );

    // The default sidekey config: in each listed namespace, valid, with the injector's paths.
    let maps = find(&objects, "ConfigMap");
    let namespaces: Vec<&str> = maps
        .iter()
        .map(|m| m["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["agents", "research"]);
    for m in &maps {
        assert_eq!(m["metadata"]["name"], "sidekey");
        check_sidekey_config(m["data"]["sidekey.yaml"].as_str().unwrap(), "chart default");
    }

    // TLS: the Secret's certificate is signed by the caBundle the webhook carries, for the
    // Service's DNS name. Prove it: run the injector with the Deployment's flags and that
    // Secret, and call it as the API server would, trusting only the caBundle.
    let secret = one(&objects, "Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let ca_bundle = b64(&entries[0]["clientConfig"]["caBundle"]);
    assert_eq!(ca_bundle, b64(&entries[1]["clientConfig"]["caBundle"]));
    assert_eq!(ca_bundle, b64(&secret["data"]["ca.crt"]));
    let dir = tempfile::tempdir().unwrap();
    let (crt, key, ca) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    std::fs::write(&crt, b64(&secret["data"]["tls.crt"])).unwrap();
    std::fs::write(&key, b64(&secret["data"]["tls.key"])).unwrap();
    std::fs::write(&ca, &ca_bundle).unwrap();
    let mut args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .filter(|a| !a.starts_with("--listen") && !a.starts_with("--tls-"))
        .collect();
    args.push(format!("--tls-cert={}", crt.display()));
    args.push(format!("--tls-key={}", key.display()));
    let port = free_port();
    args.push(format!("--listen=127.0.0.1:{port}"));
    let mut injector = Command::new(env!("CARGO_BIN_EXE_sidekey-injector"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the injector with the chart's flags");
    let host = format!("sidekey-injector.{NS}.svc");
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "chart-uid",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": "agents",
            "operation": "CREATE",
            "object": agent_pod(),
            "dryRun": false
        }
    });
    let body = dir.path().join("review.json");
    std::fs::write(&body, review.to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
            .arg(&ca)
            .arg("--resolve")
            .arg(format!("{host}:{port}:127.0.0.1"))
            .args(["-H", "content-type: application/json", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg(format!("https://{host}:{port}{}", paths[0]))
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .output()
            .unwrap();
        if out.status.success() {
            break serde_json::from_slice::<Value>(&out.stdout).unwrap();
        }
        if Instant::now() > deadline || matches!(injector.try_wait(), Ok(Some(_))) {
            let _ = injector.kill();
            let mut log = String::new();
            use std::io::Read;
            let _ = injector.stderr.take().unwrap().read_to_string(&mut log);
            panic!(
                "the injector with the chart's flags and certificate did not answer: {}\n{log}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = injector.kill();
    let _ = injector.wait();
    assert_eq!(response["response"]["uid"], "chart-uid");
    let patch: json_patch::Patch = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(response["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let patched = apply(&agent_pod(), &patch);
    // The chart's sidecar values reached the pod.
    let s = &patched["spec"]["initContainers"][0];
    assert_eq!(s["image"], "ghcr.io/sidekey-dev/sidekey:0.1.0");
    assert_eq!(s["resources"]["limits"]["memory"], "256Mi");
    validate(&[patched]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn cert_manager_and_other_values() {
    let objects = render(&["tls.certManager.enabled=true"]);
    assert!(
        find(&objects, "Secret").is_empty(),
        "no key material rendered"
    );
    let cert = one(&objects, "Certificate");
    let names = cert["spec"]["dnsNames"].as_array().unwrap();
    assert!(
        names.contains(&json!(format!("sidekey-injector.{NS}.svc"))),
        "{names:?}"
    );
    let issuer = one(&objects, "Issuer");
    assert_eq!(
        cert["spec"]["issuerRef"]["name"],
        issuer["metadata"]["name"]
    );
    let deploy = one(&objects, "Deployment");
    assert_eq!(
        cert["spec"]["secretName"],
        deploy["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    );
    let webhook = one(&objects, "MutatingWebhookConfiguration");
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NS}/{}", cert["metadata"]["name"].as_str().unwrap())
    );
    for w in webhook["webhooks"].as_array().unwrap() {
        assert!(
            w["clientConfig"]["caBundle"].is_null(),
            "cainjector fills it"
        );
    }

    // An existing issuer; legacy mode; Ignore; extra exclusions and an object selector.
    let objects = render(&[
        "tls.certManager.enabled=true",
        "tls.certManager.issuerRef.name=corp-ca",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
        "sidecar.mode=legacy",
        "sidecar.noProxy={10.0.0.0/8,.corp.example}",
        "webhook.failurePolicy=Ignore",
        "webhook.excludedNamespaces={monitoring}",
        "webhook.objectSelector.matchLabels.sidekey\\.dev/inject=true",
        "injector.pdb.enabled=false",
    ]);
    assert!(find(&objects, "Issuer").is_empty());
    assert!(find(&objects, "PodDisruptionBudget").is_empty());
    assert_eq!(
        one(&objects, "Certificate")["spec"]["issuerRef"]["kind"],
        "ClusterIssuer"
    );
    let args =
        one(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("--sidecar-mode=legacy")),
        "{args}"
    );
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("--no-proxy=10.0.0.0/8,.corp.example")),
        "{args}"
    );
    let webhook = one(&objects, "MutatingWebhookConfiguration");
    let pods = &webhook["webhooks"][0];
    assert_eq!(pods["failurePolicy"], "Ignore");
    assert_eq!(
        pods["objectSelector"]["matchLabels"]["sidekey.dev/inject"],
        "true"
    );
    assert!(
        webhook["webhooks"][1]["objectSelector"]["matchLabels"].is_null(),
        "the namespace webhook takes every pod of its namespaces"
    );
    let excluded = &pods["namespaceSelector"]["matchExpressions"][0]["values"];
    assert!(
        excluded.as_array().unwrap().contains(&json!("monitoring")),
        "{excluded}"
    );
}

/// A sidekey config parses, and writes/reads where the injector mounts things.
fn check_sidekey_config(yaml: &str, origin: &str) {
    let config = sidekey_config::parse(yaml, origin).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.ca.cert_out.as_deref(),
        Some(Path::new(sidecar::CA_FILE)),
        "{origin}"
    );
    assert_eq!(
        config.ca.bundle_out.as_deref(),
        Some(Path::new(sidecar::BUNDLE_FILE)),
        "{origin}"
    );
    let token = config.identity.as_ref().map(|i| i.token_file.as_path());
    assert_eq!(token, Some(Path::new(sidecar::TOKEN_FILE)), "{origin}");
    assert_eq!(
        config.listen.admin,
        Some("127.0.0.1:15090".parse().unwrap()),
        "{origin}: the probes ask the default admin address"
    );
    assert_eq!(
        config.listen.forward,
        Some("127.0.0.1:15080".parse().unwrap()),
        "{origin}"
    );
}

#[test]
fn plain_manifests_are_rendered_from_the_chart() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(repo().join("deploy/kubernetes/render"))
        .arg(dir.path())
        .env("HELM", k8s_tool("helm"))
        .output()
        .expect("run deploy/kubernetes/render");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = std::fs::read_to_string(dir.path().join("sidekey-injector.yaml")).unwrap();
    let committed =
        std::fs::read_to_string(repo().join("deploy/kubernetes/sidekey-injector.yaml")).unwrap();
    assert!(
        fresh == committed,
        "deploy/kubernetes/sidekey-injector.yaml is out of date with helm/sidekey: run deploy/kubernetes/render"
    );
}

#[test]
fn plain_manifests_and_examples_validate() {
    let dir = repo().join("deploy/kubernetes");
    let files = [
        dir.join("sidekey-injector.yaml"),
        dir.join("example-agent.yaml"),
        dir.join("openbao/sidekey-config.yaml"),
    ];
    for file in &files {
        validate_file(file);
    }
    let agent = yaml_docs(&std::fs::read_to_string(&files[1]).unwrap());
    let openbao = yaml_docs(&std::fs::read_to_string(&files[2]).unwrap());
    for (objects, origin) in [
        (&agent, "example-agent.yaml"),
        (&openbao, "openbao/sidekey-config.yaml"),
    ] {
        for m in find(objects, "ConfigMap") {
            check_sidekey_config(m["data"]["sidekey.yaml"].as_str().unwrap(), origin);
        }
    }

    // The example Deployment's pod, as the API server would send it, through the injector.
    let deploy = one(&agent, "Deployment");
    let template = &deploy["spec"]["template"];
    let mut raw = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template["metadata"].clone(),
        "spec": template["spec"].clone(),
    });
    raw["metadata"]["generateName"] = json!("research-agent-6f7d8-");
    raw["metadata"]["namespace"] = json!("agents");
    let config_map = raw["metadata"]["annotations"]["sidekey.dev/config"].clone();
    assert_eq!(config_map, find(&agent, "ConfigMap")[0]["metadata"]["name"]);
    let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
    let Outcome::Inject { patch, warnings } =
        plan(&pod, &raw, &Settings::default(), Trigger::PodAnnotation)
    else {
        panic!("the example agent is not injected");
    };
    assert!(warnings.is_empty(), "{warnings:?}");
    let patched = apply(&raw, &patch);
    assert_eq!(patched["spec"]["automountServiceAccountToken"], false);
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "sidekey");
    let agent_env = &patched["spec"]["containers"][0];
    assert_eq!(env(agent_env, "HTTPS_PROXY"), Some(sidecar::PROXY_URL));
    assert!(env(agent_env, "NO_PROXY")
        .unwrap()
        .contains("models.agents.svc"));
    validate(&[patched]);
}

#[test]
fn sidecar_metrics_and_the_pod_monitor() {
    let args = |objects: &[Value]| {
        one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .clone()
    };
    // Off by default: no port for the injector to add, no PodMonitor.
    let objects = render(&[]);
    assert!(find(&objects, "PodMonitor").is_empty());
    assert!(
        !args(&objects)
            .iter()
            .any(|a| a.as_str().unwrap_or("").starts_with("--metrics-port")),
        "{:?}",
        args(&objects)
    );

    let on = [
        "sidecar.metrics.enabled=true",
        "sidecar.metrics.podMonitor.enabled=true",
        "sidecar.metrics.podMonitor.labels.release=kube-prometheus",
    ];
    let objects = render(&on);
    assert!(
        args(&objects).contains(&json!("--metrics-port=15091")),
        "{:?}",
        args(&objects)
    );
    let monitor = one(&objects, "PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["namespace"], NS);
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus");
    assert_eq!(monitor["spec"]["namespaceSelector"]["any"], true);
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    // The name the injector gives the sidecar's port (crates/injector/src/sidecar.rs).
    assert_eq!(
        endpoint["port"],
        sidekey_injector::sidecar::METRICS_PORT_NAME
    );
    assert_eq!(endpoint["path"], "/metrics");

    // The port alone, without a PodMonitor (a scrape config of one's own).
    let objects = render(&["sidecar.metrics.enabled=true", "sidecar.metrics.port=9464"]);
    assert!(find(&objects, "PodMonitor").is_empty());
    assert!(args(&objects).contains(&json!("--metrics-port=9464")));

    let chart = chart();
    let mut lint = vec!["lint", "--strict", chart.to_str().unwrap()];
    for value in &on {
        lint.extend(["--set", value]);
    }
    let out = helm(&lint);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}
