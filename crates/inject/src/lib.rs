//! Rewriting a request on its way out: hop-by-hop headers are dropped (RFC 9110 §7.6.1), then
//! whatever the agent put where the credential goes is removed, then the credential is attached.
//! The order matters: an agent can never choose, duplicate or smuggle the injected value.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sidekey_config::Inject;
use sidekey_secret::Secret;
use zeroize::Zeroizing;

pub mod sigv4;
pub mod trace;

/// Why a credential could not be attached. Never contains the value.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("the credential cannot be used as a header value (it contains control characters)")]
    InvalidHeaderValue,
    #[error("the injected header name is invalid")]
    InvalidHeaderName,
    #[error("the request URI cannot carry the credential as a query parameter")]
    InvalidUri,
    /// A token route with AWS keys, or a SigV4 route with a token (the config forbids both).
    #[error("the credential is of the wrong kind for this route ({0})")]
    WrongKind(&'static str),
}

/// Headers that describe one connection, not the message: never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// A map with at most this many names is searched by a look along its names rather than by
/// hashing the name sought ([`has`], [`first`]).
const SCAN_UP_TO: usize = 12;

/// Whether `headers` has `name`: as `HeaderMap::contains_key`, but for the few names most
/// requests and responses carry, a look along them (a compare of a few instructions each)
/// rather than hashing the name sought (100-200 instructions per look-up, measured per request
/// in benches/NOTES.md).
pub fn has(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.keys_len() <= SCAN_UP_TO {
        headers.keys().any(|present| present == name)
    } else {
        headers.contains_key(name)
    }
}

/// The first value of `name`, as `HeaderMap::get` gives it, found as [`has`] finds it.
pub fn first<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.keys_len() <= SCAN_UP_TO {
        // The iterator gives each name's values together, its first value first.
        headers
            .iter()
            .find_map(|(present, value)| (present == name).then_some(value))
    } else {
        headers.get(name)
    }
}

/// Removes hop-by-hop headers, and every header that `Connection` names, in place.
/// `Upgrade` is removed too (sidekey does not pass protocol upgrades through yet).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_hop_by_hop_and(headers, &[]);
}

/// `strip_hop_by_hop`, and every header named in `also`. Most requests carry none of these: a
/// look along the few names a request has is cheaper than hashing each name to remove it.
pub fn strip_hop_by_hop_and(headers: &mut HeaderMap, also: &[HeaderName]) {
    for name in also {
        if has(headers, name) {
            headers.remove(name);
        }
    }
    let hop = |name: &HeaderName| HOP_BY_HOP.contains(name) || name == header::UPGRADE;
    if !headers.keys().any(hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Attaches `secret` as `inject` says, after removing whatever the agent sent in its place.
/// `uri` is only touched for query injection.
pub fn inject(
    headers: &mut HeaderMap,
    uri: &mut Uri,
    how: &Inject,
    secret: &Secret,
) -> Result<(), InjectError> {
    match how {
        Inject::Header { .. } | Inject::Basic { .. } => {
            if let Some((name, value)) = header_of(how, secret)? {
                // `insert` replaces every value the agent sent under this name.
                headers.insert(name, value);
            }
            Ok(())
        }
        Inject::Query { param } => {
            *uri = secret.with(|s| with_query_param(uri, param, s))?;
            Ok(())
        }
        Inject::SigV4 { .. } => Err(InjectError::WrongKind(
            "a SigV4 route signs with AWS keys, not a token",
        )),
    }
}

/// The header `how` attaches for `secret` (None for query and SigV4 injection): its name, and
/// its value marked sensitive — never indexed by HPACK (RFC 7541 §7.1.3), hidden from `Debug`
/// of the header map — and wiped when the last copy of it is dropped. Computed once per
/// credential by the proxy and inserted into each request as it is (a shared, reference-counted
/// value), which is what `inject` does per call.
pub fn header_of(
    how: &Inject,
    secret: &Secret,
) -> Result<Option<(HeaderName, HeaderValue)>, InjectError> {
    let (name, text) = match how {
        Inject::Header { name, value } => {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| InjectError::InvalidHeaderName)?;
            let mut text = Zeroizing::new(Vec::with_capacity(
                value.prefix.len() + secret.len() + value.suffix.len(),
            ));
            text.extend_from_slice(value.prefix.as_bytes());
            secret.with(|s| text.extend_from_slice(s.as_bytes()));
            text.extend_from_slice(value.suffix.as_bytes());
            (name, text)
        }
        Inject::Basic { username } => {
            let plain = secret.with(|s| Zeroizing::new(format!("{username}:{s}")));
            let mut text = Zeroizing::new(String::from("Basic "));
            STANDARD.encode_string(plain.as_bytes(), &mut text);
            (
                header::AUTHORIZATION,
                Zeroizing::new(text.as_bytes().to_vec()),
            )
        }
        Inject::Query { .. } | Inject::SigV4 { .. } => return Ok(None),
    };
    // Kept as it is (no copy), and zeroized by its owner once the last clone is gone.
    let mut value = HeaderValue::from_maybe_shared(Bytes::from_owner(text))
        .map_err(|_| InjectError::InvalidHeaderValue)?;
    value.set_sensitive(true);
    Ok(Some((name, value)))
}

/// Removes the agent's copy of what `inject` sets, without attaching anything (used for
/// requests that pass without a credential, so a dummy key still never leaves).
pub fn strip_injected(
    headers: &mut HeaderMap,
    uri: &mut Uri,
    how: &Inject,
) -> Result<(), InjectError> {
    match how {
        Inject::Header { name, .. } => {
            headers.remove(name.as_str());
        }
        Inject::Basic { .. } => {
            headers.remove(header::AUTHORIZATION);
        }
        Inject::Query { param } => {
            *uri = replace_query_param(uri, param, None)?;
        }
        Inject::SigV4 { .. } => sigv4::strip(headers),
    }
    Ok(())
}

/// Characters left as they are in a query value: RFC 3986 unreserved.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn with_query_param(uri: &Uri, param: &str, value: &str) -> Result<Uri, InjectError> {
    replace_query_param(uri, param, Some(value))
}

/// Drops every `param=` (also percent-encoded spellings of the name) from the query and, if
/// `value` is given, appends `param=value`.
fn replace_query_param(uri: &Uri, param: &str, value: Option<&str>) -> Result<Uri, InjectError> {
    let path = uri.path();
    let mut query = String::new();
    if let Some(existing) = uri.query() {
        for pair in existing.split('&').filter(|p| !p.is_empty()) {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            let decoded = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            if decoded.replace('+', " ") == param {
                continue;
            }
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(pair);
        }
    }
    if let Some(value) = value {
        if !query.is_empty() {
            query.push('&');
        }
        query.extend(utf8_percent_encode(param, QUERY_VALUE));
        query.push('=');
        query.extend(utf8_percent_encode(value, QUERY_VALUE));
    }
    let pq = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| InjectError::InvalidUri)?);
    Uri::from_parts(parts).map_err(|_| InjectError::InvalidUri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidekey_config::Template;

    #[test]
    fn a_look_along_the_names_answers_as_the_hashed_look_up() {
        let sought = [
            header::EXPECT,
            header::UPGRADE,
            HeaderName::from_static("x-sidekey-task"),
            HeaderName::from_static("x-custom-7"),
            HeaderName::from_static("x-absent"),
        ];
        // Below, at and above the size where `has` and `first` hash instead; names repeated
        // (their first value is the one), standard and custom.
        for extra in [0, SCAN_UP_TO - 3, SCAN_UP_TO - 2, SCAN_UP_TO + 5] {
            let mut headers = HeaderMap::new();
            headers.append(header::HOST, HeaderValue::from_static("a.example"));
            headers.append("x-sidekey-task", HeaderValue::from_static("first"));
            headers.append(header::EXPECT, HeaderValue::from_static("100-continue"));
            headers.append("x-sidekey-task", HeaderValue::from_static("second"));
            for i in 0..extra {
                headers.append(
                    HeaderName::from_bytes(format!("x-custom-{i}").as_bytes()).unwrap(),
                    HeaderValue::from(i),
                );
            }
            for name in &sought {
                assert_eq!(
                    has(&headers, name),
                    headers.contains_key(name),
                    "{extra} {name}"
                );
                assert_eq!(first(&headers, name), headers.get(name), "{extra} {name}");
            }
        }
    }

    fn secret() -> Secret {
        Secret::new("tok3n-canary".into())
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret-Hop , close"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            "proxy-authorization",
            HeaderValue::from_static("Basic Zm9vOmJhcg=="),
        );
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn header_injection_replaces_every_agent_value() {
        let mut h = HeaderMap::new();
        h.append(
            "authorization",
            HeaderValue::from_static("Bearer agent-dummy"),
        );
        h.append("authorization", HeaderValue::from_static("Bearer second"));
        let mut uri: Uri = "https://api.example/x".parse().unwrap();
        let how = Inject::Header {
            name: "Authorization".into(),
            value: Template {
                prefix: "Bearer ".into(),
                suffix: String::new(),
            },
        };
        inject(&mut h, &mut uri, &how, &secret()).unwrap();
        let all: Vec<_> = h.get_all("authorization").iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], "Bearer tok3n-canary");
        assert!(all[0].is_sensitive());
        assert!(
            !format!("{h:?}").contains("canary"),
            "sensitive values are hidden from Debug"
        );
    }

    #[test]
    fn custom_header_with_suffix_and_basic() {
        let mut h = HeaderMap::new();
        let mut uri: Uri = "https://api.example/x".parse().unwrap();
        let how = Inject::Header {
            name: "X-Api-Key".into(),
            value: Template {
                prefix: "k=".into(),
                suffix: ";v=1".into(),
            },
        };
        inject(&mut h, &mut uri, &how, &secret()).unwrap();
        assert_eq!(h["x-api-key"], "k=tok3n-canary;v=1");

        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic YWdlbnQ6ZHVtbXk="),
        );
        inject(
            &mut h,
            &mut uri,
            &Inject::Basic {
                username: "x-access-token".into(),
            },
            &secret(),
        )
        .unwrap();
        let expected = format!("Basic {}", STANDARD.encode("x-access-token:tok3n-canary"));
        assert_eq!(h["authorization"], expected.as_str());
    }

    #[test]
    fn query_injection_drops_agent_values_in_any_spelling() {
        let cases = [
            ("https://a.example/p", "/p?api_key=tok3n-canary"),
            ("https://a.example/p?x=1", "/p?x=1&api_key=tok3n-canary"),
            (
                "https://a.example/p?api_key=dummy&x=1",
                "/p?x=1&api_key=tok3n-canary",
            ),
            (
                "https://a.example/p?api%5Fkey=dummy&api_key&x=1",
                "/p?x=1&api_key=tok3n-canary",
            ),
            (
                "https://a.example/p?api_key=a&api_key=b",
                "/p?api_key=tok3n-canary",
            ),
        ];
        for (input, want) in cases {
            let mut uri: Uri = input.parse().unwrap();
            let mut h = HeaderMap::new();
            inject(
                &mut h,
                &mut uri,
                &Inject::Query {
                    param: "api_key".into(),
                },
                &secret(),
            )
            .unwrap();
            assert_eq!(uri.path_and_query().unwrap().as_str(), want, "{input}");
            assert_eq!(uri.host(), Some("a.example"));
        }
    }

    #[test]
    fn strip_without_inject_removes_agent_dummy_values() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("dummy"));
        let mut uri: Uri = "https://a.example/p?api_key=dummy&q=1".parse().unwrap();
        let how = Inject::Header {
            name: "X-Api-Key".into(),
            value: Template {
                prefix: String::new(),
                suffix: String::new(),
            },
        };
        strip_injected(&mut h, &mut uri, &how).unwrap();
        assert!(h.is_empty());
        strip_injected(
            &mut h,
            &mut uri,
            &Inject::Query {
                param: "api_key".into(),
            },
        )
        .unwrap();
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/p?q=1");
    }

    #[test]
    fn control_characters_in_a_credential_are_refused() {
        let mut h = HeaderMap::new();
        let mut uri: Uri = "https://a.example/p".parse().unwrap();
        let how = Inject::Header {
            name: "Authorization".into(),
            value: Template {
                prefix: "Bearer ".into(),
                suffix: String::new(),
            },
        };
        let bad = Secret::new("line1\r\nX-Evil: 1".into());
        assert!(matches!(
            inject(&mut h, &mut uri, &how, &bad),
            Err(InjectError::InvalidHeaderValue)
        ));
        assert!(h.is_empty());
    }
}
