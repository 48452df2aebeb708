//! `sidekey explain`: what sidekey would do with one request, and why, without sending
//! anything. Built only on policy's pure decisions, in the order the data plane asks them:
//! identify (`connect_target` / `absolute_target` / `route_target`), the grant, the CONNECT
//! (`Policy::decide_connect`) for an `https://` URL on the forward listener, then the request
//! (`Policy::decide_request`, inside the tunnel for HTTPS). No network, no issuer, no
//! credential: a grant is verified against the config's JWKS files only.
//!
//! [`explain`] is pure (config, request, the grant already resolved by [`resolve_grant`]) and
//! returns an [`Explanation`], rendered by [`Explanation::text`] and [`Explanation::json`].

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri, Version};
use serde_json::{json, Value};
use sidekey_config::{Config, GrantsConfig, Inject, RouteConfig, TrustedKeys};
use sidekey_policy::{
    absolute_target, check_sni, connect_target, route_target, BodyPlan, ConnectDecision, ErrorCode,
    FormScan, GrantScope, Identified, MethodSet, Refusal, RequestDecision, RequestPath, Target,
    WholePurpose,
};

/// Which listener the request is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Listener {
    /// HTTP_PROXY/HTTPS_PROXY: `http://…` absolute form, `https://…` through CONNECT.
    Forward,
    /// `/r/<route>/<path>`.
    Routes,
}

/// The request to explain, as given on the command line.
#[derive(Debug, Clone)]
pub struct Ask {
    pub listener: Listener,
    pub method: String,
    pub url: String,
    /// `Name: value`, as given with `-H`.
    pub headers: Vec<String>,
    pub body_length: Option<u64>,
    /// The TLS server name the agent sends inside the tunnel of an `https://` URL; None: the
    /// URL's host (none for an IP address), as clients send it; `Some("")`: none.
    pub sni: Option<String>,
}

/// The grant given with `--grant`, as far as it can be known offline.
#[derive(Debug, Clone)]
pub enum GrantInput {
    /// No `--grant`.
    None,
    /// `--grant` but no `grants:` in the config: the proxy ignores grants then.
    Ignored,
    /// Verified against the JWKS files, or (`verified: false`) only decoded because the keys
    /// are served by a `jwks_url` that is not fetched.
    Scope { scope: GrantScope, info: GrantInfo },
    /// The proxy would refuse it (`grant_invalid`, `grant_expired`).
    Refused(Refusal),
}

#[derive(Debug, Clone)]
pub struct GrantInfo {
    pub verified: bool,
    pub jti: String,
    pub sub: String,
    pub task_id: String,
    pub on_behalf_of: Option<String>,
    pub act: Vec<String>,
    /// Why it could not be verified, when it was not.
    pub unverified_because: Option<String>,
}

/// Verifies `token` offline: against the config's `grants.trusted` JWKS files
/// ([`sidekey_grants::Grants::verify_uncached`]); `jwks_url` sources are not fetched. When
/// only URL sources could have signed it, its claims are decoded unverified and labelled so.
pub fn resolve_grant(config: &Config, token: Option<&str>) -> GrantInput {
    let Some(token) = token else {
        return GrantInput::None;
    };
    let Some(grants) = &config.grants else {
        return GrantInput::Ignored;
    };
    let files: Vec<TrustedKeys> = grants
        .trusted
        .iter()
        .filter(|t| matches!(t, TrustedKeys::JwksFile(_)))
        .cloned()
        .collect();
    let urls: Vec<String> = grants
        .trusted
        .iter()
        .filter_map(|t| match t {
            TrustedKeys::JwksUrl { url, .. } => Some(url.url.clone()),
            TrustedKeys::JwksFile(_) => None,
        })
        .collect();
    let offline = GrantsConfig {
        trusted: files,
        ..grants.clone()
    };
    let verified = match verify_with_files(&offline, token) {
        Ok(grant) => {
            return GrantInput::Scope {
                scope: grant.scope.clone(),
                info: info(&grant, true, None),
            }
        }
        Err(e) => e,
    };
    if urls.is_empty() {
        return GrantInput::Refused(verified);
    }
    match sidekey_grants::decode_unverified(token, grants.max_ttl) {
        Ok(grant) => {
            let because = format!(
                "the trusted keys at {} are not fetched by explain{}",
                urls.join(", "),
                if offline.trusted.is_empty() {
                    String::new()
                } else {
                    format!(" (the JWKS files said: {})", verified.message)
                }
            );
            GrantInput::Scope {
                scope: grant.scope.clone(),
                info: info(&grant, false, Some(because)),
            }
        }
        Err(e) => GrantInput::Refused(e.refusal()),
    }
}

/// The grant a request presents: `--grant`, else where the proxy looks for one, the proxy
/// credentials (`Proxy-Authorization`, Basic with the grant as password or Bearer) on the
/// forward listener, `x-sidekey-grant` on the route listener, among the `-H` headers.
pub fn grant_of(config: &Config, ask: &Ask, given: Option<&str>) -> GrantInput {
    if given.is_some() || config.grants.is_none() {
        return resolve_grant(config, given);
    }
    // Headers that do not parse are a usage error, reported by `explain`.
    let Ok(headers) = parse_headers(&ask.headers) else {
        return GrantInput::None;
    };
    let presented = match ask.listener {
        Listener::Forward => sidekey_grants::presented_by_proxy_authorization(&headers),
        Listener::Routes => sidekey_grants::presented_by_header(&headers),
    };
    match presented {
        Ok(token) => resolve_grant(config, token.as_deref()),
        Err(e) => GrantInput::Refused(e.refusal()),
    }
}

fn info(grant: &sidekey_grants::Grant, verified: bool, because: Option<String>) -> GrantInfo {
    GrantInfo {
        verified,
        jti: grant.jti.clone(),
        sub: grant.sub.clone(),
        task_id: grant.task_id.clone(),
        on_behalf_of: grant.on_behalf_of.clone(),
        act: grant.act.clone(),
        unverified_because: because,
    }
}

fn verify_with_files(config: &GrantsConfig, token: &str) -> Result<sidekey_grants::Grant, Refusal> {
    let invalid = |e: String| Refusal::new(ErrorCode::GrantInvalid, e);
    let grants = sidekey_grants::Grants::new(config).map_err(invalid)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| invalid(format!("cannot start a runtime: {e}")))?;
    runtime
        .block_on(grants.verify_uncached(token))
        .map_err(|e| e.refusal())
}

/// What sidekey would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Tunnel,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Tunnel => "tunnel",
            Verdict::Deny => "deny",
        }
    }

    /// 0 allowed or tunnelled, 1 refused.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Allow | Verdict::Tunnel => 0,
            Verdict::Deny => 1,
        }
    }
}

/// The route that allowed the request and what of it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// 1-based, in match order, as `sidekey check` numbers routes.
    pub number: usize,
    pub name: String,
    /// The host pattern that named the target.
    pub host: String,
    pub scheme: &'static str,
    pub port: u16,
    /// The method, and the route's methods.
    pub method: String,
    pub methods: String,
    /// The path glob that matched, or None: the route allows every path.
    pub path_glob: Option<String>,
    /// The grant's entry for this route (`methods`/`paths` narrowing), if a grant applies.
    pub grant: Option<String>,
}

/// The credential the route attaches and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialUse {
    pub name: String,
    pub issuer: String,
    pub issuer_kind: &'static str,
    pub per_task: bool,
    pub inject: Option<Inject>,
}

/// A refusal, with the check that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    pub step: &'static str,
}

#[derive(Debug, Clone)]
pub struct Explanation {
    pub verdict: Verdict,
    pub listener: Listener,
    pub method: String,
    pub url: String,
    pub target: Option<Target>,
    /// For an `https://` URL on the forward listener: what the CONNECT became.
    pub connect: Option<&'static str>,
    pub route: Option<RouteMatch>,
    pub credential: Option<CredentialUse>,
    /// The route's `client_certificate`: the certificate credential presented in the TLS
    /// handshake.
    pub client_certificate: Option<CredentialUse>,
    pub body: Option<BodyPlan>,
    pub grant: Option<GrantInfo>,
    /// With `cedar:`: whether the policies permit it, and the policies that decided.
    pub cedar: Option<(bool, Vec<String>)>,
    pub refused: Option<Refused>,
    pub notes: Vec<String>,
}

/// A request that cannot be built from the arguments (exit 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage(pub String);

/// Explains `ask` under `config` with the grant as [`resolve_grant`] found it.
pub fn explain(config: &Config, ask: &Ask, grant: &GrantInput) -> Result<Explanation, Usage> {
    let method = Method::from_bytes(ask.method.as_bytes())
        .map_err(|_| Usage(format!("`{}` is not an HTTP method", ask.method)))?;
    let mut headers = parse_headers(&ask.headers)?;
    if let Some(length) = ask.body_length {
        if !headers.contains_key(http::header::CONTENT_LENGTH) {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    let declared = declared_length(&headers, ask.body_length)?;
    let mut out = Explanation {
        verdict: Verdict::Deny,
        listener: ask.listener,
        method: method.to_string(),
        url: ask.url.clone(),
        target: None,
        connect: None,
        route: None,
        client_certificate: None,
        credential: None,
        body: None,
        grant: None,
        cedar: None,
        refused: None,
        notes: Vec::new(),
    };
    let policy = config.policy();
    let scope = match grant {
        GrantInput::Scope { scope, info } => {
            out.grant = Some(info.clone());
            if !info.verified {
                out.notes.push(
                    "the grant's signature, audience and expiry were NOT verified (its keys \
                     come from a jwks_url, which explain does not fetch): its scope is applied \
                     as it claims"
                        .into(),
                );
            }
            out.notes
                .push("whether the grant was revoked is known only to the running sidekey".into());
            Some(scope)
        }
        GrantInput::Ignored => {
            out.notes
                .push("the config has no `grants:`: the proxy ignores a grant".into());
            None
        }
        GrantInput::None | GrantInput::Refused(_) => None,
    };
    let grant_refusal = match grant {
        GrantInput::Refused(refusal) => Some(refusal.clone()),
        _ => None,
    };

    // identify
    let (identified, uri) = match ask.listener {
        Listener::Forward if ask.url.starts_with("https://") => {
            let url: Uri = ask
                .url
                .parse()
                .map_err(|e| Usage(format!("`{}` is not a URL: {e}", ask.url)))?;
            let authority = url.authority().map_or("", |a| a.as_str());
            let connect = if authority.contains(':') && !authority.ends_with(']') {
                authority.to_string()
            } else {
                format!("{authority}:443")
            };
            let connect_uri: Uri = connect
                .parse()
                .map_err(|e| Usage(format!("`{connect}` is not host:port: {e}")))?;
            let target = match connect_target(&connect_uri) {
                Ok(target) => target,
                Err(refusal) => return Ok(out.deny(refusal, "identify: the CONNECT target")),
            };
            out.target = Some(target.clone());
            if let Some(refusal) = grant_refusal {
                return Ok(out.deny(refusal, "the grant (Proxy-Authorization of the CONNECT)"));
            }
            match policy.decide_connect(&target, scope) {
                ConnectDecision::Intercept => out.connect = Some("intercept"),
                ConnectDecision::Tunnel => {
                    out.connect = Some("tunnel");
                    out.verdict = Verdict::Tunnel;
                    out.notes.push(
                        "no route names the target and `unmatched: tunnel`: the bytes are copied \
                         both ways uninspected, with no credential"
                            .into(),
                    );
                    out.notes.push(address_note(None));
                    return Ok(out);
                }
                ConnectDecision::Deny(refusal) => {
                    return Ok(out.deny(refusal, "connect: Policy::decide_connect"))
                }
            }
            if policy
                .routes()
                .iter()
                .any(|r| r.names_target(&target) && r.hosts.iter().all(|h| h.exact().is_none()))
            {
                out.notes.push(
                    "the name is under a wildcard route: a new TLS leaf may be refused by the \
                     leaf mint budget (rate_limited, ca.leaf_mint_*), which only the running \
                     sidekey counts"
                        .into(),
                );
            }
            // Clients send the URL's host as SNI, none for an IP address.
            let host = url.host().unwrap_or("");
            let sni = match ask.sni.as_deref() {
                Some("") => None,
                Some(name) => Some(name),
                None => target.host.ip().is_none().then_some(host),
            };
            let path = url.path_and_query().map_or("/", |p| p.as_str());
            if !headers.contains_key(http::header::HOST) {
                headers.insert(http::header::HOST, header_value(authority)?);
            }
            let inner: Uri = path
                .parse()
                .map_err(|e| Usage(format!("`{path}` is not a path: {e}")))?;
            (
                Identified::Intercepted {
                    sni: check_sni(&target, sni),
                    target,
                },
                inner,
            )
        }
        Listener::Forward => {
            let url: Uri = ask
                .url
                .parse()
                .map_err(|e| Usage(format!("`{}` is not a URL: {e}", ask.url)))?;
            let target = match absolute_target(&url) {
                Ok(target) => target,
                Err(refusal) => {
                    return Ok(out.deny(refusal, "identify: the absolute-form request target"))
                }
            };
            out.target = Some(target.clone());
            if let (false, Some(authority)) =
                (headers.contains_key(http::header::HOST), url.authority())
            {
                headers.insert(http::header::HOST, header_value(authority.as_str())?);
            }
            (Identified::Absolute(target), url)
        }
        Listener::Routes => {
            let raw = if ask.url.starts_with('/') {
                ask.url.clone()
            } else {
                let url: Uri = ask
                    .url
                    .parse()
                    .map_err(|e| Usage(format!("`{}` is not a URL: {e}", ask.url)))?;
                url.path_and_query()
                    .map_or("/".to_string(), |p| p.as_str().to_string())
            };
            let (path, query) = match raw.split_once('?') {
                Some((path, query)) => (path.to_string(), Some(query.to_string())),
                None => (raw.clone(), None),
            };
            let address = match route_target(&policy, &path) {
                Ok(address) => address,
                Err(refusal) => return Ok(out.deny(refusal, "identify: the route's name")),
            };
            out.target = Some(address.identified.target().clone());
            let inner = match query {
                Some(query) => format!("{}?{query}", address.path),
                None => address.path,
            };
            // The Host header names the listener: the route listener removes it.
            headers.remove(http::header::HOST);
            let inner: Uri = inner
                .parse()
                .map_err(|e| Usage(format!("`{inner}` is not a path: {e}")))?;
            (address.identified, inner)
        }
    };
    if let Some(refusal) = grant_refusal {
        return Ok(out.deny(refusal, "the grant"));
    }

    // decide
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method.clone();
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    match policy.decide_request(&identified, &parts, declared, scope) {
        RequestDecision::Deny(refusal) => {
            let step = step_of(&refusal);
            Ok(out.deny(refusal, step))
        }
        RequestDecision::PassUnmatched => {
            out.verdict = Verdict::Tunnel;
            out.notes.push(
                "no route names this plain-HTTP target and `unmatched: tunnel`: it goes as it is, \
                 with no credential"
                    .into(),
            );
            out.notes.push(address_note(None));
            Ok(out)
        }
        RequestDecision::Allow { route, path, body } => {
            let Some(rule) = config.routes.get(route) else {
                return Err(Usage(format!("route #{route} is not in the config")));
            };
            let target = identified.target();
            out.route = Some(route_match(
                route,
                rule,
                target,
                method.as_str(),
                &path,
                scope,
            ));
            if scope.is_some() {
                if let RequestDecision::Allow { route: first, .. } =
                    policy.decide_request(&identified, &parts, declared, None)
                {
                    if first != route {
                        let name = config.routes.get(first).map_or("?", |r| r.name.as_str());
                        out.notes.push(format!(
                            "without the grant, route #{} {name} would have matched first; the \
                             grant does not allow it, so the first route both allow is used",
                            first + 1
                        ));
                    }
                }
            }
            if config.cedar.is_some() {
                let gate = sidekey::runtime::load_cedar(config)
                    .map_err(|e| Usage(e.to_string()))?
                    .ok_or_else(|| Usage("cedar: not configured".into()))?;
                let grant_info = out.grant.as_ref();
                let input = sidekey_policy::CedarInput::for_request(
                    &gate,
                    target,
                    &parts,
                    &rule.name,
                    rule.action.as_deref(),
                    declared,
                    grant_info.map(|g| sidekey_policy::GrantFacts {
                        sub: &g.sub,
                        task: &g.task_id,
                        user: g.on_behalf_of.as_deref(),
                        act: &g.act,
                    }),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                );
                let verdict = gate.authorize(&input);
                out.notes.extend(
                    verdict
                        .errors
                        .iter()
                        .map(|e| format!("cedar: skipped or failed: {e}")),
                );
                out.cedar = Some((verdict.allowed, verdict.policies.clone()));
                if !verdict.allowed {
                    return Ok(out.deny(
                        verdict.refusal(),
                        "cedar: the policies after the route match",
                    ));
                }
            }
            out.credential = rule
                .credential
                .as_ref()
                .and_then(|name| credential_use(config, name, rule.inject.clone()));
            out.client_certificate = rule
                .client_certificate
                .as_ref()
                .and_then(|name| credential_use(config, name, None));
            for credential in out
                .credential
                .clone()
                .into_iter()
                .chain(out.client_certificate.clone())
            {
                if credential.per_task && scope.is_none() {
                    return Ok(out.deny(
                        Refusal::new(
                            ErrorCode::GrantRequired,
                            format!(
                                "this route's credential `{}` is issued per task: present the \
                                 task's grant",
                                credential.name
                            ),
                        ),
                        "credential: a per_task credential needs the request's grant",
                    ));
                }
                out.notes.push(format!(
                    "the credential is fetched from issuer {} only by the running sidekey; if \
                     the issuer fails: credential_unavailable (503)",
                    credential.issuer
                ));
            }
            if body.form != FormScan::None && body.whole.is_none() {
                out.notes.push(
                    "a `_method` field in the form body is checked as the body streams \
                     (method_not_allowed); explain cannot see the body"
                        .into(),
                );
            }
            out.notes.push(address_note(Some(rule)));
            out.body = Some(body);
            out.verdict = Verdict::Allow;
            Ok(out)
        }
    }
}

impl Explanation {
    fn deny(mut self, refusal: Refusal, step: &'static str) -> Explanation {
        self.verdict = Verdict::Deny;
        self.refused = Some(Refused { refusal, step });
        self
    }

    /// The report for a terminal.
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        out.push(format!("decision:   {}", self.verdict.as_str()));
        out.push(format!(
            "listener:   {}",
            match self.listener {
                Listener::Forward => "forward",
                Listener::Routes => "routes",
            }
        ));
        out.push(format!("request:    {} {}", self.method, self.url));
        if let Some(target) = &self.target {
            out.push(format!("target:     {}", target_text(target)));
        }
        if let Some(connect) = self.connect {
            out.push(format!(
                "connect:    {connect}{}",
                match connect {
                    "intercept" =>
                        " (a route names the target: TLS is terminated with a leaf from \
                                    sidekey's CA and each request inside is decided on its own)",
                    _ => "",
                }
            ));
        }
        if let Some(grant) = &self.grant {
            out.push(format!(
                "grant:      {} (jti {}, sub {}, task {})",
                if grant.verified {
                    "verified against the JWKS files"
                } else {
                    "UNVERIFIED"
                },
                grant.jti,
                grant.sub,
                grant.task_id
            ));
            if let Some(because) = &grant.unverified_because {
                out.push(format!("            unverified: {because}"));
            }
        }
        if let Some(route) = &self.route {
            out.push(format!("route:      #{} {}", route.number, route.name));
            out.push(format!(
                "  matched:  host {} (pattern {}), scheme {}, port {}, method {} (route: {}), path {}",
                self.target
                    .as_ref()
                    .map_or(String::new(), |t| t.host.to_uri_host()),
                route.host,
                route.scheme,
                route.port,
                route.method,
                route.methods,
                route
                    .path_glob
                    .as_ref()
                    .map_or("(any path)".to_string(), |g| format!("glob {g}"))
            ));
            if let Some(grant) = &route.grant {
                out.push(format!("  granted:  {grant}"));
            }
        }
        if let Some((allowed, policies)) = &self.cedar {
            out.push(format!(
                "cedar:      {}{}",
                if *allowed { "permit" } else { "deny" },
                if policies.is_empty() {
                    " (no policy permits it)".to_string()
                } else {
                    format!(" by {}", policies.join(", "))
                }
            ));
        }
        match &self.credential {
            Some(credential) => {
                out.push(format!(
                    "credential: {} (issuer {}, kind {}{})",
                    credential.name,
                    credential.issuer,
                    credential.issuer_kind,
                    if credential.per_task {
                        ", one per task grant"
                    } else {
                        ""
                    }
                ));
                if let Some(inject) = &credential.inject {
                    out.push(format!("inject:     {}", inject_text(inject)));
                }
            }
            None if self.route.is_some() && self.client_certificate.is_none() => {
                out.push("credential: none (allowed egress, nothing injected)".into())
            }
            None => {}
        }
        if let Some(certificate) = &self.client_certificate {
            out.push(format!(
                "client certificate: {} (issuer {}, kind {}{}), presented in the TLS handshake",
                certificate.name,
                certificate.issuer,
                certificate.issuer_kind,
                if certificate.per_task {
                    ", one per task grant"
                } else {
                    ""
                }
            ));
        }
        if let Some(body) = &self.body {
            out.push(format!("body:       {}", body_text(body)));
        }
        if let Some(refused) = &self.refused {
            out.push(format!(
                "refused by: {}{}",
                if refused.step.starts_with(|c: char| c.is_ascii_digit()) {
                    "check "
                } else {
                    ""
                },
                refused.step
            ));
            out.push(format!(
                "answer:     {} {}",
                refused.refusal.code.status(),
                refused.refusal.code.as_str()
            ));
            out.push(format!("message:    {}", refused.refusal.message));
        }
        for note in &self.notes {
            out.push(format!("note:       {note}"));
        }
        let mut text = out.join("\n");
        text.push('\n');
        text
    }

    /// The same as one JSON document.
    pub fn json(&self) -> Value {
        json!({
            "decision": self.verdict.as_str(),
            "exit": self.verdict.exit_code(),
            "listener": match self.listener {
                Listener::Forward => "forward",
                Listener::Routes => "routes",
            },
            "request": { "method": self.method, "url": self.url },
            "target": self.target.as_ref().map(|t| json!({
                "scheme": t.scheme.as_str(),
                "host": t.host.to_uri_host(),
                "port": t.port,
            })),
            "connect": self.connect,
            "grant": self.grant.as_ref().map(|g| json!({
                "verified": g.verified,
                "jti": g.jti,
                "sub": g.sub,
                "task_id": g.task_id,
                "unverified_because": g.unverified_because,
            })),
            "route": self.route.as_ref().map(|r| json!({
                "index": r.number,
                "name": r.name,
                "matched": {
                    "host": r.host,
                    "scheme": r.scheme,
                    "port": r.port,
                    "method": r.method,
                    "methods": r.methods,
                    "path": r.path_glob,
                },
                "grant": r.grant,
            })),
            "cedar": self.cedar.as_ref().map(|(allowed, policies)| json!({
                "decision": if *allowed { "allow" } else { "deny" },
                "policies": policies,
            })),
            "credential": self.credential.as_ref().map(|c| json!({
                "name": c.name,
                "issuer": c.issuer,
                "issuer_kind": c.issuer_kind,
                "per_task": c.per_task,
            })),
            "inject": self.credential.as_ref().and_then(|c| c.inject.as_ref()).map(inject_json),
            "client_certificate": self.client_certificate.as_ref().map(|c| json!({
                "name": c.name,
                "issuer": c.issuer,
                "issuer_kind": c.issuer_kind,
                "per_task": c.per_task,
            })),
            "body": self.body.as_ref().map(|b| json!({
                "max_request_body": b.max,
                "form_scan": match &b.form {
                    FormScan::None => "none",
                    FormScan::UrlEncoded => "urlencoded",
                    FormScan::Multipart { .. } => "multipart",
                },
                "read_whole": b.whole.map(|w| json!({
                    "limit": w.limit,
                    "purpose": match w.purpose {
                        WholePurpose::FormCheck => "form_check",
                        WholePurpose::Signature => "signature",
                    },
                })),
            })),
            "refusal": self.refused.as_ref().map(|r| json!({
                "code": r.refusal.code.as_str(),
                "status": r.refusal.code.status(),
                "message": r.refusal.message,
                "step": r.step,
            })),
            "notes": self.notes,
        })
    }
}

fn parse_headers(given: &[String]) -> Result<HeaderMap, Usage> {
    let mut headers = HeaderMap::new();
    for line in given {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Usage(format!("-H `{line}` must be `Name: value`")));
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            Usage(format!(
                "-H `{line}`: `{}` is not a header name",
                name.trim()
            ))
        })?;
        headers.append(name, header_value(value.trim())?);
    }
    Ok(headers)
}

fn header_value(value: &str) -> Result<HeaderValue, Usage> {
    HeaderValue::from_str(value).map_err(|_| Usage(format!("`{value}` is not a header value")))
}

/// The body length the proxy would see declared: `--body-length`, else Content-Length, else
/// none with `Transfer-Encoding` (a body of unknown length), else an empty body.
fn declared_length(headers: &HeaderMap, given: Option<u64>) -> Result<Option<u64>, Usage> {
    if let Some(length) = given {
        return Ok(Some(length));
    }
    if let Some(value) = headers.get(http::header::CONTENT_LENGTH) {
        let length = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| Usage("Content-Length must be a number".into()))?;
        return Ok(Some(length));
    }
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Ok(None);
    }
    Ok(Some(0))
}

/// Which check of "Decisions, in order" (docs/architecture.md) a refusal of
/// `Policy::decide_request` came from, read from its code and message: unit tests pin each.
fn step_of(refusal: &Refusal) -> &'static str {
    let m = refusal.message.as_str();
    match refusal.code {
        ErrorCode::GrantRequired => "0: grants.required (a grant is present)",
        ErrorCode::RequestInvalid if m.contains("x-sidekey-task") => {
            "0: grants.required (x-sidekey-task is not accepted)"
        }
        ErrorCode::RequestInvalid if m.contains("Transfer-Encoding") => {
            "1: framing (Transfer-Encoding)"
        }
        ErrorCode::TargetMismatch if m.contains("TLS") => "2: the TLS server name (SNI)",
        ErrorCode::TargetMismatch => "3: Host and authority name the target",
        ErrorCode::RequestInvalid if m.contains("Host") || m.contains("authority") => {
            "3: Host and authority name the target"
        }
        ErrorCode::RequestInvalid | ErrorCode::PathNotAllowed if m.starts_with("path refused") => {
            "4: the path (encodings, dot segments)"
        }
        ErrorCode::HostNotAllowed | ErrorCode::PathNotAllowed | ErrorCode::RouteNotGranted => {
            "5: the route match (first match; with a grant, route ∩ grant)"
        }
        ErrorCode::MethodNotAllowed if m.contains(" asks for ") => {
            "7: method override headers and _method in the query"
        }
        ErrorCode::MethodNotAllowed => {
            "5: the route match (first match; with a grant, route ∩ grant)"
        }
        ErrorCode::RequestInvalid if m.contains("Content-Type") || m.contains("multipart") => {
            "8: the body plan (form kind of a POST)"
        }
        ErrorCode::RequestInvalid
            if m.contains("must name one method") || m.contains("is not ASCII") =>
        {
            "7: method override headers and _method in the query"
        }
        ErrorCode::BodyTooLarge => "8: the body plan (declared length, max_request_body)",
        _ => "8: the body plan (form kind of a POST)",
    }
}

fn route_match(
    index: usize,
    rule: &RouteConfig,
    target: &Target,
    method: &str,
    path: &RequestPath,
    scope: Option<&GrantScope>,
) -> RouteMatch {
    let host = rule
        .hosts
        .iter()
        .find(|h| h.matches(&target.host))
        .map_or_else(String::new, ToString::to_string);
    let methods = match &rule.methods {
        MethodSet::Any => "any".to_string(),
        MethodSet::List(list) => list.join(", "),
    };
    let path_glob = rule
        .paths
        .iter()
        .find(|g| g.matches(path.decoded()))
        .map(|g| g.as_str().to_string());
    let grant = scope.map(|scope| match &scope.routes {
        None => "the grant names every route".to_string(),
        Some(list) => match list.iter().find(|g| g.route == rule.name) {
            None => "the grant does not name this route".to_string(),
            Some(g) => {
                let methods = g
                    .methods
                    .as_ref()
                    .map_or("the route's methods".to_string(), |m| m.join(", "));
                let paths = if g.paths.is_empty() {
                    "the route's paths".to_string()
                } else {
                    g.paths
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                format!("the grant names {} with {methods}, {paths}", g.route)
            }
        },
    });
    RouteMatch {
        number: index + 1,
        name: rule.name.clone(),
        host,
        scheme: target.scheme.as_str(),
        port: target.port,
        method: method.to_string(),
        methods,
        path_glob,
        grant,
    }
}

fn credential_use(config: &Config, name: &String, inject: Option<Inject>) -> Option<CredentialUse> {
    let credential = config.credentials.iter().find(|c| &c.name == name)?;
    let kind = config
        .issuers
        .iter()
        .find(|i| i.name == credential.issuer)
        .map_or("?", |i| i.kind.name());
    Some(CredentialUse {
        name: name.clone(),
        issuer: credential.issuer.clone(),
        issuer_kind: kind,
        per_task: credential.per_task,
        inject,
    })
}

fn address_note(rule: Option<&RouteConfig>) -> String {
    let allowed = match rule {
        Some(rule) if rule.allow_private => {
            "this route has allow_private, so private and loopback addresses are allowed"
        }
        _ => "a private or loopback address is refused unless upstream.allow_ranges covers it",
    };
    format!(
        "after DNS the running sidekey checks each upstream address (address_not_allowed): \
         {allowed}"
    )
}

fn target_text(target: &Target) -> String {
    format!(
        "{}://{}:{}",
        target.scheme.as_str(),
        target.host.to_uri_host(),
        target.port
    )
}

fn inject_text(inject: &Inject) -> String {
    match inject {
        Inject::Header { name, value } => {
            format!("header {name}: {}{{token}}{}", value.prefix, value.suffix)
        }
        Inject::Basic { username } => {
            format!("basic auth, username {username}, the token as password")
        }
        Inject::Query { param } => format!("query parameter {param}={{token}}"),
        Inject::SigV4 { service, region } => {
            format!("AWS SigV4 signature, service {service}, region {region}")
        }
    }
}

fn inject_json(inject: &Inject) -> Value {
    match inject {
        Inject::Header { name, value } => json!({
            "kind": "header",
            "header": name,
            "template": format!("{}{{token}}{}", value.prefix, value.suffix),
        }),
        Inject::Basic { username } => json!({ "kind": "basic", "username": username }),
        Inject::Query { param } => json!({ "kind": "query", "param": param }),
        Inject::SigV4 { service, region } => {
            json!({ "kind": "sigv4", "service": service, "region": region })
        }
    }
}

fn body_text(body: &BodyPlan) -> String {
    let max = body.max.map_or("no max_request_body".to_string(), |m| {
        format!("max_request_body {m} bytes")
    });
    let how = match body.whole {
        Some(w) => match w.purpose {
            WholePurpose::FormCheck => format!(
                "read whole (up to {} bytes) and checked for `_method` before anything is sent",
                w.limit
            ),
            WholePurpose::Signature => format!(
                "read whole (up to {} bytes) to sign its hash (SigV4)",
                w.limit
            ),
        },
        None => match body.form {
            FormScan::None => "streamed".to_string(),
            FormScan::UrlEncoded => "streamed, scanned for a url-encoded `_method`".to_string(),
            FormScan::Multipart { .. } => {
                "streamed, scanned for a multipart `_method` field".to_string()
            }
        },
    };
    format!("{how}; {max}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidekey_policy::{PathGlob, RouteGrant};

    const CONFIG: &str = r#"issuers:
  local: { kind: local }
credentials:
  demo: { issuer: local, audience: demo-api }
routes:
  - name: api
    hosts: [api.example.com]
    methods: [GET, POST]
    credential: demo
    inject: { header: X-Api-Key, value: "Key {token}" }
    max_request_body: 1000
  - name: scoped
    hosts: [paths.example.com]
    methods: [GET]
    paths: ["/v1/**"]
  - name: plain
    hosts: [plain.example.com]
    schemes: [http]
    methods: [GET]
    credential: demo
    inject: { query: api_key }
  - name: wild
    hosts: ["*.wild.example.com"]
    methods: [GET]
  - name: wide
    hosts: [two.example.com]
    methods: [GET]
    credential: demo
    inject: { basic: { username: x-access-token } }
  - name: narrow
    hosts: [two.example.com]
    methods: [GET]
    paths: ["/v1/**"]
"#;

    fn config(extra: &str) -> Config {
        sidekey_config::parse(&format!("{CONFIG}{extra}"), "test.yaml").unwrap()
    }

    fn ask(listener: Listener, method: &str, url: &str, headers: &[&str]) -> Ask {
        Ask {
            listener,
            method: method.into(),
            url: url.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            body_length: None,
            sni: None,
        }
    }

    fn run(config: &Config, ask: &Ask, grant: &GrantInput) -> Explanation {
        explain(config, ask, grant).unwrap()
    }

    #[test]
    fn a_client_certificate_is_named_with_its_issuer() {
        let c = sidekey_config::parse(
            r#"issuers:
  bao: { kind: vault, address: "http://127.0.0.1:8200", auth: { method: jwt, role: a, token_file: /dev/null } }
credentials:
  cert: { issuer: bao, path: pki/sign/agent, certificate: { common_name: a.internal } }
routes:
  - name: mtls
    hosts: [mtls.example.com]
    methods: [GET]
    client_certificate: cert
"#,
            "test.yaml",
        )
        .unwrap();
        let e = run(
            &c,
            &ask(Listener::Forward, "GET", "https://mtls.example.com/", &[]),
            &GrantInput::None,
        );
        assert_eq!(e.verdict, Verdict::Allow);
        assert!(e.credential.is_none());
        let text = e.text();
        assert!(
            text.contains("client certificate: cert (issuer bao, kind vault)"),
            "{text}"
        );
        assert!(!text.contains("credential: none"), "{text}");
        let json = e.json();
        assert_eq!(json["client_certificate"]["name"], "cert", "{json}");
        assert_eq!(json["client_certificate"]["issuer_kind"], "vault", "{json}");
    }

    #[test]
    fn an_allowed_request_names_route_credential_injection_and_body_plan() {
        let c = config("");
        let e = run(
            &c,
            &ask(
                Listener::Forward,
                "POST",
                "https://api.example.com/x?a=1",
                &[],
            ),
            &GrantInput::None,
        );
        assert_eq!(e.verdict, Verdict::Allow);
        assert_eq!(e.connect, Some("intercept"));
        let route = e.route.clone().unwrap();
        assert_eq!((route.number, route.name.as_str()), (1, "api"));
        assert_eq!(route.host, "api.example.com");
        assert_eq!(route.methods, "GET, POST");
        assert_eq!(route.path_glob, None);
        let credential = e.credential.clone().unwrap();
        assert_eq!(
            (credential.name.as_str(), credential.issuer.as_str()),
            ("demo", "local")
        );
        assert_eq!(credential.issuer_kind, "local");
        let json = e.json();
        assert_eq!(json["decision"], "allow");
        assert_eq!(json["exit"], 0);
        assert_eq!(json["route"]["index"], 1);
        assert_eq!(json["inject"]["kind"], "header");
        assert_eq!(json["inject"]["header"], "X-Api-Key");
        assert_eq!(json["inject"]["template"], "Key {token}");
        assert_eq!(json["body"]["max_request_body"], 1000);
        // A POST with no Content-Type is a form to frameworks: read whole (declared empty).
        assert_eq!(json["body"]["form_scan"], "urlencoded");
        assert_eq!(json["body"]["read_whole"]["purpose"], "form_check");
        assert_eq!(json["refusal"], Value::Null);
        let text = e.text();
        assert!(text.contains("route:      #1 api"), "{text}");
        assert!(
            text.contains("inject:     header X-Api-Key: Key {token}"),
            "{text}"
        );
        assert!(text.contains("address_not_allowed"), "{text}");
    }

    #[test]
    fn each_injection_is_described() {
        let c = config("");
        let cases = [
            (
                "http://plain.example.com/a",
                json!({"kind": "query", "param": "api_key"}),
            ),
            (
                "https://two.example.com/a",
                json!({"kind": "basic", "username": "x-access-token"}),
            ),
            ("https://paths.example.com/v1/a", Value::Null),
        ];
        for (url, want) in cases {
            let e = run(
                &c,
                &ask(Listener::Forward, "GET", url, &[]),
                &GrantInput::None,
            );
            assert_eq!(e.verdict, Verdict::Allow, "{url}");
            assert_eq!(e.json()["inject"], want, "{url}");
        }
        let e = run(
            &c,
            &ask(
                Listener::Forward,
                "GET",
                "https://paths.example.com/v1/a",
                &[],
            ),
            &GrantInput::None,
        );
        assert_eq!(
            e.route.as_ref().unwrap().path_glob.as_deref(),
            Some("/v1/**")
        );
        assert!(e.text().contains("credential: none"));
    }

    /// Every refusal a request can get here: the code, and the check that made it.
    #[test]
    fn refusals_carry_code_status_message_and_step() {
        let c = config("");
        let f = Listener::Forward;
        let r = Listener::Routes;
        /// Listener, method, URL, headers, body length, the code, the start of the step.
        type Case<'a> = (
            Listener,
            &'a str,
            &'a str,
            &'a [&'a str],
            Option<u64>,
            ErrorCode,
            &'a str,
        );
        let cases: &[Case] = &[
            (
                f,
                "GET",
                "https://nope.example.com/",
                &[],
                None,
                ErrorCode::HostNotAllowed,
                "connect",
            ),
            (
                f,
                "GET",
                "http://nope.example.com/",
                &[],
                None,
                ErrorCode::HostNotAllowed,
                "5:",
            ),
            (
                f,
                "GET",
                "https://plain.example.com/",
                &[],
                None,
                ErrorCode::HostNotAllowed,
                "connect",
            ),
            (
                f,
                "DELETE",
                "https://api.example.com/",
                &[],
                None,
                ErrorCode::MethodNotAllowed,
                "5:",
            ),
            (
                f,
                "GET",
                "https://paths.example.com/v2/a",
                &[],
                None,
                ErrorCode::PathNotAllowed,
                "5:",
            ),
            (
                f,
                "GET",
                "https://paths.example.com/v1/../v2",
                &[],
                None,
                ErrorCode::PathNotAllowed,
                "4:",
            ),
            (
                f,
                "GET",
                "https://paths.example.com/v1/a%2Fb",
                &[],
                None,
                ErrorCode::PathNotAllowed,
                "4:",
            ),
            (
                f,
                "GET",
                "https://paths.example.com/v1/a%zz",
                &[],
                None,
                ErrorCode::RequestInvalid,
                "4:",
            ),
            (
                f,
                "GET",
                "https://api.example.com/",
                &["Host: other.example.com"],
                None,
                ErrorCode::TargetMismatch,
                "3:",
            ),
            (
                f,
                "GET",
                "http://plain.example.com/",
                &["Host: api.example.com"],
                None,
                ErrorCode::TargetMismatch,
                "3:",
            ),
            (
                f,
                "POST",
                "https://api.example.com/",
                &["Transfer-Encoding: gzip, chunked"],
                None,
                ErrorCode::RequestInvalid,
                "1:",
            ),
            (
                f,
                "POST",
                "https://api.example.com/",
                &[],
                Some(1001),
                ErrorCode::BodyTooLarge,
                "8:",
            ),
            (
                f,
                "POST",
                "https://api.example.com/",
                &["Content-Type: multipart/form-data"],
                None,
                ErrorCode::RequestInvalid,
                "8:",
            ),
            (
                f,
                "POST",
                "https://api.example.com/",
                &["X-HTTP-Method-Override: DELETE"],
                None,
                ErrorCode::MethodNotAllowed,
                "7:",
            ),
            (
                f,
                "GET",
                "https://api.example.com/?_method=PUT",
                &[],
                None,
                ErrorCode::MethodNotAllowed,
                "7:",
            ),
            (
                f,
                "GET",
                "https://api.example.com/",
                &["X-HTTP-Method-Override: a b"],
                None,
                ErrorCode::RequestInvalid,
                "7:",
            ),
            (
                f,
                "GET",
                "/x",
                &[],
                None,
                ErrorCode::RequestInvalid,
                "identify",
            ),
            (
                r,
                "GET",
                "/r/nope/x",
                &[],
                None,
                ErrorCode::HostNotAllowed,
                "identify",
            ),
            (
                r,
                "GET",
                "http://127.0.0.1:15081/r/wild/x",
                &[],
                None,
                ErrorCode::HostNotAllowed,
                "identify",
            ),
            (
                r,
                "GET",
                "/x",
                &[],
                None,
                ErrorCode::RequestInvalid,
                "identify",
            ),
            (
                r,
                "DELETE",
                "/r/api/x",
                &[],
                None,
                ErrorCode::MethodNotAllowed,
                "5:",
            ),
        ];
        for (listener, method, url, headers, length, code, step) in cases {
            let mut a = ask(*listener, method, url, headers);
            a.body_length = *length;
            let e = run(&c, &a, &GrantInput::None);
            let what = format!("{method} {url} {headers:?}");
            assert_eq!(e.verdict, Verdict::Deny, "{what}: {}", e.text());
            let refused = e.refused.clone().unwrap();
            assert_eq!(refused.refusal.code, *code, "{what}: {}", e.text());
            assert!(
                refused.step.starts_with(step),
                "{what}: step {}",
                refused.step
            );
            let json = e.json();
            assert_eq!(json["exit"], 1);
            assert_eq!(json["refusal"]["code"], code.as_str());
            assert_eq!(json["refusal"]["status"], code.status());
            assert_eq!(json["refusal"]["message"], refused.refusal.message.as_str());
            assert_eq!(json["route"], Value::Null, "{what}");
        }
    }

    #[test]
    fn a_server_name_other_than_the_target_is_a_mismatch_inside_the_tunnel() {
        let c = config("");
        let url = "https://api.example.com/";
        for (sni, want) in [
            (Some("other.example.com"), Some(ErrorCode::TargetMismatch)),
            (Some(""), Some(ErrorCode::TargetMismatch)),
            (Some("API.example.com"), None),
            (None, None),
        ] {
            let mut a = ask(Listener::Forward, "GET", url, &[]);
            a.sni = sni.map(str::to_string);
            let e = run(&c, &a, &GrantInput::None);
            let refused = e.refused.clone();
            assert_eq!(refused.as_ref().map(|r| r.refusal.code), want, "{sni:?}");
            if let Some(refused) = refused {
                assert!(refused.step.starts_with("2:"), "{}", refused.step);
            }
        }
    }

    #[test]
    fn the_route_listener_decides_among_its_route_only_and_ignores_host() {
        let c = config("");
        let e = run(
            &c,
            &ask(
                Listener::Routes,
                "GET",
                "http://127.0.0.1:15081/r/api/v1/x?q=1",
                &["Host: elsewhere"],
            ),
            &GrantInput::None,
        );
        assert_eq!(e.verdict, Verdict::Allow, "{}", e.text());
        assert_eq!(e.route.as_ref().unwrap().name, "api");
        assert_eq!(e.connect, None);
        assert_eq!(e.json()["target"]["host"], "api.example.com");
    }

    #[test]
    fn unmatched_tunnel_says_tunnel_with_no_credential() {
        let c = config("unmatched: tunnel\n");
        for url in ["https://else.example.net/", "http://else.example.net/"] {
            let e = run(
                &c,
                &ask(Listener::Forward, "GET", url, &[]),
                &GrantInput::None,
            );
            assert_eq!(e.verdict, Verdict::Tunnel, "{url}");
            assert_eq!(e.verdict.exit_code(), 0);
            assert!(e.credential.is_none() && e.route.is_none());
        }
    }

    /// Route, methods, paths.
    type Granted<'a> = (&'a str, Option<&'a [&'a str]>, &'a [&'a str]);

    fn scope(routes: &[Granted]) -> GrantInput {
        GrantInput::Scope {
            scope: GrantScope {
                routes: Some(
                    routes
                        .iter()
                        .map(|(route, methods, paths)| RouteGrant {
                            route: route.to_string(),
                            methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
                            paths: paths.iter().map(|p| PathGlob::parse(p).unwrap()).collect(),
                        })
                        .collect(),
                ),
            },
            info: GrantInfo {
                verified: true,
                jti: "j1".into(),
                sub: "agent".into(),
                task_id: "t1".into(),
                on_behalf_of: None,
                act: Vec::new(),
                unverified_because: None,
            },
        }
    }

    #[test]
    fn a_grant_narrows_routes() {
        let c = config("");
        // A grant for `narrow` only: the first route both allow, not `wide`.
        let grant = scope(&[("narrow", None, &[])]);
        let e = run(
            &c,
            &ask(
                Listener::Forward,
                "GET",
                "https://two.example.com/v1/a",
                &[],
            ),
            &grant,
        );
        assert_eq!(e.verdict, Verdict::Allow, "{}", e.text());
        assert_eq!(e.route.clone().unwrap().name, "narrow");
        assert!(e.notes.iter().any(|n| n.contains("wide")), "{:?}", e.notes);
        assert!(e.credential.is_none());
        // Outside it: route_not_granted, inside the tunnel.
        let e = run(
            &c,
            &ask(Listener::Forward, "GET", "https://two.example.com/v2", &[]),
            &grant,
        );
        let refused = e.refused.unwrap();
        assert_eq!(refused.refusal.code, ErrorCode::RouteNotGranted);
        assert!(refused.step.starts_with("5:"), "{}", refused.step);
        // A host none of its routes name: refused at the CONNECT.
        let e = run(
            &c,
            &ask(Listener::Forward, "GET", "https://api.example.com/", &[]),
            &grant,
        );
        let refused = e.refused.unwrap();
        assert_eq!(refused.refusal.code, ErrorCode::RouteNotGranted);
        assert!(refused.step.starts_with("connect"), "{}", refused.step);
        // Methods narrowed by the grant.
        let grant = scope(&[("api", Some(&["GET"]), &["/v1/**"])]);
        let e = run(
            &c,
            &ask(
                Listener::Forward,
                "GET",
                "https://api.example.com/v1/a",
                &[],
            ),
            &grant,
        );
        assert_eq!(e.verdict, Verdict::Allow);
        let granted = e.route.unwrap().grant.unwrap();
        assert_eq!(granted, "the grant names api with GET, /v1/**");
        let e = run(
            &c,
            &ask(
                Listener::Forward,
                "POST",
                "https://api.example.com/v1/a",
                &[],
            ),
            &grant,
        );
        assert_eq!(e.refused.unwrap().refusal.code, ErrorCode::RouteNotGranted);
    }

    #[test]
    fn grants_required_refuses_no_grant_and_a_task_header_and_a_refused_grant() {
        let c = config(
            "grants:\n  audience: me\n  required: true\n  trusted:\n    - jwks_file: /nonexistent/jwks.json\n",
        );
        let url = "https://api.example.com/";
        let e = run(
            &c,
            &ask(Listener::Forward, "GET", url, &[]),
            &GrantInput::None,
        );
        let refused = e.refused.unwrap();
        assert_eq!(refused.refusal.code, ErrorCode::GrantRequired);
        assert_eq!(refused.refusal.code.status(), 407);
        let e = run(
            &c,
            &ask(
                Listener::Forward,
                "GET",
                "http://plain.example.com/",
                &["x-sidekey-task: t"],
            ),
            &scope(&[("plain", None, &[])]),
        );
        let refused = e.refused.unwrap();
        assert_eq!(refused.refusal.code, ErrorCode::RequestInvalid);
        assert!(refused.step.starts_with("0:"), "{}", refused.step);
        let forged = GrantInput::Refused(Refusal::new(ErrorCode::GrantInvalid, "grant invalid: x"));
        let e = run(&c, &ask(Listener::Forward, "GET", url, &[]), &forged);
        let refused = e.refused.unwrap();
        assert_eq!(refused.refusal.code, ErrorCode::GrantInvalid);
        assert!(refused.step.starts_with("the grant"), "{}", refused.step);
    }

    #[test]
    fn a_garbage_grant_is_grant_invalid_offline_and_ignored_without_grants() {
        let dir = std::env::temp_dir().join(format!("sidekey-explain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let jwks = dir.join("jwks.json");
        let key = sidekey_grants::SigningKey::generate().unwrap();
        std::fs::write(&jwks, key.jwks()).unwrap();
        let c = config(&format!(
            "grants:\n  audience: me\n  trusted:\n    - jwks_file: {}\n",
            jwks.display()
        ));
        match resolve_grant(&c, Some("not.a.grant")) {
            GrantInput::Refused(r) => assert_eq!(r.code, ErrorCode::GrantInvalid),
            other => panic!("{other:?}"),
        }
        assert!(matches!(resolve_grant(&c, None), GrantInput::None));
        assert!(matches!(
            resolve_grant(&config(""), Some("x")),
            GrantInput::Ignored
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let c = config("");
        for (method, url, headers) in [
            ("G E T", "https://api.example.com/", &[][..]),
            ("GET", "https://api.example.com/", &["no colon"][..]),
            ("GET", "http://api.example.com/", &["Content-Length: x"][..]),
        ] {
            let a = ask(Listener::Forward, method, url, headers);
            assert!(
                explain(&c, &a, &GrantInput::None).is_err(),
                "{method} {url} {headers:?}"
            );
        }
    }
}
