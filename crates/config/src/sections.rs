//! The flat sections, each declared once with [`section!`] (see [`crate::section`]), followed by
//! its reader: the generated one, plus the checks that span fields or sections, written out.

use std::path::PathBuf;
use std::time::Duration;

use crate::check::Errors;
use crate::section::{self, section, Int, Path, Positive};
use crate::yaml::Node;

section! {
    /// `ca:` — the interception CA. Its key never leaves memory.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CaConfig as "ca" {
        /// Where the public certificate (PEM) is written for agents to trust. None: not written.
        pub cert_out: Option<PathBuf> = None, Path;
        /// Where sidekey's CA certificate followed by the system's trusted roots is written (for
        /// `SSL_CERT_FILE`/`REQUESTS_CA_BUNDLE`, which replace rather than extend a client's trust:
        /// hosts reached directly or tunnelled must still verify). None: not written.
        pub bundle_out: Option<PathBuf> = None, Path;
        /// Maximum leaf certificates kept in memory. Default 1024.
        pub leaf_cache_size: usize = 1024, Int(1..=1_000_000);
        /// New leaves per second (sustained) for names no route lists exactly, i.e. names under
        /// wildcard routes. Default 10.
        pub leaf_mint_rate: u32 = 10, Int(1..=10_000);
        /// New leaves at once (burst) for such names. Default 50.
        pub leaf_mint_burst: u32 = 50, Int(1..=100_000);
    }
}

pub(crate) fn ca(node: &Node, e: &mut Errors) -> CaConfig {
    let read = section::read::<CaConfig>(node, e);
    let ca = read.value;
    if let Some(bundle) = read.valid.iter().find(|f| f.name == "bundle_out") {
        if ca.bundle_out == ca.cert_out {
            e.error_hint(
                bundle.value.pos,
                "`ca.bundle_out` is the same file as `ca.cert_out`",
                "the bundle (CA + public roots) and the CA alone need two files",
            );
        }
    }
    ca
}

section! {
    /// `limits:` — what one agent connection may cost sidekey. Every value has a safe default.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LimitsConfig as "limits" {
        /// Agent connections open at once, over all listeners; more are closed on accept.
        /// Default 1024.
        pub max_connections: usize = 1024, Int(1..=1_000_000);
        /// Time to receive a whole request head (slowloris). Default 30s.
        pub header_read_timeout: Duration = Duration::from_secs(30), Positive;
        /// Time for the agent's TLS handshake inside CONNECT. Default 10s.
        pub handshake_timeout: Duration = Duration::from_secs(10), Positive;
        /// Request headers per request. Default 100.
        pub max_headers: usize = 100, Int(8..=10_000);
        /// Bytes of a request head (request line + headers; HTTP/2: the header list).
        /// Default 65536 (64 KiB).
        pub max_header_bytes: usize = 64 * 1024, Int(1024..=16 << 20);
        /// Concurrent HTTP/2 streams per agent connection. Default 100.
        pub max_concurrent_streams: u32 = 100, Int(1..=10_000);
        /// A blind tunnel or an HTTP/2 connection with no traffic either way is closed after
        /// this. Default 5m.
        pub idle_timeout: Duration = Duration::from_secs(300), Positive;
    }
}

pub(crate) fn limits(node: &Node, e: &mut Errors) -> LimitsConfig {
    section::read::<LimitsConfig>(node, e).value
}
