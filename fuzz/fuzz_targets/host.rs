//! The host canonicalizer (`CanonicalHost`, `Authority`, `HostPattern`): no panics, and the
//! canonical form is a fixed point made of DNS/IP characters only, so two spellings that parse
//! to the same host always compare equal and a route's exact pattern matches its own host.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey_policy::{Authority, CanonicalHost, HostPattern};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(host) = CanonicalHost::parse(s) {
        let text = host.to_string();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.:".contains(&b)),
            "{s:?} canonicalized to {text:?}"
        );
        assert_eq!(
            CanonicalHost::parse(&text).as_ref(),
            Ok(&host),
            "{s:?} -> {text:?}"
        );
        assert_eq!(
            CanonicalHost::parse(&host.to_uri_host()).as_ref(),
            Ok(&host)
        );
        if let Ok(pattern) = HostPattern::parse(&text) {
            assert!(pattern.matches(&host), "{text:?}");
        }
    }
    if let Ok(authority) = Authority::parse(s) {
        let again = match authority.port {
            Some(port) => format!("{}:{port}", authority.host.to_uri_host()),
            None => authority.host.to_uri_host(),
        };
        let reparsed = Authority::parse(&again).expect("a canonical authority parses");
        assert_eq!(reparsed.host, authority.host, "{s:?}");
        assert_eq!(reparsed.port, authority.port, "{s:?}");
    }
    if let Ok(pattern) = HostPattern::parse(s) {
        // A wildcard never matches its own parent; an exact pattern matches only its host.
        if let HostPattern::Suffix(suffix) = &pattern {
            if let Ok(parent) = CanonicalHost::parse(suffix.trim_start_matches('.')) {
                assert!(!pattern.matches(&parent), "{s:?}");
            }
            if let Ok(child) = CanonicalHost::parse(&format!("x{suffix}")) {
                assert!(pattern.matches(&child), "{s:?}");
            }
        }
    }
});
