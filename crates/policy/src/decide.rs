//! Every yes or no of a request's life, in the order the data plane asks, each a pure function
//! of what the agent sent and the policy:
//!
//! 1. **Identify**: which target a listener's request names, or why it names none:
//!    [`connect_target`] (the CONNECT authority), [`absolute_target`] (an `http://` URI on the
//!    forward listener), [`route_target`] (`/r/<route>/…` on the route listener). The result
//!    is an [`Identified`] target; inside an intercepted tunnel, [`check_sni`] says whether the
//!    TLS server name agrees with it.
//! 2. **Connect**: what a CONNECT becomes ([`Policy::decide_connect`]): intercepted, tunnelled
//!    blindly, or refused.
//! 3. **Request**: whether a request may go, by which route, and how its body must be handled
//!    ([`Policy::decide_request`]): framing, agreement of SNI, Host and `:authority` with the
//!    target, the path, the route match, method overrides, `unmatched`, the body plan.
//!
//! The data plane (`sidekey-proxy`) calls these and does what they say; it decides nothing
//! itself. Only the address check on the upstream's resolved IP comes later, from
//! [`crate::AddressGuard`], because it needs the answer of a DNS lookup.

use http::request::Parts;
use http::{Method, Uri, Version};

use crate::form::{form_kind, urlencoded_overrides, FormKind, METHOD_OVERRIDE_HEADERS};
use crate::grant::GrantScope;
use crate::route::{Decision, MethodSet, Policy, Unmatched};
use crate::{Authority, CanonicalHost, ErrorCode, Refusal, RequestPath, Scheme, Target};

/// The largest url-encoded POST body read whole to be checked for a `_method` field before
/// anything is sent, on routes that do not allow every method (less if the route's
/// `max_request_body` is less). Larger ones are scanned as they stream.
pub const FORM_BODY_LIMIT: u64 = 64 << 10;

/// The largest body read whole to sign its hash (SigV4 for services other than S3).
pub const SIGNED_BODY_LIMIT: u64 = 10 << 20;

/// The task label an agent may assert about itself when grants are not required (recorded,
/// never forwarded); with grants the task is the grant's.
pub const TASK_HEADER: http::HeaderName = http::HeaderName::from_static("x-sidekey-task");

/// How a listener identified the target of a request: the one input of
/// [`Policy::decide_request`] that differs by listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identified {
    /// An absolute-form `http://…` request on the forward listener (HTTP_PROXY): the URI names
    /// the target, and the Host header must agree. When no route names the target,
    /// `unmatched: tunnel` lets it pass without a credential.
    Absolute(Target),
    /// A request inside an intercepted CONNECT tunnel: the CONNECT authority is the target; the
    /// TLS server name and each request's Host and `:authority` must agree with it.
    Intercepted { target: Target, sni: Sni },
    /// `/r/<route>/…` on the route listener: the route names the target and only that route
    /// applies. The Host header names the listener, not the upstream, and is not checked.
    Route { target: Target, route: usize },
}

impl Identified {
    pub fn target(&self) -> &Target {
        match self {
            Identified::Absolute(target)
            | Identified::Intercepted { target, .. }
            | Identified::Route { target, .. } => target,
        }
    }

    /// The listener, as the audit trail names it.
    pub fn listener(&self) -> &'static str {
        match self {
            Identified::Absolute(_) | Identified::Intercepted { .. } => "forward",
            Identified::Route { .. } => "routes",
        }
    }
}

/// The TLS server name (SNI) an agent sent inside a CONNECT tunnel, compared with the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// It names the target, or there is none and the target is an IP address (clients send no
    /// SNI for IP addresses; TLS forbids them there).
    Agrees,
    /// None, for a target that is a name.
    Missing,
    /// Another name than the target's, as sent.
    Other(String),
}

/// Compares the server name of the agent's ClientHello with the CONNECT target. The handshake
/// goes on whatever the answer, so that every request inside gets a readable refusal.
pub fn check_sni(target: &Target, sni: Option<&str>) -> Sni {
    match sni {
        Some(name) => match CanonicalHost::parse(name) {
            Ok(host) if host == target.host => Sni::Agrees,
            _ => Sni::Other(name.to_string()),
        },
        None if target.host.ip().is_some() => Sni::Agrees,
        None => Sni::Missing,
    }
}

/// The target of `CONNECT host:port`. Only the authority form (RFC 9110 §9.3.6): an absolute
/// URL or a path would be a second description of the target, one of which would have to be
/// ignored.
pub fn connect_target(uri: &Uri) -> Result<Target, Refusal> {
    let invalid = |message: String| Refusal::new(ErrorCode::RequestInvalid, message);
    if uri.scheme().is_some() || !uri.path().is_empty() || uri.query().is_some() {
        return Err(invalid(format!(
            "CONNECT target `{uri}` must be host:port, with no scheme or path"
        )));
    }
    let raw = uri.authority().map_or("", |a| a.as_str());
    let authority = Authority::parse(raw)
        .map_err(|e| invalid(format!("CONNECT target `{raw}` is invalid: {e}")))?;
    let Some(port) = authority.port else {
        return Err(invalid(format!("CONNECT target `{raw}` needs a port")));
    };
    Ok(Target {
        scheme: Scheme::Https,
        host: authority.host,
        port,
    })
}

/// The target of an absolute-form request on the forward listener (`GET http://host/path`).
/// HTTPS goes through CONNECT; an origin-form request (`GET /path`) means the client took the
/// forward listener for a server.
pub fn absolute_target(uri: &Uri) -> Result<Target, Refusal> {
    let invalid = |message: String| Refusal::new(ErrorCode::RequestInvalid, message);
    let raw = match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(authority)) => authority.as_str(),
        (Some("https"), Some(_)) => {
            return Err(invalid(
                "https:// URLs go through CONNECT: set HTTPS_PROXY to this listener".into(),
            ))
        }
        (None, None) => {
            return Err(invalid(
                "this is sidekey's forward proxy: send absolute-form requests (HTTP_PROXY) or \
                 CONNECT; clients that need a base URL use the route listener's /r/<route>/"
                    .into(),
            ))
        }
        _ => return Err(invalid(format!("unsupported request target `{uri}`"))),
    };
    let authority = Authority::parse(raw)
        .map_err(|e| invalid(format!("request target host `{raw}` is invalid: {e}")))?;
    Ok(Target {
        scheme: Scheme::Http,
        port: authority.port_or_default(Scheme::Http),
        host: authority.host,
    })
}

/// [`absolute_target`] for the requests of one agent connection, which name the same authority
/// again and again: the last target is kept with the authority it was parsed from, and a request
/// written the same way gets it again without a parse (a compare of the bytes, and the host's
/// `Arc` shared rather than allocated). The answer is the same as [`absolute_target`]'s, which
/// depends on nothing but the URI; only parsed targets are kept. The authority is copied: a
/// slice of the request would keep hyper's whole read buffer alive with the connection.
#[derive(Debug, Default)]
pub struct TargetMemo {
    last: Option<(Box<str>, Target)>,
}

impl TargetMemo {
    pub fn absolute_target(&mut self, uri: &Uri) -> Result<Target, Refusal> {
        if let (Some("http"), Some(authority), Some((last, target))) =
            (uri.scheme_str(), uri.authority(), &self.last)
        {
            if authority.as_str() == &**last {
                return Ok(target.clone());
            }
        }
        let target = absolute_target(uri)?;
        if let Some(authority) = uri.authority() {
            self.last = Some((authority.as_str().into(), target.clone()));
        }
        Ok(target)
    }
}

/// A request on the route listener, resolved: the route, its target, and the path to send
/// there (what follows `/r/<route>`, at least `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAddress {
    pub identified: Identified,
    pub path: String,
}

/// Resolves `/r/<route>/<path>` (the request's path, without the query). Only routes that name
/// exactly one exact host over HTTPS can be reached this way ([`crate::Route::base`]).
pub fn route_target(policy: &Policy, path: &str) -> Result<RouteAddress, Refusal> {
    let Some(rest) = path.strip_prefix("/r/") else {
        return Err(Refusal::new(
            ErrorCode::RequestInvalid,
            "the route listener serves /r/<route>/<path>",
        ));
    };
    let (name, tail) = match rest.split_once('/') {
        Some((name, tail)) => (name, format!("/{tail}")),
        None => (rest, "/".to_string()),
    };
    let Some(index) = policy.route_index(name) else {
        return Err(Refusal::new(
            ErrorCode::HostNotAllowed,
            format!("no route is named `{name}`"),
        ));
    };
    let Some(target) = policy.routes().get(index).and_then(|r| r.base()) else {
        return Err(Refusal::new(
            ErrorCode::HostNotAllowed,
            format!(
                "route `{name}` names several hosts or a wildcard; reach it through the forward \
                 listener"
            ),
        ));
    };
    Ok(RouteAddress {
        identified: Identified::Route {
            target,
            route: index,
        },
        path: tail,
    })
}

/// What a CONNECT becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectDecision {
    /// A route names the target: TLS is terminated with a leaf for it, and each request inside
    /// is decided on its own.
    Intercept,
    /// No route names it and `unmatched: tunnel`: bytes are copied both ways, uninspected,
    /// with no credential.
    Tunnel,
    Deny(Refusal),
}

/// What policy says of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestDecision {
    /// The route at `route` in [`Policy::routes`] allows it: it goes with that route's
    /// credential, its body handled as `body` says. `path` is the path as checked (a method
    /// named in the body is checked against it: [`Policy::check_method_field`]).
    Allow {
        route: usize,
        path: RequestPath,
        body: BodyPlan,
    },
    /// No route names the target of this plain-HTTP request and `unmatched: tunnel`: it goes
    /// as it is, with no credential.
    PassUnmatched,
    Deny(Refusal),
}

/// How the data plane handles a request's body, decided with the request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BodyPlan {
    /// The route's `max_request_body`: a body that grows past it is cut off and refused
    /// (`body_too_large`).
    pub max: Option<u64>,
    /// Which `_method` fields to look for in the body.
    pub form: FormScan,
    /// Read the whole body before the credential is fetched; None: stream it.
    pub whole: Option<WholeBody>,
}

/// Where a POST body can name another method (Rails/Rack, Laravel, Symfony read `_method`
/// there), on a route that does not allow every method.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FormScan {
    /// Nothing to look for: not a POST, not a form, or the route allows every method.
    #[default]
    None,
    /// An `application/x-www-form-urlencoded` body (or a POST with no Content-Type).
    UrlEncoded,
    /// A `multipart/*` body with this boundary.
    Multipart { boundary: String },
}

/// A body to be read whole, up to `limit` bytes, before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WholeBody {
    pub limit: u64,
    pub purpose: WholePurpose,
}

/// Why a body is read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholePurpose {
    /// A small url-encoded form, checked for `_method` before the upstream sees any of it.
    FormCheck,
    /// Its SHA-256 is signed (SigV4).
    Signature,
}

impl Policy {
    /// What a CONNECT to `target` becomes: intercepted when a route names the target, else
    /// a blind tunnel when `unmatched: tunnel`, else refused.
    ///
    /// `grant` is the grant the CONNECT presented, if a valid one: with `grants.required` a
    /// CONNECT without one is refused (`grant_required`), and a grant that names none of the
    /// routes naming the target refuses it at once (`route_not_granted`) rather than request
    /// by request inside the tunnel.
    pub fn decide_connect(&self, target: &Target, grant: Option<&GrantScope>) -> ConnectDecision {
        if let Err(refusal) = self.check_grant_present(grant) {
            return ConnectDecision::Deny(refusal);
        }
        if self.names_target(target) {
            if let Some(grant) = grant {
                let granted = self
                    .routes()
                    .iter()
                    .any(|r| r.names_target(target) && grant.names_route(r));
                if !granted {
                    return ConnectDecision::Deny(Refusal::new(
                        ErrorCode::RouteNotGranted,
                        format!(
                            "the grant names no route for {}:{} (it names {})",
                            target.host.to_uri_host(),
                            target.port,
                            grant.describe()
                        ),
                    ));
                }
            }
            ConnectDecision::Intercept
        } else if self.unmatched() == Unmatched::Tunnel {
            ConnectDecision::Tunnel
        } else {
            ConnectDecision::Deny(Refusal::new(
                ErrorCode::HostNotAllowed,
                format!("{}:{} is not in any route", target.host, target.port),
            ))
        }
    }

    /// Decides one request, checking in this order (the first failure is the answer):
    /// the grant's presence (`grants.required`), framing (Transfer-Encoding), agreement of
    /// SNI, `:authority` and Host with the target, the path, the route (first match; only the
    /// addressed route on the route listener) and the grant (the first route that both the
    /// policy and the grant allow), `unmatched`, method override headers and `_method` in the
    /// query, and the body plan (declared length against `max_request_body`, the form kind of
    /// a POST). `declared_length` is the body's length if the request declares one; `grant` the
    /// scope of the valid grant it presented (or its tunnel's CONNECT did), if any.
    pub fn decide_request(
        &self,
        identified: &Identified,
        request: &Parts,
        declared_length: Option<u64>,
        grant: Option<&GrantScope>,
    ) -> RequestDecision {
        match self.decide_request_inner(identified, request, declared_length, grant) {
            Ok(decision) => decision,
            Err(refusal) => RequestDecision::Deny(refusal),
        }
    }

    fn decide_request_inner(
        &self,
        identified: &Identified,
        request: &Parts,
        declared_length: Option<u64>,
        grant: Option<&GrantScope>,
    ) -> Result<RequestDecision, Refusal> {
        let target = identified.target();
        self.check_grant_present(grant)?;
        if self.grants_required() && request.headers.contains_key(TASK_HEADER) {
            return Err(Refusal::new(
                ErrorCode::RequestInvalid,
                "x-sidekey-task is not accepted when grants are required: the task is the \
                 grant's task_id",
            ));
        }
        check_framing(&request.headers)?;
        match identified {
            Identified::Absolute(_) => check_host(request, target, false)?,
            Identified::Intercepted { sni, .. } => {
                check_sni_agrees(sni, target)?;
                check_host(request, target, true)?;
            }
            Identified::Route { .. } => {}
        }
        let path_and_query = request.uri.path_and_query().map_or("/", |p| p.as_str());
        let (raw_path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let path = RequestPath::parse(raw_path).map_err(|e| {
            let code = if e.is_malformed() {
                ErrorCode::RequestInvalid
            } else {
                ErrorCode::PathNotAllowed
            };
            Refusal::new(code, format!("path refused: {e}"))
        })?;
        let route = match self.decide_for(identified, request.method.as_str(), &path, grant) {
            Decision::Allow { route } => route,
            Decision::Deny(refusal)
                if refusal.code == ErrorCode::HostNotAllowed
                    && matches!(identified, Identified::Absolute(_))
                    && self.unmatched() == Unmatched::Tunnel =>
            {
                return Ok(RequestDecision::PassUnmatched)
            }
            Decision::Deny(refusal) => return Err(refusal),
        };
        self.check_overrides(identified, request, query, &path, route, grant)?;
        let body = self.body_plan(route, request, declared_length)?;
        Ok(RequestDecision::Allow { route, path, body })
    }

    /// `grants.required` and no grant: `grant_required`.
    fn check_grant_present(&self, grant: Option<&GrantScope>) -> Result<(), Refusal> {
        if self.grants_required() && grant.is_none() {
            return Err(Refusal::new(
                ErrorCode::GrantRequired,
                "this proxy needs a task grant: present it as the proxy password \
                 (http://task:<grant>@host:port), as Proxy-Authorization: Bearer <grant>, or on \
                 the route listener as x-sidekey-grant",
            ));
        }
        Ok(())
    }

    /// [`Policy::decide`] among the routes this listener may use, then the grant: when the
    /// grant does not allow the route picked, the first route that policy and grant both allow
    /// (a task granted only a narrower route for the same host gets that route and its
    /// credential); none: `route_not_granted`.
    fn decide_for(
        &self,
        identified: &Identified,
        method: &str,
        path: &RequestPath,
        grant: Option<&GrantScope>,
    ) -> Decision {
        let decision = match identified {
            Identified::Route { target, route } => {
                self.decide_among(target, method, path, std::iter::once(*route))
            }
            _ => self.decide(identified.target(), method, path),
        };
        let (Some(grant), Decision::Allow { route }) = (grant, &decision) else {
            return decision;
        };
        if self
            .routes()
            .get(*route)
            .is_some_and(|r| grant.allows(r, method, path))
        {
            return decision;
        }
        let target = identified.target();
        let granted = |i: usize| {
            self.routes().get(i).is_some_and(|r| {
                r.names_target(target)
                    && r.methods.allows(method)
                    && r.allows_path(path)
                    && grant.allows(r, method, path)
            })
        };
        let found = match identified {
            Identified::Route { route, .. } => granted(*route).then_some(*route),
            _ => (0..self.routes().len()).find(|&i| granted(i)),
        };
        match found {
            Some(route) => Decision::Allow { route },
            None => Decision::Deny(Refusal::new(
                ErrorCode::RouteNotGranted,
                format!(
                    "the grant does not allow {} {} on {}:{} (it names {})",
                    method,
                    path.raw(),
                    target.host.to_uri_host(),
                    target.port,
                    grant.describe()
                ),
            )),
        }
    }

    /// Method override headers and `_method` in the query must name a method the route that
    /// allowed the request allows too.
    fn check_overrides(
        &self,
        identified: &Identified,
        request: &Parts,
        query: Option<&str>,
        path: &RequestPath,
        route: usize,
        grant: Option<&GrantScope>,
    ) -> Result<(), Refusal> {
        // One pass over the request's few headers, comparing names, instead of a hashed lookup
        // of each override header (most requests carry none).
        for (name, value) in &request.headers {
            if !METHOD_OVERRIDE_HEADERS.contains(name) {
                continue;
            }
            let text = value.to_str().map_err(|_| {
                Refusal::new(ErrorCode::RequestInvalid, format!("{name} is not ASCII"))
            })?;
            self.check_override(identified, path, route, grant, text.trim(), name.as_str())?;
        }
        if let Some(query) = query {
            for value in urlencoded_overrides(query.as_bytes()) {
                self.check_override(
                    identified,
                    path,
                    route,
                    grant,
                    &value,
                    "the _method query parameter",
                )?;
            }
        }
        Ok(())
    }

    /// Checks the value of a `_method` field found in the body of a request that
    /// [`Policy::decide_request`] allowed by `route` at `path` under `grant`.
    pub fn check_method_field(
        &self,
        identified: &Identified,
        path: &RequestPath,
        route: usize,
        grant: Option<&GrantScope>,
        value: &str,
    ) -> Result<(), Refusal> {
        self.check_override(
            identified,
            path,
            route,
            grant,
            value,
            "the _method field of the body",
        )
    }

    /// One overriding method: allowed if the same route (its credential is the one attached)
    /// is the first to allow it, under the grant too, upper-cased as the frameworks upper-case
    /// it. A value that is not one method token is `request_invalid`: the upstream's reading
    /// of it cannot be predicted.
    fn check_override(
        &self,
        identified: &Identified,
        path: &RequestPath,
        route: usize,
        grant: Option<&GrantScope>,
        method: &str,
        source: &str,
    ) -> Result<(), Refusal> {
        if !crate::route::is_token(method) {
            return Err(Refusal::new(
                ErrorCode::RequestInvalid,
                format!("{source} must name one method"),
            ));
        }
        let method = method.to_ascii_uppercase();
        match self.decide_for(identified, &method, path, grant) {
            Decision::Allow { route: r } if r == route => Ok(()),
            _ => {
                let target = identified.target();
                Err(Refusal::new(
                    ErrorCode::MethodNotAllowed,
                    format!(
                        "{source} asks for {method}, which the route does not allow for {}:{}",
                        target.host.to_uri_host(),
                        target.port
                    ),
                ))
            }
        }
    }

    /// How the body of a request allowed by `route` is handled.
    fn body_plan(
        &self,
        route: usize,
        request: &Parts,
        declared_length: Option<u64>,
    ) -> Result<BodyPlan, Refusal> {
        let Some(rule) = self.routes().get(route) else {
            return Ok(BodyPlan::default());
        };
        let max = rule.max_request_body;
        if let (Some(max), Some(length)) = (max, declared_length) {
            if length > max {
                return Err(Refusal::new(
                    ErrorCode::BodyTooLarge,
                    format!("the body is larger than this route's max_request_body ({max} bytes)"),
                ));
            }
        }
        // Frameworks honour `_method` in the body of a POST only; a route that allows every
        // method has nothing to protect.
        let form = if request.method != Method::POST || rule.methods == MethodSet::Any {
            FormScan::None
        } else {
            match form_kind(&request.headers)? {
                None => FormScan::None,
                Some(FormKind::UrlEncoded) => FormScan::UrlEncoded,
                Some(FormKind::Multipart { boundary }) => FormScan::Multipart { boundary },
            }
        };
        // A url-encoded body that says it is small is read whole, so that the upstream sees
        // nothing of a refused one; any other form body is scanned as it streams.
        let form_limit = max.map_or(FORM_BODY_LIMIT, |max| max.min(FORM_BODY_LIMIT));
        let whole = match form {
            FormScan::UrlEncoded if declared_length.is_some_and(|len| len <= form_limit) => {
                Some(WholeBody {
                    limit: form_limit,
                    purpose: WholePurpose::FormCheck,
                })
            }
            _ if rule.signs_body => Some(WholeBody {
                limit: SIGNED_BODY_LIMIT,
                purpose: WholePurpose::Signature,
            }),
            _ => None,
        };
        Ok(BodyPlan { max, form, whole })
    }
}

/// RFC 9112 §6.1: `chunked` is applied once and last, and sidekey implements no other transfer
/// coding. Passing anything else on would hand the upstream a body whose coding it is no longer
/// told of (`Transfer-Encoding` is hop-by-hop), so the only coding accepted is `chunked` alone.
fn check_framing(headers: &http::HeaderMap) -> Result<(), Refusal> {
    let mut codings: Vec<String> = Vec::new();
    for value in headers.get_all(http::header::TRANSFER_ENCODING) {
        let text = value.to_str().map_err(|_| {
            Refusal::new(ErrorCode::RequestInvalid, "Transfer-Encoding is not ASCII")
        })?;
        codings.extend(
            text.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty()),
        );
    }
    match codings.as_slice() {
        [] => Ok(()),
        [only] if only == "chunked" => Ok(()),
        _ if codings.iter().filter(|c| *c == "chunked").count() > 1 => Err(Refusal::new(
            ErrorCode::RequestInvalid,
            "Transfer-Encoding applies chunked more than once (RFC 9112 §6.1)",
        )),
        _ => Err(Refusal::new(
            ErrorCode::RequestInvalid,
            format!(
                "Transfer-Encoding `{}` is not supported: sidekey takes chunked alone",
                codings.join(", ")
            ),
        )),
    }
}

fn check_sni_agrees(sni: &Sni, target: &Target) -> Result<(), Refusal> {
    match sni {
        Sni::Agrees => Ok(()),
        Sni::Missing => Err(Refusal::new(
            ErrorCode::TargetMismatch,
            format!(
                "the TLS ClientHello named no server (no SNI, or an IP address, which SNI cannot \
                 carry); it must name the CONNECT target {}",
                target.host
            ),
        )),
        Sni::Other(name) => Err(Refusal::new(
            ErrorCode::TargetMismatch,
            format!(
                "TLS server name {name} does not match the CONNECT target {}",
                target.host
            ),
        )),
    }
}

/// The request must name the target it was identified by: the Host header (exactly one), and
/// inside a tunnel the URI authority (HTTP/2 `:authority`) too. A different host or port is
/// `target_mismatch`; a missing or unparsable one is `request_invalid`. HTTP/1.0 may omit Host.
fn check_host(request: &Parts, target: &Target, in_tunnel: bool) -> Result<(), Refusal> {
    let same = |text: &str, what: &str| -> Result<(), Refusal> {
        if target.is_written_as(text) {
            return Ok(());
        }
        let authority = Authority::parse(text).map_err(|e| {
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
        if let Some(authority) = request.uri.authority() {
            same(authority.as_str(), "request authority")?;
            named = true;
        }
    }
    let mut hosts = request.headers.get_all(http::header::HOST).iter();
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
    if !named && request.version != Version::HTTP_10 {
        return Err(Refusal::new(
            ErrorCode::RequestInvalid,
            "request has no Host header",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HostPattern, PathGlob, Route};

    fn target(scheme: Scheme, host: &str, port: u16) -> Target {
        Target {
            scheme,
            host: CanonicalHost::parse(host).unwrap(),
            port,
        }
    }

    fn https(host: &str) -> Target {
        target(Scheme::Https, host, 443)
    }

    fn route(name: &str, host: &str, scheme: Scheme, methods: &[&str], paths: &[&str]) -> Route {
        Route {
            name: name.into(),
            hosts: vec![HostPattern::parse(host).unwrap()],
            schemes: vec![scheme],
            ports: vec![scheme.default_port()],
            methods: if methods == ["*"] {
                MethodSet::Any
            } else {
                MethodSet::List(methods.iter().map(|m| m.to_string()).collect())
            },
            paths: paths.iter().map(|p| PathGlob::parse(p).unwrap()).collect(),
            max_request_body: None,
            signs_body: false,
        }
    }

    /// 0 `api` https api.example.com GET/POST; 1 `any` https any.example.com every method;
    /// 2 `scoped` https scoped.example.com GET /v1/**; 3 `plain` http plain.example.com GET/POST
    /// with max_request_body 1000; 4 `signed` https sqs.example.com POST, signs its body;
    /// 5 `wild` https *.wild.example.com GET.
    fn policy(unmatched: Unmatched) -> Policy {
        let mut plain = route(
            "plain",
            "plain.example.com",
            Scheme::Http,
            &["GET", "POST"],
            &[],
        );
        plain.max_request_body = Some(1000);
        let mut signed = route("signed", "sqs.example.com", Scheme::Https, &["POST"], &[]);
        signed.signs_body = true;
        Policy::new(vec![
            route(
                "api",
                "api.example.com",
                Scheme::Https,
                &["GET", "POST"],
                &[],
            ),
            route("any", "any.example.com", Scheme::Https, &["*"], &[]),
            route(
                "scoped",
                "scoped.example.com",
                Scheme::Https,
                &["GET"],
                &["/v1/**"],
            ),
            plain,
            signed,
            route("wild", "*.wild.example.com", Scheme::Https, &["GET"], &[]),
        ])
        .with_unmatched(unmatched)
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn server_names_agree_with_the_target_or_not() {
        let name = https("api.example.com");
        let ip = https("10.0.0.1");
        let cases = [
            (&name, Some("api.example.com"), Sni::Agrees),
            (&name, Some("API.Example.com."), Sni::Agrees),
            (
                &name,
                Some("other.example.com"),
                Sni::Other("other.example.com".into()),
            ),
            (&name, Some("bad name"), Sni::Other("bad name".into())),
            (&name, None, Sni::Missing),
            (&ip, None, Sni::Agrees),
            (&ip, Some("10.0.0.1"), Sni::Agrees),
            (
                &ip,
                Some("api.example.com"),
                Sni::Other("api.example.com".into()),
            ),
        ];
        for (target, sni, want) in cases {
            assert_eq!(check_sni(target, sni), want, "{target} {sni:?}");
        }
    }

    #[test]
    fn connect_targets_are_host_and_port_only() {
        let ok =
            |s: &'static str, host: &str, port: u16| (s, Ok(target(Scheme::Https, host, port)));
        let invalid = |s: &'static str, message: &str| (s, Err(message.to_string()));
        let cases: Vec<(&str, Result<Target, String>)> = vec![
            ok("api.example.com:443", "api.example.com", 443),
            ok("API.example.COM.:8443", "api.example.com", 8443),
            ok("[::1]:443", "::1", 443),
            invalid(
                "api.example.com",
                "CONNECT target `api.example.com` needs a port",
            ),
            invalid(
                "https://api.example.com:443/",
                "must be host:port, with no scheme or path",
            ),
            invalid(
                "api.example.com:0",
                "CONNECT target `api.example.com:0` is invalid",
            ),
            invalid("user@api.example.com:443", "is invalid"),
            invalid("0x7f.1:443", "is invalid"),
        ];
        for (text, want) in cases {
            let got = connect_target(&uri(text));
            match (&got, &want) {
                (Ok(t), Ok(w)) => assert_eq!(t, w, "{text}"),
                (Err(r), Err(message)) => {
                    assert_eq!(r.code, ErrorCode::RequestInvalid, "{text}");
                    assert!(r.message.contains(message.as_str()), "{text}: {r}");
                }
                _ => panic!("{text}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn absolute_targets_are_http_urls() {
        assert_eq!(
            absolute_target(&uri("http://Plain.Example.com/x?y")),
            Ok(target(Scheme::Http, "plain.example.com", 80))
        );
        assert_eq!(
            absolute_target(&uri("http://plain.example.com:8080/")),
            Ok(target(Scheme::Http, "plain.example.com", 8080))
        );
        for (text, message) in [
            ("https://api.example.com/", "go through CONNECT"),
            ("/just/a/path", "this is sidekey's forward proxy"),
            ("ftp://api.example.com/", "unsupported request target"),
            (
                "http://2130706433/",
                "request target host `2130706433` is invalid",
            ),
        ] {
            let refusal = absolute_target(&uri(text)).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::RequestInvalid, "{text}");
            assert!(refusal.message.contains(message), "{text}: {refusal}");
        }
    }

    #[test]
    fn a_connections_memo_answers_as_absolute_target_does() {
        let mut memo = TargetMemo::default();
        // The same authority again, another one, a spelling that differs only in case, a
        // refusal between two good ones, https and origin forms after an http one with the same
        // authority: each answered as absolute_target answers it alone.
        for text in [
            "http://api.example.com/a",
            "http://api.example.com/b?c",
            "http://api.example.com:8080/",
            "http://API.example.com:8080/",
            "http://2130706433/",
            "http://api.example.com/a",
            "https://api.example.com/a",
            "/api.example.com/a",
            "http://api.example.com/again",
            "http://[::1]:8080/",
            "http://[::1]:8080/x",
            "http://api.example.com:80/",
        ] {
            let uri = uri(text);
            assert_eq!(memo.absolute_target(&uri), absolute_target(&uri), "{text}");
        }
    }

    #[test]
    fn route_addresses_name_a_route_with_one_exact_https_host() {
        let p = policy(Unmatched::Deny);
        let got = route_target(&p, "/r/api/v1/x").unwrap();
        assert_eq!(
            got.identified,
            Identified::Route {
                target: https("api.example.com"),
                route: 0
            }
        );
        assert_eq!(got.path, "/v1/x");
        assert_eq!(route_target(&p, "/r/scoped").unwrap().path, "/");
        assert_eq!(got.identified.listener(), "routes");
        for (path, code, message) in [
            ("/x", ErrorCode::RequestInvalid, "serves /r/<route>/<path>"),
            (
                "/r/nope/x",
                ErrorCode::HostNotAllowed,
                "no route is named `nope`",
            ),
            (
                "/r/wild/x",
                ErrorCode::HostNotAllowed,
                "names several hosts or a wildcard",
            ),
            (
                "/r/plain/x",
                ErrorCode::HostNotAllowed,
                "names several hosts or a wildcard",
            ),
        ] {
            let refusal = route_target(&p, path).unwrap_err();
            assert_eq!(refusal.code, code, "{path}");
            assert!(refusal.message.contains(message), "{path}: {refusal}");
        }
    }

    #[test]
    fn connect_is_intercepted_tunnelled_or_refused() {
        let deny = policy(Unmatched::Deny);
        let tunnel = policy(Unmatched::Tunnel);
        let named = https("api.example.com");
        let wild = https("a.b.wild.example.com");
        let unnamed = https("elsewhere.example.org");
        let plain_port = target(Scheme::Https, "plain.example.com", 80);
        assert_eq!(
            deny.decide_connect(&named, None),
            ConnectDecision::Intercept
        );
        assert_eq!(
            tunnel.decide_connect(&named, None),
            ConnectDecision::Intercept
        );
        assert_eq!(deny.decide_connect(&wild, None), ConnectDecision::Intercept);
        assert_eq!(
            tunnel.decide_connect(&unnamed, None),
            ConnectDecision::Tunnel
        );
        // A route for http://plain.example.com does not make CONNECT plain.example.com:80 ours.
        assert_eq!(
            tunnel.decide_connect(&plain_port, None),
            ConnectDecision::Tunnel
        );
        assert_eq!(
            deny.decide_connect(&unnamed, None),
            ConnectDecision::Deny(Refusal::new(
                ErrorCode::HostNotAllowed,
                "elsewhere.example.org:443 is not in any route"
            ))
        );
    }

    /// A request as a listener hands it over.
    struct Req {
        method: &'static str,
        uri: &'static str,
        version: Version,
        headers: Vec<(&'static str, &'static str)>,
        length: Option<u64>,
    }

    fn get(uri: &'static str, headers: &[(&'static str, &'static str)]) -> Req {
        Req {
            method: "GET",
            uri,
            version: Version::HTTP_11,
            headers: headers.to_vec(),
            length: None,
        }
    }

    fn post(
        uri: &'static str,
        headers: &[(&'static str, &'static str)],
        length: Option<u64>,
    ) -> Req {
        Req {
            method: "POST",
            length,
            ..get(uri, headers)
        }
    }

    fn decide(policy: &Policy, identified: &Identified, req: &Req) -> RequestDecision {
        let mut builder = http::Request::builder()
            .method(req.method)
            .uri(req.uri)
            .version(req.version);
        for (name, value) in &req.headers {
            builder = builder.header(*name, *value);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        policy.decide_request(identified, &parts, req.length, None)
    }

    /// What a case expects: allowed by a route (index) with a body plan, passed unmatched, or
    /// refused with a code and part of the message.
    #[derive(Debug)]
    enum Want {
        Allow(usize, BodyPlan),
        Pass,
        Deny(ErrorCode, &'static str),
    }

    fn stream() -> BodyPlan {
        BodyPlan::default()
    }

    fn check(policy: &Policy, identified: &Identified, cases: Vec<(Req, Want)>) {
        for (req, want) in cases {
            let got = decide(policy, identified, &req);
            let what = format!(
                "{} {} {:?} on {identified:?}",
                req.method, req.uri, req.headers
            );
            match (&got, &want) {
                (RequestDecision::Allow { route, body, .. }, Want::Allow(r, plan)) => {
                    assert_eq!((route, body), (r, plan), "{what}");
                }
                (RequestDecision::PassUnmatched, Want::Pass) => {}
                (RequestDecision::Deny(refusal), Want::Deny(code, message)) => {
                    assert_eq!(refusal.code, *code, "{what}: {refusal}");
                    assert!(refusal.message.contains(message), "{what}: {refusal}");
                }
                _ => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn requests_inside_a_tunnel() {
        let p = policy(Unmatched::Tunnel);
        let api = Identified::Intercepted {
            target: https("api.example.com"),
            sni: Sni::Agrees,
        };
        let host = ("host", "api.example.com");
        use ErrorCode::*;
        check(
            &p,
            &api,
            vec![
                (get("/x", &[host]), Want::Allow(0, stream())),
                (
                    get("/x", &[("host", "API.example.com:443")]),
                    Want::Allow(0, stream()),
                ),
                (
                    get("https://api.example.com/x", &[host]),
                    Want::Allow(0, stream()),
                ),
                // HTTP/2: :authority without Host.
                (
                    get("https://api.example.com/x", &[]),
                    Want::Allow(0, stream()),
                ),
                (get("/x", &[]), Want::Deny(RequestInvalid, "no Host header")),
                (
                    Req {
                        version: Version::HTTP_10,
                        ..get("/x", &[])
                    },
                    Want::Allow(0, stream()),
                ),
                (
                    get("/x", &[("host", "other.example.com")]),
                    Want::Deny(TargetMismatch, "Host header names other.example.com"),
                ),
                (
                    get("/x", &[("host", "api.example.com:8443")]),
                    Want::Deny(
                        TargetMismatch,
                        "but the request goes to api.example.com:443",
                    ),
                ),
                (
                    get("https://other.example.com/x", &[host]),
                    Want::Deny(TargetMismatch, "request authority names other.example.com"),
                ),
                (
                    get("/x", &[host, ("host", "api.example.com")]),
                    Want::Deny(RequestInvalid, "more than one Host header"),
                ),
                (
                    get("/x", &[("host", "a@b")]),
                    Want::Deny(RequestInvalid, "Host header `a@b`"),
                ),
                (
                    Req {
                        method: "DELETE",
                        ..get("/x", &[host])
                    },
                    Want::Deny(
                        MethodNotAllowed,
                        "DELETE is not allowed for api.example.com:443",
                    ),
                ),
                (
                    get("/a/../admin", &[host]),
                    Want::Deny(PathNotAllowed, "path refused"),
                ),
                (
                    get("/a/%2e%2e/admin", &[host]),
                    Want::Deny(PathNotAllowed, "path refused"),
                ),
                // Unmatched only ever passes plain HTTP: an intercepted tunnel names a route.
                (
                    Req {
                        method: "PUT",
                        ..get("/x", &[host])
                    },
                    Want::Deny(MethodNotAllowed, "PUT is not allowed"),
                ),
                (
                    get("/x", &[host, ("transfer-encoding", "gzip, chunked")]),
                    Want::Deny(RequestInvalid, "Transfer-Encoding `gzip, chunked`"),
                ),
                (
                    get(
                        "/x",
                        &[
                            host,
                            ("transfer-encoding", "chunked"),
                            ("transfer-encoding", "Chunked"),
                        ],
                    ),
                    Want::Deny(RequestInvalid, "chunked more than once"),
                ),
                (
                    post(
                        "/x",
                        &[
                            host,
                            ("transfer-encoding", "chunked"),
                            ("content-type", "application/json"),
                        ],
                        None,
                    ),
                    Want::Allow(0, stream()),
                ),
            ],
        );
        for (sni, message) in [
            (Sni::Missing, "named no server"),
            (
                Sni::Other("evil.example".into()),
                "TLS server name evil.example does not match",
            ),
        ] {
            let wrong = Identified::Intercepted {
                target: https("api.example.com"),
                sni,
            };
            check(
                &p,
                &wrong,
                vec![(get("/x", &[host]), Want::Deny(TargetMismatch, message))],
            );
        }
    }

    #[test]
    fn plain_http_on_the_forward_listener() {
        let deny = policy(Unmatched::Deny);
        let tunnel = policy(Unmatched::Tunnel);
        let plain = Identified::Absolute(target(Scheme::Http, "plain.example.com", 80));
        let elsewhere = Identified::Absolute(target(Scheme::Http, "elsewhere.example.org", 80));
        let host = ("host", "plain.example.com");
        let limited = BodyPlan {
            max: Some(1000),
            ..stream()
        };
        use ErrorCode::*;
        check(
            &deny,
            &plain,
            vec![
                (
                    get("http://plain.example.com/x", &[host]),
                    Want::Allow(3, limited.clone()),
                ),
                (
                    get("http://plain.example.com/x", &[("host", "api.example.com")]),
                    Want::Deny(TargetMismatch, "Host header names api.example.com"),
                ),
                (
                    post(
                        "http://plain.example.com/x",
                        &[host, ("content-type", "text/plain")],
                        Some(1001),
                    ),
                    Want::Deny(BodyTooLarge, "max_request_body (1000 bytes)"),
                ),
                (
                    post(
                        "http://plain.example.com/x",
                        &[host, ("content-type", "text/plain")],
                        Some(1000),
                    ),
                    Want::Allow(3, limited.clone()),
                ),
            ],
        );
        check(
            &deny,
            &elsewhere,
            vec![(
                get(
                    "http://elsewhere.example.org/",
                    &[("host", "elsewhere.example.org")],
                ),
                Want::Deny(
                    HostNotAllowed,
                    "elsewhere.example.org:80 is not in any route",
                ),
            )],
        );
        check(
            &tunnel,
            &elsewhere,
            vec![
                (
                    get(
                        "http://elsewhere.example.org/",
                        &[("host", "elsewhere.example.org")],
                    ),
                    Want::Pass,
                ),
                // Agreement and paths are still checked before `unmatched` lets anything pass.
                (
                    get(
                        "http://elsewhere.example.org/",
                        &[("host", "api.example.com")],
                    ),
                    Want::Deny(TargetMismatch, "Host header"),
                ),
                (
                    get(
                        "http://elsewhere.example.org/a/../b",
                        &[("host", "elsewhere.example.org")],
                    ),
                    Want::Deny(PathNotAllowed, "path refused"),
                ),
            ],
        );
        // A route naming the host decides its methods, unmatched or not.
        check(
            &tunnel,
            &plain,
            vec![(
                Req {
                    method: "DELETE",
                    ..get("http://plain.example.com/x", &[host])
                },
                Want::Deny(MethodNotAllowed, "DELETE is not allowed"),
            )],
        );
    }

    #[test]
    fn the_route_listener_decides_by_its_route_only() {
        let p = policy(Unmatched::Tunnel);
        let scoped = route_target(&p, "/r/scoped/v1/x").unwrap().identified;
        use ErrorCode::*;
        check(
            &p,
            &scoped,
            vec![
                // The Host header names the listener: not checked.
                (
                    get("/v1/x", &[("host", "127.0.0.1:15081")]),
                    Want::Allow(2, stream()),
                ),
                (
                    get("/v2/x", &[]),
                    Want::Deny(
                        PathNotAllowed,
                        "/v2/x is not allowed for scoped.example.com:443 (routes: scoped)",
                    ),
                ),
                (
                    Req {
                        method: "POST",
                        ..get("/v1/x", &[])
                    },
                    Want::Deny(MethodNotAllowed, "(routes: scoped)"),
                ),
                (
                    get("/v1/x", &[("x-http-method-override", "DELETE")]),
                    Want::Deny(MethodNotAllowed, "x-http-method-override asks for DELETE"),
                ),
            ],
        );
    }

    #[test]
    fn methods_named_inside_the_request_must_be_allowed_by_the_same_route() {
        let p = policy(Unmatched::Deny);
        let api = Identified::Intercepted {
            target: https("api.example.com"),
            sni: Sni::Agrees,
        };
        let any = Identified::Intercepted {
            target: https("any.example.com"),
            sni: Sni::Agrees,
        };
        let host = ("host", "api.example.com");
        let form = ("content-type", "application/x-www-form-urlencoded");
        use ErrorCode::*;
        check(
            &p,
            &api,
            vec![
                (
                    get("/x", &[host, ("x-http-method-override", "post")]),
                    Want::Allow(0, stream()),
                ),
                (
                    get("/x", &[host, ("X-HTTP-Method", "DELETE")]),
                    Want::Deny(MethodNotAllowed, "x-http-method asks for DELETE"),
                ),
                (
                    get("/x", &[host, ("x-method-override", "GET, DELETE")]),
                    Want::Deny(RequestInvalid, "must name one method"),
                ),
                (
                    get("/x?a=1&_method=delete", &[host]),
                    Want::Deny(MethodNotAllowed, "_method query parameter asks for DELETE"),
                ),
                (get("/x?%5Fmethod=POST", &[host]), Want::Allow(0, stream())),
                (
                    get("/x?_method", &[host]),
                    Want::Deny(
                        RequestInvalid,
                        "the _method query parameter must name one method",
                    ),
                ),
                // POST forms: small url-encoded ones are read whole, others scanned.
                (
                    post("/x", &[host, form], Some(100)),
                    Want::Allow(
                        0,
                        BodyPlan {
                            form: FormScan::UrlEncoded,
                            whole: Some(WholeBody {
                                limit: FORM_BODY_LIMIT,
                                purpose: WholePurpose::FormCheck,
                            }),
                            ..stream()
                        },
                    ),
                ),
                (
                    post("/x", &[host], Some(FORM_BODY_LIMIT + 1)),
                    Want::Allow(
                        0,
                        BodyPlan {
                            form: FormScan::UrlEncoded,
                            ..stream()
                        },
                    ),
                ),
                (
                    post("/x", &[host, form], None),
                    Want::Allow(
                        0,
                        BodyPlan {
                            form: FormScan::UrlEncoded,
                            ..stream()
                        },
                    ),
                ),
                (
                    post(
                        "/x",
                        &[host, ("content-type", "multipart/form-data; boundary=XyZ")],
                        Some(10),
                    ),
                    Want::Allow(
                        0,
                        BodyPlan {
                            form: FormScan::Multipart {
                                boundary: "XyZ".into(),
                            },
                            ..stream()
                        },
                    ),
                ),
                (
                    post(
                        "/x",
                        &[host, ("content-type", "multipart/form-data")],
                        Some(10),
                    ),
                    Want::Deny(RequestInvalid, "needs a boundary"),
                ),
                (
                    post("/x", &[host, form, ("content-encoding", "gzip")], Some(10)),
                    Want::Deny(RequestInvalid, "Content-Encoding"),
                ),
                (
                    post(
                        "/x",
                        &[host, ("content-type", "application/json")],
                        Some(10),
                    ),
                    Want::Allow(0, stream()),
                ),
                (
                    Req {
                        method: "GET",
                        ..post("/x", &[host, form], Some(10))
                    },
                    Want::Allow(0, stream()),
                ),
            ],
        );
        // A route that allows every method has nothing to protect.
        check(
            &p,
            &any,
            vec![
                (
                    post("/x", &[("host", "any.example.com"), form], Some(10)),
                    Want::Allow(1, stream()),
                ),
                (
                    get(
                        "/x?_method=DELETE",
                        &[
                            ("host", "any.example.com"),
                            ("x-http-method-override", "PURGE"),
                        ],
                    ),
                    Want::Allow(1, stream()),
                ),
            ],
        );
        // The body's `_method` fields, checked once the data plane has found them.
        let decided = decide(&p, &api, &post("/x", &[host, form], Some(10)));
        let RequestDecision::Allow { route, path, .. } = decided else {
            panic!("{decided:?}");
        };
        assert_eq!(
            p.check_method_field(&api, &path, route, None, "post"),
            Ok(())
        );
        let refusal = p
            .check_method_field(&api, &path, route, None, "DELETE")
            .unwrap_err();
        assert_eq!(refusal.code, MethodNotAllowed);
        assert!(
            refusal
                .message
                .contains("_method field of the body asks for DELETE"),
            "{refusal}"
        );
        assert_eq!(
            p.check_method_field(&api, &path, route, None, "PO ST")
                .unwrap_err()
                .code,
            RequestInvalid
        );
    }

    #[test]
    fn bodies_to_sign_are_read_whole() {
        let p = policy(Unmatched::Deny);
        let sqs = Identified::Intercepted {
            target: https("sqs.example.com"),
            sni: Sni::Agrees,
        };
        let host = ("host", "sqs.example.com");
        let signed = WholeBody {
            limit: SIGNED_BODY_LIMIT,
            purpose: WholePurpose::Signature,
        };
        check(
            &p,
            &sqs,
            vec![
                (
                    post("/", &[host, ("content-type", "application/json")], None),
                    Want::Allow(
                        4,
                        BodyPlan {
                            whole: Some(signed),
                            ..stream()
                        },
                    ),
                ),
                // A small form is read whole for its check; that read serves the signature.
                (
                    post(
                        "/",
                        &[host, ("content-type", "application/x-www-form-urlencoded")],
                        Some(20),
                    ),
                    Want::Allow(
                        4,
                        BodyPlan {
                            form: FormScan::UrlEncoded,
                            whole: Some(WholeBody {
                                limit: FORM_BODY_LIMIT,
                                purpose: WholePurpose::FormCheck,
                            }),
                            ..stream()
                        },
                    ),
                ),
                (
                    post(
                        "/",
                        &[host, ("content-type", "application/x-www-form-urlencoded")],
                        None,
                    ),
                    Want::Allow(
                        4,
                        BodyPlan {
                            form: FormScan::UrlEncoded,
                            whole: Some(signed),
                            ..stream()
                        },
                    ),
                ),
            ],
        );
    }

    /// Builds a request and decides it under `grant`.
    fn decide_granted(
        policy: &Policy,
        identified: &Identified,
        req: &Req,
        grant: Option<&GrantScope>,
    ) -> RequestDecision {
        let mut builder = http::Request::builder().method(req.method).uri(req.uri);
        for (name, value) in &req.headers {
            builder = builder.header(*name, *value);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        policy.decide_request(identified, &parts, req.length, grant)
    }

    #[test]
    fn grants_narrow_routes_and_never_widen_them() {
        use crate::grant::RouteGrant;
        // Two routes for one host: the first reads, the second may also write.
        let read = route(
            "gh-read",
            "api.github.com",
            Scheme::Https,
            &["GET"],
            &["/repos/**"],
        );
        let write = route(
            "gh-write",
            "api.github.com",
            Scheme::Https,
            &["GET", "POST"],
            &["/repos/acme/**"],
        );
        let other = route("slack", "slack.com", Scheme::Https, &["POST"], &[]);
        let p = Policy::new(vec![read, write, other]);
        let gh = Identified::Intercepted {
            target: https("api.github.com"),
            sni: Sni::Agrees,
        };
        let host = ("host", "api.github.com");
        type Narrowing<'a> = (&'a str, Option<&'a [&'a str]>, &'a [&'a str]);
        let grant = |routes: &[Narrowing]| GrantScope {
            routes: Some(
                routes
                    .iter()
                    .map(|(r, m, paths)| RouteGrant {
                        route: r.to_string(),
                        methods: m.map(|m| m.iter().map(|s| s.to_string()).collect()),
                        paths: paths.iter().map(|g| PathGlob::parse(g).unwrap()).collect(),
                    })
                    .collect(),
            ),
        };
        let allowed = |decision: RequestDecision| match decision {
            RequestDecision::Allow { route, .. } => Ok(route),
            RequestDecision::Deny(refusal) => Err((refusal.code, refusal.message)),
            RequestDecision::PassUnmatched => panic!("passed"),
        };
        let get_acme = get("/repos/acme/api", &[host]);
        let post_acme = post("/repos/acme/api/issues", &[host], None);

        // No grant: first match.
        assert_eq!(allowed(decide_granted(&p, &gh, &get_acme, None)), Ok(0));
        // Every route: the same.
        let all = GrantScope::all_routes();
        assert_eq!(
            allowed(decide_granted(&p, &gh, &get_acme, Some(&all))),
            Ok(0)
        );
        // Only the write route: a GET goes by it (and its credential), not by the first match.
        let only_write = grant(&[("gh-write", None, &[])]);
        assert_eq!(
            allowed(decide_granted(&p, &gh, &get_acme, Some(&only_write))),
            Ok(1)
        );
        assert_eq!(
            allowed(decide_granted(&p, &gh, &post_acme, Some(&only_write))),
            Ok(1)
        );
        // The grant never widens: the write route's paths still apply.
        let outside = get("/repos/other/api", &[host]);
        let (code, message) =
            allowed(decide_granted(&p, &gh, &outside, Some(&only_write))).unwrap_err();
        assert_eq!(code, ErrorCode::RouteNotGranted);
        assert!(message.contains("it names gh-write"), "{message}");
        // Narrowed methods and paths.
        let narrow = grant(&[("gh-write", Some(&["POST"]), &["/repos/acme/api/issues"])]);
        assert_eq!(
            allowed(decide_granted(&p, &gh, &post_acme, Some(&narrow))),
            Ok(1)
        );
        for req in [get_acme, post("/repos/acme/api/pulls", &[host], None)] {
            let (code, _) = allowed(decide_granted(&p, &gh, &req, Some(&narrow))).unwrap_err();
            assert_eq!(code, ErrorCode::RouteNotGranted, "{}", req.uri);
        }
        // An override naming a method the grant does not allow.
        let overridden = post(
            "/repos/acme/api/issues",
            &[host, ("x-http-method-override", "GET")],
            None,
        );
        let (code, _) = allowed(decide_granted(&p, &gh, &overridden, Some(&narrow))).unwrap_err();
        assert_eq!(code, ErrorCode::MethodNotAllowed);
        // What no route allows stays the route's refusal, grant or not.
        let delete = Req {
            method: "DELETE",
            ..get("/repos/acme/api", &[host])
        };
        let (code, _) = allowed(decide_granted(&p, &gh, &delete, Some(&all))).unwrap_err();
        assert_eq!(code, ErrorCode::MethodNotAllowed);

        // CONNECT: a grant naming no route for the target is refused before the tunnel opens.
        let slack_only = grant(&[("slack", None, &[])]);
        assert!(matches!(
            p.decide_connect(&https("api.github.com"), Some(&slack_only)),
            ConnectDecision::Deny(Refusal {
                code: ErrorCode::RouteNotGranted,
                ..
            })
        ));
        assert_eq!(
            p.decide_connect(&https("api.github.com"), Some(&only_write)),
            ConnectDecision::Intercept
        );

        // The route listener decides among its one route, and the grant must name it.
        let routed = Identified::Route {
            target: https("api.github.com"),
            route: 0,
        };
        let (code, _) = allowed(decide_granted(
            &p,
            &routed,
            &get("/repos/acme/api", &[]),
            Some(&only_write),
        ))
        .unwrap_err();
        assert_eq!(code, ErrorCode::RouteNotGranted);

        // grants.required: no grant is 407 grant_required, at CONNECT and on requests; the
        // self-asserted task header is refused.
        let required = p.clone().with_grants_required(true);
        let (code, _) = allowed(decide_granted(
            &required,
            &gh,
            &get("/repos/acme/api", &[host]),
            None,
        ))
        .unwrap_err();
        assert_eq!(code, ErrorCode::GrantRequired);
        assert_eq!(ErrorCode::GrantRequired.status(), 407);
        assert!(matches!(
            required.decide_connect(&https("api.github.com"), None),
            ConnectDecision::Deny(Refusal {
                code: ErrorCode::GrantRequired,
                ..
            })
        ));
        let task = get("/repos/acme/api", &[host, ("x-sidekey-task", "t1")]);
        let (code, _) = allowed(decide_granted(&required, &gh, &task, Some(&all))).unwrap_err();
        assert_eq!(code, ErrorCode::RequestInvalid);
        assert_eq!(allowed(decide_granted(&p, &gh, &task, Some(&all))), Ok(0));
    }

    /// The shortcut says "same" only where parsing says so too.
    #[test]
    fn the_exact_authority_shortcut_agrees_with_parsing() {
        let targets = [
            target(Scheme::Http, "api.example", 80),
            target(Scheme::Https, "api.example", 443),
            target(Scheme::Https, "api.example", 8443),
            target(Scheme::Http, "10.0.0.1", 80),
        ];
        let texts = [
            "api.example",
            "api.example:80",
            "api.example:443",
            "api.example:8443",
            "api.example:08443",
            "api.example:+8443",
            "api.example:84430",
            "api.example:",
            "api.example.",
            "API.example",
            "api.examplex",
            "api.example.evil",
            "api.example@evil",
            "10.0.0.1",
            "10.0.0.1:80",
        ];
        let mut shortcuts = 0;
        for t in &targets {
            for text in texts {
                let parsed = Authority::parse(text)
                    .is_ok_and(|a| a.host == t.host && a.port_or_default(t.scheme) == t.port);
                if t.is_written_as(text) {
                    shortcuts += 1;
                    assert!(parsed, "{text} for {t}");
                }
            }
        }
        // api.example (twice: default ports) and api.example:8443.
        assert_eq!(shortcuts, 3);
    }
}
