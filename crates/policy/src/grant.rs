//! What a task grant allows, as policy sees it: the routes it names, each narrowed to methods
//! and paths. A grant only ever narrows: a request goes when a route allows it *and* the grant
//! allows that route for its method and path (see [`crate::Policy::decide_request`]), and a
//! child grant must be within its parent ([`GrantScope::check_within`]).
//!
//! Who signed the grant, whether it expired or was revoked, is the grants crate's question;
//! this is only the set of permissions.

use crate::route::Route;
use crate::{PathGlob, RequestPath};

/// The permissions of one grant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrantScope {
    /// None: every route (as the routes themselves allow). Some: only these.
    pub routes: Option<Vec<RouteGrant>>,
}

/// One route a grant names, with optional narrowing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteGrant {
    /// The route's name in the config.
    pub route: String,
    /// Upper-case method tokens; None: what the route allows.
    pub methods: Option<Vec<String>>,
    /// Empty: what the route allows.
    pub paths: Vec<PathGlob>,
}

impl RouteGrant {
    fn allows(&self, method: &str, path: &RequestPath) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|list| list.iter().any(|m| m == method))
            && (self.paths.is_empty() || self.paths.iter().any(|g| g.matches(path.decoded())))
    }
}

impl GrantScope {
    /// Every route, unnarrowed (a grant with no `routes` claim).
    pub fn all_routes() -> GrantScope {
        GrantScope { routes: None }
    }

    /// The grant lets a request use `route` with this method and path (the route's own rules
    /// are checked separately).
    pub fn allows(&self, route: &Route, method: &str, path: &RequestPath) -> bool {
        match &self.routes {
            None => true,
            Some(list) => list
                .iter()
                .any(|g| g.route == route.name && g.allows(method, path)),
        }
    }

    /// The grant names `route` at all (a CONNECT to its hosts may be intercepted).
    pub fn names_route(&self, route: &Route) -> bool {
        match &self.routes {
            None => true,
            Some(list) => list.iter().any(|g| g.route == route.name),
        }
    }

    /// The route names, for messages ("every route" when unnarrowed).
    pub fn describe(&self) -> String {
        match &self.routes {
            None => "every route".to_string(),
            Some(list) if list.is_empty() => "no route".to_string(),
            Some(list) => list
                .iter()
                .map(|g| g.route.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Ok when every request this scope allows, `parent` allows too: each route it names is
    /// named by the parent, with methods among the parent's and paths the parent's globs cover
    /// ([`PathGlob::covers`]). The error says what widens, for the agent that asked.
    pub fn check_within(&self, parent: &GrantScope) -> Result<(), String> {
        let Some(theirs) = &parent.routes else {
            return Ok(());
        };
        let Some(mine) = &self.routes else {
            return Err(format!(
                "the parent grant names only the routes {}: name some of them",
                parent.describe()
            ));
        };
        for child in mine {
            let Some(p) = theirs.iter().find(|p| p.route == child.route) else {
                return Err(format!(
                    "route `{}` is not in the parent grant (it names {})",
                    child.route,
                    parent.describe()
                ));
            };
            if let Some(allowed) = &p.methods {
                match &child.methods {
                    None => {
                        return Err(format!(
                            "route `{}`: the parent grant allows only the methods {}: name some \
                             of them",
                            child.route,
                            allowed.join(", ")
                        ))
                    }
                    Some(methods) => {
                        if let Some(m) = methods.iter().find(|m| !allowed.contains(m)) {
                            return Err(format!(
                                "route `{}`: method {m} is not allowed by the parent grant \
                                 (it allows {})",
                                child.route,
                                allowed.join(", ")
                            ));
                        }
                    }
                }
            }
            if !p.paths.is_empty() {
                if child.paths.is_empty() {
                    return Err(format!(
                        "route `{}`: the parent grant allows only the paths {}: name paths \
                         within them",
                        child.route,
                        globs(&p.paths)
                    ));
                }
                if let Some(g) = child
                    .paths
                    .iter()
                    .find(|g| !p.paths.iter().any(|pg| pg.covers(g)))
                {
                    return Err(format!(
                        "route `{}`: path {} is not within the parent grant's paths {} (name \
                         one of them, or a path or pattern under one that ends in /**)",
                        child.route,
                        g.as_str(),
                        globs(&p.paths)
                    ));
                }
            }
        }
        Ok(())
    }
}

fn globs(list: &[PathGlob]) -> String {
    list.iter()
        .map(PathGlob::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_grant(route: &str, methods: Option<&[&str]>, paths: &[&str]) -> RouteGrant {
        RouteGrant {
            route: route.to_string(),
            methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            paths: paths.iter().map(|p| PathGlob::parse(p).unwrap()).collect(),
        }
    }

    fn scope(routes: Vec<RouteGrant>) -> GrantScope {
        GrantScope {
            routes: Some(routes),
        }
    }

    #[test]
    fn children_within_the_parent_pass() {
        let parent = scope(vec![
            route_grant("github", Some(&["GET", "POST"]), &["/repos/acme/**"]),
            route_grant("s3", None, &[]),
        ]);
        let ok = [
            scope(vec![]),
            scope(vec![route_grant(
                "github",
                Some(&["GET"]),
                &["/repos/acme/api/**"],
            )]),
            scope(vec![route_grant("s3", Some(&["GET"]), &["/bucket/**"])]),
            parent.clone(),
        ];
        for child in ok {
            assert_eq!(child.check_within(&parent), Ok(()), "{child:?}");
        }
        assert_eq!(parent.check_within(&GrantScope::all_routes()), Ok(()));
    }

    #[test]
    fn every_widening_is_refused_with_its_reason() {
        let parent = scope(vec![route_grant(
            "github",
            Some(&["GET"]),
            &["/repos/acme/**"],
        )]);
        let cases = [
            (GrantScope::all_routes(), "names only the routes github"),
            (
                scope(vec![route_grant("slack", None, &[])]),
                "route `slack` is not in the parent grant",
            ),
            (
                scope(vec![route_grant("github", None, &["/repos/acme/**"])]),
                "allows only the methods GET",
            ),
            (
                scope(vec![route_grant(
                    "github",
                    Some(&["GET", "DELETE"]),
                    &["/repos/acme/**"],
                )]),
                "method DELETE is not allowed",
            ),
            (
                scope(vec![route_grant("github", Some(&["GET"]), &[])]),
                "allows only the paths /repos/acme/**",
            ),
            (
                scope(vec![route_grant("github", Some(&["GET"]), &["/repos/**"])]),
                "path /repos/** is not within",
            ),
        ];
        for (child, reason) in cases {
            let err = child.check_within(&parent).unwrap_err();
            assert!(err.contains(reason), "{err} should contain {reason}");
        }
    }
}
