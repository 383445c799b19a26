//! A hostile plugin must not cost other routes their service: one that keeps
//! running out of CPU is failed fast by its breaker, and one that floods the
//! log is capped at its `max_log_rate`, the drops counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;

use bytes::Bytes;
use http::Method;

use crate::support::{TestGateway, Upstream, failures, get_url, logs, plugin, send};

/// `/bad` runs the hostile plugin in `mode` (fail closed), `/healthy` the well-behaved `order`.
fn manifest(up: &Upstream, id: &str, mode: &str, keys: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[plugins.hostile]
path = "{hostile}"
{keys}

[plugins.order]
path = "{order}"

[[routes]]
id = "{id}-bad"
prefix = "/bad"
upstream = "{up}"
[[routes.plugins]]
name = "hostile"
config = {{ mode = "{mode}" }}

[[routes]]
id = "{id}-healthy"
prefix = "/healthy"
upstream = "{up}"
[[routes.plugins]]
name = "order"
config = {{ tag = "healthy" }}
"#,
        hostile = plugin("test_hostile"),
        order = plugin("test_order"),
        up = up.url(),
    )
}

/// The value of the one sample of `name` whose labels include `labels` (`k="v"` each).
async fn metric(gw: &TestGateway, name: &str, labels: &[&str]) -> f64 {
    let r = get_url(&gw.admin_url("/metrics")).await;
    let found: Vec<&str> = r
        .body
        .lines()
        .filter(|l| {
            l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|x| l.contains(x))
        })
        .collect();
    let [line] = found.as_slice() else {
        panic!("{} samples of {name}{labels:?}: {found:?}", found.len());
    };
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Eight clients hammer a plugin that loops: three calls spend the CPU
/// deadline, then the breaker answers every other one at once, and a healthy
/// route keeps answering throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_keeps_running_out_of_cpu_is_failed_fast_by_its_breaker() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(&up, "breaker", "loop", "")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let healthy = tokio::spawn({
        let (stop, url) = (stop.clone(), gw.url("/healthy/"));
        async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                statuses.push(get_url(&url).await.status);
            }
            statuses
        }
    });
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = gw.url("/bad/x");
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for _ in 0..3 {
                    let r = get_url(&url).await;
                    answers.push((r.status, r.body));
                }
                answers
            })
        })
        .collect();
    for c in clients {
        for (status, body) in c.await.unwrap() {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                body, "service unavailable\n",
                "nothing about the plugin leaks"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let healthy = healthy.await.unwrap();
    assert!(!healthy.is_empty(), "no healthy request completed");
    assert!(
        healthy.iter().all(|s| *s == StatusCode::OK),
        "healthy route failed: {healthy:?}"
    );

    // On a loaded machine a call may pass its wall-clock `call_timeout` first; both are strikes.
    assert_eq!(
        failures(&gw, "breaker-bad", "cpu_deadline") + failures(&gw, "breaker-bad", "call_timeout"),
        3,
        "only the calls before the breaker opened ran"
    );
    assert_eq!(failures(&gw, "breaker-bad", "circuit_open"), 21);
    let reason = |r| format!("reason=\"{r}\"");
    assert_eq!(
        metric(
            &gw,
            "weir_plugin_failures_total",
            &["route=\"breaker-bad\"", &reason("circuit_open")]
        )
        .await,
        21.0
    );
    let log = logs();
    let opened: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("plugin breaker open") && l.contains("route=\"breaker-bad\""))
        .collect();
    assert_eq!(opened.len(), 1, "logged once when it opens: {opened:?}");
    assert!(
        !log.lines().any(|l| l.contains("plugin failed")
            && l.contains("route=\"breaker-bad\"")
            && l.contains(&reason("circuit_open"))),
        "refusals by an open breaker are not logged one by one"
    );
    assert!(up.seen().iter().all(|s| !s.uri.starts_with("/bad")));
}

/// A plugin writing 400 KiB of log per request keeps its requests working,
/// but its records stop at `max_log_rate`; the rest is counted, and said once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_flooding_the_log_is_held_to_its_log_rate() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(
        &up,
        "logflood",
        "log-flood",
        "max_log_rate = \"16KiB\"",
    ))
    .await;
    for _ in 0..5 {
        let r = gw.get("/bad/x").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|s| s.header("x-hostile") == Some("logged")));

    let log = logs();
    let route = "route=\"logflood-bad\"";
    let kept: usize = log
        .lines()
        .filter(|l| l.contains(route) && l.contains("flood "))
        .map(str::len)
        .sum();
    // 16 KiB of burst plus what refilled while the test ran; 2 MB were written.
    assert!(kept > 0, "nothing was logged at all");
    assert!(kept < 32 << 10, "{kept} bytes of plugin log kept");
    let notes = log
        .lines()
        .filter(|l| l.contains(route) && l.contains("`max_log_rate`"))
        .count();
    assert_eq!(notes, 1, "the drop is noted once, not per record");
    let dropped = metric(
        &gw,
        "weir_plugin_log_dropped_total",
        &["plugin=\"hostile\""],
    )
    .await;
    assert!(dropped >= 490.0, "{dropped} records counted as dropped");
}

/// Every `weir:plugin` import counts against `max_host_calls`, counters included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_flood_is_stopped_by_max_host_calls() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(
        &up,
        "counterflood",
        "counter-flood",
        // Small, so the flood hits it long before the CPU deadline even on a loaded machine.
        "max_host_calls = 100",
    ))
    .await;
    let r = gw.get("/bad/x").await;
    assert_eq!(r.status, 503);
    assert_eq!(failures(&gw, "counterflood-bad", "host_call_limit"), 1);
    assert_eq!(failures(&gw, "counterflood-bad", "cpu_deadline"), 0);
    assert_eq!(gw.get("/healthy/").await.status, 200);
}

/// A plugin that imports nothing that may wait is called without a fiber:
/// spinning, it holds its worker until its CPU deadline interrupts it (it
/// cannot yield at each tick), while `max_concurrency` leaves the other
/// worker to the rest of the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_called_directly_that_spins_is_stopped_at_its_cpu_deadline() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[plugins.trap]
path = "{trap}"
cpu_deadline = "100ms"

[plugins.order]
path = "{order}"

[[routes]]
id = "direct-spin"
prefix = "/spin"
upstream = "{up}"
[[routes.plugins]]
name = "trap"

[[routes]]
id = "direct-healthy"
prefix = "/healthy"
upstream = "{up}"
[[routes.plugins]]
name = "order"
config = {{ tag = "healthy" }}
"#,
        trap = plugin("test_trap"),
        order = plugin("test_order"),
        up = up.url(),
    ))
    .await;

    let spinning = tokio::spawn({
        let url = gw.url("/spin/x");
        async move {
            send(Method::GET, &url, &[("x-trap", "spin")], Bytes::new())
                .await
                .status
        }
    });
    let mut healthy = Vec::new();
    while !spinning.is_finished() {
        healthy.push(get_url(&gw.url("/healthy/")).await.status);
    }
    assert_eq!(spinning.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        healthy.iter().all(|s| *s == StatusCode::OK),
        "healthy route failed while the other spun: {healthy:?}"
    );
    assert_eq!(failures(&gw, "direct-spin", "cpu_deadline"), 1);
    // The same plugin keeps serving other requests on fresh instances.
    assert_eq!(get_url(&gw.url("/spin/ok")).await.status, StatusCode::OK);
}
