//! What an operator sees: `/metrics` after real traffic, the JSON access
//! log, request ids and trace context at the upstream, and the admin API
//! (readiness, routes, plugins, reload, token).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::{Resp, TestGateway, Upstream, plugin, send};

/// One sample of the text exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A small parser for the Prometheus/OpenMetrics text format (samples only).
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels {line:?}"));
                (name.to_string(), parse_labels(body))
            }
        };
        out.push((name, labels, value));
    }
    out
}

fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"").expect("label without value");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("unterminated label value") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("dangling escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The value of the one sample named `name` whose labels include `labels`.
fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    match found.as_slice() {
        [(_, _, v)] => *v,
        [] => panic!("no sample {name}{labels:?}"),
        many => panic!("{} samples match {name}{labels:?}: {many:?}", many.len()),
    }
}

async fn admin(gw: &TestGateway, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(method, &gw.admin_url(path), headers, Bytes::new()).await
}

async fn scrape(gw: &TestGateway) -> Vec<Sample> {
    let r = admin(gw, Method::GET, "/metrics", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .unwrap()
            .contains("openmetrics-text"),
        "{:?}",
        r.headers
    );
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    parse_metrics(&r.body)
}

/// A port with nothing listening on it.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Four routes: key-auth, rate-limit (2 per hour for the route), the trap
/// plugin, and an upstream that refuses connections. Rate-limit buckets are
/// host state shared by the whole process, so each test names its own
/// throttled route.
fn mixed_manifest(origin: &Upstream, dead_port: u16, throttled: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[upstreams.origin]
targets = ["{origin}"]

[upstreams.dead]
targets = ["http://127.0.0.1:{dead_port}"]
connect_timeout = "1s"

[plugins.key-auth]
path = "{key_auth}"

[plugins.rate-limit]
path = "{rate_limit}"

[plugins.trap]
path = "{trap}"

[[routes]]
id = "obs-keyed"
prefix = "/keyed"
upstream = "origin"
[[routes.plugins]]
name = "key-auth"
config = {{ keys = [{{ key = "k1", consumer = "alice" }}] }}

[[routes]]
id = "{throttled}"
prefix = "/throttled"
upstream = "origin"
[[routes.plugins]]
name = "rate-limit"
config = {{ rate = 1, per = "1h", burst = 2, key = "route" }}

[[routes]]
id = "obs-trap"
prefix = "/trap"
upstream = "origin"
[[routes.plugins]]
name = "trap"

[[routes]]
id = "obs-broken"
prefix = "/broken"
upstream = "dead"
"#,
        origin = origin.url(),
        key_auth = plugin("key_auth"),
        rate_limit = plugin("rate_limit"),
        trap = plugin("test_trap"),
    )
}

/// Sends the scripted mix; returns the statuses in order.
async fn scripted_traffic(gw: &TestGateway) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            gw.get_with("/keyed/a", &[("x-api-key", "k1")])
                .await
                .status
                .as_u16(),
        );
    }
    for _ in 0..2 {
        statuses.push(gw.get("/keyed/a").await.status.as_u16());
    }
    statuses.push(
        gw.get_with("/keyed/a", &[("x-api-key", "nope")])
            .await
            .status
            .as_u16(),
    );
    for _ in 0..4 {
        statuses.push(gw.get("/throttled").await.status.as_u16());
    }
    for _ in 0..2 {
        statuses.push(gw.get("/broken").await.status.as_u16());
    }
    statuses.push(
        gw.get_with("/trap", &[("x-trap", "1")])
            .await
            .status
            .as_u16(),
    );
    for _ in 0..2 {
        statuses.push(gw.get("/trap").await.status.as_u16());
    }
    statuses.push(gw.get("/nowhere").await.status.as_u16());
    statuses
}

const EXPECTED_STATUSES: [u16; 16] = [
    200, 200, 200, 401, 401, 401, 200, 200, 429, 429, 502, 502, 503, 200, 200, 404,
];

#[tokio::test]
async fn metrics_count_requests_per_route_plugin_and_status_after_mixed_traffic() {
    let origin = Upstream::start("origin").await;
    let dead_port = closed_port();
    let gw = TestGateway::start(&mixed_manifest(&origin, dead_port, "obs-throttled")).await;
    assert_eq!(scripted_traffic(&gw).await, EXPECTED_STATUSES);
    let m = scrape(&gw).await;

    // Requests by route and status class; "-" is "no route matched".
    let req = |route, class| {
        metric(
            &m,
            "weir_requests_total",
            &[("route", route), ("status_class", class)],
        )
    };
    assert_eq!(req("obs-keyed", "2xx"), 3.0);
    assert_eq!(req("obs-keyed", "4xx"), 3.0);
    assert_eq!(req("obs-throttled", "2xx"), 2.0);
    assert_eq!(req("obs-throttled", "4xx"), 2.0);
    assert_eq!(req("obs-broken", "5xx"), 2.0);
    assert_eq!(req("obs-trap", "5xx"), 1.0);
    assert_eq!(req("obs-trap", "2xx"), 2.0);
    assert_eq!(req("-", "4xx"), 1.0);
    assert_eq!(req("obs-keyed", "5xx"), 0.0);
    let latency = |route| {
        metric(
            &m,
            "weir_request_duration_seconds_count",
            &[("route", route)],
        )
    };
    assert_eq!(latency("obs-keyed"), 6.0);
    assert_eq!(latency("obs-throttled"), 4.0);
    assert_eq!(
        metric(
            &m,
            "weir_request_duration_seconds_bucket",
            &[("route", "obs-keyed"), ("le", "+Inf")]
        ),
        6.0
    );

    // Per plugin per route.
    let calls = |plugin, route, hook| {
        metric(
            &m,
            "weir_plugin_invocations_total",
            &[("plugin", plugin), ("route", route), ("hook", hook)],
        )
    };
    assert_eq!(calls("key-auth", "obs-keyed", "request"), 6.0);
    // key-auth asks for `on-request` only: its response hook is never called.
    assert_eq!(calls("key-auth", "obs-keyed", "response"), 0.0);
    assert_eq!(calls("rate-limit", "obs-throttled", "request"), 4.0);
    // Response hooks run for early answers (its 429s) too.
    assert_eq!(calls("rate-limit", "obs-throttled", "response"), 4.0);
    assert_eq!(calls("trap", "obs-trap", "request"), 3.0);
    // The trapped call never reached its response hook.
    assert_eq!(calls("trap", "obs-trap", "response"), 2.0);
    assert_eq!(
        metric(
            &m,
            "weir_plugin_duration_seconds_count",
            &[
                ("plugin", "key-auth"),
                ("route", "obs-keyed"),
                ("hook", "request")
            ]
        ),
        6.0
    );
    let short = |plugin, route, status| {
        metric(
            &m,
            "weir_plugin_short_circuits_total",
            &[("plugin", plugin), ("route", route), ("status", status)],
        )
    };
    assert_eq!(short("key-auth", "obs-keyed", "401"), 3.0);
    assert_eq!(short("rate-limit", "obs-throttled", "429"), 2.0);
    let failures = |plugin, route, reason| {
        metric(
            &m,
            "weir_plugin_failures_total",
            &[("plugin", plugin), ("route", route), ("reason", reason)],
        )
    };
    assert_eq!(failures("trap", "obs-trap", "trap"), 1.0);
    assert_eq!(failures("trap", "obs-trap", "cpu_deadline"), 0.0);
    assert_eq!(failures("key-auth", "obs-keyed", "trap"), 0.0);
    assert!(
        metric(
            &m,
            "weir_plugin_idle_instances",
            &[("plugin", "key-auth"), ("route", "obs-keyed")]
        ) >= 1.0
    );

    // The plugin's own counter, labelled with plugin and route by the host.
    let rejected = |reason| {
        metric(
            &m,
            "weir_custom_key_auth_rejected_total",
            &[
                ("plugin", "key-auth"),
                ("route", "obs-keyed"),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(rejected("missing"), 2.0);
    assert_eq!(rejected("invalid"), 1.0);

    // Upstreams by target.
    let origin_target = origin.addr.to_string();
    let dead_target = format!("127.0.0.1:{dead_port}");
    assert_eq!(
        metric(
            &m,
            "weir_upstream_duration_seconds_count",
            &[("upstream", "origin"), ("target", &origin_target)]
        ),
        7.0
    );
    assert_eq!(
        metric(
            &m,
            "weir_upstream_errors_total",
            &[
                ("upstream", "dead"),
                ("target", &dead_target),
                ("kind", "unavailable")
            ]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "weir_upstream_errors_total",
            &[
                ("upstream", "origin"),
                ("target", &origin_target),
                ("kind", "unavailable")
            ]
        ),
        0.0
    );
    assert_eq!(metric(&m, "weir_upstream_up", &[("upstream", "dead")]), 0.0);
    assert_eq!(
        metric(&m, "weir_upstream_up", &[("upstream", "origin")]),
        1.0
    );
    assert_eq!(origin.seen().len(), 7);

    // Process-level: versions, connections, reloads.
    let sha = hex(&Sha256::digest(std::fs::read(plugin("key_auth")).unwrap()));
    assert_eq!(
        metric(
            &m,
            "weir_plugin_info",
            &[("plugin", "key-auth"), ("sha256", &sha)]
        ),
        1.0
    );
    assert!(metric(&m, "weir_connections_total", &[]) >= 16.0);
    assert_eq!(metric(&m, "weir_reloads_total", &[("result", "ok")]), 0.0);
    assert!(metric(&m, "weir_last_reload_success_timestamp_seconds", &[]) > 1.6e9);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `MakeWriter` that keeps every log line in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn json_lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

// A current-thread runtime (tokio::test's default) runs the gateway's tasks on
// this thread, so the thread's log subscriber sees every access event.
#[tokio::test]
async fn json_access_log_has_one_line_per_request_with_route_status_timings_and_ids() {
    use weir::config::LogFormat;
    use weir::telemetry::logging::{LogSettings, subscriber};

    let captured = Captured::default();
    let writer = captured.clone();
    let settings = LogSettings {
        format: LogFormat::Json,
        level: Some("info".into()),
    };
    // tracing caches each callsite's interest globally. With a single
    // registered dispatcher it asks the *calling thread's* default, so a
    // parallel test that logs an access event first would cache "never" for
    // everyone. A second registered dispatcher makes it ask all of them.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard =
        tracing::subscriber::set_default(subscriber(&settings, move || writer.clone(), false));

    let origin = Upstream::start("origin").await;
    let dead_port = closed_port();
    // The subscriber above is this thread's: the gateway serves on it (the
    // shared runtime, here the test's), not on worker threads of its own.
    let manifest = mixed_manifest(&origin, dead_port, "log-throttled");
    let gw = TestGateway::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 0\n{manifest}"
    ))
    .await;
    assert_eq!(scripted_traffic(&gw).await, EXPECTED_STATUSES);
    let traced = gw
        .get_with(
            "/keyed/b",
            &[
                ("x-api-key", "k1"),
                ("x-request-id", "client-id-1"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
        )
        .await;
    assert_eq!(traced.status, 200);

    let lines = captured.json_lines();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "weir::access")
        .collect();
    assert_eq!(access.len(), EXPECTED_STATUSES.len() + 1, "{access:#?}");
    let statuses: Vec<u64> = access
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    let mut expected: Vec<u64> = EXPECTED_STATUSES.iter().map(|s| u64::from(*s)).collect();
    expected.push(200);
    assert_eq!(statuses, expected);

    for l in &access {
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["method"], "GET");
        for field in ["duration_us", "plugins_us"] {
            assert!(l[field].is_u64(), "{field} in {l}");
        }
        let id = l["request_id"].as_str().unwrap();
        assert!(!id.is_empty(), "{l}");
        assert_eq!(l["trace_id"].as_str().unwrap().len(), 32, "{l}");
    }

    // Allowed: went upstream, timed, body size known from Content-Length.
    let ok = access[0];
    assert_eq!(ok["path"], "/keyed/a");
    assert_eq!(ok["route"], "obs-keyed");
    assert_eq!(ok["answered_by"], "upstream");
    assert_eq!(ok["upstream"], origin.addr.to_string());
    assert!(ok["upstream_us"].is_u64(), "{ok}");
    assert_eq!(ok["bytes"], "upstream origin".len() as u64);
    assert!(ok.get("short_circuit").is_none(), "{ok}");

    // Rejected by key-auth: the plugin answered, no upstream.
    let rejected = access[3];
    assert_eq!(rejected["status"], 401);
    assert_eq!(rejected["answered_by"], "key-auth");
    assert_eq!(rejected["short_circuit"], "key-auth");
    assert!(rejected.get("upstream").is_none(), "{rejected}");
    assert_eq!(rejected["bytes"], "missing API key\n".len() as u64);

    let throttled = access[8];
    assert_eq!(
        (
            throttled["status"].as_u64(),
            throttled["short_circuit"].as_str()
        ),
        (Some(429), Some("rate-limit"))
    );

    let broken = access[10];
    assert_eq!(broken["route"], "obs-broken");
    assert_eq!(broken["answered_by"], "gateway");
    assert_eq!(broken["upstream"], format!("127.0.0.1:{dead_port}"));

    let trapped = access[12];
    assert_eq!(
        (trapped["status"].as_u64(), trapped["answered_by"].as_str()),
        (Some(503), Some("gateway"))
    );
    assert_eq!(trapped["route"], "obs-trap");

    let unrouted = access[15];
    assert_eq!(
        (unrouted["route"].as_str(), unrouted["path"].as_str()),
        (Some("-"), Some("/nowhere"))
    );

    // The ids in the log are the ones the client and the upstream saw.
    let last = access.last().unwrap();
    assert_eq!(last["request_id"], "client-id-1");
    assert_eq!(traced.header("x-request-id"), Some("client-id-1"));
    assert_eq!(last["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(origin.last().header("x-request-id"), Some("client-id-1"));
}

#[tokio::test]
async fn trace_context_and_request_id_reach_the_upstream_and_plugins() {
    let origin = Upstream::start("origin").await;
    let gw = TestGateway::start(&format!(
        r#"
[plugins.headers]
path = "{}"

[[routes]]
id = "traced"
prefix = "/"
upstream = "{}"
[[routes.plugins]]
name = "headers"
config = {{ request = {{ set = {{ "x-seen-request-id" = "${{var.request_id}}", "x-seen-trace-id" = "${{var.trace_id}}", "x-seen-traceparent" = "${{header.traceparent}}" }} }} }}
"#,
        plugin("headers"),
        origin.url()
    ))
    .await;

    // A caller with a trace: same trace id upstream, a new span id, flags and tracestate kept.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw
        .get_with(
            "/a",
            &[
                ("traceparent", parent),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("x-request-id", "abc-123"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let seen = origin.last();
    let tp = seen.header("traceparent").unwrap().to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parts[2], "00f067aa0ba902b7", "a new span id for this hop");
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01");
    assert_eq!(seen.header("tracestate"), Some("congo=t61rcWkgMzE"));
    assert_eq!(seen.header("x-request-id"), Some("abc-123"));
    // Plugins see the same ids, as request variables and as headers.
    assert_eq!(seen.header("x-seen-request-id"), Some("abc-123"));
    assert_eq!(
        seen.header("x-seen-trace-id"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(seen.header("x-seen-traceparent"), Some(tp.as_str()));

    // No (or a broken) traceparent: a new trace, tracestate dropped, a generated request id.
    let r = gw
        .get_with(
            "/b",
            &[
                ("traceparent", "00-zzz-00f067aa0ba902b7-01"),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("x-request-id", "bad id with spaces"),
            ],
        )
        .await;
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let seen = origin.last();
    assert_eq!(seen.header("x-request-id"), Some(id.as_str()));
    let tp = seen.header("traceparent").unwrap();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[1].len(), 32);
    assert_ne!(parts[1], "0".repeat(32));
    assert_eq!(seen.header("tracestate"), None);

    // Every answer carries the id, errors included.
    let r = gw.get_with("/%zz", &[("x-request-id", "err-1")]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-request-id"), Some("err-1"));
}

fn write_manifest(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[tokio::test]
async fn readyz_is_503_until_the_first_snapshot_is_loaded_then_200() {
    let (_dir, path) = write_manifest(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[admin]
listen = "127.0.0.1:0"

[plugins.key-auth]
path = "{}"

[[routes]]
id = "r"
upstream = "builtin:echo"
[[routes.plugins]]
name = "key-auth"
config = {{ keys = [{{ key = "k1", consumer = "alice" }}] }}
"#,
        plugin("key_auth")
    ));
    let starting = weir::Gateway::begin(&path).await.unwrap();
    let admin = starting.admin_addr().unwrap();
    let get = |p: &str| {
        let url = format!("http://{admin}{p}");
        async move { send(Method::GET, &url, &[], Bytes::new()).await }
    };

    let r = get("/readyz").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (503, "loading\n"));
    assert_eq!(get("/healthz").await.status, 200);
    assert_eq!(get("/routes").await.status, 503);

    let gw = starting.finish().await.unwrap();
    assert_eq!(gw.admin_addr(), Some(admin));
    let r = get("/readyz").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ready\n"));
    gw.shutdown().await;
}

#[tokio::test]
async fn plugins_endpoint_shows_the_sha256_that_sha256sum_computes_and_the_routes_using_it() {
    let gw = TestGateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[plugins.key-auth]
path = "{key_auth}"

[plugins.unused]
path = "{trap}"

[[routes]]
id = "one"
prefix = "/one"
methods = ["GET"]
upstream = "builtin:echo"
[[routes.plugins]]
name = "key-auth"
config = {{ keys = [{{ key = "k1", consumer = "alice" }}] }}

[[routes]]
id = "two"
path = "/two"
host = "*.example.com"
upstream = "builtin:echo"
[[routes.plugins]]
name = "key-auth"
config = {{ keys = [{{ key = "k2", consumer = "bob" }}] }}
"#,
        key_auth = plugin("key_auth"),
        trap = plugin("test_trap"),
    ))
    .await;
    let r = admin(&gw, Method::GET, "/plugins", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let plugins = r.json();
    let bytes = std::fs::read(plugin("key_auth")).unwrap();
    let ka = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "key-auth")
        .unwrap();
    assert_eq!(ka["sha256"], hex(&Sha256::digest(&bytes)));
    assert_eq!(ka["size"], bytes.len() as u64);
    assert_eq!(ka["routes"], serde_json::json!(["one", "two"]));
    assert!(ka["load_time_ms"].as_f64().unwrap() > 0.0, "{ka}");
    assert_eq!(ka["limits"]["max_memory"], 64 << 20, "{ka}");
    assert_eq!(ka["limits"]["cpu_deadline_ms"], 50, "{ka}");
    let unused = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "unused")
        .unwrap();
    assert_eq!(unused["routes"], serde_json::json!([]));

    let routes = admin(&gw, Method::GET, "/routes", &[]).await.json();
    assert_eq!(routes[0]["id"], "one");
    assert_eq!(routes[0]["prefix"], "/one");
    assert_eq!(routes[0]["methods"], serde_json::json!(["GET"]));
    assert_eq!(routes[0]["targets"], serde_json::json!(["builtin:echo"]));
    assert_eq!(routes[0]["plugins"][0]["name"], "key-auth");
    assert_eq!(routes[1]["path"], "/two");
    assert_eq!(routes[1]["host"], "*.example.com");

    let r = admin(&gw, Method::DELETE, "/plugins", &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(admin(&gw, Method::GET, "/nope", &[]).await.status, 404);
}

#[tokio::test]
async fn admin_token_is_required_except_on_health_probes() {
    let gw = TestGateway::start(
        r#"
[admin]
listen = "127.0.0.1:0"
token = "s3cret-admin-token"

[[routes]]
id = "r"
upstream = "builtin:echo"
"#,
    )
    .await;
    for path in ["/metrics", "/routes", "/plugins"] {
        let r = admin(&gw, Method::GET, path, &[]).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"weir-admin\"")
        );
        let wrong = admin(
            &gw,
            Method::GET,
            path,
            &[("authorization", "Bearer s3cret")],
        )
        .await;
        assert_eq!(wrong.status, 401, "{path}");
        let ok = admin(
            &gw,
            Method::GET,
            path,
            &[("authorization", "Bearer s3cret-admin-token")],
        )
        .await;
        assert_eq!(ok.status, 200, "{path}: {}", ok.body);
    }
    assert_eq!(admin(&gw, Method::POST, "/reload", &[]).await.status, 401);
    assert_eq!(admin(&gw, Method::GET, "/healthz", &[]).await.status, 200);
    assert_eq!(admin(&gw, Method::GET, "/readyz", &[]).await.status, 200);
}

fn route_ids(gw: &TestGateway) -> Vec<String> {
    let snap = gw.gateway.snapshot();
    snap.routes.iter().map(|r| r.id.to_string()).collect()
}

#[tokio::test]
async fn reload_through_the_admin_api_applies_good_configs_and_refuses_bad_ones() {
    let gw = TestGateway::start(
        r#"
[admin]
listen = "127.0.0.1:0"

[[routes]]
id = "before"
prefix = "/"
upstream = "builtin:echo"
"#,
    )
    .await;
    let manifest = gw.manifest_path();
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"before\"", "\"after\"")).unwrap();
    let r = admin(&gw, Method::POST, "/reload", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let summary = r.json();
    assert_eq!(
        (summary["status"].as_str(), summary["routes"].as_u64()),
        (Some("ok"), Some(1))
    );
    assert_eq!(
        gw.get("/x").await.json()["headers"]["x-request-id"]
            .as_str()
            .map(str::len),
        Some(32)
    );
    assert_eq!(route_ids(&gw), ["after"]);

    std::fs::write(
        &manifest,
        text.replace("upstream = \"builtin:echo\"", "upstream = \"nowhere\""),
    )
    .unwrap();
    let r = admin(&gw, Method::POST, "/reload", &[]).await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("unknown upstream `nowhere`"), "{}", r.body);
    assert_eq!(route_ids(&gw), ["after"], "the old config keeps serving");
    assert_eq!(gw.get("/x").await.status, 200);

    let m = scrape(&gw).await;
    assert_eq!(metric(&m, "weir_reloads_total", &[("result", "ok")]), 1.0);
    assert_eq!(
        metric(&m, "weir_reloads_total", &[("result", "refused")]),
        1.0
    );
    assert_eq!(admin(&gw, Method::GET, "/reload", &[]).await.status, 405);
}

#[tokio::test]
async fn memory_limit_hits_are_counted_apart_from_other_traps() {
    let gw = TestGateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[plugins.trap]
path = "{}"

[[routes]]
id = "hog"
upstream = "builtin:echo"
[[routes.plugins]]
name = "trap"
"#,
        plugin("test_trap")
    ))
    .await;
    assert_eq!(
        gw.get_with("/", &[("x-trap", "memory")]).await.status,
        503,
        "fail closed"
    );
    assert_eq!(gw.get_with("/", &[("x-trap", "1")]).await.status, 503);
    assert_eq!(gw.get("/").await.status, 200, "the gateway still serves");
    let m = scrape(&gw).await;
    let failures = |reason| {
        metric(
            &m,
            "weir_plugin_failures_total",
            &[("plugin", "trap"), ("route", "hog"), ("reason", reason)],
        )
    };
    assert_eq!(failures("memory_limit"), 1.0);
    assert_eq!(failures("trap"), 1.0);
}
