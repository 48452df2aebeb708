//! Where an agent presents its grant: as proxy credentials on the forward listener (so that
//! `HTTPS_PROXY=http://task:<grant>@127.0.0.1:15080` works in every client unchanged), or in
//! the `x-sidekey-grant` header on the route listener. Neither reaches an upstream.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::PROXY_AUTHORIZATION;
use http::HeaderMap;

use crate::GrantError;

/// The route listener's grant header.
pub const GRANT_HEADER: http::HeaderName = http::HeaderName::from_static("x-sidekey-grant");

/// The grant in `Proxy-Authorization`: `Basic base64(user:grant)` (the user name is not
/// read) or `Bearer grant`. None when the header is absent.
pub fn presented_by_proxy_authorization(
    headers: &HeaderMap,
) -> Result<Option<Cow<'_, str>>, GrantError> {
    let mut values = headers.get_all(PROXY_AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GrantError::Invalid(
            "more than one Proxy-Authorization header".into(),
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| GrantError::Invalid("Proxy-Authorization is not ASCII".into()))?
        .trim();
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return nonempty(Cow::Borrowed(rest));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD
            .decode(rest)
            .map_err(|_| GrantError::Invalid("Proxy-Authorization Basic is not base64".into()))?;
        let pair = String::from_utf8(decoded)
            .map_err(|_| GrantError::Invalid("Proxy-Authorization Basic is not UTF-8".into()))?;
        let Some((_, password)) = pair.split_once(':') else {
            return Err(GrantError::Invalid(
                "Proxy-Authorization Basic has no password: the grant is the password".into(),
            ));
        };
        // Some clients percent-encode userinfo and send it as is; a JWT never contains '%'.
        return nonempty(Cow::Owned(password.to_string()));
    }
    Err(GrantError::Invalid(
        "Proxy-Authorization must be Basic (the grant as password) or Bearer".into(),
    ))
}

/// The grant in `x-sidekey-grant` (route listener). None when absent.
pub fn presented_by_header(headers: &HeaderMap) -> Result<Option<Cow<'_, str>>, GrantError> {
    let mut values = headers.get_all(GRANT_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GrantError::Invalid(format!(
            "more than one {GRANT_HEADER} header"
        )));
    }
    let text = value
        .to_str()
        .map_err(|_| GrantError::Invalid(format!("{GRANT_HEADER} is not ASCII")))?
        .trim();
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .unwrap_or(text);
    nonempty(Cow::Borrowed(token.trim()))
}

/// The token, borrowed from the header where it can be (no copy per request).
fn nonempty(token: Cow<'_, str>) -> Result<Option<Cow<'_, str>>, GrantError> {
    if token.is_empty() {
        return Err(GrantError::Invalid("the grant is empty".into()));
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn proxy_authorization_basic_and_bearer() {
        let basic = format!("Basic {}", STANDARD.encode("task:eyJ.a.b"));
        for (value, want) in [
            (basic.as_str(), "eyJ.a.b"),
            ("Bearer eyJ.a.b", "eyJ.a.b"),
            ("bearer   eyJ.a.b ", "eyJ.a.b"),
        ] {
            let map = headers(&[("proxy-authorization", value)]);
            let got = presented_by_proxy_authorization(&map);
            assert_eq!(
                got.map(|t| t.map(Cow::into_owned)),
                Ok(Some(want.to_string())),
                "{value}"
            );
        }
        assert_eq!(
            presented_by_proxy_authorization(&HeaderMap::new()),
            Ok(None)
        );
        let no_password = format!("Basic {}", STANDARD.encode("task"));
        for bad in ["Digest x", "Basic !!!", no_password.as_str(), "Bearer "] {
            assert!(
                presented_by_proxy_authorization(&headers(&[("proxy-authorization", bad)]))
                    .is_err(),
                "{bad}"
            );
        }
        let twice = headers(&[
            ("proxy-authorization", "Bearer a"),
            ("proxy-authorization", "Bearer b"),
        ]);
        assert!(presented_by_proxy_authorization(&twice).is_err());
    }

    #[test]
    fn grant_header() {
        for value in ["Bearer t", "t"] {
            let map = headers(&[("x-sidekey-grant", value)]);
            assert_eq!(presented_by_header(&map), Ok(Some(Cow::Borrowed("t"))));
        }
        assert!(presented_by_header(&headers(&[("x-sidekey-grant", " ")])).is_err());
    }
}
