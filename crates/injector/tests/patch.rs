//! The patch against a table of real pod shapes: each pod (as the API server sends it) goes
//! through `plan`, the patch is applied with a JSON Patch implementation, the resulting pod is
//! checked field by field, and every patched pod is validated against the Kubernetes 1.32
//! schemas at the end.

use crate::common::*;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use sidekey_injector::{plan, Outcome, Settings, SidecarMode, Skip, Trigger};

const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn run(raw: &Value, settings: &Settings, trigger: Trigger) -> Outcome {
    let pod: Pod = serde_json::from_value(raw.clone()).expect("a pod");
    plan(&pod, raw, settings, trigger)
}

/// Injects `raw` and returns the patched pod and the warnings.
#[track_caller]
fn inject(raw: &Value, settings: &Settings, trigger: Trigger) -> (Value, Vec<String>) {
    match run(raw, settings, trigger) {
        Outcome::Inject { patch, warnings } => (apply(raw, &patch), warnings),
        other => panic!("expected an injection, got {other:?}"),
    }
}

#[track_caller]
fn unchanged(raw: &Value, settings: &Settings, trigger: Trigger) -> Skip {
    match run(raw, settings, trigger) {
        Outcome::Unchanged(skip) => skip,
        other => panic!("expected the pod left alone, got {other:?}"),
    }
}

fn sidecar(pod: &Value) -> &Value {
    &pod["spec"]["initContainers"][0]
}

/// What every agent container must look like after injection.
#[track_caller]
fn assert_agent_wired(c: &Value, no_proxy_has: &[&str]) {
    let name = c["name"].as_str().unwrap();
    for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"] {
        assert_eq!(env(c, var), Some("http://127.0.0.1:15080"), "{name}: {var}");
    }
    let no_proxy = env(c, "NO_PROXY").unwrap_or_else(|| panic!("{name}: NO_PROXY"));
    assert_eq!(env(c, "no_proxy"), Some(no_proxy));
    for entry in ["localhost", "127.0.0.1", ".svc", ".cluster.local"]
        .iter()
        .chain(no_proxy_has)
    {
        assert!(
            no_proxy.split(',').any(|e| e == *entry),
            "{name}: NO_PROXY {no_proxy} lacks {entry}"
        );
    }
    assert_eq!(env(c, "SSL_CERT_FILE"), Some("/var/run/sidekey/bundle.pem"));
    assert_eq!(
        env(c, "REQUESTS_CA_BUNDLE"),
        Some("/var/run/sidekey/bundle.pem")
    );
    assert_eq!(
        env(c, "NODE_EXTRA_CA_CERTS"),
        Some("/var/run/sidekey/ca.pem")
    );
    let ca = mount(c, "sidekey-ca").unwrap_or_else(|| panic!("{name}: CA mount"));
    assert_eq!(ca["mountPath"], "/var/run/sidekey");
    assert_eq!(
        ca["readOnly"], true,
        "{name}: the agent cannot write the CA"
    );
    assert!(
        mount(c, "sidekey-token").is_none(),
        "{name}: the sidecar's token must not reach an agent container"
    );
    assert!(mount(c, "sidekey-config").is_none());
}

/// What the sidekey container must look like.
#[track_caller]
fn assert_sidecar(s: &Value, image: &str, config_map_volume: &Value, audience: &str) {
    assert_eq!(s["name"], "sidekey");
    assert_eq!(s["image"], image);
    assert_eq!(s["args"], json!(["run"]));
    assert_eq!(env(s, "SIDEKEY_CONFIG"), Some("/etc/sidekey/sidekey.yaml"));
    let sc = &s["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    for (probe, kind) in [
        ("startupProbe", "ready"),
        ("readinessProbe", "ready"),
        ("livenessProbe", "live"),
    ] {
        assert_eq!(
            s[probe]["exec"]["command"],
            json!(["sidekey", "probe", kind]),
            "{probe}"
        );
    }
    assert!(s["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        mount(s, "sidekey-token").unwrap()["mountPath"],
        "/var/run/secrets/sidekey"
    );
    assert_eq!(mount(s, "sidekey-token").unwrap()["readOnly"], true);
    assert_eq!(mount(s, "sidekey-ca").unwrap()["readOnly"], false);
    assert_eq!(
        mount(s, "sidekey-config").unwrap()["mountPath"],
        "/etc/sidekey"
    );
    assert!(
        mount(s, "kube-api-access-x7k2p").is_none(),
        "sidekey uses its own audience-bound token, not the default one"
    );
    assert_eq!(config_map_volume["configMap"]["optional"], false);
    let _ = audience;
}

#[track_caller]
fn assert_token_volume(pod: &Value, audience: &str) {
    let token = volume(pod, "sidekey-token").expect("token volume");
    let sat = &token["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(sat["audience"], audience);
    assert_eq!(sat["expirationSeconds"], 600);
    assert_eq!(sat["path"], "token");
    let ca = volume(pod, "sidekey-ca").expect("CA volume");
    assert_eq!(ca["emptyDir"]["medium"], "Memory");
}

#[test]
fn the_table() {
    let settings = Settings {
        image: "registry.test/sidekey:1.2.3".to_string(),
        no_proxy: vec!["10.96.0.0/12".to_string()],
        ..Settings::default()
    };
    let mut patched: Vec<Value> = Vec::new();

    // 1. One container, annotated: native sidecar first, everything wired.
    {
        let raw = agent_pod();
        let (pod, warnings) = inject(&raw, &settings, Trigger::PodAnnotation);
        assert!(warnings.is_empty(), "{warnings:?}");
        let init = pod["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(sidecar(&pod)["restartPolicy"], "Always");
        assert!(sidecar(&pod)["lifecycle"].is_null());
        assert_sidecar(
            sidecar(&pod),
            "registry.test/sidekey:1.2.3",
            volume(&pod, "sidekey-config").unwrap(),
            "sidekey",
        );
        assert_eq!(
            volume(&pod, "sidekey-config").unwrap()["configMap"]["name"],
            "sidekey"
        );
        assert_token_volume(&pod, "sidekey");
        let agent = &pod["spec"]["containers"][0];
        assert_agent_wired(agent, &["10.96.0.0/12"]);
        // The default token is left alone unless asked.
        assert_eq!(
            mount(agent, "kube-api-access-x7k2p").unwrap()["mountPath"],
            TOKEN_DIR
        );
        assert!(pod["spec"]["automountServiceAccountToken"].is_null());
        assert_eq!(
            pod["metadata"]["annotations"]["sidekey.dev/status"],
            "injected"
        );
        assert_eq!(pod["metadata"]["annotations"]["sidekey.dev/inject"], "true");
        // Nothing else of the pod changed.
        assert_eq!(pod["spec"]["tolerations"], raw["spec"]["tolerations"]);
        assert_eq!(
            pod["metadata"]["ownerReferences"],
            raw["metadata"]["ownerReferences"]
        );
        assert_eq!(agent["image"], "python:3.12-slim");
        patched.push(pod);
    }

    // 2. Several containers and existing init containers: sidekey goes first, the others keep
    //    their order; every regular container is wired; init containers are not.
    {
        let mut raw = pod(
            json!({ "sidekey.dev/inject": "true", "sidekey.dev/config": "agent-policy" }),
            vec![
                container("agent", "ghcr.io/acme/agent:4"),
                container("tools", "ghcr.io/acme/tools:4"),
            ],
        );
        raw["spec"]["initContainers"] = json!([
            container("migrate", "ghcr.io/acme/migrate:4"),
            container("fetch-model", "busybox:1.36"),
        ]);
        let (pod, _) = inject(&raw, &settings, Trigger::PodAnnotation);
        let names: Vec<&str> = pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["sidekey", "migrate", "fetch-model"]);
        assert_eq!(
            pod["spec"]["initContainers"][1],
            raw["spec"]["initContainers"][0]
        );
        assert_eq!(
            volume(&pod, "sidekey-config").unwrap()["configMap"]["name"],
            "agent-policy"
        );
        for c in pod["spec"]["containers"].as_array().unwrap() {
            assert_agent_wired(c, &[]);
        }
        patched.push(pod);
    }

    // 3. Existing env, including a proxy the user set: theirs is kept (both spellings left
    //    alone), the rest is added, the user is warned; their other variables survive.
    {
        let mut agent = container("agent", "node:22");
        agent["env"] = json!([
            { "name": "HTTPS_PROXY", "value": "http://corp-proxy:3128" },
            { "name": "NODE_EXTRA_CA_CERTS", "value": "/etc/corp/ca.pem" },
            { "name": "OPENAI_API_KEY", "value": "dummy" },
            { "name": "POD_IP", "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "status.podIP" } } }
        ]);
        let raw = pod(json!({ "sidekey.dev/inject": "true" }), vec![agent]);
        let (pod, warnings) = inject(&raw, &settings, Trigger::PodAnnotation);
        let c = &pod["spec"]["containers"][0];
        assert_eq!(env(c, "HTTPS_PROXY"), Some("http://corp-proxy:3128"));
        assert_eq!(env_count(c, "HTTPS_PROXY"), 1);
        assert_eq!(env_count(c, "https_proxy"), 0, "the pair counts as set");
        assert_eq!(env(c, "NODE_EXTRA_CA_CERTS"), Some("/etc/corp/ca.pem"));
        assert_eq!(env_count(c, "NODE_EXTRA_CA_CERTS"), 1);
        assert_eq!(env(c, "HTTP_PROXY"), Some("http://127.0.0.1:15080"));
        assert_eq!(env(c, "SSL_CERT_FILE"), Some("/var/run/sidekey/bundle.pem"));
        assert_eq!(env(c, "OPENAI_API_KEY"), Some("dummy"));
        assert_eq!(
            c["env"][3]["valueFrom"]["fieldRef"]["fieldPath"],
            "status.podIP"
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("HTTPS_PROXY") && warnings[0].contains("NODE_EXTRA_CA_CERTS"),
            "{warnings:?}"
        );
        patched.push(pod);
    }

    // 4. No service account named, agent-token none, custom audience: the default token is
    //    gone from every container and the pod, sidekey has its own.
    {
        let mut raw = pod(
            json!({
                "sidekey.dev/inject": "true",
                "sidekey.dev/agent-token": "none",
                "sidekey.dev/token-audience": "vault"
            }),
            vec![
                container("agent", "python:3.12"),
                container("worker", "python:3.12"),
            ],
        );
        let spec = raw["spec"].as_object_mut().unwrap();
        spec.remove("serviceAccountName");
        spec.remove("serviceAccount");
        raw["spec"]["initContainers"] = json!([container("setup", "busybox:1.36")]);
        let (pod, _) = inject(&raw, &settings, Trigger::PodAnnotation);
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        assert!(volume(&pod, "kube-api-access-x7k2p").is_none());
        for list in ["containers", "initContainers"] {
            for c in pod["spec"][list].as_array().unwrap() {
                let mounts = c["volumeMounts"].as_array().unwrap();
                assert!(
                    mounts.iter().all(|m| m["mountPath"] != TOKEN_DIR),
                    "{} still mounts the default token: {mounts:?}",
                    c["name"]
                );
            }
        }
        for c in pod["spec"]["containers"].as_array().unwrap() {
            assert_agent_wired(c, &[]);
        }
        assert_token_volume(&pod, "vault");
        assert_eq!(
            mount(sidecar(&pod), "sidekey-token").unwrap()["readOnly"],
            true
        );
        patched.push(pod);
    }

    // 5. Legacy mode (annotation): a regular container first, whose postStart waits for
    //    readiness; kubectl's default container is the agent.
    {
        let raw = pod(
            json!({ "sidekey.dev/inject": "true", "sidekey.dev/sidecar-mode": "legacy" }),
            vec![
                container("agent", "python:3.12"),
                container("tools", "busybox:1.36"),
            ],
        );
        let (pod, _) = inject(&raw, &settings, Trigger::PodAnnotation);
        assert!(pod["spec"]["initContainers"].is_null());
        let containers = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 3);
        let s = &containers[0];
        assert_eq!(s["name"], "sidekey");
        assert!(
            s["restartPolicy"].is_null(),
            "regular containers take no restartPolicy"
        );
        assert_eq!(
            s["lifecycle"]["postStart"]["exec"]["command"],
            json!(["sidekey", "probe", "ready", "--wait", "120s"])
        );
        assert_agent_wired(&containers[1], &[]);
        assert_agent_wired(&containers[2], &[]);
        assert!(mount(s, "sidekey-token").is_some());
        assert_eq!(
            pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
            "agent"
        );
        patched.push(pod);
    }

    // 6. A namespace labelled for injection: a pod without any annotation (none at all) is
    //    injected; per-pod options still apply.
    {
        let mut raw = pod(json!({}), vec![container("agent", "python:3.12")]);
        raw["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        let (pod, _) = inject(&raw, &settings, Trigger::Namespace);
        assert_eq!(
            pod["metadata"]["annotations"]["sidekey.dev/status"],
            "injected"
        );
        assert_agent_wired(&pod["spec"]["containers"][0], &[]);
        // ... but not through the per-pod webhook.
        assert_eq!(
            unchanged(&raw, &settings, Trigger::PodAnnotation),
            Skip::NotRequested
        );
        patched.push(pod);
    }

    // 7. Per-pod overrides: image, resources, NO_PROXY, log level; a container without any
    //    volumeMounts or env (as from a bare Pod with automount off).
    {
        let mut agent = container("agent", "python:3.12");
        agent.as_object_mut().unwrap().remove("volumeMounts");
        let mut raw = pod(
            json!({
                "sidekey.dev/inject": "true",
                "sidekey.dev/image": "registry.test/sidekey:canary",
                "sidekey.dev/resources": "{\"requests\":{\"cpu\":\"10m\",\"memory\":\"32Mi\"},\"limits\":{\"memory\":\"96Mi\"}}",
                "sidekey.dev/no-proxy": "models.internal, 192.168.0.0/16",
                "sidekey.dev/log-level": "debug"
            }),
            vec![agent],
        );
        raw["spec"]["volumes"] = json!(null);
        raw["spec"]["automountServiceAccountToken"] = json!(false);
        let (pod, _) = inject(&raw, &settings, Trigger::PodAnnotation);
        let s = sidecar(&pod);
        assert_eq!(s["image"], "registry.test/sidekey:canary");
        assert_eq!(s["resources"]["limits"]["memory"], "96Mi");
        assert_eq!(s["resources"]["requests"]["cpu"], "10m");
        assert_eq!(env(s, "SIDEKEY_LOG"), Some("debug"));
        let c = &pod["spec"]["containers"][0];
        assert_agent_wired(c, &["models.internal", "192.168.0.0/16", "10.96.0.0/12"]);
        assert_eq!(c["volumeMounts"].as_array().unwrap().len(), 1);
        assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 3);
        patched.push(pod);
    }

    // 8. Fields newer than the 1.32 types survive (the patch never rewrites a container).
    {
        let mut raw = agent_pod();
        raw["spec"]["containers"][0]["futureField"] = json!({ "kept": true });
        raw["spec"]["futurePodField"] = json!("kept");
        let (pod, _) = inject(&raw, &settings, Trigger::PodAnnotation);
        assert_eq!(
            pod["spec"]["containers"][0]["futureField"],
            json!({ "kept": true })
        );
        assert_eq!(pod["spec"]["futurePodField"], "kept");
    }

    validate(&patched);
}

#[test]
fn injecting_twice_changes_nothing() {
    let settings = Settings::default();
    for mode in ["native", "legacy"] {
        let raw = pod(
            json!({ "sidekey.dev/inject": "true", "sidekey.dev/sidecar-mode": mode }),
            vec![container("agent", "python:3.12")],
        );
        let (once, _) = inject(&raw, &settings, Trigger::PodAnnotation);
        for trigger in [Trigger::PodAnnotation, Trigger::Namespace] {
            assert_eq!(
                unchanged(&once, &settings, trigger),
                Skip::AlreadyInjected,
                "{mode}"
            );
        }
    }
}

#[test]
fn pods_it_does_not_understand_are_left_alone_with_a_reason() {
    let settings = Settings::default();
    let annotated = json!({ "sidekey.dev/inject": "true" });

    let mut host = agent_pod();
    host["spec"]["hostNetwork"] = json!(true);
    assert_eq!(
        unchanged(&host, &settings, Trigger::PodAnnotation),
        Skip::HostNetwork
    );

    let mut windows = agent_pod();
    windows["spec"]["os"] = json!({ "name": "windows" });
    assert_eq!(
        unchanged(&windows, &settings, Trigger::PodAnnotation),
        Skip::Windows
    );

    let clash = pod(
        annotated.clone(),
        vec![container("sidekey", "my/own:sidekey")],
    );
    assert_eq!(
        unchanged(&clash, &settings, Trigger::PodAnnotation),
        Skip::NameClash("sidekey".to_string())
    );

    let mut port = agent_pod();
    port["spec"]["containers"][0]["ports"] = json!([{ "containerPort": 15080, "protocol": "TCP" }]);
    assert_eq!(
        unchanged(&port, &settings, Trigger::PodAnnotation),
        Skip::PortClash {
            container: "agent".to_string(),
            port: 15080
        }
    );

    let mut vol = agent_pod();
    vol["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "sidekey-ca", "emptyDir": {} }));
    assert_eq!(
        unchanged(&vol, &settings, Trigger::PodAnnotation),
        Skip::NameClash("sidekey-ca".to_string())
    );

    let mut mounted = agent_pod();
    mounted["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "certs", "mountPath": "/var/run/sidekey/" }));
    assert!(matches!(
        unchanged(&mounted, &settings, Trigger::PodAnnotation),
        Skip::MountClash { .. }
    ));

    // Every skip of a pod that asked for sidekey is worth telling its author.
    for skip in [Skip::HostNetwork, Skip::Windows] {
        assert!(skip.wanted() && !skip.to_string().is_empty());
    }
    assert!(!Skip::AlreadyInjected.wanted() && !Skip::NotRequested.wanted());
}

#[test]
fn opting_out_and_not_opting_in() {
    let settings = Settings::default();
    let plain = pod(json!({}), vec![container("web", "nginx:1.27")]);
    assert_eq!(
        unchanged(&plain, &settings, Trigger::PodAnnotation),
        Skip::NotRequested
    );
    let out = pod(
        json!({ "sidekey.dev/inject": "false" }),
        vec![container("web", "nginx")],
    );
    assert_eq!(
        unchanged(&out, &settings, Trigger::Namespace),
        Skip::NotRequested
    );
    assert_eq!(
        unchanged(&out, &settings, Trigger::PodAnnotation),
        Skip::NotRequested
    );
}

#[test]
fn malformed_annotations_refuse_the_pod_with_the_reason() {
    let settings = Settings::default();
    for (key, value) in [
        ("sidekey.dev/inject", "yes"),
        ("sidekey.dev/sidecar-mode", "sidecar"),
        ("sidekey.dev/resources", "512Mi"),
        ("sidekey.dev/config", "Not_A_Name"),
    ] {
        let mut annotations = json!({ "sidekey.dev/inject": "true" });
        annotations[key] = json!(value);
        let raw = pod(annotations, vec![container("agent", "python:3.12")]);
        match run(&raw, &settings, Trigger::PodAnnotation) {
            Outcome::Deny(message) => assert!(message.contains(key), "{message}"),
            other => panic!("{key}={value}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn chart_default_mode_can_be_legacy() {
    let settings = Settings {
        sidecar_mode: SidecarMode::Legacy,
        ..Settings::default()
    };
    let (pod, _) = inject(&agent_pod(), &settings, Trigger::PodAnnotation);
    assert_eq!(pod["spec"]["containers"][0]["name"], "sidekey");
    // ... and a pod can ask for native on its own.
    let native = pod_with_mode("native");
    let (pod, _) = inject(&native, &settings, Trigger::PodAnnotation);
    assert_eq!(sidecar(&pod)["name"], "sidekey");
    assert_eq!(pod["spec"]["containers"][0]["name"], "agent");
}

fn pod_with_mode(mode: &str) -> Value {
    pod(
        json!({ "sidekey.dev/inject": "true", "sidekey.dev/sidecar-mode": mode }),
        vec![container("agent", "python:3.12")],
    )
}

#[test]
fn a_metrics_port_serves_metrics_on_the_pod_ip_under_a_named_port() {
    let settings = Settings {
        metrics_port: Some(15091),
        ..Settings::default()
    };
    let (pod, _) = inject(&agent_pod(), &settings, Trigger::PodAnnotation);
    let s = sidecar(&pod);
    assert_eq!(
        s["ports"],
        json!([{ "name": "sidekey-metrics", "containerPort": 15091, "protocol": "TCP" }]),
        "{s:#}"
    );
    let env = s["env"].as_array().unwrap();
    assert!(
        env.contains(&json!({ "name": "SIDEKEY_METRICS_LISTEN", "value": "0.0.0.0:15091" })),
        "{env:#?}"
    );
    // Off by default: no port, no variable.
    let (pod, _) = inject(&agent_pod(), &Settings::default(), Trigger::PodAnnotation);
    let s = sidecar(&pod);
    assert!(s.get("ports").is_none(), "{s:#}");
    assert!(!s.to_string().contains("SIDEKEY_METRICS_LISTEN"));
    // An agent container already on that port is left alone (it would clash with sidekey).
    let mut clash = agent_pod();
    clash["spec"]["containers"][0]["ports"] = json!([{ "containerPort": 15091 }]);
    assert_eq!(
        unchanged(&clash, &settings, Trigger::PodAnnotation),
        Skip::PortClash {
            container: "agent".to_string(),
            port: 15091
        }
    );
    // The patched pod is a valid pod.
    let _: Pod = serde_json::from_value(pod).expect("a pod");
}
