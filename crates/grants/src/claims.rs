//! A grant's claims as signed, and the checks that turn them into a [`Grant`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sidekey_policy::{GrantScope, PathGlob, RouteGrant};

use crate::GrantError;

/// Identifiers (`sub`, `task_id`, `jti`, route names, `on_behalf_of`) are at most this long.
const MAX_ID: usize = 256;
/// At most this many routes in one grant, and this deep an `act` chain.
const MAX_ROUTES: usize = 256;
const MAX_ACT_DEPTH: usize = 16;

/// The JWT claims of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The agent or sub-agent the grant is for.
    pub sub: String,
    pub task_id: String,
    /// This sidekey's `grants.audience` (checked by the JWT validation; a string when minted).
    pub aud: serde_json::Value,
    pub iat: u64,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub jti: String,
    /// The routes it allows; absent: every route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<RouteClaim>>,
    /// The end user the task acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// RFC 8693 §4.1: the delegators, the most recent outermost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Act>,
    /// The `jti` of the grant this one was derived from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// One route of a grant: its name alone, or narrowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RouteClaim {
    Name(String),
    Narrowed {
        route: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        methods: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        paths: Option<Vec<String>>,
    },
}

/// An RFC 8693 actor claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Act {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Act>>,
}

impl Act {
    /// The actors, earliest first (the outermost `act` is the most recent).
    fn chain(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = Some(self);
        while let Some(act) = at {
            out.push(act.sub.clone());
            at = act.act.as_deref();
        }
        out.reverse();
        out
    }

    fn depth(&self) -> usize {
        1 + self.act.as_deref().map_or(0, Act::depth)
    }
}

/// A verified grant: who it is for, which task, what it allows, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub jti: String,
    pub sub: String,
    pub task_id: String,
    pub on_behalf_of: Option<String>,
    /// The delegators before `sub`, earliest first (root agent … immediate parent).
    pub act: Vec<String>,
    pub parent: Option<String>,
    pub issuer: Option<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    pub scope: GrantScope,
    /// The claims as signed, from which a child is derived.
    pub(crate) claims: GrantClaims,
}

impl Grant {
    /// Checks what the JWT validation does not: identifiers, the lifetime cap, the routes.
    pub(crate) fn from_claims(claims: GrantClaims, max_ttl: Duration) -> Result<Grant, GrantError> {
        for (name, value) in [
            ("sub", Some(&claims.sub)),
            ("task_id", Some(&claims.task_id)),
            ("jti", Some(&claims.jti)),
            ("on_behalf_of", claims.on_behalf_of.as_ref()),
            ("parent", claims.parent.as_ref()),
        ] {
            if let Some(value) = value {
                check_id(name, value)?;
            }
        }
        if claims.exp <= claims.iat {
            return Err(GrantError::Invalid("exp is not after iat".into()));
        }
        if claims.exp - claims.iat > max_ttl.as_secs() {
            return Err(GrantError::Invalid(format!(
                "it lives {}s, longer than grants.max_ttl ({}s)",
                claims.exp - claims.iat,
                max_ttl.as_secs()
            )));
        }
        if let Some(act) = &claims.act {
            if act.depth() > MAX_ACT_DEPTH {
                return Err(GrantError::Invalid(format!(
                    "the act chain is deeper than {MAX_ACT_DEPTH}"
                )));
            }
            let mut at = Some(act);
            while let Some(a) = at {
                check_id("act.sub", &a.sub)?;
                at = a.act.as_deref();
            }
        }
        let scope = scope_of(claims.routes.as_deref())?;
        Ok(Grant {
            jti: claims.jti.clone(),
            sub: claims.sub.clone(),
            task_id: claims.task_id.clone(),
            on_behalf_of: claims.on_behalf_of.clone(),
            act: claims.act.as_ref().map(Act::chain).unwrap_or_default(),
            parent: claims.parent.clone(),
            issuer: claims.iss.clone(),
            issued_at: UNIX_EPOCH + Duration::from_secs(claims.iat),
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
            scope,
            claims,
        })
    }

    /// The claims as signed.
    pub fn claims(&self) -> &GrantClaims {
        &self.claims
    }
}

/// Visible ASCII, 1 to 256 bytes: identifiers go into audit lines, STS session names and
/// headers.
fn check_id(name: &str, value: &str) -> Result<(), GrantError> {
    if value.is_empty() || value.len() > MAX_ID || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(GrantError::Invalid(format!(
            "`{name}` must be 1 to {MAX_ID} visible ASCII characters"
        )));
    }
    Ok(())
}

/// The routes claim as policy's [`GrantScope`]: names unique, methods tokens (upper-cased as
/// routes are), paths valid globs.
pub(crate) fn scope_of(routes: Option<&[RouteClaim]>) -> Result<GrantScope, GrantError> {
    let Some(routes) = routes else {
        return Ok(GrantScope::all_routes());
    };
    if routes.len() > MAX_ROUTES {
        return Err(GrantError::Invalid(format!(
            "more than {MAX_ROUTES} routes"
        )));
    }
    let mut out: Vec<RouteGrant> = Vec::with_capacity(routes.len());
    for claim in routes {
        let (route, methods, paths) = match claim {
            RouteClaim::Name(name) => (name, None, None),
            RouteClaim::Narrowed {
                route,
                methods,
                paths,
            } => (route, methods.as_ref(), paths.as_ref()),
        };
        check_id("routes[].route", route)?;
        if out.iter().any(|g| &g.route == route) {
            return Err(GrantError::Invalid(format!(
                "route `{route}` is named twice"
            )));
        }
        let methods = match methods {
            None => None,
            Some(list) => {
                let mut upper = Vec::with_capacity(list.len());
                for m in list {
                    if !sidekey_policy::is_token(m) {
                        return Err(GrantError::Invalid(format!(
                            "route `{route}`: {m:?} is not a method"
                        )));
                    }
                    upper.push(m.to_ascii_uppercase());
                }
                Some(upper)
            }
        };
        let paths = match paths {
            None => Vec::new(),
            Some(list) if list.is_empty() => {
                return Err(GrantError::Invalid(format!(
                    "route `{route}`: `paths` is empty (omit it for every path)"
                )))
            }
            Some(list) => list
                .iter()
                .map(|p| {
                    PathGlob::parse(p).map_err(|e| {
                        GrantError::Invalid(format!("route `{route}`: path {p:?}: {e}"))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        out.push(RouteGrant {
            route: route.clone(),
            methods,
            paths,
        });
    }
    Ok(GrantScope { routes: Some(out) })
}

/// Seconds since the epoch.
pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
