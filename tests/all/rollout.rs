//! Safe plugin rollout (issue 18): versions by weight, sticky per key; a
//! canary that breaks its budget taken out of rotation; promote, rollback
//! and reset through the admin API under load; compiled plugins reused from
//! memory and disk.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use weir::plugin::{CacheSource, Runtime};

use crate::support::{Load, TestGateway, eventually, logs, plugin, send, tagged};

const LIMIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "rollout-admin-token";

fn copy_plugin(dir: &std::path::Path, stem: &str, as_name: &str) {
    std::fs::copy(plugin(stem), dir.join(as_name)).unwrap();
}

/// A route whose chain has the stamp plugin twice, and `[plugins.stamp]` from `plugin_toml`.
fn stamp_manifest(plugin_toml: &str, extra: &str) -> String {
    format!(
        "{extra}\n[plugins.stamp]\n{plugin_toml}\n\n[[routes]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"builtin:echo\"\n\
         [[routes.plugins]]\nname = \"stamp\"\n[[routes.plugins]]\nname = \"stamp\"\n"
    )
}

async fn two_versions(v1: u32, v2: u32, rollout: &str, extra: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    copy_plugin(dir.path(), "test_stamp_v1", "stamp-v1.wasm");
    copy_plugin(dir.path(), "test_stamp_v2", "stamp-v2.wasm");
    let versions = format!(
        "versions = [{{ path = \"stamp-v1.wasm\", weight = {v1} }}, {{ path = \"stamp-v2.wasm\", weight = {v2}, label = \"v2\" }}]\n{rollout}"
    );
    TestGateway::start_in(dir, &stamp_manifest(&versions, extra)).await
}

/// The version a response ran, checking both places of the chain agree.
fn version_of(resp: &crate::support::Resp) -> String {
    let stamps = resp.header_all("x-stamp");
    assert_eq!(stamps.len(), 2, "two stamps expected: {stamps:?}");
    assert_eq!(stamps[0], stamps[1], "a request mixed versions: {stamps:?}");
    stamps[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_at_ten_percent_gets_ten_percent_within_the_bound_and_each_user_keeps_a_version() {
    let gw = two_versions(
        90,
        10,
        "[plugins.stamp.rollout]\nsticky = \"header:x-user\"\n",
        "",
    )
    .await;
    const N: usize = 2000;
    let mut first = Vec::with_capacity(N);
    for i in 0..N {
        let user = format!("user-{i}");
        let r = gw.get_with("/", &[("x-user", &user)]).await;
        assert_eq!(r.status, 200);
        first.push(version_of(&r));
    }
    let canary = first.iter().filter(|v| *v == "v2").count();
    // Binomial: sd = sqrt(N p (1-p)) = 13.4 requests; 4.5 sd either side.
    let sd = (N as f64 * 0.1 * 0.9).sqrt();
    let bound = (4.5 * sd).ceil() as usize;
    assert!(
        canary.abs_diff(N / 10) <= bound,
        "canary served {canary} of {N}, want {} ± {bound}",
        N / 10
    );
    // Sticky: each user asked again runs the version it ran first.
    for i in (0..N).step_by(7) {
        let user = format!("user-{i}");
        let r = gw.get_with("/", &[("x-user", &user)]).await;
        assert_eq!(version_of(&r), first[i], "user {user} changed version");
    }
    eprintln!(
        "canary at 10 %: {canary} of {N} requests ({:.2} %)",
        canary as f64 * 100.0 / N as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_traps_is_rolled_back_within_its_window_and_the_stable_share_never_fails() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    copy_plugin(dir.path(), "test_stamp_v1", "stamp.wasm");
    copy_plugin(dir.path(), "test_trap", "trap.wasm");
    let manifest = "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
        [plugins.guard]\nversions = [{ path = \"stamp.wasm\", weight = 50, label = \"stable\" }, { path = \"trap.wasm\", weight = 50, label = \"trapper\" }]\n\
        [plugins.guard.rollout]\nsticky = \"none\"\nwindow = \"60s\"\nmin_calls = 20\nmax_failure_rate = 0.05\n\n\
        [[routes]]\nid = \"canary-trap\"\nprefix = \"/\"\nupstream = \"builtin:echo\"\n[[routes.plugins]]\nname = \"guard\"\n";
    let gw = TestGateway::start_in(dir, manifest).await;

    // Every other request asks the plugin to trap: the canary fails half its calls.
    let mut failed = 0;
    let mut stable_failed = 0;
    let mut sent = 0;
    let admin = |p: &str| gw.admin_url(p);
    loop {
        sent += 1;
        let trap = if sent % 2 == 0 { "1" } else { "0" };
        let r = gw.get_with("/", &[("x-trap", trap)]).await;
        let stable = r.header("x-stamp") == Some("v1");
        if r.status != 200 {
            failed += 1;
            stable_failed += usize::from(stable);
        }
        let out = send(Method::GET, &admin("/plugins"), &[], Bytes::new())
            .await
            .json();
        let canary = &out[0]["rollout"]["versions"][1];
        if canary["in_rotation"] == false {
            assert_eq!(canary["removed"]["cause"], "failure_rate");
            assert!(canary["removed"]["figures"]["calls"].as_u64().unwrap() >= 20);
            break;
        }
        assert!(sent < 2000, "the canary was never rolled back: {out}");
    }
    assert_eq!(stable_failed, 0);
    // The canary ran about half the requests until then and failed half of
    // those; its verdict came at its 20th call at the latest.
    assert!(
        failed > 0 && failed <= 20,
        "{failed} requests failed before the rollback"
    );

    // Out of rotation: every request runs the stable version, trap or not.
    for _ in 0..50 {
        let r = gw.get_with("/", &[("x-trap", "1")]).await;
        assert_eq!((r.status.as_u16(), r.header("x-stamp")), (200, Some("v1")));
    }
    let metrics = send(Method::GET, &admin("/metrics"), &[], Bytes::new()).await;
    let body = metrics.body;
    assert!(
        body.contains(
            "weir_plugin_rollbacks_total{plugin=\"guard\",version=\"trapper\",cause=\"failure_rate\"} 1"
        ),
        "{body}"
    );
    assert!(body.contains("weir_plugin_version_share{plugin=\"guard\",version=\"stable\""));
    let log = logs();
    let line = log
        .lines()
        .find(|l| l.contains("rolled back") && l.contains("version=trapper"))
        .expect("no rollback log line");
    assert!(
        line.contains("failure_rate=") && line.contains("calls="),
        "{line}"
    );

    // A reload that changes nothing of the plugin keeps it out; reset brings it back.
    gw.gateway.reload().await.unwrap();
    let r = gw.get_with("/", &[("x-trap", "1")]).await;
    assert_eq!(r.status, 200);
    let reset = send(
        Method::POST,
        &admin("/plugins/guard/reset"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(reset.status, 200);
    assert_eq!(reset.json()["versions"][1]["in_rotation"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_rollback_and_reset_through_the_admin_api_under_load_fail_no_request() {
    let admin = format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    // Load comes from one client address, so the sticky key keeps it on one
    // version: the stable one at 100/0.
    let gw = two_versions(100, 0, "", &admin).await;
    let auth = format!("Bearer {TOKEN}");
    let post = |path: &'static str| {
        let (url, auth) = (gw.admin_url(path), auth.clone());
        async move {
            send(
                Method::POST,
                &url,
                &[("authorization", &auth)],
                Bytes::new(),
            )
            .await
        }
    };
    let load = Load::start(gw.url("/"), 4, "x-stamp");
    let serves = |v: &'static str| {
        let url = gw.url("/");
        async move {
            let r = send(Method::GET, &url, &[], Bytes::new()).await;
            r.header_all("x-stamp") == [v, v]
        }
    };
    eventually(LIMIT, "v1 serving", || serves("v1")).await;

    let unauthorised = send(
        Method::POST,
        &gw.admin_url("/plugins/stamp/promote"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(unauthorised.status, 401);
    let promoted = post("/plugins/stamp/promote").await;
    assert_eq!(promoted.status, 200, "{:?}", promoted.body);
    assert_eq!(promoted.json()["promoted"], "v2");
    eventually(LIMIT, "v2 serving after promote", || serves("v2")).await;

    // `weir ctl` speaks the same API.
    let ctl = weir::ctl::AdminTarget {
        addr: gw.gateway.admin_addr().unwrap().to_string(),
        token: Some(TOKEN.into()),
    };
    let rolled = ctl
        .call(Method::POST, "/plugins/stamp/rollback")
        .await
        .unwrap();
    assert!(
        weir::ctl::describe_rollout(&serde_json::from_str(&rolled).unwrap())
            .contains("OUT: manual")
    );
    eventually(LIMIT, "v1 serving after rollback", || serves("v1")).await;

    let reset = post("/plugins/stamp/reset").await;
    assert_eq!(reset.status, 200);
    // More turns, each one served before the next.
    for _ in 0..4 {
        assert_eq!(post("/plugins/stamp/promote").await.status, 200);
        eventually(LIMIT, "v2 serving after promote", || serves("v2")).await;
        assert_eq!(post("/plugins/stamp/rollback").await.status, 200);
        eventually(LIMIT, "v1 serving after rollback", || serves("v1")).await;
    }
    let outcomes = load.stop().await;
    let seen = crate::support::tally(outcomes.iter().filter_map(|o| o.stamps.first().cloned()));
    assert!(
        seen.get("v1").is_some_and(|n| *n > 0) && seen.get("v2").is_some_and(|n| *n > 0),
        "the load ran on both versions: {seen:?}"
    );
    let failed = outcomes.iter().filter(|o| o.status != 200).count();
    assert_eq!(failed, 0, "{failed} of {} requests failed", outcomes.len());
    assert!(
        outcomes
            .iter()
            .all(|o| o.stamps.len() == 2 && o.stamps[0] == o.stamps[1]),
        "a request mixed versions"
    );

    // Clear refusals.
    let wrong = ctl
        .call(Method::POST, "/plugins/stamp/promote?version=v9")
        .await;
    assert!(
        matches!(wrong, Err(weir::ctl::CtlError::Refused { status: 404, .. })),
        "{wrong:?}"
    );
    let none = ctl.call(Method::POST, "/plugins/nope/rollback").await;
    assert!(
        matches!(none, Err(weir::ctl::CtlError::Refused { status: 404, .. })),
        "{none:?}"
    );
    let get = send(
        Method::GET,
        &gw.admin_url("/plugins/stamp/promote"),
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await;
    assert_eq!(get.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_a_version_seen_before_is_served_without_compiling() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    // Builds no other test loads, so this test alone decides what memory holds.
    let v1 = tagged(
        &std::fs::read(plugin("test_stamp_v1")).unwrap(),
        "seen-before-v1",
    );
    let v2 = tagged(
        &std::fs::read(plugin("test_stamp_v2")).unwrap(),
        "seen-before-v2",
    );
    std::fs::write(dir.path().join("stamp.wasm"), &v1).unwrap();
    let gw = TestGateway::start_in(dir, &stamp_manifest("path = \"stamp.wasm\"", "")).await;
    let source = || gw.gateway.snapshot().plugins["stamp"].source;
    assert_eq!(source(), CacheSource::Compiled);

    let wasm = gw.dir().join("stamp.wasm");
    std::fs::write(&wasm, &v2).unwrap();
    let t = Instant::now();
    gw.gateway.reload().await.unwrap();
    let miss = t.elapsed();
    assert_eq!(source(), CacheSource::Compiled);
    assert_eq!(version_of(&gw.get("/").await), "v2");

    // Back to v1: in memory, not compiled.
    std::fs::write(&wasm, &v1).unwrap();
    let t = Instant::now();
    gw.gateway.reload().await.unwrap();
    let hit = t.elapsed();
    assert_eq!(source(), CacheSource::Memory);
    assert_eq!(version_of(&gw.get("/").await), "v1");
    let sha = weir::plugin::sha256_hex(&v1);
    assert!(
        logs().lines().any(|l| l.contains("plugin loaded")
            && l.contains(&sha)
            && l.contains("source=\"memory\"")),
        "no log line for the cached load of {sha}"
    );
    eprintln!(
        "reload to a new build (compile) {miss:?}; back to a build seen before (memory) {hit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_disk_cache_compiles_nothing_and_a_corrupt_entry_is_recompiled() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let wasm = tagged(
        &std::fs::read(plugin("test_stamp_v1")).unwrap(),
        "disk-cache",
    );
    let sha = weir::plugin::sha256_hex(&wasm);
    std::fs::write(dir.path().join("stamp.wasm"), &wasm).unwrap();
    let cache = dir.path().join("cache");
    let manifest = stamp_manifest(
        "path = \"stamp.wasm\"",
        "[compile_cache]\ndir = \"cache\"\n",
    );
    let gw = TestGateway::start_in(dir, &manifest).await;
    assert_eq!(
        gw.gateway.snapshot().plugins["stamp"].source,
        CacheSource::Compiled
    );
    let entries: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let cwasm = entries
        .iter()
        .find(|e| e.starts_with(&sha) && e.ends_with(".cwasm"))
        .unwrap_or_else(|| panic!("no cache entry for {sha}: {entries:?}"));
    let cwasm = cache.join(cwasm);
    assert!(cwasm.with_extension("sum").exists());

    // A restart: this process forgets the compiled code, the disk keeps it.
    Runtime::global().forget_compiled(&sha);
    let restart = || async {
        Runtime::global().forget_compiled(&sha);
        let started = weir::Snapshot::load(
            &gw.manifest_path(),
            Runtime::global(),
            &std::sync::Arc::new(weir::telemetry::metrics::Metrics::new()),
        )
        .await
        .unwrap();
        started.plugins["stamp"].source
    };
    assert_eq!(restart().await, CacheSource::Disk);

    // A corrupt entry is refused, logged, and compiled afresh (and rewritten).
    let mut bytes = std::fs::read(&cwasm).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&cwasm, &bytes).unwrap();
    assert_eq!(restart().await, CacheSource::Compiled);
    assert!(
        logs()
            .lines()
            .any(|l| l.contains("compile cache entry refused") && l.contains(&sha))
    );
    assert_eq!(restart().await, CacheSource::Disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_whose_hook_p99_breaks_its_latency_budget_is_taken_out_and_reset_brings_it_back() {
    use weir::plugin::rollout::{Budget, Cause, Rollout, Sticky, Version};
    let load = |stem: &str| {
        let path = std::path::PathBuf::from(plugin(stem));
        std::sync::Arc::new(
            Runtime::global()
                .load("slow", &path, &weir::plugin::Policy::default())
                .unwrap(),
        )
    };
    let budget = Budget {
        window: Duration::from_secs(60),
        min_calls: 100,
        max_failure_rate: 0.01,
        max_p99: Some(Duration::from_millis(20)),
    };
    let versions = vec![
        Version::new("stable".into(), load("test_stamp_v1"), 90, budget.window),
        Version::new("canary".into(), load("test_stamp_v2"), 10, budget.window),
    ];
    let r = Rollout::new(
        "slow".into(),
        versions,
        Sticky::None,
        budget,
        weir::telemetry::metrics::RolloutMetrics::detached("slow"),
    );
    // The stable version is slow too: it is counted, never taken out.
    for _ in 0..300 {
        r.observe(0, Duration::from_millis(50), false);
    }
    assert!(!r.versions[0].is_out());
    // 95 fast calls: too few for a verdict, and fast anyway.
    for _ in 0..95 {
        r.observe(1, Duration::from_micros(50), false);
    }
    assert!(!r.versions[1].is_out());
    // Then 5 % of its calls take 30 ms: its p99 is over 20 ms.
    for i in 0..200 {
        let took = if i % 20 == 0 {
            Duration::from_millis(30)
        } else {
            Duration::from_micros(50)
        };
        r.observe(1, took, false);
    }
    let removal = r.versions[1].removal().expect("the canary is out");
    assert_eq!(removal.cause, Cause::Latency);
    assert!(removal.figures.p99.unwrap() > Duration::from_millis(20));
    assert_eq!(r.shares(), [100.0, 0.0]);
    assert!((0..1000).all(|k| r.pick(Some(k)) == 0));

    r.reset();
    assert!(!r.versions[1].is_out());
    assert_eq!(r.shares(), [90.0, 10.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_versions_edit_is_refused_at_its_line_and_a_weight_change_starts_the_rollout_afresh()
{
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let gw = two_versions(
        50,
        50,
        "[plugins.stamp.rollout]\nsticky = \"none\"\n",
        admin,
    )
    .await;
    let rollback = send(
        Method::POST,
        &gw.admin_url("/plugins/stamp/rollback"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(rollback.status, 200);
    let good = std::fs::read_to_string(gw.manifest_path()).unwrap();

    // A weight out of range: refused with file, line and column; the state and v1 keep serving.
    std::fs::write(
        gw.manifest_path(),
        good.replace("weight = 50 }, {", "weight = 50000 }, {"),
    )
    .unwrap();
    let errors = gw.gateway.reload().await.unwrap_err().to_string();
    let line = good
        .lines()
        .position(|l| l.starts_with("versions = "))
        .unwrap()
        + 1;
    assert!(
        errors.contains(&format!("gateway.toml:{line}:"))
            && errors.contains("weight 50000 is out of range"),
        "{errors}"
    );
    for _ in 0..20 {
        assert_eq!(version_of(&gw.get("/").await), "v1");
    }

    // Unchanged versions: a reload keeps the rollback.
    std::fs::write(gw.manifest_path(), &good).unwrap();
    gw.gateway.reload().await.unwrap();
    assert_eq!(version_of(&gw.get("/").await), "v1");
    // Changed weights: the manifest's shares again, the canary back in rotation.
    std::fs::write(
        gw.manifest_path(),
        good.replace("weight = 50, label", "weight = 100, label"),
    )
    .unwrap();
    gw.gateway.reload().await.unwrap();
    let plugins = send(Method::GET, &gw.admin_url("/plugins"), &[], Bytes::new())
        .await
        .json();
    let canary = &plugins[0]["rollout"]["versions"][1];
    assert_eq!(canary["in_rotation"], true, "{plugins}");
    assert_eq!(canary["weight"], 100);
    eventually(LIMIT, "the canary serves again", || async {
        version_of(&gw.get("/").await) == "v2"
    })
    .await;
}
