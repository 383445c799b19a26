//! Hot-swap benchmark (issue 3): time from a plugin file change to the new
//! version serving (median and max over 50 swaps), and request latency during
//! the swap storm vs steady state, measured in one run under the same load.
//!
//! `cargo bench -p weir-tests --bench hot_swap`

#[allow(dead_code)]
#[path = "../all/support.rs"]
mod support;

use std::time::Duration;

use support::{Load, TestGateway, eventually, plugin};

const CLIENTS: usize = 4;
const SWAPS: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, outcomes: &[support::Outcome]) -> (Duration, Duration) {
    let mut l: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    l.sort();
    let failed = outcomes.iter().filter(|o| o.status != 200).count();
    let (p50, p99) = (percentile(&l, 0.5), percentile(&l, 0.99));
    println!(
        "{name:>12}: {:>7} requests, {failed} failed, p50 {p50:?}, p99 {p99:?}, max {:?}",
        l.len(),
        l[l.len() - 1]
    );
    (p50, p99)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let stamp = |v: &str| std::fs::read(plugin(&format!("test_stamp_{v}"))).unwrap();
    let (v1, v2) = (stamp("v1"), stamp("v2"));
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("stamp.wasm");
    std::fs::write(&wasm, &v1).unwrap();
    let manifest = "[plugins.stamp]\npath = \"stamp.wasm\"\n\n[[routes]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"builtin:echo\"\n\
                    [[routes.plugins]]\nname = \"stamp\"\n[[routes.plugins]]\nname = \"stamp\"\n";
    let mut gw = TestGateway::start_in(dir, manifest).await;
    gw.gateway.watch();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Steady state first, then the storm, same clients and duration budget.
    let load = Load::start(gw.url("/"), CLIENTS, "x-stamp");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady = load.stop().await;

    let load = Load::start(gw.url("/"), CLIENTS, "x-stamp");
    let mut swaps = Vec::new();
    for i in 0..SWAPS {
        let (version, bytes) = if i % 2 == 0 { ("v2", &v2) } else { ("v1", &v1) };
        let tmp = wasm.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &wasm).unwrap();
        let url = gw.url("/");
        swaps.push(
            eventually(Duration::from_secs(30), "swap", || {
                let url = url.clone();
                async move {
                    let r = support::send(http::Method::GET, &url, &[], Default::default()).await;
                    r.header_all("x-stamp") == [version, version]
                }
            })
            .await,
        );
    }
    let storm = load.stop().await;

    swaps.sort();
    println!(
        "file change → new version serving, {SWAPS} swaps: median {:?}, max {:?}",
        percentile(&swaps, 0.5),
        swaps[swaps.len() - 1]
    );
    let (s50, s99) = summary("steady", &steady);
    let (w50, w99) = summary("swap storm", &storm);
    println!(
        "storm/steady: p50 {:.2}x, p99 {:.2}x",
        w50.as_secs_f64() / s50.as_secs_f64(),
        w99.as_secs_f64() / s99.as_secs_f64()
    );
}
