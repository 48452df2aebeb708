//! Header rewriting (`sidekey_inject`): with any agent headers and URI, hop-by-hop headers are
//! gone after `strip_hop_by_hop`; after `inject` the credential is present exactly once, in the
//! configured place and form, whatever the agent sent; after `strip_injected` the agent's copy
//! is gone. Injection settings are limited to what the config validator accepts.
#![no_main]

use arbitrary::Arbitrary;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use libfuzzer_sys::fuzz_target;
use sidekey_config::{Inject, Template};
use sidekey_secret::Secret;
use sidekey_inject::{inject, strip_hop_by_hop, strip_injected};

#[derive(Arbitrary, Debug)]
enum How {
    Header {
        name: String,
        prefix: String,
        suffix: String,
    },
    Basic {
        username: String,
    },
    Query {
        param: String,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    uri: String,
    how: How,
    secret: String,
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn template_text(s: &str) -> bool {
    s.chars().all(|c| c == ' ' || c.is_ascii_graphic()) && !s.contains("{token}")
}

/// The inject setting, if the config validator would accept it.
fn validated(how: &How) -> Option<Inject> {
    match how {
        How::Header {
            name,
            prefix,
            suffix,
        } => (is_token(name)
            && !HOP_BY_HOP.contains(&name.to_ascii_lowercase().as_str())
            && !["host", "content-length"].contains(&name.to_ascii_lowercase().as_str())
            && template_text(prefix)
            && template_text(suffix))
        .then(|| Inject::Header {
            name: name.clone(),
            value: Template {
                prefix: prefix.clone(),
                suffix: suffix.clone(),
            },
        }),
        How::Basic { username } => Some(Inject::Basic {
            username: username.clone(),
        }),
        How::Query { param } => (!param.is_empty()
            && param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)))
        .then(|| Inject::Query {
            param: param.clone(),
        }),
    }
}

/// `(decoded name, decoded value)` of each query pair.
fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(n), percent_decode(v))
        })
        .collect()
}

/// `%XX` decoding, lossy UTF-8 (as sidekey reads query names).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fuzz_target!(|input: Input| {
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let Ok(mut uri) = input.uri.parse::<Uri>() else {
        return;
    };
    strip_hop_by_hop(&mut headers);
    for name in HOP_BY_HOP {
        assert!(!headers.contains_key(*name), "{name} survived");
    }
    let Some(how) = validated(&input.how) else {
        return;
    };

    let (mut stripped, mut stripped_uri) = (headers.clone(), uri.clone());
    if strip_injected(&mut stripped, &mut stripped_uri, &how).is_ok() {
        match &how {
            Inject::Header { name, .. } => assert!(!stripped.contains_key(name.as_str())),
            Inject::Basic { .. } => assert!(!stripped.contains_key("authorization")),
            Inject::Query { param } => assert!(
                query_pairs(&stripped_uri).iter().all(|(n, _)| n != param),
                "{param} left in {stripped_uri}"
            ),
            Inject::SigV4 { .. } => {}
        }
    }

    let secret = Secret::new(input.secret.clone());
    if inject(&mut headers, &mut uri, &how, &secret).is_err() {
        return;
    }
    match &how {
        Inject::Header { name, value } => {
            let values: Vec<&HeaderValue> = headers.get_all(name.as_str()).iter().collect();
            assert_eq!(values.len(), 1, "{name}: {values:?}");
            let expected = format!("{}{}{}", value.prefix, input.secret, value.suffix);
            assert_eq!(values[0].as_bytes(), expected.as_bytes());
            assert!(values[0].is_sensitive());
        }
        Inject::Basic { .. } => {
            let values: Vec<&HeaderValue> = headers.get_all("authorization").iter().collect();
            assert_eq!(values.len(), 1, "{values:?}");
            assert!(values[0].as_bytes().starts_with(b"Basic "));
            assert!(values[0].is_sensitive());
        }
        Inject::Query { param } => {
            let pairs = query_pairs(&uri);
            let mine: Vec<&(String, String)> = pairs.iter().filter(|(n, _)| n == param).collect();
            assert_eq!(mine.len(), 1, "{param} in {uri}");
            assert_eq!(mine[0].1, input.secret, "{uri}");
        }
        Inject::SigV4 { .. } => {}
    }
});
