//! The decision and the patch: given a pod (as the API server sent it) and the injector's
//! settings, either a JSON patch that adds sidekey, or a reason to leave the pod alone, or a
//! refusal of a malformed `sidekey.dev/*` annotation. Pure: no I/O, no clock.
//!
//! The patch only ever *adds* values at precise paths (a new init container at index 0, env
//! entries appended, a new annotation…); it never replaces an existing container, so fields the
//! 1.32 types do not know (newer API versions) pass through untouched.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use serde::Serialize;
use serde_json::Value;

use crate::annotations::{self, PodOptions};
use crate::settings::{Settings, SidecarMode};
use crate::sidecar;

/// Which webhook entry called: the pod's annotation alone decides, or the namespace opted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Inject only pods annotated `sidekey.dev/inject: "true"`.
    PodAnnotation,
    /// The namespace is labelled for injection: inject unless annotated `"false"`.
    Namespace,
}

/// What to do with a pod.
#[derive(Debug)]
pub enum Outcome {
    /// Admit with this patch. `warnings` go back to the client (kubectl prints them).
    Inject { patch: Patch, warnings: Vec<String> },
    /// Admit unchanged.
    Unchanged(Skip),
    /// Refuse the pod: a `sidekey.dev/*` annotation is malformed.
    Deny(String),
}

/// Why a pod is admitted unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// No `sidekey.dev/inject: "true"` (or `"false"` in an opted-in namespace).
    NotRequested,
    /// `sidekey.dev/status: injected` is already there.
    AlreadyInjected,
    /// `hostNetwork: true`: sidekey on 127.0.0.1 would be the node's loopback, shared with
    /// every other host-network pod and reachable by node processes.
    HostNetwork,
    /// `spec.os.name: windows`: the sidekey image is Linux-only.
    Windows,
    /// A container, init container or volume already has a name the injector uses.
    NameClash(String),
    /// A container declares a port sidekey listens on (15080, 15081, 15090).
    PortClash { container: String, port: i32 },
    /// A container already mounts something at the CA directory.
    MountClash { container: String },
    /// The injector could not build the patch (its own bug): the pod is admitted unchanged
    /// rather than refused.
    Internal(String),
}

impl Skip {
    /// Whether the pod asked for sidekey (so the client should hear why it did not get it).
    pub fn wanted(&self) -> bool {
        !matches!(self, Skip::NotRequested | Skip::AlreadyInjected)
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NotRequested => write!(f, "injection not requested"),
            Skip::AlreadyInjected => write!(f, "already injected"),
            Skip::HostNetwork => write!(
                f,
                "hostNetwork pods are not injected: sidekey's loopback listeners would be the node's"
            ),
            Skip::Windows => write!(f, "Windows pods are not injected: sidekey's image is Linux-only"),
            Skip::NameClash(name) => write!(
                f,
                "not injected: the pod already has a container or volume named {name:?}"
            ),
            Skip::PortClash { container, port } => write!(
                f,
                "not injected: container {container:?} declares port {port}, which sidekey listens on"
            ),
            Skip::MountClash { container } => write!(
                f,
                "not injected: container {container:?} already mounts {}",
                sidecar::CA_DIR
            ),
            Skip::Internal(why) => write!(f, "not injected: injector error: {why}"),
        }
    }
}

/// Decides what to do with `pod`. `raw` is the same pod as JSON, as received: the patch is
/// computed against it (e.g. whether `/spec/initContainers` exists).
pub fn plan(pod: &Pod, raw: &Value, settings: &Settings, trigger: Trigger) -> Outcome {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    if annotations.get(annotations::STATUS).map(String::as_str) == Some("injected") {
        return Outcome::Unchanged(Skip::AlreadyInjected);
    }
    match (
        annotations.get(annotations::INJECT).map(|v| v.trim()),
        trigger,
    ) {
        (Some("true"), _) | (None, Trigger::Namespace) => {}
        (Some("false"), _) | (None, Trigger::PodAnnotation) => {
            return Outcome::Unchanged(Skip::NotRequested)
        }
        (Some(other), _) => {
            return Outcome::Deny(format!(
                "annotation {}: {other:?} is neither \"true\" nor \"false\"",
                annotations::INJECT
            ))
        }
    }
    let options = match annotations::pod_options(annotations, settings) {
        Ok(options) => options,
        Err(e) => return Outcome::Deny(e.to_string()),
    };
    let Some(spec) = pod.spec.as_ref() else {
        // The API server always sends a spec; nothing sensible to add to a pod without one.
        return Outcome::Unchanged(Skip::NotRequested);
    };
    if let Err(skip) = understood(spec, settings) {
        return Outcome::Unchanged(skip);
    }
    match build(spec, raw, annotations, &options, settings) {
        Ok((patch, warnings)) => Outcome::Inject { patch, warnings },
        Err(e) => Outcome::Unchanged(Skip::Internal(e.to_string())),
    }
}

/// Shapes of pod the injector does not handle: `Err` says why.
fn understood(spec: &PodSpec, settings: &Settings) -> Result<(), Skip> {
    if spec.host_network == Some(true) {
        return Err(Skip::HostNetwork);
    }
    if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        return Err(Skip::Windows);
    }
    let init = spec.init_containers.as_deref().unwrap_or_default();
    for c in spec.containers.iter().chain(init) {
        if c.name == sidecar::CONTAINER {
            return Err(Skip::NameClash(c.name.clone()));
        }
        for port in c.ports.as_deref().unwrap_or_default() {
            if sidecar::PORTS.contains(&port.container_port)
                || settings.metrics_port == Some(port.container_port)
            {
                return Err(Skip::PortClash {
                    container: c.name.clone(),
                    port: port.container_port,
                });
            }
        }
    }
    for c in &spec.containers {
        let mounts = c.volume_mounts.as_deref().unwrap_or_default();
        if mounts
            .iter()
            .any(|m| m.mount_path.trim_end_matches('/') == sidecar::CA_DIR)
        {
            return Err(Skip::MountClash {
                container: c.name.clone(),
            });
        }
    }
    for v in spec.volumes.as_deref().unwrap_or_default() {
        if sidecar::VOLUMES.contains(&v.name.as_str()) {
            return Err(Skip::NameClash(v.name.clone()));
        }
    }
    Ok(())
}

/// The patch. Every path is checked against `raw` so that `add` creates missing lists/maps
/// instead of failing on them.
fn build(
    spec: &PodSpec,
    raw: &Value,
    annotations: &BTreeMap<String, String>,
    options: &PodOptions,
    settings: &Settings,
) -> Result<(Patch, Vec<String>), serde_json::Error> {
    let mut ops = Ops::default();
    let mut warnings = Vec::new();
    let container = sidecar::container(options, settings);

    // Removals first, at the indices of the pod as received (everything after only appends or
    // inserts at the front).
    if options.no_agent_token {
        remove_default_token(spec, &mut ops);
    }

    // The sidecar, first in line.
    match options.mode {
        SidecarMode::Native => ops.insert_first(raw, &["spec", "initContainers"], &container)?,
        SidecarMode::Legacy => ops.insert_first(raw, &["spec", "containers"], &container)?,
    }
    for volume in sidecar::volumes(options, settings) {
        ops.append(raw, &["spec", "volumes"], &volume)?;
    }

    // The agent's containers: CA mount and environment. Their indices in the *original* list;
    // in legacy mode the sidecar's insertion at 0 shifts them by one.
    let shift = usize::from(options.mode == SidecarMode::Legacy);
    let no_proxy = sidecar::no_proxy(settings, options);
    let wanted = sidecar::agent_env(&no_proxy);
    for (i, c) in spec.containers.iter().enumerate() {
        let index = (i + shift).to_string();
        let base = ["spec", "containers", index.as_str()];
        let has_mounts = raw_at(raw, &["spec", "containers", &i.to_string(), "volumeMounts"]);
        let has_env = raw_at(raw, &["spec", "containers", &i.to_string(), "env"]);
        ops.append_at(
            has_mounts,
            &[&base[..], &["volumeMounts"]].concat(),
            &sidecar::agent_mount(),
        )?;
        let (add, kept) = env_to_add(c, &wanted);
        if !kept.is_empty() {
            warnings.push(format!(
                "sidekey: container {:?} sets {} itself; left as set",
                c.name,
                kept.join(", ")
            ));
        }
        let mut env_exists = has_env;
        for var in add {
            ops.append_at(env_exists, &[&base[..], &["env"]].concat(), &var)?;
            env_exists = true;
        }
    }

    if options.no_agent_token {
        // The sidecar's token is its own projected volume; this only removes the default one.
        ops.set(
            &["spec", "automountServiceAccountToken"],
            Value::Bool(false),
        );
    }

    // Annotations: the status marker, and in legacy mode the agent as kubectl's default
    // container (the sidecar is now first).
    let has_annotations = raw_at(raw, &["metadata", "annotations"]);
    if !has_annotations {
        ops.set(
            &["metadata", "annotations"],
            Value::Object(Default::default()),
        );
    }
    ops.set(
        &["metadata", "annotations", annotations::STATUS],
        Value::String("injected".to_string()),
    );
    const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
    if options.mode == SidecarMode::Legacy && !annotations.contains_key(DEFAULT_CONTAINER) {
        if let Some(first) = spec.containers.first() {
            ops.set(
                &["metadata", "annotations", DEFAULT_CONTAINER],
                Value::String(first.name.clone()),
            );
        }
    }
    Ok((Patch(ops.0), warnings))
}

/// Where the ServiceAccount admission plugin mounts the default token.
const DEFAULT_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount admission plugin runs before webhooks: by the time the pod reaches the
/// injector, every container already mounts the default token (a `kube-api-access-*` projected
/// volume) and `automountServiceAccountToken: false` alone would change nothing. So the volume
/// and every mount of it (and of that path) are removed; only sidekey holds a token then.
fn remove_default_token(spec: &PodSpec, ops: &mut Ops) {
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let is_default_token = |name: &str| {
        volumes.iter().any(|v| {
            v.name == name
                && name.starts_with("kube-api-access-")
                && v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .any(|s| s.service_account_token.is_some())
                })
        })
    };
    let lists = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", spec.containers.as_slice()),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            let mounts = c.volume_mounts.as_deref().unwrap_or_default();
            // Highest index first, so earlier removals do not shift later ones.
            for (j, m) in mounts.iter().enumerate().rev() {
                if is_default_token(&m.name)
                    || m.mount_path.trim_end_matches('/') == DEFAULT_TOKEN_DIR
                {
                    ops.remove(&["spec", list, &i.to_string(), "volumeMounts", &j.to_string()]);
                }
            }
        }
    }
    for (k, v) in volumes.iter().enumerate().rev() {
        if is_default_token(&v.name) {
            ops.remove(&["spec", "volumes", &k.to_string()]);
        }
    }
}

/// Variables of `wanted` the container does not set (either spelling of a proxy pair counts),
/// and the names it sets itself (kept, reported).
fn env_to_add(c: &Container, wanted: &[EnvVar]) -> (Vec<EnvVar>, Vec<String>) {
    let existing: Vec<&str> = c
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let set_by_user = |name: &str| {
        let pair = sidecar::PROXY_VARS
            .iter()
            .find(|(u, l)| *u == name || *l == name);
        match pair {
            Some((u, l)) => existing.contains(u) || existing.contains(l),
            None => existing.contains(&name),
        }
    };
    let mut add = Vec::new();
    let mut kept = Vec::new();
    for var in wanted {
        if set_by_user(&var.name) {
            if existing.contains(&var.name.as_str()) {
                kept.push(var.name.clone());
            }
        } else {
            add.push(var.clone());
        }
    }
    (add, kept)
}

/// Whether `raw` has a non-null value at `path`.
fn raw_at(raw: &Value, path: &[&str]) -> bool {
    let mut v = raw;
    for token in path {
        v = match v {
            Value::Object(map) => match map.get(*token) {
                Some(next) => next,
                None => return false,
            },
            Value::Array(items) => match token.parse::<usize>().ok().and_then(|i| items.get(i)) {
                Some(next) => next,
                None => return false,
            },
            _ => return false,
        };
    }
    !v.is_null()
}

#[derive(Default)]
struct Ops(Vec<PatchOperation>);

impl Ops {
    fn remove(&mut self, path: &[&str]) {
        self.0.push(PatchOperation::Remove(RemoveOperation {
            path: PointerBuf::from_tokens(path.iter().copied()),
        }));
    }

    fn set(&mut self, path: &[&str], value: Value) {
        self.0.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(path.iter().copied()),
            value,
        }));
    }

    /// `value` at the front of the list at `path` (the list is created when missing).
    fn insert_first(
        &mut self,
        raw: &Value,
        path: &[&str],
        value: &impl Serialize,
    ) -> Result<(), serde_json::Error> {
        let value = serde_json::to_value(value)?;
        if raw_at(raw, path) {
            self.set(&[path, &["0"]].concat(), value);
        } else {
            self.set(path, Value::Array(vec![value]));
        }
        Ok(())
    }

    /// `value` at the end of the list at `path` (created when missing in `raw`).
    fn append(
        &mut self,
        raw: &Value,
        path: &[&str],
        value: &impl Serialize,
    ) -> Result<(), serde_json::Error> {
        let exists = raw_at(raw, path);
        let created = self.0.iter().any(|op| match op {
            PatchOperation::Add(a) => a.path == PointerBuf::from_tokens(path.iter().copied()),
            _ => false,
        });
        self.append_at(exists || created, path, value)
    }

    fn append_at(
        &mut self,
        exists: bool,
        path: &[&str],
        value: &impl Serialize,
    ) -> Result<(), serde_json::Error> {
        let value = serde_json::to_value(value)?;
        if exists {
            self.set(&[path, &["-"]].concat(), value);
        } else {
            self.set(path, Value::Array(vec![value]));
        }
        Ok(())
    }
}
