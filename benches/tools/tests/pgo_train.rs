//! The training run of the profile-guided build (`benches/pgo_train.py`, run by
//! `scripts/build-pgo`) works end to end: every scenario it drives through sidekey is answered
//! 2xx, every refusal it trains on is answered with its status, and each sidekey exits 0 at
//! SIGTERM, the exit at which an instrumented build writes its profile. A scenario that stopped
//! working (a config that no longer loads, a grant refused) would otherwise show up only as a
//! build that optimizes the refusal path.
//!
//! Here with the debug `sidekey` the workspace's tests build (beside this package's binaries in
//! the target directory) and no instrumentation: what is checked is the run, not the compiler.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_pgo_training_run_answers_every_scenario() {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_bench-load"));
    let upstream = PathBuf::from(env!("CARGO_BIN_EXE_bench-upstream"));
    let sidekey = load.with_file_name("sidekey");
    assert!(
        sidekey.exists(),
        "{} is missing: this test runs with the workspace's (`cargo test --workspace`), which builds it",
        sidekey.display()
    );
    let run = std::env::temp_dir().join(format!("sidekey-pgo-train-{}", std::process::id()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../pgo_train.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--sidekey")
        .arg(&sidekey)
        .arg("--upstream")
        .arg(&upstream)
        .arg("--load")
        .arg(&load)
        .arg("--run-dir")
        .arg(&run)
        .args(["--seconds", "1"])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&run);
    assert!(
        out.status.success(),
        "the training run failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for scenario in [
        "plain HTTP, 16 connections",
        "plain HTTP, 128 connections",
        "intercepted HTTPS, kept alive",
        "intercepted HTTPS, a handshake per request",
        "HTTP/2, 4 connections x 32 streams",
        "task grant, plain HTTP",
        "task grant at CONNECT",
        "blind tunnels, kept alive",
        "blind tunnels, a new one per request",
        "SSE",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("[pgo] {scenario}: ")))
            .unwrap_or_else(|| panic!("no line for {scenario:?} in:\n{stdout}"));
        let requests: u64 = line
            .rsplit(": ")
            .next()
            .and_then(|tail| tail.strip_suffix(" requests"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no request count in {line:?}"));
        assert!(requests > 0, "{line}");
    }
    // The refusals it trains on were each answered with their status (the script fails on any
    // other answer; this checks that each was sent at all).
    for (refusal, status) in [
        ("a host no route names", 403),
        ("a method the route does not allow", 403),
        ("CONNECT to a host no route names", 403),
        ("no task grant", 407),
        ("a task grant that does not verify", 407),
    ] {
        let line = format!("[pgo] refused, {refusal}: 300 requests answered {status}");
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{stdout}"
        );
    }
}
