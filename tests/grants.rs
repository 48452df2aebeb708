//! Task grants through the running proxy, with real clients: curl, Python requests and httpx,
//! Node undici, each given the grant the way an agent is (the proxy password in HTTPS_PROXY),
//! and `sidekey grant` for keys, root grants, sub-agents' child grants and revocation.

use serde_json::Value;

use crate::common::grants::*;
use crate::common::*;

/// The config of these tests: the base routes, grants trusting `keys`, audience `sk-test`.
fn grants_config(keys: &Keys, required: bool) -> String {
    base_config(&[], "", &keys.grants_yaml("sk-test", required))
}

fn payload(token: &str) -> Value {
    decode_jwt(token).1
}

#[test]
fn a_grant_in_the_proxy_url_narrows_every_client_and_is_audited() {
    let env = Env::new();
    let keys = Keys::new();
    let sk = env.sidekey(&grants_config(&keys, true));
    let grant = keys.sign(
        "sk-test",
        "planner",
        "t-42",
        &[
            "--user",
            "alice",
            "--route",
            "api:GET:/echo/**",
            "--route",
            "plain",
        ],
    );

    // curl, HTTPS through an intercepted tunnel: the grant was read at CONNECT.
    let res = curl_granted(&sk, &grant, &[&format!("https://{API}/echo/a")]);
    res.assert_status(200);
    // Plain HTTP (absolute form): the grant rides on each request.
    curl_granted(&sk, &grant, &[&format!("http://{PLAIN}/echo/b")]).assert_status(200);
    let seen = env.upstream.only_request();
    assert_eq!(seen.header("proxy-authorization"), None);
    assert_eq!(seen.header("x-sidekey-grant"), None);
    assert_local_jwt(seen.bearer().expect("the route's credential"), "demo-api");
    let plain = env.upstream_http.only_request();
    assert_eq!(plain.header("proxy-authorization"), None, "never forwarded");

    // Python requests and httpx, Node undici: the same proxy URL, unchanged clients.
    let url = format!("https://{API}/echo/c");
    let proxy = proxy_with(&sk, &grant);
    for lib in ["requests", "httpx"] {
        python(lib, &Req::get(&url).via(&proxy, sk.ca_pem())).assert_status(200);
    }
    node(&Req::get(&url).via(&proxy, sk.ca_pem())).assert_status(200);

    // The grant narrows: POST on api (the route allows it), a path outside /echo/**, and a
    // route it does not name (refused at CONNECT).
    curl_granted(
        &sk,
        &grant,
        &["-X", "POST", "-d", "x", &format!("https://{API}/echo/a")],
    )
    .expect_refusal(403, "route_not_granted");
    curl_granted(&sk, &grant, &[&format!("https://{API}/status/200")])
        .expect_refusal(403, "route_not_granted");
    let other = curl_granted(&sk, &grant, &[&format!("https://{OTHER}/echo")]);
    assert_eq!(other.connect_status, 403, "{other:#?}");

    // Without a grant: 407 with a challenge, at CONNECT and on plain requests.
    let none = curl_via(&sk, &[&format!("https://{API}/echo/a")]);
    assert_eq!(none.connect_status, 407, "{none:#?}");
    let plain_none = curl_via(&sk, &[&format!("http://{PLAIN}/echo/b")]);
    plain_none.expect_refusal(407, "grant_required");
    let challenges: Vec<&str> = plain_none
        .headers
        .iter()
        .filter(|(k, _)| k == "proxy-authenticate")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        challenges,
        ["Basic realm=\"sidekey\"", "Bearer realm=\"sidekey\""]
    );
    // The self-asserted task label is refused when grants are required.
    curl_granted(
        &sk,
        &grant,
        &[
            "-H",
            "x-sidekey-task: spoofed",
            &format!("http://{PLAIN}/echo/b"),
        ],
    )
    .expect_refusal(400, "request_invalid");

    // Every record of an allowed request names the task, the agent, the user and the grant.
    let claims = payload(&grant);
    let records = sk.wait_request_records(11);
    let allowed: Vec<&Value> = records
        .iter()
        .filter(|r| r["decision"] == "allow" && r["status"] == 200)
        .collect();
    assert_eq!(allowed.len(), 5, "{records:#?}");
    for r in &allowed {
        assert_eq!(r["task_id"], "t-42", "{r}");
        assert_eq!(r["sub"], "planner", "{r}");
        assert_eq!(r["on_behalf_of"], "alice", "{r}");
        assert_eq!(r["grant_id"], claims["jti"], "{r}");
        assert!(
            r.get("act").is_none() && r.get("parent_grant").is_none(),
            "{r}"
        );
    }
    let codes: Vec<&str> = records.iter().filter_map(|r| r["code"].as_str()).collect();
    for code in ["route_not_granted", "grant_required", "request_invalid"] {
        assert!(codes.contains(&code), "{code} in {codes:?}");
    }
    // Nothing of the grant itself in the audit trail or the logs.
    let signature = grant.rsplit('.').next().expect("signature");
    assert!(!sk.stdout_text().contains(signature));
    assert!(!sk.stderr().contains(signature));
}

#[test]
fn forged_expired_foreign_and_revoked_grants_are_refused() {
    let env = Env::new();
    let keys = Keys::new();
    let other_keys = Keys::new();
    let sk = env.sidekey(&grants_config(&keys, false));
    let url = format!("http://{PLAIN}/echo/x");
    let good = keys.sign("sk-test", "planner", "t-1", &[]);

    // Optional grants: none is fine (pod-level routes), a good one is used.
    curl_via(&sk, &[&url]).assert_status(200);
    curl_granted(&sk, &good, &[&url]).assert_status(200);

    let expired = keys.sign("sk-test", "planner", "t-1", &["--ttl", "1s"]);
    let wrong_key = other_keys.sign("sk-test", "planner", "t-1", &[]);
    let wrong_aud = keys.sign("another-sidekey", "planner", "t-1", &[]);
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut claims = payload(&good);
    claims["routes"] = serde_json::json!(["plain", "api", "other"]);
    let encode = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    parts[1] = encode(&claims);
    let tampered = parts.join(".");
    let alg_none = format!(
        "{}.{}.",
        encode(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        encode(&payload(&good))
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for (what, grant, code, message) in [
        ("expired", expired.as_str(), "grant_expired", "expired"),
        ("wrong key", &wrong_key, "grant_invalid", "no trusted key"),
        (
            "wrong audience",
            &wrong_aud,
            "grant_invalid",
            "another audience",
        ),
        (
            "tampered",
            &tampered,
            "grant_invalid",
            "signature does not verify",
        ),
        ("alg none", &alg_none, "grant_invalid", "not a signed JWT"),
        (
            "garbage",
            "not-a-grant",
            "grant_invalid",
            "not a signed JWT",
        ),
    ] {
        let body = curl_granted(&sk, grant, &[&url]).expect_refusal(407, code);
        let text = body["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{what}: {body}");
        // The same on the route listener's header, and at CONNECT.
        let routed = curl(&[
            "-H",
            &format!("x-sidekey-grant: {grant}"),
            &format!("{}/r/api/echo", sk.routes_url()),
        ]);
        routed.expect_refusal(407, code);
        let tunnel = curl_granted(&sk, grant, &[&format!("https://{API}/echo")]);
        assert_eq!(tunnel.connect_status, 407, "{what}: {tunnel:#?}");
    }
    // Proxy-Authorization schemes other than Basic and Bearer.
    curl(&[
        "-x",
        &sk.proxy_url(),
        "--proxy-header",
        "Proxy-Authorization: Digest username=x",
        &url,
    ])
    .expect_refusal(407, "grant_invalid");
    // Bearer works as well as Basic.
    curl(&[
        "-x",
        &sk.proxy_url(),
        "--proxy-header",
        &format!("Proxy-Authorization: Bearer {good}"),
        &url,
    ])
    .assert_status(200);

    // The holder ends its task: the grant stops working at once.
    let out = revoke(&sk, &good, None);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(payload(&good)["jti"].as_str().unwrap()),
        "{out:?}"
    );
    curl_granted(&sk, &good, &[&url]).expect_refusal(407, "grant_revoked");
    // The route listener reads x-sidekey-grant and never forwards it.
    let fresh = keys.sign("sk-test", "planner", "t-2", &[]);
    curl(&[
        "-H",
        &format!("x-sidekey-grant: {fresh}"),
        &format!("{}/r/api/echo/routed", sk.routes_url()),
    ])
    .assert_status(200);
    let seen = env.upstream.requests_to("/echo/routed");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-sidekey-grant"), None);
    let record = &sk.wait_audit(
        |r| r["path"] == "/echo/routed",
        1,
        std::time::Duration::from_secs(10),
    )[0];
    assert_eq!(record["task_id"], "t-2");
}

#[test]
fn sub_agents_get_narrower_grants_and_never_each_others() {
    let env = Env::new();
    let keys = Keys::new();
    let sk = env.sidekey(&grants_config(&keys, true));
    let parent = keys.sign(
        "sk-test",
        "planner",
        "t-7",
        &[
            "--user", "alice", "--route", "api", "--route", "other", "--ttl", "10m",
        ],
    );
    let parent_jti = payload(&parent)["jti"].as_str().unwrap().to_string();

    // Two sub-agents, each with one route, asked for with the CLI.
    let coder = derive(&sk, &parent, "coder", &["--route", "api:GET"]);
    assert_eq!(coder.code, Some(0), "{coder:?}");
    let coder = coder.stdout.trim().to_string();
    let reviewer = derive(
        &sk,
        &parent,
        "reviewer",
        &["--route", "other", "--proxy-url"],
    );
    assert_eq!(reviewer.code, Some(0), "{reviewer:?}");
    let reviewer_url = reviewer.stdout.trim().to_string();
    assert!(reviewer_url.starts_with("http://task:ey"), "{reviewer_url}");
    assert!(
        reviewer_url.ends_with(&format!("@{}", sk.forward)),
        "{reviewer_url}"
    );
    let reviewer = reviewer_url
        .trim_start_matches("http://task:")
        .rsplit_once('@')
        .unwrap()
        .0
        .to_string();
    let child = payload(&coder);
    assert_eq!(child["parent"], parent_jti.as_str());
    assert_eq!(child["task_id"], "t-7");
    assert_eq!(child["act"], serde_json::json!({"sub": "planner"}));
    assert!(child["exp"].as_u64() <= payload(&parent)["exp"].as_u64());

    // In parallel, each gets its own route only.
    let api = format!("https://{API}/echo/x");
    let other = format!("https://{OTHER}/echo/y");
    std::thread::scope(|s| {
        let a = s.spawn(|| {
            curl_granted(&sk, &coder, &[&api]).assert_status(200);
            let refused = curl_granted(&sk, &coder, &[&other]);
            assert_eq!(refused.connect_status, 403, "{refused:#?}");
            curl_granted(&sk, &coder, &["-X", "POST", "-d", "x", &api])
                .expect_refusal(403, "route_not_granted");
        });
        let b = s.spawn(|| {
            python(
                "requests",
                &Req::get(&other).via(&reviewer_url, sk.ca_pem()),
            )
            .assert_status(200);
            let refused = curl_granted(&sk, &reviewer, &[&api]);
            assert_eq!(refused.connect_status, 403, "{refused:#?}");
        });
        a.join().unwrap();
        b.join().unwrap();
    });

    // A child cannot widen: another route, more methods, a longer life than its parent's
    // routes allow.
    let widen = derive(&sk, &coder, "intern", &["--route", "other"]);
    assert_eq!(widen.code, Some(1), "{widen:?}");
    assert!(widen.stderr.contains("widen"), "{widen:?}");
    let widen = derive(&sk, &coder, "intern", &["--route", "api:GET,POST"]);
    assert!(
        widen.stderr.contains("method POST is not allowed"),
        "{widen:?}"
    );
    // A grandchild extends the act chain.
    let intern = derive(&sk, &coder, "intern", &["--ttl", "1m"]);
    assert_eq!(intern.code, Some(0), "{intern:?}");
    let intern = intern.stdout.trim().to_string();
    assert_eq!(
        payload(&intern)["act"],
        serde_json::json!({"sub": "coder", "act": {"sub": "planner"}})
    );
    curl_granted(&sk, &intern, &[&api]).assert_status(200);

    // A sibling cannot revoke the coder; the parent can, and the coder's child goes with it.
    let coder_jti = payload(&coder)["jti"].as_str().unwrap().to_string();
    let sibling = revoke(&sk, &reviewer, Some(&coder_jti));
    assert_eq!(sibling.code, Some(1), "{sibling:?}");
    assert!(sibling.stderr.contains("403"), "{sibling:?}");
    let out = revoke(&sk, &parent, Some(&coder_jti));
    assert_eq!(out.code, Some(0), "{out:?}");
    // Revoked grants are refused at CONNECT (the refusal is in the audit trail).
    for grant in [&coder, &intern] {
        let refused = curl_granted(&sk, grant, &[&api]);
        assert_eq!(refused.connect_status, 407, "{refused:#?}");
    }
    sk.wait_audit(
        |r| r["code"] == "grant_revoked" && r["method"] == "CONNECT",
        2,
        std::time::Duration::from_secs(10),
    );
    curl_granted(&sk, &reviewer, &[&other]).assert_status(200);

    // The audit chain: the grandchild's records name the whole delegation.
    let by_intern = &sk.wait_audit(
        |r| r["sub"] == "intern" && r["status"] == 200,
        1,
        std::time::Duration::from_secs(10),
    )[0];
    assert_eq!(by_intern["act"], serde_json::json!(["planner", "coder"]));
    assert_eq!(by_intern["parent_grant"], coder_jti.as_str());
    assert_eq!(by_intern["on_behalf_of"], "alice");
    assert_eq!(by_intern["task_id"], "t-7");
}
