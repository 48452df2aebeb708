//! What the binary is built with, as `.cargo/config.toml` sets it.

/// aws-lc's CPU-jitter entropy source costs 30-50 ms of CPU at start-up (docs/architecture.md,
/// "Randomness"); the build leaves it out (`AWS_LC_SYS_NO_JITTER_ENTROPY`), so none of its code
/// is in the binary.
#[test]
fn aws_lc_is_built_without_its_cpu_jitter_entropy_source() {
    let binary = std::fs::read(env!("CARGO_BIN_EXE_sidekey")).expect("read the sidekey binary");
    // The control: aws-lc's random generator is there, under its prefixed symbol names.
    let rand = regex::bytes::Regex::new(r"aws_lc_[0-9_]+_RAND_bytes").expect("regex");
    assert!(rand.is_match(&binary), "aws-lc's RAND_bytes not found");
    let jitter = regex::bytes::Regex::new(r"jent_entropy_collector_alloc").expect("regex");
    assert!(
        !jitter.is_match(&binary),
        "the binary carries aws-lc's jitter entropy collector: AWS_LC_SYS_NO_JITTER_ENTROPY was not \
         set when aws-lc-sys was built"
    );
}
