//! `traces:` — OTLP export of one span per request.

use std::path::PathBuf;
use std::time::Duration;

use crate::check::Errors;
use crate::issuers::{url, Cleartext};
use crate::yaml::Node;

const TRACES_KEYS: &[&str] = &["otlp_endpoint", "ca_file", "service_name", "timeout"];

/// How long one export call may take by default.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const OTLP_TRACES_PATH: &str = "/v1/traces";

/// `traces:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracesConfig {
    /// The OTLP/HTTP (protobuf) traces URL, e.g. `http://127.0.0.1:4318/v1/traces`; a URL
    /// without a path gets `/v1/traces`, as `OTEL_EXPORTER_OTLP_ENDPOINT` does.
    pub otlp_endpoint: String,
    /// Trusted in addition to the webpki roots, for an `https://` collector.
    pub ca_file: Option<PathBuf>,
    /// The spans' `service.name`; None: `OTEL_SERVICE_NAME`, else `sidekey`.
    pub service_name: Option<String>,
    /// How long one export call may take.
    pub timeout: Duration,
}

pub(crate) fn traces(node: &Node, e: &mut Errors) -> Option<TracesConfig> {
    let f = e.fields(node, "`traces`", TRACES_KEYS)?;
    let endpoint = match f.value("otlp_endpoint") {
        // Spans carry no credential: plain http is allowed to any host (a collector on the
        // node, reached by its address), and the docs say what they do carry.
        Some(n) => url(n, "`traces.otlp_endpoint`", e, Cleartext::Anywhere),
        None => {
            e.error_hint(
                f.pos,
                "`traces` has no `otlp_endpoint`",
                "name the collector's OTLP/HTTP traces URL, e.g. \
                 otlp_endpoint: http://127.0.0.1:4318/v1/traces",
            );
            None
        }
    };
    let ca_file = f
        .value("ca_file")
        .and_then(|n| e.path(n, "`traces.ca_file`"));
    let service_name = f
        .value("service_name")
        .and_then(|n| e.nonempty_string(n, "`traces.service_name`"))
        .map(str::to_string);
    let timeout = match f.value("timeout") {
        Some(n) => match e.duration(n, "`traces.timeout`") {
            Some(d) if d.is_zero() || d > Duration::from_secs(60) => {
                e.error_hint(
                    n.pos,
                    "`traces.timeout` must be between 1ms and 60s",
                    "one export call; spans wait in a bounded queue meanwhile, e.g. timeout: 10s",
                );
                DEFAULT_EXPORT_TIMEOUT
            }
            Some(d) => d,
            None => DEFAULT_EXPORT_TIMEOUT,
        },
        None => DEFAULT_EXPORT_TIMEOUT,
    };
    let mut otlp_endpoint = endpoint?.url;
    if otlp_endpoint.matches('/').count() == 2 {
        otlp_endpoint.push_str(OTLP_TRACES_PATH);
    }
    Some(TracesConfig {
        otlp_endpoint,
        ca_file,
        service_name,
        timeout,
    })
}
