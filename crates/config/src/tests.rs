//! Tests of the whole pipeline: YAML text in, `Config` or located errors out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sidekey_policy::{CanonicalHost, HostPattern, MethodSet, Scheme};

use crate::check::{closest, edit_distance};
use crate::{
    parse, AuditConfig, Config, ConfigError, Inject, IssuerKind, LocalAlgorithm, PrivateKeySource,
    Template, Unmatched,
};

fn ok(src: &str) -> Config {
    match parse(src, "test.yaml") {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}\n--- source ---\n{src}"),
    }
}

fn errors(src: &str) -> Vec<ConfigError> {
    match parse(src, "test.yaml") {
        Ok(c) => panic!("expected errors, got a valid config: {c:#?}\n--- source ---\n{src}"),
        Err(e) => {
            assert_eq!(e.origin, "test.yaml");
            e.errors
        }
    }
}

/// (line, column, substring of the message, substring of the hint or "" for any/no hint)
type Expect = (usize, usize, &'static str, &'static str);

fn check(name: &str, src: &str, expected: &[Expect]) {
    let got = errors(src);
    let show = || {
        got.iter()
            .map(|e| {
                format!(
                    "  {}:{} {} (hint: {:?})",
                    e.line, e.column, e.message, e.hint
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        got.len(),
        expected.len(),
        "case `{name}`: wrong number of errors:\n{}\n--- source ---\n{src}",
        show()
    );
    for (e, (line, column, msg, hint)) in got.iter().zip(expected) {
        assert_eq!(
            (e.line, e.column),
            (*line, *column),
            "case `{name}`: position of `{}`:\n{}",
            e.message,
            show()
        );
        assert!(
            e.message.contains(msg),
            "case `{name}`: message {:?} lacks {msg:?}",
            e.message
        );
        if !hint.is_empty() {
            let h = e.hint.as_deref().unwrap_or("");
            assert!(
                h.contains(hint),
                "case `{name}`: hint {h:?} of {:?} lacks {hint:?}",
                e.message
            );
        }
    }
}

/// Issuer and credential for route cases; routes start on line 6.
const PRELUDE: &str = "issuers:
  local: { kind: local }
credentials:
  demo: { issuer: local, audience: api }
routes:
";

fn with_prelude(routes: &str) -> String {
    format!("{PRELUDE}{routes}")
}

#[test]
fn empty_and_trivial_files_are_valid_and_deny_everything() {
    for src in [
        "",
        "\n",
        "# only a comment\n",
        "{}",
        "---\n",
        "routes: []\n",
        "routes:\n",
        "listen:\n",
    ] {
        let c = ok(src);
        assert!(c.routes.is_empty(), "{src:?}");
        assert_eq!(c.unmatched, Unmatched::Deny, "{src:?}");
        assert!(c.policy().routes().is_empty());
    }
}

#[test]
fn defaults() {
    let c = ok("{}");
    assert_eq!(c.listen.forward, Some(addr("127.0.0.1:15080")));
    assert_eq!(c.listen.routes, Some(addr("127.0.0.1:15081")));
    assert_eq!(c.listen.admin, Some(addr("127.0.0.1:15090")));
    assert_eq!(c.ca.cert_out, None);
    assert_eq!(c.ca.bundle_out, None);
    assert_eq!(c.ca.leaf_cache_size, 1024);
    assert_eq!(c.ca.leaf_mint_rate, 10);
    assert_eq!(c.ca.leaf_mint_burst, 50);
    assert!(c.upstream.extra_ca_files.is_empty());
    assert!(c.upstream.resolve.is_empty());
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.upstream.max_idle_per_host, 256);
    assert_eq!(c.upstream.request_timeout, Duration::from_secs(60));
    assert_eq!(c.identity, None);
    assert!(c.issuers.is_empty());
    assert!(c.credentials.is_empty());
    assert_eq!(c.audit, AuditConfig::Stdout);

    let c = ok(&with_prelude(
        "  - name: r
    hosts: [a.example.com]
    methods: [GET]
    credential: demo
    inject: { header: Authorization }
",
    ));
    let r = &c.routes[0];
    assert_eq!(r.schemes, vec![Scheme::Https]);
    assert_eq!(r.ports, vec![443]);
    assert!(r.paths.is_empty());
    assert!(!r.allow_private);
    assert_eq!(r.line, 6);
    assert_eq!(
        r.inject,
        Some(Inject::Header {
            name: "Authorization".into(),
            value: Template {
                prefix: "Bearer ".into(),
                suffix: String::new()
            }
        })
    );
    let IssuerKind::Local(local) = &c.issuers[0].kind else {
        panic!("local issuer expected")
    };
    assert_eq!(local.issuer, "sidekey-local");
    assert_eq!(local.algorithm, LocalAlgorithm::EdDsa);
    let cred = &c.credentials[0];
    assert_eq!(cred.ttl, Duration::from_secs(300));
    assert!(!cred.eager);
    assert_eq!(cred.subject, None);
}

#[test]
fn default_ports_follow_schemes_and_header_value_defaults_to_the_bare_token() {
    let c = ok(&with_prelude(
        "  - name: both
    hosts: [a.example.com]
    schemes: [http, https, HTTPS]
    methods: [GET]
    credential: demo
    inject: { header: X-Api-Key }
  - name: plain
    hosts: [b.example.com]
    schemes: [http]
    ports: [8080, 8080, 80]
    methods: [\"*\"]
",
    ));
    assert_eq!(c.routes[0].schemes, vec![Scheme::Http, Scheme::Https]);
    assert_eq!(c.routes[0].ports, vec![80, 443]);
    assert_eq!(
        c.routes[0].inject,
        Some(Inject::Header {
            name: "X-Api-Key".into(),
            value: Template {
                prefix: String::new(),
                suffix: String::new()
            }
        })
    );
    assert_eq!(c.routes[1].ports, vec![8080, 80]);
    assert_eq!(c.routes[1].methods, MethodSet::Any);
    assert_eq!(c.routes[1].credential, None);
    assert_eq!(c.routes[1].inject, None);
}

#[test]
fn listeners_can_be_turned_off() {
    let c = ok("listen:\n  forward: off\n  routes: null\n  admin:\n");
    assert_eq!(
        (c.listen.forward, c.listen.routes, c.listen.admin),
        (None, None, None)
    );
    let c = ok("listen:\n  forward: \"[::1]:0\"\n  routes: 0.0.0.0:8081\n");
    assert_eq!(c.listen.forward, Some(addr("[::1]:0")));
    assert_eq!(c.listen.routes, Some(addr("0.0.0.0:8081")));
    assert_eq!(
        c.listen.admin,
        Some(addr("127.0.0.1:15090")),
        "unset listeners keep their default"
    );
}

#[test]
fn methods_inject_kinds_and_audit_variants() {
    let c = ok(&with_prelude(
        "  - name: basic
    hosts: [git.example.com]
    methods: [GET, POST, PROPFIND, GET]
    credential: demo
    inject: { basic: { username: x-access-token } }
  - name: query
    hosts: [\"*.maps.example.com\"]
    methods: [GET]
    paths: [\"/v1/**\", \"/static/*.png\"]
    credential: demo
    inject: { query: api_key }
    allow_private: true
  - name: templ
    hosts: [10.0.0.1]
    methods: [\"*\"]
    credential: demo
    inject: { header: X-Token, value: \"token={token}; v=1\" }
unmatched: tunnel
audit: { file: /var/log/sidekey/audit.jsonl }
",
    ));
    assert_eq!(
        c.routes[0].methods,
        MethodSet::List(vec!["GET".into(), "POST".into(), "PROPFIND".into()])
    );
    assert_eq!(
        c.routes[0].inject,
        Some(Inject::Basic {
            username: "x-access-token".into()
        })
    );
    assert_eq!(
        c.routes[1].inject,
        Some(Inject::Query {
            param: "api_key".into()
        })
    );
    assert!(c.routes[1].allow_private);
    assert_eq!(
        c.routes[1]
            .paths
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>(),
        ["/v1/**", "/static/*.png"]
    );
    assert_eq!(
        c.routes[1].hosts,
        vec![HostPattern::Suffix(".maps.example.com".into())]
    );
    assert_eq!(c.routes[2].methods, MethodSet::Any);
    assert_eq!(
        c.routes[2].inject,
        Some(Inject::Header {
            name: "X-Token".into(),
            value: Template {
                prefix: "token=".into(),
                suffix: "; v=1".into()
            }
        })
    );
    assert_eq!(c.unmatched, Unmatched::Tunnel);
    assert_eq!(
        c.audit,
        AuditConfig::File(PathBuf::from("/var/log/sidekey/audit.jsonl"))
    );
    assert_eq!(ok("audit: stdout\n").audit, AuditConfig::Stdout);
}

const FULL: &str = r#"# Like README's config block, with local issuers only.
listen:
  forward: 127.0.0.1:15080
  routes: 127.0.0.1:15081
  admin: 127.0.0.1:15090
ca:
  cert_out: /var/run/sidekey/ca.pem
  leaf_cache_size: 256
upstream:
  extra_ca_files: [/etc/sidekey/corp-ca.pem]
  resolve:
    api.internal.test:443: 127.0.0.1:8443
  nameservers: ["10.0.0.2:53", "[fd00::53]:5353"]
  allow_ranges: [10.20.0.0/16, "fd00:1234::/32", 192.168.7.9, 10.30.1.1/16]
  connect_timeout: 3s
  request_timeout: 2m
  max_idle_per_host: 16
identity:
  token_file: /var/run/secrets/sidekey/token
issuers:
  local: { kind: local }
  ci: { kind: local, issuer: "https://ci.example", algorithm: ES256 }
credentials:
  github: { issuer: local, audience: github }
  demo: { issuer: local, audience: demo-api, ttl: 5m }
  ci-token: { issuer: ci, audience: ci, subject: agent-7, ttl: 1h, eager: true }
routes:
  - name: github
    hosts: [api.github.com]
    methods: [GET, POST]
    paths: ["/repos/acme/**"]
    credential: github
    inject: { header: Authorization, value: "Bearer {token}" }
  - name: internal
    hosts: [api.internal.test]
    methods: [GET]
    credential: demo
    allow_private: true
    resolve:
      api.internal.test:443: 127.0.0.1:8443
      api.internal.test:8443: "[::1]:9443"
    inject: { header: Authorization, value: "Bearer {token}" }
  - name: ci
    hosts: ["*.ci.example.com"]
    schemes: [http, https]
    ports: [8080]
    methods: ["*"]
    credential: ci-token
    inject: { basic: { username: agent } }
unmatched: deny
audit: stdout
"#;

#[test]
fn full_example() {
    let c = ok(FULL);
    assert_eq!(c.listen.forward, Some(addr("127.0.0.1:15080")));
    assert_eq!(
        c.ca.cert_out,
        Some(PathBuf::from("/var/run/sidekey/ca.pem"))
    );
    assert_eq!(c.ca.leaf_cache_size, 256);
    assert_eq!(
        c.upstream.extra_ca_files,
        vec![PathBuf::from("/etc/sidekey/corp-ca.pem")]
    );
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.upstream.request_timeout, Duration::from_secs(120));
    assert_eq!(c.upstream.max_idle_per_host, 16);
    assert_eq!(
        c.upstream.nameservers,
        vec![
            "10.0.0.2:53".parse().unwrap(),
            "[fd00::53]:5353".parse().unwrap()
        ]
    );
    let ranges: Vec<String> = c
        .upstream
        .allow_ranges
        .iter()
        .map(|r| r.to_string())
        .collect();
    // A bare address is a one-address range; host bits are dropped.
    assert_eq!(
        ranges,
        [
            "10.20.0.0/16",
            "fd00:1234::/32",
            "192.168.7.9/32",
            "10.30.0.0/16"
        ]
    );
    // The route repeats the global entry (same address: fine) and adds one.
    let resolve: Vec<_> = c
        .upstream
        .resolve
        .iter()
        .map(|r| (r.host.to_string(), r.port, r.addr))
        .collect();
    assert_eq!(
        resolve,
        vec![
            ("api.internal.test".to_string(), 443, addr("127.0.0.1:8443")),
            ("api.internal.test".to_string(), 8443, addr("[::1]:9443")),
        ]
    );
    assert_eq!(
        c.identity.as_ref().map(|i| i.token_file.clone()),
        Some(PathBuf::from("/var/run/secrets/sidekey/token"))
    );
    assert_eq!(
        c.issuers
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        ["local", "ci"]
    );
    let IssuerKind::Local(ci) = &c.issuers[1].kind else {
        panic!("local issuer expected")
    };
    assert_eq!(ci.issuer, "https://ci.example");
    assert_eq!(ci.algorithm, LocalAlgorithm::Es256);
    assert_eq!(
        c.credentials
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["github", "demo", "ci-token"]
    );
    let ci_token = &c.credentials[2];
    assert_eq!(ci_token.issuer, "ci");
    assert_eq!(ci_token.audience.as_deref(), Some("ci"));
    assert_eq!(ci_token.subject.as_deref(), Some("agent-7"));
    assert_eq!(ci_token.ttl, Duration::from_secs(3600));
    assert!(ci_token.eager);

    assert_eq!(
        c.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["github", "internal", "ci"]
    );
    let gh = &c.routes[0];
    assert_eq!(
        gh.hosts,
        vec![HostPattern::Exact(CanonicalHost::Domain(
            "api.github.com".into()
        ))]
    );
    assert_eq!(
        gh.methods,
        MethodSet::List(vec!["GET".into(), "POST".into()])
    );
    assert_eq!(gh.credential.as_deref(), Some("github"));
    assert_eq!(gh.line, 28);
    assert!(c.routes[1].allow_private);
    assert_eq!(c.routes[2].schemes, vec![Scheme::Http, Scheme::Https]);
    assert_eq!(c.routes[2].ports, vec![8080]);
    assert_eq!(c.routes[2].methods, MethodSet::Any);

    let policy = c.policy();
    assert_eq!(policy.routes().len(), 3);
    assert_eq!(policy.route_index("ci"), Some(2));
}

#[test]
fn quickstart_example_is_valid() {
    let c = ok(include_str!("../../../examples/quickstart.yaml"));
    assert_eq!(c.listen.forward, Some(addr("127.0.0.1:15080")));
    assert_eq!(c.listen.routes, Some(addr("127.0.0.1:15081")));
    assert_eq!(c.listen.admin, Some(addr("127.0.0.1:15090")));
    assert_eq!(c.ca.cert_out, Some(PathBuf::from("/tmp/sidekey/ca.pem")));
    assert_eq!(c.issuers.len(), 1);
    assert_eq!(c.credentials[0].name, "demo");
    assert_eq!(c.credentials[0].audience.as_deref(), Some("httpbin"));
    assert_eq!(c.credentials[0].ttl, Duration::from_secs(300));
    assert_eq!(
        c.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["demo", "httpbin", "github-read"]
    );
    // The demo API's route: loopback, pinned, the token for its audience only.
    assert_eq!(c.routes[0].credential.as_deref(), Some("demo-api"));
    assert!(c.routes[0].allow_private);
    assert_eq!(c.credentials[1].name, "demo-api");
    assert_eq!(c.credentials[1].audience.as_deref(), Some("demo-api"));
    assert_eq!(c.upstream.resolve.len(), 1);
    assert_eq!(c.routes[1].paths.len(), 4);
    assert_eq!(c.routes[1].credential.as_deref(), Some("demo"));
    assert_eq!(c.routes[2].credential, None);
    assert_eq!(c.routes[2].methods, MethodSet::List(vec!["GET".into()]));
    assert_eq!(c.unmatched, Unmatched::Deny);
}

#[test]
fn describe_shows_the_effective_policy() {
    let text = ok(FULL).describe();
    for expected in [
        "listeners:\n  forward  127.0.0.1:15080\n  routes   127.0.0.1:15081\n  admin    127.0.0.1:15090\n",
        "unmatched: deny",
        "routes (first match wins):\n  1. github\n",
        "     hosts:       api.github.com\n",
        "     targets:     https:443\n",
        "     methods:     GET, POST\n",
        "     paths:       /repos/acme/**\n",
        "     credential:  github (issuer local)\n",
        "     inject:      header Authorization: Bearer {token}\n",
        "  2. internal\n",
        "     private:     may reach private",
        "  3. ci\n",
        "     hosts:       *.ci.example.com\n",
        "     targets:     http/https:8080\n",
        "     methods:     any (\"*\")\n",
        "     paths:       any\n",
        "     inject:      basic auth, username agent",
        "  ci  kind local, iss \"https://ci.example\", ES256",
        "  ci-token  issuer ci, audience ci, subject agent-7, ttl 1h, fetched at start\n",
        "  demo  issuer local, audience demo-api, ttl 5m, fetched on first use\n",
        "ca: certificate written to /var/run/sidekey/ca.pem\n",
        "  resolve api.internal.test:8443 -> [::1]:9443\n",
        "identity: token from /var/run/secrets/sidekey/token\n",
        "audit: stdout\n",
    ] {
        assert!(text.contains(expected), "describe() lacks {expected:?}:\n{text}");
    }
    // Routes appear in match order.
    let pos = |s: &str| text.find(s).unwrap_or(usize::MAX);
    assert!(pos("1. github") < pos("2. internal") && pos("2. internal") < pos("3. ci"));
    // Stable: the same config describes the same way.
    assert_eq!(text, ok(FULL).describe());

    let empty = ok("listen: { admin: off }\nunmatched: tunnel\n").describe();
    assert!(empty.contains("  admin    off\n"), "{empty}");
    assert!(empty.contains("unmatched: tunnel"), "{empty}");
    assert!(empty.contains("routes: none\n"), "{empty}");
    assert!(
        empty.contains("credential:") || empty.contains("credentials: none"),
        "{empty}"
    );

    let plain = ok(include_str!("../../../examples/quickstart.yaml")).describe();
    assert!(plain.contains("  3. github-read\n"), "{plain}");
    assert!(
        plain.contains("     credential:  none (allowed egress, nothing injected)\n"),
        "{plain}"
    );
}

#[test]
fn error_display_names_origin_line_column_and_hint() {
    let Err(e) = parse("listn: {}\nunmatched: allow\n", "/etc/sidekey/config.yaml") else {
        panic!("expected errors");
    };
    let text = e.to_string();
    assert!(
        text.starts_with("/etc/sidekey/config.yaml:1:1: error: unknown key `listn`"),
        "{text}"
    );
    assert!(
        text.contains("\n  hint: did you mean `listen`?\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "/etc/sidekey/config.yaml:2:12: error: `unmatched` must be `deny` or `tunnel`"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("2 errors in /etc/sidekey/config.yaml"),
        "{text}"
    );
}

#[test]
#[rustfmt::skip]
fn every_error_is_reported_at_once_in_file_order() {
    let src = "routes:
  - name: b
    hosts: [\"*\"]
    methods: [get]
    paths: [nope]
    credential: missing
listen:
  forward: localhost:80
unmatched: maybe
issuers:
  v: { kind: vaults }
credentials:
  c: { issuer: nobody, ttl: 1s }
";
    check("many", src, &[
        (3, 13, "invalid host `*`", ""),
        (4, 15, "method `get` is not upper case", "write `GET`"),
        (5, 13, "invalid path glob `nope`", ""),
        (6, 5, "has a `credential` but no `inject`", ""),
        (6, 17, "unknown credential `missing`", "declared credentials: c"),
        (8, 12, "`localhost` in `localhost:80` is not an IP address", ""),
        (9, 12, "`unmatched` must be `deny` or `tunnel`", ""),
        (11, 14, "unknown issuer kind `vaults`", "did you mean `vault`?"),
        (13, 16, "unknown issuer `nobody`", ""),
        (13, 29, "out of range", "10s to 24h"),
    ]);
}

#[test]
#[rustfmt::skip]
fn syntax_errors_have_a_location() {
    check("bad indentation", "a: b: c\n", &[(1, 5, "YAML syntax error", "")]);
    check("bare star", "routes:\n  - name: r\n    methods: [*]\n", &[(3, 15, "YAML syntax error", "quote it")]);
    check("bare wildcard host", "routes:\n  - name: r\n    hosts: [*.example.com]\n", &[(3, 13, "YAML syntax error", "quote it")]);
    check("tab", "routes:\n\t- name: r\n", &[(2, 2, "YAML syntax error", "tabs")]);
    let e = errors("a: [1, 2\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].message.starts_with("YAML syntax error"));
    assert!(e[0].line >= 1 && e[0].column >= 1);
}

#[test]
#[rustfmt::skip]
fn structure_errors() {
    let cases: &[(&str, &str, &[Expect])] = &[
        ("unknown top-level key", "listn:\n  forward: off\n", &[(1, 1, "unknown key `listn` in the config", "did you mean `listen`?")]),
        ("unknown key without a close match", "zzz: 1\n", &[(1, 1, "unknown key `zzz`", "valid keys here: listen, ca")]),
        ("unknown nested key", "ca:\n  cert: /tmp/ca.pem\n", &[(2, 3, "unknown key `cert` in `ca`", "did you mean `cert_out`?")]),
        ("unknown upstream key", "upstream:\n  conect_timeout: 1s\n", &[(2, 3, "unknown key `conect_timeout`", "did you mean `connect_timeout`?")]),
        ("top level not a mapping", "- a\n- b\n", &[(1, 1, "the config must be a mapping, found a list", "")]),
        ("section of the wrong type", "listen: [a]\n", &[(1, 9, "`listen` must be a mapping, found a list", "")]),
        ("routes not a list", "routes: {a: 1}\n", &[(1, 9, "`routes` must be a list, found a mapping", "")]),
        ("non-string key", "ca:\n  1: x\n", &[(2, 3, "keys in `ca` must be strings", "")]),
        ("duplicate key", "ca:\n  cert_out: /a\n  cert_out: /b\n", &[(3, 3, "duplicate key `cert_out`", "already set at line 2, column 3")]),
        ("duplicate top-level section", "routes: []\nunmatched: deny\nroutes: []\n", &[(3, 1, "duplicate key `routes`", "line 1")]),
        ("duplicate key in a flow mapping", "ca: { cert_out: /a, cert_out: /b }\n", &[(1, 21, "duplicate key `cert_out`", "")]),
        ("second document", "routes: []\n---\nroutes: []\n", &[(3, 1, "a second YAML document", "")]),
        ("leaf cache size zero", "ca: { leaf_cache_size: 0 }\n", &[(1, 24, "`ca.leaf_cache_size` 0 is out of range", "1 to")]),
        ("leaf cache size string", "ca: { leaf_cache_size: many }\n", &[(1, 24, "must be an integer, found a string", "")]),
        ("leaf mint rate zero", "ca: { leaf_mint_rate: 0 }\n", &[(1, 23, "`ca.leaf_mint_rate` 0 is out of range", "1 to")]),
        ("leaf mint burst too big", "ca: { leaf_mint_burst: 1000000 }\n", &[(1, 24, "`ca.leaf_mint_burst` 1000000 is out of range", "1 to")]),
        ("identity without token file", "identity: {}\n", &[(1, 11, "`identity` has no `token_file`", "token_file:")]),
        ("extra ca files not a list", "upstream: { extra_ca_files: /a.pem }\n", &[(1, 29, "must be a list, found a string", "[/a.pem]")]),
        ("empty path", "ca: { cert_out: \"\" }\n", &[(1, 17, "`ca.cert_out` must not be empty", "")]),
        ("empty bundle path", "ca: { bundle_out: \"\" }\n", &[(1, 19, "`ca.bundle_out` must not be empty", "")]),
        ("bundle over the certificate", "ca: { cert_out: /a.pem, bundle_out: /a.pem }\n", &[(1, 37, "`ca.bundle_out` is the same file as `ca.cert_out`", "two files")]),
        ("bundle path not a string", "ca: { bundle_out: [a] }\n", &[(1, 19, "must be", "")]),
        ("unmatched allow", "unmatched: allow\n", &[(1, 12, "found `allow`", "`tunnel`")]),
        ("unmatched null", "unmatched:\n", &[(1, 10, "`unmatched` must be `deny` or `tunnel`", "")]),
        ("audit syslog", "audit: syslog\n", &[(1, 8, "unknown audit sink `syslog`", "stdout")]),
        ("audit without file", "audit: { path: /x }\n", &[(1, 8, "`audit` has no `file`", ""), (1, 10, "unknown key `path` in `audit`", "")]),
        ("audit number", "audit: 1\n", &[(1, 8, "`audit` must be `stdout` or a mapping", "")]),
    ];
    for (name, src, expected) in cases {
        check(name, src, expected);
    }
}

#[test]
#[rustfmt::skip]
fn listener_errors() {
    let cases: &[(&str, &str, &[Expect])] = &[
        ("host name", "listen:\n  forward: localhost:15080\n", &[(2, 12, "`localhost` in `localhost:15080` is not an IP address", "127.0.0.1:15080")]),
        ("no port", "listen:\n  admin: 127.0.0.1\n", &[(2, 10, "`listen.admin`: `127.0.0.1` is not an ip:port address", "add a port")]),
        ("port out of range", "listen:\n  routes: 127.0.0.1:99999\n", &[(2, 11, "port 99999 in `127.0.0.1:99999` is out of range", "0-65535")]),
        ("port not a number", "listen:\n  routes: 127.0.0.1:http\n", &[(2, 11, "port `http` in `127.0.0.1:http` is not a number", "")]),
        ("empty port", "listen:\n  routes: \"127.0.0.1:\"\n", &[(2, 11, "has no port", "")]),
        ("bare port", "listen:\n  forward: 15080\n", &[(2, 12, "found the bare number 15080", "127.0.0.1:15080")]),
        ("false", "listen:\n  admin: false\n", &[(2, 10, "`listen.admin` must be an ip:port address, `off` or null", "`off`")]),
        ("unbracketed ipv6", "listen:\n  admin: \"::1:80\"\n", &[(2, 10, "is not an ip:port address", "brackets")]),
        ("same address twice", "listen:\n  forward: 127.0.0.1:9000\n  routes: 127.0.0.1:9000\n", &[(3, 11, "`listen.routes` uses 127.0.0.1:9000, the same address as `listen.forward`", "own port")]),
        ("unknown listener", "listen:\n  proxy: 127.0.0.1:1\n", &[(2, 3, "unknown key `proxy` in `listen`", "valid keys here: forward, routes, admin, metrics")]),
        ("metrics on the admin address", "listen:\n  admin: 127.0.0.1:9000\n  metrics: 127.0.0.1:9000\n", &[(3, 12, "`listen.metrics` uses 127.0.0.1:9000, the same address as `listen.admin`", "own port")]),
    ];
    for (name, src, expected) in cases {
        check(name, src, expected);
    }
    // Port 0 (a free port) may be shared: each listener gets its own.
    let c = ok("listen:\n  forward: 127.0.0.1:0\n  routes: 127.0.0.1:0\n  admin: 127.0.0.1:0\n");
    assert_eq!(c.listen.admin, Some(addr("127.0.0.1:0")));
}

#[test]
#[rustfmt::skip]
fn issuer_and_credential_errors() {
    let cases: &[(&str, &str, &[Expect])] = &[
        ("unknown kind, close", "issuers:\n  l: { kind: lokal }\n", &[(2, 14, "unknown issuer kind `lokal`", "did you mean `local`?")]),
        ("unknown kind, far", "issuers:\n  l: { kind: magic }\n", &[(2, 14, "unknown issuer kind `magic`", "kinds: vault, oauth2, aws-sts, github-app, local")]),
        ("no kind", "issuers:\n  l: { issuer: x }\n", &[(2, 3, "issuer `l` has no `kind`", "kind: local")]),
        ("null issuer", "issuers:\n  l:\n", &[(2, 3, "issuer `l` has no `kind`", "")]),
        ("unknown local key", "issuers:\n  l: { kind: local, algoritm: ES256 }\n", &[(2, 21, "unknown key `algoritm` in issuer `l`", "did you mean `algorithm`?")]),
        ("algorithm case", "issuers:\n  l: { kind: local, algorithm: eddsa }\n", &[(2, 32, "unknown algorithm `eddsa`", "did you mean `EdDSA`?")]),
        ("algorithm unknown", "issuers:\n  l: { kind: local, algorithm: RS256 }\n", &[(2, 32, "unknown algorithm `RS256`", "")]),
        ("bad issuer name", "issuers:\n  My_IdP: { kind: local }\n", &[(2, 3, "invalid issuer name `My_IdP`", "e.g. `my_idp`")]),
        ("unknown issuer", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: locl }\n", &[(4, 16, "credential `c` refers to unknown issuer `locl`", "did you mean `local`?")]),
        ("unknown issuer, none declared", "credentials:\n  c: { issuer: local }\n", &[(2, 16, "unknown issuer `local`", "declare it under `issuers:`")]),
        ("credential without issuer", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { audience: x }\n", &[(4, 3, "credential `c` has no `issuer`", "one of: local")]),
        ("null credential", "credentials:\n  c:\n", &[(2, 3, "credential `c` has no `issuer`", "")]),
        ("bad credential name", "issuers:\n  local: { kind: local }\ncredentials:\n  \"gh token\": { issuer: local }\n", &[(4, 3, "invalid credential name `gh token`", "e.g. `gh-token`")]),
        ("unknown credential key", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: local, audiences: x }\n", &[(4, 23, "unknown key `audiences`", "did you mean `audience`?")]),
        ("ttl too short", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: local, ttl: 5s }\n", &[(4, 28, "`ttl` of credential `c` is 5s, out of range", "10s to 24h")]),
        ("ttl too long", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: local, ttl: 25h }\n", &[(4, 28, "is 1day 1h, out of range", "")]),
        ("ttl not a duration", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: local, ttl: soon }\n", &[(4, 28, "invalid duration `soon`", "`5m`")]),
        ("ttl bad unit", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: local, ttl: 5x }\n", &[(4, 28, "invalid duration `5x`", "")]),
        ("ttl bare number", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: local, ttl: 300 }\n", &[(4, 28, "bare number 300", "`300s`")]),
        ("eager yes", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: local, eager: yes }\n", &[(4, 30, "must be true or false, found a string", "write `true` without quotes")]),
        ("empty audience", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: local, audience: \"\" }\n", &[(4, 33, "`audience` of credential `c` must not be empty", "")]),
        ("allow range not a range", "upstream: { allow_ranges: [10.0.0.0/33, corp] }\n", &[(1, 28, "`10.0.0.0/33` is not an address range", "CIDR"), (1, 41, "`corp` is not an address range", "")]),
        ("allow range everything", "upstream: { allow_ranges: [0.0.0.0/0] }\n", &[(1, 28, "`0.0.0.0/0` is every address", "allow_private")]),
        ("nameserver without port", "upstream: { nameservers: [10.0.0.2] }\n", &[(1, 27, "a name server in `upstream.nameservers`", "")]),
        ("idle pool negative", "upstream: { max_idle_per_host: -1 }\n", &[(1, 32, "`upstream.max_idle_per_host` -1 is out of range", "use a value from 0 to 100000")]),
        ("connect timeout zero", "upstream: { connect_timeout: 0s }\n", &[(1, 30, "`upstream.connect_timeout` must be greater than zero", "")]),
        ("request timeout", "upstream: { request_timeout: [1] }\n", &[(1, 30, "`upstream.request_timeout` must be a duration, found a list", "")]),
    ];
    for (name, src, expected) in cases {
        check(name, src, expected);
    }
    // A credential of a broken issuer gets no extra noise for that kind's keys.
    check(
        "vault credential",
        "issuers:\n  vault: { kind: vault, address: https://vault:8200 }\ncredentials:\n  gh: { issuer: vault, scope: x }\n",
        &[(2, 10, "issuer `vault` has no `auth`", "method: jwt")],
    );
}

#[test]
#[rustfmt::skip]
fn route_errors() {
    let cases: &[(&str, &str, &[Expect])] = &[
        ("no methods", "  - name: r\n    hosts: [a.example.com]\n", &[(6, 5, "route `r` has no `methods`", "no default on purpose")]),
        ("null methods", "  - name: r\n    hosts: [a.example.com]\n    methods:\n", &[(8, 5, "route `r` has no `methods`", "no default on purpose")]),
        ("empty methods", "  - name: r\n    hosts: [a.example.com]\n    methods: []\n", &[(8, 14, "`methods` of route `r` is empty", "\"*\"")]),
        ("methods as a string", "  - name: r\n    hosts: [a.example.com]\n    methods: GET\n", &[(8, 14, "`methods` of route `r` must be a list", "[GET]")]),
        ("invalid method", "  - name: r\n    hosts: [a.example.com]\n    methods: [GET, \"PO ST\"]\n", &[(8, 20, "invalid method `PO ST`", "HTTP token")]),
        ("lower-case method", "  - name: r\n    hosts: [a.example.com]\n    methods: [GET, post]\n", &[(8, 20, "method `post` is not upper case", "write `POST`")]),
        ("method not a string", "  - name: r\n    hosts: [a.example.com]\n    methods: [1]\n", &[(8, 15, "a method of route `r` must be a string", "")]),
        ("connect", "  - name: r\n    hosts: [a.example.com]\n    methods: [CONNECT]\n", &[(8, 15, "CONNECT cannot be allowed", "")]),
        ("star with others", "  - name: r\n    hosts: [a.example.com]\n    methods: [GET, \"*\"]\n", &[(8, 20, "already allows every method", "")]),
        ("typo in key", "  - name: r\n    hosts: [a.example.com]\n    metods: [GET]\n", &[(6, 5, "route `r` has no `methods`", ""), (8, 5, "unknown key `metods` in route `r`", "did you mean `methods`?")]),
        ("no name", "  - hosts: [a.example.com]\n    methods: [GET]\n", &[(6, 5, "route #1 has no `name`", "/r/<name>/")]),
        ("bad name", "  - name: GitHub API\n    hosts: [a.example.com]\n    methods: [GET]\n", &[(6, 11, "invalid route name `GitHub API`", "e.g. `github-api`")]),
        ("bad name still labels messages", "  - name: GitHub\n    hosts: [a.example.com]\n    methods: [get]\n", &[(6, 11, "invalid route name `GitHub`", ""), (8, 15, "route `GitHub`: method `get`", "")]),
        ("name starting with dash", "  - name: -x\n    hosts: [a.example.com]\n    methods: [GET]\n", &[(6, 11, "invalid route name `-x`", "")]),
        ("name not a string", "  - name: 42\n    hosts: [a.example.com]\n    methods: [GET]\n", &[(6, 11, "route name must be a string, found an integer", "\"42\"")]),
        ("duplicate name", "  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n  - name: r\n    hosts: [b.example.com]\n    methods: [GET]\n", &[(9, 11, "duplicate route name `r`", "line 6")]),
        ("no hosts", "  - name: r\n    methods: [GET]\n", &[(6, 5, "route `r` has no `hosts`", "")]),
        ("empty hosts", "  - name: r\n    hosts: []\n    methods: [GET]\n", &[(7, 12, "`hosts` of route `r` is empty", "")]),
        ("host as a string", "  - name: r\n    hosts: a.example.com\n    methods: [GET]\n", &[(7, 12, "must be a list, found a string", "[a.example.com]")]),
        ("bare star host", "  - name: r\n    hosts: [\"*\"]\n    methods: [GET]\n", &[(7, 13, "invalid host `*`", "")]),
        ("public suffix wildcard", "  - name: r\n    hosts: [\"*.com\"]\n    methods: [GET]\n", &[(7, 13, "invalid host `*.com`", "")]),
        ("mid wildcard", "  - name: r\n    hosts: [ok.example.com, \"a.*.example.com\"]\n    methods: [GET]\n", &[(7, 29, "invalid host `a.*.example.com`", "")]),
        ("unknown scheme", "  - name: r\n    hosts: [a.example.com]\n    schemes: [ftp]\n    methods: [GET]\n", &[(8, 15, "unknown scheme `ftp`", "`http` and `https`")]),
        ("scheme typo", "  - name: r\n    hosts: [a.example.com]\n    schemes: [htps]\n    methods: [GET]\n", &[(8, 15, "unknown scheme `htps`", "did you mean `https`?")]),
        ("empty schemes", "  - name: r\n    hosts: [a.example.com]\n    schemes: []\n    methods: [GET]\n", &[(8, 14, "`schemes` of route `r` is empty", "")]),
        ("port zero", "  - name: r\n    hosts: [a.example.com]\n    ports: [0]\n    methods: [GET]\n", &[(8, 13, "port 0 is out of range", "1-65535")]),
        ("port too big", "  - name: r\n    hosts: [a.example.com]\n    ports: [443, 65536]\n    methods: [GET]\n", &[(8, 18, "port 65536 is out of range", "1-65535")]),
        ("port as string", "  - name: r\n    hosts: [a.example.com]\n    ports: [\"443\"]\n    methods: [GET]\n", &[(8, 13, "a port of route `r` must be a port number, found a string", "")]),
        ("empty paths", "  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    paths: []\n", &[(9, 12, "`paths` of route `r` is empty", "remove `paths`")]),
        ("relative glob", "  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    paths: [\"repos/**\"]\n", &[(9, 13, "invalid path glob `repos/**`: path glob must start with '/'", "")]),
        ("glob with query", "  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    paths: [\"/a?b=1\"]\n", &[(9, 13, "invalid path glob `/a?b=1`", "")]),
        ("glob double star", "  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    paths: [\"/a/**b\"]\n", &[(9, 13, "invalid path glob `/a/**b`", "")]),
        ("unknown credential", "  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    credential: dmeo\n    inject: { header: Authorization }\n", &[(9, 17, "route `r` refers to unknown credential `dmeo`", "did you mean `demo`?")]),
        ("credential without inject", "  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    credential: demo\n", &[(9, 5, "route `r` has a `credential` but no `inject`", "inject: { header: Authorization")]),
        ("inject without credential", "  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    inject: { header: Authorization }\n", &[(9, 5, "route `r` has `inject` but no `credential`", "plain allowed egress")]),
        ("allow_private quoted", "  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    allow_private: \"true\"\n", &[(9, 20, "`allow_private` of route `r` must be true or false", "without quotes")]),
        ("route not a mapping", "  - just-a-name\n", &[(6, 5, "route #1 must be a mapping, found a string", "")]),
    ];
    for (name, src, expected) in cases {
        check(name, &with_prelude(src), expected);
    }
}

#[test]
#[rustfmt::skip]
fn inject_errors() {
    let route = |inject: &str| {
        with_prelude(&format!(
            "  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    credential: demo\n    inject: {inject}\n"
        ))
    };
    // `inject: ` is on line 10, its value starts at column 13.
    let cases: &[(&str, &str, &[Expect])] = &[
        ("not a mapping", "Authorization", &[(10, 13, "`inject` of route `r` must be a mapping, found a string", "")]),
        ("none of the kinds", "{ value: \"Bearer {token}\" }", &[(10, 13, "needs one of `header`, `basic`, `query` or `sigv4`", "inject: { header: Authorization")]),
        ("two kinds", "{ header: X-Key, query: key }", &[(10, 30, "has both `header` and `query`", "one way only")]),
        ("unknown key", "{ header: X-Key, valeu: \"{token}\" }", &[(10, 30, "unknown key `valeu`", "did you mean `value`?")]),
        ("value with query", "{ query: key, value: \"{token}\" }", &[(10, 27, "`value` applies only to `header`", "")]),
        ("sigv4 of a local credential", "{ sigv4: { service: s3, region: us-east-1 } }", &[(9, 17, "signs with SigV4, but credential `demo` does not come from an aws-sts issuer", "kind: aws-sts")]),
        ("sigv4 without region", "{ sigv4: { service: s3 } }", &[(10, 22, "`sigv4` of `inject` of route `r` needs a `region`", "")]),
        ("sigv4 bad service", "{ sigv4: { service: S3, region: us-east-1 } }", &[(10, 33, "`S3` is not an AWS service signing name", "lower-case")]),
        ("sigv4 bad region", "{ sigv4: { service: s3, region: US } }", &[(10, 45, "not an AWS region", "us-east-1")]),
        ("header with space", "{ header: \"X Key\" }", &[(10, 23, "`X Key` is not a valid header name", "HTTP tokens")]),
        ("header with colon", "{ header: \"X-Key:\" }", &[(10, 23, "`X-Key:` is not a valid header name", "")]),
        ("connection", "{ header: Connection }", &[(10, 23, "`Connection` cannot carry a credential", "hop-by-hop")]),
        ("proxy-authorization", "{ header: proxy-authorization }", &[(10, 23, "`proxy-authorization` cannot carry a credential", "")]),
        ("host", "{ header: Host }", &[(10, 23, "`Host` cannot carry a credential", "")]),
        ("transfer-encoding", "{ header: Transfer-Encoding }", &[(10, 23, "cannot carry a credential", "")]),
        ("te", "{ header: TE }", &[(10, 23, "`TE` cannot carry a credential", "")]),
        ("upgrade", "{ header: Upgrade }", &[(10, 23, "cannot carry a credential", "")]),
        ("keep-alive", "{ header: Keep-Alive }", &[(10, 23, "cannot carry a credential", "")]),
        ("proxy-connection", "{ header: Proxy-Connection }", &[(10, 23, "cannot carry a credential", "")]),
        ("trailer", "{ header: Trailer }", &[(10, 23, "cannot carry a credential", "")]),
        ("content-length", "{ header: Content-Length }", &[(10, 23, "cannot carry a credential", "")]),
        ("no placeholder", "{ header: Authorization, value: \"Bearer token\" }", &[(10, 45, "must contain `{token}` exactly once; \"Bearer token\" has none", "\"Bearer {token}\"")]),
        ("two placeholders", "{ header: Authorization, value: \"{token} {token}\" }", &[(10, 45, "has 2", "")]),
        ("misspelt placeholder", "{ header: Authorization, value: \"Bearer {tokne}\" }", &[(10, 45, "must contain `{token}` exactly once", "")]),
        ("tab in value", "{ header: Authorization, value: \"Bearer\\t{token}\" }", &[(10, 45, "`value` contains '\\t'", "visible ASCII")]),
        ("non-ascii value", "{ header: Authorization, value: \"Bäarer {token}\" }", &[(10, 45, "`value` contains 'ä'", "visible ASCII")]),
        ("newline in value", "{ header: Authorization, value: \"Bearer {token}\\r\\nX: y\" }", &[(10, 45, "`value` contains '\\r'", "")]),
        ("basic without username", "{ basic: {} }", &[(10, 22, "`basic` of `inject` of route `r` needs a `username`", "x-access-token")]),
        ("basic null", "{ basic: }", &[(10, 20, "needs a `username`", "")]),
        ("basic user with colon", "{ basic: { username: \"a:b\" } }", &[(10, 34, "username `a:b` contains ':'", "")]),
        ("basic unknown key", "{ basic: { user: a } }", &[(10, 22, "needs a `username`", ""), (10, 24, "unknown key `user`", "did you mean `username`?")]),
        ("query bad param", "{ query: \"api key\" }", &[(10, 22, "`api key` is not a plain query parameter name", "")]),
        ("query empty", "{ query: \"\" }", &[(10, 22, "must not be empty", "")]),
    ];
    for (name, inject, expected) in cases {
        check(name, &route(inject), expected);
    }
}

#[test]
#[rustfmt::skip]
fn resolve_entries_are_validated_and_merged() {
    let cases: &[(&str, &str, &[Expect])] = &[
        ("no port", "upstream:\n  resolve:\n    api.internal.test: 127.0.0.1:8443\n", &[(3, 5, "`api.internal.test` has no port", "api.internal.test:443")]),
        ("bad host", "upstream:\n  resolve:\n    \"bad host:443\": 127.0.0.1:8443\n", &[(3, 5, "invalid host:port `bad host:443`", "")]),
        ("value not an address", "upstream:\n  resolve:\n    api.internal.test:443: backend:8443\n", &[(3, 28, "`backend` in `backend:8443` is not an IP address", "")]),
        ("value without port", "upstream:\n  resolve:\n    api.internal.test:443: 127.0.0.1\n", &[(3, 28, "is not an ip:port address", "")]),
        ("value port zero", "upstream:\n  resolve:\n    api.internal.test:443: 127.0.0.1:0\n", &[(3, 28, "has port 0", "")]),
        ("not a mapping", "upstream:\n  resolve: [a]\n", &[(2, 12, "`upstream.resolve` must be a mapping", "")]),
        ("conflict within upstream", "upstream:\n  resolve:\n    a.example.com:443: 127.0.0.1:1\n    A.EXAMPLE.COM:443: 127.0.0.1:2\n", &[(4, 5, "`A.EXAMPLE.COM:443` is resolved to 127.0.0.1:2 here but to 127.0.0.1:1 at line 3", "")]),
        (
            "conflict between upstream and route",
            "upstream:\n  resolve:\n    a.example.com:443: 127.0.0.1:1\nroutes:\n  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    resolve:\n      a.example.com:443: 127.0.0.2:1\n",
            &[(9, 7, "`a.example.com:443` is resolved to 127.0.0.2:1 here but to 127.0.0.1:1 at line 3", "one address only")],
        ),
        (
            "route resolves another host",
            "routes:\n  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    resolve:\n      b.example.com:443: 127.0.0.2:1\n",
            &[(6, 7, "route `r` resolves `b.example.com:443` but does not name that host", "upstream.resolve")],
        ),
    ];
    for (name, src, expected) in cases {
        check(name, src, expected);
    }
    // A route's entries are merged into upstream.resolve; equal duplicates are fine.
    let c = ok("upstream:\n  resolve:\n    a.example.com:443: 127.0.0.1:1\nroutes:\n  - name: r\n    hosts: [\"*.example.com\"]\n    methods: [GET]\n    resolve:\n      A.Example.com:443: 127.0.0.1:1\n      b.example.com:80: 127.0.0.1:2\n");
    let merged: Vec<_> = c.upstream.resolve.iter().map(|r| format!("{}:{}={}", r.host, r.port, r.addr)).collect();
    assert_eq!(merged, ["a.example.com:443=127.0.0.1:1", "b.example.com:80=127.0.0.1:2"]);
}

#[test]
fn credentials_of_broken_issuers_and_routes_of_broken_credentials_do_not_cascade() {
    // One error for the issuer; the credential and the route that use it are not blamed again.
    check(
        "cascade",
        "issuers:\n  v: { kind: vault, address: https://vault:8200 }\ncredentials:\n  c: { issuer: v }\nroutes:\n  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    credential: c\n    inject: { header: Authorization }\n",
        &[(2, 6, "issuer `v` has no `auth`", "")],
    );
}

#[test]
fn anchors_and_aliases_work_and_cannot_explode() {
    let c = ok(&with_prelude(
        "  - name: a\n    hosts: [a.example.com]\n    methods: &ro [GET, HEAD]\n  - name: b\n    hosts: [b.example.com]\n    methods: *ro\n",
    ));
    assert_eq!(
        c.routes[1].methods,
        MethodSet::List(vec!["GET".into(), "HEAD".into()])
    );

    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..8 {
        let prev = format!("*a{}", i - 1);
        bomb.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            [prev.as_str(); 10].join(", ")
        ));
    }
    let e = errors(&bomb);
    assert!(
        e.iter()
            .any(|e| e.message.contains("aliases expand to too many nodes")),
        "{e:?}"
    );
}

#[test]
fn suggestions() {
    assert_eq!(edit_distance("methods", "metods"), 1);
    assert_eq!(edit_distance("hosts", "hsots"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(
        closest("metods", &["name", "methods", "paths"]),
        Some("methods")
    );
    assert_eq!(closest("host", &["hosts", "ports"]), Some("hosts"));
    assert_eq!(
        closest("allowprivate", &["allow_private", "paths"]),
        Some("allow_private")
    );
    assert_eq!(
        closest("cert", &["cert_out", "leaf_cache_size"]),
        Some("cert_out")
    );
    assert_eq!(closest("zzz", &["listen", "ca", "routes"]), None);
}

fn addr(s: &str) -> SocketAddr {
    match s.parse() {
        Ok(a) => a,
        Err(e) => panic!("{s}: {e}"),
    }
}

#[test]
fn crlf_line_endings_and_merge_keys() {
    let c = ok("routes:\r\n  - name: r\r\n    hosts: [a.example.com]\r\n    methods: [GET]\r\n");
    assert_eq!(c.routes[0].line, 2);
    check(
        "crlf error position",
        "routes:\r\n  - name: r\r\n    hosts: [a.example.com]\r\n    methods: [get]\r\n",
        &[(4, 15, "method `get` is not upper case", "")],
    );
    check(
        "merge key",
        "base: &b { forward: off }\nlisten:\n  <<: *b\n",
        &[
            (1, 1, "unknown key `base`", ""),
            (3, 3, "unknown key `<<` in `listen`", "merge keys"),
        ],
    );
}

const REMOTE: &str = "identity: { token_file: /var/run/secrets/sidekey/token }
issuers:
  bao:
    kind: vault
    address: https://vault.internal:8200/
    namespace: /team-a/
    auth: { method: jwt, role: agent }
  k8s:
    kind: vault
    address: http://127.0.0.1:8200
    auth: { method: kubernetes, mount: k8s-east, role: agent, token_file: /t }
  ar:
    kind: vault
    address: https://vault.internal
    auth: { method: approle, role_id_file: /r, secret_id_file: /s }
  idp:
    kind: oauth2
    token_url: https://idp.internal/oauth2/token
    grant: client_credentials
    client_id: sidekey
    client_secret_file: /secret
    client_secret_auth: post
  jwt-idp:
    kind: oauth2
    token_url: https://idp.internal/token
    grant: client_credentials
    client_id: sidekey
    private_key_file: /key.pem
    key_id: k1
  exchange:
    kind: oauth2
    token_url: http://localhost:9000/token
    grant: token_exchange
    client_id: sidekey
    actor_token_file: /actor
  aws:
    kind: aws-sts
    role_arn: arn:aws:iam::123456789012:role/agent
    region: us-east-1
credentials:
  gh: { issuer: bao, path: /secret/data/agents/github, field: token, ttl: 1m }
  cert: { issuer: ar, path: pki/issue/agent, field: certificate, params: { common_name: a.internal, ttl: 10m, exclude_cn_from_sans: true } }
  api: { issuer: idp, audience: https://api.internal, scope: \"read write\", resource: https://api.internal/ }
  s3: { issuer: aws, ttl: 2h, session_policy_file: /p.json }
routes:
  - name: s3
    hosts: [\"*.s3.us-east-1.amazonaws.com\"]
    methods: [GET]
    credential: s3
    inject: { sigv4: { service: s3, region: us-east-1 } }
";

#[test]
fn remote_issuers_parse_with_defaults() {
    use crate::{ClientAuth, OAuth2Grant, VaultAuth, VaultJwtMethod};
    let c = ok(REMOTE);
    let kind = |name: &str| &c.issuers.iter().find(|i| i.name == name).unwrap().kind;
    let IssuerKind::Vault(bao) = kind("bao") else {
        panic!("vault expected")
    };
    assert_eq!(bao.address.url, "https://vault.internal:8200");
    assert_eq!(bao.namespace.as_deref(), Some("team-a"));
    assert_eq!(
        bao.auth,
        VaultAuth::Jwt {
            method: VaultJwtMethod::Jwt,
            mount: "jwt".into(),
            role: "agent".into(),
            token_file: PathBuf::from("/var/run/secrets/sidekey/token"),
        }
    );
    let IssuerKind::Vault(k8s) = kind("k8s") else {
        panic!("vault expected")
    };
    assert!(
        matches!(&k8s.auth, VaultAuth::Jwt { method: VaultJwtMethod::Kubernetes, mount, token_file, .. }
        if mount == "k8s-east" && token_file == &PathBuf::from("/t"))
    );
    let IssuerKind::Vault(ar) = kind("ar") else {
        panic!("vault expected")
    };
    assert!(matches!(&ar.auth, VaultAuth::AppRole { mount, .. } if mount == "approle"));
    let IssuerKind::OAuth2(idp) = kind("idp") else {
        panic!("oauth2 expected")
    };
    assert_eq!(
        idp.client_auth,
        ClientAuth::SecretPost(PathBuf::from("/secret"))
    );
    assert_eq!(idp.grant, OAuth2Grant::ClientCredentials);
    let IssuerKind::OAuth2(j) = kind("jwt-idp") else {
        panic!("oauth2 expected")
    };
    assert_eq!(
        j.client_auth,
        ClientAuth::PrivateKeyJwt {
            key_file: PathBuf::from("/key.pem"),
            key_id: Some("k1".into())
        }
    );
    let IssuerKind::OAuth2(x) = kind("exchange") else {
        panic!("oauth2 expected")
    };
    assert_eq!(x.client_auth, ClientAuth::None);
    assert_eq!(
        x.grant,
        OAuth2Grant::TokenExchange {
            subject_token_file: PathBuf::from("/var/run/secrets/sidekey/token"),
            actor_token_file: Some(PathBuf::from("/actor")),
        }
    );
    let IssuerKind::AwsSts(aws) = kind("aws") else {
        panic!("aws-sts expected")
    };
    assert_eq!(aws.endpoint.url, "https://sts.us-east-1.amazonaws.com");
    assert_eq!(aws.session_name, "sidekey-{pod}");
    let cred = |name: &str| c.credentials.iter().find(|x| x.name == name).unwrap();
    assert_eq!(
        cred("gh").path.as_deref(),
        Some("secret/data/agents/github")
    );
    assert_eq!(cred("gh").ttl, Duration::from_secs(60));
    assert_eq!(
        cred("cert").params,
        vec![
            ("common_name".to_string(), "a.internal".to_string()),
            ("ttl".to_string(), "10m".to_string()),
            ("exclude_cn_from_sans".to_string(), "true".to_string()),
        ]
    );
    assert_eq!(cred("api").scope.as_deref(), Some("read write"));
    assert_eq!(cred("s3").ttl, Duration::from_secs(7200));
    assert_eq!(
        c.routes[0].inject,
        Some(Inject::SigV4 {
            service: "s3".into(),
            region: "us-east-1".into()
        })
    );
    let described = c.describe();
    assert!(
        described
            .contains("kind vault, https://vault.internal:8200, auth jwt at auth/jwt, role agent"),
        "{described}"
    );
    assert!(
        described.contains("AWS SigV4 signature, service s3, region us-east-1"),
        "{described}"
    );
}

#[test]
#[rustfmt::skip]
fn remote_issuer_errors() {
    let cases: &[(&str, &str, &[Expect])] = &[
        ("vault without anything", "issuers:\n  v: { kind: vault }\n", &[(2, 6, "issuer `v` has no `address`", "https://vault.internal:8200"), (2, 6, "issuer `v` has no `auth`", "")]),
        ("plain http to a remote vault", "issuers:\n  v: { kind: vault, address: \"http://vault:8200\", auth: { method: approle, role_id_file: /r, secret_id_file: /s } }\n", &[(2, 30, "plain http:// to a host that is not loopback", "use https://")]),
        ("not a url", "issuers:\n  v: { kind: vault, address: vault:8200, auth: { method: approle, role_id_file: /r, secret_id_file: /s } }\n", &[(2, 30, "must be an https:// URL", "")]),
        ("userinfo in url", "issuers:\n  v: { kind: vault, address: \"https://u:p@vault\", auth: { method: approle, role_id_file: /r, secret_id_file: /s } }\n", &[(2, 30, "invalid host", "")]),
        ("unknown auth method", "issuers:\n  v: { kind: vault, address: \"https://vault\", auth: { method: ldap } }\n", &[(2, 63, "unknown Vault auth method `ldap`", "jwt, kubernetes, approle")]),
        ("auth method typo", "issuers:\n  v: { kind: vault, address: \"https://vault\", auth: { method: approel } }\n", &[(2, 63, "unknown Vault auth method `approel`", "did you mean `approle`?")]),
        ("jwt without role", "identity: { token_file: /t }\nissuers:\n  v: { kind: vault, address: \"https://vault\", auth: { method: jwt } }\n", &[(3, 53, "has no `role`", "role: agent")]),
        ("jwt without identity", "issuers:\n  v: { kind: vault, address: \"https://vault\", auth: { method: jwt, role: a } }\n", &[(2, 53, "needs an identity token, and there is no `identity.token_file`", "identity:")]),
        ("approle without secret id", "issuers:\n  v: { kind: vault, address: \"https://vault\", auth: { method: approle, role_id_file: /r } }\n", &[(2, 53, "has no `secret_id_file`", "")]),
        ("approle with role", "issuers:\n  v: { kind: vault, address: \"https://vault\", auth: { method: approle, role: x, role_id_file: /r, secret_id_file: /s } }\n", &[(2, 72, "`role` does not apply to `method: approle`", "")]),
        ("vault credential without path", "identity: { token_file: /t }\nissuers:\n  v: { kind: vault, address: \"https://vault\", auth: { method: jwt, role: a } }\ncredentials:\n  c: { issuer: v, field: x }\n", &[(5, 3, "credential `c` has no `path`", "secret/data")]),
        ("vault credential without field", "identity: { token_file: /t }\nissuers:\n  v: { kind: vault, address: \"https://vault\", auth: { method: jwt, role: a } }\ncredentials:\n  c: { issuer: v, path: p }\n", &[(5, 3, "credential `c` has no `field`", "field: token")]),
        ("key of another kind", "identity: { token_file: /t }\nissuers:\n  v: { kind: vault, address: \"https://vault\", auth: { method: jwt, role: a } }\ncredentials:\n  c: { issuer: v, path: p, field: f, scope: x }\n", &[(5, 38, "`scope` does not apply to credential `c`: its issuer is a `vault` issuer", "path, field, params")]),
        ("params not scalars", "identity: { token_file: /t }\nissuers:\n  v: { kind: vault, address: \"https://vault\", auth: { method: jwt, role: a } }\ncredentials:\n  c: { issuer: v, path: p, field: f, params: { a: [1] } }\n", &[(5, 51, "`params.a` of credential `c` must be a string, number or boolean", "")]),
        ("oauth2 without anything", "issuers:\n  o: { kind: oauth2 }\n", &[(2, 6, "has no `token_url`", ""), (2, 6, "has no `grant`", ""), (2, 6, "has no `client_id`", "")]),
        ("grant with dash", "issuers:\n  o: { kind: oauth2, token_url: \"https://idp/t\", grant: token-exchange, client_id: c }\n", &[(2, 57, "unknown OAuth2 grant `token-exchange`", "did you mean `token_exchange`?")]),
        ("secret and key", "issuers:\n  o: { kind: oauth2, token_url: \"https://idp/t\", grant: client_credentials, client_id: c, client_secret_file: /s, private_key_file: /k }\n", &[(2, 115, "has both `client_secret_file` and `private_key_file`", "keep one")]),
        ("client credentials without a secret", "issuers:\n  o: { kind: oauth2, token_url: \"https://idp/t\", grant: client_credentials, client_id: c }\n", &[(2, 6, "uses client_credentials but has no client credential", "client_secret_file")]),
        ("bad secret auth", "issuers:\n  o: { kind: oauth2, token_url: \"https://idp/t\", grant: client_credentials, client_id: c, client_secret_file: /s, client_secret_auth: jwt }\n", &[(2, 135, "unknown `client_secret_auth` `jwt`", "`post`")]),
        ("actor token with client credentials", "issuers:\n  o: { kind: oauth2, token_url: \"https://idp/t\", grant: client_credentials, client_id: c, client_secret_file: /s, actor_token_file: /a }\n", &[(2, 115, "`actor_token_file` in issuer `o` applies to `grant: token_exchange` only", "")]),
        ("exchange without identity", "issuers:\n  o: { kind: oauth2, token_url: \"https://idp/t\", grant: token_exchange, client_id: c }\n", &[(2, 6, "needs an identity token", "subject_token_file")]),
        ("aws without anything", "identity: { token_file: /t }\nissuers:\n  a: { kind: aws-sts }\n", &[(3, 6, "has no `role_arn`", ""), (3, 6, "has no `region`", "us-east-1")]),
        ("aws bad arn", "identity: { token_file: /t }\nissuers:\n  a: { kind: aws-sts, role_arn: \"arn:aws:iam::1:role/x\", region: us-east-1 }\n", &[(3, 33, "is not an IAM role ARN", "arn:aws:iam::123456789012:role/agent")]),
        ("aws bad session name", "identity: { token_file: /t }\nissuers:\n  a: { kind: aws-sts, role_arn: \"arn:aws:iam::123456789012:role/x\", region: us-east-1, session_name: \"a b\" }\n", &[(3, 102, "has characters AWS does not allow", "")]),
        ("aws ttl too short", "identity: { token_file: /t }\nissuers:\n  a: { kind: aws-sts, role_arn: \"arn:aws:iam::123456789012:role/x\", region: us-east-1 }\ncredentials:\n  c: { issuer: a, ttl: 5m }\n", &[(5, 24, "`ttl` of credential `c` is 5m, out of range", "15m to 12h")]),
        ("aws credential as a header", "identity: { token_file: /t }\nissuers:\n  a: { kind: aws-sts, role_arn: \"arn:aws:iam::123456789012:role/x\", region: us-east-1 }\ncredentials:\n  c: { issuer: a }\nroutes:\n  - name: r\n    hosts: [a.example.com]\n    methods: [GET]\n    credential: c\n    inject: { header: X-Key }\n", &[(11, 5, "attaches aws-sts credential `c` as a token", "sigv4")]),
    ];
    for (name, src, expected) in cases {
        check(name, src, expected);
    }
}

#[test]
fn ca_bundle_out() {
    let c = ok("ca:\n  cert_out: /run/sidekey/ca.pem\n  bundle_out: /run/sidekey/bundle.pem\n");
    assert_eq!(c.ca.cert_out, Some(PathBuf::from("/run/sidekey/ca.pem")));
    assert_eq!(
        c.ca.bundle_out,
        Some(PathBuf::from("/run/sidekey/bundle.pem"))
    );
    assert!(c
        .describe()
        .contains("bundle (certificate + system roots) written to /run/sidekey/bundle.pem"));
    // Without cert_out too: the bundle alone is enough for most agents.
    let c = ok("ca: { bundle_out: /run/b.pem }\n");
    assert_eq!(c.ca.bundle_out, Some(PathBuf::from("/run/b.pem")));
    assert_eq!(c.ca.cert_out, None);
}

#[test]
fn leaf_mint_limits() {
    let c = ok("ca: { leaf_mint_rate: 5, leaf_mint_burst: 20 }\n");
    assert_eq!(c.ca.leaf_mint_rate, 5);
    assert_eq!(c.ca.leaf_mint_burst, 20);
    assert_eq!(c.ca.leaf_cache_size, 1024);
}

#[test]
fn per_task_credentials() {
    let c = ok("identity: { token_file: /t }
issuers:
  local: { kind: local }
  v: { kind: vault, address: \"https://vault\", auth: { method: jwt, role: a } }
  a: { kind: aws-sts, role_arn: \"arn:aws:iam::123456789012:role/x\", region: us-east-1 }
  o: { kind: oauth2, token_url: \"https://idp/t\", grant: client_credentials, client_id: c, client_secret_file: /s }
  x: { kind: oauth2, token_url: \"https://idp/t\", grant: token_exchange, client_id: c, actor_token_file: /t }
  tasks: { kind: local, issuer: sidekey-tasks }
credentials:
  jwt: { issuer: local, audience: api, per_task: true }
  db: { issuer: v, path: database/creds/ro, field: password, per_task: true, eager: false }
  s3: { issuer: a, per_task: true }
  shared: { issuer: local }
  api: { issuer: o, per_task: false }
  user-api: { issuer: x, audience: api, per_task: true, task_assertion_issuer: tasks }
  pod-api: { issuer: x, audience: api }
");
    let per_task: Vec<(&str, bool)> = c
        .credentials
        .iter()
        .map(|x| (x.name.as_str(), x.per_task))
        .collect();
    assert_eq!(
        per_task,
        [
            ("jwt", true),
            ("db", true),
            ("s3", true),
            ("shared", false),
            ("api", false),
            ("user-api", true),
            ("pod-api", false),
        ]
    );
    let signers: Vec<Option<&str>> = c
        .credentials
        .iter()
        .map(|x| x.task_assertion_issuer.as_deref())
        .collect();
    assert_eq!(
        signers,
        [None, None, None, None, None, Some("tasks"), None],
        "only where it is given"
    );
    assert!(
        c.describe()
            .contains("jwt  issuer local, audience api, ttl 5m, one per task grant"),
        "{}",
        c.describe()
    );
    assert!(
        c.describe().contains("user-api  issuer x, audience api, exchanged for each task's end user (asserted by tasks), ttl 5m, one per task grant"),
        "{}",
        c.describe()
    );
}

#[test]
#[rustfmt::skip]
fn per_task_errors() {
    const OAUTH2: &str = "issuers:\n  o: { kind: oauth2, token_url: \"https://idp/t\", grant: client_credentials, client_id: c, client_secret_file: /s }\ncredentials:\n";
    let oauth2 = |cred: &str| format!("{OAUTH2}{cred}");
    const EXCHANGE: &str = "identity: { token_file: /t }\nissuers:\n  local: { kind: local }\n  x: { kind: oauth2, token_url: \"https://idp/t\", grant: token_exchange, client_id: c }\ncredentials:\n";
    let exchange = |cred: &str| format!("{EXCHANGE}{cred}");
    let cases: &[(&str, String, &[Expect])] = &[
        ("oauth2 client credentials", oauth2("  c: { issuer: o, per_task: true }\n"), &[(4, 29, "credential `c` is `per_task`, but its issuer uses `grant: client_credentials`", "use an issuer with `grant: token_exchange`")]),
        // Its task_assertion_issuer is not reported twice.
        ("oauth2 client credentials with a signer", oauth2("  c: { issuer: o, per_task: true, task_assertion_issuer: local }\n").replace("issuers:\n", "issuers:\n  local: { kind: local }\n"), &[(5, 29, "but its issuer uses `grant: client_credentials`", "")]),
        ("exchange without a signer", exchange("  c: { issuer: x, per_task: true }\n"), &[(6, 19, "credential `c` is `per_task` and has no `task_assertion_issuer`", "e.g. task_assertion_issuer: local")]),
        ("exchange without a signer, block", exchange("  c:\n    issuer: x\n    per_task: true\n"), &[(8, 5, "credential `c` is `per_task` and has no `task_assertion_issuer`", "the authorization server must trust its JWKS")]),
        ("signer without per_task", exchange("  c: { issuer: x, task_assertion_issuer: local }\n"), &[(6, 19, "`task_assertion_issuer` of credential `c` applies to `per_task` credentials only", "add `per_task: true`")]),
        ("signer with per_task false", exchange("  c: { issuer: x, per_task: false, task_assertion_issuer: local }\n"), &[(6, 36, "applies to `per_task` credentials only", "")]),
        ("signer not local", exchange("  c: { issuer: x, per_task: true, task_assertion_issuer: x }\n"), &[(6, 58, "`task_assertion_issuer` of credential `c` must name a `kind: local` issuer; `x` is a `oauth2` issuer", "local issuers: local")]),
        ("signer unknown", exchange("  c: { issuer: x, per_task: true, task_assertion_issuer: lokal }\n"), &[(6, 58, "`task_assertion_issuer` of credential `c` refers to unknown issuer `lokal`", "did you mean `local`?")]),
        ("no local issuer", "identity: { token_file: /t }\nissuers:\n  x: { kind: oauth2, token_url: \"https://idp/t\", grant: token_exchange, client_id: c }\ncredentials:\n  c: { issuer: x, per_task: true, task_assertion_issuer: x }\n".into(), &[(5, 58, "must name a `kind: local` issuer", "declare one, e.g.")]),
        ("signer empty", exchange("  c: { issuer: x, per_task: true, task_assertion_issuer: \"\" }\n"), &[(6, 58, "`task_assertion_issuer` of credential `c`", "")]),
        ("signer of a local credential", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: local, per_task: true, task_assertion_issuer: local }\n".into(), &[(4, 39, "`task_assertion_issuer` does not apply to credential `c`: its issuer is a `local` issuer", "local credentials take: audience, subject, per_task")]),
        ("not a bool", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: local, per_task: yes }\n".into(), &[(4, 33, "`per_task` of credential `c` must be true or false", "")]),
        ("eager", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: local, per_task: true, eager: true }\n".into(), &[(4, 39, "`eager` does not apply to credential `c`: it is `per_task`", "there is no task at start")]),
        ("subject", "issuers:\n  local: { kind: local }\ncredentials:\n  c: { issuer: local, subject: me, per_task: true }\n".into(), &[(4, 23, "`subject` does not apply to credential `c`: it is `per_task`", "the task grant's `sub`")]),
    ];
    for (name, src, expected) in cases {
        check(name, src, expected);
    }
}

#[test]
fn grants_parse_with_defaults_and_every_error_is_located() {
    let c = ok("grants:\n  audience: sidekey-a\n  trusted:\n    - jwks_file: /etc/keys.json\n    - jwks_url: https://orchestrator.internal/jwks.json\n      refresh: 1m\n");
    let g = c.grants.clone().expect("grants");
    assert_eq!(g.audience, "sidekey-a");
    assert!(!g.required);
    assert_eq!(g.max_ttl, crate::DEFAULT_GRANT_MAX_TTL);
    assert_eq!(
        g.trusted,
        vec![
            crate::TrustedKeys::JwksFile(PathBuf::from("/etc/keys.json")),
            crate::TrustedKeys::JwksUrl {
                url: crate::Endpoint {
                    url: "https://orchestrator.internal/jwks.json".into()
                },
                ca_file: None,
                refresh: Duration::from_secs(60),
            },
        ]
    );
    assert!(!c.policy().grants_required());
    let required = ok("grants:\n  audience: a\n  required: true\n  max_ttl: 10m\n  trusted:\n    - jwks_file: k.json\n");
    assert!(required.policy().grants_required());
    assert_eq!(required.grants.unwrap().max_ttl, Duration::from_secs(600));

    let cases: &[(&str, &str, &[Expect])] = &[
        (
            "no audience",
            "grants:\n  trusted:\n    - jwks_file: k\n",
            &[(2, 3, "has no `audience`", "leaked")],
        ),
        (
            "no trusted",
            "grants:\n  audience: a\n",
            &[(2, 3, "has no `trusted` keys", "sidekey grant keygen")],
        ),
        (
            "empty trusted",
            "grants:\n  audience: a\n  trusted: []\n",
            &[(3, 12, "is empty", "jwks_file")],
        ),
        (
            "both sources",
            "grants:\n  audience: a\n  trusted:\n    - jwks_file: k\n      jwks_url: https://x\n",
            &[(4, 7, "both `jwks_file` and `jwks_url`", "two entries")],
        ),
        (
            "no source",
            "grants:\n  audience: a\n  trusted:\n    - refresh: 1m\n",
            &[(4, 7, "names no keys", "")],
        ),
        (
            "plain http",
            "grants:\n  audience: a\n  trusted:\n    - jwks_url: http://orchestrator/jwks\n",
            &[(4, 17, "plain http://", "https://")],
        ),
        (
            "refresh with a file",
            "grants:\n  audience: a\n  trusted:\n    - jwks_file: k\n      refresh: 1m\n",
            &[(5, 7, "goes with `jwks_url` only", "")],
        ),
        (
            "ttl",
            "grants:\n  audience: a\n  max_ttl: 48h\n  trusted:\n    - jwks_file: k\n",
            &[(3, 12, "between 1s and 24h", "")],
        ),
        (
            "typo",
            "grants:\n  audience: a\n  requierd: true\n  trusted:\n    - jwks_file: k\n",
            &[(3, 3, "unknown key `requierd`", "did you mean `required`?")],
        ),
    ];
    for (name, src, expected) in cases {
        check(name, src, expected);
    }
}

#[test]
fn traces_parse_with_defaults_and_every_error_is_located() {
    let c = ok("traces:\n  otlp_endpoint: http://10.0.0.7:4318\n");
    let t = c.traces.clone().expect("traces");
    // A URL without a path gets the OTLP traces path; plain http to any host is allowed (spans
    // carry no credential).
    assert_eq!(t.otlp_endpoint, "http://10.0.0.7:4318/v1/traces");
    assert_eq!(t.service_name, None);
    assert_eq!(t.ca_file, None);
    assert_eq!(t.timeout, crate::DEFAULT_EXPORT_TIMEOUT);
    let full = ok("traces:\n  otlp_endpoint: https://collector.internal/otlp/v1/traces/\n  ca_file: ca.pem\n  service_name: agent-7-sidekey\n  timeout: 2s\n");
    let t = full.traces.expect("traces");
    assert_eq!(t.otlp_endpoint, "https://collector.internal/otlp/v1/traces");
    assert_eq!(t.ca_file, Some(PathBuf::from("ca.pem")));
    assert_eq!(t.service_name.as_deref(), Some("agent-7-sidekey"));
    assert_eq!(t.timeout, Duration::from_secs(2));
    assert_eq!(ok("listen: {}\n").traces, None);

    let cases: &[(&str, &str, &[Expect])] = &[
        (
            "no endpoint",
            "traces:\n  service_name: s\n",
            &[(2, 3, "has no `otlp_endpoint`", "4318")],
        ),
        (
            "not a url",
            "traces:\n  otlp_endpoint: collector:4318\n",
            &[(2, 18, "must be an https:// URL", "")],
        ),
        (
            "query",
            "traces:\n  otlp_endpoint: http://c:4318/v1/traces?x=1\n",
            &[(2, 18, "must not have a query", "")],
        ),
        (
            "timeout",
            "traces:\n  otlp_endpoint: http://c:4318\n  timeout: 5m\n",
            &[(3, 12, "between 1ms and 60s", "")],
        ),
        (
            "typo",
            "traces:\n  otlp_endpiont: http://c:4318\n",
            &[
                (
                    2,
                    3,
                    "unknown key `otlp_endpiont`",
                    "did you mean `otlp_endpoint`?",
                ),
                (2, 3, "has no `otlp_endpoint`", ""),
            ],
        ),
    ];
    for (name, src, expected) in cases {
        check(name, src, expected);
    }
}

#[test]
fn github_app_issuers_and_credentials() {
    let c = ok(r#"identity: { token_file: /t }
issuers:
  github:
    kind: github-app
    app_id: 12345
    installation_id: 678
    private_key: { vault: bao, path: /secret/data/github-app/, field: private_key }
  ghes:
    kind: github-app
    app_id: 1
    installation_id: 2
    api_url: "https://github.internal/api/v3/"
    ca_file: /ca.pem
    private_key: { file: /key.pem }
  bao: { kind: vault, address: "https://vault", auth: { method: jwt, role: a } }
credentials:
  gh-issues: { issuer: github, repositories: [api, web], permissions: { issues: write, metadata: read } }
  gh-all: { issuer: ghes, permissions: { contents: read }, eager: true }
"#);
    let IssuerKind::GitHubApp(github) = &c.issuers[0].kind else {
        panic!("{:?}", c.issuers[0]);
    };
    assert_eq!((github.app_id, github.installation_id), (12345, 678));
    assert_eq!(github.api_url.url, "https://api.github.com");
    assert_eq!(
        github.private_key,
        PrivateKeySource::Vault {
            issuer: "bao".into(),
            path: "secret/data/github-app".into(),
            field: "private_key".into(),
        }
    );
    let IssuerKind::GitHubApp(ghes) = &c.issuers[1].kind else {
        panic!("{:?}", c.issuers[1]);
    };
    assert_eq!(ghes.api_url.url, "https://github.internal/api/v3");
    assert_eq!(ghes.ca_file, Some(PathBuf::from("/ca.pem")));
    assert_eq!(ghes.private_key, PrivateKeySource::File("/key.pem".into()));
    let issues = &c.credentials[0];
    assert_eq!(issues.repositories, ["api", "web"]);
    assert_eq!(
        issues.permissions,
        [
            ("issues".to_string(), "write".to_string()),
            ("metadata".to_string(), "read".to_string())
        ]
    );
    assert!(c.credentials[1].repositories.is_empty());
    assert!(c.credentials[1].eager);
    let d = c.describe();
    assert!(
        d.contains("github  kind github-app, https://api.github.com, app 12345, installation 678, key from bao secret/data/github-app field private_key"),
        "{d}"
    );
    assert!(
        d.contains("gh-issues  issuer github, permissions { issues: write, metadata: read }, repositories api, web, ttl 1h (GitHub's)"),
        "{d}"
    );
    assert!(
        d.contains("gh-all  issuer ghes, permissions { contents: read }, every repository of the installation"),
        "{d}"
    );
}

#[test]
#[rustfmt::skip]
fn github_app_errors() {
    const VAULT: &str = "identity: { token_file: /t }\nissuers:\n  bao: { kind: vault, address: \"https://vault\", auth: { method: jwt, role: a } }\n";
    let issuer = |gh: &str| format!("{VAULT}  gh: {{ kind: github-app, {gh} }}\n");
    const GH: &str = "app_id: 1, installation_id: 2, private_key: { file: /k }";
    let cred = |c: &str| format!("{VAULT}  gh: {{ kind: github-app, {GH} }}\ncredentials:\n  c: {{ {c} }}\n");
    let cases: &[(&str, String, &[Expect])] = &[
        ("nothing", issuer("ca_file: /c"), &[(4, 7, "issuer `gh` has no `app_id`", "App ID"), (4, 7, "issuer `gh` has no `installation_id`", ""), (4, 7, "issuer `gh` has no `private_key`", "private_key: { vault:")]),
        ("app id not a number", issuer("app_id: abc, installation_id: 2, private_key: { file: /k }"), &[(4, 35, "`app_id` of issuer `gh` must be an integer", "")]),
        ("app id zero", issuer("app_id: 0, installation_id: 2, private_key: { file: /k }"), &[(4, 35, "`app_id` of issuer `gh` 0 is out of range", "from 1")]),
        ("plain http to a remote api", issuer(&format!("{GH}, api_url: \"http://github.internal\"")), &[(4, 94, "plain http:// to a host that is not loopback", "")]),
        ("unknown key", issuer(&format!("{GH}, private_key_file: /k")), &[(4, 85, "unknown key `private_key_file` in issuer `gh`", "did you mean `private_key`?")]),
        ("both vault and file", issuer("app_id: 1, installation_id: 2, private_key: { vault: bao, path: p, field: f, file: /k }"), &[(4, 104, "`private_key` of issuer `gh` has both `vault` and `file`", "keep one")]),
        ("neither", issuer("app_id: 1, installation_id: 2, private_key: { path: p }"), &[(4, 71, "has neither `vault` nor `file`", "private_key: { vault:")]),
        ("vault without path and field", issuer("app_id: 1, installation_id: 2, private_key: { vault: bao }"), &[(4, 71, "has no `path`", "secret/data/github-app"), (4, 71, "has no `field`", "private_key")]),
        ("file with path", issuer("app_id: 1, installation_id: 2, private_key: { file: /k, path: p }"), &[(4, 83, "`path` in `private_key` of issuer `gh` applies to `vault` only", "")]),
        ("unknown vault issuer", issuer("app_id: 1, installation_id: 2, private_key: { vault: boa, path: p, field: f }"), &[(4, 80, "refers to unknown issuer `boa`", "did you mean `bao`?")]),
        ("not a vault issuer", format!("{VAULT}  local: {{ kind: local }}\n  gh: {{ kind: github-app, app_id: 1, installation_id: 2, private_key: {{ vault: local, path: p, field: f }} }}\n"), &[(5, 80, "must name a `kind: vault` issuer; `local` is a `local` issuer", "vault issuers: bao")]),
        ("no permissions", cred("issuer: gh"), &[(6, 3, "credential `c` has no `permissions`", "issues: write")]),
        ("empty permissions", cred("issuer: gh, permissions: {}"), &[(6, 33, "`permissions` of credential `c` is empty", "")]),
        ("bad level", cred("issuer: gh, permissions: { issues: all }"), &[(6, 43, "`permissions.issues` of credential `c` is `all`", "`read`, `write` or `admin`")]),
        ("bad permission name", cred("issuer: gh, permissions: { Issues: read }"), &[(6, 35, "`Issues` is not a GitHub permission name", "pull_requests")]),
        ("owner in repository", cred("issuer: gh, repositories: [acme/api], permissions: { issues: read }"), &[(6, 35, "`acme/api` names an owner", "give the name alone (`api`)")]),
        ("empty repositories", cred("issuer: gh, repositories: [], permissions: { issues: read }"), &[(6, 34, "`repositories` of credential `c` is empty", "remove `repositories`")]),
        ("twice", cred("issuer: gh, repositories: [api, API], permissions: { issues: read }"), &[(6, 40, "names `API` twice", "")]),
        ("ttl", cred("issuer: gh, permissions: { issues: read }, ttl: 10m"), &[(6, 51, "`ttl` does not apply to credential `c`: its issuer is a `github-app` issuer", "one hour")]),
        ("key of another kind", cred("issuer: gh, permissions: { issues: read }, path: p"), &[(6, 51, "`path` does not apply to credential `c`: its issuer is a `github-app` issuer", "github-app credentials take: repositories, permissions, eager")]),
        ("per_task", cred("issuer: gh, permissions: { issues: read }, per_task: true"), &[(6, 51, "`per_task` does not apply to credential `c`", "")]),
        ("narrowing on a vault credential", format!("{VAULT}credentials:\n  c: {{ issuer: bao, path: p, field: f, permissions: {{ issues: read }} }}\n"), &[(5, 40, "`permissions` does not apply to credential `c`: its issuer is a `vault` issuer", "")]),
        ("sigv4 with a github credential", format!("{}routes:\n  - name: r\n    hosts: [api.github.com]\n    methods: [GET]\n    credential: c\n    inject: {{ sigv4: {{ service: s3, region: us-east-1 }} }}\n", cred("issuer: gh, permissions: { issues: read }")), &[(11, 17, "does not come from an aws-sts issuer", "")]),
    ];
    for (name, src, expected) in cases {
        check(name, src, expected);
    }
}

#[test]
fn cedar_section_and_route_actions() {
    let c = ok("cedar:\n  policies: p.cedar\n  schema: s.cedarschema\n  headers: [X-GitHub-Event, content-type, x-github-event]\n");
    let cedar = c.cedar.expect("cedar");
    assert_eq!(cedar.policies, PathBuf::from("p.cedar"));
    assert_eq!(cedar.schema, Some(PathBuf::from("s.cedarschema")));
    assert_eq!(
        cedar.headers,
        ["x-github-event", "content-type"],
        "lower-case, once each"
    );
    assert_eq!(ok("listen: {}\n").cedar, None);
    let routed = ok("routes:\n  - name: gh\n    hosts: [api.github.com]\n    methods: [POST]\n    action: comment_on_issue\n");
    assert_eq!(routed.routes[0].action.as_deref(), Some("comment_on_issue"));

    let cases: &[(&str, &str, &[Expect])] = &[
        (
            "no policies",
            "cedar:\n  schema: s.cedarschema\n",
            &[(2, 3, "has no `policies`", "policies.cedar")],
        ),
        (
            "a credential header",
            "cedar:\n  policies: p.cedar\n  headers: [authorization, Cookie]\n",
            &[
                (3, 13, "`authorization` cannot be given to Cedar policies", "context.user"),
                (3, 28, "`cookie` cannot be given to Cedar policies", ""),
            ],
        ),
        (
            "not a header name",
            "cedar:\n  policies: p.cedar\n  headers: [\"x y\"]\n",
            &[(3, 13, "is not a header name", "")],
        ),
        (
            "an action that is not a name",
            "routes:\n  - name: gh\n    hosts: [api.github.com]\n    methods: [POST]\n    action: \"comment on\"\n",
            &[(5, 13, "must be a name", "comment_on_issue")],
        ),
    ];
    for (name, src, expected) in cases {
        check(name, src, expected);
    }
}
