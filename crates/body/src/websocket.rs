//! WebSocket frames (RFC 6455 §5) on their way through an upgraded connection, one direction at
//! a time, with no I/O: [`FrameRelay::feed`] takes the bytes read from one peer and gives what
//! may be written to the other.
//!
//! - **Checked, both ways.** Frame headers are parsed and checked as they pass: the masking
//!   rule (an agent's frames masked, an upstream's not), no reserved bit (sidekey negotiates no
//!   extension), known opcodes, control frames whole and short, continuations only inside a
//!   message, and [`FrameLimits`] on a frame's and a message's payload. A violation stops the
//!   direction with the close code to send ([`Violation`]).
//! - **Passed as they came** when there is nothing to mask: headers and payloads are copied
//!   byte for byte (an agent's payload stays masked as it sent it), streaming, never a whole
//!   frame held.
//! - **Masked** (an upstream's frames on a route with a credential): every echo of the
//!   credential in a data message's payload is overwritten with `*`, also when it is cut
//!   across frames or reads, as [`crate::mask`] does for bodies. To do that without holding
//!   whole frames, the message is re-fragmented (RFC 6455 §5.4 lets an intermediary do so when
//!   no extension is negotiated): what is safe to send goes out at once as a fragment, and only
//!   a tail that could begin a credential waits for the next bytes. Control frames (≤ 125
//!   bytes) are masked whole.
//! - **Close frames** are noted (the first one each way, with its code) for the audit record.

use bytes::{BufMut, Bytes, BytesMut};

use crate::mask::{mask_all, partial_tail, Needles};

/// The GUID a server appends to `Sec-WebSocket-Key` before hashing it into
/// `Sec-WebSocket-Accept` (RFC 6455 §1.3).
pub const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The longest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: u64 = 125;

/// Close codes sidekey sends (RFC 6455 §7.4.1).
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Which peer sent the frames a relay reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Agent,
    Upstream,
}

impl Peer {
    pub fn as_str(self) -> &'static str {
        match self {
            Peer::Agent => "agent",
            Peer::Upstream => "upstream",
        }
    }
}

/// Payload limits, in bytes (`limits.websocket_max_frame`, `limits.websocket_max_message`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_frame: u64,
    pub max_message: u64,
}

/// Why sidekey closes a WebSocket: what a peer sent broke the protocol or a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("{0}")]
    Protocol(&'static str),
    #[error("a frame of {size} bytes is larger than limits.websocket_max_frame ({max})")]
    FrameTooLarge { size: u64, max: u64 },
    #[error("a message is larger than limits.websocket_max_message ({max} bytes)")]
    MessageTooLarge { max: u64 },
}

impl Violation {
    /// The close code sent to both peers.
    pub fn close_code(&self) -> u16 {
        match self {
            Violation::Protocol(_) => CLOSE_PROTOCOL_ERROR,
            Violation::FrameTooLarge { .. } | Violation::MessageTooLarge { .. } => CLOSE_TOO_BIG,
        }
    }

    /// The audit record's `error`.
    pub fn audit_error(&self) -> &'static str {
        match self {
            Violation::Protocol(_) => "websocket_protocol_error",
            Violation::FrameTooLarge { .. } | Violation::MessageTooLarge { .. } => {
                "websocket_too_large"
            }
        }
    }

    /// The close frame's reason: short (a close payload holds at most 123 bytes of it).
    pub fn close_reason(&self) -> &'static str {
        match self {
            Violation::Protocol(_) => "sidekey: protocol error",
            Violation::FrameTooLarge { .. } => "sidekey: frame too large",
            Violation::MessageTooLarge { .. } => "sidekey: message too large",
        }
    }
}

/// A data frame whose payload is passing.
#[derive(Debug)]
struct Current {
    fin: bool,
    /// Payload bytes still to come.
    remaining: u64,
}

/// A data message in progress.
#[derive(Debug)]
struct Message {
    /// Text or binary.
    opcode: u8,
    /// Payload bytes so far, over its frames.
    len: u64,
    /// Masking mode: a fragment of it already went out (later ones are continuations).
    started: bool,
}

/// One direction of a WebSocket connection: see the module docs.
#[derive(Debug)]
pub struct FrameRelay {
    from: Peer,
    limits: FrameLimits,
    /// Some: the payload of data and control frames is masked (re-fragmenting data messages).
    needles: Option<Needles>,
    frame: Option<Current>,
    message: Option<Message>,
    /// Masking mode: payload bytes of the current message not sent yet.
    held: BytesMut,
    /// The first Close frame seen: its code, if it carried one.
    close: Option<Option<u16>>,
    messages: u64,
}

impl FrameRelay {
    /// The relay of frames `from` one peer. `needles` (credential echoes to mask) apply only to
    /// an upstream's frames; empty needles mean nothing to mask.
    pub fn new(from: Peer, limits: FrameLimits, needles: Option<Needles>) -> FrameRelay {
        let needles = needles.filter(|n| from == Peer::Upstream && !n.is_empty());
        FrameRelay {
            from,
            limits,
            needles,
            frame: None,
            message: None,
            held: BytesMut::new(),
            close: None,
            messages: 0,
        }
    }

    /// The peer whose frames this relay reads.
    pub fn from(&self) -> Peer {
        self.from
    }

    /// The first Close frame this peer sent, with its code (`Some(None)`: a Close with no code).
    pub fn close(&self) -> Option<Option<u16>> {
        self.close
    }

    /// Data messages passed completely.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Whether what was written so far ends on a frame boundary, so that sidekey can add a
    /// frame of its own (a Close). Masking mode only ever writes whole frames.
    pub fn at_boundary(&self) -> bool {
        self.needles.is_some() || self.frame.is_none()
    }

    /// Takes what can be passed on from `input` (the bytes read so far that were not taken yet)
    /// and appends it to `out`. What stays in `input` is an incomplete frame header or control
    /// frame, to be completed by the next read.
    pub fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<(), Violation> {
        loop {
            if let Some(frame) = &mut self.frame {
                let take = usize::try_from(frame.remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                if take == 0 && frame.remaining > 0 {
                    return Ok(());
                }
                let chunk = input.split_to(take);
                frame.remaining -= take as u64;
                let done = frame.remaining == 0;
                let fin = frame.fin;
                if done {
                    self.frame = None;
                }
                match &self.needles {
                    None => out.extend_from_slice(&chunk),
                    Some(_) => {
                        self.held.extend_from_slice(&chunk);
                        self.release(out, done && fin);
                    }
                }
                if done && fin {
                    self.message = None;
                    self.messages += 1;
                }
                continue;
            }
            let Some(header) = parse_header(input)? else {
                return Ok(());
            };
            self.check(&header)?;
            if header.opcode >= OP_CLOSE {
                // Control frames pass whole (they are short).
                let whole = header.len + header.payload_len as usize;
                if input.len() < whole {
                    return Ok(());
                }
                let mut frame = input.split_to(whole);
                if header.opcode == OP_CLOSE {
                    let code = close_code(&frame[header.len..], header.mask)?;
                    self.close.get_or_insert(code);
                }
                if let Some(needles) = &self.needles {
                    mask_all(&mut frame[header.len..], needles);
                }
                out.extend_from_slice(&frame);
                continue;
            }
            // A data frame.
            let head = input.split_to(header.len);
            let fin = header.fin;
            let masking = self.needles.is_some();
            if !masking {
                out.extend_from_slice(&head);
            }
            if header.payload_len == 0 {
                if masking {
                    self.release(out, fin);
                }
                if fin {
                    self.message = None;
                    self.messages += 1;
                }
                continue;
            }
            self.frame = Some(Current {
                fin,
                remaining: header.payload_len,
            });
        }
    }

    /// Checks a header against the protocol and the limits, and keeps the message's count.
    fn check(&mut self, header: &Header) -> Result<(), Violation> {
        if header.rsv != 0 {
            return Err(Violation::Protocol(
                "a frame has a reserved bit set (no extension was negotiated)",
            ));
        }
        match (self.from, header.mask.is_some()) {
            (Peer::Agent, false) => {
                return Err(Violation::Protocol("the agent sent an unmasked frame"))
            }
            (Peer::Upstream, true) => {
                return Err(Violation::Protocol("the upstream sent a masked frame"))
            }
            _ => {}
        }
        match header.opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !header.fin || header.payload_len > MAX_CONTROL {
                    return Err(Violation::Protocol(
                        "a control frame is fragmented or longer than 125 bytes",
                    ));
                }
                return Ok(());
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
            _ => return Err(Violation::Protocol("a frame has an unknown opcode")),
        }
        if header.payload_len > self.limits.max_frame {
            return Err(Violation::FrameTooLarge {
                size: header.payload_len,
                max: self.limits.max_frame,
            });
        }
        let message = match (header.opcode, &mut self.message) {
            (OP_CONTINUATION, Some(message)) => message,
            (OP_CONTINUATION, None) => {
                return Err(Violation::Protocol(
                    "a continuation frame with no message to continue",
                ))
            }
            (_, Some(_)) => {
                return Err(Violation::Protocol(
                    "a new message began before the last one ended",
                ))
            }
            (opcode, message @ None) => message.insert(Message {
                opcode,
                len: 0,
                started: false,
            }),
        };
        message.len = message.len.saturating_add(header.payload_len);
        if message.len > self.limits.max_message {
            return Err(Violation::MessageTooLarge {
                max: self.limits.max_message,
            });
        }
        Ok(())
    }

    /// Masking mode: masks what is held and sends what cannot begin a credential as a fragment
    /// (all of it, as the message's last fragment, when `last`).
    fn release(&mut self, out: &mut BytesMut, last: bool) {
        let Some(needles) = &self.needles else {
            return;
        };
        mask_all(&mut self.held, needles);
        let keep = if last {
            0
        } else {
            partial_tail(&self.held, needles)
        };
        let send = self.held.len() - keep;
        if send == 0 && !last {
            return;
        }
        let Some(message) = &mut self.message else {
            return;
        };
        let opcode = if message.started {
            OP_CONTINUATION
        } else {
            message.opcode
        };
        message.started = true;
        let payload = self.held.split_to(send);
        put_header(out, last, opcode, payload.len() as u64, None);
        out.extend_from_slice(&payload);
    }
}

/// A parsed frame header.
#[derive(Debug)]
struct Header {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload_len: u64,
    /// Bytes of the header itself.
    len: usize,
}

/// The header at the start of `input`, or None while it is incomplete.
fn parse_header(input: &[u8]) -> Result<Option<Header>, Violation> {
    let [b0, b1, ..] = *input else {
        return Ok(None);
    };
    let masked = b1 & 0x80 != 0;
    let (payload_len, mut len) = match b1 & 0x7F {
        126 => match input.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match input.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                let n = u64::from_be_bytes(n);
                if n >> 63 != 0 {
                    return Err(Violation::Protocol(
                        "a frame's 64-bit length has its top bit set",
                    ));
                }
                (n, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        match input.get(len..len + 4) {
            Some(k) => {
                len += 4;
                Some([k[0], k[1], k[2], k[3]])
            }
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        rsv: b0 & 0x70,
        opcode: b0 & 0x0F,
        mask,
        payload_len,
        len,
    }))
}

/// The code of a Close frame's payload (unmasked first when the agent masked it).
fn close_code(payload: &[u8], mask: Option<[u8; 4]>) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol(
            "a close frame carries a 1-byte payload",
        )),
        [a, b, ..] => {
            let (a, b) = match mask {
                Some(k) => (a ^ k[0], b ^ k[1]),
                None => (*a, *b),
            };
            Ok(Some(u16::from_be_bytes([a, b])))
        }
    }
}

/// Writes a frame header: FIN as given, no reserved bit, masked with `mask` if given.
fn put_header(out: &mut BytesMut, fin: bool, opcode: u8, len: u64, mask: Option<[u8; 4]>) {
    out.put_u8(if fin { 0x80 } else { 0 } | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.put_u8(mask_bit | len as u8),
        126..=0xFFFF => {
            out.put_u8(mask_bit | 126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(mask_bit | 127);
            out.put_u64(len);
        }
    }
    if let Some(mask) = mask {
        out.put_slice(&mask);
    }
}

/// A Close frame sidekey sends with `code` and `reason` (cut to fit 125 bytes), masked with
/// `mask` toward an upstream (a client's frames must be), unmasked toward the agent.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Bytes {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    if let Some(k) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    let mut out = BytesMut::with_capacity(6 + payload.len());
    put_header(&mut out, true, OP_CLOSE, payload.len() as u64, mask);
    out.extend_from_slice(&payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use sidekey_secret::Secret;

    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_frame: 1 << 20,
        max_message: 4 << 20,
    };

    /// A frame as a peer would write it; `mask` for an agent's.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_header(&mut out, fin, opcode, payload.len() as u64, mask);
        let mut p = payload.to_vec();
        if let Some(k) = mask {
            for (i, b) in p.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        out.extend_from_slice(&p);
        out.to_vec()
    }

    /// Decodes unmasked frames: (fin, opcode, payload) each.
    fn frames(mut bytes: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let h = parse_header(bytes).unwrap().expect("a whole header");
            let end = h.len + h.payload_len as usize;
            let mut payload = bytes[h.len..end].to_vec();
            if let Some(k) = h.mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= k[i % 4];
                }
            }
            out.push((h.fin, h.opcode, payload));
            bytes = &bytes[end..];
        }
        out
    }

    /// Feeds `input` split at every pair of points, checking that what comes out is the same.
    fn feed_every_split(
        from: Peer,
        needles: Option<Needles>,
        input: &[u8],
    ) -> Result<Vec<u8>, Violation> {
        let whole = {
            let mut relay = FrameRelay::new(from, LIMITS, needles.clone());
            let mut buf = BytesMut::from(input);
            let mut out = BytesMut::new();
            relay.feed(&mut buf, &mut out)?;
            assert!(buf.is_empty(), "a whole input is taken whole");
            out.to_vec()
        };
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let mut relay = FrameRelay::new(from, LIMITS, needles.clone());
                let mut buf = BytesMut::new();
                let mut out = BytesMut::new();
                for part in [&input[..a], &input[a..b], &input[b..]] {
                    buf.extend_from_slice(part);
                    relay.feed(&mut buf, &mut out)?;
                }
                assert!(buf.is_empty());
                // Masking may fragment differently; what the frames carry is the same.
                let payload = |bytes: &[u8]| -> Vec<u8> {
                    frames(bytes).into_iter().flat_map(|(_, _, p)| p).collect()
                };
                assert_eq!(payload(&out), payload(&whole), "split at {a}, {b}");
            }
        }
        Ok(whole)
    }

    fn needles(secret: &str) -> Needles {
        Needles::for_credential(&[&Secret::new(secret.to_string())], None)
    }

    #[test]
    fn agent_frames_pass_byte_for_byte() {
        let k = Some([1, 2, 3, 4]);
        let mut input = frame(false, OP_TEXT, b"hello ", k);
        input.extend(frame(true, OP_PING, b"p", k));
        input.extend(frame(true, OP_CONTINUATION, b"world", k));
        input.extend(frame(true, OP_CLOSE, &1000u16.to_be_bytes(), k));
        let out = feed_every_split(Peer::Agent, None, &input).unwrap();
        assert_eq!(out, input);
        let mut relay = FrameRelay::new(Peer::Agent, LIMITS, None);
        relay
            .feed(&mut BytesMut::from(&input[..]), &mut BytesMut::new())
            .unwrap();
        assert_eq!(relay.close(), Some(Some(1000)));
        assert_eq!(relay.messages(), 1);
    }

    #[test]
    fn a_credential_in_an_upstreams_frames_is_masked_across_frames_and_reads() {
        let secret = "tok-3f9a-secret";
        let mut input = frame(false, OP_TEXT, b"you sent tok-3f", None);
        input.extend(frame(true, OP_PING, b"tok-3f9a-secret", None));
        input.extend(frame(false, OP_CONTINUATION, b"9a-sec", None));
        input.extend(frame(
            true,
            OP_CONTINUATION,
            b"ret, and tok-3f9a-secret again",
            None,
        ));
        input.extend(frame(true, OP_BINARY, b"tok-3f9a-secret", None));
        let out = feed_every_split(Peer::Upstream, Some(needles(secret)), &input).unwrap();
        let got = frames(&out);
        // The text message, re-fragmented: first fragment TEXT, the rest continuations, the
        // last with FIN; the ping masked whole; the binary message masked.
        let text: Vec<u8> = got
            .iter()
            .filter(|(_, op, _)| matches!(*op, OP_TEXT | OP_CONTINUATION))
            .flat_map(|(_, _, p)| p.clone())
            .collect();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "you sent ***************, and *************** again"
        );
        let ops: Vec<u8> = got.iter().map(|(_, op, _)| *op).collect();
        assert_eq!(ops.iter().filter(|op| **op == OP_TEXT).count(), 1);
        assert_eq!(
            got.iter()
                .filter(|(fin, op, _)| *fin && matches!(*op, OP_TEXT | OP_CONTINUATION))
                .count(),
            1,
            "one message, one final fragment"
        );
        assert!(got.contains(&(true, OP_PING, b"***************".to_vec())));
        assert!(got.contains(&(true, OP_BINARY, b"***************".to_vec())));
        assert!(!out.windows(secret.len()).any(|w| w == secret.as_bytes()));
        // Nothing in the output starts the secret at a frame's end either.
        assert!(!out.windows(6).any(|w| w == b"tok-3f"));
    }

    #[test]
    fn without_a_credential_an_upstreams_frames_pass_byte_for_byte() {
        let mut input = frame(false, OP_BINARY, &[0u8; 300], None);
        input.extend(frame(true, OP_CONTINUATION, &[7u8; 70_000][..], None));
        let mut relay = FrameRelay::new(Peer::Upstream, LIMITS, Some(needles("")));
        let mut out = BytesMut::new();
        relay
            .feed(&mut BytesMut::from(&input[..]), &mut out)
            .unwrap();
        assert_eq!(&out[..], &input[..]);
        assert!(relay.at_boundary());
    }

    #[test]
    fn protocol_violations_are_refused_with_1002() {
        let k = Some([9, 9, 9, 9]);
        let cases: Vec<(Peer, Vec<u8>, &str)> = vec![
            (
                Peer::Agent,
                frame(true, OP_TEXT, b"x", None),
                "the agent sent an unmasked frame",
            ),
            (
                Peer::Upstream,
                frame(true, OP_TEXT, b"x", k),
                "the upstream sent a masked frame",
            ),
            (
                Peer::Agent,
                {
                    let mut f = frame(true, OP_TEXT, b"x", k);
                    f[0] |= 0x40; // RSV1: permessage-deflate, which was not negotiated
                    f
                },
                "reserved bit",
            ),
            (Peer::Agent, frame(true, 0x3, b"x", k), "unknown opcode"),
            (
                Peer::Agent,
                frame(false, OP_PING, b"x", k),
                "control frame is fragmented",
            ),
            (
                Peer::Agent,
                frame(true, OP_PING, &[0; 126], k),
                "longer than 125",
            ),
            (
                Peer::Agent,
                frame(true, OP_CONTINUATION, b"x", k),
                "no message to continue",
            ),
            (
                Peer::Agent,
                [
                    frame(false, OP_TEXT, b"x", k),
                    frame(true, OP_TEXT, b"y", k),
                ]
                .concat(),
                "new message began",
            ),
            (
                Peer::Agent,
                frame(true, OP_CLOSE, b"x", k),
                "1-byte payload",
            ),
            (
                Peer::Upstream,
                vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1],
                "top bit",
            ),
        ];
        for (from, input, want) in cases {
            let mut relay = FrameRelay::new(from, LIMITS, None);
            let err = relay
                .feed(&mut BytesMut::from(&input[..]), &mut BytesMut::new())
                .unwrap_err();
            assert!(err.to_string().contains(want), "{err} for {want}");
            assert_eq!(err.close_code(), CLOSE_PROTOCOL_ERROR);
            assert_eq!(err.audit_error(), "websocket_protocol_error");
        }
    }

    #[test]
    fn limits_are_checked_from_the_headers_before_the_payload_arrives() {
        let limits = FrameLimits {
            max_frame: 100,
            max_message: 150,
        };
        let k = Some([1, 1, 1, 1]);
        // Only the header of a too-large frame: refused already.
        let big = frame(true, OP_BINARY, &[0; 101], k);
        let mut relay = FrameRelay::new(Peer::Agent, limits, None);
        let err = relay
            .feed(&mut BytesMut::from(&big[..8]), &mut BytesMut::new())
            .unwrap_err();
        assert_eq!(
            err,
            Violation::FrameTooLarge {
                size: 101,
                max: 100
            }
        );
        assert_eq!(err.close_code(), CLOSE_TOO_BIG);
        // Frames within the limit, a message past it.
        let mut input = frame(false, OP_TEXT, &[b'a'; 100], k);
        input.extend(frame(true, OP_CONTINUATION, &[b'a'; 51], k));
        let mut relay = FrameRelay::new(Peer::Agent, limits, None);
        let mut out = BytesMut::new();
        let err = relay
            .feed(&mut BytesMut::from(&input[..]), &mut out)
            .unwrap_err();
        assert_eq!(err, Violation::MessageTooLarge { max: 150 });
        assert_eq!(out.len(), 106, "the first frame passed, the second did not");
        assert!(relay.at_boundary());
        // Exactly at the limits is fine.
        let mut input = frame(false, OP_TEXT, &[b'a'; 100], k);
        input.extend(frame(true, OP_CONTINUATION, &[b'a'; 50], k));
        let mut relay = FrameRelay::new(Peer::Agent, limits, None);
        relay
            .feed(&mut BytesMut::from(&input[..]), &mut BytesMut::new())
            .unwrap();
        assert_eq!(relay.messages(), 1);
    }

    #[test]
    fn close_frames_sidekey_sends_parse_back() {
        let k = [0xA1, 0xB2, 0xC3, 0xD4];
        let masked = close_frame(1009, "sidekey: message too large", Some(k));
        let plain = close_frame(1001, &"x".repeat(300), None);
        for (bytes, from) in [(&masked, Peer::Agent), (&plain, Peer::Upstream)] {
            let mut relay = FrameRelay::new(from, LIMITS, None);
            relay
                .feed(&mut BytesMut::from(&bytes[..]), &mut BytesMut::new())
                .unwrap();
            assert!(relay.close().is_some());
        }
        let got = frames(&masked);
        assert_eq!(got[0].2[..2], 1009u16.to_be_bytes());
        assert_eq!(&got[0].2[2..], b"sidekey: message too large");
        assert_eq!(frames(&plain)[0].2.len(), 125);
    }
}
