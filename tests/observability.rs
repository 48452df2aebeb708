//! deploy/prometheus and deploy/grafana: the alert rules are valid and behave as written
//! (`promtool check rules`, `promtool test rules`), and every metric the rules and the dashboard
//! query is one a running sidekey serves.

use std::collections::BTreeSet;
use std::process::Command;

use crate::common::grants::*;
use crate::common::sidekey::repo_root;
use crate::common::*;

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_root().join("deploy/prometheus"))
        .output()
        .expect("promtool (Debian's prometheus package; scripts/install-test-deps installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_are_valid_and_fire_as_their_tests_say() {
    let (ok, out) = promtool(&["check", "rules", "sidekey-alerts.yaml"]);
    assert!(ok && out.contains("SUCCESS: 7 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "sidekey-alerts.test.yaml"]);
    assert!(ok, "{out}");
}

/// `sidekey_…` names in a query text (histogram series by their base name's `_bucket`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bsidekey_[a-z_]+").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

#[test]
fn every_metric_the_dashboard_and_the_rules_query_is_served() {
    let dashboard =
        std::fs::read_to_string(repo_root().join("deploy/grafana/sidekey-dashboard.json"))
            .expect("dashboard");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut queried = BTreeSet::new();
    for panel in parsed["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queried.extend(metric_names(target["expr"].as_str().expect("expr")));
        }
    }
    let rules = std::fs::read_to_string(repo_root().join("deploy/prometheus/sidekey-alerts.yaml"))
        .expect("rules");
    queried.extend(metric_names(&rules));
    assert!(queried.len() >= 9, "{queried:?}");

    // A sidekey that has done a bit of everything: requests allowed and refused, a credential
    // issued, a grant verified.
    let env = Env::new();
    let keys = Keys::new();
    let sk = env.sidekey(&base_config(&[], "", &keys.section(false)));
    curl_via(&sk, &[&format!("https://{API}/echo/x")]).assert_status(200);
    curl_via(&sk, &["-X", "DELETE", &format!("http://{PLAIN}/echo/y")])
        .expect_refusal(403, "method_not_allowed");
    let grant = keys.sign(AUDIENCE, "planner", "t-o", &[]);
    curl_granted(&sk, &grant, &[&format!("http://{PLAIN}/echo/z")]).assert_status(200);
    sk.wait_request_records(3);
    let (status, text) = http_get(sk.admin, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    let served: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = queried.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "queried but not served: {missing:?}\nserved: {served:?}"
    );
}
