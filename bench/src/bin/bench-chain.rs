//! The bundled 3-plugin chain (key-auth → headers → rate-limit, request and
//! response hooks) driven in process, without HTTP.
//!
//! - `bench-chain micro PLUGIN_DIR`: wall time per operation (p50 and mean
//!   over many single runs) for one hook on a reused instance, one hook on a
//!   fresh instance, instantiate + init alone, and the chain with reused and
//!   fresh instances. Prints one JSON line.
//! - `bench-chain calls PLUGIN_DIR N`: loads the chain, warms it up, then
//!   runs it N times inside `measured_calls`. Under
//!   `valgrind --tool=callgrind --toggle-collect='*measured_calls*'` the
//!   instruction count divided by N is the cost of one chain run.
//! - `bench-chain calls-fresh PLUGIN_DIR N`: the same with
//!   `isolation = "request"` (three instantiations and `init`s per run).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use weir::config::Isolation;
use weir::plugin::{
    Chain, ChainPlugin, Lease, Outcome, PluginUse, RequestState, ResponseState, Runtime,
};

const HEADERS: &str = r#"{"request":{"set":{"x-route":"${route_id}"},"remove":["x-debug"]},"response":{"set":{"x-served-by":"weir"}}}"#;
const KEY_AUTH: &str = r#"{"keys":[{"key":"bench-key","consumer":"bench"}]}"#;
const RATE_LIMIT: &str = r#"{"rate":1000000000,"per":"1s"}"#;

fn request() -> RequestState {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:8000"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("x-api-key", "bench-key"),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    RequestState {
        method: Method::GET,
        path: "/".into(),
        raw_path: "/".into(),
        query: None,
        authority: Some("127.0.0.1:8000".into()),
        headers,
        client: "127.0.0.1:40000".parse().expect("literal address"),
        route_id: "chain".into(),
        vars: Vec::new(),
        read_only: false,
        body: Default::default(),
    }
}

fn usage(isolation: Isolation, config: &str) -> PluginUse {
    PluginUse {
        config_json: config.into(),
        isolation,
        policy: Default::default(),
        fail: Default::default(),
        state: None,
        outbound: None,
    }
}

async fn plugin(
    dir: &Path,
    stem: &str,
    config: &str,
    isolation: Isolation,
) -> anyhow::Result<ChainPlugin> {
    let rt = Runtime::global().clone();
    let name = stem.replace('_', "-");
    let path = dir.join(format!("{stem}.wasm"));
    let loaded = rt
        .load(&name, &path, &Default::default())
        .with_context(|| format!("{}", path.display()))?;
    let metrics = weir::telemetry::metrics::Metrics::new();
    Ok(ChainPlugin::new(
        rt,
        Arc::new(loaded),
        "chain".into(),
        usage(isolation, config),
        metrics.plugin(&name, "chain", &weir::plugin::PluginErrorKind::REASONS),
    )
    .await?)
}

async fn chain(dir: &Path, isolation: Isolation) -> anyhow::Result<Vec<ChainPlugin>> {
    Ok(vec![
        plugin(dir, "key_auth", KEY_AUTH, isolation).await?,
        plugin(dir, "headers", HEADERS, isolation).await?,
        plugin(dir, "rate_limit", RATE_LIMIT, isolation).await?,
    ])
}

async fn run_chain(plugins: &[ChainPlugin]) {
    // One request: one lease per plugin across both hooks, as the proxy does.
    let mut chain = Chain::new(plugins);
    let (req, early) = chain.request(request()).await.expect("chain");
    assert!(early.is_none(), "chain answered early");
    let resp = ResponseState {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: Default::default(),
    };
    chain.response(req, resp).await.expect("chain");
}

#[inline(never)]
fn measured_calls(rt: &tokio::runtime::Runtime, chain: &[ChainPlugin], n: u64) {
    for _ in 0..n {
        rt.block_on(run_chain(chain));
    }
}

/// Times `op` `n` times one by one; returns (p50, mean) in µs.
fn time<F: FnMut()>(n: usize, mut op: F) -> (f64, f64) {
    for _ in 0..n / 10 {
        op();
    }
    let mut t = Vec::with_capacity(n);
    let all = Instant::now();
    for _ in 0..n {
        let s = Instant::now();
        op();
        t.push(s.elapsed().as_nanos() as f64 / 1000.0);
    }
    let mean = all.elapsed().as_nanos() as f64 / 1000.0 / n as f64;
    t.sort_by(f64::total_cmp);
    (t[n / 2], mean)
}

fn micro(dir: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (reused, fresh, pooled3, fresh3) = rt.block_on(async {
        anyhow::Ok((
            plugin(dir, "headers", HEADERS, Isolation::Pooled).await?,
            plugin(dir, "headers", HEADERS, Isolation::Request).await?,
            chain(dir, Isolation::Pooled).await?,
            chain(dir, Isolation::Request).await?,
        ))
    })?;
    let rtr = &rt;
    let hook_reused = time(20_000, || {
        rtr.block_on(hook(&reused));
    });
    let hook_fresh = time(5_000, || {
        rtr.block_on(hook(&fresh));
    });
    // `ChainPlugin::new` with request isolation: instantiate + `init` (the
    // config parse), then the instance is dropped: the public API's
    // closest thing to instantiation alone.
    let loaded = Arc::new(Runtime::global().load(
        "headers",
        &dir.join("headers.wasm"),
        &Default::default(),
    )?);
    let metrics = weir::telemetry::metrics::Metrics::new();
    let inst = time(5_000, || {
        rtr.block_on(ChainPlugin::new(
            Runtime::global().clone(),
            loaded.clone(),
            "chain".into(),
            usage(Isolation::Request, HEADERS),
            metrics.plugin("headers", "chain", &weir::plugin::PluginErrorKind::REASONS),
        ))
        .expect("instantiate");
    });
    let chain_reused = time(20_000, || rtr.block_on(run_chain(&pooled3)));
    let chain_fresh = time(3_000, || rtr.block_on(run_chain(&fresh3)));
    let j = |(p50, mean): (f64, f64)| serde_json::json!({"p50_us": p50, "mean_us": mean});
    println!(
        "{}",
        serde_json::json!({
            "hook_reused": j(hook_reused),
            "hook_fresh": j(hook_fresh),
            "instantiate_init": j(inst),
            "chain3_reused": j(chain_reused),
            "chain3_fresh": j(chain_fresh),
        })
    );
    Ok(())
}

fn calls(dir: &Path, n: u64, isolation: Isolation) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let chain = rt.block_on(chain(dir, isolation))?;
    for p in &chain {
        eprintln!(
            "{}: {}",
            p.name(),
            if p.is_direct() {
                "direct"
            } else {
                "on a fiber"
            }
        );
    }
    measured_calls(&rt, &chain, 0);
    for _ in 0..20 {
        rt.block_on(run_chain(&chain));
    }
    let start = Instant::now();
    measured_calls(&rt, &chain, n);
    eprintln!(
        "{n} chain runs, {:.2} µs each",
        start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.get(1).map(PathBuf::from);
    match (args.first().map(String::as_str), dir) {
        (Some("micro"), Some(dir)) => micro(&dir),
        (Some(mode @ ("calls" | "calls-fresh")), Some(dir)) => calls(
            &dir,
            args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(1000),
            if mode == "calls" {
                Isolation::Pooled
            } else {
                Isolation::Request
            },
        ),
        _ => bail!("usage: bench-chain micro PLUGIN_DIR | calls[-fresh] PLUGIN_DIR [N]"),
    }
}

/// One request hook on its own lease, returned after.
async fn hook(p: &ChainPlugin) -> Outcome {
    let mut lease = Lease::default();
    let (_, outcome) = p
        .on_request(&mut lease, Box::new(request()))
        .await
        .expect("chain");
    p.release(lease);
    outcome
}
