//! TLS for both sides of sidekey: the in-memory interception CA that mints a leaf certificate
//! per intercepted host ([`ca`]), and the verified client configuration for upstreams
//! ([`client`]). One crypto provider, aws-lc-rs, everywhere.

pub mod ca;
pub mod client;

use std::sync::Arc;

pub use ca::CertificateAuthority;
pub use client::upstream_client_config;

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
