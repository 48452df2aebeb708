//! TLS for both sides of sidekey: the in-memory interception CA that mints a leaf certificate
//! per intercepted host ([`ca`]), name-constrained to the hosts it may intercept ([`scope`]),
//! and the verified client configuration for upstreams ([`client`]). One crypto provider,
//! aws-lc-rs, everywhere; TLS 1.2 and 1.3 only, on both sides.

pub mod ca;
pub mod client;
pub mod scope;

use std::sync::Arc;

pub use ca::{CertificateAuthority, LeafLimits};
pub use client::upstream_client_config;
pub use scope::InterceptScope;

/// Errors building certificates or TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("reading CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("CA file {0} contains no certificate")]
    EmptyCaFile(String),
    #[error(
        "{0} is not a host of any intercepted route; the interception CA may not vouch for it"
    )]
    OutOfScope(String),
    #[error(
        "too many new TLS server names: certificates for names no route lists exactly are \
         minted at most {rate}/s (burst {burst}); retry later"
    )]
    MintRateExceeded { rate: u32, burst: u32 },
    #[error("writing CA certificate to {path}: {source}")]
    WriteCert {
        path: String,
        source: std::io::Error,
    },
}

/// The process-wide crypto provider (aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
