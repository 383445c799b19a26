//! The Grafana dashboard in `examples/grafana/` queries only metrics the
//! gateway exposes: every `weir_*` name in its queries is in `/metrics`
//! after some traffic.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::Method;

use crate::support::{TestGateway, Upstream, plugin, send};

/// Every `expr` and variable query in the dashboard.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The metric names a PromQL query reads (`weir_` identifiers).
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(i) = rest.find("weir_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.push(name);
    }
    names
}

#[tokio::test]
async fn every_metric_the_grafana_dashboard_queries_is_exposed_after_traffic() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/grafana/weir-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut qs = Vec::new();
    queries(&dashboard, &mut qs);
    let wanted: BTreeSet<String> = qs.iter().flat_map(|q| metric_names(q)).collect();
    assert!(wanted.len() >= 15, "{wanted:?}");

    let origin = Upstream::start("origin").await;
    let gw = TestGateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[upstreams.origin]
targets = ["{}"]

[plugins.key-auth]
path = "{}"

[[routes]]
id = "dash"
prefix = "/"
upstream = "origin"
[[routes.plugins]]
name = "key-auth"
config = {{ keys = [{{ key = "k1", consumer = "alice" }}] }}
"#,
        origin.url(),
        plugin("key_auth"),
    ))
    .await;
    assert_eq!(gw.get_with("/a", &[("x-api-key", "k1")]).await.status, 200);
    assert_eq!(gw.get("/a").await.status, 401);
    gw.gateway.reload().await.unwrap();

    let text = send(Method::GET, &gw.admin_url("/metrics"), &[], Bytes::new())
        .await
        .body;
    let exposed: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|n| !exposed.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics does not have:\n{text}"
    );
}
