//! The injector's integration tests, as one test binary (`integration`): each file of `tests/`
//! is a module here, and [`common`] is compiled once for all of them.

// The sidekey package's test CA (tests/common/ca.rs), shared: this package uses a part of it.
#[path = "../../../tests/common/ca.rs"]
#[allow(dead_code)]
mod ca;
mod common;

mod chart;
mod patch;
mod webhook;
