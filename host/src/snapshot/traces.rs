//! `[tracing]`, resolved: settings checked with the rest of the manifest,
//! and the export pipeline started, or kept from the previous snapshot
//! when a reload leaves the settings as they were.

use std::sync::Arc;

use crate::config::{ConfigError, Manifest};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otlp::{self, Tracer, TracingSettings};

/// Reads `[tracing]` (`Ok(None)` without the section); `headers_env` is read now.
pub fn settings(m: &Manifest) -> Result<Option<TracingSettings>, Vec<ConfigError>> {
    let Some(t) = &m.doc.tracing else {
        return Ok(None);
    };
    let t = t.get_ref();
    let mut errors = Vec::new();
    let mut s = TracingSettings::default();
    match otlp::traces_url(t.endpoint.get_ref()) {
        Ok(url) => s.endpoint = url,
        Err(e) => errors.push(
            m.error_at(
                t.endpoint.span(),
                format!("invalid tracing endpoint `{}`: {e}", t.endpoint.get_ref()),
            )
            .help("write the collector's OTLP/HTTP URL, e.g. \"http://127.0.0.1:4318\""),
        ),
    }
    if let Some(p) = &t.protocol
        && p.get_ref() != "http/protobuf"
    {
        errors.push(
            m.error_at(
                p.span(),
                format!("unsupported tracing protocol `{}`", p.get_ref()),
            )
            .help("use \"http/protobuf\" (port 4318 on a collector); gRPC is not built in"),
        );
    }
    if let Some(env) = &t.headers_env {
        let name = env.get_ref();
        match std::env::var(name).map(|v| otlp::parse_headers(&v)) {
            Ok(Ok(headers)) => s.headers = headers,
            Ok(Err(e)) => errors.push(
                m.error_at(env.span(), format!("environment variable `{name}`: {e}"))
                    .help("write headers as `name=value,name2=value2`"),
            ),
            Err(_) => errors.push(
                m.error_at(env.span(), format!("environment variable `{name}` is not set"))
                    .help("export it before starting weir (`name=value,name2=value2`), or remove `headers_env`"),
            ),
        }
    }
    if let Some(r) = &t.sampling {
        let ratio = *r.get_ref();
        if (0.0..=1.0).contains(&ratio) {
            s.sampling = ratio;
        } else {
            errors.push(
                m.error_at(
                    r.span(),
                    format!("tracing sampling {ratio} is out of range"),
                )
                .help("write a share of new traces between 0.0 and 1.0, e.g. 0.01 for 1 %"),
            );
        }
    }
    if let Some(n) = &t.service_name {
        if n.get_ref().trim().is_empty() {
            errors.push(
                m.error_at(n.span(), "the tracing service_name is empty")
                    .help("name the service, e.g. \"edge-gateway\", or remove it for \"weir\""),
            );
        } else {
            s.service_name = n.get_ref().clone();
        }
    }
    if let Some(q) = &t.queue {
        if *q.get_ref() == 0 {
            errors.push(
                m.error_at(q.span(), "the tracing queue cannot be 0")
                    .help("allow some requests' spans to wait, e.g. 2048 (the default)"),
            );
        } else {
            s.queue = *q.get_ref();
        }
    }
    if let Some(d) = &t.timeout {
        s.timeout = d.0;
    }
    s.resource = t.resource.clone();
    if errors.is_empty() {
        Ok(Some(s))
    } else {
        Err(errors)
    }
}

/// The export pipeline for `settings`: the previous snapshot's when it
/// runs with the same settings, else a new one.
pub fn tracer(
    settings: TracingSettings,
    previous: Option<&Arc<Tracer>>,
    metrics: &Metrics,
) -> Result<Arc<Tracer>, String> {
    match previous {
        Some(t) if *t.settings() == settings => Ok(t.clone()),
        _ => Tracer::start(settings, metrics.span_export()),
    }
}
