//! Where a request can name another method than its own, as web frameworks read it: override
//! headers (`X-HTTP-Method-Override` and the like), and a `_method` field — in the query, and in
//! the body of a POST that is a form (Rails/Rack, Laravel and Symfony run a POST as the method it
//! names). This module finds those names and values; [`crate::decide`] checks them against the
//! route, and the data plane's body scanner (`sidekey-body`) finds the fields of bodies that
//! stream.

use http::HeaderMap;

use crate::{ErrorCode, Refusal};

/// The longest multipart boundary accepted (RFC 2046 allows 70 characters; some clients use a
/// few more).
const MAX_BOUNDARY: usize = 200;

/// Headers that server frameworks read as "the real method" of a request (Express
/// method-override, Rails, Symfony, ASP.NET, Google APIs, …). An agent allowed GET could
/// otherwise DELETE through them.
pub const METHOD_OVERRIDE_HEADERS: [http::HeaderName; 3] = [
    http::HeaderName::from_static("x-http-method-override"),
    http::HeaderName::from_static("x-http-method"),
    http::HeaderName::from_static("x-method-override"),
];

/// True when a form field named `name` (already percent-decoded where the format encodes names)
/// is read as the method override by some framework: `_method` in any letter case, with PHP's
/// readings of a name (leading spaces dropped; `.` and space read as `_`) and with any `[...]`
/// suffix (an array under `_method`, which no framework should honour, refused all the same).
pub fn is_override_name(name: &str) -> bool {
    let name = name.trim_start_matches([' ', '\t']);
    let base = name.split('[').next().unwrap_or(name);
    base.len() == 7
        && base
            .bytes()
            .zip(b"_method")
            .all(|(a, b)| a.eq_ignore_ascii_case(b) || (*b == b'_' && matches!(a, b'.' | b' ')))
}

/// The values of every `_method` field of a query string or url-encoded body (`&` and `;`
/// separate fields, as in Rack 2), percent-decoded with `+` as a space.
pub fn urlencoded_overrides(text: &[u8]) -> Vec<String> {
    text.split(|&b| b == b'&' || b == b';')
        .filter_map(|pair| {
            let (key, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            is_override_name(&percent_decode(key)).then(|| percent_decode(value))
        })
        .collect()
}

/// Percent-decodes a form component (`+` as a space), lossily.
pub fn percent_decode(bytes: &[u8]) -> String {
    let hex = |i: usize| bytes.get(i).and_then(|&b| (b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) {
                // Two hex digits: at most 0xff.
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a POST body can carry form fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormKind {
    /// `application/x-www-form-urlencoded`, or no Content-Type at all (Rack reads that as a
    /// form too).
    UrlEncoded,
    /// `multipart/*` with this boundary.
    Multipart { boundary: String },
}

/// The form kind of a POST's body, or None for bodies no framework reads `_method` from
/// (JSON, binary types…). A body whose form reading is ambiguous is refused.
pub fn form_kind(headers: &HeaderMap) -> Result<Option<FormKind>, Refusal> {
    let invalid = |message: &str| Refusal::new(ErrorCode::RequestInvalid, message);
    let mut types = headers.get_all(http::header::CONTENT_TYPE).iter();
    let content_type = match (types.next(), types.next()) {
        (None, _) => None,
        (Some(value), None) => Some(
            value
                .to_str()
                .map_err(|_| invalid("Content-Type is not ASCII"))?,
        ),
        (Some(_), Some(_)) => return Err(invalid("more than one Content-Type header")),
    };
    let (media, params) = match content_type.map(str::trim) {
        None | Some("") => ("", ""),
        // As Rack reads it: the media type ends at the first `;` or `,`.
        Some(text) => match text.find([';', ',']) {
            Some(i) => (text[..i].trim(), &text[i + 1..]),
            None => (text, ""),
        },
    };
    let media = media.to_ascii_lowercase();
    let kind = if media.is_empty() || media == "application/x-www-form-urlencoded" {
        FormKind::UrlEncoded
    } else if media.starts_with("multipart/") {
        let boundary = boundary_param(params).ok_or_else(|| {
            invalid("a multipart body needs a boundary parameter of 1 to 200 characters")
        })?;
        FormKind::Multipart { boundary }
    } else {
        return Ok(None);
    };
    let coded = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    if coded {
        return Err(invalid(
            "a form body with a Content-Encoding cannot be checked for a `_method` field on this \
             route",
        ));
    }
    Ok(Some(kind))
}

/// The `boundary` parameter of a multipart Content-Type (after the media type), unquoted.
/// None unless it is the only `boundary` anywhere in the parameters (PHP and Rack both take the
/// first `boundary=` they find, even inside another parameter's name) and holds no `;`, `,` or
/// `"` (Rack ends a boundary at those even inside quotes, PHP does not).
fn boundary_param(params: &str) -> Option<String> {
    let lower = params.to_ascii_lowercase();
    let at = lower.find("boundary")?;
    if lower[at + 8..].contains("boundary") {
        return None;
    }
    let before = lower[..at].trim_end_matches([' ', '\t']);
    if !(before.is_empty() || before.ends_with(';')) {
        return None;
    }
    let rest = params[at + 8..].trim_start_matches([' ', '\t']);
    let rest = rest.strip_prefix('=')?.trim_start_matches([' ', '\t']);
    let value = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split_once('"')?.0,
        None => rest.split([';', ' ', '\t']).next().unwrap_or(""),
    };
    let clean = !value.is_empty()
        && value.len() <= MAX_BOUNDARY
        && !value.contains([';', ',', '"', '\r', '\n']);
    clean.then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_names_in_every_reading() {
        for name in [
            "_method",
            "_METHOD",
            "_Method",
            " _method",
            ".method",
            "_method[]",
            "_method[x]",
            "_method[",
        ] {
            assert!(is_override_name(name), "{name:?}");
        }
        // PHP drops leading spaces before it reads the others as `_`: " method" is "method".
        for name in [
            "method", " method", "__method", "_methods", "x_method", "_meth", "", "_method_",
        ] {
            assert!(!is_override_name(name), "{name:?}");
        }
    }

    #[test]
    fn urlencoded_fields_are_found_in_every_spelling() {
        let cases: &[(&str, &[&str])] = &[
            ("_method=DELETE", &["DELETE"]),
            ("a=1&_method=put&b=2", &["put"]),
            ("%5Fmethod=delete", &["delete"]),
            ("%5fMETHOD=PATCH", &["PATCH"]),
            ("a=1;_method=DELETE", &["DELETE"]),
            ("_method=GET&_method=DELETE", &["GET", "DELETE"]),
            ("_method=DEL%45TE", &["DELETE"]),
            ("_method", &[""]),
            (".method=DELETE", &["DELETE"]),
            ("+method=DELETE", &[]),
            ("method=DELETE&x_method=PUT", &[]),
            ("", &[]),
        ];
        for (body, want) in cases {
            assert_eq!(urlencoded_overrides(body.as_bytes()), *want, "{body}");
        }
    }

    fn parts(content_type: Option<&str>, encoding: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(t) = content_type {
            headers.insert("content-type", t.parse().unwrap());
        }
        if let Some(e) = encoding {
            headers.insert("content-encoding", e.parse().unwrap());
        }
        headers
    }

    #[test]
    fn form_kinds() {
        let multipart = |b: &str| {
            Ok(Some(FormKind::Multipart {
                boundary: b.to_string(),
            }))
        };
        /// A Content-Type, and the form kind it gives (Err: refused).
        type Case<'a> = (Option<&'a str>, Result<Option<FormKind>, ()>);
        let cases: &[Case] = &[
            (None, Ok(Some(FormKind::UrlEncoded))),
            (Some(""), Ok(Some(FormKind::UrlEncoded))),
            (
                Some("application/x-www-form-urlencoded"),
                Ok(Some(FormKind::UrlEncoded)),
            ),
            (
                Some("Application/X-WWW-Form-Urlencoded; charset=utf-8"),
                Ok(Some(FormKind::UrlEncoded)),
            ),
            (
                Some("application/x-www-form-urlencoded, text/plain"),
                Ok(Some(FormKind::UrlEncoded)),
            ),
            (Some("multipart/form-data; boundary=abc"), multipart("abc")),
            (
                Some("multipart/form-data; charset=utf-8; BOUNDARY=\"a b:c\""),
                multipart("a b:c"),
            ),
            (Some("multipart/form-data; boundary=\"a;b\""), Err(())),
            (Some("multipart/form-data; boundary=a,b"), Err(())),
            (
                Some("multipart/form-data; xboundary=a; boundary=b"),
                Err(()),
            ),
            (Some("multipart/form-data; boundary=a; boundary=b"), Err(())),
            (Some("multipart/mixed; boundary=x"), multipart("x")),
            (Some("multipart/form-data"), Err(())),
            (Some("multipart/form-data; boundary="), Err(())),
            (Some("application/json"), Ok(None)),
            (Some("application/octet-stream"), Ok(None)),
        ];
        for (content_type, want) in cases {
            let got = form_kind(&parts(*content_type, None)).map_err(|_| ());
            assert_eq!(&got, want, "{content_type:?}");
        }
        assert!(form_kind(&parts(None, Some("gzip"))).is_err());
        assert_eq!(
            form_kind(&parts(None, Some("identity"))).ok(),
            Some(Some(FormKind::UrlEncoded))
        );
        assert_eq!(
            form_kind(&parts(Some("application/json"), Some("gzip"))).ok(),
            Some(None)
        );
    }
}
