//! Host state (`weir:plugin/state`) through the real gateway: each plugin's
//! store is bounded by its own quota; a plugin filling it costs its own
//! requests a 503 with reason `state_quota`, keeps the keys it has, and
//! leaves other plugins' state alone.

use crate::support::{TestGateway, Upstream, failures, get_url, logs, plugin};

/// `/flood` and `/flood-too` run the hostile plugin as `flood` (five fresh
/// buckets per request, keyed by `x-flood`) under a 20-entry quota;
/// `/limited` runs rate-limit as `limiter` (one bucket per `x-tenant`), with
/// a quota as small, so a store shared between the two would show.
fn manifest(up: &Upstream) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[plugins.flood]
path = "{hostile}"
max_state_entries = 20

[plugins.limiter]
path = "{rate_limit}"
max_state_entries = 20

[[routes]]
id = "state-flood"
prefix = "/flood"
upstream = "{up}"
[[routes.plugins]]
name = "flood"
config = {{ mode = "state-flood", n = 5 }}

[[routes]]
id = "state-flood-too"
prefix = "/flood-too"
upstream = "{up}"
[[routes.plugins]]
name = "flood"
config = {{ mode = "state-flood", n = 5 }}

[[routes]]
id = "state-limited"
prefix = "/limited"
upstream = "{up}"
[[routes.plugins]]
name = "limiter"
config = {{ rate = 100, per = "1h", key = "header:x-tenant" }}
"#,
        hostile = plugin("test_hostile"),
        rate_limit = plugin("rate_limit"),
        up = up.url(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_filling_host_state_gets_503_with_state_quota_and_other_plugins_keep_working() {
    let up = Upstream::start("u").await;
    let gw = TestGateway::start(&manifest(&up)).await;
    let flood = async |path: &str, tag: &str| gw.get_with(path, &[("x-flood", tag)]).await;

    // Four requests of five fresh keys fill the 20-entry quota.
    for tag in ["r0", "r1", "r2", "r3"] {
        let r = flood("/flood/x", tag).await;
        assert_eq!(r.status, 200, "{tag}: {}", r.body);
        assert_eq!(up.last().header("x-hostile"), Some("allowed 5 of 5"));
    }
    // Five more do not fit: the plugin fails, fail closed.
    let r = flood("/flood/x", "r4").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.body, "service unavailable\n",
        "nothing about the plugin leaks"
    );
    // The quota is the plugin's, on every route that uses it.
    assert_eq!(flood("/flood-too/x", "r5").await.status, 503);
    assert_eq!(up.seen().len(), 4, "fail closed never reaches the upstream");

    // Keys it already has keep working (their buckets are empty now).
    let r = flood("/flood/x", "r0").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().header("x-hostile"), Some("allowed 0 of 5"));

    // Another plugin's state is its own: fresh rate-limit buckets still fit.
    for tenant in ["a", "b", "c"] {
        let r = gw.get_with("/limited/x", &[("x-tenant", tenant)]).await;
        assert_eq!(r.status, 200, "{tenant}: {}", r.body);
        assert_eq!(r.header("ratelimit-remaining"), Some("99"));
    }

    // Why is in the counters, the metrics and the log.
    assert_eq!(failures(&gw, "state-flood", "state_quota"), 1);
    assert_eq!(failures(&gw, "state-flood-too", "state_quota"), 1);
    assert_eq!(failures(&gw, "state-limited", "state_quota"), 0);
    let metrics = get_url(&gw.admin_url("/metrics")).await.body;
    let sample = metrics
        .lines()
        .find(|l| {
            l.starts_with("weir_plugin_failures_total{")
                && l.contains(r#"plugin="flood""#)
                && l.contains(r#"route="state-flood""#)
                && l.contains(r#"reason="state_quota""#)
        })
        .unwrap_or_else(|| panic!("no state_quota sample in\n{metrics}"));
    assert!(sample.ends_with(" 1"), "{sample}");
    let logged = logs().lines().any(|l| {
        l.contains("plugin failed")
            && l.contains(r#"route="state-flood""#)
            && l.contains(r#"reason="state_quota""#)
            && l.contains("host state is full: 20 entries / 1048576 bytes")
    });
    assert!(logged, "no state_quota failure in the log");
}
