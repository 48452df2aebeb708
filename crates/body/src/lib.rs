//! Bodies on their way through sidekey, as streams: nothing here buffers a body whole (the
//! one exception, reading a small form or a body to sign, is the data plane's, bounded by the
//! [`sidekey_policy::BodyPlan`]). Each wrapper is one concern:
//!
//! - [`count`]: counts request bytes for the audit record, and notes whether the agent's body
//!   broke off (a framing error is the agent's, not the upstream's);
//! - [`form`]: finds `_method` fields in POST form bodies as they stream, and stops a body
//!   whose field asks for a method the route does not allow;
//! - [`decode`]: decodes a credentialed response the upstream compressed anyway;
//! - [`mask`]: masks every echo of the credential in response headers, bodies and trailers;
//! - [`websocket`]: checks WebSocket frames as they pass, and masks the credential in an
//!   upstream's.
//!
//! No listener, socket or policy decision lives here; `sidekey-proxy` composes these.

pub mod count;
pub mod decode;
pub mod form;
pub mod mask;
pub mod websocket;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Of a refused request's body, at most this much is read and dropped, within [`DRAIN_TIME`],
/// so that an agent still uploading gets to read the refusal: an HTTP/2 stream answered before
/// its body ends is reset, and some clients (curl 7.88) then report the reset instead of the
/// answer. A longer or slower body is abandoned.
pub const DRAIN_LIMIT: u64 = 4 << 20;
pub const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

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
