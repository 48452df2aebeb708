//! The audit trail's request records as OCSF (Open Cybersecurity Schema Framework 1.1) HTTP
//! Activity events (class 4002), one JSON line each, for SIEMs that ingest OCSF
//! (`sidekey audit ocsf FILE`). sidekey-specific fields (route, credential, grant chain) go in
//! `unmapped`; nothing is added that the record does not hold, so no secret can appear.

use serde_json::{json, Map, Value};

/// OCSF HTTP Activity.
const CLASS_UID: u64 = 4002;
/// Network Activity.
const CATEGORY_UID: u64 = 4;
const OCSF_VERSION: &str = "1.1.0";

/// (activity_id, activity_name) of an HTTP method, as OCSF's HTTP Activity enumerates them.
fn activity(method: &str) -> (u64, &'static str) {
    match method {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        "TRACE" => (8, "Trace"),
        _ => (99, "Other"),
    }
}

/// One request record (a parsed audit line with `"type": "request"`) as an OCSF event; None
/// for other records.
pub fn http_activity(record: &Value) -> Option<Value> {
    if record["type"] != "request" {
        return None;
    }
    let method = record["method"].as_str().unwrap_or("");
    let (activity_id, activity_name) = activity(method);
    let allowed = record["decision"] != "deny";
    let failed = !record["code"].is_null();
    let time = record["ts"]
        .as_str()
        .and_then(parse_rfc3339_ms)
        .unwrap_or(0);
    let scheme = record["scheme"].as_str().unwrap_or("");
    let host = record["host"].as_str().unwrap_or("");
    let port = record["port"].as_u64().unwrap_or(0);
    let path = record["path"].as_str().unwrap_or("");
    let mut unmapped = Map::new();
    for key in [
        "listener",
        "route",
        "decision",
        "code",
        "error",
        "credential",
        "credential_id",
        "issuer",
        "client_certificate",
        "client_certificate_id",
        "task_id",
        "sub",
        "grant_id",
        "parent_grant",
        "on_behalf_of",
        "act",
    ] {
        if let Some(v) = record.get(key).filter(|v| !v.is_null()) {
            unmapped.insert(key.to_string(), v.clone());
        }
    }
    let mut event = json!({
        "class_uid": CLASS_UID,
        "class_name": "HTTP Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Network Activity",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": format!("HTTP Activity: {activity_name}"),
        "time": time,
        "severity_id": if allowed { 1 } else { 2 },
        "severity": if allowed { "Informational" } else { "Low" },
        "action_id": if allowed { 1 } else { 2 },
        "action": if allowed { "Allowed" } else { "Denied" },
        "disposition_id": if allowed { 1 } else { 2 },
        "disposition": if allowed { "Allowed" } else { "Blocked" },
        "status_id": if failed { 2 } else { 1 },
        "status": if failed { "Failure" } else { "Success" },
        "duration": record["duration_ms"].as_f64().map_or(0, |ms| ms.round() as u64),
        "metadata": {
            "version": OCSF_VERSION,
            "product": { "name": "sidekey", "vendor_name": "sidekey" },
            "uid": record["request_id"],
        },
        "http_request": {
            "http_method": method,
            "uid": record["request_id"],
            "url": {
                "scheme": scheme,
                "hostname": host,
                "port": port,
                "path": path,
                "url_string": format!("{scheme}://{host}:{port}{path}"),
            },
        },
        "traffic": {
            "bytes_in": record["bytes_in"].as_u64().unwrap_or(0),
            "bytes_out": record["bytes_out"].as_u64().unwrap_or(0),
        },
        "unmapped": unmapped,
    });
    if let Some(status) = record["status"].as_u64() {
        event["http_response"] = json!({ "code": status });
    }
    if let Some(code) = record["code"].as_str() {
        event["status_detail"] = json!(code);
    }
    if let Some(trace) = record["trace_id"].as_str() {
        event["metadata"]["correlation_uid"] = json!(trace);
    }
    if let Some(sub) = record["sub"].as_str() {
        event["actor"] = json!({ "user": { "uid": sub, "type": "Other" } });
    }
    Some(event)
}

/// `2026-12-06T17:45:25.012Z` → milliseconds since the epoch (what the writer emits: UTC, `Z`).
fn parse_rfc3339_ms(ts: &str) -> Option<u64> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + min) * 60 * 1000 + s * 1000 + ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_record_becomes_an_http_activity() {
        let record = json!({
            "type": "request", "ts": "2026-12-06T17:45:25.012Z", "request_id": "r1",
            "listener": "forward", "route": "api", "method": "POST", "scheme": "https",
            "host": "api.example.com", "port": 443, "path": "/v1/items?q=REDACTED",
            "decision": "allow", "code": null, "status": 201, "bytes_in": 10, "bytes_out": 20,
            "duration_ms": 12.6, "credential": "demo", "credential_id": "jti-1",
            "trace_id": "0af7651916cd43dd8448eb211c80319c", "sub": "planner", "grant_id": "g1",
            "task_id": "t-1", "act": ["orchestrator"]
        });
        let e = http_activity(&record).unwrap();
        assert_eq!(e["class_uid"], 4002);
        assert_eq!(
            (&e["activity_id"], &e["type_uid"]),
            (&json!(6), &json!(400206))
        );
        assert_eq!(e["time"], 1_796_579_125_012u64);
        assert_eq!(e["disposition"], "Allowed");
        assert_eq!(e["status"], "Success");
        assert_eq!(e["http_response"]["code"], 201);
        assert_eq!(
            e["http_request"]["url"]["url_string"],
            "https://api.example.com:443/v1/items?q=REDACTED"
        );
        assert_eq!(e["duration"], 13);
        assert_eq!(
            e["metadata"]["correlation_uid"],
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(e["actor"]["user"]["uid"], "planner");
        assert_eq!(e["unmapped"]["route"], "api");
        assert_eq!(e["unmapped"]["act"], json!(["orchestrator"]));
        assert!(e["unmapped"].get("code").is_none());

        let denied = json!({"type": "request", "ts": "2026-12-06T00:00:00Z", "method": "DELETE",
            "decision": "deny", "code": "method_not_allowed", "status": 403});
        let e = http_activity(&denied).unwrap();
        assert_eq!(
            (&e["disposition"], &e["status"]),
            (&json!("Blocked"), &json!("Failure"))
        );
        assert_eq!(e["status_detail"], "method_not_allowed");
        assert_eq!(e["activity_id"], 2);
        assert!(http_activity(&json!({"type": "config"})).is_none());
    }
}
