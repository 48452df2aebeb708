//! Micro-benchmarks of the pure work sidekey does for every request: route matching (1, 100
//! and 10k routes), host canonicalization, header injection, a credential cache hit, a grant
//! check, a request's audit record with and without the metrics observing it, and a Cedar
//! decision over 10 and 1,000 policies.
//! Run with `scripts/bench --micro` (or `cargo bench --bench hot_paths`).

use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Uri};
use sidekey_config::Inject;
use sidekey_credentials::{CredentialStore, Issuer, Secret};
use sidekey_policy::{
    Authority, CanonicalHost, HostPattern, MethodSet, PathGlob, Policy, RequestPath, Route, Scheme,
    Target,
};

fn route(i: usize) -> Route {
    Route {
        name: format!("route-{i}"),
        hosts: vec![HostPattern::parse(&format!("api{i}.example.com")).expect("host pattern")],
        schemes: vec![Scheme::Https],
        ports: vec![443],
        methods: MethodSet::List(vec!["GET".into(), "POST".into()]),
        paths: vec![PathGlob::parse("/v1/**").expect("glob")],
        max_request_body: None,
        signs_body: false,
    }
}

fn target(host: &str) -> Target {
    Target {
        scheme: Scheme::Https,
        host: CanonicalHost::parse(host).expect("host"),
        port: 443,
    }
}

fn route_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_matching");
    let path = RequestPath::parse("/v1/chat/completions").expect("path");
    for n in [1usize, 100, 10_000] {
        let policy = Policy::new((0..n).map(route).collect());
        // The last route: a first-match scan visits every route before it.
        let last = target(&format!("api{}.example.com", n - 1));
        group.bench_with_input(BenchmarkId::new("allow_last", n), &n, |b, _| {
            b.iter(|| policy.decide(black_box(&last), black_box("POST"), black_box(&path)))
        });
        let unknown = target("evil.example.net");
        group.bench_with_input(BenchmarkId::new("deny_unknown_host", n), &n, |b, _| {
            b.iter(|| policy.decide(black_box(&unknown), black_box("GET"), black_box(&path)))
        });
    }
    group.finish();
}

fn host_canonicalization(c: &mut Criterion) {
    let mut group = c.benchmark_group("host_canonicalization");
    for (label, input) in [
        ("ascii", "API.OpenAI.com."),
        ("idn", "bücher.example"),
        ("ipv4", "127.0.0.1"),
        ("authority_with_port", "api.github.com:443"),
    ] {
        group.bench_function(label, |b| {
            b.iter(|| {
                if input.contains(':') {
                    Authority::parse(black_box(input)).map(|a| a.host).ok()
                } else {
                    CanonicalHost::parse(black_box(input)).ok()
                }
            })
        });
    }
    group.finish();
}

fn header_injection(c: &mut Criterion) {
    let config = sidekey_config::parse(CONFIG, "bench").expect("bench config");
    let inject: Inject = config.routes[0].inject.clone().expect("inject");
    // About the size of the JWT the local issuer mints.
    let secret = Secret::new("e".repeat(480));
    let mut base = HeaderMap::new();
    base.insert("host", HeaderValue::from_static("api.openai.com"));
    base.insert(
        "authorization",
        HeaderValue::from_static("Bearer agent-dummy"),
    );
    base.insert("content-type", HeaderValue::from_static("application/json"));
    base.insert("user-agent", HeaderValue::from_static("openai-python/1.0"));
    base.insert("connection", HeaderValue::from_static("keep-alive"));
    let uri: Uri = "https://api.openai.com/v1/chat/completions"
        .parse()
        .expect("uri");
    c.bench_function("header_injection/strip_and_inject", |b| {
        b.iter_batched_ref(
            || (base.clone(), uri.clone()),
            |(headers, uri)| {
                sidekey_inject::strip_hop_by_hop(headers);
                sidekey_inject::inject(headers, uri, &inject, &secret).expect("inject");
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn credential_cache_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let config = sidekey_config::parse(CONFIG, "bench").expect("bench config");
    let issuers = Issuer::build_all(&config.issuers).expect("issuers");
    let audit = sidekey_audit::AuditWriter::spawn(Box::new(std::io::sink())).expect("audit");
    let store =
        CredentialStore::new(&config.credentials, &issuers, audit.log()).expect("credential store");
    // The miss (minting) happens once here; every measured call is a hit.
    runtime.block_on(store.get("bench")).expect("first fetch");
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function("credential_cache_hit", |b| {
        b.iter(|| {
            // A hit completes on its first poll: no await point, no issuer, no lock.
            let mut get = std::pin::pin!(store.get(black_box("bench")));
            match get.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(credential)) => credential,
                _ => panic!("a cache hit must complete without waiting"),
            }
        })
    });
}

/// A grant presented again (the per-request cost: a cache lookup, expiry and revocation), and
/// its first presentation (JWT parse and Ed25519 signature check), for comparison.
fn grant_check(c: &mut Criterion) {
    use sidekey_grants::{GrantClaims, Grants, RouteClaim, SigningKey};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let dir = std::env::temp_dir().join(format!("sidekey-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pem = dir.join("key.pem");
    let _ = std::fs::remove_file(&pem);
    std::fs::write(&pem, SigningKey::generate_pem().expect("key").as_bytes()).expect("write");
    let key = SigningKey::from_pem_file(&pem).expect("key");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, key.jwks()).expect("jwks");
    let config = sidekey_config::parse(
        &format!(
            "grants:\n  audience: bench\n  trusted:\n    - jwks_file: {}\n",
            jwks.display()
        ),
        "bench",
    )
    .expect("config");
    let grants = Grants::new(config.grants.as_ref().expect("grants")).expect("grants");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = |jti: String| GrantClaims {
        iss: None,
        sub: "planner".into(),
        task_id: "t-42".into(),
        aud: "bench".into(),
        iat: now,
        exp: now + 3000,
        nbf: None,
        jti,
        routes: Some(vec![RouteClaim::Name("openai".into())]),
        on_behalf_of: Some("alice".into()),
        act: None,
        parent: None,
    };
    let token = sidekey_grants::sign(&key, &claims("bench".into())).expect("sign");
    let mut cx = Context::from_waker(Waker::noop());
    let _ = runtime
        .block_on(grants.authenticate(&token))
        .expect("first");
    c.bench_function("grant_check/cached", |b| {
        b.iter(|| {
            let mut check = std::pin::pin!(grants.authenticate(black_box(&token)));
            match check.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(grant)) => grant,
                _ => panic!("a cached grant must be checked without waiting"),
            }
        })
    });
    // What the first request presenting a grant pays: JWT parse, Ed25519 signature, claims.
    c.bench_function("grant_check/first_verification", |b| {
        b.iter(|| {
            runtime
                .block_on(grants.verify_uncached(black_box(&token)))
                .expect("verify")
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

const CONFIG: &str = r#"
issuers:
  local: { kind: local }
credentials:
  bench: { issuer: local, audience: bench-api, ttl: 1h }
routes:
  - name: openai
    hosts: [api.openai.com]
    methods: [GET, POST]
    credential: bench
    inject: { header: Authorization, value: "Bearer {token}" }
"#;

use std::future::Future;

/// A request's audit record as an allowed, credentialed request leaves it.
fn request_record() -> sidekey_audit::RequestRecord {
    sidekey_audit::RequestRecord {
        route: Some("openai".into()),
        credential: Some("bench".into()),
        credential_id: Some("7f3a9c2e-0b1d-4e5f-8a6b-9c0d1e2f3a4b".into()),
        issuer: Some("local".into()),
        decision: sidekey_audit::Outcome::Allow,
        status: Some(200),
        bytes_in: 512,
        bytes_out: 4096,
        duration_ms: 123.4,
        trace_id: sidekey_audit::HexId::parse("4bf92f3577b34da6a3ce929d0e0e4736"),
        ..sidekey_audit::RequestRecord::new(
            sidekey_audit::RequestId::of(0x01a2_4c5b_2e5c_75df_b9db_a704_cb95_7273),
            "forward",
            "POST".into(),
            ("https", "api.openai.com".into(), 443),
            "/v1/chat/completions".into(),
        )
    }
}

/// What the metrics add to a request's end: the record alone (serialized into the batch, the
/// writer thread discarding it), the record with the metrics observing it, and the metrics'
/// part alone (counter, histogram, bytes by route, from cached children).
fn record_and_metrics(c: &mut Criterion) {
    use sidekey_audit::{AuditWriter, Observer};
    let record = request_record();
    let mut group = c.benchmark_group("request_record");
    let plain = AuditWriter::spawn(Box::new(std::io::sink())).expect("audit");
    let log = plain.log();
    group.bench_function("audit_only", |b| b.iter(|| log.request(black_box(&record))));
    let observed = AuditWriter::spawn(Box::new(std::io::sink())).expect("audit");
    let metrics = Arc::new(sidekey_metrics::Metrics::new());
    observed.observe(Arc::clone(&metrics) as Arc<dyn Observer>);
    let log = observed.log();
    group.bench_function("audit_and_metrics", |b| {
        b.iter(|| log.request(black_box(&record)))
    });
    group.bench_function("metrics_only", |b| {
        b.iter(|| metrics.request(black_box(&record)))
    });
    group.finish();
    plain.shutdown();
    observed.shutdown();
}

/// A Cedar decision as the data plane asks it, over `n` policies: one route per policy, each
/// with a path condition and a grant condition, and a forbid; the request is permitted by the
/// last one (every policy is evaluated: Cedar has no first match).
fn cedar(c: &mut Criterion) {
    let mut group = c.benchmark_group("cedar");
    for n in [10usize, 1000] {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "@id(\"p{i}\") permit(principal, action == Sidekey::Action::\"GET\", \
                 resource == Sidekey::Route::\"route-{i}\") when {{ context.path like \"/v1/*\" \
                 && context.user == \"alice\" }};\n"
            ));
        }
        text.push_str(
            "@id(\"no-admin\") forbid(principal, action, resource) when { context.segments.contains(\"admin\") };\n",
        );
        let gate = sidekey_policy::CedarGate::load("bench.cedar", &text, None).expect("policies");
        let route = format!("route-{}", n - 1);
        let act = vec!["orchestrator".to_string()];
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let input = sidekey_policy::CedarInput {
                    sub: Some("agent-1"),
                    method: "GET",
                    action: None,
                    headers: Vec::new(),
                    route: &route,
                    host: "api.example.com".into(),
                    port: 443,
                    path: "/v1/chat/completions",
                    query: Some("stream=true"),
                    body_size: Some(0),
                    task: Some("t-1"),
                    user: Some("alice"),
                    act: &act,
                    unix_time: 1_796_637_600,
                };
                let verdict = gate.authorize(black_box(&input));
                assert!(verdict.allowed);
                verdict
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    route_matching,
    host_canonicalization,
    header_injection,
    credential_cache_hit,
    grant_check,
    record_and_metrics,
    cedar
);
criterion_main!(benches);
