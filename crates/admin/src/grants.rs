//! `POST /grants` and `DELETE /grants/{jti}`: a grant holder derives a child grant for a
//! sub-agent (a subset of its own, see `sidekey_grants::Grants::derive`), or revokes its own
//! grant or a descendant's — which is how a task ends early: the grants stop working at once
//! and their per-task credentials are revoked.
//!
//! The caller authenticates with its own grant (`Authorization: Bearer <grant>`). Only loopback
//! clients are answered: the endpoints are for the agent beside sidekey, never the network.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use sidekey_grants::{ChildRequest, Grant, GrantError, Grants};
use sidekey_policy::ErrorCode;
use std::sync::Arc;

use crate::AdminState;

/// Child requests are small JSON documents.
const MAX_BODY: usize = 16 << 10;

pub(crate) async fn serve(
    state: &AdminState,
    loopback: bool,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if !loopback {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the grant endpoints answer loopback clients only",
        );
    }
    let Some(grants) = state.grants.load_full() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "grants are not configured (no `grants:` section)",
        );
    };
    let caller = match caller(&grants, &request).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let path = request.uri().path().to_string();
    match (request.method().clone(), path.strip_prefix("/grants/")) {
        (Method::POST, None) => derive(state, &grants, &caller, request).await,
        (Method::DELETE, Some(jti)) if !jti.is_empty() && !jti.contains('/') => {
            revoke(state, &grants, &caller, jti)
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "POST /grants derives a child grant; DELETE /grants/{jti} revokes one",
        ),
    }
}

/// The caller's own grant, verified and live.
async fn caller(
    grants: &Grants,
    request: &Request<Incoming>,
) -> Result<Arc<Grant>, Response<Full<Bytes>>> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::GrantRequired.as_str(),
            "present your own grant as Authorization: Bearer <grant>",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sidekey\""),
        );
        return Err(response);
    };
    grants
        .authenticate(token)
        .await
        .map_err(|e| grant_error(&e))
}

async fn derive(
    state: &AdminState,
    grants: &Grants,
    parent: &Grant,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "request_invalid",
                &format!("the body must be JSON of at most {MAX_BODY} bytes"),
            )
        }
    };
    let child: ChildRequest = match serde_json::from_slice(&body) {
        Ok(child) => child,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "request_invalid",
                &format!(
                    "the body must be {{\"sub\": …, \"routes\": […], \"ttl_seconds\": …}}: {e}"
                ),
            )
        }
    };
    let minted = match grants.derive(parent, &child) {
        Ok(minted) => minted,
        Err(e) => return grant_error(&e),
    };
    let grant = &minted.grant;
    tracing::info!(task_id = %grant.task_id, sub = %grant.sub, grant_id = %grant.jti, parent = %parent.jti, "child grant derived");
    let expires_at = grant
        .expires_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut answer = serde_json::json!({
        "grant": minted.token,
        "grant_id": grant.jti,
        "task_id": grant.task_id,
        "sub": grant.sub,
        "parent_grant": parent.jti,
        "act": grant.act,
        "expires_at": expires_at,
    });
    if let Some(forward) = state.forward() {
        // The user name is not read; the grant is the password. JWTs need no URL escaping.
        answer["proxy_url"] =
            serde_json::Value::String(format!("http://task:{}@{forward}", minted.token));
    }
    json(StatusCode::CREATED, &answer)
}

fn revoke(state: &AdminState, grants: &Grants, by: &Grant, jti: &str) -> Response<Full<Bytes>> {
    match grants.revoke(by, jti) {
        Ok(ended) => {
            let credentials = state.credentials.load();
            for id in &ended {
                credentials.end_task(id);
            }
            tracing::info!(grant_id = %jti, by = %by.jti, revoked = ended.len(), "grants revoked");
            json(StatusCode::OK, &serde_json::json!({ "revoked": ended }))
        }
        Err(e) => grant_error(&e),
    }
}

fn grant_error(e: &GrantError) -> Response<Full<Bytes>> {
    // Not a proxy here: a grant that does not verify is 401, a valid one asking for what it
    // may not is 403.
    match e {
        GrantError::Forbidden(why) => error(StatusCode::FORBIDDEN, "forbidden", why),
        GrantError::BadRequest(why) => error(StatusCode::BAD_REQUEST, "request_invalid", why),
        _ => {
            let refusal = e.refusal();
            error(
                StatusCode::UNAUTHORIZED,
                refusal.code.as_str(),
                &refusal.message,
            )
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    )
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut bytes = value.to_string().into_bytes();
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
