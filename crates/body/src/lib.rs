//! Bodies on their way through sidekey, as streams: nothing here buffers a body whole (the
//! one exception, reading a small form or a body to sign, is the data plane's, bounded by the
//! [`sidekey_policy::BodyPlan`]). Each wrapper is one concern:
//!
//! - [`count`]: counts request bytes for the audit record, and notes whether the agent's body
//!   broke off (a framing error is the agent's, not the upstream's);
//! - [`form`]: finds `_method` fields in POST form bodies as they stream, and stops a body
//!   whose field asks for a method the route does not allow;
//! - [`decode`]: decodes a credentialed response the upstream compressed anyway;
//! - [`mask`]: masks every echo of the credential in response headers, bodies and trailers.
//!
//! No listener, socket or policy decision lives here; `sidekey-proxy` composes these.

pub mod count;
pub mod decode;
pub mod form;
pub mod mask;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body sidekey sends, to the agent or upstream.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body of these bytes.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body with no bytes.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}
