//! OpenTelemetry export (`[tracing]`): a real OTLP/HTTP receiver on
//! 127.0.0.1:0 decodes what the gateway sends, the way a collector would.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;

use crate::support::{TestGateway, Upstream, eventually, plugin, send};

/// One received span, with the attributes of its resource.
#[derive(Debug, Clone)]
struct Got {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    attrs: BTreeMap<String, String>,
    resource: BTreeMap<String, String>,
    error: Option<String>,
    start: u64,
}

impl Got {
    fn attr(&self, key: &str) -> &str {
        self.attrs
            .get(key)
            .unwrap_or_else(|| panic!("span {} has no {key}: {:?}", self.name, self.attrs))
    }
}

/// A collector: decodes `ExportTraceServiceRequest` posted to `/v1/traces`.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Got>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = spans.clone();
        let task = tokio::spawn(async move {
            // Connections live in the set: stopping the receiver closes them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let store = store.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).unwrap();
                        store.lock().unwrap().extend(flatten(export));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                conns.spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { url, spans, task }
    }

    fn spans(&self, trace_id: &str) -> Vec<Got> {
        let mut v: Vec<Got> = (self.spans.lock().unwrap().iter())
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        v.sort_by_key(|s| s.start);
        v
    }

    fn all(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits for the spans of `trace_id` until `n` have arrived.
    async fn wait_for(&self, trace_id: &str, n: usize) -> Vec<Got> {
        eventually(Duration::from_secs(20), "the spans at the receiver", || {
            let got = self.spans(trace_id).len();
            async move { got >= n }
        })
        .await;
        self.spans(trace_id)
    }

    /// Stops answering: the listener and every connection close.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<Got> {
    let mut out = Vec::new();
    for rs in export.resource_spans {
        let resource: BTreeMap<String, String> = (rs.resource.into_iter())
            .flat_map(|r| r.attributes)
            .map(|kv| (kv.key, text(kv.value.as_ref())))
            .collect();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            let status = span.status.unwrap_or_default();
            out.push(Got {
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                name: span.name,
                kind: span.kind,
                attrs: (span.attributes.into_iter())
                    .map(|kv| (kv.key, text(kv.value.as_ref())))
                    .collect(),
                resource: resource.clone(),
                error: (status.code == StatusCode::Error as i32).then_some(status.message),
                start: span.start_time_unix_nano,
            });
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// key-auth → headers → rate-limit on `/chain`, the trap plugin on `/trap`.
fn manifest(collector: &str, origin: &Upstream, sampling: f64) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[tracing]
endpoint = "{collector}"
sampling = {sampling}
service_name = "edge"
resource = {{ "service.instance.id" = "gw-1" }}

[upstreams.origin]
targets = ["{origin}"]

[plugins.key-auth]
path = "{key_auth}"
[plugins.headers]
path = "{headers}"
[plugins.rate-limit]
path = "{rate_limit}"
[plugins.trap]
path = "{trap}"

[[routes]]
id = "traced-chain"
prefix = "/chain"
upstream = "origin"
[[routes.plugins]]
name = "key-auth"
config = {{ keys = [{{ key = "k1", consumer = "alice" }}] }}
[[routes.plugins]]
name = "headers"
config = {{ request = {{ set = {{ "x-via" = "weir" }} }}, response = {{ set = {{ "x-served-by" = "weir" }} }} }}
[[routes.plugins]]
name = "rate-limit"
config = {{ rate = 1000, per = "1s", key = "route" }}

[[routes]]
id = "traced-trap"
prefix = "/trap"
upstream = "origin"
[[routes.plugins]]
name = "trap"
"#,
        origin = origin.url(),
        key_auth = plugin("key_auth"),
        headers = plugin("headers"),
        rate_limit = plugin("rate_limit"),
        trap = plugin("test_trap"),
    )
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_chained_request_exports_a_server_span_with_a_span_per_hook_and_upstream_attempt() {
    let collector = Receiver::start().await;
    let origin = Upstream::start("origin").await;
    let gw = TestGateway::start(&manifest(&collector.url, &origin, 1.0)).await;
    let r = gw
        .get_with(
            "/chain/a",
            &[
                ("x-api-key", "k1"),
                ("traceparent", &format!("00-{TRACE}-{CALLER}-01")),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served-by"), Some("weir"));

    // 1 server span, 3 on-request hooks, 1 attempt, and the response hooks.
    let spans = collector.wait_for(TRACE, 5).await;
    let server: Vec<&Got> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    let [server] = server[..] else {
        panic!("one server span expected: {spans:#?}")
    };
    assert_eq!(server.parent, CALLER, "the caller's span is the parent");
    assert_eq!(server.name, "GET traced-chain");
    assert_eq!(server.attr("http.request.method"), "GET");
    assert_eq!(server.attr("http.route"), "traced-chain");
    assert_eq!(server.attr("url.path"), "/chain/a");
    assert_eq!(server.attr("http.response.status_code"), "200");
    assert_eq!(server.attr("client.address"), "127.0.0.1");
    assert_eq!(server.attr("network.peer.address"), "127.0.0.1");
    assert_eq!(
        server.attr("weir.request_id"),
        r.header("x-request-id").unwrap()
    );
    assert_eq!(server.resource["service.name"], "edge");
    assert_eq!(server.resource["service.instance.id"], "gw-1");
    assert_eq!(server.error, None);

    // Every other span is a child of the server span.
    for s in &spans {
        if s.span_id != server.span_id {
            assert_eq!(s.parent, server.span_id, "{s:#?}");
        }
    }
    let hooks: Vec<(&str, &str)> = spans
        .iter()
        .filter(|s| s.attrs.contains_key("weir.plugin.hook"))
        .map(|s| (s.attr("weir.plugin.name"), s.attr("weir.plugin.hook")))
        .collect();
    let requests: Vec<&str> = (hooks.iter())
        .filter(|h| h.1 == "on-request")
        .map(|h| h.0)
        .collect();
    assert_eq!(requests, ["key-auth", "headers", "rate-limit"]);
    // The headers plugin was configured to edit the response: its hook ran, and has a span.
    assert!(hooks.contains(&("headers", "on-response")), "{hooks:?}");
    for s in spans
        .iter()
        .filter(|s| s.attrs.contains_key("weir.plugin.hook"))
    {
        assert_eq!(s.attr("weir.plugin.outcome"), "continue");
        assert_eq!(s.attr("weir.plugin.sha256").len(), 12);
        assert_eq!(s.error, None);
    }

    // One attempt: the upstream's traceparent names it as the parent.
    let attempts: Vec<&Got> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    let [attempt] = attempts[..] else {
        panic!("one attempt span expected: {spans:#?}")
    };
    assert_eq!(attempt.attr("http.response.status_code"), "200");
    assert_eq!(attempt.attr("http.request.resend_count"), "0");
    assert_eq!(
        attempt.attr("weir.upstream.target"),
        origin.url().trim_start_matches("http://")
    );
    let sent = origin.last();
    let sent = sent.header("traceparent").unwrap();
    assert_eq!(sent, format!("00-{TRACE}-{}-01", attempt.span_id));
    // Nothing else: one span per hook call and per attempt.
    assert_eq!(spans.len(), 1 + hooks.len() + 1);
}

#[tokio::test]
async fn a_trapping_plugin_span_is_an_error_with_its_reason() {
    let collector = Receiver::start().await;
    let origin = Upstream::start("origin").await;
    let gw = TestGateway::start(&manifest(&collector.url, &origin, 1.0)).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = gw
        .get_with(
            "/trap",
            &[
                ("x-trap", "1"),
                ("traceparent", &format!("00-{trace}-b7ad6b7169203331-01")),
            ],
        )
        .await;
    assert_eq!(r.status, 503);
    let spans = collector.wait_for(trace, 2).await;
    let hook = spans
        .iter()
        .find(|s| s.attrs.contains_key("weir.plugin.hook"))
        .unwrap();
    assert_eq!(hook.attr("weir.plugin.name"), "trap");
    assert_eq!(hook.attr("weir.plugin.outcome"), "failed");
    assert_eq!(hook.attr("weir.plugin.reason"), "trap");
    assert_eq!(hook.error.as_deref(), Some("trap"));
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(server.attr("http.response.status_code"), "503");
    assert!(server.error.is_some());
    // The upstream was never called: no attempt span.
    assert!(!spans.iter().any(|s| s.kind == SpanKind::Client as i32));
}

#[tokio::test]
async fn sampling_follows_the_callers_flag_and_the_ratio_for_new_traces() {
    let collector = Receiver::start().await;
    let origin = Upstream::start("origin").await;
    let gw = TestGateway::start(&manifest(&collector.url, &origin, 0.0)).await;
    // The trace flags the upstream gets for a request with `traceparent`.
    let flags_sent = async |traceparent: Option<String>| {
        let mut headers = vec![("x-api-key", "k1".to_string())];
        headers.extend(traceparent.map(|t| ("traceparent", t)));
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(gw.get_with("/chain/a", &headers).await.status, 200);
        let sent = origin.last().header("traceparent").unwrap().to_string();
        sent[sent.len() - 2..].to_string()
    };
    // New trace at 0 %: not sampled, and the upstream is told so.
    assert_eq!(flags_sent(None).await, "00");
    // A caller that did not sample: not sampled either.
    let unsampled = format!("00-11111111111111111111111111111111-{CALLER}-00");
    assert_eq!(flags_sent(Some(unsampled)).await, "00");
    // A caller that sampled: sampled, whatever the ratio.
    assert_eq!(
        flags_sent(Some(format!("00-{TRACE}-{CALLER}-01"))).await,
        "01"
    );
    collector.wait_for(TRACE, 5).await;
    // Spans are exported in order: by now the others would have arrived.
    let traces: std::collections::BTreeSet<String> =
        collector.all().into_iter().map(|s| s.trace_id).collect();
    assert_eq!(traces.into_iter().collect::<Vec<_>>(), [TRACE]);
}

#[tokio::test]
async fn requests_go_on_when_the_collector_is_down_and_lost_spans_are_counted() {
    let collector = Receiver::start().await;
    let origin = Upstream::start("origin").await;
    let gw = TestGateway::start(&manifest(&collector.url, &origin, 1.0)).await;
    let first = gw.get_with("/chain/a", &[("x-api-key", "k1")]).await;
    assert_eq!(first.status, 200);
    eventually(Duration::from_secs(20), "the first spans", || {
        let n = collector.all().len();
        async move { n > 0 }
    })
    .await;
    collector.stop().await;

    for _ in 0..5 {
        let r = gw.get_with("/chain/a", &[("x-api-key", "k1")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-served-by"), Some("weir"));
    }
    let metrics_url = gw.admin_url("/metrics");
    eventually(
        Duration::from_secs(30),
        "weir_trace_spans_dropped_total{reason=\"export_failed\"} > 0",
        || {
            let url = metrics_url.clone();
            async move {
                let m = send(Method::GET, &url, &[], Bytes::new()).await.body;
                sample(
                    &m,
                    "weir_trace_spans_dropped_total{reason=\"export_failed\"}",
                ) > 0.0
            }
        },
    )
    .await;
    let m = send(Method::GET, &metrics_url, &[], Bytes::new())
        .await
        .body;
    assert!(sample(&m, "weir_trace_spans_exported_total") >= 1.0, "{m}");
    assert_eq!(
        sample(&m, "weir_trace_spans_dropped_total{reason=\"queue_full\"}"),
        0.0
    );
}

#[tokio::test]
async fn a_reload_that_changes_the_endpoint_sends_later_spans_to_the_new_collector() {
    let (first, second) = (Receiver::start().await, Receiver::start().await);
    let origin = Upstream::start("origin").await;
    let gw = TestGateway::start(&manifest(&first.url, &origin, 1.0)).await;
    let traced = |trace: &str| format!("00-{trace}-{CALLER}-01");
    let (t1, t2) = (
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2",
    );
    gw.get_with("/trap", &[("traceparent", &traced(t1))]).await;
    first.wait_for(t1, 2).await;

    gw.rewrite(&manifest(&second.url, &origin, 1.0));
    gw.gateway.reload().await.unwrap();
    gw.get_with("/trap", &[("traceparent", &traced(t2))]).await;
    second.wait_for(t2, 2).await;
    assert!(first.spans(t2).is_empty());
    assert!(second.spans(t1).is_empty());
}

/// The value of one exposition line, by its series text.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}
