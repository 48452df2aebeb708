//! Cedar policies as an optional gate after route matching (`cedar:` in the config): a request
//! a route allows goes on only if the Cedar policy set permits it too (and no `forbid`
//! matches). Pure, like the rest of this crate: the caller passes the time.
//!
//! The request Cedar sees, in namespace `Sidekey`:
//!
//! - **principal** `Sidekey::Agent::"<sub>"`: the task grant's `sub` (the agent or sub-agent),
//!   or `Sidekey::Agent::"pod"` for a request without a grant;
//! - **action** `Sidekey::Action::"<METHOD>"` (`"GET"`, `"POST"`…), or the route's named
//!   action (`action:` in the route) for its requests;
//! - **resource** `Sidekey::Route::"<route name>"`;
//! - **context**: `method` (String), `headers` (Record: the request headers `cedar.headers`
//!   names, those present), `host` (String), `port` (Long), `path` (String, as the agent sent it, query
//!   excluded), `segments` (Set of the path's segments), `query_keys` (Set), `body_size` (Long,
//!   the declared length; -1 when unknown), `has_grant` (Bool), `task`, `user` (the grant's
//!   task and `on_behalf_of`; `""` when none), `act` (Set: the grant's delegation chain), and
//!   `time`: `{ unix, hour, minute, weekday }` in UTC (`weekday` 0 = Sunday … 6 = Saturday).
//!
//! A policy's ID is its `@id("…")` annotation, else Cedar's own (`policy0`, `policy1`… in file
//! order): the IDs that determined a decision go into the audit record.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, ResourceConstraint, RestrictedExpression, Schema, ValidationMode,
    Validator,
};

/// The principal of a request that carries no task grant.
pub const NO_GRANT_PRINCIPAL: &str = "pod";

/// A loaded, validated policy set (and its schema, if one was given), sliced by route: a
/// request is evaluated against the policies that name its route (`resource ==` or `in`
/// `Sidekey::Route::"…"`) and those that name none, never the rest (Cedar evaluates every
/// policy of the set it is given; with one policy per route, most cannot apply).
pub struct CedarGate {
    /// The policies of each route some policy names, with the general ones.
    by_route: HashMap<String, PolicySet>,
    /// The policies that name no route: for the other routes.
    general: PolicySet,
    schema: Option<Schema>,
    authorizer: Authorizer,
    count: usize,
    /// The request headers handed to the policies (`cedar.headers`), lower-case.
    headers: Vec<String>,
}

impl std::fmt::Debug for CedarGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CedarGate({} policies)", self.count)
    }
}

/// What Cedar is asked about one request.
#[derive(Debug, Clone, Default)]
pub struct CedarInput<'a> {
    /// The grant's `sub`; None: [`NO_GRANT_PRINCIPAL`].
    pub sub: Option<&'a str>,
    pub method: &'a str,
    /// The route's named action; None: the method.
    pub action: Option<&'a str>,
    /// Values of the headers [`CedarGate::headers`] names, those present.
    pub headers: Vec<(&'a str, &'a str)>,
    pub route: &'a str,
    pub host: std::borrow::Cow<'a, str>,
    pub port: u16,
    /// Path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body_size: Option<u64>,
    pub task: Option<&'a str>,
    pub user: Option<&'a str>,
    pub act: &'a [String],
    /// Seconds since the Unix epoch.
    pub unix_time: u64,
}

/// Cedar's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CedarVerdict {
    pub allowed: bool,
    /// The policies that determined it: the permits that allowed, or the forbids that denied
    /// (empty when nothing permitted).
    pub policies: Vec<String>,
    /// Policies that could not be evaluated (skipped, as Cedar does), and why; or why the
    /// request itself could not be built (then it is denied).
    pub errors: Vec<String>,
}

/// The grant claims Cedar sees (the grant's `sub`, task, user and delegation chain).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrantFacts<'a> {
    pub sub: &'a str,
    pub task: &'a str,
    pub user: Option<&'a str>,
    pub act: &'a [String],
}

impl<'a> CedarInput<'a> {
    /// The input for a request to `target` that route `route` allowed: its method, path and
    /// query, declared body length, the headers `gate` hands to policies, the route's named
    /// `action`, the request's grant, at `unix_time`.
    #[allow(clippy::too_many_arguments)]
    pub fn for_request(
        gate: &'a CedarGate,
        target: &'a crate::Target,
        request: &'a http::request::Parts,
        route: &'a str,
        action: Option<&'a str>,
        declared: Option<u64>,
        grant: Option<GrantFacts<'a>>,
        unix_time: u64,
    ) -> CedarInput<'a> {
        CedarInput {
            sub: grant.map(|g| g.sub),
            method: request.method.as_str(),
            action,
            headers: gate
                .headers
                .iter()
                .filter_map(|name| {
                    let value = request.headers.get(name.as_str())?.to_str().ok()?;
                    Some((name.as_str(), value))
                })
                .collect(),
            route,
            host: match &target.host {
                crate::CanonicalHost::Domain(name) => (**name).into(),
                ip => ip.to_string().into(),
            },
            port: target.port,
            path: request.uri.path(),
            query: request.uri.query(),
            body_size: declared,
            task: grant.map(|g| g.task),
            user: grant.and_then(|g| g.user),
            act: grant.map_or(&[], |g| g.act),
            unix_time,
        }
    }
}

impl CedarVerdict {
    /// The refusal of a request Cedar denied: the forbids that matched, or that none permitted.
    pub fn refusal(&self) -> crate::Refusal {
        let message = if self.policies.is_empty() {
            "a route allows this request, but no Cedar policy permits it".to_string()
        } else {
            format!(
                "a route allows this request, but Cedar policy {} forbids it",
                self.policies.join(", ")
            )
        };
        crate::Refusal::new(crate::ErrorCode::PolicyDenied, message)
    }
}

impl CedarGate {
    /// Parses `policies` (Cedar policy syntax; `policies_name` names it in errors) and, when
    /// given, validates them against `schema` (Cedar schema syntax). Every error, with its
    /// position, in one message.
    pub fn load(
        policies_name: &str,
        policies: &str,
        schema: Option<(&str, &str)>,
    ) -> Result<CedarGate, String> {
        let parsed = PolicySet::from_str(policies)
            .map_err(|e| format!("{policies_name}: {}", render(&e, policies)))?;
        // Each policy under its @id, when it has one.
        let mut set = PolicySet::new();
        let mut ids = BTreeSet::new();
        for policy in parsed.policies() {
            let id = policy
                .annotation("id")
                .map_or_else(|| policy.id().to_string(), str::to_string);
            if !ids.insert(id.clone()) {
                return Err(format!(
                    "{policies_name}: two policies have the id `{id}`: ids name the policies \
                     that decided in the audit trail, so they must be unique"
                ));
            }
            set.add(policy.new_id(PolicyId::new(id)))
                .map_err(|e| format!("{policies_name}: {e}"))?;
        }
        if parsed.templates().next().is_some() {
            return Err(format!(
                "{policies_name}: templates (`?principal`, `?resource`) are not supported: write \
                 policies"
            ));
        }
        let count = ids.len();
        let schema = match schema {
            None => None,
            Some((schema_name, text)) => {
                let (schema, _warnings) = Schema::from_cedarschema_str(text)
                    .map_err(|e| format!("{schema_name}: {}", render(&e, text)))?;
                let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
                if !result.validation_passed() {
                    let mut message =
                        format!("{policies_name} does not validate against {schema_name}:");
                    for error in result.validation_errors() {
                        let _ = write!(message, "\n  {}", render(error, policies));
                    }
                    return Err(message);
                }
                Some(schema)
            }
        };
        let (by_route, general) = slice(&set).map_err(|e| format!("{policies_name}: {e}"))?;
        Ok(CedarGate {
            by_route,
            general,
            schema,
            authorizer: Authorizer::new(),
            count,
            headers: Vec::new(),
        })
    }

    /// Hands the request headers `names` (lower-case) to the policies as `context.headers`.
    pub fn with_headers(mut self, names: Vec<String>) -> CedarGate {
        self.headers = names;
        self
    }

    /// The request headers the policies see.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// How many policies the set holds.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Cedar's decision on `input`. Fails closed: a request that cannot be built (it does not
    /// conform to the schema) is denied, with the reason in `errors`.
    pub fn authorize(&self, input: &CedarInput<'_>) -> CedarVerdict {
        let request = match self.request(input) {
            Ok(request) => request,
            Err(e) => {
                return CedarVerdict {
                    allowed: false,
                    policies: Vec::new(),
                    errors: vec![e],
                }
            }
        };
        let policies = self.by_route.get(input.route).unwrap_or(&self.general);
        let response = self
            .authorizer
            .is_authorized(&request, policies, &Entities::empty());
        let diagnostics = response.diagnostics();
        CedarVerdict {
            allowed: response.decision() == Decision::Allow,
            policies: diagnostics.reason().map(ToString::to_string).collect(),
            errors: diagnostics.errors().map(ToString::to_string).collect(),
        }
    }

    fn request(&self, input: &CedarInput<'_>) -> Result<Request, String> {
        let principal = uid("Sidekey::Agent", input.sub.unwrap_or(NO_GRANT_PRINCIPAL))?;
        let action = uid("Sidekey::Action", input.action.unwrap_or(input.method))?;
        let resource = uid("Sidekey::Route", input.route)?;
        let context = Context::from_pairs(context(input)?).map_err(|e| e.to_string())?;
        Request::new(principal, action, resource, context, self.schema.as_ref())
            .map_err(|e| format!("the request does not conform to the schema: {e}"))
    }
}

/// The route a policy is for, when its scope names one (`resource == Sidekey::Route::"r"` or
/// `resource in …`: with no entity hierarchy, `in` is equality).
fn route_of(policy: &cedar_policy::Policy) -> Option<String> {
    let uid = match policy.resource_constraint() {
        ResourceConstraint::Eq(uid) | ResourceConstraint::In(uid) => uid,
        _ => return None,
    };
    (uid.type_name().to_string() == "Sidekey::Route").then(|| uid.id().unescaped().to_string())
}

/// The policy set sliced by route: each named route's policies with the general ones, and
/// the general ones alone.
fn slice(set: &PolicySet) -> Result<(HashMap<String, PolicySet>, PolicySet), String> {
    let mut general = PolicySet::new();
    let mut named: HashMap<String, Vec<cedar_policy::Policy>> = HashMap::new();
    for policy in set.policies() {
        match route_of(policy) {
            Some(route) => named.entry(route).or_default().push(policy.clone()),
            None => general.add(policy.clone()).map_err(|e| e.to_string())?,
        }
    }
    let mut by_route = HashMap::new();
    for (route, policies) in named {
        let mut slice = general.clone();
        for policy in policies {
            slice.add(policy).map_err(|e| e.to_string())?;
        }
        by_route.insert(route, slice);
    }
    Ok((by_route, general))
}

fn uid(type_name: &str, id: &str) -> Result<EntityUid, String> {
    let name = EntityTypeName::from_str(type_name).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(name, EntityId::new(id)))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

fn long(n: i64) -> RestrictedExpression {
    RestrictedExpression::new_long(n)
}

fn context(input: &CedarInput<'_>) -> Result<Vec<(String, RestrictedExpression)>, String> {
    let segments = input.path.split('/').filter(|s| !s.is_empty()).map(string);
    let query_keys = input
        .query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
        .map(|p| string(p.split('=').next().unwrap_or(p)));
    let unix = i64::try_from(input.unix_time).unwrap_or(i64::MAX);
    let day = unix.div_euclid(86_400);
    let seconds = unix.rem_euclid(86_400);
    let time = RestrictedExpression::new_record([
        ("unix".to_string(), long(unix)),
        ("hour".to_string(), long(seconds / 3600)),
        ("minute".to_string(), long(seconds % 3600 / 60)),
        // 1970-01-01 was a Thursday (4).
        ("weekday".to_string(), long((day + 4).rem_euclid(7))),
    ])
    .map_err(|e| e.to_string())?;
    let headers = RestrictedExpression::new_record(
        input
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), string(value))),
    )
    .map_err(|e| e.to_string())?;
    Ok(vec![
        ("method".into(), string(input.method)),
        ("headers".into(), headers),
        ("host".into(), string(&input.host)),
        ("port".into(), long(i64::from(input.port))),
        ("path".into(), string(input.path)),
        ("segments".into(), RestrictedExpression::new_set(segments)),
        (
            "query_keys".into(),
            RestrictedExpression::new_set(query_keys),
        ),
        (
            "body_size".into(),
            long(
                input
                    .body_size
                    .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            ),
        ),
        (
            "has_grant".into(),
            RestrictedExpression::new_bool(input.sub.is_some()),
        ),
        ("task".into(), string(input.task.unwrap_or(""))),
        ("user".into(), string(input.user.unwrap_or(""))),
        (
            "act".into(),
            RestrictedExpression::new_set(input.act.iter().map(|a| string(a))),
        ),
        ("time".into(), time),
    ])
}

/// An error with its source positions as `line:column`, as the config's errors read.
fn render(error: &dyn miette_like::Diag, src: &str) -> String {
    miette_like::render(error, src)
}

/// Cedar reports errors as `miette` diagnostics (labels with byte offsets); this turns them
/// into `line:col: message` without a terminal renderer.
mod miette_like {
    pub trait Diag: std::fmt::Display {
        fn offsets(&self) -> Vec<usize>;
        fn help_text(&self) -> Option<String>;
    }

    impl<T: miette::Diagnostic> Diag for T {
        fn offsets(&self) -> Vec<usize> {
            let mut out: Vec<usize> = self
                .labels()
                .into_iter()
                .flatten()
                .map(|l| l.offset())
                .collect();
            if let Some(related) = self.related() {
                for r in related {
                    out.extend(r.labels().into_iter().flatten().map(|l| l.offset()));
                }
            }
            out
        }

        fn help_text(&self) -> Option<String> {
            self.help().map(|h| h.to_string())
        }
    }

    pub fn render(error: &dyn Diag, src: &str) -> String {
        let mut message = error.to_string();
        let positions: Vec<String> = error
            .offsets()
            .into_iter()
            .map(|offset| {
                let before = &src[..offset.min(src.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("{line}:{column}")
            })
            .collect();
        if !positions.is_empty() {
            message = format!("{}: {message}", positions.join(", "));
        }
        if let Some(help) = error.help_text() {
            message.push_str(&format!(" (hint: {help})"));
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: &str = r#"
@id("read-issues")
permit(principal, action == Sidekey::Action::"GET", resource == Sidekey::Route::"github")
when { context.path like "/repos/acme/api/issues*" };

@id("comment-for-alice")
permit(principal == Sidekey::Agent::"triage-bot", action == Sidekey::Action::"POST",
       resource == Sidekey::Route::"github")
when { context.path like "/repos/acme/api/issues/*/comments" && context.user == "alice"
       && context.time.hour >= 8 && context.time.hour < 18 };

@id("no-pushes")
forbid(principal, action, resource == Sidekey::Route::"github")
when { context.segments.contains("git") };
"#;

    /// 2026-12-07 (a Monday) at 10:00 UTC, and at 20:00.
    const MONDAY_10: u64 = 1_796_637_600;
    const MONDAY_20: u64 = MONDAY_10 + 10 * 3600;

    fn input<'a>(method: &'a str, path: &'a str) -> CedarInput<'a> {
        CedarInput {
            method,
            route: "github",
            host: "api.github.com".into(),
            port: 443,
            path,
            unix_time: MONDAY_10,
            ..CedarInput::default()
        }
    }

    #[test]
    fn permits_forbids_context_and_time() {
        let gate = CedarGate::load("p.cedar", POLICIES, None).unwrap();
        assert_eq!(gate.len(), 3);
        let v = gate.authorize(&input("GET", "/repos/acme/api/issues/7"));
        assert!(v.allowed);
        assert_eq!(v.policies, ["read-issues"]);
        // No permit for this method: denied, nothing determined it.
        let v = gate.authorize(&input("DELETE", "/repos/acme/api/issues/7"));
        assert!(!v.allowed);
        assert!(v.policies.is_empty());
        // Forbid over permit.
        let v = gate.authorize(&input("GET", "/repos/acme/api/issues/git/x"));
        assert!(!v.allowed);
        assert_eq!(v.policies, ["no-pushes"]);
        // Grant claims and time.
        let mut post = input("POST", "/repos/acme/api/issues/7/comments");
        assert!(
            !gate.authorize(&post).allowed,
            "no grant: the pod is not triage-bot"
        );
        post.sub = Some("triage-bot");
        post.user = Some("alice");
        assert_eq!(gate.authorize(&post).policies, ["comment-for-alice"]);
        post.user = Some("bob");
        assert!(!gate.authorize(&post).allowed, "on behalf of another user");
        post.user = Some("alice");
        post.unix_time = MONDAY_20;
        assert!(!gate.authorize(&post).allowed, "outside office hours");
    }

    #[test]
    fn a_route_is_decided_by_its_own_and_the_general_policies_only() {
        let gate = CedarGate::load(
            "s.cedar",
            r#"
@id("a") permit(principal, action, resource == Sidekey::Route::"a");
@id("b") permit(principal, action, resource in Sidekey::Route::"b");
@id("all-get") permit(principal, action == Sidekey::Action::"GET", resource);
@id("no-b-delete") forbid(principal, action == Sidekey::Action::"DELETE", resource == Sidekey::Route::"b");
"#,
            None,
        )
        .unwrap();
        let ask = |route: &'static str, method: &'static str| {
            let mut i = input(method, "/");
            i.route = route;
            gate.authorize(&i)
        };
        assert_eq!(ask("a", "POST").policies, ["a"]);
        assert_eq!(ask("b", "POST").policies, ["b"]);
        assert_eq!(ask("b", "DELETE").policies, ["no-b-delete"]);
        assert!(!ask("b", "DELETE").allowed);
        let mut both = ask("a", "GET").policies;
        both.sort();
        assert_eq!(both, ["a", "all-get"]);
        assert_eq!(
            ask("c", "GET").policies,
            ["all-get"],
            "a route no policy names"
        );
        assert!(!ask("c", "POST").allowed);
    }

    #[test]
    fn named_actions_and_headers() {
        let gate = CedarGate::load(
            "a.cedar",
            r#"permit(principal, action == Sidekey::Action::"comment", resource)
               when { context.method == "POST" && context.headers has "x-github-event"
                      && context.headers["x-github-event"] == "issue_comment" };"#,
            None,
        )
        .unwrap()
        .with_headers(vec!["x-github-event".into()]);
        assert_eq!(gate.headers(), ["x-github-event"]);
        let mut i = input("POST", "/repos/acme/api/issues/7/comments");
        assert!(
            !gate.authorize(&i).allowed,
            "the method is not the route's action"
        );
        i.action = Some("comment");
        assert!(!gate.authorize(&i).allowed, "the header is missing");
        i.headers = vec![("x-github-event", "issue_comment")];
        assert!(gate.authorize(&i).allowed);
        i.method = "GET";
        assert!(!gate.authorize(&i).allowed);
    }

    /// README's schema for the context (the ```cedarschema block): it parses, and requests
    /// built as the data plane builds them conform to it.
    #[test]
    fn the_readme_schema_describes_the_context() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```cedarschema").expect("a cedarschema block") + 14;
        let len = readme[start..].find("```").expect("its end");
        let schema: String = readme[start..start + len]
            .lines()
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        let gate = CedarGate::load(
            "p.cedar",
            r#"permit(principal, action == Sidekey::Action::"comment_on_issue", resource)
               when { context.headers has "x-github-event" && context.user == "alice" };"#,
            Some(("README.md", &schema)),
        )
        .unwrap()
        .with_headers(vec!["x-github-event".into()]);
        let mut i = input("POST", "/repos/acme/api/issues/7/comments");
        i.action = Some("comment_on_issue");
        i.sub = Some("triage-bot");
        i.user = Some("alice");
        i.headers = vec![("x-github-event", "issue_comment")];
        let v = gate.authorize(&i);
        assert!(v.allowed, "{v:?}");
        i.headers.clear();
        let v = gate.authorize(&i);
        assert!(
            !v.allowed && v.errors.is_empty(),
            "the optional header may be absent: {v:?}"
        );
    }

    #[test]
    fn the_clock_fields_are_utc() {
        let gate = CedarGate::load(
            "t.cedar",
            r#"permit(principal, action, resource) when {
                 context.time.weekday == 1 && context.time.hour == 10 && context.time.minute == 0
               };"#,
            None,
        )
        .unwrap();
        assert!(gate.authorize(&input("GET", "/")).allowed);
        let mut later = input("GET", "/");
        later.unix_time += 60;
        assert!(!gate.authorize(&later).allowed);
    }

    #[test]
    fn errors_name_the_file_and_position() {
        let e = CedarGate::load(
            "p.cedar",
            "permit(principal, action, resource)\nwhen { context.x ==  };",
            None,
        )
        .unwrap_err();
        assert!(e.starts_with("p.cedar: 2:"), "{e}");
        let e = CedarGate::load(
            "p.cedar",
            "@id(\"a\") permit(principal, action, resource);\n@id(\"a\") forbid(principal, action, resource);",
            None,
        )
        .unwrap_err();
        assert!(e.contains("two policies have the id `a`"), "{e}");
    }

    #[test]
    fn a_schema_validates_the_policies_and_every_request() {
        let schema = r#"
namespace Sidekey {
  entity Agent; entity Route;
  type Time = { unix: Long, hour: Long, minute: Long, weekday: Long };
  action "GET", "POST" appliesTo {
    principal: Agent, resource: Route,
    context: { method: String, headers: {}, host: String, port: Long, path: String,
               segments: Set<String>,
               query_keys: Set<String>, body_size: Long, has_grant: Bool, task: String,
               user: String, act: Set<String>, time: Time }
  };
}
"#;
        let gate = CedarGate::load(
            "p.cedar",
            r#"permit(principal, action == Sidekey::Action::"GET", resource) when { context.port == 443 };"#,
            Some(("s.cedarschema", schema)),
        )
        .unwrap();
        assert!(gate.authorize(&input("GET", "/x")).allowed);
        // An action the schema does not know: denied (fails closed), with the reason.
        let v = gate.authorize(&input("PATCH", "/x"));
        assert!(!v.allowed);
        assert!(v.errors[0].contains("schema"), "{v:?}");
        // A policy that uses an attribute the context does not have: refused at load.
        let e = CedarGate::load(
            "p.cedar",
            r#"permit(principal, action, resource) when { context.nope == 1 };"#,
            Some(("s.cedarschema", schema)),
        )
        .unwrap_err();
        assert!(e.contains("does not validate against s.cedarschema"), "{e}");
    }
}
