//! Quotas per consumer and plan through the real gateway: key-auth names the
//! consumer, rate-limit picks the consumer's plan and limits it at the plan's
//! rate, answering with the IETF draft's `RateLimit-Policy` and `RateLimit`
//! headers and `Retry-After`.

use crate::support::{TestGateway, Upstream, plugin};

fn manifest(up: &Upstream) -> String {
    format!(
        r#"
[plugins.key-auth]
path = "{key_auth}"

[plugins.rate-limit]
path = "{rate_limit}"

[[routes]]
id = "quota"
prefix = "/api"
upstream = "{up}"

[[routes.plugins]]
name = "key-auth"
config = {{ keys = [{{ key = "k-free", consumer = "fran" }}, {{ key = "k-pro", consumer = "petra" }}, {{ key = "k-gold", consumer = "gil" }}] }}

[[routes.plugins]]
name = "rate-limit"
[routes.plugins.config]
key = "var:consumer"
plan = "header:x-plan-override"
default_plan = "free"
consumers = {{ petra = "pro" }}
plans = {{ free = {{ rate = 2, per = "1m" }}, pro = {{ rate = 6, per = "1m" }} }}
legacy_headers = false
"#,
        key_auth = plugin("key_auth"),
        rate_limit = plugin("rate_limit"),
        up = up.url(),
    )
}

#[tokio::test]
async fn two_consumers_on_two_plans_are_each_limited_at_their_own_rate() {
    let up = Upstream::start("quota-up").await;
    let gw = TestGateway::start(&manifest(&up)).await;
    let call = async |key: &str| gw.get_with("/api/x", &[("x-api-key", key)]).await;

    // fran is on free (2 a minute): two pass, with the draft's headers.
    for left in ["1", "0"] {
        let r = call("k-free").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("ratelimit-policy"), Some(r#""free";q=2;w=60"#));
        let state = r.header("ratelimit").unwrap();
        assert!(
            state.starts_with(&format!(r#""free";r={left};t="#)),
            "{state}"
        );
        assert_eq!(
            r.header("ratelimit-remaining"),
            None,
            "legacy headers are off"
        );
    }
    let r = call("k-free").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(r.header("ratelimit"), Some(r#""free";r=0;t=30"#));

    // petra is on pro (6 a minute): fran's refusals do not touch her bucket.
    for _ in 0..6 {
        let r = call("k-pro").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("ratelimit-policy"), Some(r#""pro";q=6;w=60"#));
    }
    let r = call("k-pro").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("10"));

    // gil has no plan: the default (free), in a bucket of his own.
    assert_eq!(call("k-gold").await.status, 200);
    // A plan named by the request wins (a header an earlier plugin sets: never one clients may send).
    let r = gw
        .get_with(
            "/api/x",
            &[("x-api-key", "k-gold"), ("x-plan-override", "pro")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), Some(r#""pro";q=6;w=60"#));

    // The upstream saw only what passed: 2 + 6 + 2.
    assert_eq!(up.seen().len(), 10);
}
