//! The config parser and validator (`sidekey_config::parse`): any text gives a config or a list
//! of errors, never a panic; and everything the binary derives from a valid config (its
//! description for `sidekey check`, the policy) can be computed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match sidekey_config::parse(source, "fuzz.yaml") {
        Ok(config) => {
            let _ = config.describe();
            assert_eq!(config.policy().routes().len(), config.routes.len());
        }
        Err(errors) => {
            assert!(!errors.to_string().is_empty());
        }
    }
});
