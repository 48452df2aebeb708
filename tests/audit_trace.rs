//! `sidekey audit trace FILE`: an audit file as the tree user → task → agents by grant →
//! credentials → requests, filtered by `--task`/`--user`, as text or JSON; lines that are not
//! requests or credential events counted on stderr; exit 2 on a file it cannot read.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::sidekey::{run_sidekey, sidekey_bin, CheckOutput, PROXY_VARS};
use crate::common::*;
use serde_json::Value;

/// A trail as sidekey writes one, for two users: alice's task t-42, where the root agent
/// `planner` derived grants for `coder` and `reviewer`, and `coder` one for `tester`, plus a
/// request of t-42 made without a grant; bob's task t-7, whose only grant was derived from one
/// in an earlier file; a refused CONNECT with neither task nor grant; two config loads, a
/// credential event from before grants (no `grant_id`), and a diagnostic line that does not
/// belong here.
const FIXTURE: &str = r#"{"ts":"2026-05-04T11:59:58.120Z","type":"config","event":"loaded","file":"/etc/sidekey/sidekey.yaml","sha256":"5d41402abc4b2a76b9719d911017c592"}
{"ts":"2026-05-04T12:00:00.950Z","type":"credential","event":"issued","credential":"github","issuer":"github-app","credential_id":"ghs-7c1e","expires_at":"2026-05-04T13:00:00.950Z","error":null,"task_id":"t-42","grant_id":"0f3a1c9e"}
{"ts":"2026-05-04T12:00:01.123Z","type":"request","request_id":"0196a1b2-0001","listener":"forward","route":"github","credential":"github","credential_id":"ghs-7c1e","issuer":"github-app","method":"GET","scheme":"https","host":"api.github.com","port":443,"path":"/repos/acme/api","decision":"allow","code":null,"status":200,"bytes_in":0,"bytes_out":5120,"duration_ms":84.1,"task_id":"t-42","sub":"planner","grant_id":"0f3a1c9e","on_behalf_of":"alice","error":null}
2026-05-04T12:00:01.200Z INFO sidekey: a diagnostic line that landed in the audit file
{"ts":"2026-05-04T12:00:02.410Z","type":"request","request_id":"0196a1b2-0002","listener":"forward","route":"github","credential":"github","credential_id":"ghs-7c1e","issuer":"github-app","method":"GET","scheme":"https","host":"api.github.com","port":443,"path":"/repos/acme/api/pulls?state=REDACTED","decision":"allow","code":null,"status":200,"bytes_in":0,"bytes_out":20480,"duration_ms":120.4,"task_id":"t-42","sub":"coder","grant_id":"9b1c47d2","parent_grant":"0f3a1c9e","on_behalf_of":"alice","act":["planner"],"error":null}
{"ts":"2026-05-04T12:00:02.800Z","type":"request","request_id":"0196a1b2-0003","listener":"forward","route":"github","credential":null,"credential_id":null,"issuer":null,"method":"DELETE","scheme":"https","host":"api.github.com","port":443,"path":"/repos/acme/api/issues/7","decision":"deny","code":"method_not_allowed","status":403,"bytes_in":0,"bytes_out":96,"duration_ms":0.4,"task_id":"t-42","sub":"reviewer","grant_id":"5e7d0a13","parent_grant":"0f3a1c9e","on_behalf_of":"alice","act":["planner"],"error":null}
{"ts":"2026-05-04T12:00:03.001Z","type":"credential","event":"issued","credential":"npm","issuer":"vault","credential_id":"auth/npm/lease/8f2d","expires_at":"2026-05-04T12:15:03.001Z","error":null}
{"ts":"2026-05-04T12:00:03.250Z","type":"request","request_id":"0196a1b2-0004","listener":"forward","route":"npm","credential":"npm","credential_id":"auth/npm/lease/8f2d","issuer":"vault","method":"GET","scheme":"https","host":"registry.npmjs.org","port":443,"path":"/-/v1/search?text=REDACTED","decision":"allow","code":null,"status":200,"bytes_in":0,"bytes_out":3012,"duration_ms":61.0,"task_id":"t-42","sub":"tester","grant_id":"c2f88b40","parent_grant":"9b1c47d2","on_behalf_of":"alice","act":["planner","coder"],"error":null}
{"ts":"2026-05-04T12:00:03.900Z","type":"request","request_id":"0196a1b2-0005","listener":"forward","route":"pypi","credential":null,"credential_id":null,"issuer":null,"method":"GET","scheme":"https","host":"pypi.org","port":443,"path":"/simple/requests/","decision":"allow","code":null,"status":200,"bytes_in":0,"bytes_out":4410,"duration_ms":33.2,"task_id":"t-42","error":null}
{"ts":"2026-05-04T12:00:04.000Z","type":"request","request_id":"0196a1b2-0006","listener":"forward","route":null,"credential":null,"credential_id":null,"issuer":null,"method":"CONNECT","scheme":"https","host":"evil.example","port":443,"path":"","decision":"deny","code":"host_not_allowed","status":403,"bytes_in":0,"bytes_out":0,"duration_ms":0.1,"task_id":null,"error":null}
{"ts":"2026-05-04T12:00:05.500Z","type":"request","request_id":"0196a1b2-0007","listener":"forward","route":"github","credential":"github","credential_id":"ghs-7c1e","issuer":"github-app","method":"GET","scheme":"https","host":"api.github.com","port":443,"path":"/repos/acme/web/issues","decision":"allow","code":null,"status":200,"bytes_in":0,"bytes_out":900,"duration_ms":70.0,"task_id":"t-7","sub":"triage","grant_id":"a0b1c2d3","parent_grant":"77e0d5f1","on_behalf_of":"bob","act":["dispatcher"],"error":null}
{"ts":"2026-05-04T12:00:06.020Z","type":"request","request_id":"0196a1b2-0008","listener":"forward","route":"github","credential":"github","credential_id":"ghs-7c1e","issuer":"github-app","method":"GET","scheme":"https","host":"api.github.com","port":443,"path":"/repos/acme/api/commits","decision":"allow","code":null,"status":200,"bytes_in":0,"bytes_out":1024,"duration_ms":15.9,"task_id":"t-42","sub":"planner","grant_id":"0f3a1c9e","on_behalf_of":"alice","error":"client_aborted"}
{"ts":"2026-05-04T12:00:09.000Z","type":"config","event":"reloaded","file":"/etc/sidekey/sidekey.yaml","sha256":"7d793037a0760186574b0282f2f435e7"}
"#;

/// The whole tree of [`FIXTURE`], user by user.
const ALICE: &str = "\
user alice
└─ task t-42
   ├─ agent planner  (grant 0f3a1c9e)
   │  ├─ credential github  id=ghs-7c1e  (issued 12:00:00.950, 2 requests)
   │  │  ├─ 12:00:01.123 GET api.github.com /repos/acme/api  200  allow
   │  │  └─ 12:00:06.020 GET api.github.com /repos/acme/api/commits  200  allow  client_aborted
   │  ├─ agent coder  (grant 9b1c47d2, from 0f3a1c9e)
   │  │  ├─ credential github  id=ghs-7c1e  (1 request)
   │  │  │  └─ 12:00:02.410 GET api.github.com /repos/acme/api/pulls?state=REDACTED  200  allow
   │  │  └─ agent tester  (grant c2f88b40, from 9b1c47d2)
   │  │     └─ credential npm  id=auth/npm/lease/8f2d  (1 request)
   │  │        └─ 12:00:03.250 GET registry.npmjs.org /-/v1/search?text=REDACTED  200  allow
   │  └─ agent reviewer  (grant 5e7d0a13, from 0f3a1c9e)
   │     └─ 12:00:02.800 DELETE api.github.com /repos/acme/api/issues/7  403 method_not_allowed  deny
   └─ (no grant)
      └─ 12:00:03.900 GET pypi.org /simple/requests/  200  allow
";

const BOB: &str = "\
user bob
└─ task t-7
   └─ agent triage  (grant a0b1c2d3, parent 77e0d5f1 not in this file, act dispatcher)
      └─ credential github  id=ghs-7c1e  (1 request)
         └─ 12:00:05.500 GET api.github.com /repos/acme/web/issues  200  allow
";

const SKIPPED: &str = "sidekey audit trace: {file}: skipped 1 line that is not a JSON record, \
    2 \"config\" records, 1 credential event without grant_id\n";

fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    std::fs::write(&file, FIXTURE).unwrap();
    (dir, file)
}

fn trace(file: &Path, args: &[&str]) -> CheckOutput {
    let mut all: Vec<&OsStr> = vec!["audit".as_ref(), "trace".as_ref(), file.as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    run_sidekey(&all)
}

#[track_caller]
fn assert_ok(out: &CheckOutput) {
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}

fn skipped(file: &Path) -> String {
    SKIPPED.replace("{file}", &file.display().to_string())
}

#[test]
fn trace_shows_each_users_tasks_with_sub_agents_under_the_grant_they_came_from() {
    let (_dir, file) = fixture();
    let out = trace(&file, &[]);
    assert_ok(&out);
    assert_eq!(
        out.stdout,
        format!("{ALICE}\n{BOB}\n1 request with neither task nor grant (not listed)\n")
    );
    assert_eq!(out.stderr, skipped(&file));
}

#[test]
fn trace_filters_by_task_and_by_user() {
    let (_dir, file) = fixture();
    let out = trace(&file, &["--task", "t-42"]);
    assert_ok(&out);
    assert_eq!(out.stdout, ALICE);
    assert_eq!(out.stderr, skipped(&file));

    let out = trace(&file, &["--user", "bob"]);
    assert_ok(&out);
    assert_eq!(out.stdout, BOB);

    let out = trace(&file, &["--user", "bob", "--task", "t-42"]);
    assert_ok(&out);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.ends_with(&format!(
            "{}: no task matches --task t-42 --user bob\n",
            file.display()
        )),
        "{}",
        out.stderr
    );
}

/// `(depth, sub, grant_id)` of every agent under `agents`, depth first.
fn agent_tree(list: &Value, depth: usize, out: &mut Vec<(usize, String, String)>) {
    for agent in list.as_array().expect("agents is an array") {
        out.push((
            depth,
            agent["sub"].as_str().unwrap_or("-").to_string(),
            agent["grant_id"].as_str().unwrap_or("-").to_string(),
        ));
        agent_tree(&agent["agents"], depth + 1, out);
    }
}

#[test]
fn trace_as_json_is_the_same_tree_as_one_document() {
    let (_dir, file) = fixture();
    let out = trace(&file, &["--task", "t-42", "--format", "json"]);
    assert_ok(&out);
    let doc: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("one JSON document: {e}\n{}", out.stdout));
    let users = doc["users"].as_array().unwrap();
    assert_eq!(users.len(), 1, "{doc:#}");
    assert_eq!(users[0]["user"], "alice");
    let task = &users[0]["tasks"][0];
    assert_eq!(task["task_id"], "t-42");
    let mut tree = Vec::new();
    agent_tree(&task["agents"], 0, &mut tree);
    let want: Vec<(usize, String, String)> = [
        (0, "planner", "0f3a1c9e"),
        (1, "coder", "9b1c47d2"),
        (2, "tester", "c2f88b40"),
        (1, "reviewer", "5e7d0a13"),
    ]
    .into_iter()
    .map(|(d, s, g)| (d, s.to_string(), g.to_string()))
    .collect();
    assert_eq!(tree, want, "{doc:#}");

    let planner = &task["agents"][0];
    assert!(planner.get("parent").is_none(), "a root grant: {planner:#}");
    assert_eq!(planner["credentials"][0]["credential"], "github");
    assert_eq!(planner["credentials"][0]["credential_id"], "ghs-7c1e");
    assert_eq!(
        planner["credentials"][0]["events"],
        serde_json::json!([{"event": "issued", "ts": "2026-05-04T12:00:00.950Z"}])
    );
    let first = &planner["credentials"][0]["requests"][0];
    assert_eq!(first["ts"], "2026-05-04T12:00:01.123Z");
    assert_eq!(first["request_id"], "0196a1b2-0001");
    assert_eq!(first["path"], "/repos/acme/api");
    assert_eq!(first["status"], 200);
    let tester = &planner["agents"][0]["agents"][0];
    assert_eq!(
        tester["parent"],
        serde_json::json!({"grant_id": "9b1c47d2", "link": "nested"})
    );
    assert_eq!(tester["act"], serde_json::json!(["planner", "coder"]));
    let reviewer = &planner["agents"][1];
    assert_eq!(reviewer["requests"][0]["code"], "method_not_allowed");
    assert_eq!(reviewer["requests"][0]["decision"], "deny");
    assert_eq!(
        task["no_grant"]["requests"][0]["host"], "pypi.org",
        "{doc:#}"
    );
    assert!(
        doc.get("unattributed_requests").is_none(),
        "not counted under a filter: {doc:#}"
    );
    assert_eq!(out.stderr, skipped(&file));

    let out = trace(&file, &["--format", "json"]);
    assert_ok(&out);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["unattributed_requests"], 1);
    assert_eq!(
        doc["users"][1]["tasks"][0]["agents"][0]["parent"],
        serde_json::json!({"grant_id": "77e0d5f1", "link": "not_in_file"})
    );
}

#[test]
fn trace_reads_standard_input_for_a_dash() {
    let (_dir, file) = fixture();
    let mut cmd = Command::new(sidekey_bin());
    cmd.args(["audit", "trace", "-", "--user", "alice"])
        .stdin(Stdio::from(std::fs::File::open(&file).unwrap()))
        .env("NO_COLOR", "1");
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    let out = output_with_timeout(cmd, Duration::from_secs(20));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, ALICE);
    assert_eq!(stderr, skipped(Path::new("-")));
}

#[test]
fn trace_exits_2_on_a_file_it_cannot_read_and_on_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let out = trace(&missing, &[]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.starts_with(&format!(
            "sidekey audit trace: cannot read {}: ",
            missing.display()
        )),
        "{}",
        out.stderr
    );

    // A directory opens, but does not read.
    let out = trace(dir.path(), &[]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);

    // Usage errors are clap's: exit 2, with the reason.
    let (_fixture, file) = fixture();
    let out = trace(&file, &["--format", "yaml"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("yaml"), "{}", out.stderr);
    let out = run_sidekey(&["audit".as_ref(), "trace".as_ref()]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("<FILE>"), "{}", out.stderr);
}

/// `sidekey audit ocsf`: the request records of a real run, as OCSF HTTP Activity events.
#[test]
fn audit_ocsf_renders_a_runs_requests_as_http_activity() {
    use crate::common::*;
    let env = Env::new();
    let sk = env.sidekey(&default_config());
    curl_via(&sk, &[&format!("https://{API}/echo/ocsf")]).assert_status(200);
    curl_via(&sk, &["-X", "DELETE", &format!("http://{PLAIN}/echo/no")])
        .expect_refusal(403, "method_not_allowed");
    sk.wait_request_records(2);
    let file = sk.dir().join("audit-copy.jsonl");
    let lines: Vec<String> = sk.audit().iter().map(|r| r.to_string()).collect();
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    let out =
        crate::common::sidekey::run_sidekey(&["audit".as_ref(), "ocsf".as_ref(), file.as_os_str()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(events.len(), 2, "{}", out.stdout);
    let allowed = &events[0];
    assert_eq!(allowed["class_uid"], 4002);
    assert_eq!(allowed["activity_name"], "Get");
    assert_eq!(allowed["disposition"], "Allowed");
    assert_eq!(allowed["http_request"]["url"]["hostname"], API);
    assert_eq!(allowed["http_response"]["code"], 200);
    assert_eq!(allowed["unmapped"]["route"], "api");
    let denied = &events[1];
    assert_eq!(denied["activity_name"], "Delete");
    assert_eq!(denied["disposition"], "Blocked");
    assert_eq!(denied["status_detail"], "method_not_allowed");
    // The config and credential records are skipped and counted.
    assert!(
        out.stderr.contains("2 request records written"),
        "{}",
        out.stderr
    );
    // A missing file is exit 2.
    let missing = crate::common::sidekey::run_sidekey(&[
        "audit".as_ref(),
        "ocsf".as_ref(),
        "/nonexistent/audit.jsonl".as_ref(),
    ]);
    assert_eq!(missing.code, Some(2));
}
