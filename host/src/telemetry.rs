//! What an operator sees: logs ([`logging`]), Prometheus metrics
//! ([`metrics`]), request ids and trace context ([`trace`]), the spans of
//! sampled requests ([`spans`]) exported over OTLP ([`otlp`]), and the one
//! access record written per request ([`Access`]).

pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod spans;
pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

/// What the proxy learns about one request on its way through, for the
/// access log and the per-route metrics.
#[derive(Debug, Default)]
pub struct Access {
    /// The matched route.
    pub route: Option<Arc<str>>,
    /// The normalised path.
    pub path: Option<String>,
    /// Who answered when it was not the upstream: a plugin's name or `gateway`.
    pub answered_by: Option<Arc<str>>,
    /// The plugin that answered early (short-circuited), if one did.
    pub short_circuit: Option<Arc<str>>,
    /// The upstream target the request went to.
    pub upstream: Option<Arc<str>>,
    /// Time spent in plugin hooks, instance checkout included.
    pub plugin_time: Duration,
    /// Time from sending the request upstream to its response head.
    pub upstream_time: Option<Duration>,
}

/// The request-level facts known before routing.
#[derive(Debug)]
pub struct RequestInfo<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path as received (used when it could not be normalised).
    pub raw_path: &'a str,
    /// The client.
    pub peer: SocketAddr,
    /// The request id sent upstream and back.
    pub request_id: &'a str,
    /// The trace id.
    pub trace_id: &'a str,
}

/// Writes the `weir::access` event for one request.
pub fn log_access(
    req: &RequestInfo<'_>,
    access: &Access,
    status: StatusCode,
    bytes: Option<u64>,
    total: Duration,
) {
    tracing::info!(
        target: "weir::access",
        method = %req.method,
        path = access.path.as_deref().unwrap_or(req.raw_path),
        route = access.route.as_deref().unwrap_or(metrics::NO_ROUTE),
        status = status.as_u16(),
        upstream = access.upstream.as_deref(),
        bytes,
        duration_us = micros(total),
        plugins_us = micros(access.plugin_time),
        upstream_us = access.upstream_time.map(micros),
        answered_by = access.answered_by.as_deref().unwrap_or("upstream"),
        short_circuit = access.short_circuit.as_deref(),
        request_id = req.request_id,
        trace_id = req.trace_id,
        client = %req.peer,
        "access"
    );
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
