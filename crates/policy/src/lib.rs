//! The decision core of sidekey: turns what a request claims about its target into one canonical
//! form, and decides — purely, with no I/O, clock or globals — whether a route allows it.
//!
//! Everything that says "yes" or "no" to egress lives here, so it can be tested exhaustively.

pub mod address;
pub mod glob;
pub mod host;
pub mod path;
pub mod route;

pub use address::{classify as classify_address, AddressClass, AddressGuard, IpNet};
pub use glob::{GlobError, PathGlob};
pub use host::{Authority, CanonicalHost, HostError, Scheme, Target};
pub use path::{PathError, RequestPath};
pub use route::{
    Decision, Denial, DenyCode, HostPattern, HostPatternError, MethodSet, Policy, Route,
};
