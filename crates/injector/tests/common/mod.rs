//! Shared pieces of the injector's tests: pods as the API server sends them to a mutating
//! webhook (defaults applied, the default service-account token already mounted by the
//! ServiceAccount admission plugin), applying a JSON patch, and validating objects against the
//! Kubernetes 1.32 schemas with `kubernetes-validate` (installed by `scripts/peers/k8s`).

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

/// `${XDG_CACHE_HOME:-$HOME/.cache}/sidekey/peers/k8s/bin/<name>` (helm, kubectl,
/// kubernetes-validate), as installed by `scripts/peers/k8s`.
pub fn k8s_tool(name: &str) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME");
    let path = cache.join("sidekey/peers/k8s/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-test-deps (or scripts/peers/k8s)",
        path.display()
    );
    path
}

/// Validates every object against the Kubernetes 1.32 schemas (strict: unknown fields are
/// errors). Panics with kubernetes-validate's output when one does not validate.
pub fn validate(objects: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    // JSON documents are YAML documents. kubernetes-validate needs a name, which a pod created
    // from `generateName` only gets after admission: give it the one the API server would.
    let text: Vec<String> = objects
        .iter()
        .map(|o| {
            let mut o = o.clone();
            if o["metadata"]["name"].is_null() {
                let prefix = o["metadata"]["generateName"]
                    .as_str()
                    .unwrap_or("x-")
                    .to_string();
                o["metadata"]["name"] = Value::String(format!("{prefix}q2x8w"));
            }
            serde_json::to_string_pretty(&o).unwrap()
        })
        .collect();
    std::fs::write(&file, text.join("\n---\n")).unwrap();
    validate_file(&file);
}

/// `kubernetes-validate --strict -k 1.32.0 <file>`; panics unless it passes.
pub fn validate_file(file: &std::path::Path) {
    let out = Command::new(k8s_tool("kubernetes-validate"))
        .args(["--strict", "-k", "1.32.0"])
        .arg(file)
        .output()
        .expect("run kubernetes-validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stdout.contains("ERROR") && !stderr.contains("ERROR"),
        "kubernetes-validate failed on {}:\n{stdout}\n{stderr}\n--- file ---\n{}",
        file.display(),
        std::fs::read_to_string(file).unwrap_or_default()
    );
}

/// A container as the API server has defaulted it, mounting the default token.
pub fn container(name: &str, image: &str) -> Value {
    json!({
        "name": name,
        "image": image,
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "volumeMounts": [{
            "name": "kube-api-access-x7k2p",
            "readOnly": true,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
        }]
    })
}

/// A pod as a mutating webhook receives it on CREATE from a ReplicaSet: generateName, no name
/// yet, defaults applied, the default token volume added.
pub fn pod(annotations: Value, containers: Vec<Value>) -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": "agent-7d9c6b5f4-",
            "namespace": "agents",
            "creationTimestamp": null,
            "labels": { "app": "agent", "pod-template-hash": "7d9c6b5f4" },
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "agent-7d9c6b5f4",
                "uid": "5b0c8a4e-0f0e-4f39-9c57-1c2b4a1f0d11",
                "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "volumes": [{
                "name": "kube-api-access-x7k2p",
                "projected": {
                    "sources": [
                        { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
                        { "configMap": { "name": "kube-root-ca.crt", "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                        { "downwardAPI": { "items": [{ "path": "namespace", "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } }
                    ],
                    "defaultMode": 420
                }
            }],
            "containers": containers,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 },
                { "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 }
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    })
}

/// The pod annotated for injection.
pub fn agent_pod() -> Value {
    pod(
        json!({ "sidekey.dev/inject": "true" }),
        vec![container("agent", "python:3.12-slim")],
    )
}

/// `doc` with `patch` applied (fails the test if the patch does not apply).
pub fn apply(doc: &Value, patch: &json_patch::Patch) -> Value {
    let mut out = doc.clone();
    json_patch::patch(&mut out, patch).unwrap_or_else(|e| {
        panic!(
            "patch does not apply: {e}\n--- patch ---\n{}\n--- pod ---\n{}",
            serde_json::to_string_pretty(patch).unwrap(),
            serde_json::to_string_pretty(doc).unwrap()
        )
    });
    out
}

/// The value of `name` in a container's env, if set by value.
pub fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

/// How many times `name` appears in a container's env.
pub fn env_count(container: &Value, name: &str) -> usize {
    container["env"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["name"] == name).count())
        .unwrap_or(0)
}

/// The mount of `volume` in a container.
pub fn mount<'a>(container: &'a Value, volume: &str) -> Option<&'a Value> {
    container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == volume)
}

/// The volume named `name`.
pub fn volume<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
}
