//! AdmissionReview v1 (`admission.k8s.io/v1`), the request the API server sends and the
//! response it expects. k8s-openapi does not carry these types (they are not served by the API),
//! so the fields the injector reads and writes are declared here; everything else is ignored.
//!
//! [`review`] is the whole webhook: request in, response out. It never fails a pod because of
//! the injector itself: anything it cannot make sense of is admitted unchanged, with the reason
//! logged (and sent back as a warning when the pod asked for sidekey).

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::inject::{self, Outcome, Skip, Trigger};
use crate::settings::Settings;

/// The envelope, both ways.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

/// `GroupVersionKind` / `GroupVersionResource` as the API server spells them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct GroupVersionResource {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub resource: String,
}

/// The parts of the request the injector uses.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    #[serde(default)]
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub resource: GroupVersionResource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Base64 of the JSON patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `metav1.Status`, the part a refusal needs.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Status {
    pub code: u16,
    pub message: String,
}

/// The answer to one AdmissionReview, plus what to log about it.
#[derive(Debug)]
pub struct Reviewed {
    pub review: AdmissionReview,
    /// One line for the log: what was done and why.
    pub summary: String,
}

/// Reviews one request: `body` is the AdmissionReview JSON the API server posted.
pub fn review(body: &[u8], settings: &Settings, trigger: Trigger) -> Result<Reviewed, String> {
    let incoming: AdmissionReview =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    if incoming.api_version != "admission.k8s.io/v1" || incoming.kind != "AdmissionReview" {
        return Err(format!(
            "expected admission.k8s.io/v1 AdmissionReview, got {} {}",
            incoming.api_version, incoming.kind
        ));
    }
    let request = incoming
        .request
        .ok_or_else(|| "AdmissionReview without a request".to_string())?;
    let (response, summary) = decide(&request, settings, trigger);
    Ok(Reviewed {
        review: AdmissionReview {
            api_version: "admission.k8s.io/v1".to_string(),
            kind: "AdmissionReview".to_string(),
            request: None,
            response: Some(response),
        },
        summary: format!(
            "{} {}/{}: {summary}",
            request.operation,
            request.namespace.as_deref().unwrap_or("-"),
            pod_name(&request)
        ),
    })
}

fn decide(
    request: &AdmissionRequest,
    settings: &Settings,
    trigger: Trigger,
) -> (AdmissionResponse, String) {
    let mut response = AdmissionResponse {
        uid: request.uid.clone(),
        allowed: true,
        ..Default::default()
    };
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || request.operation != "CREATE" || request.sub_resource.is_some() {
        return (
            response,
            format!(
                "ignored: not a pod creation ({}/{} {})",
                request.kind.group, request.kind.kind, request.operation
            ),
        );
    }
    let Some(raw) = request.object.as_ref() else {
        return (response, "ignored: no object in the request".to_string());
    };
    let pod: Pod = match serde_json::from_value(raw.clone()) {
        Ok(pod) => pod,
        Err(e) => {
            let skip = Skip::Internal(format!("cannot read the pod: {e}"));
            response.warnings.push(format!("sidekey: {skip}"));
            return (response, skip.to_string());
        }
    };
    match inject::plan(&pod, raw, settings, trigger) {
        Outcome::Inject { patch, warnings } => match serde_json::to_vec(&patch) {
            Ok(json) => {
                response.patch = Some(base64::engine::general_purpose::STANDARD.encode(json));
                response.patch_type = Some("JSONPatch".to_string());
                let summary = format!("injected ({} operations)", patch.0.len());
                response.warnings = warnings;
                (response, summary)
            }
            Err(e) => {
                let skip = Skip::Internal(format!("cannot encode the patch: {e}"));
                response.warnings.push(format!("sidekey: {skip}"));
                (response, skip.to_string())
            }
        },
        Outcome::Unchanged(skip) => {
            if skip.wanted() {
                response.warnings.push(format!("sidekey: {skip}"));
            }
            (response, skip.to_string())
        }
        Outcome::Deny(message) => {
            response.allowed = false;
            response.status = Some(Status {
                code: 400,
                message: format!("sidekey: {message}"),
            });
            (response, format!("refused: {message}"))
        }
    }
}

/// Pods created by controllers have only `generateName` until the API server names them.
fn pod_name(request: &AdmissionRequest) -> String {
    if let Some(name) = request.name.as_deref().filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    let meta = request.object.as_ref().and_then(|o| o.get("metadata"));
    let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    match (field("name"), field("generateName")) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) => format!("{prefix}*"),
        _ => "<unnamed>".to_string(),
    }
}
