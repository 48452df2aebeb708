//! The quickstart's demo API: what `sidekey run` serves on [`DEMO_ADDR`] next to the built-in
//! quickstart config (never with a config file), so that a newcomer without internet sees an
//! allowed, credentialed request end to end. It plays an internal service that trusts sidekey's
//! `local` issuer: `GET /whoami` checks the bearer token against the issuer's JWKS (the document
//! `/.well-known/jwks.json` serves) and audience [`DEMO_AUDIENCE`], and answers with the
//! verified claims — never the token. Anything else is 404; no token or a bad one is 401.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{json, Value};

use crate::AdminState;

/// Where the demo API listens (the quickstart routes `demo.sidekey.test` here).
pub const DEMO_ADDR: &str = "127.0.0.1:15099";
/// The `aud` the demo API accepts (the quickstart's `demo-api` credential).
pub const DEMO_AUDIENCE: &str = "demo-api";

/// What the demo API answers (served by [`crate::serve`] as [`crate::Surface::DemoApi`]).
pub(crate) fn answer(
    state: &AdminState,
    request: &Request<Incoming>,
) -> Response<Full<bytes::Bytes>> {
    if request.method() != Method::GET || request.uri().path() != "/whoami" {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": "the demo API has GET /whoami only"}),
        );
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return unauthorized("no bearer token: the agent holds none; sidekey attaches it");
    };
    match verify(&state.jwks(), token) {
        Ok(claims) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let expires_in = claims["exp"].as_u64().map(|exp| exp.saturating_sub(now));
            reply(
                StatusCode::OK,
                json!({
                    "verified": true,
                    "iss": claims["iss"],
                    "sub": claims["sub"],
                    "aud": claims["aud"],
                    "jti": claims["jti"],
                    "expires_in_s": expires_in,
                    "note": "sidekey minted and attached this token; the agent never saw it",
                }),
            )
        }
        Err(why) => unauthorized(&why),
    }
}

/// The token's claims, if a key of `jwks` signed it for [`DEMO_AUDIENCE`] and it has not
/// expired.
fn verify(jwks: &[u8], token: &str) -> Result<Value, String> {
    let set: JwkSet = serde_json::from_slice(jwks).map_err(|e| format!("bad JWKS: {e}"))?;
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
    let kid = header
        .kid
        .as_deref()
        .ok_or("the token names no key (kid)")?;
    let jwk = set
        .find(kid)
        .ok_or("no key of the local issuer's JWKS signed it")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[DEMO_AUDIENCE]);
    validation.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| format!("rejected: {e}"))
}

fn unauthorized(why: &str) -> Response<Full<bytes::Bytes>> {
    let mut response = reply(
        StatusCode::UNAUTHORIZED,
        json!({"verified": false, "error": why}),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"sidekey-demo\""),
    );
    response
}

fn reply(status: StatusCode, body: Value) -> Response<Full<bytes::Bytes>> {
    let mut response = Response::new(Full::new(bytes::Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
