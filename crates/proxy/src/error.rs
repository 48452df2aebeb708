//! The one place that turns a [`Refusal`] into what the agent reads: the code's status, an
//! `x-sidekey-error` header, and `{"error": code, "message": …, "request_id": …}`. The codes
//! themselves are policy's ([`sidekey_policy::ErrorCode`]).

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use sidekey_audit::RequestId;
use sidekey_body::{full, ProxyBody};
use sidekey_policy::Refusal;

/// The response header that gives the agent its request's ID (the audit record's).
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-sidekey-request-id");

/// Tells the agent its request's ID, on a refusal or on the upstream's answer (its hex digits
/// as they are: no UTF-8 check to pay).
pub(crate) fn tag_request_id(headers: &mut HeaderMap, request_id: &RequestId) {
    if let Ok(id) = HeaderValue::from_bytes(request_id.as_bytes()) {
        headers.insert(REQUEST_ID_HEADER, id);
    }
}

/// The answer to a refused request.
pub fn refusal_response(refusal: &Refusal, request_id: &RequestId) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": refusal.code.as_str(),
        "message": refusal.message,
        "request_id": request_id.as_str(),
    });
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    let mut response = Response::new(full(bytes));
    *response.status_mut() =
        StatusCode::from_u16(refusal.code.status()).unwrap_or(StatusCode::FORBIDDEN);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "x-sidekey-error",
        HeaderValue::from_static(refusal.code.as_str()),
    );
    tag_request_id(headers, request_id);
    if refusal.code.status() == 407 {
        // The grant is the proxy password (Basic) or a bearer token.
        for challenge in ["Basic realm=\"sidekey\"", "Bearer realm=\"sidekey\""] {
            headers.append(
                http::header::PROXY_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
    }
    response
}
