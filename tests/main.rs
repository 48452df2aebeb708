//! sidekey's integration tests, as one test binary (`integration`): each file of `tests/` is a
//! module here, and [`common`] (the harness: test CA, upstreams, the sidekey process, clients,
//! issuer peers) is compiled once for all of them. nextest still runs every test in its own
//! process (`cargo nextest run --test integration forward::` runs one file's tests).

mod common;

mod adversarial_exfiltration;
mod adversarial_host;
mod adversarial_method;
mod adversarial_path;
mod adversarial_smuggling;
mod architecture;
mod audit;
mod audit_trace;
mod aws;
mod aws_peer;
mod binary;
mod cedar;
mod check;
mod client_certificate;
mod client_libraries;
mod compose;
mod credential_retry;
mod credentials_endpoint;
mod denials;
mod examples;
mod explain;
mod fixtures;
mod forward;
mod github_app;
mod grants;
mod grants_peers;
mod hygiene;
mod idle_connections;
mod injector_openbao;
mod injector_sidecar;
mod issuer_faults;
mod limits;
mod metrics;
mod oauth2;
mod oauth2_peer;
mod oauth2_task;
mod observability;
mod otlp;
mod phases;
mod quickstart;
mod reload;
mod route_listener;
mod ssrf;
mod target_identity;
mod tls_agent;
mod tls_upstream;
mod trace_context;
mod tunnel;
mod vault;
mod vault_peer;
mod websocket;
