//! The life of one request, after its target has been identified, as named phases:
//! decide → credential → rewrite → forward → respond (audit is written by whichever phase ends
//! the exchange). Listeners only identify the target and call [`handle`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sidekey_audit::Outcome;
use sidekey_config::Inject;
use sidekey_credentials::{Credential, CredentialValue};
use sidekey_inject::sigv4::{self, AwsKeys, Payload, SigV4Error, SigningScope};
use sidekey_policy::{Decision, DenyCode, RequestPath, Target};
use zeroize::Zeroizing;

use crate::audit::PendingRecord;
use crate::body::{empty, full, scrub_headers, Counted, Metered, Needles, ProxyBody, Scrubbed};
use crate::decode;
use crate::error::{ErrorCode, Refusal};
use crate::form;
use crate::form::FieldScanner;
use crate::{ProxyState, RouteRuntime};

/// The agent's task ID travels in this header; it is recorded and never forwarded.
const TASK_HEADER: &str = "x-sidekey-task";

/// At most this much of a refused request's body is read (and discarded) before the refusal is
/// sent, and for at most [`DRAIN_TIME`]: see [`drain`].
const DRAIN_LIMIT: u64 = 4 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// The largest body read to sign its hash (SigV4 for services other than S3).
const SIGNED_BODY_LIMIT: usize = 10 << 20;
/// How long the agent gets to send a body that is to be signed.
const SIGNED_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest url-encoded POST body read whole to be checked for a `_method` field, on routes
/// that do not allow every method (smaller if the route's `max_request_body` is).
const FORM_BODY_LIMIT: u64 = 64 << 10;
/// How long the agent gets to send such a body.
const FORM_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the listener established about a request before policy sees it.
pub struct Exchange {
    pub request_id: String,
    pub listener: &'static str,
    pub target: Target,
    pub started: Instant,
    /// Unrouted targets may pass without a credential (`unmatched: tunnel`). Only for plain
    /// HTTP on the forward listener: an intercepted tunnel always names a route.
    pub may_pass_unmatched: bool,
    /// Only this route applies (the route listener addresses one route by name).
    pub only_route: Option<usize>,
}

impl Exchange {
    pub fn new(listener: &'static str, target: Target) -> Self {
        Exchange {
            request_id: uuid::Uuid::now_v7().simple().to_string(),
            listener,
            target,
            started: Instant::now(),
            may_pass_unmatched: false,
            only_route: None,
        }
    }

    /// A refusal made before the request reached policy (malformed request, mismatch): audited
    /// and answered.
    pub fn refuse(
        &self,
        state: &ProxyState,
        method: &str,
        path: &str,
        refusal: Refusal,
    ) -> Response<ProxyBody> {
        let record = PendingRecord::new(
            state.audit.clone(),
            &self.request_id,
            self.listener,
            method,
            &self.target,
            path,
            self.started,
        );
        refuse(record, &self.request_id, refusal)
    }
}

/// Refuses a request whose target could not be identified (malformed authority, wrong
/// listener usage). Audited with the target text as sent, truncated.
pub fn refuse_unidentified(
    state: &ProxyState,
    listener: &'static str,
    method: &str,
    raw_target: &str,
    refusal: Refusal,
) -> Response<ProxyBody> {
    let request_id = uuid::Uuid::now_v7().simple().to_string();
    let shown: String = raw_target.chars().take(255).collect();
    let record = PendingRecord::with_target_text(
        state.audit.clone(),
        &request_id,
        listener,
        method,
        ("", shown, 0),
        "",
        Instant::now(),
    );
    refuse(record, &request_id, refusal)
}

/// Checks that the request names the target it was routed by: the Host header (exactly one),
/// and, inside a tunnel, the URI authority (HTTP/2 `:authority`) too. A different host or port
/// is `target_mismatch`; a missing or unparsable one is `request_invalid`.
pub fn check_host_header<B>(
    request: &Request<B>,
    target: &Target,
    in_tunnel: bool,
) -> Result<(), Refusal> {
    let same = |text: &str, what: &str| -> Result<(), Refusal> {
        let authority = sidekey_policy::Authority::parse(text).map_err(|e| {
            Refusal::new(
                ErrorCode::RequestInvalid,
                format!("{what} `{text}` is invalid: {e}"),
            )
        })?;
        if authority.host != target.host || authority.port_or_default(target.scheme) != target.port
        {
            return Err(Refusal::new(
                ErrorCode::TargetMismatch,
                format!(
                    "{what} names {text} but the request goes to {}:{}",
                    target.host, target.port
                ),
            ));
        }
        Ok(())
    };
    let mut named = false;
    if in_tunnel {
        if let Some(authority) = request.uri().authority() {
            same(authority.as_str(), "request authority")?;
            named = true;
        }
    }
    let mut hosts = request.headers().get_all(http::header::HOST).iter();
    if let Some(host) = hosts.next() {
        if hosts.next().is_some() {
            return Err(Refusal::new(
                ErrorCode::RequestInvalid,
                "more than one Host header",
            ));
        }
        let text = host
            .to_str()
            .map_err(|_| Refusal::new(ErrorCode::RequestInvalid, "Host header is not ASCII"))?;
        same(text, "Host header")?;
        named = true;
    }
    if !named && request.version() != Version::HTTP_10 {
        return Err(Refusal::new(
            ErrorCode::RequestInvalid,
            "request has no Host header",
        ));
    }
    Ok(())
}

/// Runs every phase for one request whose target is known.
pub async fn handle(
    state: Arc<ProxyState>,
    exchange: Exchange,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let (mut parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut record = PendingRecord::new(
        state.audit.clone(),
        &exchange.request_id,
        exchange.listener,
        parts.method.as_str(),
        &exchange.target,
        &path_and_query,
        exchange.started,
    );
    record.set_task_id(task_id(&parts));

    // decide
    let allowed = match decide(&state, &exchange, &parts, &path_and_query) {
        Ok(allowed) => allowed,
        Err(refusal) => {
            drain(&parts, body).await;
            return refuse(record, &exchange.request_id, refusal);
        }
    };
    let route = allowed.as_ref().map(|a| a.route);
    match route {
        Some(route) => {
            record.set_route(&route.name);
            record.set_decision(Outcome::Allow);
        }
        None => record.set_decision(Outcome::Tunnel),
    }

    // hyper knows a declared length (HTTP/1 Content-Length, HTTP/2 content-length).
    let declared = http_body::Body::size_hint(&body).exact();
    // A body the route will not take is refused before anything else happens.
    let max_body = route.and_then(|r| r.max_request_body);
    if let Some(max) = max_body {
        if declared.is_some_and(|len| len > max) {
            let refusal = Refusal::new(
                ErrorCode::BodyTooLarge,
                format!("the body is larger than this route's max_request_body ({max} bytes)"),
            );
            drain(&parts, body).await;
            return refuse(record, &exchange.request_id, refusal);
        }
    }

    // A `_method` field in a POST form body is checked like the query parameter, before the
    // upstream can act on the request: a small url-encoded body is read whole here, any other
    // form body is scanned as it streams (below).
    let form = match &allowed {
        Some(allowed) => form_check(&state, &exchange, &parts, allowed),
        None => Ok(FormCheck::None),
    };
    let form = match form {
        Ok(form) => form,
        Err(refusal) => {
            drain(&parts, body).await;
            return refuse(record, &exchange.request_id, refusal);
        }
    };
    let check = match (&form, &allowed) {
        (FormCheck::None, _) | (_, None) => None,
        (_, Some(allowed)) => Some(override_check(&state, &exchange, allowed)),
    };
    // A url-encoded body that says it is small is read whole: the upstream then sees nothing of
    // a refused request. Any other (large, or of unknown length) is scanned as it streams.
    let mut incoming = Some(body);
    let mut buffered: Option<Bytes> = None;
    if let (FormCheck::UrlEncoded { limit }, Some(check)) = (&form, &check) {
        if declared.is_some_and(|len| len <= *limit) {
            if let Some(body) = incoming.take() {
                match read_urlencoded_form(body, *limit, check).await {
                    Ok(bytes) => buffered = Some(bytes),
                    Err(refusal) => return refuse(record, &exchange.request_id, refusal),
                }
            }
        }
    }

    // A SigV4 signature over the payload needs the whole body: read it before the credential
    // is fetched, so that keys are never held waiting on a slow agent.
    if route.is_some_and(|r| signs_payload(r.inject.as_ref())) {
        if let Some(body) = incoming.take() {
            let read = match read_to_sign(body).await {
                // A multipart body read whole is checked whole.
                Ok(bytes) => match &check {
                    Some(check) => check_form_body(&form, &bytes, check).map(|()| bytes),
                    None => Ok(bytes),
                },
                Err(refusal) => Err(refusal),
            };
            match read {
                Ok(bytes) => buffered = Some(bytes),
                Err(refusal) => return refuse(record, &exchange.request_id, refusal),
            }
        }
    }

    // credential
    let credential = match route {
        Some(route) => match credential(&state, route).await {
            Ok(credential) => credential,
            Err(refusal) => {
                if let Some(name) = &route.credential {
                    record.set_credential(name, route.issuer.as_deref(), None);
                }
                if let Some(body) = incoming {
                    drain(&parts, body).await;
                }
                return refuse(record, &exchange.request_id, refusal);
            }
        },
        None => None,
    };
    if let (Some(route), Some(credential)) = (route, &credential) {
        if let Some(name) = &route.credential {
            record.set_credential(name, route.issuer.as_deref(), Some(&credential.id.0));
        }
    }

    // rewrite
    let payload = match &buffered {
        Some(bytes) => Payload::Bytes(bytes),
        None => Payload::Unsigned,
    };
    if let Err(refusal) = rewrite(
        &mut parts,
        &exchange.target,
        &path_and_query,
        route,
        credential.as_deref(),
        payload,
    ) {
        if let Some(body) = incoming {
            drain(&parts, body).await;
        }
        return refuse(record, &exchange.request_id, refusal);
    }
    let needles = credential
        .as_deref()
        .map(|c| needles(c, route.and_then(|r| r.inject.as_ref()), &parts.headers));
    let counter = record.bytes_in_counter();
    let verdict = form::Verdict::default();
    let body = match (incoming, buffered) {
        (Some(body), _) => {
            let body = match max_body {
                // A body without a length that grows past the limit is cut off; the failed
                // forward is then reported as body_too_large.
                // (Counted inside, so that the count shows the body went past the limit.)
                Some(max) => http_body_util::Limited::new(
                    Counted::new(body, Arc::clone(&counter)),
                    usize::try_from(max).unwrap_or(usize::MAX),
                )
                .boxed_unsync(),
                None => Counted::new(body, Arc::clone(&counter)).boxed_unsync(),
            };
            let scanner: Option<Box<dyn form::FieldScanner>> = match &form {
                FormCheck::Multipart { boundary } => {
                    Some(Box::new(form::MultipartScanner::new(boundary)))
                }
                FormCheck::UrlEncoded { .. } => Some(Box::new(form::UrlEncodedScanner::default())),
                FormCheck::None => None,
            };
            match (scanner, check) {
                (Some(scanner), Some(check)) => {
                    form::FormGuard::new(body, scanner, check, Arc::clone(&verdict)).boxed_unsync()
                }
                _ => body,
            }
        }
        (None, Some(bytes)) => {
            counter.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            full(bytes)
        }
        (None, None) => empty(),
    };

    // forward
    let allow_private = route.is_some_and(|r| r.allow_private);
    let sent = state
        .upstream
        .send(Request::from_parts(parts, body), allow_private)
        .await;
    if let Some(refusal) = verdict.get() {
        // A `_method` field the route does not allow stopped the body before its end: the
        // upstream got an incomplete request, which it does not act on.
        return refuse(record, &exchange.request_id, refusal.clone());
    }
    let response = match sent {
        Ok(response) => response,
        Err(refusal) => {
            // The forward failed because the body was cut off at the route's limit.
            let over = max_body
                .is_some_and(|max| counter.load(std::sync::atomic::Ordering::Relaxed) > max);
            let refusal = if over {
                Refusal::new(
                    ErrorCode::BodyTooLarge,
                    "the body grew larger than this route's max_request_body",
                )
            } else {
                refusal
            };
            return refuse(record, &exchange.request_id, refusal);
        }
    };

    // respond
    respond(response, record, &exchange.request_id, needles)
}

/// What policy allowed: the route, where it is in the policy that decided, and the path as
/// checked (a method named in the body is checked later against the same three).
struct Allowed<'s> {
    route: &'s RouteRuntime,
    index: usize,
    path: RequestPath,
}

/// Policy: the first route allowing target, method and path; `Ok(None)` means an unrouted
/// target passing without a credential.
fn decide<'s>(
    state: &'s ProxyState,
    exchange: &Exchange,
    parts: &Parts,
    path_and_query: &str,
) -> Result<Option<Allowed<'s>>, Refusal> {
    let raw_path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    let path = RequestPath::parse(raw_path).map_err(|e| {
        let code = if e.is_malformed() {
            ErrorCode::RequestInvalid
        } else {
            ErrorCode::PathNotAllowed
        };
        Refusal::new(code, format!("path refused: {e}"))
    })?;
    let (policy, first) = match exchange.only_route {
        Some(index) => match state.route_policies.get(index) {
            Some(policy) => (policy, index),
            None => return Err(Refusal::new(ErrorCode::HostNotAllowed, "no such route")),
        },
        None => (&state.policy, 0),
    };
    match policy.decide(&exchange.target, parts.method.as_str(), &path) {
        Decision::Allow { route } => {
            check_method_overrides(policy, exchange, parts, path_and_query, &path, route)?;
            Ok(state.routes.get(first + route).map(|runtime| Allowed {
                route: runtime,
                index: route,
                path,
            }))
        }
        Decision::Deny(denial)
            if denial.code == DenyCode::HostNotAllowed
                && exchange.may_pass_unmatched
                && state.unmatched == sidekey_config::Unmatched::Tunnel =>
        {
            Ok(None)
        }
        Decision::Deny(denial) => Err(Refusal::new(denial.code.into(), denial.message)),
    }
}

/// Headers that server frameworks read as "the real method" of a request (Express
/// method-override, Rails, Symfony, ASP.NET, Google APIs, …). An agent allowed GET could
/// otherwise DELETE through them. The `_method` field is found by [`form`]: here in the query,
/// and in POST bodies through [`form_check`].
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// A request naming another method in an override header or `_method` query parameter is
/// allowed only if the route that allowed it (the same route: its credential is the one
/// attached) allows that method too (see [`check_override`]).
fn check_method_overrides(
    policy: &sidekey_policy::Policy,
    exchange: &Exchange,
    parts: &Parts,
    path_and_query: &str,
    path: &RequestPath,
    route: usize,
) -> Result<(), Refusal> {
    let mut asked: Vec<(String, &str)> = Vec::new();
    for name in METHOD_OVERRIDE_HEADERS {
        for value in parts.headers.get_all(name) {
            let text = value.to_str().map_err(|_| {
                Refusal::new(ErrorCode::RequestInvalid, format!("{name} is not ASCII"))
            })?;
            asked.push((text.trim().to_string(), name));
        }
    }
    if let Some((_, query)) = path_and_query.split_once('?') {
        for value in form::urlencoded_overrides(query.as_bytes()) {
            asked.push((value, "the _method query parameter"));
        }
    }
    for (method, source) in asked {
        check_override(policy, &exchange.target, path, route, &method, source)?;
    }
    Ok(())
}

/// One overriding method: allowed if the same route allows it, upper-cased as the frameworks
/// upper-case it. A value that is not one method token is `request_invalid`: the upstream's
/// reading of it cannot be predicted.
fn check_override(
    policy: &sidekey_policy::Policy,
    target: &Target,
    path: &RequestPath,
    route: usize,
    method: &str,
    source: &str,
) -> Result<(), Refusal> {
    let valid = !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return Err(Refusal::new(
            ErrorCode::RequestInvalid,
            format!("{source} must name one method"),
        ));
    }
    let method = method.to_ascii_uppercase();
    match policy.decide(target, &method, path) {
        Decision::Allow { route: r } if r == route => Ok(()),
        _ => Err(Refusal::new(
            ErrorCode::MethodNotAllowed,
            format!(
                "{source} asks for {method}, which the route does not allow for {}:{}",
                target.host.to_uri_host(),
                target.port
            ),
        )),
    }
}

/// How a POST body is checked for a `_method` field before the upstream can act on it.
enum FormCheck {
    /// Nothing to check: not a POST, not a form, or the route allows every method.
    None,
    /// A url-encoded body: read whole and checked before it is sent if it declares a length of at
    /// most `limit` bytes, else scanned as it streams ([`form::FormGuard`]).
    UrlEncoded { limit: u64 },
    /// A multipart body, scanned as it streams ([`form::FormGuard`]).
    Multipart { boundary: String },
}

/// Frameworks honour `_method` in the body of a POST only (Rack, Laravel, Symfony). A route
/// that allows every method has nothing to protect.
fn form_check(
    state: &ProxyState,
    exchange: &Exchange,
    parts: &Parts,
    allowed: &Allowed<'_>,
) -> Result<FormCheck, Refusal> {
    if parts.method != http::Method::POST {
        return Ok(FormCheck::None);
    }
    let any_method = override_policy(state, exchange)
        .routes()
        .get(allowed.index)
        .is_some_and(|r| r.methods == sidekey_policy::MethodSet::Any);
    if any_method {
        return Ok(FormCheck::None);
    }
    Ok(match form::form_kind(parts)? {
        None => FormCheck::None,
        Some(form::FormKind::UrlEncoded) => FormCheck::UrlEncoded {
            limit: allowed
                .route
                .max_request_body
                .map_or(FORM_BODY_LIMIT, |max| max.min(FORM_BODY_LIMIT)),
        },
        Some(form::FormKind::Multipart { boundary }) => FormCheck::Multipart { boundary },
    })
}

/// The policy that decided the exchange (the route listener's one-route policy, or the whole).
fn override_policy<'s>(state: &'s ProxyState, exchange: &Exchange) -> &'s sidekey_policy::Policy {
    exchange
        .only_route
        .and_then(|i| state.route_policies.get(i))
        .unwrap_or(&state.policy)
}

/// The check of a `_method` value found in the body of this exchange, owned so that a body
/// scanned as it streams can carry it.
fn override_check(
    state: &Arc<ProxyState>,
    exchange: &Exchange,
    allowed: &Allowed<'_>,
) -> form::OverrideCheck {
    let state = Arc::clone(state);
    let only_route = exchange.only_route;
    let target = exchange.target.clone();
    let path = allowed.path.clone();
    let route = allowed.index;
    Arc::new(move |value: &str| {
        let policy = only_route
            .and_then(|i| state.route_policies.get(i))
            .unwrap_or(&state.policy);
        check_override(
            policy,
            &target,
            &path,
            route,
            value,
            "the _method field of the body",
        )
    })
}

/// Reads a url-encoded POST body that declared at most `limit` bytes whole and checks its
/// `_method` fields; returns it, to be forwarded as it came.
async fn read_urlencoded_form(
    body: Incoming,
    limit: u64,
    check: &form::OverrideCheck,
) -> Result<Bytes, Refusal> {
    let too_large = Refusal::new(
        ErrorCode::BodyTooLarge,
        format!("the form body is longer than the {limit} bytes it declared"),
    );
    match read_whole(body, limit, FORM_BODY_TIMEOUT).await {
        Ok(bytes) => {
            for value in form::urlencoded_overrides(&bytes) {
                check(&value)?;
            }
            Ok(bytes)
        }
        Err(ReadError::TooLarge) => Err(too_large),
        Err(e) => Err(e.refusal("the form body")),
    }
}

/// Checks a whole body (url-encoded, or multipart that was read whole to be signed) for
/// `_method` fields.
fn check_form_body(
    kind: &FormCheck,
    bytes: &[u8],
    check: &form::OverrideCheck,
) -> Result<(), Refusal> {
    let values = match kind {
        FormCheck::None => return Ok(()),
        FormCheck::UrlEncoded { .. } => form::urlencoded_overrides(bytes),
        FormCheck::Multipart { boundary } => {
            let mut scanner = form::MultipartScanner::new(boundary);
            let scanned = scanner.feed(bytes).and_then(|mut values| {
                values.extend(scanner.finish()?);
                Ok(values)
            });
            scanned.map_err(|e| Refusal::new(ErrorCode::RequestInvalid, e.to_string()))?
        }
    };
    values.iter().try_for_each(|value| check(value))
}

/// The route's credential, from the store (a lookup on a hit; the issuer only on a miss).
async fn credential(
    state: &ProxyState,
    route: &RouteRuntime,
) -> Result<Option<Arc<Credential>>, Refusal> {
    let Some(name) = &route.credential else {
        return Ok(None);
    };
    state
        .credentials
        .get(name)
        .await
        .map(Some)
        .map_err(|e| Refusal::new(ErrorCode::CredentialUnavailable, e.to_string()))
}

/// Turns the agent's request into the upstream request: absolute URI for the target, no
/// hop-by-hop or sidekey headers, the agent's copy of the injected header removed, the
/// credential attached.
fn rewrite(
    parts: &mut Parts,
    target: &Target,
    path_and_query: &str,
    route: Option<&RouteRuntime>,
    credential: Option<&Credential>,
    payload: Payload<'_>,
) -> Result<(), Refusal> {
    // The authority as the upstream sees it (Host / :authority): no default port, so that a
    // signature over it matches what is sent.
    let authority = if target.port == target.scheme.default_port() {
        target.host.to_uri_host()
    } else {
        format!("{}:{}", target.host.to_uri_host(), target.port)
    };
    let uri = format!("{}://{authority}{path_and_query}", target.scheme.as_str(),);
    parts.uri = Uri::try_from(uri).map_err(|_| {
        Refusal::new(
            ErrorCode::RequestInvalid,
            "request target cannot be forwarded",
        )
    })?;
    // The client speaks HTTP/1.1 or HTTP/2 upstream as ALPN decides, whatever the agent used.
    parts.version = Version::HTTP_11;
    sidekey_inject::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(http::header::HOST);
    parts.headers.remove(TASK_HEADER);
    parts.extensions.clear();
    if credential.is_some() {
        // A compressed body could carry the credential past the mask (see `respond`): ask for
        // none. An upstream that compresses anyway is decoded before the mask.
        parts.headers.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    let Some(inject) = route.and_then(|r| r.inject.as_ref()) else {
        return Ok(());
    };
    let Some(credential) = credential else {
        return sidekey_inject::strip_injected(&mut parts.headers, &mut parts.uri, inject)
            .map_err(|e| Refusal::new(ErrorCode::RequestInvalid, e.to_string()));
    };
    match (inject, &credential.value) {
        (
            Inject::SigV4 { service, region },
            CredentialValue::Aws {
                access_key_id,
                secret_access_key,
                session_token,
            },
        ) => {
            let keys = AwsKeys {
                access_key_id,
                secret_access_key: secret_access_key.expose(),
                session_token: Some(session_token.expose()),
            };
            let scope = SigningScope {
                service,
                region,
                time: SystemTime::now(),
            };
            sigv4::sign(
                &parts.method,
                &authority,
                &parts.uri.clone(),
                &mut parts.headers,
                payload,
                &keys,
                &scope,
            )
            .map_err(|e| {
                let code = match e {
                    SigV4Error::InvalidKeys | SigV4Error::InvalidScope => {
                        ErrorCode::CredentialUnavailable
                    }
                    _ => ErrorCode::RequestInvalid,
                };
                Refusal::new(code, format!("cannot sign the request: {e}"))
            })
        }
        (_, CredentialValue::Token(secret)) => {
            sidekey_inject::inject(&mut parts.headers, &mut parts.uri, inject, secret)
                .map_err(|e| Refusal::new(ErrorCode::CredentialUnavailable, e.to_string()))
        }
        (_, CredentialValue::Aws { .. }) => Err(Refusal::new(
            ErrorCode::CredentialUnavailable,
            "AWS keys can only sign requests (inject: sigv4)",
        )),
    }
}

/// Whether the route signs a hash of the body (SigV4 for every service but S3, which takes
/// UNSIGNED-PAYLOAD and lets the body stream).
fn signs_payload(inject: Option<&Inject>) -> bool {
    matches!(inject, Some(Inject::SigV4 { service, .. }) if !sigv4::is_s3(service))
}

/// Reads a body whose hash is to be signed, up to [`SIGNED_BODY_LIMIT`] and for at most
/// [`SIGNED_BODY_TIMEOUT`].
async fn read_to_sign(body: Incoming) -> Result<Bytes, Refusal> {
    match read_whole(body, SIGNED_BODY_LIMIT as u64, SIGNED_BODY_TIMEOUT).await {
        Ok(bytes) => Ok(bytes),
        Err(ReadError::TooLarge) => Err(Refusal::new(
            ErrorCode::RequestInvalid,
            format!(
                "the body is larger than {} MiB: a SigV4 signature over it cannot be made \
                 (S3 streams bodies of any size)",
                SIGNED_BODY_LIMIT >> 20
            ),
        )),
        Err(e) => Err(e.refusal("a SigV4 signature")),
    }
}

/// Why a body could not be read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadError {
    TooLarge,
    TimedOut(Duration),
    Failed,
}

impl ReadError {
    /// The refusal for anything but [`ReadError::TooLarge`]; `needs` says what needed the
    /// whole body.
    fn refusal(self, needs: &str) -> Refusal {
        match self {
            ReadError::TimedOut(time) => Refusal::new(
                ErrorCode::RequestInvalid,
                format!("the body did not arrive within {time:?}: {needs} needs all of it"),
            ),
            ReadError::TooLarge | ReadError::Failed => Refusal::new(
                ErrorCode::RequestInvalid,
                "the request body ended abnormally",
            ),
        }
    }
}

/// Reads a whole body of at most `limit` bytes within `time`.
async fn read_whole(body: Incoming, limit: u64, time: Duration) -> Result<Bytes, ReadError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let read = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(time, read).await {
        Err(_) => Err(ReadError::TimedOut(time)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
        Ok(Err(_)) => Err(ReadError::Failed),
    }
}

/// Every spelling of the credential just attached that must not come back to the agent: each
/// secret raw and percent-encoded (query injection, an echoed URL), and the injected header
/// value as sent (for Basic, the base64 of `user:token`, which contains no raw secret).
fn needles(credential: &Credential, inject: Option<&Inject>, headers: &http::HeaderMap) -> Needles {
    let mut out: Vec<Zeroizing<Vec<u8>>> = Vec::new();
    for secret in credential.secrets() {
        let raw = secret.expose().as_bytes();
        out.push(Zeroizing::new(raw.to_vec()));
        let encoded = percent_encoded(raw);
        if encoded[..] != raw[..] {
            out.push(encoded);
        }
    }
    let header = match inject {
        Some(Inject::Header { name, .. }) => HeaderName::from_bytes(name.as_bytes()).ok(),
        Some(Inject::Basic { .. }) => Some(http::header::AUTHORIZATION),
        _ => None,
    };
    if let Some(value) = header.and_then(|h| headers.get(h)) {
        out.push(Zeroizing::new(value.as_bytes().to_vec()));
    }
    out.retain(|n| !n.is_empty());
    Arc::new(out)
}

/// `bytes` with everything but RFC 3986 unreserved characters percent-encoded (upper-case hex),
/// as the query injection writes it.
fn percent_encoded(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len() * 3));
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    out
}

/// The upstream response on its way back: hop-by-hop headers dropped, any header echoing the
/// injected credential replaced and every echo of it in the body masked (see [`Scrubbed`]), the
/// body streamed through a meter that writes the audit record. A credentialed response the
/// upstream compressed (although sidekey asked for identity) is decoded first, so that the mask
/// sees what the agent would see; one coded in a way sidekey cannot decode is refused
/// (`upstream_encoding`) and its body never passed on.
fn respond(
    response: Response<Incoming>,
    mut record: PendingRecord,
    request_id: &str,
    needles: Option<Needles>,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    let mut codings = Vec::new();
    if needles.is_some() && !http_body::Body::is_end_stream(&body) {
        // Transfer codings are read before the hop-by-hop headers go.
        match decode::applied_codings(&parts.headers) {
            Ok(list) => codings = list,
            Err(e) => {
                return refuse(
                    record,
                    request_id,
                    Refusal::new(ErrorCode::UpstreamEncoding, e.to_string()),
                );
            }
        }
    }
    sidekey_inject::strip_hop_by_hop(&mut parts.headers);
    if needles.is_some() {
        // What the agent gets is decoded (or had nothing to decode): no coding to undo, and a
        // length that no longer holds.
        if !codings.is_empty() || parts.headers.contains_key(http::header::CONTENT_ENCODING) {
            parts.headers.remove(http::header::CONTENT_ENCODING);
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
    }
    if let Some(needles) = &needles {
        scrub_headers(&mut parts.headers, needles);
    }
    if let Ok(id) = HeaderValue::from_str(request_id) {
        parts
            .headers
            .insert(HeaderName::from_static("x-sidekey-request-id"), id);
    }
    record.set_status(parts.status.as_u16());
    let body = match needles {
        Some(needles) if !codings.is_empty() => Metered::new(
            Scrubbed::new(decode::decoded(body, &codings), needles),
            record,
        )
        .boxed_unsync(),
        Some(needles) if !needles.is_empty() => {
            Metered::new(Scrubbed::new(body, needles), record).boxed_unsync()
        }
        _ => Metered::new(body, record).boxed_unsync(),
    };
    Response::from_parts(parts, body)
}

/// Sends a refusal of `request` once what the agent is still uploading has been read (see
/// [`drain`]). For refusals made before the request reached [`handle`].
pub async fn drained(
    request: Request<Incoming>,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    drain(&parts, body).await;
    response
}

/// Reads and discards the body of a request being refused, up to [`DRAIN_LIMIT`] bytes and
/// [`DRAIN_TIME`], so that a client still uploading gets to read the refusal: an HTTP/2 stream
/// answered before its body ends is reset (RST_STREAM), and some clients (curl 7.88) then
/// report the reset instead of the response; an HTTP/1.1 connection stays usable. A client that
/// asked `Expect: 100-continue` has sent nothing yet and is answered at once; a longer or slower
/// body is abandoned (the stream or connection is reset, as before).
async fn drain(parts: &Parts, mut body: Incoming) {
    if http_body::Body::is_end_stream(&body) || parts.headers.contains_key(http::header::EXPECT) {
        return;
    }
    let read = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > DRAIN_LIMIT {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

fn refuse(record: PendingRecord, request_id: &str, refusal: Refusal) -> Response<ProxyBody> {
    let code = refusal.code;
    tracing::debug!(request_id, code = code.as_str(), message = %refusal.message, "request refused");
    let response = refusal.into_response(request_id);
    let len = http_body::Body::size_hint(response.body())
        .exact()
        .unwrap_or(0);
    record.finish_refused(code, len);
    response
}

/// The agent's task ID: visible ASCII, at most 128 bytes; anything else is ignored.
fn task_id(parts: &Parts) -> Option<String> {
    let value = parts.headers.get(TASK_HEADER)?.to_str().ok()?;
    (value.len() <= 128 && !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| value.to_string())
}
