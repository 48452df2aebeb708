//! `kind: aws-sts` — temporary AWS keys from `AssumeRoleWithWebIdentity`, with the pod's
//! identity token as the web identity (an unsigned call, as AWS defines it). The keys are only
//! ever used to sign requests (`inject: sigv4`); their ID in the audit is the access key ID.

use std::path::PathBuf;
use std::time::SystemTime;

use sidekey_config::AwsStsIssuerConfig;

use crate::http::{client, excerpt_without, form_body, read_secret_file, send};
use crate::issuer::{CredentialRequest, IssueError};
use crate::{Credential, CredentialId, CredentialValue, Secret};

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

    pub async fn issue(&self, request: &CredentialRequest) -> Result<Credential, IssueError> {
        let token = read_secret_file(&self.token_file, "identity token")?;
        let duration = request.ttl.as_secs().to_string();
        let body = token.with(|token| {
            let mut form: Vec<(&str, &str)> = vec![
                ("Action", "AssumeRoleWithWebIdentity"),
                ("Version", "2011-06-15"),
                ("RoleArn", &self.role_arn),
                ("RoleSessionName", &self.session_name),
                ("DurationSeconds", &duration),
                ("WebIdentityToken", token),
            ];
            if let Some(policy) = &request.session_policy {
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
        id: CredentialId(access_key_id.clone()),
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
        assert_eq!(c.id.0, "ASIAEXAMPLE1234");
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
