//! `kind: aws-sts` — temporary AWS keys from `AssumeRoleWithWebIdentity`, with the pod's
//! identity token as the web identity (an unsigned call, as AWS defines it). The keys are only
//! ever used to sign requests (`inject: sigv4`); their ID in the audit is the access key ID.
//!
//! Per task, each task gets its own session: its own `RoleSessionName` ([`task_session_name`])
//! and its own session policy ([`session_policy_for`]), so CloudTrail and IAM both see the task.
//! STS keys cannot be revoked: when the task's grant ends the store drops them (they are never
//! used again) and they expire on their own, no earlier than the 15 minutes STS requires.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use sidekey_config::AwsStsIssuerConfig;

use crate::http::{client, excerpt_without, form_body, read_secret_file, send};
use crate::issuer::{CredentialRequest, IssueError};
use crate::{Credential, CredentialId, CredentialValue, Secret, TaskContext};

/// The shortest session STS grants (`DurationSeconds` minimum).
const MIN_DURATION: Duration = Duration::from_secs(15 * 60);
/// `RoleSessionName` is at most this long.
const SESSION_NAME_MAX: usize = 64;
/// A task's session name starts with this.
const TASK_SESSION_PREFIX: &str = "sidekey-";
/// Hex digits of the task ID's SHA-256 appended to a session name that had to be changed.
const TASK_SESSION_HASH: usize = 16;
/// What a per-task session policy may name, inside its JSON strings, and the task field each
/// stands for.
const PLACEHOLDERS: [(&str, &str); 3] = [
    ("{task_id}", "task_id"),
    ("{sub}", "sub"),
    ("{on_behalf_of}", "on_behalf_of"),
];

pub struct StsIssuer {
    client: reqwest::Client,
    endpoint: String,
    role_arn: String,
    session_name: String,
    token_file: PathBuf,
}

impl StsIssuer {
    pub fn new(_name: &str, config: &AwsStsIssuerConfig) -> Result<Self, IssueError> {
        Ok(StsIssuer {
            client: client(None, &config.endpoint.url)?,
            endpoint: format!("{}/", config.endpoint.url),
            role_arn: config.role_arn.clone(),
            session_name: session_name(&config.session_name, &pod_name()),
            token_file: config.token_file.clone(),
        })
    }

    /// The `RoleSessionName` sent (CloudTrail shows it next to every call made with the keys).
    pub fn session_name(&self) -> &str {
        &self.session_name
    }

    /// `AssumeRoleWithWebIdentity` for the credential; for a task, with the task's session
    /// name, session policy and a duration that ends with its grant where STS allows.
    pub async fn issue(&self, request: &CredentialRequest) -> Result<Credential, IssueError> {
        let (session_name, policy, duration) = match &request.task {
            Some(task) => (
                task_session_name(&task.task_id),
                request
                    .session_policy
                    .as_deref()
                    .map(|template| session_policy_for(template, task))
                    .transpose()?,
                task_duration(request.ttl, task.expires_at, SystemTime::now()),
            ),
            None => (
                self.session_name.clone(),
                request.session_policy.clone(),
                request.ttl,
            ),
        };
        let token = read_secret_file(&self.token_file, "identity token")?;
        let duration = duration.as_secs().to_string();
        let body = token.with(|token| {
            let mut form: Vec<(&str, &str)> = vec![
                ("Action", "AssumeRoleWithWebIdentity"),
                ("Version", "2011-06-15"),
                ("RoleArn", &self.role_arn),
                ("RoleSessionName", &session_name),
                ("DurationSeconds", &duration),
                ("WebIdentityToken", token),
            ];
            if let Some(policy) = &policy {
                form.push(("Policy", policy));
            }
            form_body(form)
        });
        let issued_at = SystemTime::now();
        let (status, answer) = send(
            self.client
                .post(&self.endpoint)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded; charset=utf-8",
                )
                .body(body.as_bytes().to_vec()),
        )
        .await?;
        let text = std::str::from_utf8(&answer)
            .map_err(|_| IssueError::Response("STS answer is not UTF-8".into()))?;
        if !(200..300).contains(&status) {
            let (code, message) = token.with(|token| sts_error(text, token));
            return Err(IssueError::Refused {
                status,
                code,
                message,
            });
        }
        parse_credentials(text, issued_at)
    }
}

/// Reads `AccessKeyId`, `SecretAccessKey`, `SessionToken` and `Expiration` out of the answer.
fn parse_credentials(xml: &str, issued_at: SystemTime) -> Result<Credential, IssueError> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| IssueError::Response(format!("STS answer is not XML: {e}")))?;
    let creds = doc
        .descendants()
        .find(|n| n.has_tag_name("Credentials"))
        .ok_or_else(|| IssueError::Response("STS answer has no Credentials".into()))?;
    let field = |name: &str| -> Result<String, IssueError> {
        creds
            .children()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| IssueError::Response(format!("STS answer has no {name}")))
    };
    let access_key_id = field("AccessKeyId")?;
    let secret_access_key = Secret::new(field("SecretAccessKey")?);
    let session_token = Secret::new(field("SessionToken")?);
    let expiration = field("Expiration")?;
    let expires_at = humantime::parse_rfc3339_weak(&expiration).map_err(|_| {
        IssueError::Response(format!("STS Expiration `{expiration}` is not a time"))
    })?;
    if expires_at <= issued_at {
        return Err(IssueError::Response(format!(
            "STS keys expire at {expiration}, already past"
        )));
    }
    Ok(Credential {
        id: CredentialId(access_key_id.as_str().into()),
        value: CredentialValue::Aws {
            access_key_id,
            secret_access_key,
            session_token,
        },
        issued_at,
        expires_at,
        lease: None,
    })
}

/// The `Code` (when it looks like one) and `Code: Message` of an STS `ErrorResponse`, else an
/// excerpt; `sent` (the identity token) is scrubbed out of the text.
fn sts_error(xml: &str, sent: &str) -> (Option<String>, String) {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return (None, excerpt_without(xml.as_bytes(), &[sent]));
    };
    let text = |name: &str| {
        doc.descendants()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .map(str::trim)
    };
    let code = text("Code")
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
        .map(str::to_string);
    let message = match (text("Code"), text("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => xml.to_string(),
    };
    (code, excerpt_without(message.as_bytes(), &[sent]))
}

/// The pod's name: `SIDEKEY_POD_NAME` (the downward API), else the host name.
fn pod_name() -> String {
    std::env::var("SIDEKEY_POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// The template with `{pod}` filled in; characters AWS refuses become `-`; at most 64.
fn session_name(template: &str, pod: &str) -> String {
    let name = template.replace("{pod}", pod);
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if cleaned.len() < 2 {
        format!("sidekey-{cleaned}")
    } else {
        cleaned
    }
}

/// A task's `DurationSeconds`: the credential's `ttl`, shortened to what is left of the grant,
/// but never under the 15 minutes STS requires. Keys that outlive the grant are dropped by the
/// store when it ends (STS keys cannot be revoked).
fn task_duration(ttl: Duration, grant_end: SystemTime, now: SystemTime) -> Duration {
    let left = grant_end.duration_since(now).unwrap_or(Duration::ZERO);
    let left = Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0));
    ttl.min(left).max(MIN_DURATION)
}

/// A task's `RoleSessionName`: `sidekey-<task_id>`, which CloudTrail shows next to every call
/// made with the keys.
///
/// Kept as is when it is within STS's alphabet (`[\w+=,.@-]`), at most 64 characters and has no
/// `=`. Otherwise characters STS refuses (and `=`) become `-`, the name is cut to leave room,
/// and `=` and the first 16 hex digits of the task ID's SHA-256 are appended: two tasks never
/// share a name, since a name kept as is has no `=` and a changed one ends in its own hash.
///
/// The agent (`sub`) and the end user (`on_behalf_of`) are not in the name, though it is the
/// only per-session text `AssumeRoleWithWebIdentity` takes (it has no `SourceIdentity` or
/// `Tags`: those come from the web identity token's claims, which are the pod's): the 64
/// characters are better spent on a task ID that stays whole and unambiguous, and end users'
/// identifiers (often e-mail addresses) would be spread into another account's CloudTrail.
/// sidekey's audit trail records both next to the task ID and the access key ID of each
/// credential, which join the two trails exactly.
pub(crate) fn task_session_name(task_id: &str) -> String {
    let name = format!("{TASK_SESSION_PREFIX}{task_id}");
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+,.@-_".contains(c);
    if name.len() <= SESSION_NAME_MAX && name.chars().all(allowed) {
        return name;
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, task_id.as_bytes());
    let hash: String = digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(TASK_SESSION_HASH)
        .collect();
    let room = SESSION_NAME_MAX - 1 - TASK_SESSION_HASH;
    let cleaned: String = name
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .take(room)
        .collect();
    format!("{cleaned}={hash}")
}

/// Checks a session policy file's text at start: JSON, and its placeholders usable. A
/// per-task policy must still be JSON once sample values (with a quote and a backslash, which
/// must be escaped) are filled in, i.e. placeholders sit inside strings; a shared credential's
/// policy must name none, as they would be sent as written.
pub(crate) fn check_session_policy(text: &str, per_task: bool) -> Result<(), String> {
    if per_task {
        let filled = fill(text, |_| Ok("sample \"task\" \\ value")).map_err(|e| e.to_string())?;
        serde_json::from_str::<serde_json::Value>(&filled).map_err(|e| {
            format!(
                "is not JSON once the task's values are filled in ({e}); \
                 {{task_id}}, {{sub}} and {{on_behalf_of}} go inside JSON strings"
            )
        })?;
        return Ok(());
    }
    if let Some((placeholder, _)) = PLACEHOLDERS.iter().find(|(p, _)| text.contains(p)) {
        return Err(format!(
            "names {placeholder}, which is filled in only for `per_task: true` credentials \
             (it would be sent as written)"
        ));
    }
    serde_json::from_str::<serde_json::Value>(text).map_err(|e| format!("is not JSON: {e}"))?;
    Ok(())
}

/// A task's session policy: `template` with `{task_id}`, `{sub}` and `{on_behalf_of}` replaced
/// by the task's values, JSON-string escaped (the placeholders sit inside JSON strings, so no
/// quotes are added). Fails when the template names `{on_behalf_of}` and the grant names no
/// end user (sending an empty string could match what a real user's value would not), or when
/// a value has `*`, `?` or `$`, which IAM reads as wildcards or policy variables: a task ID of
/// `*` would open every task's resources.
pub(crate) fn session_policy_for(template: &str, task: &TaskContext) -> Result<String, IssueError> {
    fill(template, |name| {
        let value = match name {
            "task_id" => task.task_id.as_str(),
            "sub" => task.sub.as_str(),
            _ => task.on_behalf_of.as_deref().ok_or_else(|| {
                IssueError::Other(format!(
                    "the session policy names {{on_behalf_of}}, but the grant of task `{}` \
                     names no end user",
                    task.task_id
                ))
            })?,
        };
        if let Some(c) = value.chars().find(|c| "*?$".contains(*c)) {
            return Err(IssueError::Other(format!(
                "the {name} of task `{}` has `{c}`, which IAM would read as a wildcard or \
                 variable in the session policy",
                task.task_id
            )));
        }
        Ok(value)
    })
}

/// `template` with each placeholder replaced by `value(name)`, JSON-string escaped. One pass:
/// a value that looks like a placeholder is not replaced again.
fn fill<'v>(
    template: &str,
    value: impl Fn(&str) -> Result<&'v str, IssueError>,
) -> Result<String, IssueError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'scan: while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        for (placeholder, name) in PLACEHOLDERS {
            if let Some(after) = rest.strip_prefix(placeholder) {
                out.push_str(&json_string_content(value(name)?));
                rest = after;
                continue 'scan;
            }
        }
        out.push('{');
        rest = &rest[1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `value` escaped as the inside of a JSON string (quotes, backslashes, control characters).
fn json_string_content(value: &str) -> String {
    let quoted = serde_json::Value::String(value.to_string()).to_string();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ANSWER: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE1234</AccessKeyId>
      <SecretAccessKey>secret-canary</SecretAccessKey>
      <SessionToken>session-canary</SessionToken>
      <Expiration>2099-01-01T00:00:00.000Z</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn parses_credentials() {
        let c = parse_credentials(ANSWER, SystemTime::now()).unwrap();
        assert_eq!(c.id.as_str(), "ASIAEXAMPLE1234");
        let CredentialValue::Aws {
            access_key_id,
            secret_access_key,
            session_token,
        } = &c.value
        else {
            panic!("aws keys expected")
        };
        assert_eq!(access_key_id, "ASIAEXAMPLE1234");
        assert_eq!(secret_access_key.with(str::to_string), "secret-canary");
        assert_eq!(session_token.with(str::to_string), "session-canary");
        assert!(c.expires_at > SystemTime::now() + Duration::from_secs(3600));
    }

    #[test]
    fn errors_and_garbage() {
        let (code, e) = sts_error("<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>bad token eyJsent.token.x</Message></Error></ErrorResponse>", "eyJsent.token.x");
        assert_eq!(code.as_deref(), Some("InvalidIdentityToken"));
        assert_eq!(e, "InvalidIdentityToken: bad token [redacted]");
        assert!(parse_credentials("not xml", SystemTime::now()).is_err());
        assert!(parse_credentials("<a/>", SystemTime::now()).is_err());
        let expired = ANSWER.replace("2099", "2001");
        assert!(parse_credentials(&expired, SystemTime::now()).is_err());
    }

    fn task(task_id: &str, on_behalf_of: Option<&str>) -> TaskContext {
        TaskContext {
            grant_id: "grant-1".into(),
            task_id: task_id.into(),
            sub: "agent-7".into(),
            on_behalf_of: on_behalf_of.map(str::to_string),
            act: Vec::new(),
            expires_at: SystemTime::now() + Duration::from_secs(600),
        }
    }

    #[test]
    fn task_session_names() {
        let hashed = |id: &str| {
            let name = task_session_name(id);
            let (_, hash) = name.rsplit_once('=').unwrap();
            assert_eq!(hash.len(), 16, "{name}");
            assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
            name
        };
        // (task ID, the name, or its part before `=` and the hash when it had to change)
        let cases: &[(&str, &str)] = &[
            ("t-123", "sidekey-t-123"),
            ("a.b_c+d,e@f", "sidekey-a.b_c+d,e@f"),
            ("", "sidekey-"),
            ("a b/c", "sidekey-a-b-c="),
            ("x=y", "sidekey-x-y="),
            ("tâche", "sidekey-t-che="),
            ("deploy:prod", "sidekey-deploy-prod="),
        ];
        for (id, want) in cases {
            let name = task_session_name(id);
            assert!(name.len() <= 64, "{id:?}: {name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c)),
                "{id:?}: {name}"
            );
            if want.ends_with('=') {
                assert!(hashed(id).starts_with(want), "{id:?}: {name}");
            } else {
                assert_eq!(&name, want, "{id:?}");
            }
        }
        // The longest ID kept as is, and one more character: cut, with the hash.
        let longest = "x".repeat(56);
        assert_eq!(task_session_name(&longest), format!("sidekey-{longest}"));
        let long = hashed(&"x".repeat(57));
        assert_eq!(long.len(), 64);
        assert!(long.starts_with(&format!("sidekey-{}=", "x".repeat(39))));
        // Tasks the cleaning or the cut would merge still get names of their own.
        assert_ne!(task_session_name("a b"), task_session_name("a/b"));
        assert_ne!(task_session_name("a b"), task_session_name("a-b"));
        let prefix = "y".repeat(60);
        assert_ne!(
            task_session_name(&format!("{prefix}1")),
            task_session_name(&format!("{prefix}2"))
        );
        // A kept name has no `=`, so no task ID can be written to match a changed one.
        let changed = task_session_name("a b");
        let lookalike = changed.trim_start_matches("sidekey-");
        assert_ne!(task_session_name(lookalike), changed);
    }

    #[test]
    fn session_policy_is_filled_in_per_task_with_escaped_values() {
        let template = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"arn:aws:s3:::bucket/{task_id}/{sub}/*","Condition":{"StringEquals":{"s3:prefix":"{on_behalf_of}"}}}]}"#;
        check_session_policy(template, true).unwrap();
        let filled =
            session_policy_for(template, &task(r#"t"1\2{sub}"#, Some("ann@example.com"))).unwrap();
        let policy: serde_json::Value = serde_json::from_str(&filled).unwrap();
        let statement = &policy["Statement"][0];
        assert_eq!(
            statement["Resource"], r#"arn:aws:s3:::bucket/t"1\2{sub}/agent-7/*"#,
            "quotes and backslashes escaped, and a value is never filled in again"
        );
        assert_eq!(
            statement["Condition"]["StringEquals"]["s3:prefix"],
            "ann@example.com"
        );
        // A brace that starts no placeholder stays.
        assert_eq!(
            session_policy_for(r#"{"a":"{x}{task_id}"}"#, &task("t", None)).unwrap(),
            r#"{"a":"{x}t"}"#
        );

        // No end user, but the template names one; IAM wildcards and variables in a value.
        let missing = session_policy_for(template, &task("t", None)).unwrap_err();
        assert!(
            missing.to_string().contains("names no end user"),
            "{missing}"
        );
        for id in ["*", "t?", "${aws:username}"] {
            let err = session_policy_for(template, &task(id, Some("u"))).unwrap_err();
            assert!(err.to_string().contains("wildcard"), "{id}: {err}");
        }
    }

    #[test]
    fn session_policy_files_are_checked_at_start() {
        let plain = r#"{"Version":"2012-10-17","Statement":[]}"#;
        check_session_policy(plain, false).unwrap();
        check_session_policy(plain, true).unwrap();
        let err = check_session_policy("not json", false).unwrap_err();
        assert!(err.contains("is not JSON"), "{err}");
        // A placeholder outside a string is not JSON once filled in.
        let err = check_session_policy(r#"{"n":{task_id}}"#, true).unwrap_err();
        assert!(err.contains("inside JSON strings"), "{err}");
        // Placeholders of a shared credential would be sent as written.
        let err = check_session_policy(r#"{"r":"a/{sub}"}"#, false).unwrap_err();
        assert!(err.contains("{sub}") && err.contains("per_task"), "{err}");
    }

    #[test]
    fn task_sessions_end_with_the_grant_where_sts_allows() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        assert_eq!(task_duration(hour, now + 2 * hour, now), hour);
        assert_eq!(
            task_duration(hour, now + Duration::from_millis(1_800_500), now),
            Duration::from_secs(1801)
        );
        assert_eq!(
            task_duration(hour, now + Duration::from_secs(60), now),
            MIN_DURATION
        );
        assert_eq!(task_duration(hour, now - hour, now), MIN_DURATION);
    }

    #[test]
    fn session_names() {
        assert_eq!(
            session_name("sidekey-{pod}", "agent-7f9c"),
            "sidekey-agent-7f9c"
        );
        assert_eq!(session_name("sidekey-{pod}", "a b/c"), "sidekey-a-b-c");
        assert_eq!(session_name("{pod}", &"x".repeat(100)).len(), 64);
    }
}
