//! Plugin chains: request hooks in manifest order, response hooks in reverse,
//! short-circuits skip the rest, and a trapping plugin costs one request only
//! (the full failure policy is in `sandbox.rs`).

use std::time::Duration;

use crate::support::{TestGateway, Upstream, plugin};

fn order_chain(upstream: &str, respond_at: Option<(&str, u16)>) -> String {
    let mut m = format!(
        "[plugins.order]\npath = \"{}\"\n\n[[routes]]\nid = \"chain\"\nprefix = \"/\"\nupstream = \"{upstream}\"\n",
        plugin("test_order")
    );
    for tag in ["a", "b", "c"] {
        let respond = match respond_at {
            Some((t, status)) if t == tag => format!(", respond = {status}"),
            _ => String::new(),
        };
        m.push_str(&format!(
            "[[routes.plugins]]\nname = \"order\"\nconfig = {{ tag = \"{tag}\"{respond} }}\n"
        ));
    }
    m
}

#[tokio::test]
async fn request_hooks_run_in_order_and_response_hooks_in_reverse() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&order_chain(&up.url(), None)).await;
    let r = gw.get("/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("x-order"), ["a", "b", "c"]);
    assert_eq!(r.header_all("x-resp-order"), ["c", "b", "a"]);
}

/// One route `r` to `upstream` chaining the order plugin once per config
/// (the inside of `config = { ... }`); `plugin_keys` go in `[plugins.order]`.
fn order_route(upstream: &str, plugin_keys: &str, configs: &[&str]) -> String {
    let mut m = format!(
        "[plugins.order]\npath = \"{}\"\n{plugin_keys}\n[[routes]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"{upstream}\"\n",
        plugin("test_order")
    );
    for config in configs {
        m.push_str(&format!(
            "[[routes.plugins]]\nname = \"order\"\nconfig = {{ {config} }}\n"
        ));
    }
    m
}

#[tokio::test]
async fn a_hook_a_plugin_did_not_ask_for_is_never_called() {
    let up = Upstream::start("u").await;
    let manifest = order_route(
        &up.url(),
        "",
        &[
            r#"tag = "req-only", hooks = "request""#,
            r#"tag = "resp-only", hooks = "response""#,
            r#"tag = "both""#,
        ],
    );
    let gw = TestGateway::start(&manifest).await;
    let r = gw.get("/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("x-order"), ["req-only", "both"]);
    // The response-only plugin was reached, so its response hook runs.
    assert_eq!(r.header_all("x-resp-order"), ["both", "resp-only"]);
}

#[tokio::test]
async fn only_a_plugin_that_asks_keeps_its_instance_from_request_to_response() {
    let up = Upstream::start("u").await;
    // With `isolation = "request"` an instance lives one lease: what its
    // `on-response` saw of `on-request` shows whether the lease spanned both.
    let manifest = |config: &str| order_route(&up.url(), "isolation = \"request\"", &[config]);
    let gw = TestGateway::start(&manifest(r#"tag = "a""#)).await;
    let r = gw.get("/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-seen"),
        Some("1"),
        "same-instance (the SDK default): on-response runs where on-request ran"
    );
    drop(gw);

    let gw = TestGateway::start(&manifest(r#"tag = "a", hooks = "both""#)).await;
    let r = gw.get("/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header_all("x-resp-order"), ["a"], "both hooks still run");
    assert_eq!(
        r.header("x-seen"),
        Some("0"),
        "without same-instance the instance is released between the hooks"
    );
}

#[tokio::test]
async fn a_plugin_reads_the_path_as_the_client_sent_it() {
    let up = Upstream::start("u").await;
    let manifest = order_route(&up.url(), "", &[r#"tag = "a", raw_path = true"#]);
    let gw = TestGateway::start(&manifest).await;
    let r = gw.get("/a/./b//c/%7Ex?q=1").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(
        seen.uri, "/a/b/c/~x?q=1",
        "routing and the upstream see the normalised path"
    );
    assert_eq!(seen.header("x-raw-path"), Some("/a/./b//c/%7Ex"));
}

#[tokio::test]
async fn short_circuit_skips_later_plugins_and_the_upstream() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&order_chain(&up.url(), Some(("b", 418)))).await;
    let r = gw.get("/x").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.body, "early\n");
    assert_eq!(r.header("x-answered-by"), Some("b"));
    // c never ran; the response hooks of b and a did, in reverse.
    assert_eq!(r.header_all("x-resp-order"), ["b", "a"]);
    assert!(up.seen().is_empty(), "the upstream must not be called");
}

#[tokio::test]
async fn a_trapping_plugin_answers_503_and_the_next_request_works() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&format!(
        "[plugins.trap]\npath = \"{}\"\n\n[[routes]]\nid = \"t\"\nprefix = \"/\"\nupstream = \"{}\"\n[[routes.plugins]]\nname = \"trap\"\n",
        plugin("test_trap"),
        up.url()
    ))
    .await;
    let r = gw.get_with("/boom", &[("x-trap", "1")]).await;
    assert_eq!(r.status, 503, "fail closed by default");
    assert_eq!(
        r.body, "service unavailable\n",
        "no plugin internals leak to the client"
    );
    assert!(up.seen().is_empty());
    for _ in 0..3 {
        let r = gw.get("/fine").await;
        assert_eq!(r.status, 200);
        assert_eq!(up.last().header("x-trap-ok"), Some("1"));
    }
}

#[tokio::test]
async fn request_isolation_gives_each_request_a_fresh_instance() {
    let up = Upstream::start("u").await;
    let manifest = format!(
        "[plugins.order]\npath = \"{}\"\nisolation = \"request\"\n\n[[routes]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"{}\"\n[[routes.plugins]]\nname = \"order\"\nconfig = {{ tag = \"solo\" }}\n",
        plugin("test_order"),
        up.url()
    );
    let gw = TestGateway::start(&manifest).await;
    for _ in 0..3 {
        let r = gw.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header_all("x-resp-order"), ["solo"]);
    }
    let snap = gw.gateway.snapshot();
    assert_eq!(
        snap.routes[0].chain[0].idle_instances(),
        0,
        "request isolation keeps no instance"
    );
}

/// An `init` that calls nothing on the host runs once per route: every
/// request-isolated instance starts from a snapshot of what it left, with
/// the route's config applied and no request's state in it.
#[tokio::test]
async fn request_isolation_starts_each_instance_from_a_snapshot_after_init() {
    let up = Upstream::start("u").await;
    let manifest = format!(
        "[plugins.order]\npath = \"{}\"\nisolation = \"request\"\n\n[[routes]]\nid = \"snap\"\nprefix = \"/\"\nupstream = \"{}\"\n[[routes.plugins]]\nname = \"order\"\nconfig = {{ tag = \"snapped\" }}\n",
        plugin("test_order"),
        up.url()
    );
    let gw = TestGateway::start(&manifest).await;
    for _ in 0..3 {
        let r = gw.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(up.last().header("x-order"), Some("snapped"));
        assert_eq!(r.header_all("x-resp-order"), ["snapped"]);
        assert_eq!(
            r.header("x-seen"),
            Some("1"),
            "the instance saw only this request"
        );
    }
    let logs = crate::support::logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("snapshot taken after init") && l.contains("route=\"snap\"")),
        "no snapshot for the route:\n{logs}"
    );
}

/// A route whose plugin counts requests in `self` and checks, in
/// `on-response`, that it sees its own `on-request`'s count.
fn self_count(up: &Upstream, isolation: &str) -> String {
    format!(
        r#"[plugins.hostile]
path = "{}"
isolation = "{isolation}"

[[routes]]
id = "count"
prefix = "/"
upstream = "{}"
[[routes.plugins]]
name = "hostile"
config = {{ mode = "self-count" }}
"#,
        plugin("test_hostile"),
        up.url()
    )
}

/// A reload sizes the new pool as the old one was used, so the first
/// requests after a swap find instances ready instead of each making one.
#[tokio::test]
async fn a_reload_starts_the_new_pool_as_warm_as_the_old_one_was() {
    let up = Upstream::start_with("u", Duration::from_millis(200)).await;
    let gw = TestGateway::start(&self_count(&up, "pooled")).await;
    let pool = |gw: &TestGateway| gw.gateway.snapshot().routes[0].chain[0].idle_instances();
    assert_eq!(pool(&gw), 1, "the first instance, made at load");
    // Five requests at once hold five instances across the slow upstream.
    let answers = futures_util::future::join_all((0..5).map(|_| gw.get("/x"))).await;
    assert!(answers.iter().all(|r| r.status == 200));
    assert_eq!(pool(&gw), 5);

    gw.gateway.reload().await.unwrap();
    assert_eq!(pool(&gw), 5, "the new snapshot's pool, before any request");
    let r = gw.get("/x").await;
    assert_eq!(r.header("x-same-instance"), Some("yes"));
}

#[tokio::test]
async fn one_request_runs_both_hooks_on_one_instance() {
    let up = Upstream::start("u").await;
    for isolation in ["pooled", "request"] {
        let gw = TestGateway::start(&self_count(&up, isolation)).await;
        // Concurrent requests: each pooled instance serves one request at a time.
        let answers = futures_util::future::join_all((0..16).map(|_| gw.get("/x"))).await;
        for r in answers {
            assert_eq!(r.status, 200);
            assert_eq!(r.header("x-same-instance"), Some("yes"), "{isolation}");
        }
    }
}
