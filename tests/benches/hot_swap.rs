//! Hot-swap benchmark (issues 3 and 18): request latency during a swap storm
//! vs steady state, measured in one run under the same load, and the time
//! from a plugin file change to the new version serving, for a build never
//! seen (compiled) and for one seen before (a compile-cache hit).
//!
//! 1. steady: 5 s of load, no swaps;
//! 2. storm, compiling: `WEIR_BENCH_SWAPS` (50) swaps, each to a build no cache has seen
//!    (the stamp plugin with a unique custom section), so each one compiles;
//! 3. storm, cached: as many swaps (for 5 s at least) between two builds seen before.
//!
//! `cargo bench -p weir-tests --bench hot_swap` (release), or
//! `cargo test -p weir-tests --release --bench hot_swap`; the debug build
//! (`cargo test -p weir-tests --bench hot_swap`) gives ratios, not figures.

#[allow(dead_code)]
#[path = "../all/support.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Load, TestGateway, plugin, tagged};

const CLIENTS: usize = 4;
/// How long the steady state is measured; the cached storm lasts as long at least.
const STEADY: Duration = Duration::from_secs(5);
/// Swaps per storm (`WEIR_BENCH_SWAPS`, default 50).
fn swaps() -> usize {
    std::env::var("WEIR_BENCH_SWAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 2)
        .unwrap_or(50)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, outcomes: &[support::Outcome]) -> (Duration, Duration) {
    let mut l: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    l.sort();
    let failed = outcomes.iter().filter(|o| o.status != 200).count();
    let (p50, p99) = (percentile(&l, 0.5), percentile(&l, 0.99));
    println!(
        "{name:>18}: {:>7} requests, {failed} failed, p50 {p50:?}, p99 {p99:?}, max {:?}",
        l.len(),
        l[l.len() - 1]
    );
    (p50, p99)
}

/// Swaps `wasm` to each of `builds` in turn (named by their stamp) under
/// load, round again until `at_least` has passed; the time from each file
/// change to the new build serving, sorted.
async fn storm(
    gw: &TestGateway,
    wasm: &Path,
    builds: &[(&'static str, Vec<u8>)],
    at_least: Duration,
) -> (Vec<Duration>, Vec<support::Outcome>) {
    let load = Load::start(gw.url("/"), CLIENTS, "x-stamp");
    let mut swaps = Vec::new();
    let mut changes = Vec::new();
    let started = Instant::now();
    let rounds = builds
        .iter()
        .cycle()
        .enumerate()
        .take_while(|(i, _)| *i < builds.len() || started.elapsed() < at_least);
    for (i, (version, bytes)) in rounds {
        let sha = weir::plugin::sha256_hex(bytes);
        let tmp = wasm.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        let changed = Instant::now();
        std::fs::rename(&tmp, wasm).unwrap();
        // Serving = swapped in: every request from then on runs the new build.
        // Polled every millisecond (a request per poll would measure the load).
        while gw.gateway.snapshot().plugins["stamp"].sha256 != sha {
            assert!(
                changed.elapsed() < Duration::from_secs(120),
                "swap {i} never served"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        swaps.push(changed.elapsed());
        changes.push(changed);
        if std::env::var_os("WEIR_BENCH_VERBOSE").is_some() {
            eprintln!("swap {i} to {}: {:?}", &sha[..12], changed.elapsed());
        }
        let r = support::send(http::Method::GET, &gw.url("/"), &[], Default::default()).await;
        assert_eq!(r.header_all("x-stamp"), [*version, *version], "swap {i}");
    }
    swaps.sort();
    let outcomes = load.stop().await;
    if std::env::var_os("WEIR_BENCH_VERBOSE").is_some() {
        slow_after_change(&outcomes, &changes);
    }
    (swaps, outcomes)
}

/// Where the slowest 1 % of requests were sent, relative to the last file
/// change before them: what part of a swap the tail comes from.
fn slow_after_change(outcomes: &[support::Outcome], changes: &[Instant]) {
    let mut l: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    l.sort();
    let p99 = percentile(&l, 0.99);
    let mut buckets = std::collections::BTreeMap::<u64, usize>::new();
    for o in outcomes.iter().filter(|o| o.latency >= p99) {
        let since = changes
            .iter()
            .rev()
            .find(|c| **c <= o.sent)
            .map(|c| (o.sent - *c).as_millis() as u64);
        *buckets
            .entry(since.map_or(u64::MAX, |ms| ms / 5 * 5))
            .or_default() += 1;
    }
    eprintln!("slowest 1 % (>= {p99:?}) by ms since the last file change: {buckets:?}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let swaps_n = swaps();
    let stamp = |v: &str| std::fs::read(plugin(&format!("test_stamp_{v}"))).unwrap();
    let (v1, v2) = (stamp("v1"), stamp("v2"));
    let run = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("stamp.wasm");
    std::fs::write(&wasm, &v1).unwrap();
    let manifest = "[plugins.stamp]\npath = \"stamp.wasm\"\n\n[[routes]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"builtin:echo\"\n\
                    [[routes.plugins]]\nname = \"stamp\"\n[[routes.plugins]]\nname = \"stamp\"\n";
    let mut gw = TestGateway::start_in(dir, manifest).await;
    gw.gateway.watch();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Steady state first, then the storms, same clients.
    let load = Load::start(gw.url("/"), CLIENTS, "x-stamp");
    tokio::time::sleep(STEADY).await;
    let steady = load.stop().await;

    // Every swap a build never seen: each one compiles.
    let fresh: Vec<(&'static str, Vec<u8>)> = (0..swaps_n)
        .map(|i| {
            let (version, bytes) = if i % 2 == 0 { ("v2", &v2) } else { ("v1", &v1) };
            (version, tagged(bytes, &format!("bench-{run}-{i}")))
        })
        .collect();
    let (miss, compiling) = storm(&gw, &wasm, &fresh, Duration::ZERO).await;

    // Every swap a build seen before: compile-cache hits.
    let seen: Vec<(&'static str, Vec<u8>)> = (0..swaps_n)
        .map(|i| fresh[swaps_n - 2 + i % 2].clone())
        .collect();
    let (hit, cached) = storm(&gw, &wasm, &seen, STEADY).await;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut json = serde_json::Map::new();
    for (key, name, swaps) in [
        ("miss", "compile (miss)", &miss),
        ("hit", "cache hit", &hit),
    ] {
        println!(
            "file change → new version serving, {} swaps, {name}: median {:?}, p90 {:?}, max {:?}",
            swaps.len(),
            percentile(swaps, 0.5),
            percentile(swaps, 0.9),
            swaps[swaps.len() - 1]
        );
        json.insert(
            format!("serving_{key}_ms"),
            serde_json::json!({
                "median": ms(percentile(swaps, 0.5)),
                "p90": ms(percentile(swaps, 0.9)),
                "max": ms(swaps[swaps.len() - 1]),
            }),
        );
    }
    let (s50, s99) = summary("steady", &steady);
    json.insert(
        "steady".into(),
        serde_json::json!({"requests": steady.len(), "p50_ms": ms(s50), "p99_ms": ms(s99)}),
    );
    for (key, name, outcomes) in [
        ("storm_compiling", "storm, compiling", &compiling),
        ("storm_cached", "storm, cached", &cached),
    ] {
        let (w50, w99) = summary(name, outcomes);
        let (r50, r99) = (
            w50.as_secs_f64() / s50.as_secs_f64(),
            w99.as_secs_f64() / s99.as_secs_f64(),
        );
        println!("{name:>18}: storm/steady p50 {r50:.2}x, p99 {r99:.2}x");
        let failed = outcomes.iter().filter(|o| o.status != 200).count();
        json.insert(
            key.into(),
            serde_json::json!({"requests": outcomes.len(), "failed": failed, "p50_ms": ms(w50), "p99_ms": ms(w99), "p50_x": r50, "p99_x": r99}),
        );
    }
    json.insert("swaps".into(), swaps_n.into());
    // One line for bench/run to read.
    println!("hot_swap_json {}", serde_json::Value::Object(json));
}
