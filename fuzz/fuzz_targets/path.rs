//! The path checker and glob matcher (`RequestPath`, `PathGlob`): no panics; a path that passes
//! has no dot segment and no backslash left after decoding (what the upstream sees is what was
//! matched); `/**` matches every accepted path; a glob without wildcards matches its own path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey_policy::{PathGlob, RequestPath};

struct Input<'a> {
    glob: &'a str,
    path: &'a str,
}

// The input is `GLOB\nPATH` (text, so the seeds stay readable).
fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (glob, path) = text.split_once('\n').unwrap_or(("/**", text));
    let input = Input { glob, path };
    let everything = PathGlob::parse("/**").expect("/** is a glob");
    let path = RequestPath::parse(input.path);
    if let Ok(p) = &path {
        let decoded = p.decoded();
        assert!(decoded.starts_with('/'), "{:?}", input.path);
        assert!(
            !decoded.split('/').any(|s| s == "." || s == ".."),
            "{:?} decoded to {decoded:?}",
            input.path
        );
        assert!(!decoded.contains('\\'), "{:?}", input.path);
        assert!(everything.matches(decoded), "{:?}", input.path);
    }
    if let Ok(glob) = PathGlob::parse(input.glob) {
        let _ = glob.matches(input.path);
        if let Ok(p) = &path {
            let _ = glob.matches(p.decoded());
        }
        if !input.glob.contains('*') {
            if let Ok(own) = RequestPath::parse(input.glob) {
                assert!(glob.matches(own.decoded()), "{:?}", input.glob);
            }
        }
    }
});
