//! Sandbox guarantees, through the real gateway: a hostile plugin (busy
//! loops, unbounded memory or recursion, panics, sleeps, host-call floods,
//! huge replies) costs its own request the route's failure answer within its
//! deadline, while other traffic keeps flowing; fail-open routes skip it;
//! files, environment and network stay out of reach unless granted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use sha2::{Digest, Sha256};

use crate::support::{Resp, TestGateway, Upstream, failures, get_url, logs, plugin};

/// Loose upper bound for a contained failure to be answered (deadlines are
/// 100 ms to 1 s): generous so that a loaded machine does not make it flaky.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Three routes, ids prefixed with `id`: `/bad` runs the hostile plugin in
/// `mode` (fail closed); `/open` runs it fail-open, then the well-behaved
/// `order` plugin; `/healthy` runs only `order`. `keys` go into `[plugins.hostile]`.
fn manifest(up: &Upstream, id: &str, mode: &str, keys: &str) -> String {
    format!(
        r#"
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
id = "{id}-open"
prefix = "/open"
upstream = "{up}"
[[routes.plugins]]
name = "hostile"
fail = "open"
config = {{ mode = "{mode}" }}
[[routes.plugins]]
name = "order"
config = {{ tag = "after" }}

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

/// Runs `work` while a client keeps requesting `/healthy/`; returns its
/// result and how long it took. Panics if any healthy request failed, or if
/// none completed after `work` did (the gateway must keep answering).
async fn alongside<T>(gw: &TestGateway, work: impl Future<Output = T>) -> (T, Duration) {
    let (out, took, _) = alongside_counted(gw, work).await;
    (out, took)
}

/// [`alongside`], also returning how many healthy requests completed while `work` ran.
async fn alongside_counted<T>(
    gw: &TestGateway,
    work: impl Future<Output = T>,
) -> (T, Duration, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let url = gw.url("/healthy/");
    let bg = tokio::spawn({
        let (stop, done) = (stop.clone(), done.clone());
        async move {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = get_url(&url).await;
                if r.status != StatusCode::OK || r.body != "upstream u" {
                    bad.push(format!("{} {}", r.status, r.body));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            bad
        }
    });
    // Let the background client get going first.
    while done.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = done.load(Ordering::Relaxed);
    let started = Instant::now();
    let out = work.await;
    let took = started.elapsed();
    let seen = done.load(Ordering::Relaxed);
    let wait = Instant::now();
    while done.load(Ordering::Relaxed) <= seen {
        assert!(
            wait.elapsed() < Duration::from_secs(5),
            "healthy traffic stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let bad = bg.await.unwrap();
    assert!(bad.is_empty(), "healthy requests failed: {bad:?}");
    (out, took, seen - before)
}

/// Whether the log has a `plugin failed` line for `route` with `reason`.
async fn failure_logged(route: &str, reason: &str) -> bool {
    let (route, reason) = (format!("route=\"{route}\""), format!("reason=\"{reason}\""));
    logs()
        .lines()
        .any(|l| l.contains("plugin failed") && l.contains(&route) && l.contains(&reason))
}

fn failure_counts(gw: &TestGateway, route: &str) -> Vec<(&'static str, u64)> {
    let snap = gw.gateway.snapshot();
    let route = snap.routes.iter().find(|r| &*r.id == route).unwrap();
    route.chain[0].failures_by_reason()
}

/// The whole contract for a plugin that fails in its request hook: the
/// fail-closed route answers 503 in time and never reaches the upstream, the
/// fail-open route reaches it without the plugin's changes, healthy traffic
/// is unaffected, the failure is logged and counted, and it stays that way.
async fn contained(id: &str, mode: &str, keys: &str, reason: &str) -> Resp {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(&up, id, mode, keys)).await;
    for round in 0..2 {
        let (r, took) = alongside(&gw, gw.get("/bad/x")).await;
        assert_eq!(r.status, 503, "round {round}: {}", r.body);
        assert_eq!(
            r.body, "service unavailable\n",
            "nothing about the plugin leaks"
        );
        assert!(took < ANSWER_WITHIN, "answered after {took:?}");

        let (r, open_took) = alongside(&gw, gw.get("/open/x")).await;
        assert_eq!(r.status, 200, "fail open goes on: {}", r.body);
        assert!(open_took < ANSWER_WITHIN, "answered after {open_took:?}");
        // Shown with --nocapture: the timings of the hostile-case table.
        println!("{id}: closed 503 in {took:?}, open 200 in {open_took:?}");
        let seen = up.seen();
        let seen = seen
            .iter()
            .rfind(|s| s.uri == "/open/x")
            .expect("fail open reaches the upstream");
        assert_eq!(
            seen.header_all("x-order"),
            ["after"],
            "the rest of the chain ran"
        );
        assert_eq!(
            seen.header("x-before-panic"),
            None,
            "a skipped plugin's edits are dropped"
        );
    }
    assert!(
        up.seen().iter().all(|s| !s.uri.starts_with("/bad")),
        "fail closed never reaches the upstream"
    );
    let route = format!("{id}-bad");
    assert_eq!(
        failures(&gw, &route, reason),
        2,
        "{:?}",
        failure_counts(&gw, &route)
    );
    assert_eq!(failures(&gw, &format!("{id}-open"), reason), 2);
    assert!(
        failure_logged(&format!("{id}-bad"), reason).await,
        "no failure log line"
    );
    gw.get("/bad/x").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_loop_in_on_request_answers_503_at_the_cpu_deadline() {
    contained("loop", "loop", "", "cpu_deadline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_memory_growth_stops_at_max_memory() {
    contained("grow", "grow", "max_memory = \"16MiB\"", "memory_limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_traps_on_the_stack_limit() {
    contained("recurse", "recurse", "", "trap").await;
    // The log line names the plugin's own function.
    let logs = crate::support::logs();
    assert!(
        logs.lines().any(|l| l.contains("route=\"recurse-bad\"")
            && l.contains("wasm trap: call stack exhausted")
            && l.contains("in `test_hostile::recurse`")),
        "no trap naming the function in the log:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_mid_request_costs_only_that_request() {
    contained("panic", "panic", "", "trap").await;
    // The message and its line reach the gateway log, with no stdio grant.
    let logs = crate::support::logs();
    let line = logs
        .lines()
        .find(|l| l.contains("plugin panicked: hostile plugin panics mid-request"))
        .unwrap_or_else(|| panic!("no panic report in the log:\n{logs}"));
    for part in [
        "ERROR",
        "route=\"panic-bad\"",
        "src/lib.rs:144:",
        "hook=\\\"on-request",
    ] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_sleeping_in_a_host_call_is_cut_by_call_timeout() {
    contained("sleep", "sleep", "call_timeout = \"300ms\"", "call_timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_call_flood_is_stopped_by_max_host_calls() {
    contained(
        "calls",
        "host-calls",
        "max_host_calls = 1000",
        "host_call_limit",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_a_huge_header_list_is_refused() {
    contained("rhdr", "reply-headers", "", "bad_reply").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_a_huge_body_is_refused() {
    contained("rbody", "reply-body", "", "bad_reply").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_flooding_the_host_with_data_is_cut_by_the_transfer_limit() {
    // A long deadline: on a loaded machine, building the flood must not hit
    // the CPU deadline first (that would be counted as `cpu_deadline`).
    contained(
        "rflood",
        "reply-flood",
        "cpu_deadline = \"900ms\"",
        "transfer_limit",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_status_sets_the_answer_of_a_fail_closed_plugin() {
    let up = Upstream::start("u").await;
    let m = manifest(&up, "status", "panic", "").replace(
        "config = { mode = \"panic\" }\n\n[[routes]]\nid = \"status-open\"",
        "fail_status = 403\nconfig = { mode = \"panic\" }\n\n[[routes]]\nid = \"status-open\"",
    );
    let gw = TestGateway::start(&m).await;
    let r = gw.get("/bad/x").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body, "forbidden\n");
}

/// One thread runs everything here (gateway, origin, both clients): healthy
/// requests complete during the busy loop only because the plugin yields its
/// thread at every epoch tick. Envoy documents that a looping Wasm filter
/// takes its worker; here it takes only its own request.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_plugin_shares_its_thread_with_other_requests() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(&up, "yield", "loop", "cpu_deadline = \"500ms\"")).await;
    let (r, took, during) = alongside_counted(&gw, gw.get("/bad/x")).await;
    assert_eq!(r.status, 503);
    assert!(
        took >= Duration::from_millis(400),
        "the loop ran only {took:?}"
    );
    assert!(
        during > 0,
        "no healthy request completed during {took:?} of busy loop"
    );
    println!(
        "yield: closed 503 in {took:?}; {during} healthy requests served meanwhile on the same thread"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_loop_in_on_response_answers_503_after_the_upstream() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(&up, "loopresp", "loop-response", "")).await;
    let (r, took) = alongside(&gw, gw.get("/bad/x")).await;
    assert_eq!(r.status, 503);
    assert!(took < ANSWER_WITHIN, "answered after {took:?}");
    println!("loopresp: closed 503 in {took:?}");
    let (r, _) = alongside(&gw, gw.get("/open/x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "upstream u");
    assert_eq!(
        r.header("x-hostile-response"),
        None,
        "the skipped hook's edits are dropped"
    );
    assert_eq!(failures(&gw, "loopresp-bad", "cpu_deadline"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_loop_in_init_fails_the_load_and_the_old_config_keeps_serving() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(&up, "init", "ok", "")).await;
    gw.rewrite(&manifest(&up, "init", "loop-init", ""));
    let (err, took) = alongside(&gw, gw.gateway.reload()).await;
    let err = err
        .expect_err("a plugin that never finishes init must not load")
        .to_string();
    assert!(took < Duration::from_secs(10), "the load took {took:?}");
    println!("init: reload refused in {took:?}");
    assert!(
        err.contains("route `init-bad`, plugin `hostile`: ran past its 1s CPU deadline"),
        "{err}"
    );
    let r = gw.get("/bad/x").await;
    assert_eq!(
        (r.status, up.last().header("x-hostile")),
        (StatusCode::OK, Some("ok"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_past_max_headers_are_refused_and_the_request_goes_on() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(&up, "hdrs", "many-headers", "max_headers = 32")).await;
    let r = gw.get("/bad/x").await;
    assert_eq!(r.status, 200);
    let flood = up
        .last()
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-flood-"))
        .count();
    assert!(
        (1..32).contains(&flood),
        "{flood} flood headers reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_out_of_reach() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(&up, "file", "file", "")).await;
    assert_eq!(gw.get("/bad/x").await.status, 200);
    let said = up.last().header("x-hostile").unwrap().to_string();
    assert!(
        said.starts_with("denied: "),
        "the plugin could read /etc/passwd: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_are_visible_only_when_granted_by_name() {
    let up = Upstream::start("u").await;
    let path = std::env::var("PATH").expect("tests run with PATH set");
    let m = format!(
        r#"
[plugins.plain]
path = "{p}"

[plugins.granted]
path = "{p}"
grants = {{ env = ["PATH", "WEIR_SURELY_UNSET"] }}

[[routes]]
id = "env-plain"
prefix = "/plain"
upstream = "{up}"
[[routes.plugins]]
name = "plain"
config = {{ mode = "env", var = "PATH" }}

[[routes]]
id = "env-granted"
prefix = "/granted"
upstream = "{up}"
[[routes.plugins]]
name = "granted"
config = {{ mode = "env", var = "PATH" }}
"#,
        p = plugin("test_hostile"),
        up = up.url()
    );
    let gw = TestGateway::start(&m).await;
    gw.get("/plain").await;
    assert_eq!(up.last().header("x-hostile"), Some("absent; count=0"));
    gw.get("/granted").await;
    assert_eq!(
        up.last().header("x-hostile"),
        Some(format!("{path}; count=1").as_str()),
        "exactly the granted variable that is set"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_reach_the_log_only_with_the_stdio_grant() {
    let up = Upstream::start("u").await;
    let m = format!(
        r#"
[plugins.quiet]
path = "{p}"

[plugins.loud]
path = "{p}"
grants = {{ stdio = "log" }}

[[routes]]
id = "stdio-quiet"
prefix = "/quiet"
upstream = "{up}"
[[routes.plugins]]
name = "quiet"
config = {{ mode = "stdout" }}

[[routes]]
id = "stdio-loud"
prefix = "/loud"
upstream = "{up}"
[[routes.plugins]]
name = "loud"
config = {{ mode = "stdout" }}
"#,
        p = plugin("test_hostile"),
        up = up.url()
    );
    let gw = TestGateway::start(&m).await;
    assert_eq!(gw.get("/quiet").await.status, 200);
    assert_eq!(gw.get("/loud").await.status, 200);
    let has = |route: &str, text: &str| {
        logs()
            .lines()
            .any(|l| l.contains(&format!("route=\"{route}\"")) && l.contains(text))
    };
    // Output is written by a background task: give it a moment.
    let wait = Instant::now();
    while !(has("stdio-loud", "hello from stdout") && has("stdio-loud", "hello from stderr")) {
        assert!(
            wait.elapsed() < Duration::from_secs(5),
            "no stdio lines in the log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !has("stdio-quiet", "hello from"),
        "ungranted output must be discarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_isolation_keeps_nothing_between_requests() {
    let up = Upstream::start("u").await;
    let m = format!(
        r#"
[plugins.pooled]
path = "{p}"

[plugins.fresh]
path = "{p}"
isolation = "request"

[[routes]]
id = "iso-pooled"
prefix = "/pooled"
upstream = "{up}"
[[routes.plugins]]
name = "pooled"
config = {{ mode = "counter" }}

[[routes]]
id = "iso-fresh"
prefix = "/fresh"
upstream = "{up}"
[[routes.plugins]]
name = "fresh"
config = {{ mode = "counter" }}
"#,
        p = plugin("test_hostile"),
        up = up.url()
    );
    let gw = TestGateway::start(&m).await;
    let mut pooled = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..3 {
        gw.get("/pooled").await;
        pooled.push(up.last().header("x-hostile").unwrap().to_string());
        gw.get("/fresh").await;
        fresh.push(up.last().header("x-hostile").unwrap().to_string());
    }
    assert_eq!(
        pooled,
        ["1", "2", "3"],
        "a pooled instance keeps its statics"
    );
    assert_eq!(
        fresh,
        ["1", "1", "1"],
        "a fresh instance per request keeps nothing"
    );
}

/// The pool resets a dropped instance's memory for the next one in its slot,
/// only the pages it wrote (PAGEMAP_SCAN) up to what it keeps resident, the
/// rest decommitted: a request-isolated instance must find every page of
/// 2 MiB of statics as the image made it, whatever the one before it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_isolation_finds_memory_the_last_request_wrote_reset() {
    let up = Upstream::start("u").await;
    let m = format!(
        r#"
[plugins.pooled]
path = "{p}"

[plugins.fresh]
path = "{p}"
isolation = "request"

[[routes]]
id = "scribble-pooled"
prefix = "/pooled"
upstream = "{up}"
[[routes.plugins]]
name = "pooled"
config = {{ mode = "scribble" }}

[[routes]]
id = "scribble-fresh"
prefix = "/fresh"
upstream = "{up}"
[[routes.plugins]]
name = "fresh"
config = {{ mode = "scribble" }}
"#,
        p = plugin("test_hostile"),
        up = up.url()
    );
    let gw = TestGateway::start(&m).await;
    let mut pooled = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..3 {
        gw.get("/pooled").await;
        pooled.push(up.last().header("x-hostile").unwrap().to_string());
        gw.get("/fresh").await;
        fresh.push(up.last().header("x-hostile").unwrap().to_string());
    }
    // 512 pages of zeroes and 4 of the image: the check sees writes when they stay.
    assert_eq!(
        pooled,
        ["stale 0", "stale 516", "stale 516"],
        "a pooled instance keeps its memory"
    );
    assert_eq!(
        fresh,
        ["stale 0", "stale 0", "stale 0"],
        "a fresh instance finds memory as the image made it"
    );
}

async fn check_fails(manifest: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, manifest).unwrap();
    match weir::check(&path).await {
        Ok(_) => panic!("the manifest must be refused"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_plugin_importing_sockets_is_refused_at_load_naming_the_import() {
    let err = check_fails(&format!(
        "[plugins.net]\npath = \"{}\"\n\n[[routes]]\nid = \"a\"\nupstream = \"builtin:echo\"\n",
        plugin("test_socket")
    ))
    .await;
    assert!(err.contains("plugin `net`"), "{err}");
    assert!(err.contains("imports `wasi:sockets/"), "{err}");
    assert!(
        err.contains("(network), which is not granted to plugins"),
        "{err}"
    );
    assert!(
        err.contains("help: plugins may not use this interface"),
        "{err}"
    );
}

#[tokio::test]
async fn a_module_declaring_more_memory_than_max_memory_is_refused_at_load() {
    let err = check_fails(&format!(
        "[plugins.small]\npath = \"{}\"\nmax_memory = \"64KiB\"\n",
        plugin("test_order")
    ))
    .await;
    assert!(err.contains("gateway.toml:3:14: plugin `small`"), "{err}");
    assert!(
        err.contains("bytes of initial linear memory, more than its `max_memory` (65536)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha256_pin_admits_the_file_and_refuses_any_other_on_reload() {
    let up = Upstream::start("u").await;
    let file = plugin("test_hostile");
    let actual = hex(&Sha256::digest(std::fs::read(&file).unwrap()));
    let pinned = |pin: &str| manifest(&up, "pin", "ok", &format!("sha256 = \"{pin}\""));
    let gw = TestGateway::start(&pinned(&actual.to_uppercase())).await;
    assert_eq!(gw.get("/bad/x").await.status, 200);

    let wrong = "ab".repeat(32);
    gw.rewrite(&pinned(&wrong));
    let err = gw.gateway.reload().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "sha256 mismatch: the manifest pins {wrong} but the file is {actual}"
        )),
        "{err}"
    );
    assert_eq!(
        gw.get("/bad/x").await.status,
        200,
        "the old snapshot keeps serving"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
