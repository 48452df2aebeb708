//! The decision core of sidekey: turns what a request claims about its target into one
//! canonical form, and decides — purely, with no I/O, clock or globals — whether it may go,
//! by which route, and how. Everything that says "yes" or "no" to egress lives here, so it can
//! be tested exhaustively; the data plane only carries the answers out.
//!
//! - [`decide`]: the decisions in the order a request meets them (identify → connect →
//!   request); start reading there.
//! - [`route`]: routes and the first-match rule; [`host`], [`path`], [`glob`]: canonical
//!   hosts, path checks, path globs; [`form`]: where a request can name another method;
//!   [`address`]: which upstream addresses may be connected to (SSRF); [`code`]: the error
//!   codes every refusal carries; [`cedar`]: Cedar policies, the optional gate after route
//!   matching.

pub mod address;
pub mod cedar;
pub mod code;
pub mod decide;
pub mod form;
pub mod glob;
pub mod grant;
pub mod host;
pub mod path;
pub mod route;

pub use address::{classify as classify_address, AddressClass, AddressGuard, IpNet};
pub use cedar::{CedarGate, CedarInput, CedarVerdict, GrantFacts};
pub use code::{ErrorCode, Refusal};
pub use decide::{
    absolute_target, check_sni, connect_target, route_target, BodyPlan, ConnectDecision, FormScan,
    Identified, RequestDecision, RouteAddress, Sni, TargetMemo, WholeBody, WholePurpose,
    FORM_BODY_LIMIT, SIGNED_BODY_LIMIT, TASK_HEADER,
};
pub use glob::{GlobError, PathGlob};
pub use grant::{GrantScope, RouteGrant};
pub use host::{Authority, CanonicalHost, HostError, Scheme, Target};
pub use path::{PathError, RequestPath};
pub use route::{
    is_token, Decision, HostPattern, HostPatternError, MethodSet, Policy, Route, Unmatched,
};
