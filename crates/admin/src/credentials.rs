//! `GET /credentials`: every credential the store holds, on two axes — how long it has left and
//! how much it can do — with its use, so that a long-lived, broad, little-used credential stands
//! out. Never a value: names, the issuer's credential ID (a `jti`, lease ID or access key ID —
//! what the audit trail names), times, counts, and the scope the config gives it.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sidekey_credentials::{CredentialStatus, CredentialStore};

/// The JSON document: one entry per credential, and one per task of a per-task credential.
pub(crate) fn document(store: &CredentialStore, scopes: &HashMap<String, Value>) -> Value {
    let now = SystemTime::now();
    let entries: Vec<Value> = store
        .status()
        .iter()
        .map(|status| entry(status, scopes.get(&status.name), now))
        .collect();
    json!({ "generated_at": unix(now), "credentials": entries })
}

fn entry(status: &CredentialStatus, scope: Option<&Value>, now: SystemTime) -> Value {
    let seconds_left = status
        .expires_at
        .map(|e| e.duration_since(now).map_or(0, |d| d.as_secs()));
    // In whole seconds of the two times shown, so that the figures agree with each other.
    let lifetime = match (status.issued_at, status.expires_at) {
        (Some(i), Some(e)) => Some(unix(e).saturating_sub(unix(i))),
        _ => None,
    };
    json!({
        "name": status.name,
        "issuer": status.issuer,
        "per_task": status.per_task,
        "task_id": status.task_id,
        "grant_id": status.grant_id,
        "eager": status.eager,
        "held": status.credential_id.is_some(),
        "credential_id": status.credential_id,
        "issued_at": status.issued_at.map(unix),
        "expires_at": status.expires_at.map(unix),
        "lifetime_seconds": lifetime,
        "seconds_left": seconds_left,
        "next_refresh": status.refresh_at.map(unix),
        "uses": status.uses,
        "uses_5m": status.uses_5m,
        "uses_1h": status.uses_1h,
        "last_error": status.last_error,
        "scope": scope.cloned().unwrap_or(Value::Null),
    })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
