//! The effective policy as text, for `sidekey check`: what listens where, what happens to
//! unmatched hosts, then every route in match order, issuers and credentials. The config holds
//! no secrets, so nothing here needs redacting.

use std::fmt::Write;
use std::net::SocketAddr;

use sidekey_policy::MethodSet;

use crate::{
    AuditConfig, ClientAuth, Config, Inject, IssuerKind, LocalAlgorithm, OAuth2Grant,
    PrivateKeySource, RouteConfig, Unmatched, VaultAuth, VaultJwtMethod,
};

pub(crate) fn describe(config: &Config) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_all(&mut out, config);
    out
}

fn write_all(out: &mut String, c: &Config) -> std::fmt::Result {
    writeln!(out, "listeners:")?;
    writeln!(out, "  forward  {}", addr(c.listen.forward))?;
    writeln!(out, "  routes   {}", addr(c.listen.routes))?;
    writeln!(out, "  admin    {}", addr(c.listen.admin))?;
    if let Some(metrics) = c.listen.metrics {
        writeln!(out, "  metrics  {metrics} (GET /metrics only)")?;
    }
    match c.unmatched {
        Unmatched::Deny => writeln!(out, "unmatched: deny (hosts that no route names are refused)")?,
        Unmatched::Tunnel => writeln!(
            out,
            "unmatched: tunnel (hosts that no route names pass through without a credential, audited)"
        )?,
    }
    writeln!(out)?;

    if c.routes.is_empty() {
        writeln!(out, "routes: none")?;
    } else {
        writeln!(out, "routes (first match wins):")?;
        for (i, r) in c.routes.iter().enumerate() {
            route(out, i + 1, r, c)?;
        }
    }
    writeln!(out)?;

    writeln!(
        out,
        "issuers:{}",
        if c.issuers.is_empty() { " none" } else { "" }
    )?;
    for i in &c.issuers {
        match &i.kind {
            IssuerKind::Local(l) => {
                let alg = match l.algorithm {
                    LocalAlgorithm::EdDsa => "EdDSA",
                    LocalAlgorithm::Es256 => "ES256",
                };
                writeln!(
                    out,
                    "  {}  kind local, iss \"{}\", {alg}, key in memory",
                    i.name, l.issuer
                )?;
            }
            IssuerKind::Vault(v) => {
                let auth = match &v.auth {
                    VaultAuth::Jwt {
                        method,
                        mount,
                        role,
                        token_file,
                    } => {
                        let m = match method {
                            VaultJwtMethod::Jwt => "jwt",
                            VaultJwtMethod::Kubernetes => "kubernetes",
                        };
                        format!(
                            "auth {m} at auth/{mount}, role {role}, token from {}",
                            token_file.display()
                        )
                    }
                    VaultAuth::AppRole { mount, .. } => {
                        format!("auth approle at auth/{mount}")
                    }
                };
                write!(out, "  {}  kind vault, {}, {auth}", i.name, v.address.url)?;
                if let Some(ns) = &v.namespace {
                    write!(out, ", namespace {ns}")?;
                }
                writeln!(out)?;
            }
            IssuerKind::OAuth2(o) => {
                let grant = match &o.grant {
                    OAuth2Grant::ClientCredentials => "client_credentials".to_string(),
                    OAuth2Grant::TokenExchange {
                        subject_token_file,
                        actor_token_file,
                    } => {
                        let mut g = format!("token_exchange of {}", subject_token_file.display());
                        if let Some(a) = actor_token_file {
                            g.push_str(&format!(" (actor {})", a.display()));
                        }
                        g
                    }
                };
                let auth = match &o.client_auth {
                    ClientAuth::SecretBasic(_) => "client_secret_basic",
                    ClientAuth::SecretPost(_) => "client_secret_post",
                    ClientAuth::PrivateKeyJwt { .. } => "private_key_jwt",
                    ClientAuth::None => "public client",
                };
                writeln!(
                    out,
                    "  {}  kind oauth2, {}, {grant}, client {} ({auth})",
                    i.name, o.token_url.url, o.client_id
                )?;
            }
            IssuerKind::AwsSts(a) => {
                writeln!(
                    out,
                    "  {}  kind aws-sts, {} in {} via {}, session {}",
                    i.name, a.role_arn, a.region, a.endpoint.url, a.session_name
                )?;
            }
            IssuerKind::GitHubApp(g) => {
                let key = match &g.private_key {
                    PrivateKeySource::Vault {
                        issuer,
                        path,
                        field,
                    } => format!("key from {issuer} {path} field {field}"),
                    PrivateKeySource::File(p) => format!("key from {}", p.display()),
                };
                writeln!(
                    out,
                    "  {}  kind github-app, {}, app {}, installation {}, {key}",
                    i.name, g.api_url.url, g.app_id, g.installation_id
                )?;
            }
        }
    }
    writeln!(
        out,
        "credentials:{}",
        if c.credentials.is_empty() {
            " none"
        } else {
            ""
        }
    )?;
    for cr in &c.credentials {
        write!(out, "  {}  issuer {}", cr.name, cr.issuer)?;
        if let Some(aud) = &cr.audience {
            write!(out, ", audience {aud}")?;
        }
        if let Some(sub) = &cr.subject {
            write!(out, ", subject {sub}")?;
        }
        if let Some(path) = &cr.path {
            write!(out, ", path {path}")?;
        }
        if let Some(field) = &cr.field {
            write!(out, ", field {field}")?;
        }
        if !cr.params.is_empty() {
            let keys: Vec<&str> = cr.params.iter().map(|(k, _)| k.as_str()).collect();
            write!(out, ", params {}", keys.join(", "))?;
        }
        if let Some(scope) = &cr.scope {
            write!(out, ", scope \"{scope}\"")?;
        }
        if let Some(resource) = &cr.resource {
            write!(out, ", resource {resource}")?;
        }
        if let Some(p) = &cr.session_policy_file {
            write!(out, ", session policy {}", p.display())?;
        }
        if !cr.permissions.is_empty() {
            let perms: Vec<String> = cr
                .permissions
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            write!(out, ", permissions {{ {} }}", perms.join(", "))?;
            if cr.repositories.is_empty() {
                write!(out, ", every repository of the installation")?;
            } else {
                write!(out, ", repositories {}", cr.repositories.join(", "))?;
            }
        }
        if let Some(signer) = &cr.task_assertion_issuer {
            write!(
                out,
                ", exchanged for each task's end user (asserted by {signer})"
            )?;
        }
        if cr.permissions.is_empty() {
            write!(out, ", ttl {}", humantime::format_duration(cr.ttl))?;
        } else {
            write!(out, ", ttl 1h (GitHub's)")?;
        }
        writeln!(
            out,
            "{}",
            if cr.per_task {
                ", one per task grant, fetched on the task's first use"
            } else if cr.eager {
                ", fetched at start"
            } else {
                ", fetched on first use"
            }
        )?;
    }
    writeln!(out)?;

    match &c.ca.cert_out {
        Some(p) => writeln!(out, "ca: certificate written to {}", p.display())?,
        None => writeln!(out, "ca: certificate not written to a file")?,
    }
    if let Some(p) = &c.ca.bundle_out {
        writeln!(
            out,
            "  bundle (certificate + system roots) written to {}",
            p.display()
        )?;
    }
    writeln!(out, "  leaf certificate cache: {}", c.ca.leaf_cache_size)?;
    writeln!(
        out,
        "  new leaves under wildcard routes: {}/s, burst {}",
        c.ca.leaf_mint_rate, c.ca.leaf_mint_burst
    )?;
    writeln!(
        out,
        "upstream: connect timeout {}, response headers timeout {}, up to {} idle connections per host",
        humantime::format_duration(c.upstream.connect_timeout),
        humantime::format_duration(c.upstream.request_timeout),
        c.upstream.max_idle_per_host
    )?;
    for f in &c.upstream.extra_ca_files {
        writeln!(out, "  extra CA file {}", f.display())?;
    }
    for r in &c.upstream.resolve {
        writeln!(
            out,
            "  resolve {}:{} -> {}",
            r.host.to_uri_host(),
            r.port,
            r.addr
        )?;
    }
    match &c.identity {
        Some(i) => writeln!(out, "identity: token from {}", i.token_file.display())?,
        None => writeln!(out, "identity: none")?,
    }
    match &c.grants {
        Some(g) => {
            writeln!(
                out,
                "grants: audience {}, {}, at most {}",
                g.audience,
                if g.required {
                    "required on every request"
                } else {
                    "optional"
                },
                humantime::format_duration(g.max_ttl)
            )?;
            for t in &g.trusted {
                match t {
                    crate::TrustedKeys::JwksFile(p) => {
                        writeln!(out, "  trusted keys from {}", p.display())?
                    }
                    crate::TrustedKeys::JwksUrl { url, refresh, .. } => writeln!(
                        out,
                        "  trusted keys from {} (every {})",
                        url.url,
                        humantime::format_duration(*refresh)
                    )?,
                }
            }
        }
        None => writeln!(out, "grants: none")?,
    }
    match &c.cedar {
        Some(cedar) => writeln!(
            out,
            "cedar: policies {}{} decide after the route match",
            cedar.policies.display(),
            cedar
                .schema
                .as_ref()
                .map_or(String::new(), |s| format!(" (schema {})", s.display()))
        )?,
        None => writeln!(out, "cedar: none (routes and grants decide)")?,
    }
    match &c.traces {
        Some(t) => writeln!(out, "traces: one span per request to {}", t.otlp_endpoint)?,
        None => writeln!(out, "traces: none")?,
    }
    match &c.audit {
        AuditConfig::Stdout => writeln!(out, "audit: stdout")?,
        AuditConfig::File(p) => writeln!(out, "audit: file {}", p.display())?,
    }
    Ok(())
}

fn addr(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "off".to_string(), |a| a.to_string())
}

fn route(out: &mut String, n: usize, r: &RouteConfig, c: &Config) -> std::fmt::Result {
    writeln!(out, "  {n}. {}", r.name)?;
    let hosts: Vec<String> = r.hosts.iter().map(ToString::to_string).collect();
    writeln!(out, "     hosts:       {}", hosts.join(", "))?;
    let schemes: Vec<&str> = r.schemes.iter().map(|s| s.as_str()).collect();
    let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
    writeln!(
        out,
        "     targets:     {}:{}",
        schemes.join("/"),
        ports.join(",")
    )?;
    match &r.methods {
        MethodSet::Any => writeln!(out, "     methods:     any (\"*\")")?,
        MethodSet::List(m) => writeln!(out, "     methods:     {}", m.join(", "))?,
    }
    if r.paths.is_empty() {
        writeln!(out, "     paths:       any")?;
    } else {
        let paths: Vec<&str> = r.paths.iter().map(|p| p.as_str()).collect();
        writeln!(out, "     paths:       {}", paths.join(", "))?;
    }
    match &r.credential {
        Some(name) => {
            let issuer = c
                .credentials
                .iter()
                .find(|cr| &cr.name == name)
                .map(|cr| cr.issuer.as_str());
            match issuer {
                Some(i) => writeln!(out, "     credential:  {name} (issuer {i})")?,
                None => writeln!(out, "     credential:  {name}")?,
            }
        }
        None => writeln!(
            out,
            "     credential:  none (allowed egress, nothing injected)"
        )?,
    }
    match &r.inject {
        Some(Inject::Header { name, value }) => {
            writeln!(
                out,
                "     inject:      header {name}: {}{{token}}{}",
                value.prefix, value.suffix
            )?;
        }
        Some(Inject::Basic { username }) => {
            writeln!(
                out,
                "     inject:      basic auth, username {username}, the token as password"
            )?;
        }
        Some(Inject::Query { param }) => {
            writeln!(out, "     inject:      query parameter {param}={{token}}")?;
        }
        Some(Inject::SigV4 { service, region }) => {
            writeln!(
                out,
                "     inject:      AWS SigV4 signature, service {service}, region {region}"
            )?;
        }
        None => {}
    }
    if r.allow_private {
        writeln!(
            out,
            "     private:     may reach private, loopback and link-local addresses"
        )?;
    }
    Ok(())
}
