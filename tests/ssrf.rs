//! The SSRF guard: upstream addresses that are not public (loopback, private, link-local incl.
//! the metadata service, unique-local, unspecified, …) are refused with 403
//! `address_not_allowed` unless the route says `allow_private: true` or the range is in
//! `upstream.allow_ranges`; the address checked is the address connected to, so DNS answers
//! that change between lookups (rebinding) cannot get past it. Names are resolved by a DNS
//! server the test controls (`upstream.nameservers`).

use crate::common::dns::DnsServer;
use crate::common::*;

/// Refused by the guard: status, code, and the message names the class of address.
#[track_caller]
fn assert_guarded(res: &CurlResult, class: &str) {
    let body = res.expect_refusal(403, "address_not_allowed");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("a {class} address")),
        "{message:?} should name the {class} address"
    );
}

#[test]
fn a_route_reaches_private_addresses_only_when_it_says_allow_private() {
    let env = Env::new();
    let extra_routes = r#"  - name: guarded
    hosts: [guarded.test.local]
    methods: [GET]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
  - name: guarded-plain
    hosts: [guardedplain.test.local]
    schemes: [http]
    methods: [GET]
    credential: demo
    inject: { header: Authorization, value: "Bearer {token}" }
"#;
    let sk = env.sidekey(&base_config(
        &[
            ("guarded.test.local:443", "{upstream}"),
            ("guardedplain.test.local:80", "{upstream_http}"),
        ],
        extra_routes,
        "",
    ));

    // Same upstream, same loopback address: the route without allow_private is refused before
    // a connection is made; the one with it gets through.
    let res = curl_via(&sk, &["https://guarded.test.local/echo/guarded"]);
    assert_guarded(&res, "loopback");
    let res = curl(&[
        "-x",
        &sk.proxy_url(),
        "http://guardedplain.test.local/echo/guarded-plain",
    ]);
    assert_guarded(&res, "loopback");
    assert_eq!(
        env.upstream.connections(),
        0,
        "nothing reached the upstream"
    );
    assert_eq!(env.upstream_http.connections(), 0);

    curl_via(&sk, &["https://api.test.local/echo/allowed"]).assert_status(200);
    assert_eq!(env.upstream.requests().len(), 1);

    // Each refusal is audited with its code.
    let records = sk.request_records();
    let guarded: Vec<_> = records
        .iter()
        .filter(|r| r["code"] == "address_not_allowed")
        .collect();
    assert_eq!(guarded.len(), 2, "{records:#?}");
    for r in guarded {
        assert_eq!(r["status"], 403, "{r}");
    }
}

#[test]
fn unmatched_tunnels_never_reach_metadata_loopback_or_private_addresses() {
    let env = Env::new();
    let yaml = base_config(
        &[
            ("blind.test.local:443", "{upstream}"),
            ("blindplain.test.local:80", "{upstream_http}"),
        ],
        "",
        "unmatched: tunnel",
    );
    let sk = env.sidekey(&yaml);
    let https_port = env.upstream.addr().port().to_string();
    let http_port = env.upstream_http.addr().port().to_string();
    // (CONNECT authority, class) — every spelling of a non-public address.
    let cases = [
        ("169.254.169.254:80".to_string(), "link-local"),
        ("169.254.169.254:443".to_string(), "link-local"),
        (format!("127.0.0.1:{https_port}"), "loopback"),
        (format!("127.1.2.3:{https_port}"), "loopback"),
        (format!("[::1]:{https_port}"), "loopback"),
        ("10.0.0.1:443".to_string(), "private"),
        ("192.168.1.1:443".to_string(), "private"),
        ("100.100.100.200:80".to_string(), "shared (CGNAT)"),
        ("[fd00:ec2::254]:80".to_string(), "unique-local"),
        ("[fe80::1]:443".to_string(), "link-local"),
        ("blind.test.local:443".to_string(), "loopback"),
    ];
    for (authority, class) in &cases {
        let refused = match connect_tunnel(sk.forward, authority) {
            Ok(_) => panic!("CONNECT {authority} was let through"),
            Err(resp) => resp,
        };
        let body = refused.expect_refusal(403, "address_not_allowed");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("a {class} address")),
            "CONNECT {authority}: {message:?} should name the {class} address"
        );
    }
    // Plain HTTP forwards of unmatched hosts too.
    for url in [
        format!("http://127.0.0.1:{http_port}/echo/p"),
        "http://blindplain.test.local/echo/p".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        let res = curl(&["-x", &sk.proxy_url(), &url]);
        res.expect_refusal(403, "address_not_allowed");
    }
    assert_eq!(env.upstream.connections(), 0);
    assert_eq!(env.upstream_http.connections(), 0);

    // `upstream.allow_ranges` opens exactly the ranges it names, to tunnels as well.
    let yaml = allow_loopback_ranges(&yaml);
    let sk = env.sidekey(&yaml);
    let res = curl(&[
        "-x",
        &sk.proxy_url(),
        "--cacert",
        &env.ca.pem_path().display().to_string(),
        "https://blind.test.local/echo/opened",
    ]);
    res.assert_status(200);
    assert_eq!(env.upstream.requests_to("/echo/opened").len(), 1);
    match connect_tunnel(sk.forward, "169.254.169.254:80") {
        Ok(_) => panic!("the metadata service is not in allow_ranges"),
        Err(resp) => {
            resp.expect_refusal(403, "address_not_allowed");
        }
    }
}

#[test]
fn names_are_checked_at_the_address_connected_to_with_a_resolver_the_test_controls() {
    let env = Env::new();
    let upstream = Upstream::https_with_names(&env.ca, &["*.dns.test"], "dns");
    let port = upstream.addr().port();
    // An address nothing answers on here: "public" by the table, so the guard lets it be
    // tried, and the connection fails.
    const PUBLIC: &str = "192.88.99.1";
    let dns = DnsServer::start(&[
        ("allowed.dns.test", &[&["127.0.0.1"]]),
        ("private.dns.test", &[&["127.0.0.1"]]),
        ("metadata.dns.test", &[&["169.254.169.254"]]),
        ("ula.dns.test", &[&["fd00:ec2::254"]]),
        ("mapped.dns.test", &[&["::ffff:127.0.0.1"]]),
        ("mixed.dns.test", &[&[PUBLIC, "127.0.0.1"]]),
        ("rebind.dns.test", &[&[PUBLIC], &["127.0.0.1"]]),
    ]);
    let yaml = format!(
        r#"upstream:
  extra_ca_files: ["{{test_ca}}"]
  nameservers: ["{dns}"]
  connect_timeout: 1s
issuers:
  local: {{ kind: local }}
credentials:
  demo: {{ issuer: local, audience: demo-api, ttl: 5m }}
routes:
  - name: allowed
    hosts: [allowed.dns.test]
    ports: [{port}]
    methods: [GET]
    credential: demo
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
  - name: public-only
    hosts: ["*.dns.test"]
    ports: [{port}]
    methods: [GET]
    credential: demo
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
"#,
        dns = dns.addr()
    );
    let sk = env.sidekey(&yaml);
    let url = |name: &str, path: &str| format!("https://{name}.dns.test:{port}{path}");

    // The resolver is really used: a route that allows private addresses gets through.
    curl_via(&sk, &[&url("allowed", "/echo/allowed")]).assert_status(200);
    assert_eq!(upstream.requests_to("/echo/allowed").len(), 1);
    dns.wait_queries("allowed.dns.test", "A", 1);

    assert_guarded(
        &curl_via(&sk, &[&url("private", "/echo/private")]),
        "loopback",
    );
    assert_guarded(
        &curl_via(&sk, &[&url("metadata", "/echo/metadata")]),
        "link-local",
    );
    assert_guarded(&curl_via(&sk, &[&url("ula", "/echo/ula")]), "unique-local");
    // An IPv4-mapped IPv6 answer is judged by the IPv4 address inside.
    assert_guarded(
        &curl_via(&sk, &[&url("mapped", "/echo/mapped")]),
        "loopback",
    );

    // A public and a private answer: only the public one is tried.
    curl_via(&sk, &["-m", "20", &url("mixed", "/echo/mixed")])
        .expect_refusal(502, "upstream_unreachable");

    // Rebinding: the name alternates between a public and a loopback address with TTL 0.
    // Whatever the order, the loopback answer is never connected to.
    let mut codes = Vec::new();
    for i in 0..4 {
        let res = curl_via(
            &sk,
            &["-m", "20", &url("rebind", &format!("/echo/rebind{i}"))],
        );
        codes.push(res.json()["error"].as_str().unwrap_or_default().to_string());
    }
    // (Which answer comes first depends on how many queries the resolver made, e.g. retries.)
    assert!(
        codes
            .iter()
            .all(|c| c == "upstream_unreachable" || c == "address_not_allowed"),
        "{codes:?}"
    );
    assert!(
        codes.iter().any(|c| c == "address_not_allowed"),
        "each request resolved anew and the loopback answer was refused: {codes:?}"
    );
    dns.wait_queries("rebind.dns.test", "A", 4);

    let reached: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        reached,
        ["/echo/allowed"],
        "only the allowed route got through"
    );
}
