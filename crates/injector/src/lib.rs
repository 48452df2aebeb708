//! `sidekey-injector`: the Kubernetes mutating admission webhook that adds sidekey to agent
//! pods (docs/kubernetes.md). A pod comes in as an AdmissionReview v1, [`inject::plan`] decides what
//! to do with it (a pure function: pod + settings → JSON patch, skip with a reason, or refusal
//! of a bad annotation), and [`server`] answers over HTTPS with certificates it reloads when
//! cert-manager or the chart rotate them.
//!
//! Kubernetes types come from `k8s-openapi` with the `v1_32` feature: the oldest Kubernetes
//! release the chart supports and the schemas the tests validate against. The typed pod is only
//! read, never written back: the patch adds new values at precise paths, so fields of newer API
//! versions that 1.32 types do not know survive untouched.

pub mod admission;
pub mod annotations;
pub mod inject;
pub mod server;
pub mod settings;
pub mod sidecar;
pub mod tls;

pub use admission::{review, AdmissionReview};
pub use inject::{plan, Outcome, Skip, Trigger};
pub use settings::{Settings, SidecarMode};
