//! Hot swap: plugins and manifest reload on file change while traffic runs,
//! with zero failed requests; broken changes are refused and logged while the
//! old version keeps serving.

use std::path::Path;
use std::time::Duration;

use crate::support::{Load, Outcome, TestGateway, Upstream, eventually, logs, plugin};

// Generous: compiles run one at a time at low priority, shared by every test of the binary.
const LIMIT: Duration = Duration::from_secs(60);

fn stamp(version: &str) -> Vec<u8> {
    std::fs::read(plugin(&format!("test_stamp_{version}"))).unwrap()
}

/// Replaces `path` the way `cp new tmp && mv tmp path` does: a new inode, never half a file.
fn replace_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A route whose chain uses the stamp plugin twice, so a response that mixed
/// two versions inside one chain would show it.
fn manifest(upstream: &str, extra_config: &str) -> String {
    format!(
        "[plugins.stamp]\npath = \"stamp.wasm\"\n\n[[routes]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"{upstream}\"\n\
         [[routes.plugins]]\nname = \"stamp\"\n{extra_config}\n[[routes.plugins]]\nname = \"stamp\"\n"
    )
}

async fn start_watched(upstream: &str, version: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stamp.wasm"), stamp(version)).unwrap();
    let mut gw = TestGateway::start_in(dir, &manifest(upstream, "")).await;
    gw.gateway.watch();
    // Give the watcher a moment to register its directories.
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw
}

async fn serves(gw: &TestGateway, version: &str) -> bool {
    gw.get("/").await.header_all("x-stamp") == [version, version]
}

fn assert_clean(outcomes: &[Outcome], versions: &[&str]) {
    assert!(
        outcomes.len() > 50,
        "the load generator barely ran: {}",
        outcomes.len()
    );
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        outcomes.len(),
        failed.first()
    );
    for o in outcomes {
        let one_version = o.stamps.len() == 2
            && o.stamps[0] == o.stamps[1]
            && versions.contains(&o.stamps[0].as_str());
        assert!(
            one_version,
            "a response mixed versions or lost its stamp: {:?}",
            o.stamps
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_load_fail_no_request_and_never_mix_versions() {
    logs();
    let gw = start_watched("builtin:echo", "v1").await;
    let path = gw.dir().join("stamp.wasm");
    let (v1, v2) = (stamp("v1"), stamp("v2"));
    let load = Load::start(gw.url("/"), 4, "x-stamp");
    let mut times = Vec::new();
    for i in 0..50 {
        let (version, bytes) = if i % 2 == 0 { ("v2", &v2) } else { ("v1", &v1) };
        replace_atomically(&path, bytes);
        times.push(
            eventually(LIMIT, &format!("swap {i} to {version}"), || {
                serves(&gw, version)
            })
            .await,
        );
    }
    let outcomes = load.stop().await;
    assert_clean(&outcomes, &["v1", "v2"]);
    assert_eq!(gw.gateway.reload_stats().refused, 0);
    times.sort();
    let slowest = outcomes.iter().map(|o| o.latency).max().unwrap_or_default();
    eprintln!(
        "50 swaps under load, {} requests (slowest {slowest:?}): change-to-serving median {:?}, max {:?}",
        outcomes.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_changes_are_refused_logged_and_the_old_version_keeps_serving() {
    logs();
    let gw = start_watched("builtin:echo", "v1").await;
    let dir = gw.dir().to_path_buf();
    let wasm = dir.join("stamp.wasm");
    let toml = dir.join("gateway.toml");
    let good_manifest = std::fs::read_to_string(&toml).unwrap();
    let v2 = stamp("v2");
    let wrong_world = std::fs::read(plugin("test_wrong_world")).unwrap();
    let load = Load::start(gw.url("/"), 4, "x-stamp");

    // Each case: break something, wait for the refusal, check the log names
    // the file and the reason, check v1 still answers.
    type Break<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str, &'a Path);
    let cases: Vec<Break> = vec![
        (
            "invalid wasm, truncated and rewritten in place",
            Box::new(|| std::fs::write(&wasm, b"garbage, not wasm").unwrap()),
            "not a WebAssembly file",
            &wasm,
        ),
        (
            "a component for another WIT world",
            Box::new(|| replace_atomically(&wasm, &wrong_world)),
            "does not implement the weir:plugin",
            &wasm,
        ),
        (
            "half-written plugin file",
            Box::new(|| std::fs::write(&wasm, &v2[..v2.len() / 2]).unwrap()),
            "not a valid WebAssembly component",
            &wasm,
        ),
        (
            "plugin file deleted",
            Box::new(|| std::fs::remove_file(&wasm).unwrap()),
            "not found",
            &wasm,
        ),
        (
            "config the plugin rejects",
            Box::new(|| {
                std::fs::write(&toml, manifest("builtin:echo", "config = { bogus = 1 }")).unwrap()
            }),
            "unknown field `bogus`",
            &toml,
        ),
        (
            "TOML syntax error",
            Box::new(|| std::fs::write(&toml, "[[routes]\\nid = ").unwrap()),
            "gateway.toml:1:",
            &toml,
        ),
    ];
    for (what, break_it, reason, file) in cases {
        let refused = gw.gateway.reload_stats().refused;
        break_it();
        eventually(LIMIT, &format!("{what}: refused"), || async {
            gw.gateway.reload_stats().refused > refused
        })
        .await;
        let log = logs();
        let line = log
            .split("reload refused")
            .skip(1)
            .find(|entry| entry.contains(&*file.display().to_string()) && entry.contains(reason));
        assert!(
            line.is_some(),
            "{what}: no log entry names {} and `{reason}`",
            file.display()
        );
        assert!(serves(&gw, "v1").await, "{what}: v1 must keep serving");
        // Undo: restore both files (the next case starts from a good state).
        std::fs::write(&toml, &good_manifest).unwrap();
        replace_atomically(&wasm, &stamp("v1"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The half-written file completes later: the finished file loads.
    std::fs::write(&wasm, &v2[..v2.len() / 2]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&wasm, &v2).unwrap();
    eventually(LIMIT, "completed file loads", || serves(&gw, "v2")).await;

    let outcomes = load.stop().await;
    assert_clean(&outcomes, &["v1", "v2"]);
}

#[tokio::test]
async fn manifest_edits_add_and_remove_routes_and_change_plugin_config() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let order = plugin("test_order");
    let before = format!(
        "[plugins.order]\npath = \"{order}\"\n\n[[routes]]\nid = \"old\"\nprefix = \"/old\"\nupstream = \"builtin:echo\"\n\
         [[routes.plugins]]\nname = \"order\"\nconfig = {{ tag = \"one\" }}\n"
    );
    let mut gw = TestGateway::start_in(dir, &before).await;
    gw.gateway.watch();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.get("/old").await.header("x-resp-order"), Some("one"));
    assert_eq!(gw.get("/new").await.status, 404);

    let after = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[plugins.order]\npath = \"{order}\"\n\n[[routes]]\nid = \"new\"\nprefix = \"/new\"\nupstream = \"builtin:echo\"\n\
         [[routes.plugins]]\nname = \"order\"\nconfig = {{ tag = \"two\" }}\n"
    );
    std::fs::write(gw.dir().join("gateway.toml"), after).unwrap();
    eventually(LIMIT, "the new route serves", || async {
        gw.get("/new").await.status == 200
    })
    .await;
    assert_eq!(
        gw.get("/new").await.header("x-resp-order"),
        Some("two"),
        "the new config is in force"
    );
    assert_eq!(
        gw.get("/old").await.status,
        404,
        "the removed route is gone"
    );
}

#[tokio::test]
async fn a_request_in_flight_across_a_swap_completes_on_the_old_version() {
    logs();
    let up = Upstream::start("slow").await;
    let gw = start_watched(&up.url(), "v1").await;
    let url = gw.url("/slow");
    let in_flight = tokio::spawn(async move {
        crate::support::send(http::Method::GET, &url, &[], Default::default()).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    replace_atomically(&gw.dir().join("stamp.wasm"), &stamp("v2"));
    eventually(LIMIT, "v2 serves new requests", || serves(&gw, "v2")).await;

    let slow = in_flight.await.unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(
        slow.header_all("x-stamp"),
        ["v1", "v1"],
        "the old request finished on the old chain"
    );
    let seen = up.seen();
    assert_eq!(seen[0].header_all("x-stamp"), ["v1", "v1"]);
}

#[tokio::test]
async fn explicit_reload_without_watching_picks_up_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stamp.wasm"), stamp("v1")).unwrap();
    let gw = TestGateway::start_in(dir, &manifest("builtin:echo", "")).await;
    replace_atomically(&gw.dir().join("stamp.wasm"), &stamp("v2"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        serves(&gw, "v1").await,
        "without a watcher nothing changes by itself"
    );
    gw.gateway.reload().await.unwrap();
    assert!(serves(&gw, "v2").await);
    assert_eq!(gw.gateway.reload_stats().ok, 1);
}
