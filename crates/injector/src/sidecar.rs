//! What gets added to a pod: the sidekey container, its three volumes, and what the agent's
//! containers get (the CA mount and the proxy/trust environment). The paths here are a contract
//! with the sidekey config in the ConfigMap (`ca.cert_out`, `ca.bundle_out`,
//! `identity.token_file`): the chart's default config uses exactly these.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Lifecycle;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, LifecycleHandler, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::annotations::PodOptions;
use crate::settings::{Settings, SidecarMode};

/// Name of the injected container.
pub const CONTAINER: &str = "sidekey";
/// Volume with the ConfigMap.
pub const CONFIG_VOLUME: &str = "sidekey-config";
/// Projected service-account token, mounted only into the sidecar.
pub const TOKEN_VOLUME: &str = "sidekey-token";
/// emptyDir where sidekey writes the CA certificate and the combined bundle.
pub const CA_VOLUME: &str = "sidekey-ca";
/// Every volume the injector adds.
pub const VOLUMES: &[&str] = &[CONFIG_VOLUME, TOKEN_VOLUME, CA_VOLUME];

/// Where the ConfigMap is mounted; sidekey reads `sidekey.yaml` from it.
pub const CONFIG_DIR: &str = "/etc/sidekey";
pub const CONFIG_FILE: &str = "/etc/sidekey/sidekey.yaml";
/// Where the projected token lives in the sidecar: `identity.token_file`.
pub const TOKEN_DIR: &str = "/var/run/secrets/sidekey";
pub const TOKEN_FILE: &str = "/var/run/secrets/sidekey/token";
/// The CA directory, read-write in the sidecar and read-only in the agent's containers.
pub const CA_DIR: &str = "/var/run/sidekey";
/// `ca.cert_out`: sidekey's CA certificate alone.
pub const CA_FILE: &str = "/var/run/sidekey/ca.pem";
/// `ca.bundle_out`: sidekey's CA followed by the public roots.
pub const BUNDLE_FILE: &str = "/var/run/sidekey/bundle.pem";

/// sidekey's listeners inside the pod (its defaults). A container declaring one of these ports
/// would clash with sidekey on the pod's shared loopback.
pub const PROXY_URL: &str = "http://127.0.0.1:15080";
pub const PORTS: &[i32] = &[15080, 15081, 15090];
/// The container port name of the metrics listener (`--metrics-port`).
pub const METRICS_PORT_NAME: &str = "sidekey-metrics";

/// NO_PROXY entries every agent gets: loopback and the cluster's own names.
pub const DEFAULT_NO_PROXY: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    ".svc",
    ".cluster.local",
    "kubernetes.default",
];

/// Proxy variables set in both spellings: curl reads only lower-case `http_proxy`, Go and
/// Python read either. Each pair is "set by the user" if either spelling is.
pub const PROXY_VARS: &[(&str, &str)] = &[
    ("HTTP_PROXY", "http_proxy"),
    ("HTTPS_PROXY", "https_proxy"),
    ("NO_PROXY", "no_proxy"),
];

/// The sidekey container.
pub fn container(options: &PodOptions, settings: &Settings) -> Container {
    let exec = |args: &[&str]| {
        Some(ExecAction {
            command: Some(args.iter().map(|a| a.to_string()).collect()),
        })
    };
    let probe = |kind: &str, period: i32, failures: i32| Probe {
        exec: exec(&["sidekey", "probe", kind]),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut container = Container {
        name: CONTAINER.to_string(),
        image: Some(options.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(vec!["run".to_string()]),
        env: Some(vec![
            env("SIDEKEY_CONFIG", CONFIG_FILE),
            env("SIDEKEY_LOG", &options.log_level),
            // The `{pod}` of an aws-sts session name (the host name would do too, but a pod's
            // name is what an AWS CloudTrail reader can look up).
            EnvVar {
                name: "SIDEKEY_POD_NAME".to_string(),
                value_from: Some(field("metadata.name")),
                ..Default::default()
            },
        ]),
        resources: Some(options.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(settings.run_as_user),
            run_as_group: Some(settings.run_as_user),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount(CONFIG_VOLUME, CONFIG_DIR, true),
            mount(TOKEN_VOLUME, TOKEN_DIR, true),
            mount(CA_VOLUME, CA_DIR, false),
        ]),
        // Up to 2 minutes to become ready (eager credentials may need an issuer round trip).
        startup_probe: Some(probe("ready", 1, 120)),
        readiness_probe: Some(probe("ready", 10, 3)),
        liveness_probe: Some(probe("live", 10, 3)),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    };
    if let Some(port) = settings.metrics_port {
        if let Some(env) = container.env.as_mut() {
            env.push(EnvVar {
                name: "SIDEKEY_METRICS_LISTEN".to_string(),
                value: Some(format!("0.0.0.0:{port}")),
                ..Default::default()
            });
        }
        container.ports = Some(vec![ContainerPort {
            name: Some(METRICS_PORT_NAME.to_string()),
            container_port: port,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]);
    }
    match options.mode {
        SidecarMode::Native => container.restart_policy = Some("Always".to_string()),
        SidecarMode::Legacy => {
            // kubelet starts the next container only after this hook returns: the agent does
            // not start before sidekey serves (the only ordering regular containers offer).
            container.lifecycle = Some(Lifecycle {
                post_start: Some(LifecycleHandler {
                    exec: exec(&["sidekey", "probe", "ready", "--wait", "120s"]),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    container
}

/// The volumes the sidecar needs.
pub fn volumes(options: &PodOptions, settings: &Settings) -> Vec<Volume> {
    vec![
        Volume {
            name: CONFIG_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: options.config_map.clone(),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: TOKEN_VOLUME.to_string(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(options.token_audience.clone()),
                        expiration_seconds: Some(settings.token_expiration_seconds),
                        path: "token".to_string(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: CA_VOLUME.to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_string()),
                size_limit: Some(Quantity("1Mi".to_string())),
            }),
            ..Default::default()
        },
    ]
}

/// The CA directory, read-only, for an agent container.
pub fn agent_mount() -> VolumeMount {
    mount(CA_VOLUME, CA_DIR, true)
}

/// The environment an agent container gets, keyed by variable name, in the order added.
pub fn agent_env(no_proxy: &str) -> Vec<EnvVar> {
    let mut vars = Vec::new();
    for (upper, lower) in PROXY_VARS {
        let value = if *upper == "NO_PROXY" {
            no_proxy
        } else {
            PROXY_URL
        };
        vars.push(env(upper, value));
        vars.push(env(lower, value));
    }
    vars.push(env("SSL_CERT_FILE", BUNDLE_FILE));
    vars.push(env("REQUESTS_CA_BUNDLE", BUNDLE_FILE));
    vars.push(env("NODE_EXTRA_CA_CERTS", CA_FILE));
    vars
}

/// The NO_PROXY value: built-in entries, then the chart's, then the pod's, without duplicates.
pub fn no_proxy(settings: &Settings, options: &PodOptions) -> String {
    let mut seen = BTreeMap::new();
    let mut out: Vec<&str> = Vec::new();
    let all = DEFAULT_NO_PROXY
        .iter()
        .copied()
        .chain(settings.no_proxy.iter().map(String::as_str))
        .chain(options.no_proxy.iter().map(String::as_str));
    for entry in all {
        if seen.insert(entry.to_ascii_lowercase(), ()).is_none() {
            out.push(entry);
        }
    }
    out.join(",")
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        ..Default::default()
    }
}
