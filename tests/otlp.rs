//! OTLP span export (`traces:`): one span per request reaches a real OTLP/HTTP receiver that
//! decodes it with the OpenTelemetry project's protobuf definitions; the span is the parent the
//! upstream saw, continues the agent's trace, carries what the audit record says and no
//! credential; an unsampled trace exports nothing; a collector that fails does not touch the
//! requests; spans still queued at shutdown are sent.

use std::time::Duration;

use serde_json::Value;

use crate::common::otlp::OtlpReceiver;
use crate::common::*;

const AGENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const AGENT_SPAN: &str = "00f067aa0ba902b7";
const WAIT: Duration = Duration::from_secs(20);

fn traces_config(receiver: &OtlpReceiver) -> String {
    base_config(
        &[],
        "",
        &format!("traces:\n  otlp_endpoint: {}\n", receiver.endpoint()),
    )
}

/// Spans are batched for 5 s by default; the tests send them sooner.
const QUICK_EXPORT: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "100")];

fn record_at<'a>(records: &'a [Value], path: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["path"] == path)
        .unwrap_or_else(|| panic!("no record for {path}: {records:#?}"))
}

fn parent_upstream_saw(seen: &Recorded) -> (String, String, String) {
    let value = seen.header("traceparent").expect("traceparent forwarded");
    let parts: Vec<&str> = value.split('-').collect();
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[test]
fn one_span_per_request_continues_the_agents_trace_and_is_the_upstreams_parent() {
    let env = Env::new();
    let receiver = OtlpReceiver::start(0);
    let sk = Sidekey::start_with_env(&traces_config(&receiver), &env.vars(), QUICK_EXPORT);

    curl_via(
        &sk,
        &[
            "-H",
            &format!("traceparent: 00-{AGENT_TRACE}-{AGENT_SPAN}-01"),
            &format!("https://{API}/echo/continued?key=hunter2"),
        ],
    )
    .assert_status(200);
    curl_via(&sk, &[&format!("http://{PLAIN}/echo/started")]).assert_status(200);
    curl_via(
        &sk,
        &["-X", "DELETE", &format!("https://{API}/echo/refused")],
    )
    .assert_status(403);
    // The agent did not sample its trace: sidekey forwards that decision and exports nothing.
    curl_via(
        &sk,
        &[
            "-H",
            "traceparent: 00-11111111111111111111111111111111-2222222222222222-00",
            &format!("https://{API}/echo/unsampled"),
        ],
    )
    .assert_status(200);

    let records = sk.wait_request_records(4);
    let continued = record_at(&records, "/echo/continued?key=REDACTED");
    let span = receiver.wait_span_of(continued["request_id"].as_str().unwrap(), WAIT);
    let upstream = &env.upstream.requests_to("/echo/continued")[0];
    let (trace, parent, flags) = parent_upstream_saw(upstream);
    let s = &span["span"];
    assert_eq!(s["trace_id"], AGENT_TRACE, "{span:#}");
    assert_eq!(trace, AGENT_TRACE);
    assert_eq!(
        s["parent_span_id"], AGENT_SPAN,
        "the agent's span is the parent"
    );
    assert_eq!(
        s["span_id"],
        parent.as_str(),
        "the upstream's parent is this span"
    );
    assert_eq!(flags, "01");
    assert_eq!(s["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(s["name"], "GET api");
    assert_eq!(s["status"]["code"], "STATUS_CODE_UNSET");
    let start = s["start_time_unix_nano"].as_u64().unwrap();
    let end = s["end_time_unix_nano"].as_u64().unwrap();
    assert!(
        start > 1_700_000_000_000_000_000 && start <= end,
        "{span:#}"
    );
    let took_ms = (end - start) as f64 / 1e6;
    let audit_ms = continued["duration_ms"].as_f64().unwrap();
    assert!(
        (took_ms - audit_ms).abs() < 5.0,
        "span {took_ms} ms, audit {audit_ms} ms"
    );
    let a = &s["attributes"];
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.scheme"], "https");
    assert_eq!(a["server.address"], API);
    assert_eq!(a["server.port"], 443);
    assert_eq!(a["url.path"], "/echo/continued");
    assert_eq!(a["url.query"], "key=REDACTED", "query values never leave");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["sidekey.route"], "api");
    assert_eq!(a["sidekey.decision"], "allow");
    assert_eq!(a["sidekey.credential"], "demo");
    assert_eq!(a["sidekey.listener"], "forward");
    assert!(a.get("error.type").is_none(), "{a:#}");
    assert_eq!(span["resource"]["service.name"], "sidekey");
    assert_eq!(span["scope"]["name"], "sidekey");

    let started = record_at(&records, "/echo/started");
    let span = receiver.wait_span_of(started["request_id"].as_str().unwrap(), WAIT);
    let (trace, parent, _) = parent_upstream_saw(&env.upstream_http.only_request());
    assert_eq!(span["span"]["trace_id"], trace.as_str());
    assert_eq!(
        span["span"]["trace_id"], started["trace_id"],
        "the audit names it"
    );
    assert_eq!(span["span"]["span_id"], parent.as_str());
    assert_eq!(
        span["span"]["parent_span_id"], "",
        "a trace sidekey started: a root"
    );
    assert_eq!(span["span"]["attributes"]["url.scheme"], "http");

    let refused = record_at(&records, "/echo/refused");
    let code = refused["code"].as_str().expect("a refusal code");
    let span = receiver.wait_span_of(refused["request_id"].as_str().unwrap(), WAIT);
    assert_eq!(span["span"]["status"]["code"], "STATUS_CODE_ERROR");
    assert_eq!(span["span"]["status"]["message"], code);
    assert_eq!(span["span"]["attributes"]["error.type"], code);
    assert_eq!(span["span"]["attributes"]["sidekey.decision"], "deny");
    assert_eq!(span["span"]["attributes"]["http.response.status_code"], 403);

    // Sent after the unsampled request: once its span is in, the unsampled one would be too.
    curl_via(&sk, &[&format!("https://{API}/echo/after")]).assert_status(200);
    let records = sk.wait_request_records(5);
    let after = record_at(&records, "/echo/after");
    receiver.wait_span_of(after["request_id"].as_str().unwrap(), WAIT);
    let unsampled = record_at(&records, "/echo/unsampled");
    let spans = receiver.spans();
    assert!(
        spans
            .iter()
            .all(|s| s["span"]["attributes"]["sidekey.request_id"] != unsampled["request_id"]),
        "an unsampled trace exported a span"
    );
    let (_, _, flags) = parent_upstream_saw(&env.upstream.requests_to("/echo/unsampled")[0]);
    assert_eq!(flags, "00", "the agent's sampling decision is forwarded");
    assert_eq!(spans.len(), 4, "one span per sampled request: {spans:#?}");
    assert!(receiver.errors().is_empty(), "{:#?}", receiver.errors());

    // No credential in any span.
    let token = upstream
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .expect("the upstream got the credential");
    let text = serde_json::to_string(&spans).unwrap();
    assert!(!text.contains(token), "a span carries the credential");
    assert!(!text.contains("hunter2"), "a span carries a query value");
}

#[test]
fn a_failing_collector_loses_spans_not_requests_and_shutdown_sends_what_is_queued() {
    let env = Env::new();
    let receiver = OtlpReceiver::start(0);
    let mut sk = Sidekey::start_with_env(&traces_config(&receiver), &env.vars(), QUICK_EXPORT);
    // The request ID sidekey answered with, once its record is written.
    let get = |sk: &Sidekey, path: &str| {
        let res = curl_via(sk, &[&format!("https://{API}{path}")]);
        res.assert_status(200);
        let id = res
            .header("x-sidekey-request-id")
            .expect("request id")
            .to_string();
        sk.wait_records_of(std::slice::from_ref(&id));
        id
    };
    let refused = |r: &OtlpReceiver| r.lines().iter().filter(|v| v["event"] == "refused").count();

    // One refusal (a collector restarting): the export is retried and the span arrives.
    receiver.fail_next(1);
    receiver.wait_span_of(&get(&sk, "/echo/retried"), WAIT);
    assert_eq!(refused(&receiver), 1);

    // Refused past the retries (1 + 3 attempts): that batch is dropped and logged; requests
    // are served all along, and the next batch gets through.
    receiver.fail_next(4);
    let lost = get(&sk, "/echo/lost");
    sk.wait_stderr(|line| line.contains("cannot export spans"), 1, WAIT);
    assert_eq!(refused(&receiver), 5);
    receiver.wait_span_of(&get(&sk, "/echo/after"), WAIT);
    sk.wait_stderr(|line| line.contains("spans are exported again"), 1, WAIT);
    assert!(
        receiver
            .spans()
            .iter()
            .all(|s| s["span"]["attributes"]["sidekey.request_id"] != lost.as_str()),
        "a batch refused past its retries was still delivered"
    );

    // A collector that is not there at all: requests are served as before.
    let gone = OtlpReceiver::start(0);
    let endpoint = gone.endpoint();
    drop(gone);
    let config = base_config(&[], "", &format!("traces:\n  otlp_endpoint: {endpoint}\n"));
    let down = Sidekey::start_with_env(&config, &env.vars(), QUICK_EXPORT);
    for i in 0..5 {
        get(&down, &format!("/echo/down{i}"));
    }
    down.wait_stderr(|line| line.contains("cannot export spans"), 1, WAIT);

    // Spans still queued at shutdown are sent before the process exits (a batch delay far
    // longer than the test: only the shutdown flush can send it).
    let receiver = OtlpReceiver::start(0);
    let mut slow = Sidekey::start_with_env(
        &traces_config(&receiver),
        &env.vars(),
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    let queued = get(&slow, "/echo/queued");
    std::thread::sleep(Duration::from_millis(300));
    assert!(receiver.spans().is_empty(), "sent before shutdown");
    slow.terminate();
    receiver.wait_span_of(&queued, WAIT);
    sk.terminate();
}
