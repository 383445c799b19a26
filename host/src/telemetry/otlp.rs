//! OpenTelemetry trace export over OTLP/HTTP (protobuf).
//!
//! Requests hand their finished spans ([`super::spans`]) to a bounded queue
//! with `try_send`: a full queue drops them (counted in
//! `weir_trace_spans_dropped{reason="queue_full"}`), so a slow or dead
//! collector never holds a request. One tokio task batches the queue and
//! posts each batch with `opentelemetry-otlp`'s exporter, one export at a
//! time; a failed export drops its batch (`reason="export_failed"`).
//!
//! The exporter talks through the gateway's own hyper + rustls stack
//! ([`HyperClient`]): no reqwest, no native-tls, no second HTTP stack.
//! gRPC (tonic) is left out: it would add tonic, tower and a second
//! protobuf service layer to the build for what OTLP/HTTP already carries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SpanData, SpanExporter};
use tokio::sync::mpsc;

use super::metrics::SpanDrops;

/// Spans sent to the collector in one request, at most.
const MAX_BATCH: usize = 512;
/// Longest a span waits in the exporter before its batch is sent.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// Largest collector answer read (it is a small protobuf).
const MAX_RESPONSE: usize = 64 * 1024;

/// `[tracing]`, resolved: where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// Headers sent with every export (from `headers_env`).
    pub headers: Vec<(String, String)>,
    /// Share of new traces sampled, 0.0..=1.0; a caller's `traceparent`
    /// sampled flag decides for the traces it continues.
    pub sampling: f64,
    /// `service.name` of the resource.
    pub service_name: String,
    /// More resource attributes (`service.instance.id`, `deployment.environment`...).
    pub resource: BTreeMap<String, String>,
    /// Requests whose spans may wait for export; more are dropped and counted.
    pub queue: usize,
    /// Time allowed for one export, retries included.
    pub timeout: Duration,
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            headers: Vec::new(),
            sampling: 1.0,
            service_name: "weir".into(),
            resource: BTreeMap::new(),
            queue: 2048,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The traces URL for `endpoint`: `/v1/traces` is appended when it names
/// no path (`http://collector:4318`), as OTLP's base-endpoint rule says.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let uri: http::Uri = endpoint.parse().map_err(|e| format!("{e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("the scheme must be http:// or https://".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    let base = endpoint.trim_end_matches('/');
    Ok(match uri.path() {
        "" | "/" => format!("{base}/v1/traces"),
        _ => endpoint.to_string(),
    })
}

/// Parses `key=value,key2=value2` (the `OTEL_EXPORTER_OTLP_HEADERS` form,
/// values percent-decoded only for `%20`-style escapes the form allows).
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not `name=value`"))?;
        let (k, v) = (k.trim(), percent_decode(v.trim()));
        http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("`{k}` is not a valid header name"))?;
        http::HeaderValue::from_str(&v).map_err(|_| format!("the value of `{k}` is not valid"))?;
        out.push((k.to_string(), v));
    }
    Ok(out)
}

fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A running export pipeline: the sampler requests consult and the queue
/// their spans go to. Dropping the last handle ends the export task after
/// a final flush.
pub struct Tracer {
    settings: TracingSettings,
    sampler: Sampler,
    queue: mpsc::Sender<Vec<SpanData>>,
    counts: SpanDrops,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Headers may hold credentials.
        f.debug_struct("Tracer")
            .field("endpoint", &self.settings.endpoint)
            .field("sampling", &self.settings.sampling)
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Builds the exporter and starts its task (needs a tokio runtime).
    pub fn start(settings: TracingSettings, counts: SpanDrops) -> Result<Arc<Tracer>, String> {
        let headers = settings.headers.iter().cloned().collect();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.timeout)
            .with_headers(headers)
            .with_http_client(HyperClient::new(settings.timeout)?)
            .build()
            .map_err(|e| e.to_string())?;
        let mut resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        for (k, v) in &settings.resource {
            resource = resource.with_attribute(KeyValue::new(k.clone(), v.clone()));
        }
        exporter.set_resource(&resource.build());
        let (queue, rx) = mpsc::channel(settings.queue.max(1));
        tokio::spawn(export(exporter, rx, counts.clone()));
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sampling)));
        Ok(Arc::new(Tracer {
            settings,
            sampler,
            queue,
            counts,
        }))
    }

    /// The settings it was started with (a reload with the same ones keeps it).
    pub fn settings(&self) -> &TracingSettings {
        &self.settings
    }

    /// The sampler: parent-based, with the configured ratio for new traces.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Queues one request's spans, or drops and counts them when the queue is full.
    pub fn submit(&self, spans: Vec<SpanData>) {
        let n = spans.len() as u64;
        if self.queue.try_send(spans).is_err() {
            self.counts.queue_full.inc_by(n);
        }
    }
}

/// The export task: batches what requests queued and sends it, one export
/// at a time, until every [`Tracer`] handle is gone.
async fn export(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<Vec<SpanData>>,
    counts: SpanDrops,
) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = first;
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        match exporter.export(batch).await {
            Ok(()) => {
                counts.exported.inc_by(n);
                if failing {
                    tracing::info!("span export works again");
                }
                failing = false;
            }
            Err(e) => {
                counts.export_failed.inc_by(n);
                // Once per outage, not once per batch.
                if !failing {
                    tracing::warn!(error = %e, "span export failed; spans are dropped (weir_trace_spans_dropped) until the collector answers");
                }
                failing = true;
            }
        }
    }
    let _ = exporter.shutdown();
}

/// `opentelemetry-http`'s client interface over hyper and rustls.
#[derive(Debug, Clone)]
pub struct HyperClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl HyperClient {
    /// A pooled client; `https://` collectors are checked against the system roots.
    pub fn new(timeout: Duration) -> Result<HyperClient, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config()?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(HyperClient { client, timeout })
    }
}

/// The system's roots; none found leaves `http://` collectors working and
/// `https://` exports failing (and counted), rather than refusing the manifest.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        tracing::warn!("no system root certificates: https:// span export will fail");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| e.to_string())
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HyperClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let exchange = async {
            let resp = self.client.request(request.map(Full::new)).await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| "the collector did not answer in time")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_signal_path_only_to_a_bare_endpoint() {
        assert_eq!(
            traces_url("http://c:4318").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c/otlp/v1/traces").unwrap(),
            "https://c/otlp/v1/traces"
        );
        assert!(traces_url("grpc://c:4317").is_err());
        assert!(traces_url("c:4318").is_err());
    }

    #[test]
    fn headers_parse_in_the_otel_form_and_refuse_bad_names() {
        assert_eq!(
            parse_headers("authorization=Bearer%20x, x-team = a").unwrap(),
            vec![
                ("authorization".to_string(), "Bearer x".to_string()),
                ("x-team".to_string(), "a".to_string())
            ]
        );
        assert!(parse_headers("no-equals").is_err());
        assert!(parse_headers("bad name=1").is_err());
    }
}
