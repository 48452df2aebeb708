//! The injector's defaults, set by its flags (the Helm chart's values): image, ConfigMap, token
//! audience, sidecar mode, extra NO_PROXY entries, resources. Pod annotations override some of
//! them per pod (see [`crate::annotations`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// How sidekey is added to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` placed first (Kubernetes ≥ 1.29): starts
    /// (and passes its startup probe) before any other container, stops after them, and does
    /// not keep Jobs from completing.
    Native,
    /// A regular container placed first whose `postStart` hook waits until sidekey is ready:
    /// kubelet starts the next container only once that hook returned (clusters < 1.29).
    Legacy,
}

impl SidecarMode {
    /// `native` or `legacy`.
    pub fn parse(s: &str) -> Option<SidecarMode> {
        match s {
            "native" => Some(SidecarMode::Native),
            "legacy" => Some(SidecarMode::Legacy),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SidecarMode::Native => "native",
            SidecarMode::Legacy => "legacy",
        }
    }
}

/// Defaults for every injected pod.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The sidekey image.
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// ConfigMap holding `sidekey.yaml`, when the pod names none.
    pub config_map: String,
    /// Audience of the projected service-account token (the issuer's).
    pub token_audience: String,
    /// Lifetime of the projected token; kubelet rotates it at 80 %. At least 600.
    pub token_expiration_seconds: i64,
    pub sidecar_mode: SidecarMode,
    /// Appended to the built-in NO_PROXY list (e.g. the cluster's service and pod CIDRs).
    pub no_proxy: Vec<String>,
    pub resources: ResourceRequirements,
    /// `SIDEKEY_LOG` of the sidecar, when the pod sets none.
    pub log_level: String,
    /// UID/GID the sidecar runs as (distroless `nonroot` by default).
    pub run_as_user: i64,
    /// When set, sidekey serves `GET /metrics` alone on this port of the pod's IP
    /// (`SIDEKEY_METRICS_LISTEN`), declared as the container port `sidekey-metrics` for a
    /// PodMonitor or a scrape config to find.
    pub metrics_port: Option<i32>,
}

impl Default for Settings {
    fn default() -> Self {
        let q = |s: &str| Quantity(s.to_string());
        Settings {
            image: "ghcr.io/sidekey-dev/sidekey:0.1.0".to_string(),
            image_pull_policy: "IfNotPresent".to_string(),
            config_map: "sidekey".to_string(),
            token_audience: "sidekey".to_string(),
            token_expiration_seconds: 600,
            sidecar_mode: SidecarMode::Native,
            no_proxy: Vec::new(),
            resources: ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), q("50m")),
                    ("memory".to_string(), q("64Mi")),
                ])),
                limits: Some(BTreeMap::from([("memory".to_string(), q("256Mi"))])),
                ..Default::default()
            },
            log_level: "info".to_string(),
            run_as_user: 65532,
            metrics_port: None,
        }
    }
}
