//! `GET /credentials` on the admin listener: what the store holds, on both axes (time left,
//! scope), with its use — and never a credential value.

use serde_json::Value;

use crate::common::grants::*;
use crate::common::*;

fn credentials(sk: &Sidekey) -> Value {
    let (status, body) = http_get(sk.admin, "/credentials").expect("GET /credentials");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn entry<'a>(doc: &'a Value, name: &str, task: Option<&str>) -> &'a Value {
    doc["credentials"]
        .as_array()
        .expect("credentials")
        .iter()
        .find(|c| c["name"] == name && c["task_id"].as_str() == task)
        .unwrap_or_else(|| panic!("no {name} ({task:?}) in {doc}"))
}

#[test]
fn credentials_shows_lifetime_scope_and_use_and_never_a_value() {
    let env = Env::new();
    let keys = Keys::new();
    let sk = env.sidekey(&base_config(
        &[],
        "",
        &format!(
            "  task_jwt: {{ issuer: local, audience: demo-api, per_task: true }}\n{}",
            keys.section(false)
        ),
    ));
    // Nothing fetched yet: the credential is listed, with its scope, not held.
    let before = credentials(&sk);
    let demo = entry(&before, "demo", None);
    assert_eq!(demo["held"], false, "{demo}");
    assert_eq!(demo["issuer"], "local");
    let routes: Vec<&str> = demo["scope"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["api", "other", "scoped", "plain"]);
    // api: 1 host × 3 methods × every path (10); other: 1 × 1 × 10; scoped: 1 × 1 × 1 glob;
    // plain: 1 × 2 × 10.
    assert_eq!(demo["scope"]["breadth"], 30 + 10 + 1 + 20);
    assert_eq!(demo["scope"]["any_path"], true);

    // Two requests: the credential is held, its ID is the audit trail's, its use counted.
    for _ in 0..2 {
        curl_via(&sk, &[&format!("https://{API}/echo/x")]).assert_status(200);
    }
    let records = sk.wait_request_records(2);
    let after = credentials(&sk);
    let demo = entry(&after, "demo", None);
    assert_eq!(demo["held"], true, "{demo}");
    assert_eq!(demo["credential_id"], records[0]["credential_id"]);
    assert_eq!(demo["uses"], 2);
    assert_eq!((&demo["uses_5m"], &demo["uses_1h"]), (&2.into(), &2.into()));
    let (issued, expires, refresh) = (
        demo["issued_at"].as_u64().unwrap(),
        demo["expires_at"].as_u64().unwrap(),
        demo["next_refresh"].as_u64().unwrap(),
    );
    assert_eq!(demo["lifetime_seconds"], expires - issued);
    assert!(issued < refresh && refresh < expires, "{demo}");
    let left = demo["seconds_left"].as_u64().unwrap();
    assert!(left > 250 && left <= 300, "{demo}");
    assert_eq!(demo["last_error"], Value::Null);

    // A task's own credential is listed under its task and grant.
    let grant = keys.sign(AUDIENCE, "planner", "t-c", &[]);
    curl_granted(&sk, &grant, &[&format!("https://{API}/echo/y")]).assert_status(200);
    let doc = credentials(&sk);
    let parent = entry(&doc, "task_jwt", None);
    assert_eq!(parent["per_task"], true);
    assert_eq!(parent["scope"]["routes"], serde_json::json!([]));
    // (the route uses the shared credential; the per-task one is unused: breadth 0, flagged by it)
    assert_eq!(parent["scope"]["breadth"], 0);

    // The lifecycle page: the same entries, a bar each, flags, no script, nothing external.
    let (status, page) = http_get(sk.admin, "/").expect("GET /");
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(
        page.contains("<b>demo</b>") && page.contains("<b>task_jwt</b>"),
        "{page}"
    );
    assert!(page.contains("left of 5m00s"), "demo's bar: {page}");
    assert!(page.contains("breadth 61"), "demo's breadth: {page}");
    assert!(
        !page.contains(">broad scope</span>"),
        "61 is under the flag's 100: {page}"
    );
    assert!(page.contains("no route uses it"), "task_jwt: {page}");
    assert!(!page.contains("<script") && !page.contains("http://") && !page.contains("https://"));
    assert!(page.contains("Refusals since start, by code"));
    curl_via(&sk, &["-X", "DELETE", &format!("https://{API}/echo/no")])
        .expect_refusal(403, "method_not_allowed");
    sk.wait_audit(
        |r| r["code"] == "method_not_allowed",
        1,
        std::time::Duration::from_secs(10),
    );
    let (_, page2) = http_get(sk.admin, "/").expect("GET /");
    assert!(
        page2.contains("<td>method_not_allowed</td><td>1</td>"),
        "{page2}"
    );

    // Never a value: the token the upstream received appears nowhere in either.
    let token = env.upstream.requests()[0]
        .bearer()
        .expect("bearer")
        .to_string();
    let signature = token.rsplit('.').next().unwrap();
    for text in [doc.to_string(), page] {
        assert!(!text.contains(&token));
        assert!(!text.contains(signature));
    }
}

/// The lifecycle page as a browser renders it: headless Chromium's DOM and a screenshot (kept
/// as a test artefact in `$CARGO_TARGET_DIR/test-artefacts/lifecycle-page.png`), with the bars
/// and flags found in its pixels.
#[test]
fn the_lifecycle_page_renders_in_chromium() {
    let env = Env::new();
    // A second credential on a wildcard host with every method: broad, flagged.
    let sk = env.sidekey(&base_config(
        &[("wide.test.local:443", "{upstream}")],
        "  - name: wide\n    hosts: [\"*.wide.test.local\", wide.test.local]\n    methods: [\"*\"]\n    credential: wide\n    inject: { header: Authorization, value: \"Bearer {token}\" }\n    allow_private: true\n",
        "  wide: { issuer: local, audience: demo-api, ttl: 2h }\n",
    ));
    curl_via(&sk, &[&format!("https://{API}/echo/a")]).assert_status(200);
    curl_via(&sk, &["https://wide.test.local/echo/b"]).assert_status(200);
    sk.wait_request_records(2);
    let url = format!("http://{}/", sk.admin);
    let chromium = |extra: &[&str]| {
        let out = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,720",
            ])
            .args(extra)
            .arg(&url)
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .output()
            .expect("chromium (scripts/install-test-deps installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = chromium(&["--dump-dom"]);
    assert!(
        dom.contains("<b>demo</b>") && dom.contains("<b>wide</b>"),
        "{dom}"
    );
    assert!(
        dom.contains(">broad scope</span>") && dom.contains(">long-lived</span>"),
        "{dom}"
    );

    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::common::sidekey::repo_root().join("target"))
        .join("test-artefacts");
    std::fs::create_dir_all(&dir).expect("artefact dir");
    let shot = dir.join("lifecycle-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[&format!("--screenshot={}", shot.display())]);
    eprintln!("screenshot: {}", shot.display());
    // Count the pixels of an unflagged bar (#2b7bba) and a flagged one (#d9822b).
    let script = r#"
import json, sys
from PIL import Image
img = Image.open(sys.argv[1]).convert("RGB")
near = lambda p, c: all(abs(a - b) <= 6 for a, b in zip(p, c))
blue = orange = 0
for p in img.getdata():
    if near(p, (0x2b, 0x7b, 0xba)): blue += 1
    elif near(p, (0xd9, 0x82, 0x2b)): orange += 1
print(json.dumps({"size": img.size, "blue": blue, "orange": orange}))
"#;
    let out = std::process::Command::new(python_bin())
        .args(["-c", script])
        .arg(&shot)
        .output()
        .expect("python");
    let pixels: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(pixels["size"], serde_json::json!([1280, 720]));
    // demo: most of its 5 minutes left, a narrow bar; wide: flagged, 40 px high.
    assert!(pixels["blue"].as_u64().unwrap() > 500, "{pixels}");
    assert!(pixels["orange"].as_u64().unwrap() > 5_000, "{pixels}");
}
