//! `routes:` — the allowlist, in match order: hosts, schemes, ports, methods, paths, and which
//! credential is attached how.

use std::collections::HashMap;

use sidekey_policy::{HostPattern, MethodSet, PathGlob, Scheme};

use crate::check::{check_name, closest, Errors};
use crate::inject::inject;
use crate::validate::{resolve_map, CredentialNames, IssuerStatus, ResolveEntry};
use crate::yaml::{Node, Pos, Value};
use crate::{Inject, RouteConfig};

const ROUTE_KEYS: &[&str] = &[
    "name",
    "hosts",
    "schemes",
    "ports",
    "methods",
    "paths",
    "credential",
    "client_certificate",
    "inject",
    "allow_private",
    "max_request_body",
    "resolve",
    "action",
];

pub(crate) fn routes(
    node: &Node,
    e: &mut Errors,
    credentials: &CredentialNames,
    resolve: &mut Vec<ResolveEntry>,
) -> Vec<RouteConfig> {
    let Some(items) = e.list(node, "`routes`") else {
        return Vec::new();
    };
    let mut names: HashMap<String, Pos> = HashMap::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(r) = route(i + 1, item, e, credentials, resolve, &mut names) {
            out.push(r);
        }
    }
    out
}

fn route(
    number: usize,
    node: &Node,
    e: &mut Errors,
    credentials: &CredentialNames,
    resolve: &mut Vec<ResolveEntry>,
    names: &mut HashMap<String, Pos>,
) -> Option<RouteConfig> {
    let f = e.map(node, &format!("route #{number}"))?;

    let name = match f.value("name") {
        Some(n) => check_name(e, n, "route"),
        None => {
            e.error_hint(
                f.pos,
                format!("route #{number} has no `name`"),
                "add `name: <name>`; it appears in /r/<name>/ URLs and audit records",
            );
            None
        }
    };
    // Label messages with the name as written, even an invalid one: it is what the user sees.
    let what = match f.value("name").map(|n| &n.value) {
        Some(Value::Str(n)) if !n.is_empty() => format!("route `{n}`"),
        _ => format!("route #{number}"),
    };
    e.unknown_keys(&f, &what, ROUTE_KEYS);
    if let (Some(n), Some(node)) = (&name, f.value("name")) {
        if let Some(first) = names.get(n) {
            e.error_hint(
                node.pos,
                format!("duplicate route name `{n}`"),
                format!(
                    "`{n}` is already used by the route at line {}; route names must be unique",
                    first.line
                ),
            );
        } else {
            names.insert(n.clone(), node.pos);
        }
    }

    let hosts = hosts(f.value("hosts"), f.pos, &what, e);
    let schemes = match f.value("schemes") {
        Some(n) => schemes(n, &what, e),
        None => Some(vec![Scheme::Https]),
    };
    let ports = match f.value("ports") {
        Some(n) => ports(n, &what, e),
        None => schemes.as_ref().map(|s| {
            let mut p: Vec<u16> = s.iter().map(|s| s.default_port()).collect();
            p.dedup();
            p
        }),
    };
    let methods = methods(
        f.field("methods").map(|f| (f.key, f.value)),
        f.pos,
        &what,
        e,
    );
    let paths = match f.value("paths") {
        Some(n) => paths(n, &what, e),
        None => Some(Vec::new()),
    };

    let credential_field = f.field("credential").filter(|c| !c.value.is_null());
    let inject_field = f.field("inject").filter(|c| !c.value.is_null());
    let credential = credential_field.and_then(|c| {
        let name = e.string(c.value, &format!("`credential` of {what}"))?;
        if !credentials.contains_key(name) {
            let known: Vec<&str> = credentials.keys().map(String::as_str).collect();
            let hint = match closest(name, &known) {
                Some(best) => format!("did you mean `{best}`?"),
                None if known.is_empty() => {
                    format!("declare it under `credentials:`, e.g. `{name}: {{ issuer: local, audience: <api> }}`")
                }
                None => format!("declared credentials: {}", known.join(", ")),
            };
            e.error_hint(c.value.pos, format!("{what} refers to unknown credential `{name}`"), hint);
        }
        if credentials.get(name).is_some_and(|c| c.certificate) {
            e.error_hint(
                c.value.pos,
                format!("{what} attaches certificate credential `{name}` as a token"),
                format!("a client certificate is presented in the TLS handshake: client_certificate: {name}"),
            );
        }
        Some(name.to_string())
    });
    let client_certificate = client_certificate(&f, &what, credentials, schemes.as_deref(), e);
    let inject = inject_field.and_then(|i| inject(i.value, &what, e));
    match (credential_field, inject_field) {
        (Some(c), None) => e.error_hint(
            c.key.pos,
            format!("{what} has a `credential` but no `inject`"),
            "say how to attach it, e.g. inject: { header: Authorization, value: \"Bearer {token}\" }",
        ),
        (None, Some(i)) => e.error_hint(
            i.key.pos,
            format!("{what} has `inject` but no `credential`"),
            "add `credential: <name>`, or remove `inject` for plain allowed egress",
        ),
        (Some(c), Some(i)) => {
            // SigV4 signs with AWS keys; AWS keys are only ever used to sign.
            let status = credential
                .as_deref()
                .and_then(|name| credentials.get(name).map(|c| c.issuer));
            let sigv4 = matches!(inject, Some(Inject::SigV4 { .. }));
            match status {
                Some(IssuerStatus::AwsSts) if !sigv4 && inject.is_some() => e.error_hint(
                    i.key.pos,
                    format!("{what} attaches aws-sts credential `{}` as a token", credential.as_deref().unwrap_or_default()),
                    "AWS keys are used to sign requests: inject: { sigv4: { service: s3, region: us-east-1 } }",
                ),
                Some(s) if sigv4 && s != IssuerStatus::AwsSts && s != IssuerStatus::Invalid => e.error_hint(
                    c.value.pos,
                    format!("{what} signs with SigV4, but credential `{}` does not come from an aws-sts issuer", credential.as_deref().unwrap_or_default()),
                    "use a credential whose issuer has `kind: aws-sts`, or inject a header instead",
                ),
                _ => {}
            }
        }
        _ => {}
    }

    let mut allow_private = false;
    if let Some(n) = f.value("allow_private") {
        allow_private = e
            .bool(n, &format!("`allow_private` of {what}"))
            .unwrap_or(false);
    }

    let max_request_body = f.value("max_request_body").and_then(|n| {
        e.int_in(n, &format!("`max_request_body` of {what}"), 0, 1 << 40)
            .and_then(|v| u64::try_from(v).ok())
    });

    // Cedar's action for this route's requests (`Sidekey::Action::"<name>"`); the method
    // otherwise.
    let action = f.value("action").and_then(|n| {
        let name = e.nonempty_string(n, &format!("`action` of {what}"))?;
        if name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        {
            Some(name.to_string())
        } else {
            e.error_hint(
                n.pos,
                format!("`action` of {what} must be a name"),
                "letters, digits, `_`, `-`, `.`, `:`, e.g. action: comment_on_issue",
            );
            None
        }
    });

    if let Some(n) = f.value("resolve") {
        let before = resolve.len();
        resolve_map(n, &format!("`resolve` of {what}"), e, resolve);
        if let Some(hosts) = &hosts {
            for entry in &resolve[before..] {
                if !hosts.iter().any(|h| h.matches(&entry.value.host)) {
                    e.error_hint(
                        entry.pos,
                        format!("{what} resolves `{}` but does not name that host", entry.key),
                        "a route's `resolve` is for its own hosts; use `upstream.resolve` for others",
                    );
                }
            }
        }
    }

    Some(RouteConfig {
        name: name?,
        hosts: hosts?,
        schemes: schemes?,
        ports: ports?,
        methods: methods?,
        paths: paths?,
        credential,
        client_certificate,
        inject,
        allow_private,
        max_request_body,
        action,
        line: f.pos.line,
    })
}

/// `client_certificate`: a declared `certificate` credential, on a route that only speaks
/// https (a certificate is presented in a TLS handshake; an `http` request would go without).
fn client_certificate(
    f: &crate::check::Fields<'_>,
    what: &str,
    credentials: &CredentialNames,
    schemes: Option<&[Scheme]>,
    e: &mut Errors,
) -> Option<String> {
    let field = f
        .field("client_certificate")
        .filter(|c| !c.value.is_null())?;
    let name = e.string(field.value, &format!("`client_certificate` of {what}"))?;
    match credentials.get(name) {
        None => {
            let certificates: Vec<&str> = credentials
                .iter()
                .filter(|(_, c)| c.certificate)
                .map(|(n, _)| n.as_str())
                .collect();
            let hint = match closest(name, &certificates) {
                Some(best) => format!("did you mean `{best}`?"),
                None if certificates.is_empty() => format!(
                    "declare it under `credentials:` with a vault issuer, e.g. `{name}: {{ issuer: vault, path: pki/sign/agent, certificate: {{ common_name: agent.internal }} }}`"
                ),
                None => format!("declared certificate credentials: {}", certificates.join(", ")),
            };
            e.error_hint(
                field.value.pos,
                format!("{what} refers to unknown credential `{name}`"),
                hint,
            );
        }
        Some(c) if !c.certificate && c.issuer != IssuerStatus::Invalid => e.error_hint(
            field.value.pos,
            format!("`client_certificate` of {what}: credential `{name}` is not a certificate"),
            "give it a `certificate: { common_name: … }` and a PKI `path: <mount>/sign/<role>`, or attach it with `credential` and `inject`",
        ),
        Some(_) => {}
    }
    if let Some(schemes) = schemes {
        if schemes.contains(&Scheme::Http) {
            e.error_hint(
                field.key.pos,
                format!("{what} presents a client certificate but allows `http`"),
                "a client certificate is presented in the TLS handshake, so plain http would go without it: use schemes: [https]",
            );
        }
    }
    Some(name.to_string())
}

fn hosts(
    node: Option<&Node>,
    route_pos: Pos,
    what: &str,
    e: &mut Errors,
) -> Option<Vec<HostPattern>> {
    let Some(node) = node else {
        e.error_hint(
            route_pos,
            format!("{what} has no `hosts`"),
            "list the hosts it may reach, e.g. hosts: [api.example.com]",
        );
        return None;
    };
    let items = e.list(node, &format!("`hosts` of {what}"))?;
    if items.is_empty() {
        e.error_hint(
            node.pos,
            format!("`hosts` of {what} is empty"),
            "list at least one host, e.g. [api.example.com]",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        let Some(s) = e.string(item, &format!("a host of {what}")) else {
            ok = false;
            continue;
        };
        match HostPattern::parse(s) {
            Ok(p) => {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
            Err(err) => {
                ok = false;
                e.error_hint(
                    item.pos,
                    format!("{what}: invalid host `{s}`: {err}"),
                    "write an exact host (api.example.com, 10.0.0.1) or one wildcard level (\"*.example.com\")",
                );
            }
        }
    }
    ok.then_some(out)
}

fn schemes(node: &Node, what: &str, e: &mut Errors) -> Option<Vec<Scheme>> {
    let items = e.list(node, &format!("`schemes` of {what}"))?;
    if items.is_empty() {
        e.error_hint(
            node.pos,
            format!("`schemes` of {what} is empty"),
            "list `https`, `http` or both, or remove `schemes` for the default [https]",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        let Some(s) = e.string(item, &format!("a scheme of {what}")) else {
            ok = false;
            continue;
        };
        let scheme = if s.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else if s.eq_ignore_ascii_case("http") {
            Scheme::Http
        } else {
            ok = false;
            let hint = match closest(s, &["http", "https"]) {
                Some(best) => format!("did you mean `{best}`?"),
                None => "sidekey forwards `http` and `https`".to_string(),
            };
            e.error_hint(item.pos, format!("{what}: unknown scheme `{s}`"), hint);
            continue;
        };
        if !out.contains(&scheme) {
            out.push(scheme);
        }
    }
    ok.then_some(out)
}

fn ports(node: &Node, what: &str, e: &mut Errors) -> Option<Vec<u16>> {
    let items = e.list(node, &format!("`ports` of {what}"))?;
    if items.is_empty() {
        e.error_hint(
            node.pos,
            format!("`ports` of {what} is empty"),
            "list at least one port, or remove `ports` for the default port of each scheme",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        match item.value {
            Value::Int(p) => match u16::try_from(p) {
                Ok(p) if p != 0 => {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
                _ => {
                    ok = false;
                    e.error_hint(
                        item.pos,
                        format!("{what}: port {p} is out of range"),
                        "ports are 1-65535",
                    );
                }
            },
            _ => {
                ok = false;
                e.wrong_type(item, &format!("a port of {what}"), "a port number");
            }
        }
    }
    ok.then_some(out)
}

/// RFC 9110 `token`: what an HTTP method or header name may be (one rule, policy's).
pub(crate) use sidekey_policy::is_token;

fn methods(
    field: Option<(&Node, &Node)>,
    route_pos: Pos,
    what: &str,
    e: &mut Errors,
) -> Option<MethodSet> {
    const NO_DEFAULT: &str =
        "list the methods it may use, e.g. `methods: [GET, HEAD]`, or [\"*\"] for any; \
there is no default on purpose, so that a forgotten line never allows every method";
    let node = match field {
        None => {
            e.error_hint(route_pos, format!("{what} has no `methods`"), NO_DEFAULT);
            return None;
        }
        Some((key, value)) if value.is_null() => {
            e.error_hint(key.pos, format!("{what} has no `methods`"), NO_DEFAULT);
            return None;
        }
        Some((_, value)) => value,
    };
    let items = e.list(node, &format!("`methods` of {what}"))?;
    if items.is_empty() {
        e.error_hint(
            node.pos,
            format!("`methods` of {what} is empty"),
            "list at least one method, e.g. [GET], or [\"*\"] for any method",
        );
        return None;
    }
    let mut star: Option<Pos> = None;
    let mut list: Vec<String> = Vec::new();
    let mut ok = true;
    for item in items {
        let Some(m) = e.string(item, &format!("a method of {what}")) else {
            ok = false;
            continue;
        };
        if m == "*" {
            star = Some(item.pos);
        } else if !is_token(m) {
            ok = false;
            e.error_hint(
                item.pos,
                format!("{what}: invalid method `{m}`"),
                "a method is an HTTP token such as GET or POST, or \"*\" for any method",
            );
        } else if m.bytes().any(|b| b.is_ascii_lowercase()) {
            ok = false;
            e.error_hint(
                item.pos,
                format!("{what}: method `{m}` is not upper case"),
                format!(
                    "methods are case-sensitive; write `{}`",
                    m.to_ascii_uppercase()
                ),
            );
        } else if m == "CONNECT" {
            ok = false;
            e.error_hint(
                item.pos,
                format!("{what}: CONNECT cannot be allowed by a route"),
                "sidekey handles CONNECT itself; list the methods used inside the tunnel",
            );
        } else if !list.iter().any(|x| x == m) {
            list.push(m.to_string());
        }
    }
    if let Some(pos) = star {
        if items.len() > 1 {
            e.error_hint(
                pos,
                format!("{what}: \"*\" in `methods` already allows every method"),
                "write either [\"*\"] alone or the list of methods",
            );
            return None;
        }
        return Some(MethodSet::Any);
    }
    ok.then_some(MethodSet::List(list))
}

fn paths(node: &Node, what: &str, e: &mut Errors) -> Option<Vec<PathGlob>> {
    let items = e.list(node, &format!("`paths` of {what}"))?;
    if items.is_empty() {
        e.error_hint(
            node.pos,
            format!("`paths` of {what} is empty"),
            "remove `paths` to allow every path, or list globs such as \"/v1/**\"",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        let Some(s) = e.string(item, &format!("a path of {what}")) else {
            ok = false;
            continue;
        };
        match PathGlob::parse(s) {
            Ok(g) => out.push(g),
            Err(err) => {
                ok = false;
                e.error_hint(
                    item.pos,
                    format!("{what}: invalid path glob `{s}`: {err}"),
                    "globs start with `/`; `*` matches within one segment, `**` as a whole segment matches any depth",
                );
            }
        }
    }
    ok.then_some(out)
}
