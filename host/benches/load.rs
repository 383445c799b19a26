//! What a start or reload costs, and instantiation alone:
//!
//! - `load/check_quickstart`: the quickstart manifest parsed and resolved,
//!   its four plugins read, hashed, compiled and pre-linked, and each route's
//!   first instance created (what `weir check` and a cold start do; the
//!   compile cache is emptied of them before each run);
//! - `load/compile/NAME`: one bundled plugin read, compiled and pre-linked
//!   (never from the compile cache);
//! - `load/cached/NAME`: the same from the in-memory compile cache (a
//!   rollback to a version seen before);
//! - `instantiate/headers`: a fresh instance plus its `init` call (config
//!   parse), without any hook: the fixed cost of `isolation = "request"`.
//!
//! `cargo bench -p weir --bench load` (the plugins are built by host/build.rs).

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir::config::Isolation;
use weir::plugin::{ChainPlugin, PluginUse, Runtime};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn wasm(stem: &str) -> PathBuf {
    root().join(format!("target/plugins/wasm32-wasip2/plugin/{stem}.wasm"))
}

const HEADERS: &str = r#"{"request":{"set":{"x-route":"${route_id}"}}}"#;

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::global();

    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    let manifest = root().join("examples/quickstart/gateway.toml");
    let stems = ["key_auth", "jwt_auth", "headers", "rate_limit"];
    let sha = |stem: &str| weir::plugin::sha256_hex(&std::fs::read(wasm(stem)).unwrap_or_default());
    let shas: Vec<String> = stems.iter().map(|s| sha(s)).collect();
    g.bench_function("check_quickstart", |b| {
        b.iter(|| {
            for s in &shas {
                runtime.forget_compiled(s);
            }
            rt.block_on(weir::check(&manifest))
                .unwrap_or_else(|e| panic!("{e} (build the plugins first)"))
        })
    });
    // jwt-auth imports outbound HTTP (for a JWKS): it loads with `grants.http = []`.
    let mut may_call_out = weir::plugin::Policy::default();
    may_call_out.grants.http = Some(Vec::new());
    for (stem, sha) in stems.iter().zip(&shas) {
        g.bench_function(format!("compile/{stem}"), |b| {
            b.iter(|| {
                runtime.forget_compiled(sha);
                runtime.load(stem, &wasm(stem), &may_call_out).unwrap()
            })
        });
        g.bench_function(format!("cached/{stem}"), |b| {
            b.iter(|| runtime.load(stem, &wasm(stem), &may_call_out).unwrap())
        });
    }
    g.finish();

    let loaded = Arc::new(
        runtime
            .load("headers", &wasm("headers"), &Default::default())
            .unwrap(),
    );
    let metrics = weir::telemetry::metrics::Metrics::new();
    let mut g = c.benchmark_group("instantiate");
    g.bench_function("headers", |b| {
        b.to_async(&rt).iter(|| async {
            ChainPlugin::new(
                runtime.clone(),
                loaded.clone(),
                "bench".into(),
                PluginUse {
                    config_json: HEADERS.into(),
                    isolation: Isolation::Request,
                    policy: Default::default(),
                    fail: Default::default(),
                    state: None,
                    outbound: None,
                },
                metrics.plugin("headers", "bench", &weir::plugin::PluginErrorKind::REASONS),
            )
            .await
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(load, benches);
criterion_main!(load);
