//! Self-tests of the OAuth 2.0 test peer (tests/common/oauth2.rs, tests/peers/oauth2/server.mjs),
//! driven with curl: they pin down exactly what the server accepts and answers, so a failing
//! oauth2 issuer test points at sidekey, not at the peer.

use std::time::Duration;

use crate::common::oauth2::*;
use crate::common::*;
use serde_json::{json, Value};

/// `curl -X POST <token_url> <args>`: (status, JSON body).
fn token_request(server: &OAuth2Server, args: &[&str]) -> (u16, Value) {
    let url = server.token_url();
    let mut all = vec!["-X", "POST"];
    all.extend_from_slice(args);
    all.push(&url);
    let res = curl(&all);
    assert_eq!(res.exit, 0, "curl failed: {}", res.stderr);
    (res.status, res.json())
}

fn form(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| ["--data-urlencode".to_string(), format!("{k}={v}")])
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[track_caller]
fn assert_jwt_access_token(server: &OAuth2Server, body: &Value, ttl: u64) -> Value {
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(body["expires_in"], ttl, "{body}");
    let token = body["access_token"].as_str().expect("access_token");
    let (header, payload) = decode_jwt(token);
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(header["typ"], "at+jwt", "{header}");
    let verified = verify_jwt(&server.jwks(), token);
    assert_eq!(
        verified["valid"], true,
        "token verifies against /jwks: {verified}"
    );
    assert_eq!(payload["iss"], server.issuer().as_str(), "{payload}");
    assert!(
        payload["jti"].as_str().is_some_and(|j| j.len() >= 16),
        "{payload}"
    );
    let iat = payload["iat"].as_u64().expect("iat");
    let exp = payload["exp"].as_u64().expect("exp");
    assert_eq!(exp - iat, ttl, "{payload}");
    assert!(iat <= now_unix() + 1 && exp > now_unix(), "{payload}");
    payload
}

#[test]
fn client_credentials_with_client_secret_basic() {
    let server = OAuth2Server::start(OAuth2Options::default());
    let user = format!("{BASIC_CLIENT}:{}", server.client_secret());
    let f = form(&[
        ("grant_type", "client_credentials"),
        ("scope", "read write"),
        ("audience", "demo-api"),
        ("resource", "https://api.test.local/"),
    ]);
    let mut args = vec!["-u", user.as_str()];
    args.extend(strs(&f));
    let (status, body) = token_request(&server, &args);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read write", "{body}");
    let payload = assert_jwt_access_token(&server, &body, 300);
    assert_eq!(
        payload["aud"],
        json!(["demo-api", "https://api.test.local/"]),
        "aud: the audience, then the resource"
    );
    assert_eq!(payload["scope"], "read write");
    assert_eq!(payload["client_id"], BASIC_CLIENT);
    assert_eq!(payload["sub"], BASIC_CLIENT);

    let stats = server.stats();
    assert_eq!(stats["token_requests"], 1, "{stats}");
    assert_eq!(stats["issued"]["client_credentials"], 1, "{stats}");
    let last = &stats["last"];
    assert_eq!(last["client_auth"], "client_secret_basic", "{last}");
    assert_eq!(last["client_id"], BASIC_CLIENT, "{last}");
    assert_eq!(last["basic_secret_matches"], true, "{last}");
    assert_eq!(last["grant_type"], "client_credentials", "{last}");
    assert_eq!(
        last["params"],
        json!({"grant_type": "client_credentials", "scope": "read write",
               "audience": "demo-api", "resource": "https://api.test.local/"}),
        "{last}"
    );
    assert_eq!(last["status"], 200);
    assert_eq!(last["response"]["jti"], payload["jti"], "{last}");
    assert_eq!(last["response"]["format"], "jwt", "{last}");
    assert!(
        !stats.to_string().contains(server.client_secret()),
        "stats must not carry the secret: {stats}"
    );

    // Only `audience`: aud is that; neither: the default resource.
    let f = form(&[
        ("grant_type", "client_credentials"),
        ("audience", "only-aud"),
    ]);
    let mut args = vec!["-u", user.as_str()];
    args.extend(strs(&f));
    let (status, body) = token_request(&server, &args);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        assert_jwt_access_token(&server, &body, 300)["aud"],
        "only-aud"
    );
    let (status, body) = token_request(
        &server,
        &["-u", &user, "-d", "grant_type=client_credentials"],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        assert_jwt_access_token(&server, &body, 300)["aud"],
        DEFAULT_RESOURCE
    );
    assert!(
        body.get("scope").is_none(),
        "no scope asked, none granted: {body}"
    );
    assert_eq!(server.issued("client_credentials"), 3);
}

#[test]
fn wrong_secret_and_wrong_client_auth_method_are_invalid_client() {
    let server = OAuth2Server::start(OAuth2Options::default());
    let (status, body) = token_request(
        &server,
        &[
            "-u",
            &format!("{BASIC_CLIENT}:wrong-secret"),
            "-d",
            "grant_type=client_credentials",
        ],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    let last = server.stats()["last"].clone();
    assert_eq!(last["error"], "invalid_client", "{last}");
    assert_eq!(last["error_detail"], "invalid secret provided", "{last}");
    assert_eq!(last["basic_secret_matches"], false, "{last}");

    // The basic client may not use client_secret_post, and vice versa.
    let f = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", BASIC_CLIENT),
        ("client_secret", server.client_secret()),
    ]);
    let (status, body) = token_request(&server, &strs(&f));
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    let (status, body) = token_request(
        &server,
        &[
            "-u",
            &format!("{POST_CLIENT}:{}", server.client_secret()),
            "-d",
            "grant_type=client_credentials",
        ],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    let stats = server.stats();
    assert_eq!(stats["failed"]["client_credentials"], 3, "{stats}");
    assert_eq!(stats["issued"], json!({}), "{stats}");
}

#[test]
fn client_credentials_with_client_secret_post() {
    let server = OAuth2Server::start(OAuth2Options::default().ttl(Duration::from_secs(8)));
    let f = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", POST_CLIENT),
        ("client_secret", server.client_secret()),
        ("scope", "read"),
        ("resource", "https://api.test.local/"),
    ]);
    let (status, body) = token_request(&server, &strs(&f));
    assert_eq!(status, 200, "{body}");
    let payload = assert_jwt_access_token(&server, &body, 8);
    assert_eq!(payload["aud"], "https://api.test.local/");
    assert_eq!(payload["client_id"], POST_CLIENT);
    let last = server.stats()["last"].clone();
    assert_eq!(last["client_auth"], "client_secret_post", "{last}");
    assert_eq!(last["client_secret_present"], true, "{last}");
    assert_eq!(last["client_secret_matches"], true, "{last}");
    assert!(last["params"].get("client_secret").is_none(), "{last}");
    assert_eq!(last["params"]["client_id"], POST_CLIENT, "{last}");
}

#[test]
fn client_credentials_with_private_key_jwt_for_each_key_type() {
    let server = OAuth2Server::start(OAuth2Options::default().keys(&[
        KeyType::Es256,
        KeyType::Ed25519,
        KeyType::Rsa,
    ]));
    let token_url = server.token_url();
    let issuer = server.issuer();
    for kind in [KeyType::Es256, KeyType::Ed25519, KeyType::Rsa] {
        for (aud, with_kid) in [(token_url.as_str(), true), (issuer.as_str(), false)] {
            let assertion = server.client_assertion(kind, aud, with_kid);
            let f = form(&[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
                ("audience", "demo-api"),
            ]);
            let (status, body) = token_request(&server, &strs(&f));
            assert_eq!(status, 200, "{kind:?} aud={aud} kid={with_kid}: {body}");
            let payload = assert_jwt_access_token(&server, &body, 300);
            assert_eq!(payload["client_id"], PKJWT_CLIENT);
            let last = server.stats()["last"].clone();
            assert_eq!(last["client_auth"], "private_key_jwt", "{last}");
            assert_eq!(last["client_id"], PKJWT_CLIENT, "{last}");
            assert_eq!(last["client_assertion_header"]["alg"], kind.alg(), "{last}");
            assert_eq!(last["client_assertion_claims"]["aud"], aud, "{last}");
            assert!(last["params"].get("client_assertion").is_none(), "{last}");
            assert_eq!(
                last["params"]["client_assertion_type"], JWT_BEARER,
                "{last}"
            );

            // An assertion is good once.
            let (status, body) = token_request(&server, &strs(&f));
            assert_eq!(
                (status, body["error"].as_str()),
                (401, Some("invalid_client")),
                "{body}"
            );
            assert_eq!(
                server.stats()["last"]["error_detail"],
                "client assertion tokens must only be used once"
            );
        }
    }
    // Wrong audience.
    let assertion = server.client_assertion(KeyType::Es256, "https://elsewhere.test/", true);
    let f = form(&[
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", &assertion),
    ]);
    let (status, body) = token_request(&server, &strs(&f));
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    assert_eq!(server.issued("client_credentials"), 6);
}

#[test]
fn opaque_token_for_an_opaque_resource() {
    let server = OAuth2Server::start(OAuth2Options::default());
    let user = format!("{BASIC_CLIENT}:{}", server.client_secret());
    let (status, body) = token_request(
        &server,
        &[
            "-u",
            &user,
            "-d",
            "grant_type=client_credentials",
            "--data-urlencode",
            "resource=https://opaque.test.local/",
        ],
    );
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    assert!(!token.contains('.'), "opaque, not a JWT: {token}");
    assert_eq!(body["expires_in"], 300);
    let resp = server.stats()["last"]["response"].clone();
    assert_eq!(resp["format"], "opaque", "{resp}");
    assert!(resp["jti"].is_null(), "{resp}");
    let sha = resp["token_sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64, "{resp}");
    // Same for an audience naming it.
    let (status, body) = token_request(
        &server,
        &[
            "-u",
            &user,
            "-d",
            "grant_type=client_credentials",
            "-d",
            "audience=opaque-api",
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        !body["access_token"].as_str().unwrap().contains('.'),
        "{body}"
    );
}

#[test]
fn token_exchange_subject_and_actor_tokens() {
    let subject = Identity::new("agent-7", "oauth2-peer");
    let actor = Identity::new("orchestrator-1", "oauth2-peer");
    let untrusted = Identity::new("agent-7", "oauth2-peer");
    let server = OAuth2Server::start(
        OAuth2Options::default()
            .trust_identity(subject.public_pem())
            .trust_identity(actor.public_pem()),
    );
    let secret = server.client_secret().to_string();
    let exchange = |extra: &[(&str, &str)]| {
        let mut pairs = vec![
            ("grant_type", TOKEN_EXCHANGE),
            ("client_id", POST_CLIENT),
            ("client_secret", secret.as_str()),
            ("subject_token_type", TOKEN_TYPE_JWT),
        ];
        pairs.extend_from_slice(extra);
        token_request(&server, &strs(&form(&pairs)))
    };

    // Subject only.
    let st = subject.token();
    let (status, body) = exchange(&[
        ("subject_token", &st),
        ("audience", "exchange-api"),
        ("scope", "read"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], TOKEN_TYPE_ACCESS, "{body}");
    assert_eq!(body["scope"], "read", "{body}");
    let payload = assert_jwt_access_token(&server, &body, 300);
    assert_eq!(payload["sub"], "agent-7", "{payload}");
    assert_eq!(payload["aud"], "exchange-api", "{payload}");
    assert_eq!(payload["client_id"], POST_CLIENT, "{payload}");
    assert!(payload.get("act").is_none(), "{payload}");
    let last = server.stats()["last"].clone();
    assert_eq!(last["grant_type"], TOKEN_EXCHANGE, "{last}");
    assert_eq!(last["subject_token_claims"]["sub"], "agent-7", "{last}");
    assert_eq!(
        last["params"]["subject_token_type"], TOKEN_TYPE_JWT,
        "{last}"
    );
    assert!(last["params"].get("subject_token").is_none(), "{last}");
    assert!(
        !server.stats().to_string().contains(&st),
        "stats must not carry the token"
    );

    // With an actor token and a resource.
    let at = actor.token();
    let (status, body) = exchange(&[
        ("subject_token", &st),
        ("actor_token", &at),
        ("actor_token_type", TOKEN_TYPE_JWT),
        ("resource", "https://api.test.local/"),
    ]);
    assert_eq!(status, 200, "{body}");
    let payload = assert_jwt_access_token(&server, &body, 300);
    assert_eq!(payload["sub"], "agent-7", "{payload}");
    assert_eq!(
        payload["act"],
        json!({"sub": "orchestrator-1"}),
        "{payload}"
    );
    assert_eq!(payload["aud"], "https://api.test.local/", "{payload}");

    // A rotated identity file: the new sub.
    subject.write("agent-8", "oauth2-peer", Duration::from_secs(600));
    let (status, body) = exchange(&[("subject_token", &subject.token())]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        decode_jwt(body["access_token"].as_str().unwrap()).1["sub"],
        "agent-8"
    );

    // Refused: signed by an unknown key, expired, garbage, wrong type.
    let bad_sig = untrusted.token();
    let expired = subject.mint(
        "agent-7",
        "oauth2-peer",
        Duration::from_secs(0),
        json!({"iat": now_unix() - 120, "nbf": now_unix() - 120, "exp": now_unix() - 60}),
    );
    for (what, token) in [
        ("untrusted key", bad_sig.as_str()),
        ("expired", expired.as_str()),
        ("garbage", "not-a-jwt"),
    ] {
        let (status, body) = exchange(&[("subject_token", token)]);
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{what}: {body}"
        );
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or("")
                .contains("subject_token"),
            "{what}: {body}"
        );
    }
    let (status, body) = exchange(&[
        ("subject_token", &st),
        ("actor_token", &bad_sig),
        ("actor_token_type", TOKEN_TYPE_JWT),
    ]);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let f = form(&[
        ("grant_type", TOKEN_EXCHANGE),
        ("client_id", POST_CLIENT),
        ("client_secret", &secret),
        ("subject_token", &st),
        ("subject_token_type", "urn:example:unknown"),
    ]);
    let (status, body) = token_request(&server, &strs(&f));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );

    // The public client, with no client authentication.
    let f = form(&[
        ("grant_type", TOKEN_EXCHANGE),
        ("client_id", PUBLIC_CLIENT),
        ("subject_token", &st),
        ("subject_token_type", TOKEN_TYPE_JWT),
    ]);
    let (status, body) = token_request(&server, &strs(&f));
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.stats()["last"]["client_auth"], "none");

    let stats = server.stats();
    assert_eq!(stats["issued"][TOKEN_EXCHANGE], 4, "{stats}");
    assert_eq!(stats["failed"][TOKEN_EXCHANGE], 5, "{stats}");
}

#[test]
fn token_exchange_nests_the_subject_tokens_act_chain_under_the_actor() {
    // A subject token for a user, acted for by two agents (as sidekey's task assertions are),
    // and the pod's identity as the actor token.
    let signer = Identity::new("unused", "oauth2-peer");
    let pod = Identity::new("pod-sa", "oauth2-peer");
    let server = OAuth2Server::start(
        OAuth2Options::default()
            .trust_identity(signer.public_pem())
            .trust_identity(pod.public_pem()),
    );
    let chain = json!({"sub": "coder", "act": {"sub": "planner"}});
    let subject = signer.mint(
        "alice",
        "oauth2-peer",
        Duration::from_secs(60),
        json!({"act": chain, "task_id": "t-1"}),
    );
    let exchange = |extra: &[(&str, &str)]| {
        let mut pairs = vec![
            ("grant_type", TOKEN_EXCHANGE),
            ("client_id", PUBLIC_CLIENT),
            ("subject_token", subject.as_str()),
            ("subject_token_type", TOKEN_TYPE_JWT),
        ];
        pairs.extend_from_slice(extra);
        token_request(&server, &strs(&form(&pairs)))
    };

    // No actor token: the subject token's chain as it is.
    let (status, body) = exchange(&[]);
    assert_eq!(status, 200, "{body}");
    let payload = assert_jwt_access_token(&server, &body, 300);
    assert_eq!(payload["sub"], "alice", "{payload}");
    assert_eq!(payload["act"], chain, "{payload}");
    assert_eq!(server.stats()["last"]["response"]["act"], chain);

    // The pod acting: it is the current actor, the agents the prior ones.
    let actor = pod.token();
    let (status, body) = exchange(&[
        ("actor_token", &actor),
        ("actor_token_type", TOKEN_TYPE_JWT),
    ]);
    assert_eq!(status, 200, "{body}");
    let payload = assert_jwt_access_token(&server, &body, 300);
    assert_eq!(payload["sub"], "alice", "{payload}");
    assert_eq!(
        payload["act"],
        json!({"sub": "pod-sa", "act": {"sub": "coder", "act": {"sub": "planner"}}}),
        "{payload}"
    );

    // An `act` that is not an actor claim is refused.
    let bad = signer.mint(
        "alice",
        "oauth2-peer",
        Duration::from_secs(60),
        json!({"act": ["coder", "planner"]}),
    );
    let f = form(&[
        ("grant_type", TOKEN_EXCHANGE),
        ("client_id", PUBLIC_CLIENT),
        ("subject_token", &bad),
        ("subject_token_type", TOKEN_TYPE_JWT),
    ]);
    let (status, body) = token_request(&server, &strs(&f));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("act is not an RFC 8693 actor claim")),
        "{body}"
    );
}

#[test]
fn restart_keeps_port_and_jwks_and_resets_stats() {
    let mut server = OAuth2Server::start(OAuth2Options::default().ttl(Duration::from_secs(8)));
    let port = server.port();
    let jwks = server.jwks();
    let user = format!("{BASIC_CLIENT}:{}", server.client_secret());
    let (status, _) = token_request(
        &server,
        &["-u", &user, "-d", "grant_type=client_credentials"],
    );
    assert_eq!(status, 200);
    server.stop();
    assert!(!server.is_running());
    let res = curl(&["-X", "POST", &server.token_url()]);
    assert_ne!(res.exit, 0, "stopped server still answers: {res:?}");
    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(server.jwks(), jwks, "JWKS kept across a restart");
    assert_eq!(server.stats()["token_requests"], 0);
    let (status, body) = token_request(
        &server,
        &["-u", &user, "-d", "grant_type=client_credentials"],
    );
    assert_eq!(status, 200, "{body}");
    assert_jwt_access_token(&server, &body, 8);
    server.reset_stats();
    assert_eq!(server.stats()["token_requests"], 0);
}
