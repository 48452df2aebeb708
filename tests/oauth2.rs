//! The `kind: oauth2` issuer (docs/issuers.md) against a real OAuth 2.0 server (oidc-provider,
//! tests/common/oauth2.rs): client credentials with each client authentication, refresh ahead
//! of expiry, RFC 8693 token exchange, opaque tokens, the token endpoint failing, and no secret
//! ever showing up in logs, audit or refusals.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::oauth2::*;
use crate::common::*;
use regex::Regex;
use serde_json::Value;

/// The resource every `api` credential asks for, unless a test says otherwise.
const API_RESOURCE: &str = "https://api.test.local/";

/// The `kind: oauth2` issuer `idp` (YAML lines, indented for `issuers.idp`).
struct Idp {
    lines: Vec<String>,
}

impl Idp {
    fn new(server: &OAuth2Server, grant: &str, client_id: &str) -> Idp {
        Idp {
            lines: vec![
                "kind: oauth2".into(),
                format!("token_url: {}", server.token_url()),
                format!("grant: {grant}"),
                format!("client_id: {client_id}"),
            ],
        }
    }
    /// client_credentials, client_secret_basic with the server's secret.
    fn basic(server: &OAuth2Server) -> Idp {
        Idp::new(server, "client_credentials", BASIC_CLIENT).line(&format!(
            "client_secret_file: {}",
            q(&server.client_secret_file())
        ))
    }
    /// client_credentials, client_secret_post with the server's secret.
    fn post(server: &OAuth2Server) -> Idp {
        Idp::new(server, "client_credentials", POST_CLIENT)
            .line(&format!(
                "client_secret_file: {}",
                q(&server.client_secret_file())
            ))
            .line("client_secret_auth: post")
    }
    /// client_credentials, private_key_jwt with the server's `kind` key.
    fn pkjwt(server: &OAuth2Server, kind: KeyType, with_kid: bool) -> Idp {
        let idp = Idp::new(server, "client_credentials", PKJWT_CLIENT).line(&format!(
            "private_key_file: {}",
            q(server.client_key_file(kind))
        ));
        if with_kid {
            idp.line(&format!("key_id: {}", kind.kid()))
        } else {
            idp
        }
    }
    fn line(mut self, l: &str) -> Idp {
        self.lines.push(l.to_string());
        self
    }
    fn yaml(&self, name: &str) -> String {
        let mut s = format!("  {name}:\n");
        for l in &self.lines {
            s.push_str(&format!("    {l}\n"));
        }
        s
    }
}

/// A path as a double-quoted YAML scalar.
fn q(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

/// The credential `api` of issuer `idp` (YAML lines, indented for `credentials.api`).
fn api_credential(audience: Option<&str>, resource: Option<&str>, scope: Option<&str>) -> String {
    let mut s = String::from("  api:\n    issuer: idp\n");
    if let Some(a) = audience {
        s.push_str(&format!("    audience: \"{a}\"\n"));
    }
    if let Some(r) = resource {
        s.push_str(&format!("    resource: \"{r}\"\n"));
    }
    if let Some(sc) = scope {
        s.push_str(&format!("    scope: \"{sc}\"\n"));
    }
    s
}

/// Config with the issuers `local` and those in `issuers` (from [`Idp::yaml`]), the credential
/// `demo` (local) and those in `credentials`, and routes
/// - `api`: https://api.test.local, GET/POST, credential `api`, `Authorization: Bearer {token}`;
/// - `other`: https://other.test.local, GET, credential `demo` (the local issuer);
///
/// then `extra_routes`. `top` goes before `issuers:` (e.g. `identity:`).
fn config(top: &str, issuers: &str, credentials: &str, extra_routes: &str) -> String {
    format!(
        r#"upstream:
  extra_ca_files: ["{{test_ca}}"]
  resolve:
    "api.test.local:443": "{{upstream}}"
    "other.test.local:443": "{{upstream}}"
    "paths.test.local:443": "{{upstream}}"
    "opaque.test.local:443": "{{upstream}}"
    "exch.test.local:443": "{{upstream}}"
    "bad.test.local:443": "{{upstream}}"
{top}
issuers:
  local: {{ kind: local }}
{issuers}credentials:
  demo: {{ issuer: local, audience: demo-api, ttl: 5m }}
{credentials}routes:
  - name: api
    hosts: [api.test.local]
    methods: [GET, POST]
    credential: api
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
  - name: other
    hosts: [other.test.local]
    methods: [GET]
    credential: demo
    inject: {{ header: Authorization, value: "Bearer {{token}}" }}
    allow_private: true
{extra_routes}"#
    )
}

/// A route for `host` with credential `credential` and bearer injection.
fn route(name: &str, host: &str, credential: &str) -> String {
    format!(
        "  - name: {name}\n    hosts: [{host}]\n    methods: [GET]\n    credential: {credential}\n    \
         inject: {{ header: Authorization, value: \"Bearer {{token}}\" }}\n    allow_private: true\n"
    )
}

fn get(sk: &Sidekey, url: &str) -> CurlResult {
    curl_via(sk, &[url])
}

/// GET https://api.test.local<path> through sidekey, expecting 200; returns the bearer token the
/// upstream received.
#[track_caller]
fn api_token(env: &Env, sk: &Sidekey, path: &str) -> String {
    let res = get(sk, &format!("https://api.test.local{path}"));
    res.assert_status(200);
    echoed_bearer(env, &res)
}

/// The `Authorization: Bearer` value the upstream received for the request an `/echo` response
/// answers. Read from the upstream's record: sidekey masks the credential in the echo itself.
#[track_caller]
fn echoed_bearer(env: &Env, res: &CurlResult) -> String {
    let body = res.json();
    let path = body["path"]
        .as_str()
        .unwrap_or_else(|| panic!("not an echo: {body}"));
    let seen = env
        .upstream
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("the upstream has no request for {path}"));
    let auth = seen
        .header("authorization")
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("the upstream got no Authorization: {body}"));
    auth.strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer token: {auth}"))
        .to_string()
}

fn jti(token: &str) -> String {
    decode_jwt(token).1["jti"]
        .as_str()
        .expect("jti")
        .to_string()
}

fn credential_events(sk: &Sidekey, credential: &str) -> Vec<Value> {
    sk.audit()
        .into_iter()
        .filter(|r| r["type"] == "credential" && r["credential"] == credential)
        .collect()
}

fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `aud` as a list.
fn auds(payload: &Value) -> Vec<String> {
    match &payload["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => vec![],
    }
}

/// Checks a token from the server: signature (its JWKS), issuer, client, audience and scope
/// (not its expiry: see the refresh test).
#[track_caller]
fn assert_server_jwt(
    server: &OAuth2Server,
    token: &str,
    client_id: &str,
    want_aud: &[&str],
    scope: Option<&str>,
) -> Value {
    let verified = verify_jwt(&server.jwks(), token);
    assert_eq!(
        verified["valid"], true,
        "token must verify against the server's JWKS: {verified}"
    );
    let payload = verified["payload"].clone();
    assert_eq!(payload["iss"], server.issuer().as_str(), "{payload}");
    assert_eq!(payload["client_id"], client_id, "{payload}");
    let got = auds(&payload);
    for a in want_aud {
        assert!(
            got.iter().any(|g| g == a),
            "aud should include {a}: {payload}"
        );
    }
    match scope {
        Some(s) => assert_eq!(payload["scope"], s, "{payload}"),
        None => assert!(payload.get("scope").is_none(), "{payload}"),
    }
    assert!(
        payload["jti"].as_str().is_some_and(|j| !j.is_empty()),
        "{payload}"
    );
    payload
}

/// The parameters of a token request: exactly `want` (plus `client_id`, which a client may
/// always send, and the client-auth ones checked elsewhere).
#[track_caller]
fn assert_params(req: &Value, want: &[(&str, &str)]) {
    let params = req["params"].as_object().expect("params");
    for (k, v) in want {
        assert_eq!(
            params.get(*k).and_then(Value::as_str),
            Some(*v),
            "parameter {k}: {req}"
        );
    }
    let allowed: HashSet<&str> = want
        .iter()
        .map(|(k, _)| *k)
        .chain(["client_id", "client_assertion_type"])
        .collect();
    for k in params.keys() {
        assert!(
            allowed.contains(k.as_str()),
            "unexpected parameter {k} sent to the token endpoint: {req}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// client_credentials

/// Many requests (six concurrent first, then four in a row) through one client_credentials
/// credential: one token request, the same token everywhere, verified, audited by its `jti`.
/// Returns the only token request the server saw.
fn client_credentials_case(
    server: &OAuth2Server,
    idp: Idp,
    client_id: &str,
    audience: Option<&str>,
    resource: Option<&str>,
    scope: Option<&str>,
) -> Value {
    let env = Env::new();
    let sk = env.sidekey(&config(
        "",
        &idp.yaml("idp"),
        &api_credential(audience, resource, scope),
        "",
    ));
    let mut tokens: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (sk, env) = (&sk, &env);
                s.spawn(move || api_token(env, sk, &format!("/echo/first/{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for i in 0..4 {
        tokens.push(api_token(&env, &sk, &format!("/echo/then/{i}")));
    }
    let distinct: BTreeSet<&String> = tokens.iter().collect();
    assert_eq!(distinct.len(), 1, "one token for all requests (cached)");
    let token = &tokens[0];
    let mut want_aud: Vec<&str> = audience.into_iter().chain(resource).collect();
    if want_aud.is_empty() {
        want_aud.push(DEFAULT_RESOURCE);
    }
    let payload = assert_server_jwt(server, token, client_id, &want_aud, scope);
    let token_jti = payload["jti"].as_str().unwrap().to_string();

    // Audit: every request keyed by the token's jti; one `issued` event.
    let records = sk.expect_request_records(10);
    for r in &records {
        assert_eq!(r["route"], "api", "{r}");
        assert_eq!(r["credential"], "api", "{r}");
        assert_eq!(r["issuer"], "idp", "{r}");
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(
            r["credential_id"],
            token_jti.as_str(),
            "credential_id = jti: {r}"
        );
    }
    let issued: Vec<Value> = credential_events(&sk, "api")
        .into_iter()
        .filter(|e| e["event"] == "issued")
        .collect();
    assert_eq!(issued.len(), 1, "one issuance: {issued:#?}");
    assert_eq!(issued[0]["issuer"], "idp", "{}", issued[0]);
    assert_eq!(
        issued[0]["credential_id"],
        token_jti.as_str(),
        "{}",
        issued[0]
    );

    // The token endpoint: called once, with the configured parameters.
    let stats = server.stats();
    assert_eq!(
        stats["token_requests"], 1,
        "token endpoint called once: {stats}"
    );
    assert_eq!(stats["issued"]["client_credentials"], 1, "{stats}");
    let req = stats["last"].clone();
    let mut want = vec![("grant_type", "client_credentials")];
    for (k, v) in [
        ("audience", audience),
        ("resource", resource),
        ("scope", scope),
    ] {
        if let Some(v) = v {
            want.push((k, v));
        }
    }
    assert_params(&req, &want);
    assert_eq!(req["client_id"], client_id, "{req}");
    assert_eq!(req["response"]["jti"], token_jti.as_str(), "{req}");
    assert_eq!(
        req["content_type"], "application/x-www-form-urlencoded",
        "{req}"
    );
    req
}

#[test]
fn client_credentials_with_client_secret_basic() {
    let server = OAuth2Server::start(OAuth2Options::default());
    let req = client_credentials_case(
        &server,
        Idp::basic(&server),
        BASIC_CLIENT,
        Some("demo-api"),
        Some(API_RESOURCE),
        Some("read write"),
    );
    assert_eq!(req["client_auth"], "client_secret_basic", "{req}");
    assert_eq!(req["basic_client_id"], BASIC_CLIENT, "{req}");
    assert_eq!(req["basic_secret_matches"], true, "{req}");
    assert!(
        req.get("client_secret_present").is_none(),
        "secret also in the body: {req}"
    );
}

#[test]
fn client_credentials_with_client_secret_post() {
    let server = OAuth2Server::start(OAuth2Options::default());
    let req = client_credentials_case(
        &server,
        Idp::post(&server),
        POST_CLIENT,
        Some("demo-api"),
        None,
        Some("read"),
    );
    assert_eq!(req["client_auth"], "client_secret_post", "{req}");
    assert_eq!(req["params"]["client_id"], POST_CLIENT, "{req}");
    assert_eq!(req["client_secret_matches"], true, "{req}");
    assert!(
        req.get("authorization_scheme").is_none(),
        "no Authorization header: {req}"
    );
}

#[test]
fn client_credentials_with_private_key_jwt() {
    let server = OAuth2Server::start(OAuth2Options::default());
    let before = now_unix();
    let req = client_credentials_case(
        &server,
        Idp::pkjwt(&server, KeyType::Es256, true),
        PKJWT_CLIENT,
        None,
        Some(API_RESOURCE),
        None,
    );
    assert_eq!(req["client_auth"], "private_key_jwt", "{req}");
    assert_eq!(req["params"]["client_assertion_type"], JWT_BEARER, "{req}");
    let header = &req["client_assertion_header"];
    assert_eq!(header["alg"], "ES256", "{req}");
    assert_eq!(
        header["kid"],
        KeyType::Es256.kid(),
        "key_id is the kid: {req}"
    );
    let claims = &req["client_assertion_claims"];
    assert_eq!(claims["iss"], PKJWT_CLIENT, "{req}");
    assert_eq!(claims["sub"], PKJWT_CLIENT, "{req}");
    let aud_ok = auds(claims)
        .iter()
        .any(|a| *a == server.token_url() || *a == server.issuer());
    assert!(
        aud_ok,
        "assertion aud is the token endpoint (or issuer): {req}"
    );
    assert!(
        claims["jti"].as_str().is_some_and(|j| !j.is_empty()),
        "{req}"
    );
    let exp = claims["exp"].as_u64().expect("assertion exp");
    assert!(
        exp > before && exp <= now_unix() + 600,
        "assertion exp should be short: {req}"
    );
}

#[test]
fn private_key_jwt_with_ed25519_and_rsa_keys() {
    let server =
        OAuth2Server::start(OAuth2Options::default().keys(&[KeyType::Ed25519, KeyType::Rsa]));
    let env = Env::new();
    let mut issuers = Idp::pkjwt(&server, KeyType::Ed25519, false).yaml("idp");
    issuers.push_str(&Idp::pkjwt(&server, KeyType::Rsa, true).yaml("idprsa"));
    let credentials = format!(
        "{}  viarsa: {{ issuer: idprsa, audience: rsa-api }}\n",
        api_credential(Some("ed-api"), None, None)
    );
    let sk = env.sidekey(&config(
        "",
        &issuers,
        &credentials,
        &route("rsa", "paths.test.local", "viarsa"),
    ));
    let ed = api_token(&env, &sk, "/echo/ed");
    assert_server_jwt(&server, &ed, PKJWT_CLIENT, &["ed-api"], None);
    let res = get(&sk, "https://paths.test.local/echo/rsa");
    res.assert_status(200);
    let rsa = echoed_bearer(&env, &res);
    assert_server_jwt(&server, &rsa, PKJWT_CLIENT, &["rsa-api"], None);

    let reqs = server.token_requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    let by_aud = |aud: &str| {
        reqs.iter()
            .find(|r| r["params"]["audience"] == aud)
            .unwrap_or_else(|| panic!("no token request for {aud}: {reqs:#?}"))
            .clone()
    };
    let r = by_aud("ed-api");
    assert_eq!(r["client_assertion_header"]["alg"], "EdDSA", "{r}");
    assert!(
        r["client_assertion_header"].get("kid").is_none(),
        "no key_id, no kid: {r}"
    );
    let r = by_aud("rsa-api");
    assert_eq!(r["client_assertion_header"]["alg"], "RS256", "{r}");
    assert_eq!(
        r["client_assertion_header"]["kid"],
        KeyType::Rsa.kid(),
        "{r}"
    );
}

#[test]
fn client_secret_basic_form_encodes_id_and_secret() {
    // RFC 6749 §2.3.1: client_id and secret are application/x-www-form-urlencoded before they
    // are joined with ':' and base64-encoded; the server decodes them ('+' is a space).
    let secret = format!("p+a/s=s%w:o&r d-{}", random_hex(4));
    let server = OAuth2Server::start(OAuth2Options::default().secret(&secret));
    let env = Env::new();
    let sk = env.sidekey(&config(
        "",
        &Idp::basic(&server).yaml("idp"),
        &api_credential(Some("demo-api"), None, None),
        "",
    ));
    let token = api_token(&env, &sk, "/echo/encoded");
    assert_server_jwt(&server, &token, BASIC_CLIENT, &["demo-api"], None);
    let req = server.stats()["last"].clone();
    assert_eq!(req["basic_secret_matches"], true, "{req}");
}

// ---------------------------------------------------------------------------------------------
// Refresh ahead of expiry

#[test]
fn refreshes_ahead_of_expiry_and_never_sends_an_expired_token() {
    const TTL: u64 = 8;
    const RUN: Duration = Duration::from_secs(25);
    let server = OAuth2Server::start(
        OAuth2Options::default()
            .ttl(Duration::from_secs(TTL))
            .keys(&[KeyType::Ed25519]),
    );
    let env = Env::new();
    let sk = env.sidekey(&config(
        "",
        &Idp::pkjwt(&server, KeyType::Ed25519, true).yaml("idp"),
        &api_credential(Some("demo-api"), None, Some("read")),
        "",
    ));

    // (path, token, sent at, answered at)
    let mut seen: Vec<(String, String, f64, f64)> = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < RUN {
        let path = format!("/echo/refresh/{i}");
        let t0 = now_f64();
        let res = get(&sk, &format!("https://api.test.local{path}"));
        let t1 = now_f64();
        assert_eq!(
            (res.exit, res.status),
            (0, 200),
            "request {i} at {:.1}s failed: {}; body {}",
            start.elapsed().as_secs_f64(),
            res.stderr,
            res.body_str()
        );
        seen.push((path, echoed_bearer(&env, &res), t0, t1));
        i += 1;
        // Not an event wait: the agent's pace, sampling the token across three lifetimes.
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(seen.len() >= 20, "only {} requests in {RUN:?}", seen.len());

    // No request carried an expired token: the upstream received each one before `answered
    // at`, when it was still valid. And it was refreshed ahead: at `sent at` it had a good part
    // of its lifetime left (refresh at ~2/3 of 8 s leaves ~2.7 s).
    let mut order: Vec<String> = Vec::new();
    for (path, token, t0, t1) in &seen {
        let payload = decode_jwt(token).1;
        let exp = payload["exp"].as_f64().expect("exp");
        assert!(
            exp > *t1,
            "{path}: token {} expired at {exp}, the upstream got it by {t1:.2}",
            payload["jti"]
        );
        assert!(
            exp - t0 > 1.0,
            "{path}: token {} sent at {t0:.2} with exp {exp}: not refreshed ahead of expiry \
             (at ~2/3 of {TTL}s)",
            payload["jti"]
        );
        if order.last() != Some(token) {
            assert!(
                !order.contains(token),
                "{path}: an old token came back after a newer one"
            );
            order.push(token.clone());
        }
    }
    // Several tokens: refreshed at about 2/3 of 8 s over 25 s.
    assert!(
        order.len() >= 3,
        "expected at least 3 successive tokens over {RUN:?} with a {TTL}s TTL, saw {}",
        order.len()
    );
    for t in &order {
        assert_server_jwt(&server, t, PKJWT_CLIENT, &["demo-api"], Some("read"));
    }

    // Audit: each request keyed by the jti of the token it carried; issued + refreshed events.
    let records = sk.expect_request_records(seen.len());
    for (path, token, _, _) in &seen {
        let r = records
            .iter()
            .find(|r| r["path"] == path.as_str())
            .unwrap_or_else(|| panic!("no record for {path}"));
        assert_eq!(r["credential_id"], jti(token).as_str(), "{r}");
    }
    let events = credential_events(&sk, "api");
    let count = |kind: &str| events.iter().filter(|e| e["event"] == kind).count();
    assert!(count("issued") >= 1, "{events:#?}");
    assert!(
        count("issued") + count("refreshed") >= order.len(),
        "one issued/refreshed event per token: {events:#?}"
    );
    assert_eq!(count("failed"), 0, "{events:#?}");
    for t in &order {
        let id = jti(t);
        assert!(
            events.iter().any(|e| e["credential_id"] == id.as_str()
                && (e["event"] == "issued" || e["event"] == "refreshed")),
            "no issued/refreshed event for token {id}: {events:#?}"
        );
    }

    // The token endpoint: not hammered, every client assertion fresh.
    let stats = server.stats();
    let reqs = stats["requests"].as_array().unwrap();
    assert_eq!(stats["failed"], serde_json::json!({}), "{stats}");
    assert!(
        reqs.len() >= order.len() && reqs.len() <= 10,
        "{} token requests for {} tokens in {RUN:?}",
        reqs.len(),
        order.len()
    );
    let jtis: HashSet<&str> = reqs
        .iter()
        .filter_map(|r| r["client_assertion_claims"]["jti"].as_str())
        .collect();
    assert_eq!(jtis.len(), reqs.len(), "client assertion jti reused");
}

// ---------------------------------------------------------------------------------------------
// Token exchange (RFC 8693)

#[test]
fn token_exchange_uses_the_identity_token_and_picks_up_its_rotation() {
    let identity = Identity::new("agent-7", "sidekey-oauth2");
    let server = OAuth2Server::start(
        OAuth2Options::default()
            .ttl(Duration::from_secs(6))
            .trust_identity(identity.public_pem()),
    );
    let env = Env::new();
    let idp = Idp::new(&server, "token_exchange", POST_CLIENT)
        .line(&format!(
            "client_secret_file: {}",
            q(&server.client_secret_file())
        ))
        .line("client_secret_auth: post");
    let sk = env.sidekey(&config(
        &format!("identity:\n  token_file: {}\n", q(identity.token_file())),
        &idp.yaml("idp"),
        &api_credential(Some("exchange-api"), None, Some("read")),
        "",
    ));

    let first = api_token(&env, &sk, "/echo/te/first");
    let payload = assert_server_jwt(
        &server,
        &first,
        POST_CLIENT,
        &["exchange-api"],
        Some("read"),
    );
    assert_eq!(
        payload["sub"], "agent-7",
        "sub of the identity token: {payload}"
    );
    assert!(payload.get("act").is_none(), "{payload}");
    let r = sk.wait_audit(
        |r| r["type"] == "request" && r["path"] == "/echo/te/first",
        1,
        sidekey::AUDIT_TIMEOUT,
    );
    assert_eq!(r[0]["credential_id"], payload["jti"], "{}", r[0]);

    let req = server.stats()["last"].clone();
    assert_eq!(req["grant_type"], TOKEN_EXCHANGE, "{req}");
    assert_params(
        &req,
        &[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token_type", TOKEN_TYPE_JWT),
            ("audience", "exchange-api"),
            ("scope", "read"),
        ],
    );
    assert_eq!(req["subject_token_claims"]["sub"], "agent-7", "{req}");
    assert!(
        req.get("actor_token_claims").is_none(),
        "no actor token: {req}"
    );
    assert_eq!(req["client_auth"], "client_secret_post", "{req}");

    // The kubelet rotates the token (another sub, to tell them apart): the next exchange, at
    // the refresh ahead of expiry, sends the new one.
    identity.write("agent-8", "sidekey-oauth2", Duration::from_secs(3600));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    let rotated = loop {
        let token = api_token(&env, &sk, &format!("/echo/te/{i}"));
        i += 1;
        let sub = decode_jwt(&token).1["sub"].clone();
        if sub == "agent-8" {
            break token;
        }
        assert_eq!(sub, "agent-7", "{token}");
        assert!(
            Instant::now() < deadline,
            "the rotated identity token was not used within 15 s (6 s tokens)"
        );
        // The pace of this poll: each try is an agent request, the awaited refresh is due
        // on sidekey's own schedule (ahead of the token's expiry).
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_server_jwt(
        &server,
        &rotated,
        POST_CLIENT,
        &["exchange-api"],
        Some("read"),
    );
    let reqs = server.token_requests();
    assert!(
        reqs.iter()
            .any(|r| r["subject_token_claims"]["sub"] == "agent-8" && r["status"] == 200),
        "{reqs:#?}"
    );
    assert_eq!(server.stats()["failed"], serde_json::json!({}));
}

#[test]
fn token_exchange_with_an_actor_token_and_own_subject_token_file() {
    let subject = Identity::new("agent-7", "sidekey-oauth2");
    let actor = Identity::new("orchestrator-1", "sidekey-oauth2");
    let server = OAuth2Server::start(
        OAuth2Options::default()
            .trust_identity(subject.public_pem())
            .trust_identity(actor.public_pem()),
    );
    let env = Env::new();
    let idp = Idp::new(&server, "token_exchange", BASIC_CLIENT)
        .line(&format!(
            "client_secret_file: {}",
            q(&server.client_secret_file())
        ))
        .line(&format!("subject_token_file: {}", q(subject.token_file())))
        .line(&format!("actor_token_file: {}", q(actor.token_file())));
    let sk = env.sidekey(&config(
        "",
        &idp.yaml("idp"),
        &api_credential(None, Some(API_RESOURCE), None),
        "",
    ));
    let token = api_token(&env, &sk, "/echo/actor");
    let payload = assert_server_jwt(&server, &token, BASIC_CLIENT, &[API_RESOURCE], None);
    assert_eq!(payload["sub"], "agent-7", "{payload}");
    assert_eq!(payload["act"]["sub"], "orchestrator-1", "{payload}");

    let req = server.stats()["last"].clone();
    assert_params(
        &req,
        &[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token_type", TOKEN_TYPE_JWT),
            ("actor_token_type", TOKEN_TYPE_JWT),
            ("resource", API_RESOURCE),
        ],
    );
    assert_eq!(req["subject_token_claims"]["sub"], "agent-7", "{req}");
    assert_eq!(req["actor_token_claims"]["sub"], "orchestrator-1", "{req}");
    assert_eq!(req["client_auth"], "client_secret_basic", "{req}");
}

#[test]
fn token_exchange_refused_by_the_server_is_credential_unavailable() {
    let trusted = Identity::new("agent-7", "sidekey-oauth2");
    let untrusted = Identity::new("agent-7", "sidekey-oauth2");
    let server = OAuth2Server::start(OAuth2Options::default().trust_identity(trusted.public_pem()));
    let env = Env::new();
    let idp = Idp::new(&server, "token_exchange", BASIC_CLIENT).line(&format!(
        "client_secret_file: {}",
        q(&server.client_secret_file())
    ));
    let sk = env.sidekey(&config(
        &format!("identity:\n  token_file: {}\n", q(untrusted.token_file())),
        &idp.yaml("idp"),
        &api_credential(Some("exchange-api"), None, None),
        "",
    ));
    let res = get(&sk, "https://api.test.local/echo/refused");
    let body = res.expect_refusal(503, "credential_unavailable");
    let text = res.body_str();
    assert!(
        !text.contains(&untrusted.token()),
        "identity token in the refusal: {text}"
    );
    assert!(
        !text.contains(server.client_secret()),
        "secret in the refusal: {text}"
    );
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    let req = server.stats()["last"].clone();
    assert_eq!(req["error"], "invalid_grant", "{req}");
    // The other routes keep working.
    get(&sk, "https://other.test.local/echo/still").assert_status(200);
    assert!(env.upstream.requests_to("/echo/refused").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Opaque tokens

#[test]
fn opaque_token_is_audited_by_a_hash_prefix() {
    let server = OAuth2Server::start(OAuth2Options::default());
    let env = Env::new();
    let sk = env.sidekey(&config(
        "",
        &Idp::basic(&server).yaml("idp"),
        &api_credential(None, Some("https://opaque.test.local/"), None),
        "",
    ));
    let token = api_token(&env, &sk, "/echo/opaque/1");
    assert_eq!(api_token(&env, &sk, "/echo/opaque/2"), token, "cached");
    assert!(!token.contains('.'), "an opaque token, not a JWT: {token}");
    let resp = server.stats()["last"]["response"].clone();
    assert_eq!(resp["format"], "opaque", "{resp}");
    let sha = resp["token_sha256"].as_str().unwrap();
    let want_id = format!("sha256:{}", &sha[..12]);

    let re = Regex::new("^sha256:[0-9a-f]{12}$").unwrap();
    for r in sk.expect_request_records(2) {
        let id = r["credential_id"].as_str().unwrap_or_default();
        assert!(re.is_match(id), "credential_id {id:?}: {r}");
        assert_eq!(id, want_id, "sha256 of the token, first 12 hex chars: {r}");
    }
    let events = credential_events(&sk, "api");
    let issued = events
        .iter()
        .find(|e| e["event"] == "issued")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(issued["credential_id"], want_id.as_str(), "{issued}");
    assert!(
        !sk.stdout_text().contains(&token),
        "the token itself is in the audit"
    );
}

// ---------------------------------------------------------------------------------------------
// Faults

#[test]
fn cached_token_is_used_while_the_server_is_down() {
    let mut server = OAuth2Server::start(OAuth2Options::default());
    let env = Env::new();
    let sk = env.sidekey(&config(
        "",
        &Idp::basic(&server).yaml("idp"),
        &api_credential(Some("demo-api"), None, None),
        "",
    ));
    let token = api_token(&env, &sk, "/echo/up");
    server.stop();
    for i in 0..5 {
        assert_eq!(api_token(&env, &sk, &format!("/echo/down/{i}")), token);
    }
    let records = sk.expect_request_records(6);
    assert!(records
        .iter()
        .all(|r| r["credential_id"] == jti(&token).as_str()));
}

#[test]
fn expired_token_with_the_server_down_is_503_then_recovers_when_it_is_back() {
    let mut server = OAuth2Server::start(OAuth2Options::default().ttl(Duration::from_secs(4)));
    let env = Env::new();
    let sk = env.sidekey(&config(
        "",
        &Idp::basic(&server).yaml("idp"),
        &api_credential(Some("demo-api"), None, None),
        "",
    ));
    let token = api_token(&env, &sk, "/echo/before");
    let exp = decode_jwt(&token).1["exp"].as_f64().unwrap();
    server.stop();

    // Wait until the cached token has expired: sidekey must not use it any more.
    while now_f64() < exp + 0.5 {
        // Not an event wait: waiting out the token's lifetime (its `exp`, by the clock).
        std::thread::sleep(Duration::from_millis(100));
    }
    let res = get(&sk, "https://api.test.local/echo/down");
    let body = res.expect_refusal(503, "credential_unavailable");
    assert_eq!(res.header("content-type"), Some("application/json"));
    let text = res.body_str();
    assert!(!text.contains(server.client_secret()), "{text}");
    assert!(!text.contains(&token), "{text}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        env.upstream.requests_to("/echo/down").is_empty(),
        "forwarded without a valid credential"
    );
    // Other routes keep serving.
    get(&sk, "https://other.test.local/echo/other").assert_status(200);
    let r = sk.wait_audit(
        |r| r["type"] == "request" && r["path"] == "/echo/down",
        1,
        sidekey::AUDIT_TIMEOUT,
    );
    assert_eq!(r[0]["code"], "credential_unavailable", "{}", r[0]);
    assert_eq!(r[0]["status"], 503, "{}", r[0]);
    let events = credential_events(&sk, "api");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "failed" || e["event"] == "expired"),
        "a failed/expired credential event: {events:#?}"
    );

    // The server comes back on the same address: sidekey recovers by itself.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    let fresh = loop {
        let res = get(&sk, &format!("https://api.test.local/echo/after/{i}"));
        i += 1;
        if res.status == 200 {
            break echoed_bearer(&env, &res);
        }
        res.expect_refusal(503, "credential_unavailable");
        assert!(
            Instant::now() < deadline,
            "no recovery within 20 s of the server's restart"
        );
        // The pace of this poll: each try is an agent request; sidekey retries the issuer on
        // its own schedule.
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_ne!(jti(&fresh), jti(&token), "a new token");
    assert_server_jwt(&server, &fresh, BASIC_CLIENT, &["demo-api"], None);
    assert!(server.issued("client_credentials") >= 1);
}

#[test]
fn wrong_client_secret_is_503_with_a_clear_message_and_no_secret() {
    let server = OAuth2Server::start(OAuth2Options::default());
    let wrong = format!("wrong-canary-secret-{}", random_hex(12));
    let wrong_file = server.write_file("wrong-secret", &wrong);
    let env = Env::new();
    let idp = Idp::new(&server, "client_credentials", BASIC_CLIENT)
        .line(&format!("client_secret_file: {}", q(&wrong_file)));
    let sk = env.sidekey(&config(
        "",
        &idp.yaml("idp"),
        &api_credential(Some("demo-api"), None, None),
        "",
    ));
    let res = get(&sk, "https://api.test.local/echo/denied");
    let body = res.expect_refusal(503, "credential_unavailable");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("invalid_client"),
        "the message should say what the token endpoint answered (invalid_client): {message}"
    );
    let text = res.body_str();
    for secret in [wrong.as_str(), server.client_secret()] {
        assert!(!text.contains(secret), "secret in the refusal: {text}");
        assert!(
            !sk.stderr().contains(secret),
            "secret in the log:\n{}",
            sk.stderr()
        );
        assert!(!sk.stdout_text().contains(secret), "secret in the audit");
    }
    let req = server.stats()["last"].clone();
    assert_eq!(req["error"], "invalid_client", "{req}");
    assert_eq!(req["basic_secret_matches"], false, "{req}");

    // The proxy keeps serving other routes, and keeps refusing this one (no hang).
    get(&sk, "https://other.test.local/echo/fine").assert_status(200);
    get(&sk, "https://api.test.local/echo/denied-again")
        .expect_refusal(503, "credential_unavailable");
    let events = credential_events(&sk, "api");
    let failed: Vec<&Value> = events.iter().filter(|e| e["event"] == "failed").collect();
    assert!(!failed.is_empty(), "a failed event: {events:#?}");
    for e in failed {
        assert_eq!(e["issuer"], "idp", "{e}");
        assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Canary: no secret anywhere

#[test]
fn no_secret_token_or_key_in_logs_audit_or_refusals() {
    let identity = Identity::new("agent-7", "sidekey-oauth2");
    let server = OAuth2Server::start(
        OAuth2Options::default()
            .keys(&[KeyType::Rsa])
            .trust_identity(identity.public_pem()),
    );
    let wrong = format!("wrong-canary-secret-{}", random_hex(12));
    let wrong_file = server.write_file("wrong-secret", &wrong);
    let env = Env::new();

    let mut issuers = Idp::basic(&server).yaml("idp");
    issuers.push_str(&Idp::pkjwt(&server, KeyType::Rsa, true).yaml("idpkey"));
    issuers.push_str(
        &Idp::new(&server, "token_exchange", POST_CLIENT)
            .line(&format!(
                "client_secret_file: {}",
                q(&server.client_secret_file())
            ))
            .line("client_secret_auth: post")
            .yaml("idpx"),
    );
    issuers.push_str(
        &Idp::new(&server, "client_credentials", BASIC_CLIENT)
            .line(&format!("client_secret_file: {}", q(&wrong_file)))
            .yaml("idpbad"),
    );
    let credentials = format!(
        "{}  keyed: {{ issuer: idpkey, audience: keyed-api }}\n  \
         exch: {{ issuer: idpx, audience: exchange-api }}\n  \
         opq: {{ issuer: idp, resource: \"https://opaque.test.local/\" }}\n  \
         bad: {{ issuer: idpbad, audience: bad-api }}\n",
        api_credential(Some("demo-api"), Some(API_RESOURCE), Some("read write"))
    );
    let routes = [
        route("keyed", "paths.test.local", "keyed"),
        route("exch", "exch.test.local", "exch"),
        route("opq", "opaque.test.local", "opq"),
        route("bad", "bad.test.local", "bad"),
    ]
    .concat();
    let sk = env.sidekey(&config(
        &format!("identity:\n  token_file: {}\n", q(identity.token_file())),
        &issuers,
        &credentials,
        &routes,
    ));

    let mut refusals: Vec<String> = Vec::new();
    for round in 0..2 {
        for host in ["api", "paths", "exch", "opaque"] {
            let res = get(&sk, &format!("https://{host}.test.local/echo/{round}"));
            res.assert_status(200);
        }
        let res = get(&sk, &format!("https://bad.test.local/echo/{round}"));
        res.expect_refusal(503, "credential_unavailable");
        refusals.push(format!("{:?}\n{}", res.headers, res.body_str()));
        let res = curl_via(
            &sk,
            &[
                "-X",
                "POST",
                &format!("https://other.test.local/echo/{round}"),
            ],
        );
        res.expect_refusal(403, "method_not_allowed");
        refusals.push(format!("{:?}\n{}", res.headers, res.body_str()));
    }

    let mut tokens: BTreeSet<String> = env
        .upstream
        .requests()
        .iter()
        .filter_map(|r| r.bearer().map(str::to_owned))
        .collect();
    assert_eq!(
        tokens.len(),
        4,
        "a token per working credential: {tokens:#?}"
    );
    tokens.insert(identity.token());
    let key_pem = server.client_key_pem(KeyType::Rsa);
    let key_lines: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .collect();
    assert!(!key_lines.is_empty());

    let mut canaries: Vec<(&str, String)> = vec![
        ("client secret", server.client_secret().to_string()),
        ("wrong client secret", wrong.clone()),
    ];
    for t in &tokens {
        canaries.push(("token", t.clone()));
        // A JWT's signature alone is as good as the token to a log reader.
        if let Some(sig) = t.rsplit('.').next().filter(|s| s.len() >= 20) {
            canaries.push(("token signature", sig.to_string()));
        }
    }
    for l in &key_lines {
        canaries.push(("private key", l.to_string()));
    }

    // Let credential events and the log settle.
    sk.expect_request_records(12);
    let places = [
        ("sidekey stderr", sk.stderr()),
        ("audit (stdout)", sk.stdout_text()),
        ("refusal responses", refusals.join("\n")),
    ];
    for (place, text) in &places {
        for (what, secret) in &canaries {
            assert!(
                !text.contains(secret.as_str()),
                "{what} found in {place}:\n{text}"
            );
        }
    }
    // And the credential IDs are there instead.
    let ids: HashSet<String> = sk
        .request_records()
        .iter()
        .filter_map(|r| r["credential_id"].as_str().map(str::to_owned))
        .collect();
    assert!(ids.len() >= 4, "{ids:#?}");
}
