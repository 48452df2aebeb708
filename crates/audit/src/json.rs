//! The request record's JSON, written field by field: the same bytes as its derived
//! `Serialize` through serde_json (a test holds the two together), at a fraction of the cost —
//! a string that needs no escape (nearly all of them) is checked in one pass and copied whole,
//! where serde_json looks each byte up on its own. One record is written per request, so this is
//! on the request path; the other records keep the derived serializer.

use serde::Serialize;

use crate::{HexId, Outcome, RequestRecord};

/// Whether `b` must be escaped in a JSON string (serde_json escapes exactly these).
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any byte of `s` must be escaped: eight bytes at a time (a byte below 0x20, or equal
/// to a quote or a backslash, found with the usual word-at-a-time tests, exact for a yes or no),
/// the last few one by one. Byte by byte cost five instructions a byte, on every string of
/// every request's audit line.
fn needs_any_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero (`y` for "equal to the pattern"), or below `n` for `below`.
    let zero = |y: u64| y.wrapping_sub(ONES) & !y;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x;
    let mut chunks = s.chunks_exact(8);
    let mut found = 0u64;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        found |= below(x, 0x20)
            | zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')));
    }
    found & HIGHS != 0 || chunks.remainder().iter().any(|&b| needs_escape(b))
}

/// `s` as a JSON string.
fn string(out: &mut Vec<u8>, s: &str) {
    if !needs_any_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        value(out, s);
    }
}

/// One of sidekey's own names (a listener, scheme, decision or error code: literals in its
/// source, nothing to escape) as a JSON string, without looking for characters to escape.
fn name(out: &mut Vec<u8>, s: &'static str) {
    debug_assert!(!needs_any_escape(s.as_bytes()), "{s}");
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// An ID's hex digits as a JSON string: nothing to escape, no UTF-8 check.
fn hex<const N: usize>(out: &mut Vec<u8>, id: &HexId<N>) {
    out.reserve(N + 2);
    out.push(b'"');
    out.extend_from_slice(id.as_bytes());
    out.push(b'"');
}

fn optional(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Any value through serde_json (a float, a list, a nested record, a string to escape).
fn value<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing to a Vec cannot fail, and these values serialize without error.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// `,"name":` (the first field is written without its comma), as one literal: one copy.
macro_rules! key {
    ($out:expr, $name:literal) => {
        $out.extend_from_slice(key!($name))
    };
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}

/// A string field serde skips when it is None: its key and value when it is there.
fn present(out: &mut Vec<u8>, key: &[u8], v: Option<&str>) {
    if let Some(v) = v {
        out.extend_from_slice(key);
        string(out, v);
    }
}

/// The record as a JSON object, as `serde_json::to_writer(out, record)` writes it.
pub(crate) fn request(out: &mut Vec<u8>, r: &RequestRecord) {
    out.extend_from_slice(b"{\"request_id\":");
    hex(out, &r.request_id);
    key!(out, "listener");
    name(out, r.listener);
    key!(out, "route");
    optional(out, r.route.as_deref());
    key!(out, "credential");
    optional(out, r.credential.as_deref());
    key!(out, "credential_id");
    optional(out, r.credential_id.as_deref());
    key!(out, "issuer");
    optional(out, r.issuer.as_deref());
    key!(out, "method");
    string(out, &r.method);
    key!(out, "scheme");
    name(out, r.scheme);
    key!(out, "host");
    string(out, &r.host);
    key!(out, "port");
    number(out, u64::from(r.port));
    key!(out, "path");
    string(out, &r.path);
    key!(out, "decision");
    name(
        out,
        match r.decision {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Tunnel => "tunnel",
        },
    );
    key!(out, "code");
    match r.code {
        Some(code) => name(out, code),
        None => out.extend_from_slice(b"null"),
    }
    key!(out, "status");
    match r.status {
        Some(status) => number(out, u64::from(status)),
        None => out.extend_from_slice(b"null"),
    }
    key!(out, "bytes_in");
    number(out, r.bytes_in);
    key!(out, "bytes_out");
    number(out, r.bytes_out);
    key!(out, "duration_ms");
    value(out, &r.duration_ms);
    key!(out, "task_id");
    optional(out, r.task_id.as_deref());
    if let Some(trace_id) = &r.trace_id {
        key!(out, "trace_id");
        hex(out, trace_id);
    }
    present(out, key!("sub"), r.sub.as_deref());
    present(out, key!("grant_id"), r.grant_id.as_deref());
    present(out, key!("parent_grant"), r.parent_grant.as_deref());
    present(out, key!("on_behalf_of"), r.on_behalf_of.as_deref());
    if !r.act.is_empty() {
        key!(out, "act");
        value(out, &r.act);
    }
    key!(out, "error");
    match r.error {
        Some(error) => name(out, error),
        None => out.extend_from_slice(b"null"),
    }
    present(
        out,
        key!("rejected_credential_id"),
        r.rejected_credential_id.as_deref(),
    );
    if r.retried {
        key!(out, "retried");
        out.extend_from_slice(b"true");
    }
    present(
        out,
        key!("client_certificate"),
        r.client_certificate.as_deref(),
    );
    present(
        out,
        key!("client_certificate_id"),
        r.client_certificate_id.as_deref(),
    );
    if let Some(cedar) = &r.cedar {
        key!(out, "cedar");
        value(out, cedar);
    }
    if let Some(websocket) = &r.websocket {
        key!(out, "websocket");
        value(out, websocket);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_word_at_a_time_check_agrees_with_the_byte_check_for_every_byte_anywhere() {
        for len in [1, 7, 8, 9, 16, 17, 31] {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert_eq!(
                        needs_any_escape(&s),
                        needs_escape(b),
                        "byte {b:#04x} at {at} of {len}"
                    );
                }
            }
        }
        // Bytes that need no escape, next to each other in every lane: never a false yes.
        let clean: Vec<u8> = (0x20..=0xffu8).filter(|&b| !needs_escape(b)).collect();
        for start in 0..8 {
            assert!(!needs_any_escape(&clean[start..]));
        }
        assert!(!needs_any_escape(b""));
    }
    use crate::{CedarDecision, RequestId, WebSocketEnd};

    /// A small deterministic generator (xorshift), so that a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn coin(&mut self) -> bool {
            self.next() & 1 == 1
        }

        /// A string from an alphabet with everything that needs an escape, and more.
        fn text(&mut self) -> String {
            const PIECES: &[&str] = &[
                "a",
                "Z",
                "0",
                "/",
                "?",
                "=",
                "&",
                " ",
                "\"",
                "\\",
                "\n",
                "\t",
                "\r",
                "\u{0}",
                "\u{1f}",
                "\u{7f}",
                "é",
                "€",
                "😀",
                "\u{2028}",
                "REDACTED",
                "api.example",
            ];
            let len = self.next() % 12;
            (0..len)
                .map(|_| PIECES[(self.next() % PIECES.len() as u64) as usize])
                .collect()
        }

        fn maybe(&mut self) -> Option<String> {
            self.coin().then(|| self.text())
        }
    }

    fn record(rng: &mut Rng) -> RequestRecord {
        let mut r = RequestRecord::new(
            RequestId::of(u128::from(rng.next()) << 64 | u128::from(rng.next())),
            if rng.coin() { "forward" } else { "routes" },
            rng.text().into(),
            ("https", rng.text().into(), (rng.next() % 65536) as u16),
            rng.text(),
        );
        r.route = rng.maybe().map(Arc::from);
        r.credential = rng.maybe().map(Arc::from);
        r.credential_id = rng.maybe().map(Arc::from);
        r.issuer = rng.maybe().map(Arc::from);
        r.decision = match rng.next() % 3 {
            0 => Outcome::Allow,
            1 => Outcome::Deny,
            _ => Outcome::Tunnel,
        };
        r.code = rng.coin().then_some("credential_unavailable");
        r.status = rng.coin().then(|| (rng.next() % 600) as u16);
        r.bytes_in = rng.next() >> (rng.next() % 64);
        r.bytes_out = rng.next() >> (rng.next() % 64);
        r.duration_ms = match rng.next() % 4 {
            0 => 0.0,
            1 => (rng.next() % 100_000) as f64 / 1000.0,
            2 => 1e-7,
            _ => rng.next() as f64 / 3.0,
        };
        r.task_id = rng.maybe();
        r.trace_id = rng.coin().then(|| HexId::of(u128::from(rng.next())));
        r.sub = rng.maybe();
        r.grant_id = rng.maybe();
        r.parent_grant = rng.maybe();
        r.on_behalf_of = rng.maybe();
        r.act = (0..rng.next() % 3).map(|_| rng.text()).collect();
        r.error = rng.coin().then_some("client_aborted");
        r.rejected_credential_id = rng.maybe();
        r.retried = rng.coin();
        r.client_certificate = rng.maybe().map(Arc::from);
        r.client_certificate_id = rng.maybe();
        r.cedar = rng.coin().then(|| CedarDecision {
            decision: "deny",
            policies: (0..rng.next() % 3).map(|_| rng.text()).collect(),
        });
        r.websocket = rng.coin().then(|| WebSocketEnd {
            close_code: rng.coin().then_some(1000),
            closed_by: rng.coin().then_some("agent"),
            messages_in: rng.next() % 10,
            messages_out: rng.next() % 10,
        });
        r
    }

    #[test]
    fn writes_the_same_bytes_as_the_derived_serializer() {
        let mut rng = Rng(0x005e_ed0f_51de_5eed);
        for _ in 0..5_000 {
            let r = record(&mut rng);
            let mut out = Vec::new();
            request(&mut out, &r);
            let expected = serde_json::to_vec(&r).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected),
                "{r:?}"
            );
        }
    }
}
