use std::io::Write;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sidekey_config::{GrantsConfig, TrustedKeys};
use sidekey_policy::ErrorCode;

use super::*;

struct Fixture {
    grants: Arc<Grants>,
    key: SigningKey,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn fixture(max_ttl: Duration) -> Fixture {
    let dir = std::env::temp_dir().join(format!("sidekey-grants-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("key.pem");
    std::fs::write(&pem, SigningKey::generate_pem().unwrap().as_bytes()).unwrap();
    let key = SigningKey::from_pem_file(&pem).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::File::create(&jwks)
        .unwrap()
        .write_all(key.jwks().as_bytes())
        .unwrap();
    let config = GrantsConfig {
        audience: "sidekey-test".into(),
        required: false,
        max_ttl,
        trusted: vec![TrustedKeys::JwksFile(jwks)],
    };
    Fixture {
        grants: Grants::new(&config).unwrap(),
        key,
        _dir: tempdir::Dir(dir),
    }
}

fn claims(ttl: u64) -> GrantClaims {
    let now = unix(SystemTime::now());
    GrantClaims {
        iss: Some("orchestrator".into()),
        sub: "planner".into(),
        task_id: "t-42".into(),
        aud: serde_json::Value::String("sidekey-test".into()),
        iat: now,
        exp: now + ttl,
        nbf: None,
        jti: uuid::Uuid::new_v4().to_string(),
        routes: Some(vec![
            RouteClaim::Narrowed {
                route: "github".into(),
                methods: Some(vec!["get".into(), "POST".into()]),
                paths: Some(vec!["/repos/acme/**".into()]),
            },
            RouteClaim::Name("s3".into()),
        ]),
        on_behalf_of: Some("alice".into()),
        act: None,
        parent: None,
    }
}

fn code(result: Result<Arc<Grant>, GrantError>) -> ErrorCode {
    result.unwrap_err().refusal().code
}

#[tokio::test]
async fn a_signed_grant_verifies_and_is_cached() {
    let f = fixture(Duration::from_secs(3600)).await;
    let token = sign(&f.key, &claims(600)).unwrap();
    let grant = f.grants.authenticate(&token).await.unwrap();
    assert_eq!(
        (grant.sub.as_str(), grant.task_id.as_str()),
        ("planner", "t-42")
    );
    assert_eq!(grant.on_behalf_of.as_deref(), Some("alice"));
    // Methods are upper-cased as routes' are.
    let routes = grant.scope.routes.as_ref().unwrap();
    assert_eq!(
        routes[0].methods.as_deref(),
        Some(&["GET".to_string(), "POST".to_string()][..])
    );
    let again = f.grants.authenticate(&token).await.unwrap();
    assert!(
        Arc::ptr_eq(&grant, &again),
        "the second presentation is a cache hit"
    );
}

#[tokio::test]
async fn every_bad_grant_is_refused_with_its_code() {
    let f = fixture(Duration::from_secs(3600)).await;
    let other = SigningKey::generate().unwrap();
    let good = sign(&f.key, &claims(600)).unwrap();

    // Expired (exp in the past, no leeway).
    let mut expired = claims(600);
    expired.iat -= 1200;
    expired.exp -= 1200;
    assert_eq!(
        code(
            f.grants
                .authenticate(&sign(&f.key, &expired).unwrap())
                .await
        ),
        ErrorCode::GrantExpired
    );
    // Tampered: the payload changed, the signature kept.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    payload["routes"] = serde_json::Value::Null;
    parts[1] = URL_SAFE_NO_PAD.encode(payload.to_string());
    assert_eq!(
        code(f.grants.authenticate(&parts.join(".")).await),
        ErrorCode::GrantInvalid
    );
    // Another key (same kid claimed or not).
    assert_eq!(
        code(
            f.grants
                .authenticate(&sign(&other, &claims(600)).unwrap())
                .await
        ),
        ErrorCode::GrantInvalid
    );
    // alg none and HS256.
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_eq!(
        code(f.grants.authenticate(&unsigned).await),
        ErrorCode::GrantInvalid
    );
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(600),
        &jsonwebtoken::EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    assert_eq!(
        code(f.grants.authenticate(&hs).await),
        ErrorCode::GrantInvalid
    );
    // Wrong audience.
    let mut aud = claims(600);
    aud.aud = serde_json::Value::String("another-sidekey".into());
    let err = f
        .grants
        .authenticate(&sign(&f.key, &aud).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another audience"), "{err}");
    // Longer than max_ttl.
    let err = f
        .grants
        .authenticate(&sign(&f.key, &claims(7200)).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_ttl"), "{err}");
    // Issued in the future, a malformed route, garbage.
    let mut future = claims(600);
    future.iat += 600;
    future.exp += 600;
    assert_eq!(
        code(f.grants.authenticate(&sign(&f.key, &future).unwrap()).await),
        ErrorCode::GrantInvalid
    );
    let mut bad_path = claims(600);
    bad_path.routes = Some(vec![RouteClaim::Narrowed {
        route: "github".into(),
        methods: None,
        paths: Some(vec!["relative".into()]),
    }]);
    assert_eq!(
        code(
            f.grants
                .authenticate(&sign(&f.key, &bad_path).unwrap())
                .await
        ),
        ErrorCode::GrantInvalid
    );
    assert_eq!(
        code(f.grants.authenticate("not.a.jwt").await),
        ErrorCode::GrantInvalid
    );
    // Messages never echo the token.
    let err = f.grants.authenticate(&parts.join(".")).await.unwrap_err();
    assert!(!err.to_string().contains(&parts[1]));
}

#[tokio::test]
async fn children_are_subsets_and_revocation_reaches_descendants() {
    let f = fixture(Duration::from_secs(3600)).await;
    let root = f
        .grants
        .authenticate(&sign(&f.key, &claims(600)).unwrap())
        .await
        .unwrap();
    let request = ChildRequest {
        sub: "coder".into(),
        routes: Some(vec![RouteClaim::Narrowed {
            route: "github".into(),
            methods: Some(vec!["GET".into()]),
            paths: Some(vec!["/repos/acme/api/**".into()]),
        }]),
        ttl_seconds: Some(60),
    };
    let child = f.grants.derive(&root, &request).unwrap();
    let verified = f.grants.authenticate(&child.token).await.unwrap();
    assert_eq!(verified.act, vec!["planner".to_string()]);
    assert_eq!(verified.parent.as_deref(), Some(root.jti.as_str()));
    assert_eq!(verified.task_id, "t-42");
    assert_eq!(verified.on_behalf_of.as_deref(), Some("alice"));
    assert!(verified.expires_at <= SystemTime::now() + Duration::from_secs(61));
    // RFC 8693 nesting: the grandchild's outer act is its immediate parent.
    let grandchild = f
        .grants
        .derive(
            &verified,
            &ChildRequest {
                sub: "tester".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let act = grandchild.grant.claims().act.as_ref().unwrap();
    assert_eq!(act.sub, "coder");
    assert_eq!(act.act.as_ref().unwrap().sub, "planner");
    assert_eq!(
        grandchild.grant.act,
        vec!["planner".to_string(), "coder".to_string()]
    );

    // Widening fails, with the reason.
    for routes in [
        vec![RouteClaim::Name("slack".into())],
        vec![RouteClaim::Narrowed {
            route: "github".into(),
            methods: Some(vec!["DELETE".into()]),
            paths: Some(vec!["/repos/acme/**".into()]),
        }],
        vec![RouteClaim::Narrowed {
            route: "github".into(),
            methods: Some(vec!["GET".into()]),
            paths: Some(vec!["/repos/**".into()]),
        }],
    ] {
        let err = f
            .grants
            .derive(
                &verified,
                &ChildRequest {
                    sub: "x".into(),
                    routes: Some(routes),
                    ttl_seconds: None,
                },
            )
            .err()
            .unwrap();
        assert!(err.to_string().contains("widen"), "{err}");
    }
    // A malformed request is the caller's error, not an authentication failure.
    for bad in [
        ChildRequest {
            sub: "".into(),
            ..Default::default()
        },
        ChildRequest {
            sub: "x".into(),
            ttl_seconds: Some(0),
            ..Default::default()
        },
        ChildRequest {
            sub: "x".into(),
            routes: Some(vec![RouteClaim::Narrowed {
                route: "github".into(),
                methods: None,
                paths: Some(vec!["no-slash".into()]),
            }]),
            ttl_seconds: None,
        },
    ] {
        let err = f.grants.derive(&verified, &bad).err().unwrap();
        assert!(matches!(err, GrantError::BadRequest(_)), "{err}");
    }
    // A child never outlives its parent.
    let long = f
        .grants
        .derive(
            &verified,
            &ChildRequest {
                sub: "y".into(),
                routes: None,
                ttl_seconds: Some(100_000),
            },
        )
        .unwrap();
    assert!(long.grant.expires_at <= verified.expires_at);

    // A sibling cannot revoke; the parent revokes the child and the grandchild with it.
    assert!(f.grants.revoke(&long.grant, &verified.jti).is_err());
    let ended = f.grants.revoke(&root, &verified.jti).unwrap();
    assert!(ended.contains(&verified.jti) && ended.contains(&grandchild.grant.jti));
    assert!(!ended.contains(&root.jti));
    assert_eq!(
        code(f.grants.authenticate(&child.token).await),
        ErrorCode::GrantRevoked
    );
    assert_eq!(
        code(f.grants.authenticate(&grandchild.token).await),
        ErrorCode::GrantRevoked
    );
    assert!(f.grants.check_live(&root).is_ok());
    // Revoking the root ends everything under it.
    f.grants.revoke(&root, &root.jti).unwrap();
    assert_eq!(
        code(f.grants.authenticate(&long.token).await),
        ErrorCode::GrantRevoked
    );
}

#[tokio::test]
async fn a_grant_signed_with_sidekeys_key_must_have_been_derived_here() {
    let f = fixture(Duration::from_secs(3600)).await;
    let forged = sign(&f.grants.own, &claims(600)).unwrap();
    let err = f.grants.authenticate(&forged).await.unwrap_err();
    assert!(err.to_string().contains("not derived here"), "{err}");
}

#[tokio::test]
async fn no_change_to_a_signed_grant_verifies_and_none_panics() {
    let f = fixture(Duration::from_secs(3600)).await;
    let token = sign(&f.key, &claims(600)).unwrap();
    assert!(f.grants.verify_uncached(&token).await.is_ok());
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    let bytes = token.as_bytes();
    // Every single-character substitution (two replacements per position) and every
    // truncation: refused, never accepted, never a panic.
    for i in 0..bytes.len() {
        for k in [7usize, 41] {
            let replacement = alphabet
                [(alphabet.iter().position(|&c| c == bytes[i]).unwrap_or(0) + k) % alphabet.len()];
            let mut changed = bytes.to_vec();
            changed[i] = replacement;
            let changed = String::from_utf8(changed).unwrap();
            assert!(
                f.grants.verify_uncached(&changed).await.is_err(),
                "a grant changed at byte {i} verified"
            );
        }
        assert!(f.grants.verify_uncached(&token[..i]).await.is_err());
    }
    // Proxy-Authorization values of arbitrary bytes: an answer, never a panic.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        let len = (state % 64) as usize;
        let mut value = Vec::with_capacity(len);
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            value.push((state % 95 + 32) as u8);
        }
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_bytes(&value) {
            headers.insert(http::header::PROXY_AUTHORIZATION, v);
            let _ = presented_by_proxy_authorization(&headers);
        }
    }
}

#[tokio::test]
async fn decode_unverified_reads_the_scope_whoever_signed_it_and_checks_the_rest() {
    let f = fixture(Duration::from_secs(3600)).await;
    // Signed by a key no source trusts: verification refuses it, decoding reads it.
    let stranger = SigningKey::generate().unwrap();
    let token = sign(&stranger, &claims(600)).unwrap();
    assert_eq!(
        code(f.grants.authenticate(&token).await),
        ErrorCode::GrantInvalid
    );
    let grant = decode_unverified(&token, Duration::from_secs(3600)).unwrap();
    assert_eq!(grant.task_id, "t-42");
    let routes = grant.scope.routes.as_ref().unwrap();
    assert_eq!(routes[0].route, "github");
    assert_eq!(routes[1].route, "s3");
    // What a grant itself requires still holds: the lifetime cap, the shape of a JWT.
    assert!(decode_unverified(&token, Duration::from_secs(60)).is_err());
    for bad in ["", "a.b", "a.b.c.d", "x.!!!.y", &token[..token.len() / 2]] {
        let e = decode_unverified(bad, Duration::from_secs(3600)).unwrap_err();
        assert_eq!(e.refusal().code, ErrorCode::GrantInvalid, "{bad}");
    }
}
