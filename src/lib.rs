//! The `sidekey` binary's wiring, as a library: [`runtime`] builds every running piece from a
//! config (issuers, credential store, interception CA, upstream client, proxy state) and
//! replaces them on reload. `src/main.rs` adds the CLI, listeners, signals and shutdown; the
//! tests use this to run sidekey in-process.

mod bundle;
pub mod runtime;
mod scope;
