//! The `sidekey.dev/*` pod annotations, in one place (docs/kubernetes.md has the same table),
//! and their parsing into per-pod options. A malformed value is the pod author's mistake and is
//! reported as such (the pod is refused with the reason) rather than silently ignored: running an
//! agent without the egress control it asked for, or with settings it did not ask for, is worse.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::settings::{Settings, SidecarMode};

/// `"true"`: inject this pod. `"false"`: do not, even in a namespace labelled for injection.
pub const INJECT: &str = "sidekey.dev/inject";
/// Name of the ConfigMap (key `sidekey.yaml`) mounted as sidekey's config.
pub const CONFIG: &str = "sidekey.dev/config";
/// The sidekey image.
pub const IMAGE: &str = "sidekey.dev/image";
/// The sidecar's resources, as JSON: `{"requests":{"cpu":"100m"},"limits":{"memory":"512Mi"}}`.
pub const RESOURCES: &str = "sidekey.dev/resources";
/// Comma-separated hosts/domains/CIDRs appended to the agents' `NO_PROXY`.
pub const NO_PROXY: &str = "sidekey.dev/no-proxy";
/// `native` or `legacy` (see [`SidecarMode`]).
pub const SIDECAR_MODE: &str = "sidekey.dev/sidecar-mode";
/// The sidecar's `SIDEKEY_LOG` filter (`info`, `debug`, `warn,sidekey_proxy=debug`…).
pub const LOG_LEVEL: &str = "sidekey.dev/log-level";
/// Audience of the projected token mounted into the sidecar.
pub const TOKEN_AUDIENCE: &str = "sidekey.dev/token-audience";
/// `none`: the agent's containers get no service-account token; `default`: left as is.
pub const AGENT_TOKEN: &str = "sidekey.dev/agent-token";
/// Written by the injector: `injected` once the pod has been mutated (makes it idempotent).
pub const STATUS: &str = "sidekey.dev/status";

/// Every annotation a pod author may set, for messages.
pub const ALL: &[&str] = &[
    INJECT,
    CONFIG,
    IMAGE,
    RESOURCES,
    NO_PROXY,
    SIDECAR_MODE,
    LOG_LEVEL,
    TOKEN_AUDIENCE,
    AGENT_TOKEN,
];

/// The injector's settings with this pod's annotations applied.
#[derive(Debug, Clone)]
pub struct PodOptions {
    pub image: String,
    pub config_map: String,
    pub resources: ResourceRequirements,
    /// Extra NO_PROXY entries from the annotation (after the settings' ones).
    pub no_proxy: Vec<String>,
    pub mode: SidecarMode,
    pub log_level: String,
    pub token_audience: String,
    /// Remove the default service-account token from the agent's containers.
    pub no_agent_token: bool,
}

/// A malformed annotation value: the pod is refused with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {problem}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub problem: String,
}

fn bad(annotation: &'static str, problem: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation,
        problem: problem.into(),
    }
}

/// Applies the pod's annotations to `settings`.
pub fn pod_options(
    annotations: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<PodOptions, AnnotationError> {
    let get = |key: &str| annotations.get(key).map(|v| v.trim());
    let mut options = PodOptions {
        image: settings.image.clone(),
        config_map: settings.config_map.clone(),
        resources: settings.resources.clone(),
        no_proxy: Vec::new(),
        mode: settings.sidecar_mode,
        log_level: settings.log_level.clone(),
        token_audience: settings.token_audience.clone(),
        no_agent_token: false,
    };
    if let Some(image) = get(IMAGE) {
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            return Err(bad(IMAGE, "must be an image reference without spaces"));
        }
        options.image = image.to_string();
    }
    if let Some(name) = get(CONFIG) {
        if !is_dns_subdomain(name) {
            return Err(bad(
                CONFIG,
                format!("{name:?} is not a ConfigMap name (lower-case DNS subdomain)"),
            ));
        }
        options.config_map = name.to_string();
    }
    if let Some(json) = get(RESOURCES) {
        options.resources = serde_json::from_str(json).map_err(|e| {
            bad(
                RESOURCES,
                format!(
                    "not a resources object ({e}); e.g. {{\"limits\":{{\"memory\":\"512Mi\"}}}}"
                ),
            )
        })?;
    }
    if let Some(list) = get(NO_PROXY) {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry.chars().any(|c| c.is_whitespace() || c == '=') {
                return Err(bad(
                    NO_PROXY,
                    format!("{entry:?} is not a host, domain or CIDR"),
                ));
            }
            options.no_proxy.push(entry.to_string());
        }
    }
    if let Some(mode) = get(SIDECAR_MODE) {
        options.mode = SidecarMode::parse(mode).ok_or_else(|| {
            bad(
                SIDECAR_MODE,
                format!("{mode:?} is neither native nor legacy"),
            )
        })?;
    }
    if let Some(level) = get(LOG_LEVEL) {
        let ok = !level.is_empty()
            && level
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ',' | '=' | ':' | '-'));
        if !ok {
            return Err(bad(
                LOG_LEVEL,
                format!(
                    "{level:?} is not a log filter (e.g. info, debug, warn,sidekey_proxy=debug)"
                ),
            ));
        }
        options.log_level = level.to_string();
    }
    if let Some(audience) = get(TOKEN_AUDIENCE) {
        if audience.is_empty() {
            return Err(bad(TOKEN_AUDIENCE, "must not be empty"));
        }
        options.token_audience = audience.to_string();
    }
    match get(AGENT_TOKEN) {
        None | Some("default") => {}
        Some("none") => options.no_agent_token = true,
        Some(other) => {
            return Err(bad(
                AGENT_TOKEN,
                format!("{other:?} is neither none nor default"),
            ))
        }
    }
    Ok(options)
}

/// RFC 1123 subdomain, as Kubernetes requires of ConfigMap names.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Result<PodOptions, AnnotationError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pod_options(&map, &Settings::default())
    }

    #[test]
    fn defaults_come_from_settings() {
        let o = opts(&[]).unwrap();
        let s = Settings::default();
        assert_eq!(o.image, s.image);
        assert_eq!(o.config_map, "sidekey");
        assert_eq!(o.mode, SidecarMode::Native);
        assert!(!o.no_agent_token);
    }

    #[test]
    fn annotations_override() {
        let o = opts(&[
            (CONFIG, "agent-policy"),
            (IMAGE, "registry.local/sidekey:dev"),
            (RESOURCES, r#"{"limits":{"memory":"512Mi"}}"#),
            (NO_PROXY, " internal.corp , 10.0.0.0/8,"),
            (SIDECAR_MODE, "legacy"),
            (LOG_LEVEL, "debug,hyper=info"),
            (TOKEN_AUDIENCE, "vault"),
            (AGENT_TOKEN, "none"),
        ])
        .unwrap();
        assert_eq!(o.config_map, "agent-policy");
        assert_eq!(o.image, "registry.local/sidekey:dev");
        assert_eq!(o.resources.limits.unwrap()["memory"].0, "512Mi".to_string());
        assert!(o.resources.requests.is_none());
        assert_eq!(o.no_proxy, vec!["internal.corp", "10.0.0.0/8"]);
        assert_eq!(o.mode, SidecarMode::Legacy);
        assert_eq!(o.log_level, "debug,hyper=info");
        assert_eq!(o.token_audience, "vault");
        assert!(o.no_agent_token);
    }

    #[test]
    fn malformed_values_are_refused_with_the_annotation_named() {
        for (key, value) in [
            (CONFIG, "Agent_Policy"),
            (CONFIG, ""),
            (IMAGE, "a b"),
            (RESOURCES, "512Mi"),
            (RESOURCES, r#"{"limits":"lots"}"#),
            (NO_PROXY, "a b"),
            (SIDECAR_MODE, "sidecar"),
            (LOG_LEVEL, "debug; rm -rf /"),
            (TOKEN_AUDIENCE, ""),
            (AGENT_TOKEN, "off"),
        ] {
            let e = opts(&[(key, value)]).expect_err(value);
            assert_eq!(e.annotation, key, "{e}");
        }
    }
}
