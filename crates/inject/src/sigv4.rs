//! AWS Signature Version 4 for `inject: { sigv4: … }`: the outgoing request is signed with the
//! temporary keys of an `aws-sts` credential, after the agent's own signature (made with dummy
//! keys) has been removed. The cryptography and canonicalization are the maintained
//! `aws-sigv4` crate's, with the settings the AWS SDKs use per service.
//!
//! **Which headers are signed.** Only headers that mean something to AWS and that nothing
//! between sidekey and AWS rewrites: `host`, every `x-amz-*` header (S3 refuses a request with an
//! unsigned `x-amz-*` header), and `content-type`, `content-md5`, `content-encoding`,
//! `content-disposition`, `content-language`, `cache-control`, `expires`, `range`, `if-match`,
//! `if-none-match`, `if-modified-since`, `if-unmodified-since` (what S3 stores or acts on).
//! Not signed: `content-length` (a body may be re-framed on the way, HTTP/1.1 chunked ↔ h2),
//! `user-agent`, `accept*`, `expect`, `x-amzn-trace-id`, `amz-sdk-*` and anything else a client,
//! a proxy or a load balancer may add or change. AWS accepts a request whose signature covers
//! fewer headers than were sent; it rejects one where a signed header changed.
//!
//! **Payload.** `Payload::Unsigned` signs `UNSIGNED-PAYLOAD` (the body streams through
//! unread); `Payload::Bytes` signs the body's SHA-256. S3 always gets `x-amz-content-sha256`.
//! An agent that already framed its body as `aws-chunked` with an unsigned trailer (boto3 and
//! the other SDKs do for S3 uploads, `STREAMING-UNSIGNED-PAYLOAD-TRAILER`) keeps that mode: the
//! framing is in the body, which sidekey does not rewrite. Chunk-signed bodies
//! (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD…`) carry signatures made with the agent's keys in the
//! body itself and are refused.
//!
//! **Canonical URI and query.** S3 (`s3`, `s3-object-lambda`, `s3-outposts`) signs the path
//! exactly as sent; every other service normalizes it and encodes it once more (`%` → `%25`),
//! as AWS does on its side. Query parameters are decoded and encoded again (RFC 3986, `%20`
//! for a space, upper-case hex) and sorted; a literal `+` in the query is a plus sign to AWS,
//! not a space, so it is signed as `%2B`.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    self, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use sidekey_secret::Secret;

/// The temporary keys an `aws-sts` credential holds.
pub struct AwsKeys<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a Secret,
    /// `SessionToken` of STS credentials; sent as `x-amz-security-token` and signed.
    pub session_token: Option<&'a Secret>,
}

/// [`AwsKeys`] with the secrets read, for the time of one signature.
struct KeyValues<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    session_token: Option<&'a str>,
}

/// What the signature says about the body.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// `UNSIGNED-PAYLOAD`: the body streams through unread (S3).
    Unsigned,
    /// The whole body, whose SHA-256 is signed.
    Bytes(&'a [u8]),
}

/// The credential scope: date (from `time`), region and service.
#[derive(Clone, Copy, Debug)]
pub struct SigningScope<'a> {
    /// Signing name of the service, e.g. `s3`, `sts`, `execute-api`.
    pub service: &'a str,
    /// e.g. `us-east-1`.
    pub region: &'a str,
    /// When the request is signed (`x-amz-date`); AWS accepts a skew of about 5 minutes.
    pub time: SystemTime,
}

/// Why a request could not be signed. Never contains a key, a token or a header value.
#[derive(Debug, thiserror::Error)]
pub enum SigV4Error {
    #[error("header {name} cannot be signed: its value is not UTF-8 text")]
    HeaderNotText { name: HeaderName },
    #[error("the Host header ({header}) disagrees with the host being signed for ({host})")]
    HostMismatch { header: String, host: String },
    #[error(
        "the request carries query-string authentication (X-Amz-Credential, X-Amz-Signature, …); \
         sidekey signs in headers: send the request without presigning it"
    )]
    PresignedQuery,
    #[error(
        "the body is chunk-signed (x-amz-content-sha256: STREAMING-AWS4-…) with the agent's keys \
         and cannot be re-signed: configure the client for unsigned payloads"
    )]
    SignedChunks,
    #[error("invalid signing scope: service and region must be non-empty [a-z0-9-] names")]
    InvalidScope,
    #[error("the AWS keys cannot be used in a request (empty, or not printable ASCII)")]
    InvalidKeys,
    #[error("the request cannot be signed: its URI or a signed header is malformed")]
    Malformed,
}

const AUTHORIZATION: HeaderName = http::header::AUTHORIZATION;
const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
const X_AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");

/// Headers whose value the signature replaces: the agent's copies never leave.
const REPLACED: [HeaderName; 4] = [
    AUTHORIZATION,
    X_AMZ_DATE,
    X_AMZ_SECURITY_TOKEN,
    X_AMZ_CONTENT_SHA256,
];

/// Signed when present, besides `host` and every `x-amz-*` (see the module docs).
const SIGNED: [&str; 12] = [
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-md5",
    "content-type",
    "expires",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// Query parameters of presigned-URL authentication (compared case-insensitively).
const QUERY_AUTH: [&str; 7] = [
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-expires",
    "x-amz-security-token",
    "x-amz-signature",
    "x-amz-signedheaders",
];

const UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";

/// Removes the agent's signature headers without signing (a request that passes unsigned).
pub fn strip(headers: &mut HeaderMap) {
    for name in &REPLACED {
        headers.remove(name);
    }
}

/// Signs the request as it will be sent upstream, in place.
///
/// First removes whatever `Authorization`, `X-Amz-Date`, `X-Amz-Security-Token` and
/// `X-Amz-Content-Sha256` the agent sent (also when signing then fails). Then signs `method`,
/// `uri`'s path and query (as sent; its authority, if any, is ignored), `host` (the Host header
/// or `:authority` as sent upstream: with `:port` only when it is not the scheme's default) and
/// the headers listed in the module docs, and adds `authorization`, `x-amz-date`,
/// `x-amz-security-token` (with a session token) and `x-amz-content-sha256` (for S3, and
/// whenever the payload is not hashed), all marked sensitive. `headers` should not carry
/// `host`; if it does, it must equal `host`. Hop-by-hop headers must already be gone.
pub fn sign(
    method: &Method,
    host: &str,
    uri: &Uri,
    headers: &mut HeaderMap,
    payload: Payload<'_>,
    keys: &AwsKeys<'_>,
    scope: &SigningScope<'_>,
) -> Result<(), SigV4Error> {
    keys.secret_access_key.with(|secret_access_key| {
        let mut sign = |session_token: Option<&str>| {
            let values = KeyValues {
                access_key_id: keys.access_key_id,
                secret_access_key,
                session_token,
            };
            sign_values(method, host, uri, headers, payload, &values, scope)
        };
        match keys.session_token {
            Some(token) => token.with(|token| sign(Some(token))),
            None => sign(None),
        }
    })
}

/// [`sign`] with the secret values in hand.
fn sign_values(
    method: &Method,
    host: &str,
    uri: &Uri,
    headers: &mut HeaderMap,
    payload: Payload<'_>,
    keys: &KeyValues<'_>,
    scope: &SigningScope<'_>,
) -> Result<(), SigV4Error> {
    let agent_hash = headers
        .get(&X_AMZ_CONTENT_SHA256)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string());
    for name in &REPLACED {
        headers.remove(name);
    }

    if !valid_scope_name(scope.service) || !valid_scope_name(scope.region) {
        return Err(SigV4Error::InvalidScope);
    }
    let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !printable(keys.access_key_id)
        || !printable(keys.secret_access_key)
        || keys.session_token.is_some_and(|t| !printable(t))
    {
        return Err(SigV4Error::InvalidKeys);
    }
    if let Some(header) = headers.get(http::header::HOST) {
        if !header.as_bytes().eq_ignore_ascii_case(host.as_bytes()) {
            return Err(SigV4Error::HostMismatch {
                header: String::from_utf8_lossy(header.as_bytes()).into_owned(),
                host: host.to_string(),
            });
        }
    }

    let body = match agent_hash.as_deref() {
        Some(UNSIGNED_TRAILER) => SignableBody::StreamingUnsignedPayloadTrailer,
        Some(v) if v.len() >= 10 && v[..10].eq_ignore_ascii_case("STREAMING-") => {
            return Err(SigV4Error::SignedChunks)
        }
        _ => match payload {
            Payload::Unsigned => SignableBody::UnsignedPayload,
            Payload::Bytes(bytes) => SignableBody::Bytes(bytes),
        },
    };
    let s3 = sidekey_config::is_s3_service(scope.service);
    let mut settings = SigningSettings::default();
    if s3 || !matches!(body, SignableBody::Bytes(_)) {
        // The server cannot hash the body itself to check UNSIGNED-PAYLOAD or a trailer mode.
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    if s3 {
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }

    let target = signing_target(uri)?;
    let mut signed: Vec<(&str, &str)> = vec![("host", host)];
    for (name, value) in headers.iter() {
        if name == http::header::HOST || !is_signed(name) {
            continue;
        }
        let value = std::str::from_utf8(value.as_bytes())
            .map_err(|_| SigV4Error::HeaderNotText { name: name.clone() })?;
        signed.push((name.as_str(), value));
    }

    let identity = Credentials::new(
        keys.access_key_id,
        keys.secret_access_key,
        keys.session_token.map(str::to_string),
        None,
        "sidekey",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(scope.region)
        .name(scope.service)
        .time(scope.time)
        .settings(settings)
        .build()
        .map_err(|_| SigV4Error::InvalidScope)?
        .into();
    let request = SignableRequest::new(method.as_str(), target, signed.into_iter(), body)
        .map_err(|_| SigV4Error::Malformed)?;
    let (instructions, _signature) = http_request::sign(request, &params)
        .map_err(|_| SigV4Error::Malformed)?
        .into_parts();

    let (added, _query) = instructions.into_parts();
    let mut values = Vec::with_capacity(added.len());
    for header in &added {
        let name = HeaderName::from_static(header.name());
        let mut value =
            HeaderValue::from_str(header.value()).map_err(|_| SigV4Error::InvalidKeys)?;
        // Never indexed by HPACK (RFC 7541 §7.1.3), hidden from `Debug` of the header map.
        value.set_sensitive(true);
        values.push((name, value));
    }
    for (name, value) in values {
        headers.insert(name, value);
    }
    Ok(())
}

/// `[a-z0-9-]+`: what region and service names look like (they go into the credential scope).
fn valid_scope_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_signed(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("x-amz-") || SIGNED.contains(&name)
}

/// The origin-form path and query handed to the signer. A literal `+` in the query means a
/// plus sign to AWS; the signer's form decoding would read it as a space, so it gets `%2B`.
/// Presigned-URL parameters are refused: AWS rejects two authentications in one request.
fn signing_target(uri: &Uri) -> Result<String, SigV4Error> {
    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    let Some(query) = uri.query() else {
        return Ok(path.to_string());
    };
    for pair in query.split('&') {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        if QUERY_AUTH.iter().any(|a| name.eq_ignore_ascii_case(a)) {
            return Err(SigV4Error::PresignedQuery);
        }
    }
    Ok(format!("{path}?{}", query.replace('+', "%2B")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2015-08-30T12:36:00Z, the time of AWS's Signature Version 4 test suite.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    /// Keys of AWS's Signature Version 4 test suite.
    const SUITE_KEYS: KeyValues<'static> = KeyValues {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token: None,
    };

    fn suite_scope() -> SigningScope<'static> {
        SigningScope {
            service: "service",
            region: "us-east-1",
            time: suite_time(),
        }
    }

    fn sign_suite(
        method: &str,
        uri: &str,
        headers: &mut HeaderMap,
        keys: &KeyValues<'_>,
    ) -> Result<(), SigV4Error> {
        sign_values(
            &method.parse().unwrap(),
            "example.amazonaws.com",
            &uri.parse().unwrap(),
            headers,
            Payload::Bytes(b""),
            keys,
            &suite_scope(),
        )
    }

    fn auth(h: &HeaderMap) -> &str {
        h["authorization"].to_str().unwrap()
    }

    fn signature(h: &HeaderMap) -> &str {
        auth(h).rsplit_once("Signature=").unwrap().1
    }

    fn signed_headers(h: &HeaderMap) -> &str {
        let rest = auth(h).split_once("SignedHeaders=").unwrap().1;
        rest.split_once(',').unwrap().0
    }

    /// Known answers from AWS's Signature Version 4 test suite (aws-sig-v4-test-suite, as
    /// shipped in the aws-sigv4 crate's `aws-signing-test-suite/v4`): (case, method, URI,
    /// signature). (`get-utf8` needs a raw UTF-8 path, which no `http::Uri` holds; the
    /// double encoding of non-S3 paths is checked against hand-written canonical requests
    /// below.)
    #[test]
    fn aws_test_suite_vectors() {
        let cases = [
            (
                "get-vanilla-query-order-key-case",
                "GET",
                "/?Param2=value2&Param1=value1",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "post-vanilla-query",
                "POST",
                "/?Param1=value1",
                "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
            ),
            (
                "get-vanilla-utf8-query",
                "GET",
                "/?%E1%88%B4=bar",
                "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
            ),
            (
                "get-vanilla-query-unreserved",
                "GET",
                "/?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
            ),
        ];
        for (case, method, uri, want) in cases {
            let mut h = HeaderMap::new();
            sign_suite(method, uri, &mut h, &SUITE_KEYS).unwrap();
            assert_eq!(signature(&h), want, "{case}");
            assert_eq!(
                auth(&h),
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                     SignedHeaders=host;x-amz-date, Signature={want}"
                ),
                "{case}"
            );
            assert_eq!(h["x-amz-date"], "20150830T123600Z", "{case}");
            assert!(!h.contains_key("x-amz-content-sha256"), "{case}: {h:?}");
        }
    }

    #[test]
    fn aws_test_suite_session_token() {
        // get-vanilla-with-session-token
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let keys = KeyValues {
            session_token: Some(token),
            ..SUITE_KEYS
        };
        let mut h = HeaderMap::new();
        sign_suite("GET", "/", &mut h, &keys).unwrap();
        assert_eq!(
            signature(&h),
            "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
        assert_eq!(signed_headers(&h), "host;x-amz-date;x-amz-security-token");
        assert_eq!(h["x-amz-security-token"], token);
        assert!(h["x-amz-security-token"].is_sensitive());
        assert!(h["authorization"].is_sensitive());
        assert!(
            !format!("{h:?}").contains(token),
            "sensitive values are hidden from Debug"
        );
    }

    /// The "GET Object" example of the S3 documentation (Signature Version 4, header
    /// authentication): path signed as sent, `range` signed, x-amz-content-sha256 sent.
    #[test]
    fn s3_documentation_get_object_example() {
        let mut h = HeaderMap::new();
        h.insert("range", HeaderValue::from_static("bytes=0-9"));
        sign_values(
            &Method::GET,
            "examplebucket.s3.amazonaws.com",
            &"/test.txt".parse().unwrap(),
            &mut h,
            Payload::Bytes(b""),
            &KeyValues {
                access_key_id: "AKIAIOSFODNN7EXAMPLE",
                secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                session_token: None,
            },
            &SigningScope {
                service: "s3",
                region: "us-east-1",
                time: UNIX_EPOCH + Duration::from_secs(1_369_353_600), // 2013-05-24T00:00:00Z
            },
        )
        .unwrap();
        assert_eq!(
            auth(&h),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert_eq!(
            h["x-amz-content-sha256"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn s3_scope() -> SigningScope<'static> {
        SigningScope {
            service: "s3",
            region: "us-east-1",
            time: suite_time(),
        }
    }

    const STS_KEYS: KeyValues<'static> = KeyValues {
        access_key_id: "ASIAEXAMPLEEXAMPLE01",
        secret_access_key: "s3cr3t-canary/abcdefghijklmnopqrstuvw",
        session_token: Some("FwoGZXIvYXdzEXAMPLEtoken-canary"),
    };

    fn sign_s3(uri: &str, h: &mut HeaderMap, payload: Payload<'_>) -> Result<(), SigV4Error> {
        sign_values(
            &Method::PUT,
            "bucket.s3.us-east-1.amazonaws.com",
            &uri.parse().unwrap(),
            h,
            payload,
            &STS_KEYS,
            &s3_scope(),
        )
    }

    #[test]
    fn agent_signature_headers_are_replaced() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIADUMMY/20150830/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
            ),
            ("authorization", "Bearer second-dummy"),
            ("x-amz-date", "20000101T000000Z"),
            ("x-amz-security-token", "agent-dummy-token"),
            ("x-amz-security-token", "agent-dummy-token-2"),
            ("x-amz-content-sha256", "0000"),
            ("x-amz-meta-color", "blue"),
            ("content-type", "text/plain"),
            ("user-agent", "agent/1.0"),
            ("content-length", "5"),
        ] {
            h.append(name, HeaderValue::from_static(value));
        }
        sign_s3("/key", &mut h, Payload::Unsigned).unwrap();
        for name in REPLACED {
            assert_eq!(h.get_all(&name).iter().count(), 1, "{name}: {h:?}");
        }
        assert!(auth(&h).starts_with(
            "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEEXAMPLE01/20150830/us-east-1/s3/aws4_request, "
        ));
        assert_eq!(h["x-amz-date"], "20150830T123600Z");
        assert_eq!(h["x-amz-security-token"], STS_KEYS.session_token.unwrap());
        assert_eq!(h["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
        assert_eq!(
            signed_headers(&h),
            "content-type;host;x-amz-content-sha256;x-amz-date;x-amz-meta-color;x-amz-security-token"
        );
        for name in REPLACED {
            assert!(h[&name].is_sensitive(), "{name}");
        }
        // Untouched: what the agent sent besides the signature.
        assert_eq!(h["x-amz-meta-color"], "blue");
        assert_eq!(h["user-agent"], "agent/1.0");
        assert_eq!(h["content-length"], "5");
        let debug = format!("{h:?}");
        assert!(!debug.contains("canary"), "{debug}");
    }

    #[test]
    fn agent_headers_are_removed_even_when_signing_fails() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("AWS4 dummy"));
        h.insert("x-amz-security-token", HeaderValue::from_static("dummy"));
        let bad = KeyValues {
            access_key_id: "",
            ..STS_KEYS
        };
        let err = sign_values(
            &Method::GET,
            "bucket.s3.us-east-1.amazonaws.com",
            &"/k".parse().unwrap(),
            &mut h,
            Payload::Unsigned,
            &bad,
            &s3_scope(),
        )
        .unwrap_err();
        assert!(matches!(err, SigV4Error::InvalidKeys), "{err}");
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn s3_unsigned_payload_and_hashed_payload() {
        let mut h = HeaderMap::new();
        sign_s3("/big-object", &mut h, Payload::Unsigned).unwrap();
        assert_eq!(h["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");

        let mut h = HeaderMap::new();
        sign_s3("/small", &mut h, Payload::Bytes(b"hello")).unwrap();
        assert_eq!(
            h["x-amz-content-sha256"],
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }

    #[test]
    fn other_services_hash_the_body_without_the_header_unless_unsigned() {
        let scope = SigningScope {
            service: "sts",
            region: "us-east-1",
            time: suite_time(),
        };
        let sign_sts = |h: &mut HeaderMap, payload| {
            sign_values(
                &Method::POST,
                "sts.us-east-1.amazonaws.com",
                &"/".parse().unwrap(),
                h,
                payload,
                &STS_KEYS,
                &scope,
            )
        };
        let mut a = HeaderMap::new();
        sign_sts(
            &mut a,
            Payload::Bytes(b"Action=GetCallerIdentity&Version=2011-06-15"),
        )
        .unwrap();
        assert!(!a.contains_key("x-amz-content-sha256"), "{a:?}");
        let mut b = HeaderMap::new();
        sign_sts(
            &mut b,
            Payload::Bytes(b"Action=GetCallerIdentity&Version=2011-06-16"),
        )
        .unwrap();
        assert_ne!(signature(&a), signature(&b), "the body is signed");

        let mut u = HeaderMap::new();
        sign_sts(&mut u, Payload::Unsigned).unwrap();
        assert_eq!(u["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
    }

    #[test]
    fn unsigned_trailer_mode_of_the_agent_is_kept_and_chunk_signatures_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static("STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        );
        h.insert("content-encoding", HeaderValue::from_static("aws-chunked"));
        h.insert(
            "x-amz-trailer",
            HeaderValue::from_static("x-amz-checksum-crc32"),
        );
        h.insert(
            "x-amz-decoded-content-length",
            HeaderValue::from_static("5"),
        );
        sign_s3("/k", &mut h, Payload::Unsigned).unwrap();
        assert_eq!(
            h["x-amz-content-sha256"],
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        );
        assert_eq!(
            signed_headers(&h),
            "content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;\
             x-amz-security-token;x-amz-trailer"
        );

        for mode in [
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
            "streaming-aws4-ecdsa-p256-sha256-payload",
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-amz-content-sha256", HeaderValue::from_str(mode).unwrap());
            h.insert("authorization", HeaderValue::from_static("AWS4 dummy"));
            let err = sign_s3("/k", &mut h, Payload::Unsigned).unwrap_err();
            assert!(matches!(err, SigV4Error::SignedChunks), "{mode}: {err}");
            assert!(!h.contains_key("authorization"));
        }
    }

    /// An independent SigV4 reference (string to sign and key derivation as the AWS
    /// documentation gives them, on aws-lc-rs) for canonical requests written out by hand.
    fn reference_signature(
        canonical_request: &str,
        secret: &str,
        scope: &SigningScope<'_>,
    ) -> String {
        use aws_lc_rs::{digest, hmac};
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mac = |key: &[u8], data: &str| {
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
                .as_ref()
                .to_vec()
        };
        let secs = scope.time.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(
            secs, 1_440_938_160,
            "the reference knows the suite's date only"
        );
        let (date, stamp) = ("20150830", "20150830T123600Z");
        let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{credential_scope}\n{}",
            hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
        );
        let k_date = mac(format!("AWS4{secret}").as_bytes(), date);
        let k_region = mac(&k_date, scope.region);
        let k_service = mac(&k_region, scope.service);
        let k_signing = mac(&k_service, "aws4_request");
        hex(&mac(&k_signing, &string_to_sign))
    }

    #[test]
    fn reference_signer_agrees_with_the_test_suite() {
        let canonical = "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\n\
                         x-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
                         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            reference_signature(canonical, SUITE_KEYS.secret_access_key, &suite_scope()),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    /// Signs `uri` (with `headers`) and checks the signature against the hand-written
    /// canonical request.
    #[track_caller]
    fn assert_canonical(
        service: &'static str,
        uri: &str,
        headers: &[(&'static str, &'static str)],
        payload: Payload<'_>,
        canonical: &str,
    ) {
        let scope = SigningScope {
            service,
            region: "us-east-1",
            time: suite_time(),
        };
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, HeaderValue::from_static(v));
        }
        sign_values(
            &Method::GET,
            "example.amazonaws.com",
            &uri.parse().unwrap(),
            &mut h,
            payload,
            &SUITE_KEYS,
            &scope,
        )
        .unwrap();
        let want = reference_signature(canonical, SUITE_KEYS.secret_access_key, &scope);
        assert_eq!(
            signature(&h),
            want,
            "{service} {uri}: expected canonical request\n{canonical}"
        );
    }

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn s3_signs_the_path_as_sent_and_canonicalizes_the_query() {
        // Path: as sent (not decoded, not normalized, `+` literal). Query: decoded, encoded
        // once (RFC 3986: unreserved kept, upper-case hex, `%20`), sorted by name then value,
        // a literal `+` is `%2B`, a name without `=` gets one.
        assert_canonical(
            "s3",
            "/my%20key//a+b%2b?prefix=a+b%20c&list-type=2&continuation-token=x/y%3d%3D&uploads&k=2&k=1",
            &[],
            Payload::Unsigned,
            "GET\n/my%20key//a+b%2b\n\
             continuation-token=x%2Fy%3D%3D&k=1&k=2&list-type=2&prefix=a%2Bb%20c&uploads=\n\
             host:example.amazonaws.com\nx-amz-content-sha256:UNSIGNED-PAYLOAD\n\
             x-amz-date:20150830T123600Z\n\n\
             host;x-amz-content-sha256;x-amz-date\nUNSIGNED-PAYLOAD",
        );
    }

    #[test]
    fn other_services_normalize_and_encode_the_path_again() {
        // `//` collapsed, then every byte but unreserved and `/` encoded: `%` → `%25`,
        // `@` → `%40`, `+` → `%2B` (the test suite's double-encode-path case is the `@`/`%3D`
        // part).
        assert_canonical(
            "execute-api",
            "/test//@connections/JBDvjfGEIAMCERw%3D/a+b?b=2&a=%7e1",
            &[],
            Payload::Bytes(b""),
            &format!(
                "GET\n/test/%40connections/JBDvjfGEIAMCERw%253D/a%2Bb\na=~1&b=2\n\
                 host:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
                 host;x-amz-date\n{EMPTY_SHA256}"
            ),
        );
    }

    #[test]
    fn signed_headers_are_the_documented_set_with_values_trimmed_and_joined() {
        assert_canonical(
            "s3",
            "/k",
            &[
                ("content-type", "  text/plain;   charset=utf-8 "),
                ("x-amz-meta-a", "1"),
                ("x-amz-meta-a", "2"),
                ("range", "bytes=0-9"),
                ("if-none-match", "\"abc\""),
                // Not signed:
                ("content-length", "0"),
                ("user-agent", "boto3/1.40"),
                ("accept-encoding", "identity"),
                ("expect", "100-continue"),
                ("x-amzn-trace-id", "Root=1-abc"),
                ("amz-sdk-invocation-id", "f00"),
                ("x-forwarded-for", "10.0.0.1"),
            ],
            Payload::Unsigned,
            "GET\n/k\n\n\
             content-type:text/plain; charset=utf-8\nhost:example.amazonaws.com\n\
             if-none-match:\"abc\"\nrange:bytes=0-9\n\
             x-amz-content-sha256:UNSIGNED-PAYLOAD\nx-amz-date:20150830T123600Z\n\
             x-amz-meta-a:1,2\n\n\
             content-type;host;if-none-match;range;x-amz-content-sha256;x-amz-date;x-amz-meta-a\n\
             UNSIGNED-PAYLOAD",
        );
    }

    #[test]
    fn presigned_query_authentication_is_refused() {
        for uri in [
            "/k?X-Amz-Signature=00&x=1",
            "/k?x-amz-credential=AKIA%2F2015",
            "/k?X%2DAmz%2DSecurity%2DToken=t",
        ] {
            let mut h = HeaderMap::new();
            let err = sign_s3(uri, &mut h, Payload::Unsigned).unwrap_err();
            assert!(matches!(err, SigV4Error::PresignedQuery), "{uri}: {err}");
        }
    }

    #[test]
    fn host_argument_is_what_is_signed() {
        let sig = |host: &str, h: &mut HeaderMap| {
            sign_values(
                &Method::GET,
                host,
                &"/".parse().unwrap(),
                h,
                Payload::Unsigned,
                &SUITE_KEYS,
                &suite_scope(),
            )
            .map(|()| signature(h).to_string())
        };
        let plain = sig("example.amazonaws.com", &mut HeaderMap::new()).unwrap();
        let port = sig("example.amazonaws.com:8443", &mut HeaderMap::new()).unwrap();
        assert_ne!(plain, port);
        // A Host header in the map must agree.
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("Example.amazonaws.com"));
        assert_eq!(sig("example.amazonaws.com", &mut h).unwrap(), plain);
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("evil.example"));
        let err = sig("example.amazonaws.com", &mut h).unwrap_err();
        assert!(matches!(err, SigV4Error::HostMismatch { .. }), "{err}");
    }

    #[test]
    fn bad_scope_keys_and_headers_are_errors_without_secrets() {
        let mut h = HeaderMap::new();
        let scope = SigningScope {
            service: "s3",
            region: "us-east-1/../x",
            time: suite_time(),
        };
        let err = sign_values(
            &Method::GET,
            "b.s3.amazonaws.com",
            &"/".parse().unwrap(),
            &mut h,
            Payload::Unsigned,
            &STS_KEYS,
            &scope,
        )
        .unwrap_err();
        assert!(matches!(err, SigV4Error::InvalidScope), "{err}");

        let bad_token = KeyValues {
            session_token: Some("tok\r\nX-Evil: canary"),
            ..STS_KEYS
        };
        let err = sign_values(
            &Method::GET,
            "b.s3.amazonaws.com",
            &"/".parse().unwrap(),
            &mut h,
            Payload::Unsigned,
            &bad_token,
            &s3_scope(),
        )
        .unwrap_err();
        assert!(matches!(err, SigV4Error::InvalidKeys), "{err}");
        assert!(!err.to_string().contains("canary"));

        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-meta-bin",
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        let err = sign_s3("/k", &mut h, Payload::Unsigned).unwrap_err();
        assert!(matches!(err, SigV4Error::HeaderNotText { .. }), "{err}");
        // An unsigned header may hold anything.
        let mut h = HeaderMap::new();
        h.insert("x-other", HeaderValue::from_bytes(b"\xff").unwrap());
        sign_s3("/k", &mut h, Payload::Unsigned).unwrap();
    }
}
