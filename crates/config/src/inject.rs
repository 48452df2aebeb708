//! A route's `inject:` — exactly one way of attaching its credential: a header (with a value
//! template), HTTP Basic, or a query parameter.

use crate::check::{Errors, Fields};
use crate::route::is_token;
use crate::yaml::Node;
use crate::{Inject, Template};

const INJECT_KEYS: &[&str] = &["header", "value", "basic", "query", "sigv4"];
const KINDS: &[&str] = &["header", "basic", "query", "sigv4"];
const BASIC_KEYS: &[&str] = &["username"];
const SIGV4_KEYS: &[&str] = &["service", "region"];
const EXAMPLE: &str = "e.g. inject: { header: Authorization, value: \"Bearer {token}\" }, \
inject: { basic: { username: x-access-token } }, inject: { query: api_key } or \
inject: { sigv4: { service: s3, region: us-east-1 } }";

/// Headers that belong to the connection or the message framing: a credential placed there would
/// be dropped, rewritten, or would corrupt the request.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "proxy-authorization",
    "host",
    "transfer-encoding",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "trailer",
    "content-length",
];

pub(crate) fn inject(node: &Node, route: &str, e: &mut Errors) -> Option<Inject> {
    let what = format!("`inject` of {route}");
    let f = e.fields(node, &what, INJECT_KEYS)?;
    let kinds: Vec<_> = f
        .entries
        .iter()
        .filter(|x| KINDS.contains(&x.name))
        .collect();
    let kind = match kinds.as_slice() {
        [] => {
            e.error_hint(
                f.pos,
                format!("{what} needs one of `header`, `basic`, `query` or `sigv4`"),
                EXAMPLE,
            );
            return None;
        }
        [one] => one,
        [first, second, ..] => {
            e.error_hint(
                second.key.pos,
                format!("{what} has both `{}` and `{}`", first.name, second.name),
                "a route attaches its credential one way only: keep one of `header`, `basic`, `query` or `sigv4`",
            );
            return None;
        }
    };
    if kind.name != "header" {
        if let Some(v) = f.field("value") {
            e.error_hint(
                v.key.pos,
                format!("{what}: `value` applies only to `header`"),
                format!("remove `value`, or use `header` instead of `{}`", kind.name),
            );
        }
    }
    match kind.name {
        "header" => header(&f, kind.value, &what, e),
        "basic" => basic(kind.value, &what, e),
        "query" => query(kind.value, &what, e),
        _ => sigv4(kind.value, &what, e),
    }
}

fn header(f: &Fields<'_>, name_node: &Node, what: &str, e: &mut Errors) -> Option<Inject> {
    let name = e.string(name_node, &format!("`header` of {what}"))?;
    let mut ok = true;
    if !is_token(name) {
        ok = false;
        e.error_hint(
            name_node.pos,
            format!("{what}: `{name}` is not a valid header name"),
            "header names are HTTP tokens: letters, digits and !#$%&'*+-.^_`|~, no spaces or colons",
        );
    } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        ok = false;
        e.error_hint(
            name_node.pos,
            format!("{what}: `{name}` cannot carry a credential"),
            "it is a hop-by-hop or framing header that proxies remove or rewrite; use the header the \
             upstream API reads, e.g. Authorization",
        );
    }
    let value = match f.value("value") {
        Some(v) => {
            let text = e.string(v, &format!("`value` of {what}"))?;
            match template(text) {
                Ok(t) => Some(t),
                Err((message, hint)) => {
                    e.error_hint(v.pos, format!("{what}: {message}"), hint);
                    None
                }
            }
        }
        None if name.eq_ignore_ascii_case("authorization") => Some(Template {
            prefix: "Bearer ".into(),
            suffix: String::new(),
        }),
        None => Some(Template {
            prefix: String::new(),
            suffix: String::new(),
        }),
    };
    match (ok, value) {
        (true, Some(value)) => Some(Inject::Header {
            name: name.to_string(),
            value,
        }),
        _ => None,
    }
}

/// A header value with exactly one `{token}`, otherwise visible ASCII and spaces.
pub(crate) fn template(text: &str) -> Result<Template, (String, String)> {
    const PLACEHOLDER: &str = "{token}";
    if let Some(c) = text.chars().find(|c| !(*c == ' ' || c.is_ascii_graphic())) {
        return Err((
            format!(
                "`value` contains {c:?} ({}), which a header value cannot carry safely",
                c.escape_unicode()
            ),
            "use visible ASCII characters and spaces only".into(),
        ));
    }
    let count = text.matches(PLACEHOLDER).count();
    if count != 1 {
        let found = if count == 0 {
            "none".to_string()
        } else {
            count.to_string()
        };
        return Err((
            format!("`value` must contain `{{token}}` exactly once; \"{text}\" has {found}"),
            "`{token}` marks where the credential goes, e.g. \"Bearer {token}\"".into(),
        ));
    }
    let (prefix, suffix) = text.split_once(PLACEHOLDER).unwrap_or((text, ""));
    Ok(Template {
        prefix: prefix.to_string(),
        suffix: suffix.to_string(),
    })
}

fn basic(node: &Node, what: &str, e: &mut Errors) -> Option<Inject> {
    let inner = format!("`basic` of {what}");
    let hint = "e.g. basic: { username: x-access-token }; the credential is the password";
    if node.is_null() {
        e.error_hint(node.pos, format!("{inner} needs a `username`"), hint);
        return None;
    }
    let f = e.fields(node, &inner, BASIC_KEYS)?;
    let Some(user_node) = f.value("username") else {
        e.error_hint(f.pos, format!("{inner} needs a `username`"), hint);
        return None;
    };
    let username = e.nonempty_string(user_node, &format!("`username` of {inner}"))?;
    if username.contains(':') || username.chars().any(|c| c.is_control()) {
        e.error_hint(
            user_node.pos,
            format!(
                "{inner}: username `{}` contains ':' or a control character",
                username.escape_debug()
            ),
            "HTTP Basic user names cannot contain ':' (it separates user and password)",
        );
        return None;
    }
    Some(Inject::Basic {
        username: username.to_string(),
    })
}

fn query(node: &Node, what: &str, e: &mut Errors) -> Option<Inject> {
    let param = e.nonempty_string(node, &format!("`query` of {what}"))?;
    if !param
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        e.error_hint(
            node.pos,
            format!("{what}: `{param}` is not a plain query parameter name"),
            "use letters, digits, `-`, `.`, `_` and `~` (no encoding is applied), e.g. api_key",
        );
        return None;
    }
    Some(Inject::Query {
        param: param.to_string(),
    })
}

fn sigv4(node: &Node, what: &str, e: &mut Errors) -> Option<Inject> {
    let inner = format!("`sigv4` of {what}");
    let hint = "e.g. sigv4: { service: s3, region: us-east-1 }";
    if node.is_null() {
        e.error_hint(
            node.pos,
            format!("{inner} needs `service` and `region`"),
            hint,
        );
        return None;
    }
    let f = e.fields(node, &inner, SIGV4_KEYS)?;
    let service = match f.value("service") {
        Some(n) => e
            .nonempty_string(n, &format!("`service` of {inner}"))
            .and_then(|s| {
                if s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                {
                    Some(s.to_string())
                } else {
                    e.error_hint(
                        n.pos,
                        format!("{inner}: `{s}` is not an AWS service signing name"),
                        "signing names are lower-case, e.g. s3, sts, execute-api, bedrock",
                    );
                    None
                }
            }),
        None => {
            e.error_hint(f.pos, format!("{inner} needs a `service`"), hint);
            None
        }
    };
    let region = match f.value("region") {
        Some(n) => crate::issuers::region(n, &format!("`region` of {inner}"), e),
        None => {
            e.error_hint(f.pos, format!("{inner} needs a `region`"), hint);
            None
        }
    };
    Some(Inject::SigV4 {
        service: service?,
        region: region?,
    })
}
