//! W3C trace context: the agent's `traceparent` is continued (same trace, sidekey's span as the
//! upstream request's parent), one is started when the agent sent none, and the trace ID is in
//! the audit record.

use crate::common::*;

const AGENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn traceparent(seen: &Recorded) -> (String, String, String) {
    let value = seen.header("traceparent").expect("traceparent forwarded");
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[test]
fn the_agents_trace_is_continued_and_a_missing_one_started() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    curl_via(
        &sk,
        &[
            "-H",
            &format!("traceparent: 00-{AGENT_TRACE}-b7ad6b7169203331-01"),
            "-H",
            "tracestate: congo=t61rcWkgMzE",
            &format!("https://{API}/echo/continued"),
        ],
    )
    .assert_status(200);
    curl_via(&sk, &[&format!("http://{PLAIN}/echo/started")]).assert_status(200);
    curl_via(
        &sk,
        &[
            "-H",
            "traceparent: 00-not-a-trace-01",
            &format!("https://{API}/echo/invalid"),
        ],
    )
    .assert_status(200);

    let continued = &env.upstream.requests_to("/echo/continued")[0];
    let (trace, span, flags) = traceparent(continued);
    assert_eq!(trace, AGENT_TRACE);
    assert_ne!(
        span, "b7ad6b7169203331",
        "sidekey's own span is the parent upstream"
    );
    assert_eq!(span.len(), 16);
    assert_eq!(flags, "01");
    assert_eq!(continued.header("tracestate"), Some("congo=t61rcWkgMzE"));

    let started = env.upstream_http.only_request();
    let (new_trace, _, flags) = traceparent(&started);
    assert_eq!(new_trace.len(), 32);
    assert_ne!(new_trace, AGENT_TRACE);
    assert_eq!(flags, "01");
    let invalid = &env.upstream.requests_to("/echo/invalid")[0];
    let (replaced, _, _) = traceparent(invalid);
    assert_ne!(replaced, new_trace, "each started trace is its own");
    assert_eq!(
        invalid.header_all("traceparent").len(),
        1,
        "the agent's is replaced"
    );

    // The audit records carry the trace each request went under.
    let records = sk.wait_request_records(3);
    let trace_of = |path: &str| {
        records
            .iter()
            .find(|r| r["path"] == path)
            .map(|r| r["trace_id"].as_str().unwrap_or_default().to_string())
            .expect(path)
    };
    assert_eq!(trace_of("/echo/continued"), AGENT_TRACE);
    assert_eq!(trace_of("/echo/started"), new_trace);
    assert_eq!(trace_of("/echo/invalid"), replaced);
}
