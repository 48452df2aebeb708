//! W3C Trace Context (`traceparent`, `tracestate`): sidekey continues the agent's trace — same
//! trace ID, its own span as the upstream request's parent — or starts one when the agent sent
//! none (or an invalid one), so every upstream call and its audit record share a trace ID.
//! Pure: the fresh IDs are passed in.

use http::header::{HeaderMap, HeaderName, HeaderValue};
pub use sidekey_audit::HexId;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// A `tracestate` longer than this is dropped (the spec lets a participant truncate; dropping
/// is the simple safe form).
const MAX_TRACESTATE: usize = 512;

/// The trace a request is part of, as forwarded upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: HexId<32>,
    /// sidekey's span: the upstream request's parent. 16 lower-case hex digits.
    pub span_id: HexId<16>,
    /// The agent's span, when the trace was continued.
    pub parent_span_id: Option<HexId<16>>,
    pub sampled: bool,
    /// The agent's `tracestate`, forwarded with a continued trace.
    tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// Continues the trace of a valid `traceparent` in `headers`, else starts one (sampled).
    /// `trace_id` and `span_id` are fresh random IDs; the trace ID is used only for a new trace.
    pub fn continue_or_start(headers: &HeaderMap, trace_id: u128, span_id: u64) -> TraceContext {
        // Never all zeros (invalid in the spec).
        let span_id = HexId::of(u128::from(span_id.max(1)));
        match parse(headers) {
            Some((trace, parent, flags)) => TraceContext {
                trace_id: trace,
                span_id,
                parent_span_id: Some(parent),
                sampled: flags & 1 == 1,
                tracestate: tracestate(headers),
            },
            None => TraceContext {
                trace_id: HexId::of(trace_id.max(1)),
                span_id,
                parent_span_id: None,
                sampled: true,
                tracestate: None,
            },
        }
    }

    /// Replaces the agent's trace headers by sidekey's span of the same trace.
    pub fn apply(&self, headers: &mut HeaderMap) {
        // 00-<32 hex>-<16 hex>-<2 hex>: 55 bytes, built on the stack; the header value's copy is
        // the one allocation.
        let mut value = *b"00-________________________________-________________-00";
        value[3..35].copy_from_slice(self.trace_id.as_bytes());
        value[36..52].copy_from_slice(self.span_id.as_bytes());
        if self.sampled {
            value[54] = b'1';
        }
        // `insert` replaces every value the agent sent under the name.
        match HeaderValue::from_bytes(&value) {
            Ok(value) => {
                headers.insert(TRACEPARENT, value);
            }
            Err(_) => {
                headers.remove(&TRACEPARENT);
            }
        }
        match &self.tracestate {
            Some(state) => {
                headers.insert(TRACESTATE, state.clone());
            }
            // Looked for first: most requests carry none, and a look is cheaper than a removal.
            None if crate::has(headers, &TRACESTATE) => {
                headers.remove(&TRACESTATE);
            }
            None => {}
        }
    }
}

/// (trace ID, parent span ID, flags) of exactly one valid `traceparent` (version 00, or a later
/// version's first four fields); anything else is no context.
fn parse(headers: &HeaderMap) -> Option<(HexId<32>, HexId<16>, u8)> {
    // Most requests carry no trace context: a look before the hashed look-up of every value.
    if !crate::has(headers, &TRACEPARENT) {
        return None;
    }
    let mut all = headers.get_all(&TRACEPARENT).iter();
    let value = all.next()?.to_str().ok()?.trim();
    if all.next().is_some() {
        return None;
    }
    let (head, rest) = (value.get(..55)?, value.get(55..)?);
    let mut fields = head.split('-');
    let (version, trace, parent, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let (Some(_), Some(trace), Some(parent), Some(_)) = (
        HexId::<2>::parse(version),
        HexId::<32>::parse(trace),
        HexId::<16>::parse(parent),
        HexId::<2>::parse(flags),
    ) else {
        return None;
    };
    if version == "ff" {
        return None;
    }
    // Version 00 is exactly 55 characters; later versions may append `-…` fields.
    if (version == "00" && !rest.is_empty()) || (!rest.is_empty() && !rest.starts_with('-')) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace, parent, flags))
}

fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let values: Vec<&str> = headers
        .get_all(&TRACESTATE)
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<_, _>>()
        .ok()?;
    let joined = values.join(",");
    if joined.is_empty() || joined.len() > MAX_TRACESTATE {
        return None;
    }
    HeaderValue::from_str(&joined).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_sidekeys_span() {
        let headers = with(&[("traceparent", PARENT), ("tracestate", "congo=t61rcWkgMzE")]);
        let t = TraceContext::continue_or_start(&headers, 7, 0xabc);
        assert_eq!(t.trace_id.as_str(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(t.parent_span_id.as_deref(), Some("b7ad6b7169203331"));
        assert_eq!(t.span_id.as_str(), "0000000000000abc");
        let mut out = headers.clone();
        t.apply(&mut out);
        assert_eq!(
            out.get("traceparent").unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000abc-01"
        );
        assert_eq!(out.get("tracestate").unwrap(), "congo=t61rcWkgMzE");
        // Not sampled stays not sampled.
        let unsampled = PARENT.replace("-01", "-00");
        let t = TraceContext::continue_or_start(&with(&[("traceparent", &unsampled)]), 7, 1);
        assert!(!t.sampled);
    }

    #[test]
    fn anything_else_starts_a_new_trace_and_drops_the_agents_headers() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "0x-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            let headers = with(&[("traceparent", bad), ("tracestate", "a=b")]);
            let t = TraceContext::continue_or_start(&headers, 0x1234, 5);
            assert_eq!(
                t.trace_id.as_str(),
                "00000000000000000000000000001234",
                "{bad:?}"
            );
            assert_eq!(t.parent_span_id, None);
            let mut out = headers.clone();
            t.apply(&mut out);
            assert_eq!(out.get_all("traceparent").iter().count(), 1);
            assert!(out.get("tracestate").is_none(), "{bad:?}");
        }
        // A tracestate without a traceparent: a new trace, and the state goes too.
        let alone = with(&[("tracestate", "a=b"), ("x-other", "1")]);
        let t = TraceContext::continue_or_start(&alone, 0x1234, 5);
        assert_eq!(t.parent_span_id, None);
        let mut out = alone.clone();
        t.apply(&mut out);
        assert!(out.get("tracestate").is_none());
        assert_eq!(out.get_all("traceparent").iter().count(), 1);
        // Two traceparent headers: ambiguous, a new trace.
        let two = with(&[("traceparent", PARENT), ("traceparent", PARENT)]);
        assert_eq!(
            TraceContext::continue_or_start(&two, 9, 5).parent_span_id,
            None
        );
        // A later version with more fields is read by its first four.
        let v1 = format!("{}-future", PARENT.replacen("00-", "01-", 1));
        let t = TraceContext::continue_or_start(&with(&[("traceparent", &v1)]), 9, 5);
        assert_eq!(t.trace_id.as_str(), "0af7651916cd43dd8448eb211c80319c");
    }
}
