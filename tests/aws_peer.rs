//! The moto fixture itself (tests/common/moto.rs), before sidekey is put in front of it: STS
//! hands out temporary keys for a web identity, and once the no-auth budget is spent moto
//! really checks SigV4 signatures — the premise of every test in tests/aws.rs.

use std::time::{Duration, SystemTime};

use crate::common::moto::*;
use crate::common::*;
use serde_json::json;

const BUCKET: &str = "peer-bucket";

#[test]
fn sts_answers_a_web_identity_with_temporary_keys() {
    let moto = Moto::start(None);
    let identity = Identity::new("system:serviceaccount:agents:agent-7", "sts.amazonaws.com");
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#;
    let res = moto.assume_role_with_web_identity(
        &identity.token(),
        "sidekey-peer-test",
        900,
        Some(policy),
    );
    res.assert_status(200);
    let xml = res.body_str();
    assert!(
        xml.starts_with("<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"),
        "{xml}"
    );
    let keys = StsKeys::parse(&xml).unwrap_or_else(|| panic!("no Credentials in {xml}"));
    assert!(keys.access_key_id.starts_with("ASIA"), "{keys:?}");
    assert_eq!(keys.access_key_id.len(), 20, "{keys:?}");
    assert_eq!(keys.secret_access_key.len(), 40, "{keys:?}");
    assert!(keys.session_token.len() > 100, "{keys:?}");
    assert_eq!(
        xml_text(&xml, "Arn").as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/agent/sidekey-peer-test")
    );
    // Expiration = now + DurationSeconds, RFC 3339 with microseconds.
    let expires = humantime_rfc3339(&keys.expiration);
    let left = expires
        .duration_since(SystemTime::now())
        .expect("expiration in the future");
    assert!(
        left > Duration::from_secs(850) && left <= Duration::from_secs(900),
        "expires in {left:?} ({})",
        keys.expiration
    );

    // moto keeps what was asked: role, session name, session policy.
    let roles = moto.assumed_roles();
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(roles[0]["access_key_id"], keys.access_key_id.as_str());
    assert_eq!(roles[0]["role_arn"], ROLE_ARN);
    assert_eq!(roles[0]["session_name"], "sidekey-peer-test");
    assert_eq!(roles[0]["policy"], policy);

    // And its recorder saw an unsigned form POST carrying the token.
    let recorded = moto.recorded();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let sts = &recorded[0];
    assert_eq!(sts.method, "POST");
    assert_eq!(sts.header("authorization"), None);
    let body = String::from_utf8_lossy(&sts.body);
    assert!(body.contains("Action=AssumeRoleWithWebIdentity"), "{body}");
    assert!(body.contains("DurationSeconds=900"), "{body}");
    assert!(
        body.contains(&format!("WebIdentityToken={}", identity.token())),
        "{body}"
    );
}

/// `2026-11-23T12:20:34.548381Z` → SystemTime (what moto writes; AWS writes no fraction).
fn humantime_rfc3339(s: &str) -> SystemTime {
    let (date, time) = s.trim_end_matches('Z').split_once('T').expect("T");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, _frac) = time.split_once('.').unwrap_or((time, ""));
    let t: Vec<u64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe - 719_468) as u64;
    SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2])
}

#[test]
fn signatures_are_checked_once_the_budget_is_spent() {
    // The setup and the STS call are the whole budget.
    let moto = Moto::start(Some(SETUP_ACTIONS + 1));
    moto.setup(BUCKET);
    let identity = Identity::new("agent-7", "sts.amazonaws.com");
    let keys = moto.assume(&identity.token(), "peer-budget");
    let vhost = format!("{BUCKET}.s3.us-east-1.amazonaws.com");

    // Bad signature: a known key with the wrong secret.
    let wrong_secret = StsKeys {
        secret_access_key: "not-the-secret-access-key".into(),
        ..keys.clone()
    };
    let res = moto.curl_s3(&wrong_secret, "PUT", &vhost, "/k", Some(b"x"));
    assert_eq!(res.status, 403, "{}", res.body_str());
    assert_eq!(
        xml_text(&res.body_str(), "Code").as_deref(),
        Some("SignatureDoesNotMatch"),
        "{}",
        res.body_str()
    );
    // An unknown key.
    let unknown = StsKeys {
        access_key_id: DUMMY_ACCESS_KEY_ID.into(),
        ..keys.clone()
    };
    let res = moto.curl_s3(&unknown, "PUT", &vhost, "/k", Some(b"x"));
    assert_eq!(res.status, 403, "{}", res.body_str());
    assert_eq!(
        xml_text(&res.body_str(), "Code").as_deref(),
        Some("InvalidAccessKeyId")
    );
    // A wrong session token.
    let wrong_token = StsKeys {
        session_token: "FQoGZXIvYXdzEBYaDnot-the-token".into(),
        ..keys.clone()
    };
    let res = moto.curl_s3(&wrong_token, "PUT", &vhost, "/k", Some(b"x"));
    assert_eq!(res.status, 400, "{}", res.body_str());
    assert_eq!(
        xml_text(&res.body_str(), "Code").as_deref(),
        Some("InvalidToken")
    );

    // The STS keys: virtual-hosted PUT, path-style GET, over HTTPS through the TLS front.
    moto.curl_s3(
        &keys,
        "PUT",
        &vhost,
        "/notes/hello.txt",
        Some(b"hello, moto"),
    )
    .assert_status(200);
    let got = moto.curl_s3(
        &keys,
        "GET",
        S3_HOST,
        &format!("/{BUCKET}/notes/hello.txt"),
        None,
    );
    got.assert_status(200);
    assert_eq!(got.body_str(), "hello, moto");
    assert!(moto.tls_connections() >= 5, "{}", moto.tls_connections());

    // boto3 with the STS keys, and with dummy keys.
    let out = moto.boto3(
        Some(&keys),
        json!([
            {"service": "s3", "method": "put_object", "params": {"Bucket": BUCKET, "Key": "boto3.bin"}, "body_size": 70_000},
            {"service": "s3", "method": "get_object", "params": {"Bucket": BUCKET, "Key": "boto3.bin"}},
            {"service": "sts", "method": "get_caller_identity"},
        ]),
    );
    assert_eq!(out[0]["ok"], true, "{out:?}");
    assert_eq!(out[1]["ok"], true, "{out:?}");
    assert_eq!(out[1]["body_sha256"], out[0]["sent_sha256"], "{out:?}");
    assert_eq!(
        out[2]["result"]["Arn"],
        "arn:aws:sts::123456789012:assumed-role/agent/peer-budget"
    );
    let out = moto.boto3(
        None,
        json!([{"service": "s3", "method": "get_object", "params": {"Bucket": BUCKET, "Key": "boto3.bin"}}]),
    );
    assert_eq!(out[0]["ok"], false, "{out:?}");
    assert_eq!(out[0]["status"], 403, "{out:?}");
    assert_eq!(out[0]["code"], "InvalidAccessKeyId", "{out:?}");

    // What moto recorded for the curl PUT that passed.
    let put = moto
        .recorded_s3()
        .into_iter()
        .find(|r| r.method == "PUT" && r.path() == "/notes/hello.txt")
        .expect("the PUT was recorded");
    assert_eq!(put.host(), vhost);
    assert_eq!(put.access_key_id(), Some(keys.access_key_id.as_str()));
    assert_eq!(
        put.header("x-amz-security-token"),
        Some(keys.session_token.as_str())
    );
    assert_eq!(put.header("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
    assert_eq!(put.body, b"hello, moto");
    assert!(
        put.signed_headers().contains(&"x-amz-content-sha256"),
        "{put:?}"
    );
}

#[test]
fn an_unsigned_sts_call_after_the_budget_is_a_500_until_the_budget_is_reset() {
    let moto = Moto::start(Some(1));
    let identity = Identity::new("agent-7", "sts.amazonaws.com");
    moto.assume(&identity.token(), "first");
    // AWS defines AssumeRoleWithWebIdentity as unsigned; moto then fails looking for the
    // Authorization header.
    let res = moto.assume_role_with_web_identity(&identity.token(), "second", 3600, None);
    assert_eq!(res.status, 500, "{}", res.body_str());
    // Resetting the budget restarts the count.
    assert_eq!(moto.set_no_auth_action_count(Some(1)), "1.0");
    moto.assume(&identity.token(), "third");
    assert_eq!(moto.set_no_auth_action_count(None), "1.0");
    moto.assume(&identity.token(), "fourth");
    assert_eq!(moto.assumed_roles().len(), 3);
}

#[test]
fn every_request_to_a_service_counts_once_against_the_budget() {
    let moto = Moto::start(Some(SETUP_ACTIONS + 3));
    moto.setup(BUCKET);
    // Dummy keys pass while the budget lasts, one request each, whatever the operation.
    let out = moto.boto3(
        None,
        json!([
            {"service": "s3", "method": "put_object", "params": {"Bucket": BUCKET, "Key": "c"}, "body": "x"},
            {"service": "s3", "method": "get_object", "params": {"Bucket": BUCKET, "Key": "c"}},
            {"service": "s3", "method": "list_objects_v2", "params": {"Bucket": BUCKET}},
            {"service": "s3", "method": "head_object", "params": {"Bucket": BUCKET, "Key": "c"}},
        ]),
    );
    let ok: Vec<&serde_json::Value> = out.iter().map(|r| &r["ok"]).collect();
    assert_eq!(ok, [true, true, true, false], "{out:?}");
    assert_eq!(out[3]["status"], 403, "{out:?}");
    // The moto API is not counted: reading data.json changes nothing.
    moto.data();
    moto.set_no_auth_action_count(Some(1));
    moto.data();
    let out = moto.boto3(
        None,
        json!([
            {"service": "s3", "method": "head_object", "params": {"Bucket": BUCKET, "Key": "c"}},
            {"service": "s3", "method": "head_object", "params": {"Bucket": BUCKET, "Key": "c"}},
        ]),
    );
    let ok: Vec<&serde_json::Value> = out.iter().map(|r| &r["ok"]).collect();
    assert_eq!(ok, [true, false], "{out:?}");
}
