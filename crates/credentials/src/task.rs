//! The task a per-task credential is issued for: what the proxy read from the task grant the
//! agent presented (a short-lived JWT it verified). The store keys per-task credentials by
//! [`TaskContext::grant_id`] and ends them at [`TaskContext::expires_at`]; the issuers put the
//! rest into what they issue (JWT claims, the STS session name and session policy).

use std::time::SystemTime;

/// One task grant, as verified by the proxy. These are identifiers, not secrets: they appear
/// in audit records and in the credentials issued for the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskContext {
    /// The grant's `jti`: the cache key. A credential issued for one grant is never handed to
    /// a request presenting another, even for the same task.
    pub grant_id: String,
    pub task_id: String,
    /// The agent or sub-agent the grant was given to.
    pub sub: String,
    /// The end user the task works for, if the grant names one.
    pub on_behalf_of: Option<String>,
    /// The delegators before `sub`, earliest first (the root agent … the immediate parent);
    /// empty for a root grant.
    pub act: Vec<String>,
    /// The grant's `exp`: no per-task credential outlives it.
    pub expires_at: SystemTime,
}
