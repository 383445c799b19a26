//! Plugin runtime microbenchmarks: one hook call on a reused (pooled)
//! instance vs a fresh instance per call, and the bundled 3-plugin chain
//! (key-auth → headers → rate-limit, request and response hooks) in process.
//!
//! `cargo bench -p weir --bench plugin` (the plugins are built by host/build.rs).

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use weir::config::Isolation;
use weir::plugin::{
    Chain, ChainPlugin, Lease, Outcome, PluginUse, RequestState, ResponseState, Runtime,
};

fn wasm(stem: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../target/plugins/wasm32-wasip2/plugin/{stem}.wasm"
    ))
}

fn request() -> RequestState {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("x-api-key", "bench-key"),
        ("x-request-id", "0123456789abcdef"),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    RequestState {
        method: Method::GET,
        path: "/api/items".into(),
        raw_path: "/api/items".into(),
        query: Some("page=2".into()),
        authority: Some("api.example.com".into()),
        headers,
        client: "127.0.0.1:40000".parse().unwrap(),
        route_id: "bench".into(),
        vars: Vec::new(),
        read_only: false,
        body: Default::default(),
    }
}

async fn chain_plugin(stem: &str, name: &str, config: &str, isolation: Isolation) -> ChainPlugin {
    let rt = Runtime::global().clone();
    let metrics = weir::telemetry::metrics::Metrics::new();
    let loaded = rt
        .load(name, &wasm(stem), &Default::default())
        .unwrap_or_else(|e| panic!("{stem}: {e} (build the plugins first)"));
    ChainPlugin::new(
        rt,
        Arc::new(loaded),
        "bench".into(),
        PluginUse {
            config_json: config.into(),
            isolation,
            policy: Default::default(),
            fail: Default::default(),
            state: None,
            outbound: None,
        },
        metrics.plugin(name, "bench", &weir::plugin::PluginErrorKind::REASONS),
    )
    .await
    .unwrap()
}

async fn run_chain(plugins: &[ChainPlugin]) {
    // One request: one lease per plugin across both hooks, as the proxy does.
    let mut chain = Chain::new(plugins);
    let (req, early) = chain.request(request()).await.unwrap();
    assert!(early.is_none(), "chain answered early");
    let resp = ResponseState {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: Default::default(),
    };
    chain.response(req, resp).await.unwrap();
}

const HEADERS: &str = r#"{"request":{"set":{"x-route":"${route_id}"}}}"#;
const KEY_AUTH: &str = r#"{"keys":[{"key":"bench-key","consumer":"bench"}]}"#;
const RATE_LIMIT: &str = r#"{"rate":1000000000,"per":"1s"}"#;

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (reused, fresh, chain, chain_fresh) = rt.block_on(async {
        let mk = |iso| async move {
            vec![
                chain_plugin("key_auth", "key-auth", KEY_AUTH, iso).await,
                chain_plugin("headers", "headers", HEADERS, iso).await,
                chain_plugin("rate_limit", "rate-limit", RATE_LIMIT, iso).await,
            ]
        };
        (
            chain_plugin("headers", "headers", HEADERS, Isolation::Pooled).await,
            chain_plugin("headers", "headers", HEADERS, Isolation::Request).await,
            mk(Isolation::Pooled).await,
            mk(Isolation::Request).await,
        )
    });

    let mut g = c.benchmark_group("hook");
    g.bench_function("on_request/reused_instance", |b| {
        b.to_async(&rt).iter(|| async { hook(&reused).await })
    });
    g.bench_function("on_request/fresh_instance", |b| {
        b.to_async(&rt).iter(|| async { hook(&fresh).await })
    });
    g.bench_function("request_state_only", |b| b.iter(request));
    g.finish();

    let mut g = c.benchmark_group("chain3");
    g.bench_function("reused_instances", |b| {
        b.to_async(&rt).iter(|| run_chain(&chain))
    });
    g.bench_function("fresh_instances", |b| {
        b.to_async(&rt).iter(|| run_chain(&chain_fresh))
    });
    g.finish();

    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("compile_headers_plugin", |b| {
        let runtime = Runtime::global();
        let sha = weir::plugin::sha256_hex(&std::fs::read(wasm("headers")).unwrap());
        b.iter(|| {
            // Compiled every time, never taken from the compile cache.
            runtime.forget_compiled(&sha);
            runtime
                .load("headers", &wasm("headers"), &Default::default())
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(plugin, benches);
criterion_main!(plugin);

/// One request hook on its own lease, returned after.
async fn hook(p: &ChainPlugin) -> Outcome {
    let mut lease = Lease::default();
    let (_, outcome) = p.on_request(&mut lease, Box::new(request())).await.unwrap();
    p.release(lease);
    outcome
}
