//! `/metrics` on the admin listener (docs/architecture.md, "Metrics"): the text format parsed
//! strictly, request counters that move exactly as the audit trail does, bounded labels under
//! a flood of refused hosts, credential events and expiry, agent connections, reloads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape.
#[derive(Debug)]
pub(crate) struct Scrape {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// `{a="x",b="y"}` at the start of `s`; returns the labels and the rest after `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("no {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or(format!("no = in {rest:?}"))?;
        let name = &rest[..eq];
        if !is_name(name) || name.starts_with("__") {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or(format!("label {name} value not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {name} value not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label {name}")),
                },
                Some((_, '\n')) => return Err(format!("newline in label {name}")),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} at {rest:?}"));
        }
    }
}

/// The family a sample belongs to: a histogram's `_bucket`, `_sum`, `_count` are its own.
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    name
}

/// Parses the text exposition format 0.0.4 strictly: every line is a HELP, a TYPE or a sample;
/// a family's TYPE comes once and before its samples; no sample repeats; histograms have `le`
/// buckets ending at `+Inf` equal to `_count`. And sidekey's conventions: every name starts
/// `sidekey_`, counters end `_total`.
fn parse(text: &str) -> Result<Scrape, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("does not end with a newline".into());
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped = BTreeSet::new();
    let mut sampled = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, name, rest) = (parts.next(), parts.next(), parts.next());
            let name = name.ok_or_else(|| at("comment without a name".into()))?;
            if !is_name(name) {
                return Err(at(format!("bad name {name:?}")));
            }
            match kind {
                Some("HELP") => {
                    if !helped.insert(name.to_string()) {
                        return Err(at("HELP twice".into()));
                    }
                }
                Some("TYPE") => {
                    let t = rest.ok_or_else(|| at("TYPE without a type".into()))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(at(format!("unknown type {t}")));
                    }
                    if sampled.contains(name) {
                        return Err(at("TYPE after its samples".into()));
                    }
                    if types.insert(name.to_string(), t.to_string()).is_some() {
                        return Err(at("TYPE twice".into()));
                    }
                }
                _ => return Err(at("unknown comment".into())),
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let fam = family(name, &types).to_string();
        let t = types
            .get(&fam)
            .ok_or_else(|| at(format!("no TYPE for {fam}")))?;
        if !fam.starts_with("sidekey_") {
            return Err(at("not a sidekey_ metric".into()));
        }
        if t == "counter" && !fam.ends_with("_total") {
            return Err(at("a counter not named _total".into()));
        }
        if t == "histogram" && name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(at("a bucket without le".into()));
        }
        if !seen.insert((name.to_string(), labels.clone())) {
            return Err(at("sample repeated".into()));
        }
        sampled.insert(fam);
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    let scrape = Scrape { samples, types };
    // Each histogram series: buckets rise, the +Inf bucket is the count.
    for s in scrape.samples.iter().filter(|s| s.name.ends_with("_count")) {
        let base = s.name.trim_end_matches("_count");
        if scrape.types.get(base).is_some_and(|t| t == "histogram") {
            let mut with_inf = s.labels.clone();
            with_inf.insert("le".into(), "+Inf".into());
            let inf = scrape.exact(&format!("{base}_bucket"), &with_inf);
            if inf != Some(s.value) {
                return Err(format!(
                    "{base}{:?}: +Inf bucket {inf:?} != count {}",
                    s.labels, s.value
                ));
            }
        }
    }
    Ok(scrape)
}

impl Scrape {
    pub(crate) fn exact(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && &s.labels == labels)
            .map(|s| s.value)
    }

    /// The sum of `name` over the series whose labels include `labels` (0 if none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Every series of `name`, by labels.
    fn series(&self, name: &str) -> BTreeMap<BTreeMap<String, String>, f64> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| (s.labels.clone(), s.value))
            .collect()
    }
}

/// `GET /metrics` on the admin listener: 200, the text format's content type, parsed strictly.
#[track_caller]
pub(crate) fn scrape(sk: &Sidekey) -> Scrape {
    scrape_at(sk.admin)
}

/// `GET /metrics` at `addr`, as [`scrape`].
#[track_caller]
fn scrape_at(addr: std::net::SocketAddr) -> Scrape {
    let resp = raw_request(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .expect("GET /metrics");
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4"),
        "{:?}",
        resp.headers
    );
    let text = resp.body_str();
    parse(&text).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"))
}

pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What `sidekey_requests_total` should count for a request record.
fn request_series(r: &Value) -> BTreeMap<String, String> {
    let class = match r["status"].as_u64() {
        Some(s) => format!("{}xx", s / 100),
        None => String::new(),
    };
    labels(&[
        ("listener", r["listener"].as_str().unwrap()),
        ("route", r["route"].as_str().unwrap_or("")),
        ("decision", r["decision"].as_str().unwrap()),
        ("code", r["code"].as_str().unwrap_or("")),
        ("status_class", &class),
    ])
}

fn delta(
    before: &BTreeMap<BTreeMap<String, String>, f64>,
    after: &BTreeMap<BTreeMap<String, String>, f64>,
) -> BTreeMap<BTreeMap<String, String>, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

#[test]
fn request_counters_move_exactly_as_the_audit_trail_does() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let before = scrape(&sk);
    let records_before = sk.request_records().len();
    assert_eq!(records_before, 0);

    // N = 5 allowed: 3 plain HTTP (route plain), 2 intercepted HTTPS (route api).
    for i in 0..3 {
        let res = curl(&[
            "-x",
            &sk.proxy_url(),
            &format!("http://plain.test.local/echo/m{i}"),
        ]);
        assert_eq!(res.status, 200, "{res:#?}");
    }
    for i in 0..2 {
        let res = curl_via(&sk, &[&format!("https://api.test.local/echo/m{i}")]);
        assert_eq!(res.status, 200, "{res:#?}");
    }
    // M = 4 refused, of known codes.
    for _ in 0..2 {
        curl(&["-x", &sk.proxy_url(), "http://evil.test.local/x"])
            .expect_refusal(403, "host_not_allowed");
    }
    curl(&[
        "-x",
        &sk.proxy_url(),
        "-X",
        "DELETE",
        "http://plain.test.local/echo/x",
    ])
    .expect_refusal(403, "method_not_allowed");
    curl_via(&sk, &["https://paths.test.local/elsewhere"]).expect_refusal(403, "path_not_allowed");

    let records = sk.expect_request_records(9);
    let after = scrape(&sk);

    // The audit trail's count of each label set, and the metric's delta: the same.
    let mut from_audit: BTreeMap<BTreeMap<String, String>, f64> = BTreeMap::new();
    for r in &records {
        *from_audit.entry(request_series(r)).or_default() += 1.0;
    }
    let moved = delta(
        &before.series("sidekey_requests_total"),
        &after.series("sidekey_requests_total"),
    );
    assert_eq!(moved, from_audit, "records:\n{records:#?}");

    // And what they are, spelled out.
    let n = |pairs: &[(&str, &str)]| after.sum("sidekey_requests_total", pairs);
    assert_eq!(
        n(&[
            ("route", "plain"),
            ("decision", "allow"),
            ("code", ""),
            ("status_class", "2xx"),
            ("listener", "forward")
        ]),
        3.0
    );
    assert_eq!(
        n(&[
            ("route", "api"),
            ("decision", "allow"),
            ("code", ""),
            ("status_class", "2xx")
        ]),
        2.0
    );
    assert_eq!(n(&[("decision", "allow")]), 5.0);
    assert_eq!(
        n(&[
            ("code", "host_not_allowed"),
            ("decision", "deny"),
            ("status_class", "4xx")
        ]),
        2.0
    );
    assert_eq!(
        n(&[("code", "method_not_allowed"), ("status_class", "4xx")]),
        1.0
    );
    assert_eq!(
        n(&[("code", "path_not_allowed"), ("status_class", "4xx")]),
        1.0
    );
    assert_eq!(n(&[]), 9.0);

    // Durations and bytes, per route, as the records say.
    for route in ["plain", "api", ""] {
        let of_route: Vec<&Value> = records
            .iter()
            .filter(|r| r["route"].as_str().unwrap_or("") == route)
            .collect();
        let count = after.sum(
            "sidekey_request_duration_seconds_count",
            &[("route", route)],
        ) - before.sum(
            "sidekey_request_duration_seconds_count",
            &[("route", route)],
        );
        assert_eq!(count, of_route.len() as f64, "route {route:?}");
        let seconds: f64 = of_route
            .iter()
            .map(|r| r["duration_ms"].as_f64().unwrap() / 1000.0)
            .sum();
        let sum = after.sum("sidekey_request_duration_seconds_sum", &[("route", route)]);
        assert!(
            (sum - seconds).abs() < 1e-6,
            "route {route:?}: {sum} vs {seconds}"
        );
        for (direction, field) in [("in", "bytes_in"), ("out", "bytes_out")] {
            let bytes: u64 = of_route.iter().map(|r| r[field].as_u64().unwrap()).sum();
            assert_eq!(
                after.sum(
                    "sidekey_request_bytes_total",
                    &[("route", route), ("direction", direction)]
                ),
                bytes as f64,
                "route {route:?} {direction}"
            );
        }
    }
    assert!(
        after.sum(
            "sidekey_request_bytes_total",
            &[("route", "plain"), ("direction", "out")]
        ) > 0.0
    );

    // The phases: a credential wait for each request whose route has a credential (the 5
    // allowed; the refused ones never got that far), an upstream time for each request sent.
    let phase = |name: &str, route: &str| {
        after.sum(name, &[("route", route)]) - before.sum(name, &[("route", route)])
    };
    for (route, n) in [("plain", 3.0), ("api", 2.0), ("", 0.0)] {
        assert_eq!(
            phase("sidekey_credential_wait_seconds_count", route),
            n,
            "{route:?}"
        );
        assert_eq!(
            phase("sidekey_upstream_duration_seconds_count", route),
            n,
            "{route:?}"
        );
    }
    assert!(phase("sidekey_upstream_duration_seconds_sum", "api") > 0.0);

    // Leaves: the first CONNECT to api.test.local minted one, the second found it cached;
    // paths.test.local minted its own.
    let leaves = |source: &str| {
        after.sum("sidekey_tls_leaves_total", &[("source", source)])
            - before.sum("sidekey_tls_leaves_total", &[("source", source)])
    };
    assert_eq!((leaves("minted"), leaves("cached")), (2.0, 1.0));

    // Every record the trail holds, counted by type.
    let audit = sk.audit();
    for kind in ["request", "credential", "config"] {
        let in_trail = audit.iter().filter(|r| r["type"] == kind).count();
        assert_eq!(
            after.sum("sidekey_audit_records_total", &[("type", kind)]),
            in_trail as f64,
            "{kind}"
        );
    }
    assert_eq!(after.sum("sidekey_audit_dropped_total", &[]), 0.0);
}

#[test]
fn a_flood_of_refused_hosts_and_route_names_adds_no_label_value() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    // One refusal first, so that its series exists before the flood.
    curl(&["-x", &sk.proxy_url(), "http://evil.test.local/x"])
        .expect_refusal(403, "host_not_allowed");
    sk.wait_request_records(1);
    let before = scrape(&sk);

    let random = RandomState::new();
    let hosts: Vec<String> = (0..200)
        .map(|i| format!("h{:016x}.flood.example", random.hash_one(i)))
        .collect();
    for (i, host) in hosts.iter().enumerate() {
        if i % 2 == 0 {
            let req = format!(
                "GET http://{host}/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            );
            raw_request(sk.forward, req.as_bytes())
                .expect("absolute-form request")
                .expect_refusal(403, "host_not_allowed");
        } else {
            connect_tunnel(sk.forward, &format!("{host}:443"))
                .expect_err("CONNECT refused")
                .expect_refusal(403, "host_not_allowed");
        }
    }
    // Route names the agent makes up, on the route listener.
    let names: Vec<String> = (0..20)
        .map(|i| format!("r{:016x}", random.hash_one(1000 + i)))
        .collect();
    for name in &names {
        let req =
            format!("GET /r/{name}/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let resp = raw_request(sk.routes, req.as_bytes()).expect("route listener");
        assert!(resp.status >= 400, "{}", resp.body_str());
    }
    let records = sk.wait_request_records(1 + 200 + 20);
    let after = scrape(&sk);

    let text = http_get(sk.admin, "/metrics").unwrap().1;
    for made_up in hosts.iter().chain(&names) {
        assert!(!text.contains(made_up.as_str()), "{made_up} in /metrics");
    }
    assert!(!text.contains("flood"), "{text}");
    for s in &after.samples {
        for v in s.labels.values() {
            assert!(!v.contains('.') || s.labels.contains_key("le"), "{s:?}");
        }
    }
    // The flood's records went to series that already existed, but for the route listener's
    // refusal (one code, one series): not one per host or name.
    let old: BTreeSet<_> = before
        .series("sidekey_requests_total")
        .into_keys()
        .collect();
    let new: Vec<_> = after
        .series("sidekey_requests_total")
        .into_keys()
        .filter(|k| !old.contains(k))
        .collect();
    let route_listener_codes: BTreeSet<String> = records
        .iter()
        .filter(|r| r["listener"] == "routes")
        .map(|r| r["code"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        new.len() <= route_listener_codes.len(),
        "new series {new:#?}"
    );
    let refused = [("listener", "forward"), ("code", "host_not_allowed")];
    assert_eq!(
        after.sum("sidekey_requests_total", &refused)
            - before.sum("sidekey_requests_total", &refused),
        200.0
    );
    assert_eq!(
        after.sum("sidekey_requests_total", &[("listener", "routes")]),
        20.0
    );
    assert_eq!(
        after.sum("sidekey_requests_total", &[]),
        records.len() as f64
    );
    // Bounded everywhere: a handful of series per family, not hundreds.
    assert!(after.samples.len() < 200, "{} samples", after.samples.len());
}

#[test]
fn credential_events_and_expiry_are_reported_for_the_configured_credential() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let res = curl_via(&sk, &["https://api.test.local/echo/c"]);
    assert_eq!(res.status, 200, "{res:#?}");
    sk.wait_request_records(1);
    let m = scrape(&sk);

    let issued = sk
        .audit()
        .iter()
        .filter(|r| {
            r["type"] == "credential" && r["credential"] == "demo" && r["event"] == "issued"
        })
        .count();
    assert!(issued >= 1);
    assert_eq!(
        m.exact(
            "sidekey_credential_events_total",
            &labels(&[
                ("credential", "demo"),
                ("issuer", "local"),
                ("event", "issued")
            ])
        ),
        Some(issued as f64)
    );
    // Each issue's issuer call: in the record (issuer_ms) and in the histogram.
    let calls: Vec<f64> = sk
        .audit()
        .iter()
        .filter(|r| r["type"] == "credential" && r["event"] == "issued")
        .map(|r| {
            r["issuer_ms"]
                .as_f64()
                .expect("issuer_ms on an issued record")
        })
        .collect();
    assert_eq!(
        m.sum(
            "sidekey_issuer_call_duration_seconds_count",
            &[("issuer", "local"), ("result", "ok")]
        ),
        calls.len() as f64
    );
    let sum = m.sum(
        "sidekey_issuer_call_duration_seconds_sum",
        &[("issuer", "local"), ("result", "ok")],
    );
    assert!(
        (sum - calls.iter().sum::<f64>() / 1000.0).abs() < 1e-6,
        "{sum} vs {calls:?}"
    );
    assert_eq!(m.types["sidekey_credential_expiry_seconds"], "gauge");
    let left = m
        .exact(
            "sidekey_credential_expiry_seconds",
            &labels(&[("credential", "demo"), ("issuer", "local")]),
        )
        .expect("expiry of demo");
    // `ttl: 5m`.
    assert!(left > 200.0 && left <= 300.0, "{left}");

    // Nothing of the credential itself: its value, its ID (jti).
    let text = http_get(sk.admin, "/metrics").unwrap().1;
    let record = sk
        .audit()
        .into_iter()
        .find(|r| r["type"] == "credential" && r["event"] == "issued")
        .unwrap();
    let id = record["credential_id"].as_str().unwrap();
    assert!(!text.contains(id), "credential ID {id} in /metrics");
    let token = env.upstream.requests()[0]
        .header("authorization")
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_string();
    for part in token.split('.') {
        assert!(!text.contains(part), "credential value in /metrics");
    }
}

#[test]
fn agent_connections_are_counted_while_open() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let gauge = |sk: &Sidekey| {
        scrape(sk)
            .exact(
                "sidekey_agent_connections",
                &labels(&[("listener", "forward")]),
            )
            .expect("forward gauge")
    };
    let wait_for = |want: f64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = gauge(&sk);
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent connections {now}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(0.0);
    let open: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(sk.forward).unwrap())
        .collect();
    wait_for(3.0);
    let routes = std::net::TcpStream::connect(sk.routes).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape(&sk).exact(
        "sidekey_agent_connections",
        &labels(&[("listener", "routes")]),
    ) != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "routes listener connection not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(open);
    drop(routes);
    wait_for(0.0);
}

#[test]
fn reloads_are_counted_and_counters_survive_them() {
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    let m = scrape(&sk);
    assert_eq!(m.sum("sidekey_config_last_reload_success", &[]), 1.0);
    assert_eq!(
        m.sum("sidekey_config_reloads_total", &[("result", "reloaded")]),
        0.0
    );
    assert_eq!(
        m.sum("sidekey_config_reloads_total", &[("result", "rejected")]),
        0.0
    );
    curl(&["-x", &sk.proxy_url(), "http://plain.test.local/echo/r"]);
    sk.wait_request_records(1);

    let added = base_config(
        &[],
        "  - name: extra\n    hosts: [extra.test.local]\n    methods: [GET]\n",
        "",
    );
    let record = sk.reload(&added, &env.vars());
    assert_eq!(record["event"], "reloaded", "{record}");
    let m = scrape(&sk);
    assert_eq!(
        m.sum("sidekey_config_reloads_total", &[("result", "reloaded")]),
        1.0
    );
    assert_eq!(m.sum("sidekey_config_last_reload_success", &[]), 1.0);
    assert_eq!(
        m.sum("sidekey_requests_total", &[("route", "plain")]),
        1.0,
        "reset by the reload"
    );

    let broken = base_config(
        &[],
        "  - name: broken\n    hosts: [broken.test.local]\n    credential: no-such-credential\n",
        "",
    );
    let record = sk.reload(&broken, &env.vars());
    assert_eq!(record["event"], "rejected", "{record}");
    let m = scrape(&sk);
    assert_eq!(
        m.sum("sidekey_config_reloads_total", &[("result", "rejected")]),
        1.0
    );
    assert_eq!(
        m.sum("sidekey_config_reloads_total", &[("result", "reloaded")]),
        1.0
    );
    assert_eq!(m.sum("sidekey_config_last_reload_success", &[]), 0.0);
    let configs = sk.config_records().len();
    assert_eq!(
        m.sum("sidekey_audit_records_total", &[("type", "config")]),
        configs as f64
    );

    // A reload that removes a route removes its series; the others stay.
    curl_via(&sk, &["https://api.test.local/echo/kept"]).assert_status(200);
    sk.wait_request_records(2);
    let config = default_config();
    let start = config.find("  - name: plain\n").expect("plain route");
    // `plain` is the base config's last route.
    let without_plain = config[..start].to_string();
    assert!(!without_plain.contains("name: plain"));
    let record = sk.reload(&without_plain, &env.vars());
    assert_eq!(record["event"], "reloaded", "{record}");
    let text = http_get(sk.admin, "/metrics").unwrap().1;
    assert!(!text.contains("route=\"plain\""), "{text}");
    let m = scrape(&sk);
    assert_eq!(m.sum("sidekey_requests_total", &[("route", "api")]), 1.0);
}

#[test]
fn the_parser_is_strict() {
    let ok =
        "# HELP sidekey_x_total x\n# TYPE sidekey_x_total counter\nsidekey_x_total{a=\"1\"} 2\n";
    assert_eq!(
        parse(ok).unwrap().sum("sidekey_x_total", &[("a", "1")]),
        2.0
    );
    for bad in [
        "sidekey_x_total 1\n",                                               // no TYPE
        "# TYPE sidekey_x counter\nsidekey_x 1\n",                           // counter without _total
        "# TYPE sidekey_x_total counter\nsidekey_x_total{a=\"1} 2\n",        // unclosed value
        "# TYPE sidekey_x_total counter\nsidekey_x_total{a=1} 2\n",          // unquoted
        "# TYPE sidekey_x_total counter\nsidekey_x_total 1\nsidekey_x_total 1\n", // repeated
        "# TYPE sidekey_x_total counter\nsidekey_x_total one\n",             // bad value
        "# TYPE other_total counter\nother_total 1\n",                       // not sidekey_
        "# TYPE sidekey_x_total counter\nsidekey_x_total 1",                 // no final newline
        "# TYPE sidekey_h histogram\nsidekey_h_bucket{le=\"+Inf\"} 1\nsidekey_h_sum 1\nsidekey_h_count 2\n",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn grants_verified_are_counted_by_result_and_name_no_task() {
    use crate::common::grants::*;
    let env = Env::new();
    let keys = Keys::new();
    let sk = env.sidekey(&base_config(&[], "", &keys.section(true)));
    let task = "task-metrics-7f3a";
    let grant = keys.sign(AUDIENCE, "agent-m", task, &[]);
    // Absolute-form requests: one verification each (the first verifies, the next finds it
    // cached: both count).
    for i in 0..2 {
        let res = curl_granted(
            &sk,
            &grant,
            &[&format!("http://plain.test.local/echo/g{i}")],
        );
        assert_eq!(res.status, 200, "{res:#?}");
    }
    let forged = format!("{}x", grant);
    curl_granted(&sk, &forged, &["http://plain.test.local/echo/forged"])
        .expect_refusal(407, "grant_invalid");
    sk.wait_request_records(3);
    let m = scrape(&sk);
    assert_eq!(
        m.series("sidekey_grants_verified_total"),
        BTreeMap::from([
            (labels(&[("result", "ok")]), 2.0),
            (labels(&[("result", "grant_invalid")]), 1.0),
        ])
    );
    let text = http_get(sk.admin, "/metrics").unwrap().1;
    for secret in [task, "agent-m", &jti(&grant)] {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }

    // By now every family has a series: they are the ones docs/architecture.md lists.
    let doc =
        std::fs::read_to_string(crate::common::sidekey::repo_root().join("docs/architecture.md"))
            .unwrap();
    let section = doc.split("\n## Metrics\n").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    let documented: BTreeSet<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `sidekey_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let served: BTreeSet<&str> = m
        .types
        .keys()
        .map(|k| k.strip_prefix("sidekey_").unwrap())
        .collect();
    assert_eq!(served, documented);
}

#[test]
fn per_task_credentials_are_one_series_per_credential_at_the_soonest_expiry() {
    use crate::common::grants::*;
    let env = Env::new();
    let keys = Keys::new();
    let sk = env.sidekey(&per_task_config(&keys));
    // A local per-task JWT never outlives its grant: one task's lives 5 minutes, the other's 1.
    let tasks = ["task-long-5e1d", "task-short-9c2b"];
    for (task, ttl) in tasks.iter().zip(["10m", "1m"]) {
        let grant = keys.sign(
            AUDIENCE,
            "agent-t",
            task,
            &["--route", "tasks", "--ttl", ttl],
        );
        let res = curl_granted(&sk, &grant, &["https://tasks.test.local/echo/t"]);
        assert_eq!(res.status, 200, "{res:#?}");
    }
    sk.wait_request_records(2);
    let m = scrape(&sk);
    let expiry = m.series("sidekey_credential_expiry_seconds");
    let of_task_jwt: Vec<_> = expiry
        .iter()
        .filter(|(k, _)| k["credential"] == "task_jwt")
        .collect();
    assert_eq!(of_task_jwt.len(), 1, "{expiry:#?}");
    let (series, left) = of_task_jwt[0];
    assert_eq!(
        series,
        &labels(&[("credential", "task_jwt"), ("issuer", "local")])
    );
    assert!(
        *left > 0.0 && *left <= 60.0,
        "the soonest (the 1-minute task's): {left}"
    );
    assert_eq!(
        m.exact(
            "sidekey_credential_events_total",
            &labels(&[
                ("credential", "task_jwt"),
                ("issuer", "local"),
                ("event", "issued")
            ])
        ),
        Some(2.0)
    );
    let text = http_get(sk.admin, "/metrics").unwrap().1;
    for task in tasks {
        assert!(!text.contains(task), "{task} in /metrics");
    }
}

#[test]
fn the_metrics_listener_serves_metrics_alone_and_the_environment_sets_it() {
    let env = Env::new();
    // Set by the environment, as the Kubernetes injector does.
    let sk = Sidekey::start_with_env(
        &default_config(),
        &env.vars(),
        &[("SIDEKEY_METRICS_LISTEN", "127.0.0.1:0")],
    );
    let metrics = sk.listener("metrics").expect("a metrics listener");
    assert_ne!(metrics, sk.admin);
    curl(&["-x", &sk.proxy_url(), "http://plain.test.local/echo/m"]).assert_status(200);
    sk.wait_request_records(1);
    let m = scrape_at(metrics);
    assert_eq!(
        m.sum(
            "sidekey_requests_total",
            &[("route", "plain"), ("decision", "allow")]
        ),
        1.0
    );
    // Nothing else: no credential IDs, scopes, keys, grant endpoints or probes.
    for path in [
        "/",
        "/credentials",
        "/.well-known/jwks.json",
        "/healthz",
        "/readyz",
        "/grants",
        "/metrics/../credentials",
    ] {
        let (status, body) = http_get(metrics, path).expect(path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("demo"), "{path}: {body}");
    }
    let post = raw_request(
        metrics,
        b"POST /grants HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .expect("POST /grants");
    assert_eq!(post.status, 404, "{}", post.body_str());
    assert_eq!(http_get(sk.admin, "/credentials").expect("admin").0, 200);

    // A reload sees the same environment: the listener is not a change that needs a restart.
    let record = sk.reload(&default_config(), &env.vars());
    assert_eq!(record["event"], "reloaded", "{record}");
    scrape_at(metrics);

    // A bad value stops the start with the variable named.
    let file = sk.dir().join("bad-env.yaml");
    std::fs::write(&file, "routes: []\n").unwrap();
    let mut cmd = std::process::Command::new(crate::common::sidekey::sidekey_bin());
    cmd.args(["run", "--config"])
        .arg(&file)
        .env("SIDEKEY_METRICS_LISTEN", "everywhere:15091");
    let out = output_with_timeout(cmd, std::time::Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SIDEKEY_METRICS_LISTEN"), "{stderr}");
}
