//! The stable error codes of DESIGN.md §4 and the one place that turns them into responses.
//! Every refusal or failure the agent sees is one of these, with a JSON body it can act on.

use http::{HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};

/// What went wrong, as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    HostNotAllowed,
    MethodNotAllowed,
    PathNotAllowed,
    TargetMismatch,
    /// The SSRF guard: the upstream's address is not public and the route does not allow it.
    AddressNotAllowed,
    CredentialUnavailable,
    UpstreamUnreachable,
    UpstreamTls,
    /// The upstream coded a credentialed response in a way sidekey cannot decode, so the
    /// credential mask could not see into it: the body is not passed on.
    UpstreamEncoding,
    RequestInvalid,
    /// The body is larger than the route's `max_request_body`.
    BodyTooLarge,
    /// The agent asks for more than a configured rate allows (e.g. fresh TLS server names).
    RateLimited,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::HostNotAllowed => "host_not_allowed",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PathNotAllowed => "path_not_allowed",
            ErrorCode::TargetMismatch => "target_mismatch",
            ErrorCode::AddressNotAllowed => "address_not_allowed",
            ErrorCode::CredentialUnavailable => "credential_unavailable",
            ErrorCode::UpstreamUnreachable => "upstream_unreachable",
            ErrorCode::UpstreamTls => "upstream_tls",
            ErrorCode::UpstreamEncoding => "upstream_encoding",
            ErrorCode::RequestInvalid => "request_invalid",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::RateLimited => "rate_limited",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::HostNotAllowed
            | ErrorCode::MethodNotAllowed
            | ErrorCode::PathNotAllowed
            | ErrorCode::TargetMismatch
            | ErrorCode::AddressNotAllowed => StatusCode::FORBIDDEN,
            ErrorCode::CredentialUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::UpstreamUnreachable
            | ErrorCode::UpstreamTls
            | ErrorCode::UpstreamEncoding => StatusCode::BAD_GATEWAY,
            ErrorCode::RequestInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl From<sidekey_policy::DenyCode> for ErrorCode {
    fn from(code: sidekey_policy::DenyCode) -> Self {
        match code {
            sidekey_policy::DenyCode::HostNotAllowed => ErrorCode::HostNotAllowed,
            sidekey_policy::DenyCode::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            sidekey_policy::DenyCode::PathNotAllowed => ErrorCode::PathNotAllowed,
        }
    }
}

/// A refusal: code plus a message that is safe to show the agent (never a secret).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// `{"error":code,"message":…,"request_id":…}` with `x-sidekey-error: code`.
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": self.code.as_str(),
            "message": self.message,
            "request_id": request_id,
        });
        let mut bytes = body.to_string().into_bytes();
        bytes.push(b'\n');
        let mut response = Response::new(full(bytes));
        *response.status_mut() = self.code.status();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            "x-sidekey-error",
            HeaderValue::from_static(self.code.as_str()),
        );
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert("x-sidekey-request-id", id);
        }
        response
    }
}
