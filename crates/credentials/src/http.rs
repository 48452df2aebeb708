//! What every remote issuer shares: an HTTP client with sidekey's TLS settings, reading the
//! files that hold identity tokens and client secrets, and turning issuer answers into errors
//! that are safe to show.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::{IssueError, Secret};

/// How long one HTTP exchange with an issuer may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Issuer answers larger than this are refused (they are a few kilobytes at most).
const MAX_ANSWER: usize = 1 << 20;

/// A client for one issuer: certificates verified against the webpki roots plus `ca_file`
/// (TLS 1.2+), redirects never followed (a redirect must not carry a client secret or token
/// elsewhere), `HTTPS_PROXY`/`NO_PROXY` honoured for a corporate egress proxy.
pub(crate) fn client(
    ca_file: Option<&Path>,
    endpoint: &str,
) -> Result<reqwest::Client, IssueError> {
    let extra: Vec<&Path> = ca_file.into_iter().collect();
    let mut tls = sidekey_tls::upstream_client_config(&extra)
        .map_err(|e| IssueError::Config(e.to_string()))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut builder = reqwest::Client::builder();
    // Plain http is only allowed to loopback: it must not go to a proxy in clear text.
    if endpoint.starts_with("http://") {
        builder = builder.no_proxy();
    }
    builder
        .tls_backend_preconfigured(tls)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sidekey/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| IssueError::Config(format!("cannot build the issuer's HTTP client: {e}")))
}

/// Reads a token or secret file (read at every use: the kubelet and secret managers rotate
/// them), trimmed of surrounding whitespace. The error names the file, never its content.
pub(crate) fn read_secret_file(path: &Path, what: &str) -> Result<Secret, IssueError> {
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| {
        IssueError::File(format!("cannot read the {what} {}: {e}", path.display()))
    })?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| IssueError::File(format!("the {what} {} is not UTF-8", path.display())))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(IssueError::File(format!(
            "the {what} {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(trimmed.to_string()))
}

/// Sends `request` and returns the status and body, bounded in size.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(u16, zeroize::Zeroizing<Vec<u8>>), IssueError> {
    let mut response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    let mut body = zeroize::Zeroizing::new(Vec::new());
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(IssueError::Response(format!(
                "answer larger than {MAX_ANSWER} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// A transport error, with its causes (reqwest's own message is terse), never a URL's query.
pub(crate) fn transport(e: reqwest::Error) -> IssueError {
    if e.is_timeout() {
        return IssueError::Timeout(REQUEST_TIMEOUT);
    }
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    IssueError::Transport(message)
}

/// A short, printable excerpt of an error answer that is not in a known format: control
/// characters dropped, at most 200 characters. Only used for answers with an error status,
/// which carry no credential.
pub(crate) fn excerpt(body: &[u8]) -> String {
    excerpt_without(body, &[])
}

/// [`excerpt`] with every occurrence of `sent` (values sidekey sent: tokens, secrets) replaced,
/// for error pages that echo the request.
pub(crate) fn excerpt_without(body: &[u8], sent: &[&str]) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    for value in sent.iter().filter(|v| v.len() >= 4) {
        text = text.replace(value, "[redacted]");
    }
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        "(empty answer)".to_string()
    } else {
        cleaned.to_string()
    }
}

/// Characters left as they are by application/x-www-form-urlencoded (WHATWG URL, RFC 6749
/// appendix B): alphanumerics and `*-._`; a space becomes `+`.
const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// One value, form-urlencoded.
pub(crate) fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_form_encoded(&mut out, s);
    out
}

/// `k=v&k=v…`, form-urlencoded straight into a buffer that is wiped on drop (the values are
/// tokens and secrets; no unwiped copy is made on the way).
pub(crate) fn form_body<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> zeroize::Zeroizing<String> {
    let mut body = zeroize::Zeroizing::new(String::new());
    for (k, v) in pairs {
        if !body.is_empty() {
            body.push('&');
        }
        push_form_encoded(&mut body, k);
        body.push('=');
        push_form_encoded(&mut body, v);
    }
    body
}

fn push_form_encoded(out: &mut String, s: &str) {
    for chunk in percent_encoding::utf8_percent_encode(s, FORM) {
        out.push_str(if chunk == "%20" { "+" } else { chunk });
    }
}

/// The longest lifetime an issuer may state; longer ones are refused as nonsense (and would
/// overflow time arithmetic).
const MAX_LIFETIME: u64 = 366 * 24 * 60 * 60;

/// `from` plus `secs` seconds as an issuer stated them, refused when absurd.
pub(crate) fn after(from: SystemTime, secs: u64, what: &str) -> Result<SystemTime, IssueError> {
    if secs > MAX_LIFETIME {
        return Err(IssueError::Response(format!(
            "{what} of {secs} s is beyond a year"
        )));
    }
    from.checked_add(Duration::from_secs(secs))
        .ok_or_else(|| IssueError::Response(format!("{what} of {secs} s is out of range")))
}

/// A lease duration stated by an issuer, clamped to a year (time arithmetic stays in range).
pub(crate) fn clamp_secs(secs: u64) -> Duration {
    Duration::from_secs(secs.min(MAX_LIFETIME))
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
