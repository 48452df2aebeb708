//! WebSockets through the forward and route listeners (and inside intercepted tunnels).
//!
//! The upgrade request is an exchange like any other — decided by policy as a `GET` to its
//! host and path, given the route's credential, audited — with three differences:
//!
//! - **The handshake.** An agent asks with HTTP/1.1 `Upgrade: websocket` (RFC 6455) or, on an
//!   HTTP/2 connection, with an extended CONNECT (`:protocol websocket`, RFC 8441). Upstream,
//!   sidekey always speaks HTTP/1.1 Upgrade on a connection of its own (like Envoy), with the
//!   agent's `Sec-WebSocket-Key` (HTTP/1.1) or one of its own (HTTP/2, which has none), checks
//!   the upstream's `Sec-WebSocket-Accept`, and answers the agent `101` or `200`. No extension
//!   is offered upstream (`Sec-WebSocket-Extensions` is dropped): a compressed frame could
//!   carry the credential past the mask, as `Accept-Encoding: identity` prevents for bodies.
//! - **The frames** pass both ways through [`FrameRelay`]s: checked, limited
//!   (`limits.websocket_max_frame`, `limits.websocket_max_message`), the credential masked in
//!   the upstream's. A violation closes both sides with 1002 or 1009; so do the idle timeout
//!   (`limits.idle_timeout`), shutdown and a reload after which policy would no longer allow the
//!   upgrade, with 1001.
//! - **The record** is written when the connection ends: status 101 (200 over HTTP/2), the
//!   frames' bytes each way, and `websocket` ([`WebSocketEnd`]): the close code, who closed,
//!   messages each way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use sidekey_audit::WebSocketEnd;
use sidekey_body::mask::Needles;
use sidekey_body::websocket::{
    close_frame, FrameLimits, FrameRelay, Peer, Violation, ACCEPT_GUID, CLOSE_GOING_AWAY,
};
use sidekey_grants::Grant;
use sidekey_policy::{ErrorCode, Identified, Refusal, RequestDecision};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::PendingRecord;
use crate::{ProxyState, SharedState};

/// After both sides sent their Close frame, how long sidekey waits for them to close the
/// connection before it does.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// After sidekey asks both sides to close, how long it lets them take.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What a connection that outlives its request needs from the listener it came through: the
/// shared state (to re-decide after a reload), shutdown, and the tracker shutdown waits on.
#[derive(Clone)]
pub struct Streams {
    pub shared: Arc<SharedState>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

/// A WebSocket the agent asked for.
pub(crate) struct Requested {
    /// The agent's `Sec-WebSocket-Key` (HTTP/1.1); None over HTTP/2, which has none.
    agent_key: Option<HeaderValue>,
    /// The key sent upstream.
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Whether this request asks for a WebSocket, and if so takes what the handshake needs. An
/// HTTP/2 extended CONNECT becomes the `GET` that policy decides and the upstream gets. Another
/// upgrade (or a `:protocol` other than websocket) is not a WebSocket: refused here rather than
/// forwarded without its upgrade.
pub(crate) fn requested(parts: &mut Parts) -> Result<Option<Requested>, Refusal> {
    let invalid = |message: &str| Refusal::new(ErrorCode::RequestInvalid, message);
    if parts.method == Method::CONNECT {
        let Some(protocol) = parts.extensions.get::<hyper::ext::Protocol>() else {
            return Ok(None);
        };
        if !protocol.as_str().eq_ignore_ascii_case("websocket") {
            return Err(invalid(
                "an extended CONNECT for a protocol other than websocket",
            ));
        }
        check_version(parts)?;
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(invalid("this connection cannot be upgraded"));
        };
        parts.method = Method::GET;
        let key = new_key();
        return Ok(Some(Requested {
            agent_key: None,
            key,
            on_upgrade,
        }));
    }
    let upgrade = sidekey_inject::first(&parts.headers, &header::UPGRADE);
    let Some(upgrade) = upgrade else {
        return Ok(None);
    };
    let websocket = has_token(upgrade, "websocket");
    let connection_upgrade = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v, "upgrade"));
    if !websocket || !connection_upgrade {
        // `Upgrade: h2c` and the like are hop-by-hop and dropped: the request goes on as plain
        // HTTP, as before.
        return Ok(None);
    }
    if parts.method != Method::GET || parts.version != Version::HTTP_11 {
        return Err(invalid("a WebSocket upgrade is a GET over HTTP/1.1"));
    }
    check_version(parts)?;
    let key = parts
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k.as_bytes())
                .is_ok_and(|raw| raw.len() == 16)
        })
        .cloned()
        .ok_or_else(|| invalid("a WebSocket upgrade needs a Sec-WebSocket-Key of 16 bytes"))?;
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return Err(invalid("this connection cannot be upgraded"));
    };
    Ok(Some(Requested {
        agent_key: Some(key.clone()),
        key,
        on_upgrade,
    }))
}

fn check_version(parts: &Parts) -> Result<(), Refusal> {
    match parts.headers.get(header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v.as_bytes() == b"13" => Ok(()),
        _ => Err(Refusal::new(
            ErrorCode::RequestInvalid,
            "a WebSocket upgrade needs Sec-WebSocket-Version: 13",
        )),
    }
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
fn new_key() -> HeaderValue {
    let raw = uuid::Uuid::new_v4();
    let key = base64::engine::general_purpose::STANDARD.encode(raw.as_bytes());
    HeaderValue::try_from(key)
        .unwrap_or_else(|_| HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
fn accept_for(key: &HeaderValue) -> String {
    let mut input = Vec::with_capacity(key.len() + ACCEPT_GUID.len());
    input.extend_from_slice(key.as_bytes());
    input.extend_from_slice(ACCEPT_GUID);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

impl Requested {
    /// After `rewrite`: the upgrade headers (hop-by-hop, so dropped by it) put back as the
    /// upstream must see them, with no extension offered.
    pub(crate) fn prepare_upstream(&self, parts: &mut Parts) {
        let h = &mut parts.headers;
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(header::SEC_WEBSOCKET_KEY, self.key.clone());
        h.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        h.remove(header::ACCEPT_ENCODING);
    }

    /// Checks the upstream's `101`: a WebSocket, with the accept of the key sent and no
    /// extension (none was offered).
    pub(crate) fn check_accepted(
        &self,
        response: &Response<hyper::body::Incoming>,
    ) -> Result<(), Refusal> {
        let headers = response.headers();
        let upgraded = headers
            .get(header::UPGRADE)
            .is_some_and(|v| has_token(v, "websocket"));
        let accepted = headers
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == accept_for(&self.key).as_bytes());
        if !upgraded || !accepted {
            return Err(Refusal::new(
                ErrorCode::UpstreamUnreachable,
                "the upstream answered 101 without a valid WebSocket handshake",
            ));
        }
        if headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) {
            return Err(Refusal::new(
                ErrorCode::UpstreamEncoding,
                "the upstream negotiated a WebSocket extension sidekey did not offer: its \
                 frames could not be masked",
            ));
        }
        Ok(())
    }

    /// The answer to the agent: `101 Switching Protocols` (HTTP/1.1) or `200` (HTTP/2), with
    /// the subprotocol the upstream chose.
    pub(crate) fn agent_response(
        &self,
        upstream: &Response<hyper::body::Incoming>,
        needles: Option<&Needles>,
    ) -> Response<sidekey_body::ProxyBody> {
        let mut response = Response::new(sidekey_body::empty());
        let h = response.headers_mut();
        if let Some(protocol) = upstream.headers().get(header::SEC_WEBSOCKET_PROTOCOL) {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
        }
        if let Some(needles) = needles {
            sidekey_body::mask::scrub_headers(h, needles);
        }
        match &self.agent_key {
            Some(key) => {
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let h = response.headers_mut();
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                if let Ok(accept) = HeaderValue::try_from(accept_for(key)) {
                    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
                }
            }
            None => *response.status_mut() = StatusCode::OK,
        }
        response
    }

    pub(crate) fn into_upgrade(self) -> OnUpgrade {
        self.on_upgrade
    }
}

/// What a reload must still allow for the WebSocket to stay open: its upgrade request (as the
/// agent sent it, decided again), through the same route with the same credential.
pub(crate) struct Admission {
    pub identified: Identified,
    pub request: Parts,
    pub grant: Option<Arc<Grant>>,
    pub route: Option<Arc<str>>,
    pub credential: Option<Arc<str>>,
    pub client_certificate: Option<Arc<str>>,
}

impl Admission {
    fn still_allowed(&self, state: &ProxyState) -> bool {
        let scope = self.grant.as_deref().map(|g| &g.scope);
        match state
            .policy
            .decide_request(&self.identified, &self.request, Some(0), scope)
        {
            RequestDecision::Allow { route, .. } => state.routes.get(route).is_some_and(|r| {
                Some(&r.name) == self.route.as_ref()
                    && r.credential == self.credential
                    && r.client_certificate == self.client_certificate
            }),
            RequestDecision::PassUnmatched => self.route.is_none(),
            RequestDecision::Deny(_) => false,
        }
    }
}

/// Everything the connection needs once both sides are upgraded.
pub(crate) struct Connection {
    pub agent: OnUpgrade,
    pub upstream: OnUpgrade,
    pub needles: Option<Needles>,
    pub record: PendingRecord,
    pub admission: Admission,
}

/// Runs the connection on the listener's tracker until it ends, then writes its record.
pub(crate) fn spawn(state: &ProxyState, streams: &Streams, connection: Connection) {
    let limits = FrameLimits {
        max_frame: state.limits.websocket_max_frame,
        max_message: state.limits.websocket_max_message,
    };
    let idle_timeout = state.limits.idle_timeout;
    let streams = streams.clone();
    let tracker = streams.tracker.clone();
    tracker.spawn(async move {
        let Connection {
            agent,
            upstream,
            needles,
            mut record,
            admission,
        } = connection;
        let bytes_in = record.meter();
        let (agent, upstream) = match tokio::try_join!(agent, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                record.finish_streamed(0, Some("client_aborted"));
                return;
            }
        };
        let ended = relay(
            agent,
            upstream,
            needles,
            limits,
            idle_timeout,
            &streams,
            &admission,
        )
        .await;
        bytes_in.add(ended.bytes_in);
        record.set_websocket(ended.end);
        record.finish_streamed(ended.bytes_out, ended.error);
    });
}

/// Why sidekey closes both sides.
#[derive(Clone, Copy, Debug)]
struct Stop {
    code: u16,
    reason: &'static str,
}

/// What the two directions share.
struct Link {
    stop: watch::Sender<Option<Stop>>,
    opened: tokio::time::Instant,
    /// Milliseconds since `opened` at the last bytes read either way.
    last: AtomicU64,
    /// The first Close frame seen, and who sent it.
    first_close: Mutex<Option<(Peer, Option<u16>)>>,
    /// Close frames seen: 1 the agent's, 2 the upstream's.
    closes: AtomicU64,
}

impl Link {
    fn touch(&self) {
        let at = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(at, Ordering::Relaxed);
    }

    fn closed_by(&self, peer: Peer, code: Option<u16>) {
        let bit = match peer {
            Peer::Agent => 1,
            Peer::Upstream => 2,
        };
        if self.closes.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            let mut first = self
                .first_close
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            first.get_or_insert((peer, code));
        }
    }
}

struct Ended {
    bytes_in: u64,
    bytes_out: u64,
    end: WebSocketEnd,
    error: Option<&'static str>,
}

/// How one direction ended.
enum PumpEnd {
    /// The reader closed (or failed), or the writer did.
    Closed,
    /// What the reader sent broke the protocol or a limit.
    Violation(Violation),
    /// sidekey stopped it.
    Stopped,
}

async fn relay(
    agent: Upgraded,
    upstream: Upgraded,
    needles: Option<Needles>,
    limits: FrameLimits,
    idle_timeout: Duration,
    streams: &Streams,
    admission: &Admission,
) -> Ended {
    let (agent_read, agent_write) = tokio::io::split(TokioIo::new(agent));
    let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let link = Link {
        stop: watch::Sender::new(None),
        opened: tokio::time::Instant::now(),
        last: AtomicU64::new(0),
        first_close: Mutex::new(None),
        closes: AtomicU64::new(0),
    };
    let (mut up, mut down) = (0u64, 0u64);
    let mut from_agent = FrameRelay::new(Peer::Agent, limits, None);
    let mut from_upstream = FrameRelay::new(Peer::Upstream, limits, needles);
    let (error, by_sidekey) = {
        let pumps = async {
            tokio::join!(
                pump(agent_read, upstream_write, &mut from_agent, &link, &mut up),
                pump(
                    upstream_read,
                    agent_write,
                    &mut from_upstream,
                    &link,
                    &mut down
                ),
            )
        };
        tokio::pin!(pumps);
        let mut reloads = streams.shared.reloads();
        let revoked = async {
            while reloads.changed().await.is_ok() {
                if !admission.still_allowed(&streams.shared.load()) {
                    return;
                }
            }
            std::future::pending::<()>().await;
        };
        let stopped = tokio::select! {
            (a, b) = &mut pumps => Err((a, b)),
            closed = idle(&link, idle_timeout) => Ok(closed),
            () = streams.shutdown.cancelled() => Ok(Some(("shutdown", "sidekey: shutting down"))),
            () = revoked => Ok(Some(("config_reloaded", "sidekey: route changed"))),
        };
        let (mut error, mut by_sidekey) = (None, None);
        match stopped {
            Err((a, b)) => {
                for end in [a, b] {
                    if let PumpEnd::Violation(v) = end {
                        error = Some(v.audit_error());
                        by_sidekey.get_or_insert(v.close_code());
                    }
                }
            }
            Ok(stop) => {
                if let Some((why, reason)) = stop {
                    error = Some(why);
                    by_sidekey = Some(CLOSE_GOING_AWAY);
                    let _ = link.stop.send(Some(Stop {
                        code: CLOSE_GOING_AWAY,
                        reason,
                    }));
                }
                // Both sides are told (or the pumps are stuck writing): done soon either way.
                let _ = tokio::time::timeout(STOP_GRACE, &mut pumps).await;
            }
        }
        (error, by_sidekey)
    };
    // Once sidekey stops the pumps they read nothing more: a Close frame seen came first.
    let first = *link
        .first_close
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (close_code, closed_by) = match (first, by_sidekey) {
        (Some((peer, code)), _) => (code, Some(peer.as_str())),
        (None, Some(code)) => (Some(code), Some("sidekey")),
        (None, None) => (None, None),
    };
    let error = error.or(match first {
        None => Some("abnormal_closure"),
        Some(_) => None,
    });
    Ended {
        bytes_in: up,
        bytes_out: down,
        end: WebSocketEnd {
            close_code,
            closed_by,
            messages_in: from_agent.messages(),
            messages_out: from_upstream.messages(),
        },
        error,
    }
}

/// Resolves once the connection has been quiet both ways for `idle_timeout` (with a stop
/// reason), or for [`CLOSE_GRACE`] after both Close frames passed (with none: a clean end the
/// peers did not finish).
async fn idle(link: &Link, idle_timeout: Duration) -> Option<(&'static str, &'static str)> {
    loop {
        let both_closed = link.closes.load(Ordering::Relaxed) == 3;
        let limit = if both_closed {
            CLOSE_GRACE
        } else {
            idle_timeout
        };
        let last = Duration::from_millis(link.last.load(Ordering::Relaxed));
        let quiet = link.opened.elapsed().saturating_sub(last);
        if quiet >= limit {
            return (!both_closed).then_some(("idle_timeout", "sidekey: idle timeout"));
        }
        let wait = (limit - quiet).min(Duration::from_secs(1));
        tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
    }
}

/// One direction: reads frames from one peer, writes them to the other, until either side
/// closes, what is read breaks the protocol or a limit (a Close to both sides), or sidekey
/// stops it (a Close to the peer it writes to, when between frames).
async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    relay: &mut FrameRelay,
    link: &Link,
    count: &mut u64,
) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut stop = link.stop.subscribe();
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    // How it ended, and the Close frame sidekey then sends the peer it writes to, if any.
    let (end, close_with) = loop {
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 * 1024);
        }
        tokio::select! {
            // The stop first: a Close the peer sends in answer to sidekey's (which the other
            // direction writes once the stop is sent, so the stop is always seen ready by then)
            // must not be recorded as the peer closing first.
            biased;
            changed = stop.changed() => {
                break (PumpEnd::Stopped, changed.ok().and_then(|()| *stop.borrow()));
            }
            read = reader.read_buf(&mut input) => {
                match read {
                    Ok(0) | Err(_) => break (PumpEnd::Closed, None),
                    Ok(_) => link.touch(),
                }
                let fed = relay.feed(&mut input, &mut out);
                if let Some(code) = relay.close() {
                    link.closed_by(relay.from(), code);
                }
                if !out.is_empty() {
                    if writer.write_all(&out).await.is_err() {
                        break (PumpEnd::Closed, None);
                    }
                    *count += out.len() as u64;
                    out.clear();
                }
                if let Err(violation) = fed {
                    tracing::info!(from = relay.from().as_str(), error = %violation, "WebSocket closed by sidekey");
                    let stop = Stop { code: violation.close_code(), reason: violation.close_reason() };
                    // The other direction tells the peer that sent it.
                    let _ = link.stop.send(Some(stop));
                    break (PumpEnd::Violation(violation), Some(stop));
                }
            }
        }
    };
    if let Some(stop) = close_with.filter(|_| relay.at_boundary()) {
        // Frames sidekey adds toward the upstream are masked, as a client's must be.
        let mask = (relay.from() == Peer::Agent).then(|| {
            let b = uuid::Uuid::new_v4().into_bytes();
            [b[0], b[1], b[2], b[3]]
        });
        let frame = close_frame(stop.code, stop.reason, mask);
        if writer.write_all(&frame).await.is_ok() {
            *count += frame.len() as u64;
        }
    }
    let _ = writer.shutdown().await;
    end
}
